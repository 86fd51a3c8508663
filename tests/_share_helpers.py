"""In-process share groups for tests: the broker's Runtime and ShareRuntime on one
event loop over a Store (no gRPC), so a test can count what the coordinator does or
cut the simulated disk's power after it (``test_share_wakeups``, ``test_share_durability``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from logstore import Store
from logstore.broker._config import BrokerConfig
from logstore.broker._metrics import BrokerMetrics
from logstore.broker._runtime import Runtime
from logstore.broker._share_runtime import ShareRuntime
from tests.storagehelp import ROOT

T = TypeVar("T")


def run_share_runtime(
    open_store: Callable[[], Store],
    body: Callable[[ShareRuntime, Store], Awaitable[T]],
    config: BrokerConfig | None = None,
) -> T:
    """``body(share, store)`` on a started ShareRuntime over ``open_store()`` (called on
    the loop); its result. The share runtime is stopped and the broker runtime drained
    after it, but the store is left open (not flushed, not closed): a power cut of its
    disk after this is a cut at the end of ``body``."""

    async def main() -> T:
        store = open_store()
        rt = Runtime(store, config or BrokerConfig(data_dir=ROOT), BrokerMetrics())
        rt.start(asyncio.get_running_loop())
        share = ShareRuntime(rt)
        rt.share = share
        await share.start()
        try:
            return await body(share, store)
        finally:
            await share.stop()
            rt.begin_shutdown()
            await rt.drain()

    return asyncio.run(main())


async def join(share: ShareRuntime) -> str:
    """A new member of share group ``g`` on topic ``t``; its id."""
    m = await share.call(lambda c, now: c.join("g", ["t"], now_ms=now))
    return str(m.consumer_id)
