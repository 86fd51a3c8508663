"""A caught-up Subscribe reads once per push, and loses no append made while it writes.

In process (the broker's service on this test's event loop, a recording
servicer context): after a push that reached the partition's end, the
subscription waits for the next append instead of re-reading at once (the
re-read would find nothing); an append made while that push was being
written has already woken it, so it is pushed at once, not after the 5 s
recheck.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from logstore.broker._config import BrokerConfig
from logstore.broker._metrics import BrokerMetrics
from logstore.broker._rpc_table import RPCS
from logstore.broker._service import LogStoreService
from logstore.broker.handlers.fetch import FetchHandlers
from logstore.storage import Store
from logstore.v1 import logstore_pb2 as pb

PUSHES = 20


class _Aborted(Exception):
    """What the context's abort raises (gRPC's raises too)."""


class _Recorder:
    """A servicer context that keeps every pushed message; ``hold`` blocks the next write."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.pushed = asyncio.Event()
        self.hold: asyncio.Event | None = None
        self.writing = asyncio.Event()
        self.aborted: tuple[object, ...] | None = None

    async def write(self, message: bytes) -> None:
        self.writing.set()
        if self.hold is not None:
            await self.hold.wait()
            self.hold = None
        reply = pb.FetchResponse.FromString(message)
        self.offsets.extend(b.base_offset for b in reply.batches)
        self.pushed.set()

    async def abort(self, *args: object) -> None:
        self.aborted = args  # the shutdown that ends the test
        raise _Aborted


async def _with_subscription(tmp_path: Path, body: Any) -> None:
    config = BrokerConfig(data_dir=str(tmp_path / "data"))
    store = Store.open(config.data_dir, config.store_config())
    try:
        store.create_topic("t", 1)
        svc = LogStoreService(store, config, BrokerMetrics())
        svc.start(asyncio.get_running_loop())
        rpc = next(r for r in RPCS if r.name == "Subscribe")
        handler = svc.wrap(rpc, svc.areas["fetch"].subscribe)  # type: ignore[attr-defined]
        ctx = _Recorder()
        request = pb.SubscribeRequest(topic="t", partition=0).SerializeToString()
        task = asyncio.ensure_future(handler(request, ctx))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # subscribed: the first read found nothing
        try:
            await body(store, ctx)
            assert ctx.aborted is None
        finally:
            svc.begin_shutdown()
            with pytest.raises(_Aborted):
                await asyncio.wait_for(task, 10)
            await svc.drain_background()
        assert ctx.aborted is not None and "shutting down" in str(ctx.aborted[1])
    finally:
        store.close()


def test_caught_up_subscribe_reads_once_per_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    real = FetchHandlers._read_blocking

    def counted(self: FetchHandlers, *args: Any) -> Any:
        reads.append(args)
        return real(self, *args)

    monkeypatch.setattr(FetchHandlers, "_read_blocking", counted)

    async def body(store: Store, ctx: _Recorder) -> None:
        before = len(reads)
        for i in range(PUSHES):
            ctx.pushed.clear()
            store.append("t", 0, [b"r%d" % i])
            await asyncio.wait_for(ctx.pushed.wait(), 5)
        await asyncio.sleep(0.05)
        assert ctx.offsets == list(range(PUSHES))
        # one read per append; the old loop re-read after every push (2 per append)
        assert len(reads) - before == PUSHES

    asyncio.run(_with_subscription(tmp_path, body))


def test_append_during_a_push_is_pushed_without_waiting_for_the_recheck(
    tmp_path: Path,
) -> None:
    async def body(store: Store, ctx: _Recorder) -> None:
        ctx.hold = asyncio.Event()
        store.append("t", 0, [b"first"])
        await asyncio.wait_for(ctx.writing.wait(), 5)  # the first push is being written
        store.append("t", 0, [b"second"])
        await asyncio.sleep(0.01)  # the append's wake-up reaches the loop
        ctx.hold.set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while len(ctx.offsets) < 2:
            ctx.pushed.clear()
            await asyncio.wait_for(ctx.pushed.wait(), 5)
        # well under the 5 s recheck: the append woke the subscription during the write
        assert loop.time() - t0 < 1.0
        assert ctx.offsets == [0, 1]

    asyncio.run(_with_subscription(tmp_path, body))
