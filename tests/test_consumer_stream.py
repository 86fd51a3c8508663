"""The Consumer tails few caught-up partitions over Subscribe streams (see the
module docstring of ``logstore.client._consumer``): records arrive pushed, in
order, exactly once; seeks, restarts, many partitions and old brokers fall back
to fetching; the stream buffer stays within its byte bound with a slow poller."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from logstore import errors
from logstore.client import Admin, Consumer, GroupConsumer, Producer
from logstore.v1 import logstore_pb2
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import scrape

_SERVICE = "logstore.v1.LogStore"


@pytest.fixture(scope="module")
def sbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("cstream") / "data")
    try:
        yield b
    finally:
        b.stop()


def _topic(broker: BrokerProcess, name: str, partitions: int = 1) -> str:
    """Create ``name`` on ``broker``; returns the broker's address."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic(name, partitions)
    return addr


def _metric(text: str, name: str, method: str | None = None) -> float:
    label = rf'\{{method="{method}"\}}' if method else ""
    return sum(float(m) for m in re.findall(rf"^{name}{label} ([0-9.e+]+)$", text, re.M))


def _wait_subscriptions(broker: BrokerProcess, n: int, timeout_s: float = 30) -> None:
    """Wait until the broker's ``logstore_subscriptions`` gauge reads ``n``: the
    broker sees a stream open or a cancel a moment after the client does."""
    deadline = time.monotonic() + timeout_s
    while (got := _metric(scrape(broker), "logstore_subscriptions")) != n:
        assert time.monotonic() < deadline, f"logstore_subscriptions is {got}, not {n}"
        time.sleep(0.05)


def _produce(addr: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    with Producer(addr, linger_ms=0) as p:
        for v in values:
            p.send(topic, v, partition=partition)
        p.flush()


def _read(c: Consumer, n: int, timeout_s: float = 60) -> list[tuple[int, bytes]]:
    """(offset, value) of the next ``n`` records (partition 0 of whatever is assigned)."""
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(500).values():
            out.extend((r.offset, r.value or b"") for r in recs)
    assert len(out) == n, f"got {len(out)} of {n} records in {timeout_s} s"
    return out


def _wait_streaming(c: Consumer, timeout_s: float = 30) -> None:
    """Poll (returning nothing) until the consumer has a stream open."""
    deadline = time.monotonic() + timeout_s
    while not c._streams:
        assert time.monotonic() < deadline, "no Subscribe stream opened"
        assert c.poll(100) == {}


def _values(prefix: str, lo: int, hi: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(lo, hi)]


def test_a_caught_up_consumer_on_one_partition_is_pushed_records_over_subscribe(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-tail")
    _produce(addr, "cs-tail", _values("v", 0, 5))
    before = scrape(sbroker)
    with Consumer(addr, fetch_max_wait_ms=200) as c:
        c.assign([("cs-tail", 0)])
        c.seek(("cs-tail", 0), 0)
        assert _read(c, 5) == [(i, b"v-%d" % i) for i in range(5)]  # fetched: a backlog
        _wait_streaming(c)
        _wait_subscriptions(sbroker, 1)
        for lo in range(5, 305, 50):  # several appends, pushed as they come
            _produce(addr, "cs-tail", _values("v", lo, lo + 50))
        got = _read(c, 300)
        assert got == [(i, b"v-%d" % i) for i in range(5, 305)]
        assert c.streams_opened == 1
        assert c.poll(300) == {}  # nothing twice
        assert c.position(("cs-tail", 0)) == 305
    _wait_subscriptions(sbroker, 0)  # close ended it
    after = scrape(sbroker)
    pushed = _metric(after, "logstore_fetch_records_total", "Subscribe") - _metric(
        before, "logstore_fetch_records_total", "Subscribe"
    )
    assert pushed == 300  # every record after the catch-up came over the stream


def test_a_subscribe_stream_is_read_on_its_reader_thread_without_the_channel_spin_thread(
    sbroker: BrokerProcess,
) -> None:
    # The Connection's SingleThreadedUnaryStream option: each pushed message is
    # read by the stream's reader thread itself, not handed over by gRPC's
    # channel spin thread (one thread hand-off less per message, ~14-20 µs of
    # the consumer's CPU at W4's 2,000/s). Cancelling it from poll's thread
    # still ends the read (the seek test below does that).
    addr = _topic(sbroker, "cs-single")
    with Consumer(addr, fetch_max_wait_ms=200) as c:
        c.assign([("cs-single", 0)])
        c.seek_to_end()
        _wait_streaming(c)
        [(_, st)] = c._streams.values()
        assert type(st.call).__name__ == "_SingleThreadedRendezvous"
        _produce(addr, "cs-single", _values("t", 0, 20))
        assert _read(c, 20) == [(i, b"t-%d" % i) for i in range(20)]
        assert c.streams_opened == 1


def test_a_seek_during_a_stream_restarts_at_the_new_offset_without_gap_or_duplicate(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-seek")
    with Consumer(addr, fetch_max_wait_ms=200) as c:
        c.assign([("cs-seek", 0)])
        c.seek_to_end()
        _wait_streaming(c)
        _produce(addr, "cs-seek", _values("s", 0, 100))
        assert [o for o, _ in _read(c, 100)] == list(range(100))
        c.seek(("cs-seek", 0), 30)
        assert not c._streams  # the seek cancelled the stream
        _produce(addr, "cs-seek", _values("s", 100, 150))
        got = _read(c, 120)
        assert got == [(i, b"s-%d" % i) for i in range(30, 150)]
        _wait_streaming(c)  # caught up again: a new stream from 150
        _produce(addr, "cs-seek", _values("s", 150, 160))
        assert _read(c, 10) == [(i, b"s-%d" % i) for i in range(150, 160)]
        assert c.streams_opened == 2
        assert c.poll(300) == {}


def test_the_stream_buffer_stays_within_its_bound_with_a_slow_poller(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-slow")
    value = b"x" * 1000
    n = 4000  # ~4 MB written while the consumer does not poll: 30x the bound
    with Consumer(addr, fetch_max_bytes=64 << 10, fetch_max_wait_ms=200) as c:
        bound = c._stream_bound
        assert bound == 128 << 10
        c.assign([("cs-slow", 0)])
        c.seek_to_end()
        _wait_streaming(c)
        with Producer(addr, linger_ms=1, batch_bytes=16 << 10) as p:
            for _ in range(n):
                p.send("cs-slow", value, partition=0)
            p.flush()
        # Give the reader every chance to overfill (it would, unbounded).
        deadline = time.monotonic() + 10
        while c._stream_bytes < bound // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        # Each pushed message is at most 64 KiB plus one 16 KiB batch, so under
        # the bound; the buffer is charged before a message is queued.
        assert 0 < c._stream_bytes <= bound
        got = 0
        expect = 0
        while got < n:
            for recs in c.poll(2000, max_records=50).values():
                assert [r.offset for r in recs] == list(range(expect, expect + len(recs)))
                expect += len(recs)
                got += len(recs)
            time.sleep(0.001)  # a slow poller
            assert c._stream_bytes <= bound
        assert got == n
        assert 0 < c._stream_peak <= bound
        assert c.streams_opened == 1


def test_a_broker_kill_9_and_restart_ends_the_stream_and_the_consumer_continues(
    tmp_path: Path,
) -> None:
    b = start_broker(tmp_path / "data")
    try:
        addr = b.grpc_address
        with Admin(addr) as a:
            a.create_topic("cs-restart", 1)
        _produce(addr, "cs-restart", _values("r", 0, 50))
        with Consumer(addr, fetch_max_wait_ms=200, retry_backoff_ms=50) as c:
            c.assign([("cs-restart", 0)])
            c.seek(("cs-restart", 0), 0)
            got = _read(c, 50)
            _wait_streaming(c)
            b.kill()
            b = start_broker(b.data_dir, "--listen", addr)
            assert b.grpc_address == addr
            _produce(addr, "cs-restart", _values("r", 50, 120))
            got += _read(c, 70)
            assert got == [(i, b"r-%d" % i) for i in range(120)]
            _wait_streaming(c)  # tailing again over a new stream
            assert c.streams_opened >= 2
            _produce(addr, "cs-restart", _values("r", 120, 130))
            assert _read(c, 10) == [(i, b"r-%d" % i) for i in range(120, 130)]
            assert c.poll(300) == {}
    finally:
        b.kill()


def test_more_partitions_than_the_limit_are_fetched_only(sbroker: BrokerProcess) -> None:
    addr = _topic(sbroker, "cs-wide", 5)
    with Consumer(addr, fetch_max_wait_ms=100) as c:
        c.assign([("cs-wide", q) for q in range(4)])
        c.seek_to_end()
        deadline = time.monotonic() + 30
        while len(c._streams) < 4:
            assert time.monotonic() < deadline, "4 partitions were not all streamed"
            c.poll(100)
        c.assign([("cs-wide", q) for q in range(5)])  # over the limit: streams cancelled
        assert not c._streams
        c.seek_to_end()
        opened = c.streams_opened
        for q in range(5):
            _produce(addr, "cs-wide", _values(f"w{q}", 0, 20), partition=q)
        got: dict[int, list[bytes]] = {}
        deadline = time.monotonic() + 60
        while sum(map(len, got.values())) < 100 and time.monotonic() < deadline:
            for tp, recs in c.poll(300).items():
                got.setdefault(tp.partition, []).extend(r.value or b"" for r in recs)
        assert got == {q: _values(f"w{q}", 0, 20) for q in range(5)}
        assert c.poll(300) == {}
        assert c.streams_opened == opened and not c._streams
    _wait_subscriptions(sbroker, 0)


def test_stream_max_partitions_zero_never_streams_and_bad_values_are_refused(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-off")
    with Consumer(addr, fetch_max_wait_ms=100, stream_max_partitions=0) as c:
        c.assign([("cs-off", 0)])
        c.seek_to_end()
        for _ in range(5):
            c.poll(100)
        _produce(addr, "cs-off", _values("o", 0, 10))
        assert [o for o, _ in _read(c, 10)] == list(range(10))
        assert c.streams_opened == 0
    for bad in (-1, 10_001):
        with pytest.raises(errors.InvalidArgumentError, match="stream_max_partitions"):
            Consumer(addr, stream_max_partitions=bad)


class _NoSubscribeProxy:
    """A gRPC server forwarding ListOffsets and MultiFetch (as bytes) to a real
    broker: every other method, Subscribe included, is UNIMPLEMENTED, as on a
    broker older than it."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.calls: dict[str, int] = {}
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._forward(name))
            for name in ("ListOffsets", "MultiFetch")
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),)
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def _forward(self, name: str) -> Any:
        call = self.channel.unary_unary(f"/{_SERVICE}/{name}")

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls[name] = self.calls.get(name, 0) + 1
            reply: bytes = call(request, timeout=30)
            return reply

        return forward

    def close(self) -> None:
        self.server.stop(0)
        self.channel.close()


def test_a_broker_without_subscribe_turns_streaming_off(sbroker: BrokerProcess) -> None:
    addr = _topic(sbroker, "cs-old")
    proxy = _NoSubscribeProxy(addr)
    try:
        with Consumer(proxy.address, fetch_max_wait_ms=100) as c:
            c.assign([("cs-old", 0)])
            c.seek_to_end()
            deadline = time.monotonic() + 30
            while c._stream_max:  # the first stream's UNIMPLEMENTED turns it off
                assert time.monotonic() < deadline, "streaming was not turned off"
                assert c.poll(100) == {}
            assert c.streams_opened == 1
            _produce(addr, "cs-old", _values("u", 0, 30))
            assert _read(c, 30) == [(i, b"u-%d" % i) for i in range(30)]
            assert c.streams_opened == 1 and not c._streams
            assert proxy.calls["MultiFetch"] >= 2
    finally:
        proxy.close()


def test_a_deleted_topic_ends_the_stream_and_poll_raises_the_fetchs_error(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-gone")
    with Consumer(addr, fetch_max_wait_ms=100, retry_timeout_ms=2_000) as c:
        c.assign([("cs-gone", 0)])
        c.seek_to_end()
        _wait_streaming(c)
        with Admin(addr) as a:
            a.delete_topic("cs-gone")
        deadline = time.monotonic() + 30
        with pytest.raises(errors.UnknownTopicError) as info:
            while time.monotonic() < deadline:
                c.poll(200)
        assert info.value.metadata.get("topic") == "cs-gone"


def test_a_group_consumer_tails_its_few_partitions_over_subscribe(
    sbroker: BrokerProcess,
) -> None:
    addr = _topic(sbroker, "cs-group", 2)
    with GroupConsumer(addr, "cs-g", topics=["cs-group"], fetch_max_wait_ms=100) as g:
        deadline = time.monotonic() + 60
        while len(g._consumer._streams) < 2:
            assert time.monotonic() < deadline, "the group consumer opened no streams"
            g.poll(100)
        _produce(addr, "cs-group", _values("g", 0, 40), partition=1)
        got: list[int] = []
        while len(got) < 40 and time.monotonic() < deadline:
            for recs in g.poll(300).values():
                got.extend(r.offset for r in recs)
        assert got == list(range(40))
        assert g._consumer.streams_opened == 2


def test_a_pushed_message_wholly_below_the_fetch_offset_is_dropped_and_its_bytes_released(
    sbroker: BrokerProcess,
) -> None:
    # The second line behind poll's position skip: a push whose frames all end at
    # or below what is already buffered (a stream racing a fetch) is neither
    # buffered nor left holding stream-buffer bytes. Without the guard it would be
    # buffered, and its bytes held until poll skipped it.
    addr = _topic(sbroker, "cs-dup")
    _produce(addr, "cs-dup", _values("d", 0, 10))
    with Consumer(addr, fetch_max_wait_ms=200) as c:
        c.assign([("cs-dup", 0)])
        c.seek(("cs-dup", 0), 0)
        assert [o for o, _ in _read(c, 10)] == list(range(10))
        _wait_streaming(c)
        # A push of offsets 0..9 again, taken from a Subscribe of our own.
        call = c._conn.subscribe_raw(
            logstore_pb2.SubscribeRequest(topic="cs-dup", partition=0, offset=0, max_bytes=1 << 20)
        )
        stale = next(iter(call))
        call.cancel()
        ((sid, (tp, _st)),) = c._streams.items()
        part = c._parts[tp]
        held = c._stream_bytes
        with c._stream_cond:  # as the reader thread counts a message it queues
            c._stream_bytes += len(stale)
        c._handle_stream(sid, stale)
        assert not part.buffers
        assert part.fetch_offset == 10
        assert c._stream_bytes == held
        _produce(addr, "cs-dup", _values("d", 10, 20))
        assert _read(c, 10) == [(i, b"d-%d" % i) for i in range(10, 20)]
        assert c.poll(300) == {}
