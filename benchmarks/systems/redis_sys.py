"""Redis Streams: ``redis-server`` as a child process, ``redis-py`` (with hiredis)
on the client side.

Durability: AOF on, ``appendfsync no`` (the kernel writes back; the peer of
logstore acks=1) or ``appendfsync always`` (fsync before the reply; the peer of
acks=all), switched with CONFIG SET before each run. RDB snapshots are off.
A "partition" is one stream key ``<topic>-<p>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._proc import HOST, Child, free_port, wait_port
from benchmarks.systems import find_exe, paced_values, payloads
from benchmarks.systems._base import System

PIPELINE = 1000  # XADDs per pipelined round trip
XRANGE_COUNT = 10_000
#: Entries per XREADGROUP of a W7 member (then one XACK of their ids): the
#: same batch as JetStream's fetch, ~100 KiB of values a round trip.
GROUP_COUNT = 1000


class Driver(System):
    name = "redis"

    @classmethod
    def unavailable(cls) -> str | None:
        if find_exe("redis-server") is None:
            return "redis-server is not installed (make bench-compare installs it)"
        try:
            import redis  # noqa: F401
        except ImportError:
            return "the redis Python client is not installed (pip install -e '.[bench]')"
        return None

    def start(self, workdir: Path) -> None:
        import redis

        self.workdir = workdir
        self.port = free_port()
        d = workdir / "redis-data"
        d.mkdir(parents=True, exist_ok=True)
        exe = find_exe("redis-server")
        assert exe is not None
        self.child = Child(
            [
                exe,
                "--port", str(self.port),
                "--bind", HOST,
                "--dir", str(d),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--maxmemory", "0",
            ],
            workdir / "redis.log",
        )  # fmt: skip
        wait_port(self.port, 30, self.child.proc)
        self.r = redis.Redis(host=HOST, port=self.port)
        self.r.ping()

    def stop(self) -> None:
        if self.child is not None:
            self.r.close()
        super().stop()

    def params(self) -> dict[str, Any]:
        return {"host": HOST, "port": self.port}

    def server_version(self) -> str | None:
        return str(self.r.info("server")["redis_version"])

    def create(self, topic: str, partitions: int = 1) -> None:
        pass  # streams are created by the first XADD

    def delete(self, topic: str, partitions: int = 1) -> None:
        keys = [f"{topic}-{p}" for p in range(partitions)]
        for i in range(0, len(keys), 1000):
            self.r.delete(*keys[i : i + 1000])

    def create_group(self, topic: str, group: str, partitions: int = 1) -> None:
        self.r.xgroup_create(f"{topic}-0", group, id="0")

    def create_share_group(self, topic: str, group: str, visibility_ms: int) -> None:
        # the stream may be empty still (W8's latency run): MKSTREAM creates it; Redis
        # has no lock timeout, a survivor claims idle entries with XAUTOCLAIM (W8R)
        self.r.xgroup_create(f"{topic}-0", group, id="0", mkstream=True)

    def group_outstanding(self, topic: str, group: str, partitions: int = 1) -> int:
        key = f"{topic}-0"
        pending = int(self.r.xpending(key, group)["pending"])
        undelivered = sum(
            int(g.get("lag") or 0) for g in self.r.xinfo_groups(key) if g["name"] == group.encode()
        )
        return pending + undelivered

    def set_durable(self, durable: bool) -> None:
        self.r.config_set("appendfsync", "always" if durable else "no")

    def set_appendfsync(self, mode: str) -> None:
        """``no`` / ``everysec`` / ``always`` (W8 runs everysec and always)."""
        self.r.config_set("appendfsync", mode)

    def label(self, durable: bool) -> str:
        return "appendfsync always" if durable else "appendfsync no"


def _conn(args: dict[str, Any]) -> Any:
    import redis

    return redis.Redis(host=args["params"]["host"], port=args["params"]["port"])


def produce(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Pipelined XADD, PIPELINE per round trip, round-robin over the partitions."""
    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    parts = list(args.get("partitions_list") or [0])
    keys = [f"{topic}-{p}" for p in parts]
    values = payloads(size, n)
    r = _conn(args)
    r.ping()
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    lat: list[int] = []
    ready()
    start = time.monotonic()
    sent = 0
    b = 0
    while sent < n and time.monotonic() < deadline:
        k = min(PIPELINE, n - sent)
        key = keys[b % len(keys)]
        b += 1
        pipe = r.pipeline(transaction=False)
        for v in values[sent : sent + k]:
            pipe.xadd(key, {"v": v})
        t = time.monotonic_ns()
        pipe.execute()
        lat.append(time.monotonic_ns() - t)
        sent += k
    end = time.monotonic()
    r.close()
    return {"start": start, "end": end, "count": sent, "bytes": sent * size, "lat_ns": lat}


def replay(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """XRANGE in chunks of XRANGE_COUNT from the start of stream ``<topic>-0``."""
    n, topic = int(args["n"]), str(args["topic"])
    key = f"{topic}-0"
    r = _conn(args)
    r.ping()
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = time.monotonic()
    count = 0
    last = "-"
    while count < n and time.monotonic() < deadline:
        entries = r.xrange(key, min=last, max="+", count=XRANGE_COUNT)
        if not entries:
            break
        count += len(entries)
        last = "(" + entries[-1][0].decode()
    end = time.monotonic()
    r.close()
    return {"start": start, "end": end, "count": count, "bytes": 0}


def tail(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """XREAD BLOCK from the start of a fresh stream; latency from the payload stamp."""
    import numpy as np

    n, topic = int(args["n"]), str(args["topic"])
    key = f"{topic}-0"
    r = _conn(args)
    r.ping()
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    lat = np.zeros(n, dtype=np.int64)
    count = 0
    last = "0-0"
    from_bytes = int.from_bytes
    ready()
    start = time.monotonic()
    while count < n and time.monotonic() < deadline:
        resp = r.xread({key: last}, count=10_000, block=200)
        now = time.monotonic_ns()
        if not resp:
            continue
        entries = resp[0][1]
        for _id, fields in entries:
            if count < n:
                lat[count] = now - from_bytes(fields[b"v"][:8], "little")
            count += 1
        last = entries[-1][0]
    end = time.monotonic()
    r.close()
    return {"start": start, "end": end, "count": count, "lat_ns": lat[: min(n, count)]}


def paced(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """XADD at ``rate``: the records due at each wake-up in one pipeline."""
    rate, seconds, size = float(args["rate"]), float(args["seconds"]), int(args["size"])
    key = f"{args['topic']}-0"
    r = _conn(args)
    r.ping()
    ready()
    start = time.monotonic()
    count = 0
    for _first, vals in paced_values(rate, int(rate * seconds), size):
        pipe = r.pipeline(transaction=False)
        for v in vals:
            pipe.xadd(key, {"v": v})
        pipe.execute()
        count += len(vals)
    end = time.monotonic()
    r.close()
    return {"start": start, "end": end, "count": count}


def group_drain(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W7 member: ``XREADGROUP >`` (GROUP_COUNT) then ``XACK`` of the batch's ids.

    Stops when a read finds nothing new and the group's shared counter of
    acknowledged records (``args["acked"]``) has reached ``n``.
    """
    n, topic, group = int(args["n"]), str(args["topic"]), str(args["group"])
    acked = args["acked"]
    key = f"{topic}-0"
    name = f"m{args['member']}"
    r = _conn(args)
    r.ping()
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = last_ack = time.monotonic()
    count = 0
    while time.monotonic() < deadline:
        resp = r.xreadgroup(group, name, {key: ">"}, count=GROUP_COUNT)
        entries = resp[0][1] if resp else []
        if not entries:
            if acked.value >= n:
                break
            time.sleep(0.001)
            continue
        r.xack(key, group, *[e[0] for e in entries])
        last_ack = time.monotonic()
        count += len(entries)
        with acked.get_lock():
            acked.value += len(entries)
    end = time.monotonic()
    r.close()
    return {"start": start, "end": end, "last_ack": last_ack, "count": count}


#: Entries per XREADGROUP of a W8 worker: RabbitMQ's prefetch, so each worker
#: holds at most as many unacknowledged tasks as a RabbitMQ consumer does.
WORK_COUNT = 100
#: How often a W8R survivor runs XAUTOCLAIM: the granularity of its redelivery
#: time on top of the min-idle time.
CLAIM_INTERVAL_S = 0.1


def work(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W8 worker: ``XREADGROUP > COUNT WORK_COUNT BLOCK 50``, then one ``XACK``
    per entry, the batch's XACKs sent in one pipeline (one round trip per batch,
    not per entry). With ``stamped`` the latency of each entry is taken once the
    pipeline's replies are in. Stops once ``args["acked"]`` reaches ``n``."""
    import numpy as np

    n, topic, group = int(args["n"]), str(args["topic"]), str(args["group"])
    stamped = bool(args.get("stamped"))
    acked = args["acked"]
    key = f"{topic}-0"
    name = f"w{args['member']}"
    r = _conn(args)
    r.ping()
    lat = np.zeros(n if stamped else 0, dtype=np.int64)
    from_bytes = int.from_bytes
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = last_ack = time.monotonic()
    count = 0
    while time.monotonic() < deadline:
        resp = r.xreadgroup(group, name, {key: ">"}, count=WORK_COUNT, block=50)
        entries = resp[0][1] if resp else []
        if not entries:
            if acked.value >= n:
                break
            continue
        pipe = r.pipeline(transaction=False)
        for eid, _fields in entries:
            pipe.xack(key, group, eid)
        pipe.execute()
        now = time.monotonic_ns()
        last_ack = time.monotonic()
        if stamped:
            for _eid, fields in entries:
                if count < n:
                    lat[count] = now - from_bytes(fields[b"v"][:8], "little")
                count += 1
        else:
            count += len(entries)
        with acked.get_lock():
            acked.value += len(entries)
    end = time.monotonic()
    r.close()
    return {
        "start": start,
        "end": end,
        "last_ack": last_ack,
        "count": count,
        "lat_ns": lat[: min(count, n)],
    }


def hold(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R victim: ``XREADGROUP`` up to ``k`` entries, never acked; report their
    ids on ``args["held"]`` and wait to be killed."""
    topic, group, k = str(args["topic"]), str(args["group"]), int(args["k"])
    key = f"{topic}-0"
    r = _conn(args)
    got: list[bytes] = []
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    while len(got) < k and time.monotonic() < deadline:
        resp = r.xreadgroup(group, "victim", {key: ">"}, count=k - len(got), block=100)
        got += [f[b"v"][:8] for _eid, f in (resp[0][1] if resp else [])]
    args["held"].put((time.monotonic(), got))
    time.sleep(float(args.get("deadline_s", 60)))  # killed with SIGKILL long before
    return {}


def claim(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R survivor: every CLAIM_INTERVAL_S, ``XAUTOCLAIM`` entries idle for at
    least ``visibility_ms`` (and ``XREADGROUP >`` for new ones), ack them, until
    ``k`` arrived; each one's receipt time keyed by its first 8 bytes."""
    topic, group, k = str(args["topic"]), str(args["group"]), int(args["k"])
    idle_ms = int(args["visibility_ms"])
    key = f"{topic}-0"
    r = _conn(args)
    r.ping()
    seen: dict[bytes, float] = {}
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    ready()
    while len(seen) < k and time.monotonic() < deadline:
        _next, entries, *_ = r.xautoclaim(key, group, "survivor", idle_ms, "0-0", count=k)
        resp = r.xreadgroup(group, "survivor", {key: ">"}, count=k)
        entries = list(entries) + list(resp[0][1] if resp else [])
        now = time.monotonic()
        for eid, fields in entries:
            seen.setdefault(fields[b"v"][:8], now)
            r.xack(key, group, eid)
        if len(seen) < k:
            time.sleep(CLAIM_INTERVAL_S)
    r.close()
    return {"seen": seen}
