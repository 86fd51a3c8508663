"""The frame format: fixed header, CRC, and the rule that stored bytes parse as FetchResponse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.errors import CorruptRecordError, InvalidBatchError, InvalidRequestError
from logstore.v1 import logstore_pb2, records_pb2
from logstore.wire import (
    FRAME_OVERHEAD,
    Record,
    batch_view,
    check_crc,
    decode_header,
    decode_records,
    encode_frame,
    encode_records,
    encode_values,
    murmur2,
    partition_for_key,
    patch_base_offset,
    split_produce_request,
)

records_st = st.lists(
    st.builds(
        Record,
        value=st.one_of(st.none(), st.binary(max_size=300)),
        key=st.one_of(st.none(), st.binary(max_size=40)),
        headers=st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=3),
        timestamp_ms=st.one_of(st.just(0), st.integers(-(2**62), 2**62)),
    ),
    min_size=1,
    max_size=30,
)


def _pb_record(r: Record) -> records_pb2.Record:
    m = records_pb2.Record(timestamp_ms=r.timestamp_ms)
    if r.key is not None:
        m.key = r.key
    if r.value is not None:
        m.value = r.value
    for k, v in r.headers:
        m.headers.add(key=k, value=v)
    return m


@given(records_st)
def test_encoder_matches_protobuf_serializer(recs: list[Record]) -> None:
    """Hand-encoded records are byte-identical to upb's serialization of the same records."""
    body, count, _ = encode_records(recs)
    expected = records_pb2.RecordBatch(records=[_pb_record(r) for r in recs]).SerializeToString()
    assert count == len(recs)
    assert body == expected


@given(st.lists(st.binary(max_size=70_000), min_size=1, max_size=20))
def test_value_fast_path_matches_protobuf(values: list[bytes]) -> None:
    """The value-only fast path (cached prefixes, one join) equals upb's bytes, any value size."""
    expected = records_pb2.RecordBatch(
        records=[records_pb2.Record(value=v) for v in values]
    ).SerializeToString()
    assert encode_values(values) == expected


@given(st.lists(records_st, min_size=1, max_size=5), st.integers(0, 2**40))
def test_concatenated_frames_parse_as_fetch_response(
    batches: list[list[Record]], base: int
) -> None:
    """Frames concatenated as read from a segment parse as a FetchResponse; all fields survive."""
    frames = []
    offset = base
    for recs in batches:
        body, n, _ = encode_records(recs)
        frames.append(encode_frame(body, n, offset, 1_700_000_000_000, None, 7, 3, 11))
        offset += n
    raw = b"".join(frames) + logstore_pb2.FetchResponse(high_watermark=offset).SerializeToString()
    resp = logstore_pb2.FetchResponse.FromString(raw)
    assert resp.high_watermark == offset
    assert len(resp.batches) == len(batches)
    offset = base
    for got, recs in zip(resp.batches, batches, strict=True):
        assert got.base_offset == offset
        assert got.record_count == len(recs)
        assert got.producer_id == 7 and got.producer_epoch == 3 and got.base_sequence == 11
        assert got.base_timestamp_ms == 1_700_000_000_000
        for pb, r in zip(got.records, recs, strict=True):
            assert pb.HasField("key") == (r.key is not None)
            assert pb.HasField("value") == (r.value is not None)
            assert (pb.key if r.key is not None else None) == r.key
            assert (pb.value if r.value is not None else None) == r.value
            assert pb.timestamp_ms == r.timestamp_ms
            assert [(h.key, h.value) for h in pb.headers] == r.headers
        offset += len(recs)


def test_zero_valued_header_fields_are_still_written() -> None:
    """An all-zero header keeps its fixed width: every field present, 72 bytes of overhead."""
    frame = encode_frame(encode_values([b""]), 1, 0, 0)
    assert len(frame) == FRAME_OVERHEAD + 4  # 0x7a 0x02 0x12 0x00
    h = decode_header(frame)
    assert (h.base_offset, h.base_timestamp_ms, h.producer_id, h.attributes) == (0, 0, 0, 0)
    batch = records_pb2.RecordBatch.FromString(bytes(batch_view(frame)))
    assert batch.records[0].HasField("value") and batch.records[0].value == b""


def test_base_offset_patch_keeps_crc_valid() -> None:
    """Patching the base offset in place does not invalidate the CRC (it is not covered)."""
    frame = bytearray(encode_frame(encode_values([b"abc"]), 1, 0, 5))
    patch_base_offset(frame, 123456)
    h = decode_header(frame)
    assert h.base_offset == 123456
    check_crc(frame, h)


@pytest.mark.parametrize("pos", [20, 30, 50, FRAME_OVERHEAD, FRAME_OVERHEAD + 3])
def test_crc_detects_any_flipped_byte(pos: int) -> None:
    """A flipped byte anywhere in the CRC-covered range is detected."""
    frame = bytearray(encode_frame(encode_values([b"hello world"]), 1, 0, 5))
    frame[pos] ^= 0x40
    with pytest.raises(CorruptRecordError):
        check_crc(frame, decode_header(frame)) if pos >= 25 else decode_header(frame)


def test_decode_header_rejects_garbage() -> None:
    """Bytes that are not a frame head raise CorruptRecordError, never a wrong header."""
    with pytest.raises(CorruptRecordError):
        decode_header(b"\x00" * 100)
    with pytest.raises(CorruptRecordError):
        decode_header(b"\x0a\x80")
    frame = bytearray(encode_frame(encode_values([b"x"]), 1, 0, 5))
    struct.pack_into("<I", frame, 21, 999)  # batch_length disagrees with the varint
    with pytest.raises(CorruptRecordError):
        decode_header(frame)


def test_decode_records_skips_to_offset_and_fills_timestamp() -> None:
    """Decoding from inside a batch skips earlier records; timestamp 0 becomes the batch's."""
    body, n, _ = encode_records([b"a", Record(value=b"b", timestamp_ms=42), b"c"])
    frame = encode_frame(body, n, 10, 1000)
    got = decode_records(batch_view(frame), 10, 1000, start_offset=11)
    assert [(r.offset, r.value, r.timestamp_ms) for r in got] == [(11, b"b", 42), (12, b"c", 1000)]


def test_murmur2_matches_kafka_vectors() -> None:
    """murmur2 gives Kafka's own test vectors (UtilsTest.testMurmur2)."""
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107
    assert partition_for_key(b"foobar", 4) == 2


def test_split_produce_request_zero_copy_and_fallback() -> None:
    """The records' bytes are found as a suffix; out-of-order encodings fall back correctly."""
    recs = [records_pb2.Record(value=b"v%d" % i, key=b"k") for i in range(5)]
    req = logstore_pb2.ProduceRequest(topic="t", partition=1, acks=2, records=recs, request_id=9)
    raw = req.SerializeToString()
    split = split_produce_request(raw)
    assert split.zero_copy and split.record_count == 5
    assert split.header.topic == "t" and split.header.request_id == 9
    expected = records_pb2.RecordBatch(records=recs).SerializeToString()
    assert bytes(split.records) == expected
    # The same request with a header field after the records (a legal encoding).
    tail = logstore_pb2.ProduceRequest(request_id=10).SerializeToString()
    split2 = split_produce_request(raw + tail)
    assert not split2.zero_copy
    assert bytes(split2.records) == expected and split2.header.request_id == 10


def test_split_produce_request_rejects_bad_input() -> None:
    """Empty batches and CRC mismatches are InvalidBatchError; bytes that are not a
    ProduceRequest (in the header fields or in the records) are InvalidRequestError."""
    with pytest.raises(InvalidBatchError, match="empty batch"):
        split_produce_request(logstore_pb2.ProduceRequest(topic="t").SerializeToString())
    for garbage in (b"\x7a\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x01t\x7a\x03\x0a\x05a"):
        with pytest.raises(InvalidRequestError, match="malformed"):
            split_produce_request(garbage)
    req = logstore_pb2.ProduceRequest(
        topic="t", records=[records_pb2.Record(value=b"x")], records_crc32c=1
    )
    with pytest.raises(InvalidBatchError, match="CRC32C"):
        split_produce_request(req.SerializeToString())
