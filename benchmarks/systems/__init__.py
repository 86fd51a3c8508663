"""One driver per system under test, and the worker entry point they share.

A driver (``System``) starts and stops the server as a child process on a free
loopback port with a temporary data directory, creates and deletes topics
(streams), sets durability, and reads the server's RSS and descriptors. The
client side of every workload runs in spawned worker processes through
:func:`worker`, which imports the system's module and calls one of its
operations:

``produce(args, ready)``      send ``n`` records of ``size`` bytes as fast as possible
``replay(args, ready)``       read ``n`` records back from the beginning
``tail(args, ready)``         tail from the end; returns end-to-end latencies
``paced(args, ready)``        produce at a fixed rate with a timestamp in each payload

Each returns a dict with at least ``start``/``end`` (``time.monotonic()``) and
``count``. ``args`` is a plain dict (picklable): ``params`` (how to connect),
``topic``, ``partitions``, ``n``, ``size``, ``durable``, ``deadline_s``...
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MODULES = {
    "logstore": "benchmarks.systems.logstore_sys",
    "redis": "benchmarks.systems.redis_sys",
    "nats": "benchmarks.systems.nats_sys",
    "rabbitmq": "benchmarks.systems.rabbitmq_sys",
}


def worker(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Spawned-process entry: run ``args["op"]`` of ``args["system"]``."""
    mod = importlib.import_module(MODULES[args["system"]])
    fn: Callable[[dict[str, Any], Callable[[], None]], dict[str, Any]] = getattr(mod, args["op"])
    return fn(args, ready)


def find_exe(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )


def payload_pool(size: int, count: int = 1024) -> list[bytes]:
    """``count`` distinct random payloads of ``size`` bytes, reused cyclically."""
    import os

    return [os.urandom(size) for _ in range(count)]


def payloads(size: int, n: int) -> list[bytes]:
    """``n`` payload references (1,024 distinct values, cycled)."""
    pool = payload_pool(size)
    reps, rest = divmod(n, len(pool))
    return pool * reps + pool[:rest]


def load(name: str) -> Any:
    """The driver class of a system."""
    return importlib.import_module(MODULES[name]).Driver


def paced_steps(
    rate: float, total: int, size: int, linger_ms: float = 0.0
) -> Iterator[tuple[float, list[bytes]]]:
    """The schedule of a fixed-rate producer: yields ``(wait_s, payloads)``.

    When ``wait_s > 0`` nothing is due: the caller sleeps that long (with
    ``time.sleep`` or ``await asyncio.sleep``). Otherwise ``payloads`` are the
    records due now, each stamped (first 8 bytes, little-endian
    ``time.monotonic_ns``) with its *intended* send time ``t0 + i / rate``, so
    a producer that falls behind shows up as latency (no coordinated omission).
    With ``linger_ms``, records due are held until the oldest has waited that
    long, then sent together (as a client's linger does).
    """
    pad = b"\x00" * (size - 8)
    interval_ns = 1e9 / rate
    linger_ns = linger_ms * 1e6
    t0 = time.monotonic_ns() + 50_000_000
    sent = 0
    while sent < total:
        now = time.monotonic_ns()
        due = min(total, int((now - t0) / interval_ns) + 1)
        oldest = t0 + sent * interval_ns
        if due <= sent:
            yield max(0.0, (oldest - now) / 1e9), []
            continue
        if due < total and now < oldest + linger_ns:
            yield max(1e-6, (oldest + linger_ns - now) / 1e9), []
            continue
        yield 0.0, [int(t0 + i * interval_ns).to_bytes(8, "little") + pad for i in range(sent, due)]
        sent = due


def paced_values(
    rate: float, total: int, size: int, linger_ms: float = 0.0
) -> Iterator[tuple[int, list[bytes]]]:
    """:func:`paced_steps` for synchronous producers: sleeps, yields (index, payloads)."""
    index = 0
    for wait_s, vals in paced_steps(rate, total, size, linger_ms):
        if wait_s > 0:
            time.sleep(wait_s)
            continue
        yield index, vals
        index += len(vals)
