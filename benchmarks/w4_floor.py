"""W4's floor: the same message pattern through a grpc.aio server that does nothing else.

``python -m benchmarks.w4_floor [--rate 2000] [--seconds 5] [--runs 3] [--uvloop]``

W4 at linger 0 is, per record, one ``ProduceStream`` message in, one reply out
and one ``Subscribe`` push out of a Python ``grpc.aio`` server, with a paced
sync-gRPC producer (request generator + reply-drain thread) and a sync-gRPC
tail in two other processes. This runs that pattern with a server whose
handlers only pass the bytes on (identity serializers, as the broker's data
path has): the bidi stream's handler hands each message to the subscribers'
queues and writes a 16-byte reply; each subscriber's handler writes what it
gets. No storage, no protobuf, no metrics. The pacer keeps W4's schedule
(``benchmarks.systems.paced_values``: each record stamped with its intended
send time). Its end-to-end p50 / p99 (the tail's receive time - that stamp,
CLOCK_MONOTONIC shared by the processes) and the server's CPU per message are what Python
gRPC itself costs for W4 on this machine: the part of logstore's W4 figure
that no change to the broker's own code can remove. The clients here do less
than W4's (they parse no protobuf), so the floor is, if anything, low.

Printed per run and as the median over runs: p50, p99 (ms), the server's CPU
per message (``/proc/<pid>/stat``, all its threads), its event loop's sleeps
per message (voluntary context switches of its main thread, as
``benchmarks.msg_cost`` counts the broker's) and the clients' CPU per
message. ``--uvloop`` runs the server's loop on uvloop.

``--transport tcp`` runs the same pattern without gRPC: each message a
length-prefixed frame on a plain TCP connection (``TCP_NODELAY``), served by
an asyncio ``Protocol`` on the same kind of event loop (the frame copied to
the subscribers' connections, its first 16 bytes framed back), the pacer
writing from its own thread and a thread draining the replies, the tail a
blocking ``recv`` loop. The gap between the two transports' figures is what
Python gRPC, not the event loop or loopback TCP, costs W4 on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np

from benchmarks._proc import cpu_seconds, loop_switches
from benchmarks.systems import paced_values

_SERVICE = "bench.Floor"
_SIZE = 100
#: ``--transport tcp``'s frame header: the payload's length
_LEN = struct.Struct("<I")


def _server(ready: Any, stop: Any, use_uvloop: bool) -> None:
    import grpc
    import grpc.aio

    async def main() -> None:
        subscribers: list[asyncio.Queue[bytes]] = []

        async def produce(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                for q in subscribers:
                    q.put_nowait(msg)
                await context.write(msg[:16])

        async def subscribe(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100_000)
            subscribers.append(q)
            try:
                while True:
                    await context.write(await q.get())
            finally:
                subscribers.remove(q)

        handlers = {
            "Produce": grpc.stream_stream_rpc_method_handler(produce),
            "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put((port, os.getpid()))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(0)

    if use_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main())


def _tail(port: int, n: int, go: Any, out: Any) -> None:
    import grpc

    lat = np.zeros(n, dtype=np.int64)
    count = 0
    # read on this thread, as W4's tail and the Consumer read Subscribe
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("SingleThreadedUnaryStream", 1)]
    ) as ch:
        stream = ch.unary_stream(f"/{_SERVICE}/Subscribe")(b"", timeout=120)
        go.set()
        c0 = time.process_time()
        try:
            for msg in stream:
                if msg[8:9] == b"w":  # the warm-up message
                    continue
                lat[count] = time.monotonic_ns() - int.from_bytes(msg[:8], "little")
                count += 1
                if count >= n:
                    break
        except grpc.RpcError:  # the deadline: report what arrived
            pass
        stream.cancel()
    out.put(("tail", {"lat_ns": lat[:count], "cpu_s": time.process_time() - c0}))


class FrameProtocol(asyncio.Protocol):
    """A server connection of ``--transport tcp``'s framing (a 4-byte length, then
    the payload): each complete frame's payload goes to :meth:`frame`."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 4:
            size = _LEN.unpack_from(buf)[0]
            if len(buf) < 4 + size:
                return
            payload = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            self.frame(payload)

    def frame(self, payload: bytes) -> None:
        raise NotImplementedError


def _tcp_server(ready: Any, stop: Any, use_uvloop: bool) -> None:
    """The same pattern without gRPC: length-prefixed frames over TCP, served by an
    asyncio ``Protocol``. A connection whose first frame is ``S`` subscribes; any
    other frame is written to every subscriber and answered with its first 16
    bytes (framed), as the gRPC server does."""

    async def main() -> None:
        subscribers: list[asyncio.Transport] = []

        class Conn(FrameProtocol):
            def frame(self, payload: bytes) -> None:
                if payload == b"S":
                    subscribers.append(self.transport)
                    return
                framed = _LEN.pack(len(payload)) + payload
                for sub in subscribers:
                    sub.write(framed)
                self.transport.write(_LEN.pack(16) + payload[:16])

            def connection_lost(self, exc: Exception | None) -> None:
                if self.transport in subscribers:
                    subscribers.remove(self.transport)

        server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", 0)
        ready.put((server.sockets[0].getsockname()[1], os.getpid()))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    if use_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main())


def _tcp_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tcp_frames(sock: socket.socket) -> Iterator[bytes]:
    """The payloads of the frames arriving on ``sock`` until it closes."""
    buf = bytearray()
    while data := sock.recv(1 << 16):
        buf += data
        while len(buf) >= 4:
            size = _LEN.unpack_from(buf)[0]
            if len(buf) < 4 + size:
                break
            yield bytes(buf[4 : 4 + size])
            del buf[: 4 + size]


def tcp_pushes(port: int, go: Any) -> Iterator[bytes]:
    """Subscribe on a new connection, set ``go``, then yield each pushed payload."""
    with _tcp_connect(port) as sock:
        sock.sendall(_LEN.pack(1) + b"S")
        go.set()
        yield from _tcp_frames(sock)


def _tcp_tail(port: int, n: int, go: Any, out: Any) -> None:
    lat = np.zeros(n, dtype=np.int64)
    count = 0
    c0 = time.process_time()
    for msg in tcp_pushes(port, go):
        if msg[8:9] == b"w":
            continue
        lat[count] = time.monotonic_ns() - int.from_bytes(msg[:8], "little")
        count += 1
        if count >= n:
            break
    out.put(("tail", {"lat_ns": lat[:count], "cpu_s": time.process_time() - c0}))


@contextlib.contextmanager
def _grpc_producer(port: int) -> Iterator[Callable[[bytes], None]]:
    """W4's raw producer shape: a request generator fed by a queue, replies drained."""
    import grpc

    q: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (item := q.get()) is not None:
            yield item

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        replies = ch.stream_stream(f"/{_SERVICE}/Produce")(requests(), timeout=120)
        drain = threading.Thread(target=lambda: sum(1 for _ in replies), daemon=True)
        drain.start()
        try:
            yield q.put
        finally:
            q.put(None)
            drain.join(30)


@contextlib.contextmanager
def _tcp_producer(port: int) -> Iterator[Callable[[bytes], None]]:
    """Frames written from the pacer's thread, replies drained by another."""
    with _tcp_connect(port) as sock:
        drain = threading.Thread(target=lambda: sum(1 for _ in _tcp_frames(sock)), daemon=True)
        drain.start()
        yield lambda value: sock.sendall(_LEN.pack(len(value)) + value)
        sock.shutdown(socket.SHUT_WR)
        drain.join(30)


_TRANSPORTS: dict[str, tuple[Callable[..., None], Callable[..., None], Any]] = {
    "grpc": (_server, _tail, _grpc_producer),
    "tcp": (_tcp_server, _tcp_tail, _tcp_producer),
}


def one_run(
    rate: int, seconds: float, use_uvloop: bool, transport: str = "grpc"
) -> dict[str, float]:
    """One floor run: p50 / p99 (ms), server and client CPU per message (µs)."""
    serve, tail_of, producer = _TRANSPORTS[transport]
    ctx = mp.get_context("spawn")
    ready, stop, go, out = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=serve, args=(ready, stop, use_uvloop))
    server.start()
    port, pid = ready.get(timeout=30)
    n = int(rate * seconds)
    tail = ctx.Process(target=tail_of, args=(port, n, go, out))
    tail.start()
    go.wait(30)
    time.sleep(0.3)  # the subscription is registered on the server
    try:
        with producer(port) as send:
            send(b"\0" * 8 + b"w" * (_SIZE - 8))
            time.sleep(0.2)
            c0, s0, v0 = time.process_time(), cpu_seconds(pid), loop_switches(pid)
            # W4's own schedule: each record stamped with its intended send time
            for _, values in paced_values(rate, n, _SIZE):
                for value in values:
                    send(value)
            _, res = out.get(timeout=seconds + 60)
            s1, c1, v1 = cpu_seconds(pid), time.process_time(), loop_switches(pid)
    finally:
        stop.set()
        tail.join(30)
        server.join(30)
    row = result_row(res, n, s1 - s0, c1 - c0)
    row["sleeps"] = (v1 - v0) / n
    return row


def result_row(
    tail: dict[str, Any], n: int, server_s: float, producer_s: float
) -> dict[str, float]:
    """A run's figures: p50 / p99 (ms) and delivered (%) from the tail's latencies,
    the server's, producer's and tail's CPU per message (µs)."""
    lat = tail["lat_ns"] / 1e6
    return {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "delivered": 100.0 * len(lat) / n,
        "server_us": server_s / n * 1e6,
        "producer_us": producer_s / n * 1e6,
        "tail_us": tail["cpu_s"] / n * 1e6,
    }


def fmt_row(row: dict[str, float]) -> str:
    sleeps = f"  loop sleeps/message {row['sleeps']:.2f}" if "sleeps" in row else ""
    return (
        f"p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  delivered {row['delivered']:.1f} %  "
        f"server CPU {row['server_us']:.0f} us/message{sleeps}  "
        f"producer {row['producer_us']:.0f} / tail {row['tail_us']:.0f} us/message"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--transport", choices=sorted(_TRANSPORTS), default="grpc")
    a = ap.parse_args()
    print_runs(a.runs, lambda: one_run(a.rate, a.seconds, a.uvloop, a.transport), fmt_row)


def print_runs(
    runs: int, one: Callable[[], dict[str, float]], fmt: Callable[[dict[str, float]], str]
) -> None:
    """Run ``one`` ``runs`` times, printing each row and the median of each figure."""
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for run in range(runs):
        rows.append(one())
        print(f"run {run + 1}: {fmt(rows[-1])}", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print("median: " + fmt({k: statistics.median(r[k] for r in rows) for k in rows[0]}))


if __name__ == "__main__":
    main()
