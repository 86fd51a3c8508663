"""Batching: records are encoded at ``send()`` into one open batch per partition.

Encoding (the hot path) is :mod:`logstore.wire`'s: a value-only record is
``wire._prefix_of(len(value))`` (cached by length) followed by the value, so
``send()`` appends two references to the open batch's ``parts`` and
``send_many()`` does the same for a whole list with a few C-level ``map``
calls (values all of one length, the common fixed-size case, take one prefix
and arithmetic cut points: no per-record list but the values'); any other
record is ``wire.encode_record``. Nothing is joined until the sender builds
the request.

Batches. One open batch per (topic, partition), closed before its records
plus the stored RecordBatch header (``wire.HEADER_SIZE`` bytes, which count
against ``max_batch_bytes`` on the broker) would exceed min(``batch_bytes``,
the topic's ``max_batch_bytes``) *as sent*: with compression, a batch is
closed at its estimated compressed size (Kafka's approach), i.e. once its
records pass ``limit`` = that room / (the topic's estimated compression
ratio x 1.05), never fewer than the room itself (a batch that does not shrink
is sent plain, so it always fits) and never more than the broker's
decompression bound. The sender updates the estimate from every batch it
compresses (:meth:`TopicState.observe`) and splits the rare batch the
estimate let grow past the room. A single record larger than the room
raises ``InvalidBatchError`` from ``send``. Without a key and a partition,
records stick to one partition until its batch closes, then move on (Kafka's
sticky partitioner); with a key the partition is murmur2(key) like Kafka and
the broker (``logstore.wire.partition_for_key``).

Linger. An open batch becomes sendable ``linger_ms`` after its first record
(at once with 0), but stays open -- taking every record that arrives -- until
the sender takes it, which it does only while its partition has fewer than
``max_in_flight`` batches unacknowledged. So records that arrive while
requests are in flight join the next batch whatever ``linger_ms`` is (as
Kafka's accumulator does), and batches grow with the load instead of queueing
up one tiny request each. What ``linger_ms`` trades: a larger value makes
fewer, fuller requests (less CPU per record on both sides, more throughput
per connection) at the price of up to ``linger_ms`` more latency per record
when the producer is not busy; 0 sends each record as soon as a request slot
is free, and under load batches form anyway from what arrives during the
round trips. A full batch (``batch_bytes``) is sendable at once.

Memory is bounded by ``buffer_bytes`` of records sent and not yet completed,
open batches included (counted as they are appended): a ``send`` that finds
more than that queued blocks up to ``max_block_ms`` (and every open batch is
then sendable at once, so the sender can make room), then raises
DeadlineExceededError. The bound overshoots by at most one record (one
``send_many`` chunk, at most a batch).

The :class:`RecordAccumulator` is the batching half of the ``Producer``
(which subclasses it, so ``send`` costs no extra call). The sender thread
(``_sender``, the other half of this package) shares its ``_lock`` and
``_cond``, reads the per-partition :class:`PartitionQueue` of every partition
with work (``_active``), takes batches with ``_drain_open`` and hands
completed batches back to ``_complete``: package-private, not API.
Thread-safety: all state is guarded by ``_lock`` (``_cond`` is its condition).
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from operator import add
from typing import Final

from logstore import errors
from logstore.wire import (
    HEADER_SIZE,
    MAX_DECOMPRESSED_BYTES,
    VALUE_PREFIX,
    encode_record,
    partition_for_key,
)

from ._batch import ProducerBatch
from ._delay import with_deliver_at
from ._handles import RecordHandle, SendResult

#: Bytes of the stored RecordBatch header that count against max_batch_bytes
#: (the frame's tag and length prefix do not).
BATCH_HEADER_BYTES: Final = HEADER_SIZE

#: len(value) -> the bytes before a value-only record's value (a C method)
_prefix_of: Final = VALUE_PREFIX.__getitem__

TopicMetadata = Callable[[str], tuple[int, int]]


#: Kafka's COMPRESSION_RATE_ESTIMATION_FACTOR: a batch closes when its records
#: times the estimated ratio times this reach the room, so a batch as
#: compressible as the last ones lands ~5% under it rather than just over.
RATIO_ESTIMATION_FACTOR: Final = 1.05
#: The sticky partitioner's own generator: the library never draws from the
#: global ``random`` (an application's seeded sequence stays its own).
_RNG: Final = random.Random()
#: A batch that compressed better than estimated moves the estimate this
#: fraction of the way to what it saw; one that compressed worse sets it to
#: what it saw. (Kafka steps down by 0.005 and up by at least 0.05: with
#: log lines compressing ~10x, 16 KiB batches streamed from a producer were
#: still sent ~61% full after 300 batches; halving the gap settles in ~5
#: and they are sent ~95% full. A too-low estimate costs a split, one more
#: compression, never a refused batch.)
RATIO_IMPROVING_SHARE: Final = 0.5


class TopicState:
    """What the producer knows of one topic: partitions, batch room, open batches,
    and the estimated compression ratio that turns the room into ``limit``."""

    __slots__ = ("learned", "limit", "open", "partitions", "ratio", "room", "sticky")

    def __init__(self, partitions: int, max_batch_bytes: int, batch_bytes: int) -> None:
        self.partitions = partitions
        #: estimated bytes sent / bytes of records of this topic's batches
        #: (1.0 until a compressed batch is seen)
        self.ratio = 1.0
        self.learned = False  # whether a compressed batch has been seen
        self.room = self.limit = 0
        self.set_room(max_batch_bytes, batch_bytes)
        self.open: list[ProducerBatch | None] = [None] * partitions
        self.sticky = _RNG.randrange(partitions)

    def set_room(self, max_batch_bytes: int, batch_bytes: int) -> None:
        # room: bytes of records a batch may hold as sent (compressed, if it is)
        self.room = min(batch_bytes, max_batch_bytes) - BATCH_HEADER_BYTES
        self._set_limit()

    def _set_limit(self) -> None:
        # limit: bytes of (uncompressed) records at which an open batch closes
        estimate = int(self.room / (self.ratio * RATIO_ESTIMATION_FACTOR))
        self.limit = max(self.room, min(estimate, MAX_DECOMPRESSED_BYTES))

    def observe(self, records_bytes: int, sent_bytes: int) -> None:
        """A batch of ``records_bytes`` went out as ``sent_bytes`` (its compressed
        records field, or the records themselves when they did not shrink):
        update the ratio estimate (Kafka's CompressionRatioEstimator, with the
        steps above). Lock held."""
        if records_bytes <= 0:
            return
        seen = sent_bytes / records_bytes
        if not self.learned:
            self.learned = True
            self.ratio = min(seen, 1.0)
        elif seen >= self.ratio:
            self.ratio = min(seen, 1.0)
        else:
            self.ratio = seen + (self.ratio - seen) * (1 - RATIO_IMPROVING_SHARE)
        self._set_limit()


class PartitionQueue:
    """One partition's batches past the open one (lock held for everything).

    ``full``: closed because full, waiting for the sender, oldest first;
    ``unacked``: taken by the sender and not completed, in sequence order
    (in a request, or waiting to be retried); ``in_flight``: how many of those
    are in a request now; ``recovering``: a batch failed retriably (or was
    refused as out of order) and the partition's batches are being resent one
    at a time, in order, before new ones go (see ``_sender``).
    """

    __slots__ = ("full", "in_flight", "meta", "partition", "recovering", "topic", "unacked")

    def __init__(self, meta: TopicState, topic: str, partition: int) -> None:
        self.meta = meta
        self.topic = topic
        self.partition = partition
        self.full: deque[ProducerBatch] = deque()
        self.unacked: deque[ProducerBatch] = deque()
        self.in_flight = 0
        self.recovering = False

    def idle(self) -> bool:
        return self.meta.open[self.partition] is None and not self.full and not self.unacked


class RecordAccumulator:
    """Open batches per partition, the per-partition queues and the buffer bound."""

    def __init__(
        self,
        *,
        topic_metadata: TopicMetadata,
        on_new_topic: Callable[[], None],
        batch_bytes: int,
        linger_ms: int,
        delivery_timeout_ms: int,
        buffer_bytes: int,
        max_block_ms: int,
    ) -> None:
        self._topic_metadata = topic_metadata
        self._on_new_topic = on_new_topic
        self._batch_bytes = batch_bytes
        self._linger_s = linger_ms / 1000
        self._delivery_timeout_ms = delivery_timeout_ms
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self._buffer_bytes = buffer_bytes
        self._max_block_s = max_block_ms / 1000
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._topics: dict[str, TopicState] = {}
        #: every partition that has an open batch, a full one or unacknowledged ones
        self._active: dict[tuple[str, int], PartitionQueue] = {}
        self._queues: dict[tuple[str, int], PartitionQueue] = {}
        self._queued_bytes = 0  # record bytes appended and not yet completed
        self._pending = 0  # batches created and not yet completed
        self._flushing = 0
        self._blocked = 0  # send() calls waiting for buffer room
        #: Set by a compressing producer: compresses a batch now and updates its
        #: topic's estimate (lock held). Called on the first batch closed full for
        #: a topic, so the estimate is known from the second batch on: a burst
        #: (a bulk load of send_many calls) otherwise closes up to buffer_bytes
        #: of batches at the first estimate, 1.0, before the sender learns anything.
        self._compress_now: Callable[[ProducerBatch, TopicState], None] | None = None
        self._closed = False

    address: str  # set by the producer; named in errors

    # -- metadata ------------------------------------------------------------

    def _topic(self, topic: str) -> TopicState:
        meta = self._topics.get(topic)
        if meta is not None:
            return meta
        if self._closed:
            raise errors.StoreClosedError("producer is closed")
        partitions, max_batch = self._topic_metadata(topic)
        self._on_new_topic()
        with self._lock:
            return self._topics.setdefault(
                topic, TopicState(partitions, max_batch, self._batch_bytes)
            )

    def refresh_metadata(self, topic: str | None = None) -> None:
        """Re-read partition counts and batch limits (of ``topic``, or every known one).

        Partitions added since are used from now on (keys then hash over the
        new count, as with Kafka). Called by the sender thread every
        ``metadata_max_age_ms`` and by ``send`` for a partition it does not know.
        """
        for name in [topic] if topic is not None else list(self._topics):
            partitions, max_batch = self._topic_metadata(name)
            with self._lock:
                meta = self._topics.get(name)
                if meta is None:
                    continue
                if partitions > meta.partitions:
                    meta.open.extend([None] * (partitions - meta.partitions))
                    meta.partitions = partitions
                meta.set_room(max_batch, self._batch_bytes)

    def _check_partition(self, topic: str, meta: TopicState, partition: int) -> None:
        if 0 <= partition < meta.partitions:
            return
        if partition >= 0:
            self.refresh_metadata(topic)
            if partition < meta.partitions:
                return
        raise errors.UnknownPartitionError(
            f"topic {topic!r} has partitions 0..{meta.partitions - 1}, not {partition}"
        )

    def partitions_for(self, topic: str) -> int:
        """Number of partitions of ``topic`` (as last learned from the broker)."""
        return self._topic(topic).partitions

    # -- the hot path ------------------------------------------------------

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
        *,
        delay_ms: int | None = None,
        deliver_at_ms: int | None = None,
    ) -> RecordHandle:
        """Queue one record; returns its handle at once (see the module docstring).

        ``delay_ms`` (from now) or ``deliver_at_ms`` (ms since the epoch), not
        both, keep the record from share consumers until then: they add the
        ``logstore-deliver-at-ms`` header (:mod:`._delay` has the bounds; a bad
        value raises InvalidArgumentError and queues nothing).
        """
        if delay_ms is not None or deliver_at_ms is not None:
            headers = with_deliver_at(headers, delay_ms, deliver_at_ms)
        meta = self._topics.get(topic) or self._topic(topic)
        if key is None and headers is None and timestamp_ms is None and value is not None:
            prefix = _prefix_of(len(value))
            size = len(prefix) + len(value)
            explicit_ts = 0
        else:
            prefix = encode_record(value, key, headers, timestamp_ms or 0)
            size = len(prefix)
            value = b""
            explicit_ts = timestamp_ms or 0
        sticky = False
        if partition is None:
            if key is None:
                partition = meta.sticky
                sticky = True
            else:
                partition = partition_for_key(key, meta.partitions)
        elif not 0 <= partition < meta.partitions:
            self._check_partition(topic, meta, partition)
        lock = self._lock
        lock.acquire()  # (cheaper than `with` on this path)
        try:
            batch = meta.open[partition]
            if (
                batch is None
                or batch.size + size > meta.limit
                or self._queued_bytes > self._buffer_bytes
            ):
                batch = self._batch_for(meta, topic, partition, size, sticky)
            parts = batch.parts
            parts.append(prefix)
            parts.append(value)
            batch.size += size
            self._queued_bytes += size
            index = batch.count
            batch.count = index + 1
            if explicit_ts:
                if batch.explicit_count:
                    batch.explicit_min_ts = min(batch.explicit_min_ts, explicit_ts)
                    batch.explicit_max_ts = max(batch.explicit_max_ts, explicit_ts)
                else:
                    batch.explicit_min_ts = batch.explicit_max_ts = explicit_ts
                batch.explicit_count += 1
        finally:
            lock.release()
        return RecordHandle(batch, index)

    def send_many(
        self,
        topic: str,
        values: Sequence[bytes],
        key: bytes | None = None,
        partition: int | None = None,
    ) -> SendResult:
        """Queue value-only records (all with ``key``, if given); one result for all.

        Without key and partition the records fill the sticky partition's batch
        and move on to the next partition each time a batch closes.
        """
        result = SendResult()
        if not values:
            return result
        if key is not None:
            for v in values:
                h = self.send(topic, v, key=key, partition=partition)
                result._add(h._batch, h._index, 1)
            return result
        meta = self._topics.get(topic) or self._topic(topic)
        if partition is not None:
            self._check_partition(topic, meta, partition)
        try:
            lens = list(map(len, values))
        except TypeError:
            for v in values:  # None (tombstones) or odd types: the general path
                h = self.send(topic, v, partition=partition)
                result._add(h._batch, h._index, 1)
            return result
        if lens.count(lens[0]) == len(lens):
            # One size for all (fixed-size payloads): one prefix, and the cut
            # points are arithmetic; no per-record list but the values'.
            return self._send_uniform(meta, topic, values, partition, lens[0], result)
        prefixes = list(map(_prefix_of, lens))
        # cumulative encoded sizes; cut points found by bisection, no per-record loop.
        cum = list(itertools.accumulate(map(add, map(len, prefixes), lens)))
        n = len(values)

        def fit(start: int, room: int) -> tuple[int, int]:
            base = cum[start - 1] if start else 0
            end = bisect.bisect_right(cum, base + room, start, n)
            return end, (cum[end - 1] - base if end > start else cum[start] - base)

        def parts(start: int, end: int) -> list[bytes]:
            chunk: list[bytes] = [b""] * (2 * (end - start))
            chunk[0::2] = prefixes[start:end]
            chunk[1::2] = values[start:end]
            return chunk

        return self._fill(meta, topic, n, partition, result, fit, parts)

    def _send_uniform(
        self,
        meta: TopicState,
        topic: str,
        values: Sequence[bytes],
        partition: int | None,
        length: int,
        result: SendResult,
    ) -> SendResult:
        """``send_many`` of value-only records that are all ``length`` bytes:
        the same batches, cut at the same records, as the general path."""
        prefix = _prefix_of(length)
        rec = len(prefix) + length
        n = len(values)

        def fit(start: int, room: int) -> tuple[int, int]:
            k = max(0, min(n - start, room // rec))
            return start + k, (k * rec if k else rec)

        def parts(start: int, end: int) -> list[bytes]:
            # one piece per run: the prefix is the separator (see _batch)
            return [prefix + prefix.join(values[start:end])]

        return self._fill(meta, topic, n, partition, result, fit, parts)

    def _fill(
        self,
        meta: TopicState,
        topic: str,
        n: int,
        partition: int | None,
        result: SendResult,
        fit: Callable[[int, int], tuple[int, int]],
        parts: Callable[[int, int], list[bytes]],
    ) -> SendResult:
        """Queue records ``0 .. n``: ``fit(start, room)`` is where the run of
        records from ``start`` that fits in ``room`` bytes ends, and its size
        (when none fits: the size of record ``start`` alone); ``parts`` their
        encoded pieces. Each batch takes one run; a full batch is closed and
        the sticky partition moves on."""
        start = 0
        with self._lock:
            while start < n:
                p = meta.sticky if partition is None else partition
                if self._queued_bytes > self._buffer_bytes:
                    self._block_while_full()
                    continue  # batches may have moved while we waited
                batch = meta.open[p]
                if batch is None:
                    _, first = fit(start, 0)
                    if first > meta.room:
                        self._raise_too_large(meta, first)
                    batch = self._new_batch(meta, topic, p)
                end, size = fit(start, meta.limit - batch.size)
                if end == start:  # the next record does not fit: close, go on
                    self._close(meta, topic, p)
                    continue
                k = end - start
                batch.parts += parts(start, end)
                batch.size += size
                self._queued_bytes += size
                result._add(batch, batch.count, k)
                batch.count += k
                start = end
                if start < n:  # the batch is full: close it; sticky moves on
                    self._close(meta, topic, p)
        return result

    def _raise_too_large(self, meta: TopicState, size: int) -> None:
        raise errors.InvalidBatchError(
            f"record of {size} bytes cannot fit in a batch of at most "
            f"{meta.room + BATCH_HEADER_BYTES} bytes (batch_bytes / max_batch_bytes)"
        )

    def _batch_for(
        self, meta: TopicState, topic: str, partition: int, size: int, sticky: bool
    ) -> ProducerBatch:
        """An open batch with room for ``size`` bytes (sticky: on the sticky
        partition, which moves each time its batch closes). Lock held."""
        if size > meta.room:
            self._raise_too_large(meta, size)
        while True:
            if self._queued_bytes > self._buffer_bytes:
                self._block_while_full()
                continue  # batches may have moved while we waited
            p = meta.sticky if sticky else partition
            batch = meta.open[p]
            if batch is None:
                return self._new_batch(meta, topic, p)
            if batch.size + size <= meta.limit:
                return batch
            self._close(meta, topic, p)

    def _new_batch(self, meta: TopicState, topic: str, partition: int) -> ProducerBatch:
        """Open a batch on a partition that has none. Lock held."""
        if self._closed:
            raise errors.StoreClosedError("producer is closed")
        assert meta.open[partition] is None
        batch = ProducerBatch(topic, partition, self._delivery_timeout_s)
        meta.open[partition] = batch
        tp = (topic, partition)
        q = self._queues.get(tp)
        if q is None or q.meta is not meta:
            q = self._queues[tp] = PartitionQueue(meta, topic, partition)
        self._active[tp] = q
        self._pending += 1
        self._cond.notify_all()
        return batch

    def _take_open(self, meta: TopicState, partition: int) -> ProducerBatch:
        """Detach the partition's open batch (the sticky partition moves on). Lock held."""
        batch = meta.open[partition]
        assert batch is not None
        meta.open[partition] = None
        if partition == meta.sticky and meta.partitions > 1:
            nxt = _RNG.randrange(meta.partitions - 1)
            meta.sticky = nxt if nxt < partition else nxt + 1
        return batch

    def _close(self, meta: TopicState, topic: str, partition: int) -> None:
        """The partition's open batch is full: queue it for the sender. Lock held."""
        batch = self._take_open(meta, partition)
        if not meta.learned and self._compress_now is not None:
            self._compress_now(batch, meta)
        self._queues[(topic, partition)].full.append(batch)
        self._cond.notify_all()

    def _drain_open(self, q: PartitionQueue, now: float) -> ProducerBatch | None:
        """The partition's open batch if it is sendable now (its linger passed, or
        a flush, a close or a blocked send wants everything out), detached. Lock held."""
        batch = q.meta.open[q.partition]
        if batch is None:
            return None
        if batch.created + self._linger_s <= now or self._flushing or self._closed or self._blocked:
            return self._take_open(q.meta, q.partition)
        return None

    def _block_while_full(self) -> None:
        if self._queued_bytes <= self._buffer_bytes:
            return
        deadline = time.monotonic() + self._max_block_s
        self._blocked += 1
        self._cond.notify_all()  # the sender sends the open batches now
        try:
            while self._queued_bytes > self._buffer_bytes:
                if self._closed:
                    raise errors.StoreClosedError("producer is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.DeadlineExceededError(
                        f"producer buffer full ({self._queued_bytes} bytes queued) for "
                        f"{self._max_block_s:g} s; is the broker at {self.address} keeping up?"
                    )
                self._cond.wait(min(left, 0.1))
        finally:
            self._blocked -= 1

    # -- what the sender thread uses (lock held) -------------------------------

    def _complete(self, batch: ProducerBatch, err: errors.LogStoreError | None) -> None:
        """The batch is done (stored, or failed for good): wake its handles, and
        those of the batch it was split from once both halves are done. Lock held."""
        batch.error = err
        batch.header = None
        self._queued_bytes -= batch.size
        self._pending -= 1
        batch.done.set()
        parent = batch.parent
        while parent is not None and parent.split is not None:
            _, first, second = parent.split
            if not (first.done.is_set() and second.done.is_set()):
                break
            parent.error = first.error or second.error
            parent.done.set()
            parent = parent.parent
        self._cond.notify_all()

    def _split(self, q: PartitionQueue) -> None:
        """Replace the partition's first waiting batch, whose records did not
        compress into the room (the ratio estimate was too low), by its two
        halves, in order. Lock held; the batch is not numbered yet."""
        first, second = q.full.popleft().halves()
        self._pending += 1  # two batches now stand for one; the bytes are the same
        q.full.appendleft(second)
        q.full.appendleft(first)

    # -- flush ---------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait until every batch is completed.

        Errors are reported through the handles, not raised here; raises
        DeadlineExceededError if ``timeout`` (s) passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise errors.DeadlineExceededError(
                            f"flush did not complete within {timeout} s"
                        )
                    self._cond.wait(left if left is not None else 1.0)
            finally:
                self._flushing -= 1
