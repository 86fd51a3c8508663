"""Stored frames: the byte format shared by segment files and Fetch/Subscribe replies.

A *frame* is one entry of the repeated ``batches`` field (field 1) of
``logstore.v1.FetchResponse``: a run of frames read from a segment file is a
valid serialized ``repeated RecordBatch`` field, so the broker sends stored
bytes unchanged (DESIGN.md, "the bytes on disk are the bytes on the wire").

Two formats, told apart by attributes bit 3 (``ATTR_OFFSET_DELTAS``, 0x08).
Frame layout (byte offsets from the start of the frame, little-endian)::

    0   0x0a                      tag: field 1, wire type 2 (length-delimited)
    1   5-byte varint             batch length L, always 5 bytes (overlong
                                  varints are legal protobuf; upb and
                                  protobufjs read them)
    6   RecordBatch header        66 bytes (format 1) or 71 (format 2), fixed
                                  width, written here with struct.pack (never
                                  by a protobuf serializer, which would omit
                                  zero fields):
        6   0x09 sfixed64  base_offset        (patched in place at append)
        15  0x15 fixed32   crc32c             of frame[20:] (everything after it)
        20  0x1d fixed32   batch_length       = L
        25  0x25 fixed32   record_count       the records present: >= 1 in format 1,
                                             >= 0 in format 2 (see below)
        30  0x29 sfixed64  base_timestamp_ms
        39  0x31 sfixed64  max_timestamp_ms
        48  0x39 sfixed64  producer_id        0 = none
        57  0x45 sfixed32  producer_epoch
        62  0x4d sfixed32  base_sequence
        67  0x55 fixed32   attributes         bits 0-2 codec (0 none, 1 gzip,
                                             3 lz4, 4 zstd; 2 snappy and 5-7
                                             rejected); bit 3 ATTR_OFFSET_DELTAS;
                                             readers reject any other bit
      format 2 only (bit 3 set):
        72  0x5d fixed32   last_offset_delta  last offset - base_offset
    72  records (format 1)        repeated Record, field 15 (tag 0x7a each),
    77  records (format 2)        to the end of the batch (6 + L)

A compressed batch (codec != 0) has, where the records would be, one field
``compressed_records`` (tag 0x72, varint length, payload) to the end of the
batch; the payload is the codec's compression of the records field above
(:mod:`logstore.wire._compression` has the exact framing and the bound). The
CRC covers the stored, compressed bytes. ``FrameHeader.records_start`` is
then where that field starts.

Format 1 (bit 3 clear) is what every producer and the append path write:
the record at index i has offset base_offset + i, so the batch's last offset
is base_offset + record_count - 1. Format 2 (bit 3 set) is written only by
log compaction (which keeps records' original offsets, so a batch may have
gaps) and by tests (:func:`build_offset_frame`): each record carries its
``offset_delta`` (Record field 5, proto3 omits 0), deltas strictly increase,
and the last offset is base_offset + last_offset_delta (>= the last
record's: compaction may remove a batch's last records and keep its end).
A format-2 batch may hold no record at all: compaction keeps an idempotent
producer's last batch for its producer fields (Kafka's empty batch), so the
producer state rebuilt from the log still knows the batch.
Readers find the format from the attributes at their fixed position
(``ATTRIBUTES_POS``), so the header size costs O(1) per frame.
``FrameHeader.last_offset_delta`` / ``next_offset`` are right for both.

The CRC does not cover the base offset, so it can be patched without
recomputing the CRC. Offsets only increase: each frame's base offset is >=
the previous frame's ``next_offset``; they need not be contiguous (a
compacted log has gaps within and between batches).

All functions here are pure and thread-safe. Per-frame work is O(1) Python
operations; the per-byte work (CRC32C) runs in C.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

import crc32c as _crc32c

from logstore._types import Offset
from logstore.errors import CorruptRecordError, InvalidBatchError

from ._records import (
    _ATTR_OFFSET_DELTAS,
    VARINT_BITS,
    VARINT_MORE,
    VARINT_SHIFT,
    Record,
    encode_record,
)

# The protobuf wire format (protobuf.dev/programming-guides/encoding), shared
# by every hand-written walker in this package (_columns, _produce): a field
# key is ``field_number << TAG_TYPE_BITS | wire type``.
WIRE_VARINT: Final = 0
WIRE_I64: Final = 1  # sfixed64/fixed64: I64_BYTES
WIRE_LEN: Final = 2  # length-delimited: a varint length, then the bytes
WIRE_I32: Final = 5  # fixed32/sfixed32: I32_BYTES
TAG_TYPE_BITS: Final = 3
TAG_TYPE_MASK: Final = (1 << TAG_TYPE_BITS) - 1
I64_BYTES: Final = 8
I32_BYTES: Final = 4
#: A 64-bit value needs at most 10 varint bytes, so the last byte's shift is
#: MAX_VARINT_SHIFT (9 x VARINT_SHIFT) and any later one is malformed.
MAX_VARINT_SHIFT: Final = 9 * VARINT_SHIFT


def _tag(field_number: int, wire_type: int) -> int:
    """A protobuf field key; one byte for field numbers <= 15."""
    return field_number << TAG_TYPE_BITS | wire_type


FRAME_TAG: Final = _tag(1, WIRE_LEN)  # FetchResponse.batches = 1
RECORD_TAG: Final = _tag(15, WIRE_LEN)  # RecordBatch.records = 15
#: The batch length is always written as a 5-byte varint: 5 x 7 = 35 bits
#: hold any length up to MAX_BATCH_LENGTH (31 bits), and a fixed width lets
#: the header be packed by one struct.
LENGTH_VARINT_BYTES: Final = 5
PREFIX_SIZE: Final = 1 + LENGTH_VARINT_BYTES  # tag + 5-byte varint
#: The largest batch a frame can describe; segments are < 4 GiB (u32 positions)
#: and max_batch_bytes is far below this.
MAX_BATCH_LENGTH: Final = (1 << 31) - 1
#: Attribute bits 0-2: the compression codec (logstore.wire._compression).
ATTR_CODEC_MASK: Final = 0x07
#: The codecs this version reads: 0 none, 1 gzip, 3 lz4, 4 zstd (not 2, snappy).
_KNOWN_CODECS: Final = frozenset({0, 1, 3, 4})
#: Attribute bit 3: format 2, records carry offset deltas (module docstring).
ATTR_OFFSET_DELTAS: Final = 0x08
assert ATTR_OFFSET_DELTAS == _ATTR_OFFSET_DELTAS
#: The attribute bits this version reads.
_KNOWN_ATTRIBUTES: Final = ATTR_OFFSET_DELTAS | ATTR_CODEC_MASK

#: The RecordBatch header fields in stored order: (field number, struct code).
#: "q" is sfixed64 (wire type 1), "I"/"i" fixed32/sfixed32 (wire type 5).
_HEADER_FIELDS: Final = (
    (1, "q"),  # base_offset
    (2, "I"),  # crc32c
    (3, "I"),  # batch_length
    (4, "I"),  # record_count
    (5, "q"),  # base_timestamp_ms
    (6, "q"),  # max_timestamp_ms
    (7, "q"),  # producer_id
    (8, "i"),  # producer_epoch
    (9, "i"),  # base_sequence
    (10, "I"),  # attributes
)
_HEADER_TAGS: Final = tuple(
    _tag(n, WIRE_I64 if code == "q" else WIRE_I32) for n, code in _HEADER_FIELDS
)
# tag, 5 varint bytes, then the header fields, each preceded by its 1-byte tag.
_HEAD = struct.Struct("<B5B" + "".join("B" + code for _, code in _HEADER_FIELDS))
# The fields after the varint, for decoding: skip tags with pad bytes...
_FIELDS = struct.Struct("<" + "".join("x" + code for _, code in _HEADER_FIELDS))
# ...and the tags alone, skipping the values, checked with one compare.
_TAGS = struct.Struct("<" + "".join(f"B{struct.calcsize(code)}x" for _, code in _HEADER_FIELDS))
HEADER_SIZE: Final = _FIELDS.size
FRAME_OVERHEAD: Final = PREFIX_SIZE + HEADER_SIZE


def _value_pos(field_index: int) -> int:
    """Where the value of the header's ``field_index``-th field sits in a frame."""
    before = _HEADER_FIELDS[:field_index]
    return PREFIX_SIZE + sum(1 + struct.calcsize(code) for _, code in before) + 1


BASE_OFFSET_POS: Final = _value_pos(0)  # the 8-byte base offset
CRC_POS: Final = _value_pos(1)
BATCH_LENGTH_POS: Final = _value_pos(2)
CRC_START: Final = CRC_POS + 4  # the CRC covers frame[CRC_START:]
ATTRIBUTES_POS: Final = _value_pos(9)
#: The smallest record: its tag and a zero length (every field absent).
MIN_RECORD_BYTES: Final = 2
# The on-disk format is fixed (module docstring, records.proto): a change to
# the field table above must not move a byte silently.
assert (HEADER_SIZE, FRAME_OVERHEAD, BASE_OFFSET_POS, CRC_POS, CRC_START, ATTRIBUTES_POS) == (
    66,
    72,
    7,
    16,
    20,
    68,
)
assert _TAGS.size == HEADER_SIZE and _HEAD.size == FRAME_OVERHEAD
#: Format 2's extra header field: RecordBatch.last_offset_delta = 11, fixed32.
LAST_OFFSET_DELTA_TAG: Final = _tag(11, WIRE_I32)
_DELTA_FIELD = struct.Struct("<BI")
#: Format 2's header and frame head: 5 more bytes (tag + fixed32).
HEADER_SIZE_V2: Final = HEADER_SIZE + _DELTA_FIELD.size
FRAME_OVERHEAD_V2: Final = FRAME_OVERHEAD + _DELTA_FIELD.size
#: The longest frame head of any format: read this many bytes to decode one.
MAX_FRAME_OVERHEAD: Final = FRAME_OVERHEAD_V2
assert (LAST_OFFSET_DELTA_TAG, HEADER_SIZE_V2, FRAME_OVERHEAD_V2) == (0x5D, 71, 77)
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U32_MAX: Final = (1 << 32) - 1  # offset deltas are fixed32/uint32
NO_TIMESTAMP: Final = -(1 << 63)


class FrameHeader(NamedTuple):
    """The decoded fixed header of one frame."""

    base_offset: Offset
    crc32c: int
    batch_length: int
    record_count: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    attributes: int
    #: The last offset minus base_offset (record_count - 1 in format 1).
    last_offset_delta: int

    @property
    def frame_size(self) -> int:
        """Bytes of the whole frame (prefix + batch)."""
        return PREFIX_SIZE + self.batch_length

    @property
    def has_offset_deltas(self) -> bool:
        """Format 2: records carry their offset deltas (may have gaps)."""
        return bool(self.attributes & ATTR_OFFSET_DELTAS)

    @property
    def codec(self) -> int:
        """The compression codec (attributes bits 0-2; 0 = none)."""
        return self.attributes & ATTR_CODEC_MASK

    @property
    def records_start(self) -> int:
        """Where the records begin, from the start of the frame (72 or 77)."""
        return FRAME_OVERHEAD_V2 if self.attributes & ATTR_OFFSET_DELTAS else FRAME_OVERHEAD

    @property
    def last_offset(self) -> Offset:
        """The batch's last offset (its last record's, or past it in format 2)."""
        return Offset(self.base_offset + self.last_offset_delta)

    @property
    def next_offset(self) -> Offset:
        """The offset after this frame's last offset."""
        return Offset(self.base_offset + self.last_offset_delta + 1)


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``value``."""
    return int(_crc32c.crc32c(data, value))


def build_head(
    records_len: int,
    record_count: int,
    base_timestamp_ms: int,
    max_timestamp_ms: int,
    producer_id: int = 0,
    producer_epoch: int = 0,
    base_sequence: int = 0,
    records: bytes | bytearray | memoryview | None = None,
    base_offset: int = 0,
    _allow_empty: bool = False,
    attributes: int = 0,
) -> bytearray:
    """Build the FRAME_OVERHEAD-byte frame head for ``records_len`` bytes of records.

    The CRC is computed over the head's covered part and then continued over
    the records (``records`` must be given), so the records are never copied.
    Returns a bytearray so the base offset can be patched with
    :func:`patch_base_offset` once the log assigns it. ``_allow_empty``:
    :func:`build_offset_frame`'s empty format-2 batch. ``attributes``: the
    codec of a compressed batch (``records`` is then its compressed_records
    field); format 2 is :func:`build_offset_frame`'s.
    """
    assert attributes & ~ATTR_CODEC_MASK == 0 and attributes & ATTR_CODEC_MASK in _KNOWN_CODECS
    if record_count < (0 if _allow_empty else 1):
        raise InvalidBatchError("a batch needs at least one record")
    batch_length = HEADER_SIZE + records_len
    if batch_length > MAX_BATCH_LENGTH:
        raise InvalidBatchError(f"batch of {batch_length} bytes exceeds {MAX_BATCH_LENGTH}")
    v = batch_length
    t = _HEADER_TAGS
    head = bytearray(
        _HEAD.pack(
            FRAME_TAG,
            # the length as a LENGTH_VARINT_BYTES-byte varint
            (v & VARINT_BITS) | VARINT_MORE,
            ((v >> 7) & VARINT_BITS) | VARINT_MORE,
            ((v >> 14) & VARINT_BITS) | VARINT_MORE,
            ((v >> 21) & VARINT_BITS) | VARINT_MORE,
            (v >> 28) & VARINT_BITS,
            t[0],
            base_offset,
            t[1],
            0,  # crc32c, patched below
            t[2],
            batch_length,
            t[3],
            record_count,
            t[4],
            base_timestamp_ms,
            t[5],
            max_timestamp_ms,
            t[6],
            producer_id,
            t[7],
            producer_epoch,
            t[8],
            base_sequence,
            t[9],
            attributes,
        )
    )
    crc = crc32c(memoryview(head)[CRC_START:])
    if records is not None:
        crc = crc32c(records, crc)
    _U32.pack_into(head, CRC_POS, crc)
    return head


def patch_base_offset(head: bytearray, base_offset: int) -> None:
    """Write ``base_offset`` into a frame head (not covered by the CRC)."""
    _I64.pack_into(head, BASE_OFFSET_POS, base_offset)


def encode_frame(
    records: bytes,
    record_count: int,
    base_offset: int,
    base_timestamp_ms: int,
    max_timestamp_ms: int | None = None,
    producer_id: int = 0,
    producer_epoch: int = 0,
    base_sequence: int = 0,
) -> bytes:
    """One whole frame as bytes (convenience for tests and small batches)."""
    head = build_head(
        len(records),
        record_count,
        base_timestamp_ms,
        base_timestamp_ms if max_timestamp_ms is None else max_timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence,
        records=records,
        base_offset=base_offset,
    )
    return bytes(head) + records


def decode_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> FrameHeader:
    """Decode the fixed head of the frame at ``buf[pos:]``.

    Raises CorruptRecordError when the bytes are not a frame head (bad tags,
    a length that is not the 5-byte form, fewer than FRAME_OVERHEAD bytes, or
    attributes naming a codec or bits this version does not know).
    """
    if len(buf) - pos < FRAME_OVERHEAD:
        raise CorruptRecordError(f"truncated frame head at byte {pos}")
    if buf[pos] != FRAME_TAG:
        raise CorruptRecordError(f"bad frame tag 0x{buf[pos]:02x} at byte {pos}")
    b1, b2, b3, b4, b5 = buf[pos + 1 : pos + PREFIX_SIZE]
    if not (b1 & b2 & b3 & b4 & VARINT_MORE) or b5 & VARINT_MORE:
        raise CorruptRecordError(f"bad frame length varint at byte {pos}")
    length = (
        (b1 & VARINT_BITS)
        | (b2 & VARINT_BITS) << 7
        | (b3 & VARINT_BITS) << 14
        | (b4 & VARINT_BITS) << 21
        | b5 << 28
    )
    if _TAGS.unpack_from(buf, pos + PREFIX_SIZE) != _HEADER_TAGS:
        raise CorruptRecordError(f"bad batch header tags at byte {pos}")
    fields = _FIELDS.unpack_from(buf, pos + PREFIX_SIZE)
    base_offset, _crc, batch_length, record_count = fields[:4]
    attributes = fields[9]
    if attributes & ~_KNOWN_ATTRIBUTES or attributes & ATTR_CODEC_MASK not in _KNOWN_CODECS:
        # Codecs 0, 1, 3, 4 and the offset-deltas bit exist: anything else is
        # not a batch this version can read (the CRC covers it, so it was
        # written so, not flipped on disk).
        codec = attributes & ATTR_CODEC_MASK
        what = (
            "unknown bits are set"
            if attributes & ~_KNOWN_ATTRIBUTES
            else f"codec {codec} is not supported (0 none, 1 gzip, 3 lz4, 4 zstd)"
        )
        raise CorruptRecordError(
            f"batch at offset {base_offset} (byte {pos}) has attributes 0x{attributes:08x}: {what}"
        )
    if attributes & ATTR_OFFSET_DELTAS:
        if len(buf) - pos < FRAME_OVERHEAD_V2:
            raise CorruptRecordError(f"truncated frame head at byte {pos}")
        tag, last_delta = _DELTA_FIELD.unpack_from(buf, pos + FRAME_OVERHEAD)
        if tag != LAST_OFFSET_DELTA_TAG:
            raise CorruptRecordError(f"bad batch header tags at byte {pos}")
        min_length = HEADER_SIZE_V2
        min_records = 0
    else:
        last_delta = record_count - 1
        min_length = HEADER_SIZE
        min_records = 1
    if (
        batch_length != length
        or length < min_length
        or record_count < min_records
        or last_delta < record_count - 1
    ):
        raise CorruptRecordError(
            f"inconsistent batch length {length}/{batch_length}, record count "
            f"{record_count} or last offset delta {last_delta} at byte {pos}"
        )
    return FrameHeader(
        Offset(base_offset), _crc, batch_length, record_count, fields[4], fields[5], fields[6],
        fields[7], fields[8], attributes, last_delta,
    )  # fmt: skip


def check_crc(frame: bytes | bytearray | memoryview, header: FrameHeader) -> None:
    """Raise CorruptRecordError unless the frame's CRC32C matches its bytes."""
    mv = memoryview(frame)
    if len(mv) != header.frame_size:
        raise CorruptRecordError(
            f"frame at offset {header.base_offset} is {len(mv)} bytes, expected {header.frame_size}"
        )
    actual = crc32c(mv[CRC_START:])
    if actual != header.crc32c:
        raise CorruptRecordError(
            f"CRC32C mismatch in batch at offset {header.base_offset}: stored "
            f"0x{header.crc32c:08x}, computed 0x{actual:08x}"
        )


def build_offset_frame(
    base_offset: int,
    records: Sequence[tuple[int, Record]],
    base_timestamp_ms: int,
    max_timestamp_ms: int | None = None,
    last_offset: int | None = None,
    producer_id: int = 0,
    producer_epoch: int = 0,
    base_sequence: int = 0,
) -> bytes:
    """A format-2 frame of ``(offset, record)`` pairs that keep their offsets.

    What log compaction writes (and tests, to build logs with gaps): the
    offsets must strictly increase and be >= ``base_offset``; each record is
    encoded with ``offset_delta`` = offset - base_offset; the batch's last
    offset is ``last_offset`` (default: the last record's; compaction keeps a
    batch's original end). ``max_timestamp_ms`` defaults to the largest
    effective record timestamp (0 means the base timestamp). Records' own
    ``offset`` attributes are ignored. No records makes an empty batch
    (compaction's kept producer batch), which needs ``last_offset``.
    """
    if not records and last_offset is None:
        raise InvalidBatchError("a batch needs at least one record (or a last_offset)")
    parts: list[bytes] = []
    prev = base_offset - 1
    max_ts = NO_TIMESTAMP
    for offset, r in records:
        if offset <= prev or offset - base_offset > _U32_MAX:
            raise InvalidBatchError(
                f"record offsets must increase from base offset {base_offset}: {offset} after "
                f"{prev}"
            )
        prev = offset
        parts.append(encode_record(r.value, r.key, r.headers, r.timestamp_ms, offset - base_offset))
        max_ts = max(max_ts, r.timestamp_ms or base_timestamp_ms)
    last = prev if last_offset is None else last_offset
    if not max(prev, base_offset) <= last <= base_offset + _U32_MAX:
        raise InvalidBatchError(f"last offset {last} is before the last record's {prev}")
    body = b"".join(parts)
    batch_length = HEADER_SIZE_V2 + len(body)
    head = build_head(
        len(body) + _DELTA_FIELD.size,
        len(records),
        base_timestamp_ms,
        max_ts if max_timestamp_ms is None else max_timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence,
        base_offset=base_offset,
        _allow_empty=True,
    )
    _U32.pack_into(head, ATTRIBUTES_POS, ATTR_OFFSET_DELTAS)
    head += _DELTA_FIELD.pack(LAST_OFFSET_DELTA_TAG, last - base_offset)
    assert len(head) == FRAME_OVERHEAD_V2 and head[ATTRIBUTES_POS - 1] == 0x55
    crc = crc32c(body, crc32c(memoryview(head)[CRC_START:]))
    _U32.pack_into(head, CRC_POS, crc)
    frame = bytes(head) + body
    assert len(frame) == PREFIX_SIZE + batch_length
    return frame


def with_records(
    frame: bytes | bytearray | memoryview, h: FrameHeader, records: bytes, attributes: int
) -> bytes:
    """``frame``'s header with other ``records`` (the bytes after the header)
    and ``attributes``: lengths and CRC32C recomputed, every other field kept.
    How a compressed frame becomes its uncompressed equivalent for readers."""
    return head_for_records(frame, h, records, attributes) + records


def head_for_records(
    frame: bytes | bytearray | memoryview, h: FrameHeader, records: bytes, attributes: int
) -> bytes:
    """The head of :func:`with_records`'s frame alone (the records follow it),
    so a caller joining many frames copies the records once."""
    head = bytearray(memoryview(frame)[: h.records_start])
    length = h.records_start - PREFIX_SIZE + len(records)
    if length > MAX_BATCH_LENGTH:
        raise CorruptRecordError(f"batch at offset {h.base_offset} is too long ({length} bytes)")
    for i in range(LENGTH_VARINT_BYTES):
        more = VARINT_MORE if i < LENGTH_VARINT_BYTES - 1 else 0
        head[1 + i] = ((length >> (VARINT_SHIFT * i)) & VARINT_BITS) | more
    _U32.pack_into(head, BATCH_LENGTH_POS, length)
    _U32.pack_into(head, ATTRIBUTES_POS, attributes)
    crc = crc32c(records, crc32c(memoryview(head)[CRC_START:]))
    _U32.pack_into(head, CRC_POS, crc)
    return bytes(head)


def batch_view(frame: bytes | bytearray | memoryview) -> memoryview:
    """The serialized RecordBatch of a whole frame (without tag and length)."""
    return memoryview(frame)[PREFIX_SIZE:]
