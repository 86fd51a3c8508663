"""The in-memory state of one consumer group, and what the coordinator tells callers.

A :class:`Group` is changed only by :meth:`Coordinator.replay
<logstore.coordinator.Coordinator.replay>`; handlers read it and return records.
The reply and description types here are plain frozen dataclasses the broker
encodes into ``groups.proto`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from logstore.coordinator._records import (
    MemberValue,
    OffsetCommitValue,
    TargetAssignmentValue,
    TopicPartition,
)

#: member_epoch in a heartbeat: join (or rejoin after being fenced).
JOIN_EPOCH: Final = 0
#: member_epoch in a heartbeat: leave now; partitions are reassigned.
LEAVE_EPOCH: Final = -1
#: member_epoch in a heartbeat: a static member leaves for a restart; its
#: partitions stay reserved for its instance id until the session times out.
STATIC_LEAVE_EPOCH: Final = -2

#: Group states as ``describe`` reports them (Kafka's names, lower case).
EMPTY: Final = "empty"
RECONCILING: Final = "reconciling"
STABLE: Final = "stable"


@dataclass
class Group:
    """Replayed state of one group (mutated by ``replay`` only)."""

    group_id: str
    epoch: int = 0
    assignor: str = "uniform"
    empty_since_ms: int = -1
    members: dict[str, MemberValue] = field(default_factory=dict)
    targets: dict[str, TargetAssignmentValue] = field(default_factory=dict)
    offsets: dict[TopicPartition, OffsetCommitValue] = field(default_factory=dict)
    #: Derived from ``members`` by replay (not in records): who holds each
    #: partition (assigned or revoking), so a heartbeat checks ownership in
    #: O(1) per partition instead of scanning the group.
    owners: dict[TopicPartition, str] = field(default_factory=dict)

    def disown(self, member_id: str, m: MemberValue) -> None:
        """Forget ``m``'s partitions in ``owners`` (replay only)."""
        for tp in m.assigned | m.revoking:
            if self.owners.get(tp) == member_id:
                del self.owners[tp]

    def state(self) -> str:
        """``empty`` without members; ``stable`` when every member holds exactly
        its target at the group epoch with nothing being revoked; else
        ``reconciling``."""
        if not self.members:
            return EMPTY
        for mid, m in self.members.items():
            if m.epoch == STATIC_LEAVE_EPOCH:
                continue
            target = self.targets.get(mid)
            parts = target.partitions if target else frozenset()
            if m.epoch != self.epoch or m.revoking or m.assigned != parts:
                return RECONCILING
        return STABLE


@dataclass(frozen=True)
class HeartbeatReply:
    """What a member is told: its id and epoch, when to heartbeat next, and
    the partitions it owns now. It must release every partition it holds that
    is not in ``assigned`` (``revoking`` lists them), commit, and say so in its
    next heartbeat's owned partitions."""

    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assigned: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition] = frozenset()


@dataclass(frozen=True)
class CommittedOffset:
    """A committed offset as ``fetch_offsets`` and ``describe_group`` return it."""

    offset: int
    metadata: str
    commit_ms: int
    leader_epoch: int = -1


@dataclass(frozen=True)
class MemberDescription:
    """One member for ``describe_group``: identity, subscription, epoch and partitions."""

    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    member_epoch: int
    topics: tuple[str, ...]
    regex: str | None
    assignor: str | None
    assigned: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition]
    target: frozenset[TopicPartition]


@dataclass(frozen=True)
class GroupDescription:
    """Raw state for ``DescribeGroup``; the broker adds end offsets and lag."""

    group_id: str
    state: str
    epoch: int
    assignor: str
    members: tuple[MemberDescription, ...]
    offsets: dict[TopicPartition, CommittedOffset]


@dataclass(frozen=True)
class GroupListing:
    """One group for ``list_groups``."""

    group_id: str
    state: str
    member_count: int


@dataclass(frozen=True)
class ResetPlanEntry:
    """One partition of a reset: the committed offset before (None if none) and after."""

    topic: str
    partition: int
    current: int | None
    new: int
