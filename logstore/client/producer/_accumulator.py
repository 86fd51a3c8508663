"""Batching: records are encoded at ``send()`` into one open batch per partition.

Encoding (the hot path) is :mod:`logstore.wire`'s: a value-only record is
``wire._prefix_of(len(value))`` (cached by length) followed by the value, so
``send()`` appends two references to the open batch's ``parts`` and
``send_many()`` does the same for a whole list with a few C-level ``map``
calls; any other record is ``wire.encode_record``. Nothing is joined until
the sender builds the request.

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

Memory is bounded by ``buffer_bytes`` of records not yet completed: a
``send`` that would open a batch beyond it blocks up to ``max_block_ms``, then
raises DeadlineExceededError.

The :class:`RecordAccumulator` is the batching half of the ``Producer``
(which subclasses it, so ``send`` costs no extra call). The sender thread
(``_sender``, the other half of this package) shares its ``_lock`` and
``_cond``, takes closed batches from ``_ready``, calls ``_close_due`` and
hands completed batches back to ``_complete``: package-private, not API.
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
        self.sticky = random.randrange(partitions)

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


class RecordAccumulator:
    """Open batches per partition, the ready queue and the buffer bound."""

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
        self._open_batches: dict[tuple[str, int], ProducerBatch] = {}
        #: closed batches waiting to be sent (or retried), oldest first
        self._ready: deque[ProducerBatch] = deque()
        self._queued_bytes = 0  # records bytes of batches not yet completed
        self._pending = 0  # batches created and not yet completed
        self._flushing = 0
        self._closed = False
        #: Set by a compressing producer: compresses a batch now and updates its
        #: topic's estimate (lock held). Called on the first batch closed for a
        #: topic, so the estimate is known from the second batch on: the
        #: sender compresses batches only as it sends them, and a burst (a
        #: bulk load of send_many calls) otherwise closes up to buffer_bytes
        #: of batches at the first estimate, 1.0, before it learns anything.
        self._compress_now: Callable[[ProducerBatch, TopicState], None] | None = None

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
            if batch is None or batch.size + size > meta.limit:
                batch = self._batch_for(meta, topic, partition, size, sticky)
            parts = batch.parts
            parts.append(prefix)
            parts.append(value)
            batch.size += size
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
            prefixes = list(map(_prefix_of, map(len, values)))
        except TypeError:
            for v in values:  # None (tombstones) or odd types: the general path
                h = self.send(topic, v, partition=partition)
                result._add(h._batch, h._index, 1)
            return result
        # cumulative encoded sizes; cut points found by bisection, no per-record loop.
        cum = list(itertools.accumulate(map(add, map(len, prefixes), map(len, values))))
        n = len(values)
        start = 0
        done_bytes = 0
        with self._lock:
            while start < n:
                p = meta.sticky if partition is None else partition
                batch = meta.open[p]
                if batch is None:
                    first = cum[start] - done_bytes
                    if first > meta.room:
                        self._raise_too_large(meta, first)
                    self._block_while_full()
                    if meta.open[p] is not None:
                        continue  # another thread opened one while we waited
                    batch = self._new_batch(meta, topic, p)
                room = meta.limit - batch.size
                end = bisect.bisect_right(cum, done_bytes + room, start, n)
                if end == start:  # the next record does not fit: close, go on
                    self._close(meta, topic, p)
                    continue
                k = end - start
                chunk: list[bytes] = [b""] * (2 * k)
                chunk[0::2] = prefixes[start:end]
                chunk[1::2] = values[start:end]
                batch.parts += chunk
                size = cum[end - 1] - done_bytes
                batch.size += size
                done_bytes += size
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
            p = meta.sticky if sticky else partition
            batch = meta.open[p]
            if batch is None:
                self._block_while_full()
                if meta.open[p] is None:
                    return self._new_batch(meta, topic, p)
            elif batch.size + size <= meta.limit:
                return batch
            else:
                self._close(meta, topic, p)

    def _new_batch(self, meta: TopicState, topic: str, partition: int) -> ProducerBatch:
        """Open a batch on a partition that has none. Lock held."""
        if self._closed:
            raise errors.StoreClosedError("producer is closed")
        assert meta.open[partition] is None
        batch = ProducerBatch(topic, partition, self._delivery_timeout_s)
        meta.open[partition] = batch
        self._open_batches[(topic, partition)] = batch
        self._pending += 1
        self._cond.notify_all()
        return batch

    def _close(self, meta: TopicState, topic: str, partition: int) -> None:
        """Move the partition's open batch to the ready queue. Lock held."""
        batch = meta.open[partition]
        assert batch is not None
        meta.open[partition] = None
        del self._open_batches[(topic, partition)]
        if not meta.learned and self._compress_now is not None:
            self._compress_now(batch, meta)
        self._queued_bytes += batch.size
        self._ready.append(batch)
        if partition == meta.sticky and meta.partitions > 1:
            nxt = random.randrange(meta.partitions - 1)
            meta.sticky = nxt if nxt < partition else nxt + 1
        self._cond.notify_all()

    def _block_while_full(self) -> None:
        if self._queued_bytes <= self._buffer_bytes:
            return
        deadline = time.monotonic() + self._max_block_s
        while self._queued_bytes > self._buffer_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.DeadlineExceededError(
                    f"producer buffer full ({self._queued_bytes} bytes queued) for "
                    f"{self._max_block_s:g} s; is the broker at {self.address} keeping up?"
                )
            self._cond.wait(min(left, 0.1))

    # -- what the sender thread uses (lock held) -------------------------------

    def _close_due(self, now: float) -> float | None:
        """Close the open batches whose linger has passed (every one when flushing
        or closing); seconds until the next one is due, or None. Lock held."""
        wait: float | None = None
        flushing = self._flushing > 0 or self._closed
        for (topic, p), batch in list(self._open_batches.items()):
            due = batch.created + self._linger_s
            if flushing or due <= now:
                self._close(self._topics[topic], topic, p)
            else:
                wait = due - now if wait is None else min(wait, due - now)
        return wait

    def _complete(self, batch: ProducerBatch, err: errors.LogStoreError | None) -> None:
        """The batch is done (stored, or failed for good): wake its handles, and
        those of the batch it was split from once both halves are done. Lock held."""
        batch.error = err
        batch.request = None
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

    def _split(self, batch: ProducerBatch) -> None:
        """Replace a closed batch whose records did not compress into the room
        (the ratio estimate was too low) by its two halves, first in the ready
        queue, in order. Lock held; the batch is not in flight."""
        first, second = batch.halves()
        self._pending += 1  # two batches now stand for one; the bytes are the same
        self._ready.appendleft(second)
        self._ready.appendleft(first)
        self._cond.notify_all()

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
