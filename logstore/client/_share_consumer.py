"""The share consumer: a member of a share group (work queues, KIP-932; share.proto).

``ShareConsumer(bootstrap, group_id, topics)`` joins ``group_id`` with
``ShareGroupHeartbeat`` (member_id "" the first time; the broker creates the
group with its default config if it does not exist). Any number of share
consumers read the same partitions; the broker hands each record to one of
them at a time under a lock of the group's ``visibility_timeout_ms``.

* ``poll(timeout_ms, max_records)`` sends ``ShareFetch`` (long poll, up to
  ``fetch_max_wait_ms`` per request) until records arrive or ``timeout_ms``
  has passed, and returns a list of :class:`ShareMessage` (empty when nothing
  came in time). Iterating the consumer yields messages until ``close``.
* A fetch reply holds stored frames (byte for byte, or a one-size batch cut
  to the acquired span: share.proto) plus the offset ranges the caller
  **acquired**; a frame may hold records that are not acquired by this
  consumer (accepted already, or held by another), and the client skips every
  record outside its acquired ranges (KIP-932): only acquired records are
  returned, each with its range's ``delivery_count``.
* ``msg.ack()`` (ACCEPT), ``msg.nack(delay_ms=..., error=...)`` (RELEASE),
  ``msg.reject(reason)`` (REJECT: dead-lettered with ``reason`` as the
  ``logstore-dlq-error`` header) and ``msg.extend(ms)`` (RENEW the lock) do not
  send anything: they queue the acknowledgement, which rides on the next
  ``ShareFetch`` or is flushed by the background thread at most
  ``ack_flush_interval_ms`` (50 ms) after it was queued, or at once when
  ``ack_flush_records`` (500) are pending. Consecutive offsets of one partition
  with the same kind (and delay, error) are sent as one range, so a fetch of
  500 records acknowledged one by one costs one range, not 500 round trips.
  ``commit()`` sends everything pending now and waits for the answer.
  ``ack``/``nack``/``reject``/``extend`` may be called from any thread (the
  :class:`~logstore.client.Worker` acks from its task threads).

**Refused acknowledgements** (the broker applies each range wholly or not at
all; a range is refused when this consumer no longer holds those records: the
lock expired, another consumer holds them, or they were acknowledged already,
reason ``INVALID_RECORD_STATE``) are reported two ways:

* every refused range, as an :class:`AckFailure`, is passed to
  ``on_ack_error(failures)`` (called in the thread that got the reply: the
  polling thread, the flusher thread, or the one calling ``commit``/``close``);
  without a callback each is logged at WARNING;
* ``commit()`` raises the error of the first range refused in its reply (its
  class rebuilt from the reason, e.g. a ``FailedPreconditionError``), naming
  every refused range; the callback is called for those too.

A record whose acknowledgement was refused may be delivered again (to this
consumer or another): handlers must be idempotent, as with every
at-least-once queue.

Membership: a background thread heartbeats every ``heartbeat_interval_ms`` of
the broker's last reply and flushes queued acknowledgements. UNAVAILABLE,
DEADLINE_EXCEEDED and INTERNAL are retried with the client's backoff
(:mod:`._backoff`); ``UNKNOWN_MEMBER_ID`` (the session expired: a process
paused longer than ``session_timeout_ms``) makes the consumer rejoin with
member id "" -- the records it held are available to others again, so their
queued acknowledgements are reported as refused (reason
``UNKNOWN_MEMBER_ID``) and dropped. ``close()`` flushes the queued
acknowledgements, leaves the group (records acquired and not acknowledged are
released by the broker at once) and stops the thread.

A request carrying acknowledgements that fails with a retriable status is
sent again with them. If the first attempt had in fact been applied (its
reply was lost), the broker answers the repeat OK without applying it again:
it remembers the last 256 ACCEPT/REJECT and RELEASE ranges each member had
applied (a RELEASE until the member acquires those records again), so the
consumer reports no refusal for work that was done. This memory lives as long
as the member: across a broker restart the member is gone, and the repeat is
reported as refused with ``UNKNOWN_MEMBER_ID`` (whether the first attempt was
applied before the crash is not known to the client).

Bounds: at most ``max_records`` per poll (broker limit ``max_fetch_records``,
10,000), ``fetch_max_bytes`` per fetch; queued acknowledgements are at most
what this consumer holds (each acquired record has at most one pending
finishing acknowledgement plus renewals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeVar

import numpy as np

from logstore import errors
from logstore.v1 import share_pb2 as spb
from logstore.v1 import share_pb2_grpc
from logstore.wire import Record, decode_objects, parse_fetch

from ._backoff import Backoff, retriable
from ._credentials import Credentials
from ._rpc import Connection, translate

_log = logging.getLogger("logstore.client.share")

_T = TypeVar("_T")

#: Acknowledgement kinds, as the proto's enum names.
ACCEPT: Final = "ACCEPT"
RELEASE: Final = "RELEASE"
REJECT: Final = "REJECT"
RENEW: Final = "RENEW"
_KINDS: Final = {ACCEPT: spb.ACCEPT, RELEASE: spb.RELEASE, REJECT: spb.REJECT, RENEW: spb.RENEW}
_NAMES: Final[dict[int, str]] = {int(v): k for k, v in _KINDS.items()}
#: The broker keeps at most 1,024 bytes of error text (max_error_text_bytes); longer
#: text is cut here, on a character boundary, rather than refused.
MAX_ERROR_TEXT_BYTES: Final = 1024
#: The broker's max_fetch_records.
MAX_FETCH_RECORDS: Final = 10_000
#: The heartbeat interval before the broker's first reply says otherwise.
_DEFAULT_INTERVAL_S: Final = 3.0


def _cut(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= MAX_ERROR_TEXT_BYTES:
        return text
    return raw[:MAX_ERROR_TEXT_BYTES].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class AckFailure:
    """One acknowledgement range the broker refused (nothing in it was applied)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    kind: str  # ACCEPT, RELEASE, REJECT or RENEW
    reason: str  # e.g. INVALID_RECORD_STATE, UNKNOWN_MEMBER_ID
    message: str

    def __str__(self) -> str:
        span = (
            str(self.first_offset)
            if self.first_offset == self.last_offset
            else f"{self.first_offset}..{self.last_offset}"
        )
        where = f"{self.topic}-{self.partition} offset {span}"
        return f"{self.kind} of {where}: {self.reason} {self.message}".rstrip()


AckErrorCallback = Callable[[list[AckFailure]], None]


class _Ack(NamedTuple):
    # a tuple, not a frozen dataclass: one is made per msg.ack() (the hot path)
    topic: str
    partition: int
    offset: int
    kind: str
    delay_ms: int = 0
    extend_ms: int = 0
    error: str = ""


def _runs(offsets: Sequence[int]) -> tuple[list[int], list[int]]:
    """First and last offsets of the runs of consecutive ``offsets`` (numpy; sorted
    and deduplicated first when they are not increasing, e.g. acked across polls)."""
    offs = np.fromiter(offsets, dtype=np.int64, count=len(offsets))
    if len(offs) > 1 and not bool(np.all(offs[1:] > offs[:-1])):
        offs = np.unique(offs)
    cut = np.flatnonzero(np.diff(offs) != 1) + 1
    starts = np.concatenate(([0], cut)).tolist()
    ends = np.concatenate((cut - 1, [len(offs) - 1])).tolist()
    lo: list[int] = offs[starts].tolist()
    hi: list[int] = offs[ends].tolist()
    return lo, hi


class _Pending:
    """What ``_take_pending`` took: the queued acknowledgements of every kind but
    ``msg.ack()``'s, and those ACCEPTed offsets per partition."""

    __slots__ = ("accepts", "acks")

    def __init__(self, acks: list[_Ack], accepts: dict[tuple[str, int], list[int]]) -> None:
        self.acks = acks
        self.accepts = accepts

    def __len__(self) -> int:
        return len(self.acks) + sum(len(o) for o in self.accepts.values())

    def __bool__(self) -> bool:
        return len(self) > 0


def _batches(
    acks: Sequence[_Ack], accepts: dict[tuple[str, int], list[int]] | None = None
) -> list[spb.AcknowledgementBatch]:
    """Coalesce acks into ranges: consecutive offsets of one partition with the same
    kind, delay, extension and error become one AcknowledgementBatch. Renewals go
    first (a renew queued before the ack of the same record must not follow it).
    ``accepts`` (``msg.ack()``'s queue: offsets per partition) become ACCEPT ranges
    after those of ``acks`` (a record has one finishing acknowledgement, so the
    order of ACCEPTs and other kinds of different records does not matter).

    The common case -- every ack of one partition with one kind and the same
    delay, extension and error (a poll's messages each ``ack()``ed) -- takes no
    Python loop per ack: the columns are transposed with ``zip`` and the runs of
    consecutive offsets found with numpy."""
    out = _ack_batches(acks)
    for (topic, partition), offsets in (accepts or {}).items():
        if offsets:
            lo, hi = _runs(offsets)
            out += [
                spb.AcknowledgementBatch(
                    topic=topic,
                    partition=partition,
                    first_offset=f,
                    last_offset=la,
                    type=spb.ACCEPT,
                )
                for f, la in zip(lo, hi, strict=True)
            ]
    return out


def _ack_batches(acks: Sequence[_Ack]) -> list[spb.AcknowledgementBatch]:
    if not acks:
        return []
    cols = list(zip(*acks, strict=True))
    n = len(acks)
    # tuple.count compares in C without hashing (set() of each column cost
    # more than the rest of this function for a 500-record poll)
    if all(c.count(c[0]) == n for i, c in enumerate(cols) if i != 2):
        first = acks[0]
        lo, hi = _runs(cols[2])
        kind = _KINDS[first.kind]
        return [
            spb.AcknowledgementBatch(
                topic=first.topic,
                partition=first.partition,
                first_offset=f,
                last_offset=la,
                type=kind,
                delay_ms=first.delay_ms,
                extend_ms=first.extend_ms,
                error=first.error,
            )
            for f, la in zip(lo, hi, strict=True)
        ]
    ordered = sorted(
        acks,
        key=lambda a: (a.kind != RENEW, a.topic, a.partition, a.offset),
    )
    out: list[spb.AcknowledgementBatch] = []
    for a in ordered:
        last = out[-1] if out else None
        if (
            last is not None
            and last.topic == a.topic
            and last.partition == a.partition
            and last.last_offset + 1 == a.offset
            and last.type == _KINDS[a.kind]
            and last.delay_ms == a.delay_ms
            and last.extend_ms == a.extend_ms
            and last.error == a.error
        ):
            last.last_offset = a.offset
            continue
        out.append(
            spb.AcknowledgementBatch(
                topic=a.topic,
                partition=a.partition,
                first_offset=a.offset,
                last_offset=a.offset,
                type=_KINDS[a.kind],
                delay_ms=a.delay_ms,
                extend_ms=a.extend_ms,
                error=a.error,
            )
        )
    return out


class ShareMessage:
    """One acquired record: its data, where it is, how often it was delivered, and the
    acknowledgement methods. Finish it exactly once (``ack``, ``nack`` or ``reject``);
    ``extend`` any number of times before. A second finish raises InvalidArgumentError."""

    __slots__ = (
        "_consumer",
        "_done",
        "_tp",
        "delivery_count",
        "lock_deadline_ms",
        "partition",
        "record",
        "topic",
    )

    def __init__(
        self,
        consumer: ShareConsumer,
        topic: str,
        partition: int,
        record: Record,
        delivery_count: int,
        lock_deadline_ms: int,
        tp: tuple[str, int] | None = None,
    ) -> None:
        self._consumer = consumer
        self.topic = topic
        self.partition = partition
        #: (topic, partition), shared by the messages of one reply (ack's queue key)
        self._tp = (topic, partition) if tp is None else tp
        self.record = record
        #: 1 on the first delivery.
        self.delivery_count = delivery_count
        #: Epoch ms (the broker's clock) when the lock ends unless renewed.
        self.lock_deadline_ms = lock_deadline_ms
        self._done = False

    @property
    def key(self) -> bytes | None:
        return self.record.key

    @property
    def value(self) -> bytes | None:
        return self.record.value

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return self.record.headers

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def timestamp_ms(self) -> int:
        return self.record.timestamp_ms

    @property
    def timestamp(self) -> int:
        """CreateTime in ms (as ``timestamp_ms``)."""
        return self.record.timestamp_ms

    @property
    def done(self) -> bool:
        """Whether ack, nack or reject was called."""
        return self._done

    def _finish(self, ack: _Ack) -> None:
        self._mark_done()
        self._consumer._queue(ack)

    def _mark_done(self) -> None:
        """This message's one finishing acknowledgement is being queued."""
        if self._done:
            raise errors.InvalidArgumentError(
                f"{self.topic}-{self.partition} offset {self.offset} is already acknowledged"
            )
        self._done = True

    def ack(self) -> None:
        """ACCEPT: done, never delivered again."""
        # The hot path (one call per message; W8 acks every task): an offset
        # appended to the partition's list, no _Ack tuple (a NamedTuple with
        # defaults costs more than the rest of this method).
        self._mark_done()
        self._consumer._queue_accept(self._tp, self.record.offset)

    def nack(self, delay_ms: int = 0, error: str = "") -> None:
        """RELEASE: available again after ``delay_ms`` (0 = now); ``error`` is kept for the
        dead-letter header should this have been the last delivery attempt."""
        if delay_ms < 0:
            raise errors.InvalidArgumentError(f"nack delay_ms must be >= 0, not {delay_ms}")
        self._finish(
            _Ack(
                self.topic,
                self.partition,
                self.offset,
                RELEASE,
                delay_ms=delay_ms,
                error=_cut(error),
            )
        )

    def reject(self, reason: str = "") -> None:
        """REJECT: never redelivered; moved to the dead-letter topic with ``reason``."""
        self._finish(_Ack(self.topic, self.partition, self.offset, REJECT, error=_cut(reason)))

    def extend(self, ms: int = 0) -> None:
        """RENEW: the lock ends ``ms`` from when the broker applies it (0 = the group's
        visibility timeout). Sent within ``ack_flush_interval_ms``."""
        if ms < 0:
            raise errors.InvalidArgumentError(f"extend ms must be >= 0, not {ms}")
        if self._done:
            raise errors.InvalidArgumentError(
                f"{self.topic}-{self.partition} offset {self.offset} is already acknowledged"
            )
        self._consumer._queue(_Ack(self.topic, self.partition, self.offset, RENEW, extend_ms=ms))

    def __repr__(self) -> str:
        return (
            f"ShareMessage({self.topic}-{self.partition}@{self.offset}, "
            f"delivery_count={self.delivery_count})"
        )


def messages_of(
    consumer: ShareConsumer, part: spb.ShareFetchPartition, check_crcs: bool = True
) -> list[ShareMessage]:
    """The acquired records of one partition of a ShareFetch reply, in offset order.

    Records of the frames outside every acquired range are skipped (KIP-932: a frame
    is sent whole, and parts of it may be accepted or held by another consumer)."""
    ranges = sorted(part.acquired, key=lambda r: r.first_offset)
    if not ranges or not part.records:
        return []
    frames = parse_fetch(part.records, check_crcs)
    lo, hi = ranges[0].first_offset, ranges[-1].last_offset
    # Decode only up to the last acquired offset: a reply holds whole stored
    # batches (a producer's batch may hold 10,000 records of which 500 are
    # ours), and the records past ``hi`` were most of the decoding cost.
    records = decode_objects(frames, lo, hi - lo + 1)
    topic, partition = part.topic, part.partition
    tp = (topic, partition)
    if len(ranges) == 1:
        r = ranges[0]
        dc, lock = r.delivery_count, r.lock_deadline_ms
        return [
            ShareMessage(consumer, topic, partition, rec, dc, lock, tp)
            for rec in records
            if rec.offset <= hi
        ]
    out: list[ShareMessage] = []
    i = 0
    for rec in records:
        off = rec.offset
        while i < len(ranges) and ranges[i].last_offset < off:
            i += 1
        if i == len(ranges):
            break
        r = ranges[i]
        if r.first_offset <= off:
            out.append(
                ShareMessage(
                    consumer, topic, partition, rec, r.delivery_count, r.lock_deadline_ms, tp
                )
            )
    return out


class ShareConsumer:
    """A share-group member; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        *,
        client_id: str = "",
        max_records: int = 500,
        fetch_max_bytes: int = 1 << 20,
        fetch_max_wait_ms: int = 500,
        ack_flush_interval_ms: int = 50,
        ack_flush_records: int = 500,
        on_ack_error: AckErrorCallback | None = None,
        check_crcs: bool = True,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        request_timeout_ms: int = 30_000,
        retry_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
    ) -> None:
        if isinstance(topics, str):
            raise errors.InvalidArgumentError("topics must be a list of names, not one string")
        names = sorted(set(topics))
        if not names:
            raise errors.InvalidArgumentError("topics must name at least one topic")
        if not group_id:
            raise errors.InvalidArgumentError("group_id must not be empty")
        if not 1 <= max_records <= MAX_FETCH_RECORDS:
            raise errors.InvalidArgumentError(
                f"max_records must be in 1..{MAX_FETCH_RECORDS}, not {max_records}"
            )
        if not 0 <= fetch_max_wait_ms <= 30_000 or fetch_max_bytes < 1:
            raise errors.InvalidArgumentError(
                "fetch_max_wait_ms must be in 0..30000 and fetch_max_bytes >= 1"
            )
        if ack_flush_interval_ms < 1 or ack_flush_records < 1:
            raise errors.InvalidArgumentError(
                "ack_flush_interval_ms and ack_flush_records must be >= 1"
            )
        self.group_id = group_id
        self.topics = names
        self._client_id = client_id
        self._max_records = max_records
        self._max_bytes = fetch_max_bytes
        self._max_wait_ms = fetch_max_wait_ms
        self._flush_s = ack_flush_interval_ms / 1000
        self._flush_records = ack_flush_records
        self._on_ack_error = on_ack_error
        self._check_crcs = check_crcs
        self._timeout_s = request_timeout_ms / 1000
        self._retry_timeout_s = retry_timeout_ms / 1000
        self._backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms)
        self._conn = Connection(bootstrap, connect_timeout_ms, credentials)
        self._stub = share_pb2_grpc.ShareGroupsStub(self._conn.channel)

        self._lock = threading.Lock()
        self._member_id = ""
        self._interval_s = _DEFAULT_INTERVAL_S
        self._session_ms = 0
        self._pending: list[_Ack] = []
        #: msg.ack()'s queue: ACCEPTed offsets per partition (ack order)
        self._accepts: dict[tuple[str, int], list[int]] = {}
        #: acknowledgements queued in both (the ack_flush_records trigger)
        self._npending = 0
        self._pending_since: float | None = None
        self._fatal: errors.LogStoreError | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: serializes acknowledgement sends with each other and with fetches that
        #: carry acknowledgements, so acks of one record are applied in call order
        self._send_lock = threading.Lock()
        self._rejoin_lock = threading.Lock()
        self._closed = False
        self.requests_sent = 0  # ShareFetch + ShareAcknowledge calls (tests, metrics)

        try:
            self._join()
        except BaseException:
            self._conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"logstore-share-{group_id}", daemon=True
        )
        self._thread.start()

    # -- membership ---------------------------------------------------------

    @property
    def member_id(self) -> str:
        with self._lock:
            return self._member_id

    def _heartbeat(self, member_id: str) -> None:
        req = spb.ShareGroupHeartbeatRequest(
            group_id=self.group_id,
            member_id=member_id,
            topics=self.topics,
            client_id=self._client_id,
        )
        reply = self._conn.call(self._stub.ShareGroupHeartbeat, req, self._timeout_s)
        with self._lock:
            self._member_id = reply.member_id
            if reply.heartbeat_interval_ms > 0:
                self._interval_s = reply.heartbeat_interval_ms / 1000
            self._session_ms = reply.session_timeout_ms

    def _join(self) -> None:
        self._heartbeat("")

    def _rejoin(self, why: str, stale: str) -> None:
        """The session of member ``stale`` is gone: drop (and report) the queued acks and
        join as a new member -- once: the polling and the background thread may both
        see the error, and whichever comes second finds a new member id and stops."""
        with self._rejoin_lock:
            with self._lock:
                if self._member_id != stale:
                    return  # the other thread rejoined already
            self._rejoin_locked(why)

    def _rejoin_locked(self, why: str) -> None:
        with self._lock:
            dropped, self._pending = self._pending, []
            accepts, self._accepts = self._accepts, {}
            self._npending = 0
            self._pending_since = None
            self._member_id = ""
        _log.warning("share group %s: %s: rejoining", self.group_id, why)
        if dropped or accepts:
            self._report(
                [
                    AckFailure(
                        b.topic,
                        b.partition,
                        b.first_offset,
                        b.last_offset,
                        _NAMES[b.type],
                        errors.UnknownMemberIdError.reason,
                        why,
                    )
                    for b in _batches(dropped, accepts)
                ]
            )
        self._call_retrying(self._join)

    def _run(self) -> None:
        failures = 0
        next_beat = time.monotonic() + self._interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                since = self._pending_since
                many = self._npending >= self._flush_records
                interval = self._interval_s
            member = self.member_id
            try:
                if since is not None and (many or now - since >= self._flush_s):
                    self.flush()
                if now >= next_beat and member:  # "" while the polling thread rejoins
                    self._heartbeat(member)
                    next_beat = time.monotonic() + interval
                failures = 0
            except errors.UnknownMemberIdError as exc:
                try:
                    self._rejoin(str(exc), member)
                except errors.LogStoreError as exc2:
                    self._set_fatal(exc2)
                    return
                next_beat = time.monotonic() + self._interval_s
                continue
            except errors.LogStoreError as exc:
                if self._stop.is_set():
                    return
                if retriable(exc) or isinstance(
                    exc, (errors.DeadlineExceededError, errors.InternalError)
                ):
                    next_beat = time.monotonic() + min(interval, self._backoff.delay_s(failures))
                    failures += 1
                else:
                    self._set_fatal(exc)
                    return
            except Exception as exc:  # the thread must not die silently
                self._set_fatal(translate(exc))
                return
            with self._lock:
                since = self._pending_since
            wait = next_beat - time.monotonic()
            if since is not None:
                wait = min(wait, since + self._flush_s - time.monotonic())
            self._wake.wait(max(0.001, wait))
            self._wake.clear()

    def _set_fatal(self, exc: errors.LogStoreError) -> None:
        _log.error("share group %s: background thread stopped: %s", self.group_id, exc)
        with self._lock:
            self._fatal = exc

    # -- acknowledgements ------------------------------------------------------

    def _queue(self, ack: _Ack) -> None:
        if self._closed:
            raise errors.StoreClosedError("share consumer is closed")
        with self._lock:
            self._pending.append(ack)
            many = self._counted_locked()
        if many:
            self._wake.set()

    def _queue_accept(self, tp: tuple[str, int], offset: int) -> None:
        """``_queue`` of an ACCEPT, as an offset in the partition's list."""
        if self._closed:
            raise errors.StoreClosedError("share consumer is closed")
        with self._lock:
            offsets = self._accepts.get(tp)
            if offsets is None:
                offsets = self._accepts[tp] = []
            offsets.append(offset)
            many = self._counted_locked()
        if many:
            self._wake.set()

    def _counted_locked(self) -> bool:
        """Count one queued acknowledgement (lock held): whether enough are
        queued to send them now (``ack_flush_records``)."""
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._npending += 1
        return self._npending >= self._flush_records

    def _take_pending(self) -> _Pending:
        with self._lock:
            acks, self._pending = self._pending, []
            accepts, self._accepts = self._accepts, {}
            self._npending = 0
            self._pending_since = None
        return _Pending(acks, accepts)

    def _requeue(self, taken: _Pending) -> None:
        with self._lock:
            self._pending[:0] = taken.acks
            for tp, offsets in taken.accepts.items():
                self._accepts[tp] = offsets + self._accepts.get(tp, [])
            self._npending += len(taken)
            if self._pending_since is None and self._npending:
                self._pending_since = time.monotonic()

    @property
    def pending_acknowledgements(self) -> int:
        """Acknowledgements queued and not sent yet."""
        with self._lock:
            return self._npending

    def _report(self, failures: list[AckFailure]) -> None:
        if not failures:
            return
        if self._on_ack_error is not None:
            try:
                self._on_ack_error(failures)
            except Exception:  # a bad callback must not kill the flusher
                _log.exception("share group %s: on_ack_error raised", self.group_id)
            return
        for f in failures:
            _log.warning("share group %s: acknowledgement refused: %s", self.group_id, f)

    def _results(
        self, batches: list[spb.AcknowledgementBatch], results: Iterable[spb.AcknowledgeResult]
    ) -> list[AckFailure]:
        kinds = {(b.topic, b.partition, b.first_offset, b.last_offset): b.type for b in batches}
        out = []
        for r in results:
            if r.code == 0:
                continue
            kind = kinds.get((r.topic, r.partition, r.first_offset, r.last_offset), 0)
            out.append(
                AckFailure(
                    r.topic,
                    r.partition,
                    r.first_offset,
                    r.last_offset,
                    _NAMES.get(kind, "UNKNOWN"),
                    r.reason or "INVALID_RECORD_STATE",
                    r.message,
                )
            )
        self._report(out)
        return out

    def flush(self) -> list[AckFailure]:
        """Send the queued acknowledgements now (ShareAcknowledge) and wait; the refused
        ranges (also passed to ``on_ack_error``). Retriable failures are retried for up
        to ``retry_timeout_ms``; ``UNKNOWN_MEMBER_ID`` rejoins."""
        with self._send_lock:
            acks = self._take_pending()
            if not acks:
                return []
            batches = _batches(acks.acks, acks.accepts)
            req = spb.ShareAcknowledgeRequest(
                group_id=self.group_id, member_id=self.member_id, acknowledgements=batches
            )
            try:
                reply = self._call_retrying(
                    lambda: self._conn.call(self._stub.ShareAcknowledge, req, self._timeout_s)
                )
            except errors.UnknownMemberIdError:
                self._requeue(acks)  # _rejoin reports and drops them
                raise
            except errors.LogStoreError:
                self._requeue(acks)
                raise
            return self._results(batches, reply.acknowledgements)

    def commit(self) -> None:
        """Send every queued acknowledgement and wait for the broker's answer.

        Raises the error of the first refused range (class from its reason, e.g.
        ``FailedPreconditionError`` for INVALID_RECORD_STATE), naming every refused
        range; they are also passed to ``on_ack_error``."""
        member = self.member_id
        try:
            failures = self.flush()
        except errors.UnknownMemberIdError as exc:
            self._rejoin(str(exc), member)
            raise
        if failures:
            cls = errors.BY_REASON.get(failures[0].reason, errors.FailedPreconditionError)
            text = "; ".join(str(f) for f in failures[:10])
            more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
            raise cls(
                f"share group {self.group_id}: {len(failures)} acknowledgement range(s) "
                f"refused: {text}{more}"
            )

    # -- fetching --------------------------------------------------------------

    def _call_retrying(self, fn: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self._retry_timeout_s
        failures = 0
        while True:
            try:
                return fn()
            except errors.LogStoreError as exc:
                if not (retriable(exc) or isinstance(exc, errors.DeadlineExceededError)):
                    raise
                delay = self._backoff.delay_s(failures, exc.retry_after_ms)
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    raise
                failures += 1
                time.sleep(delay)

    def _fetch_once(self, wait_ms: int, max_records: int) -> list[ShareMessage]:
        # A fetch carrying acknowledgements holds the send lock for its whole call, so
        # no later acknowledgement (a ShareAcknowledge of the flusher) overtakes them;
        # one without holds nothing, so acks queued during a long poll are flushed by
        # the timer instead of waiting for it.
        send_lock = self._send_lock
        send_lock.acquire()
        acks = self._take_pending()
        if not acks:
            send_lock.release()
        try:
            batches = _batches(acks.acks, acks.accepts)
            req = spb.ShareFetchRequest(
                group_id=self.group_id,
                member_id=self.member_id,
                max_records=max_records,
                max_bytes=self._max_bytes,
                max_wait_ms=wait_ms,
                acknowledgements=batches,
            )
            try:
                self.requests_sent += 1
                reply = self._conn.call(
                    self._stub.ShareFetch, req, wait_ms / 1000 + self._timeout_s
                )
            except errors.LogStoreError:
                self._requeue(acks)
                raise
        finally:
            if acks:
                send_lock.release()
        if batches:
            self._results(batches, reply.acknowledgements)
        out: list[ShareMessage] = []
        for part in reply.partitions:
            out.extend(messages_of(self, part, self._check_crcs))
        return out

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ShareMessage]:
        """Acquired records, waiting up to ``timeout_ms`` for some ([] when none came).

        Queued acknowledgements ride on the fetch. Raises what the broker refuses
        (NotFoundError for an unknown topic, ...); rides through a broker restart
        (UNAVAILABLE is retried for ``retry_timeout_ms``)."""
        if self._closed:
            raise errors.StoreClosedError("share consumer is closed")
        with self._lock:
            fatal = self._fatal
        if fatal is not None:
            raise fatal
        n = self._max_records if max_records is None else max_records
        if not 1 <= n <= MAX_FETCH_RECORDS:
            raise errors.InvalidArgumentError(
                f"max_records must be in 1..{MAX_FETCH_RECORDS}, not {n}"
            )
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        failures = 0
        fail_since: float | None = None
        while True:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            member = self.member_id
            try:
                got = self._fetch_once(min(left_ms, self._max_wait_ms), n)
                failures = 0
                fail_since = None
            except errors.UnknownMemberIdError as exc:
                self._rejoin(str(exc), member)
                continue
            except errors.LogStoreError as exc:
                if not (retriable(exc) or isinstance(exc, errors.DeadlineExceededError)):
                    raise
                now = time.monotonic()
                fail_since = now if fail_since is None else fail_since
                if now - fail_since > self._retry_timeout_s:
                    raise
                time.sleep(self._backoff.delay_s(failures, exc.retry_after_ms))
                failures += 1
                continue
            if got or time.monotonic() >= deadline:
                return got

    def __iter__(self) -> Iterator[ShareMessage]:
        """Yield messages until ``close``."""
        while not self._closed:
            yield from self.poll(1000)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Flush queued acknowledgements (refusals go to ``on_ack_error`` / the log),
        leave the group (the broker releases what this consumer still holds), stop."""
        if self._closed:
            return
        self._closed = True  # from now on ack() raises: nothing queued after the flush is lost
        try:
            self.flush()
        except errors.LogStoreError as exc:
            _log.warning(
                "share group %s: acknowledgements not sent at close: %s", self.group_id, exc
            )
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._timeout_s + 1)
        try:
            member = self.member_id
            if member:
                req = spb.ShareGroupHeartbeatRequest(
                    group_id=self.group_id, member_id=member, leave=True
                )
                self._conn.call(self._stub.ShareGroupHeartbeat, req, self._timeout_s)
        except errors.LogStoreError as exc:
            _log.warning("share group %s: leave failed: %s", self.group_id, exc)
        finally:
            self._conn.close()

    def __enter__(self) -> ShareConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
