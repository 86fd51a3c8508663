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
        67  0x55 fixed32   attributes         bits 0-2 codec; only 0 (none)
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

FRAME_TAG: Final = 0x0A
RECORD_TAG: Final = 0x7A  # field 15, wire type 2
PREFIX_SIZE: Final = 6  # tag + 5-byte varint
HEADER_SIZE: Final = 66
FRAME_OVERHEAD: Final = PREFIX_SIZE + HEADER_SIZE  # 72
BASE_OFFSET_POS: Final = 7  # where the 8-byte base offset sits in a frame
CRC_POS: Final = 16
CRC_START: Final = 20  # the CRC covers frame[CRC_START:]
#: The largest batch a frame can describe; segments are < 4 GiB (u32 positions)
#: and max_batch_bytes is far below this.
MAX_BATCH_LENGTH: Final = (1 << 31) - 1
ATTR_CODEC_MASK: Final = 0x07

# tag, 5 varint bytes, then the header fields, each preceded by its 1-byte tag.
_HEAD = struct.Struct("<B5B" + "BqBIBIBIBqBqBqBiBiBI")
assert _HEAD.size == FRAME_OVERHEAD
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
# The fields after the varint, for decoding: skip tags with pad bytes.
_FIELDS = struct.Struct("<xqxIxIxIxqxqxqxixixI")
assert _FIELDS.size == HEADER_SIZE


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
    records_crc: int | None = None,
    records: bytes | bytearray | memoryview | None = None,
    base_offset: int = 0,
) -> bytearray:
    """Build the 72-byte frame head for ``records_len`` bytes of records.

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
    head = bytearray(
        _HEAD.pack(
            FRAME_TAG,
            (v & 0x7F) | 0x80,
            ((v >> 7) & 0x7F) | 0x80,
            ((v >> 14) & 0x7F) | 0x80,
            ((v >> 21) & 0x7F) | 0x80,
            (v >> 28) & 0x7F,
            0x09,
            base_offset,
            0x15,
            0,
            0x1D,
            batch_length,
            0x25,
            record_count,
            0x29,
            base_timestamp_ms,
            0x31,
            max_timestamp_ms,
            0x39,
            producer_id,
            0x45,
            producer_epoch,
            0x4D,
            base_sequence,
            0x55,
            0,
        )
    )
    assert records is not None or records_crc is None, "records_crc needs the records"
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
    a length that is not the 5-byte form, or fewer than 72 bytes).
    """
    if len(buf) - pos < FRAME_OVERHEAD:
        raise CorruptRecordError(f"truncated frame head at byte {pos}")
    if buf[pos] != FRAME_TAG:
        raise CorruptRecordError(f"bad frame tag 0x{buf[pos]:02x} at byte {pos}")
    b1, b2, b3, b4, b5 = buf[pos + 1 : pos + 6]
    if not (b1 & b2 & b3 & b4 & 0x80) or b5 & 0x80:
        raise CorruptRecordError(f"bad frame length varint at byte {pos}")
    length = (b1 & 0x7F) | (b2 & 0x7F) << 7 | (b3 & 0x7F) << 14 | (b4 & 0x7F) << 21 | b5 << 28
    fields = _FIELDS.unpack_from(buf, pos + PREFIX_SIZE)
    tags = bytes(buf[pos + PREFIX_SIZE : pos + FRAME_OVERHEAD : 1])
    if (
        tags[0] != 0x09
        or tags[9] != 0x15
        or tags[14] != 0x1D
        or tags[19] != 0x25
        or tags[24] != 0x29
        or tags[33] != 0x31
        or tags[42] != 0x39
        or tags[51] != 0x45
        or tags[56] != 0x4D
        or tags[61] != 0x55
    ):
        raise CorruptRecordError(f"bad batch header tags at byte {pos}")
    header = FrameHeader(*fields)
    if header.batch_length != length or length < HEADER_SIZE or header.record_count < 1:
        raise CorruptRecordError(
            f"inconsistent batch length {length}/{header.batch_length} or record count "
            f"{header.record_count} at byte {pos}"
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


def records_view(frame: bytes | bytearray | memoryview) -> memoryview:
    """The records' bytes (repeated field 15) of a whole frame."""
    return memoryview(frame)[FRAME_OVERHEAD:]


def batch_view(frame: bytes | bytearray | memoryview) -> memoryview:
    """The serialized RecordBatch of a whole frame (without tag and length)."""
    return memoryview(frame)[PREFIX_SIZE:]
