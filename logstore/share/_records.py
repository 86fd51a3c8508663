"""The share coordinator's records: what it appends to ``__share_group_state``.

Every durable change of share-group state is one of these records; replaying
them in log order rebuilds it (``ShareCoordinator.load``). The topic is
compacted (latest record per key wins, ``None`` value = tombstone), so each
key names exactly the piece of state its value replaces:

* group, type 0: key ``[0, group]``; value: the group's config. Its tombstone
  deletes the group (written last, after the tombstones of its other keys).
* share-partition state, type 1: key ``[1, group, topic, partition]``; value:
  a whole snapshot of the mutable state of the window ``[spso, speo)``: per
  offset its state, delivery count, holder, lock deadline or not-before time,
  first and last delivery time, last error, dead-letter reason, run-length
  encoded; plus the cumulative accepted / dead-lettered counts. One record per
  change of the partition, so compaction keeps exactly one per partition.
* window chunk, type 2: key ``[2, group, topic, partition, first_offset]``;
  value: the immutable per-record facts read from the log when offsets
  ``[first_offset, end_offset)`` entered the window (present or gap,
  timestamp, deliver-at time, key hash), run-length encoded. Written once,
  tombstoned once the start offset passes ``end_offset``; so the log holds at
  most ``max_inflight_records`` offsets of chunks per partition after
  compaction, and timestamps are not rewritten with every state snapshot.
* redrive position, type 3: key ``[3, group]``; value: the next offset of the
  group's dead-letter topic (partition 0) that RedriveDeadLetters has not
  moved back, and, while a redrive is under way, its intent: the end of the
  range being moved, the ``to_topic`` asked for and each target partition's
  log end offset before the first append (the broker checks those tails for
  the ``logstore-redrive-from`` header after a crash, so a redrive is exactly
  once). ``intent_end`` -1: no redrive under way.
* parked chunk, type 4: key ``[4, group, topic, partition, first_offset]``;
  value: up to ``PARKED_CHUNK_RECORDS`` (512) *parked* records -- unfinished
  records below the window (delayed ones the window start moved past, see
  ``_partition``) -- each with its offset and all of its state and facts
  (state, delivery count, holder, lock deadline or due time, first/last
  delivery, error, dead-letter reason, timestamp, key hash), with its own
  holder and error tables. A chunk is written when records are parked (key:
  the offset of its first record), rewritten when one of its records
  changes, tombstoned when all have finished; it never gains records. So a
  change rewrites only the chunks it touched (at most ~60 KB each), and
  compaction keeps one record per live chunk.

Encoding, format version 1 (``SHARE_RECORD_VERSION``): UTF-8 JSON, sorted
keys, no whitespace, so equal records are equal bytes. Every value carries
``"v": 1``; a decoder refuses a newer version (and anything that is not a
record) with :class:`~logstore.errors.CorruptRecordError` instead of guessing.
A run-length column is ``[[length, ...], [value, ...]]``. Example state value
(10 offsets: 4 accepted, 6 acquired by ``c1`` once)::

    {"accepted":4,"dead_lettered":0,"errors":[],"holders":["c1"],
     "runs":{"count":[0,1],"dl":[0,0],"error":[-1,-1],"first":[0,5],
             "holder":[-1,0],"last":[0,5],"len":[4,6],"state":[2,1],
             "until":[0,30005]},"spso":100,"speo":110,"v":1}

In memory a value holds the dense numpy columns (read-only), so replaying a
record a handler just made costs no decoding; :func:`encode` run-length
encodes them (O(window) numpy + O(runs) Python) and :func:`decode` expands
them with ``np.repeat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from logstore._json_records import check_version, decode_json, json_int, key_type
from logstore._json_records import dumps as _dumps
from logstore.errors import CorruptRecordError
from logstore.share._config import ShareGroupConfig

SHARE_RECORD_VERSION: Final = 1
#: The format's name in CorruptRecordError messages.
_WHAT: Final = "share-group"
#: The internal compacted topic the broker writes these records to.
SHARE_STATE_TOPIC: Final = "__share_group_state"

I8: TypeAlias = npt.NDArray[np.int64]
I4: TypeAlias = npt.NDArray[np.int32]
U1: TypeAlias = npt.NDArray[np.uint8]
U8: TypeAlias = npt.NDArray[np.uint64]
B1: TypeAlias = npt.NDArray[np.bool_]


class ShareRecordType(IntEnum):
    """Element 0 of every key."""

    GROUP = 0
    PARTITION_STATE = 1
    WINDOW_CHUNK = 2
    REDRIVE = 3
    PARKED_CHUNK = 4


#: Most records in one parked chunk (bounds a chunk record: ~60 KB of JSON at
#: worst, ~120 B a record with every column distinct).
PARKED_CHUNK_RECORDS: Final = 512


@dataclass(frozen=True)
class ShareGroupKey:
    """Key of a share group's config; its tombstone deletes the group."""

    group_id: str


@dataclass(frozen=True)
class ShareStateKey:
    """Key of one share partition's state snapshot."""

    group_id: str
    topic: str
    partition: int


@dataclass(frozen=True)
class ShareChunkKey:
    """Key of one chunk of the window's per-record facts."""

    group_id: str
    topic: str
    partition: int
    first_offset: int


@dataclass(frozen=True)
class ShareParkedKey:
    """Key of one chunk of a share partition's parked records."""

    group_id: str
    topic: str
    partition: int
    first_offset: int


@dataclass(frozen=True)
class ShareGroupValue:
    """A share group's config."""

    config: ShareGroupConfig


@dataclass(frozen=True, eq=False)
class ShareStateValue:
    """Mutable state of the window ``[spso, spso + len(state))`` as dense,
    read-only columns (index i is offset ``spso + i``); see ``_partition`` for
    the meaning of each column. ``spso`` is the *window start* (the field
    keeps its record-format name): the share partition's start offset is the
    lower of it and its lowest parked record (``SharePartition.spso``)."""

    spso: int
    state: U1
    count: U1
    holder: I4
    until: I8
    first_ms: I8
    last_ms: I8
    error: I4
    dl_reason: U1
    holders: tuple[str, ...]
    errors: tuple[str, ...]
    accepted_total: int
    dead_lettered_total: int

    @property
    def speo(self) -> int:
        """Share-partition end offset (exclusive)."""
        return self.spso + len(self.state)

    @property
    def window_start(self) -> int:
        """Start of the dense window (the ``spso`` field)."""
        return self.spso

    def columns(self) -> tuple[npt.NDArray[Any], ...]:
        """The per-offset columns, in a fixed order."""
        return (
            self.state,
            self.count,
            self.holder,
            self.until,
            self.first_ms,
            self.last_ms,
            self.error,
            self.dl_reason,
        )

    def __post_init__(self) -> None:
        n = len(self.state)
        assert all(len(c) == n for c in self.columns()), "ragged share state columns"
        for c in self.columns():
            c.flags.writeable = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShareStateValue):
            return NotImplemented
        return (
            self.spso,
            self.holders,
            self.errors,
            self.accepted_total,
            self.dead_lettered_total,
        ) == (
            other.spso,
            other.holders,
            other.errors,
            other.accepted_total,
            other.dead_lettered_total,
        ) and all(
            np.array_equal(a, b) for a, b in zip(self.columns(), other.columns(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class ShareChunkValue:
    """Facts of offsets ``[first_offset, first_offset + len(gap))`` read from
    the log: ``gap`` (no record at that offset: compacted away or a format-2
    batch's hole), ``ts`` (record timestamp, ms), ``deliver_at`` (ms, 0 =
    none), ``key_hash`` (0 = no key)."""

    gap: B1
    ts: I8
    deliver_at: I8
    key_hash: U8

    def columns(self) -> tuple[npt.NDArray[Any], ...]:
        """The per-offset columns, in a fixed order."""
        return (self.gap, self.ts, self.deliver_at, self.key_hash)

    def __post_init__(self) -> None:
        n = len(self.gap)
        assert n > 0 and all(len(c) == n for c in self.columns()), "bad chunk columns"
        for c in self.columns():
            c.flags.writeable = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShareChunkValue):
            return NotImplemented
        return all(
            np.array_equal(a, b) for a, b in zip(self.columns(), other.columns(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ShareRedriveKey:
    """Key of a share group's dead-letter redrive position."""

    group_id: str


@dataclass(frozen=True)
class ShareRedriveValue:
    """The redrive position and the intent of a redrive under way (module
    docstring); ``targets`` are ``(topic, partition, log end offset before
    the redrive appended)``, sorted."""

    position: int
    intent_end: int = -1
    to_topic: str = ""
    targets: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, eq=False)
class ShareParkedValue:
    """Parked records of one chunk as read-only columns (index i is the
    record at offset ``off[i]``, strictly increasing; at most
    ``PARKED_CHUNK_RECORDS``): the state columns of ``ShareStateValue`` plus
    ``ts`` and ``key_hash``; ``holder`` and ``error`` index this chunk's own
    ``holders`` and ``errors``."""

    off: I8
    state: U1
    count: U1
    holder: I4
    until: I8
    first_ms: I8
    last_ms: I8
    error: I4
    dl_reason: U1
    ts: I8
    key_hash: U8
    holders: tuple[str, ...]
    errors: tuple[str, ...]

    def columns(self) -> tuple[npt.NDArray[Any], ...]:
        """The per-record columns, in a fixed order (``_PARKED_COLS``)."""
        return (
            self.off,
            self.state,
            self.count,
            self.holder,
            self.until,
            self.first_ms,
            self.last_ms,
            self.error,
            self.dl_reason,
            self.ts,
            self.key_hash,
        )

    def __post_init__(self) -> None:
        n = len(self.off)
        assert 0 < n <= PARKED_CHUNK_RECORDS, "bad parked chunk size"
        assert all(len(c) == n for c in self.columns()), "ragged parked columns"
        for c in self.columns():
            c.flags.writeable = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShareParkedValue):
            return NotImplemented
        return (self.holders, self.errors) == (other.holders, other.errors) and all(
            np.array_equal(a, b) for a, b in zip(self.columns(), other.columns(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


ShareRecordKey: TypeAlias = (
    ShareGroupKey | ShareStateKey | ShareChunkKey | ShareRedriveKey | ShareParkedKey
)
ShareRecordValue: TypeAlias = (
    ShareGroupValue | ShareStateValue | ShareChunkValue | ShareRedriveValue | ShareParkedValue
)

#: Key array lengths by type (5 for the chunks).
_KEY_LENGTHS: Final = {
    ShareRecordType.GROUP: 2,
    ShareRecordType.REDRIVE: 2,
    ShareRecordType.PARTITION_STATE: 4,
}

_VALUE_TYPES: Final[dict[type[Any], type[Any]]] = {
    ShareGroupKey: ShareGroupValue,
    ShareStateKey: ShareStateValue,
    ShareChunkKey: ShareChunkValue,
    ShareRedriveKey: ShareRedriveValue,
    ShareParkedKey: ShareParkedValue,
}


@dataclass(frozen=True)
class ShareRecord:
    """One record: ``value`` None is a tombstone of ``key``."""

    key: ShareRecordKey
    value: ShareRecordValue | None

    def __post_init__(self) -> None:
        assert self.value is None or isinstance(self.value, _VALUE_TYPES[type(self.key)]), self


# ------------------------------------------------------------------ encoding


def _run_starts(cols: tuple[npt.NDArray[Any], ...]) -> npt.NDArray[np.intp]:
    """Indices where any column changes value (0 included)."""
    n = len(cols[0])
    change = np.zeros(n, dtype=np.bool_)
    if n:
        change[0] = True
        for c in cols:
            change[1:] |= c[1:] != c[:-1]
    return np.flatnonzero(change)


def _rle(col: npt.NDArray[Any]) -> list[list[int]]:
    starts = _run_starts((col,))
    lens = np.diff(np.append(starts, len(col)))
    return [lens.tolist(), col[starts].tolist()]


def _unrle(obj: Any, dtype: type[Any], n: int) -> npt.NDArray[Any]:
    lens, vals = obj
    out = np.repeat(np.asarray(vals, dtype=dtype), np.asarray(lens, dtype=np.int64))
    if len(out) != n:
        raise CorruptRecordError(f"share record column has {len(out)} entries, expected {n}")
    return out


_STATE_COLS: Final = (
    ("state", np.uint8),
    ("count", np.uint8),
    ("holder", np.int32),
    ("until", np.int64),
    ("first", np.int64),
    ("last", np.int64),
    ("error", np.int32),
    ("dl", np.uint8),
)


_PARKED_COLS: Final = (
    ("off", np.int64),
    ("state", np.uint8),
    ("count", np.uint8),
    ("holder", np.int32),
    ("until", np.int64),
    ("first", np.int64),
    ("last", np.int64),
    ("error", np.int32),
    ("dl", np.uint8),
    ("ts", np.int64),
    ("key", np.uint64),
)


def encode_key(key: ShareRecordKey) -> bytes:
    """The key bytes: equal keys give equal bytes (compaction compares them)."""
    if isinstance(key, ShareGroupKey):
        return _dumps([ShareRecordType.GROUP, key.group_id])
    if isinstance(key, ShareRedriveKey):
        return _dumps([ShareRecordType.REDRIVE, key.group_id])
    if isinstance(key, ShareStateKey):
        return _dumps([ShareRecordType.PARTITION_STATE, key.group_id, key.topic, key.partition])
    if isinstance(key, ShareParkedKey):
        return _dumps(
            [ShareRecordType.PARKED_CHUNK, key.group_id, key.topic, key.partition, key.first_offset]
        )
    return _dumps(
        [ShareRecordType.WINDOW_CHUNK, key.group_id, key.topic, key.partition, key.first_offset]
    )


def _config_json(c: ShareGroupConfig) -> dict[str, Any]:
    return {
        "visibility_timeout_ms": c.visibility_timeout_ms,
        "max_delivery_attempts": c.max_delivery_attempts,
        "max_inflight_records": c.max_inflight_records,
        "dead_letter_topic": c.dead_letter_topic,
        "message_ttl_ms": c.message_ttl_ms,
        "ordering_keys": c.ordering_keys,
        "topic_priorities": dict(c.topic_priorities),
        "auto_offset_reset": c.auto_offset_reset,
        "max_queue_latency_ms": c.max_queue_latency_ms,
    }


def encode_value(value: ShareRecordValue | None) -> bytes | None:
    """The value bytes, or None for a tombstone."""
    if value is None:
        return None
    v: dict[str, Any] = {"v": SHARE_RECORD_VERSION}
    if isinstance(value, ShareGroupValue):
        v["config"] = _config_json(value.config)
    elif isinstance(value, ShareRedriveValue):
        v |= {
            "position": value.position,
            "intent_end": value.intent_end,
            "to_topic": value.to_topic,
            "targets": [list(t) for t in value.targets],
        }
    elif isinstance(value, ShareStateValue):
        cols = value.columns()
        starts = _run_starts(cols)
        runs: dict[str, Any] = {"len": np.diff(np.append(starts, len(value.state))).tolist()}
        for (name, _), col in zip(_STATE_COLS, cols, strict=True):
            runs[name] = col[starts].tolist()
        v |= {
            "spso": value.spso,
            "speo": value.speo,
            "runs": runs,
            "holders": list(value.holders),
            "errors": list(value.errors),
            "accepted": value.accepted_total,
            "dead_lettered": value.dead_lettered_total,
        }
    elif isinstance(value, ShareParkedValue):
        cols = value.columns()
        # offsets as first + run-length deltas (consecutive offsets: one run)
        v |= {
            "n": len(value.off),
            "holders": list(value.holders),
            "errors": list(value.errors),
        }
        for (name, _), col in zip(_PARKED_COLS, cols, strict=True):
            if name == "off":
                v["off0"] = int(col[0])
                v["off"] = _rle(np.diff(col))
            else:
                v[name] = _rle(col)
    else:
        v |= {
            "n": len(value.gap),
            "gap": _rle(value.gap.astype(np.uint8)),
            "ts": _rle(value.ts),
            "deliver_at": _rle(value.deliver_at),
            "key": _rle(value.key_hash),
        }
    return _dumps(v)


def encode(record: ShareRecord) -> tuple[bytes, bytes | None]:
    """(key bytes, value bytes or None) as appended to ``__share_group_state``."""
    return encode_key(record.key), encode_value(record.value)


def decode(key: bytes, value: bytes | None) -> ShareRecord:
    """The record stored as ``key``/``value``; CorruptRecordError if they are not one."""
    return decode_json(key, value, _WHAT, _decode)


def _int(x: Any) -> int:
    return json_int(x, _WHAT)


def _decode(k: Any, v: Any) -> ShareRecord:
    kind = key_type(k, ShareRecordType, _KEY_LENGTHS, 5, _WHAT)
    rkey: ShareRecordKey
    if kind is ShareRecordType.GROUP:
        rkey = ShareGroupKey(k[1])
    elif kind is ShareRecordType.REDRIVE:
        rkey = ShareRedriveKey(k[1])
    elif kind is ShareRecordType.PARTITION_STATE:
        rkey = ShareStateKey(k[1], k[2], _int(k[3]))
    elif kind is ShareRecordType.PARKED_CHUNK:
        rkey = ShareParkedKey(k[1], k[2], _int(k[3]), _int(k[4]))
    else:
        rkey = ShareChunkKey(k[1], k[2], _int(k[3]), _int(k[4]))
    if v is None:
        return ShareRecord(rkey, None)
    v = check_version(v, SHARE_RECORD_VERSION, _WHAT)
    value: ShareRecordValue
    if kind is ShareRecordType.GROUP:
        c = v["config"]
        value = ShareGroupValue(
            ShareGroupConfig(
                visibility_timeout_ms=_int(c["visibility_timeout_ms"]),
                max_delivery_attempts=_int(c["max_delivery_attempts"]),
                max_inflight_records=_int(c["max_inflight_records"]),
                dead_letter_topic=c["dead_letter_topic"],
                message_ttl_ms=c["message_ttl_ms"],
                ordering_keys=c["ordering_keys"],
                topic_priorities={str(t): _int(p) for t, p in c["topic_priorities"].items()},
                auto_offset_reset=c["auto_offset_reset"],
                # absent in records written before back pressure existed
                max_queue_latency_ms=c.get("max_queue_latency_ms"),
            )
        )
    elif kind is ShareRecordType.REDRIVE:
        value = ShareRedriveValue(
            position=_int(v["position"]),
            intent_end=_int(v["intent_end"]),
            to_topic=str(v["to_topic"]),
            targets=tuple((str(t), _int(p), _int(o)) for t, p, o in v["targets"]),
        )
    elif kind is ShareRecordType.PARTITION_STATE:
        spso, speo = _int(v["spso"]), _int(v["speo"])
        n = speo - spso
        if n < 0:
            raise CorruptRecordError(f"share-group state has speo {speo} < spso {spso}")
        runs = v["runs"]
        lens = runs["len"]
        cols = {name: _unrle([lens, runs[name]], dt, n) for name, dt in _STATE_COLS}
        value = ShareStateValue(
            spso=spso,
            state=cols["state"],
            count=cols["count"],
            holder=cols["holder"],
            until=cols["until"],
            first_ms=cols["first"],
            last_ms=cols["last"],
            error=cols["error"],
            dl_reason=cols["dl"],
            holders=tuple(str(h) for h in v["holders"]),
            errors=tuple(str(e) for e in v["errors"]),
            accepted_total=_int(v["accepted"]),
            dead_lettered_total=_int(v["dead_lettered"]),
        )
        if len(value.holders) <= int(value.holder.max(initial=-1)) or len(value.errors) <= int(
            value.error.max(initial=-1)
        ):
            raise CorruptRecordError("share-group state refers past its holder or error table")
    elif kind is ShareRecordType.PARKED_CHUNK:
        n = _int(v["n"])
        if not 0 < n <= PARKED_CHUNK_RECORDS:
            raise CorruptRecordError(f"share-group parked chunk of {n} records")
        cols = {name: _unrle(v[name], dt, n) for name, dt in _PARKED_COLS[1:]}
        deltas = _unrle(v["off"], np.int64, n - 1)
        if bool((deltas <= 0).any()):
            raise CorruptRecordError("share-group parked chunk offsets do not increase")
        off = _int(v["off0"]) + np.concatenate(([0], np.cumsum(deltas))).astype(np.int64)
        value = ShareParkedValue(
            off=off,
            state=cols["state"],
            count=cols["count"],
            holder=cols["holder"],
            until=cols["until"],
            first_ms=cols["first"],
            last_ms=cols["last"],
            error=cols["error"],
            dl_reason=cols["dl"],
            ts=cols["ts"],
            key_hash=cols["key"],
            holders=tuple(str(h) for h in v["holders"]),
            errors=tuple(str(e) for e in v["errors"]),
        )
        if len(value.holders) <= int(value.holder.max(initial=-1)) or len(value.errors) <= int(
            value.error.max(initial=-1)
        ):
            raise CorruptRecordError("share-group parked chunk refers past its tables")
    else:
        n = _int(v["n"])
        if n <= 0:
            raise CorruptRecordError(f"share-group window chunk of {n} offsets")
        value = ShareChunkValue(
            gap=_unrle(v["gap"], np.uint8, n).astype(np.bool_),
            ts=_unrle(v["ts"], np.int64, n),
            deliver_at=_unrle(v["deliver_at"], np.int64, n),
            key_hash=_unrle(v["key"], np.uint64, n),
        )
    return ShareRecord(rkey, value)
