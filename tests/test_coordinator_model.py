"""Hypothesis state machine over the pure coordinator: members joining, leaving,
heartbeating honestly or slowly, zombies, clock jumps (session and rebalance
timeouts, offset expiry), commits, broker restarts (replay), partitions added
and topics deleted. Checked after every step: no partition is owned by two
members of a group (owned = assigned or still being revoked), every live
member owns nothing the coordinator did not give it, and the state replayed
from the log (raw and compacted) equals the live state; after a settle, every
subscribed partition is owned and nothing is being revoked."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from logstore.coordinator import (
    LEAVE_EPOCH,
    STATIC_LEAVE_EPOCH,
    HeartbeatReply,
    MemberValue,
    TopicPartition,
)
from logstore.errors import FailedPreconditionError, UnknownMemberIdError
from tests.coordinator_harness import TEST_CONFIG, Harness

GROUPS = ("g1", "g2")
SLOTS = 5
SUBSCRIPTIONS: tuple[tuple[tuple[str, ...] | None, str | None], ...] = (
    (("a",), None),
    (("a", "b"), None),
    (None, "a|b"),
    (("b", "c"), None),
)


@dataclass
class Client:
    group: str
    instance_id: str | None
    sub: int
    member_id: str = ""
    epoch: int = 0
    owned: frozenset[TopicPartition] = frozenset()
    ghosts: list[tuple[str, int]] = field(default_factory=list)


class CoordinatorModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.now = 0
        self.h = Harness({"a": 3, "b": 2})
        self.clients: dict[int, Client] = {}
        self.ghosts: list[tuple[str, str, int]] = []  # (group, member id, epoch) of dead processes

    # ------------------------------------------------------------ helpers

    def _member(self, c: Client) -> MemberValue | None:
        g = self.h.coord._groups.get(c.group)
        m = g.members.get(c.member_id) if g else None
        return None if m is None or m.epoch == STATIC_LEAVE_EPOCH else m

    def _join(self, slot: int, c: Client) -> HeartbeatReply:
        topics, regex = SUBSCRIPTIONS[c.sub]
        r = self.h.run(
            self.h.coord.heartbeat(
                c.group,
                "",
                0,
                topics=topics,
                regex=regex,
                instance_id=c.instance_id,
                now_ms=self.now,
            )
        )
        c.member_id, c.epoch, c.owned = r.member_id, r.member_epoch, r.assigned
        self.clients[slot] = c
        return r

    def _beat(self, slot: int, release: bool) -> None:
        c = self.clients[slot]
        expected_ok = self._member(c) is not None and self._member(c).epoch == c.epoch  # type: ignore[union-attr]
        try:
            r = self.h.run(
                self.h.coord.heartbeat(
                    c.group, c.member_id, c.epoch, owned=c.owned, now_ms=self.now
                )
            )
        except FailedPreconditionError:
            assert not expected_ok, "a live member with its current epoch was refused"
            # an honest client that learns it was fenced drops everything and rejoins
            self.ghosts.append((c.group, c.member_id, c.epoch))
            del self.clients[slot]
            return
        assert expected_ok, "a removed member's heartbeat was accepted"
        c.epoch = r.member_epoch
        c.owned = r.assigned if release else c.owned | r.assigned

    # -------------------------------------------------------------- rules

    def _pick(self, i: int) -> int:
        """The i-th live client's slot (modulo), so rules act on someone."""
        slots = sorted(self.clients)
        return slots[i % len(slots)]

    @precondition(lambda self: len(self.clients) < SLOTS)
    @rule(
        group=st.sampled_from(GROUPS),
        sub=st.integers(0, len(SUBSCRIPTIONS) - 1),
        static=st.booleans(),
    )
    def join(self, group: str, sub: int, static: bool) -> None:
        departed = getattr(self, "departed", {})
        slot = min(set(range(SLOTS)) - set(self.clients) - set(departed), default=None)
        if slot is None:
            return
        self._join(slot, Client(group, f"pod-{slot}" if static else None, sub))

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, SLOTS - 1), honest=st.booleans())
    def heartbeat(self, i: int, honest: bool) -> None:
        self._beat(self._pick(i), release=honest)

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, SLOTS - 1), static=st.booleans())
    def leave(self, i: int, static: bool) -> None:
        slot = self._pick(i)
        c = self.clients[slot]
        if self._member(c) is None:
            return
        epoch = STATIC_LEAVE_EPOCH if static and c.instance_id else LEAVE_EPOCH
        self.h.run(self.h.coord.heartbeat(c.group, c.member_id, epoch, now_ms=self.now))
        del self.clients[slot]
        self.ghosts.append((c.group, c.member_id, c.epoch))
        if epoch == STATIC_LEAVE_EPOCH:  # the same pod comes back later, maybe
            self.departed = getattr(self, "departed", {}) | {slot: c}

    @rule(slot=st.integers(0, SLOTS - 1))
    def static_comeback(self, slot: int) -> None:
        """A static pod that left with -2 (or crashed) starts again with its instance id."""
        old = getattr(self, "departed", {}).pop(slot, None) or self.clients.get(slot)
        if old is None or old.instance_id is None:
            return
        if slot in self.clients:  # crash: the old process is now a zombie
            self.ghosts.append((old.group, old.member_id, old.epoch))
        before = self._member(old)
        r = self._join(slot, Client(old.group, old.instance_id, old.sub))
        if before is not None:  # it gets its partitions back (less any that move away)
            assert before.assigned <= r.assigned | r.revoking

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, SLOTS - 1))
    def commit(self, i: int) -> None:
        c = self.clients[self._pick(i)]
        m = self._member(c)
        ok = m is not None and m.epoch == c.epoch
        try:
            self.h.run(
                self.h.coord.commit_offsets(
                    c.group, c.member_id, c.epoch, {tp: (7, "") for tp in c.owned}, now_ms=self.now
                )
            )
        except FailedPreconditionError:
            assert not ok, "a live member's commit was refused"
        else:
            assert ok, "a removed member's commit was accepted"

    @precondition(lambda self: self.ghosts)
    @rule(i=st.integers(0, 100), commit=st.booleans())
    def zombie(self, i: int, commit: bool) -> None:
        """A dead process's heartbeat or commit is refused (unless its id rejoined)."""
        group, mid, epoch = self.ghosts[i % len(self.ghosts)]
        if any(c.member_id == mid for c in self.clients.values()) or epoch <= 0:
            return
        with pytest.raises(FailedPreconditionError):
            if commit:
                self.h.coord.commit_offsets(group, mid, epoch, {("a", 0): (1, "")}, now_ms=self.now)
            else:
                self.h.coord.heartbeat(group, mid, epoch, owned=(), now_ms=self.now)

    @rule(ms=st.sampled_from([1, 50, 400, 1_100, 2_100, 11_000]))
    def advance(self, ms: int) -> None:
        self.now += ms
        tick = self.h.coord.tick(self.now)
        assert tick.next_deadline_ms is None or tick.next_deadline_ms > self.now
        self.h.records(tick.records)

    @rule()
    def restart(self) -> None:
        self.h.restart(self.now)

    @rule(topic=st.sampled_from("abc"), more=st.integers(1, 3))
    def add_partitions(self, topic: str, more: int) -> None:
        topics = dict(self.h.topics)
        topics[topic] = topics.get(topic, 0) + more
        self.h.metadata(topics, self.now)

    @rule(topic=st.sampled_from("abc"))
    def delete_topic(self, topic: str) -> None:
        topics = {t: n for t, n in self.h.topics.items() if t != topic}
        self.h.metadata(topics, self.now)

    @rule()
    def settle(self) -> None:
        """Every live client heartbeats honestly for a few rounds: the groups become stable."""
        for _ in range(6):
            self.now += 1
            for slot in sorted(self.clients):
                self._beat(slot, release=True)
        for group in GROUPS:
            g = self.h.coord._groups.get(group)
            if g is None or not any(c.group == group for c in self.clients.values()):
                continue
            owned: set[TopicPartition] = set()
            for m in g.members.values():
                assert not m.revoking
                owned |= m.assigned
            wanted = set()
            for m in g.members.values():
                wanted |= {
                    (t, p) for t in self.h.coord._resolve(m) for p in range(self.h.topics[t])
                }
            # a static member away (-2) keeps its place: its target waits for it
            for mid, m in g.members.items():
                if m.epoch == STATIC_LEAVE_EPOCH and mid in g.targets:
                    wanted -= g.targets[mid].partitions - m.assigned
            assert owned == wanted, "a subscribed partition is unowned after settling"
            for c in self.clients.values():
                if c.group == group:
                    m = self._member(c)
                    assert m is not None and c.owned == m.assigned

    # --------------------------------------------------------- invariants

    @invariant()
    def one_owner_per_partition(self) -> None:
        for g in self.h.coord._groups.values():
            seen: dict[TopicPartition, str] = {}
            for mid, m in g.members.items():
                for tp in m.assigned | m.revoking:
                    assert tp not in seen, f"{tp} owned by {seen[tp]} and {mid}"
                    seen[tp] = mid

    @invariant()
    def live_clients_own_only_what_they_were_given(self) -> None:
        for c in self.clients.values():
            m = self._member(c)
            if m is not None:
                assert c.owned <= m.assigned | m.revoking

    @invariant()
    def replay_equals_live(self) -> None:
        self.h.check_replay()


TestCoordinatorModel = CoordinatorModel.TestCase
# the default run: a small seeded slice (the ci profile derandomizes), a few seconds
TestCoordinatorModel.settings = settings(max_examples=40, stateful_step_count=30)


class SlowModel(CoordinatorModel):
    pass


@pytest.mark.slow
def test_coordinator_model_long() -> None:
    """The same state machine, many more and longer interleavings."""
    SlowModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
    SlowModel.TestCase("runTest").runTest()


assert UnknownMemberIdError  # the class the zombies meet most
assert TEST_CONFIG.session_timeout_ms == 1_000
