"""Unit tests of logstore.client with no broker: batching, partitioning, retries,
idempotence, error translation and the columnar decoder."""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from logstore import errors
from logstore.client import Admin, Consumer, Producer, TopicPartition, check_address, parse_acks
from logstore.client._backoff import Backoff
from logstore.client._rpc import translate
from logstore.client.producer._accumulator import TopicState
from logstore.v1 import logstore_pb2, records_pb2
from logstore.wire import (
    HEADER_SIZE,
    VALUE_PREFIX,
    Record,
    compressed_field,
    crc32c,
    decode_columns,
    decode_objects,
    decompress,
    encode_frame,
    encode_record,
    parse_fetch,
    partition_for_key,
    split_produce_request,
)

Callback = Callable[[Any, BaseException | None], None]


class FakeBroker:
    """A transport that stores batches like the broker, with scripted failures.

    ``failures`` is a list of errors raised for the next requests, in order;
    ``lose_reply`` makes a request succeed on the "broker" but reply with the
    error anyway (a reply lost on the way back).
    """

    address = "fake:0"

    def __init__(self, partitions: int = 1, max_batch_bytes: int = 1 << 20) -> None:
        self.partitions = partitions
        self.max_batch_bytes = max_batch_bytes
        self.requests: list[logstore_pb2.ProduceRequest] = []
        self.raw: list[bytes] = []
        self.times: list[float] = []
        self.logs: dict[int, list[bytes]] = {}
        self.failures: list[errors.LogStoreError] = []
        self.lose_reply: list[bool] = []
        self.seen: dict[tuple[int, int, int], int] = {}  # (pid, partition, seq) -> offset
        self.next_pid = 1
        self.lock = threading.Lock()

    def topic_metadata(self, topic: str) -> tuple[int, int]:
        return self.partitions, self.max_batch_bytes

    def init_producer(self) -> tuple[int, int]:
        with self.lock:
            pid = self.next_pid
            self.next_pid += 1
        return pid, 0

    def produce(self, request: bytes, timeout_s: float, callback: Callback) -> None:
        with self.lock:
            req = logstore_pb2.ProduceRequest.FromString(request)
            self.requests.append(req)
            self.raw.append(request)
            self.times.append(time.monotonic())
            lose = self.lose_reply.pop(0) if self.lose_reply else False
            if self.failures and not lose:
                err = self.failures.pop(0)
                threading.Thread(target=callback, args=(None, err)).start()
                return
            log = self.logs.setdefault(req.partition, [])
            key = (req.producer_id, req.partition, req.base_sequence)
            if req.producer_id and key in self.seen:
                offset = self.seen[key]  # a duplicate: its original offset
            else:
                offset = len(log)
                log.extend(r.value for r in req.records)
                if req.producer_id:
                    self.seen[key] = offset
            if lose:
                err = self.failures.pop(0)
                threading.Thread(target=callback, args=(None, err)).start()
                return
        resp = logstore_pb2.ProduceResponse(partition=req.partition, base_offset=offset)
        threading.Thread(target=callback, args=(resp, None)).start()

    def close(self) -> None:
        pass


def _producer(fake: FakeBroker, **kw: Any) -> Producer:
    kw.setdefault("linger_ms", 1)
    return Producer(transport=fake, **kw)


def _record_size(value: bytes) -> int:
    return len(encode_record(value))


# -- partitioning and batching -----------------------------------------------------


def test_keyed_records_go_to_kafkas_murmur2_partition() -> None:
    """A keyed record lands on (murmur2(key) & 0x7fffffff) % n, Kafka's vector foobar -> 2 of 4."""
    fake = FakeBroker(partitions=4)
    with _producer(fake) as p:
        assert p.send("t", b"v", key=b"foobar").result(5)[0] == 2
        for key in (b"21", b"abc", b"a-little-bit-long-string", b"k" * 33):
            assert p.send("t", b"v", key=key).result(5)[0] == partition_for_key(key, 4)


def test_sticky_partitioner_fills_a_batch_then_moves_on() -> None:
    """Without a key, consecutive records share one partition until its batch closes."""
    fake = FakeBroker(partitions=3, max_batch_bytes=2000)
    with _producer(fake, linger_ms=1000) as p:
        res = p.send_many("t", [b"x" * 90] * 200)
        segs = res.offsets(10)
    assert all(count > 1 for _, _, count in segs[:-1])
    parts = [part for part, _, _ in segs]
    assert all(a != b for a, b in itertools.pairwise(parts))
    assert sum(len(r.records) for r in fake.requests) == 200


@given(
    sizes=st.lists(st.integers(0, 700), min_size=1, max_size=120),
    limit=st.integers(800, 4000),
    use_many=st.booleans(),
)
def test_batches_are_full_but_never_exceed_the_limit(
    sizes: list[int], limit: int, use_many: bool
) -> None:
    """Each batch's stored size (records + 66-byte header) <= min(batch_bytes, max_batch_bytes),
    and each closed batch could not take the next record."""
    fake = FakeBroker(max_batch_bytes=limit)
    values = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    with _producer(fake, linger_ms=10_000, batch_bytes=limit + 500) as p:
        if use_many:
            p.send_many("t", values)
        else:
            for v in values:
                p.send("t", v)
        p.flush(10)
    got = [r.value for req in fake.requests for r in req.records]
    assert got == values
    i = 0
    for req in fake.requests:
        records_len = sum(_record_size(r.value) for r in req.records)
        assert 66 + records_len <= limit
        i += len(req.records)
        if i < len(values):
            assert 66 + records_len + _record_size(values[i]) > limit


@given(
    size=st.integers(0, 700),
    count=st.integers(1, 120),
    limit=st.integers(800, 4000),
    partition=st.sampled_from([None, 0]),
)
def test_send_many_of_one_size_cuts_the_batches_send_does(
    size: int, count: int, limit: int, partition: int | None
) -> None:
    """send_many of values all one size (its arithmetic path) queues the same
    batches, cut at the same records, as one send() per record."""
    values = [bytes([i % 251]) * size for i in range(count)]
    cuts = []
    for use_many in (True, False):
        fake = FakeBroker(partitions=1, max_batch_bytes=limit)
        with _producer(fake, linger_ms=10_000, batch_bytes=limit + 500) as p:
            if use_many:
                res = p.send_many("t", values, partition=partition)
            else:
                for v in values:
                    p.send("t", v, partition=partition)
            p.flush(10)
        if use_many:
            assert [off for _, off, _ in res.offsets(10)][:1] == [0]
            assert sum(n for _, _, n in res.offsets(10)) == count
        cuts.append([[r.value for r in req.records] for req in fake.requests])
    assert cuts[0] == cuts[1]
    assert [v for req in cuts[0] for v in req] == values


def test_send_many_of_one_size_too_large_for_any_batch_is_refused() -> None:
    """The one-size path refuses a record no batch can hold, as send() does."""
    fake = FakeBroker(max_batch_bytes=500)
    with _producer(fake) as p, pytest.raises(errors.InvalidBatchError, match="cannot fit"):
        p.send_many("t", [b"z" * 600] * 3)
    assert fake.requests == []


def test_batch_bytes_smaller_than_the_broker_limit_wins() -> None:
    """batch_bytes below the topic's max_batch_bytes bounds the batches."""
    fake = FakeBroker(max_batch_bytes=1 << 20)
    with _producer(fake, linger_ms=10_000, batch_bytes=1000) as p:
        p.send_many("t", [b"y" * 100] * 50)
    for req in fake.requests:
        assert 66 + sum(_record_size(r.value) for r in req.records) <= 1000
    assert len(fake.requests) > 5


def test_a_record_too_large_for_any_batch_is_refused_at_send() -> None:
    """send() raises InvalidBatchError for a record that cannot fit any batch; nothing is sent."""
    fake = FakeBroker(max_batch_bytes=500)
    with _producer(fake) as p:
        with pytest.raises(errors.InvalidBatchError, match="cannot fit"):
            p.send("t", b"z" * 500)
        with pytest.raises(errors.InvalidBatchError):
            p.send_many("t", [b"a", b"z" * 600])
    assert all(len(r.value) < 500 for req in fake.requests for r in req.records)


def test_request_is_split_zero_copy_by_the_broker_with_a_valid_crc() -> None:
    """The hand-built request parses with upb, its records suffix splits zero-copy and its
    records_crc32c matches; keys, headers and timestamps survive."""
    fake = FakeBroker()
    with _producer(fake) as p:
        p.send("t", b"v1", key=b"k", headers=[("h", b"\x00\xff")], timestamp_ms=1234)
        p.send("t", b"v2", headers=[("", b""), ("e", b"")], timestamp_ms=-7)
        p.send("t", None, key=b"")
        p.send("t", b"")
    for raw in fake.raw:
        split = split_produce_request(raw)
        assert split.zero_copy
        assert split.header.records_crc32c == crc32c(split.records)
    recs = [r for req in fake.requests for r in req.records]
    assert recs[0].key == b"k" and recs[0].timestamp_ms == 1234
    assert recs[0].headers[0].value == b"\x00\xff"
    assert [(h.key, h.value) for h in recs[1].headers] == [("", b""), ("e", b"")]
    assert recs[2].HasField("key") and not recs[2].HasField("value")
    assert recs[3].HasField("value") and not recs[3].HasField("key")


def test_send_returns_light_handles_with_offsets() -> None:
    """Handles are __slots__ objects sharing the batch; result() gives (partition, offset)."""
    fake = FakeBroker()
    with _producer(fake, linger_ms=50) as p:
        hs = [p.send("t", b"%d" % i) for i in range(10)]
        many = p.send_many("t", [b"m"] * 5)
        assert not hasattr(hs[0], "__dict__")
        assert [h.result(5) for h in hs] == [(0, i) for i in range(10)]
        assert [h.result(5) for h in many] == [(0, 10 + i) for i in range(5)]
        assert many[-1].result() == (0, 14) and len(many) == 5


def test_acks_spellings() -> None:
    """Kafka's acks spellings map to the enum; anything else is refused."""
    assert parse_acks("all") == parse_acks("-1") == parse_acks(-1) == logstore_pb2.ACKS_ALL
    assert parse_acks("1") == parse_acks(1) == logstore_pb2.ACKS_LEADER
    assert parse_acks("0") == parse_acks(0) == logstore_pb2.ACKS_NONE
    with pytest.raises(errors.InvalidArgumentError):
        parse_acks("2")


# -- retries, deadline, idempotence -------------------------------------------------


def test_unavailable_is_retried_with_growing_jittered_backoff() -> None:
    """UNAVAILABLE is retried with the same request bytes; waits grow and stay within the cap."""
    fake = FakeBroker()
    fake.failures = [errors.BrokerUnavailableError("down")] * 4
    with _producer(fake, retry_backoff_ms=20, retry_backoff_max_ms=200) as p:
        assert p.send("t", b"v").result(10) == (0, 0)
    assert len(fake.raw) == 5
    assert len(set(fake.raw)) == 1  # byte-identical retries (same sequence number)
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert all(g < 0.2 + 0.1 for g in gaps)


def test_resource_exhausted_with_hint_waits_at_least_the_hint() -> None:
    """RESOURCE_EXHAUSTED with RetryInfo is retried no sooner than the broker's delay."""
    fake = FakeBroker()
    fake.failures = [errors.ResourceExhaustedError("busy", retry_after_ms=150)]
    with _producer(fake, retry_backoff_ms=1) as p:
        assert p.send("t", b"v").result(10) == (0, 0)
    assert fake.times[1] - fake.times[0] >= 0.14


@pytest.mark.parametrize(
    "error",
    [
        errors.ResourceExhaustedError("disk full"),  # no retry hint
        errors.InvalidBatchError("bad batch"),
        errors.UnknownTopicError("unknown topic"),
        errors.DeadlineExceededError("slow"),
    ],
)
def test_other_errors_are_not_retried(error: errors.LogStoreError) -> None:
    """Anything but UNAVAILABLE and hinted RESOURCE_EXHAUSTED fails the batch after one try."""
    fake = FakeBroker()
    fake.failures = [error]
    with _producer(fake) as p:
        h = p.send("t", b"v")
        with pytest.raises(type(error)):
            h.result(5)
    assert len(fake.raw) == 1


def test_retries_stop_at_the_delivery_timeout() -> None:
    """A broker that stays unavailable fails the record around delivery_timeout_ms, not later."""
    fake = FakeBroker()
    fake.failures = [errors.BrokerUnavailableError("down")] * 10_000
    started = time.monotonic()
    with _producer(
        fake, delivery_timeout_ms=400, retry_backoff_ms=10, retry_backoff_max_ms=50
    ) as p:
        h = p.send("t", b"v")
        with pytest.raises(errors.BrokerUnavailableError, match="gave up"):
            h.result(5)
    elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 1.5
    assert len(fake.raw) > 3


def test_backoff_is_full_jitter_growing_to_the_cap() -> None:
    """Backoff waits uniform(0, min(cap, base * 2**attempt)), at least the hint."""
    b = Backoff(100, 1000)
    for attempt, window in ((0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (60, 1.0)):
        delays = [b.delay_s(attempt) for _ in range(2000)]
        assert 0 <= min(delays) < window * 0.05  # from 0: full jitter, not "half + jitter"
        assert window * 0.95 < max(delays) <= window
    assert all(b.delay_s(0, retry_after_ms=300) >= 0.3 for _ in range(100))


def test_retries_and_partitioner_never_draw_from_the_global_random() -> None:
    """A client's retry or sender thread must not move the global generator: an application that
    seeded it keeps its sequence, and Hypothesis fails whatever test is drawing when it
    changes (a clean-clone run lost five property tests to a leaked retry thread)."""
    random.seed(1234)
    before = random.getstate()
    b = Backoff(100, 1000)
    for attempt in range(10):
        b.delay_s(attempt)
    TopicState(8, 1 << 20, 1 << 14)  # the sticky partitioner's first pick
    assert random.getstate() == before


class _FailedFetch:
    """A finished fetch future that failed with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self) -> Any:
        raise self.error


def test_consumer_retries_by_the_shared_full_jitter_backoff() -> None:
    """A consumer's fetch retries wait uniform(0, min(cap, base * 2**failures)) like the
    producer's (it waited a constant base/2..base before), reset by a seek."""
    c = Consumer("127.0.0.1:1", retry_backoff_ms=100, retry_backoff_max_ms=400)
    try:
        tp = ("t", 0)
        c.assign([tp])
        first: list[float] = []
        third: list[float] = []
        for _ in range(300):
            c.seek(tp, 0)  # resets the failure count
            part = c._parts[TopicPartition(*tp)]
            for n in range(3):
                # a MultiFetch of this partition in flight, then failed
                c._fetch_seq += 1
                c._fetches[c._fetch_seq] = ([(TopicPartition(*tp), part.epoch)], None)
                part.future = c._fetch_seq
                c._handle((c._fetch_seq, _FailedFetch(errors.BrokerUnavailableError("down"))))
                (first if n == 0 else third if n == 2 else []).append(
                    part.retry_at - time.monotonic()
                )
        assert min(first) < 0.02 and max(first) <= 0.1  # window 100 ms, from 0
        assert max(third) > 0.3 and max(third) <= 0.4  # window min(400, 100 * 2**2) ms
    finally:
        c.close()


def test_idempotent_sequences_count_records_per_partition() -> None:
    """Batches carry the InitProducer id and base sequences = records sent before, per partition."""
    fake = FakeBroker(partitions=2, max_batch_bytes=600)
    with _producer(fake) as p:
        for i in range(40):
            p.send("t", b"x" * 50, partition=i % 2)
    for part in (0, 1):
        reqs = [r for r in fake.requests if r.partition == part]
        seq = 0
        for r in reqs:
            assert r.producer_id == 1
            assert r.base_sequence == seq
            seq += len(r.records)
        assert seq == 20


def test_idempotent_retry_after_a_lost_reply_is_stored_once() -> None:
    """A batch stored by the broker whose reply was lost is retried and deduplicated:
    stored once, and the handle gets the original offset."""
    fake = FakeBroker()
    fake.lose_reply = [True]
    fake.failures = [errors.BrokerUnavailableError("connection reset")]
    with _producer(fake) as p:
        h = p.send("t", b"once")
        assert h.result(5) == (0, 0)
        assert p.send("t", b"next").result(5) == (0, 1)
    assert fake.logs[0] == [b"once", b"next"]
    assert len(fake.raw) == 3


def test_non_idempotent_producer_sends_no_producer_id() -> None:
    """idempotent=False (or acks=0) sends producer_id 0."""
    fake = FakeBroker()
    with _producer(fake, idempotent=False) as p:
        p.send("t", b"v").result(5)
    with _producer(fake, acks="0") as p:
        p.send("t", b"v").result(5)
    assert [r.producer_id for r in fake.requests] == [0, 0]
    assert fake.requests[1].acks == logstore_pb2.ACKS_NONE


def test_flush_waits_for_everything_and_close_is_idempotent() -> None:
    """flush() returns only when every handle is done; close() twice is harmless."""
    fake = FakeBroker()
    p = _producer(fake, linger_ms=10_000)
    hs = [p.send("t", b"v") for _ in range(100)]
    p.flush(5)
    assert all(h.done() for h in hs)
    p.close()
    p.close()
    with pytest.raises(errors.StoreClosedError):
        p.send("t2", b"v")


# -- error translation and connecting -----------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, retry_ms: int | None = None) -> None:
        self._code = code
        self._details = details
        self._md: tuple[tuple[str, bytes], ...] = ()
        if retry_ms is not None:
            status = status_pb2.Status(code=code.value[0], message=details)
            info = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=retry_ms // 1000, nanos=(retry_ms % 1000) * 1_000_000
                )
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            status.details.append(detail)
            self._md = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._md


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.TopicExistsError),
        (grpc.StatusCode.OUT_OF_RANGE, errors.OffsetOutOfRangeError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
        (grpc.StatusCode.DATA_LOSS, errors.CorruptRecordError),
        (grpc.StatusCode.INTERNAL, errors.InternalError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
    ],
)
def test_rpc_errors_translate_by_status_keeping_the_message(
    code: grpc.StatusCode, cls: type[errors.LogStoreError]
) -> None:
    """Each status maps to its class of logstore.errors and the broker's message is kept."""
    err = translate(FakeRpcError(code, "the broker says: offset 9 not in 0..5"))
    assert type(err) is cls
    assert str(err) == "the broker says: offset 9 not in 0..5"
    assert err.status == code.name


def test_retry_info_becomes_retry_after_ms() -> None:
    """RESOURCE_EXHAUSTED carries RetryInfo's delay as retry_after_ms; None without it."""
    hinted = translate(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", retry_ms=1250))
    assert isinstance(hinted, errors.ResourceExhaustedError)
    assert hinted.retry_after_ms == 1250
    plain = translate(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "disk full"))
    assert isinstance(plain, errors.ResourceExhaustedError)
    assert plain.retry_after_ms is None


def test_unreachable_broker_fails_within_the_connect_deadline() -> None:
    """A closed port fails with 'cannot reach broker at HOST:PORT' within the connect deadline."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    started = time.monotonic()
    expected = rf"cannot reach broker at 127\.0\.0\.1:{port}"
    with (
        Admin(f"127.0.0.1:{port}", connect_timeout_ms=500) as admin,
        pytest.raises(errors.BrokerUnavailableError, match=expected),
    ):
        admin.list_topics()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "address", ["", "garbage", "host:abc", "host:0", "host:65536", "::1:7070", "a b:1", "[zz]:1"]
)
def test_a_malformed_address_is_refused_before_any_channel(address: str) -> None:
    """Admin, Consumer and Producer refuse an address that is not HOST:PORT at once, with
    InvalidArgumentError naming it (not BrokerUnavailableError after the connect timeout)."""
    started = time.monotonic()
    for make in (Admin, Consumer, Producer):
        with pytest.raises(errors.InvalidArgumentError, match="bad broker address"):
            make(address, connect_timeout_ms=5000)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7070", "localhost:1", "broker.example.com.:65535", "[::1]:7070"]
)
def test_well_formed_addresses_are_accepted(address: str) -> None:
    """HOST:PORT with a name, an IPv4 address or a bracketed IPv6 address passes unchanged."""
    assert check_address(address) == address


# -- fetch parsing and the columnar view --------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fetch_reply(frames: list[bytes], hwm: int, lso: int = 0) -> bytes:
    return b"".join(frames) + b"\x10" + _varint(hwm) + b"\x18" + _varint(lso)


def _frames(batches: list[list[Record]], base_ts: int = 1000) -> tuple[list[bytes], list[Record]]:
    frames = []
    expected = []
    offset = 0
    for i, recs in enumerate(batches):
        data = b"".join(encode_record(r.value, r.key, r.headers, r.timestamp_ms) for r in recs)
        frames.append(encode_frame(data, len(recs), offset, base_ts + i))
        for j, r in enumerate(recs):
            expected.append(
                Record(r.value, r.key, r.headers, r.timestamp_ms or base_ts + i, offset + j)
            )
        offset += len(recs)
    return frames, expected


_records = st.builds(
    Record,
    value=st.none() | st.binary(max_size=300),
    key=st.none() | st.binary(max_size=40),
    headers=st.none() | st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=8)), max_size=3),
    timestamp_ms=st.sampled_from([0, 0, 1, -5, 2**40, 1_700_000_000_000]),
)


@given(
    batches=st.lists(st.lists(_records, min_size=1, max_size=20), min_size=1, max_size=4),
    start=st.integers(0, 90),
    max_records=st.none() | st.integers(1, 30),
)
def test_columns_equal_objects_equal_input(
    batches: list[list[Record]], start: int, max_records: int | None
) -> None:
    """The columnar view, the object view and the records written agree, from any start offset
    (records before it skipped), with max_records, nulls, headers and timestamp 0 -> batch time."""
    frames, expected = _frames(batches)
    result = parse_fetch(_fetch_reply(frames, len(expected)))
    want = [r for r in expected if r.offset >= start]
    if max_records is not None:
        want = want[:max_records]
    cols = decode_columns("t", 0, result, start, max_records)
    assert cols.to_records() == want
    assert decode_objects(result, start, max_records) == want
    assert cols.value_offsets[-1] == len(cols.values)
    assert list(cols.value_valid) == [r.value is not None for r in want]
    assert list(cols.key_valid) == [r.key is not None for r in want]


def test_fixed_size_fast_path_and_its_buffers() -> None:
    """Same-size values take the vectorized path: one values buffer, Arrow offsets, int64."""
    values = [bytes([65 + i % 26]) * 100 for i in range(5000)]
    frames, _ = _frames([[Record(v) for v in values[:2500]], [Record(v) for v in values[2500:]]])
    cols = decode_columns("t", 3, parse_fetch(_fetch_reply(frames, 5000)), 10)
    assert len(cols) == 4990
    assert cols.values.tobytes() == b"".join(values[10:])
    assert cols.value_offsets.tolist() == list(range(0, 4991 * 100, 100))
    assert cols.offsets.dtype.name == "int64" and cols.offsets[0] == 10
    assert not cols.key_valid.any() and cols.value_valid.all()
    assert set(cols.timestamps_ms.tolist()) == {1000, 1001}


def test_non_canonical_field_order_falls_back_to_upb() -> None:
    """Records whose fields are not in number order are still decoded correctly."""
    body = b"\x12\x01v" + b"\x0a\x01k"  # value before key
    rec = b"\x7a" + _varint(len(body)) + body
    frame = encode_frame(rec * 3, 3, 0, 77)
    cols = decode_columns("t", 0, parse_fetch(_fetch_reply([frame], 3)), 0)
    assert cols.to_records() == [Record(b"v", b"k", None, 77, i) for i in range(3)]


def test_a_flipped_byte_fails_the_crc_check() -> None:
    """A damaged batch raises CorruptRecordError instead of returning records."""
    frames, _ = _frames([[Record(b"hello")] * 3])
    bad = bytearray(frames[0])
    bad[-2] ^= 0x01
    with pytest.raises(errors.CorruptRecordError, match="CRC32C"):
        parse_fetch(_fetch_reply([bytes(bad)], 3))


def test_batches_that_skip_offsets_are_read_and_overlaps_rejected() -> None:
    """A gap between batches (a compacted log) is legal and the records keep their
    offsets; a batch that starts before the previous one ended is corrupt."""
    a = encode_frame(encode_record(b"a"), 1, 0, 1)
    b = encode_frame(encode_record(b"b"), 1, 5, 1)
    cols = decode_columns("t", 0, parse_fetch(_fetch_reply([a, b], 6)), 0)
    assert cols.offsets.tolist() == [0, 5]
    c = encode_frame(encode_record(b"c") * 2, 2, 4, 1)
    with pytest.raises(errors.CorruptRecordError, match="overlaps"):
        parse_fetch(_fetch_reply([a, b, encode_frame(encode_record(b"d"), 1, 5, 1)], 6))
    with pytest.raises(errors.CorruptRecordError, match="overlaps"):
        parse_fetch(_fetch_reply([c, b], 6))


def test_record_count_mismatch_is_corruption() -> None:
    """A batch whose header count disagrees with its records is reported, not guessed at."""
    frame = encode_frame(encode_record(b"a") + encode_record(b"bb"), 3, 0, 1)
    with pytest.raises(errors.CorruptRecordError):
        decode_columns("t", 0, parse_fetch(_fetch_reply([frame], 3)), 0)


def test_high_watermark_and_log_start_are_read() -> None:
    """The FetchResponse's scalar fields are parsed from the raw reply."""
    frames, _ = _frames([[Record(b"x")]])
    r = parse_fetch(_fetch_reply(frames, 123456, 7))
    assert (r.high_watermark, r.log_start_offset, len(r.frames)) == (123456, 7, 1)
    empty = parse_fetch(_fetch_reply([], 5, 5))
    assert empty.frames == [] and empty.high_watermark == 5


def test_records_pb2_reads_what_the_producer_encodes() -> None:
    """encode_record output is byte-identical to the protobuf serializer's."""
    rnd = random.Random(1)
    for _ in range(200):
        key = rnd.choice([None, b"", b"k" * rnd.randint(1, 200)])
        value = rnd.choice([None, b"", b"v" * rnd.randint(1, 20000)])
        ts = rnd.choice([0, 1, -1, 2**62])
        headers = rnd.choice([None, [("a", b"1"), ("", b"")]])
        msg = records_pb2.RecordBatch()
        r = msg.records.add()
        if key is not None:
            r.key = key
        if value is not None:
            r.value = value
        r.timestamp_ms = ts
        for hk, hv in headers or []:
            r.headers.add(key=hk, value=hv)
        assert encode_record(value, key, headers, ts) == msg.SerializeToString()
        if value is not None:  # the value-only form send() and send_many() build
            assert VALUE_PREFIX[len(value)] + value == encode_record(value)


def test_the_producer_sends_what_the_wire_encoder_encodes() -> None:
    """The records a Producer puts on the wire are logstore.wire.encode_record's bytes (the
    producer has no encoder of its own), for value-only and full records alike."""
    fake = FakeBroker()
    full = [(b"v1", b"k", [("h", b"x")], 1_700_000_000_000), (None, b"k2", None, 0)]
    with _producer(fake) as p:
        p.send_many("t", [b"a", b"bb", b""])
        p.flush()
        for value, key, headers, ts in full:
            p.send("t", value, key=key, headers=headers, timestamp_ms=ts or None)
    raw = b"".join(fake.raw)
    expected_values = b"".join(encode_record(v) for v in (b"a", b"bb", b""))
    expected_full = b"".join(encode_record(*rec) for rec in full)
    assert expected_values in raw
    assert expected_full in raw


def test_added_partitions_are_learned() -> None:
    """A partition added after the producer started is found by refreshing metadata."""
    fake = FakeBroker(partitions=1)
    with _producer(fake) as p:
        p.send("t", b"a").result(5)
        with pytest.raises(errors.UnknownPartitionError, match=r"0\.\.0"):
            p.send("t", b"b", partition=2)
        fake.partitions = 3
        assert p.send("t", b"c", partition=2).result(5) == (2, 0)
        assert p.partitions_for("t") == 3


def test_the_client_retypes_no_frame_size() -> None:
    """No module of the client or the CLI writes the frame header's sizes (66, 72) as
    numbers: they come from logstore.wire, so a longer header cannot break the client."""
    import ast
    from pathlib import Path

    from logstore.wire import FRAME_OVERHEAD, HEADER_SIZE

    root = Path(__file__).resolve().parents[1]
    sizes = {HEADER_SIZE, FRAME_OVERHEAD}
    found = []
    for path in [*(root / "logstore" / "client").rglob("*.py"), *(root / "cli").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in sizes:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value}")
    assert found == []


# -- batches closed at their compressed size ---------------------------------------


class CompressingFakeBroker(FakeBroker):
    """A FakeBroker that reads compressed batches too (as the real one does) and
    keeps each request's stored size: header + what follows it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.stored: list[tuple[int, int]] = []  # (stored batch bytes, records bytes)

    def produce(self, request: bytes, timeout_s: float, callback: Callback) -> None:
        req = logstore_pb2.ProduceRequest.FromString(request)
        if req.compression:
            plain = decompress(req.compressed_records, req.compression, "fake")
            sent = len(compressed_field(req.compressed_records))
            del req.records[:]
            req.records.extend(records_pb2.RecordBatch.FromString(plain).records)
            req.ClearField("compressed_records")
            req.compression = 0  # type: ignore[assignment]
            self.stored.append((HEADER_SIZE + sent, len(plain)))
            request = req.SerializeToString()
        else:
            plain_len = sum(_record_size(r.value) for r in req.records)
            self.stored.append((HEADER_SIZE + plain_len, plain_len))
        super().produce(request, timeout_s, callback)


def _log_lines(n: int, seed: int = 7) -> list[bytes]:
    """JSON-like log lines, ~100 bytes, compressing ~5-10x like the bench corpus."""
    rnd = random.Random(seed)
    paths = ["/api/v1/orders", "/api/v1/users", "/healthz", "/api/v2/search"]
    return [
        b'{"ts":"2026-12-02T04:%02d:%02d","level":"%s","path":"%s","status":%d,"ms":%d}'
        % (
            i // 60 % 60,
            i % 60,
            rnd.choice([b"info", b"warn"]),
            rnd.choice(paths).encode(),
            rnd.choice([200, 200, 200, 404, 500]),
            rnd.randrange(1, 900),
        )
        for i in range(n)
    ]


def _check_offsets(fake: FakeBroker, res: Any, values: list[bytes]) -> None:
    assert len(res) == len(values)
    for h, v in zip(res, values, strict=True):
        part, off = h.result(10)
        assert fake.logs[part][off] == v
    assert sum(n for _, _, n in res.offsets(10)) == len(values)


def test_compressed_batches_close_at_their_compressed_size() -> None:
    """With zstd, batches are closed at their estimated compressed size (Kafka's ratio
    estimate): from the second batch of a burst on, a batch holds far more than
    max_batch_bytes of records, and what is sent still fits max_batch_bytes.

    Fails on the old producer, which closed batches at their uncompressed size (every
    batch held at most max_batch_bytes of records and was sent ~1/7 full), and without
    the first batch compressed at close: one send_many closes all its batches before the
    sender has compressed any, so they would all use the first estimate, 1.0."""
    room = 16_384
    fake = CompressingFakeBroker(max_batch_bytes=room)
    values = _log_lines(30_000)
    with _producer(fake, linger_ms=10_000, compression="zstd") as p:
        res = p.send_many("t", values)
        p.flush(30)
        _check_offsets(fake, res, values)
    assert all(stored <= room for stored, _ in fake.stored)
    settled = fake.stored[1:-1]  # after the first batch; the last one is partial
    assert len(settled) >= 5
    assert all(records > 2 * room for _, records in settled)
    # The estimate is compressed x 1.05, so a batch is sent ~95% full; a range
    # because the ratio varies a little from batch to batch.
    assert sum(stored for stored, _ in settled) / len(settled) > 0.75 * room


def test_a_batch_compressing_worse_than_estimated_is_split() -> None:
    """After compressible batches drive the estimate down, incompressible records fill a
    batch far past max_batch_bytes; it is split (repeatedly) into halves that fit, sent in
    order, and every handle reports its record's true offset."""
    room = 8_192
    fake = CompressingFakeBroker(max_batch_bytes=room)
    rnd = random.Random(3)
    noise = [rnd.randbytes(200) for _ in range(400)]  # 80 KB, ~10x the room
    with _producer(fake, linger_ms=10_000, compression="zstd") as p:
        first = p.send_many("t", _log_lines(5_000))
        p.flush(30)
        learned = len(fake.stored)
        res = p.send_many("t", noise)
        single = [p.send("t", v) for v in noise[:3]]
        p.flush(30)
        _check_offsets(fake, res, noise)
        _check_offsets(fake, first, _log_lines(5_000))
        assert [fake.logs[0][h.result(10)[1]] for h in single] == noise[:3]
    assert all(stored <= room for stored, _ in fake.stored)
    assert [v for v in fake.logs[0][-403:]] == noise + noise[:3]
    # 80 KB of noise needs >= 10 batches of 8 KiB; with the estimate at ~0.1 the open
    # batch was closed at ~80 KB, so they came from splits.
    assert len(fake.stored) - learned >= 10


def _compress_through_pool(n: int, threads: int) -> tuple[CompressingFakeBroker, list[bytes]]:
    """Send ``n`` log lines with zstd on ``threads`` compression threads to a fake
    broker, flush, and check each record landed at the offset its handle says."""
    fake = CompressingFakeBroker(max_batch_bytes=16_384)
    values = _log_lines(n)
    with _producer(fake, linger_ms=10_000, compression="zstd", compression_threads=threads) as p:
        res = p.send_many("t", values)
        p.flush(60)
        _check_offsets(fake, res, values)
    return fake, values


def _watch_compress(monkeypatch: pytest.MonkeyPatch, hold_s: float) -> dict[str, Any]:
    """Wrap the sender's ``compress``: each call holds ``hold_s`` (so overlapping
    calls overlap for sure) and records its thread and the most calls at once."""
    from logstore.client.producer import _sender

    seen: dict[str, Any] = {"threads": set(), "active": 0, "most": 0}
    lock = threading.Lock()
    real = _sender.compress

    def watched(records: Any, codec: int, level: int | None = None) -> bytes:
        with lock:
            seen["threads"].add(threading.current_thread().name)
            seen["active"] += 1
            seen["most"] = max(seen["most"], seen["active"])
        try:
            time.sleep(hold_s)
            return real(records, codec, level)
        finally:
            with lock:
                seen["active"] -= 1

    monkeypatch.setattr(_sender, "compress", watched)
    return seen


def test_batches_are_compressed_on_a_bounded_pool_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With compression_threads=2 (the default) full batches waiting to be sent are
    compressed two at a time on the pool's threads, not one by one on the sender
    thread, and every record still lands in order at its offset; the pool's threads
    end with the producer. Fails on the old producer, which had no
    compression_threads and compressed every batch on the sender thread (at most one
    at a time)."""
    seen = _watch_compress(monkeypatch, hold_s=0.02)
    # one send_many closes dozens of batches at once
    fake, values = _compress_through_pool(20_000, threads=2)
    assert fake.logs[0] == values
    assert seen["most"] == 2  # never more than the pool's threads
    assert any(name.startswith("logstore-compress") for name in seen["threads"])
    deadline = time.monotonic() + 30
    while any(t.name.startswith("logstore-compress") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "compression threads outlived the producer"
        time.sleep(0.05)


def test_one_compression_thread_compresses_on_the_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    """compression_threads=1 keeps the old behaviour: no pool, one batch at a time."""
    seen = _watch_compress(monkeypatch, hold_s=0.005)
    _compress_through_pool(5_000, threads=1)
    assert seen["most"] == 1
    assert not any(name.startswith("logstore-compress") for name in seen["threads"])


@pytest.mark.parametrize("threads", [0, -1, 17])
def test_compression_threads_out_of_range_is_refused(threads: int) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="compression_threads must be 1-16"):
        Producer(transport=FakeBroker(), compression="zstd", compression_threads=threads)


def test_a_compression_thread_failure_is_retried_by_the_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch whose compression raises on a pool thread is not lost nor stuck: it
    goes back to the sender, which compresses it itself (where a failure would fail
    the batch through its handles), and every record lands in order."""
    from logstore.client.producer import _sender

    real = _sender.compress
    failed: list[str] = []

    def flaky(records: Any, codec: int, level: int | None = None) -> bytes:
        name = threading.current_thread().name
        if name.startswith("logstore-compress"):
            failed.append(name)
            raise RuntimeError("compression thread trouble")
        return real(records, codec, level)

    monkeypatch.setattr(_sender, "compress", flaky)
    fake, values = _compress_through_pool(5_000, threads=2)
    assert failed  # the pool was tried
    assert fake.logs[0] == values


@given(
    # short values and values past 127 bytes (a two-byte length varint)
    st.lists(
        st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=300)),
        min_size=2,
        max_size=40,
    ),
    st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
def test_halves_split_at_a_record_whatever_the_pieces(values: list[bytes], runs: list[int]) -> None:
    """A batch's ``parts`` may hold two pieces per record (``send``) or one per run
    (``send_many`` of same-length values, joined with the prefix between them);
    ``halves`` splits the joined records at record count // 2 either way, and
    each half holds exactly its records."""
    from logstore.client.producer._batch import ProducerBatch
    from logstore.wire import VALUE_PREFIX

    batch = ProducerBatch("t", 0, 1.0)
    i = 0
    for run in itertools.cycle(runs):
        if i >= len(values):
            break
        chunk = values[i : i + max(1, run)]
        if run == 0:  # as send(): prefix, value
            for v in chunk:
                batch.parts += [VALUE_PREFIX[len(v)], v]
        else:  # as send_many's uniform path, one piece (lengths may differ here)
            batch.parts += [b"".join(VALUE_PREFIX[len(v)] + v for v in chunk)]
        i += len(chunk)
    batch.count = len(values)
    batch.size = sum(map(len, batch.parts))
    first, second = batch.halves()
    k = len(values) // 2
    assert (first.count, second.count) == (k, len(values) - k)

    def decoded(b: ProducerBatch) -> list[bytes]:
        return [r.value for r in records_pb2.RecordBatch.FromString(b"".join(b.parts)).records]

    assert decoded(first) == values[:k]
    assert decoded(second) == values[k:]
    assert first.size + second.size == batch.size
