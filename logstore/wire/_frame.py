"""Stored frames: the byte format shared by segment files and Fetch/Subscribe replies.

A *frame* is one entry of the repeated ``batches`` field (field 1) of
``logstore.v1.FetchResponse``: a run of frames read from a segment file is a
valid serialized ``repeated RecordBatch`` field, so the broker sends stored
bytes unchanged (DESIGN.md, "the bytes on disk are the bytes on the wire").

Frame layout (byte offsets from the start of the frame, little-endian)::

    0   0x0a                      tag: field 1, wire type 2 (length-delimited)
    1   5-byte varint             batch length L, always 5 bytes (overlong
                                  varints are legal protobuf; upb and
                                  protobufjs read them)
    6   RecordBatch header        66 bytes, fixed width, written here with
                                  struct.pack (never by a protobuf serializer,
                                  which would omit zero fields):
        6   0x09 sfixed64  base_offset        (patched in place at append)
        15  0x15 fixed32   crc32c             of frame[20:] (everything after it)
        20  0x1d fixed32   batch_length       = L
        25  0x25 fixed32   record_count       >= 1
        30  0x29 sfixed64  base_timestamp_ms
        39  0x31 sfixed64  max_timestamp_ms
        48  0x39 sfixed64  producer_id        0 = none
        57  0x45 sfixed32  producer_epoch
        62  0x4d sfixed32  base_sequence
        67  0x55 fixed32   attributes         bits 0-2 codec; only 0 (none); readers
                                             reject any other value
    72  records                   repeated Record, field 15 (tag 0x7a each),
                                  to the end of the batch (6 + L)

The CRC does not cover the base offset, so it can be patched without
recomputing the CRC; readers also check that each frame's base offset equals
the previous frame's base offset + record count.

All functions here are pure and thread-safe. Per-frame work is O(1) Python
operations; the per-byte work (CRC32C) runs in C.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import crc32c as _crc32c

from logstore.errors import CorruptRecordError, InvalidBatchError

_WIRE_I64: Final = 1  # protobuf wire type of sfixed64/fixed64: 8 bytes
_WIRE_LEN: Final = 2  # length-delimited
_WIRE_I32: Final = 5  # fixed32/sfixed32: 4 bytes


def _tag(field_number: int, wire_type: int) -> int:
    """A protobuf field key; one byte for field numbers <= 15."""
    return field_number << 3 | wire_type


FRAME_TAG: Final = _tag(1, _WIRE_LEN)  # FetchResponse.batches = 1
RECORD_TAG: Final = _tag(15, _WIRE_LEN)  # RecordBatch.records = 15
#: The batch length is always written as a 5-byte varint: 5 x 7 = 35 bits
#: hold any length up to MAX_BATCH_LENGTH (31 bits), and a fixed width lets
#: the header be packed by one struct.
LENGTH_VARINT_BYTES: Final = 5
_VARINT_MORE: Final = 0x80  # continuation bit of a varint byte
_VARINT_BITS: Final = 0x7F  # payload bits of a varint byte
PREFIX_SIZE: Final = 1 + LENGTH_VARINT_BYTES  # tag + 5-byte varint
#: The largest batch a frame can describe; segments are < 4 GiB (u32 positions)
#: and max_batch_bytes is far below this.
MAX_BATCH_LENGTH: Final = (1 << 31) - 1
#: Attribute bits 0-2: the compression codec; 0 (none) is the only one so far.
ATTR_CODEC_MASK: Final = 0x07

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
    _tag(n, _WIRE_I64 if code == "q" else _WIRE_I32) for n, code in _HEADER_FIELDS
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
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class FrameHeader(NamedTuple):
    """The decoded fixed header of one frame."""

    base_offset: int
    crc32c: int
    batch_length: int
    record_count: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    attributes: int

    @property
    def frame_size(self) -> int:
        """Bytes of the whole frame (prefix + batch)."""
        return PREFIX_SIZE + self.batch_length

    @property
    def next_offset(self) -> int:
        """The offset after this frame's last record."""
        return self.base_offset + self.record_count


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
) -> bytearray:
    """Build the FRAME_OVERHEAD-byte frame head for ``records_len`` bytes of records.

    The CRC is computed over the head's covered part and then continued over
    the records (``records`` must be given), so the records are never copied.
    Returns a bytearray so the base offset can be patched with
    :func:`patch_base_offset` once the log assigns it.
    """
    if record_count < 1:
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
            (v & _VARINT_BITS) | _VARINT_MORE,
            ((v >> 7) & _VARINT_BITS) | _VARINT_MORE,
            ((v >> 14) & _VARINT_BITS) | _VARINT_MORE,
            ((v >> 21) & _VARINT_BITS) | _VARINT_MORE,
            (v >> 28) & _VARINT_BITS,
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
            0,  # attributes: codec none
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
    if not (b1 & b2 & b3 & b4 & _VARINT_MORE) or b5 & _VARINT_MORE:
        raise CorruptRecordError(f"bad frame length varint at byte {pos}")
    length = (
        (b1 & _VARINT_BITS)
        | (b2 & _VARINT_BITS) << 7
        | (b3 & _VARINT_BITS) << 14
        | (b4 & _VARINT_BITS) << 21
        | b5 << 28
    )
    if _TAGS.unpack_from(buf, pos + PREFIX_SIZE) != _HEADER_TAGS:
        raise CorruptRecordError(f"bad batch header tags at byte {pos}")
    header = FrameHeader(*_FIELDS.unpack_from(buf, pos + PREFIX_SIZE))
    if header.batch_length != length or length < HEADER_SIZE or header.record_count < 1:
        raise CorruptRecordError(
            f"inconsistent batch length {length}/{header.batch_length} or record count "
            f"{header.record_count} at byte {pos}"
        )
    if header.attributes:
        # Only codec 0 (none) exists and no other bit is defined: anything
        # else is not a batch this version can read (the CRC covers it, so it
        # was written so, not flipped on disk).
        codec = header.attributes & ATTR_CODEC_MASK
        what = f"codec {codec} is unknown (only 0, none)" if codec else "unknown bits are set"
        raise CorruptRecordError(
            f"batch at offset {header.base_offset} (byte {pos}) has attributes "
            f"0x{header.attributes:08x}: {what}"
        )
    return header


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


def batch_view(frame: bytes | bytearray | memoryview) -> memoryview:
    """The serialized RecordBatch of a whole frame (without tag and length)."""
    return memoryview(frame)[PREFIX_SIZE:]
