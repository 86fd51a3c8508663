"""MultiProduce and MultiFetch against a real broker: per-partition statuses, order,
bytes stored as sent, byte bounds over 1,000 partitions, long polls, limits."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc
from logstore.wire import parse_fetch, partition_for_key, split_multi_fetch, varint
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import ALL, LEADER, NONE, connect, create_topic, fetch_all, records

_names = itertools.count()


def topic_name() -> str:
    return f"multi-{next(_names)}"


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("multi") / "data")
    try:
        yield b
    finally:
        assert b.stop() == 0


@pytest.fixture
def stub(mbroker: BrokerProcess) -> Iterator[logstore_pb2_grpc.LogStoreStub]:
    with connect(mbroker) as s:
        yield s


class Raw:
    """Hand-built request bytes in, or raw reply bytes out (no stub serializer)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.multi_produce = self.channel.unary_unary(
            "/logstore.v1.LogStore/MultiProduce",
            request_serializer=None,
            response_deserializer=pb.MultiProduceResponse.FromString,
        )
        self.multi_fetch = self.channel.unary_unary(
            "/logstore.v1.LogStore/MultiFetch",
            request_serializer=pb.MultiFetchRequest.SerializeToString,
            response_deserializer=None,
        )


@pytest.fixture
def raw(mbroker: BrokerProcess) -> Iterator[Raw]:
    r = Raw(mbroker.grpc_address)
    try:
        yield r
    finally:
        r.channel.close()


def batch(topic: str, partition: int | None, values: Sequence[bytes], **fields: Any) -> Any:
    req = pb.ProduceRequest(topic=topic, records=records(values), **fields)
    if partition is not None:
        req.partition = partition
    return req


def reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def multi_fetch(
    stub: logstore_pb2_grpc.LogStoreStub,
    parts: Sequence[tuple[str, int, int]],
    timeout: float = 30,
    part_max_bytes: int = 0,
    **fields: int,
) -> pb.MultiFetchResponse:
    req = pb.MultiFetchRequest(
        partitions=[
            pb.FetchPartition(topic=t, partition=p, offset=o, max_bytes=part_max_bytes)
            for t, p, o in parts
        ],
        **fields,
    )
    return stub.MultiFetch(req, timeout=timeout)


def values_of(data: pb.PartitionData) -> list[tuple[int, bytes]]:
    return [(b.base_offset + i, r.value) for b in data.batches for i, r in enumerate(b.records)]


# -- MultiProduce ------------------------------------------------------------------


def test_multi_produce_gives_each_bad_batch_its_own_status(stub, raw: Raw) -> None:
    """Unknown topic, bad partition, bad records, wrong/unknown acks, malformed and
    internal-topic batches each get their precise status; the good ones are stored."""
    t = topic_name()
    create_topic(stub, t, partitions=3)
    bad_crc = batch(t, 1, [b"x"], records_crc32c=12345)
    batches = [
        batch(t, 0, [b"a0", b"a1"], request_id=10),
        batch("no-such-topic", 0, [b"x"], request_id=11),
        batch(t, 99, [b"x"], request_id=12),
        bad_crc,
        batch(t, 1, [b"x"], acks=LEADER),  # the request says ALL
        batch(t, 1, [b"x"], acks=99),
        batch(t, 1, [], request_id=16),  # empty batch
        batch("__consumer_offsets", 0, [b"x"]),
        batch(t, None, [b"x"]),  # neither partition nor partition_key
        batch(t, 2, [b"b0"], request_id=19),
    ]
    body = b"".join(b"\x7a" + varint(len(s)) + s for s in (m.SerializeToString() for m in batches))
    garbage = b"\x7a\x03\x0a\x05a"  # a nested batch whose own bytes are truncated
    request = pb.MultiProduceRequest(acks=ALL, request_id=77).SerializeToString() + body + garbage
    resp = raw.multi_produce(request, timeout=30)
    assert resp.request_id == 77
    got = [(r.status.code, reason(r.status)) for r in resp.results]
    assert got == [
        (code_pb2.OK, ""),
        (code_pb2.NOT_FOUND, "UNKNOWN_TOPIC"),
        (code_pb2.NOT_FOUND, "UNKNOWN_PARTITION"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_BATCH"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_BATCH"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_TOPIC_NAME"),
        (code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (code_pb2.OK, ""),
        (code_pb2.INVALID_ARGUMENT, "INVALID_REQUEST"),
    ], [r.status.message for r in resp.results]
    assert [r.request_id for r in resp.results][:3] == [10, 11, 12]
    assert resp.results[0].base_offset == 0 and resp.results[0].high_watermark == 2
    assert resp.results[9].partition == 2 and resp.results[9].base_offset == 0
    assert all(r.base_offset == -1 for r in resp.results if r.status.code != code_pb2.OK)
    assert "differs" in resp.results[4].status.message
    assert fetch_all(stub, t, 0) == [(0, b"a0"), (1, b"a1")]
    assert fetch_all(stub, t, 1) == []
    assert fetch_all(stub, t, 2) == [(0, b"b0")]


def test_multi_produce_keeps_order_within_each_partition(stub) -> None:
    """Interleaved batches for three partitions (by number and by key) are
    appended in request order per partition."""
    t = topic_name()
    create_topic(stub, t, partitions=3)
    batches = []
    expected: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    for n in range(30):
        p = n % 3
        values = [f"{n}-{i}".encode() for i in range(1 + n % 4)]
        batches.append(batch(t, p, values, request_id=n))
        expected[p].extend(values)
    resp = stub.MultiProduce(pb.MultiProduceRequest(batches=batches), timeout=30)
    assert [r.request_id for r in resp.results] == list(range(30))
    assert all(r.status.code == code_pb2.OK for r in resp.results)
    for p in range(3):
        offsets = [r.base_offset for r in resp.results if r.partition == p]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert [v for _, v in fetch_all(stub, t, p)] == expected[p]
    # by key: every batch with one key lands in one partition, in order
    keyed = [batch(t, None, [f"k{n}".encode()], partition_key=b"foobar") for n in range(10)]
    resp = stub.MultiProduce(pb.MultiProduceRequest(batches=keyed), timeout=30)
    kp = partition_for_key(b"foobar", 3)
    assert {r.partition for r in resp.results} == {kp}
    start = len(expected[kp])
    assert [r.base_offset for r in resp.results] == list(range(start, start + 10))


@pytest.mark.parametrize("acks", [NONE, LEADER, ALL, pb.ACKS_UNSPECIFIED])
def test_multi_produce_applies_the_request_acks(stub, acks: int) -> None:
    """The request's acks holds for every batch: NONE answers -1, the others the offsets."""
    t = topic_name()
    create_topic(stub, t, partitions=2)
    batches = [batch(t, p, [b"v"]) for p in (0, 1, 0)]
    batches.append(batch(t, 1, [b"w"], acks=acks or ALL))  # equal: accepted
    resp = stub.MultiProduce(pb.MultiProduceRequest(acks=acks, batches=batches), timeout=30)
    assert all(r.status.code == code_pb2.OK for r in resp.results)
    if acks == NONE:
        assert [r.base_offset for r in resp.results] == [-1] * 4
        wait = time.monotonic() + 10
        while len(fetch_all(stub, t, 0)) + len(fetch_all(stub, t, 1)) < 4:
            assert time.monotonic() < wait
            time.sleep(0.02)
    else:
        assert [r.base_offset for r in resp.results] == [0, 0, 1, 1]


def test_multi_produce_idempotent_sequences_per_partition(stub) -> None:
    """Sequences are per partition as in Produce: a resent request is answered with
    its original offsets (duplicate), a gap fails only its own batch."""
    t = topic_name()
    create_topic(stub, t, partitions=2)
    ident = stub.InitProducer(pb.InitProducerRequest(), timeout=10)
    idem = {"producer_id": ident.producer_id, "producer_epoch": ident.producer_epoch}
    first = pb.MultiProduceRequest(
        batches=[
            batch(t, 0, [b"a", b"b"], base_sequence=0, **idem),
            batch(t, 1, [b"c"], base_sequence=0, **idem),
            batch(t, 0, [b"d"], base_sequence=2, **idem),
        ]
    )
    resp = stub.MultiProduce(first, timeout=30)
    assert [(r.base_offset, r.duplicate) for r in resp.results] == [
        (0, False),
        (0, False),
        (2, False),
    ]
    again = stub.MultiProduce(first, timeout=30)
    assert [(r.base_offset, r.duplicate) for r in again.results] == [
        (0, True),
        (0, True),
        (2, True),
    ]
    gap = pb.MultiProduceRequest(
        batches=[
            batch(t, 0, [b"e"], base_sequence=9, **idem),  # expected 3
            batch(t, 1, [b"f"], base_sequence=1, **idem),
        ]
    )
    resp = stub.MultiProduce(gap, timeout=30)
    assert reason(resp.results[0].status) == "OUT_OF_ORDER_SEQUENCE_NUMBER"
    assert resp.results[1].status.code == code_pb2.OK and resp.results[1].base_offset == 1
    assert [v for _, v in fetch_all(stub, t, 0)] == [b"a", b"b", b"d"]


def test_multi_produce_stores_the_bytes_sent(stub, raw: Raw) -> None:
    """Records whose fields are out of field order (valid protobuf that a
    serializer would reorder) are served byte for byte as sent."""
    t = topic_name()
    create_topic(stub, t, partitions=2)
    # Record{value=2: "v", key=1: "k"}: value first, which no serializer writes.
    record = b"\x12\x01v\x0a\x01k"
    header = pb.ProduceRequest(topic=t, partition=1).SerializeToString()
    nested = header + (b"\x7a" + varint(len(record)) + record) * 3
    request = b"\x7a" + varint(len(nested)) + nested
    resp = raw.multi_produce(request, timeout=30)
    assert resp.results[0].status.code == code_pb2.OK, resp.results[0].status.message
    reply = raw.multi_fetch(
        pb.MultiFetchRequest(partitions=[pb.FetchPartition(topic=t, partition=1)]), timeout=30
    )
    assert (b"\x7a" + varint(len(record)) + record) * 3 in reply
    mf = pb.MultiFetchResponse.FromString(reply)
    assert [(r.key, r.value) for r in mf.partitions[0].batches[0].records] == [(b"k", b"v")] * 3


def test_multi_produce_whole_request_errors(stub, raw: Raw) -> None:
    """No batches, too many, an unknown acks and unparseable bytes fail the whole
    request with INVALID_ARGUMENT."""
    t = topic_name()
    create_topic(stub, t)
    cases = {
        "no batches": pb.MultiProduceRequest().SerializeToString(),
        "acks 99": pb.MultiProduceRequest(
            acks=99, batches=[batch(t, 0, [b"x"])]
        ).SerializeToString(),
        "10001 batches": pb.MultiProduceRequest(
            batches=[batch(t, 0, [b"x"])] * 10_001
        ).SerializeToString(),
        "malformed": b"\x7a\x05ab",
    }
    for name, request in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            raw.multi_produce(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert fetch_all(stub, t) == []


# -- MultiFetch --------------------------------------------------------------------


def test_multi_fetch_gives_each_bad_partition_its_own_status(stub) -> None:
    """Unknown topic, bad partition, offset out of range and a negative max_bytes
    each get their own status at once (no long poll); the others return data."""
    t = topic_name()
    create_topic(stub, t, partitions=2)
    stub.MultiProduce(
        pb.MultiProduceRequest(batches=[batch(t, 0, [b"a"]), batch(t, 1, [b"b", b"c"])]),
        timeout=30,
    )
    req = pb.MultiFetchRequest(
        partitions=[
            pb.FetchPartition(topic=t, partition=0, offset=0),
            pb.FetchPartition(topic="no-such-topic", partition=0),
            pb.FetchPartition(topic=t, partition=99),
            pb.FetchPartition(topic=t, partition=1, offset=50),
            pb.FetchPartition(topic=t, partition=0, max_bytes=-1),
            pb.FetchPartition(topic=t, partition=1, offset=1),
        ],
        min_bytes=1 << 20,
        max_wait_ms=20_000,
    )
    t0 = time.monotonic()
    resp = stub.MultiFetch(req, timeout=30)
    # An error answers at once; 10 s of slack for a loaded machine is still
    # half the 20 s the long poll would otherwise hold.
    assert time.monotonic() - t0 < 10
    got = [(p.topic, p.partition, p.status.code, reason(p.status)) for p in resp.partitions]
    assert got == [
        (t, 0, code_pb2.OK, ""),
        ("no-such-topic", 0, code_pb2.NOT_FOUND, "UNKNOWN_TOPIC"),
        (t, 99, code_pb2.NOT_FOUND, "UNKNOWN_PARTITION"),
        (t, 1, code_pb2.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE"),
        (t, 0, code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (t, 1, code_pb2.OK, ""),
    ]
    assert values_of(resp.partitions[0]) == [(0, b"a")]
    assert values_of(resp.partitions[5]) == [(0, b"b"), (1, b"c")]  # whole batch from 0
    assert resp.partitions[5].high_watermark == 2 and resp.partitions[5].log_end_offset == 2
    assert all(not p.batches for p in resp.partitions[1:5])


def test_multi_fetch_over_1000_partitions_stays_within_its_byte_bounds(stub, raw: Raw) -> None:
    """1,000 partitions, three batches each: every reply's stored frames fit the
    total max_bytes and each partition's own max_bytes, partitions come back in
    the order asked, and rotating the order reads every record exactly once."""
    t = topic_name()
    n = 1000
    create_topic(stub, t, partitions=n)
    for round_ in range(3):
        batches = [
            batch(t, p, [f"{p}-{round_}-{i}".encode() * 8 for i in range(4)]) for p in range(n)
        ]
        resp = stub.MultiProduce(pb.MultiProduceRequest(batches=batches), timeout=60)
        assert all(r.status.code == code_pb2.OK for r in resp.results)
    one = fetch_all(stub, t, 0)

    def fetch(order: list[int], **fields: int) -> tuple[list[Any], pb.MultiFetchResponse]:
        req = pb.MultiFetchRequest(
            partitions=[
                pb.FetchPartition(topic=t, partition=p, offset=positions[p], max_bytes=per)
                for p in order
            ],
            **fields,
        )
        reply = raw.multi_fetch(req, timeout=60)
        return [parse_fetch(e) for e in split_multi_fetch(reply)], pb.MultiFetchResponse.FromString(
            reply
        )

    positions = [0] * n
    per = 1 << 20
    frames, _ = fetch([0])
    frame = frames[0].frames[0][1].frame_size  # stored bytes of one batch (all are alike)
    # Not multiples of a batch: the last partition that fits gets less room than
    # one batch, which it must then leave for the next request.
    total, per = 300 * frame + frame // 2, 2 * frame + frame // 2
    seen: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(n)}
    start = 0
    for _ in range(50):
        order = [(start + i) % n for i in range(n)]
        parsed, resp = fetch(order, max_bytes=total)
        sizes = [sum(h.frame_size for _, h in f.frames) for f in parsed]
        assert sum(sizes) <= total
        assert all(size <= per for size in sizes)
        if start == 0:
            # Filled, not just bounded (the first reply; later ones may meet the
            # end of the data). A range: batch sizes differ by a few bytes with
            # the partition number, so the unused room is below one batch plus
            # that spread; a reply of one partition only would be 2 batches.
            assert sum(sizes) >= total - 2 * frame
        assert [d.partition for d in resp.partitions] == order
        for p, d in zip(order, resp.partitions, strict=True):
            assert d.status.code == code_pb2.OK and d.high_watermark == 12
            got = [(o, v) for o, v in values_of(d) if o >= positions[p]]
            seen[p].extend(got)
            if got:
                positions[p] = got[-1][0] + 1
        if all(pos == 12 for pos in positions):
            break
        start = (start + 150) % n
    assert all(pos == 12 for pos in positions)
    assert all([o for o, _ in v] == list(range(12)) for v in seen.values())
    assert seen[0] == one


def test_multi_fetch_long_poll_wakes_on_an_append_to_any_partition(stub) -> None:
    """A long poll over 50 idle partitions returns once partition 37 gets a record,
    with that record, long before max_wait_ms."""
    t = topic_name()
    create_topic(stub, t, partitions=50)
    out: list[Any] = []

    def poll() -> None:
        out.append(
            multi_fetch(stub, [(t, p, 0) for p in range(50)], min_bytes=1, max_wait_ms=25_000)
        )

    th = threading.Thread(target=poll)
    t0 = time.monotonic()
    th.start()
    time.sleep(0.5)
    assert not out, "returned before any append"
    stub.Produce(pb.ProduceRequest(topic=t, partition=37, records=records([b"wake"])), timeout=10)
    th.join(30)
    # 15 s of slack on a loaded machine; a poll that missed the wake-up takes 25.
    assert time.monotonic() - t0 < 15
    (resp,) = out
    with_data = [d.partition for d in resp.partitions if d.batches]
    assert with_data == [37]
    assert values_of(resp.partitions[37]) == [(0, b"wake")]


def test_multi_fetch_min_bytes_counts_all_partitions_and_max_wait_ends_it(stub) -> None:
    """min_bytes is over the partitions together (one append is not enough, two
    in different partitions are); with nothing, max_wait_ms ends the poll empty."""
    t = topic_name()
    create_topic(stub, t, partitions=4)
    value = b"v" * 200
    out: list[Any] = []

    def poll() -> None:
        out.append(
            multi_fetch(stub, [(t, p, 0) for p in range(4)], min_bytes=300, max_wait_ms=25_000)
        )

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(0.3)
    stub.Produce(pb.ProduceRequest(topic=t, partition=1, records=records([value])), timeout=10)
    time.sleep(0.7)
    assert not out, "one 200-byte record met min_bytes=300"
    stub.Produce(pb.ProduceRequest(topic=t, partition=3, records=records([value])), timeout=10)
    th.join(30)
    (resp,) = out
    assert [d.partition for d in resp.partitions if d.batches] == [1, 3]
    t0 = time.monotonic()
    empty = multi_fetch(stub, [(t, 0, 0), (t, 2, 0)], min_bytes=1, max_wait_ms=300)
    assert time.monotonic() - t0 >= 0.25
    assert [len(d.batches) for d in empty.partitions] == [0, 0]
    assert all(d.status.code == code_pb2.OK for d in empty.partitions)


def test_multi_fetch_reply_is_readable_by_the_fetch_reader(stub, raw: Raw) -> None:
    """Each entry of the hand-built reply reads as a FetchResponse (parse_fetch),
    frames checked, with the same offsets the generated parser sees."""
    t = topic_name()
    create_topic(stub, t, partitions=3)
    stub.MultiProduce(
        pb.MultiProduceRequest(batches=[batch(t, p, [b"x" * p, b"y"]) for p in range(3)]),
        timeout=30,
    )
    req = pb.MultiFetchRequest(
        partitions=[pb.FetchPartition(topic=t, partition=p) for p in range(3)]
    )
    reply = raw.multi_fetch(req, timeout=30)
    entries = split_multi_fetch(reply)
    assert len(entries) == 3
    for entry in entries:
        frames = parse_fetch(entry)
        assert frames.high_watermark == 2 and len(frames.frames) == 1
    assert (
        pb.MultiFetchResponse.FromString(reply).partitions[2].batches[0].records[0].value == b"xx"
    )


def test_multi_fetch_whole_request_errors(stub) -> None:
    """No partitions, more than 10,000 and negative limits are INVALID_ARGUMENT."""
    t = topic_name()
    create_topic(stub, t)
    cases = {
        "no partitions": pb.MultiFetchRequest(),
        "10001": pb.MultiFetchRequest(partitions=[pb.FetchPartition(topic=t)] * 10_001),
        "max_bytes": pb.MultiFetchRequest(partitions=[pb.FetchPartition(topic=t)], max_bytes=-1),
        "min_bytes": pb.MultiFetchRequest(partitions=[pb.FetchPartition(topic=t)], min_bytes=-1),
        "max_wait": pb.MultiFetchRequest(partitions=[pb.FetchPartition(topic=t)], max_wait_ms=-1),
    }
    for name, req in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.MultiFetch(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
