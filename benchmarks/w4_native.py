"""W4 on the broker's storage path without gRPC: what a native data path would cost.

``python -m benchmarks.w4_native [--rate 2000] [--seconds 5] [--runs 3] [--acks 1|all]``

A measurement for a design decision, not a server to run. Issue 12's
remaining W4 gap is Python gRPC's cost per message (``benchmarks.w4_floor``:
~500 µs of CPU a message across the three processes through a gRPC server
that does nothing, ~95 µs as plain TCP frames). This puts logstore's own
per-message work behind the TCP floor's transport, to show what W4 would
measure on such a path before anyone builds one:

- the server is an asyncio ``Protocol`` on the event loop (``w4_floor``'s
  TCP framing: a 4-byte length, then the payload) over a real ``Store`` in a
  temporary directory, its flusher thread started as the broker starts it;
- a produce frame is a serialized ``ProduceRequest`` exactly as W4's raw
  pacer sends on ``ProduceStream`` (header + ``encode_values``): the server
  splits it (``split_produce_request``), appends it on the loop
  (``Store.try_append_raw``, the broker's inline path), and answers a
  ``ProduceResponse`` frame at once (acks=1) or once the flusher's fsync
  covers it (acks=all: ``Store.sync_to``, completed on the loop);
- each append is then pushed to the subscribed connections as the broker's
  ``Subscribe`` pushes it: ``Store.read_frames`` from the subscriber's offset
  plus the small ``FetchResponse`` fields (stored bytes as they are);
- the pacer (``paced_values``, W4's schedule, each record stamped with its
  intended send time) and the tail (parsing each push as W4's raw tail
  parses a ``SubscribeResponse``) are blocking sockets in two processes.

Left out, on purpose: TLS, authentication, ACLs, quotas, admission and the
metrics the broker keeps per message; a real native path would pay for
those too (the broker's security and metrics cost a few µs a message at
this size, docs/benchmarks.md). Printed per run and as the median: p50 /
p99 (ms), the server's CPU per message (all its threads, flusher included)
and the producer's and tail's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks._proc import cpu_seconds
from benchmarks.systems import paced_values
from benchmarks.w4_floor import (
    _LEN,
    FrameProtocol,
    _tcp_producer,
    fmt_row,
    print_runs,
    result_row,
    tcp_pushes,
)

_TOPIC = "w4n"
_SIZE = 100
_MAX_BYTES = 1 << 20


def _server(ready: Any, stop: Any, acks_all: bool) -> None:
    from logstore.storage import Store
    from logstore.v1 import logstore_pb2 as pb
    from logstore.wire import split_produce_request

    async def main(path: str) -> None:
        store = Store.open(path)
        store.create_topic(_TOPIC, 1)
        store.start_flusher()
        loop = asyncio.get_running_loop()
        subscribers: list[list[Any]] = []  # [transport, next offset]

        def push() -> None:
            for sub in subscribers:
                result = store.read_frames(_TOPIC, 0, sub[1], _MAX_BYTES)
                if not result.data:
                    continue
                tail = pb.FetchResponse(
                    high_watermark=result.high_watermark,
                    log_start_offset=result.log_start_offset,
                    log_end_offset=store.offsets(_TOPIC, 0)[1],
                ).SerializeToString()
                body = bytes(result.data) + tail
                sub[0].write(_LEN.pack(len(body)) + body)
                sub[1] = result.next_offset

        class Conn(FrameProtocol):
            def frame(self, payload: bytes) -> None:
                if payload == b"S":
                    subscribers.append([self.transport, 0])
                else:
                    self.produce(payload)

            def produce(self, payload: bytes) -> None:
                split = split_produce_request(payload)
                h = split.header
                args = (_TOPIC, 0, split.records, split.record_count)
                kw: dict[str, Any] = {
                    "base_timestamp_ms": h.base_timestamp_ms
                    if h.HasField("base_timestamp_ms")
                    else None,
                    "max_timestamp_ms": split.max_timestamp_ms,
                }
                res = store.try_append_raw(*args, **kw)
                if res is None:  # the partition's lock is held (a roll): as the broker's pool
                    res = store.append_raw(*args, **kw)
                reply = pb.ProduceResponse(
                    base_offset=res.base_offset, request_id=h.request_id
                ).SerializeToString()
                frame = _LEN.pack(len(reply)) + reply
                if acks_all:
                    fut = store.sync_to(_TOPIC, 0, res.last_offset + 1)
                    write = self.transport.write
                    fut.add_done_callback(lambda _: loop.call_soon_threadsafe(write, frame))
                else:
                    self.transport.write(frame)
                push()

            def connection_lost(self, exc: Exception | None) -> None:
                subscribers[:] = [s for s in subscribers if s[0] is not self.transport]

        server = await loop.create_server(Conn, "127.0.0.1", 0)
        ready.put((server.sockets[0].getsockname()[1], os.getpid()))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()
        store.close()

    with tempfile.TemporaryDirectory(prefix="w4-native-") as path:
        asyncio.run(main(path))


def _tail(port: int, n: int, go: Any, out: Any) -> None:
    from logstore.v1 import logstore_pb2 as pb

    lat = np.zeros(n, dtype=np.int64)
    count = 0
    c0 = time.process_time()
    for raw in tcp_pushes(port, go):
        now = time.monotonic_ns()
        for batch in pb.FetchResponse.FromString(raw).batches:
            for r in batch.records:
                if r.value[8:9] != b"w" and count < n:
                    lat[count] = now - int.from_bytes(r.value[:8], "little")
                    count += 1
        if count >= n:
            break
    out.put(("tail", {"lat_ns": lat[:count], "cpu_s": time.process_time() - c0}))


def one_run(rate: int, seconds: float, acks_all: bool) -> dict[str, float]:
    """One run: p50 / p99 (ms), the server's and the clients' CPU per message (µs)."""
    from logstore.v1 import logstore_pb2 as pb
    from logstore.wire import encode_values

    ctx = mp.get_context("spawn")
    ready, stop, go, out = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=_server, args=(ready, stop, acks_all), daemon=True)
    server.start()
    port, pid = ready.get(timeout=30)
    n = int(rate * seconds)
    tail = ctx.Process(target=_tail, args=(port, n, go, out), daemon=True)
    tail.start()
    go.wait(30)
    time.sleep(0.3)  # the subscription is registered on the server
    acks = pb.ACKS_ALL if acks_all else pb.ACKS_LEADER
    sent = 0

    def request(values: list[bytes]) -> bytes:
        nonlocal sent
        sent += 1
        head = pb.ProduceRequest(topic=_TOPIC, partition=0, acks=acks, request_id=sent)
        return head.SerializeToString() + encode_values(values)

    try:
        with _tcp_producer(port) as send:
            send(request([b"\0" * 8 + b"w" * (_SIZE - 8)]))
            time.sleep(0.2)
            c0, s0 = time.process_time(), cpu_seconds(pid)
            # W4's own schedule; linger 0: each record due is its own message
            for _, values in paced_values(rate, n, _SIZE):
                send(request(values))
            _, res = out.get(timeout=seconds + 60)
            s1, c1 = cpu_seconds(pid), time.process_time()
    finally:
        stop.set()
        tail.join(30)
        server.join(30)
    return result_row(res, n, s1 - s0, c1 - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--acks", choices=("1", "all"), default="1")
    a = ap.parse_args()
    print_runs(a.runs, lambda: one_run(a.rate, a.seconds, a.acks == "all"), fmt_row)


if __name__ == "__main__":
    main()
