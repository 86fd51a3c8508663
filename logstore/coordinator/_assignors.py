"""Server-side assignors: pure functions from (members, topics) to a target assignment.

An assignor gets every member's subscribed topics (already resolved: regexes
matched, unknown topics dropped) and current target, plus each topic's
partition count, and returns a target for every member. It does no I/O, keeps
no state and never raises for valid input; the same input gives the same output
(members and partitions are visited in sorted order), which a replayed
coordinator relies on.

Both guarantee: every partition of a topic someone subscribes to goes to
exactly one member subscribed to that topic; nobody gets a partition of a
topic it does not subscribe to.

* ``uniform`` (the default, as Kafka's): balanced and sticky. With equal
  subscriptions every member gets ``N // M`` or ``N // M + 1`` partitions and
  a member keeps as many of its current partitions as balance allows, so a
  join or leave moves only the partitions that must move. With unequal
  subscriptions a greedy pass balances as far as subscriptions allow.
* ``range``: per topic, the subscribers sorted by member id get contiguous
  ranges, the first ``N % M`` one partition more. Topics with the same
  partition count and the same subscribers ("co-partitioned", e.g. a join of
  two keyed topics) get the same partition numbers on the same member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from logstore.coordinator._records import TopicPartition


@dataclass(frozen=True)
class AssignorMember:
    """What an assignor knows about one member."""

    topics: frozenset[str]
    current: frozenset[TopicPartition] = frozenset()


Assignment = dict[str, frozenset[TopicPartition]]
Assignor = Callable[[Mapping[str, AssignorMember], Mapping[str, int]], Assignment]


def _all_partitions(
    members: Mapping[str, AssignorMember], topics: Mapping[str, int]
) -> list[TopicPartition]:
    wanted = sorted({t for m in members.values() for t in m.topics if t in topics})
    return [(t, p) for t in wanted for p in range(topics[t])]


def uniform(members: Mapping[str, AssignorMember], topics: Mapping[str, int]) -> Assignment:
    """Balanced, sticky assignment (see the module docstring)."""
    if not members:
        return {}
    subs = {frozenset(m.topics & topics.keys()) for m in members.values()}
    if len(subs) == 1:
        return _uniform_homogeneous(members, topics)
    return _uniform_general(members, topics)


def _kept(
    members: Mapping[str, AssignorMember], valid: set[TopicPartition]
) -> dict[str, list[TopicPartition]]:
    """Each member's current partitions that are still valid for it, each
    partition kept by one member only (the first in id order) if two claim it."""
    taken: set[TopicPartition] = set()
    out: dict[str, list[TopicPartition]] = {}
    for mid in sorted(members):
        m = members[mid]
        mine = sorted(
            tp for tp in m.current if tp in valid and tp[0] in m.topics and tp not in taken
        )
        taken.update(mine)
        out[mid] = mine
    return out


def _uniform_homogeneous(
    members: Mapping[str, AssignorMember], topics: Mapping[str, int]
) -> Assignment:
    parts = _all_partitions(members, topics)
    n, m = len(parts), len(members)
    kept = _kept(members, set(parts))
    base, extra = divmod(n, m)
    # The `extra` members that already hold the most get the larger quota, so
    # fewer partitions move (ties broken by id for determinism).
    order = sorted(members, key=lambda mid: (-len(kept[mid]), mid))
    quota = {mid: base + (1 if i < extra else 0) for i, mid in enumerate(order)}
    out: dict[str, list[TopicPartition]] = {mid: kept[mid][: quota[mid]] for mid in members}
    owned = {tp for ps in out.values() for tp in ps}
    pool = [tp for tp in parts if tp not in owned]
    for mid in sorted(members):
        need = quota[mid] - len(out[mid])
        out[mid] += pool[:need]
        del pool[:need]
    assert not pool
    return {mid: frozenset(ps) for mid, ps in out.items()}


def _uniform_general(
    members: Mapping[str, AssignorMember], topics: Mapping[str, int]
) -> Assignment:
    parts = _all_partitions(members, topics)
    kept = _kept(members, set(parts))
    out: dict[str, set[TopicPartition]] = {mid: set(ps) for mid, ps in kept.items()}
    owned = {tp for ps in out.values() for tp in ps}
    for tp in parts:
        if tp in owned:
            continue
        # to the least loaded subscriber (id breaks ties)
        cands = [mid for mid in members if tp[0] in members[mid].topics]
        best = min(cands, key=lambda mid: (len(out[mid]), mid))
        out[best].add(tp)
    # Balance: move a partition from a member holding >= 2 more than a
    # subscriber of its topic, until no such pair exists. Each move goes from a
    # fuller to an emptier member, so it terminates after at most N moves.
    moved = True
    while moved:
        moved = False
        for low in sorted(members, key=lambda mid: (len(out[mid]), mid)):
            lt = members[low].topics
            for high in sorted(members, key=lambda mid: (-len(out[mid]), mid)):
                if len(out[high]) < len(out[low]) + 2:
                    break
                cand = sorted(tp for tp in out[high] if tp[0] in lt)
                if cand:
                    tp = cand[-1]
                    out[high].discard(tp)
                    out[low].add(tp)
                    moved = True
                    break
            if moved:
                break
    return {mid: frozenset(ps) for mid, ps in out.items()}


def range_(members: Mapping[str, AssignorMember], topics: Mapping[str, int]) -> Assignment:
    """Contiguous ranges per topic, aligned across co-partitioned topics."""
    out: dict[str, set[TopicPartition]] = {mid: set() for mid in members}
    for topic in sorted({t for m in members.values() for t in m.topics if t in topics}):
        subs = sorted(mid for mid, m in members.items() if topic in m.topics)
        base, extra = divmod(topics[topic], len(subs))
        start = 0
        for i, mid in enumerate(subs):
            size = base + (1 if i < extra else 0)
            out[mid].update((topic, p) for p in range(start, start + size))
            start += size
    return {mid: frozenset(ps) for mid, ps in out.items()}


ASSIGNORS: dict[str, Assignor] = {"uniform": uniform, "range": range_}
