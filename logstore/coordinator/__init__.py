"""The consumer-group coordinator: a pure, replayable state machine (no gRPC, no I/O).

The broker owns one :class:`Coordinator`, calls a handler per request, appends
the returned records to the compacted ``__consumer_offsets`` topic, replays
them, and sends the reply; at start it rebuilds the coordinator with
:meth:`Coordinator.load` over that topic. See ``_coordinator`` for the
protocol (KIP-848: server-side assignment, incremental revocation, epochs),
``_records`` for the record format, ``_assignors`` for ``uniform`` and
``range``, and ``_config`` for every limit.

Constants: ``JOIN_EPOCH`` (0), ``LEAVE_EPOCH`` (-1) and ``STATIC_LEAVE_EPOCH``
(-2) are the special member epochs of a heartbeat; ``EMPTY``, ``RECONCILING``
and ``STABLE`` the group states; ``ASSIGNORS`` maps assignor names to the
pure functions; ``RECORD_FORMAT_VERSION`` is the version written in every
record value; ``TopicPartition`` is the ``(topic, partition)`` tuple type;
:func:`regex_matches` applies a subscription regex (RE2) to topic names.
"""

from logstore.coordinator._assignors import ASSIGNORS, AssignorMember, range_, uniform
from logstore.coordinator._config import GroupConfig
from logstore.coordinator._coordinator import Coordinator, Result, TickResult, regex_matches
from logstore.coordinator._group import (
    EMPTY,
    JOIN_EPOCH,
    LEAVE_EPOCH,
    RECONCILING,
    STABLE,
    STATIC_LEAVE_EPOCH,
    CommittedOffset,
    GroupDescription,
    GroupListing,
    HeartbeatReply,
    MemberDescription,
    ResetPlanEntry,
)
from logstore.coordinator._records import (
    RECORD_FORMAT_VERSION,
    CoordinatorRecord,
    GroupMetadataKey,
    GroupMetadataValue,
    MemberKey,
    MemberValue,
    OffsetCommitKey,
    OffsetCommitValue,
    RecordType,
    TargetAssignmentKey,
    TargetAssignmentValue,
    TopicPartition,
    decode,
    encode,
)

__all__ = [
    "ASSIGNORS",
    "EMPTY",
    "JOIN_EPOCH",
    "LEAVE_EPOCH",
    "RECONCILING",
    "RECORD_FORMAT_VERSION",
    "STABLE",
    "STATIC_LEAVE_EPOCH",
    "AssignorMember",
    "CommittedOffset",
    "Coordinator",
    "CoordinatorRecord",
    "GroupConfig",
    "GroupDescription",
    "GroupListing",
    "GroupMetadataKey",
    "GroupMetadataValue",
    "HeartbeatReply",
    "MemberDescription",
    "MemberKey",
    "MemberValue",
    "OffsetCommitKey",
    "OffsetCommitValue",
    "RecordType",
    "ResetPlanEntry",
    "Result",
    "TargetAssignmentKey",
    "TargetAssignmentValue",
    "TickResult",
    "TopicPartition",
    "decode",
    "encode",
    "range_",
    "regex_matches",
    "uniform",
]
