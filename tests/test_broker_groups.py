"""The Groups service of a real broker, over raw gRPC with the generated stubs.

Join/heartbeat/assignment with incremental revocation, commits and fencing,
session timeouts fired by the broker's timers, groups and offsets surviving a
SIGTERM and a kill -9, DescribeGroup's lag, ResetOffsets and DeleteGroup
rules, topic changes retargeting groups, and the precise status (code and
ErrorInfo reason) of every wrong input. Short timeouts come from the
``group_*`` broker config keys (environment ``LOGSTORE_GROUP_*``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from logstore.v1 import groups_pb2 as gpb
from logstore.v1 import groups_pb2_grpc, logstore_pb2_grpc, records_pb2
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import scrape as scrape_broker

SESSION_MS = 1500
HEARTBEAT_MS = 200
ENV = {
    "LOGSTORE_GROUP_SESSION_TIMEOUT_MS": str(SESSION_MS),
    "LOGSTORE_GROUP_MIN_SESSION_TIMEOUT_MS": "500",
    "LOGSTORE_GROUP_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
    "LOGSTORE_GROUP_MAX_GROUPS": "20",
    "LOGSTORE_GROUP_MAX_MEMBERS_PER_GROUP": "4",
}
FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

TP = tuple[str, int]


class Client:
    """Both stubs on one channel."""

    def __init__(self, address: str, broker: BrokerProcess | None = None) -> None:
        self.broker = broker
        self.channel = grpc.insecure_channel(address)
        self.groups = groups_pb2_grpc.GroupsStub(self.channel)
        self.log = logstore_pb2_grpc.LogStoreStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def topic(self, name: str, partitions: int) -> None:
        self.log.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions), timeout=10)

    def produce(self, topic: str, partition: int, n: int, timestamp_ms: int = 0) -> None:
        """``n`` records in one batch; ``timestamp_ms`` (if given) is the batch's timestamp."""
        recs = [records_pb2.Record(value=b"v%d" % i) for i in range(n)]
        req = pb.ProduceRequest(topic=topic, partition=partition, records=recs, acks=pb.ACKS_ALL)
        if timestamp_ms:
            req.base_timestamp_ms = timestamp_ms
        self.log.Produce(req, timeout=10)

    def join(
        self, group: str, topics: list[str] | None = None, regex: str | None = None, **kw: object
    ) -> gpb.ConsumerGroupHeartbeatResponse:
        req = gpb.ConsumerGroupHeartbeatRequest(group_id=group, member_epoch=0, **kw)  # type: ignore[arg-type]
        if topics is not None:
            req.topic_names.names.extend(topics)
        if regex is not None:
            req.topic_regex = regex
        return self.groups.ConsumerGroupHeartbeat(req, timeout=10)

    def beat(
        self, group: str, member: str, epoch: int, owned: set[TP] | None = None
    ) -> gpb.ConsumerGroupHeartbeatResponse:
        req = gpb.ConsumerGroupHeartbeatRequest(
            group_id=group, member_id=member, member_epoch=epoch
        )
        if owned is not None:
            req.owned.CopyFrom(pset(owned))
        return self.groups.ConsumerGroupHeartbeat(req, timeout=10)

    def commit(self, group: str, member: str, epoch: int, offsets: dict[TP, int]) -> None:
        self.groups.OffsetCommit(
            gpb.OffsetCommitRequest(
                group_id=group,
                member_id=member,
                member_epoch=epoch,
                partitions=[
                    gpb.OffsetCommitPartition(topic=t, partition=p, offset=o)
                    for (t, p), o in offsets.items()
                ],
            ),
            timeout=10,
        )

    def committed(self, group: str) -> dict[TP, int]:
        reply = self.groups.OffsetFetch(gpb.OffsetFetchRequest(group_id=group), timeout=10)
        return {(o.topic, o.partition): o.offset for o in reply.offsets}

    def describe(self, group: str) -> gpb.DescribeGroupResponse:
        return self.groups.DescribeGroup(gpb.DescribeGroupRequest(group_id=group), timeout=10)

    def reset(self, group: str, **kw: object) -> gpb.ResetOffsetsResponse:
        return self.groups.ResetOffsets(gpb.ResetOffsetsRequest(group_id=group, **kw), timeout=10)  # type: ignore[arg-type]


def scrape(b: BrokerProcess | None) -> str:
    assert b is not None
    return scrape_broker(b)


def pset(tps: set[TP]) -> gpb.PartitionSet:
    by: dict[str, list[int]] = {}
    for t, p in tps:
        by.setdefault(t, []).append(p)
    return gpb.PartitionSet(
        topics=[gpb.TopicPartitions(topic=t, partitions=sorted(ps)) for t, ps in sorted(by.items())]
    )


def tps(s: gpb.PartitionSet) -> set[TP]:
    return {(t.topic, p) for t in s.topics for p in t.partitions}


def status_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo reason, message) of an error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    assert info.domain == "logstore.v1"
    return err.code(), info.reason, err.details() or ""


def refused(fn: object, *args: object, **kw: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)  # type: ignore[operator]
    return status_of(exc.value)


@pytest.fixture
def gbroker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path / "data", env=ENV)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def client(gbroker: BrokerProcess) -> Iterator[Client]:
    c = Client(gbroker.grpc_address, gbroker)
    try:
        yield c
    finally:
        c.close()


def stable_pair(c: Client, group: str, topic: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """Two members of ``group`` owning ``topic``'s partitions, reconciled: ((id, epoch), ...)."""
    return stable_pair_from(c, group, topic, c.join(group, [topic]))


def test_two_members_share_partitions_with_incremental_revocation(client: Client) -> None:
    """A second member gets half the partitions only after the first released them; the
    first keeps consuming the rest throughout, and no partition ever has two owners."""
    c = client
    c.topic("t4", 4)
    all4 = {("t4", p) for p in range(4)}
    a = c.join("g", ["t4"], client_id="app-a")
    assert a.heartbeat_interval_ms == HEARTBEAT_MS
    ma, ea = a.member_id, a.member_epoch
    assert tps(a.assignment) == all4 and not tps(a.revoking)
    b = c.join("g", ["t4"])
    mb = b.member_id
    assert tps(b.assignment) == set()  # all four still owned by A
    ra = c.beat("g", ma, ea, all4)
    revoking = tps(ra.revoking)
    kept = tps(ra.assignment)
    assert len(revoking) == 2 and kept == all4 - revoking  # A keeps consuming its other two
    rb = c.beat("g", mb, b.member_epoch, set())
    assert tps(rb.assignment) == set()  # not before A released them
    ra = c.beat("g", ma, ra.member_epoch, kept)  # A committed and released
    assert tps(ra.assignment) == kept and not tps(ra.revoking)
    rb = c.beat("g", mb, rb.member_epoch, set())
    assert tps(rb.assignment) == revoking
    d = c.describe("g")
    assert d.state == gpb.GROUP_STATE_STABLE and len(d.members) == 2
    owners = {(p.topic, p.partition): p.member_id for p in d.partitions}
    assert owners == {tp: (ma if tp in kept else mb) for tp in all4}
    by_id = {m.member_id: m for m in d.members}
    assert by_id[ma].client_id == "app-a" and by_id[ma].host


def test_commit_fetch_and_fenced_commits(client: Client) -> None:
    """Commits by the owner at its epoch are fetched back; commits from a stale, fenced or
    unknown member, or for a partition it does not own, are refused with their reason."""
    c = client
    c.topic("t", 2)
    r = c.join("g", ["t"])
    m, e = r.member_id, r.member_epoch
    c.commit("g", m, e, {("t", 0): 5, ("t", 1): 7})
    assert c.committed("g") == {("t", 0): 5, ("t", 1): 7}
    reply = c.groups.OffsetFetch(
        gpb.OffsetFetchRequest(
            group_id="g", partitions=[gpb.TopicPartitions(topic="t", partitions=[0, 3])]
        ),
        timeout=10,
    )
    assert [(o.partition, o.offset) for o in reply.offsets] == [(0, 5), (3, -1)]
    code, reason, msg = refused(c.commit, "g", "nobody", e, {("t", 0): 6})
    assert (code, reason) == (FAILED, "UNKNOWN_MEMBER_ID") and "rejoin" in msg
    code, reason, msg = refused(c.commit, "g", m, e + 5, {("t", 0): 6})
    assert (code, reason) == (FAILED, "FENCED_MEMBER_EPOCH") and "rejoin" in msg
    code, reason, _ = refused(c.commit, "g", m, e, {("other", 0): 6})
    assert (code, reason) == (FAILED, "PARTITION_NOT_ASSIGNED")
    code, reason, msg = refused(c.beat, "g", m, e + 5)
    assert (code, reason) == (FAILED, "FENCED_MEMBER_EPOCH") and "rejoin" in msg
    # a second member bumps the group epoch; a commit at A's old epoch is then stale
    b = c.join("g", ["t"])
    ra = c.beat("g", m, e, {("t", 0), ("t", 1)})
    ra = c.beat("g", m, ra.member_epoch, tps(ra.assignment))
    assert ra.member_epoch > e
    code, reason, _ = refused(c.commit, "g", m, e, {("t", 0): 6})
    assert (code, reason) == (FAILED, "STALE_MEMBER_EPOCH")
    assert c.committed("g") == {("t", 0): 5, ("t", 1): 7}  # nothing refused was committed
    assert b.member_id
    text = scrape(c.broker)
    assert 'logstore_group_fenced_requests_total{reason="FENCED_MEMBER_EPOCH"} 2.0' in text


def test_session_timeout_reassigns_within_its_bound(client: Client) -> None:
    """A member that stops heartbeating is removed by the broker's timer within ~100 ms of
    its session deadline (not on the 10 s maintenance loop) and its partitions reassigned."""
    c = client
    c.topic("t4", 4)
    (ma, ea), (mb, _eb) = stable_pair(c, "g", "t4")
    last_b = time.monotonic()  # B's last heartbeat was just before this
    owned_a = tps(c.beat("g", ma, ea).assignment)
    removed_at = None
    while time.monotonic() - last_b < SESSION_MS / 1000 + 3:
        r = c.beat("g", ma, ea, owned_a)
        ea, owned_a = r.member_epoch, tps(r.assignment)
        if removed_at is None and len(c.describe("g").members) == 1:
            removed_at = time.monotonic()
        if len(owned_a) == 4:
            break
        time.sleep(0.02)
    assert removed_at is not None, "B was never removed"
    after = removed_at - last_b
    # lower bound: not before the session ends; upper: the deadline plus timer slack,
    # the polling period (~20 ms) and a loaded 2-core machine
    assert SESSION_MS / 1000 - 0.05 <= after <= SESSION_MS / 1000 + 0.6, after
    assert owned_a == {("t4", p) for p in range(4)}
    code, reason, _ = refused(c.beat, "g", mb, _eb)
    assert (code, reason) == (FAILED, "UNKNOWN_MEMBER_ID")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_groups_and_offsets_survive_a_restart(tmp_path: Path, how: str) -> None:
    """After a clean stop and after kill -9, the group, its members and its committed
    offsets are back (replayed from __consumer_offsets) and the member can heartbeat on."""
    data = tmp_path / "data"
    b = start_broker(data, env=ENV)
    try:
        c = Client(b.grpc_address)
        c.topic("t", 2)
        r = c.join("g", ["t"])
        m, e = r.member_id, r.member_epoch
        c.commit("g", m, e, {("t", 0): 3, ("t", 1): 4})
        before = c.describe("g")
        c.close()
    finally:
        if how == "sigterm":
            assert b.stop() == 0
        else:
            b.kill()
    b = start_broker(data, env=ENV)
    try:
        c = Client(b.grpc_address)
        assert c.committed("g") == {("t", 0): 3, ("t", 1): 4}
        after = c.describe("g")
        assert after.group_epoch == before.group_epoch
        assert [x.member_id for x in after.members] == [m]
        r = c.beat("g", m, e, {("t", 0), ("t", 1)})
        assert tps(r.assignment) == {("t", 0), ("t", 1)}
        c.close()
    finally:
        b.stop()


def test_describe_shows_lag_in_records_and_seconds(client: Client) -> None:
    """Per partition: end offset, lag in offsets from the committed offset, and the age of
    the oldest uncommitted record; 0 and 0 when caught up. The metrics export the same."""
    c = client
    c.topic("t", 2)
    old = int(time.time() * 1000) - 60_000
    c.produce("t", 0, 10, timestamp_ms=old)
    c.produce("t", 1, 3)
    r = c.join("g", ["t"])
    c.commit("g", r.member_id, r.member_epoch, {("t", 0): 4, ("t", 1): 3})
    d = c.describe("g")
    lag = {p.partition: p for p in d.partitions}
    assert (lag[0].committed_offset, lag[0].log_end_offset, lag[0].lag_records) == (4, 10, 6)
    assert 60_000 <= lag[0].lag_ms < 120_000
    assert (lag[1].lag_records, lag[1].lag_ms) == (0, 0)
    assert lag[0].member_id == r.member_id
    text = scrape(c.broker)
    assert 'logstore_group_lag_records{group="g",partition="0",topic="t"} 6.0' in text
    assert 'logstore_group_members{group="g"} 1.0' in text
    rebalances = re.search(r"^logstore_group_rebalances_total (\S+)$", text, re.M)
    assert rebalances is not None and float(rebalances.group(1)) >= 1


def test_reset_offsets_rules(client: Client) -> None:
    """Refused while the group has members; on an empty group earliest/latest/offset/time/
    shift resolve against the log (clamped); a dry run returns the plan and changes nothing."""
    c = client
    c.topic("t", 1)
    c.produce("t", 0, 10, timestamp_ms=1_000)
    c.produce("t", 0, 10, timestamp_ms=2_000)
    r = c.join("g", ["t"])
    c.commit("g", r.member_id, r.member_epoch, {("t", 0): 5})
    code, reason, _ = refused(c.reset, "g", position=gpb.RESET_POSITION_EARLIEST)
    assert (code, reason) == (FAILED, "NON_EMPTY_GROUP")
    c.groups.LeaveGroup(gpb.LeaveGroupRequest(group_id="g", member_id=r.member_id), timeout=10)
    plan = c.reset("g", position=gpb.RESET_POSITION_LATEST, dry_run=True)
    assert not plan.applied
    assert [(p.previous_offset, p.new_offset) for p in plan.partitions] == [(5, 20)]
    assert c.committed("g") == {("t", 0): 5}
    cases = [
        ({"position": gpb.RESET_POSITION_EARLIEST}, 0),
        ({"position": gpb.RESET_POSITION_LATEST}, 20),
        ({"offset": 12}, 12),
        ({"offset": 999}, 20),  # clamped to the high watermark
        ({"shift_by": -5}, 15),  # from the committed 20
        ({"shift_by": -100}, 0),
        ({"timestamp_ms": 1_500}, 10),
        ({"timestamp_ms": 9_999_999_999_999}, 20),
    ]
    for spec, want in cases:
        got = c.reset("g", partitions=[gpb.TopicPartitions(topic="t")], **spec)
        assert got.applied and got.partitions[0].new_offset == want, spec
        assert c.committed("g") == {("t", 0): want}, spec
    code, reason, _ = refused(c.reset, "nope", position=gpb.RESET_POSITION_EARLIEST)
    assert (code, reason) == (NOT_FOUND, "GROUP_ID_NOT_FOUND")
    code, reason, _ = refused(
        c.reset, "g", partitions=[gpb.TopicPartitions(topic="missing")], offset=0
    )
    assert (code, reason) == (NOT_FOUND, "UNKNOWN_TOPIC")
    code, reason, _ = refused(
        c.reset, "g", partitions=[gpb.TopicPartitions(topic="t", partitions=[7])], offset=0
    )
    assert (code, reason) == (NOT_FOUND, "UNKNOWN_PARTITION")
    for bad in ({}, {"offset": -1}, {"position": gpb.RESET_POSITION_UNSPECIFIED}):
        code, reason, _ = refused(c.reset, "g", **bad)
        assert (code, reason) == (INVALID, "INVALID_GROUP_REQUEST"), bad
    assert c.committed("g") == {("t", 0): 20}


def test_delete_group_only_when_empty(client: Client) -> None:
    """DeleteGroup refuses a group with members, deletes an empty one with its offsets, and
    an unknown group is NOT_FOUND."""
    c = client
    c.topic("t", 1)
    r = c.join("g", ["t"])
    c.commit("g", r.member_id, r.member_epoch, {("t", 0): 1})
    code, reason, _ = refused(c.groups.DeleteGroup, gpb.DeleteGroupRequest(group_id="g"))
    assert (code, reason) == (FAILED, "NON_EMPTY_GROUP")
    c.beat("g", r.member_id, -1)  # leave
    assert c.describe("g").state == gpb.GROUP_STATE_EMPTY
    c.groups.DeleteGroup(gpb.DeleteGroupRequest(group_id="g"), timeout=10)
    assert c.committed("g") == {}
    for call in (c.groups.DeleteGroup, c.groups.DescribeGroup):
        req = (
            gpb.DeleteGroupRequest if call == c.groups.DeleteGroup else gpb.DescribeGroupRequest
        )(group_id="g")
        code, reason, _ = refused(call, req)
        assert (code, reason) == (NOT_FOUND, "GROUP_ID_NOT_FOUND")
    assert [g.group_id for g in c.groups.ListGroups(gpb.ListGroupsRequest()).groups] == []


def test_topic_changes_retarget_groups_without_restarts(client: Client) -> None:
    """CreatePartitions, a new topic matching a regex and DeleteTopic change the members'
    assignment at their next heartbeat."""
    c = client
    c.topic("t", 2)
    r = c.join("g", ["t"])
    m, e = r.member_id, r.member_epoch
    assert tps(r.assignment) == {("t", 0), ("t", 1)}
    c.log.CreatePartitions(pb.CreatePartitionsRequest(name="t", partitions=4), timeout=10)
    r = c.beat("g", m, e, tps(r.assignment))
    assert tps(r.assignment) == {("t", p) for p in range(4)}
    x = c.join("rx", regex="ev-.*")
    assert tps(x.assignment) == set()
    c.topic("ev-1", 2)
    x = c.beat("rx", x.member_id, x.member_epoch, set())
    assert tps(x.assignment) == {("ev-1", 0), ("ev-1", 1)}
    c.log.DeleteTopic(pb.DeleteTopicRequest(name="ev-1"), timeout=10)
    x = c.beat("rx", x.member_id, x.member_epoch, tps(x.assignment))
    x = c.beat("rx", x.member_id, x.member_epoch, tps(x.assignment))
    assert tps(x.assignment) == set()


def test_every_wrong_input_has_its_precise_status(client: Client) -> None:
    """Bad ids, subscriptions, epochs, offsets, metadata and limits: each its code + reason."""
    c = client
    c.topic("t", 1)
    r = c.join("g", ["t"])
    m, e = r.member_id, r.member_epoch
    inv = (INVALID, "INVALID_GROUP_REQUEST")
    assert refused(c.join, "", ["t"])[:2] == inv
    assert refused(c.join, "x" * 256, ["t"])[:2] == inv
    assert refused(c.join, "g")[:2] == inv  # no subscription on a join
    assert refused(c.join, "g", regex="(")[:2] == inv
    assert refused(c.join, "g", ["t"], assignor="nope")[:2] == inv
    assert refused(c.beat, "g", m, -5)[:2] == inv
    assert refused(c.beat, "g", "unknown-id", 3)[:2] == (FAILED, "UNKNOWN_MEMBER_ID")
    assert refused(c.commit, "g", m, e, {("t", 0): -1})[:2] == inv
    req = gpb.OffsetCommitRequest(
        group_id="g",
        member_id=m,
        member_epoch=e,
        partitions=[
            gpb.OffsetCommitPartition(topic="t", partition=0, offset=1, metadata="x" * 5000)
        ],
    )
    code, reason, msg = refused(c.groups.OffsetCommit, req)
    assert (code, reason) == inv and "max_commit_metadata_bytes" in msg
    assert refused(c.groups.OffsetFetch, gpb.OffsetFetchRequest(group_id=""))[:2] == inv
    assert refused(c.describe, "")[:2] == inv
    assert refused(c.groups.DeleteGroup, gpb.DeleteGroupRequest(group_id=""))[:2] == inv
    assert refused(c.groups.LeaveGroup, gpb.LeaveGroupRequest(group_id="g"))[:2] == inv
    assert refused(c.groups.LeaveGroup, gpb.LeaveGroupRequest(group_id="g", member_id="gone"))[
        :2
    ] == (FAILED, "UNKNOWN_MEMBER_ID")
    for _ in range(3):
        c.join("g", ["t"])
    code, reason, msg = refused(c.join, "g", ["t"])
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "GROUP_MAX_SIZE_REACHED")
    assert "max_members_per_group" in msg
    for i in range(19):
        c.join(f"g{i}", ["t"])
    code, reason, msg = refused(c.join, "one-too-many", ["t"])
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MAX_GROUPS_REACHED")
    assert c.committed("g") == {}  # nothing refused changed anything
    assert len(c.describe("g").members) == 4


def test_clients_cannot_write_or_delete_the_internal_topic(client: Client) -> None:
    """Produce, DeleteTopic, CreatePartitions, AlterTopicConfig and DeleteRecords on
    __consumer_offsets are INVALID_ARGUMENT (INVALID_TOPIC_NAME); the groups are unharmed.
    Health reports the Groups service SERVING."""
    c = client
    c.topic("t", 1)
    r = c.join("g", ["t"])
    c.commit("g", r.member_id, r.member_epoch, {("t", 0): 0})
    name = "__consumer_offsets"
    rec = [records_pb2.Record(key=b'[0,"g"]', value=None)]
    calls = [
        (c.log.Produce, pb.ProduceRequest(topic=name, partition=0, records=rec)),
        (c.log.DeleteTopic, pb.DeleteTopicRequest(name=name)),
        (c.log.CreatePartitions, pb.CreatePartitionsRequest(name=name, partitions=2)),
        (c.log.AlterTopicConfig, pb.AlterTopicConfigRequest(name=name, set={"retention_ms": "1"})),
        (c.log.DeleteRecords, pb.DeleteRecordsRequest(topic=name, partition=0, before_offset=1)),
    ]
    for fn, req in calls:
        code, reason, msg = refused(fn, req, timeout=10)
        assert (code, reason) == (INVALID, "INVALID_TOPIC_NAME") and "internal" in msg, req
    assert c.committed("g") == {("t", 0): 0}
    assert [x.member_id for x in c.describe("g").members] == [r.member_id]
    health = health_pb2_grpc.HealthStub(c.channel)
    for service in ("logstore.v1.Groups", "logstore.v1.LogStore"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_static_member_reclaims_its_partitions_without_moving_others(client: Client) -> None:
    """A static member that leaves temporarily (-2) and rejoins with its instance id gets
    the same partitions back, the other member's assignment and the group epoch unchanged,
    and the old member id is fenced."""
    c = client
    c.topic("t4", 4)
    a = c.join("g", ["t4"], instance_id="pod-a")
    (ma, ea), (mb, eb) = stable_pair_from(c, "g", "t4", a)
    before = c.describe("g")
    owned = {m.member_id: tps(m.assigned) for m in before.members}
    c.groups.LeaveGroup(
        gpb.LeaveGroupRequest(group_id="g", member_id=ma, temporary=True), timeout=10
    )
    back = c.join("g", ["t4"], instance_id="pod-a")
    assert back.member_id != ma and tps(back.assignment) == owned[ma]
    rb = c.beat("g", mb, eb, owned[mb])
    assert tps(rb.assignment) == owned[mb] and not tps(rb.revoking)
    assert c.describe("g").group_epoch == before.group_epoch
    assert refused(c.beat, "g", ma, ea)[:2] == (FAILED, "UNKNOWN_MEMBER_ID")


def stable_pair_from(
    c: Client, group: str, topic: str, a: gpb.ConsumerGroupHeartbeatResponse
) -> tuple[tuple[str, int], tuple[str, int]]:
    """``a`` (already joined) and a new member, heartbeating until the group is stable."""
    b = c.join(group, [topic])
    state = {a.member_id: (a.member_epoch, tps(a.assignment)), b.member_id: (b.member_epoch, set())}
    for _ in range(6):
        for mid, (epoch, owned) in list(state.items()):
            r = c.beat(group, mid, epoch, owned)
            state[mid] = (r.member_epoch, tps(r.assignment))
    assert c.describe(group).state == gpb.GROUP_STATE_STABLE
    return (a.member_id, state[a.member_id][0]), (b.member_id, state[b.member_id][0])


def test_acknowledged_batched_commits_survive_kill_9(tmp_path: Path) -> None:
    """Commits from 16 concurrent committers (answered in batches sharing one fsync) that
    were acknowledged before a kill -9 are all there after the restart: each group's
    committed offset is at least its last acknowledged one, at most its last sent one."""
    n = 16
    b = start_broker(tmp_path / "data", env=ENV)
    c = Client(b.grpc_address, b)
    try:
        c.topic("t", n)
        members = []
        for i in range(n):
            r = c.join(f"g{i}", ["t"])
            assert tps(r.assignment) == {("t", p) for p in range(n)}
            members.append((r.member_id, r.member_epoch))
        acked = [0] * n
        sent = [0] * n
        stop = threading.Event()

        def commit_loop(i: int) -> None:
            member, epoch = members[i]
            while not stop.is_set():
                sent[i] += 1
                try:
                    c.commit(f"g{i}", member, epoch, {("t", i): sent[i]})
                except grpc.RpcError:
                    return  # the broker is gone
                acked[i] = sent[i]

        threads = [threading.Thread(target=commit_loop, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while min(acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        b.kill()
        stop.set()
        for t in threads:
            t.join(10)
        assert min(acked) >= 20, acked
    finally:
        c.close()
        b.kill()
    b2 = start_broker(tmp_path / "data", env=ENV)
    c2 = Client(b2.grpc_address, b2)
    try:
        for i in range(n):
            got = c2.committed(f"g{i}")[("t", i)]
            assert acked[i] <= got <= sent[i], (i, acked[i], got, sent[i])
    finally:
        c2.close()
        b2.stop()
