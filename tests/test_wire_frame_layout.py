"""The frame layout is derived from one field table yet stays byte-for-byte the
documented on-disk format, and readers reject attributes they do not know."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from logstore import Store
from logstore.config import TopicConfig
from logstore.errors import CorruptRecordError, InvalidConfigError
from logstore.v1 import records_pb2
from logstore.wire import (
    CRC_START,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    crc32c,
    decode_header,
    encode_frame,
    encode_values,
    parse_fetch,
    stored_frames,
)
from logstore.wire._frame import ATTRIBUTES_POS, CRC_POS


def _with_attributes(frame: bytes, attributes: int) -> bytes:
    """The frame with its attributes replaced and its CRC recomputed (a valid CRC)."""
    b = bytearray(frame)
    struct.pack_into("<I", b, ATTRIBUTES_POS, attributes)
    struct.pack_into("<I", b, CRC_POS, crc32c(memoryview(b)[CRC_START:]))
    return bytes(b)


def test_layout_matches_protobuf() -> None:
    """A frame built from the field table parses with upb as a RecordBatch with every field
    where the module docstring says (attributes last, at byte 68)."""
    records = encode_values([b"abc", b"de"])
    frame = encode_frame(records, 2, 41, 1_000, 2_000, 7, 3, 11)
    assert len(frame) == FRAME_OVERHEAD + len(records) and FRAME_OVERHEAD == 72
    batch = records_pb2.RecordBatch.FromString(frame[6:])
    assert (batch.base_offset, batch.record_count, batch.batch_length) == (
        41,
        2,
        HEADER_SIZE + len(records),
    )
    assert (batch.base_timestamp_ms, batch.max_timestamp_ms) == (1_000, 2_000)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (7, 3, 11)
    assert frame[ATTRIBUTES_POS - 1] == 0x55  # field 10, fixed32
    patched = _with_attributes(frame, 0x12345678)
    assert records_pb2.RecordBatch.FromString(patched[6:]).attributes == 0x12345678


@pytest.mark.parametrize(
    ("attributes", "why"),
    [(2, "codec 2 is not supported"), (5, "codec 5"), (7, "codec 7"), (0x100, "unknown bits")],
)
def test_unknown_attributes_are_rejected(attributes: int, why: str) -> None:
    """A frame whose attributes name an unknown codec or set undefined bits is
    CorruptRecordError on decode, in a fetch reply and among stored frames."""
    frame = _with_attributes(encode_frame(encode_values([b"x"]), 1, 0, 5), attributes)
    with pytest.raises(CorruptRecordError, match=why):
        decode_header(frame)
    with pytest.raises(CorruptRecordError, match="attributes"):
        parse_fetch(frame)
    with pytest.raises(CorruptRecordError, match="attributes"):
        stored_frames(frame)


def test_store_read_rejects_unknown_codec(tmp_path: Path) -> None:
    """An embedded read of a stored batch with an unknown codec raises CorruptRecordError,
    and the batch before it still reads."""
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append("t", 0, [b"ok"])
        store.append("t", 0, [b"compressed?"])
    log = tmp_path / "t-0" / ("0" * 20 + ".log")
    data = log.read_bytes()
    first = decode_header(data).frame_size
    log.write_bytes(data[:first] + _with_attributes(data[first:], 2))
    with Store.open(tmp_path) as store:
        assert [r.value for r in store.read("t", 0, 0, max_bytes=1)] == [b"ok"]
        with pytest.raises(CorruptRecordError, match="codec 2"):
            store.read("t", 0, 1)
        with pytest.raises(CorruptRecordError, match="codec 2"):
            store.read_columns("t", 0, 1)


def test_config_minima_follow_the_frame_format() -> None:
    """max_batch_bytes and segment_bytes go down to one empty record's batch and frame."""
    assert TopicConfig.from_mapping({"max_batch_bytes": HEADER_SIZE + 2}).max_batch_bytes == 68
    assert TopicConfig.from_mapping({"segment_bytes": FRAME_OVERHEAD + 2}).segment_bytes == 74
    with pytest.raises(InvalidConfigError, match="max_batch_bytes"):
        TopicConfig.from_mapping({"max_batch_bytes": HEADER_SIZE + 1})
    with pytest.raises(InvalidConfigError, match="segment_bytes"):
        TopicConfig.from_mapping({"segment_bytes": FRAME_OVERHEAD + 1})
