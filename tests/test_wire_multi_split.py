"""split_multi_produce: the walk over a MultiProduceRequest's top-level fields
hands each batch on as a slice of the request (no copy), and agrees with a
``MultiProduceRequest`` parse on everything: what it takes, what it leaves
to the upb view, and what is refused."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from logstore.errors import InvalidRequestError
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import _produce, split_multi_produce
from logstore.wire._multi import _split_by_view
from logstore.wire._records import varint


def _request(batches: list[bytes], acks: int = pb.ACKS_LEADER, request_id: int = 7) -> bytes:
    return pb.MultiProduceRequest(
        acks=acks,  # type: ignore[arg-type]
        request_id=request_id,
        batches=[pb.ProduceRequest.FromString(b) for b in batches],
    ).SerializeToString()


def _batch(partition: int, size: int = 300) -> bytes:
    return pb.ProduceRequest(
        topic="t", partition=partition, request_id=partition, records=[]
    ).SerializeToString() + b"".join(
        b"\x7a" + varint(len(v)) + v for v in [b"\x12" + varint(size) + b"x" * size]
    )


def test_batches_are_slices_of_the_request_not_copies() -> None:
    batches = [_batch(p) for p in range(5)]
    raw = _request(batches)
    split = split_multi_produce(raw)
    assert (split.acks, split.request_id) == (pb.ACKS_LEADER, 7)
    assert [bytes(b) for b in split.batches] == batches
    for b in split.batches:
        assert isinstance(b, memoryview) and b.obj is raw


def _outcome(split: object, raw: bytes) -> tuple[int, int, list[bytes]] | str:
    try:
        s = split(raw)  # type: ignore[operator]
    except InvalidRequestError:
        return "refused"
    return s.acks, s.request_id, [bytes(b) for b in s.batches]


def _agree(raw: bytes) -> None:
    """The split (walk, or the view when the walk leaves it) says what the
    view's parse alone says: the same fields, batches, or refusal."""
    assert _outcome(split_multi_produce, raw) == _outcome(_split_by_view, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        _request([_batch(1)], acks=pb.ACKS_ALL, request_id=(1 << 64) - 1),  # a 10-byte varint
        _request([_batch(1)], acks=-1),  # negative int32: a 10-byte varint
        _request([_batch(1)], acks=pb.ACKS_NONE) + b"\x08\x02",  # a later acks wins
        _request([_batch(1)]) + b"\x18\x05",  # an unknown field (3, varint)
        _request([_batch(1)]) + b"\x7a\x05ab",  # a truncated batch
        _request([_batch(1)]) + b"\x10",  # a truncated varint
        _request([_batch(1)]) + b"\x08" + b"\xff" * 11,  # an overlong varint
        _request([_batch(1)]) + b"\x0a\x00",  # field 1 as length-delimited
        _request([_batch(1)]) + b"\x79",  # field 15 with wire type 1
        _request([_batch(1)]) + b"\x00",  # field number 0
        b"\x7a\x00",  # an empty batch (the batch's own split refuses it)
    ],
)
def test_the_split_agrees_with_a_parse(raw: bytes) -> None:
    _agree(raw)
    # The view itself reads the valid ones as a MultiProduceRequest parse does.
    try:
        m = pb.MultiProduceRequest.FromString(raw)
    except DecodeError:
        return
    ours = split_multi_produce(raw)
    assert (ours.acks, ours.request_id) == (int(m.acks), int(m.request_id))
    assert len(ours.batches) == len(m.batches)


@given(st.binary(max_size=48), st.lists(st.integers(0, 3), max_size=3))
def test_the_split_agrees_with_the_view_on_any_bytes(tail: bytes, parts: list[int]) -> None:
    _agree(tail)
    _agree(_request([_batch(p, 5) for p in parts]) + tail)


# -- the ProduceRequest header walk (_records_start) ---------------------------


def _records_start_reference(buf: memoryview) -> int | str | None:
    """The walk before its inline fast path (every key, value and length
    through _read_varint), kept as the reference it must agree with."""
    pos = 0
    try:
        for _ in range(_produce._MAX_HEADER_FIELDS):
            if pos >= len(buf):
                return len(buf)
            tag, after = _produce._read_varint(buf, pos)
            if tag in (_produce.RECORD_TAG, _produce.COMPRESSED_TAG):
                return pos
            wire_type = tag & 7
            if wire_type == 0:
                _, pos = _produce._read_varint(buf, after)
            elif wire_type == 1:
                pos = after + 8
            elif wire_type == 2:
                n, pos = _produce._read_varint(buf, after)
                pos += n
            elif wire_type == 5:
                pos = after + 4
            else:
                return None
        return None
    except InvalidRequestError:
        return "refused"


def _records_start(buf: memoryview) -> int | str | None:
    try:
        return _produce._records_start(buf)
    except InvalidRequestError:
        return "refused"


_HEADER = pb.ProduceRequest(
    topic="w5p-0",
    partition=517,
    acks=pb.ACKS_LEADER,
    request_id=123456,
    records_crc32c=0xDEADBEEF,
    base_timestamp_ms=1764700000000,
    max_timestamp_ms=-1,  # a 10-byte varint
    partition_key=b"k" * 200,  # a 2-byte length
).SerializeToString()


@given(st.binary(max_size=40), st.integers(0, len(_HEADER)))
def test_the_header_walk_agrees_with_the_reference(noise: bytes, cut: int) -> None:
    for raw in (noise, _HEADER + noise, _HEADER[:cut], _HEADER[:cut] + noise, b"\x7a" + noise):
        assert _records_start(memoryview(raw)) == _records_start_reference(memoryview(raw))
    assert _records_start(memoryview(_HEADER + b"\x7a\x02\x12\x00")) == len(_HEADER)
