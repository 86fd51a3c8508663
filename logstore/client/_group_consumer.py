"""The group consumer: a member of a consumer group (KIP-848's server-side coordinator).

``GroupConsumer`` joins ``group_id`` with ``ConsumerGroupHeartbeat`` (see
``proto/logstore/v1/groups.proto``); the broker's coordinator decides which
partitions each member owns, and this client only follows it:

* A background **heartbeat thread** sends a heartbeat every
  ``heartbeat_interval_ms`` of the broker's last reply (3 s by default), with
  the partitions this member owns now. Slow processing therefore never causes
  a rebalance by itself; only a missed session timeout (the process or the
  network is gone) or a ``max_poll_interval_ms`` breach does. UNAVAILABLE,
  DEADLINE_EXCEEDED, CANCELLED (a broker stopping ends in-flight calls so;
  this client never cancels its own) and INTERNAL (the broker's answer when appending the
  group's records failed: nothing changed, retry) are retried with backoff. On a breach the
  heartbeat thread leaves the group (epoch -1) so the partitions move now,
  and the next ``poll`` calls ``on_lost`` and rejoins with epoch 0.
* The **polling thread** (the one calling ``poll`` / ``poll_columns`` /
  iterating / ``commit`` / ``close``) applies the target assignment of the
  last reply incrementally, at the start of every poll and every 100 ms
  within one: partitions no longer in the target (the reply's ``revoking``)
  are committed (with auto-commit), passed to ``on_revoke``, dropped, and
  reported released by an immediate heartbeat; new partitions start at the
  group's committed offset (``OffsetFetch``), else at ``auto_offset_reset``
  (``latest`` by default, as Kafka; ``earliest``; or ``error``: ``poll``
  raises :class:`~logstore.errors.FailedPreconditionError` naming the
  partitions until :meth:`seek` places them), and are passed to
  ``on_assign``. A committed offset (or a position) that is no longer in the
  log -- below its start after retention or ``DeleteRecords``, or past its
  end -- gets ``auto_offset_reset`` too, as in Kafka: the fetch's
  OUT_OF_RANGE moves it to the log start (``earliest``) or end (``latest``),
  or ``poll`` raises :class:`~logstore.errors.OffsetOutOfRangeError` naming the
  group, partition and valid range (``error``) until :meth:`seek`.
  Revocation waits for the polling thread (so records returned by the
  previous poll were processed before their offsets are committed); the
  coordinator gives it ``rebalance_timeout_ms`` = ``max_poll_interval_ms``.
* ``UNKNOWN_MEMBER_ID`` / ``FENCED_MEMBER_EPOCH`` (ErrorInfo reasons) from a
  heartbeat or a commit: every partition is dropped without committing,
  ``on_lost`` fires, and the member rejoins with epoch 0.

Commits: with ``enable_auto_commit`` (default), every
``auto_commit_interval_ms`` (5 s) a ``poll`` commits asynchronously the
positions of what earlier polls returned (a failure is logged, not raised: the
next commit covers it), and the positions are committed synchronously on
revoke and on ``close``. Synchronous commits and ``OffsetFetch`` retry
UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED for up to ``retry_timeout_ms`` (30 s), as the
fetches do, so a member rides through a broker restart. A synchronous
commit first waits for earlier ``commit_async`` calls, so commits land in call
order (gRPC alone does not keep two calls in order). Without it, ``commit()`` (what poll
returned) / ``commit(offsets)`` (sync) and ``commit_async()`` are the only
commits (commit in ``on_revoke`` to avoid re-reading after a rebalance).
``close()`` leaves the group: epoch -1, or -2 for a static member
(``group_instance_id``), whose partitions wait for it for the session timeout.

Callbacks run in the polling thread, inside ``poll`` or ``close``, with a
sorted list of :class:`TopicPartition`.

Thread-safety: one polling thread plus the internal heartbeat thread; state
shared between the two is guarded by one lock, and the fetching
:class:`~logstore.client.Consumer` is touched only by the polling thread.
Buffers are bounded as the Consumer's (about 3 x ``fetch_max_bytes`` per owned
partition); the heartbeat state is O(owned partitions). A member owning at
most ``stream_max_partitions`` (4) tails them over Subscribe streams once
caught up, exactly as the Consumer (its fetching machinery) does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeVar

import grpc

from logstore import errors
from logstore.v1 import groups_pb2 as gpb
from logstore.v1 import groups_pb2_grpc
from logstore.wire import ColumnBatch, Record

from ._backoff import Backoff, retriable
from ._consumer import STREAM_MAX_PARTITIONS, Consumer, TopicPartition
from ._credentials import Credentials
from ._rpc import Connection, translate

_log = logging.getLogger("logstore.client.group")

_RESETS: Final = ("earliest", "latest", "error")
#: Longest the polling thread waits inside one poll before looking at the
#: heartbeat thread's news again: a revocation is applied within ~100 ms.
_SLICE_S: Final = 0.1
_JOIN_EPOCH: Final = 0
_LEAVE_EPOCH: Final = -1
_STATIC_LEAVE_EPOCH: Final = -2

_T = TypeVar("_T")
Callback = Callable[[list[TopicPartition]], None]
#: {(topic, partition): the next offset to consume}
Offsets = Mapping[TopicPartition, int] | Mapping[tuple[str, int], int]


def _pset(tps: Iterable[TopicPartition]) -> gpb.PartitionSet:
    by: dict[str, list[int]] = {}
    for t, p in tps:
        by.setdefault(t, []).append(p)
    return gpb.PartitionSet(
        topics=[gpb.TopicPartitions(topic=t, partitions=sorted(ps)) for t, ps in sorted(by.items())]
    )


def _tps(s: gpb.PartitionSet) -> set[TopicPartition]:
    return {TopicPartition(t.topic, p) for t in s.topics for p in t.partitions}


def _cancelled_by_broker(exc: errors.LogStoreError) -> bool:
    """A plain gRPC CANCELLED: this client never cancels its group calls, so the broker
    did -- its graceful stop (SIGTERM) ends in-flight calls after ``shutdown_grace_ms``
    or as it closes -- and the call is retried like UNAVAILABLE, on the restarted broker."""
    cause = exc.__cause__
    return isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.CANCELLED


def _retry_group_call(exc: errors.LogStoreError) -> bool:
    """Whether an idempotent group call (heartbeat, OffsetFetch, OffsetCommit of fixed
    offsets) that failed with ``exc`` may be sent again."""
    return (
        retriable(exc) or isinstance(exc, errors.DeadlineExceededError) or _cancelled_by_broker(exc)
    )


class GroupConsumer:
    """A consumer-group member; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        *,
        topics: Iterable[str] | None = None,
        pattern: str | None = None,
        group_instance_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5_000,
        max_poll_interval_ms: int = 300_000,
        on_assign: Callback | None = None,
        on_revoke: Callback | None = None,
        on_lost: Callback | None = None,
        assignor: str | None = None,
        client_id: str = "",
        fetch_max_bytes: int = 1 << 20,
        fetch_max_wait_ms: int = 500,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        request_timeout_ms: int = 30_000,
        retry_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        stream_max_partitions: int = STREAM_MAX_PARTITIONS,
    ) -> None:
        names = None if topics is None else sorted(set(topics))
        if (names is None) == (pattern is None):
            raise errors.InvalidArgumentError("give exactly one of topics=[...] or pattern=...")
        if names is not None and not names:
            raise errors.InvalidArgumentError("topics must name at least one topic")
        if auto_offset_reset not in _RESETS:
            raise errors.InvalidArgumentError(
                f"auto_offset_reset must be earliest, latest or error, not {auto_offset_reset!r}"
            )
        if auto_commit_interval_ms < 1 or max_poll_interval_ms < 1:
            raise errors.InvalidArgumentError(
                "auto_commit_interval_ms and max_poll_interval_ms must be >= 1"
            )
        self.group_id = group_id
        self._topics = names
        self._pattern = pattern
        self._instance_id = group_instance_id
        self._reset = auto_offset_reset
        self._auto_commit = enable_auto_commit
        self._auto_commit_s = auto_commit_interval_ms / 1000
        self._max_poll_s = max_poll_interval_ms / 1000
        self._max_poll_ms = max_poll_interval_ms
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._assignor = assignor
        self._client_id = client_id
        self._timeout_s = request_timeout_ms / 1000
        self._retry_timeout_s = retry_timeout_ms / 1000
        self._backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms)
        self._consumer = Consumer(
            bootstrap,
            fetch_max_bytes=fetch_max_bytes,
            fetch_max_wait_ms=fetch_max_wait_ms,
            connect_timeout_ms=connect_timeout_ms,
            credentials=credentials,
            request_timeout_ms=request_timeout_ms,
            retry_timeout_ms=retry_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            retry_backoff_max_ms=retry_backoff_max_ms,
            stream_max_partitions=stream_max_partitions,
        )
        self._conn = Connection(bootstrap, connect_timeout_ms, credentials)
        self._stub = groups_pb2_grpc.GroupsStub(self._conn.channel)

        # -- shared with the heartbeat thread (guarded by _lock) ------------
        self._lock = threading.Lock()
        #: notified (under _lock) when a heartbeat reply or a loss changes the epoch
        self._epoch_changed = threading.Condition(self._lock)
        self._member_id = ""
        self._epoch = _JOIN_EPOCH
        self._interval_s = 3.0
        self._owned: set[TopicPartition] = set()  # reported in heartbeats
        self._target: set[TopicPartition] = set()  # the last reply's assignment
        self._lost: str | None = None  # why the membership was lost, until poll handles it
        self._fatal: errors.LogStoreError | None = None
        self._last_poll = time.monotonic()
        self._wake = threading.Event()  # heartbeat now
        self._changed = threading.Event()  # the polling thread has news
        self._stop = threading.Event()

        # -- polling thread only ---------------------------------------------
        self._positions: dict[TopicPartition, int] = {}  # past what poll returned
        self._committed: dict[TopicPartition, int] = {}  # last commit this member made
        self._unplaced: set[TopicPartition] = set()  # auto_offset_reset="error" and none committed
        self._next_auto_commit = time.monotonic() + self._auto_commit_s
        self._async_errors: list[errors.LogStoreError] = []
        self._async_inflight: list[Any] = []  # commit_async futures not known done
        self._closed = False

        try:
            self._heartbeat_once()  # the join: bad arguments fail here, not in a thread
            # The fetching Consumer has its own channel, connected on its first call
            # and then never checked again (a fetch failing later is retried). Connect
            # it now, while the broker has just answered: else a broker restart between
            # the join and the first fetch (5 s of SIGTERM grace plus a restart under
            # load) made that fetch's connect check fail poll with UNAVAILABLE.
            self._consumer._conn.ensure_ready()  # (same package: no public hook)
        except BaseException:
            self._consumer.close()
            self._conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"logstore-heartbeat-{group_id}", daemon=True
        )
        self._thread.start()

    # -- the heartbeat thread ---------------------------------------------

    def _request(self) -> gpb.ConsumerGroupHeartbeatRequest:
        with self._lock:
            req = gpb.ConsumerGroupHeartbeatRequest(
                group_id=self.group_id, member_id=self._member_id, member_epoch=self._epoch
            )
            req.owned.CopyFrom(_pset(self._owned))
            joining = self._epoch == _JOIN_EPOCH
        if joining:
            if self._topics is not None:
                req.topic_names.names.extend(self._topics)
            else:
                assert self._pattern is not None
                req.topic_regex = self._pattern
            if self._instance_id is not None:
                req.instance_id = self._instance_id
            if self._assignor is not None:
                req.assignor = self._assignor
            req.rebalance_timeout_ms = self._max_poll_ms
            req.client_id = self._client_id
        return req

    def _heartbeat_once(self) -> None:
        req = self._request()
        reply = self._conn.call(self._stub.ConsumerGroupHeartbeat, req, self._timeout_s)
        with self._lock:
            if self._lost is not None:
                return  # lost meanwhile: the polling thread must release first
            self._member_id = reply.member_id
            if reply.member_epoch != self._epoch:
                self._epoch = reply.member_epoch
                self._epoch_changed.notify_all()
            if reply.heartbeat_interval_ms > 0:
                self._interval_s = reply.heartbeat_interval_ms / 1000
            target = _tps(reply.assignment) - _tps(reply.revoking)
            if target != self._target or target != self._owned:
                self._target = target
                self._changed.set()

    def _mark_lost(self, why: str, forget_id: bool) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = why
            self._epoch = _JOIN_EPOCH
            if forget_id:
                self._member_id = ""
            self._target = set()
            self._epoch_changed.notify_all()
        self._changed.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                lost = self._lost
                idle_s = time.monotonic() - self._last_poll
                interval = self._interval_s
            if lost is not None:
                # Rejoin only after the polling thread released everything.
                self._wake.wait(interval)
                self._wake.clear()
                continue
            if idle_s > self._max_poll_s:
                _log.warning(
                    "group %s: no poll for %.1f s (max_poll_interval_ms %d): leaving the group",
                    self.group_id,
                    idle_s,
                    self._max_poll_ms,
                )
                self._leave(_LEAVE_EPOCH)
                self._mark_lost("max_poll_interval_ms exceeded", forget_id=True)
                continue
            delay = interval
            try:
                self._heartbeat_once()
                failures = 0
            except (errors.UnknownMemberIdError, errors.FencedMemberEpochError) as exc:
                _log.warning("group %s: %s", self.group_id, exc)
                self._mark_lost(str(exc), isinstance(exc, errors.UnknownMemberIdError))
                continue
            except errors.LogStoreError as exc:
                # INTERNAL too: the broker answers it when appending the group's
                # records failed ("nothing changed; retry", its coordinator is
                # rebuilt from the log first); a heartbeat is safe to send again.
                if _retry_group_call(exc) or isinstance(exc, errors.InternalError):
                    delay = min(interval, self._backoff.delay_s(failures))
                    failures += 1
                else:
                    with self._lock:
                        self._fatal = exc
                    self._changed.set()
                    return
            except Exception as exc:  # the thread must not die silently
                with self._lock:
                    self._fatal = translate(exc)
                self._changed.set()
                return
            self._wake.wait(delay)
            self._wake.clear()

    def _leave(self, epoch: int) -> None:
        with self._lock:
            member, current = self._member_id, self._epoch
        if not member or current <= 0:
            return
        req = gpb.ConsumerGroupHeartbeatRequest(
            group_id=self.group_id, member_id=member, member_epoch=epoch
        )
        try:
            self._conn.call(self._stub.ConsumerGroupHeartbeat, req, self._timeout_s)
        except errors.LogStoreError as exc:
            _log.info(
                "group %s: leave failed (the session timeout removes us): %s", self.group_id, exc
            )

    # -- the polling thread: reconciling the assignment --------------------

    def _call(self, cb: Callback | None, tps: Iterable[TopicPartition]) -> None:
        got = sorted(tps)
        if cb is not None and got:
            cb(got)

    def _reconcile(self) -> None:
        self._changed.clear()
        with self._lock:
            self._last_poll = time.monotonic()
            fatal, lost = self._fatal, self._lost
            target = set(self._target)
            owned = set(self._owned)
        if fatal is not None:
            raise fatal
        if lost is not None:
            self._drop(owned, commit=False)
            with self._lock:
                self._owned = set()
                self._lost = None
            self._call(self._on_lost, owned)
            self._wake.set()  # rejoin now
            return
        released = owned - target
        if released:
            if self._auto_commit:
                self._commit_released(released)
            self._call(self._on_revoke, released)
            self._drop(released, commit=False)
            with self._lock:
                self._owned -= released
            self._wake.set()  # report them released now, not in 3 s
        added = target - owned
        if added:
            self._place(added)
            with self._lock:
                self._owned |= added
            self._call(self._on_assign, added)

    def _commit_released(self, released: set[TopicPartition]) -> None:
        try:
            self.commit({tp: o for tp, o in self._positions.items() if tp in released})
        except errors.LogStoreError as exc:
            _log.warning("group %s: commit on revoke failed: %s", self.group_id, exc)

    def _drop(self, tps: set[TopicPartition], commit: bool) -> None:
        keep = [tp for tp in self._consumer.assignment() if tp not in tps]
        self._consumer.assign(keep)
        for tp in tps:
            self._positions.pop(tp, None)
            self._committed.pop(tp, None)
            self._unplaced.discard(tp)

    def _place(self, added: set[TopicPartition]) -> None:
        """Position new partitions at the committed offset, else by auto_offset_reset."""
        req = gpb.OffsetFetchRequest(group_id=self.group_id, partitions=_pset(added).topics)
        reply = self._call_retrying(self._stub.OffsetFetch, req)
        committed = {TopicPartition(o.topic, o.partition): o.offset for o in reply.offsets}
        self._consumer.assign(list(self._consumer.assignment()) + sorted(added))
        fresh = []
        for tp in sorted(added):
            offset = committed.get(tp, -1)
            if offset >= 0:
                self._consumer.seek(tp, offset)
                self._committed[tp] = offset
            else:
                fresh.append(tp)
        if not fresh:
            return
        if self._reset == "error":
            keep = [tp for tp in self._consumer.assignment() if tp not in fresh]
            self._consumer.assign(keep)
            self._unplaced.update(fresh)
        elif self._reset == "earliest":  # ListOffsets: idempotent, retried as OffsetFetch
            self._retrying(lambda: self._consumer.seek_to_beginning(fresh))
        else:
            self._retrying(lambda: self._consumer.seek_to_end(fresh))

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """Consume an owned partition from ``offset`` (also places an ``error``-reset one)."""
        key = TopicPartition(*tp)
        with self._lock:
            owned = key in self._owned
        if not owned:
            raise errors.InvalidArgumentError(f"{key[0]}-{key[1]} is not owned by this member")
        if key in self._unplaced:
            self._unplaced.discard(key)
            self._consumer.assign([*self._consumer.assignment(), key])
        self._consumer.seek(key, offset)

    def assignment(self) -> list[TopicPartition]:
        """The partitions this member owns now, sorted."""
        with self._lock:
            return sorted(self._owned)

    @property
    def member_id(self) -> str:
        with self._lock:
            return self._member_id

    # -- polling -------------------------------------------------------------

    def _poll(self, timeout_ms: int, objects: bool, max_records: int | None) -> dict[Any, Any]:
        if self._closed:
            raise errors.StoreClosedError("group consumer is closed")
        if self._async_errors:
            raise self._async_errors.pop(0)
        deadline = time.monotonic() + timeout_ms / 1000
        if self._auto_commit and time.monotonic() >= self._next_auto_commit:
            self._next_auto_commit = time.monotonic() + self._auto_commit_s
            self.commit_async(self._auto_commit_done)
        try:
            while True:
                self._reconcile()
                if self._unplaced:
                    names = ", ".join(f"{t}-{p}" for t, p in sorted(self._unplaced))
                    raise errors.FailedPreconditionError(
                        f"group {self.group_id} has no committed offset for {names} and "
                        "auto_offset_reset is 'error': seek() them or commit offsets first"
                    )
                left = deadline - time.monotonic()
                slice_ms = int(max(0.0, min(left, _SLICE_S)) * 1000)
                out: dict[Any, Any]
                if self._consumer.assignment():
                    try:
                        if objects:
                            out = self._consumer.poll(slice_ms, max_records)
                        else:
                            out = self._consumer.poll_columns(slice_ms, max_records)
                    except errors.OffsetOutOfRangeError as exc:
                        self._out_of_range(exc)
                        continue
                else:
                    self._changed.wait(slice_ms / 1000)
                    out = {}
                if out:
                    for tp in out:
                        self._positions[tp] = self._consumer.position(tp)
                    return out
                if left <= 0:
                    return {}
        finally:
            with self._lock:
                self._last_poll = time.monotonic()

    def _out_of_range(self, exc: errors.OffsetOutOfRangeError) -> None:
        """Apply auto_offset_reset to the partition whose position left the log.

        The committed offset (or a position while lagging) is below the log start
        (retention, DeleteRecords) or past the end: as Kafka, ``earliest`` /
        ``latest`` move it to the log start / end, ``error`` raises naming it.
        """
        topic, part = exc.metadata.get("topic"), exc.metadata.get("partition")
        if topic is None or part is None or not part.isdigit():
            raise exc
        tp = TopicPartition(topic, int(part))
        if tp not in self._consumer.assignment():
            raise exc
        where = (
            f"group {self.group_id}: offset {self._consumer.position(tp)} of {topic}-{part} "
            f"is out of range (valid {exc.log_start_offset}..{exc.log_end_offset})"
        )
        if self._reset == "error":
            raise errors.OffsetOutOfRangeError(
                f"{where} and auto_offset_reset is 'error': seek() it",
                exc.log_start_offset,
                exc.log_end_offset,
                metadata=exc.metadata,
            ) from exc
        _log.warning("%s: auto_offset_reset %s", where, self._reset)
        if self._reset == "earliest":
            self._consumer.seek_to_beginning([tp])
        else:
            self._consumer.seek_to_end([tp])

    def poll(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records of owned partitions, waiting up to ``timeout_ms`` ({} when none)."""
        return self._poll(timeout_ms, True, max_records)

    def poll_columns(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, ColumnBatch]:
        """Like :meth:`poll`, as one :class:`ColumnBatch` per partition."""
        return self._poll(timeout_ms, False, max_records)

    def __iter__(self) -> Iterator[tuple[TopicPartition, Record]]:
        """Yield ``(tp, record)`` until ``close``."""
        while not self._closed:
            for tp, records in self.poll(1000).items():
                for r in records:
                    yield tp, r

    # -- commits ---------------------------------------------------------------

    def _call_retrying(self, method: Callable[..., _T], req: Any) -> _T:
        """A unary Groups call, retried like the fetches while the broker is away.

        UNAVAILABLE (a broker restarting or shutting down), DEADLINE_EXCEEDED, CANCELLED
        (see :func:`_cancelled_by_broker`) and RESOURCE_EXHAUSTED with a retry hint are
        retried with the client's backoff for up to ``retry_timeout_ms`` (as Kafka's
        commitSync and offset fetch), so a broker restart neither fails ``poll`` nor
        loses a commit on revoke or close.
        Only idempotent calls come here: OffsetFetch, and OffsetCommit of fixed offsets.
        """
        return self._retrying(lambda: self._conn.call(method, req, self._timeout_s))

    def _retrying(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` (an idempotent call), retried as :meth:`_call_retrying` says."""
        deadline = time.monotonic() + self._retry_timeout_s
        failures = 0
        while True:
            try:
                return fn()
            except errors.LogStoreError as exc:
                if not _retry_group_call(exc):
                    raise
                delay = self._backoff.delay_s(failures, exc.retry_after_ms)
                if time.monotonic() + delay > deadline:
                    raise
                failures += 1
                time.sleep(delay)

    def _auto_commit_done(self, err: errors.LogStoreError | None) -> None:
        # Auto-commit is best effort, as Kafka's: a failed one (the broker restarting)
        # is logged and the next one, or the commit on revoke or close, covers it.
        # Raising it from poll would fail a consumer that did nothing wrong.
        if err is not None:
            _log.warning("group %s: auto-commit failed: %s", self.group_id, err)

    def _commit_request(self, offsets: Offsets | None) -> gpb.OffsetCommitRequest | None:
        if offsets is None:
            todo = {tp: o for tp, o in self._positions.items() if self._committed.get(tp) != o}
        else:
            todo = {TopicPartition(*tp): int(o) for tp, o in offsets.items()}
        if not todo:
            return None
        with self._lock:
            member, epoch = self._member_id, self._epoch
        return gpb.OffsetCommitRequest(
            group_id=self.group_id,
            member_id=member,
            member_epoch=epoch,
            partitions=[
                gpb.OffsetCommitPartition(topic=t, partition=p, offset=o)
                for (t, p), o in sorted(todo.items())
            ],
        )

    def _committed_ok(self, req: gpb.OffsetCommitRequest) -> None:
        for p in req.partitions:
            self._committed[TopicPartition(p.topic, p.partition)] = p.offset

    def commit(self, offsets: Offsets | None = None) -> None:
        """Commit synchronously what poll returned (or ``offsets``: {tp: next offset}).

        Earlier ``commit_async`` calls complete first (as Kafka promises): gRPC does not
        keep two calls in order, so an older async commit could otherwise land after
        this one and move the committed offset back.
        """
        self._wait_async()
        req = self._commit_request(offsets)
        if req is None:
            return
        for attempt in range(2):
            try:
                self._call_retrying(self._stub.OffsetCommit, req)
                self._committed_ok(req)
                return
            except errors.StaleMemberEpochError:
                if attempt:
                    raise
                # The broker advanced our epoch in a heartbeat whose reply is still on
                # its way (or in the next one): wait for it, however slow the network,
                # within the request timeout, then retry once with the new epoch.
                req.member_epoch = self._epoch_after(req.member_epoch)
            except (errors.UnknownMemberIdError, errors.FencedMemberEpochError) as exc:
                self._mark_lost(str(exc), isinstance(exc, errors.UnknownMemberIdError))
                raise

    def _epoch_after(self, stale: int) -> int:
        """Beat now and wait (up to the request timeout) for an epoch other than ``stale``."""
        self._wake.set()
        with self._epoch_changed:
            self._epoch_changed.wait_for(lambda: self._epoch != stale, self._timeout_s)
            return self._epoch

    def commit_async(
        self, callback: Callable[[errors.LogStoreError | None], None] | None = None
    ) -> None:
        """Commit what poll returned without waiting; a failure is passed to
        ``callback`` (called in a gRPC thread), else raised by the next poll."""
        req = self._commit_request(None)
        if req is None:
            return
        self._conn.ensure_ready()
        fut = self._stub.OffsetCommit.future(req, timeout=self._timeout_s)
        # bounded: done ones are dropped, and each waits at most request_timeout_ms
        self._async_inflight = [f for f in self._async_inflight if not f.done()]
        self._async_inflight.append(fut)

        def done(f: Any) -> None:
            err: errors.LogStoreError | None = None
            try:
                f.result()
            except BaseException as exc:  # handed to the caller
                err = translate(exc, self._conn.address)
            if err is None:
                self._committed_ok(req)
            elif callback is None and len(self._async_errors) < 16:
                # bounded: the first ones tell the story
                self._async_errors.append(err)
            if callback is not None:
                callback(err)

        fut.add_done_callback(done)

    def _wait_async(self) -> None:
        """Wait until every commit_async sent so far has its answer (errors go to
        their callback or the next poll, as usual)."""
        for fut in self._async_inflight:
            try:
                fut.result(timeout=self._timeout_s + 1)
            except Exception:  # the commit's own callback reports it
                _log.debug("group %s: an async commit failed before a sync one", self.group_id)
        self._async_inflight = []

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Commit (with auto-commit), call on_revoke, leave the group, stop the threads."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._timeout_s + 1)
        try:
            with self._lock:
                owned = set(self._owned)
                lost = self._lost
            if lost is None and owned:
                if self._auto_commit:
                    self._commit_released(owned)
                self._call(self._on_revoke, owned)
            if lost is None:
                static = self._instance_id is not None
                self._leave(_STATIC_LEAVE_EPOCH if static else _LEAVE_EPOCH)
        finally:
            self._consumer.close()
            self._conn.close()

    def __enter__(self) -> GroupConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
