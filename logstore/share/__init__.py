"""Share groups (work queues on the log): a pure, replayable state machine.

No gRPC, no I/O, no threads; time is passed in as ``now_ms``. The broker owns
one :class:`ShareCoordinator`, calls a handler per request, appends the
returned records to the compacted internal topic ``__share_group_state``
(:data:`SHARE_STATE_TOPIC`) with an fsync, replays them, and answers; at start
it rebuilds with :meth:`ShareCoordinator.load` over that topic and
re-produces :meth:`ShareCoordinator.pending_dead_letters`.

Modules: ``_coordinator`` (groups, consumers, priorities, the fetch steps and
the handler contract), ``_partition`` (one share partition's window and its
states: AVAILABLE / ACQUIRED / ACCEPTED / DEAD_LETTER / ARCHIVED / GAP),
``_records`` (record keys, values and their byte format; the redrive
position of a group's dead letters is one of them), ``_config`` (every
default and limit). Delayed records at the window start are *parked* below
the window (bounded by ``max_delayed_records``), so a long delay holds back
nothing behind it (``_partition``).

Constants: ``AVAILABLE``, ``ACQUIRED``, ``ACCEPTED``, ``DEAD_LETTER``,
``ARCHIVED`` and ``GAP`` are the per-offset state codes (u1) and
``STATE_NAMES`` their names by code; ``SHARE_RECORD_VERSION`` is the format
version written in every record value; ``SHARE_STATE_TOPIC`` the internal
topic's name; ``PARKED_CHUNK_RECORDS`` the most parked records in one
parked-chunk record.
"""

from logstore.share._config import ShareCoordinatorConfig, ShareGroupConfig
from logstore.share._coordinator import (
    Ack,
    AckReply,
    Acquisition,
    ConsumerDescription,
    Membership,
    PartitionRead,
    Result,
    ShareCoordinator,
    ShareGroupDescription,
    ShareTickResult,
)
from logstore.share._partition import (
    ACCEPTED,
    ACQUIRED,
    ARCHIVED,
    AVAILABLE,
    DEAD_LETTER,
    GAP,
    STATE_NAMES,
    AckError,
    AckKind,
    AckResult,
    AcquiredRange,
    Candidates,
    DeadLetter,
    DeadLetterReason,
    PartitionCounts,
    SharePartition,
)
from logstore.share._records import (
    PARKED_CHUNK_RECORDS,
    SHARE_RECORD_VERSION,
    SHARE_STATE_TOPIC,
    ShareChunkKey,
    ShareChunkValue,
    ShareGroupKey,
    ShareGroupValue,
    ShareParkedKey,
    ShareParkedValue,
    ShareRecord,
    ShareRecordType,
    ShareRedriveKey,
    ShareRedriveValue,
    ShareStateKey,
    ShareStateValue,
    decode,
    encode,
)

__all__ = [
    "ACCEPTED",
    "ACQUIRED",
    "ARCHIVED",
    "AVAILABLE",
    "DEAD_LETTER",
    "GAP",
    "PARKED_CHUNK_RECORDS",
    "SHARE_RECORD_VERSION",
    "SHARE_STATE_TOPIC",
    "STATE_NAMES",
    "Ack",
    "AckError",
    "AckKind",
    "AckReply",
    "AckResult",
    "AcquiredRange",
    "Acquisition",
    "Candidates",
    "ConsumerDescription",
    "DeadLetter",
    "DeadLetterReason",
    "Membership",
    "PartitionCounts",
    "PartitionRead",
    "Result",
    "ShareChunkKey",
    "ShareChunkValue",
    "ShareCoordinator",
    "ShareCoordinatorConfig",
    "ShareGroupConfig",
    "ShareGroupDescription",
    "ShareGroupKey",
    "ShareGroupValue",
    "ShareParkedKey",
    "ShareParkedValue",
    "SharePartition",
    "ShareRecord",
    "ShareRecordType",
    "ShareRedriveKey",
    "ShareRedriveValue",
    "ShareStateKey",
    "ShareStateValue",
    "ShareTickResult",
    "decode",
    "encode",
]
