"""The waiter registry and timers: wake-ups by key, shutdown, ms timers, bounds."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from logstore.broker._waiters import Timers, WaitRegistry
from logstore.errors import ResourceExhaustedError


def test_notify_from_another_thread_wakes_only_that_key() -> None:
    """notify_threadsafe from an appending thread wakes the key's waiters, not others."""

    async def main() -> tuple[bool, bool]:
        reg = WaitRegistry()
        reg.bind(asyncio.get_running_loop())
        with reg.waiting(("t", 0)) as a, reg.waiting(("t", 1)) as b:
            threading.Thread(target=reg.notify_threadsafe, args=(("t", 0),)).start()
            woke_a = await a.wait(5)
            woke_b = await b.wait(0.05)
        assert len(reg) == 0
        return woke_a, woke_b

    assert asyncio.run(main()) == (True, False)


def test_waiting_any_is_woken_by_any_key_and_says_which() -> None:
    """A WaiterGroup over three keys wakes on a notification of one, reports only
    that key, shares keys with plain waiters, and leaves nothing registered."""

    async def main() -> tuple[bool, set[object], bool, set[object], int]:
        reg = WaitRegistry()
        reg.bind(asyncio.get_running_loop())
        with reg.waiting(("t", 1)) as plain, reg.waiting_any([("t", 0), ("t", 1), ("u", 0)]) as g:
            assert len(reg) == 4
            threading.Thread(target=reg.notify_threadsafe, args=(("t", 1),)).start()
            woke = await g.wait(5)
            keys = g.take_woken()
            idle = await g.wait(0.05)  # take_woken cleared the wake-up
            again = g.take_woken()
            assert plain.woken
        return woke, keys, idle, again, len(reg)

    assert asyncio.run(main()) == (True, {("t", 1)}, False, set(), 0)


def test_waiting_any_after_close_starts_woken() -> None:
    """A group registered on a stopping broker is woken at once (no long poll parks)."""

    async def main() -> bool:
        reg = WaitRegistry()
        reg.bind(asyncio.get_running_loop())
        reg.close()
        with reg.waiting_any(["a", "b"]) as g:
            return await g.wait(1)

    assert asyncio.run(main()) is True


def test_close_wakes_current_and_later_waiters() -> None:
    """After close (shutdown) every waiter is woken, including ones registered later."""

    async def main() -> list[bool]:
        reg = WaitRegistry()
        reg.bind(asyncio.get_running_loop())
        early = reg.register("k")
        reg.close()
        late = reg.register("other")
        return [await early.wait(1), await late.wait(1)]

    assert asyncio.run(main()) == [True, True]


def test_notify_without_waiters_schedules_nothing() -> None:
    """A key nobody waits on costs a lookup: no callback is scheduled on the loop."""

    class Loop:
        calls = 0

        def call_soon_threadsafe(self, *args: object) -> None:
            Loop.calls += 1

    reg = WaitRegistry()
    reg.bind(Loop())  # type: ignore[arg-type]
    reg.notify_threadsafe(("t", 0))
    assert Loop.calls == 0


def test_notify_on_the_loops_thread_wakes_at_once_without_the_self_pipe() -> None:
    """An append done on the event loop wakes its waiters directly: the waiter is
    set when notify returns and no call_soon_threadsafe (a self-pipe write and
    read per append) is made; from another thread it still goes through it."""

    class Loop:
        calls = 0

        def call_soon_threadsafe(self, *args: object) -> None:
            Loop.calls += 1

    reg = WaitRegistry()
    reg.bind(Loop())  # type: ignore[arg-type]  # bound on this thread
    waiter = reg.register(("t", 0))
    reg.notify_threadsafe(("t", 0))
    assert waiter.woken and Loop.calls == 0
    waiter.clear()
    t = threading.Thread(target=reg.notify_threadsafe, args=(("t", 0),))
    t.start()
    t.join()
    assert Loop.calls == 1 and not waiter.woken  # woken later, on the loop


def test_a_wait_with_a_timeout_runs_no_task_and_one_loop_turn_per_wake_up() -> None:
    """A Subscribe's or long poll's wait(timeout) parks the caller's own task on
    one future: no Task is created for it (``wait_for`` made one per wait), the
    woken task runs in the loop's next turn, and a wait that times out says
    False; nothing is left registered on the loop (its timer is cancelled)."""

    async def main() -> tuple[int, bool, bool, int]:
        loop = asyncio.get_running_loop()
        reg = WaitRegistry()
        reg.bind(loop)
        with reg.waiting(("t", 0)) as waiter:
            tasks: set[asyncio.Task[object]] = set()
            real = loop.create_task

            def counting(coro: Any, **kw: Any) -> asyncio.Task[Any]:
                task = real(coro, **kw)
                tasks.add(task)
                return task

            loop.create_task = counting  # type: ignore[method-assign]
            try:
                turns = [0]

                def tick() -> None:  # counts the loop turns until the waiter runs
                    turns[0] += 1
                    if not woke.done():
                        loop.call_soon(tick)

                woke: asyncio.Future[bool] = loop.create_future()

                async def wake_soon() -> None:
                    await asyncio.sleep(0.01)
                    reg.notify_threadsafe(("t", 0))  # on the loop's thread: at once
                    loop.call_soon(tick)

                notifier = asyncio.ensure_future(wake_soon())
                woke.set_result(await waiter.wait(5))
                await notifier
                waiter.clear()
                timed_out = await waiter.wait(0.01)
            finally:
                loop.create_task = real  # type: ignore[method-assign]
            # the test's own notifier is the one task made in the block
            return len(tasks - {notifier}), woke.result(), timed_out, turns[0]

    made, woke, timed_out, turns = asyncio.run(main())
    assert made == 0
    assert woke is True and timed_out is False
    # The waiter ran in the first turn after the notification: tick ran once
    # before it (it was scheduled after the wake-up). wait_for took 3 turns.
    assert turns <= 1, turns


def test_timers_fire_at_ms_resolution_and_cancel() -> None:
    """A 20 ms timer fires well before the 10 s maintenance tick; a cancelled one never."""

    async def main() -> tuple[float, list[str], int]:
        timers = Timers(max_timers=4)
        timers.bind(asyncio.get_running_loop())
        fired: list[str] = []
        done = asyncio.Event()
        t0 = time.monotonic()
        timers.call_later(20, lambda: (fired.append("a"), done.set()))
        timers.call_later(10, lambda: fired.append("cancelled")).cancel()
        await asyncio.wait_for(done.wait(), 5)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.03)
        return elapsed, fired, len(timers)

    elapsed, fired, pending = asyncio.run(main())
    assert fired == ["a"] and pending == 0
    assert 0.015 <= elapsed < 1.0


def test_timers_are_bounded_and_close_cancels() -> None:
    """Past max_timers call_later refuses; close() cancels every pending timer."""

    async def main() -> list[str]:
        timers = Timers(max_timers=2)
        timers.bind(asyncio.get_running_loop())
        fired: list[str] = []
        timers.call_later(10, lambda: fired.append("x"))
        timers.call_later(10, lambda: fired.append("y"))
        with pytest.raises(ResourceExhaustedError):
            timers.call_later(10, lambda: fired.append("z"))
        timers.close()
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(main()) == []
