"""The machine's own limits, measured by the same run as the workloads.

Every logstore figure is printed as a percentage of the limit that bounds it
(see ``BOUNDS`` in benchmarks.report). Measured here:

* ``disk_seq_fdatasync``    sequential 1 MiB appends, fdatasync every 64 MiB (MB/s):
                            the disk's sequential bandwidth, what durable appends are bound by
* ``disk_write_pagecache``  sequential 1 MiB appends, no sync (MB/s)
* ``fsync_rate_4kib``       4 KiB append + fdatasync, per second
* ``fsync_rate_1mib``       1 MiB append + fdatasync, per second
* ``memcpy``                numpy copy of 256 MiB (MB/s)
* ``tcp_loopback``          one TCP stream over 127.0.0.1, sender in another process (MB/s)
* ``tcp_rtt``               64-byte ping-pong round trip over 127.0.0.1 (µs)
* ``grpc_unary_tiny``       sequential tiny unary calls/s, Python sync client -> grpc.aio server
* ``grpc_unary_1mib``       1 MiB unary requests, 8 in flight (MB/s)
* ``grpc_stream_1mib``      server stream of 1 MiB messages (MB/s)
* ``grpc_w4_p50``, ``grpc_w4_p99``  W4's message pattern at 2,000/s through a
                            grpc.aio server that only passes the bytes on
                            (``benchmarks.w4_floor``): end-to-end p50 / p99 (ms),
                            what Python gRPC itself costs W4 on this machine
* ``tcp_w4_p50``, ``tcp_w4_p99``  the same pattern as length-prefixed frames over
                            plain TCP, through an asyncio server that only passes
                            them on (``w4_floor --transport tcp``): what it costs
                            without gRPC

Each is bounded in time (about 2 s) and bytes (at most 1 GiB written), and
files are deleted afterwards.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from benchmarks._proc import HOST, Child, free_port, run_workers, wait_port
from benchmarks._stats import MB, Figure, MiB

RUN_SECONDS = 2.0
MAX_DISK_BYTES = 1 << 30
FILE_BYTES = 256 << 20


def _disk(dir_: Path, chunk: int, sync_every: int, seconds: float) -> tuple[float, int]:
    """Append ``chunk``-byte writes for ``seconds``, fdatasync every ``sync_every``
    writes (0: never); (bytes/s, writes).

    Files are capped at FILE_BYTES (a new one is started after it, the old one
    deleted), as a log rolls segments; at most MAX_DISK_BYTES in all."""
    buf = os.urandom(chunk)
    n = 0
    elapsed = 0.0
    t0 = time.perf_counter()
    end = t0 + seconds
    while n * chunk < MAX_DISK_BYTES and time.perf_counter() < end:
        fd, name = tempfile.mkstemp(dir=dir_, prefix="limits-", suffix=".dat")
        try:
            in_file = 0
            while in_file < FILE_BYTES and n * chunk < MAX_DISK_BYTES:
                os.write(fd, buf)
                n += 1
                if sync_every and n % sync_every == 0:
                    os.fdatasync(fd)
                in_file += chunk
                if (n & 7) == 0 and time.perf_counter() >= end:
                    break
            if sync_every:
                os.fdatasync(fd)
            elapsed = time.perf_counter() - t0
        finally:
            os.close(fd)
            os.unlink(name)
    return n * chunk / elapsed, n


def _memcpy() -> float:
    src = np.ones(256 * MiB, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    t0 = time.perf_counter()
    reps = 4
    for _ in range(reps):
        np.copyto(dst, src)
    return reps * src.nbytes / (time.perf_counter() - t0)


def _tcp_sender(args: tuple[int, float], ready: Callable[[], None]) -> dict[str, Any]:
    port, seconds = args
    buf = b"\x00" * MiB
    s = socket.create_connection((HOST, port))
    ready()
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        s.sendall(buf)
        sent += len(buf)
    s.close()
    return {"sent": sent}


def _tcp_echo(args: tuple[int, float], ready: Callable[[], None]) -> dict[str, Any]:
    port, _ = args
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ready()
    while True:
        data = s.recv(64)
        if not data:
            break
        s.sendall(data)
    s.close()
    return {}


def _tcp_stream(seconds: float) -> float:
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    received = 0
    buf = bytearray(MiB)
    t: list[float] = []

    def on_ready() -> None:
        nonlocal received
        conn, _ = lsock.accept()
        t.append(time.perf_counter())
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            received += n
        t.append(time.perf_counter())
        conn.close()

    # The sender connects before the barrier; the kernel queues it until accept().
    run_workers(_tcp_sender, [(port, seconds)], timeout_s=seconds + 60, on_ready=on_ready)
    lsock.close()
    return received / (t[1] - t[0])


def _tcp_rtt(seconds: float) -> float:
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    out: list[float] = []

    def on_ready() -> None:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            conn.sendall(msg)
            got = 0
            while got < 64:
                got += len(conn.recv(64 - got))
            n += 1
            if (n & 63) == 0 and time.perf_counter() >= end:
                break
        out.append((time.perf_counter() - t0) / n)
        conn.close()

    run_workers(_tcp_echo, [(port, seconds)], timeout_s=seconds + 60, on_ready=on_ready)
    lsock.close()
    return out[0]


def _grpc(seconds: float, workdir: Path) -> dict[str, float]:
    import grpc

    port = free_port()
    child = Child(
        [sys.executable, "-m", "benchmarks._grpc_ceiling_server", str(port)],
        workdir / "grpc-ceiling.log",
    )
    try:
        wait_port(port, 30, child.proc)
        opts = [
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ]
        with grpc.insecure_channel(f"{HOST}:{port}", options=opts) as ch:
            echo = ch.unary_unary("/bench.Ceiling/Echo")
            sink = ch.unary_unary("/bench.Ceiling/Sink")
            source = ch.unary_stream("/bench.Ceiling/Source")
            echo(b"warm", timeout=10)
            # tiny unary, one at a time
            n = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                echo(b"x" * 16, timeout=10)
                n += 1
            tiny = n / (time.perf_counter() - t0)
            # 1 MiB unary, 8 in flight
            payload = os.urandom(MiB)
            inflight = []
            n = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                while len(inflight) < 8:
                    inflight.append(sink.future(payload, timeout=30))
                inflight.pop(0).result()
                n += 1
            for f in inflight:
                f.result()
                n += 1
            unary = n * MiB / (time.perf_counter() - t0)
            # server stream of 1 MiB messages
            count = 0
            t0 = time.perf_counter()
            for msg in source((10_000).to_bytes(8, "little"), timeout=60):
                count += len(msg)
                if time.perf_counter() - t0 >= seconds:
                    break
            stream = count / (time.perf_counter() - t0)
    finally:
        child.stop()
    return {"grpc_unary_tiny": tiny, "grpc_unary_1mib": unary / MB, "grpc_stream_1mib": stream / MB}


UNITS = {
    "disk_seq_fdatasync": "MB/s",
    "disk_write_pagecache": "MB/s",
    "fsync_rate_4kib": "fsync/s",
    "fsync_rate_1mib": "fsync/s",
    "memcpy": "MB/s",
    "tcp_loopback": "MB/s",
    "tcp_rtt": "µs",
    "grpc_unary_tiny": "calls/s",
    "grpc_unary_1mib": "MB/s",
    "grpc_stream_1mib": "MB/s",
    "grpc_w4_p50": "ms",
    "grpc_w4_p99": "ms",
    "tcp_w4_p50": "ms",
    "tcp_w4_p99": "ms",
}
#: Limits where less is better (times).
LOWER_IS_BETTER: Final = frozenset(
    {"tcp_rtt", "grpc_w4_p50", "grpc_w4_p99", "tcp_w4_p50", "tcp_w4_p99"}
)
#: The rate of the W4 floor probe: W4's 2,000 records/s row.
W4_FLOOR_RATE: Final = 2000


def _w4_floor(seconds: float) -> dict[str, float]:
    from benchmarks import w4_floor

    out: dict[str, float] = {}
    for transport in ("grpc", "tcp"):
        row = w4_floor.one_run(W4_FLOOR_RATE, max(seconds, 0.5), False, transport)
        out[f"{transport}_w4_p50"], out[f"{transport}_w4_p99"] = row["p50"], row["p99"]
    return out


def measure_once(workdir: Path, seconds: float = RUN_SECONDS) -> dict[str, float]:
    out: dict[str, float] = {}
    out["disk_seq_fdatasync"] = _disk(workdir, MiB, 64, seconds)[0] / MB
    out["fsync_rate_1mib"] = _disk(workdir, MiB, 1, seconds)[0] / MiB
    out["disk_write_pagecache"] = _disk(workdir, MiB, 0, seconds)[0] / MB
    bps = _disk(workdir, 4096, 1, seconds)[0]
    out["fsync_rate_4kib"] = bps / 4096
    out["memcpy"] = _memcpy() / MB
    out["tcp_loopback"] = _tcp_stream(seconds) / MB
    out["tcp_rtt"] = _tcp_rtt(seconds) * 1e6
    out.update(_grpc(seconds, workdir))
    out.update(_w4_floor(seconds))
    return out


def measure(workdir: Path, runs: int, seconds: float = RUN_SECONDS) -> dict[str, Figure]:
    figs: dict[str, Figure] = {}
    for _ in range(runs):
        for k, v in measure_once(workdir, seconds).items():
            fig = figs.setdefault(
                k, Figure(f"limit {k}", UNITS[k], higher_is_better=k not in LOWER_IS_BETTER)
            )
            fig.values.append(v)
    return figs


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="logstore-limits-") as d:
        for k, f in measure(Path(d), 1, 1.0).items():
            print(f"{k:24s} {f.median:14,.1f} {f.unit}")
