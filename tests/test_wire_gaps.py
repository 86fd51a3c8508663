"""Format-2 frames (records that keep their offsets, with gaps): the builder
writes what upb parses as a RecordBatch, and every decoder gives the right
offsets; format-1 frames stay byte-identical."""

from __future__ import annotations

import struct

import pytest

from logstore.errors import CorruptRecordError, InvalidBatchError
from logstore.v1 import records_pb2
from logstore.wire import (
    ATTR_OFFSET_DELTAS,
    FRAME_OVERHEAD,
    FRAME_OVERHEAD_V2,
    Record,
    batch_view,
    build_offset_frame,
    check_crc,
    crc32c,
    decode_columns,
    decode_header,
    decode_objects,
    decode_records,
    encode_frame,
    encode_values,
    parse_fetch,
    stored_frames,
)
from logstore.wire._frame import ATTRIBUTES_POS, CRC_POS, CRC_START

PAIRS = [
    (100, Record(b"a", b"k1", [("h", b"v")], 5_000)),
    (103, Record(None, b"k2")),
    (104, Record(b"c", timestamp_ms=7_000)),
    (110, Record(b"d" * 300)),
]


def _frame() -> bytes:
    return build_offset_frame(100, PAIRS, 6_000, last_offset=115)


def test_builder_output_parses_as_a_record_batch_with_deltas() -> None:
    """upb reads the format-2 frame as a RecordBatch: bit 3 set, last_offset_delta,
    each record's offset_delta, and the documented 77-byte head."""
    frame = _frame()
    msg = records_pb2.RecordBatch.FromString(bytes(batch_view(frame)))
    assert msg.attributes == ATTR_OFFSET_DELTAS
    assert (msg.base_offset, msg.last_offset_delta, msg.record_count) == (100, 15, 4)
    assert [r.offset_delta for r in msg.records] == [0, 3, 4, 10]
    assert msg.batch_length == len(frame) - 6
    assert frame[FRAME_OVERHEAD] == 0x5D and frame[FRAME_OVERHEAD_V2] == 0x7A
    assert struct.unpack_from("<I", frame, FRAME_OVERHEAD + 1)[0] == 15
    h = decode_header(frame)
    check_crc(frame, h)
    assert (h.last_offset_delta, h.next_offset, h.records_start) == (15, 116, 77)
    assert h.max_timestamp_ms == 7_000  # the largest effective record timestamp


def test_format_1_frames_are_unchanged() -> None:
    """Without the bit the header is 66 bytes, last_offset_delta = count - 1."""
    frame = encode_frame(encode_values([b"x", b"y"]), 2, 40, 1)
    h = decode_header(frame)
    assert (h.attributes, h.last_offset_delta, h.next_offset, h.records_start) == (0, 1, 42, 72)
    assert frame[FRAME_OVERHEAD] == 0x7A


def _expected(start: int) -> list[Record]:
    out = []
    for off, r in PAIRS:
        if off >= start:
            out.append(Record(r.value, r.key, r.headers, r.timestamp_ms or 6_000, off))
    return out


@pytest.mark.parametrize("start", [0, 100, 101, 103, 105, 110, 111, 115])
def test_every_decoder_gives_the_kept_offsets(start: int) -> None:
    """decode_records, decode_objects, decode_columns and parse_fetch give each record
    its own offset, and a start in a gap gives the records after it."""
    before = encode_frame(encode_values([b"p"] * 3), 3, 97, 1)
    after = build_offset_frame(120, [(121, Record(b"z"))], 1)  # base 120 has no record
    frame = _frame()
    assert decode_records(batch_view(frame), 100, 6_000, start) == _expected(start)
    reply = before + frame + after
    tail = [Record(b"z", None, None, 1, 121)]
    head = [Record(b"p", None, None, 1, o) for o in (97, 98, 99) if o >= start]
    for parsed in (parse_fetch(reply), stored_frames(reply)):
        assert [h.next_offset for _, h in parsed.frames] == [100, 116, 122]
        assert decode_objects(parsed, start) == head + _expected(start) + tail
        cols = decode_columns("t", 0, parsed, start)
        assert cols.to_records() == head + _expected(start) + tail
        limited = decode_columns("t", 0, parsed, start, max_records=2)
        assert limited.to_records() == (head + _expected(start) + tail)[:2]
        assert decode_objects(parsed, start, 2) == (head + _expected(start) + tail)[:2]


def test_deltas_that_do_not_increase_are_corruption() -> None:
    """A format-2 batch whose offset deltas go backwards is CorruptRecordError."""
    msg = records_pb2.RecordBatch.FromString(bytes(batch_view(_frame())))
    msg.records[1].offset_delta = 0
    with pytest.raises(CorruptRecordError, match="deltas"):
        decode_records(msg.SerializeToString(), 100, 0)


def test_builder_rejects_offsets_that_do_not_increase() -> None:
    """The builder refuses decreasing offsets, offsets below the base and an early end."""
    with pytest.raises(InvalidBatchError):
        build_offset_frame(10, [(12, Record(b"a")), (12, Record(b"b"))], 0)
    with pytest.raises(InvalidBatchError):
        build_offset_frame(10, [(9, Record(b"a"))], 0)
    with pytest.raises(InvalidBatchError):
        build_offset_frame(10, [(12, Record(b"a"))], 0, last_offset=11)
    with pytest.raises(InvalidBatchError):
        build_offset_frame(10, [], 0)


def test_offset_delta_bit_without_its_field_is_rejected() -> None:
    """A format-1 frame with bit 3 set (no last_offset_delta field) is corrupt."""
    b = bytearray(encode_frame(encode_values([b"x"] * 3), 3, 0, 5))
    struct.pack_into("<I", b, ATTRIBUTES_POS, ATTR_OFFSET_DELTAS)
    struct.pack_into("<I", b, CRC_POS, crc32c(memoryview(b)[CRC_START:]))
    with pytest.raises(CorruptRecordError):
        decode_header(bytes(b))
