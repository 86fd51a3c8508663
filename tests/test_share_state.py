"""Hypothesis state machine of the share-group state (logstore.share) against a per-record model.

The model is a plain list of per-record dicts per topic; the test plays the
broker (reads candidates from a model log, appends and replays records,
produces dead letters and confirms them). After every step the share state
equals the model offset by offset; at a restart the state rebuilt from the
records (all of them, and as compaction leaves them) equals the live state
with locks dropped. Delayed records at the window start are parked below the
window (up to ``max_delayed_records``), so bursts of long-delayed records
(more than the window holds) do not hold back the records behind them; the
model predicts every acquisition, so one blocked record fails the test. A
fetch may hand the tail of what it acquired back (``undeliver``, as the broker
does for ranges its byte budget cuts): the delivery count drops again. The
deadline ``tick`` reports is checked exactly against the model. At the end
every record has been accepted or dead-lettered exactly once, or was removed
by retention before it finished (and then never accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from logstore.share import (
    ACQUIRED,
    Ack,
    AckError,
    AckKind,
    AcquiredRange,
    Candidates,
    DeadLetterReason,
    ShareCoordinator,
    ShareCoordinatorConfig,
    ShareGroupConfig,
    ShareParkedValue,
    SharePartition,
    ShareRecord,
    ShareStateValue,
    decode,
    encode,
)
from logstore.share._partition import reset_parked_locks
from logstore.share._records import encode_key

G = "g"
TOPICS = {"hi": 10, "lo": 1}  # priorities
CONSUMERS = ("c1", "c2", "c3")
CAP = 8
MAX_ATTEMPTS = 3
VT = 3_000
BURST_DELAY = 60_000


def ccfg(max_delayed: int) -> ShareCoordinatorConfig:
    return ShareCoordinatorConfig(
        min_visibility_timeout_ms=1,
        session_timeout_ms=3_600_000,
        heartbeat_interval_ms=5_000,
        max_delayed_records=max_delayed,
    )


STATE = {"available": 0, "acquired": 1, "accepted": 2, "dead": 3, "archived": 4, "gap": 5}
FINISHED = ("accepted", "archived", "gap")


@dataclass
class Rec:
    ts: int
    not_before: int
    key: int
    state: str = "available"
    count: int = 0
    holder: str | None = None
    lock: int = 0


@dataclass
class Part:
    recs: list[Rec] = field(default_factory=list)
    speo: int = 0
    wstart: int = 0  # window start: unfinished records below it are parked
    initialized: bool = False
    log_start: int = 0

    @property
    def spso(self) -> int:
        for i, r in enumerate(self.recs):
            if r.state not in FINISHED:
                return min(i, self.speo)
        return self.speo


def compacted(log: list[ShareRecord]) -> list[ShareRecord]:
    """The log as compaction leaves it: the last record of each key, in log order."""
    last = {encode_key(r.key): i for i, r in enumerate(log)}
    return [r for i, r in enumerate(log) if last[encode_key(r.key)] == i]


def reset_value(v: ShareStateValue) -> ShareStateValue | None:
    p = SharePartition(G, "x", 0)
    p.install(v)
    p.reset_locks()
    return p.value


def reset_chunks(pk: dict[int, ShareParkedValue]) -> dict[int, ShareParkedValue]:
    return {k: reset_parked_locks(c) for k, c in pk.items()}


def normalized(c: ShareCoordinator) -> dict[str, Any]:
    snap = c.snapshot()
    for g in snap.values():
        g["partitions"] = {
            tp: (reset_value(v) if v is not None else None, ch, reset_chunks(pk))
            for tp, (v, ch, pk) in g["partitions"].items()
        }
    return snap


class ShareMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000_000
        self.parts = {t: Part() for t in TOPICS}
        self.log: list[ShareRecord] = []
        self.accepted: dict[tuple[str, int], int] = {}
        self.dead: dict[tuple[str, int], int] = {}
        self.ttl: int | None = None
        self.ordering = False
        self.maxd = 64
        self.ccfg = ccfg(self.maxd)
        self.sut = ShareCoordinator(self.ccfg, {t: 1 for t in TOPICS})

    # ------------------------------------------------------------ plumbing

    def run(self, result: Any) -> Any:
        self.log.extend(result.records)
        out = self.sut.apply(result)
        self.m_advance()
        return out

    def m_advance(self) -> None:
        """The window start moves past finished records and parks delayed
        (available with a not-before time) ones while fewer than
        ``max_delayed_records`` are parked."""
        for p in self.parts.values():
            parked = sum(1 for r in p.recs[: p.wstart] if r.state not in FINISHED)
            while p.wstart < p.speo:
                r = p.recs[p.wstart]
                if r.state in FINISHED:
                    p.wstart += 1
                elif r.state == "available" and r.not_before > 0 and parked < self.maxd:
                    parked += 1
                    p.wstart += 1
                else:
                    break

    def note_dead(self, dls: Any, expect: list[tuple[str, int, DeadLetterReason]]) -> None:
        got = sorted(
            (d.topic, o, d.reason) for d in dls for o in range(d.first_offset, d.last_offset + 1)
        )
        assert got == sorted(expect)
        for t, o, _ in got:
            self.dead[(t, o)] = self.dead.get((t, o), 0) + 1
            assert (t, o) not in self.accepted, "dead-lettered after being accepted"

    def cfg(self) -> ShareGroupConfig:
        return ShareGroupConfig(
            visibility_timeout_ms=VT,
            max_delivery_attempts=MAX_ATTEMPTS,
            max_inflight_records=CAP,
            message_ttl_ms=self.ttl,
            ordering_keys=self.ordering,
            topic_priorities=TOPICS,
        )

    def join_all(self) -> None:
        for c in CONSUMERS:
            self.run(self.sut.join(G, list(TOPICS), now_ms=self.now, consumer_id=c))

    # model transitions (mirror the documented rules)

    def m_expire(self, p: Part, dead: list[tuple[str, int, DeadLetterReason]], t: str) -> None:
        for i, r in enumerate(p.recs):
            if r.state == "acquired" and r.lock <= self.now:
                self.m_back(r, dead, t, i, keep_holder=True, not_before=0)

    def m_back(
        self,
        r: Rec,
        dead: list[tuple[str, int, DeadLetterReason]],
        t: str,
        i: int,
        *,
        keep_holder: bool,
        not_before: int,
    ) -> None:
        if r.count >= MAX_ATTEMPTS:
            r.state, r.holder, r.lock = "dead", None, 0
            dead.append((t, i, DeadLetterReason.MAX_DELIVERIES))
        else:
            r.state, r.not_before, r.lock = "available", not_before, 0
            if not keep_holder:
                r.holder = None

    # --------------------------------------------------------------- rules

    @initialize(
        ttl=st.sampled_from([None, 4_000]),
        ordering=st.booleans(),
        maxd=st.sampled_from([5, 64]),
    )
    def setup(self, ttl: int | None, ordering: bool, maxd: int) -> None:
        self.ttl, self.ordering, self.maxd = ttl, ordering, maxd
        self.ccfg = ccfg(maxd)
        self.sut = ShareCoordinator(self.ccfg, {t: 1 for t in TOPICS})
        self.run(self.sut.configure_group(G, self.cfg()))
        self.join_all()

    @rule(
        topic=st.sampled_from(sorted(TOPICS)),
        n=st.integers(1, 6),
        delay=st.sampled_from([0, 0, 500, 3_000]),
        key=st.sampled_from([0, 0, 7, 9]),
    )
    def produce(self, topic: str, n: int, delay: int, key: int) -> None:
        for _ in range(n):
            nb = self.now + delay if delay else 0
            self.parts[topic].recs.append(Rec(ts=self.now, not_before=nb, key=key))

    @rule(topic=st.sampled_from(sorted(TOPICS)), n=st.integers(9, 50), then=st.integers(0, 4))
    def produce_burst(self, topic: str, n: int, then: int) -> None:
        """More long-delayed records than the window holds, then a few due ones."""
        for _ in range(n):
            self.parts[topic].recs.append(
                Rec(ts=self.now, not_before=self.now + BURST_DELAY, key=0)
            )
        for _ in range(then):
            self.parts[topic].recs.append(Rec(ts=self.now, not_before=0, key=0))

    @rule(ms=st.sampled_from([1, 200, 999, 2_999, 3_000, 4_200, 6_000]))
    def advance(self, ms: int) -> None:
        self.now += ms

    def candidates(self, topic: str, start: int, n: int, fast: bool) -> Candidates:
        recs = self.parts[topic].recs
        end = min(len(recs), start + n)
        rs = recs[start:end]
        if fast and not any(r.not_before or r.key for r in rs):
            # the broker's batch path: one range per run of equal timestamps
            firsts, lasts, tss = [], [], []
            for i, r in enumerate(rs, start):
                if firsts and tss[-1] == r.ts and lasts[-1] == i - 1:
                    lasts[-1] = i
                else:
                    firsts.append(i)
                    lasts.append(i)
                    tss.append(r.ts)
            if firsts:
                return Candidates.from_ranges(start, end, firsts, lasts, tss)
        return Candidates(
            start,
            end,
            np.arange(start, end, dtype=np.int64),
            np.array([r.ts for r in rs], dtype=np.int64),
            np.array([r.not_before for r in rs], dtype=np.int64),
            np.array([r.key for r in rs], dtype=np.uint64),
        )

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        max_records=st.integers(1, 12),
        fast=st.booleans(),
        cut=st.sampled_from([0, 0, 0, 1, 3]),
    )
    def fetch(self, consumer: str, max_records: int, fast: bool, cut: int = 0) -> None:
        plan = self.sut.fetch_plan(G, consumer, now_ms=self.now)
        assert [r.topic for r in plan] == [
            t for t in sorted(TOPICS, key=lambda t: -TOPICS[t]) if t in {r.topic for r in plan}
        ], "plan not in priority order"
        cands = {}
        for r in plan:
            p = self.parts[r.topic]
            start = 0 if r.start_offset is None else r.start_offset
            assert start == p.speo, (r, p.speo, p.wstart, p.spso, p.log_start)
            # the broker reads from the log start when retention passed its offset
            read = max(start, p.log_start)
            # an empty window restarts where the broker reads; else the room is fixed
            n = r.max_offsets if p.wstart == p.speo else r.max_offsets - (read - start)
            cands[(r.topic, r.partition)] = self.candidates(r.topic, read, max(n, 0), fast)
        # the model's prediction
        expect_acq: list[tuple[str, int, int]] = []
        expect_dead: list[tuple[str, int, DeadLetterReason]] = []
        left = max_records
        for t in sorted(TOPICS, key=lambda t: -TOPICS[t]):
            p = self.parts[t]
            if (t, 0) in cands:
                p.initialized = True
                if p.wstart == p.speo and p.log_start > p.speo:
                    # an empty window restarts at the log start
                    p.wstart = p.speo = p.log_start
                p.speo = max(p.speo, min(len(p.recs), p.wstart + CAP))
            if not p.initialized:
                continue
            self.m_expire(p, expect_dead, t)
            if left == 0:
                continue
            window = range(p.spso, p.speo)
            elig = [
                i
                for i in window
                if p.recs[i].state == "available" and p.recs[i].not_before <= self.now
            ]
            if self.ttl is not None:
                for i in [i for i in elig if p.recs[i].ts < self.now - self.ttl]:
                    r = p.recs[i]
                    r.state, r.holder = "dead", None
                    expect_dead.append((t, i, DeadLetterReason.TTL_EXPIRED))
                elig = [i for i in elig if p.recs[i].state == "available"]
            if self.ordering:
                heads: dict[int, int] = {}
                for i in window:
                    r = p.recs[i]
                    if r.key and r.state in ("available", "acquired") and r.key not in heads:
                        heads[r.key] = i
                elig = [i for i in elig if not p.recs[i].key or heads[p.recs[i].key] == i]
            # at most max_inflight_records acquired, parked ones included
            room = CAP - sum(1 for r in p.recs if r.state == "acquired")
            take = elig[: max(min(left, room), 0)]
            for i in take:
                r = p.recs[i]
                r.state, r.holder, r.lock = "acquired", consumer, self.now + VT
                r.count += 1
                expect_acq.append((t, i, r.count))
            left -= len(take)
        reply = self.run(
            self.sut.acquire(
                G, consumer, max_records=max_records, now_ms=self.now, candidates=cands
            )
        )
        got = [
            (a.topic, o, a.delivery_count)
            for a in reply.acquired
            for o in range(a.first_offset, a.last_offset + 1)
        ]
        assert got == expect_acq, (got, expect_acq)
        self.note_dead(reply.dead_letters, expect_dead)
        if cut and got:
            self.undeliver_tail(consumer, reply.acquired, cut)

    def undeliver_tail(self, consumer: str, acquired: Any, cut: int) -> None:
        """The broker cut the last ``cut`` acquired offsets from the reply (its
        byte budget): they go back as if never acquired, their delivery count
        lowered again (the attempt is not counted)."""
        tail: list[AcquiredRange] = []
        for a in reversed(acquired):
            if cut == 0:
                break
            n = min(cut, a.last_offset - a.first_offset + 1)
            tail.append(replace(a, first_offset=a.last_offset - n + 1))
            cut -= n
        for a in tail:
            for o in range(a.first_offset, a.last_offset + 1):
                r = self.parts[a.topic].recs[o]
                # a due delayed record loses its not-before time on acquisition
                r.state, r.holder, r.lock, r.not_before = "available", None, 0, 0
                r.count -= 1
        n = self.run(self.sut.undeliver(G, consumer, tail, now_ms=self.now))
        assert n == sum(a.last_offset - a.first_offset + 1 for a in tail)

    def m_check(self, consumer: str, t: str, first: int, last: int) -> AckError:
        p = self.parts[t]
        if first < p.spso:
            return AckError.ALREADY_ACKNOWLEDGED
        if last >= p.speo:
            return AckError.NOT_ACQUIRED
        # below the window start only parked (unfinished) records are kept;
        # the finished ones there count as done, whatever they were
        out = [i for i in range(first, last + 1) if i < p.wstart and p.recs[i].state in FINISHED]
        rs = [
            r
            for i, r in enumerate(p.recs[first : last + 1], first)
            if r.state != "gap" and i not in out
        ]
        if not rs and not out:
            return AckError.NOT_ACQUIRED
        if any(r.state == "acquired" and r.holder != consumer for r in rs):
            return AckError.HELD_BY_OTHER
        if any(r.state == "acquired" and r.lock <= self.now for r in rs) or any(
            r.state == "available" and r.holder == consumer for r in rs
        ):
            return AckError.LOCK_EXPIRED
        if out or any(r.state in ("accepted", "archived", "dead") for r in rs):
            return AckError.ALREADY_ACKNOWLEDGED
        if not all(r.state == "acquired" for r in rs):
            return AckError.NOT_ACQUIRED
        return AckError.OK

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        topic=st.sampled_from(sorted(TOPICS)),
        data=st.data(),
        kind=st.sampled_from(list(AckKind)),
        delay=st.sampled_from([0, 1_500]),
        lock=st.sampled_from([0, 5_000]),
    )
    def acknowledge(
        self, consumer: str, topic: str, data: st.DataObject, kind: AckKind, delay: int, lock: int
    ) -> None:
        held = [
            (t, i, r.holder)
            for t, p in sorted(self.parts.items())
            for i, r in enumerate(p.recs)
            if r.state == "acquired"
        ]
        if held and data.draw(st.integers(0, 9)) < 8:
            # mostly: a range starting at a record someone holds, by its holder
            topic, first, holder = data.draw(st.sampled_from(held))
            assert holder is not None
            if data.draw(st.integers(0, 4)):
                consumer = holder
            last = data.draw(st.integers(first, first + 2))
        else:
            first = data.draw(st.integers(0, len(self.parts[topic].recs) + 1))
            last = data.draw(st.integers(first, first + 3))
        p = self.parts[topic]
        code = self.m_check(consumer, topic, first, last)
        expect_dead: list[tuple[str, int, DeadLetterReason]] = []
        if code is AckError.OK:
            for i in range(first, last + 1):
                r = p.recs[i]
                if r.state == "gap":
                    continue
                if kind is AckKind.ACCEPT:
                    r.state, r.holder = "accepted", None
                elif kind is AckKind.RELEASE:
                    self.m_back(
                        r,
                        expect_dead,
                        topic,
                        i,
                        keep_holder=False,
                        not_before=self.now + delay if delay else 0,
                    )
                elif kind is AckKind.REJECT:
                    r.state, r.holder = "dead", None
                    expect_dead.append((topic, i, DeadLetterReason.REJECTED))
                else:
                    r.lock = self.now + (lock or VT)
        ack = Ack(topic, 0, first, last, kind, delay_ms=delay, lock_ms=lock, error="boom")
        reply = self.run(self.sut.acknowledge(G, consumer, [ack], now_ms=self.now))
        assert [r.error for r in reply.results] == [code], reply.results
        if code is AckError.OK and kind is AckKind.ACCEPT:
            for i in range(first, last + 1):
                if p.recs[i].state == "gap":
                    continue
                assert (topic, i) not in self.accepted and (topic, i) not in self.dead
                self.accepted[(topic, i)] = 1
        self.note_dead(reply.dead_letters, expect_dead)
        assert all(d.error == "boom" for d in reply.dead_letters)

    @rule(topic=st.sampled_from(sorted(TOPICS)), n=st.integers(1, 4))
    def retention(self, topic: str, n: int) -> None:
        p = self.parts[topic]
        ls = min(len(p.recs), p.log_start + n)
        if ls == p.log_start:
            return
        window_lost = 0
        was_empty = p.wstart == p.speo
        for i in range(ls):
            r = p.recs[i]
            if r.state not in FINISHED:
                window_lost += p.spso <= i < p.speo
                r.state, r.holder, r.lock = "gap", None, 0
        p.log_start = ls
        if p.initialized and was_empty and ls > p.speo:
            p.wstart = p.speo = ls  # an empty window moves to the new log start at once
        lost = self.run(self.sut.on_log_start(topic, 0, ls))
        assert lost == window_lost

    @rule()
    def tick(self) -> None:
        expect_dead: list[tuple[str, int, DeadLetterReason]] = []
        for t, p in self.parts.items():
            self.m_expire(p, expect_dead, t)
        res = self.sut.tick(self.now)
        self.log.extend(res.records)
        for r in res.records:
            self.sut.replay(r)
        self.m_advance()
        self.note_dead(res.dead_letters, expect_dead)
        # the next deadline: the earliest lock end or not-before time still
        # ahead (parked or in the window); else a session deadline (1 h)
        times = [
            r.lock if r.state == "acquired" else r.not_before
            for p in self.parts.values()
            if p.initialized
            for r in p.recs[p.spso : p.speo]
            if r.state == "acquired" or (r.state == "available" and r.not_before > self.now)
        ]
        if times:
            assert res.next_deadline_ms == min(times)
        else:
            assert res.next_deadline_ms is not None
            assert res.next_deadline_ms > self.now + BURST_DELAY

    @rule(consumer=st.sampled_from(CONSUMERS))
    def leave_and_rejoin(self, consumer: str) -> None:
        expect_dead: list[tuple[str, int, DeadLetterReason]] = []
        for t, p in self.parts.items():
            for i, r in enumerate(p.recs):
                if r.state == "acquired" and r.holder == consumer:
                    self.m_back(r, expect_dead, t, i, keep_holder=False, not_before=0)
        dls = self.run(self.sut.leave(G, consumer, now_ms=self.now))
        self.note_dead(dls, expect_dead)
        self.run(self.sut.join(G, list(TOPICS), now_ms=self.now, consumer_id=consumer))

    @rule(data=st.data())
    def confirm_dead_letters(self, data: st.DataObject) -> None:
        pending = self.sut.pending_dead_letters()
        for d in pending:
            assert d.dead_letter_topic == "g.dlq" and d.group_id == G
            for o in range(d.first_offset, d.last_offset + 1):
                r = self.parts[d.topic].recs[o]
                assert r.state == "dead" and r.count == d.delivery_count
        if not pending:
            return
        d = data.draw(st.sampled_from(pending))
        n = self.run(self.sut.dead_lettered(G, d.topic, d.partition, d.first_offset, d.last_offset))
        assert n == d.last_offset - d.first_offset + 1
        for o in range(d.first_offset, d.last_offset + 1):
            self.parts[d.topic].recs[o].state = "archived"
        self.m_advance()

    @rule(compact=st.booleans())
    def restart(self, compact: bool) -> None:
        full = ShareCoordinator.load([decode(*encode(r)) for r in self.log], config=self.ccfg)
        comp = ShareCoordinator.load(
            [decode(*encode(r)) for r in compacted(self.log)], config=self.ccfg
        )
        want = normalized(self.sut)
        assert full.snapshot() == want
        assert comp.snapshot() == want
        self.sut = comp if compact else full
        if compact:
            self.log = compacted(self.log)
        self.sut.on_metadata({t: 1 for t in TOPICS})
        for p in self.parts.values():
            for r in p.recs:
                if r.state == "acquired":
                    r.state, r.holder, r.lock, r.not_before = "available", None, 0, 0
        self.join_all()

    # ---------------------------------------------------------- invariants

    @invariant()
    def state_matches_model(self) -> None:
        for t, p in self.parts.items():
            sp = self.sut.partition(G, t, 0)
            if sp is None or sp.value is None:
                assert not p.initialized or not p.recs
                continue
            v = sp.value
            got = (v.spso, v.speo, sp.spso)
            assert got == (p.wstart, p.speo, p.spso), (t, got, p.wstart, p.speo, p.spso)
            e = sp.entries()
            expect_offsets = [
                i for i in range(p.spso, p.wstart) if p.recs[i].state not in FINISHED
            ] + list(range(p.wstart, p.speo))
            assert e.off.tolist() == expect_offsets, t
            assert sp.parked_count == p.wstart - p.spso - sum(
                1 for r in p.recs[p.spso : p.wstart] if r.state in FINISHED
            )
            assert sp.parked_count <= self.maxd
            for i, (o, s, n) in enumerate(sp.record_states()):
                r = p.recs[o]
                assert (s, n) == (STATE[r.state], r.count), (t, o, r)
                if s == ACQUIRED:
                    assert e.holders[int(e.holder[i])] == r.holder
                    assert int(e.until[i]) == r.lock
            if self.ordering:
                keys = e.key[e.state == ACQUIRED]
                keys = keys[keys != 0]
                assert len(keys) == len(set(keys.tolist())), "two records of a key in flight"

    @invariant()
    def accepted_never_dead(self) -> None:
        assert not set(self.accepted) & set(self.dead)
        assert all(n == 1 for n in self.dead.values())

    def teardown(self) -> None:
        # drain: everything ends accepted or dead-lettered, exactly once
        for _ in range(200):
            if all(p.spso == len(p.recs) for p in self.parts.values()):
                break
            self.now += 10_000
            self.join_all()
            self.tick()
            self.state_matches_model()
            for c in CONSUMERS:
                self.fetch(c, 12, False)
                self.state_matches_model()
                for t, p in self.parts.items():
                    for i, r in enumerate(p.recs):
                        if r.state == "acquired" and r.holder == c:
                            self.acknowledge_one(c, t, i)
            for d in self.sut.pending_dead_letters():
                self.run(
                    self.sut.dead_lettered(G, d.topic, d.partition, d.first_offset, d.last_offset)
                )
                for o in range(d.first_offset, d.last_offset + 1):
                    self.parts[d.topic].recs[o].state = "archived"
                self.m_advance()
        for t, p in self.parts.items():
            assert p.spso == len(p.recs), "records left unfinished after the drain"
            for i in range(len(p.recs)):
                done = self.accepted.get((t, i), 0) + self.dead.get((t, i), 0)
                if p.recs[i].state == "gap":
                    # removed by retention before it finished (maybe while waiting
                    # for the dead-letter topic): never accepted
                    assert (t, i) not in self.accepted, (t, i)
                else:
                    assert done == 1, (t, i, p.recs[i])

    def acknowledge_one(self, consumer: str, topic: str, i: int) -> None:
        r = self.parts[topic].recs[i]
        reply = self.run(
            self.sut.acknowledge(
                G, consumer, [Ack(topic, 0, i, i, AckKind.ACCEPT)], now_ms=self.now
            )
        )
        assert reply.results[0].error is AckError.OK
        r.state, r.holder = "accepted", None
        self.accepted[(topic, i)] = 1
        self.m_advance()


ShareMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_share_state_machine = ShareMachine.TestCase


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_share_state_machine_long() -> None:
    """The same state machine, many more and longer runs."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        ShareMachine,
        settings=settings(
            # 250 x 80 steps: ~60 s on an idle core (the bursts of 50 records
            # made 400 too slow for the default 120 s timeout under load)
            max_examples=250,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
