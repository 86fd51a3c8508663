"""The coordinator's protocol, scenario by scenario (KIP-848): join, incremental
revocation, fencing, timeouts, static members, metadata changes, offsets, admin,
bounds. Every step goes through the Harness, which checks after each one that a
replay of the log (and of its compacted form) equals the live state."""

from __future__ import annotations

import dataclasses
import time

import pytest

from logstore.coordinator import (
    EMPTY,
    LEAVE_EPOCH,
    RECONCILING,
    STABLE,
    STATIC_LEAVE_EPOCH,
    HeartbeatReply,
    ResetPlanEntry,
    TopicPartition,
)
from logstore.errors import (
    FailedPreconditionError,
    FencedMemberEpochError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    GroupNotEmptyError,
    InvalidGroupRequestError,
    PartitionNotAssignedError,
    StaleMemberEpochError,
    TooManyGroupsError,
    UnknownMemberIdError,
)
from tests.coordinator_harness import TEST_CONFIG, Harness


class Client:
    """An honest member: reports what it owns, releases what it is told to."""

    def __init__(self, h: Harness, group: str = "g", **join: object) -> None:
        self.h, self.group = h, group
        self.reply = h.run(h.coord.heartbeat(group, "", 0, now_ms=h_now(h), **join))  # type: ignore[arg-type]
        self.owned: frozenset[TopicPartition] = self.reply.assigned

    @property
    def id(self) -> str:
        return self.reply.member_id

    def beat(self, now_ms: int, release: bool = True) -> HeartbeatReply:
        self.reply = self.h.run(
            self.h.coord.heartbeat(
                self.group, self.id, self.reply.member_epoch, owned=self.owned, now_ms=now_ms
            )
        )
        self.owned = self.reply.assigned if release else self.owned | self.reply.assigned
        return self.reply

    def commit(self, now_ms: int, offset: int = 1) -> None:
        self.h.run(
            self.h.coord.commit_offsets(
                self.group,
                self.id,
                self.reply.member_epoch,
                {tp: (offset, "") for tp in self.owned},
                now_ms=now_ms,
            )
        )


def h_now(h: Harness) -> int:
    return getattr(h, "now", 0)


def settle(clients: list[Client], now_ms: int, rounds: int = 4) -> None:
    for i in range(rounds):
        for c in clients:
            c.beat(now_ms + i)


def _owners(h: Harness, group: str = "g") -> dict[TopicPartition, str]:
    out: dict[TopicPartition, str] = {}
    for m in h.coord.describe_group(group).members:
        for tp in m.assigned | m.revoking:
            assert tp not in out, f"{tp} owned by {out[tp]} and {m.member_id}"
            out[tp] = m.member_id
    return out


def _all(topic: str, n: int) -> set[TopicPartition]:
    return {(topic, p) for p in range(n)}


def test_join_gets_every_partition_and_the_heartbeat_interval() -> None:
    """A lone member gets all partitions at epoch 1 and is told the heartbeat interval."""
    h = Harness({"t": 4})
    a = Client(h, topics=["t"])
    assert a.reply.member_epoch == 1
    assert a.reply.assigned == _all("t", 4)
    assert a.reply.heartbeat_interval_ms == TEST_CONFIG.heartbeat_interval_ms
    assert h.coord.describe_group("g").state == STABLE


def test_steady_heartbeats_append_nothing() -> None:
    """Once stable, heartbeats change no state and return no records."""
    h = Harness({"t": 4})
    a, b = Client(h, topics=["t"]), Client(h, topics=["t"])
    settle([a, b], 10)
    n = len(h.log)
    settle([a, b], 20)
    assert len(h.log) == n


def test_partition_moves_only_after_the_old_owner_releases_it() -> None:
    """Incremental revocation: B gets A's partitions only once A's heartbeat shows them released."""
    h = Harness({"t": 4})
    a = Client(h, topics=["t"])
    b = Client(h, topics=["t"])
    assert b.reply.assigned == frozenset()  # all still owned by A
    moving = a.beat(1, release=False)  # a slow A: still holds everything
    assert moving.revoking and moving.assigned | moving.revoking == _all("t", 4)
    kept = moving.assigned
    assert b.beat(2).assigned == frozenset()
    _owners(h)
    a.owned = kept  # A commits and releases
    a.beat(3)
    assert a.reply.revoking == frozenset() and a.reply.assigned == kept
    assert b.beat(4).assigned == _all("t", 4) - kept
    assert h.coord.describe_group("g").state == STABLE
    assert a.reply.member_epoch == b.reply.member_epoch == 2


def test_member_not_releasing_within_rebalance_timeout_is_fenced() -> None:
    """Holding revoked partitions past rebalance_timeout_ms gets a member removed."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"])
    b = Client(h, topics=["t"])
    for t in range(1, 1900, 90):  # A heartbeats (alive) but never releases
        a.beat(t, release=False)
        b.beat(t)
    assert h.coord.tick(1900).records == ()
    tick = h.coord.tick(2_001 + 1)
    assert tick.records
    h.records(tick.records)
    with pytest.raises(UnknownMemberIdError):
        a.beat(2_010)
    assert b.beat(2_011).assigned == _all("t", 2)


def test_session_timeout_removes_member_and_rejects_it_afterwards() -> None:
    """A silent member is removed at session_timeout_ms; its heartbeat and commit then fail."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"])
    b = Client(h, topics=["t"])
    settle([a, b], 1)
    for t in range(100, 1100, 100):
        b.beat(t)
    tick = h.coord.tick(999)
    assert tick.records == () and tick.next_deadline_ms == 1_004  # A beat last at 4
    assert h.coord.tick(1_003).records == ()
    h.records(h.coord.tick(1_004).records)
    with pytest.raises(UnknownMemberIdError) as hb:
        a.beat(1_004)
    assert hb.value.reason == "UNKNOWN_MEMBER_ID" and hb.value.status == "FAILED_PRECONDITION"
    assert "rejoin with epoch 0" in str(hb.value)
    with pytest.raises(UnknownMemberIdError):
        a.commit(1_005)
    settle([b], 1_006)
    assert b.owned == _all("t", 2)


def test_stale_epoch_is_fenced_but_a_lost_reply_is_forgiven() -> None:
    """An old epoch is fenced, unless it is the previous one and owns nothing new."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"])
    b = Client(h, topics=["t"])
    settle([a, b], 1)
    assert a.reply.member_epoch == 2
    # the reply that moved A to epoch 2 was "lost": it retries with epoch 1
    again = h.run(h.coord.heartbeat("g", a.id, 1, owned=a.owned, now_ms=10))
    assert again.member_epoch == 2
    with pytest.raises(FencedMemberEpochError) as e:
        h.coord.heartbeat("g", a.id, 7, owned=a.owned, now_ms=11)
    assert e.value.reason == "FENCED_MEMBER_EPOCH"
    with pytest.raises(
        FencedMemberEpochError
    ):  # previous epoch claiming partitions it was never given
        h.coord.heartbeat("g", a.id, 1, owned=_all("t", 2), now_ms=12)


def test_leave_reassigns_at_once() -> None:
    """Epoch -1 removes the member now; the others get its partitions on their next heartbeat."""
    h = Harness({"t": 4})
    a, b = Client(h, topics=["t"]), Client(h, topics=["t"])
    settle([a, b], 1)
    bye = h.run(h.coord.heartbeat("g", a.id, a.reply.member_epoch, now_ms=10))
    bye = h.run(h.coord.heartbeat("g", a.id, LEAVE_EPOCH, now_ms=11))
    assert bye.member_epoch == LEAVE_EPOCH and bye.assigned == frozenset()
    assert b.beat(12).assigned == _all("t", 4)
    with pytest.raises(UnknownMemberIdError):
        h.coord.heartbeat("g", a.id, LEAVE_EPOCH, now_ms=13)


def test_static_member_restart_gets_its_partitions_back_moving_nobody() -> None:
    """Static member: -2 then rejoin: same partitions, others untouched, no epoch bump."""
    h = Harness({"t": 6})
    a = Client(h, topics=["t"], instance_id="pod-a")
    b = Client(h, topics=["t"], instance_id="pod-b")
    c = Client(h, topics=["t"])
    settle([a, b, c], 1)
    before = {x.id: x.owned for x in (a, b, c)}
    epoch = h.coord.describe_group("g").epoch
    left = h.run(h.coord.heartbeat("g", a.id, STATIC_LEAVE_EPOCH, now_ms=10))
    assert left.member_epoch == STATIC_LEAVE_EPOCH
    for x in (b, c):
        assert x.beat(11).assigned == before[x.id]  # nobody takes A's partitions
    a2 = Client(h, topics=["t"], instance_id="pod-a")
    assert a2.id != a.id and a2.reply.assigned == before[a.id]
    settle([a2, b, c], 20)
    assert {x.id: x.owned for x in (b, c)} == {b.id: before[b.id], c.id: before[c.id]}
    assert h.coord.describe_group("g").epoch == epoch
    with pytest.raises(UnknownMemberIdError):
        a.beat(30)


def test_static_member_crash_rejoin_fences_the_old_process() -> None:
    """A static member rejoining while its old id is live replaces it; the old id is fenced."""
    h = Harness({"t": 4})
    a = Client(h, topics=["t"], instance_id="pod-a")
    b = Client(h, topics=["t"])
    settle([a, b], 1)
    mine = a.owned
    a2 = Client(h, topics=["t"], instance_id="pod-a")
    assert a2.reply.assigned == mine
    _owners(h)
    with pytest.raises(FailedPreconditionError):
        a.beat(10)
    with pytest.raises(FailedPreconditionError):
        a.commit(11)


def test_static_member_that_never_returns_times_out() -> None:
    """A static member gone with -2 keeps its partitions only until its session times out."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"], instance_id="pod-a")
    b = Client(h, topics=["t"])
    settle([a, b], 1)
    h.run(h.coord.heartbeat("g", a.id, STATIC_LEAVE_EPOCH, now_ms=10))
    for t in range(100, 1200, 100):
        b.beat(t)
    h.records(h.coord.tick(1_010).records)
    settle([b], 1_020)
    assert b.owned == _all("t", 2)


def test_metadata_changes_update_targets() -> None:
    """Partitions added, a topic newly matching a regex, a topic deleted: the assignment follows."""
    h = Harness({"t": 2})
    a = Client(h, regex="t.*")
    assert a.owned == _all("t", 2)
    h.metadata({"t": 4}, 1)
    settle([a], 2)
    assert a.owned == _all("t", 4)
    h.metadata({"t": 4, "t2": 1, "__consumer_offsets": 50, "other": 3}, 3)
    settle([a], 4)
    assert a.owned == _all("t", 4) | {("t2", 0)}  # regex never matches internal topics
    h.metadata({"t2": 1}, 5)
    r = a.beat(6, release=False)
    assert r.revoking == _all("t", 4)
    settle([a], 7)
    assert a.owned == {("t2", 0)}
    assert h.coord.describe_group("g").state == STABLE


def test_a_backtracking_regex_cannot_stall_the_coordinator() -> None:
    """Subscription regexes match in linear time (RE2, as Kafka's RE2J): ``(a+)+$``
    against a topic of 32 "a"s and a "b" resolves at once (Python's backtracking ``re``
    takes about 2**32 steps), and RE2-only syntax errors are refused naming the regex."""
    h = Harness({"a" * 32 + "b": 1, "aaa": 1})
    started = time.monotonic()
    a = Client(h, regex="(a+)+$")
    assert time.monotonic() - started < 2.0
    assert a.owned == {("aaa", 0)}
    with pytest.raises(InvalidGroupRequestError, match="RE2"):
        h.coord.heartbeat("g2", "", 0, now_ms=1, regex="(?=a)a")


def test_commit_checks_member_epoch_and_ownership() -> None:
    """Commits need the current epoch and owned partitions; metadata is bounded; fetch reads."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"])
    a.commit(1, offset=5)
    got = h.coord.fetch_offsets("g")
    assert {tp: c.offset for tp, c in got.items()} == {("t", 0): 5, ("t", 1): 5}
    assert got[("t", 0)].commit_ms == 1 and got[("t", 0)].leader_epoch == -1
    b = Client(h, topics=["t"])
    settle([a, b], 2)
    with pytest.raises(StaleMemberEpochError) as e:
        h.coord.commit_offsets("g", a.id, 1, {next(iter(a.owned)): (6, "")}, now_ms=3)
    assert e.value.reason == "STALE_MEMBER_EPOCH"
    with pytest.raises(PartitionNotAssignedError, match="nothing was committed"):
        h.coord.commit_offsets(
            "g", a.id, a.reply.member_epoch, {("t", 0): (6, ""), ("t", 1): (6, "")}, now_ms=3
        )
    tp = next(iter(a.owned))
    limit = TEST_CONFIG.max_commit_metadata_bytes
    with pytest.raises(InvalidGroupRequestError, match="max_commit_metadata_bytes"):
        h.coord.commit_offsets("g", a.id, a.reply.member_epoch, {tp: (6, "é" * limit)}, now_ms=4)
    with pytest.raises(InvalidGroupRequestError, match="non-negative"):
        h.coord.commit_offsets("g", a.id, a.reply.member_epoch, {tp: (-1, "")}, now_ms=4)
    h.run(h.coord.commit_offsets("g", a.id, a.reply.member_epoch, {tp: (9, "x" * limit)}, now_ms=5))
    assert h.coord.fetch_offsets("g", [tp, ("nope", 0)]) == {
        tp: dataclasses.replace(h.coord.fetch_offsets("g")[tp])
    }
    assert h.coord.fetch_offsets("g", [tp])[tp].offset == 9
    assert h.coord.fetch_offsets("unknown") == {}


def test_offsets_of_an_empty_group_expire_after_retention() -> None:
    """offsets_retention_ms after the group emptied, its offsets and the group are deleted."""
    h = Harness({"t": 1})
    a = Client(h, topics=["t"])
    a.commit(1)
    h.run(h.coord.heartbeat("g", a.id, LEAVE_EPOCH, now_ms=100))
    assert h.coord.describe_group("g").state == EMPTY
    tick = h.coord.tick(101)
    assert tick.records == () and tick.next_deadline_ms == 100 + TEST_CONFIG.offsets_retention_ms
    h.records(h.coord.tick(100 + TEST_CONFIG.offsets_retention_ms).records)
    with pytest.raises(GroupIdNotFoundError):
        h.coord.describe_group("g")


def test_a_group_emptied_without_offsets_is_deleted_at_once() -> None:
    """A group whose last member leaves with nothing committed leaves no state behind."""
    h = Harness({"t": 1})
    a = Client(h, topics=["t"])
    h.run(h.coord.heartbeat("g", a.id, LEAVE_EPOCH, now_ms=1))
    assert h.coord.list_groups() == [] and h.coord.snapshot() == {}


def test_admin_list_describe_delete_reset() -> None:
    """List/describe report members and offsets; delete/reset only when empty; dry run plans."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"], client_id="cli-1", host="10.0.0.1")
    a.commit(1, offset=10)
    [listing] = h.coord.list_groups()
    assert (listing.group_id, listing.state, listing.member_count) == ("g", STABLE, 1)
    d = h.coord.describe_group("g")
    [m] = d.members
    assert (m.client_id, m.host, m.assigned, d.assignor) == (
        "cli-1",
        "10.0.0.1",
        _all("t", 2),
        "uniform",
    )
    assert {tp: c.offset for tp, c in d.offsets.items()} == {("t", 0): 10, ("t", 1): 10}
    with pytest.raises(GroupNotEmptyError) as e:
        h.coord.delete_group("g")
    assert e.value.reason == "NON_EMPTY_GROUP"
    with pytest.raises(GroupNotEmptyError):
        h.coord.reset_offsets("g", _all("t", 2), lambda tp, cur: 0, now_ms=2)
    h.run(h.coord.heartbeat("g", a.id, LEAVE_EPOCH, now_ms=3))
    shift = h.coord.reset_offsets(
        "g", [("t", 0), ("t", 1), ("t", 1)], lambda tp, cur: (cur or 0) - 3, now_ms=4, dry_run=True
    )
    assert shift.records == ()
    assert shift.reply == (ResetPlanEntry("t", 0, 10, 7), ResetPlanEntry("t", 1, 10, 7))
    h.run(h.coord.reset_offsets("g", [("t", 0)], lambda tp, cur: 0, now_ms=5))
    assert h.coord.fetch_offsets("g")[("t", 0)].offset == 0
    with pytest.raises(InvalidGroupRequestError):
        h.coord.reset_offsets("g", [("t", 0)], lambda tp, cur: -1, now_ms=6)
    h.run(h.coord.delete_group("g"))
    assert h.coord.snapshot() == {}
    with pytest.raises(GroupIdNotFoundError) as nf:
        h.coord.delete_group("g")
    assert nf.value.status == "NOT_FOUND"
    with pytest.raises(GroupIdNotFoundError):
        h.coord.reset_offsets("g", [("t", 0)], lambda tp, cur: 0, now_ms=7)


def test_range_assignor_when_members_ask_for_it() -> None:
    """A group whose members name `range` uses it, and describe says so."""
    h = Harness({"a": 2, "b": 2})
    x = Client(h, topics=["a", "b"], assignor="range")
    y = Client(h, topics=["a", "b"], assignor="range")
    settle([x, y], 1)
    assert h.coord.describe_group("g").assignor == "range"
    for c in (x, y):
        assert {p for t, p in c.owned if t == "a"} == {p for t, p in c.owned if t == "b"}


def test_restart_replays_to_the_same_state_and_members_continue() -> None:
    """After load() from the log, members heartbeat on with their epochs as if nothing happened."""
    h = Harness({"t": 4})
    a, b = Client(h, topics=["t"]), Client(h, topics=["t"])
    a.beat(1, release=False)  # mid-rebalance
    h.restart(now_ms=5)
    h.check_replay()
    settle([a, b], 6)
    assert a.owned | b.owned == _all("t", 4) and not a.owned & b.owned
    # timers were re-armed from the load time: nobody expires before 5 + session
    assert h.coord.tick(9).records == ()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"topics": ["t"], "regex": "t"}, "not both"),
        ({}, "must give topic names or a regex"),
        ({"regex": "("}, "regex"),
        ({"regex": "x" * (TEST_CONFIG.max_regex_length + 1)}, "max_regex_length"),
        (
            {"topics": [f"t{i}" for i in range(TEST_CONFIG.max_subscribed_topics + 1)]},
            "max_subscribed_topics",
        ),
        ({"topics": ["t"], "assignor": "sticky"}, "unsupported assignor"),
        ({"topics": ["t"], "instance_id": "i" * 300}, "max_instance_id_length"),
        ({"topics": ["t"], "client_id": "c" * 300}, "max_client_id_length"),
        ({"topics": ["t"], "host": "h" * 300}, "max_host_length"),
        ({"topics": ["t"], "rebalance_timeout_ms": 10**9}, "max_rebalance_timeout_ms"),
    ],
)
def test_bad_join_requests_are_refused_naming_the_rule(
    kwargs: dict[str, object], words: str
) -> None:
    """Each malformed join raises InvalidGroupRequestError saying the limit, and changes nothing."""
    h = Harness({"t": 1})
    with pytest.raises(InvalidGroupRequestError, match=words) as e:
        h.coord.heartbeat("g", "", 0, now_ms=0, **kwargs)  # type: ignore[arg-type]
    assert e.value.status == "INVALID_ARGUMENT" and e.value.reason == "INVALID_GROUP_REQUEST"
    assert h.coord.snapshot() == {}


def test_ids_are_bounded() -> None:
    """Group and member ids above their limits, and bad epochs, are refused."""
    h = Harness({"t": 1})
    with pytest.raises(InvalidGroupRequestError, match="max_group_id_length"):
        h.coord.heartbeat("g" * 256, "", 0, topics=["t"], now_ms=0)
    with pytest.raises(InvalidGroupRequestError, match="max_member_id_length"):
        h.coord.heartbeat("g", "m" * 65, 0, topics=["t"], now_ms=0)
    with pytest.raises(InvalidGroupRequestError, match="non-empty"):
        h.coord.heartbeat("", "", 0, topics=["t"], now_ms=0)
    with pytest.raises(InvalidGroupRequestError, match="epoch -3"):
        h.coord.heartbeat("g", "m", -3, now_ms=0)


def test_a_flood_of_joins_is_bounded_and_drains() -> None:
    """Joins beyond max_members_per_group / max_groups are refused; silent ones expire."""
    cfg = dataclasses.replace(TEST_CONFIG, max_members_per_group=5, max_groups=3)
    h = Harness({"t": 8}, config=cfg)
    for _ in range(5):
        h.run(h.coord.heartbeat("g", "", 0, topics=["t"], now_ms=0))
    with pytest.raises(
        GroupMaxSizeReachedError, match=r"limit is 5 \(max_members_per_group\)"
    ) as e:
        h.coord.heartbeat("g", "", 0, topics=["t"], now_ms=0)
    assert e.value.status == "RESOURCE_EXHAUSTED"
    for g in ("g2", "g3"):
        h.run(h.coord.heartbeat(g, "", 0, topics=["t"], now_ms=0))
    with pytest.raises(TooManyGroupsError, match=r"limit is 3 \(max_groups\)"):
        h.coord.heartbeat("g4", "", 0, topics=["t"], now_ms=0)
    h.records(h.coord.tick(cfg.session_timeout_ms).records)
    assert h.coord.snapshot() == {}  # nobody heartbeated, nothing committed: all gone
    h.run(h.coord.heartbeat("g4", "", 0, topics=["t"], now_ms=cfg.session_timeout_ms))


def test_a_refused_request_changes_nothing() -> None:
    """A handler that raises leaves state and timers as they were."""
    h = Harness({"t": 2})
    a = Client(h, topics=["t"])
    before = h.coord.snapshot()
    with pytest.raises(FencedMemberEpochError):
        h.coord.heartbeat("g", a.id, 99, owned=a.owned, now_ms=10_000)
    assert h.coord.snapshot() == before
    assert h.coord.describe_group("g").state == STABLE
    assert h.coord.tick(999).records == ()  # the refused heartbeat did not refresh the session
    assert h.coord.tick(1_000).records != ()
    assert RECONCILING  # the constant is exported
