"""The sender thread: requests, delivery order, retries and completion.

Requests. A closed batch becomes one raw ``Produce`` request: the small
serialized ``ProduceRequest`` header (every field but ``records``) followed
by the batch's joined records (``b"".join`` once, CRC32C in C). Protobuf
concatenation is a merge, so the broker sees one request whose records are
the suffix it stores unchanged. The bytes are kept, so a retry sends exactly
the same request (same sequence numbers).

Compression. With a codec, the joined records are compressed once when the
request is built (the payload is the codec's compression of exactly those
bytes, sent as ``compressed_records``, field 14, after the header), unless
that does not make them smaller. The accumulator closed the batch at its
*estimated* compressed size (records x the topic's ratio estimate,
:class:`~._accumulator.TopicState`); every compression updates that
estimate, and in the rare case the records went past the room anyway
(``min(batch_bytes, max_batch_bytes)`` less the header) the batch is split
in two halves, sent in its place and in order, before any sequence number is
taken. A batch waiting behind its partition's in-flight request is
compressed while it waits.

Timestamps. Records without their own take the batch's creation time
(CreateTime within ``linger_ms``); when every record has its own, the batch's
base timestamp is the smallest of them. ``max_timestamp_ms`` is the largest.

Delivery. At most one request in flight per partition (so batches of a
partition are stored in order and a retried batch cannot be overtaken), up to
``max_in_flight`` in total. Which errors are retried and how long to wait
between tries is :mod:`logstore.client._backoff`'s (full jitter, at least
the broker's hint), until ``delivery_timeout_ms`` after the batch was
created; anything else fails the batch at once. A batch that fails for good after it was sent
breaks the idempotent sequence (:mod:`._idempotence`).

Completions arrive on gRPC's threads and are queued; only the sender thread
acts on them, under the producer's lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from logstore import errors
from logstore.v1 import logstore_pb2
from logstore.wire import CODEC_NONE, compress, compressed_field, crc32c

from .._backoff import Backoff, retriable
from .._credentials import Credentials
from .._rpc import Connection, translate
from ._accumulator import RecordAccumulator, TopicState
from ._batch import ProducerBatch
from ._idempotence import Idempotence

#: max_batch_bytes of a topic whose DescribeTopic reply does not say (the
#: broker's default, 1 MiB).
DEFAULT_MAX_BATCH_BYTES: Final = 1 << 20

ProduceCallback = Callable[[logstore_pb2.ProduceResponse | None, BaseException | None], None]


class Transport(Protocol):
    """What the producer needs from the broker (a seam for tests)."""

    address: str

    def topic_metadata(self, topic: str) -> tuple[int, int]:
        """``(partition count, max_batch_bytes)``; raises LogStoreError."""

    def init_producer(self) -> tuple[int, int]:
        """``(producer id, epoch)``; raises LogStoreError."""

    def produce(self, request: bytes, timeout_s: float, callback: ProduceCallback) -> None:
        """Send ``request``; call ``callback(response, None)`` or ``(None, error)``
        (error already a LogStoreError) exactly once, from any thread."""

    def close(self) -> None: ...


class GrpcTransport:
    """The real transport over a :class:`Connection`."""

    def __init__(
        self,
        address: str,
        connect_timeout_ms: int,
        request_timeout_ms: int,
        credentials: Credentials | None = None,
    ) -> None:
        self.conn = Connection(address, connect_timeout_ms, credentials)
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

    def produce(self, request: bytes, timeout_s: float, callback: ProduceCallback) -> None:
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


class Sender:
    """The thread that ships closed batches; see the module docstring."""

    def __init__(
        self,
        accumulator: RecordAccumulator,
        transport: Transport,
        idempotence: Idempotence,
        *,
        acks: int,
        request_timeout_ms: int,
        backoff: Backoff,
        max_in_flight: int,
        metadata_max_age_ms: int,
        codec: int = CODEC_NONE,
        compression_level: int | None = None,
    ) -> None:
        self._codec = codec
        self._compression_level = compression_level
        self._acc = accumulator
        self._transport = transport
        self._idem = idempotence
        self._acks = acks
        self._address = transport.address
        self._request_timeout_s = request_timeout_ms / 1000
        self._backoff = backoff
        self._max_in_flight = max_in_flight
        self._metadata_max_age_s = metadata_max_age_ms / 1000
        self._refresh_at = time.monotonic() + self._metadata_max_age_s
        self._request_id = itertools.count(1)
        self._in_flight: dict[tuple[str, int], ProducerBatch] = {}
        self._completions: deque[tuple[ProducerBatch, Any, BaseException | None]] = deque()
        self._thread = threading.Thread(target=self._run, name="logstore-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        acc = self._acc
        while True:
            to_send: list[ProducerBatch] = []
            ahead: ProducerBatch | None = None
            with acc._lock:
                while True:
                    self._drain_completions()
                    wait_s = self._collect(to_send)
                    if to_send:
                        break
                    if acc._closed and not acc._pending:
                        return
                    ahead = self._next_to_compress()
                    if ahead is not None:
                        break
                    acc._cond.wait(wait_s)
            if ahead is not None:
                ahead.compressed = self._compress(ahead)
            for batch in to_send:
                self._send(batch)
            if time.monotonic() >= self._refresh_at:
                self._refresh_at = time.monotonic() + self._metadata_max_age_s
                try:
                    acc.refresh_metadata()
                except errors.LogStoreError:
                    pass  # keep the old metadata; the next produce reports real trouble

    def _collect(self, out: list[ProducerBatch]) -> float | None:
        """Pick batches to send now; returns how long to wait otherwise. Lock held."""
        now = time.monotonic()
        acc = self._acc
        wait = acc._close_due(now)
        if acc._ready:
            keep: deque[ProducerBatch] = deque()
            while acc._ready:
                batch = acc._ready.popleft()
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
            acc._ready = keep
        return wait

    def _next_to_compress(self) -> ProducerBatch | None:
        """A closed batch waiting behind its partition's in-flight request whose
        records are not compressed yet (lock held): compressing it now overlaps
        that round trip instead of adding to the next one (a 1 MiB batch
        costs ~1.5 ms in zstd, ~0.8 ms in lz4)."""
        if self._codec == CODEC_NONE:
            return None
        for batch in self._acc._ready:
            if batch.compressed is None and batch.request is None:
                return batch
        return None

    def _encode(self, batch: ProducerBatch) -> tuple[bytes, int]:
        """(the bytes to send after the header, their codec)."""
        records = b"".join(batch.parts)
        tail = compressed_field(compress(records, self._codec, self._compression_level))
        # Per batch: records that do not shrink (already compressed or random
        # bytes) go as they are, so a batch never grows.
        return (tail, self._codec) if len(tail) < len(records) else (records, CODEC_NONE)

    def _compress(self, batch: ProducerBatch) -> tuple[bytes, int]:
        """:meth:`_encode`, and update the topic's ratio estimate. A closed
        batch's parts no longer change, so this runs without the lock."""
        out = self._encode(batch)
        with self._acc._lock:
            self._acc._topics[batch.topic].observe(batch.size, len(out[0]))
        return out

    def compress_now(self, batch: ProducerBatch, meta: TopicState) -> None:
        """The accumulator's ``_compress_now``: compress a just-closed batch in
        the caller's thread (lock held; once per topic, ~1-3 ms a MiB)."""
        batch.compressed = self._encode(batch)
        meta.observe(batch.size, len(batch.compressed[0]))

    def _oversized(self, batch: ProducerBatch) -> bool:
        """Whether the batch, compressed, is past its topic's room (possible only
        when it was closed past the room on a ratio estimate: a batch within
        the room fits even sent plain). Lock not held."""
        if self._codec == CODEC_NONE:
            return False
        if batch.compressed is None:
            batch.compressed = self._compress(batch)
        if len(batch.compressed[0]) <= self._acc._topics[batch.topic].room:
            return False
        batch.compressed = None
        return True

    def _split(self, batch: ProducerBatch) -> None:
        with self._acc._lock:
            del self._in_flight[(batch.topic, batch.partition)]
            self._acc._split(batch)

    def _build_request(self, batch: ProducerBatch) -> bytes:
        if batch.compressed is None and self._codec != CODEC_NONE:
            batch.compressed = self._compress(batch)
        if batch.compressed is not None:
            records, codec = batch.compressed
            batch.compressed = None
        else:
            records, codec = b"".join(batch.parts), CODEC_NONE
        batch.parts = []
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
            compression=codec,  # type: ignore[arg-type]
        )
        idem = self._idem
        if idem.enabled:
            idem.refresh_if_stale()
            with self._acc._lock:
                seq = idem.next_sequence((batch.topic, batch.partition), batch.count)
            header.producer_id = idem.producer_id
            header.producer_epoch = idem.producer_epoch
            header.base_sequence = seq
        return header.SerializeToString() + records

    def _send(self, batch: ProducerBatch) -> None:
        """Issue (or re-issue) a batch's request. Lock not held."""
        try:
            if batch.request is None:
                if self._oversized(batch):
                    self._split(batch)
                    return
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
            self._on_done(batch, None, translate(exc, self._address))

    def _on_done(self, batch: ProducerBatch, resp: Any, exc: BaseException | None) -> None:
        acc = self._acc
        with acc._lock:
            self._completions.append((batch, resp, exc))
            acc._cond.notify_all()

    def _drain_completions(self) -> None:
        """Complete, retry or fail batches whose request finished. Lock held."""
        acc = self._acc
        while self._completions:
            batch, resp, exc = self._completions.popleft()
            tp = (batch.topic, batch.partition)
            if self._in_flight.get(tp) is batch:
                del self._in_flight[tp]
            if exc is None:
                batch.base_offset = resp.base_offset
                acc._complete(batch, None)
                continue
            err = translate(exc, self._address)
            now = time.monotonic()
            if retriable(err):
                hint = getattr(err, "retry_after_ms", None)
                delay = self._backoff.delay_s(batch.attempts - 1, hint)
                if now + delay < batch.deadline:
                    batch.retry_at = now + delay
                    acc._ready.appendleft(batch)
                    continue
                err = type(err)(
                    f"{err} (gave up after {batch.attempts} attempt(s): "
                    f"delivery_timeout_ms={acc._delivery_timeout_ms})"
                )
            if self._idem.enabled and batch.request is not None:
                # The broker may or may not hold this batch: the sequence is broken.
                self._idem.sequence_broken()
            acc._complete(batch, err)
