"""Assignors: complete and exclusive, uniform balanced and sticky, range aligned."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from logstore.coordinator import AssignorMember, TopicPartition, range_, uniform
from logstore.coordinator._assignors import Assignment

topic_sets = st.dictionaries(st.sampled_from("abcde"), st.integers(0, 12), min_size=1, max_size=4)
member_ids = st.lists(
    st.text("mnopqrs", min_size=1, max_size=3), min_size=1, max_size=8, unique=True
)


@st.composite
def groups(
    draw: st.DrawFn, equal: bool = False
) -> tuple[dict[str, AssignorMember], dict[str, int]]:
    topics = draw(topic_sets)
    names = [*sorted(topics), "unknown-topic"]
    ids = draw(member_ids)
    if equal:
        subs = frozenset(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
        return {m: AssignorMember(subs) for m in ids}, topics
    return {
        m: AssignorMember(
            frozenset(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
        )
        for m in ids
    }, topics


def _check_complete_and_exclusive(
    members: dict[str, AssignorMember], topics: dict[str, int], out: Assignment
) -> None:
    assert set(out) == set(members)
    owners: dict[TopicPartition, str] = {}
    for mid, parts in out.items():
        for tp in parts:
            assert tp[0] in members[mid].topics, "a partition of a topic the member does not want"
            assert tp not in owners, f"{tp} given to {owners[tp]} and {mid}"
            owners[tp] = mid
    wanted = {
        (t, p) for m in members.values() for t in m.topics if t in topics for p in range(topics[t])
    }
    assert set(owners) == wanted


@given(groups())
def test_uniform_assigns_every_subscribed_partition_exactly_once(
    g: tuple[dict[str, AssignorMember], dict[str, int]],
) -> None:
    """uniform: each subscribed partition goes to exactly one of its subscribers."""
    _check_complete_and_exclusive(*g, uniform(*g))


@given(groups())
def test_range_assigns_every_subscribed_partition_exactly_once(
    g: tuple[dict[str, AssignorMember], dict[str, int]],
) -> None:
    """range: each subscribed partition goes to exactly one of its subscribers."""
    _check_complete_and_exclusive(*g, range_(*g))


@given(groups(equal=True))
def test_uniform_balances_within_one_with_equal_subscriptions(
    g: tuple[dict[str, AssignorMember], dict[str, int]],
) -> None:
    """uniform with equal subscriptions: member counts differ by at most one."""
    sizes = [len(p) for p in uniform(*g).values()]
    assert max(sizes) - min(sizes) <= 1


@given(groups(), st.data())
def test_assignors_are_deterministic(
    g: tuple[dict[str, AssignorMember], dict[str, int]], data: st.DataObject
) -> None:
    """The same input gives the same output, whatever the dict order (replay relies on it)."""
    members, topics = g
    shuffled = dict(data.draw(st.permutations(list(members.items()))))
    assert uniform(members, topics) == uniform(shuffled, topics)
    assert range_(members, topics) == range_(shuffled, topics)


def _with_current(members: dict[str, AssignorMember], out: Assignment) -> dict[str, AssignorMember]:
    return {m: AssignorMember(members[m].topics, out[m]) for m in members}


@given(groups(equal=True), st.text("tuvw", min_size=1, max_size=2))
def test_uniform_join_moves_only_what_the_newcomer_must_get(
    g: tuple[dict[str, AssignorMember], dict[str, int]], newcomer: str
) -> None:
    """A join: no partition moves between old members; each loses only down to its quota."""
    members, topics = g
    subs = next(iter(members.values())).topics
    before = uniform(members, topics)
    after = uniform({**_with_current(members, before), newcomer: AssignorMember(subs)}, topics)
    for m in members:
        assert after[m] <= before[m], f"{m} got partitions it did not have"
    moved = sum(len(before[m] - after[m]) for m in members)
    assert moved == len(after[newcomer])
    total, n = sum(len(p) for p in before.values()), len(members) + 1
    assert len(after[newcomer]) == total // n  # it gets the smaller quota: fewest moves


@given(groups(equal=True), st.data())
def test_uniform_leave_moves_only_the_leavers_partitions(
    g: tuple[dict[str, AssignorMember], dict[str, int]], data: st.DataObject
) -> None:
    """A leave: every remaining member keeps all it had; only the leaver's partitions move."""
    members, topics = g
    assume(len(members) >= 2)
    before = uniform(members, topics)
    leaver = data.draw(st.sampled_from(sorted(members)))
    rest = {m: v for m, v in _with_current(members, before).items() if m != leaver}
    after = uniform(rest, topics)
    for m in rest:
        assert before[m] <= after[m]
    assert set().union(*after.values()) - set().union(*(before[m] for m in rest)) == before[leaver]


@given(groups())
def test_uniform_is_stable_on_its_own_output(
    g: tuple[dict[str, AssignorMember], dict[str, int]],
) -> None:
    """Recomputing with the current assignment as input moves nothing."""
    members, topics = g
    once = uniform(members, topics)
    assert uniform(_with_current(members, once), topics) == once


@given(st.integers(1, 20), member_ids)
def test_range_keeps_co_partitioned_topics_aligned(partitions: int, ids: list[str]) -> None:
    """range: co-partitioned topics give each member the same partition numbers."""
    members = {m: AssignorMember(frozenset({"a", "b"})) for m in ids}
    out = range_(members, {"a": partitions, "b": partitions})
    for parts in out.values():
        a = sorted(p for t, p in parts if t == "a")
        assert a == sorted(p for t, p in parts if t == "b")
        assert a == list(range(a[0], a[0] + len(a))) if a else True  # contiguous
