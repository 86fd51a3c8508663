"""The stored max timestamp of a batch is the true maximum of its records'
timestamps whatever the producer sends in the optional ``max_timestamp_ms``
(issue 9, defect 7): time search (ListOffsets, Subscribe from a time,
``offset_for_time``) finds records in a batch whose later records are older."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logstore import Store
from logstore.errors import InvalidRequestError
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import records_pb2
from logstore.wire import (
    NO_TIMESTAMP_MS,
    Record,
    count_records,
    decode_header,
    encode_records,
    max_record_timestamp,
    split_produce_request,
    uniform_record_count,
)
from logstore.wire import _columns as columns_mod
from logstore.wire._record_views import inspect_records
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import connect, create_topic

T = 1_700_000_000_000


def _records(*timestamps: int) -> list[records_pb2.Record]:
    return [records_pb2.Record(value=b"v%d" % i, timestamp_ms=t) for i, t in enumerate(timestamps)]


def _raw(*timestamps: int) -> bytes:
    return records_pb2.RecordBatch(records=_records(*timestamps)).SerializeToString()


# -- the wire functions -------------------------------------------------------------------
def test_max_record_timestamp_is_the_maximum_in_any_order() -> None:
    """max_record_timestamp is the largest carried timestamp, wherever it sits."""
    assert max_record_timestamp(_raw(T + 200, T + 100)) == T + 200
    assert max_record_timestamp(_raw(T + 100, 0, T + 300, T - 5)) == T + 300
    assert max_record_timestamp(_raw(-50, -7)) == -7
    assert count_records(_raw(T, T, 0)) == 3


def test_inspect_records_counts_any_sizes() -> None:
    """The record count is right for same-size records (numpy check) and mixed sizes (a view)."""
    same = encode_records([b"abc"] * 300)[0]
    mixed = encode_records([b"a" * (i % 200) for i in range(300)])[0]
    assert uniform_record_count(same) == 300 and uniform_record_count(mixed) is None
    assert inspect_records(same) == (300, NO_TIMESTAMP_MS)
    assert inspect_records(mixed) == (300, NO_TIMESTAMP_MS)
    assert inspect_records(_raw(T + 3, T + 1)) == (2, T + 3)
    # a same-size run whose last record is cut short is not uniform
    assert uniform_record_count(same[:-1]) is None
    # anything but records (here a field 1 varint after them): None
    assert inspect_records(same + b"\x08\x01") is None


@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    copies=st.integers(1, 1500),
    view=st.booleans(),
    cut=st.integers(-2, 2),
)
@example(sizes=[20, 10, 30], copies=3, view=False, cut=0)  # lengths add up; heads differ
@example(sizes=[20, 10, 30], copies=3, view=True, cut=0)
@settings(max_examples=60, deadline=None)
def test_uniform_record_count_is_the_same_below_and_above_the_bytes_compare_bound(
    sizes: list[int], copies: int, view: bool, cut: int
) -> None:
    """uniform_record_count's byte-string compare (up to 1,024 records) answers
    what its numpy compare answers, for bytes and memoryviews of a request,
    uniform runs, mixed sizes and runs cut short or padded."""
    values = [bytes([i % 251]) * n for i, n in enumerate(sizes)] * (copies // len(sizes) + 1)
    raw = b"\x12\x03abc" + encode_records(values[:copies])[0]
    end = len(raw) + min(cut, 0)
    buf: bytes | memoryview = memoryview(raw) if view else raw
    got = uniform_record_count(buf, 5, end)
    with patch.object(columns_mod, "_BYTES_COMPARE_MAX_RECORDS", -1):
        want = uniform_record_count(buf, 5, end)
    assert got == want
    if len(set(sizes)) == 1 and cut >= 0:
        assert got == copies
    if len(set(sizes[:copies])) > 1:
        assert got is None


def test_max_record_timestamp_none_carried() -> None:
    """Records without timestamps (0 = the batch's) give NO_TIMESTAMP_MS, below every time."""
    assert max_record_timestamp(_raw(0, 0)) == NO_TIMESTAMP_MS
    assert max_record_timestamp(encode_records([b"a", b"b"])[0]) == NO_TIMESTAMP_MS


@pytest.mark.parametrize("client_max", [None, T, T + 150, T + 10_000])
def test_split_ignores_the_clients_max(client_max: int | None) -> None:
    """split_produce_request computes the max from the records, whatever max_timestamp_ms says."""
    req = pb.ProduceRequest(
        topic="t", partition=0, base_timestamp_ms=T, records=_records(T + 200, T + 100)
    )
    if client_max is not None:
        req.max_timestamp_ms = client_max
    split = split_produce_request(req.SerializeToString())
    assert split.zero_copy and split.record_count == 2
    assert split.max_timestamp_ms == T + 200


def test_split_slow_path_computes_the_max() -> None:
    """A request whose records are not its last field (slow path) gets the true max too."""
    req = pb.ProduceRequest(topic="t", partition=0, records=_records(T + 5, T + 9, T + 1))
    raw = req.SerializeToString() + pb.ProduceRequest(topic="t").SerializeToString()
    split = split_produce_request(raw)
    assert not split.zero_copy and split.record_count == 3
    assert split.max_timestamp_ms == T + 9


def test_split_still_rejects_bad_header_names() -> None:
    """Validating records through the views still rejects a header name that is not UTF-8."""
    rec = records_pb2.Record(value=b"v", timestamp_ms=T)
    body = rec.SerializeToString() + b"\x22\x04\x0a\x02\xff\xfe"  # header key = invalid UTF-8
    raw = pb.ProduceRequest(topic="t", partition=0).SerializeToString()
    raw += b"\x7a" + bytes([len(body)]) + body
    with pytest.raises(InvalidRequestError, match="malformed"):
        split_produce_request(raw)


# -- embedded ------------------------------------------------------------------------------
def test_embedded_append_raw_without_max(tmp_path: Path) -> None:
    """Store.append_raw with max_timestamp_ms unset stores the records' max and
    offset_for_time finds the batch."""
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append_raw("t", 0, _raw(T + 200, T + 100), 2, base_timestamp_ms=T)
        store.append_raw("t", 0, _raw(0, 0), 2, base_timestamp_ms=T + 1000)
        head = decode_header(store.read_frames("t", 0, 0, 1).data)
        assert (head.base_timestamp_ms, head.max_timestamp_ms) == (T, T + 200)
        for ts in (T - 1, T + 50, T + 150, T + 200):
            assert store.offset_for_time("t", 0, ts).offset == 0, ts
        assert store.offset_for_time("t", 0, T + 201).offset == 2
        assert store.offset_for_time("t", 0, T + 1001) is None


def test_embedded_append_records_max(tmp_path: Path) -> None:
    """Store.append of Records with out-of-order timestamps is found by time too."""
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append("t", 0, [Record(b"a", timestamp_ms=T + 200), Record(b"b")], timestamp_ms=T)
        assert store.offset_for_time("t", 0, T + 150).offset == 0
        assert decode_header(store.read_frames("t", 0, 0, 1).data).max_timestamp_ms == T + 200


# -- through a real broker, raw gRPC ---------------------------------------------------
@pytest.fixture(scope="module")
def broker_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("maxts") / "data")
    try:
        yield b
    finally:
        assert b.stop() == 0


@pytest.fixture
def broker_stub(broker_proc: BrokerProcess) -> Iterator[object]:
    with connect(broker_proc) as stub:
        yield stub


def _produce_two_batches(stub: object, topic: str) -> None:
    create_topic(stub, topic)  # type: ignore[arg-type]
    # max_timestamp_ms left unset, as a client written from the .proto does
    first = pb.ProduceRequest(
        topic=topic, partition=0, base_timestamp_ms=T, records=_records(T + 200, T + 100)
    )
    second = pb.ProduceRequest(
        topic=topic, partition=0, base_timestamp_ms=T + 1000, records=_records(0, 0)
    )
    assert not first.HasField("max_timestamp_ms")
    assert stub.Produce(first, timeout=10).base_offset == 0  # type: ignore[attr-defined]
    assert stub.Produce(second, timeout=10).base_offset == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("ts", [T + 50, T + 150, T + 200])
def test_broker_list_offsets_by_time(broker_stub: object, ts: int) -> None:
    """ListOffsets by time finds offset 0 when the batch's max was left unset."""
    topic = f"lo-{ts - T}"
    _produce_two_batches(broker_stub, topic)
    resp = broker_stub.ListOffsets(  # type: ignore[attr-defined]
        pb.ListOffsetsRequest(topic=topic, timestamp_ms=ts), timeout=10
    )
    (po,) = resp.offsets
    assert (po.offset, po.timestamp_ms, po.found) == (0, T + 200, True)


def test_broker_subscribe_from_time(broker_stub: object) -> None:
    """Subscribe from T+150 starts at the batch holding the record at T+200,
    whose stored max timestamp is T+200."""
    topic = "sub"
    _produce_two_batches(broker_stub, topic)
    stream = broker_stub.Subscribe(  # type: ignore[attr-defined]
        pb.SubscribeRequest(topic=topic, partition=0, timestamp_ms=T + 150), timeout=10
    )
    try:
        first = next(iter(stream))
    finally:
        stream.cancel()
    batch = first.batches[0]
    assert batch.base_offset == 0
    assert (batch.base_timestamp_ms, batch.max_timestamp_ms) == (T, T + 200)
    assert [r.timestamp_ms for r in batch.records] == [T + 200, T + 100]


def test_broker_rejects_malformed_records(broker_proc: BrokerProcess) -> None:
    """A record whose header name is not UTF-8 is INVALID_ARGUMENT, as before."""
    with connect(broker_proc) as stub:
        create_topic(stub, "bad")
    body = records_pb2.Record(value=b"v").SerializeToString() + b"\x22\x04\x0a\x02\xff\xfe"
    raw = pb.ProduceRequest(topic="bad", partition=0).SerializeToString()
    raw += b"\x7a" + bytes([len(body)]) + body
    with grpc.insecure_channel(broker_proc.grpc_address) as channel:
        produce = channel.unary_unary(
            "/logstore.v1.LogStore/Produce",
            request_serializer=None,
            response_deserializer=pb.ProduceResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            produce(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_append_time_is_not_the_max_when_every_record_has_its_own_time(tmp_path: Path) -> None:
    """Store.append of records with old CreateTimes and no batch timestamp stores the
    records' max, not the append time, so a search by an old time finds the next batch."""
    with Store.open(tmp_path) as store:
        store.create_topic("t")
        store.append("t", 0, [Record(b"a", timestamp_ms=T + 100), Record(b"b", timestamp_ms=T)])
        store.append("t", 0, [Record(b"c", timestamp_ms=T + 500)])
        store.append("t", 0, [Record(b"d", timestamp_ms=T + 50), Record(b"e")])  # one without
        frames = store.read_frames("t", 0, 0, 1 << 20).data
        first = decode_header(frames)
        assert first.max_timestamp_ms == T + 100
        pos = first.frame_size
        pos += decode_header(frames, pos).frame_size
        third = decode_header(frames, pos)
        assert third.max_timestamp_ms == third.base_timestamp_ms > T + 500  # "e" has append time
        assert store.offset_for_time("t", 0, T + 200).offset == 2
        assert store.partition("t", 0).segments[0].max_timestamp_ms == third.max_timestamp_ms
