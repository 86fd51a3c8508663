"""The producer: records are encoded at ``send()`` into per-partition batches that
a background sender thread ships as raw ``Produce`` requests.

Encoding (the hot path). A record is serialized exactly as protobuf would
serialize one entry of ``repeated Record records = 15`` (see
``logstore/wire/_records.py``), but without a message object: a value-only
record is a cached length prefix followed by the value, so ``send()`` appends
two references to the open batch's ``parts`` list and ``send_many()`` does the
same for a whole list with a few C-level ``map`` calls. The batch is joined
once (``b"".join``), its CRC32C computed in C, and the request is the small
serialized ``ProduceRequest`` header (every field but ``records``) followed by
those bytes: protobuf concatenation is a merge, so the broker sees one
request whose records are the suffix it stores unchanged.

Batching. One open batch per (topic, partition), closed before the records
plus the 66-byte stored header would exceed min(``batch_bytes``, the topic's
``max_batch_bytes``); a single record too large for any batch raises
``InvalidBatchError`` from ``send``. Without a key and a partition, records
stick to one partition until its batch closes, then move on (Kafka's sticky
partitioner); with a key the partition is murmur2(key) like Kafka and the
broker (``logstore.wire.partition_for_key``).

Handles. ``send`` returns a :class:`RecordHandle` (``__slots__``: the batch
and an index); every record of a batch shares the batch's one completion.
``send_many`` returns a :class:`SendResult` covering its records.

Delivery. At most one request in flight per partition (so batches of a
partition are stored in order and a retried batch cannot be overtaken), up to
``max_in_flight`` in total. Only ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED``
with a RetryInfo hint are retried, with exponential backoff and full jitter
(at least the broker's hint), until ``delivery_timeout_ms`` after the batch
was created; anything else fails the batch at once. With ``idempotent=True``
the producer gets an id from ``InitProducer`` and numbers records per
partition, so a retried batch that the broker had already stored is answered
with its original offset instead of being stored twice. A batch that fails
for good breaks the sequence, so the producer then takes a new id.

Thread-safety: ``send``/``send_many``/``flush`` may be called from any thread.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from operator import add
from typing import Any, Final, Protocol

from logstore import errors
from logstore.v1 import logstore_pb2
from logstore.wire import crc32c, partition_for_key
from logstore.wire import varint as _varint

from ._rpc import Connection, translate

#: Bytes of the stored RecordBatch header that count against max_batch_bytes.
BATCH_HEADER_BYTES: Final = 66
DEFAULT_MAX_BATCH_BYTES: Final = 1 << 20

_ACKS: Final[dict[str, int]] = {
    "all": logstore_pb2.ACKS_ALL,
    "-1": logstore_pb2.ACKS_ALL,
    "1": logstore_pb2.ACKS_LEADER,
    "leader": logstore_pb2.ACKS_LEADER,
    "0": logstore_pb2.ACKS_NONE,
    "none": logstore_pb2.ACKS_NONE,
}


def parse_acks(acks: str | int) -> int:
    """Kafka's spellings (``0``, ``1``, ``all``/``-1``) to the ``Acks`` enum."""
    value = _ACKS.get(str(acks).strip().lower())
    if value is None:
        raise errors.InvalidArgumentError(f"acks must be 0, 1 or all, not {acks!r}")
    return value


#: varint bytes of small lengths, by value (keys, headers, body lengths).
_SMALL: Final = 1 << 14
_VARINTS: Final[tuple[bytes, ...]] = tuple(_varint(i) for i in range(_SMALL))


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < _SMALL else _varint(n)


class _ValuePrefixes(dict[int, bytes]):
    """len(value) -> the bytes of a value-only record that precede the value."""

    def __missing__(self, n: int) -> bytes:
        p = b"\x7a" + varint(1 + len(varint(n)) + n) + b"\x12" + varint(n)
        if n <= 1 << 20:
            self[n] = p
        return p


_PREFIX: Final = _ValuePrefixes()
_prefix_of: Final = _PREFIX.__getitem__


def encode_record(
    value: bytes | None,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    timestamp_ms: int = 0,
) -> bytes:
    """One record as an entry of the records field (tag, length, body)."""
    parts: list[bytes] = []
    if key is not None:
        parts += (b"\x0a", varint(len(key)), key)
    if value is not None:
        parts += (b"\x12", varint(len(value)), value)
    if timestamp_ms:
        parts += (b"\x18", _varint(((timestamp_ms << 1) ^ (timestamp_ms >> 63)) & (2**64 - 1)))
    if headers:
        for name, hval in headers:
            # proto3 omits empty strings/bytes: canonical bytes, so the broker's
            # zero-copy split and records CRC apply (see logstore.wire._produce).
            nb = name.encode()
            h = b"".join(
                (
                    b"\x0a" + varint(len(nb)) + nb if nb else b"",
                    b"\x12" + varint(len(hval)) + hval if hval else b"",
                )
            )
            parts += (b"\x22", varint(len(h)), h)
    body = b"".join(parts)
    return b"\x7a" + varint(len(body)) + body


class _Batch:
    """Records for one partition; closed once, sent (and maybe retried) once at a time."""

    __slots__ = (
        "attempts",
        "base_offset",
        "count",
        "created",
        "created_ms",
        "deadline",
        "done",
        "error",
        "explicit_count",
        "explicit_max_ts",
        "explicit_min_ts",
        "partition",
        "parts",
        "request",
        "retry_at",
        "size",
        "topic",
    )

    def __init__(self, topic: str, partition: int, delivery_timeout_s: float) -> None:
        self.topic = topic
        self.partition = partition
        self.parts: list[bytes] = []
        self.size = 0
        self.count = 0
        self.created = time.monotonic()
        self.created_ms = time.time_ns() // 1_000_000
        self.deadline = self.created + delivery_timeout_s
        self.explicit_count = 0  # records with their own timestamp
        self.explicit_min_ts = 0
        self.explicit_max_ts = 0
        self.request: bytes | None = None
        self.attempts = 0
        self.retry_at = 0.0
        self.done = threading.Event()
        self.base_offset = -1
        self.error: errors.LogStoreError | None = None


class RecordHandle:
    """The outcome of one ``send()``: ``result()`` -> ``(partition, offset)``."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return self._batch.done.is_set()

    def result(self, timeout: float | None = None) -> tuple[int, int]:
        """Wait for delivery; ``(partition, offset)``, offset -1 with acks=0.

        Raises the batch's LogStoreError, or DeadlineExceededError on timeout.
        """
        b = self._batch
        if not b.done.wait(timeout):
            raise errors.DeadlineExceededError(f"record not delivered within {timeout} s")
        if b.error is not None:
            raise b.error
        return b.partition, (b.base_offset + self._index if b.base_offset >= 0 else -1)

    def exception(self, timeout: float | None = None) -> errors.LogStoreError | None:
        b = self._batch
        if not b.done.wait(timeout):
            raise errors.DeadlineExceededError(f"record not delivered within {timeout} s")
        return b.error


class SendResult:
    """The outcome of one ``send_many()``: a sequence of handles, one per record."""

    __slots__ = ("_segments", "_starts")

    def __init__(self) -> None:
        self._segments: list[tuple[_Batch, int, int]] = []  # batch, first index, count
        self._starts: list[int] = []

    def _add(self, batch: _Batch, first: int, count: int) -> None:
        self._starts.append(self._starts[-1] + self._segments[-1][2] if self._segments else 0)
        self._segments.append((batch, first, count))

    def __len__(self) -> int:
        return self._starts[-1] + self._segments[-1][2] if self._segments else 0

    def add(self, handle: RecordHandle) -> None:
        """Append one ``send()`` handle (consecutive records of a batch share a segment)."""
        if self._segments:
            batch, first, count = self._segments[-1]
            if batch is handle._batch and first + count == handle._index:
                self._segments[-1] = (batch, first, count + 1)
                return
        self._add(handle._batch, handle._index, 1)

    def segments(
        self, timeout: float | None = None
    ) -> list[tuple[int, int, int, Exception | None]]:
        """``(partition, first offset, count, error)`` per batch segment, waiting for
        each; first offset is -1 with acks=0 or on error. Never raises the errors."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[tuple[int, int, int, Exception | None]] = []
        for b, first, count in self._segments:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not b.done.wait(left):
                raise errors.DeadlineExceededError(f"records not delivered within {timeout} s")
            offset = b.base_offset + first if b.base_offset >= 0 and b.error is None else -1
            out.append((b.partition, offset, count, b.error))
        return out

    def __getitem__(self, i: int) -> RecordHandle:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._starts, i) - 1
        batch, first, _ = self._segments[k]
        return RecordHandle(batch, first + i - self._starts[k])

    def __iter__(self) -> Iterator[RecordHandle]:
        for batch, first, count in self._segments:
            for j in range(first, first + count):
                yield RecordHandle(batch, j)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every record; raise the first batch's error, if any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for batch, _, _ in self._segments:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not batch.done.wait(left):
                raise errors.DeadlineExceededError(f"records not delivered within {timeout} s")
            if batch.error is not None:
                raise batch.error

    def offsets(self, timeout: float | None = None) -> list[tuple[int, int, int]]:
        """``(partition, first offset, count)`` per batch segment, after ``wait``."""
        self.wait(timeout)
        return [
            (b.partition, b.base_offset + first if b.base_offset >= 0 else -1, count)
            for b, first, count in self._segments
        ]


class Transport(Protocol):
    """What the producer needs from the broker (a seam for tests)."""

    address: str

    def topic_metadata(self, topic: str) -> tuple[int, int]:
        """``(partition count, max_batch_bytes)``; raises LogStoreError."""

    def init_producer(self) -> tuple[int, int]:
        """``(producer id, epoch)``; raises LogStoreError."""

    def produce(
        self,
        request: bytes,
        timeout_s: float,
        callback: Callable[[logstore_pb2.ProduceResponse | None, BaseException | None], None],
    ) -> None:
        """Send ``request``; call ``callback(response, None)`` or ``(None, error)``
        (error already a LogStoreError) exactly once, from any thread."""

    def close(self) -> None: ...


class GrpcTransport:
    """The real transport over a :class:`Connection`."""

    def __init__(self, address: str, connect_timeout_ms: int, request_timeout_ms: int) -> None:
        self.conn = Connection(address, connect_timeout_ms)
        self.address = address
        self._timeout_s = request_timeout_ms / 1000

    def topic_metadata(self, topic: str) -> tuple[int, int]:
        resp = self.conn.call(
            self.conn.stub.DescribeTopic,
            logstore_pb2.DescribeTopicRequest(name=topic),
            self._timeout_s,
        )
        raw = resp.topic.config.get("max_batch_bytes")
        limit = int(raw) if raw and raw.isdigit() else DEFAULT_MAX_BATCH_BYTES
        return resp.topic.partitions, limit

    def init_producer(self) -> tuple[int, int]:
        resp = self.conn.call(
            self.conn.stub.InitProducer, logstore_pb2.InitProducerRequest(), self._timeout_s
        )
        return resp.producer_id, resp.producer_epoch

    def produce(
        self,
        request: bytes,
        timeout_s: float,
        callback: Callable[[logstore_pb2.ProduceResponse | None, BaseException | None], None],
    ) -> None:
        self.conn.ensure_ready()
        fut = self.conn.produce_raw.future(request, timeout=timeout_s)
        address = self.address

        def done(f: Any) -> None:
            try:
                resp = f.result()
            except BaseException as exc:
                callback(None, translate(exc, address))
            else:
                callback(resp, None)

        fut.add_done_callback(done)

    def close(self) -> None:
        self.conn.close()


class _Topic:
    __slots__ = ("limit", "open", "partitions", "sticky")

    def __init__(self, partitions: int, max_batch_bytes: int, batch_bytes: int) -> None:
        self.partitions = partitions
        #: bytes of records a batch may hold
        self.limit = min(batch_bytes, max_batch_bytes) - BATCH_HEADER_BYTES
        self.open: list[_Batch | None] = [None] * partitions
        self.sticky = random.randrange(partitions)


def _is_retriable(exc: errors.LogStoreError) -> bool:
    if isinstance(exc, errors.BrokerUnavailableError):
        return True
    return isinstance(exc, errors.ResourceExhaustedError) and exc.retry_after_ms is not None


class Producer:
    """Sends records to a broker in batches; see the module docstring."""

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:7070",
        *,
        acks: str | int = "all",
        linger_ms: int = 5,
        batch_bytes: int = 1 << 20,
        idempotent: bool | None = None,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        buffer_bytes: int = 64 << 20,
        max_block_ms: int = 60_000,
        max_in_flight: int = 8,
        metadata_max_age_ms: int = 300_000,
        transport: Transport | None = None,
    ) -> None:
        self._acks = parse_acks(acks)
        if idempotent is None:
            idempotent = self._acks != logstore_pb2.ACKS_NONE
        elif idempotent and self._acks == logstore_pb2.ACKS_NONE:
            raise errors.InvalidArgumentError("idempotent=True needs acks 1 or all, not 0")
        if batch_bytes <= BATCH_HEADER_BYTES:
            raise errors.InvalidArgumentError(f"batch_bytes must exceed {BATCH_HEADER_BYTES}")
        if linger_ms < 0 or delivery_timeout_ms <= 0 or max_in_flight < 1:
            raise errors.InvalidArgumentError(
                "linger_ms >= 0, delivery_timeout_ms > 0, max_in_flight >= 1"
            )
        self._transport: Transport = transport or GrpcTransport(
            bootstrap, connect_timeout_ms, request_timeout_ms
        )
        self.address = self._transport.address
        self._idempotent = idempotent
        self._linger_s = linger_ms / 1000
        self._batch_bytes = batch_bytes
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self._request_timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._backoff_max_s = retry_backoff_max_ms / 1000
        self._buffer_bytes = buffer_bytes
        self._max_block_s = max_block_ms / 1000
        self._max_in_flight = max_in_flight
        self._metadata_max_age_s = metadata_max_age_ms / 1000
        self._refresh_at = time.monotonic() + self._metadata_max_age_s

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._topics: dict[str, _Topic] = {}
        self._open_batches: dict[tuple[str, int], _Batch] = {}
        self._ready: deque[_Batch] = deque()  # closed, waiting to be sent (or retried)
        self._in_flight: dict[tuple[str, int], _Batch] = {}
        self._completions: deque[tuple[_Batch, Any, BaseException | None]] = deque()
        self._queued_bytes = 0  # records bytes of batches not yet completed
        self._pending = 0  # batches created and not yet completed
        self._flushing = 0
        self._closed = False
        self._request_id = itertools.count(1)
        self._producer_id = 0
        self._producer_epoch = 0
        self._pid_stale = idempotent
        self._next_seq: dict[tuple[str, int], int] = {}
        self._sender = threading.Thread(target=self._run, name="logstore-producer", daemon=True)
        self._sender.start()

    # -- metadata ----------------------------------------------------------

    def _topic(self, topic: str) -> _Topic:
        meta = self._topics.get(topic)
        if meta is not None:
            return meta
        if self._closed:
            raise errors.StoreClosedError("producer is closed")
        partitions, max_batch = self._transport.topic_metadata(topic)
        if self._pid_stale:
            self._init_producer_id()
        with self._lock:
            return self._topics.setdefault(topic, _Topic(partitions, max_batch, self._batch_bytes))

    def refresh_metadata(self, topic: str | None = None) -> None:
        """Re-read partition counts and batch limits (of ``topic``, or every known one).

        Partitions added since are used from now on (keys then hash over the
        new count, as with Kafka). Called by the sender thread every
        ``metadata_max_age_ms`` and by ``send`` for a partition it does not know.
        """
        for name in [topic] if topic is not None else list(self._topics):
            partitions, max_batch = self._transport.topic_metadata(name)
            with self._lock:
                meta = self._topics.get(name)
                if meta is None:
                    continue
                if partitions > meta.partitions:
                    meta.open.extend([None] * (partitions - meta.partitions))
                    meta.partitions = partitions
                meta.limit = min(self._batch_bytes, max_batch) - BATCH_HEADER_BYTES

    def _check_partition(self, topic: str, meta: _Topic, partition: int) -> None:
        if 0 <= partition < meta.partitions:
            return
        if partition >= 0:
            self.refresh_metadata(topic)
            if partition < meta.partitions:
                return
        raise errors.UnknownPartitionError(
            f"topic {topic!r} has partitions 0..{meta.partitions - 1}, not {partition}"
        )

    def _init_producer_id(self) -> None:
        pid, epoch = self._transport.init_producer()
        with self._lock:
            self._producer_id, self._producer_epoch = pid, epoch
            self._next_seq.clear()
            self._pid_stale = False

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
    ) -> RecordHandle:
        """Queue one record; returns its handle at once (see the module docstring)."""
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
                    if first > meta.limit:
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

    def _raise_too_large(self, meta: _Topic, size: int) -> None:
        raise errors.InvalidBatchError(
            f"record of {size} bytes cannot fit in a batch of at most "
            f"{meta.limit + BATCH_HEADER_BYTES} bytes (batch_bytes / max_batch_bytes)"
        )

    def _batch_for(
        self, meta: _Topic, topic: str, partition: int, size: int, sticky: bool
    ) -> _Batch:
        """An open batch with room for ``size`` bytes (sticky: on the sticky
        partition, which moves each time its batch closes). Lock held."""
        if size > meta.limit:
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

    def _new_batch(self, meta: _Topic, topic: str, partition: int) -> _Batch:
        """Open a batch on a partition that has none. Lock held."""
        if self._closed:
            raise errors.StoreClosedError("producer is closed")
        assert meta.open[partition] is None
        batch = _Batch(topic, partition, self._delivery_timeout_s)
        meta.open[partition] = batch
        self._open_batches[(topic, partition)] = batch
        self._pending += 1
        self._cond.notify_all()
        return batch

    def _close(self, meta: _Topic, topic: str, partition: int) -> None:
        """Move the partition's open batch to the ready queue. Lock held."""
        batch = meta.open[partition]
        assert batch is not None
        meta.open[partition] = None
        del self._open_batches[(topic, partition)]
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

    # -- flush / close -----------------------------------------------------

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

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender thread and close the connection. Idempotent."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closed = True
                self._cond.notify_all()
            self._sender.join()
            self._transport.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sender thread -------------------------------------------------

    def _run(self) -> None:
        while True:
            to_send: list[_Batch] = []
            with self._lock:
                while True:
                    self._drain_completions()
                    wait_s = self._collect(to_send)
                    if to_send:
                        break
                    if self._closed and not self._pending:
                        return
                    self._cond.wait(wait_s)
            for batch in to_send:
                self._send(batch)
            if time.monotonic() >= self._refresh_at:
                self._refresh_at = time.monotonic() + self._metadata_max_age_s
                try:
                    self.refresh_metadata()
                except errors.LogStoreError:
                    pass  # keep the old metadata; the next produce reports real trouble

    def _collect(self, out: list[_Batch]) -> float | None:
        """Pick batches to send now; returns how long to wait otherwise. Lock held."""
        now = time.monotonic()
        wait: float | None = None
        flushing = self._flushing > 0 or self._closed
        # open batches whose linger has passed (or everything, when flushing)
        for (topic, p), batch in list(self._open_batches.items()):
            due = batch.created + self._linger_s
            if flushing or due <= now:
                self._close(self._topics[topic], topic, p)
            else:
                wait = due - now if wait is None else min(wait, due - now)
        if self._ready:
            keep: deque[_Batch] = deque()
            while self._ready:
                batch = self._ready.popleft()
                tp = (batch.topic, batch.partition)
                if (
                    tp in self._in_flight
                    or len(self._in_flight) >= self._max_in_flight
                    or any(b.topic == batch.topic and b.partition == batch.partition for b in keep)
                ):
                    keep.append(batch)
                elif batch.retry_at > now:
                    keep.append(batch)
                    left = batch.retry_at - now
                    wait = left if wait is None else min(wait, left)
                else:
                    self._in_flight[tp] = batch
                    out.append(batch)
            self._ready = keep
        return wait

    def _build_request(self, batch: _Batch) -> bytes:
        records = b"".join(batch.parts)
        batch.parts = []
        # Records without a timestamp take the batch's: the batch's creation
        # time (CreateTime within linger_ms). When every record has its own,
        # the batch's is the smallest of them.
        all_explicit = batch.explicit_count == batch.count
        base_ts = batch.explicit_min_ts if all_explicit else batch.created_ms
        max_ts = max(base_ts, batch.explicit_max_ts) if batch.explicit_count else base_ts
        header = logstore_pb2.ProduceRequest(
            topic=batch.topic,
            partition=batch.partition,
            acks=self._acks,  # type: ignore[arg-type]
            request_id=next(self._request_id),
            records_crc32c=crc32c(records),
            base_timestamp_ms=base_ts,
            max_timestamp_ms=max_ts,
        )
        if self._idempotent:
            if self._pid_stale:
                self._init_producer_id()
            tp = (batch.topic, batch.partition)
            with self._lock:
                seq = self._next_seq.get(tp, 0)
                self._next_seq[tp] = (seq + batch.count) & 0x7FFFFFFF
            header.producer_id = self._producer_id
            header.producer_epoch = self._producer_epoch
            header.base_sequence = seq
        return header.SerializeToString() + records

    def _send(self, batch: _Batch) -> None:
        """Issue (or re-issue) a batch's request. Lock not held."""
        try:
            if batch.request is None:
                batch.request = self._build_request(batch)
        except errors.LogStoreError as exc:
            self._on_done(batch, None, exc)
            return
        batch.attempts += 1
        left = batch.deadline - time.monotonic()
        timeout = max(0.001, min(self._request_timeout_s, left))

        def callback(resp: Any, exc: BaseException | None) -> None:
            self._on_done(batch, resp, exc)

        try:
            self._transport.produce(batch.request, timeout, callback)
        except BaseException as exc:
            self._on_done(batch, None, translate(exc, self.address))

    def _on_done(self, batch: _Batch, resp: Any, exc: BaseException | None) -> None:
        with self._lock:
            self._completions.append((batch, resp, exc))
            self._cond.notify_all()

    def _drain_completions(self) -> None:
        """Complete, retry or fail batches whose request finished. Lock held."""
        while self._completions:
            batch, resp, exc = self._completions.popleft()
            tp = (batch.topic, batch.partition)
            if self._in_flight.get(tp) is batch:
                del self._in_flight[tp]
            if exc is None:
                batch.base_offset = resp.base_offset
                self._finish(batch, None)
                continue
            err = translate(exc, self.address)
            now = time.monotonic()
            if _is_retriable(err):
                cap = min(self._backoff_max_s, self._backoff_s * (2 ** (batch.attempts - 1)))
                delay = random.uniform(0, cap)  # full jitter
                hint = getattr(err, "retry_after_ms", None)
                if hint is not None:
                    delay = max(delay, hint / 1000)
                if now + delay < batch.deadline:
                    batch.retry_at = now + delay
                    self._ready.appendleft(batch)
                    continue
                err = type(err)(
                    f"{err} (gave up after {batch.attempts} attempt(s): "
                    f"delivery_timeout_ms={self._delivery_timeout_s * 1000:g})"
                )
            if self._idempotent and batch.request is not None:
                # The broker may or may not hold this batch: the sequence is broken.
                self._pid_stale = True
            self._finish(batch, err)

    def _finish(self, batch: _Batch, err: errors.LogStoreError | None) -> None:
        batch.error = err
        batch.request = None
        self._queued_bytes -= batch.size
        self._pending -= 1
        batch.done.set()
        self._cond.notify_all()
