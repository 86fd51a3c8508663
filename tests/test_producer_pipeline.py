"""The producer's accumulator and pipelining (issue 12): records that arrive while
requests are in flight join the next batch whatever linger_ms is; up to
max_in_flight batches per partition are unacknowledged at once; idempotent
sequences keep a partition's order across retries (the broker's own sequence
check, ``logstore.storage._producers.ProducerState``, refuses out-of-order
batches here as it does in the broker); the buffer bound covers open batches.

``SeqBroker`` is a fault-injecting transport: it stores batches per partition
behind the real ProducerState check, can hold requests (several in flight),
answer them in any order, and fail chosen requests before storing them
("drop": UNAVAILABLE, not stored), after storing them ("lose": stored, the
reply says UNAVAILABLE) or for good ("invalid": INVALID_ARGUMENT, not stored).
The last tests use a real broker process with a transport that drops one
pipelined request.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from logstore import errors
from logstore.client import Admin, Consumer, Producer
from logstore.client._rpc import translate_status
from logstore.client.producer import GrpcTransport
from logstore.storage._producers import ProducerState
from logstore.v1 import logstore_pb2
from tests.brokerproc import BrokerProcess, start_broker

Callback = Callable[[Any, BaseException | None], None]


class SeqBroker:
    """A transport storing like the broker, with the broker's sequence check (see module doc).
    Unary Produce only (the producer sends one request per batch); :class:`MultiSeqBroker`
    adds MultiProduce."""

    address = "seq:0"

    def __init__(self, partitions: int = 1, seed: int | None = None) -> None:
        self.partitions = partitions
        self.cond = threading.Condition()
        self.requests: list[logstore_pb2.ProduceRequest] = []
        self.logs: dict[int, list[bytes]] = {}
        self.states: dict[int, ProducerState] = {}
        #: request index -> "drop" | "lose" | "invalid"
        self.faults: dict[int, str] = {}
        #: with a seed, each request fails at random ("drop"/"lose" 10 % each) and is
        #: processed after a random delay on its own thread, so pipelined requests
        #: reach the "log" in any order
        self.rng = random.Random(seed) if seed is not None else None
        self.hold = False
        self.held: list[tuple[int, logstore_pb2.ProduceRequest, Callback]] = []
        self.inits = 0
        self.in_flight = 0
        self.max_in_flight_seen = 0

    # -- Transport ---------------------------------------------------------------

    def topic_metadata(self, topic: str) -> tuple[int, int]:
        return self.partitions, 1 << 20

    def init_producer(self) -> tuple[int, int]:
        with self.cond:
            self.inits += 1
            return self.inits, 0

    def produce(self, request: bytes, timeout_s: float, callback: Callback) -> None:
        req = logstore_pb2.ProduceRequest.FromString(request)
        with self.cond:
            idx = len(self.requests)
            self.requests.append(req)
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
            if self.rng is not None:
                roll = self.rng.random()
                if roll < 0.1:
                    self.faults[idx] = "drop"
                elif roll < 0.2:
                    self.faults[idx] = "lose"
                delay = self.rng.random() * 0.003
            if self.hold:
                self.held.append((idx, req, callback))
                self.cond.notify_all()
                return
        if self.rng is not None:
            threading.Timer(delay, self._process, (idx, req, callback)).start()
        else:
            self._process(idx, req, callback)

    def close(self) -> None:
        pass

    # -- the "broker" --------------------------------------------------------------

    def _process(self, idx: int, req: logstore_pb2.ProduceRequest, callback: Callback) -> None:
        resp, err = self._store(idx, req)
        if err is not None:
            callback(None, err)
        else:
            callback(resp, None)

    def _store(
        self, idx: int, req: logstore_pb2.ProduceRequest
    ) -> tuple[logstore_pb2.ProduceResponse, errors.LogStoreError | None]:
        with self.cond:
            fault = self.faults.pop(idx, None)
            self.in_flight -= 1
            err: errors.LogStoreError | None = None
            offset = -1
            if fault == "drop":
                err = errors.BrokerUnavailableError("dropped before the broker")
            elif fault == "invalid":
                err = errors.InvalidBatchError("refused for good")
            else:
                log = self.logs.setdefault(req.partition, [])
                state = self.states.setdefault(req.partition, ProducerState(100, 3_600_000))
                count = len(req.records)
                dup = None
                try:
                    if req.producer_id:
                        dup = state.check(
                            req.producer_id,
                            req.producer_epoch,
                            req.base_sequence,
                            count,
                            f"p{req.partition}",
                        )
                except errors.OutOfOrderSequenceError as exc:
                    err = exc
                else:
                    if dup is not None:
                        offset = dup.base_offset
                    else:
                        offset = len(log)
                        log.extend(r.value for r in req.records)
                        if req.producer_id:
                            state.update(
                                req.producer_id,
                                req.producer_epoch,
                                req.base_sequence,
                                count,
                                offset,
                                0,
                            )
                    if fault == "lose":
                        err = errors.BrokerUnavailableError("reply lost")
            self.cond.notify_all()
        return logstore_pb2.ProduceResponse(partition=req.partition, base_offset=offset), err

    def wait_held(self, n: int, timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.held) >= n, timeout), (
                f"{len(self.held)} requests held, wanted {n}"
            )

    def release(self, order: list[int] | None = None, keep_holding: bool = False) -> None:
        """Answer the held requests (in ``order`` of their positions, default as sent)."""
        with self.cond:
            held, self.held = self.held, []
            self.hold = keep_holding
        for i in order if order is not None else range(len(held)):
            self._process(*held[i])


class MultiSeqBroker(SeqBroker):
    """SeqBroker with MultiProduce: each batch of a request is stored (or refused) on
    its own, with its own status, as the broker does; ``faults`` count batches."""

    def __init__(self, partitions: int = 1, seed: int | None = None) -> None:
        super().__init__(partitions)
        #: with a seed, each batch fails at random ("drop"/"lose" 10 % each)
        self.batch_rng = random.Random(seed) if seed is not None else None
        self.multi: list[logstore_pb2.MultiProduceRequest] = []
        self.unimplemented = False

    def multi_produce(self, request: bytes, timeout_s: float, callback: Callback) -> None:
        from logstore.broker._status import rich_status
        from logstore.client.producer._sender import MultiProduceUnimplemented

        if self.unimplemented:
            callback(None, MultiProduceUnimplemented("Method not found!"))
            return
        req = logstore_pb2.MultiProduceRequest.FromString(request)
        self.multi.append(req)
        results = []
        for b in req.batches:
            with self.cond:
                idx = len(self.requests)
                self.requests.append(b)
                self.in_flight += 1
                self.max_in_flight_seen = max(self.max_in_flight_seen, len(req.batches))
                if self.batch_rng is not None:
                    roll = self.batch_rng.random()
                    if roll < 0.2:
                        self.faults[idx] = "drop" if roll < 0.1 else "lose"
            resp, err = self._store(idx, b)
            if err is not None:
                resp = logstore_pb2.ProduceResponse(base_offset=-1, status=rich_status(err))
            results.append(resp)
        callback(
            logstore_pb2.MultiProduceResponse(request_id=req.request_id, results=results), None
        )


def _pump(p: Producer, fake: SeqBroker, values: list[bytes], held: int) -> list[Any]:
    """Send one record per request until ``held`` requests are held in flight."""
    handles = []
    for i, v in enumerate(values[:held]):
        handles.append(p.send("t", v))
        fake.wait_held(i + 1)
    return handles


def _values(n: int, tag: str = "r") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


# -- batching while in flight --------------------------------------------------------


def test_records_sent_while_a_request_is_in_flight_join_the_next_batch() -> None:
    """linger_ms=0, one request allowed in flight: the 29 records sent (2 ms apart, so
    the sender wakes between them) while the first request is unanswered go as ONE
    next batch. The old producer closed a batch per record at linger 0 and sent them
    one request after another (30 requests)."""
    fake = SeqBroker()
    fake.hold = True
    values = _values(30)
    with Producer(transport=fake, linger_ms=0, max_in_flight=1) as p:
        first = p.send("t", values[0])
        fake.wait_held(1)
        rest = []
        for v in values[1:]:
            rest.append(p.send("t", v))
            time.sleep(0.002)
        assert len(fake.requests) == 1  # the sender had every chance to send more
        fake.release()
        for i, h in enumerate([first, *rest]):
            assert h.result(10) == (0, i)
    assert [len(r.records) for r in fake.requests] == [1, 29]
    assert fake.logs[0] == values


def test_up_to_max_in_flight_requests_per_partition_then_one_batch() -> None:
    """linger_ms=0: five requests go without waiting for replies (one record each);
    records sent after that wait in one open batch until a slot frees."""
    fake = SeqBroker()
    fake.hold = True
    values = _values(50)
    with Producer(transport=fake, linger_ms=0) as p:
        hs = _pump(p, fake, values, 5)
        hs += [p.send("t", v) for v in values[5:]]
        time.sleep(0.05)
        assert len(fake.requests) == 5  # max_in_flight defaults to 5
        fake.release(keep_holding=False)
        for i, h in enumerate(hs):
            assert h.result(10) == (0, i)
    assert [len(r.records) for r in fake.requests] == [1, 1, 1, 1, 1, 45]
    assert [r.base_sequence for r in fake.requests] == [0, 1, 2, 3, 4, 5]
    assert fake.max_in_flight_seen == 5
    assert fake.logs[0] == values


def test_linger_still_batches_when_nothing_is_in_flight() -> None:
    """A 200 ms linger holds a batch that long even with free request slots."""
    fake = SeqBroker()
    with Producer(transport=fake, linger_ms=200) as p:
        started = time.monotonic()
        hs = [p.send("t", v) for v in _values(10)]
        hs[-1].result(10)
        waited = time.monotonic() - started
    assert len(fake.requests) == 1
    assert waited >= 0.18


# -- order across retries ------------------------------------------------------------------


def _five_in_flight_then(fault: str | None, order: list[int] | None = None) -> SeqBroker:
    """Five one-record requests in flight, request 1 with ``fault``, answered in
    ``order``; then five more records. Returns the fake after everything completed."""
    fake = SeqBroker()
    fake.hold = True
    if fault:
        fake.faults[1] = fault
    values = _values(10)
    with Producer(transport=fake, linger_ms=0, retry_backoff_ms=1, retry_backoff_max_ms=5) as p:
        hs = _pump(p, fake, values, 5)
        hs += [p.send("t", v) for v in values[5:]]
        fake.release(order)
        outcome = [h.exception(10) for h in hs]
        offsets = [h.result(10)[1] for h, e in zip(hs, outcome, strict=True) if e is None]
    fake.outcome = outcome  # type: ignore[attr-defined]
    fake.offsets = offsets  # type: ignore[attr-defined]
    return fake


def test_a_dropped_request_is_retried_before_the_ones_behind_it() -> None:
    """Request 1 of 5 in flight fails with UNAVAILABLE unstored: the broker refuses
    2..4 as out of order; the producer resends 1, 2, 3, 4 in order, then the rest."""
    fake = _five_in_flight_then("drop")
    assert fake.logs[0] == _values(10)
    assert fake.offsets == list(range(10))  # type: ignore[attr-defined]
    seqs = [r.base_sequence for r in fake.requests]
    assert seqs[:5] == [0, 1, 2, 3, 4]
    assert seqs[5:] == [1, 2, 3, 4, 5]  # the retries in order, then the next batch
    assert fake.inits == 1  # no new producer id: nothing failed for good


def test_a_lost_reply_among_pipelined_requests_stores_nothing_twice() -> None:
    """Request 1 is stored but its reply is lost: 2..4 are stored behind it; its
    retry is answered as a duplicate with the original offset."""
    fake = _five_in_flight_then("lose")
    assert fake.logs[0] == _values(10)
    assert fake.offsets == list(range(10))  # type: ignore[attr-defined]
    assert [r.base_sequence for r in fake.requests] == [0, 1, 2, 3, 4, 1, 5]


def test_pipelined_requests_the_broker_takes_out_of_order_are_retried_in_order() -> None:
    """The broker handles the five in-flight requests last to first: 4, 3, 2, 1 are
    refused as out of order, 0 is stored; the producer resends 1..4 in order."""
    fake = _five_in_flight_then(None, order=[4, 3, 2, 1, 0])
    assert fake.logs[0] == _values(10)
    assert fake.offsets == list(range(10))  # type: ignore[attr-defined]
    assert all(e is None for e in fake.outcome)  # type: ignore[attr-defined]


def test_a_batch_failing_for_good_takes_a_new_id_and_keeps_the_rest_in_order() -> None:
    """Request 1 fails for good (not stored): its record fails; 2..4, refused as out of
    order, are renumbered under a new producer id and stored after 0, in order."""
    fake = _five_in_flight_then("invalid")
    outcome = fake.outcome  # type: ignore[attr-defined]
    assert isinstance(outcome[1], errors.InvalidBatchError)
    assert [e for i, e in enumerate(outcome) if i != 1] == [None] * 9
    want = [v for i, v in enumerate(_values(10)) if i != 1]
    assert fake.logs[0] == want
    assert fake.inits == 2
    assert fake.offsets == list(range(9))  # type: ignore[attr-defined]
    renumbered = [r for r in fake.requests if r.producer_id == 2]
    assert [r.base_sequence for r in renumbered] == [0, 1, 2, 3]


def _random_run(seed: int, partitions: int, n: int, multi: bool = False) -> None:
    fake = (
        MultiSeqBroker(partitions, seed) if multi else SeqBroker(partitions=partitions, seed=seed)
    )
    rng = random.Random(seed)
    sent: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    handles = []
    with Producer(
        transport=fake,
        linger_ms=rng.choice([0, 0, 1]),
        retry_backoff_ms=1,
        retry_backoff_max_ms=5,
        batch_bytes=rng.choice([200, 1 << 20]),
    ) as p:
        for i in range(n):
            part = rng.randrange(partitions)
            v = f"s{seed}-{i}".encode()
            sent[part].append(v)
            handles.append((part, p.send("t", v, partition=part)))
            if rng.random() < 0.05:
                time.sleep(0.002)  # let requests go while records keep coming
        p.flush(60)
    got: dict[int, list[int]] = {q: [] for q in range(partitions)}
    for part, h in handles:
        got[part].append(h.result(1)[1])
    for part in range(partitions):
        assert fake.logs.get(part, []) == sent[part]  # in order, each record once
        assert got[part] == list(range(len(sent[part])))
    assert fake.inits == 1  # only retriable faults: the sequence never broke
    # it did pipeline (unary: requests in flight at once; multi: batches in one request)
    assert fake.max_in_flight_seen > 1


@pytest.mark.parametrize("seed", range(3))
def test_random_faults_and_reordering_keep_order_and_store_once(seed: int) -> None:
    """Random drops, lost replies and broker-side reordering of pipelined requests:
    every record is stored once, in send order per partition, at its handle's offset."""
    _random_run(seed, partitions=3, n=400)


@pytest.mark.parametrize("seed", range(3))
def test_random_per_batch_faults_in_multi_produce_keep_order_and_store_once(seed: int) -> None:
    """The same through MultiProduce, each batch of a request failing on its own."""
    _random_run(seed, partitions=3, n=400, multi=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 40))
def test_random_faults_and_reordering_keep_order_and_store_once_many(seed: int) -> None:
    _random_run(seed, partitions=1 + seed % 4, n=2000, multi=seed % 2 == 1)


# -- MultiProduce ---------------------------------------------------------------------------


def test_one_multi_produce_carries_every_ready_partition_and_statuses_are_per_batch() -> None:
    """Records for 4 partitions sent within one linger window go as ONE MultiProduce;
    partition 2's batch is refused for good (its handles fail, the others succeed),
    partition 1's fails retriably and is retried, in order, in a later request."""
    fake = MultiSeqBroker(partitions=4)
    fake.faults = {1: "drop", 2: "invalid"}  # batch indexes: the 2nd and 3rd of request 1
    with Producer(transport=fake, linger_ms=200, retry_backoff_ms=1) as p:
        hs = {q: [p.send("t", b"%d-%d" % (q, i), partition=q) for i in range(3)] for q in range(4)}
        out = {q: [h.exception(10) for h in hs[q]] for q in range(4)}
        more = p.send("t", b"1-3", partition=1)
        assert more.result(10) == (1, 3)
    assert [len(r.batches) for r in fake.multi[:1]] == [4]
    assert [b.partition for b in fake.multi[0].batches] == [0, 1, 2, 3]
    assert all(e is None for q in (0, 1, 3) for e in out[q])
    assert all(isinstance(e, errors.InvalidBatchError) for e in out[2])
    assert fake.logs[1] == [b"1-0", b"1-1", b"1-2", b"1-3"]
    assert 2 not in fake.logs or fake.logs[2] == []
    assert fake.logs[0] == [b"0-%d" % i for i in range(3)]


def test_a_broker_without_multi_produce_gets_one_produce_per_batch() -> None:
    """UNIMPLEMENTED (an older broker): the producer falls back to unary Produce and
    the batches of the refused request are delivered."""
    fake = MultiSeqBroker(partitions=2)
    fake.unimplemented = True
    with Producer(transport=fake, linger_ms=0, retry_backoff_ms=1) as p:
        hs = [p.send("t", b"v%d" % i, partition=i % 2) for i in range(10)]
        assert [h.result(10)[1] for h in hs] == [i // 2 for i in range(10)]
    assert fake.multi == []
    assert fake.logs[0] == [b"v%d" % i for i in range(0, 10, 2)]


# -- bounds ----------------------------------------------------------------------------


def test_buffer_bound_counts_the_open_batch() -> None:
    """With every request slot taken, records pile into the open batch; buffer_bytes
    bounds them too: send() blocks, then raises DeadlineExceededError, and the bytes
    queued stay within the buffer plus one record. (The old producer counted only
    closed batches: the open one grew without bound under a long linger.)"""
    fake = SeqBroker()
    fake.hold = True
    size = 100
    with Producer(transport=fake, linger_ms=60_000, buffer_bytes=10_000, max_block_ms=300) as p:
        with pytest.raises(errors.DeadlineExceededError, match="buffer full"):
            for _ in range(1_000):
                p.send("t", b"x" * size)
        assert p._queued_bytes <= 10_000 + size + 8
        fake.release()  # the blocked send made the sender send the open batch
        p.flush(10)
    assert sum(len(r.records) for r in fake.requests) > 0
    assert len(fake.logs[0]) == sum(len(r.records) for r in fake.requests)


def test_max_in_flight_above_five_needs_idempotence_off() -> None:
    fake = SeqBroker()
    with pytest.raises(errors.InvalidArgumentError, match="at most 5"):
        Producer(transport=fake, max_in_flight=6)
    with Producer(transport=fake, max_in_flight=8, idempotent=False) as p:
        assert p.send("t", b"v").result(10) == (0, 0)


# -- a real broker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("pipeline") / "data")
    try:
        yield b
    finally:
        b.stop()


class DroppingTransport(GrpcTransport):
    """Fails the ``drop``-th request with UNAVAILABLE after 50 ms without sending it
    (a request lost on the way), as a unary Produce or a MultiProduce (``multi``)."""

    def __init__(self, address: str, drop: int, multi: bool) -> None:
        super().__init__(address, 5000, 30_000)
        self.drop = drop
        self.sent = 0
        self.seqs: list[int] = []
        self.out_of_order = 0
        # the unary paths under test: no ProduceStream (its order is the stream's)
        self.open_stream = None  # type: ignore[assignment,method-assign]
        if not multi:
            self.multi_produce = None  # type: ignore[assignment,method-assign]

    def _lost(self, callback: Any) -> bool:
        self.sent += 1
        if self.sent != self.drop:
            return False
        threading.Timer(
            0.05, callback, (None, errors.BrokerUnavailableError("dropped on the way"))
        ).start()
        return True

    def produce(self, request: bytes, timeout_s: float, callback: Any) -> None:
        self.seqs.append(logstore_pb2.ProduceRequest.FromString(request).base_sequence)
        if self._lost(callback):
            return

        def count(resp: Any, exc: BaseException | None) -> None:
            if isinstance(exc, errors.OutOfOrderSequenceError):
                self.out_of_order += 1
            callback(resp, exc)

        super().produce(request, timeout_s, count)

    def multi_produce(self, request: bytes, timeout_s: float, callback: Any) -> None:
        req = logstore_pb2.MultiProduceRequest.FromString(request)
        self.seqs += [b.base_sequence for b in req.batches]
        if self._lost(callback):
            return

        def count(resp: Any, exc: BaseException | None) -> None:
            if resp is not None:
                self.out_of_order += sum(
                    isinstance(translate_status(r.status), errors.OutOfOrderSequenceError)
                    for r in resp.results
                    if r.status.code
                )
            callback(resp, exc)

        super().multi_produce(request, timeout_s, count)


@pytest.mark.parametrize("multi", [False, True], ids=["Produce", "MultiProduce"])
def test_real_broker_refuses_what_follows_a_dropped_request_and_order_holds(
    broker: BrokerProcess, multi: bool
) -> None:
    """Against the real broker: request 3 is lost on the way while the requests behind
    it are in flight; the broker refuses those as out of order, the producer resends
    from 3 in order, and a consumer reads every record once, in order."""
    with Admin(broker.grpc_address) as a:
        a.create_topic(f"pipe-{multi}", 1)
    transport = DroppingTransport(broker.grpc_address, drop=3, multi=multi)
    values = _values(3000, "v")
    with Producer(transport=transport, linger_ms=0, retry_backoff_ms=10) as p:
        hs = []
        for i, v in enumerate(values):
            hs.append(p.send(f"pipe-{multi}", v))
            if i % 20 == 19:
                time.sleep(0.002)  # a paced producer: requests go while records come
        p.flush(60)
        offsets = [h.result(1)[1] for h in hs]
    assert offsets == list(range(len(values)))
    # requests were sent behind the dropped one (the drop answers after 50 ms) and the
    # broker refused them; a producer that waits for each reply never gets here
    assert transport.out_of_order >= 1
    assert transport.seqs.count(transport.seqs[2]) >= 2  # the dropped one, sent again
    with Consumer(broker.grpc_address) as c:
        c.assign([(f"pipe-{multi}", 0)])
        got: list[bytes | None] = []
        deadline = time.monotonic() + 30
        while len(got) < len(values) and time.monotonic() < deadline:
            for recs in c.poll(500).values():
                got.extend(r.value for r in recs)
        assert c.poll(300) == {}
    assert got == values


class StreamCountingTransport(GrpcTransport):
    """Counts each way requests go; ``break_after``: cancels the ProduceStream once,
    after that many stream requests (a connection lost with requests on it)."""

    def __init__(self, address: str, break_after: int = 0) -> None:
        super().__init__(address, 5000, 30_000)
        self.unary = self.multi = self.streamed = self.streams = 0
        self.break_after = break_after

    def produce(self, request: bytes, timeout_s: float, callback: Any) -> None:
        self.unary += 1
        super().produce(request, timeout_s, callback)

    def multi_produce(self, request: bytes, timeout_s: float, callback: Any) -> None:
        self.multi += 1
        super().multi_produce(request, timeout_s, callback)

    def open_stream(self, on_reply: Any) -> Any:
        self.streams += 1
        stream = super().open_stream(on_reply)
        send = stream.send

        def counted(token: Any, request: bytes) -> None:
            self.streamed += 1
            send(token, request)
            if self.streamed == self.break_after:
                stream._call.cancel()  # ends the stream with requests unanswered

        stream.send = counted  # type: ignore[method-assign]
        return stream


def _read_all(address: str, topic: str, partitions: int, n: int) -> dict[int, list[bytes | None]]:
    got: dict[int, list[bytes | None]] = {p: [] for p in range(partitions)}
    with Consumer(address) as c:
        c.assign([(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + 30
        while sum(map(len, got.values())) < n and time.monotonic() < deadline:
            for tp, recs in c.poll(500).items():
                got[tp.partition].extend(r.value for r in recs)
        assert c.poll(300) == {}
    return got


def test_few_partitions_go_on_the_produce_stream_many_as_multi_produce(
    broker: BrokerProcess,
) -> None:
    """One partition: every request is a ProduceStream message (ordered, so a paced
    linger 0 producer is never refused as out of order); then, in the same producer,
    more partitions than STREAM_MAX_PARTITIONS: MultiProduce. Every record once, in
    order, across the switch."""
    from logstore.client.producer._sender import STREAM_MAX_PARTITIONS

    wide = STREAM_MAX_PARTITIONS * 4
    with Admin(broker.grpc_address) as a:
        a.create_topic("stream-one", 1)
        a.create_topic("stream-wide", wide)
    transport = StreamCountingTransport(broker.grpc_address)
    one = _values(2000, "a")
    many = _values(4000, "b")
    with Producer(transport=transport, linger_ms=0) as p:
        for i, v in enumerate(one):
            p.send("stream-one", v)
            if i % 20 == 19:
                time.sleep(0.001)
        p.flush(60)
        assert transport.streamed >= 2 and transport.multi == 0 and transport.unary == 0
        streamed = transport.streamed
        for i, v in enumerate(many):
            p.send("stream-wide", v, partition=i % wide)
        p.flush(60)
        assert transport.multi >= 1  # the wide topic's passes went as MultiProduce
        p.send("stream-one", b"last")  # few partitions with work again: the stream
        p.flush(60)
    assert transport.streamed == streamed + 1
    assert _read_all(broker.grpc_address, "stream-one", 1, len(one) + 1)[0] == [*one, b"last"]
    wide_got = _read_all(broker.grpc_address, "stream-wide", wide, len(many))
    for part in range(wide):
        assert wide_got[part] == many[part::wide]


def test_a_broken_produce_stream_is_reopened_and_every_record_stored_once_in_order(
    broker: BrokerProcess,
) -> None:
    """The stream is cancelled with requests on it: their batches fail retriably, go
    again (idempotent: any the broker had stored are answered as duplicates) on a new
    stream, and a consumer reads every record once, in order."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("stream-break", 1)
    transport = StreamCountingTransport(broker.grpc_address, break_after=5)
    values = _values(3000, "s")
    with Producer(transport=transport, linger_ms=0, retry_backoff_ms=10) as p:
        hs = []
        for i, v in enumerate(values):
            hs.append(p.send("stream-break", v))
            if i % 20 == 19:
                time.sleep(0.002)
        p.flush(60)
        assert all(h.result(1) for h in hs)
    assert transport.streams >= 2  # the broken stream was replaced
    assert _read_all(broker.grpc_address, "stream-break", 1, len(values))[0] == values
