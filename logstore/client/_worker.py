"""The task worker: a :class:`ShareConsumer` that runs a function per message
(in the manner of Celery and BullMQ).

::

    worker = Worker("127.0.0.1:7070", group="emails", topics=["emails"], concurrency=8)

    @worker.task
    def send(msg):
        deliver(msg.value)          # return: ACCEPT; raise: retry later

    worker.run()                    # until SIGTERM / SIGINT or worker.stop()

Outcome of a task (the function given to :meth:`Worker.task`, called with the
:class:`ShareMessage` in one of ``concurrency`` threads):

* **returns**: ACCEPT (the message is done).
* raises :class:`Reject`: REJECT -- never retried; the broker moves it to the
  group's dead-letter topic with ``str(exc)`` as the ``logstore-dlq-error``
  header (cut to 1,024 bytes).
* raises anything else: RELEASE with a delay (retry later), the error text
  ``"TypeName: message"`` kept for the dead-letter header. The delay is
  exponential backoff with full jitter: for the n-th delivery (``delivery_count``
  n, 1 first) it is uniform in ``[0, min(retry_backoff_max_ms,
  retry_backoff_ms * 2**(n-1))]``; with the defaults (1 s, 5 min) the windows
  are 1, 2, 4, 8, 16 s ... up to 300 s. After the group's
  ``max_delivery_attempts`` deliveries the broker dead-letters it instead.
  ``rng`` (a ``random.Random``) makes the schedule reproducible.

**Lock renewal**: a task still running when half of its lock has passed
(the lock's length is measured from the first fetch reply: the broker's
``lock_deadline_ms`` less the client's clock at receipt, the group's
``visibility_timeout_ms`` give or take the clock offset) is RENEWed for
another visibility timeout, and so on every half timeout, so a task longer
than the visibility timeout is not delivered to another worker. A monitor
thread checks every ``min(1 s, lock / 10)``.

**Graceful shutdown** (SIGTERM or SIGINT when ``run`` runs in the main thread,
or :meth:`stop` from anywhere): the worker stops fetching; messages fetched
and not started are RELEASEd at once (delay 0), so another worker gets them
without waiting for a lock to expire; running tasks are waited for up to
``shutdown_timeout_ms`` (30 s; renewals continue meanwhile) and acknowledged as
they finish; the pending acknowledgements are flushed and the worker leaves
the group. Nothing is lost, and nothing it finished is redelivered (its ACCEPT
was flushed before the leave). A task still running after the bound is
abandoned: the leave makes its record available to others (at-least-once). A
second signal during the drain stops waiting at once.

Fetching keeps at most ``concurrency`` messages running plus ``prefetch``
(default ``max(2 x concurrency, 100)``, as RabbitMQ's usual prefetch of 100)
fetched and waiting, and fetches again once half the buffer is free: every
ShareFetch that acquires is a durable write on the broker (an fsync), so
fetching one record per freed thread would cap a worker at a few hundred
tasks/s. Waiting messages are renewed like running ones.

Thread-safety: ``run`` in one thread; ``stop`` from any.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any, Final

from logstore import errors

from ._backoff import Backoff
from ._share_consumer import AckErrorCallback, ShareConsumer, ShareMessage

_log = logging.getLogger("logstore.client.worker")

Task = Callable[[ShareMessage], Any]
#: The monitor thread looks at running tasks at least this often.
_MONITOR_MAX_S: Final = 1.0


class Reject(Exception):
    """Raise from a task to dead-letter its message now (never retried); the text of the
    exception becomes the dead letter's ``logstore-dlq-error`` header."""


class _Running:
    __slots__ = ("msg", "renew_at", "started")

    def __init__(self, msg: ShareMessage, renew_at: float) -> None:
        self.msg = msg
        self.started = time.monotonic()
        self.renew_at = renew_at


class Worker:
    """Runs a task per message of a share group; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Iterable[str],
        *,
        concurrency: int = 8,
        prefetch: int | None = None,
        retry_backoff_ms: int = 1_000,
        retry_backoff_max_ms: int = 300_000,
        shutdown_timeout_ms: int = 30_000,
        rng: random.Random | None = None,
        client_id: str = "",
        on_ack_error: AckErrorCallback | None = None,
        poll_timeout_ms: int = 500,
        **consumer_options: Any,
    ) -> None:
        if concurrency < 1:
            raise errors.InvalidArgumentError(f"concurrency must be >= 1, not {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise errors.InvalidArgumentError(f"prefetch must be >= 0, not {prefetch}")
        if shutdown_timeout_ms < 0:
            raise errors.InvalidArgumentError("shutdown_timeout_ms must be >= 0")
        self.group = group
        self.topics = list(topics)
        self.concurrency = concurrency
        self.prefetch = max(2 * concurrency, 100) if prefetch is None else prefetch
        self.backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms, rng)
        self._shutdown_s = shutdown_timeout_ms / 1000
        self._poll_ms = poll_timeout_ms
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._on_ack_error = on_ack_error
        self._consumer_options = consumer_options
        self._handlers: dict[str | None, Task] = {}
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._lock_s: float | None = None  # measured lock length
        self._monitor_done = threading.Event()
        self._slot_free = threading.Event()
        self.consumer: ShareConsumer | None = None
        #: counts of outcomes: accepted, retried, rejected (tests, logs)
        self.stats = {"accepted": 0, "retried": 0, "rejected": 0, "released": 0}

    def task(
        self, fn: Task | None = None, *, topic: str | None = None
    ) -> Any:  # Task, or a decorator giving one
        """Register ``fn`` as the task for ``topic`` (default: every topic without its own).

        Use as ``@worker.task`` or ``@worker.task(topic="emails.high")``."""

        def register(f: Task) -> Task:
            if topic in self._handlers:
                raise errors.InvalidArgumentError(
                    f"a task is already registered for {topic or 'every topic'}"
                )
            self._handlers[topic] = f
            return f

        return register if fn is None else register(fn)

    def retry_delay_ms(self, delivery_count: int) -> int:
        """The RELEASE delay after a failure of delivery ``delivery_count`` (1 first)."""
        return int(self.backoff.delay_s(max(0, delivery_count - 1)) * 1000)

    # -- running ------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown (a second call stops waiting for running tasks)."""
        if self._stop.is_set():
            self._hard_stop.set()
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _log.info("worker %s: signal %d: shutting down", self.group, signum)
        self.stop()

    def _execute(self, msg: ShareMessage) -> None:
        try:
            fn = self._handlers.get(msg.topic) or self._handlers.get(None)
            if fn is None:
                raise Reject(f"no task registered for topic {msg.topic}")
            fn(msg)
        except Reject as exc:
            if not msg.done:
                msg.reject(str(exc))
            self._count("rejected")
        except Exception as exc:
            if not msg.done:
                delay = self.retry_delay_ms(msg.delivery_count)
                _log.info(
                    "worker %s: task of %s-%d@%d failed (delivery %d), retry in %d ms: %s",
                    self.group,
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    msg.delivery_count,
                    delay,
                    exc,
                )
                msg.nack(delay_ms=delay, error=f"{type(exc).__name__}: {exc}")
            self._count("retried")
        else:
            if not msg.done:
                msg.ack()
            self._count("accepted")
        finally:
            with self._lock:
                self._running.pop(id(msg), None)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _hold(self, msgs: list[ShareMessage], received: float) -> None:
        """Track fetched messages for renewal from their receipt (waiting ones too: a
        message waiting for a free thread must not lose its lock either)."""
        lock_s = self._lock_s or 30.0
        with self._lock:
            for msg in msgs:
                self._running[id(msg)] = _Running(msg, received + lock_s / 2)

    def _start(self, pool: ThreadPoolExecutor, msg: ShareMessage) -> Future[None]:
        fut = pool.submit(self._execute, msg)
        fut.add_done_callback(lambda _: self._slot_free.set())
        return fut

    def _monitor(self) -> None:
        """Renew the locks of held messages (running or waiting) past half their lock."""
        while not self._hard_stop.is_set():
            lock_s = self._lock_s or 30.0
            now = time.monotonic()
            with self._lock:
                due = [r for r in self._running.values() if r.renew_at <= now]
                for r in due:
                    r.renew_at = now + lock_s / 2
            for r in due:
                try:
                    r.msg.extend()
                except errors.LogStoreError as exc:  # finished meanwhile, or closed
                    _log.debug("worker %s: no renew: %s", self.group, exc)
            if self._monitor_done.wait(min(_MONITOR_MAX_S, lock_s / 10)):
                return

    def _measure_lock(self, msgs: list[ShareMessage], received_s: float) -> None:
        if self._lock_s is None and msgs:
            lock_ms = max(msgs[0].lock_deadline_ms - received_s * 1000, 1.0)
            self._lock_s = lock_ms / 1000

    def run(self) -> None:
        """Fetch and run tasks until :meth:`stop` or SIGTERM/SIGINT; then drain (see the
        module docstring) and return."""
        if not self._handlers:
            raise errors.InvalidArgumentError("no task registered: decorate one with @worker.task")
        main = threading.current_thread() is threading.main_thread()
        old: dict[signal.Signals, Any] = {}
        if main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        consumer = ShareConsumer(
            self._bootstrap,
            self.group,
            self.topics,
            client_id=self._client_id,
            on_ack_error=self._on_ack_error,
            **self._consumer_options,
        )
        self.consumer = consumer
        monitor = threading.Thread(target=self._monitor, name="logstore-worker-renew", daemon=True)
        monitor.start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"worker-{self.group}")
        waiting: deque[ShareMessage] = deque()
        futures: set[Future[None]] = set()
        try:
            while not self._stop.is_set():
                futures = {f for f in futures if not f.done()}
                while waiting and len(futures) < self.concurrency:
                    futures.add(self._start(pool, waiting.popleft()))
                room = self.concurrency + self.prefetch - len(futures) - len(waiting)
                # Each ShareFetch that acquires costs the broker a durable write (one fsync,
                # ~5-20 ms here): fetch in batches of at least half the buffer, not one
                # record per freed thread, while there is still work waiting.
                if room <= 0 or (waiting and room < max(1, self.prefetch // 2)):
                    self._slot_free.wait(0.05)
                    self._slot_free.clear()
                    continue
                idle = not futures and not waiting
                got = consumer.poll(self._poll_ms if idle else 20, max_records=room)
                received = time.monotonic()
                self._measure_lock(got, time.time())
                self._hold(got, received)
                waiting.extend(got)
        finally:
            # Not started: back to the group now (delay 0), not after their locks.
            for msg in waiting:
                if not msg.done:
                    msg.nack()
                    self._count("released")
                with self._lock:
                    self._running.pop(id(msg), None)
            waiting.clear()
            try:
                consumer.flush()
            except errors.LogStoreError as exc:
                _log.warning("worker %s: releasing at shutdown failed: %s", self.group, exc)
            deadline = time.monotonic() + self._shutdown_s
            for f in list(futures):
                left = deadline - time.monotonic()
                while left > 0 and not f.done() and not self._hard_stop.is_set():
                    try:
                        f.result(timeout=min(left, 0.1))
                    except TimeoutError:
                        pass
                    left = deadline - time.monotonic()
            pool.shutdown(wait=False, cancel_futures=True)
            self._hard_stop.set()
            self._monitor_done.set()
            monitor.join(timeout=5)
            consumer.close()
            if main:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    def __repr__(self) -> str:
        return (
            f"Worker(group={self.group!r}, topics={self.topics!r}, concurrency={self.concurrency})"
        )
