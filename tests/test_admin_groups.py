"""Admin's consumer-group methods against a real broker: list_groups, describe_group
(typed members and lag), delete_group and reset_offsets (every spec, dry run, refusals),
with groups made through the raw Groups stubs (join a member, commit, leave)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from logstore import errors
from logstore.client import Admin, GroupListing, OffsetReset, TopicPartition
from logstore.v1 import groups_pb2 as gpb
from tests.brokerproc import BrokerProcess
from tests.test_broker_groups import Client


@pytest.fixture
def admin(gbroker: BrokerProcess) -> Iterator[Admin]:
    with Admin(gbroker.grpc_address) as a:
        yield a


def empty_group(c: Client, group: str, topic: str, offsets: dict[int, int]) -> None:
    """``group`` with no members and ``offsets`` committed on ``topic``: join, commit, leave."""
    r = c.join(group, [topic])
    c.commit(group, r.member_id, r.member_epoch, {(topic, p): o for p, o in offsets.items()})
    c.groups.LeaveGroup(gpb.LeaveGroupRequest(group_id=group, member_id=r.member_id), timeout=10)


def test_list_and_describe_with_members_and_lag(raw: Client, admin: Admin) -> None:
    """describe_group gives state, epoch, assignor, the member's client id, host and
    assigned partitions, and per partition committed/end/lag in records and ms;
    list_groups follows the member's join and leave."""
    raw.topic("lag", 2)
    old = int(time.time() * 1000) - 60_000
    raw.produce("lag", 0, 10, timestamp_ms=old)
    raw.produce("lag", 1, 3)
    r = raw.join("g-lag", ["lag"], client_id="app-1")
    raw.commit("g-lag", r.member_id, r.member_epoch, {("lag", 0): 4})
    d = admin.describe_group("g-lag")
    assert (d.group_id, d.state, d.assignor) == ("g-lag", "stable", "uniform")
    assert d.group_epoch >= 1
    [m] = d.members
    assert (m.member_id, m.client_id, m.instance_id) == (r.member_id, "app-1", None)
    assert m.host and m.subscribed_topics == ["lag"] and m.subscribed_regex is None
    assert m.assigned == [TopicPartition("lag", 0), TopicPartition("lag", 1)] and not m.revoking
    p0, p1 = d.partitions
    assert (p0.topic, p0.partition, p0.member_id) == ("lag", 0, r.member_id)
    assert (p0.committed_offset, p0.log_end_offset, p0.lag_records) == (4, 10, 6)
    assert 60_000 <= p0.lag_ms < 120_000 and p0.lag_seconds == p0.lag_ms / 1000
    # nothing committed on partition 1: None, lag counted from the log start
    assert (p1.committed_offset, p1.log_end_offset, p1.lag_records) == (None, 3, 3)
    assert GroupListing("g-lag", "stable", 1) in admin.list_groups()
    raw.beat("g-lag", r.member_id, -1)
    assert GroupListing("g-lag", "empty", 0) in admin.list_groups()
    assert admin.describe_group("g-lag").members == []


def test_reset_offsets_every_spec_and_dry_run(raw: Client, admin: Admin) -> None:
    """Each spec resolves against the log (clamped), the plan says old -> new, a dry run
    commits nothing, and topic/partitions limit the reset."""
    raw.topic("rs", 2)
    raw.produce("rs", 0, 10, timestamp_ms=1_000)
    raw.produce("rs", 0, 10, timestamp_ms=2_000)
    raw.produce("rs", 1, 5, timestamp_ms=1_000)
    empty_group(raw, "g-rs", "rs", {0: 5, 1: 2})
    plan = admin.reset_offsets("g-rs", "latest", dry_run=True)
    assert not plan.applied
    assert plan.partitions == [OffsetReset("rs", 0, 5, 20), OffsetReset("rs", 1, 2, 5)]
    assert raw.committed("g-rs") == {("rs", 0): 5, ("rs", 1): 2}
    cases: list[tuple[str | tuple[str, int], int]] = [
        ("earliest", 0),
        ("latest", 20),
        (("offset", 12), 12),
        (("offset", 999), 20),
        (("shift", -5), 15),
        (("shift", -100), 0),
        (("time", 1_500), 10),
        (("time", 9_999_999_999_999), 20),
    ]
    for spec, want in cases:
        before = raw.committed("g-rs")[("rs", 0)]
        plan = admin.reset_offsets("g-rs", spec, topic="rs", partitions=[0])
        assert plan.applied and plan.partitions == [OffsetReset("rs", 0, before, want)], spec
        assert raw.committed("g-rs") == {("rs", 0): want, ("rs", 1): 2}, spec


def test_refusals_change_nothing(raw: Client, admin: Admin) -> None:
    """Reset and delete of a group with members, an unknown group, topic or partition, and
    a spec this client cannot send are refused with their typed error; offsets unchanged."""
    raw.topic("rf", 1)
    raw.produce("rf", 0, 10)
    r = raw.join("g-rf", ["rf"])
    raw.commit("g-rf", r.member_id, r.member_epoch, {("rf", 0): 7})
    with pytest.raises(errors.GroupNotEmptyError, match="1 member"):
        admin.reset_offsets("g-rf", "earliest")
    with pytest.raises(errors.GroupNotEmptyError, match="1 member"):
        admin.delete_group("g-rf")
    raw.beat("g-rf", r.member_id, -1)
    bad: list[tuple[dict[str, object], type[errors.LogStoreError]]] = [
        ({"group_id": "nope", "spec": "earliest"}, errors.GroupIdNotFoundError),
        ({"spec": "earliest", "topic": "missing"}, errors.UnknownTopicError),
        ({"spec": "earliest", "topic": "rf", "partitions": [3]}, errors.UnknownPartitionError),
        ({"spec": "first"}, errors.InvalidArgumentError),
        ({"spec": ("offset", -1)}, errors.InvalidArgumentError),
        ({"spec": ("jump", 3)}, errors.InvalidArgumentError),
        ({"spec": "earliest", "partitions": [0]}, errors.InvalidArgumentError),
    ]
    for kw, exc in bad:
        args = {"group_id": "g-rf", **kw}
        with pytest.raises(exc):
            admin.reset_offsets(**args)  # type: ignore[arg-type]
        assert raw.committed("g-rf") == {("rf", 0): 7}, kw
    with pytest.raises(errors.GroupIdNotFoundError, match="'nope' does not exist"):
        admin.describe_group("nope")
    with pytest.raises(errors.GroupIdNotFoundError):
        admin.delete_group("nope")
    assert raw.committed("g-rf") == {("rf", 0): 7}


def test_delete_group_when_empty(raw: Client, admin: Admin) -> None:
    """delete_group of an empty group removes it and its committed offsets."""
    raw.topic("dl", 1)
    empty_group(raw, "g-dl", "dl", {0: 0})
    assert "g-dl" in [g.group_id for g in admin.list_groups()]
    admin.delete_group("g-dl")
    assert "g-dl" not in [g.group_id for g in admin.list_groups()]
    assert raw.committed("g-dl") == {}
