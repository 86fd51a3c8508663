"""Validated, frozen configuration: topic configs and store limits.

Canonical keys are snake_case; Kafka's dotted names are accepted as aliases
(``retention.ms``). Unknown keys and bad values raise
:class:`~logstore.errors.InvalidConfigError` naming the key and the allowed
range. Values may be given as ints or as strings (as they arrive from the CLI
and the gRPC API, where configs are ``map<string, string>``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from logstore.errors import InvalidBatchError, InvalidConfigError
from logstore.wire import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_ZSTD,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    LEVELS,
    MIN_RECORD_BYTES,
)

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
DAY_MS: Final = 24 * 3600 * 1000

#: Positions in a segment are u32, so a segment must stay below 4 GiB.
MAX_SEGMENT_BYTES: Final = (1 << 32) - 1
#: The smallest batch (max_batch_bytes counts the serialized RecordBatch: its
#: fixed header and the records) and the smallest frame (a segment holds at
#: least one; a frame larger than segment_bytes still gets a segment of its
#: own), each with one empty record. Derived from the frame format so they
#: follow it if the header grows.
MIN_BATCH_BYTES: Final = HEADER_SIZE + MIN_RECORD_BYTES
MIN_SEGMENT_BYTES: Final = FRAME_OVERHEAD + MIN_RECORD_BYTES
MAX_PARTITIONS: Final = 10_000
#: Kafka's spellings; ``delete,compact`` is the same policy as ``compact,delete``
#: and is stored as that.
CLEANUP_POLICIES: Final = ("delete", "compact", "compact,delete")
_POLICY_ALIASES: Final = {"delete,compact": "compact,delete"}
#: ``compression_type`` (Kafka's ``compression.type``): ``producer`` stores each
#: batch with the codec it was sent with; a codec makes the broker store every
#: batch with that one, recompressing (or decompressing) those sent otherwise.
COMPRESSION_TYPES: Final = ("producer", "none", "gzip", "lz4", "zstd")
_COMPRESSION_ALIASES: Final = {"uncompressed": "none"}


@dataclass(frozen=True)
class _Range:
    lo: int
    hi: int
    minus_one_ok: bool = False  # -1 means "unlimited"

    def describe(self) -> str:
        s = f"{self.lo}..{self.hi}"
        return s + " or -1 (unlimited)" if self.minus_one_ok else s


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings (DESIGN.md, "Configuration")."""

    segment_bytes: int = 1 * GiB
    segment_ms: int = 7 * DAY_MS
    retention_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    index_interval_bytes: int = 4096
    max_batch_bytes: int = 1 * MiB
    cleanup_policy: str = "delete"
    #: Compaction (``cleanup_policy`` with ``compact``): a tombstone (null
    #: value) is kept this long after the cleaner first passed it (Kafka's
    #: ``delete.retention.ms``), so a consumer that reads within it sees it.
    delete_retention_ms: int = DAY_MS
    #: A log is cleaned when its dirty bytes (not yet cleaned) are more than
    #: this share of its sealed bytes (Kafka's ``min.cleanable.dirty.ratio``).
    min_cleanable_dirty_ratio: float = 0.5
    #: Records younger than this (by timestamp) are never cleaned.
    min_compaction_lag_ms: int = 0
    #: The codec batches are stored with (COMPRESSION_TYPES): ``producer``
    #: keeps what the producer sent (no broker work); a codec costs the
    #: broker a compression of every batch sent with another (docs/architecture.md).
    compression_type: str = "producer"
    #: The levels the broker compresses with when ``compression_type`` names
    #: that codec (recompressing a batch sent otherwise), and the log cleaner
    #: when it rewrites a batch of that codec (Kafka's
    #: ``compression.<codec>.level``, KIP-390). Ranges and defaults are the
    #: codecs' (``logstore.wire.LEVELS``): zstd -7..22 (1; Kafka's is 3), gzip 1..9 (6),
    #: lz4 0..16 (0: the fast mode; 3 and up are LZ4-HC, ~10x slower).
    compression_zstd_level: int = LEVELS[CODEC_ZSTD][2]
    compression_gzip_level: int = LEVELS[CODEC_GZIP][2]
    compression_lz4_level: int = LEVELS[CODEC_LZ4][2]

    def __post_init__(self) -> None:
        # A batch larger than segment_bytes is allowed: it gets a segment of its own.
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> TopicConfig:
        """Defaults overridden by ``values`` (keys canonical or dotted aliases)."""
        return cls().with_changes(values or {})

    def with_changes(
        self, values: Mapping[str, Any], reset: tuple[str, ...] | list[str] = ()
    ) -> TopicConfig:
        """A copy with ``values`` set and the ``reset`` keys back at their defaults."""
        changes: dict[str, Any] = {}
        defaults = TopicConfig.__dataclass_fields__
        for key in reset:
            name = canonical_key(key)
            changes[name] = defaults[name].default
        for key, raw in values.items():
            name = canonical_key(key)
            changes[name] = _coerce(name, raw)
        return dataclasses.replace(self, **changes)

    def check_batch_bytes(self, batch_bytes: int, where: str) -> None:
        """InvalidBatchError if a stored batch of ``batch_bytes`` (header + records)
        is above ``max_batch_bytes``; ``where`` names the partition in the message.

        The one statement of the rule: the broker checks it before an acks=NONE
        reply, storage before an append.
        """
        if batch_bytes > self.max_batch_bytes:
            raise InvalidBatchError(
                f"{where}: batch of {batch_bytes} bytes exceeds max_batch_bytes "
                f"{self.max_batch_bytes}; send smaller batches or raise the topic's "
                "max_batch_bytes"
            )

    def to_strings(self) -> dict[str, str]:
        """Every key with its value as a string (the gRPC API's form)."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    def level_for(self, codec: int) -> int | None:
        """The topic's level for ``codec`` (None for no compression)."""
        return {
            CODEC_ZSTD: self.compression_zstd_level,
            CODEC_GZIP: self.compression_gzip_level,
            CODEC_LZ4: self.compression_lz4_level,
        }.get(codec)

    @property
    def compact(self) -> bool:
        """Whether the policy includes compaction."""
        return "compact" in self.cleanup_policy

    @property
    def delete(self) -> bool:
        """Whether the policy includes retention (time and size deletion)."""
        return "delete" in self.cleanup_policy

    def to_dict(self) -> dict[str, int | str | float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_RANGES: Final[dict[str, _Range]] = {
    "segment_bytes": _Range(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
    "segment_ms": _Range(1, 2**62),
    "retention_ms": _Range(1, 2**62, minus_one_ok=True),
    "retention_bytes": _Range(0, 2**62, minus_one_ok=True),
    "index_interval_bytes": _Range(0, 1 << 30),
    "max_batch_bytes": _Range(MIN_BATCH_BYTES, 1 << 30),
    "delete_retention_ms": _Range(0, 2**62),
    "min_compaction_lag_ms": _Range(0, 2**62),
    "compression_zstd_level": _Range(*LEVELS[CODEC_ZSTD][:2]),
    "compression_gzip_level": _Range(*LEVELS[CODEC_GZIP][:2]),
    "compression_lz4_level": _Range(*LEVELS[CODEC_LZ4][:2]),
}

#: Kafka's names for the same keys.
_ALIASES: Final = {
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "index.interval.bytes": "index_interval_bytes",
    "max.message.bytes": "max_batch_bytes",
    "max.batch.bytes": "max_batch_bytes",
    "cleanup.policy": "cleanup_policy",
    "compression.type": "compression_type",
    "compression.zstd.level": "compression_zstd_level",
    "compression.gzip.level": "compression_gzip_level",
    "compression.lz4.level": "compression_lz4_level",
    "delete.retention.ms": "delete_retention_ms",
    "min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio",
    "min.compaction.lag.ms": "min_compaction_lag_ms",
}


def canonical_key(key: str) -> str:
    """The snake_case name of a config key; InvalidConfigError if unknown."""
    name = _ALIASES.get(key, key)
    if name not in TopicConfig.__dataclass_fields__:
        known = ", ".join(sorted(TopicConfig.__dataclass_fields__))
        raise InvalidConfigError(f"unknown config key {key!r}; known keys: {known}")
    return name


def _coerce(name: str, raw: Any) -> Any:
    if name == "compression_type":
        text = str(raw).strip().lower()
        return _COMPRESSION_ALIASES.get(text, text)
    if name == "cleanup_policy":
        text = str(raw).replace(" ", "")
        return _POLICY_ALIASES.get(text, text)
    if name == "min_cleanable_dirty_ratio":
        if isinstance(raw, bool):
            raise InvalidConfigError(f"{name} must be a number in 0..1")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise InvalidConfigError(f"{name} must be a number in 0..1, not {raw!r}") from None
    if isinstance(raw, bool):
        raise InvalidConfigError(f"{name} must be an integer in {_RANGES[name].describe()}")
    if isinstance(raw, int):
        return raw
    value = parse_int(str(raw))
    if value is None:
        raise InvalidConfigError(
            f"{name} must be an integer in {_RANGES[name].describe()}, not {raw!r}"
        )
    return value


#: ASCII digits with an optional sign and "_" separators ("1_000_000"), and
#: ASCII blanks around. Python's int() also takes other scripts' digits
#: ("١٢٣" is 123) and Unicode spaces; a config value must mean the same to
#: every reader, so those are refused.
_INT_TEXT: Final = re.compile(r"[ \t]*([+-]?[0-9_]*[0-9][0-9_]*)[ \t]*", re.ASCII)


def parse_int(text: str) -> int | None:
    """The integer ``text`` spells in ASCII decimal, or None if it spells none."""
    m = _INT_TEXT.fullmatch(text)
    return None if m is None else int(m.group(1).replace("_", ""))


def _check(name: str, value: Any) -> None:
    if name == "compression_type":
        if value not in COMPRESSION_TYPES:
            raise InvalidConfigError(
                "compression_type must be one of: producer, none (or uncompressed), gzip, lz4, "
                f"zstd (snappy is not supported); got {value!r}"
            )
        return
    if name == "cleanup_policy":
        if value not in CLEANUP_POLICIES:
            raise InvalidConfigError(
                "cleanup_policy must be one of: delete, compact, compact,delete "
                f"(or delete,compact); got {value!r}"
            )
        return
    if name == "min_cleanable_dirty_ratio":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise InvalidConfigError(f"{name} must be a number in 0..1, got {value!r}")
        return
    r = _RANGES[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidConfigError(f"{name} must be an integer in {r.describe()}, not {value!r}")
    if r.minus_one_ok and value == -1:
        return
    if not r.lo <= value <= r.hi:
        raise InvalidConfigError(f"{name} must be in {r.describe()}, got {value}")


@dataclass(frozen=True)
class StoreConfig:
    """Limits of one Store (one data directory)."""

    #: Cap on open segment handles (.log descriptors) and active index maps
    #: across all partitions. Kafka keeps every segment open, which is how
    #: clusters hit vm.max_map_count and FD exhaustion; we keep an LRU.
    max_open_segments: int = 256
    #: Bytes of sealed-segment indexes kept in memory (LRU). A full 1 GiB
    #: segment at the default 4 KiB interval has 262,144 offset entries (2 MiB)
    #: and at most as many 16-byte time entries (4 MiB), so 32 MiB keeps the
    #: indexes of the ~5 most recently read full segments; a miss re-reads one
    #: small file, so this bounds memory and only costs speed when too small.
    index_cache_bytes: int = 32 * MiB
    #: How often the recovery point checkpoint may advance with flushes.
    recovery_checkpoint_interval_ms: int = 1000
    #: A partition not written for this long closes its active segment's
    #: handles and maps.
    idle_close_ms: int = 60_000
    #: Idempotent producer state.
    producer_id_expiration_ms: int = DAY_MS
    #: The recovery checkpoint writes a partition's producer snapshot (an
    #: atomic write: a file and a directory fsync) only if its producer state
    #: changed and its last snapshot is at least this old; a roll and a clean
    #: close always write one (as Kafka, which snapshots only then). A crash
    #: rebuilds the state from the newest snapshot by reading the batch heads
    #: appended after it: at most one segment's and this interval's. 0: every
    #: checkpoint (1,000 partitions under idempotent writes then cost 1,000 of
    #: each fsync and ~0.6 s of CPU every second).
    producer_snapshot_interval_ms: int = 60_000
    max_producer_ids: int = 10_000
    #: Memory of the log cleaner's key map (compacted topics; Kafka's
    #: ``log.cleaner.dedupe.buffer.size``, whose default this is): 24 bytes a
    #: key (16-byte digest + 4-byte offset delta at a 5/6 load factor), so
    #: 128 MiB maps ~5.59 million distinct keys in one pass; a dirty section
    #: with more keys is cleaned in several passes, each rewriting the log up
    #: to its end (10 million keys written twice: 4 passes, ~31 at 16 MiB). Taken
    #: only while a clean runs, and then at most 24 bytes per offset of the
    #: dirty section (a small topic's clean costs little), released after it.
    cleaner_buffer_bytes: int = 128 * MiB
    #: Bytes a second the cleaner may read plus write; 0 means unlimited
    #: (Kafka's ``log.cleaner.io.max.bytes.per.second``).
    cleaner_io_max_bytes_per_s: int = 0

    def __post_init__(self) -> None:
        if self.cleaner_buffer_bytes < 1024:
            raise InvalidConfigError("cleaner_buffer_bytes must be at least 1024")
        if self.cleaner_io_max_bytes_per_s < 0:
            raise InvalidConfigError("cleaner_io_max_bytes_per_s must be >= 0 (0: unlimited)")
        if self.max_open_segments < 4:
            raise InvalidConfigError("max_open_segments must be at least 4")
        if self.index_cache_bytes < 0:
            raise InvalidConfigError("index_cache_bytes must be >= 0")
        if self.recovery_checkpoint_interval_ms < 0:
            raise InvalidConfigError("recovery_checkpoint_interval_ms must be >= 0")
        if self.producer_snapshot_interval_ms < 0:
            raise InvalidConfigError("producer_snapshot_interval_ms must be >= 0")
        if self.max_producer_ids < 1:
            raise InvalidConfigError("max_producer_ids must be >= 1")
