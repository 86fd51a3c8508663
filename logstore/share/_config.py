"""Share-group settings: per group (:class:`ShareGroupConfig`, durable) and per
coordinator (:class:`ShareCoordinatorConfig`, the broker's bounds).

Both are frozen and validated at construction; every refusal names the field
and its allowed range, and every limit the coordinator enforces is a field
here (CONVENTIONS.md rule 9), so an error can say which knob was hit.

Defaults follow KIP-932 / SQS where they exist: a 30 s acquisition lock
(SQS's visibility timeout, Kafka's ``group.share.record.lock.duration.ms``),
5 delivery attempts (Kafka's ``group.share.delivery.count.limit``), 2,000
in-flight records per share partition (Kafka's 200 default is too small for
a fast queue: at 5,000 tasks/s and 100 ms per task a partition needs ~500 in
flight). ``auto_offset_reset`` defaults to ``earliest`` (Kafka: ``latest``):
for a work queue, tasks produced before the first worker started are work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final

from logstore.errors import InvalidConfigError

_HOUR_MS: Final = 3600 * 1000
_DAY_MS: Final = 24 * _HOUR_MS

#: Hard ranges of the integer fields of ShareGroupConfig (ms, counts).
_GROUP_HARD: Final[dict[str, tuple[int, int]]] = {
    "visibility_timeout_ms": (1, 12 * _HOUR_MS),
    # u1 column; Kafka allows 2..10
    "max_delivery_attempts": (1, 255),
    # the window is dense numpy columns of ~50 B an offset: 1,000,000 = 50 MB
    "max_inflight_records": (1, 1_000_000),
}


@dataclass(frozen=True)
class ShareGroupConfig:
    """The settings of one share group (stored in its group record).

    ``visibility_timeout_ms`` must also lie inside the coordinator's
    ``[min_visibility_timeout_ms, max_visibility_timeout_ms]`` (checked when a
    group is configured, since those are broker settings)."""

    #: Acquisition lock: an acquired record not acknowledged (or renewed)
    #: within this becomes available again.
    visibility_timeout_ms: int = 30_000
    #: A record delivered this many times and then released (or whose lock
    #: expires) is dead-lettered instead of redelivered.
    max_delivery_attempts: int = 5
    #: Offsets between the share-partition start offset and end offset (the
    #: in-flight window: acquired, available for redelivery, delayed, waiting
    #: for the dead-letter topic). Past it an acquisition returns fewer
    #: records (back pressure), and so at most this many are acquired.
    max_inflight_records: int = 2_000
    #: Dead-letter topic; None means ``<group>.dlq``.
    dead_letter_topic: str | None = None
    #: A record older than this (its timestamp) when it would be acquired is
    #: dead-lettered instead; None: no TTL.
    message_ttl_ms: int | None = None
    #: At most one record per key (non-null key) acquired at a time per share
    #: partition, and a key's records are handed out in offset order.
    ordering_keys: bool = False
    #: Topic -> priority (higher first); topics not listed have priority 0.
    topic_priorities: Mapping[str, int] = field(default_factory=dict)
    #: Where a share partition first used starts: "earliest" (log start) or
    #: "latest" (high watermark).
    auto_offset_reset: str = "earliest"
    #: Back pressure from a latency target: the broker refuses produces to the
    #: group's topics while backlog / acknowledge rate is above this (ms);
    #: None: no bound.
    max_queue_latency_ms: int | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in _GROUP_HARD.items():
            _check_int(name, getattr(self, name), lo, hi)
        if self.message_ttl_ms is not None:
            _check_int("message_ttl_ms", self.message_ttl_ms, 1, 3650 * _DAY_MS)
        if self.max_queue_latency_ms is not None:
            _check_int("max_queue_latency_ms", self.max_queue_latency_ms, 1, _DAY_MS)
        if self.dead_letter_topic is not None and (
            not isinstance(self.dead_letter_topic, str)
            or not self.dead_letter_topic
            or self.dead_letter_topic.startswith("__")
        ):
            raise InvalidConfigError(
                "dead_letter_topic must be a non-empty topic name not starting with '__', "
                f"not {self.dead_letter_topic!r}"
            )
        if not isinstance(self.ordering_keys, bool):
            raise InvalidConfigError(f"ordering_keys must be a boolean, not {self.ordering_keys!r}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise InvalidConfigError(
                f"auto_offset_reset must be 'earliest' or 'latest', not {self.auto_offset_reset!r}"
            )
        prios = dict(self.topic_priorities)
        for topic, prio in prios.items():
            if not isinstance(topic, str) or not topic:
                raise InvalidConfigError(f"topic_priorities: bad topic name {topic!r}")
            _check_int(f"topic_priorities[{topic!r}]", prio, -1_000_000, 1_000_000)
        object.__setattr__(self, "topic_priorities", MappingProxyType(prios))

    def __hash__(self) -> int:
        # the generated hash would hash the mapping proxy, which is unhashable
        return hash(
            tuple(
                tuple(sorted(v.items())) if f.name == "topic_priorities" else v
                for f in fields(self)
                for v in (getattr(self, f.name),)
            )
        )

    def dead_letter_topic_for(self, group_id: str) -> str:
        """The dead-letter topic of ``group_id`` under this config."""
        return self.dead_letter_topic or f"{group_id}.dlq"

    def priority(self, topic: str) -> int:
        """The priority of ``topic`` (0 when not listed)."""
        return self.topic_priorities.get(topic, 0)


@dataclass(frozen=True)
class ShareCoordinatorConfig:
    """Bounds and timeouts of the share coordinator (broker settings)."""

    #: Share groups held; creating one more is refused (TooManyGroupsError).
    max_groups: int = 1_000
    #: Consumers of one group; a join past it is refused (GroupMaxSizeReachedError).
    max_consumers_per_group: int = 1_000
    #: Topics one consumer subscribes to, and topics in ``topic_priorities``.
    max_topics_per_group: int = 100
    #: Share partitions with state, all groups together. Memory is about
    #: ``max_inflight_records`` x 50 B per share partition at worst (numpy
    #: columns), so 10,000 x 2,000 x 50 B = 1 GB is the default's ceiling.
    max_share_partitions: int = 10_000
    #: Delayed records parked below the window per share partition (see
    #: ``_partition``: a delayed record at the window start is parked so the
    #: window moves on). Past it delayed records stay in the window and, as
    #: before, fill it: back pressure, not memory. A parked record costs ~60 B
    #: in its chunk plus ~60 B in the merged columns: 100,000 = ~12 MB.
    max_delayed_records: int = 100_000
    #: Delayed records parked in all share partitions of the broker together
    #: (~120 B each: 1,000,000 = ~120 MB). Past it no more records are parked
    #: anywhere: as at the per-partition bound, a delayed record at a window
    #: start stays in the window (back pressure: fetches of that partition
    #: return fewer records), until parked records come due or finish.
    max_delayed_records_total: int = 1_000_000
    #: Records one acquisition hands out.
    max_fetch_records: int = 10_000
    #: Acknowledgement ranges in one acknowledge call.
    max_ack_ranges: int = 10_000
    #: UTF-8 bytes of an error text given with REJECT or RELEASE (kept per
    #: record until dead-lettered, sent as a dead-letter header).
    max_error_text_bytes: int = 1_024
    #: Bounds of a group's ``visibility_timeout_ms`` and of a RENEW (SQS
    #: allows 0 s..12 h; a lock under 1 s expires before most networks answer).
    min_visibility_timeout_ms: int = 1_000
    max_visibility_timeout_ms: int = 12 * _HOUR_MS
    #: The longest delay a RELEASE may ask for (7 days, a topic's default
    #: retention; deliver-at headers are bounded by retention, not this).
    max_release_delay_ms: int = 7 * _DAY_MS
    #: A consumer silent for this long leaves; its records become available.
    session_timeout_ms: int = 45_000
    #: Told to consumers in every heartbeat reply.
    heartbeat_interval_ms: int = 5_000
    #: Characters of a group id and of a consumer id.
    max_group_id_length: int = 255
    max_consumer_id_length: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_int(f.name, getattr(self, f.name), 1, _COORD_HARD.get(f.name, 1 << 40))
        if self.min_visibility_timeout_ms > self.max_visibility_timeout_ms:
            raise InvalidConfigError(
                f"min_visibility_timeout_ms ({self.min_visibility_timeout_ms}) must not exceed "
                f"max_visibility_timeout_ms ({self.max_visibility_timeout_ms})"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise InvalidConfigError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )


_COORD_HARD: Final[dict[str, int]] = {
    "max_groups": 1_000_000,
    "max_consumers_per_group": 100_000,
    "max_topics_per_group": 10_000,
    "max_share_partitions": 10_000_000,
    "max_delayed_records": 10_000_000,
    "max_delayed_records_total": 100_000_000,
    "max_fetch_records": 1_000_000,
    "max_ack_ranges": 1_000_000,
    "max_error_text_bytes": 1 << 20,
    "min_visibility_timeout_ms": 12 * _HOUR_MS,
    "max_visibility_timeout_ms": 12 * _HOUR_MS,
    "max_release_delay_ms": 3650 * _DAY_MS,
    "session_timeout_ms": _HOUR_MS,
    "heartbeat_interval_ms": _HOUR_MS,
    "max_group_id_length": 4096,
    "max_consumer_id_length": 4096,
}


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidConfigError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
