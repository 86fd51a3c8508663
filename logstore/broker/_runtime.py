"""What every handler area shares: the store, limits, waiters, timers, I/O pool, shutdown.

One :class:`Runtime` per broker. Handler areas (``handlers/produce.py``,
``handlers/fetch.py``, ``handlers/admin.py``; groups and queues add theirs)
take it in their constructor and keep no shared state of their own.

Threads: handlers run on the event loop; every store call that may touch the
disk goes through :meth:`Runtime.run_io`, a bounded pool of ``io_threads``,
so a slow disk never stalls the loop. Cheap in-memory lookups
(``store.topic``) run inline. The store's append listener runs on the
appending thread and only schedules a wake-up on the loop
(:meth:`WaitRegistry.notify_threadsafe`). A store future completed on
another thread (an acks=ALL fsync wait, ``Store.sync_to``) is awaited
through :meth:`Runtime.wait_threadsafe`: the waiters one flusher turn
completes reach the loop in one ``call_soon_threadsafe`` (one self-pipe
write and read), not one each as ``asyncio.wrap_future`` does, and
cancelling the awaiting task never cancels the store's future (which the
flusher completes later).

Shutdown: :meth:`begin_shutdown` makes :attr:`stopping` true, sets
:attr:`stop_event`, wakes every waiter (long polls answer, subscriptions
end) and cancels the tasks parked in :meth:`write_or_stop` (a Subscribe push
held up by a reader's flow control); :meth:`drain` waits for queued
background work (acks=NONE appends), cancels timers and stops the I/O pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
import grpc.aio

from logstore.errors import BrokerShuttingDownError

from ._admission import Limits, Slot
from ._config import BrokerConfig
from ._metrics import BrokerMetrics
from ._waiters import Timers, WaitRegistry

if TYPE_CHECKING:
    from logstore.errors import LogStoreError
    from logstore.storage import Store

    from ._groups_runtime import GroupsRuntime
    from ._share_runtime import ShareRuntime

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

#: RetryInfo of "shutting down": a restart of this broker takes about a second
#: (store open, recovery of a clean data directory); retrying sooner only
#: meets a closed port.
SHUTDOWN_RETRY_AFTER_MS: Final = 1000

#: The admission slot of the request being handled (each RPC runs in its own task).
_SLOT: contextvars.ContextVar[Slot] = contextvars.ContextVar("logstore_admission_slot")


def current_slot() -> Slot:
    """The admission slot of the RPC this task handles (set by the service wrapper)."""
    return _SLOT.get()


def set_current_slot(slot: Slot) -> None:
    _SLOT.set(slot)


def shutting_down(message: str) -> BrokerShuttingDownError:
    """The error of a request refused or ended because the broker stops."""
    return BrokerShuttingDownError(message, retry_after_ms=SHUTDOWN_RETRY_AFTER_MS)


class ClientGoneError(Exception):
    """A reply could not be written because the call already ended on the client's side."""


async def write_reply(context: Context, message: Any) -> None:
    """``context.write``; ClientGoneError when the call has ended (cancel, deadline, reset)."""
    try:
        await context.write(message)
    except grpc.aio.InternalError as exc:
        # gRPC's "Failed execute_batch": the only way a send fails once the
        # message is accepted is that the call is over.
        raise ClientGoneError(f"the client is gone ({type(exc).__name__})") from exc


class _Resume:
    """An awaitable that carries on a coroutine which already ran up to its
    first wait (``first`` is what it yielded there): what a task needs to
    take it over from :func:`run_eagerly`. Sends, throws (a cancellation)
    and closes are passed through, so the task drives the coroutine exactly
    as if it had started it."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
    """Run ``coro`` now, in the caller, up to its first wait: None if it
    finished without waiting, else a task that carries it on from there
    (Python 3.12's eager tasks, which 3.11 lacks). A MultiProduce's
    per-partition chains, whose inline appends never wait, then cost no task
    and no trip through the loop's ready queue each (1,000 of them a
    request at 1,000 partitions). An exception it raises before waiting
    propagates here. Event loop only."""
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_Resume(coro, first))


class ThreadHandoff:
    """Concurrent futures (completed on another thread) as loop futures, handed
    to the loop in batches: the first completion of a batch schedules one
    drain with ``call_soon_threadsafe``; those that complete before the drain
    runs join it. The loop future is the caller's alone: cancelling it leaves
    the concurrent future alone (no ``asyncio.shield`` needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[Any], ThreadFuture[Any]]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the futures belong to (called on its thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def wrap(self, cf: ThreadFuture[T]) -> asyncio.Future[T]:
        """A loop future with ``cf``'s outcome (event loop only)."""
        loop = self._loop
        assert loop is not None, "ThreadHandoff.bind(loop) first"
        fut: asyncio.Future[T] = loop.create_future()
        if cf.done():  # already durable: no hand-off at all
            _copy_outcome(cf, fut)
        else:
            cf.add_done_callback(lambda done: self._completed(fut, done))
        return fut

    def _completed(self, fut: asyncio.Future[Any], cf: ThreadFuture[Any]) -> None:
        # Any thread (the flusher's, or the loop's if it raced wrap's check).
        with self._lock:
            self._ready.append((fut, cf))
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        assert loop is not None
        if threading.get_ident() == self._loop_thread:
            self._drain()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for fut, cf in ready:
            _copy_outcome(cf, fut)


def _copy_outcome(cf: ThreadFuture[Any], fut: asyncio.Future[Any]) -> None:
    if fut.done():  # its awaiting task was cancelled
        return
    if cf.cancelled():
        fut.cancel()
        return
    exc = cf.exception()
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(cf.result())


class Runtime:
    """The broker's shared runtime state; see the module docstring."""

    def __init__(self, store: Store, config: BrokerConfig, metrics: BrokerMetrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.limits = Limits(
            max_concurrent_requests=config.max_concurrent_requests,
            max_inflight_produce_bytes=config.max_inflight_produce_bytes,
            max_long_poll_waiters=config.max_long_poll_waiters,
            max_subscriptions=config.max_subscriptions,
            max_inflight_decompress_bytes=config.max_inflight_decompress_bytes,
            retry_after_ms=config.retry_after_ms,
            on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
        )
        # Read at scrape time: the limiter already counts them (two gauge
        # updates with their mutex per produce message otherwise).
        produce_bytes = self.limits.produce_bytes
        metrics.inflight_bytes.set_function(lambda: produce_bytes.value)
        #: Fetch long polls and Subscribe streams wait here on (topic, partition).
        self.waiters = WaitRegistry()
        self.timers = Timers()
        self.handoff = ThreadHandoff()
        self.stop_event = asyncio.Event()
        self.stopping = False
        self._pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="logstore-io")
        self._background: set[asyncio.Task[None]] = set()
        #: Tasks awaiting a stream write that shutdown must end (write_or_stop).
        self._writing: set[asyncio.Task[Any]] = set()
        #: The consumer-group coordinator runtime (set by the service).
        self.groups: GroupsRuntime | None = None
        #: The share-group runtime (set by the service).
        self.share: ShareRuntime | None = None
        #: Topic -> the error a produce to it gets now (share-group back
        #: pressure, QUEUE_LATENCY_EXCEEDED); replaced whole once a second by
        #: the share runtime, read with one dict lookup per produce.
        self.produce_refusals: dict[str, LogStoreError] = {}

    async def topics_changed(self) -> None:
        """A topic was created or deleted or got partitions: retarget groups."""
        if self.groups is not None:
            await self.groups.on_metadata()
        if self.share is not None:
            await self.share.on_metadata()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiters.bind(loop)
        self.timers.bind(loop)
        self.handoff.bind(loop)
        self.store.add_append_listener(self._on_append)

    def _on_append(self, topic: str, partition: int, end_offset: int) -> None:
        # Appending thread: see WaitRegistry for why a racy test is enough.
        self.waiters.notify_threadsafe((topic, partition))

    def wait_threadsafe(self, cf: ThreadFuture[T]) -> asyncio.Future[T]:
        """``cf`` (completed on another thread) as a loop future; see
        :class:`ThreadHandoff`. Event loop only."""
        return self.handoff.wrap(cf)

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in the I/O pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args))

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        """A background task that shutdown waits for (acks=NONE appends)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def begin_shutdown(self) -> None:
        """Refuse new requests; answer long polls and end subscriptions now."""
        self.stopping = True
        self.stop_event.set()
        self.waiters.close()
        for task in list(self._writing):
            task.cancel()

    async def write_or_stop(self, context: Context, message: Any, stopped: str) -> None:
        """``write_reply``, but shutdown ends it at once (BrokerShuttingDownError
        with ``stopped``) even when the reader's flow control holds it up.

        No task or future per message: the calling task registers itself and
        :meth:`begin_shutdown` cancels it; that cancellation becomes the
        shutdown error here (the client's own cancellation stays one)."""
        if self.stopping:
            raise shutting_down(stopped)
        task = asyncio.current_task()
        assert task is not None
        # Registered for begin_shutdown's cancel only while writing (a plain
        # try/finally: a contextlib manager cost ~3 us a push).
        self._writing.add(task)
        try:
            await write_reply(context, message)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            task.uncancel()
            raise shutting_down(stopped) from None
        finally:
            self._writing.discard(task)

    async def drain(self) -> None:
        """Wait for background work, cancel timers, then stop the I/O threads."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.timers.close()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
