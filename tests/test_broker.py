"""Integration tests of the gRPC broker: a real broker process on port 0, raw stubs."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import records_pb2
from logstore.wire import partition_for_key
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import (
    ALL,
    LEADER,
    NONE,
    connect,
    create_topic,
    decode,
    fetch_all,
    produce,
    records,
    retry_info,
    scrape,
    wait_until,
)

_names = itertools.count()


def topic_name(prefix: str = "t") -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the read-only-ish tests of this module (each uses its own topics)."""
    b = start_broker(tmp_path_factory.mktemp("shared") / "data")
    try:
        yield b
    finally:
        assert b.stop() == 0


@pytest.fixture
def stub(shared_broker: BrokerProcess) -> Iterator[object]:
    with connect(shared_broker) as s:
        yield s


# -- produce and fetch -------------------------------------------------------------


@pytest.mark.parametrize("acks", [pb.ACKS_UNSPECIFIED, NONE, LEADER, ALL])
def test_produce_fetch_round_trip(stub, acks: int) -> None:
    """A batch produced with each acks value is fetched back with the same values and offsets."""
    t = topic_name()
    create_topic(stub, t)
    expected: list[tuple[int, bytes]] = []
    for n in range(3):
        values = [f"{n}-{i}".encode() for i in range(5)]
        resp = produce(stub, t, values, acks=acks)
        if acks == NONE:
            assert resp.base_offset == -1
        else:
            assert resp.base_offset == 5 * n
        expected.extend((5 * n + i, v) for i, v in enumerate(values))
    wait_until(lambda: len(fetch_all(stub, t)) == 15)
    assert fetch_all(stub, t) == expected


def test_fetch_returns_stored_batches_with_broker_header(stub) -> None:
    """Fetched batches carry the broker-written header: offsets, counts, timestamps, CRC."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"a", b"b"], base_timestamp_ms=1_700_000_000_000)
    produce(stub, t, [b"c"])
    resp = stub.Fetch(pb.FetchRequest(topic=t, partition=0, offset=0), timeout=10)
    assert [b.base_offset for b in resp.batches] == [0, 2]
    assert [b.record_count for b in resp.batches] == [2, 1]
    assert resp.batches[0].base_timestamp_ms == 1_700_000_000_000
    assert resp.batches[1].base_timestamp_ms > 1_700_000_000_000
    assert all(b.crc32c != 0 and b.batch_length > 66 for b in resp.batches)
    assert resp.high_watermark == 3
    assert resp.log_start_offset == 0
    # An offset inside a batch returns the whole batch; the client skips.
    mid = stub.Fetch(pb.FetchRequest(topic=t, partition=0, offset=1), timeout=10)
    assert mid.batches[0].base_offset == 0
    assert decode(mid, 1) == [(1, b"b"), (2, b"c")]


def test_fetch_at_end_is_empty(stub) -> None:
    """Reading at exactly the log end offset is valid and returns no batches."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"x"])
    resp = stub.Fetch(pb.FetchRequest(topic=t, partition=0, offset=1), timeout=10)
    assert list(resp.batches) == [] and resp.high_watermark == 1


def test_max_bytes_still_returns_one_whole_batch(stub) -> None:
    """A batch larger than max_bytes is still returned whole, so a consumer never gets stuck."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"x" * 5000])
    produce(stub, t, [b"y" * 5000])
    resp = stub.Fetch(pb.FetchRequest(topic=t, partition=0, offset=0, max_bytes=100), timeout=10)
    assert len(resp.batches) == 1 and resp.batches[0].records[0].value == b"x" * 5000


def test_partition_key_routes_by_murmur2(stub) -> None:
    """partition_key sends the whole batch to (murmur2(key) & 0x7fffffff) % partitions."""
    t = topic_name()
    create_topic(stub, t, partitions=4)
    req = pb.ProduceRequest(topic=t, partition_key=b"foobar", records=records([b"v1", b"v2"]))
    resp = stub.Produce(req, timeout=10)
    assert resp.partition == partition_for_key(b"foobar", 4) == 2
    assert fetch_all(stub, t, 2) == [(0, b"v1"), (1, b"v2")]


def test_records_keep_keys_headers_and_nulls(stub) -> None:
    """Keys, headers, null keys and null values survive the round trip byte for byte."""
    t = topic_name()
    create_topic(stub, t)
    recs = [
        records_pb2.Record(key=b"k", value=b"v", headers=[records_pb2.Header(key="h", value=b"1")]),
        records_pb2.Record(value=b""),
        records_pb2.Record(key=b""),
        records_pb2.Record(timestamp_ms=42),
    ]
    stub.Produce(pb.ProduceRequest(topic=t, partition=0, records=recs), timeout=10)
    resp = stub.Fetch(pb.FetchRequest(topic=t, partition=0, offset=0), timeout=10)
    got = list(resp.batches[0].records)
    assert got == recs
    assert not got[1].HasField("key") and got[1].HasField("value")
    assert got[2].HasField("key") and not got[2].HasField("value")


def test_records_crc_checked_when_present(stub) -> None:
    """A produce request whose records_crc32c matches is stored; a wrong one is rejected."""
    from logstore.wire import crc32c

    t = topic_name()
    create_topic(stub, t)
    recs = records([b"a", b"b"])
    body = records_pb2.RecordBatch(records=recs).SerializeToString()
    ok = stub.Produce(
        pb.ProduceRequest(topic=t, partition=0, records=recs, records_crc32c=crc32c(body)),
        timeout=10,
    )
    assert ok.base_offset == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.Produce(
            pb.ProduceRequest(topic=t, partition=0, records=recs, records_crc32c=crc32c(body) ^ 1),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CRC" in err.value.details()
    assert fetch_all(stub, t) == [(0, b"a"), (1, b"b")]


# -- long poll -------------------------------------------------------------------


def test_long_poll_wakes_on_append(stub) -> None:
    """A Fetch waiting at the end returns as soon as a batch is appended, well before max_wait."""
    t = topic_name()
    create_topic(stub, t)
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        fut = pool.submit(
            stub.Fetch,
            pb.FetchRequest(topic=t, partition=0, offset=0, min_bytes=1, max_wait_ms=20_000),
            timeout=30,
        )
        time.sleep(0.5)
        assert not fut.done()
        produce(stub, t, [b"wake"])
        resp = fut.result(timeout=10)
        elapsed = time.monotonic() - t0
    assert decode(resp) == [(0, b"wake")]
    assert elapsed < 5


def test_long_poll_times_out_empty(stub) -> None:
    """A Fetch with nothing to read waits about max_wait_ms and then returns no batches."""
    t = topic_name()
    create_topic(stub, t)
    t0 = time.monotonic()
    resp = stub.Fetch(
        pb.FetchRequest(topic=t, partition=0, offset=0, min_bytes=1, max_wait_ms=400), timeout=10
    )
    elapsed = time.monotonic() - t0
    assert list(resp.batches) == []
    assert 0.35 <= elapsed < 3


# -- subscribe -------------------------------------------------------------------


def test_subscribe_tails_from_earliest(stub) -> None:
    """Subscribe from the earliest offset gets stored batches, then batches appended later."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"old"])
    call = stub.Subscribe(
        pb.SubscribeRequest(topic=t, partition=0, position=pb.START_POSITION_EARLIEST),
        timeout=20,
    )
    try:
        first = next(call)
        assert decode(first) == [(0, b"old")]
        produce(stub, t, [b"new1", b"new2"])
        second = next(call)
        assert decode(second) == [(1, b"new1"), (2, b"new2")]
        assert second.high_watermark == 3
    finally:
        call.cancel()


def test_subscribe_from_latest_offset_and_timestamp(stub) -> None:
    """Subscribe honours latest, an explicit offset and a timestamp as its start."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"a"], base_timestamp_ms=1000)
    produce(stub, t, [b"b"], base_timestamp_ms=2000)
    produce(stub, t, [b"c"], base_timestamp_ms=3000)

    def first(**start: object) -> list[tuple[int, bytes]]:
        call = stub.Subscribe(pb.SubscribeRequest(topic=t, partition=0, **start), timeout=20)
        try:
            return decode(next(call))
        finally:
            call.cancel()

    assert first(offset=1)[0] == (1, b"b")
    assert first(timestamp_ms=2500)[0] == (2, b"c")
    latest = stub.Subscribe(
        pb.SubscribeRequest(topic=t, partition=0, position=pb.START_POSITION_LATEST), timeout=20
    )
    try:
        time.sleep(0.3)
        produce(stub, t, [b"d"])
        assert decode(next(latest)) == [(3, b"d")]
    finally:
        latest.cancel()


def test_subscribe_respects_flow_control(tmp_path: Path) -> None:
    """A subscriber that stops reading stops the pushes: it then receives every batch in order."""
    b = start_broker(tmp_path / "data")
    try:
        with connect(b) as s:
            t = topic_name()
            create_topic(s, t)
            call = s.Subscribe(pb.SubscribeRequest(topic=t, partition=0), timeout=60)
            value = b"z" * 60_000
            for _ in range(400):  # 24 MB: far more than the HTTP/2 and socket windows
                produce(s, t, [value], acks=LEADER)
            # The subscriber read nothing so far; the broker must not have
            # pushed everything into memory: its sent-bytes counter stays
            # well below the 24 MB produced (~4 MB fit in the windows).
            time.sleep(0.5)
            sent = _metric(scrape(b), 'logstore_fetch_bytes_total{method="Subscribe"}')
            print(f"subscribe sent {sent:.0f} bytes before the reader read")
            assert sent < 8_000_000
            got = []
            for msg in call:
                got.extend(o for o, _ in decode(msg))
                if got and got[-1] == 399:
                    break
            call.cancel()
            assert got == list(range(400))
    finally:
        assert b.stop() == 0


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name) and name.endswith("}")):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- produce stream ----------------------------------------------------------------


def test_produce_stream_replies_in_order_with_own_status(stub) -> None:
    """ProduceStream answers in order, echoing request_id; a bad batch gets its own status."""
    t = topic_name()
    create_topic(stub, t)
    reqs = [
        pb.ProduceRequest(topic=t, partition=0, request_id=10, records=records([b"a"])),
        pb.ProduceRequest(topic=t, partition=0, request_id=11, records=[]),  # empty batch
        pb.ProduceRequest(
            topic="no-such-topic", partition=0, request_id=12, records=records([b"x"])
        ),
        pb.ProduceRequest(topic=t, partition=0, request_id=13, records=records([b"b", b"c"])),
        pb.ProduceRequest(
            topic=t, partition=0, request_id=14, acks=LEADER, records=records([b"d"])
        ),
    ]
    replies = list(stub.ProduceStream(iter(reqs), timeout=20))
    assert [r.request_id for r in replies] == [10, 11, 12, 13, 14]
    assert [r.status.code for r in replies] == [
        grpc.StatusCode.OK.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.OK.value[0],
        grpc.StatusCode.OK.value[0],
    ]
    assert "empty" in replies[1].status.message
    assert [r.base_offset for r in replies if r.status.code == 0] == [0, 1, 3]
    assert fetch_all(stub, t) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]


def test_produce_stream_many_batches(stub) -> None:
    """A long ProduceStream with acks=ALL keeps order and contiguous offsets."""
    t = topic_name()
    create_topic(stub, t)
    reqs = (
        pb.ProduceRequest(topic=t, partition=0, request_id=i, records=records([b"%d" % i] * 3))
        for i in range(500)
    )
    replies = list(stub.ProduceStream(reqs, timeout=60))
    assert [r.request_id for r in replies] == list(range(500))
    assert [r.base_offset for r in replies] == [3 * i for i in range(500)]


# -- producers -------------------------------------------------------------------


def test_idempotent_retry_is_not_duplicated(stub) -> None:
    """Sending the same idempotent batch twice stores it once and answers the original offset."""
    t = topic_name()
    create_topic(stub, t)
    init = stub.InitProducer(pb.InitProducerRequest(), timeout=10)
    assert init.producer_id >= 1
    fields = {"producer_id": init.producer_id, "producer_epoch": init.producer_epoch}
    first = produce(stub, t, [b"a", b"b"], base_sequence=0, **fields)
    again = produce(stub, t, [b"a", b"b"], base_sequence=0, **fields)
    assert (first.base_offset, first.duplicate) == (0, False)
    assert (again.base_offset, again.duplicate) == (0, True)
    nxt = produce(stub, t, [b"c"], base_sequence=2, **fields)
    assert nxt.base_offset == 2
    assert fetch_all(stub, t) == [(0, b"a"), (1, b"b"), (2, b"c")]


# -- admin -----------------------------------------------------------------------


def test_admin_calls(stub) -> None:
    """Create, list, describe, alter, grow, delete records, list offsets and delete all work."""
    t = topic_name("admin")
    info = create_topic(stub, t, partitions=2, **{"retention.ms": "60000"})
    assert info.name == t and info.partitions == 2
    assert info.config["retention_ms"] == "60000"
    assert info.config["cleanup_policy"] == "delete"
    names = [x.name for x in stub.ListTopics(pb.ListTopicsRequest(), timeout=10).topics]
    assert t in names
    for i in range(3):
        produce(stub, t, [b"v%d" % i], base_timestamp_ms=1000 * (i + 1))
    d = stub.DescribeTopic(pb.DescribeTopicRequest(name=t), timeout=10)
    assert [(p.partition, p.log_start_offset, p.log_end_offset) for p in d.partitions] == [
        (0, 0, 3),
        (1, 0, 0),
    ]
    assert d.partitions[0].size_bytes > 0 and d.partitions[0].segment_count >= 1
    altered = stub.AlterTopicConfig(
        pb.AlterTopicConfigRequest(
            name=t, set={"retention_bytes": "1000000"}, reset=["retention_ms"]
        ),
        timeout=10,
    ).topic
    assert altered.config["retention_bytes"] == "1000000"
    assert altered.config["retention_ms"] == str(7 * 24 * 3600 * 1000)
    grown = stub.CreatePartitions(pb.CreatePartitionsRequest(name=t, partitions=3), timeout=10)
    assert grown.topic.partitions == 3
    deleted = stub.DeleteRecords(
        pb.DeleteRecordsRequest(topic=t, partition=0, before_offset=1), timeout=10
    )
    assert deleted.log_start_offset == 1

    def offsets(**spec: object) -> list[tuple[int, int, bool]]:
        resp = stub.ListOffsets(pb.ListOffsetsRequest(topic=t, partitions=[0], **spec), timeout=10)
        return [(o.partition, o.offset, o.found) for o in resp.offsets]

    assert offsets(position=pb.OFFSET_SPEC_EARLIEST) == [(0, 1, True)]
    assert offsets(position=pb.OFFSET_SPEC_LATEST) == [(0, 3, True)]
    assert offsets() == [(0, 3, True)]
    assert offsets(timestamp_ms=2500) == [(0, 2, True)]
    assert offsets(timestamp_ms=10_000) == [(0, 3, False)]
    by_time = stub.ListOffsets(pb.ListOffsetsRequest(topic=t, timestamp_ms=2500), timeout=10)
    assert len(by_time.offsets) == 3
    assert by_time.offsets[0].timestamp_ms == 3000
    stub.DeleteTopic(pb.DeleteTopicRequest(name=t), timeout=10)
    names = [x.name for x in stub.ListTopics(pb.ListTopicsRequest(), timeout=10).topics]
    assert t not in names


def test_internal_topics_not_creatable(stub) -> None:
    """Names starting with __ are reserved: CreateTopic refuses them, ListTopics hides them."""
    with pytest.raises(grpc.RpcError) as err:
        create_topic(stub, "__consumer_offsets")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    topics = stub.ListTopics(pb.ListTopicsRequest(), timeout=10).topics
    assert not any(x.name.startswith("__") for x in topics)


# -- error statuses --------------------------------------------------------------


def _err(fn: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, timeout=10, **kwargs)
    return err.value


def test_error_statuses(stub) -> None:
    """Every kind of bad input gets its precise status and a message naming the problem."""
    t = topic_name("err")
    create_topic(stub, t, partitions=2, max_batch_bytes="2000")
    produce(stub, t, [b"a", b"b"])
    mk = pb.ProduceRequest
    cases: list[tuple[object, object, grpc.StatusCode, str]] = [
        (
            stub.Produce,
            mk(topic="nope", partition=0, records=records([b"x"])),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            stub.Produce,
            mk(topic=t, partition=7, records=records([b"x"])),
            grpc.StatusCode.NOT_FOUND,
            "partition",
        ),
        (stub.Produce, mk(topic=t, partition=0), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            stub.Produce,
            mk(topic=t, partition=0, records=records([b"x" * 3000])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_batch_bytes",
        ),
        (
            stub.Produce,
            mk(topic=t, partition=0, partition_key=b"k", records=records([b"x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "partition_key",
        ),
        (
            stub.Produce,
            mk(topic=t, records=records([b"x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "partition_key",
        ),
        (
            stub.Fetch,
            pb.FetchRequest(topic=t, partition=0, offset=5),
            grpc.StatusCode.OUT_OF_RANGE,
            "0",
        ),
        (
            stub.Fetch,
            pb.FetchRequest(topic=t, partition=9, offset=0),
            grpc.StatusCode.NOT_FOUND,
            "9",
        ),
        (
            stub.Fetch,
            pb.FetchRequest(topic="nope", partition=0, offset=0),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name="bad/name", partitions=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad/name",
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name=t, partitions=1),
            grpc.StatusCode.ALREADY_EXISTS,
            t,
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name=topic_name(), config={"colour": "red"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "colour",
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name=topic_name(), config={"retention_ms": "soon"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "retention_ms",
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name=topic_name(), config={"cleanup_policy": "compacted"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "compacted",
        ),
        (
            stub.CreateTopic,
            pb.CreateTopicRequest(name=topic_name(), config={"max_batch_bytes": str(100 << 20)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_batch_bytes",
        ),
        (
            stub.AlterTopicConfig,
            pb.AlterTopicConfigRequest(name=t, set={"segment_bytes": "-5"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "segment_bytes",
        ),
        (
            stub.AlterTopicConfig,
            pb.AlterTopicConfigRequest(name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (stub.DeleteTopic, pb.DeleteTopicRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            stub.DescribeTopic,
            pb.DescribeTopicRequest(name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            stub.CreatePartitions,
            pb.CreatePartitionsRequest(name=t, partitions=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "2",
        ),
        (
            stub.DeleteRecords,
            pb.DeleteRecordsRequest(topic=t, partition=0, before_offset=99),
            grpc.StatusCode.OUT_OF_RANGE,
            "2",
        ),
        (
            stub.ListOffsets,
            pb.ListOffsetsRequest(topic=t, partitions=[5]),
            grpc.StatusCode.NOT_FOUND,
            "5",
        ),
        (
            stub.Subscribe,
            pb.SubscribeRequest(topic=t, partition=0, offset=50),
            grpc.StatusCode.OUT_OF_RANGE,
            "0",
        ),
    ]
    for fn, req, code, needle in cases:
        if fn is stub.Subscribe:
            with pytest.raises(grpc.RpcError) as exc_info:
                next(stub.Subscribe(req, timeout=10))
            err = exc_info.value
        else:
            err = _err(fn, req)
        assert err.code() == code, (req, err.details())
        assert needle in err.details(), (req, err.details())
    # Nothing already stored was affected.
    assert fetch_all(stub, t) == [(0, b"a"), (1, b"b")]


def test_out_of_range_message_names_the_range(stub) -> None:
    """OUT_OF_RANGE says which offsets are valid (log start and end)."""
    t = topic_name()
    create_topic(stub, t)
    produce(stub, t, [b"a"] * 4)
    stub.DeleteRecords(pb.DeleteRecordsRequest(topic=t, partition=0, before_offset=2), timeout=10)
    err = _err(stub.Fetch, pb.FetchRequest(topic=t, partition=0, offset=1))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "2" in err.details() and "4" in err.details()


def test_malformed_produce_request(shared_broker: BrokerProcess) -> None:
    """Bytes that are not a ProduceRequest are INVALID_ARGUMENT, not a crash."""
    with grpc.insecure_channel(shared_broker.grpc_address) as ch:
        call = ch.unary_unary("/logstore.v1.LogStore/Produce")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x7a\xff\xff\xff\x0f\x01", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in err.value.details()


def test_request_above_max_request_bytes(stub) -> None:
    """A request above max_request_bytes is RESOURCE_EXHAUSTED from gRPC, with no retry hint."""
    t = topic_name()
    create_topic(stub, t)
    err = _err(
        stub.Produce, pb.ProduceRequest(topic=t, partition=0, records=records([b"x" * (5 << 20)]))
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_info(err) is None


# -- limits ----------------------------------------------------------------------


def test_limits_answer_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    """Past the waiter and subscription bounds: RESOURCE_EXHAUSTED with RetryInfo, at once."""
    b = start_broker(
        tmp_path / "data",
        env={
            "LOGSTORE_MAX_LONG_POLL_WAITERS": "1",
            "LOGSTORE_MAX_SUBSCRIPTIONS": "1",
            "LOGSTORE_RETRY_AFTER_MS": "250",
        },
    )
    try:
        with connect(b) as s:
            t = topic_name()
            create_topic(s, t)
            poll = pb.FetchRequest(topic=t, partition=0, offset=0, min_bytes=1, max_wait_ms=5000)
            first = s.Fetch.future(poll, timeout=20)
            wait_until(lambda: "logstore_long_poll_waiters 1.0" in scrape(b))
            err = _err(s.Fetch, poll)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = retry_info(err)
            assert info is not None and info.retry_delay.ToMilliseconds() == 250
            assert "max_long_poll_waiters" in err.details()
            produce(s, t, [b"x"])
            assert decode(first.result(timeout=10)) == [(0, b"x")]

            sub = s.Subscribe(pb.SubscribeRequest(topic=t, partition=0), timeout=20)
            next(sub)
            with pytest.raises(grpc.RpcError) as exc_info:
                next(s.Subscribe(pb.SubscribeRequest(topic=t, partition=0), timeout=10))
            assert exc_info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_info(exc_info.value) is not None
            sub.cancel()
            text = scrape(b)
            assert 'logstore_rejected_requests_total{reason="max_subscriptions"} 1.0' in text
            assert 'logstore_rejected_requests_total{reason="max_long_poll_waiters"} 1.0' in text
    finally:
        assert b.stop() == 0


def test_concurrent_requests_bound(tmp_path: Path) -> None:
    """Past max_concurrent_requests a call is refused at once with RetryInfo, then served again."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_MAX_CONCURRENT_REQUESTS": "2"})
    try:
        with connect(b) as s:
            t = topic_name()
            create_topic(s, t)
            # Two open ProduceStreams are two working requests (a parked long
            # poll no longer counts: it holds a waiter slot instead).
            gates = [threading.Event() for _ in range(2)]

            def requests(gate: threading.Event) -> Iterator[pb.ProduceRequest]:
                yield pb.ProduceRequest(topic=t, partition=0, records=records([b"x"]))
                gate.wait(20)

            held = [s.ProduceStream(requests(g), timeout=20) for g in gates]
            for stream in held:
                next(stream)
            wait_until(lambda: "logstore_inflight_requests 2.0" in scrape(b))
            t0 = time.monotonic()
            err = _err(s.ListTopics, pb.ListTopicsRequest())
            assert time.monotonic() - t0 < 1
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_info(err) is not None and "max_concurrent_requests" in err.details()
            for gate, stream in zip(gates, held, strict=True):
                gate.set()
                assert list(stream) == []
            wait_until(lambda: "logstore_inflight_requests 0.0" in scrape(b))
            assert s.ListTopics(pb.ListTopicsRequest(), timeout=10).topics
    finally:
        assert b.stop() == 0


def test_inflight_produce_bytes_bound(tmp_path: Path) -> None:
    """Produce above max_inflight_produce_bytes is refused with RetryInfo; the rest is stored."""
    b = start_broker(
        tmp_path / "data",
        env={
            "LOGSTORE_MAX_REQUEST_BYTES": str(1_200_000),
            "LOGSTORE_MAX_INFLIGHT_PRODUCE_BYTES": str(2_400_000),
        },
    )
    try:
        with connect(b) as s:
            t = topic_name()
            create_topic(s, t)
            req = pb.ProduceRequest(topic=t, partition=0, records=records([b"x" * 1000] * 1000))
            ok = refused = 0
            with contextlib.ExitStack() as stack:
                stubs = [stack.enter_context(connect(b)) for _ in range(8)]
                # Bursts of 40 requests of ~1 MB over 8 connections: at most
                # two fit in the bound. A burst can still be served one by
                # one by chance, so up to 5 bursts.
                for _ in range(5):
                    futures = [x.Produce.future(req, timeout=30) for x in stubs for _ in range(5)]
                    for f in futures:
                        try:
                            f.result()
                            ok += 1
                        except grpc.RpcError as err:
                            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                            assert retry_info(err) is not None
                            assert "max_inflight_produce_bytes" in err.details()
                            refused += 1
                    if refused:
                        break
            assert ok > 0 and refused > 0
            assert len(fetch_all(s, t)) == 1000 * ok
            text = scrape(b)
            assert 'logstore_rejected_requests_total{reason="max_inflight_produce_bytes"}' in text
    finally:
        assert b.stop() == 0


# -- tooling -----------------------------------------------------------------------


def test_health_and_reflection(stub, shared_broker: BrokerProcess) -> None:
    """grpc.health.v1 reports SERVING and reflection lists the LogStore service."""
    with grpc.insecure_channel(shared_broker.grpc_address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "logstore.v1.LogStore"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(
            refl.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="logstore.v1.LogStore"
                        ),
                    ]
                ),
                timeout=10,
            )
        )
        names = [s.name for s in replies[0].list_services_response.service]
        assert "logstore.v1.LogStore" in names
        assert replies[1].file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint(stub, shared_broker: BrokerProcess) -> None:
    """The metrics port serves request counters, latency histograms and partition offsets."""
    t = topic_name("m")
    create_topic(stub, t)
    produce(stub, t, [b"a", b"b", b"c"])
    fetch_all(stub, t)
    text = scrape(shared_broker)
    assert 'logstore_requests_total{code="OK",method="Produce"}' in text
    assert "logstore_request_seconds_bucket" in text
    assert f'logstore_produce_records_total{{topic="{t}"}} 3.0' in text
    assert f'logstore_partition_log_end_offset{{partition="0",topic="{t}"}} 3.0' in text
    assert "logstore_fsync_wait_seconds_count" in text
    assert "logstore_open_files" in text
    assert "logstore_inflight_produce_bytes" in text


def test_concurrent_producers_contiguous_offsets(stub) -> None:
    """Many concurrent acks=ALL producers on one partition get distinct, contiguous offsets."""
    t = topic_name()
    create_topic(stub, t)
    lock = threading.Lock()
    bases: list[int] = []

    def one(i: int) -> None:
        r = produce(stub, t, [b"%d" % i] * 2)
        with lock:
            bases.append(r.base_offset)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(100)))
    assert sorted(bases) == list(range(0, 200, 2))
