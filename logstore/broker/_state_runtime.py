"""A replayed state machine over an internal compacted topic: the machinery
the consumer-group runtime (:mod:`logstore.broker._groups_runtime`) and the
share-group runtime (:mod:`logstore.broker._share_runtime`) share.

Contract (``docs/architecture.md``, "Consumer group coordinator" and "Share
groups"):

* **One writer, group commit.** Every call goes through
  :meth:`StateRuntime.call` (read-only ones through :meth:`StateRuntime.read`):
  one writer at a time, in arrival order, under one asyncio lock. Calls queue
  (bounded by the admission bound every RPC of the service holds a slot of)
  and one drainer, holding the lock, takes every queued call (at most
  ``MAX_BATCH_CALLS``), runs their handlers one after the other, each
  replaying its records before the next handler runs (so each sees the state
  the ones before it left), then appends all their records (and those of one
  ``tick``) to the internal topic with **one fsync** in the I/O pool, and only
  then answers every caller of the batch. No reply, and no ``read``, shows a
  state that is not fsynced, apart from the records of unfsynced calls
  (below) and, in a pipelined runtime, of batches waiting for their fsync
  (below): both wait for the lock, which the drainer holds through the
  fsync. Calls that arrive during an fsync form the next batch. A handler
  that raises appended nothing and gets its own error.
* **Pipelined** (``pipelined = True``: the share groups; the consumer groups
  keep the lock through the fsync). A batch that needs an fsync releases the
  lock once its records are *written* and is answered when the fsync
  covering them is done (a loop callback on the store's future); the next
  batch runs and appends meanwhile. So a call's reply still waits for its
  own records' fsync (and, since the log is one partition written in batch
  order, every earlier batch's), but reads and unfsynced calls may see the
  state of a batch whose fsync is pending. After a power cut the log keeps
  a prefix (as for unfsynced calls), so what is lost is a suffix of batches
  none of whose fsync-asking callers was answered; an fsync error makes the
  partition read-only (``PartitionLog``), so no later fsync answers a batch
  written after a lost one. A failed fsync answers the batch INTERNAL and
  marks the state stale, as a failed append does. Why: with the lock held
  through every acknowledgement's fsync, every fetch's plan and acquisition
  queued behind it (W8 at 5,000 tasks/s: 7-8 ms of a fetch's ~18 ms in the
  broker, ``docs/benchmarks.md``).
* **Unfsynced calls.** A call made with ``fsync=False`` (the share groups'
  acquisitions) is answered once its records are *written* (the page cache:
  a kill -9 of the broker keeps them; a power cut may lose them): its batch
  is appended without an fsync unless another call in it asked for one (or
  ``_must_fsync`` says its decisions need one). Such records are still
  durable before anything answered after them with an fsync: they are
  earlier in the same one-partition log, an fsync of the active segment
  covers every write to it before, and a rolled segment was fsynced when it
  was sealed; after a power cut recovery keeps a prefix of the log (it stops
  at the first bad batch). So the state after a power cut is that of the
  last fsync plus perhaps some of the unfsynced batches after it, never one
  missing a record that was fsynced. The broker's background flush
  (``flush_interval_ms``, 1 s) bounds how long they stay unfsynced. Reads
  may show such records' state before it is fsynced.
* **Stale rebuild.** If an append fails (full disk, I/O error), part of the
  batch may be in the log while the state machine replayed all of it: it is
  marked stale and rebuilt from the log (:meth:`StateRuntime._reload`) before
  the next call or read, so the state is always the replay of the log. Every
  caller of the batch whose handler succeeded gets INTERNAL (its reply may
  rest on records of the batch that are not durable).
* **Load by replay.** :meth:`StateRuntime.start` (before the gRPC port opens)
  creates the topic if missing (through the store's internal-topic path;
  ``__`` names are reserved), reads it from its start and hands the decoded
  records to the subclass's ``_build``.
* **Timer.** After a batch that wrote something, after a timer, and at load,
  ``tick(now)`` runs and one :class:`~logstore.broker._waiters.Timers` timer
  is armed at the returned next deadline (+1 ms, since ``tick`` expires
  deadlines ``<= now``). A timer armed earlier than needed at worst fires
  early, finds nothing and re-arms; one that fails retries after
  ``_timer_retry_ms()``.

A subclass says which topic (``topic``, ``partitions``, ``topic_config``), how
records are coded (``_encode``/``_decode``), how the state machine is built
from records (``_build``) and what follows a load, a batch and a tick (the
``_after_*`` hooks). Records of one append go in store batches of at most
``MAX_APPEND_BYTES``; a crash between two of them leaves a prefix, which each
state machine's record order keeps consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, TypeVar

from logstore.errors import BrokerUnavailableError, InternalError, TopicExistsError
from logstore.wire import Record, encode_records

if TYPE_CHECKING:
    from logstore.storage import Store

    from ._runtime import Runtime
    from ._waiters import Timer

log = logging.getLogger("logstore.broker")

T = TypeVar("T")
#: A record of the state machine (its key/value types are the subclass's).
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
R_contra = TypeVar("R_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)

#: Records of one result per appended batch, in bytes: half the default
#: max_batch_bytes (1 MiB), leaving room for the batch and record headers.
MAX_APPEND_BYTES: Final = 512 * 1024
#: Bytes read per call while loading (each read returns at least one batch).
LOAD_READ_BYTES: Final = 1 << 20
#: Calls answered by one fsync at most: bounds a batch's latency (its
#: handlers run back to back on the event loop, ~20-50 us each, so 1,024 take
#: ~50 ms) whatever the admission bound is set to.
MAX_BATCH_CALLS: Final = 1024


class HandlerResult(Protocol[R_co, T_co]):
    """What a handler returns: records to append (in order), then the reply."""

    @property
    def records(self) -> tuple[R_co, ...]: ...

    @property
    def reply(self) -> T_co: ...


class TickResult(Protocol[R_co]):
    """What ``tick`` returns: records of what expired and the next deadline."""

    @property
    def records(self) -> tuple[R_co, ...]: ...

    @property
    def next_deadline_ms(self) -> int | None: ...


class StateMachine(Protocol[R_contra]):
    """The state machine a runtime drives (a coordinator)."""

    def replay(self, record: R_contra, /) -> None: ...

    def tick(self, now_ms: int, /) -> Any: ...


C = TypeVar("C", bound=StateMachine[Any])


class _Queued:
    """One call waiting for the drainer: its handlers (one, or the steps of
    :meth:`StateRuntime.call_steps`), whether its records must be fsynced
    before it is answered, and the caller's future."""

    __slots__ = ("fsync", "future", "handlers", "steps")

    def __init__(
        self,
        handlers: tuple[Callable[[Any, int], HandlerResult[Any, Any]], ...],
        fsync: bool,
        steps: bool,
    ) -> None:
        self.handlers = handlers
        self.fsync = fsync
        #: answered with the tuple of every step's reply (call_steps), not one reply
        self.steps = steps
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StateRuntime(Generic[C, R]):
    """A state machine ``C`` of records ``R``, its log and its timer (module docstring)."""

    #: The internal topic, its partition count and config (the subclass's).
    topic: ClassVar[str]
    partitions: ClassVar[int] = 1
    topic_config: ClassVar[dict[str, Any]]
    #: Set ``topic_config`` on a topic that exists with another (a directory
    #: whose internal topic predates compaction).
    enforce_topic_config: ClassVar[bool] = False
    #: Release the lock once a batch is written, answer it after its fsync
    #: (module docstring, "Pipelined"); False: hold the lock through the fsync.
    pipelined: ClassVar[bool] = False
    #: Names in log lines and errors: "the {what} failed", "appending {records_name} to".
    what: ClassVar[str]
    records_name: ClassVar[str]

    def __init__(self, runtime: Runtime, coordinator: C) -> None:
        self._rt = self.runtime = runtime
        self._store: Store = runtime.store
        self.coordinator = coordinator
        self._lock = asyncio.Lock()
        self._ready = False
        self._stale = False
        self._timer: Timer | None = None
        self._timer_at: int | None = None
        self._queue: deque[_Queued] = deque()
        self._draining = False
        #: Pipelined batches written and waiting for their fsync.
        self._syncing = 0

    # ------------------------------------------------------ subclass hooks

    def _encode(self, record: R) -> tuple[bytes, bytes | None]:
        raise NotImplementedError

    def _decode(self, key: bytes, value: bytes | None) -> R:
        raise NotImplementedError

    def _build(self, records: list[R]) -> C:
        """The state machine replayed from ``records`` (blocking, I/O pool)."""
        raise NotImplementedError

    async def _after_load(self) -> None:
        """After a (re)load, before its tick, with the lock held."""

    def _effects(self, reply: Any) -> Sequence[Any]:
        """What a successful reply asks the runtime to do once it is durable."""
        return ()

    def _tick_effects(self, tick: Any) -> Sequence[Any]:
        """The same for a tick's result."""
        return ()

    def _must_fsync(self, effects: Sequence[Any]) -> bool:
        """Whether a batch whose calls all asked for no fsync still needs one
        because of what it decided (``effects``)."""
        return False

    def _snapshot_key(self, record: R) -> object | None:
        """A key under which ``record`` is a whole snapshot that a later
        record of the same key in the same append supersedes (None: not one).
        See :meth:`_encoded`."""
        return None

    def _tick_in_batch(self, records: Sequence[R]) -> bool:
        """Whether a batch that wrote ``records`` runs ``tick`` (to re-arm the timer)."""
        return bool(records)

    def _after_batch(self, records: Sequence[R], effects: Sequence[Any]) -> None:
        """After a durable batch's callers were answered."""

    def _after_tick(self, tick: Any) -> None:
        """After a timer's or a load's tick was appended."""

    def _timer_retry_ms(self) -> int:
        """How long after a failed timer it is retried."""
        return 1000

    # ------------------------------------------------------------- loading

    def topics(self) -> dict[str, int]:
        """Partition counts of every user topic (internal ``__`` ones excluded)."""
        return {t.name: t.partitions for t in self._store.topics()}

    def _load_blocking(self) -> C:
        try:
            self._store.create_topic(self.topic, self.partitions, self.topic_config, internal=True)
            log.info("created internal topic", extra={"fields": {"topic": self.topic}})
        except TopicExistsError:
            if self.enforce_topic_config:
                cfg = self._store.topic(self.topic).config.to_dict()
                if any(cfg.get(k) != v for k, v in self.topic_config.items()):
                    self._store.alter_topic_config(self.topic, self.topic_config)
                    log.info(
                        "internal topic set to compact", extra={"fields": {"topic": self.topic}}
                    )
        records: list[R] = []
        for p in range(self._store.topic(self.topic).partitions):
            offset, _ = self._store.offsets(self.topic, p)
            end = self._store.high_watermark(self.topic, p)
            while offset < end:
                batch = self._store.read(self.topic, p, offset, LOAD_READ_BYTES)
                if not batch:
                    break
                for r in batch:
                    if r.key is not None:
                        records.append(self._decode(r.key, r.value))
                offset = batch[-1].offset + 1
        return self._build(records)

    async def start(self) -> None:
        """Create/read the internal topic and rebuild the state (before serving)."""
        async with self._lock:
            await self._reload()
            self._ready = True

    async def _reload(self) -> None:
        self.coordinator = await self._rt.run_io(self._load_blocking)
        await self._after_load()  # if it raises, the state stays stale: loaded again next time
        self._stale = False
        await self._tick()

    # --------------------------------------------------------------- calls

    def _check_ready(self) -> None:
        if not self._ready:
            raise BrokerUnavailableError(
                f"the broker is loading {self.topic}; retry shortly",
                retry_after_ms=self._rt.config.retry_after_ms,
            )

    async def call(
        self, handler: Callable[[C, int], HandlerResult[R, T]], *, fsync: bool = True
    ) -> T:
        """Run ``handler(coordinator, now_ms)`` after every call queued before
        it, and return its reply once its records (and those of the calls
        batched with it) are fsynced and replayed (see "One writer").

        ``fsync=False`` (see "Unfsynced calls"): answered once its records are
        written to the page cache; the batch is still fsynced if any other
        call in it asked for that or ``_must_fsync`` says so."""
        self._check_ready()
        result: T = await self._enqueue(_Queued((handler,), fsync, steps=False))
        return result

    async def call_steps(
        self, *handlers: Callable[[C, int], HandlerResult[R, Any]], fsync: bool = True
    ) -> tuple[Any, ...]:
        """Run ``handlers`` one after the other as ONE call (each replayed
        before the next runs, so each sees the state the one before left) and
        return their replies, once all their records are written and, with
        ``fsync``, fsynced -- one batch, one fsync for all of them (a
        ShareFetch's piggybacked acknowledgements and its acquisition).

        A step that raises ends the call with its error; the records of the
        steps before it are still appended (and fsynced, with ``fsync``) in
        the batch, as if they had been calls of their own answered first."""
        self._check_ready()
        result: tuple[Any, ...] = await self._enqueue(_Queued(handlers, fsync, steps=True))
        return result

    async def _enqueue(self, item: _Queued) -> Any:
        self._queue.append(item)
        if not self._draining:
            self._draining = True
            self._rt.spawn(self._drain())
        return await item.future

    async def _drain(self) -> None:
        """Serve the queue batch by batch until it is empty. No await between
        the emptiness check and clearing ``_draining``, so a call queued
        meanwhile always finds a drainer."""
        try:
            while self._queue:
                async with self._lock:
                    batch: list[_Queued] = []
                    while self._queue and len(batch) < MAX_BATCH_CALLS:
                        item = self._queue.popleft()
                        if not item.future.done():  # a caller that went away is not run
                            batch.append(item)
                    try:
                        await self._run_batch(batch)
                    except Exception as exc:  # a bug: no caller may wait forever
                        self._stale = True
                        log.error("%s batch failed: %s", self.what, exc, exc_info=exc)
                        err = InternalError(f"the {self.what} failed ({exc}); retry")
                        for item in batch:
                            _answer(item, err)
        finally:
            self._draining = False

    async def _run_batch(self, batch: list[_Queued]) -> None:
        """One batch: handlers (each replayed), one append + fsync, replies (lock held)."""
        if not batch:
            return
        if self._stale:
            try:
                await self._reload()
            except Exception as exc:
                for item in batch:
                    _answer(item, exc)
                return
        replies: list[tuple[_Queued, Any, bool]] = []
        records: list[R] = []
        effects: list[Any] = []
        fsync = False
        for item in batch:
            step_replies: list[Any] = []
            error: Exception | None = None
            for handler in item.handlers:
                try:
                    result = handler(self.coordinator, now_ms())
                except Exception as exc:  # typed refusals, changed nothing
                    error = exc
                    break
                self._replay(result.records)
                records += result.records
                effects += self._effects(result.reply)
                step_replies.append(result.reply)
            if step_replies:  # records were replayed: they go in this batch's append
                fsync |= item.fsync
            if error is not None:
                replies.append((item, error, False))
            else:
                reply = tuple(step_replies) if item.steps else step_replies[0]
                replies.append((item, reply, True))
        next_deadline: int | None = None
        if self._tick_in_batch(records):
            t = self.coordinator.tick(now_ms())
            self._replay(t.records)
            records += t.records
            effects += self._tick_effects(t)
            next_deadline = t.next_deadline_ms
        fsync = fsync or self._must_fsync(effects)
        try:
            if self.pipelined and fsync and records:
                durable = await self._write(tuple(records))
            else:
                await self._append(tuple(records), fsync=fsync)
                durable = None
        except InternalError as exc:
            for item, value, ok in replies:
                _answer(item, exc if ok else value)
            return
        if durable is None:
            self._finish_batch(replies, records, effects, next_deadline)
            return
        # Pipelined: the lock is released now and the next batch runs (and
        # appends after this one) while the flusher fsyncs; this batch is
        # answered when its fsync is done (module docstring, "Pipelined").
        self._syncing += 1
        durable.add_done_callback(partial(self._synced, replies, records, effects, next_deadline))

    def _finish_batch(
        self,
        replies: list[tuple[_Queued, Any, bool]],
        records: Sequence[R],
        effects: Sequence[Any],
        next_deadline: int | None,
    ) -> None:
        for item, value, _ok in replies:
            _answer(item, value)
        self._after_batch(records, effects)
        self._arm(next_deadline)

    def _synced(
        self,
        replies: list[tuple[_Queued, Any, bool]],
        records: Sequence[R],
        effects: Sequence[Any],
        next_deadline: int | None,
        durable: asyncio.Future[None],
    ) -> None:
        """A pipelined batch's fsync finished (a loop callback): answer it."""
        self._syncing -= 1
        exc = None if durable.cancelled() else durable.exception()
        if durable.cancelled() or exc is not None:
            err = self._append_failed(exc or asyncio.CancelledError())
            for item, value, ok in replies:
                _answer(item, err if ok else value)
            return
        self._finish_batch(replies, records, effects, next_deadline)

    async def read(self, fn: Callable[[C], T]) -> T:
        """Run a read-only ``fn(coordinator)`` between writes."""
        self._check_ready()
        async with self._lock:
            if self._stale:
                await self._reload()
            return fn(self.coordinator)

    # ------------------------------------------------------------- the log

    async def _commit(self, records: tuple[R, ...]) -> None:
        """Append ``records`` (fsynced), then replay them; INTERNAL if the append
        fails (the timer and reload paths; calls are batched by ``_run_batch``)."""
        await self._append(records)
        self._replay(records)

    async def _append(self, records: tuple[R, ...], *, fsync: bool = True) -> None:
        """Append ``records`` with one fsync (or, ``fsync=False``, to the page
        cache only); on failure mark the state stale (rebuilt from the log
        before the next call) and raise INTERNAL.

        Small appends (encoded, at most ``inline_append_max_bytes``, as the
        produce path's) are written on the event loop when the partition's
        lock is free and only the fsync is waited for (the flusher's future):
        a state batch is a few KB of records (a share fetch's state record of a
        2,000-record window is < 1 KiB), and its I/O-pool round trip (submit,
        a worker's wake-up, the result handed back to the loop) cost more
        broker CPU than the write. Larger ones, or a busy lock, go to the I/O
        pool as before. The order of writes is the same either way: one
        drainer at a time appends to the topic."""
        if not records:
            return
        try:
            encoded = self._encoded(records)
            end = self._append_inline(encoded)
            if end is None:
                await self._rt.run_io(self._append_blocking, encoded, fsync)
            elif fsync:
                # shield: a cancelled drainer must not cancel the store's
                # future, which the flusher thread completes
                await asyncio.shield(asyncio.wrap_future(self._store.sync_to(self.topic, 0, end)))
        except Exception as exc:
            raise self._append_failed(exc) from exc

    async def _write(self, records: tuple[R, ...]) -> asyncio.Future[None]:
        """Append ``records`` (``records`` not empty) without waiting for
        their fsync: a loop future that the fsync covering them completes
        (``Pipelined``). Failures as :meth:`_append`'s."""
        try:
            encoded = self._encoded(records)
            end = self._append_inline(encoded)
            if end is None:
                end = await self._rt.run_io(self._append_blocking, encoded, False)
            return self._rt.wait_threadsafe(self._store.sync_to(self.topic, 0, end))
        except Exception as exc:
            raise self._append_failed(exc) from exc

    def _append_failed(self, exc: BaseException) -> InternalError:
        """A failed append or fsync: the state is stale (rebuilt from the log
        before the next call or read); the error its callers get."""
        self._stale = True
        log.error("appending to %s failed: %s", self.topic, exc, exc_info=exc)
        return InternalError(
            f"appending {self.records_name} to {self.topic} failed ({exc}); nothing changed; retry"
        )

    def _replay(self, records: Iterable[R]) -> None:
        for r in records:
            self.coordinator.replay(r)

    def _encoded(self, records: tuple[R, ...]) -> list[Record]:
        """``records`` encoded for one append, without the snapshots a later
        record of the same ``_snapshot_key`` supersedes (a share fetch's
        acknowledgements and its acquisition each write their partition's
        whole state record; only the last is needed) -- when everything left
        fits in one store batch (``MAX_APPEND_BYTES``). One store batch is
        one frame, written whole or, torn by a crash, cut off whole on
        recovery, so the log never holds the records between the two
        snapshots without the later one; replaying the later snapshot after
        them gives the state that replaying both did. Over several store
        batches a crash could leave such a prefix, so then nothing is dropped.
        The state machine replayed every record already (``_run_batch``)."""
        keys = [self._snapshot_key(r) for r in records]  # per record of a batch: a few
        last = {k: i for i, k in enumerate(keys) if k is not None}
        kept = records
        if len(last) < sum(k is not None for k in keys):
            kept = tuple(r for i, r in enumerate(records) if keys[i] is None or last[keys[i]] == i)
        out = [Record(value=v, key=k) for k, v in map(self._encode, kept)]
        if len(kept) < len(records) and _size(out) > MAX_APPEND_BYTES:
            out = [Record(value=v, key=k) for k, v in map(self._encode, records)]
        return out

    def _append_inline(self, records: list[Record]) -> int | None:
        """Append ``records`` as one batch on the event loop: the log end
        offset after them, or None (nothing written) when they are larger
        than ``inline_append_max_bytes`` or the partition's lock is held."""
        limit = self._rt.config.inline_append_max_bytes
        if _size(records) > min(limit, MAX_APPEND_BYTES):
            return None
        body, count, max_ts = encode_records(records)
        res = self._store.try_append_raw(
            self.topic, 0, body, count, base_timestamp_ms=None, max_timestamp_ms=max_ts or None
        )
        return None if res is None else res.last_offset + 1

    def _append_blocking(self, records: list[Record], fsync: bool = True) -> int:
        """Append in batches of at most ``MAX_APPEND_BYTES``, then (``fsync``)
        one fsync (the store's group commit) covering them all and every
        earlier append of the topic; the log end offset after them."""
        batch: list[Record] = []
        size = 0
        for r in records:
            n = len(r.key or b"") + len(r.value or b"")
            if batch and size + n > MAX_APPEND_BYTES:
                self._store.append(self.topic, 0, batch)
                batch, size = [], 0
            batch.append(r)
            size += n
        end = self._store.append(self.topic, 0, batch) + len(batch)
        if fsync:
            self._store.sync_to(self.topic, 0, end).result()
        return end

    # -------------------------------------------------------------- timers

    async def _tick(self) -> None:
        """Expire what is due (lock held), then arm the timer at the next deadline."""
        t = self.coordinator.tick(now_ms())
        await self._commit(t.records)
        self._after_tick(t)
        self._arm(t.next_deadline_ms)

    def _arm(self, deadline_ms: int | None) -> None:
        if deadline_ms is None or self._rt.stopping:
            return
        if self._timer is not None and not self._timer.cancelled:
            if self._timer_at is not None and self._timer_at <= deadline_ms:
                return  # an earlier timer re-arms when it fires
            self._timer.cancel()
        delay = max(0, deadline_ms - now_ms()) + 1
        self._timer_at = deadline_ms
        self._timer = self._rt.timers.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._rt.stopping:
            self._rt.spawn(self._fired())

    async def _fired(self) -> None:
        try:
            async with self._lock:
                if self._rt.stopping:
                    return
                if self._stale:
                    await self._reload()
                else:
                    await self._tick()
        except Exception as exc:
            log.error("%s timers failed: %s", self.what, exc, exc_info=exc)
            self._arm(now_ms() + self._timer_retry_ms())  # retry later rather than never


def _size(records: list[Record]) -> int:
    """Key and value bytes of ``records`` (what ``MAX_APPEND_BYTES`` bounds)."""
    return sum(len(r.key or b"") + len(r.value or b"") for r in records)


def _answer(item: _Queued, value: Any) -> None:
    """Complete a queued call with its reply, or its error if ``value`` is one."""
    if item.future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(value, BaseException):
        item.future.set_exception(value)
    else:
        item.future.set_result(value)
