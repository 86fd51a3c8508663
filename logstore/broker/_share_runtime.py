"""The share-group runtime: one :class:`~logstore.share.ShareCoordinator` on a store.

Contract (the coordinator's handler contract, ``logstore/share/_coordinator.py``;
``docs/architecture.md``, "Share groups (work queues)"):

* The one-writer group commit (queued calls run back to back, each replaying
  its records, then one append of all their records and one ``tick``'s to
  ``__share_group_state``, and only then answers), the stale rebuild after a
  failed append, the load by replay and the timer are
  :class:`~logstore.broker._state_runtime.StateRuntime`'s, shared with the
  consumer groups.
* **Durability.** Acknowledgements (ACCEPT, REJECT, RELEASE, RENEW), dead
  letters and their confirmations, config changes, redrive intents and
  everything else are fsynced before they are answered. An acquisition (the
  ``acquire`` of a ShareFetch: locks taken, delivery counts raised) is, by
  default (broker ``share_acquisition_durability = "page-cache"``), only
  written: a kill -9 of the broker keeps it, a power cut may lose it -- the
  records it locked are available again after the restart (as after any
  restart) with the delivery count they had before it, so a record may be
  delivered once more than ``max_delivery_attempts`` counts. It can never
  lose an acknowledgement or a dead-letter decision: every fsync covers the
  acquisitions written before it (``StateRuntime``, "Unfsynced calls"), and
  a batch that decided a dead letter is fsynced whatever its calls asked.
  ``"fsync"`` fsyncs acquisitions too (one fsync per acquiring fetch batch).
  The runtime is pipelined (``StateRuntime``, "Pipelined"): while a batch of
  acknowledgements waits for its fsync, later fetches plan and acquire on
  its state (a RELEASE's records may be handed out, an ACCEPT's room
  reused) before it is durable; a power cut that loses the acknowledgement
  loses those acquisitions with it (a suffix of the log), and the
  acknowledgement was never confirmed, so at-least-once holds.
* Start (:meth:`start`, before the gRPC port opens): the compacted internal
  topic is created if missing (1 partition, like ``__consumer_offsets``), read
  from its start and ``ShareCoordinator.load``-ed (locks are gone, delivery
  counts and acknowledgements kept), then ``on_metadata`` and every
  ``pending_dead_letters`` entry is produced again (a crash between a dead
  letter's append and its ``dead_lettered`` record: the copies already in
  the dead-letter topic are skipped, ``_share_dlq``: exactly once).
* Timers: after each batch and each timer, one
  :class:`~logstore.broker._waiters.Timers` timer is armed at ``tick``'s
  ``next_deadline_ms`` + 1 ms (lock expiries, session timeouts, delayed
  records coming due). A timer runs ``tick`` and wakes every share fetch that
  long-polls, since a delayed record coming due writes nothing.
* Long polls: a ShareFetch that acquired nothing waits (up to ``max_wait_ms``,
  capped at 30 s) on the WaitRegistry under the group's key
  ``("share", group_id)`` -- woken by any batch that wrote records of the group
  (a RELEASE, an expiry, a dead letter confirmed) and by timers -- and on each
  planned ``(topic, partition)``, which the store's append listener wakes.
* Dead letters: every reply or tick that lists ``dead_letters`` queues them;
  one background task reads the source records (``Store.read``, bounded by
  the range), appends them to the group's dead-letter topic with the
  documented ``logstore-dlq-*`` headers (one fsync per range) and then calls
  ``dead_lettered``. The dead-letter topic is created on demand with **one
  partition**: a dead-letter topic is read by people and redrive, in order,
  and one partition keeps "the last N dead letters" one read; its records say
  their source partition in a header.
* ``on_log_start``: before reading a partition whose log start moved past the
  share-partition start offset (retention, DeleteRecords), and on the
  maintenance interval, the coordinator drops the records that can no longer
  be read; a WARN line says how many unfinished records were lost.
* Back pressure (:meth:`evaluate_latency`, every second): for each group with
  ``max_queue_latency_ms``, drain time = backlog (records not finished in the
  windows plus the log past them, over the group's partitions) / the measured
  acknowledge rate (last 60 s). Past the bound, every topic of the group is
  put in ``Runtime.produce_refusals`` (topic -> error), the one dict lookup
  the produce path makes. Without a measured rate (no acknowledgement in the
  last minute) there is no estimate and nothing is refused: the bound
  protects a running queue from a backlog it cannot drain. A WARN line (at
  most one a minute per group) fires at 70 % of the bound.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from logstore.errors import (
    GroupIdNotFoundError,
    LogStoreError,
    OffsetOutOfRangeError,
    QueueLatencyExceededError,
    TopicExistsError,
    UnknownTopicError,
)
from logstore.share import (
    SHARE_STATE_TOPIC,
    Ack,
    AckKind,
    AckReply,
    AcquiredRange,
    Acquisition,
    Candidates,
    DeadLetter,
    DeadLetterReason,
    PartitionRead,
    Result,
    ShareCoordinator,
    ShareCoordinatorConfig,
    ShareParkedKey,
    ShareRecord,
    ShareRedriveValue,
    ShareStateKey,
    ShareTickResult,
    decode,
    encode,
)
from logstore.wire import (
    DELIVER_AT_HEADER,
    FetchedFrames,
    Record,
    share_metadata,
    stored_frames,
)

from ._share_dlq import already_dead_lettered
from ._state_runtime import LOAD_READ_BYTES, StateRuntime, now_ms
from .handlers._common import check_client_writable as check_writable

if TYPE_CHECKING:
    from logstore.storage import FetchResult

    from ._runtime import Runtime

log = logging.getLogger("logstore.broker")

T = TypeVar("T")

#: Partitions of the internal topic (see the module docstring).
SHARE_STATE_PARTITIONS: Final = 1
#: Compacted, never deleted by time or size; 100 MiB segments (as __consumer_offsets).
SHARE_STATE_TOPIC_CONFIG: Final = {
    "cleanup_policy": "compact",
    "retention_ms": -1,
    "segment_bytes": 100 * 1024 * 1024,
}
#: Partitions of a dead-letter topic created on demand (module docstring).
DEAD_LETTER_PARTITIONS: Final = 1
#: Bytes read per partition per ShareFetch when the request leaves max_bytes 0.
DEFAULT_SHARE_FETCH_BYTES: Final = 4 << 20
#: Records per ShareFetch when the request leaves max_records 0.
DEFAULT_SHARE_FETCH_RECORDS: Final = 500
#: Back-pressure evaluation period; the estimate uses a 60 s rate, so 1 s is fine-grained.
LATENCY_EVAL_MS: Final = 1000
#: WARN at this fraction of max_queue_latency_ms, at most once per this long per group.
LATENCY_WARN_FRACTION: Final = 0.7
_LATENCY_WARN_EVERY_S: Final = 60.0
#: The longest retry hint of QUEUE_LATENCY_EXCEEDED (the estimate is a minute's rate).
_MAX_RETRY_AFTER_MS: Final = 60_000

_DELIVER_AT_NAME: Final = DELIVER_AT_HEADER.encode()
#: Keys of this module's facts in a storage memo (``FetchResult.memo``).
_INDEX: Final = "share:index"
_NO_DELIVER_AT: Final = "share:no-deliver-at"
#: Dead-letter header names (share.proto).
H_TOPIC: Final = "logstore-dlq-source-topic"
H_PARTITION: Final = "logstore-dlq-source-partition"
H_OFFSET: Final = "logstore-dlq-source-offset"
H_COUNT: Final = "logstore-dlq-delivery-count"
H_REASON: Final = "logstore-dlq-reason"
H_ERROR: Final = "logstore-dlq-error"
H_FIRST: Final = "logstore-dlq-first-delivery-ms"
H_LAST: Final = "logstore-dlq-last-delivery-ms"
H_GROUP: Final = "logstore-dlq-group"
#: On a redriven record: "<dead-letter topic>/<partition>/<offset>" it was made from.
H_REDRIVE: Final = "logstore-redrive-from"
#: Records one RedriveDeadLetters call moves at most (call again for more).
MAX_REDRIVE_RECORDS: Final = 100_000
#: Records per intent (one fsynced intent and done record each).
_REDRIVE_SLICE: Final = 1000
DLQ_HEADERS: Final = frozenset(
    {H_TOPIC, H_PARTITION, H_OFFSET, H_COUNT, H_REASON, H_ERROR, H_FIRST, H_LAST, H_GROUP}
)
#: The reason header's values, by the coordinator's reason.
REASON_NAMES: Final = {
    DeadLetterReason.REJECTED: b"REJECTED",
    DeadLetterReason.MAX_DELIVERIES: b"MAX_DELIVERY_ATTEMPTS",
    DeadLetterReason.TTL_EXPIRED: b"MESSAGE_TTL",
}


@dataclass(frozen=True)
class PartitionFrames:
    """What a ShareFetch returns for one partition: frames covering ``acquired``."""

    topic: str
    partition: int
    records: bytes
    acquired: tuple[AcquiredRange, ...]
    #: The storage memo of ``records`` when they are one cached frame
    #: (``FetchResult.memo``), for ``trim_frames``.
    memo: dict[object, object] | None = None


@dataclass
class _Read:
    plan: PartitionRead
    start: int
    result: FetchResult | None
    candidates: Candidates | None
    #: The frames of ``result.data`` (positions and headers), for trimming the reply.
    index: FetchedFrames | None = None
    #: The read stopped at its record bound (``max_records`` offsets), before
    #: the high watermark and the window's room: there is more to read.
    cut: bool = False


def group_key(group_id: str) -> tuple[str, str]:
    """The WaitRegistry key long polls of ``group_id`` wait on."""
    return ("share", group_id)


class ShareRuntime(StateRuntime[ShareCoordinator, ShareRecord]):
    """The broker's share coordinator, its log, timer and dead-letter producer."""

    topic = SHARE_STATE_TOPIC
    partitions = SHARE_STATE_PARTITIONS
    topic_config = SHARE_STATE_TOPIC_CONFIG
    what = "share coordinator"
    records_name = "the share records"
    #: A batch of acknowledgements waits for its fsync without holding the
    #: lock: fetches plan and acquire meanwhile (module docstring, "Durability").
    pipelined = True

    def __init__(self, runtime: Runtime, config: ShareCoordinatorConfig | None = None) -> None:
        config = config or ShareCoordinatorConfig()
        super().__init__(runtime, ShareCoordinator(config))
        self.config = config
        #: Acquisitions fsynced before they are answered (module docstring, "Durability").
        self.fsync_acquisitions = runtime.config.share_acquisition_durability == "fsync"
        #: Dead letters to produce, each with whether it is a retry (listed again
        #: after a restart or a failure: its copies may already be there).
        self._dlq: deque[tuple[DeadLetter, bool]] = deque()
        self._dlq_running = False
        #: Records of the retried dead letters per dead-letter topic (the tail a
        #: retry after a restart scans), and where this process's attempt of a
        #: dead letter started appending (an in-process retry scans from there).
        self._retry_tail: dict[str, int] = {}
        self._dlq_since: dict[DeadLetter, int] = {}
        self._latency_task: asyncio.Task[None] | None = None
        self._redrive_lock = asyncio.Lock()
        self._warned_at: dict[str, float] = {}
        #: group -> last estimated drain time in ms (-1: no estimate), for the gauge.
        self.drain_estimates: dict[str, int] = {}
        #: (group, member) -> (client_id, host) for DescribeShareGroup (volatile,
        #: pruned to the live members at each describe).
        self.member_info: dict[tuple[str, str], tuple[str, str]] = {}
        #: group -> the lock woken fetches take for a round (``_gate``).
        self._gates: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Counters for the metrics (monotonic totals since start).
        self.dead_letters_produced = 0
        self.log_start_lost = 0

    # ------------------------------------------------------------- the records

    def _encode(self, record: ShareRecord) -> tuple[bytes, bytes | None]:
        return encode(record)

    def _decode(self, key: bytes, value: bytes | None) -> ShareRecord:
        return decode(key, value)

    def _snapshot_key(self, record: ShareRecord) -> object | None:
        # A share-partition state record and a parked chunk are each the whole
        # of what they describe (replay installs them, never merges): a later
        # one of the same key supersedes an earlier one in the same append.
        if record.value is not None and isinstance(record.key, (ShareStateKey, ShareParkedKey)):
            return record.key
        return None

    def _build(self, records: list[ShareRecord]) -> ShareCoordinator:
        c = ShareCoordinator.load(records, config=self.config, topics=self.topics())
        log.info(
            "share groups loaded",
            extra={"fields": {"records": len(records), "groups": len(c.list_groups())}},
        )
        return c

    async def start(self) -> None:
        """Create/read ``__share_group_state``, rebuild, re-produce pending dead letters."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._latency_task = loop.create_task(self._latency_loop())

    async def _after_load(self) -> None:
        self.coordinator.on_metadata(self.topics())
        # listed again after a restart: a crash may have left their copies in
        # the dead-letter topic, so they are retried (checked), not first tries
        self._queue_dead_letters(self.coordinator.pending_dead_letters(), retry=True)

    async def stop(self) -> None:
        if self._latency_task is not None:
            self._latency_task.cancel()
            await asyncio.gather(self._latency_task, return_exceptions=True)

    # --------------------------------------------------------- batch hooks

    def _effects(self, reply: Any) -> Sequence[DeadLetter]:
        return _dead_letters_of(reply)

    def _tick_effects(self, tick: ShareTickResult) -> Sequence[DeadLetter]:
        return tick.dead_letters

    def _must_fsync(self, effects: Sequence[Any]) -> bool:
        # A dead-letter decision (an acquisition past the TTL or at the
        # delivery limit, a lock that expired at the limit) is never left
        # to the page cache.
        return bool(effects)

    def _tick_in_batch(self, records: Sequence[ShareRecord]) -> bool:
        # New locks, delays or a first session deadline need the timer
        # (re)armed; a batch that wrote nothing (heartbeats, reads of an idle
        # queue) moved no deadline earlier, so it skips the O(share
        # partitions) tick.
        return bool(records) or self._timer is None

    def _after_batch(self, records: Sequence[ShareRecord], effects: Sequence[Any]) -> None:
        self._queue_dead_letters(effects)
        self._wake(records)

    def _after_tick(self, tick: ShareTickResult) -> None:
        # a delayed record coming due writes nothing: wake every long poll
        self._queue_dead_letters(tick.dead_letters)
        self._wake_all()

    async def on_metadata(self) -> None:
        """Topics were created, deleted or got partitions."""
        if not self._ready or self._rt.stopping:
            return
        async with self._lock:
            self.coordinator.on_metadata(self.topics())

    # -------------------------------------------------------------- wakeups

    def _wake(self, records: Sequence[ShareRecord]) -> None:
        # Only when a fetch could now take something: a batch whose records
        # only took records (acquisitions) makes none available, and waking
        # every parked fetch for it cost a read and an acquisition each.
        now = now_ms()
        for gid in {r.key.group_id for r in records}:
            if self.coordinator.has_work(gid, now_ms=now, log_end=self._log_end):
                self._rt.waiters.wake(group_key(gid))

    def _log_end(self, topic: str, partition: int) -> int:
        try:
            return self._store.high_watermark(topic, partition)
        except LogStoreError:
            return 0  # deleted meanwhile: nothing to read

    def _gate(self, group_id: str) -> asyncio.Lock:
        """The lock a woken fetch of ``group_id`` holds for its round (see
        :meth:`fetch_acking`); kept while some fetch holds a reference."""
        gate = self._gates.get(group_id)
        if gate is None:
            gate = self._gates[group_id] = asyncio.Lock()
        return gate

    def _wake_all(self) -> None:
        for gid in self.coordinator.list_groups():
            self._rt.waiters.wake(group_key(gid))

    # --------------------------------------------------------------- fetch

    def _read_blocking(
        self,
        plans: tuple[PartitionRead, ...],
        max_bytes: int,
        ordering: bool,
        max_records: int | None,
        cached_only: bool = False,
    ) -> tuple[list[_Read], list[tuple[str, int, int]]] | None:
        """Read each planned partition (bounded by ``max_bytes`` in total, its
        window room and, unless ``max_records`` is None, ``max_records``
        offsets) and build its candidates with numpy; also report partitions
        whose log start passed the plan's offset.

        The offset bound is what keeps a fetch's cost at its size: without
        it a backlog of 1-record batches was read up to ``max_bytes`` (4 MiB,
        ~23,000 frames checked, indexed and sent back, 250-550 ms a fetch)
        to acquire 500. A fetch can acquire at most ``max_records``, so more
        new offsets would only be read again for a later reply.

        ``cached_only``: every read must be answered by the store's cut-frame
        cache (``Store.read_cached``, no I/O), else None: the event loop
        tries this first and goes to the I/O pool only when it fails (19 of
        the 20 fetches that take a 10,000-record batch 500 at a time hit;
        a pool round trip each was most of what was left of their read)."""
        out: list[_Read] = []
        moved: list[tuple[str, int, int]] = []
        budget = max_bytes
        for plan in plans:
            if budget <= 0:
                break
            try:
                log_start, _ = self._store.offsets(plan.topic, plan.partition)
                hw = self._store.high_watermark(plan.topic, plan.partition)
            except LogStoreError:
                continue  # deleted meanwhile
            start = plan.start_offset
            if start is None:
                start = log_start if plan.auto_offset_reset == "earliest" else hw
            elif start < log_start:
                moved.append((plan.topic, plan.partition, log_start))
                continue  # on_log_start first; the next round reads it
            if start >= hw:
                continue
            room_end = start + plan.max_offsets
            stop = room_end if max_records is None else start + min(plan.max_offsets, max_records)
            try:
                if cached_only:
                    hit = self._store.read_cached(plan.topic, plan.partition, start, stop)
                    if hit is None:
                        return None
                    result = hit
                else:
                    result = self._store.read_frames(
                        plan.topic, plan.partition, start, budget, stop
                    )
            except OffsetOutOfRangeError:
                moved.append((plan.topic, plan.partition, log_start))
                continue
            if not result.data:
                continue
            budget -= len(result.data)
            index = _indexed(result)
            cut = stop < room_end and result.next_offset < min(hw, room_end)
            out.append(
                _Read(
                    plan,
                    start,
                    result,
                    _candidates(index, start, plan, ordering, result.memo),
                    index,
                    cut,
                )
            )
        return out, moved

    def _frames_blocking(
        self,
        acquired: Sequence[AcquiredRange],
        reads: dict[tuple[str, int], _Read],
        no_io: bool = False,
    ) -> tuple[list[PartitionFrames], list[tuple[str, int, int]], list[AcquiredRange]] | None:
        """Stored frames covering every acquired range, per partition (reusing
        what the fetch already read when it covers them). Ranges below the log
        start (retention or DeleteRecords removed them after they entered the
        window) are cut off the reply and their partitions reported, for
        ``on_log_start``. Ranges past the reply's byte budget
        (``fetch_max_bytes``, so the reply fits gRPC's send limit) are cut
        too and returned as undelivered: the caller releases them at once
        (``undeliver``: their delivery count as before, the attempt not counted).

        ``no_io``: None instead of reading the log (the event loop's try:
        the fetch's own read covers the acquired ranges nearly always)."""
        budget = self._rt.config.fetch_max_bytes
        undelivered: list[AcquiredRange] = []
        by_tp: dict[tuple[str, int], list[AcquiredRange]] = {}
        for r in acquired:
            by_tp.setdefault((r.topic, r.partition), []).append(r)
        out: list[PartitionFrames] = []
        moved: list[tuple[str, int, int]] = []
        for (topic, partition), all_ranges in by_tp.items():
            try:
                log_start, _ = self._store.offsets(topic, partition)
            except LogStoreError:
                continue
            ranges = [
                r if r.first_offset >= log_start else replace(r, first_offset=log_start)
                for r in all_ranges
                if r.last_offset >= log_start
            ]
            if len(ranges) != len(all_ranges) or any(
                r.first_offset < log_start for r in all_ranges
            ):
                moved.append((topic, partition, log_start))
            if not ranges:
                continue
            ranges.sort(key=lambda r: r.first_offset)
            lo, hi = ranges[0].first_offset, max(r.last_offset for r in ranges)
            rd = reads.get((topic, partition))
            chunks: list[bytes] = []
            pos = lo
            if (
                rd is not None
                and rd.result is not None
                and rd.index is not None
                and rd.start <= lo
                and rd.result.next_offset > lo
            ):
                # Only the frames that hold acquired offsets: the read may go
                # past the last one (delayed records, keys in flight).
                chunk, pos = _frames_between(rd.index, lo, hi)
                chunks.append(chunk)
            # Redelivered ranges below what was read: read them (bounded by
            # the ranges, which are bounded by max_inflight_records, and by
            # the reply's byte budget).
            budget -= sum(len(c) for c in chunks)
            while pos <= hi and budget > 0:
                if no_io:
                    return None
                try:
                    res = self._store.read_frames(
                        topic, partition, pos, min(budget, DEFAULT_SHARE_FETCH_BYTES), hi + 1
                    )
                except LogStoreError:
                    break
                if not res.data or res.next_offset <= pos:
                    break
                chunks.append(res.data)
                budget -= len(res.data)
                pos = res.next_offset
            if pos <= hi:  # not covered: cut from the reply, released by the caller
                kept = []
                for r in ranges:
                    if r.first_offset >= pos:
                        undelivered.append(r)
                    elif r.last_offset >= pos:
                        kept.append(replace(r, last_offset=pos - 1))
                        undelivered.append(replace(r, first_offset=pos))
                    else:
                        kept.append(r)
                ranges = kept
            if ranges:
                records = b"".join(chunks)
                memo = (
                    rd.result.memo
                    if rd is not None and rd.result is not None and records is rd.result.data
                    else None
                )
                out.append(PartitionFrames(topic, partition, records, tuple(ranges), memo))
        return out, moved, undelivered

    async def fetch(
        self,
        group_id: str,
        member_id: str,
        *,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        on_park: Callable[[], None],
    ) -> list[PartitionFrames]:
        """:meth:`fetch_acking` without acknowledgements."""
        _, frames = await self.fetch_acking(
            group_id,
            member_id,
            (),
            max_records=max_records,
            max_bytes=max_bytes,
            wait_ms=wait_ms,
            on_park=on_park,
        )
        return frames

    async def fetch_acking(
        self,
        group_id: str,
        member_id: str,
        acks: Sequence[Ack],
        *,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        on_park: Callable[[], None],
    ) -> tuple[AckReply | None, list[PartitionFrames]]:
        """Apply a ShareFetch's piggybacked ``acks`` and plan, read, acquire;
        long-poll up to ``wait_ms`` when nothing was acquired.

        The acknowledgements and the first acquisition are ONE runtime call
        (:meth:`StateRuntime.call_steps`: acknowledge, then acquire, one
        batch, **one fsync** covering both): the acks are durable before the
        reply that confirms them, as before, but a fetch no longer waits on
        two batches and two fsyncs. An acquisition-only call (no acks, or a
        later round of the loop) is not fsynced in page-cache mode. The plan
        and the read precede the acks, so the window room the acks free is
        used by the next fetch (or the next round of this one: the acks'
        records wake the group's waiters); ``None`` is the ack reply when
        there were no acks.

        Each partition is read for at most ``max_records`` new offsets; when
        that acquired nothing although a read stopped at the bound (its
        records delayed or their keys in flight), the windows' whole room is
        read once more before waiting, so due records further on are not
        left for the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        waiters = self._rt.waiters
        parked = retried = whole_room = woken = False
        gw = waiters.register(group_key(group_id))
        extra: dict[tuple[str, int], Any] = {}
        pending_acks: Sequence[Ack] = tuple(acks)
        ack_reply: AckReply | None = None
        gate: asyncio.Lock | None = None
        try:
            while True:
                if woken and gate is None:
                    # Woken fetches of a group take their rounds one at a
                    # time: an append or an ack wakes every parked fetch,
                    # and each woken one plans after the one before took
                    # its records, so the rest find nothing to do in a
                    # coordinator read (``has_work``) instead of each
                    # reading the log and running an acquisition for
                    # nothing. (At 1,000 appends/s and 8 parked workers
                    # those empty rounds were the CPU that backed the W8
                    # latency run up.)
                    gate = self._gate(group_id)
                    await gate.acquire()
                gw.clear()
                for w in extra.values():
                    w.clear()
                freed = _accepted_per_partition(pending_acks)
                plans, ordering, work = await self.read(
                    partial(self._plan, group_id, member_id, freed, woken)
                )
                for p in plans:
                    key = (p.topic, p.partition)
                    if key not in extra:
                        extra[key] = waiters.register(key)
                if work or pending_acks:
                    args = (plans, max_bytes, ordering, None if whole_room else max_records)
                    got = self._read_blocking(*args, cached_only=True)
                    if got is None:
                        got = await self._rt.run_io(self._read_blocking, *args)
                    assert got is not None
                    reads, moved = got
                    for topic, partition, start in moved:
                        await self.log_start_moved(topic, partition, start)
                    cands = {
                        (r.plan.topic, r.plan.partition): r.candidates
                        for r in reads
                        if r.candidates is not None
                    }
                    acquire = partial(_acquire, group_id, member_id, max_records, cands)
                    acq: Acquisition
                    if pending_acks:
                        ack_reply, acq = await self.call_steps(
                            partial(_acknowledge, group_id, member_id, pending_acks), acquire
                        )  # fsynced: the acks are confirmed in the reply
                        pending_acks = ()
                    else:
                        acq = await self.call(acquire, fsync=self.fsync_acquisitions)
                    if acq.acquired:
                        by = {(r.plan.topic, r.plan.partition): r for r in reads}
                        made = self._frames_blocking(acq.acquired, by, no_io=True)
                        if made is None:
                            made = await self._rt.run_io(self._frames_blocking, acq.acquired, by)
                        assert made is not None
                        frames, gone, undelivered = made
                        if undelivered:  # not sent: not a delivery attempt
                            await self.call(partial(_undeliver, group_id, member_id, undelivered))
                        for topic, partition, start in gone:
                            await self.log_start_moved(topic, partition, start)
                        if frames:
                            return ack_reply, frames  # (the next woken fetch goes now)
                        moved += gone
                    if moved and not retried:
                        retried = True  # read again past the new log start, once
                        continue
                    if not whole_room and any(r.cut for r in reads):
                        whole_room = True  # see the docstring; once per wakeup
                        continue
                whole_room = False
                remaining = deadline - loop.time()
                if remaining <= 0 or self._rt.stopping:
                    return ack_reply, []
                if not parked:
                    on_park()
                    parked = True
                if gate is not None:
                    gate.release()
                    gate = None
                await _wait_any([gw, *extra.values()], remaining)
                woken = True
        finally:
            if gate is not None:
                gate.release()
            waiters.unregister(gw)
            for w in extra.values():
                waiters.unregister(w)

    def _plan(
        self,
        group_id: str,
        member_id: str,
        freed: dict[tuple[str, int], int],
        woken: bool,
        c: ShareCoordinator,
    ) -> tuple[tuple[PartitionRead, ...], bool, bool]:
        """A fetch round's plan, whether the group keys records, and whether
        the round has anything to do (a woken round checks ``has_work``)."""
        now = now_ms()
        return (
            c.fetch_plan(group_id, member_id, now_ms=now, freed=freed),
            c.group_config(group_id).ordering_keys,
            not woken or c.has_work(group_id, now_ms=now, log_end=self._log_end),
        )

    # ------------------------------------------------------------- log start

    async def log_start_moved(self, topic: str, partition: int, log_start: int) -> int:
        """``on_log_start``: drop what retention removed; WARN with the count lost."""
        lost: int = await self.call(lambda c, _now: c.on_log_start(topic, partition, log_start))
        if lost:
            self.log_start_lost += lost
            log.warning(
                "share-group records removed by retention before they were finished",
                extra={
                    "fields": {
                        "topic": topic,
                        "partition": partition,
                        "log_start_offset": log_start,
                        "lost": lost,
                    }
                },
            )
        return lost

    async def check_log_starts(self) -> None:
        """Every share partition whose log start passed its start offset."""
        if not self._ready:
            return

        def behind(c: ShareCoordinator) -> list[tuple[str, int, int]]:
            out: list[tuple[str, int, int]] = []
            for gid in c.list_groups():
                for pc in c.describe(gid, now_ms=now_ms()).partitions:
                    try:
                        start, _ = self._store.offsets(pc.topic, pc.partition)
                    except LogStoreError:
                        continue
                    if start > pc.spso:
                        out.append((pc.topic, pc.partition, start))
            return sorted(set(out))

        for topic, partition, start in await self.read(behind):
            await self.log_start_moved(topic, partition, start)

    # -------------------------------------------------------- dead letters

    def _queue_dead_letters(self, dls: Iterable[DeadLetter], *, retry: bool = False) -> None:
        for dl in dls:
            self._dlq.append((dl, retry))
            if retry:
                t = dl.dead_letter_topic
                self._retry_tail[t] = self._retry_tail.get(t, 0) + _size(dl)
        if self._dlq and not self._dlq_running and not self._rt.stopping:
            self._dlq_running = True
            self._rt.spawn(self._produce_dead_letters())

    async def _produce_dead_letters(self) -> None:
        try:
            while self._dlq and not self._rt.stopping:
                dl, retry = self._dlq.popleft()
                tail = self._retry_tail.get(dl.dead_letter_topic, 0) if retry else None
                try:
                    created = await self._rt.run_io(self._dead_letter_blocking, dl, tail)
                    if created:  # other coordinators learn of the new topic
                        await self._rt.topics_changed()
                    await self.call(partial(_confirm, dl))
                    self._dlq_since.pop(dl, None)
                except GroupIdNotFoundError:
                    self._dlq_since.pop(dl, None)
                    continue  # deleted meanwhile
                except Exception as exc:
                    # Retried at the next start (pending_dead_letters) or the next
                    # batch that lists it; the records stay out of delivery.
                    log.error(
                        "producing dead letters of %s to %s failed: %s",
                        dl.group_id,
                        dl.dead_letter_topic,
                        exc,
                    )
                    await asyncio.sleep(1.0)
                    self._queue_dead_letters([dl], retry=True)  # its copies may be there
        finally:
            self._dlq_running = False

    def _dead_letter_blocking(self, dl: DeadLetter, retry_tail: int | None = None) -> bool:
        """Append the records of ``dl`` to its dead-letter topic (fsynced);
        True if it created the topic. A retried dead letter (``retry_tail``:
        the records of the retried ones for that topic) first reads the
        topic's tail and skips the copies already there (``_share_dlq``:
        exactly once)."""
        store = self._store
        created = False
        try:
            store.create_topic(dl.dead_letter_topic, DEAD_LETTER_PARTITIONS)
            created = True
            log.info(
                "created dead-letter topic",
                extra={"fields": {"topic": dl.dead_letter_topic, "group": dl.group_id}},
            )
        except TopicExistsError:
            pass
        base = [
            (H_GROUP, dl.group_id.encode()),
            (H_TOPIC, dl.topic.encode()),
            (H_PARTITION, str(dl.partition).encode()),
            (H_COUNT, str(dl.delivery_count).encode()),
            (H_REASON, REASON_NAMES.get(dl.reason, b"REJECTED")),
            (H_ERROR, dl.error.encode()),
            (H_FIRST, str(dl.first_delivery_ms).encode()),
            (H_LAST, str(dl.last_delivery_ms).encode()),
        ]
        out: list[Record] = []
        pos = dl.first_offset
        try:
            while pos <= dl.last_offset:
                batch = store.read(dl.topic, dl.partition, pos, LOAD_READ_BYTES)
                if not batch:
                    break
                for r in batch:
                    if r.offset < pos or r.offset > dl.last_offset:
                        continue
                    headers = [(n, v) for n, v in r.headers if n not in DLQ_HEADERS]
                    headers += [*base, (H_OFFSET, str(r.offset).encode())]
                    out.append(Record(r.value, r.key, headers, r.timestamp_ms))
                pos = batch[-1].offset + 1
        except (OffsetOutOfRangeError, UnknownTopicError):
            pass  # the source is gone (retention, deleted topic): nothing to move
        since = self._dlq_since.get(dl)
        if out and (retry_tail is not None or since is not None) and not created:
            there = already_dead_lettered(store, dl, retry_tail or 0, since=since)
            if there:
                log.info(
                    "dead letters already in the dead-letter topic, not appended again",
                    extra={"fields": {"topic": dl.dead_letter_topic, "records": len(there)}},
                )
                out = [
                    r for r, off in zip(out, _source_offsets(out), strict=True) if off not in there
                ]
        if not out:
            return created
        if since is None:
            self._dlq_since[dl] = store.high_watermark(dl.dead_letter_topic, 0)
        end = 0
        for i in range(0, len(out), 1000):
            part = out[i : i + 1000]
            end = store.append(dl.dead_letter_topic, 0, part) + len(part)
        store.sync_to(dl.dead_letter_topic, 0, end).result()
        self.dead_letters_produced += len(out)
        return created

    # -------------------------------------------------------------- redrive

    async def redrive(self, group_id: str, to_topic: str, max_records: int) -> tuple[int, int]:
        """Move up to ``max_records`` (0: all, at most ``MAX_REDRIVE_RECORDS``)
        dead letters of ``group_id`` past its redrive position back to their
        source partition (or ``to_topic``); returns (moved, still waiting).

        Exactly once, across a crash too: for each slice of at most
        ``_REDRIVE_SLICE`` records an intent record (the slice's end and each
        target partition's log end offset) is fsynced to
        ``__share_group_state`` before the first append, and a done record
        (the new position) after the last one. A redrive that finds an
        intent (the broker died in between) first finishes it: it reads each
        target from the offset in the intent, collects the
        ``logstore-redrive-from`` headers already there and appends only the
        records not among them. One redrive at a time per broker."""
        limit = min(max_records or MAX_REDRIVE_RECORDS, MAX_REDRIVE_RECORDS)
        async with self._redrive_lock:
            state, dlq = await self.read(
                lambda c: (
                    c.redrive_state(group_id),
                    c.group_config(group_id).dead_letter_topic_for(group_id),
                )
            )
            if to_topic:
                self._store.topic(to_topic)  # UnknownTopicError: NOT_FOUND before anything
                check_writable(to_topic)
            moved = 0
            if state.intent_end >= 0:
                moved += await self._rt.run_io(self._redrive_slice_blocking, dlq, state, True)
                await self.call(partial(_redrive_done, group_id, state.intent_end))
            while moved < limit:
                state = await self.read(lambda c: c.redrive_state(group_id))
                plan = await self._rt.run_io(
                    self._redrive_plan_blocking, dlq, state.position, to_topic, limit - moved
                )
                if plan is None:
                    break
                end, targets = plan
                await self.call(partial(_redrive_intent, group_id, end, to_topic, targets))
                state = await self.read(lambda c: c.redrive_state(group_id))
                moved += await self._rt.run_io(self._redrive_slice_blocking, dlq, state, False)
                await self.call(partial(_redrive_done, group_id, end))
            state = await self.read(lambda c: c.redrive_state(group_id))
            try:
                remaining = max(0, self._store.high_watermark(dlq, 0) - state.position)
            except LogStoreError:
                remaining = 0
            if moved:
                log.info(
                    "dead letters redriven",
                    extra={
                        "fields": {"group": group_id, "moved": moved, "to": to_topic or "source"}
                    },
                )
            return moved, remaining

    def _dead_letters_from(self, dlq: str, start: int, end: int | None, n: int) -> list[Record]:
        """Records of ``dlq`` partition 0 in ``[start, end)``, at most ``n``."""
        out: list[Record] = []
        try:
            log_start, _ = self._store.offsets(dlq, 0)
            hw = self._store.high_watermark(dlq, 0)
        except LogStoreError:
            return out  # no dead-letter topic yet
        pos = max(start, log_start)
        stop = hw if end is None else min(end, hw)
        while pos < stop and len(out) < n:
            batch = self._store.read(dlq, 0, pos, LOAD_READ_BYTES)
            if not batch:
                break
            out += [r for r in batch if pos <= r.offset < stop][: n - len(out)]
            pos = batch[-1].offset + 1
        return out

    def _target_of(self, r: Record, to_topic: str) -> tuple[str, int]:
        h = dict(r.headers)
        if to_topic:
            return to_topic, 0
        topic = h.get(H_TOPIC, b"").decode(errors="replace")
        part = int(h.get(H_PARTITION, b"0") or 0)
        count = self._store.topic(topic).partitions
        return topic, part if part < count else 0

    def _redrive_plan_blocking(
        self, dlq: str, position: int, to_topic: str, n: int
    ) -> tuple[int, list[tuple[str, int, int]]] | None:
        recs = self._dead_letters_from(dlq, position, None, min(n, _REDRIVE_SLICE))
        if not recs:
            return None
        targets = set()
        for r in recs:
            try:
                targets.add(self._target_of(r, to_topic))
            except LogStoreError:
                continue  # its source topic is gone: skipped (counted as moved nowhere)
        return recs[-1].offset + 1, [(t, p, self._store.high_watermark(t, p)) for t, p in targets]

    def _redrive_slice_blocking(self, dlq: str, state: ShareRedriveValue, recovering: bool) -> int:
        """Append the dead letters of ``state``'s intent to their targets,
        skipping (when ``recovering``) those a target already has."""
        recs = self._dead_letters_from(
            dlq, state.position, state.intent_end, state.intent_end - state.position
        )
        done: set[bytes] = set()
        if recovering:
            for t, p, since in state.targets:
                try:
                    hw = self._store.high_watermark(t, p)
                    pos = since
                    while pos < hw:
                        batch = self._store.read(t, p, pos, LOAD_READ_BYTES)
                        if not batch:
                            break
                        for r in batch:
                            for name, value in r.headers:
                                if name == H_REDRIVE:
                                    done.add(value)
                        pos = batch[-1].offset + 1
                except LogStoreError:
                    continue
        by_target: dict[tuple[str, int], list[Record]] = {}
        allowed = {(t, p) for t, p, _ in state.targets}
        for r in recs:
            origin = f"{dlq}/0/{r.offset}".encode()
            if origin in done:
                continue
            try:
                target = self._target_of(r, state.to_topic)
            except LogStoreError:
                continue
            if target not in allowed:
                continue  # a partition count changed since the intent: not ours to guess
            headers = [(n, v) for n, v in r.headers if n not in DLQ_HEADERS and n != H_REDRIVE]
            headers.append((H_REDRIVE, origin))
            by_target.setdefault(target, []).append(Record(r.value, r.key, headers, r.timestamp_ms))
        moved = 0
        for (t, p), out in sorted(by_target.items()):
            end = 0
            for i in range(0, len(out), 1000):
                part = out[i : i + 1000]
                end = self._store.append(t, p, part) + len(part)
            self._store.sync_to(t, p, end).result()
            moved += len(out)
        return moved

    # --------------------------------------------------------- back pressure

    async def _latency_loop(self) -> None:
        ticks = 0
        while not self._rt.stopping:
            await asyncio.sleep(LATENCY_EVAL_MS / 1000)
            ticks += 1
            try:
                await self.evaluate_latency()
                if ticks % max(1, self._rt.config.maintain_interval_ms // LATENCY_EVAL_MS) == 0:
                    await self.check_log_starts()
            except Exception as exc:
                log.error("share back-pressure evaluation failed: %s", exc, exc_info=exc)

    async def evaluate_latency(self) -> None:
        """Recompute each bounded group's drain estimate and the produce refusals."""
        if not self._ready:
            return
        rows = await self.read(self._latency_rows)
        refusals: dict[str, LogStoreError] = {}
        estimates: dict[str, int] = {}
        for gid, bound, topics, backlog, rate in rows:
            if backlog == 0:
                drain = 0
            elif rate <= 0:
                drain = -1  # no estimate (module docstring)
            else:
                drain = int(backlog / rate * 1000)
            estimates[gid] = drain
            if bound is None or drain < 0:
                continue
            if drain >= LATENCY_WARN_FRACTION * bound:
                t = time.monotonic()
                if t - self._warned_at.get(gid, -1e9) >= _LATENCY_WARN_EVERY_S:
                    self._warned_at[gid] = t
                    log.warning(
                        "share group queue latency near its bound",
                        extra={
                            "fields": {
                                "group": gid,
                                "estimated_drain_ms": drain,
                                "max_queue_latency_ms": bound,
                                "backlog": backlog,
                                "ack_rate_per_s": round(rate, 1),
                            }
                        },
                    )
            if drain > bound:
                retry = max(100, min(_MAX_RETRY_AFTER_MS, drain - bound))
                err = QueueLatencyExceededError(
                    f"share group {gid} would take ~{drain} ms to drain its backlog of "
                    f"{backlog} records at {rate:.1f} acks/s; its max_queue_latency_ms is "
                    f"{bound}; retry in {retry} ms",
                    retry_after_ms=retry,
                )
                for t_ in topics:
                    refusals.setdefault(t_, err)
        self.drain_estimates = estimates
        self._rt.produce_refusals = refusals

    def _latency_rows(
        self, c: ShareCoordinator
    ) -> list[tuple[str, int | None, set[str], int, float]]:
        out: list[tuple[str, int | None, set[str], int, float]] = []
        topics = self.topics()
        live: set[tuple[str, str]] = set()
        for gid in c.list_groups():
            d = c.describe(gid, now_ms=now_ms())
            live |= {(gid, m.consumer_id) for m in d.consumers}
            names = set(d.config.topic_priorities) | {t for m in d.consumers for t in m.topics}
            names |= {pc.topic for pc in d.partitions}
            # in the window: what is not finished; past it: the log not read yet
            pcs = {(pc.topic, pc.partition): pc for pc in d.partitions}
            backlog = 0
            for t in names:
                for p in range(topics.get(t, 0)):
                    try:
                        start, _ = self._store.offsets(t, p)
                        hw = self._store.high_watermark(t, p)
                    except LogStoreError:
                        continue
                    pc = pcs.get((t, p))
                    if pc is None:
                        backlog += max(0, hw - start)
                    else:
                        backlog += pc.available + pc.delayed + pc.acquired
                        backlog += max(0, hw - max(start, pc.speo))
            out.append(
                (
                    gid,
                    d.config.max_queue_latency_ms,
                    {t for t in names if t in topics},
                    backlog,
                    d.ack_rate_per_s,
                )
            )
        # members that left or timed out (bounded by the live members, each second)
        for key in [k for k in self.member_info if k not in live]:
            del self.member_info[key]
        return out


def _frames_between(index: FetchedFrames, lo: int, hi: int) -> tuple[bytes, int]:
    """The bytes of the indexed frames that hold offsets in ``[lo, hi]`` and
    the offset after the last of them (two bisections, no loop)."""
    frames, data = index.frames, index.buf
    i = bisect.bisect_left(frames, lo, key=lambda f: f[1].last_offset)
    j = bisect.bisect_right(frames, hi, key=lambda f: f[1].base_offset)
    if j <= i:
        return b"", lo
    end = frames[j][0] if j < len(frames) else len(data)
    return data[frames[i][0] : end], frames[j - 1][1].next_offset


def _indexed(result: FetchResult) -> FetchedFrames:
    """``stored_frames`` of a read, kept in the storage memo of a cached frame
    (a share fetch reads the same 10,000-record batch ~20 times)."""
    memo = result.memo
    if memo is None:
        return stored_frames(result.data)
    index = memo.get(_INDEX)
    if not isinstance(index, FetchedFrames):
        index = memo[_INDEX] = stored_frames(result.data)
    return index


def _no_deliver_at(index: FetchedFrames, memo: dict[object, object] | None) -> bool:
    """No ``logstore-deliver-at-ms`` in the bytes (one substring search, kept
    in the memo of a cached frame: 944 KB a fetch otherwise)."""
    if memo is None:
        return _DELIVER_AT_NAME not in index.buf
    v = memo.get(_NO_DELIVER_AT)
    if not isinstance(v, bool):
        v = memo[_NO_DELIVER_AT] = _DELIVER_AT_NAME not in index.buf
    return v


def _candidates(
    index: FetchedFrames,
    start: int,
    plan: PartitionRead,
    ordering: bool,
    memo: dict[object, object] | None = None,
) -> Candidates:
    """The candidates of stored frames read from ``start``.

    Fast path (no per-record work at all): with ordering keys off, no
    format-2 frame (no gaps inside a batch), no compressed frame (its headers
    are not in the stored bytes) and no ``logstore-deliver-at-ms``
    anywhere in the bytes (one C-speed substring search), every offset of
    each batch is a candidate with the batch's max timestamp
    (``Candidates.from_ranges``; a TTL then counts from the batch's newest
    record, so it never dead-letters a record early). Otherwise
    ``share_metadata``'s numpy columns (per-record timestamps, deliver-at,
    key hashes)."""
    heads = [h for _, h in index.frames if h.next_offset > start]
    if (
        heads
        and not ordering
        and not any(h.has_offset_deltas for h in heads)
        # a compressed batch hides its headers from the substring search
        and not any(h.codec for h in heads)
        and _no_deliver_at(index, memo)
    ):
        return Candidates.from_ranges(
            start,
            heads[-1].next_offset,
            [max(h.base_offset, start) for h in heads],
            [h.last_offset for h in heads],
            [h.max_timestamp_ms for h in heads],
        )
    meta = share_metadata(
        index, start, want_keys=ordering, want_delays=True, max_records=plan.max_offsets
    )
    return Candidates(
        meta.start_offset,
        meta.end_offset,
        meta.offsets,
        meta.timestamps,
        meta.deliver_at if bool(np.any(meta.deliver_at)) else None,
        meta.key_hash if ordering else None,
    )


def _accepted_per_partition(acks: Sequence[Ack]) -> dict[tuple[str, int], int]:
    """Offsets per partition that ``acks`` ACCEPT (at most what they can
    finish: the room they can free, ``ShareCoordinator.fetch_plan``)."""
    out: dict[tuple[str, int], int] = {}
    for a in acks:
        if a.kind is AckKind.ACCEPT and a.last_offset >= a.first_offset:
            key = (a.topic, a.partition)
            out[key] = out.get(key, 0) + a.last_offset - a.first_offset + 1
    return out


async def _wait_any(waiters: Sequence[Any], timeout_s: float) -> None:
    tasks = [asyncio.ensure_future(w.wait()) for w in waiters]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _acquire(
    group_id: str,
    member_id: str,
    max_records: int,
    cands: dict[tuple[str, int], Candidates],
    c: ShareCoordinator,
    now: int,
) -> Result[Acquisition]:
    return c.acquire(group_id, member_id, max_records=max_records, now_ms=now, candidates=cands)


def _acknowledge(
    group_id: str, member_id: str, acks: Sequence[Ack], c: ShareCoordinator, now: int
) -> Result[AckReply]:
    return c.acknowledge(group_id, member_id, acks, now_ms=now)


def _undeliver(
    group_id: str, member_id: str, ranges: list[AcquiredRange], c: ShareCoordinator, now: int
) -> Result[int]:
    return c.undeliver(group_id, member_id, ranges, now_ms=now)


def _size(dl: DeadLetter) -> int:
    return dl.last_offset - dl.first_offset + 1


def _source_offsets(records: list[Record]) -> list[int]:
    """The ``logstore-dlq-source-offset`` of each dead-letter copy (the last header)."""
    return [int(r.headers[-1][1]) for r in records]


def _redrive_intent(
    group_id: str,
    end: int,
    to_topic: str,
    targets: list[tuple[str, int, int]],
    c: ShareCoordinator,
    _now: int,
) -> Result[None]:
    return c.redrive_intent(group_id, end, to_topic, targets)


def _redrive_done(group_id: str, end: int, c: ShareCoordinator, _now: int) -> Result[None]:
    return c.redrive_done(group_id, end)


def _confirm(d: DeadLetter, c: ShareCoordinator, _now: int) -> Result[int]:
    return c.dead_lettered(d.group_id, d.topic, d.partition, d.first_offset, d.last_offset)


def _dead_letters_of(reply: Any) -> tuple[DeadLetter, ...]:
    if isinstance(reply, tuple) and reply and isinstance(reply[0], DeadLetter):
        return reply
    dls = getattr(reply, "dead_letters", ())
    return tuple(dls) if isinstance(dls, tuple) else ()
