"""Group commit: the fsync waiters of one partition, and the store's flusher thread.

:class:`GroupCommit` (one per partition) turns "every offset below N is
durable" requests into as few fsyncs as possible. ``sync_to(offset)`` returns
a future. If no fsync is running, the caller either hands the partition to
the flusher thread (``on_wanted`` returns True: the broker) or becomes the
leader: it fsyncs for everyone queued behind it and loops until no waiter is
left (leader/follower, no thread: embedded use). One fsync completes every
waiter at or below the offset it covered; on an error every waiter gets it.

:class:`Flusher` is that thread: it takes partitions with waiters from a queue
(``enqueue``), fsyncs each once per turn (several partitions at once, up to
``FLUSH_PARALLELISM``, so the file system commits their fsyncs together),
queues it again while waiters remain, and between turns (at least every
checkpoint interval) calls the store's checkpoint. ``stop()`` joins it and
serves waiters left behind in the caller's thread.

Thread-safety: all methods are thread-safe. Lock order: a partition's write
lock (taken inside the ``sync`` callback), then its GroupCommit lock, never
the other way; the flusher's condition is never held while calling a
partition.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Final

from logstore.errors import StorageError

if TYPE_CHECKING:
    from ._partition import PartitionLog

#: Partitions one flusher turn fsyncs at once (threads, each mostly waiting in
#: fdatasync): enough for the journal to take many fsyncs into one commit
#: (1,000 partitions' fsyncs: 8 at a time 0.10-0.13 s, 16 0.09-0.11 s, one
#: at a time 1.2-2.2 s on ext4 here).
FLUSH_PARALLELISM: Final = 8

#: ``sync()`` -> (offset it made durable, error or None): one fsync of a partition.
SyncFn = Callable[[], "tuple[int, BaseException | None]"]


class GroupCommit:
    """See the module docstring."""

    def __init__(self, sync: SyncFn) -> None:
        self._sync = sync
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, Future[None]]] = []
        self._syncing = False  # a leader or the flusher owns the next fsync
        self._flushed = 0
        self._again = False  # request_sync during a flusher turn: one more turn
        #: Called with no lock held when a fsync is wanted and none runs;
        #: returns True if the flusher thread took the partition.
        self.on_wanted: Callable[[], bool] = lambda: False

    @property
    def flushed_offset(self) -> int:
        """Every offset below it is durable."""
        return self._flushed

    def reset_flushed(self, offset: int) -> None:
        """Set the durable offset (at open)."""
        with self._lock:
            self._flushed = offset

    def lower_flushed(self, offset: int) -> None:
        """Lower the durable offset (a truncation below it)."""
        with self._lock:
            self._flushed = min(self._flushed, offset)

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def sync_to(self, offset: int) -> Future[None]:
        """A future done when every offset below ``offset`` is durable."""
        fut: Future[None] = Future()
        with self._lock:
            if self._flushed >= offset:
                fut.set_result(None)
                return fut
            self._waiters.append((offset, fut))
            if self._syncing:
                return fut
            self._syncing = True
        if self.on_wanted():
            return fut
        self._lead()
        return fut

    def request_sync(self) -> None:
        """Run one fsync turn soon (everything written so far), without waiting and
        without fsyncing in the caller's thread: the flusher thread takes the
        partition if there is one (``on_wanted``); without one (embedded) this
        does nothing and the next ``sync_to`` (or close) covers it. What a
        segment roll calls once the partition's lock is released."""
        with self._lock:
            # No "durable already" shortcut: a roll by time adds no offset but
            # leaves a sealed segment's indexes and a new name to make durable.
            if self._syncing:
                # A turn runs and may have taken its target before the caller's
                # writes: the flusher runs one more (``finish_turn``).
                self._again = True
                return
        # The flusher's enqueue claims the partition itself; embedded, nothing
        # is claimed, so no waiter can be left without a leader.
        self.on_wanted()

    def _lead(self) -> None:
        """Fsync until no waiter is left (the caller owns ``_syncing``)."""
        while True:
            self.sync_once()
            with self._lock:
                if not self._waiters:
                    self._syncing = False
                    return

    def sync_once(self) -> int:
        """One fsync of everything written so far; completes the waiters it
        covers and returns how many it completed."""
        target, error = self._sync()
        if error is None:
            return self.mark_durable(target)
        with self._lock:
            done = [f for _, f in self._waiters]
            self._waiters = []
        for fut in done:
            with contextlib.suppress(InvalidStateError):  # see mark_durable
                fut.set_exception(error)
        return len(done)

    def mark_durable(self, offset: int) -> int:
        """Every offset below ``offset`` is durable (this partition's fsync, or
        the store's ``syncfs``): complete the waiters it covers; return how many."""
        with self._lock:
            self._flushed = max(self._flushed, offset)
            done = [f for off, f in self._waiters if off <= offset]
            self._waiters = [(off, f) for off, f in self._waiters if off > offset]
        for fut in done:
            # A waiter may have given up (an asyncio caller cancelled the
            # wrapped future): completing it anyway must not kill the flusher.
            with contextlib.suppress(InvalidStateError):
                fut.set_result(None)
        return len(done)

    # --- the flusher's side ------------------------------------------------------------
    def claim(self) -> None:
        """The flusher queued this partition: followers wait for it."""
        with self._lock:
            self._syncing = True

    def finish_turn(self) -> bool:
        """After the flusher's fsync: True if waiters remain (queue it again),
        else the partition is released."""
        with self._lock:
            if self._waiters or self._again:
                self._again = False
                return True
            self._syncing = False
            return False

    def release(self) -> None:
        """The flusher stopped: the next waiter leads."""
        with self._lock:
            self._syncing = False


class Flusher:
    """The thread that serves group commits of every partition (see above)."""

    def __init__(
        self,
        interval_s: float,
        checkpoint: Callable[[], None],
        after_fsync: Callable[[PartitionLog, float, int], None],
    ) -> None:
        self._interval_s = interval_s
        self._checkpoint = checkpoint
        self._after_fsync = after_fsync
        self._cond = threading.Condition()
        self._queue: dict[tuple[str, int], PartitionLog] = {}
        self._stop = False
        #: Fsyncs a turn with several partitions runs at once (made at the
        #: first such turn; a turn of one partition runs in this thread).
        self._pool: ThreadPoolExecutor | None = None
        self._thread = threading.Thread(target=self._run, name="logstore-flusher", daemon=True)
        self._thread.start()

    def enqueue(self, lg: PartitionLog) -> bool:
        """Take ``lg``'s waiters (always True: the thread serves them)."""
        with self._cond:
            self._queue[lg.key] = lg
            lg.commits.claim()
            self._cond.notify()
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stop:
                        self._cond.wait(timeout=self._interval_s)
                        if not self._queue:
                            break
                    if self._stop and not self._queue:
                        return
                    queue, self._queue = self._queue, {}
                self._turns(list(queue.values()))
                self._checkpoint()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _turns(self, logs: list[PartitionLog]) -> None:
        """One fsync turn of each of ``logs``, returning when all are done.

        Several partitions' fsyncs run at once, up to :data:`FLUSH_PARALLELISM`:
        the file system commits concurrent fdatasyncs together (ext4's
        journal takes every one waiting into one commit), so a MultiProduce
        with acks=ALL over 1,000 partitions costs a few commits instead of
        1,000 in a row (measured on this machine's ext4: 1,000 fdatasyncs of
        21 KB appends 1.2-2.2 s one after the other, 0.1-0.13 s eight at a
        time). Each partition's waiters are still completed only by its own
        fsync (``GroupCommit.sync_once``); a partition is in one turn at most
        once, and the next turn starts after all of this one's."""
        if len(logs) <= 1:  # none: the interval passed with nothing to do
            for lg in logs:
                self._turn(lg)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FLUSH_PARALLELISM, thread_name_prefix="logstore-fsync")
        futures = [self._pool.submit(self._turn, lg) for lg in logs[1:]]
        try:
            self._turn(logs[0])
        finally:
            wait(futures)
        for f in futures:
            f.result()  # an unexpected error ends the thread, as a turn here would

    def _turn(self, lg: PartitionLog) -> None:
        t0 = time.perf_counter()
        completed = 0
        try:
            completed = lg.commits.sync_once()
        finally:
            if lg.commits.finish_turn():
                with self._cond:
                    self._queue[lg.key] = lg
        self._after_fsync(lg, time.perf_counter() - t0, completed)

    def stop(self, logs: Iterable[PartitionLog]) -> None:
        """Join the thread, then serve any waiter left, in the caller's thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()
        for lg in logs:
            lg.commits.release()
            if lg.commits.has_waiters:
                with contextlib.suppress(StorageError):
                    lg.flush()
