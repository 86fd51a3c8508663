"""Focused tests of logstore.share: errors, bounds, records, and each delivery rule on its own."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from logstore.errors import (
    CorruptRecordError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    GroupNotEmptyError,
    InvalidConfigError,
    InvalidGroupRequestError,
    ResourceExhaustedError,
    TooManyGroupsError,
    UnknownMemberIdError,
)
from logstore.share import (
    ACCEPTED,
    AVAILABLE,
    GAP,
    Ack,
    AckError,
    AckKind,
    Candidates,
    DeadLetterReason,
    ShareCoordinator,
    ShareCoordinatorConfig,
    ShareGroupConfig,
    ShareRecord,
    decode,
    encode,
)

NOW = 1_000_000


class Broker:
    """Plays the broker: appends and replays every result, reads a model log."""

    def __init__(self, group: ShareGroupConfig | None = None, **ccfg: Any) -> None:
        self.c = ShareCoordinator(ShareCoordinatorConfig(**ccfg), {"t": 1, "hi": 1, "lo": 1})
        self.log: list[ShareRecord] = []
        self.topics: dict[str, list[tuple[int, int, int]]] = {"t": [], "hi": [], "lo": []}
        if group is not None:
            self.run(self.c.configure_group("g", group))

    def run(self, result: Any) -> Any:
        self.log.extend(result.records)
        return self.c.apply(result)

    def produce(
        self, topic: str, n: int, *, ts: int = NOW, deliver_at: int = 0, key: int = 0
    ) -> None:
        self.topics[topic] += [(ts, deliver_at, key)] * n

    def join(self, cid: str, topics: tuple[str, ...] = ("t",), now: int = NOW) -> None:
        self.run(self.c.join("g", list(topics), now_ms=now, consumer_id=cid))

    def fetch(self, cid: str, n: int, now: int = NOW) -> list[tuple[str, int, int]]:
        cands = {}
        for r in self.c.fetch_plan("g", cid, now_ms=now):
            log = self.topics[r.topic]
            start = r.start_offset or 0
            end = min(len(log), start + r.max_offsets)
            rows = log[start:end]
            cands[(r.topic, r.partition)] = Candidates(
                start,
                end,
                np.arange(start, end, dtype=np.int64),
                np.array([x[0] for x in rows], dtype=np.int64),
                np.array([x[1] for x in rows], dtype=np.int64),
                np.array([x[2] for x in rows], dtype=np.uint64),
            )
        self.last = self.run(self.c.acquire("g", cid, max_records=n, now_ms=now, candidates=cands))
        return [
            (a.topic, o, a.delivery_count)
            for a in self.last.acquired
            for o in range(a.first_offset, a.last_offset + 1)
        ]

    def ack(self, cid: str, *acks: Ack, now: int = NOW) -> Any:
        return self.run(self.c.acknowledge("g", cid, list(acks), now_ms=now))


def ack(first: int, last: int, kind: AckKind = AckKind.ACCEPT, **kw: Any) -> Ack:
    return Ack("t", 0, first, last, kind, **kw)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_delivery_attempts": 0}, "max_delivery_attempts"),
        ({"max_inflight_records": 0}, "max_inflight_records"),
        ({"visibility_timeout_ms": 0}, "visibility_timeout_ms"),
        ({"message_ttl_ms": 0}, "message_ttl_ms"),
        ({"dead_letter_topic": "__x"}, "dead_letter_topic"),
        ({"auto_offset_reset": "middle"}, "auto_offset_reset"),
        ({"topic_priorities": {"a": "high"}}, "topic_priorities"),
    ],
)
def test_group_config_refuses_bad_values_naming_the_field(kwargs: Any, names: str) -> None:
    """Each bad group setting is refused with the field's name in the message."""
    with pytest.raises(InvalidConfigError, match=names):
        ShareGroupConfig(**kwargs)


def test_coordinator_config_cross_checks() -> None:
    """min above max visibility, and heartbeat >= session, are refused by name."""
    with pytest.raises(InvalidConfigError, match="min_visibility_timeout_ms"):
        ShareCoordinatorConfig(min_visibility_timeout_ms=10_000, max_visibility_timeout_ms=5_000)
    with pytest.raises(InvalidConfigError, match="heartbeat_interval_ms"):
        ShareCoordinatorConfig(heartbeat_interval_ms=45_000)


def test_visibility_timeout_outside_the_broker_bounds_is_refused() -> None:
    """A group's lock below min_visibility_timeout_ms is refused and writes nothing."""
    c = ShareCoordinator()
    with pytest.raises(InvalidGroupRequestError, match="min/max_visibility_timeout_ms"):
        c.configure_group("g", ShareGroupConfig(visibility_timeout_ms=10))
    assert c.list_groups() == ()


# ------------------------------------------------------------------ bounds


def test_group_and_consumer_limits_name_themselves() -> None:
    """max_groups and max_consumers_per_group refuse the next one, by name."""
    b = Broker(max_groups=1, max_consumers_per_group=2)
    b.join("a")
    b.join("b")
    with pytest.raises(GroupMaxSizeReachedError, match="max_consumers_per_group"):
        b.join("c")
    with pytest.raises(TooManyGroupsError, match="max_groups"):
        b.c.join("other", ["t"], now_ms=NOW)
    b.join("a")  # a current member re-joins: not a new one


def test_share_partition_limit() -> None:
    """max_share_partitions refuses an acquisition that would create one more."""
    b = Broker(max_share_partitions=1)
    b.join("a", ("hi", "lo"))
    with pytest.raises(ResourceExhaustedError, match="max_share_partitions"):
        b.fetch("a", 1)


def test_request_bounds() -> None:
    """Fetch size, ack ranges, delays, locks, error text and offsets are checked first."""
    b = Broker(max_ack_ranges=2, max_error_text_bytes=4, max_fetch_records=5)
    b.join("a")
    with pytest.raises(InvalidGroupRequestError, match="max_fetch_records"):
        b.fetch("a", 6)
    with pytest.raises(InvalidGroupRequestError, match="max_ack_ranges"):
        b.ack("a", ack(0, 0), ack(1, 1), ack(2, 2))
    with pytest.raises(InvalidGroupRequestError, match="max_error_text_bytes"):
        b.ack("a", ack(0, 0, AckKind.REJECT, error="too long"))
    with pytest.raises(InvalidGroupRequestError, match="max_release_delay_ms"):
        b.ack("a", ack(0, 0, AckKind.RELEASE, delay_ms=-1))
    with pytest.raises(InvalidGroupRequestError, match="max_visibility_timeout_ms"):
        b.ack("a", ack(0, 0, AckKind.RENEW, lock_ms=10**12))
    with pytest.raises(InvalidGroupRequestError, match="first_offset <= last_offset"):
        b.ack("a", ack(3, 2))
    with pytest.raises(InvalidGroupRequestError, match="does not subscribe"):
        b.c.acquire(
            "g",
            "a",
            max_records=1,
            now_ms=NOW,
            candidates={("lo", 0): Candidates(0, 0, np.zeros(0, np.int64), np.zeros(0, np.int64))},
        )
    with pytest.raises(InvalidGroupRequestError, match="dead-letter topic"):
        b.c.join("g", ["g.dlq"], now_ms=NOW)
    with pytest.raises(InvalidGroupRequestError, match="internal"):
        b.c.join("g", ["__share_group_state"], now_ms=NOW)


def test_unknown_consumer_and_group() -> None:
    """A consumer not in the group (or past its session) must join again."""
    b = Broker(session_timeout_ms=10_000)
    with pytest.raises(UnknownMemberIdError, match="join again"):
        b.c.fetch_plan("g", "nobody", now_ms=NOW)
    b.join("a")
    with pytest.raises(UnknownMemberIdError):
        b.c.heartbeat("g", "a", now_ms=NOW + 10_000)
    with pytest.raises(GroupIdNotFoundError):
        b.c.describe("nope", now_ms=NOW)


def test_window_bound_is_back_pressure() -> None:
    """Past max_inflight_records offsets in flight, acquisitions return fewer records."""
    b = Broker(ShareGroupConfig(max_inflight_records=4))
    b.join("a")
    b.produce("t", 10)
    assert len(b.fetch("a", 10)) == 4
    assert b.fetch("a", 10) == []
    b.ack("a", ack(0, 1))
    assert [o for _, o, _ in b.fetch("a", 10)] == [4, 5]


# ------------------------------------------------------------ acknowledging


def test_acks_on_expired_or_foreign_locks_are_refused_precisely() -> None:
    """LOCK_EXPIRED, HELD_BY_OTHER, NOT_ACQUIRED, ALREADY_ACKNOWLEDGED; none applied."""
    b = Broker(ShareGroupConfig(visibility_timeout_ms=1_000))
    b.join("a")
    b.join("b")
    b.produce("t", 4)
    assert len(b.fetch("a", 2)) == 2
    later = NOW + 1_000
    r = b.ack("a", ack(0, 0), now=later)  # lock ended at `later`: not before tick
    assert r.results[0].error is AckError.LOCK_EXPIRED
    assert [o for _, o, _ in b.fetch("b", 1, now=later)] == [0]
    r = b.ack("a", ack(0, 0), ack(1, 1), ack(3, 3), ack(9, 9), now=later)
    assert [x.error for x in r.results] == [
        AckError.HELD_BY_OTHER,
        AckError.LOCK_EXPIRED,
        AckError.NOT_ACQUIRED,
        AckError.NOT_ACQUIRED,
    ]
    assert "another consumer" in r.results[0].message
    assert b.ack("b", ack(0, 0), now=later).results[0].error is AckError.OK
    again = b.ack("a", ack(0, 0), now=later).results[0]
    assert again.error is AckError.ALREADY_ACKNOWLEDGED  # a never accepted it
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and p.value.accepted_total == 1


def test_a_repeated_acknowledgement_of_the_same_consumer_is_ok_and_applied_once() -> None:
    """A client resends a request whose reply was lost: its ACCEPT, REJECT and
    RELEASE ranges were applied the first time, so the repeat answers OK
    (remembered per consumer) and changes nothing; another consumer's ack of
    those records is still refused, and a RELEASE is forgotten once the
    consumer acquires the records again (that new delivery is checked)."""
    b = Broker(ShareGroupConfig(visibility_timeout_ms=1_000))
    b.join("a")
    b.join("b")
    b.produce("t", 6)
    assert len(b.fetch("a", 6)) == 6
    first = b.ack("a", ack(0, 1), ack(2, 2, AckKind.REJECT), ack(3, 3, AckKind.RELEASE))
    assert [x.error for x in first.results] == [AckError.OK] * 3
    n = len(b.log)
    again = b.ack("a", ack(0, 1), ack(1, 1), ack(2, 2, AckKind.REJECT), ack(3, 3, AckKind.RELEASE))
    assert [x.error for x in again.results] == [AckError.OK] * 4
    assert again.dead_letters == ()  # the REJECT is not dead-lettered twice
    assert len(b.log) == n  # nothing written: nothing applied again
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None
    assert (p.value.accepted_total, p.value.dead_lettered_total) == (2, 1)
    # another consumer, or another kind, is still refused
    assert b.ack("b", ack(0, 0)).results[0].error is AckError.ALREADY_ACKNOWLEDGED
    assert b.ack("a", ack(0, 0, AckKind.REJECT)).results[0].error is (AckError.ALREADY_ACKNOWLEDGED)
    # offset 3 released: a takes it again (delivery 2); an expired lock of that
    # delivery is refused, not answered from the memory of the first RELEASE
    assert b.fetch("a", 1) == [("t", 3, 2)]
    late = b.ack("a", ack(3, 3, AckKind.RELEASE), now=NOW + 1_000)
    assert late.results[0].error is AckError.LOCK_EXPIRED


def test_a_range_is_all_or_nothing() -> None:
    """A range holding one record the consumer does not hold changes none of it."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 3)
    b.fetch("a", 2)
    assert b.ack("a", ack(0, 2)).results[0].error is AckError.NOT_ACQUIRED
    p = b.c.partition("g", "t", 0)
    assert p is not None
    assert [s for _, s, _ in p.record_states()] == [1, 1, AVAILABLE]


def test_records_cut_from_a_reply_are_given_back_without_counting_the_attempt() -> None:
    """undeliver (what the broker calls for ranges its reply's byte budget cut): the
    records are available again at their old delivery count, so a record on its last
    attempt is not dead-lettered unseen (the broker used to RELEASE them: the attempt
    counted, and at max_delivery_attempts they went to the DLQ never delivered)."""
    b = Broker(ShareGroupConfig(max_delivery_attempts=2))
    b.join("a")
    b.join("b")
    b.produce("t", 3)
    assert b.fetch("a", 3) == [("t", 0, 1), ("t", 1, 1), ("t", 2, 1)]
    b.ack("a", ack(0, 2, AckKind.RELEASE))  # a real attempt: counted
    assert b.fetch("a", 3) == [("t", 0, 2), ("t", 1, 2), ("t", 2, 2)]  # the last attempt
    cut = [r for r in b.last.acquired]
    r = b.run(b.c.undeliver("g", "a", cut, now_ms=NOW))
    assert r == 3 and b.run(b.c.undeliver("g", "b", cut, now_ms=NOW)) == 0
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and p.value.dead_lettered_total == 0
    assert b.fetch("b", 3) == [("t", 0, 2), ("t", 1, 2), ("t", 2, 2)]
    # and a first delivery cut from its reply leaves no trace of a delivery
    b.produce("t", 1)
    assert b.fetch("a", 1) == [("t", 3, 1)]
    b.run(b.c.undeliver("g", "a", list(b.last.acquired), now_ms=NOW))
    assert [(o, s, c) for o, s, c in p.record_states() if o == 3] == [(3, AVAILABLE, 0)]


def test_renew_extends_the_lock() -> None:
    """After RENEW the record stays held past the original lock, until the new one."""
    b = Broker(ShareGroupConfig(visibility_timeout_ms=1_000))
    b.join("a")
    b.join("b")
    b.produce("t", 1)
    b.fetch("a", 1)
    b.ack("a", ack(0, 0, AckKind.RENEW, lock_ms=5_000), now=NOW + 900)
    assert b.fetch("b", 1, now=NOW + 2_000) == []
    assert b.fetch("b", 1, now=NOW + 5_900) == [("t", 0, 2)]


# --------------------------------------------------------------- delivery


def test_poison_record_dead_lettered_after_exactly_max_deliveries() -> None:
    """Delivered max_delivery_attempts times, then a release dead-letters it with its headers."""
    b = Broker(ShareGroupConfig(max_delivery_attempts=3))
    b.join("a")
    b.produce("t", 1)
    for n in range(1, 4):
        now = NOW + n * 10
        assert b.fetch("a", 1, now=now) == [("t", 0, n)]
        r = b.ack("a", ack(0, 0, AckKind.RELEASE, error=f"fail {n}"), now=now + 1)
    assert b.fetch("a", 1, now=NOW + 100) == []
    (d,) = r.dead_letters
    assert (d.topic, d.partition, d.first_offset, d.last_offset) == ("t", 0, 0, 0)
    assert (d.delivery_count, d.reason, d.error) == (3, DeadLetterReason.MAX_DELIVERIES, "fail 3")
    assert (d.first_delivery_ms, d.last_delivery_ms, d.dead_letter_topic) == (
        NOW + 10,
        NOW + 30,
        "g.dlq",
    )
    assert b.c.pending_dead_letters() == [d]
    assert b.run(b.c.dead_lettered("g", "t", 0, 0, 0)) == 1
    assert b.run(b.c.dead_lettered("g", "t", 0, 0, 0)) == 0  # a repeat is harmless
    assert b.c.pending_dead_letters() == []
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and p.value.spso == 1


def test_lock_expiry_at_the_limit_dead_letters() -> None:
    """A record whose lock expires on its last allowed delivery goes to the dead letters (tick)."""
    b = Broker(ShareGroupConfig(max_delivery_attempts=1, visibility_timeout_ms=1_000))
    b.join("a")
    b.produce("t", 2)
    b.fetch("a", 2)
    t = b.c.tick(NOW + 1_000)
    b.log.extend(t.records)
    for r in t.records:
        b.c.replay(r)
    assert [(d.first_offset, d.last_offset, d.reason) for d in t.dead_letters] == [
        (0, 1, DeadLetterReason.MAX_DELIVERIES)
    ]


def test_reject_dead_letters_with_the_reason() -> None:
    """REJECT is never redelivered and carries the consumer's reason."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 2)
    b.fetch("a", 2)
    r = b.ack("a", ack(0, 1, AckKind.REJECT, error="bad json"))
    assert [(d.reason, d.error, d.delivery_count) for d in r.dead_letters] == [
        (DeadLetterReason.REJECTED, "bad json", 1)
    ]
    b.join("a", now=NOW + 10**7)
    assert b.fetch("a", 5, now=NOW + 10**7) == []


def test_delayed_records_wait_and_release_delay_uses_the_same_rule() -> None:
    """A deliver-at time, and a RELEASE delay, keep a record back until then (not a ms early)."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 1, deliver_at=NOW + 5_000)
    b.produce("t", 1)
    assert b.fetch("a", 5) == [("t", 1, 1)]
    assert b.c.describe("g", now_ms=NOW).delayed == 1
    assert b.fetch("a", 5, now=NOW + 4_999) == []
    assert b.fetch("a", 5, now=NOW + 5_000) == [("t", 0, 1)]
    b.ack("a", ack(0, 0, AckKind.RELEASE, delay_ms=2_000), now=NOW + 5_000)
    assert b.fetch("a", 5, now=NOW + 6_999) == []
    assert b.fetch("a", 5, now=NOW + 7_000) == [("t", 0, 2)]
    tick = b.c.tick(NOW + 7_000)
    assert tick.next_deadline_ms is not None


def test_ttl_dead_letters_old_records_instead_of_delivering() -> None:
    """A record older than message_ttl_ms at acquisition goes to the dead letters."""
    b = Broker(ShareGroupConfig(message_ttl_ms=1_000))
    b.join("a")
    b.produce("t", 1, ts=NOW - 2_000)
    b.produce("t", 1, ts=NOW)
    assert b.fetch("a", 5) == [("t", 1, 1)]
    (d,) = b.last.dead_letters
    assert (d.first_offset, d.reason, d.delivery_count, d.first_delivery_ms) == (
        0,
        DeadLetterReason.TTL_EXPIRED,
        0,
        0,
    )


def test_ordering_keys_one_in_flight_per_key_in_order() -> None:
    """With ordering keys, a key's next record waits until the previous one is acknowledged."""
    b = Broker(ShareGroupConfig(ordering_keys=True))
    b.join("a")
    b.join("b")
    for key in (7, 7, 9, 0, 7):
        b.produce("t", 1, key=key)
    assert [o for _, o, _ in b.fetch("a", 10)] == [0, 2, 3]
    assert b.fetch("b", 10) == []
    b.ack("a", ack(0, 0, AckKind.RELEASE))
    assert [o for _, o, _ in b.fetch("b", 10)] == [0]  # released head again, not offset 1
    b.ack("b", ack(0, 0))
    assert [o for _, o, _ in b.fetch("b", 10)] == [1]


def test_priority_higher_topic_first() -> None:
    """Available records of the higher-priority topic are all handed out before lower ones."""
    b = Broker(ShareGroupConfig(topic_priorities={"hi": 10, "lo": 1}))
    b.join("a", ("hi", "lo"))
    b.produce("lo", 3)
    b.produce("hi", 2)
    assert b.fetch("a", 3) == [("hi", 0, 1), ("hi", 1, 1), ("lo", 0, 1)]
    plan = b.c.fetch_plan("g", "a", now_ms=NOW)
    assert [r.topic for r in plan] == ["hi", "lo"]


def test_leaving_consumer_releases_its_records() -> None:
    """A consumer that leaves (or times out) gives its records back, counts kept."""
    b = Broker(ShareGroupConfig(), session_timeout_ms=10_000)
    b.join("a")
    b.join("b")
    b.produce("t", 2)
    b.fetch("a", 1)
    b.fetch("b", 1)
    assert b.run(b.c.leave("g", "a", now_ms=NOW)) == ()
    assert b.fetch("b", 5, now=NOW + 1) == [("t", 0, 2)]
    # b now goes silent: tick after its session releases what it holds
    t = b.c.tick(NOW + 20_000)
    for r in t.records:
        b.c.replay(r)
    b.join("c", now=NOW + 20_000)
    assert [(o, n) for _, o, n in b.fetch("c", 5, now=NOW + 20_000)] == [(0, 3), (1, 2)]


def test_gaps_are_skipped_and_finished() -> None:
    """Offsets missing from the log (compaction) are never handed out and do not hold back SPSO."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    offsets = np.array([0, 3, 4], dtype=np.int64)
    c = Candidates(0, 6, offsets, np.full(3, NOW, dtype=np.int64))
    res = b.run(b.c.acquire("g", "a", max_records=10, now_ms=NOW, candidates={("t", 0): c}))
    assert [(a.first_offset, a.last_offset) for a in res.acquired] == [(0, 0), (3, 4)]
    b.ack("a", ack(0, 4))  # a range spanning the gap
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and (p.value.spso, p.value.speo) == (6, 6)
    assert GAP not in p.value.state.tolist()


def test_fast_path_candidates_from_batch_ranges() -> None:
    """Candidates.from_ranges expands batches to the same offsets and timestamps, loop-free."""
    c = Candidates.from_ranges(10, 20, [10, 15], [12, 19], [5, 6])
    assert c.offsets.tolist() == [10, 11, 12, 15, 16, 17, 18, 19]
    assert c.timestamps.tolist() == [5, 5, 5, 6, 6, 6, 6, 6]
    assert c.deliver_at is None and c.key_hash is None


def test_range_candidates_between_matches_the_expanded_columns() -> None:
    """The ranges form gives, for every window ``[start, end)``, the offsets and
    timestamps the per-offset form gives (checked over every start and end across
    ranges with gaps, and against an empty window)."""
    firsts, lasts, tss = [3, 10, 11, 40], [7, 10, 30, 40], [1, 2, 3, 4]
    r = Candidates.from_ranges(3, 45, firsts, lasts, tss)
    full = Candidates(3, 45, r.offsets.copy(), r.timestamps.copy())
    fresh = Candidates.from_ranges(3, 45, firsts, lasts, tss)  # never expanded
    for start in range(0, 46, 1):
        for end in range(start, 47, 3):
            got = fresh.between(start, end)
            want = full.between(start, end)
            assert got[0].tolist() == want[0].tolist(), (start, end)
            assert got[1].tolist() == want[1].tolist(), (start, end)
    assert fresh._offsets is None  # between() on the ranges form built no full columns


def test_window_takes_only_its_room_of_a_big_batch() -> None:
    """A 10,000-offset batch as ranges into a 2,000-record window: 2,000 offsets go
    into the window (the rest read again later), acquired in order."""
    b = Broker(ShareGroupConfig(max_inflight_records=2000))
    b.join("a")
    c = Candidates.from_ranges(0, 10_000, [0], [9_999], [NOW])
    res = b.run(b.c.acquire("g", "a", max_records=500, now_ms=NOW, candidates={("t", 0): c}))
    assert [(a.first_offset, a.last_offset) for a in res.acquired] == [(0, 499)]
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and p.value.speo == 2000


def test_fetch_plan_counts_the_room_accepted_records_free() -> None:
    """A full window has no room in the plan; with ``freed`` (the ACCEPTs applied in
    the same call) it has that much, never more than max_inflight_records; and after
    those acks the acquisition takes the new offsets."""
    b = Broker(ShareGroupConfig(max_inflight_records=10))
    b.join("a")
    b.produce("t", 30)
    assert len(b.fetch("a", 10)) == 10  # the window is full
    assert b.c.fetch_plan("g", "a", now_ms=NOW) == ()
    [r] = b.c.fetch_plan("g", "a", now_ms=NOW, freed={("t", 0): 4})
    assert (r.start_offset, r.max_offsets) == (10, 4)
    [r] = b.c.fetch_plan("g", "a", now_ms=NOW, freed={("t", 0): 50})
    assert r.max_offsets == 10
    b.ack("a", ack(0, 3))
    assert [o for _, o, _ in b.fetch("a", 10)] == [10, 11, 12, 13]


def test_has_work_says_whether_a_fetch_could_take_a_record() -> None:
    """Room and records past the window end, or an available record: True; a full
    window of acquired records, or room with the log read to its end: False."""
    b = Broker(ShareGroupConfig(max_inflight_records=10))
    b.join("a")

    def log_end(t: str, p: int) -> int:
        return len(b.topics[t])

    assert not b.c.has_work("g", now_ms=NOW, log_end=log_end)  # nothing produced
    b.produce("t", 12)
    assert b.c.has_work("g", now_ms=NOW, log_end=log_end)  # no state yet, records
    b.fetch("a", 10)
    assert not b.c.has_work("g", now_ms=NOW, log_end=log_end)  # window full, all acquired
    b.ack("a", ack(0, 0))
    assert b.c.has_work("g", now_ms=NOW, log_end=log_end)  # room, and 10..11 unread
    b.fetch("a", 10)
    assert not b.c.has_work("g", now_ms=NOW, log_end=log_end)
    b.ack("a", ack(5, 5, AckKind.RELEASE))
    assert b.c.has_work("g", now_ms=NOW, log_end=log_end)  # offset 5 available again
    assert not b.c.has_work("nope", now_ms=NOW, log_end=log_end)


# ------------------------------------------------------------ durability


def test_restart_keeps_counts_and_accepts_and_drops_locks() -> None:
    """After load: accepted never redelivered, acquired available again with its count."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 3)
    b.fetch("a", 3)
    b.ack("a", ack(1, 1))
    c2 = ShareCoordinator.load([decode(*encode(r)) for r in b.log], topics={"t": 1})
    with pytest.raises(UnknownMemberIdError):
        c2.fetch_plan("g", "a", now_ms=NOW)
    b.c = c2
    b.join("x")
    assert b.fetch("x", 5) == [("t", 0, 2), ("t", 2, 2)]
    p = c2.partition("g", "t", 0)
    assert p is not None and [s for _, s, _ in p.record_states()] == [1, ACCEPTED, 1]


def test_records_round_trip_and_stay_small() -> None:
    """Encode/decode is exact; a 2,000-record window in a few runs encodes in < 1 KiB."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 2_000)
    b.fetch("a", 2_000)
    b.ack("a", ack(0, 999))
    for r in b.log:
        k, v = encode(r)
        assert decode(k, v) == r
    k, v = encode(b.log[-1])
    assert v is not None and len(v) < 1024, len(v)
    chunk = next(r for r in b.log if encode(r)[0].startswith(b"[2,"))
    assert len(encode(chunk)[1] or b"") < 200  # equal timestamps: one run per column


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (b"not json", b"{}", "not JSON"),
        (b'[9,"g"]', b"{}", "malformed"),
        (b'[0,"g"]', b'{"v":2,"config":{}}', "newer"),
        (b'[0,"g"]', b'{"config":{}}', "no version"),
        (b'[1,"g","t",0]', b'{"v":1,"spso":5,"speo":3}', "speo"),
        (
            b'[1,"g","t",0]',
            b'{"v":1,"spso":0,"speo":2,"runs":{"len":[1],"state":[0],"count":[0],'
            b'"holder":[-1],"until":[0],"first":[0],"last":[0],"error":[-1],"dl":[0]},'
            b'"holders":[],"errors":[],"accepted":0,"dead_lettered":0}',
            "entries",
        ),
    ],
)
def test_decode_refuses_what_is_not_a_record(key: bytes, value: bytes, match: str) -> None:
    """Garbage, a newer version or inconsistent runs are CorruptRecordError, never a guess."""
    with pytest.raises(CorruptRecordError, match=match):
        decode(key, value)


def test_delete_group_tombstones_everything() -> None:
    """Delete refuses a group with consumers; then its records leave nothing after replay."""
    b = Broker(ShareGroupConfig(), session_timeout_ms=10_000)
    b.join("a")
    b.produce("t", 2)
    b.fetch("a", 2)
    with pytest.raises(GroupNotEmptyError):
        b.c.delete_group("g", now_ms=NOW)
    b.run(b.c.delete_group("g", now_ms=NOW + 10_000))
    assert b.c.list_groups() == ()
    assert ShareCoordinator.load(b.log).snapshot() == {}


def test_describe_counts() -> None:
    """describe gives available, acquired, delayed, dead letters, oldest age and in-flight."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 2, ts=NOW - 500)
    b.produce("t", 1, deliver_at=NOW + 10_000)
    b.produce("t", 3, ts=NOW - 100)
    b.fetch("a", 1)
    b.ack("a", ack(0, 0, AckKind.REJECT))
    b.fetch("a", 1)
    d = b.c.describe("g", now_ms=NOW)
    assert (d.available, d.acquired, d.delayed, d.dead_letter_pending) == (3, 1, 1, 1)
    assert d.oldest_available_ts_ms == NOW - 100
    assert [(c.consumer_id, c.in_flight) for c in d.consumers] == [("a", 1)]


def test_group_config_is_hashable_and_round_trips() -> None:
    """A config with priorities hashes, compares equal to its decoded copy, and is read-only."""
    cfg = ShareGroupConfig(topic_priorities={"a": 2, "b": 1}, message_ttl_ms=5)
    b = Broker(cfg)
    (rec,) = b.log
    back = decode(*encode(rec)).value
    assert back is not None and back == rec.value
    assert hash(cfg) == hash(ShareGroupConfig(topic_priorities={"b": 1, "a": 2}, message_ttl_ms=5))
    with pytest.raises(TypeError):
        cfg.topic_priorities["a"] = 3  # type: ignore[index]


def test_log_start_moving_past_the_window_drops_what_is_gone() -> None:
    """Retention past unfinished records makes them gaps, reports them lost, moves SPSO."""
    b = Broker(ShareGroupConfig())
    b.join("a")
    b.produce("t", 5)
    b.fetch("a", 2)
    b.ack("a", ack(0, 0))
    assert b.run(b.c.on_log_start("t", 0, 3)) == 2  # offset 1 acquired, 2 available
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None and p.value.spso == 3
    assert b.ack("a", ack(1, 1)).results[0].error is AckError.ALREADY_ACKNOWLEDGED
    assert [o for _, o, _ in b.fetch("a", 5)] == [3, 4]
    assert b.run(b.c.on_log_start("t", 0, 3)) == 0  # a repeat writes nothing
    assert b.c.on_log_start("t", 0, 3).records == ()


# ------------------------------------------------------- parked (delayed) records

HOUR = 3_600_000


def compacted(log: list[ShareRecord]) -> list[ShareRecord]:
    last = {encode(r)[0]: i for i, r in enumerate(log)}
    return [r for i, r in enumerate(log) if last[encode(r)[0]] == i]


def test_long_delays_do_not_hold_back_the_records_behind_them() -> None:
    """50 records delayed 1 h in a window of 8 are parked: the 10 due ones behind go out now."""
    b = Broker(ShareGroupConfig(max_inflight_records=8))
    b.join("a")
    b.produce("t", 50, deliver_at=NOW + HOUR)
    b.produce("t", 10)
    got: list[int] = []
    for _ in range(10):
        got += [o for _, o, _ in b.fetch("a", 100)]
    assert got == list(range(50, 58))  # 8 in flight at most (max_inflight_records)
    b.ack("a", ack(50, 57))
    assert [o for _, o, _ in b.fetch("a", 100)] == [58, 59]
    d = b.c.describe("g", now_ms=NOW)
    pc = d.partitions[0]
    assert (pc.spso, pc.parked, d.delayed) == (0, 50, 50)  # SPSO stays at the oldest parked
    b.ack("a", ack(58, 59))
    b.join("a", now=NOW + HOUR - 1)
    assert b.fetch("a", 100, now=NOW + HOUR - 1) == []
    assert [o for _, o, _ in b.fetch("a", 100, now=NOW + HOUR)] == list(range(8))


def test_parked_bound_is_back_pressure_not_memory() -> None:
    """Past max_delayed_records parked, delayed records stay in the window and fill it."""
    b = Broker(ShareGroupConfig(max_inflight_records=8), max_delayed_records=20)
    b.join("a")
    b.produce("t", 50, deliver_at=NOW + HOUR)
    b.produce("t", 10)
    for _ in range(5):
        assert b.fetch("a", 100) == []
    p = b.c.partition("g", "t", 0)
    assert p is not None and p.value is not None
    assert (p.parked_count, p.value.spso, p.value.speo) == (20, 20, 28)
    assert b.c.fetch_plan("g", "a", now_ms=NOW) == ()  # no room: nothing read
    # when they come due they go out in offset order, parked first
    b.join("a", now=NOW + HOUR)
    got = b.fetch("a", 100, now=NOW + HOUR)
    assert [o for _, o, _ in got] == list(range(8))


def test_broker_wide_parked_bound_holds_across_partitions_and_replay() -> None:
    """max_delayed_records_total bounds the parked records of every share partition
    together (with the per-partition bound alone "hi" parked 12 and "lo" 20: 32): 15 are
    parked in all, and past that the delayed records stay in the windows (back pressure:
    "lo"'s 2 due records behind them wait; its window has no room). A reload counts the same
    total; accepting parked records frees room, and the total never passes the bound."""
    b = Broker(
        ShareGroupConfig(max_inflight_records=8),
        max_delayed_records=20,
        max_delayed_records_total=15,
    )
    b.join("a", ("hi", "lo"))
    b.produce("hi", 12, deliver_at=NOW + HOUR)
    b.produce("lo", 30, deliver_at=NOW + HOUR)
    b.produce("lo", 2)
    for _ in range(8):
        assert b.fetch("a", 100) == []
    hi, lo = b.c.partition("g", "hi", 0), b.c.partition("g", "lo", 0)
    assert hi is not None and lo is not None
    assert b.c.parked_records == hi.parked_count + lo.parked_count == 15
    # "lo"'s window is full of delayed records: no room, nothing read
    assert "lo" not in {r.topic for r in b.c.fetch_plan("g", "a", now_ms=NOW)}
    reloaded = ShareCoordinator.load(b.log, config=b.c.config, topics={"hi": 1, "lo": 1})
    assert reloaded.parked_records == 15
    later = NOW + HOUR
    b.join("a", ("hi", "lo"), now=later)
    seen = 0
    for _ in range(20):
        got = b.fetch("a", 100, now=later)
        assert b.c.parked_records <= 15
        seen += len(got)
        b.ack("a", *[Ack(t, 0, o, o, AckKind.ACCEPT) for t, o, _ in got], now=later)
    assert seen == 44 and b.c.parked_records == 0


def test_release_with_a_long_delay_parks_and_keeps_count_and_error() -> None:
    """A RELEASE of 1 h parks the record; the window moves on; it returns with its count."""
    b = Broker(ShareGroupConfig(max_inflight_records=4))
    b.join("a")
    b.produce("t", 12)
    assert len(b.fetch("a", 4)) == 4
    r = b.ack("a", ack(0, 3, AckKind.RELEASE, delay_ms=HOUR, error="later"))
    assert r.results[0].error is AckError.OK
    assert [o for _, o, _ in b.fetch("a", 10)] == [4, 5, 6, 7]
    # an offset below the window start that finished is already acknowledged
    b.ack("a", ack(4, 7))
    b.join("b")  # (a's own repeat would be answered OK: it accepted 4..7)
    assert b.ack("b", ack(4, 4)).results[0].error is AckError.ALREADY_ACKNOWLEDGED
    assert b.ack("a", ack(0, 0)).results[0].error is AckError.NOT_ACQUIRED
    assert [o for _, o, _ in b.fetch("a", 10)] == [8, 9, 10, 11]
    b.ack("a", ack(8, 11))
    b.join("a", now=NOW + HOUR - 1)
    assert b.fetch("a", 10, now=NOW + HOUR - 1) == []
    b.join("a", now=NOW + HOUR)
    assert b.fetch("a", 10, now=NOW + HOUR) == [("t", o, 2) for o in range(4)]
    b.join("a", now=NOW + HOUR)
    dead = b.ack("a", ack(0, 0, AckKind.REJECT), now=NOW + HOUR).dead_letters
    assert [(d.first_offset, d.error) for d in dead] == [(0, "later")]


def test_parked_records_survive_restart_and_compaction() -> None:
    """A restart (whole or compacted log) keeps parked records, their due times and counts."""
    b = Broker(ShareGroupConfig(max_inflight_records=4, max_delivery_attempts=5))
    b.join("a")
    b.produce("t", 4)
    b.produce("t", 30, deliver_at=NOW + HOUR)
    b.produce("t", 4)
    b.fetch("a", 4)
    b.ack("a", ack(0, 3, AckKind.RELEASE, delay_ms=2 * HOUR))
    # each fetch reads one window (4 offsets) and parks what is delayed
    got = [o for _ in range(10) for _, o, _ in b.fetch("a", 10)]
    assert got == [34, 35, 36, 37]
    live = b.c.snapshot()
    for log in (b.log, compacted(b.log)):
        c2 = ShareCoordinator.load([decode(*encode(r)) for r in log], topics={"t": 1})
        p = c2.partition("g", "t", 0)
        assert p is not None and p.parked_count == 34
        snap = c2.snapshot()
        assert snap["g"]["partitions"][("t", 0)][2] == live["g"]["partitions"][("t", 0)][2]
        b2 = Broker(ShareGroupConfig())
        b2.c, b2.topics = c2, b.topics
        b2.join("x")
        assert [o for _, o, _ in b2.fetch("x", 100)] == [34, 35, 36, 37]  # locks dropped
        assert b2.c.tick(NOW + 10).next_deadline_ms == NOW + 30_000  # their new locks
        b2.ack("x", ack(34, 37))
        assert b2.c.tick(NOW + 10).next_deadline_ms == NOW + 45_000  # x's session
        b2.join("x", now=NOW + HOUR - 1)
        assert b2.fetch("x", 100, now=NOW + HOUR - 1) == []
        b2.join("x", now=NOW + HOUR)
        got = b2.fetch("x", 100, now=NOW + HOUR)
        assert [(o, n) for _, o, n in got] == [(o, 1) for o in range(4, 8)]
        b2.join("x", now=NOW + HOUR)
        b2.ack("x", ack(4, 7), now=NOW + HOUR)
        b2.join("x", now=NOW + 2 * HOUR)
        got = b2.fetch("x", 100, now=NOW + 2 * HOUR)
        assert [(o, n) for _, o, n in got] == [(o, 2) for o in range(4)]


def test_parked_chunks_are_bounded_and_rewritten_alone() -> None:
    """2,000 parked records make 4 chunk records of <= 512 each; acking one rewrites one chunk."""
    b = Broker(ShareGroupConfig(max_inflight_records=2_000))
    b.join("a")
    b.produce("t", 2_000, deliver_at=NOW + HOUR)
    b.fetch("a", 1)
    parked = [r for r in b.log if encode(r)[0].startswith(b"[4,")]
    assert len(parked) == 4
    for r in parked:
        k, v = encode(r)
        assert v is not None and len(v) < 2_000, len(v)  # equal columns: a few runs
        assert decode(k, v) == r
    n = len(b.log)
    b.join("a", now=NOW + HOUR)
    b.fetch("a", 1, now=NOW + HOUR)
    b.join("a", now=NOW + HOUR)
    b.ack("a", ack(1_000, 1_000), now=NOW + HOUR)
    assert [r for r in b.log[n:] if encode(r)[0].startswith(b"[4,")] != []
    b.join("a", now=NOW + HOUR)
    b.ack("a", ack(0, 0), now=NOW + HOUR)
    fresh = b.log[len(b.log) - 3 :]
    assert sum(1 for r in fresh if encode(r)[0].startswith(b"[4,")) <= 1


def test_tick_uses_the_deadline_index() -> None:
    """tick reports the earliest pending due time or lock end across 200 partitions."""
    c = ShareCoordinator(ShareCoordinatorConfig(), {"t": 200})
    c.apply(c.configure_group("g", ShareGroupConfig()))
    c.apply(c.join("g", ["t"], now_ms=NOW, consumer_id="a"))
    due = {p: NOW + 10_000 + p for p in range(200)}
    cands = {
        ("t", p): Candidates(
            0,
            1,
            np.zeros(1, np.int64),
            np.full(1, NOW, np.int64),
            np.full(1, due[p], np.int64),
        )
        for p in range(200)
    }
    c.apply(c.acquire("g", "a", max_records=10, now_ms=NOW, candidates=cands))
    assert c.tick(NOW).next_deadline_ms == NOW + 10_000
    assert c.tick(NOW + 10_050).next_deadline_ms == NOW + 10_051
    assert c.tick(NOW + 10_199).next_deadline_ms == NOW + 45_000  # the session


def test_a_leaving_consumer_gives_back_parked_records_it_holds() -> None:
    """Records acquired from below the window go back when their holder leaves."""
    b = Broker(ShareGroupConfig(max_inflight_records=4))
    b.join("a")
    b.join("b")
    b.produce("t", 4, deliver_at=NOW + 1_000)
    b.produce("t", 4)
    assert [o for _, o, _ in b.fetch("a", 10)] == []  # the window parks 0..3
    assert [o for _, o, _ in b.fetch("a", 10, now=NOW + 1_000)] == [0, 1, 2, 3]
    b.run(b.c.leave("g", "a", now_ms=NOW + 1_000))
    assert [(o, n) for _, o, n in b.fetch("b", 10, now=NOW + 1_000)] == [(o, 2) for o in range(4)]


def test_describe_splits_the_backlog_past_the_window_by_a_bounded_scan(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delayed_backlog counts deliver-at times past ``now`` exactly over the scanned
    offsets and extrapolates past them (scan of 10 here: 4 of the first 10 delayed, so 40
    of 100), and a backlog without the header is 0 delayed without decoding."""
    from logstore import Store
    from logstore.broker.handlers import share as h
    from logstore.wire import Record, deliver_at_header

    monkeypatch.setattr(h, "DESCRIBE_SCAN_RECORDS", 10)
    with Store.open(tmp_path / "d") as store:
        store.create_topic("t", 1)
        store.create_topic("plain", 1)
        later = [deliver_at_header(NOW + 10_000)]
        for i in range(100):
            store.append("t", 0, [Record(b"v", None, later if i % 10 < 4 else [], NOW)])
        store.append("plain", 0, [Record(b"v", None, [], NOW)] * 50)
        assert h.delayed_backlog(store, "t", 0, 0, 100, NOW) == 40
        assert h.delayed_backlog(store, "t", 0, 0, 10, NOW) == 4  # exact: all scanned
        assert h.delayed_backlog(store, "t", 0, 0, 100, NOW + 10_000) == 0  # due now
        assert h.delayed_backlog(store, "plain", 0, 0, 50, NOW) == 0
        assert h.delayed_backlog(store, "t", 0, 100, 100, NOW) == 0


def test_copies_a_crash_left_in_the_dead_letter_topic_are_found(tmp_path: Any) -> None:
    """already_dead_lettered finds, in the dead-letter topic's tail, the copies of a
    dead-letter range appended before a crash (here 3 and 4 of 3..6), by the group,
    source topic, partition and offset headers -- not another group's or partition's
    copies, nor copies older than the bounded tail."""
    from logstore import Store
    from logstore.broker._share_dlq import RECOVERY_SLACK_RECORDS, already_dead_lettered
    from logstore.share import DeadLetter
    from logstore.wire import Record

    def copy(group: str, part: int, off: int) -> Record:
        hs = [
            ("logstore-dlq-group", group.encode()),
            ("logstore-dlq-source-topic", b"t"),
            ("logstore-dlq-source-partition", str(part).encode()),
            ("logstore-dlq-source-offset", str(off).encode()),
        ]
        return Record(b"v", None, hs, NOW)

    dl = DeadLetter("g", "g.dlq", "t", 0, 3, 6, 5, DeadLetterReason.REJECTED, "", NOW, NOW)
    with Store.open(tmp_path / "d") as store:
        assert already_dead_lettered(store, dl, 4) == set()  # no topic yet
        store.create_topic("g.dlq", 1)
        store.append("g.dlq", 0, [copy("g", 0, 6)])  # an old copy, outside the tail
        store.append("g.dlq", 0, [Record(b"x", None, [], NOW)] * (RECOVERY_SLACK_RECORDS + 4))
        store.append("g.dlq", 0, [copy("h", 0, 5), copy("g", 1, 5), copy("g", 0, 9)])
        store.append("g.dlq", 0, [copy("g", 0, 3), copy("g", 0, 4)])  # then the crash
        assert already_dead_lettered(store, dl, 4) == {3, 4}
        assert already_dead_lettered(store, dl, 10) == {3, 4, 6}  # a longer tail
