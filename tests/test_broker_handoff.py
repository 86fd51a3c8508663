"""ThreadHandoff: store futures completed on the flusher thread, awaited on the loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from logstore.broker._runtime import ThreadHandoff
from logstore.errors import StorageError


def test_one_flusher_turn_reaches_the_loop_in_one_call_soon_threadsafe() -> None:
    """The acks=ALL waiters one fsync turn completes cost one self-pipe hand-off
    (asyncio.wrap_future made one per waiter), each gets its own outcome, and a
    future completed before it is wrapped needs no hand-off at all."""

    async def main() -> tuple[int, list[Any]]:
        loop = asyncio.get_running_loop()
        handoff = ThreadHandoff()
        handoff.bind(loop)
        calls = [0]
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kw: Any) -> Any:
            calls[0] += 1
            return real(*args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        cfs: list[Future[int]] = [Future() for _ in range(8)]
        futs = [handoff.wrap(cf) for cf in cfs]
        done: Future[int] = Future()
        done.set_result(-1)
        already = handoff.wrap(done)
        assert already.done()

        def turn() -> None:  # the flusher completing every waiter it covered
            for i, cf in enumerate(cfs[:-1]):
                cf.set_result(i)
            cfs[-1].set_exception(StorageError("fsync failed"))

        t = threading.Thread(target=turn)
        t.start()
        t.join()
        got = await asyncio.gather(*futs, return_exceptions=True)
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        return calls[0], [*got, already.result()]

    calls, got = asyncio.run(main())
    assert calls == 1
    assert got[:7] == list(range(7))
    assert isinstance(got[7], StorageError) and got[8] == -1


def test_cancelling_the_wait_leaves_the_store_future_alone() -> None:
    """A client that goes away cancels its reply's wait; the store's future stays
    pending and the flusher completes it later without an error (what
    asyncio.shield did), and the cancelled wait is not resurrected."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        handoff = ThreadHandoff()
        handoff.bind(loop)
        cf: Future[None] = Future()
        fut = handoff.wrap(cf)
        task = asyncio.ensure_future(fut)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cf.cancelled() and not cf.done()
        t = threading.Thread(target=cf.set_result, args=(None,))
        t.start()
        t.join()
        await asyncio.sleep(0.01)  # the drain runs and skips the cancelled wait
        return fut.cancelled()

    assert asyncio.run(main()) is True
