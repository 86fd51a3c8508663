"""NATS JetStream: ``nats-server -js`` as a child process, ``nats-py`` on the client side.

One stream per topic with file storage; a "partition" is one subject
``<topic>.<p>`` of that stream. Produce uses ``publish_async`` (acks
collected asynchronously, at most 4,000 pending, nats-py's default); replay
and tail use an ordered push consumer. The Debian nats-server 2.9 has no
per-message fsync (``sync_interval`` arrived in 2.10): it syncs file storage
every 2 minutes, so its rows are labelled "fsync ≤ 2 min" and it runs with one
durability setting only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._proc import HOST, Child, free_port, wait_port
from benchmarks.systems import find_exe, paced_steps, payloads
from benchmarks.systems._base import System

MAX_PENDING = 4000
#: Messages per pull ``fetch`` of a W7 member (the same batch as Redis's XREADGROUP).
GROUP_FETCH = 1000
#: Unacknowledged messages the W7 consumer may have out at once: above the four
#: members' batches in flight (4 x 1,000), so the bound never stalls a fetch.
GROUP_MAX_ACK_PENDING = 20_000


class Driver(System):
    name = "nats"
    durability_modes = (False,)

    @classmethod
    def unavailable(cls) -> str | None:
        if find_exe("nats-server") is None:
            return "nats-server is not installed (make bench-compare installs it)"
        try:
            import nats  # noqa: F401
        except ImportError:
            return "the nats-py client is not installed (pip install -e '.[bench]')"
        return None

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        d = workdir / "nats-data"
        d.mkdir(parents=True, exist_ok=True)
        exe = find_exe("nats-server")
        assert exe is not None
        self.child = Child(
            [exe, "-a", HOST, "-p", str(self.port), "-js", "-sd", str(d)], workdir / "nats.log"
        )
        wait_port(self.port, 30, self.child.proc)

    def params(self) -> dict[str, Any]:
        return {"url": f"nats://{HOST}:{self.port}"}

    def _admin(self, fn: Callable[[Any], Any]) -> Any:
        import nats

        async def go() -> Any:
            nc = await nats.connect(self.params()["url"])
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())

    def create(self, topic: str, partitions: int = 1) -> None:
        from nats.js.api import StorageType, StreamConfig

        cfg = StreamConfig(name=topic, subjects=[f"{topic}.*"], storage=StorageType.FILE)
        self._admin(lambda js: js.add_stream(cfg))

    def delete(self, topic: str, partitions: int = 1) -> None:
        self._admin(lambda js: js.delete_stream(topic))

    def stream_count(self, topic: str) -> int:
        async def info(js: Any) -> int:
            return int((await js.stream_info(topic)).state.messages)

        return int(self._admin(info))

    def create_group(self, topic: str, group: str, partitions: int = 1) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = ConsumerConfig(
            durable_name=group,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=GROUP_MAX_ACK_PENDING,
            ack_wait=120.0,  # seconds: no redelivery during a drain
        )
        self._admin(lambda js: js.add_consumer(topic, cfg))

    def group_outstanding(self, topic: str, group: str, partitions: int = 1) -> int:
        async def info(js: Any) -> int:
            ci = await js.consumer_info(topic, group)
            return int(ci.num_pending) + int(ci.num_ack_pending)

        return int(self._admin(info))

    def label(self, durable: bool) -> str:
        return "file, fsync ≤ 2 min"


def _run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def produce(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    import nats

    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    parts = list(args.get("partitions_list") or [0])
    subjects = [f"{topic}.{p}" for p in parts]
    values = payloads(size, n)
    chunk = 1000

    async def go() -> dict[str, Any]:
        nc = await nats.connect(args["params"]["url"])
        js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
        deadline = time.monotonic() + float(args.get("deadline_s", 120))
        ready()
        start = time.monotonic()
        sent = 0
        b = 0
        failures = 0
        futs: list[Any] = []
        while sent < n and time.monotonic() < deadline:
            k = min(chunk, n - sent)
            subj = subjects[b % len(subjects)]
            b += 1
            pub = js.publish_async
            for v in values[sent : sent + k]:
                futs.append(await pub(subj, v))
            sent += k
            if len(futs) >= 20 * chunk:  # check acks as we go; bounded memory
                failures += sum(1 for f in futs if f.done() and f.exception() is not None)
                futs = [f for f in futs if not f.done()]
        await js.publish_async_completed()
        end = time.monotonic()
        failures += sum(1 for f in futs if f.exception() is not None)
        await nc.close()
        if failures:
            raise RuntimeError(f"{failures} JetStream publishes were not acknowledged")
        return {"start": start, "end": end, "count": sent, "bytes": sent * size}

    return dict(_run(go))


async def _ordered(
    *,
    url: str,
    subject: str,
    n: int,
    deadline_s: float,
    on_msgs: Callable[[Any], None],
    ready: Callable[[], None],
) -> tuple[float, float, int]:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    done = asyncio.Event()
    count = 0

    async def cb(msg: Any) -> None:
        nonlocal count
        on_msgs(msg)
        count += 1
        if count >= n:
            done.set()

    sub = await js.subscribe(subject, cb=cb, ordered_consumer=True)
    ready()
    start = time.monotonic()
    try:
        await asyncio.wait_for(done.wait(), timeout=deadline_s)
    except TimeoutError:
        pass
    end = time.monotonic()
    await sub.unsubscribe()
    await nc.close()
    return start, end, count


def replay(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    n, topic = int(args["n"]), str(args["topic"])
    start, end, count = _run(
        lambda: _ordered(
            url=args["params"]["url"],
            subject=f"{topic}.0",
            n=n,
            deadline_s=float(args.get("deadline_s", 120)),
            on_msgs=lambda m: None,
            ready=ready,
        )
    )
    return {"start": start, "end": end, "count": count, "bytes": 0}


def tail(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    import numpy as np

    n, topic = int(args["n"]), str(args["topic"])
    lat = np.zeros(n, dtype=np.int64)
    idx = [0]

    def on_msg(msg: Any) -> None:
        i = idx[0]
        if i < n:
            lat[i] = time.monotonic_ns() - int.from_bytes(msg.data[:8], "little")
        idx[0] = i + 1

    start, end, count = _run(
        lambda: _ordered(
            url=args["params"]["url"],
            subject=f"{topic}.0",
            n=n,
            deadline_s=float(args.get("deadline_s", 60)),
            on_msgs=on_msg,
            ready=ready,
        )
    )
    return {"start": start, "end": end, "count": count, "lat_ns": lat[: min(n, count)]}


def paced(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    import nats

    rate, seconds, size = float(args["rate"]), float(args["seconds"]), int(args["size"])
    subject = f"{args['topic']}.0"

    async def go() -> dict[str, Any]:
        nc = await nats.connect(args["params"]["url"])
        js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
        ready()
        start = time.monotonic()
        count = 0
        for wait_s, vals in paced_steps(rate, int(rate * seconds), size):
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # the flusher task sends while we wait
                continue
            for v in vals:
                await js.publish_async(subject, v)
            count += len(vals)
        await js.publish_async_completed()
        end = time.monotonic()
        await nc.close()
        return {"start": start, "end": end, "count": count}

    return dict(_run(go))


def group_drain(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W7 member: a pull subscriber of the durable consumer ``args["group"]``.

    ``fetch(GROUP_FETCH)``, ``msg.ack()`` for each message, then one
    ``flush()`` (PING/PONG: the acks have reached the server) before the batch
    counts. Stops when a fetch times out and the group's shared counter of
    acknowledged records (``args["acked"]``) has reached ``n``.
    """
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    n, topic, group = int(args["n"]), str(args["topic"]), str(args["group"])
    acked = args["acked"]

    async def go() -> dict[str, Any]:
        nc = await nats.connect(args["params"]["url"])
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind(group, stream=topic)
        deadline = time.monotonic() + float(args.get("deadline_s", 120))
        ready()
        start = last_ack = time.monotonic()
        count = 0
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(GROUP_FETCH, timeout=0.2)
            except (TimeoutError, NatsTimeout):
                msgs = []
            if not msgs:
                if acked.value >= n:
                    break
                continue
            for m in msgs:
                await m.ack()
            await nc.flush()
            last_ack = time.monotonic()
            count += len(msgs)
            with acked.get_lock():
                acked.value += len(msgs)
        end = time.monotonic()
        await nc.close()
        return {"start": start, "end": end, "last_ack": last_ack, "count": count}

    return dict(_run(go))
