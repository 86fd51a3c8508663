"""Decoding stored frames: FetchResponse walking, CRC checks, columns and Records.

Shared by the client (a Fetch reply arrives as raw bytes) and the embedded
store (``Store.read`` / ``Store.read_columns`` decode the frames they read
from a segment): a run of stored frames is itself a serialized
``FetchResponse``. Field 1 holds the frames exactly as stored (layout in
:mod:`logstore.wire._frame`: tag, 5-byte length, fixed header, records), field
2 the high watermark, field 3 the log start offset. :func:`parse_fetch` walks
it with O(1) Python work per frame, checking each frame's CRC32C and that
offsets increase (each frame's base offset >= the previous frame's
``next_offset``; gaps are legal: a compacted log has them).

:func:`decode_columns` turns the records of those frames into a
:class:`ColumnBatch` with no per-record Python object in the result. Finding
record boundaries is inherently sequential (each record's length says where
the next starts); when every record of a frame has the same encoded size (the
common case of fixed-size values) the boundaries are checked with numpy in one
step, otherwise one tight Python loop per record reads just the length
varint. Everything after that (key/value/timestamp fields, null masks, the
Arrow-style value and key buffers) is vectorized over the whole fetch. Records
that are not laid out as protobuf serializers lay them out (fields in number
order, no unknown fields) are decoded with upb instead: correct, slower.
Format-2 frames (records with offset deltas, written only by log compaction;
see :mod:`logstore.wire._frame`) also take the upb path (~0.8 us a record
against ~0.1 us): any fetch that contains one is decoded with upb.

:func:`decode_objects` gives the same records as :class:`logstore.wire.Record`.
Records stored with timestamp 0 get their batch's base timestamp; records
below ``start_offset`` (the first batch may begin earlier, and an offset that a
gap removed is served from the next record) are skipped.

:meth:`ColumnBatch.to_arrow` (:func:`columns_to_arrow`) hands the columns to
pyarrow (the optional ``analytics`` extra) without copying the offsets,
timestamps, keys or values; its docstring says which parts are copied and why.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from logstore.errors import CorruptRecordError
from logstore.v1 import records_pb2

from ._compression import decompress, decompress_frame_parts
from ._frame import (
    ATTR_CODEC_MASK,
    FRAME_TAG,
    I32_BYTES,
    I64_BYTES,
    MAX_VARINT_SHIFT,
    PREFIX_SIZE,
    RECORD_TAG,
    TAG_TYPE_BITS,
    TAG_TYPE_MASK,
    WIRE_I32,
    WIRE_I64,
    WIRE_LEN,
    WIRE_VARINT,
    FrameHeader,
    check_crc,
    decode_header,
)
from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT, Record, decode_records

if TYPE_CHECKING:
    import pyarrow as pa

_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]
_B = npt.NDArray[np.bool_]

# Record's field keys (records.proto): field number << 3 | wire type.
_KEY_TAG: Final = 0x0A
_VALUE_TAG: Final = 0x12
_TS_TAG: Final = 0x18
_HEADER_TAG: Final = 0x22
_DELTA_TAG: Final = 0x28  # offset_delta = 5, varint (format 2 only)
_U32_MAX: Final = (1 << 32) - 1
#: Longest varint of a length (< 2**32: 5 x 7 bits) and of a 64-bit value.
_MAX_LENGTH_VARINT: Final = 5
_MAX_VARINT64: Final = 10
#: FetchResponse (and SubscribeResponse) scalar fields (logstore.proto).
_FIELD_HIGH_WATERMARK: Final = 2
_FIELD_LOG_START_OFFSET: Final = 3
#: A record under 128 bytes: its 1-byte tag and 1-byte length varint.
_SHORT_RECORD_PREFIX: Final = 2
_U64_RANGE: Final = 1 << 64
_I64_MIN_AS_U64: Final = 1 << 63


class FetchedFrames(NamedTuple):
    """A parsed FetchResponse: frames as (position in ``buf``, header)."""

    buf: bytes
    frames: list[tuple[int, FrameHeader]]
    high_watermark: int
    log_start_offset: int


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > MAX_VARINT_SHIFT:
            raise CorruptRecordError(f"truncated varint at byte {pos} of a fetch reply")
        b = buf[pos]
        pos += 1
        result |= (b & VARINT_BITS) << shift
        if b < VARINT_MORE:
            return result, pos
        shift += VARINT_SHIFT


def _signed64(v: int) -> int:
    return v - _U64_RANGE if v >= _I64_MIN_AS_U64 else v


def stored_frames(data: bytes) -> FetchedFrames:
    """Index a run of stored frames that the storage engine has already checked.

    ``data`` is what ``read_frames`` returns: whole frames, each CRC-checked
    and in offset order. Only the headers are decoded (O(1) Python work per
    frame); offsets may have gaps between frames (a compacted log).
    """
    frames: list[tuple[int, FrameHeader]] = []
    pos = 0
    n = len(data)
    while pos < n:
        h = decode_header(data, pos)
        frames.append((pos, h))
        pos += h.frame_size
    if pos != n:
        raise CorruptRecordError(f"the last stored frame is cut short at byte {n}")
    return FetchedFrames(data, frames, 0, 0)


def parse_fetch(buf: bytes, check_crcs: bool = True, decompress: bool = True) -> FetchedFrames:
    """Walk a serialized FetchResponse (or SubscribeResponse).

    With ``decompress`` (the default) compressed frames are decompressed
    once here (:func:`readable_frames`), after their CRC is checked, so a
    consumer decoding the reply in several polls pays for it once; a reply
    without compressed frames is returned as it is.
    """
    frames: list[tuple[int, FrameHeader]] = []
    hwm = lso = 0
    pos = 0
    n = len(buf)
    mv = memoryview(buf)
    expect = -1
    while pos < n:
        tag = buf[pos]
        if tag == FRAME_TAG:
            h = decode_header(buf, pos)
            end = pos + h.frame_size
            if end > n:
                raise CorruptRecordError(
                    f"batch at offset {h.base_offset} is cut short in the fetch reply"
                )
            if check_crcs:
                check_crc(mv[pos:end], h)
            if h.base_offset < expect:
                raise CorruptRecordError(
                    f"batch at offset {h.base_offset} overlaps the previous batch "
                    f"(which ends before offset {expect})"
                )
            expect = h.next_offset
            frames.append((pos, h))
            pos = end
            continue
        key, pos = _varint(buf, pos)
        field, wire_type = key >> TAG_TYPE_BITS, key & TAG_TYPE_MASK
        if wire_type == WIRE_VARINT:
            v, pos = _varint(buf, pos)
            if field == _FIELD_HIGH_WATERMARK:
                hwm = _signed64(v)
            elif field == _FIELD_LOG_START_OFFSET:
                lso = _signed64(v)
        elif wire_type == WIRE_I64:
            pos += I64_BYTES
        elif wire_type == WIRE_LEN:
            ln, pos = _varint(buf, pos)
            pos += ln
        elif wire_type == WIRE_I32:
            pos += I32_BYTES
        else:
            raise CorruptRecordError(f"bad wire type {wire_type} in a fetch reply")
    result = FetchedFrames(buf, frames, hwm, lso)
    return readable_frames(result) if decompress else result


def readable_frames(result: FetchedFrames) -> FetchedFrames:
    """``result`` with each compressed frame replaced by its uncompressed
    equivalent (:func:`logstore.wire.decompress_frame`: same header fields,
    codec 0, the decompressed records, at most MAX_DECOMPRESSED_BYTES each);
    ``result`` itself when no frame is compressed (one pass over the
    headers, no copy). CRCs must have been checked on the stored bytes;
    CorruptRecordError for a payload that does not decompress or inflates
    past the bound.
    """
    if not any(h.attributes & ATTR_CODEC_MASK for _, h in result.frames):
        return result
    buf = memoryview(result.buf)
    parts: list[bytes | memoryview] = []
    frames: list[tuple[int, FrameHeader]] = []
    at = 0
    for pos, h in result.frames:
        frame: bytes | memoryview = buf[pos : pos + h.frame_size]
        if h.attributes & ATTR_CODEC_MASK:
            # head and records joined once below: one copy of the records
            head, records = decompress_frame_parts(frame, h)
            h = decode_header(head)  # noqa: PLW2901 - the new frame's header
            parts += (head, records)
            at_next = at + len(head) + len(records)
        else:
            parts.append(frame)
            at_next = at + len(frame)
        frames.append((at, h))
        at = at_next
    return FetchedFrames(b"".join(parts), frames, result.high_watermark, result.log_start_offset)


class ColumnBatch:
    """Records of one partition as columns (Arrow-style buffers, numpy arrays).

    ``offsets``/``timestamps_ms``: int64, one per record. ``values`` is one
    uint8 buffer; record i's value is ``values[value_offsets[i]:value_offsets[i+1]]``
    (``value_offsets`` has n+1 int64 entries) and ``value_valid[i]`` is False
    for a null value (its range is empty). Keys likewise. ``headers`` holds
    each record's serialized headers (repeated ``Header`` field 4, for
    :meth:`headers_of`), most often all empty. :meth:`to_arrow` gives the
    same columns as a ``pyarrow.RecordBatch`` (the ``analytics`` extra).
    """

    __slots__ = (
        "header_offsets",
        "headers",
        "key_offsets",
        "key_valid",
        "keys",
        "offsets",
        "partition",
        "timestamps_ms",
        "topic",
        "value_offsets",
        "value_valid",
        "values",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offsets: _I64,
        timestamps_ms: _I64,
        keys: _U8,
        key_offsets: _I64,
        key_valid: _B,
        values: _U8,
        value_offsets: _I64,
        value_valid: _B,
        headers: _U8,
        header_offsets: _I64,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.timestamps_ms = timestamps_ms
        self.keys = keys
        self.key_offsets = key_offsets
        self.key_valid = key_valid
        self.values = values
        self.value_offsets = value_offsets
        self.value_valid = value_valid
        self.headers = headers
        self.header_offsets = header_offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        first = int(self.offsets[0]) if len(self) else None
        return f"ColumnBatch({self.topic}-{self.partition}, {len(self)} records from {first})"

    def value(self, i: int) -> bytes | None:
        if not self.value_valid[i]:
            return None
        return self.values[self.value_offsets[i] : self.value_offsets[i + 1]].tobytes()

    def key(self, i: int) -> bytes | None:
        if not self.key_valid[i]:
            return None
        return self.keys[self.key_offsets[i] : self.key_offsets[i + 1]].tobytes()

    def headers_of(self, i: int) -> list[tuple[str, bytes]]:
        raw = self.headers[self.header_offsets[i] : self.header_offsets[i + 1]].tobytes()
        if not raw:
            return []
        rec = records_pb2.Record.FromString(raw)
        return [(h.key, h.value) for h in rec.headers]

    def to_records(self) -> list[Record]:
        """The same records as objects, one field at a time (the reference view)."""
        return [
            Record(
                self.value(i),
                self.key(i),
                self.headers_of(i),
                int(self.timestamps_ms[i]),
                int(self.offsets[i]),
            )
            for i in range(len(self))
        ]

    def to_arrow(self) -> pa.RecordBatch:
        """These records as a ``pyarrow.RecordBatch``; see :func:`columns_to_arrow`.

        Needs the optional ``analytics`` extra (``pip install 'logstore[analytics]'``);
        without pyarrow it raises ImportError naming that extra.
        """
        return columns_to_arrow(self)


def empty_columns(topic: str, partition: int) -> ColumnBatch:
    z = np.zeros(0, np.int64)
    zb = np.zeros(0, np.uint8)
    one = np.zeros(1, np.int64)
    nb = np.zeros(0, np.bool_)
    return ColumnBatch(topic, partition, z, z, zb, one, nb, zb, one, nb, zb, one)


class _Fallback(Exception):
    """Records not in canonical layout: decode this fetch with upb."""


#: Up to this many records ``uniform_record_count`` compares byte strings (a
#: memoryview's strided ``tobytes`` is element by element: 10,000 records
#: cost ~130 us that way against numpy's ~25).
_BYTES_COMPARE_MAX_RECORDS: Final = 1024
#: A memoryview of up to this many bytes is copied to compare its record heads
#: as bytes; a larger one is compared by numpy in place.
_COPY_TO_COMPARE_MAX_BYTES: Final = 1 << 20


def uniform_record_count(
    buf: bytes | memoryview, pos: int = 0, end: int | None = None
) -> int | None:
    """How many records ``buf[pos:end]`` holds if they all have the first one's
    encoded size, else None (the records differ in size, or this is not a
    records field). Vectorized: O(1) Python work whatever the count.

    Each start is then a record tag followed by the same length bytes, checked
    at once; that proves the chain (record k says the next starts at k + size).
    """
    shape = record_shape(buf, pos, end)
    if shape is None:
        return None
    size, head = shape
    end = len(buf) if end is None else end
    count = (end - pos) // size
    return count if same_record_heads(buf, pos, end, size, head) else None


def record_shape(
    buf: bytes | memoryview, pos: int = 0, end: int | None = None
) -> tuple[int, int] | None:
    """``(size, head)`` of the first record of ``buf[pos:end]``: its encoded
    size and the bytes of its tag and length, when the bytes could be records
    of that size (a record tag first, a whole number of them); else None."""
    end = len(buf) if end is None else end
    if pos >= end or buf[pos] != RECORD_TAG:
        return None
    try:
        body_len, p = _varint(buf, pos + 1)
    except CorruptRecordError:
        return None
    size = p - pos + body_len
    if (end - pos) % size:
        return None
    return size, p - pos


def same_record_heads(buf: bytes | memoryview, pos: int, end: int, size: int, head: int) -> bool:
    """Whether the ``(end - pos) // size`` records of ``size`` bytes from
    ``pos`` all begin with the first one's ``head`` bytes."""
    return same_record_bytes(buf, pos, end, size, range(head))


def same_record_bytes(
    buf: bytes | memoryview, pos: int, end: int, size: int, columns: Sequence[int]
) -> bool:
    """Whether the ``(end - pos) // size`` records of ``size`` bytes from
    ``pos`` all have the first one's byte at each of ``columns`` (offsets in
    a record): one strided compare per column, in C."""
    count = (end - pos) // size
    if count <= _BYTES_COMPARE_MAX_RECORDS and (
        isinstance(buf, bytes) or end - pos <= _COPY_TO_COMPARE_MAX_BYTES
    ):
        # A strided slice of the bytes compared with the byte repeated: two C
        # calls per column, where numpy's four cost ~5 us a batch of 200.
        # A memoryview's strided slice is element by element (~1.6 us a column
        # for 200 records), so a small one is copied first (~1 us for W5's
        # 20 KiB batch; 4 columns then cost 1.8 us in all, not 6.6).
        data = buf if isinstance(buf, bytes) else buf[pos:end].tobytes()
        at = pos if data is buf else 0
        stop = at + count * size
        return all(data[at + k : stop : size] == bytes((data[at + k],)) * count for k in columns)
    arr = np.frombuffer(buf, np.uint8, end - pos, pos)
    # One strided compare per column (2-3 of them below 16 KiB records):
    # ~10 us each for 10,000 records, where one 2-D compare of the heads cost
    # 60-110 us.
    return all((arr[k::size] == arr[k]).all() for k in columns)


def _record_starts(buf: bytes, arr: _U8, pos: int, end: int, count: int) -> _I64:
    """Positions of the ``count`` record tags in ``buf[pos:end]``."""
    if pos >= end or buf[pos] != RECORD_TAG:
        raise _Fallback
    if uniform_record_count(buf, pos, end) == count:
        return np.arange(pos, end, (end - pos) // count, dtype=np.int64)
    out = [0] * count
    i = 0
    while pos < end:
        if i >= count or buf[pos] != RECORD_TAG:
            raise _Fallback
        out[i] = pos
        i += 1
        b = buf[pos + 1]
        if b < VARINT_MORE:
            pos += _SHORT_RECORD_PREFIX + b
        else:
            body_len, p = _varint(buf, pos + 1)
            pos = p + body_len
    if pos != end or i != count:
        raise CorruptRecordError(f"batch records do not match its record count {count} (found {i})")
    return np.asarray(out, dtype=np.int64)


def _varints_at(arr: _U8, pos: _I64, max_len: int, where: _B | None = None) -> tuple[_I64, _I64]:
    """Decode a varint at each position (vectorized): (values as int64 bits, lengths).

    Positions outside ``where`` are not read as varints (their result is junk).
    """
    last = len(arr) - 1
    b = arr[np.minimum(pos, last)].astype(np.uint64)
    value = b & np.uint64(VARINT_BITS)
    length = np.ones(len(pos), np.int64)
    cont = b >= VARINT_MORE
    if where is not None:
        cont &= where
    k = 1
    while cont.any():
        if k >= max_len:
            raise _Fallback
        b = arr[np.minimum(pos + k, last)].astype(np.uint64)
        value |= np.where(
            cont, (b & np.uint64(VARINT_BITS)) << np.uint64(VARINT_SHIFT * k), np.uint64(0)
        )
        length += cont
        cont &= b >= VARINT_MORE
        k += 1
    return value.view(np.int64), length


#: Gathering a column frame by frame costs ~10 us of numpy calls a frame; the
#: one-pass byte mask costs ~2.5 ns a byte of the fetch. Frame by frame wins
#: while frames average more than ~4 KiB (a 1 MiB batch: 10 us against 2.6 ms).
_MIN_BYTES_PER_FRAME_GATHER: Final = 4096


def _gather_run(arr: _U8, start: _I64, stop: _I64, out: _U8) -> None:
    """Copy arr[start[i]:stop[i]] for all i, back to back, into ``out``."""
    lens = stop - start
    width = int(lens[0])
    stride = np.diff(start)
    if width and (lens == width).all() and (len(stride) == 0 or (stride == stride[0]).all()):
        step = int(stride[0]) if len(stride) else width
        if step >= width:
            # Fixed-width fields at a fixed stride (fixed-size values): each one
            # an opaque `width`-byte item, so the copy is one memcpy a field
            # (measured 31 us per MiB of 100-B values), not a byte-by-byte 2-D
            # loop (72 us).
            items = np.ndarray(
                (len(lens),), np.dtype((np.void, width)), arr, int(start[0]), (step,)
            )
            out.view(np.dtype((np.void, width)))[:] = items
            return
    lo, hi = int(start[0]), int(stop[-1])
    out[:] = arr[lo:hi][_inside(start - lo, stop - lo, hi - lo)]


def _inside(start: _I64, stop: _I64, size: int) -> _B:
    """A mask of the bytes in [start[i], stop[i]) (disjoint, increasing ranges)."""
    # +1 at each start, -1 at each stop, then a running sum
    mark = np.zeros(size + 1, np.int8)
    nz = stop > start
    mark[start[nz]] += 1
    mark[stop[nz]] -= 1
    return np.cumsum(mark[:-1], dtype=np.int8).view(np.bool_)


def _gather(arr: _U8, start: _I64, stop: _I64, bounds: list[int]) -> tuple[_U8, _I64]:
    """Concatenate arr[start[i]:stop[i]] for all i; (buffer, n+1 offsets).

    ``bounds`` are the indices where each frame's records begin (and n): a
    column is uniform within a frame far more often than across frames (their
    headers sit between them), so large frames are copied one by one.
    """
    lens = stop - start
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, np.uint8), offsets
    span = int(stop[-1]) - int(start[0])
    if span < _MIN_BYTES_PER_FRAME_GATHER * (len(bounds) - 1):
        lo = int(start[0])
        return arr[lo : int(stop[-1])][_inside(start - lo, stop - lo, span)], offsets
    out = np.empty(total, np.uint8)
    for a, b in pairwise(bounds):
        lo, hi = int(offsets[a]), int(offsets[b])
        if hi > lo:
            _gather_run(arr, start[a:b], stop[a:b], out[lo:hi])
    return out, offsets


def decode_columns(
    topic: str,
    partition: int,
    result: FetchedFrames,
    start_offset: int,
    max_records: int | None = None,
) -> ColumnBatch:
    """Records of ``result``'s frames at or after ``start_offset``, as columns
    (compressed frames decompressed, see :func:`readable_frames`)."""
    result = readable_frames(result)
    frames = frames_from(result, start_offset, max_records)
    if not frames:
        return empty_columns(topic, partition)
    try:
        if any(h.has_offset_deltas for _, h in frames):
            raise _Fallback
        cols = _decode_fast(topic, partition, result.buf, frames)
    except _Fallback:
        cols = _decode_upb(topic, partition, result.buf, frames)
    n = len(cols)
    # The first record at or after start_offset (offsets increase; the one
    # asked for may be in a gap).
    lo = int(np.searchsorted(cols.offsets, start_offset)) if n else 0
    hi = n if max_records is None else min(n, lo + max_records)
    if lo == 0 and hi == n:
        return cols
    return _slice(cols, lo, hi)


def frames_from(
    result: FetchedFrames, start_offset: int, max_records: int | None
) -> list[tuple[int, FrameHeader]]:
    """The frames that may hold the first ``max_records`` records at or after
    ``start_offset`` (O(1) Python work per frame)."""
    frames = [(p, h) for p, h in result.frames if h.next_offset > start_offset]
    if max_records is not None:
        kept = []
        budget = max_records
        for p, h in frames:
            if budget <= 0:
                break
            kept.append((p, h))
            budget -= _records_at_least(h, start_offset)
        frames = kept
    return frames


def _records_at_least(h: FrameHeader, start_offset: int) -> int:
    """How many of frame ``h``'s records are surely at or after ``start_offset``
    (exact in format 1; in format 2 all of them when the frame starts there,
    else none is certain)."""
    if h.base_offset >= start_offset:
        return h.record_count
    if h.has_offset_deltas:
        return 0
    return h.next_offset - start_offset


def _slice(c: ColumnBatch, lo: int, hi: int) -> ColumnBatch:
    def cut(buf: _U8, offs: _I64) -> tuple[_U8, _I64]:
        a, b = int(offs[lo]), int(offs[hi])
        return buf[a:b], offs[lo : hi + 1] - a

    keys, ko = cut(c.keys, c.key_offsets)
    values, vo = cut(c.values, c.value_offsets)
    headers, ho = cut(c.headers, c.header_offsets)
    return ColumnBatch(
        c.topic,
        c.partition,
        c.offsets[lo:hi],
        c.timestamps_ms[lo:hi],
        keys,
        ko,
        c.key_valid[lo:hi],
        values,
        vo,
        c.value_valid[lo:hi],
        headers,
        ho,
    )


def _check_only_headers(arr: _U8, start: _I64, rec_end: _I64) -> None:
    """Raise _Fallback unless every record's bytes from ``start`` on are header
    fields only. Everything there becomes the headers column, so a key, value
    or timestamp that a serializer wrote after a header (valid protobuf, out of
    field order) would otherwise be read as absent. Vectorized over records:
    one step per header of the record with the most (a handful), not per record.
    """
    more = start < rec_end
    p, end = start[more], rec_end[more]
    while len(p):
        if (arr[p] != _HEADER_TAG).any():
            raise _Fallback
        ln, lnl = _varints_at(arr, p + 1, _MAX_LENGTH_VARINT)
        p = p + 1 + lnl + ln
        if (p > end).any():
            raise _Fallback
        more = p < end
        p, end = p[more], end[more]


class Located(NamedTuple):
    """Where every record's fields sit in a fetch buffer (the fast path's first
    half, shared by :func:`decode_columns` and the share layer's
    :func:`logstore.wire.share_metadata`): int64 byte positions into ``arr``,
    one entry per record, nothing copied yet."""

    arr: _U8
    offsets: _I64
    timestamps: _I64
    key_valid: _B
    kstart: _I64
    kstop: _I64
    value_valid: _B
    vstart: _I64
    vstop: _I64
    #: The record's header fields are arr[hdr_start:hdr_end] (empty: none);
    #: hdr_end is rec_end but in format 2, where an offset delta may follow.
    hdr_start: _I64
    hdr_end: _I64
    rec_end: _I64
    #: Index of each frame's first record, then the record count.
    bounds: list[int]


def _headers_then_delta(arr: _U8, start: _I64, rec_end: _I64) -> tuple[_I64, _I64]:
    """Format 2's record tail: header fields from ``start``, then an optional
    ``offset_delta`` (field 5, varint) ending the record. Returns (where the
    headers end, the deltas, 0 where absent); raises _Fallback for anything
    else. Vectorized: one step per header of the record with the most."""
    hdr_end = start.copy()
    idx = np.flatnonzero(hdr_end < rec_end)
    while len(idx):
        p = hdr_end[idx]
        is_header = arr[p] == _HEADER_TAG
        idx, p = idx[is_header], p[is_header]
        if not len(idx):
            break
        ln, lnl = _varints_at(arr, p + 1, _MAX_LENGTH_VARINT)
        p = p + 1 + lnl + ln
        if (p > rec_end[idx]).any():
            raise _Fallback
        hdr_end[idx] = p
        idx = idx[p < rec_end[idx]]
    has_delta = hdr_end < rec_end
    if (arr[hdr_end[has_delta]] != _DELTA_TAG).any():
        raise _Fallback
    d, dl = _varints_at(arr, hdr_end + 1, _MAX_LENGTH_VARINT, has_delta)
    if (np.where(has_delta, hdr_end + 1 + dl, hdr_end) != rec_end).any() or (
        d[has_delta] > _U32_MAX
    ).any():
        raise _Fallback
    return hdr_end, np.where(has_delta, d, 0)


def locate_fast(
    buf: bytes, frames: list[tuple[int, FrameHeader]], *, offset_deltas: bool = False
) -> Located:
    """Field positions of the frames' records in canonical layout.

    Format-2 frames only with ``offset_deltas`` (records then carry their
    offset deltas after their headers; :func:`decode_columns` reads those
    frames with upb instead). Raises ``_Fallback`` for records this path does
    not read (callers then use upb), CorruptRecordError for records that do
    not match their frame.
    """
    assert offset_deltas or not any(h.has_offset_deltas for _, h in frames)
    if any(h.attributes & ATTR_CODEC_MASK for _, h in frames):
        raise _Fallback  # compressed: _decode_upb decompresses (readers inflate first)
    arr = np.frombuffer(buf, np.uint8)
    starts_l: list[_I64] = []
    ends: list[int] = []
    counts: list[int] = []
    base_ts: list[int] = []
    base_offsets: list[int] = []
    for fpos, h in frames:
        rs = fpos + h.records_start
        re = fpos + h.frame_size
        starts_l.append(_record_starts(buf, arr, rs, re, h.record_count))
        ends.append(re)
        counts.append(h.record_count)
        base_ts.append(h.base_timestamp_ms)
        base_offsets.append(h.base_offset)
    starts = np.concatenate(starts_l) if len(starts_l) > 1 else starts_l[0]
    n = len(starts)
    counts_a = np.asarray(counts, np.int64)
    # record ends: the next start, or the frame's end for a frame's last record
    rec_end = np.empty(n, np.int64)
    rec_end[:-1] = starts[1:]
    last_idx = np.cumsum(counts_a) - 1
    rec_end[last_idx] = np.asarray(ends, np.int64)
    body_len, ll = _varints_at(arr, starts + 1, _MAX_LENGTH_VARINT)
    pos: _I64 = starts + 1 + ll
    if not np.array_equal(pos + body_len, rec_end):
        raise _Fallback

    def field(tag: int, pos: _I64) -> tuple[_B, _I64, _I64, _I64]:
        present = (pos < rec_end) & (arr[np.minimum(pos, len(arr) - 1)] == tag)
        ln, lnl = _varints_at(arr, pos + 1, _MAX_LENGTH_VARINT, present)
        ln = np.where(present, ln, 0)
        start = np.where(present, pos + 1 + lnl, pos)
        stop = start + ln
        if (stop > rec_end).any():
            raise _Fallback
        return present, start, stop, stop

    key_valid, kstart, kstop, pos = field(_KEY_TAG, pos)
    value_valid, vstart, vstop, pos = field(_VALUE_TAG, pos)
    has_ts = (pos < rec_end) & (arr[np.minimum(pos, len(arr) - 1)] == _TS_TAG)
    timestamps = np.repeat(np.asarray(base_ts, np.int64), counts_a)
    if has_ts.any():
        zz, tl = _varints_at(arr, pos + 1, _MAX_VARINT64, has_ts)
        u = zz.view(np.uint64)
        ts = (u >> np.uint64(1)).view(np.int64) ^ -(u & np.uint64(1)).view(np.int64)
        timestamps = np.where(has_ts & (ts != 0), ts, timestamps)
        pos = np.where(has_ts, pos + 1 + tl, pos)
    hdr_start = pos
    offsets = np.repeat(np.asarray(base_offsets, np.int64), counts_a)
    index = np.arange(n, dtype=np.int64) - np.repeat(last_idx + 1 - counts_a, counts_a)
    v2 = [h.has_offset_deltas for _, h in frames]
    if any(v2):
        hdr_end, delta = _headers_then_delta(arr, hdr_start, rec_end)
        is_v2 = np.repeat(np.asarray(v2, np.bool_), counts_a)
        # a format-1 record's offset_delta is to be ignored (records.proto)
        offsets += np.where(is_v2, delta, index)
        _check_deltas_at(offsets, frames, counts_a, last_idx, v2)
    else:
        hdr_end = rec_end
        _check_only_headers(arr, hdr_start, rec_end)
        offsets += index
    bounds = [0, *itertools.accumulate(counts)]
    return Located(
        arr,
        offsets,
        timestamps,
        key_valid,
        kstart,
        kstop,
        value_valid,
        vstart,
        vstop,
        hdr_start,
        hdr_end,
        rec_end,
        bounds,
    )


def _check_deltas_at(
    offsets: _I64,
    frames: list[tuple[int, FrameHeader]],
    counts: _I64,
    last_idx: _I64,
    v2: list[bool],
) -> None:
    """Raise CorruptRecordError unless each format-2 frame's record offsets
    strictly increase and end at or before its last offset (as _check_deltas)."""
    step_ok = np.ones(len(offsets), np.bool_)
    step_ok[1:] = offsets[1:] > offsets[:-1]
    step_ok[last_idx + 1 - counts] = True  # a frame's first record has no step
    last_ok = offsets[last_idx] <= np.asarray([h.last_offset for _, h in frames], np.int64)
    bad = np.flatnonzero(~np.logical_and.reduceat(step_ok, last_idx + 1 - counts))
    for i in [*bad.tolist(), *np.flatnonzero(~last_ok).tolist()]:
        if v2[i]:
            h = frames[i][1]
            raise CorruptRecordError(
                f"batch at offset {h.base_offset}: record offset deltas do not increase up to "
                f"its last offset {h.last_offset}"
            )


def _decode_fast(
    topic: str, partition: int, buf: bytes, frames: list[tuple[int, FrameHeader]]
) -> ColumnBatch:
    loc = locate_fast(buf, frames)
    arr, bounds = loc.arr, loc.bounds
    keys, key_offsets = _gather(arr, loc.kstart, loc.kstop, bounds)
    values, value_offsets = _gather(arr, loc.vstart, loc.vstop, bounds)
    headers, header_offsets = _gather(arr, loc.hdr_start, loc.hdr_end, bounds)
    return ColumnBatch(
        topic,
        partition,
        loc.offsets,
        loc.timestamps,
        keys,
        key_offsets,
        loc.key_valid,
        values,
        value_offsets,
        loc.value_valid,
        headers,
        header_offsets,
    )


def _decode_upb(
    topic: str, partition: int, buf: bytes, frames: list[tuple[int, FrameHeader]]
) -> ColumnBatch:
    """The slow, general path: upb parses, Python builds the columns.

    Also reads compressed frames (each decompressed, bounded, see
    :func:`logstore.wire.decompress`), for callers that hand raw stored frames
    to :func:`locate_fast` (the log cleaner): it raises _Fallback for them.
    """
    offs: list[int] = []
    tss: list[int] = []
    keys: list[bytes] = []
    kvalid: list[bool] = []
    values: list[bytes] = []
    vvalid: list[bool] = []
    hdrs: list[bytes] = []
    for pos, h in frames:
        msg = records_pb2.RecordBatch.FromString(buf[pos + PREFIX_SIZE : pos + h.frame_size])
        recs = msg.records
        if h.attributes & ATTR_CODEC_MASK:
            where = f"batch at offset {h.base_offset}"
            if len(recs):
                raise CorruptRecordError(f"compressed {where} also has records")
            plain = decompress(msg.compressed_records, h.attributes & ATTR_CODEC_MASK, where)
            recs = records_pb2.RecordBatch.FromString(plain).records
        if len(recs) != h.record_count:
            raise CorruptRecordError(
                f"batch at offset {h.base_offset} holds {len(recs)} records, "
                f"header says {h.record_count}"
            )
        first = len(offs)
        if h.has_offset_deltas:
            offs += [h.base_offset + r.offset_delta for r in recs]
            _check_deltas(offs[first:], h)
        else:
            offs += range(h.base_offset, h.next_offset)
        for r in recs:
            tss.append(r.timestamp_ms or h.base_timestamp_ms)
            hk = r.HasField("key")
            kvalid.append(hk)
            keys.append(r.key if hk else b"")
            hv = r.HasField("value")
            vvalid.append(hv)
            values.append(r.value if hv else b"")
            if r.headers:
                hr = records_pb2.Record()
                hr.headers.extend(r.headers)
                hdrs.append(hr.SerializeToString())
            else:
                hdrs.append(b"")

    def pack(items: list[bytes]) -> tuple[_U8, _I64]:
        o = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(x) for x in items], out=o[1:])
        return np.frombuffer(b"".join(items), np.uint8).copy(), o

    kb, ko = pack(keys)
    vb, vo = pack(values)
    hb, ho = pack(hdrs)
    return ColumnBatch(
        topic,
        partition,
        np.asarray(offs, np.int64),
        np.asarray(tss, np.int64),
        kb,
        ko,
        np.asarray(kvalid, np.bool_),
        vb,
        vo,
        np.asarray(vvalid, np.bool_),
        hb,
        ho,
    )


def _check_deltas(offsets: list[int], h: FrameHeader) -> None:
    """Raise CorruptRecordError unless a format-2 frame's record offsets
    strictly increase and end at or before its last offset."""
    if any(a >= b for a, b in pairwise(offsets)) or (offsets and offsets[-1] > h.last_offset):
        raise CorruptRecordError(
            f"batch at offset {h.base_offset}: record offset deltas do not increase up to its "
            f"last offset {h.last_offset}"
        )


def _split(buf: _U8, offsets: _I64, valid: _B) -> list[bytes | None]:
    """Per-record bytes of an Arrow-style column (None where not valid)."""
    n = len(offsets) - 1
    lo, hi = int(offsets[0]), int(offsets[-1])
    width = (hi - lo) // n if n else 0
    items: list[bytes | None]
    if width and width * n == hi - lo and (np.diff(offsets) == width).all():
        # All the same size (fixed-size values, the common case): numpy makes
        # the bytes objects in C, one per `width`-byte item (measured 43 M/s
        # against 5 M/s for slicing in a comprehension).
        items = buf[lo:hi].view(np.dtype((np.void, width))).tolist()
    else:
        raw = buf.tobytes()
        items = [raw[a:b] for a, b in pairwise(offsets.tolist())]
    if not valid.all():
        for i in np.flatnonzero(~valid).tolist():
            items[i] = None
    return items


def columns_to_records(c: ColumnBatch) -> list[Record]:
    """The records of a ColumnBatch as objects, with C-level loops where possible."""
    n = len(c)
    values = _split(c.values, c.value_offsets, c.value_valid)
    keys: list[bytes | None] | list[None] = (
        _split(c.keys, c.key_offsets, c.key_valid) if c.key_valid.any() else [None] * n
    )
    headers: list[list[tuple[str, bytes]] | None] = [None] * n
    if c.header_offsets[-1]:
        for i in np.flatnonzero(np.diff(c.header_offsets)).tolist():
            headers[i] = c.headers_of(i)
    ts = c.timestamps_ms.tolist()
    offsets = c.offsets.tolist()
    # Each Record (and its headers list) is a GC-tracked allocation; with the
    # collector on, creating ~10,000 of them per fetch triggers collections
    # that cost more than the records themselves (measured: 0.5 M/s with,
    # 1.4 M/s without). They form no cycles, so pause it while building them.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return list(map(Record, values, keys, headers, ts, offsets))
    finally:
        if paused:
            gc.enable()


#: Below this many records, decode_objects reads them from upb messages: the
#: columnar path costs ~70 us of fixed numpy calls and ~0.25 us a record, upb
#: ~0.8 us a record, so they cross near 120 (measured, 100-B values).
_COLUMNS_MIN_RECORDS: Final = 128


def decode_objects(
    result: FetchedFrames, start_offset: int, max_records: int | None = None
) -> list[Record]:
    """Records of ``result``'s frames at or after ``start_offset``, as objects.

    Built from the columns (slicing one bytes object per column is cheaper
    than reading each field of an upb message from Python), except for a few
    records (a random read, a small fetch), where upb is cheaper. Compressed
    frames are decompressed first (:func:`readable_frames`).
    """
    result = readable_frames(result)
    if any(h.has_offset_deltas for _, h in result.frames):
        return _decode_objects_upb(result, start_offset, max_records)
    wanted = 0
    for _, h in result.frames:
        wanted += max(0, h.next_offset - max(h.base_offset, start_offset))
    if max_records is not None:
        wanted = min(wanted, max_records)
    if wanted >= _COLUMNS_MIN_RECORDS:
        return columns_to_records(decode_columns("", 0, result, start_offset, max_records))
    out: list[Record] = []
    mv = memoryview(result.buf)
    for pos, h in result.frames:
        if len(out) >= wanted:
            break
        if h.next_offset <= start_offset:
            continue
        batch = mv[pos + PREFIX_SIZE : pos + h.frame_size]
        got = decode_records(batch, h.base_offset, h.base_timestamp_ms, start_offset)
        if len(got) != h.next_offset - max(h.base_offset, start_offset):
            raise CorruptRecordError(
                f"batch at offset {h.base_offset} holds a different number of records than "
                f"its header's {h.record_count}"
            )
        out += got
    return out[:wanted]


def _decode_objects_upb(
    result: FetchedFrames, start_offset: int, max_records: int | None
) -> list[Record]:
    """decode_objects of a fetch holding format-2 frames: upb, frame by frame
    (how many records are past ``start_offset`` is known only once decoded)."""
    out: list[Record] = []
    mv = memoryview(result.buf)
    for pos, h in result.frames:
        if max_records is not None and len(out) >= max_records:
            break
        if h.next_offset <= start_offset:
            continue
        batch = mv[pos + PREFIX_SIZE : pos + h.frame_size]
        out += decode_records(
            batch, h.base_offset, h.base_timestamp_ms, start_offset, h.record_count
        )
    return out if max_records is None else out[:max_records]


# ---- Arrow ----------------------------------------------------------------------------------

#: What to install when pyarrow is missing (pyproject.toml's optional extra).
ARROW_EXTRA: Final = "analytics"


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: PLC0415 - optional: only to_arrow() needs it
    except ImportError as exc:
        raise ImportError(
            "ColumnBatch.to_arrow() needs pyarrow, which is not installed: "
            f"pip install 'logstore[{ARROW_EXTRA}]'"
        ) from exc
    return pyarrow


def _arrow_buffer(pa: Any, arr: npt.NDArray[Any]) -> Any:
    """An Arrow buffer over ``arr``'s memory (no copy; it keeps ``arr`` alive)."""
    # Every column ColumnBatch builds is already C-contiguous and native
    # (little-endian on every platform logstore runs on): this returns `arr`.
    return pa.py_buffer(np.ascontiguousarray(arr))


def _validity(pa: Any, valid: _B) -> tuple[Any, int]:
    """(Arrow validity bitmap or None when nothing is null, null count)."""
    nulls = len(valid) - int(np.count_nonzero(valid))
    if nulls == 0:
        return None, 0
    # Arrow keeps one bit per value (LSB first), numpy one byte: this is a copy
    # of n/8 bytes (1,250 B for a 10,000-record fetch).
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _binary_column(pa: Any, data: _U8, offsets: _I64, valid: _B) -> Any:
    bitmap, nulls = _validity(pa, valid)
    return pa.Array.from_buffers(
        pa.large_binary(),
        len(valid),
        [bitmap, _arrow_buffer(pa, offsets), _arrow_buffer(pa, data)],
        null_count=nulls,
    )


def arrow_schema() -> pa.Schema:
    """The schema of :func:`columns_to_arrow`'s batches (needs pyarrow)."""
    pa = _pyarrow()
    header = pa.struct([pa.field("key", pa.string(), False), pa.field("value", pa.binary(), False)])
    return pa.schema(
        [
            pa.field("offset", pa.int64(), False),
            pa.field("timestamp_ms", pa.timestamp("ms", tz="UTC"), False),
            pa.field("key", pa.large_binary()),
            pa.field("value", pa.large_binary()),
            pa.field("headers", pa.list_(pa.field("item", header, False)), False),
        ]
    )


def columns_to_arrow(c: ColumnBatch) -> pa.RecordBatch:
    """``c`` as a ``pyarrow.RecordBatch`` with the columns of :func:`arrow_schema`.

    * ``offset`` int64 and ``timestamp_ms`` (``timestamp[ms, tz=UTC]``: the
      same int64 milliseconds since the epoch, typed so pandas, Polars and
      DuckDB see times): **zero-copy**, Arrow buffers over ``c.offsets`` and
      ``c.timestamps_ms``.
    * ``key`` and ``value``: ``large_binary``, whose 64-bit offsets are the
      layout of ``c.key_offsets`` / ``c.value_offsets``, so the offsets and the
      data (``c.keys`` / ``c.values``) are **zero-copy** (plain ``binary`` has
      32-bit offsets and would need a copy of them; ``.cast(pa.binary())`` makes
      one when a consumer wants it). Null keys and values are nulls; their
      validity bitmaps are the one **copy** (numpy keeps a byte per record,
      Arrow a bit), made only when a column has a null.
    * ``headers``: ``list<struct<key: string, value: binary>>``, an empty list
      for a record without headers. **Copied**: a ColumnBatch keeps each
      record's headers as serialized protobuf, which has no Arrow layout, so
      the records that have headers are parsed (upb, one per such record); a
      batch without headers costs one zeroed n+1 int32 list-offsets array.

    The batch keeps the numpy arrays alive (the Arrow buffers reference them),
    so it stays valid after ``c`` is dropped. ``topic`` and ``partition`` are
    in the schema metadata. Raises ImportError naming the ``analytics`` extra
    when pyarrow is not installed.
    """
    pa = _pyarrow()
    schema = arrow_schema()
    n = len(c)
    offset = pa.Array.from_buffers(pa.int64(), n, [None, _arrow_buffer(pa, c.offsets)])
    ts = pa.Array.from_buffers(
        schema.field("timestamp_ms").type, n, [None, _arrow_buffer(pa, c.timestamps_ms)]
    )
    key = _binary_column(pa, c.keys, c.key_offsets, c.key_valid)
    value = _binary_column(pa, c.values, c.value_offsets, c.value_valid)
    return pa.RecordBatch.from_arrays(
        [offset, ts, key, value, _headers_column(pa, c, schema.field("headers").type)],
        schema=schema.with_metadata({"topic": c.topic, "partition": str(c.partition)}),
    )


def _headers_column(pa: Any, c: ColumnBatch, typ: Any) -> Any:
    n = len(c)
    list_offsets = np.zeros(n + 1, np.int32)
    names: list[str] = []
    values: list[bytes] = []
    if c.header_offsets[-1] != c.header_offsets[0]:
        counts = np.zeros(n, np.int32)
        for i in np.flatnonzero(np.diff(c.header_offsets)).tolist():
            hs = c.headers_of(i)
            counts[i] = len(hs)
            names += [k for k, _ in hs]
            values += [v for _, v in hs]
        np.cumsum(counts, out=list_offsets[1:])
    items = pa.StructArray.from_arrays(
        [pa.array(names, pa.string()), pa.array(values, pa.binary())],
        fields=list(typ.value_type),
    )
    return pa.ListArray.from_arrays(pa.array(list_offsets, pa.int32()), items, type=typ)
