"""Waiting without polling: wake-ups by key, and timers finer than the maintenance loop.

:class:`WaitRegistry` holds the requests waiting for something to happen to a
key -- today a ``(topic, partition)`` that a Fetch long poll or a Subscribe
stream waits on for appends; a share-group fetch or a coordinator can wait on
its own keys the same way. A waiter registers *before* it reads and waits
after; :meth:`WaitRegistry.notify_threadsafe` (called from the appending
thread) only schedules a wake-up on the loop when the key has waiters. That
membership test is racy on purpose: an append it misses happened before the
registration, so the waiter's own read after registering sees it. No
wake-up is lost and an append with no waiters costs one dict lookup. Called
on the loop's own thread (an append done on the event loop), it wakes the
waiters at once instead of through ``call_soon_threadsafe`` (whose self-pipe
write and read cost two system calls per append).

:meth:`WaitRegistry.waiting_any` registers one :class:`WaiterGroup` under
many keys (a MultiFetch long poll over many partitions): a notification of
any key wakes it and adds that key to the group's woken set, so the waiter
re-reads only what changed; the same register-then-read contract holds.

After :meth:`WaitRegistry.close` (shutdown) every waiter is woken, and
waiters registered later start woken, so nothing parks on a stopping broker.

:class:`Timers` runs callbacks on the event loop after a delay in ms, with
the loop's resolution (about 1 ms), bounded by ``max_timers``; coordinators
use it for session timeouts and delays that the 10 s maintenance loop
(``maintain_interval_ms``) is far too coarse for. :meth:`Timers.close` cancels
every pending timer.

Threads: everything runs on the event loop thread except
:meth:`WaitRegistry.notify_threadsafe`, which any thread may call.
:meth:`WaitRegistry.bind` is called on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Final

from logstore.errors import ResourceExhaustedError

#: Default bound on pending timers: a coordinator keeps about one per member
#: (session timeout) plus one per group (rebalance delay); 65,536 is far above
#: what max_concurrent_requests and max_subscriptions let clients create.
DEFAULT_MAX_TIMERS: Final = 65_536


class _Wake:
    """A woken flag and the one loop future a wait parks on (no Task, no
    ``asyncio.Event`` + ``wait_for``): a wake-up sets the future, so the
    waiting task runs in the loop's next turn. ``wait_for`` wrapped the
    event's wait in a Task of its own and went through three loop turns
    per wake-up (the event's future, that Task's end, the caller); this is
    one. One wait at a time (every caller is one request's own task)."""

    __slots__ = ("_fut", "_woken")

    def __init__(self) -> None:
        self._woken = False
        self._fut: asyncio.Future[bool] | None = None

    def _wake(self) -> None:
        self._woken = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(True)

    async def _wait(self, timeout_s: float | None) -> bool:
        if self._woken:
            return True
        assert self._fut is None, "one wait at a time"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _time_out, fut)
        self._fut = fut
        try:
            return await fut
        finally:
            self._fut = None
            if timer is not None:
                timer.cancel()


def _time_out(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Waiter(_Wake):
    """One registered waiter: woken by its key's notifications (or shutdown)."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable) -> None:
        super().__init__()
        self.key = key

    def clear(self) -> None:
        """Forget earlier wake-ups; call before the read that precedes a wait."""
        self._woken = False

    def set(self) -> None:
        self._wake()

    @property
    def woken(self) -> bool:
        return self._woken

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until woken (True) or ``timeout_s`` passes (False)."""
        return await self._wait(timeout_s)


class WaiterGroup(_Wake):
    """One wait over many keys (a MultiFetch long poll): woken by a
    notification of any of them, and says which (:meth:`take_woken`)."""

    __slots__ = ("_keys", "members")

    def __init__(self) -> None:
        super().__init__()
        self._keys: set[Hashable] = set()
        self.members: list[_GroupMember] = []

    def _set(self, key: Hashable) -> None:
        self._keys.add(key)
        self._wake()

    def take_woken(self) -> set[Hashable]:
        """The keys notified since the last call (and forget them); call
        before the reads that precede a wait, as :meth:`Waiter.clear`."""
        self._woken = False
        woken, self._keys = self._keys, set()
        return woken

    async def wait(self, timeout_s: float) -> bool:
        """Wait until a key is notified (True) or ``timeout_s`` passes (False)."""
        return await self._wait(timeout_s)


class _GroupMember(Waiter):
    """A :class:`WaiterGroup`'s registration under one key."""

    __slots__ = ("group",)

    def __init__(self, key: Hashable, group: WaiterGroup) -> None:
        super().__init__(key)
        self.group = group

    def set(self) -> None:
        super().set()
        self.group._set(self.key)


class WaitRegistry:
    """Waiters by key; see the module docstring for the ordering contract."""

    def __init__(self) -> None:
        # Read (membership only) from appending threads; mutated on the loop only.
        self._waiters: dict[Hashable, set[Waiter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that notify_threadsafe schedules wake-ups on (called on its thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def register(self, key: Hashable) -> Waiter:
        waiter = Waiter(key)
        self._waiters.setdefault(key, set()).add(waiter)
        if self._closed:
            waiter.set()
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        waiters = self._waiters.get(waiter.key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[waiter.key]

    @contextlib.contextmanager
    def waiting(self, key: Hashable) -> Iterator[Waiter]:
        """A registered waiter for the block, unregistered after it."""
        waiter = self.register(key)
        try:
            yield waiter
        finally:
            self.unregister(waiter)

    @contextlib.contextmanager
    def waiting_any(self, keys: Iterable[Hashable]) -> Iterator[WaiterGroup]:
        """One :class:`WaiterGroup` registered under every key for the block
        (the same ordering contract as :meth:`waiting`), unregistered after it."""
        group = WaiterGroup()
        try:
            for key in set(keys):
                member = _GroupMember(key, group)
                group.members.append(member)
                self._waiters.setdefault(key, set()).add(member)
                if self._closed:
                    member.set()
            yield group
        finally:
            for member in group.members:
                self.unregister(member)

    def notify_threadsafe(self, key: Hashable) -> None:
        """Wake ``key``'s waiters; safe from any thread, cheap when nobody waits."""
        if key in self._waiters and self._loop is not None:
            if threading.get_ident() == self._loop_thread:
                self.wake(key)
            else:
                self._loop.call_soon_threadsafe(self.wake, key)

    def wake(self, key: Hashable) -> None:
        for waiter in self._waiters.get(key, ()):
            waiter.set()

    def close(self) -> None:
        """Wake every waiter, now and registered from now on."""
        self._closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())


class Timer:
    """A pending callback of :class:`Timers`; ``cancel()`` is idempotent."""

    __slots__ = ("_handle", "_owner")

    def __init__(self, owner: Timers, handle: asyncio.TimerHandle) -> None:
        self._owner = owner
        self._handle = handle

    def cancel(self) -> None:
        self._handle.cancel()
        self._owner._pending.discard(self)

    @property
    def cancelled(self) -> bool:
        return self._handle.cancelled()


class Timers:
    """Callbacks on the loop after a delay in ms; at most ``max_timers`` pending."""

    def __init__(self, max_timers: int = DEFAULT_MAX_TIMERS) -> None:
        assert max_timers >= 1
        self.max_timers = max_timers
        self._pending: set[Timer] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_later(self, delay_ms: int, fn: Callable[[], None]) -> Timer:
        """Run ``fn()`` on the loop in ``delay_ms`` (>= 0); ResourceExhaustedError if full."""
        assert self._loop is not None, "Timers.bind(loop) first"
        assert delay_ms >= 0, delay_ms
        if len(self._pending) >= self.max_timers:
            raise ResourceExhaustedError(f"{self.max_timers} timers pending (max_timers)")
        timer: Timer

        def fire() -> None:
            self._pending.discard(timer)
            fn()

        timer = Timer(self, self._loop.call_later(delay_ms / 1000, fire))
        self._pending.add(timer)
        return timer

    def close(self) -> None:
        """Cancel every pending timer."""
        for timer in list(self._pending):
            timer.cancel()

    def __len__(self) -> int:
        return len(self._pending)
