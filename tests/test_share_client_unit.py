"""ShareConsumer and Worker against a scripted in-process ShareGroups service (no broker):
acknowledgements batched into ranges riding on the next fetch or flushed by the timer,
records outside the acquired ranges skipped, refused acknowledgements reported to the
callback and raised by ``commit()``, rejoin on UNKNOWN_MEMBER_ID, leave on close; the
Worker's outcomes (return / exception / Reject) and its seeded backoff schedule."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from logstore import errors
from logstore.broker._status import rich_status
from logstore.client import AckFailure, Reject, ShareConsumer, ShareMessage, Worker
from logstore.client._backoff import Backoff
from logstore.v1 import share_pb2 as spb
from logstore.v1 import share_pb2_grpc
from logstore.wire import encode_frame, encode_records

LOCK_MS = 30_000


def frame(base: int, values: list[bytes], ts: int = 1_000) -> bytes:
    body, n, _ = encode_records(values)
    return encode_frame(body, n, base, ts)


class FakeShare(share_pb2_grpc.ShareGroupsServicer):
    """Records what the client sends; replies from a script."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heartbeats: list[spb.ShareGroupHeartbeatRequest] = []
        self.fetches: list[spb.ShareFetchRequest] = []
        self.acks: list[spb.ShareAcknowledgeRequest] = []
        self.replies: list[spb.ShareFetchResponse] = []
        self.refuse: set[int] = set()  # offsets whose ranges are refused
        self.expire_member: str | None = None  # this member gets UNKNOWN_MEMBER_ID once
        self.fail_acking_fetch = False  # the next ShareFetch with acks fails INVALID_ARGUMENT
        self.members = 0

    def _check(self, member_id: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            expired = member_id and member_id == self.expire_member
            if expired:
                self.expire_member = None
        if expired:
            exc = errors.UnknownMemberIdError(f"member {member_id} is unknown")
            context.abort_with_status(rpc_status.to_status(rich_status(exc)))

    def _results(self, batches: Any) -> list[spb.AcknowledgeResult]:
        out = []
        for b in batches:
            bad = any(b.first_offset <= o <= b.last_offset for o in self.refuse)
            out.append(
                spb.AcknowledgeResult(
                    topic=b.topic,
                    partition=b.partition,
                    first_offset=b.first_offset,
                    last_offset=b.last_offset,
                    code=9 if bad else 0,
                    reason="INVALID_RECORD_STATE" if bad else "",
                    message="lock expired" if bad else "",
                )
            )
        return out

    def ShareGroupHeartbeat(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.heartbeats.append(request)
        self._check(request.member_id, context)
        mid = request.member_id
        if not mid:
            with self.lock:
                self.members += 1
                mid = f"m{self.members}"
        return spb.ShareGroupHeartbeatResponse(
            member_id=mid, heartbeat_interval_ms=200, session_timeout_ms=45_000
        )

    def ShareFetch(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.fetches.append(request)
        self._check(request.member_id, context)
        with self.lock:
            fail = self.fail_acking_fetch and bool(request.acknowledgements)
            self.fail_acking_fetch &= not fail
        if fail:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scripted failure")
        with self.lock:
            reply = self.replies.pop(0) if self.replies else None
        if reply is None:
            time.sleep(min(request.max_wait_ms, 50) / 1000)
            reply = spb.ShareFetchResponse()
        reply.acknowledgements.extend(self._results(request.acknowledgements))
        return reply

    def ShareAcknowledge(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.acks.append(request)
        self._check(request.member_id, context)
        return spb.ShareAcknowledgeResponse(
            acknowledgements=self._results(request.acknowledgements)
        )

    def sent_batches(self) -> list[tuple[int, int, int]]:
        """Every acknowledgement range sent so far: (first, last, type)."""
        with self.lock:
            reqs = [r.acknowledgements for r in self.fetches] + [
                r.acknowledgements for r in self.acks
            ]
        return [(b.first_offset, b.last_offset, b.type) for bs in reqs for b in bs]


@pytest.fixture
def fake() -> Iterator[tuple[FakeShare, str]]:
    svc = FakeShare()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    share_pb2_grpc.add_ShareGroupsServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield svc, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def reply(
    records: bytes, acquired: list[tuple[int, int, int]], topic: str = "t", partition: int = 0
) -> spb.ShareFetchResponse:
    deadline = int(time.time() * 1000) + LOCK_MS
    return spb.ShareFetchResponse(
        partitions=[
            spb.ShareFetchPartition(
                topic=topic,
                partition=partition,
                records=records,
                acquired=[
                    spb.AcquiredRecords(
                        first_offset=a, last_offset=b, delivery_count=d, lock_deadline_ms=deadline
                    )
                    for a, b, d in acquired
                ],
            )
        ]
    )


def test_only_records_inside_acquired_ranges_are_returned(fake: tuple[FakeShare, str]) -> None:
    """A frame holding offsets 10..19 with acquired ranges 12..13 and 17..19 gives exactly
    those five records, each with its own range's delivery count."""
    svc, addr = fake
    values = [f"v{i}".encode() for i in range(10, 20)]
    svc.replies.append(reply(frame(10, values), [(12, 13, 1), (17, 19, 3)]))
    with ShareConsumer(addr, "g", ["t"]) as c:
        got = c.poll(2000)
        assert [(m.offset, m.value, m.delivery_count) for m in got] == [
            (12, b"v12", 1),
            (13, b"v13", 1),
            (17, b"v17", 3),
            (18, b"v18", 3),
            (19, b"v19", 3),
        ]
        assert {(m.topic, m.partition) for m in got} == {("t", 0)}
        for m in got:
            m.ack()


def test_acks_ride_on_the_next_fetch_as_ranges(fake: tuple[FakeShare, str]) -> None:
    """100 records acked one by one go out as one ACCEPT range on the next ShareFetch (no
    ShareAcknowledge round trip each); a nack and a reject in the middle split it."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"x"] * 100), [(0, 99, 1)]))
    with ShareConsumer(addr, "g", ["t"], ack_flush_interval_ms=60_000) as c:
        msgs = c.poll(2000)
        assert len(msgs) == 100
        for m in msgs:
            if m.offset == 40:
                m.nack(delay_ms=250, error="boom")
            elif m.offset == 41:
                m.reject("poison")
            else:
                m.ack()
        assert c.pending_acknowledgements == 100
        # Every fetch, not the last two, and until they have gone: a fetch may
        # still be in flight when the acks are queued, and an empty one waits
        # 50 ms (a CI machine under load found none in the last two after
        # one poll(100)).
        deadline = time.monotonic() + 10
        while True:
            c.poll(100)
            with svc.lock:
                batches = [b for f in svc.fetches for b in f.acknowledgements]
            if batches or time.monotonic() > deadline:
                break
        assert svc.acks == []
        got = sorted((b.first_offset, b.last_offset, b.type, b.delay_ms, b.error) for b in batches)
        assert got == [
            (0, 39, spb.ACCEPT, 0, ""),
            (40, 40, spb.RELEASE, 250, "boom"),
            (41, 41, spb.REJECT, 0, "poison"),
            (42, 99, spb.ACCEPT, 0, ""),
        ]
        with pytest.raises(errors.InvalidArgumentError, match="already acknowledged"):
            msgs[0].ack()


def test_acks_of_a_failed_fetch_are_queued_again_and_sent_once(
    fake: tuple[FakeShare, str],
) -> None:
    """msg.ack()s of two partitions and a renewal ride on a fetch that fails: they are
    queued again (pending_acknowledgements counts them), in front of an ack made
    after the failure, and the next fetch sends each once: the renewal first, then
    one ACCEPT range per partition."""
    svc, addr = fake
    two = reply(frame(0, [b"a", b"b", b"c"]), [(0, 2, 1)])
    two.partitions.extend(reply(frame(0, [b"d", b"e", b"f"]), [(0, 2, 1)], partition=1).partitions)
    svc.replies.append(two)
    with ShareConsumer(addr, "g", ["t"], ack_flush_interval_ms=60_000) as c:
        msgs = c.poll(2000)
        assert [(m.partition, m.offset) for m in msgs] == [
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 0),
            (1, 1),
            (1, 2),
        ]
        for m in msgs[:5]:
            m.ack()
        msgs[5].extend(1_000)
        assert c.pending_acknowledgements == 6
        svc.fail_acking_fetch = True
        with pytest.raises(errors.InvalidArgumentError, match="scripted failure"):
            c.poll(100)
        assert c.pending_acknowledgements == 6
        msgs[5].ack()
        assert c.pending_acknowledgements == 7
        c.poll(100)
        assert c.pending_acknowledgements == 0
        sent = [
            [(b.partition, b.first_offset, b.last_offset, b.type) for b in f.acknowledgements]
            for f in svc.fetches
            if f.acknowledgements
        ]
        renew = (1, 2, 2, spb.RENEW)
        accepts = [(0, 0, 2, spb.ACCEPT), (1, 0, 2, spb.ACCEPT)]
        assert sent == [[renew, *accepts[:1], (1, 0, 1, spb.ACCEPT)], [renew, *accepts]]


def test_acks_flushed_by_the_timer_without_a_poll(fake: tuple[FakeShare, str]) -> None:
    """With no further poll, queued acks are sent by the background thread within about
    ack_flush_interval_ms (50 ms), in one ShareAcknowledge."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"x"] * 10), [(0, 9, 1)]))
    with ShareConsumer(addr, "g", ["t"], ack_flush_interval_ms=50) as c:
        msgs = c.poll(2000)
        t0 = time.monotonic()
        for m in msgs:
            m.ack()
        while not svc.acks and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        assert len(svc.acks) == 1 and elapsed < 1.0
        assert [(b.first_offset, b.last_offset) for b in svc.acks[0].acknowledgements] == [(0, 9)]
        assert c.pending_acknowledgements == 0


def test_refused_ack_goes_to_the_callback_and_commit_raises(fake: tuple[FakeShare, str]) -> None:
    """A range the broker refuses (INVALID_RECORD_STATE) is passed to on_ack_error and
    commit() raises FailedPreconditionError naming it; the applied ranges are not reported."""
    svc, addr = fake
    seen: list[AckFailure] = []
    svc.replies.append(reply(frame(0, [b"x"] * 4), [(0, 3, 1)]))
    with ShareConsumer(
        addr, "g", ["t"], on_ack_error=seen.extend, ack_flush_interval_ms=60_000
    ) as c:
        msgs = c.poll(2000)
        svc.refuse = {2}
        msgs[0].ack()
        msgs[1].ack()
        msgs[2].nack()
        msgs[3].ack()
        with pytest.raises(errors.FailedPreconditionError, match=r"t-0 offset 2.*INVALID_RECORD"):
            c.commit()
        assert [(f.first_offset, f.last_offset, f.kind, f.reason) for f in seen] == [
            (2, 2, "RELEASE", "INVALID_RECORD_STATE")
        ]
        c.commit()  # nothing pending: nothing sent, nothing raised
        assert len(svc.acks) == 1


def test_unknown_member_rejoins_and_reports_dropped_acks(fake: tuple[FakeShare, str]) -> None:
    """UNKNOWN_MEMBER_ID on a fetch makes the consumer join again (member_id ""); the acks
    it had queued are reported as refused (the records were given back) and not resent."""
    svc, addr = fake
    seen: list[AckFailure] = []
    svc.replies.append(reply(frame(0, [b"x"] * 3), [(0, 2, 1)]))
    with ShareConsumer(
        addr, "g", ["t"], on_ack_error=seen.extend, ack_flush_interval_ms=60_000
    ) as c:
        assert c.member_id == "m1"
        for m in c.poll(2000):
            m.ack()
        svc.expire_member = "m1"
        c.poll(200)
        assert c.member_id == "m2"
        assert [(f.first_offset, f.last_offset, f.reason) for f in seen] == [
            (0, 2, "UNKNOWN_MEMBER_ID")
        ]
        assert all(not r.acknowledgements for r in svc.fetches[2:])
    joins = [h for h in svc.heartbeats if not h.member_id]
    assert len(joins) == 2 and list(joins[0].topics) == ["t"]


def test_close_flushes_then_leaves(fake: tuple[FakeShare, str]) -> None:
    """close() sends the queued acks before the leave heartbeat, and poll after close fails."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"x"] * 2), [(0, 1, 1)]))
    c = ShareConsumer(addr, "g", ["t"], ack_flush_interval_ms=60_000)
    for m in c.poll(2000):
        m.ack()
    c.close()
    assert [(b.first_offset, b.last_offset) for r in svc.acks for b in r.acknowledgements] == [
        (0, 1)
    ]
    assert svc.heartbeats[-1].leave and svc.heartbeats[-1].member_id == "m1"
    with pytest.raises(errors.StoreClosedError):
        c.poll(10)


def test_poll_returns_empty_list_in_time(fake: tuple[FakeShare, str]) -> None:
    """poll with nothing available returns [] after about timeout_ms, not before."""
    _, addr = fake
    with ShareConsumer(addr, "g", ["t"]) as c:
        t0 = time.monotonic()
        assert c.poll(300) == []
        assert 0.25 <= time.monotonic() - t0 < 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topics": []},
        {"topics": "t"},
        {"max_records": 0},
        {"max_records": 10_001},
        {"ack_flush_interval_ms": 0},
        {"fetch_max_wait_ms": 30_001},
    ],
)
def test_bad_arguments_fail_before_joining(fake: tuple[FakeShare, str], kwargs: Any) -> None:
    """Each bad argument is an InvalidArgumentError and no heartbeat is sent."""
    svc, addr = fake
    topics = kwargs.pop("topics", ["t"])
    with pytest.raises(errors.InvalidArgumentError):
        ShareConsumer(addr, "g", topics, **kwargs)
    assert svc.heartbeats == []


def test_backoff_schedule_is_full_jitter_and_seeded() -> None:
    """Worker retry delays: delivery n waits uniform(0, min(cap, base * 2**(n-1))); the same
    seed gives the same schedule, and every delay is inside its documented window."""
    w1 = Worker(
        "127.0.0.1:1",
        "g",
        ["t"],
        retry_backoff_ms=1000,
        retry_backoff_max_ms=10_000,
        rng=random.Random(7),
    )
    w2 = Worker(
        "127.0.0.1:1",
        "g",
        ["t"],
        retry_backoff_ms=1000,
        retry_backoff_max_ms=10_000,
        rng=random.Random(7),
    )
    a = [w1.retry_delay_ms(n) for n in range(1, 9)]
    b = [w2.retry_delay_ms(n) for n in range(1, 9)]
    assert a == b
    windows = [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]
    assert all(0 <= d <= w for d, w in zip(a, windows, strict=True)), a
    ref = random.Random(7)
    assert a == [int(ref.uniform(0, w / 1000) * 1000) for w in windows]
    samples = [Backoff(1000, 10_000, random.Random(s)).delay_s(2) for s in range(200)]
    assert max(samples) > 3.0 and min(samples) < 1.0  # spread over the whole window


def test_worker_outcomes(fake: tuple[FakeShare, str]) -> None:
    """A task that returns is ACCEPTed, one that raises is RELEASEd with the seeded backoff
    delay and its error text, one that raises Reject is REJECTed with the Reject's text;
    stop() then returns from run()."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"ok", b"fail", b"poison"]), [(0, 2, 2)]))
    worker = Worker(
        addr,
        "g",
        ["t"],
        concurrency=2,
        rng=random.Random(3),
        retry_backoff_ms=1000,
        retry_backoff_max_ms=60_000,
        poll_timeout_ms=50,
    )
    done = threading.Event()

    @worker.task
    def handle(msg: ShareMessage) -> None:
        if msg.value == b"fail":
            raise ValueError("smtp down")
        if msg.value == b"poison":
            raise Reject("bad address")
        done.set()

    t = threading.Thread(target=worker.run)
    t.start()
    deadline = time.monotonic() + 10
    while len(svc.sent_batches()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    t.join(10)
    assert not t.is_alive()
    with svc.lock:
        sent = [b for r in svc.fetches + svc.acks for b in r.acknowledgements]  # type: ignore[operator]
    by = {b.first_offset: b for b in sent}
    assert by[0].type == spb.ACCEPT
    assert by[1].type == spb.RELEASE and by[1].error == "ValueError: smtp down"
    expect = int(random.Random(3).uniform(0, 2.0) * 1000)  # delivery 2: window 2 s
    assert by[1].delay_ms == expect
    assert by[2].type == spb.REJECT and by[2].error == "bad address"
    assert worker.stats["accepted"] == 1 and worker.stats["rejected"] == 1
    assert svc.heartbeats[-1].leave


def test_worker_renews_long_tasks(fake: tuple[FakeShare, str]) -> None:
    """A task running past half its lock (a 1 s lock here) is RENEWed while it runs, before
    its ACCEPT."""
    svc, addr = fake
    r = reply(frame(0, [b"slow"]), [(0, 0, 1)])
    r.partitions[0].acquired[0].lock_deadline_ms = int(time.time() * 1000) + 1000
    svc.replies.append(r)
    worker = Worker(addr, "g", ["t"], concurrency=1, poll_timeout_ms=50)

    @worker.task
    def slow(msg: ShareMessage) -> None:
        # 2.6 s: five renewals due (every 0.5 s), so two are sent even when CI's load
        # delays the monitor or the ack flush past one of them (1.6 s saw only one)
        time.sleep(2.6)

    t = threading.Thread(target=worker.run)
    t.start()
    deadline = time.monotonic() + 10
    while not any(k == spb.ACCEPT for _, _, k in svc.sent_batches()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.stop()
    t.join(10)
    kinds = [k for _, _, k in svc.sent_batches()]
    assert kinds.count(spb.RENEW) >= 2 and kinds[-1] == spb.ACCEPT, kinds


def test_ack_count_threshold_flushes_at_once(fake: tuple[FakeShare, str]) -> None:
    """With ack_flush_records=5 and a 60 s timer, the fifth queued ack sends all five at
    once (one ShareAcknowledge), without waiting for the timer or a poll."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"x"] * 5), [(0, 4, 1)]))
    with ShareConsumer(addr, "g", ["t"], ack_flush_interval_ms=60_000, ack_flush_records=5) as c:
        msgs = c.poll(2000)
        for m in msgs[:4]:
            m.ack()
        time.sleep(0.3)
        assert svc.acks == []
        msgs[4].ack()
        deadline = time.monotonic() + 2
        while not svc.acks:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert [(b.first_offset, b.last_offset) for b in svc.acks[0].acknowledgements] == [(0, 4)]


def test_iterating_yields_messages(fake: tuple[FakeShare, str]) -> None:
    """Iterating a ShareConsumer yields the acquired messages one by one, in offset order."""
    svc, addr = fake
    svc.replies.append(reply(frame(0, [b"a", b"b", b"c"]), [(0, 2, 1)]))
    with ShareConsumer(addr, "g", ["t"]) as c:
        seen = []
        for m in c:
            seen.append(m.value)
            m.ack()
            if len(seen) == 3:
                break
    assert seen == [b"a", b"b", b"c"]


def test_ack_ranges_coalesce_in_order_and_out_of_order() -> None:
    """One partition, one kind: in-order offsets become their runs directly; offsets
    acked out of order or twice become the same runs (the sorted, unique fallback)."""
    from logstore.client._share_consumer import _Ack, _batches

    def runs(offsets: list[int]) -> list[tuple[int, int]]:
        acks = [_Ack("t", 0, o, "ACCEPT") for o in offsets]
        return [(b.first_offset, b.last_offset) for b in _batches(acks)]

    assert runs([3, 4, 5, 9, 10]) == [(3, 5), (9, 10)]
    assert runs([10, 3, 5, 4, 9, 4]) == [(3, 5), (9, 10)]
    assert runs([7]) == [(7, 7)]
