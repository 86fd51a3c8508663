"""The sender thread: requests, delivery order, retries and completion.

Ways to the broker. With work for at most ``STREAM_MAX_PARTITIONS``
partitions, each batch's request is one message on the producer's
``ProduceStream`` (:class:`ProduceStream`: written at once, replies read in
order by one thread; the broker handles a stream's messages in order, so
pipelined batches never reach it out of order as pipelined unary calls may);
with more, the batches of one pass go as one ``MultiProduce`` (a few if they
pass ``max_request_bytes``). The sender changes way only when nothing is in
flight, so one partition's requests never travel two ways at once. A broker
without ProduceStream gets MultiProduce; without that, one ``Produce`` per
batch.

Requests. A closed batch becomes one raw ``Produce`` request: the small
serialized ``ProduceRequest`` header (every field but ``records``) followed
by the batch's joined records (``b"".join`` once, CRC32C in C). Protobuf
concatenation is a merge, so the broker sees one request whose records are
the suffix it stores unchanged. The bytes are kept, so a retry sends exactly
the same request (same sequence numbers).

Compression. With a codec, the joined records are compressed once (the
payload is the codec's compression of exactly those bytes, sent as
``compressed_records``, field 14, after the header), unless that does not
make them smaller. The accumulator closed the batch at its *estimated*
compressed size (records x the topic's ratio estimate,
:class:`~._accumulator.TopicState`); every compression updates that
estimate. A batch is compressed before it is numbered (outside the lock;
a full batch waiting behind its partition's in-flight requests is
compressed while it waits), and in the rare case its records went past the
room anyway (``min(batch_bytes, max_batch_bytes)`` less the header) it is
split in two halves, sent in its place and in order, before any sequence
number is taken. With ``compression_threads`` > 1 (default 2) the sender
does not compress: it hands such batches to a pool of that many threads, at
most that many at a time, and goes on sending and reading replies; a batch
is sent once its compression is back (the pool thread sets it under the
lock and wakes the sender). The join and the codecs release the GIL, so
batches compress on as many cores (one thread alone bounded a zstd producer
at ~440 MB/s of records). Bounded: the threads are fixed, and the batches
are ones the buffer already holds.

Timestamps. Records without their own take the batch's creation time
(CreateTime within ``linger_ms``); when every record has its own, the batch's
base timestamp is the smallest of them. ``max_timestamp_ms`` is the largest.

Delivery and order. Up to ``max_in_flight`` (default 5) batches per
partition may be unacknowledged at once: each taken batch gets the next
idempotent sequence number, and requests go out without waiting for the
earlier ones' replies (Kafka's ``max.in.flight.requests.per.connection``
with ``enable.idempotence``; 5 is also what the broker's duplicate check
remembers per producer, so more is refused with idempotence). Which errors
are retried and how long to wait between tries is
:mod:`logstore.client._backoff`'s (full jitter, at least the broker's hint),
until ``delivery_timeout_ms`` after the batch was created; anything else
fails the batch at once.

Retries keep the order. When a batch fails retriably its partition is
*recovering*: nothing new is sent to it, the requests still in flight are
answered (a later batch the broker stored means the failed one was stored
too -- the sequence check allows nothing else -- and its retry is answered
as a duplicate; a later batch refused with OUT_OF_ORDER_SEQUENCE_NUMBER was
not stored and is retried after it), then the unacknowledged batches are
resent one at a time in sequence order, and pipelining resumes once they are
all stored. An OUT_OF_ORDER_SEQUENCE_NUMBER is retried only for a batch that
was sent behind unacknowledged ones (the broker may also have taken two
pipelined requests out of order) or numbered under a producer id whose
sequence has since broken; for the first unacknowledged batch it is final.

A batch that fails for good after it was numbered breaks the idempotent
sequence (:mod:`._idempotence`): the sender stops sending, lets every request
in flight finish, takes a new producer id and goes on; a batch of the old id
that the broker then refuses as out of order was not stored and is
renumbered under the new one. Without idempotence (``idempotent=False`` or
acks=0) the same rules apply but nothing detects duplicates or reordering: a
retried batch may be stored twice, or after a later one, as with Kafka's
non-idempotent producer with more than one request in flight.

Completions arrive on gRPC's threads and are queued; only the sender thread
acts on them, under the producer's lock.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol

import grpc

from logstore import errors
from logstore.v1 import logstore_pb2
from logstore.wire import CODEC_NONE, compress, compressed_field, crc32c, varint

from .._backoff import Backoff, retriable
from .._credentials import Credentials
from .._rpc import _SERVICE, Connection, translate, translate_status
from ._accumulator import PartitionQueue, RecordAccumulator, TopicState
from ._batch import ProducerBatch
from ._idempotence import Idempotence

#: max_batch_bytes of a topic whose DescribeTopic reply does not say (the
#: broker's default, 1 MiB).
DEFAULT_MAX_BATCH_BYTES: Final = 1 << 20

ProduceCallback = Callable[[logstore_pb2.ProduceResponse | None, BaseException | None], None]
MultiCallback = Callable[[logstore_pb2.MultiProduceResponse | None, BaseException | None], None]

#: Tag of MultiProduceRequest.batches (field 15, length-delimited).
_BATCHES_TAG: Final = b"\x7a"
#: A MultiProduce request is cut before it would pass this many bytes: the
#: broker's default max_request_bytes (4 MiB) less room for the small fields.
DEFAULT_MAX_REQUEST_BYTES: Final = (4 << 20) - 4096


#: With at most this many partitions holding work, the producer's requests go
#: on its ``ProduceStream`` (one message per batch); with more, as one
#: MultiProduce per sender pass. A stream message costs the broker and the
#: client less than a unary call and the broker handles a stream's messages
#: in order (unary calls may overtake each other, which pipelined idempotent
#: batches answer with OUT_OF_ORDER_SEQUENCE_NUMBER and a resend); but it
#: carries one batch, so many partitions are cheaper in one MultiProduce.
STREAM_MAX_PARTITIONS: Final = 4
#: Batches a compressing producer compresses at once, each on its own thread
#: (``Producer(compression_threads=...)``): 2, the cores a small client host
#: has to spare; 1 compresses on the sender thread alone, as before.
DEFAULT_COMPRESSION_THREADS: Final = 2
#: The most compression threads a producer may ask for.
MAX_COMPRESSION_THREADS: Final = 16

StreamReply = Callable[[Any, logstore_pb2.ProduceResponse | None, BaseException | None], None]


class MultiProduceUnimplemented(Exception):
    """The broker has no MultiProduce (an older release): the producer goes on
    with one Produce per batch. Internal: never raised to users, so not a
    LogStoreError (those are the errors on the wire, each with its reason)."""


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
        # request bytes as given (built by the sender), reply parsed by upb
        self._multi = self.conn.channel.unary_unary(
            _SERVICE + "MultiProduce",
            request_serializer=None,
            response_deserializer=logstore_pb2.MultiProduceResponse.FromString,
        )

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

    def multi_produce(self, request: bytes, timeout_s: float, callback: MultiCallback) -> None:
        """Send a raw MultiProduceRequest; ``callback(response, None)`` or
        ``(None, error)`` exactly once (UNIMPLEMENTED becomes
        :class:`MultiProduceUnimplemented`)."""
        self.conn.ensure_ready()
        fut = self._multi.future(request, timeout=timeout_s)
        address = self.address

        def done(f: Any) -> None:
            try:
                resp = f.result()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    callback(None, MultiProduceUnimplemented(str(exc.details())))
                else:
                    callback(None, translate(exc, address))
            except BaseException as exc:
                callback(None, translate(exc, address))
            else:
                callback(resp, None)

        fut.add_done_callback(done)

    def open_stream(self, on_reply: StreamReply) -> ProduceStream:
        """A new ProduceStream; see :class:`ProduceStream`."""
        self.conn.ensure_ready()
        return ProduceStream(self.conn, on_reply)

    def close(self) -> None:
        self.conn.close()


class ProduceStream:
    """One ``ProduceStream`` call: requests written in order, replies read in order.

    ``send(token, request)`` queues a request (gRPC's own thread writes it);
    a reader thread matches each reply to the oldest unanswered request and
    calls ``on_reply(token, response, None)``, or ``(token, None, error)`` for
    a reply with an error status. When the stream ends (broker gone,
    ``cancel``), every unanswered request -- and any sent after -- gets
    ``on_reply(token, None, error)``: the error is the stream's own
    (UNAVAILABLE is retriable; a ``cancel`` after a request timed out is
    DeadlineExceededError), or :class:`ProduceStreamUnimplemented` from a broker
    without the RPC.
    """

    def __init__(self, conn: Connection, on_reply: StreamReply) -> None:
        self._on_reply = on_reply
        self._address = conn.address
        self._lock = threading.Lock()
        #: (token, monotonic send time) of each request not answered yet
        self._unanswered: deque[tuple[Any, float]] = deque()
        self._ended: BaseException | None = None
        self._timed_out = False
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        requests = self._requests

        def iterate() -> Any:
            while (item := requests.get()) is not None:
                yield item

        self._call: Any = conn.produce_stream(iterate())
        self._reader = threading.Thread(
            target=self._read, name="logstore-producer-stream", daemon=True
        )
        self._reader.start()

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def oldest(self) -> float | None:
        """When the oldest unanswered request was sent (None: none is)."""
        with self._lock:
            return self._unanswered[0][1] if self._unanswered else None

    def send(self, token: Any, request: bytes) -> None:
        with self._lock:
            ended = self._ended
            if ended is None:
                self._unanswered.append((token, time.monotonic()))
                self._requests.put(request)
        if ended is not None:
            self._on_reply(token, None, ended)

    def time_out(self) -> None:
        """End the stream because a request outlived its timeout."""
        self._timed_out = True
        self._call.cancel()

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()

    def _read(self) -> None:
        err: BaseException
        try:
            for resp in self._call:
                with self._lock:
                    token, _ = self._unanswered.popleft()
                if resp.status.code:
                    self._on_reply(token, None, translate_status(resp.status, self._address))
                else:
                    self._on_reply(token, resp, None)
            err = errors.BrokerUnavailableError(
                f"broker at {self._address} ended the produce stream"
            )
        except grpc.RpcError as exc:
            if self._timed_out:
                err = errors.DeadlineExceededError("produce request timed out (stream cancelled)")
            elif exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                err = ProduceStreamUnimplemented(str(exc.details()))
            elif exc.code() == grpc.StatusCode.CANCELLED:
                # Not by us (a timeout is handled above; close() comes only when
                # nothing is unanswered): the stream was ended under us, as a
                # broker's stop ends long polls. Retried like UNAVAILABLE.
                err = errors.BrokerUnavailableError(
                    f"the produce stream to {self._address} was cancelled: {exc.details()}"
                )
            else:
                err = translate(exc, self._address)
        except BaseException as exc:  # a reply without a request: the stream is broken
            err = translate(exc, self._address)
        self._call.cancel()
        self._requests.put(None)  # ends gRPC's request thread
        with self._lock:
            self._ended = err
            left = list(self._unanswered)
            self._unanswered.clear()
        for token, _ in left:
            self._on_reply(token, None, err)


class ProduceStreamUnimplemented(Exception):
    """The broker has no ProduceStream: the producer goes on with MultiProduce
    (or Produce). Internal, as :class:`MultiProduceUnimplemented`."""


class Sender:
    """The thread that ships batches; see the module docstring."""

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
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        compression_threads: int = DEFAULT_COMPRESSION_THREADS,
    ) -> None:
        self._codec = codec
        #: batches compressed at once (each on its own pool thread); the pool
        #: exists only for a codec and more than one thread
        self._compression_threads = compression_threads
        self._pool: ThreadPoolExecutor | None = None
        #: batches on the pool's threads now (lock held to change)
        self._compressing = 0
        if codec != CODEC_NONE and compression_threads > 1:
            self._pool = ThreadPoolExecutor(
                max_workers=compression_threads, thread_name_prefix="logstore-compress"
            )
        #: MultiProduce when the transport has it (and the broker answers it)
        self._multi_produce: Callable[[bytes, float, MultiCallback], None] | None = getattr(
            transport, "multi_produce", None
        )
        #: the transport's ProduceStream opener (None: it has none, or the
        #: broker answered UNIMPLEMENTED), the open stream, and whether the
        #: requests in flight went on it (a partition's requests all go one
        #: way at a time: the switch waits until none is in flight)
        self._open_stream: Callable[[StreamReply], ProduceStream] | None = getattr(
            transport, "open_stream", None
        )
        self._stream: ProduceStream | None = None
        self._streaming = False
        self._max_request_bytes = max_request_bytes
        self._compression_level = compression_level
        self._acc = accumulator
        self._transport = transport
        self._idem = idempotence
        self._acks = acks
        self._address = transport.address
        self._request_timeout_s = request_timeout_ms / 1000
        self._backoff = backoff
        #: unacknowledged batches allowed per partition
        self._max_in_flight = max_in_flight
        self._metadata_max_age_s = metadata_max_age_ms / 1000
        self._refresh_at = time.monotonic() + self._metadata_max_age_s
        self._request_id = itertools.count(1)
        #: requests sent and not answered (only the sender thread touches it)
        self._requests_in_flight = 0
        #: a failed InitProducer is tried again no sooner than this
        self._init_retry_at = 0.0
        self._init_failures = 0
        self._completions: deque[tuple[list[ProducerBatch], Any, BaseException | None]] = deque()
        self._thread = threading.Thread(target=self._run, name="logstore-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        acc = self._acc
        idem = self._idem
        while True:
            to_send: list[ProducerBatch] = []
            to_compress: list[ProducerBatch] = []
            take_id = False
            with acc._lock:
                while True:
                    self._drain_completions()
                    if idem.enabled and idem.stale and acc._active:
                        # a broken sequence: new producer id once nothing is in flight
                        wait_s: float | None = None
                        if self._requests_in_flight == 0:
                            wait_s = self._init_retry_at - time.monotonic()
                            if wait_s <= 0:
                                take_id = True
                                break
                    elif self._requests_in_flight and self._want_stream() != self._streaming:
                        # switching between the stream and MultiProduce: let the
                        # requests in flight answer first, so order holds
                        wait_s = self._stream_watchdog()
                    elif (
                        not self._streaming
                        and self._multi_produce is not None
                        and self._requests_in_flight >= self._max_in_flight
                    ):
                        wait_s = None  # max_in_flight requests to the broker: wait for one
                    else:
                        wait_s = self._collect(to_send, to_compress)
                        if to_send or to_compress:
                            break
                        if self._streaming and self._requests_in_flight:
                            watch = self._stream_watchdog()
                            if watch is not None:
                                wait_s = watch if wait_s is None else min(wait_s, watch)
                    if acc._closed and not acc._pending:
                        if self._stream is not None:
                            self._stream.close()
                        if self._pool is not None:
                            self._pool.shutdown(wait=False)
                        return
                    self._next_to_compress(to_compress)
                    if to_compress:
                        break
                    acc._cond.wait(wait_s)
                if to_compress:
                    self._next_to_compress(to_compress)  # fill the pool's threads
                    if self._pool is not None:
                        for batch in to_compress:
                            batch.compressing = True
                        self._compressing += len(to_compress)
            if take_id:
                self._take_new_id()
                continue
            self._compress_all(to_compress)
            if self._streaming and to_send:
                for batch in to_send:
                    self._send_stream(batch)
            elif self._multi_produce is not None and to_send:
                self._send_multi(to_send)
            else:
                for batch in to_send:
                    self._send(batch)
            if time.monotonic() >= self._refresh_at:
                self._refresh_at = time.monotonic() + self._metadata_max_age_s
                try:
                    acc.refresh_metadata()
                except errors.LogStoreError:
                    pass  # keep the old metadata; the next produce reports real trouble

    def _want_stream(self) -> bool:
        """Whether requests should go on the ProduceStream now (lock held)."""
        return self._open_stream is not None and len(self._acc._active) <= STREAM_MAX_PARTITIONS

    def _stream_watchdog(self) -> float | None:
        """End the stream if its oldest request outlived the request timeout
        (its batches then fail as a unary call's would); else how long until
        it would (None: nothing on the stream). Lock held."""
        stream = self._stream
        sent = stream.oldest() if stream is not None else None
        if stream is None or sent is None:
            return None
        left = sent + self._request_timeout_s - time.monotonic()
        if left > 0:
            return left
        stream.time_out()
        return None

    def _take_new_id(self) -> None:
        """InitProducer after a broken sequence (lock not held). A retriable failure
        is tried again after a backoff; a final one, or one that outlasts the
        oldest waiting batch's delivery timeout, fails every batch not in flight."""
        try:
            self._idem.refresh_if_stale()
            self._init_failures = 0
            return
        except errors.LogStoreError as exc:
            err = exc
        now = time.monotonic()
        acc = self._acc
        with acc._lock:
            waiting = [b for q in acc._active.values() for b in q.unacked] + [
                b for q in acc._active.values() for b in q.full
            ]
            oldest = min((b.deadline for b in waiting), default=now + 3600.0)
            delay = self._backoff.delay_s(self._init_failures, getattr(err, "retry_after_ms", None))
            if retriable(err) and now + delay < oldest:
                self._init_failures += 1
                self._init_retry_at = now + delay
                return
            self._init_failures = 0
            for q in list(acc._active.values()):
                for b in [*q.unacked, *q.full]:
                    acc._complete(b, err)
                q.unacked.clear()
                q.full.clear()
                q.recovering = False
                b_open = q.meta.open[q.partition]
                if b_open is not None:
                    acc._complete(acc._take_open(q.meta, q.partition), err)
            acc._active.clear()

    def _collect(self, out: list[ProducerBatch], to_compress: list[ProducerBatch]) -> float | None:
        """Take the batches to send now, numbered in order (and, with a codec,
        the next ones to compress first); returns how long to wait otherwise
        (None: until woken). Lock held."""
        now = time.monotonic()
        acc = self._acc
        cap = self._max_in_flight
        wait: float | None = None
        idle: list[tuple[str, int]] = []
        if not self._requests_in_flight:
            self._streaming = self._want_stream()
        for tp, q in acc._active.items():
            if q.recovering:
                if q.in_flight:
                    continue  # let every request in flight answer first
                if q.unacked:
                    head = q.unacked[0]
                    if head.retry_at > now:
                        left = head.retry_at - now
                        wait = left if wait is None else min(wait, left)
                        continue
                    self._resend(q, head)
                    out.append(head)
                    continue
                q.recovering = False
            while len(q.unacked) < cap:
                if not q.full:
                    b = acc._drain_open(q, now)
                    if b is None:
                        still = q.meta.open[q.partition]
                        if still is not None:
                            left = still.created + acc._linger_s - now
                            wait = left if wait is None else min(wait, left)
                        break
                    q.full.append(b)
                batch = q.full[0]
                if self._codec != CODEC_NONE and not batch.pool_failed:
                    if batch.compressed is None:
                        if not batch.compressing:
                            to_compress.append(batch)  # then it is numbered and sent
                        break
                    if len(batch.compressed[0]) > q.meta.room:
                        # the ratio estimate let it grow past the room: send halves
                        batch.compressed = None
                        acc._split(q)
                        continue
                q.full.popleft()
                self._number(q, batch)
                out.append(batch)
            if q.idle():
                idle.append(tp)
        for tp in idle:
            del acc._active[tp]
        return wait

    def _number(self, q: PartitionQueue, batch: ProducerBatch) -> None:
        """Give a taken batch its place in the partition's order. Lock held."""
        batch.sent_behind = bool(q.unacked)
        q.unacked.append(batch)
        batch.in_flight = True
        q.in_flight += 1
        idem = self._idem
        if idem.enabled:
            batch.sequence = idem.next_sequence((q.topic, q.partition), batch.count)
            batch.generation = idem.generation
            batch.producer_id = idem.producer_id
            batch.producer_epoch = idem.producer_epoch

    def _resend(self, q: PartitionQueue, batch: ProducerBatch) -> None:
        """Retry the partition's first unacknowledged batch, alone. Lock held."""
        batch.sent_behind = False
        batch.in_flight = True
        q.in_flight += 1
        idem = self._idem
        if batch.rebuild and idem.enabled:
            # refused as out of order under an id whose sequence broke: not
            # stored, so it takes the next sequence under the current id
            batch.rebuild = False
            batch.header = None
            batch.sequence = idem.next_sequence((q.topic, q.partition), batch.count)
            batch.generation = idem.generation
            batch.producer_id = idem.producer_id
            batch.producer_epoch = idem.producer_epoch

    def _next_to_compress(self, out: list[ProducerBatch]) -> None:
        """Add to ``out``, up to ``compression_threads`` batches in all, full
        batches waiting behind their partition's in-flight requests whose
        records are not compressed yet (lock held): compressing them now
        overlaps those round trips instead of adding to the next one (a 1 MiB
        batch costs ~1.2 ms in zstd 1, ~0.8 ms in lz4)."""
        if self._codec == CODEC_NONE:
            return
        want = max(1, self._compression_threads) - self._compressing
        for q in self._acc._active.values():
            for batch in q.full:
                if len(out) >= want:
                    return
                if (
                    batch.compressed is None
                    and batch.payload is None
                    and not batch.compressing
                    and not batch.pool_failed
                    and batch not in out
                ):
                    out.append(batch)

    def _compress_all(self, batches: list[ProducerBatch]) -> None:
        """Compress ``batches`` (lock not held): on this thread without a pool;
        else hand them to the pool (``_run`` marked them ``compressing``) and
        return at once: :meth:`_pool_compress` brings each back."""
        if self._pool is None:
            for batch in batches:
                batch.compressed = self._compress(batch)
            return
        for batch in batches:
            self._pool.submit(self._pool_compress, batch)

    def _pool_compress(self, batch: ProducerBatch) -> None:
        """On a compression thread: compress, then under the lock set the result,
        update the ratio estimate and wake the sender."""
        out: tuple[bytes, int] | None = None
        try:
            out = self._encode(batch)
        finally:
            with self._acc._lock:
                batch.compressing = False
                self._compressing -= 1
                if out is None:
                    batch.pool_failed = True  # the sender retries it, failing it if it fails
                else:
                    batch.compressed = out
                    self._acc._topics[batch.topic].observe(batch.size, len(out[0]))
                self._acc._cond.notify_all()

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

    def _prepare(self, batch: ProducerBatch) -> None:
        """Join (and compress) the records once, fix CRC and timestamps. Lock not held."""
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
        batch.base_ts = base_ts
        batch.max_ts = max(base_ts, batch.explicit_max_ts) if batch.explicit_count else base_ts
        batch.payload = records
        batch.codec = codec
        batch.crc = crc32c(records)

    def _header(self, batch: ProducerBatch) -> bytes:
        """The ProduceRequest fields but the records (lock not held)."""
        header = logstore_pb2.ProduceRequest(
            topic=batch.topic,
            partition=batch.partition,
            acks=self._acks,  # type: ignore[arg-type]
            request_id=next(self._request_id),
            records_crc32c=batch.crc,
            base_timestamp_ms=batch.base_ts,
            max_timestamp_ms=batch.max_ts,
            compression=batch.codec,  # type: ignore[arg-type]
        )
        if self._idem.enabled:
            header.producer_id = batch.producer_id
            header.producer_epoch = batch.producer_epoch
            header.base_sequence = batch.sequence
        return header.SerializeToString()

    def _request_of(self, batch: ProducerBatch) -> bool:
        """Build ``batch.header`` if it has none yet (compress, then the header);
        False, with the batch failed through ``_on_done``, if that fails."""
        try:
            if batch.payload is None:
                self._prepare(batch)
            if batch.header is None:
                batch.header = self._header(batch)
        except errors.LogStoreError as exc:
            self._requests_in_flight += 1
            self._on_done([batch], None, exc)
            return False
        return True

    def _send(self, batch: ProducerBatch) -> None:
        """Issue (or re-issue) a batch's request. Lock not held."""
        if not self._request_of(batch):
            return
        assert batch.header is not None and batch.payload is not None
        request = batch.header + batch.payload
        batch.attempts += 1
        left = batch.deadline - time.monotonic()
        timeout = max(0.001, min(self._request_timeout_s, left))

        def callback(resp: Any, exc: BaseException | None) -> None:
            self._on_done([batch], resp, exc)

        self._requests_in_flight += 1
        try:
            self._transport.produce(request, timeout, callback)
        except BaseException as exc:
            self._on_done([batch], None, translate(exc, self._address))

    def _send_stream(self, batch: ProducerBatch) -> None:
        """Write a batch's request on the ProduceStream (opened if needed). Lock not held."""
        if not self._request_of(batch):
            return
        assert batch.header is not None and batch.payload is not None
        assert self._open_stream is not None
        batch.attempts += 1
        self._requests_in_flight += 1
        stream = self._stream
        if stream is None or stream.ended:
            try:
                stream = self._stream = self._open_stream(self._on_stream_reply)
            except BaseException as exc:
                self._on_done([batch], None, translate(exc, self._address))
                return
        stream.send(batch, batch.header + batch.payload)

    def _on_stream_reply(
        self,
        batch: ProducerBatch,
        resp: logstore_pb2.ProduceResponse | None,
        exc: BaseException | None,
    ) -> None:
        self._on_done([batch], resp, exc)

    def _send_multi(self, batches: list[ProducerBatch]) -> None:
        """Send the batches taken in one pass as MultiProduce requests: one, unless
        they pass ``max_request_bytes`` (then as few as fit). Lock not held."""
        chunk: list[ProducerBatch] = []
        size = 0
        for batch in batches:
            if not self._request_of(batch):
                continue
            assert batch.header is not None and batch.payload is not None
            n = len(batch.header) + len(batch.payload) + 6
            if chunk and size + n > self._max_request_bytes:
                self._issue_multi(chunk)
                chunk, size = [], 0
            chunk.append(batch)
            size += n
        if chunk:
            self._issue_multi(chunk)

    def _issue_multi(self, batches: list[ProducerBatch]) -> None:
        head = logstore_pb2.MultiProduceRequest(
            acks=self._acks,  # type: ignore[arg-type]
            request_id=next(self._request_id),
        ).SerializeToString()
        out = [head]
        for batch in batches:
            header, payload = batch.header, batch.payload
            assert header is not None and payload is not None
            out += (_BATCHES_TAG, varint(len(header) + len(payload)), header, payload)
            batch.attempts += 1
        left = min(b.deadline for b in batches) - time.monotonic()
        timeout = max(0.001, min(self._request_timeout_s, left))

        def callback(resp: Any, exc: BaseException | None) -> None:
            self._on_done(batches, resp, exc)

        self._requests_in_flight += 1
        multi = self._multi_produce
        assert multi is not None
        try:
            multi(b"".join(out), timeout, callback)
        except BaseException as exc:
            self._on_done(batches, None, translate(exc, self._address))

    def _on_done(self, batches: list[ProducerBatch], resp: Any, exc: BaseException | None) -> None:
        acc = self._acc
        with acc._lock:
            self._completions.append((batches, resp, exc))
            acc._cond.notify_all()

    def _drain_completions(self) -> None:
        """Complete, retry or fail batches whose request finished. Lock held."""
        while self._completions:
            batches, resp, exc = self._completions.popleft()
            self._requests_in_flight -= 1
            if isinstance(exc, ProduceStreamUnimplemented):
                # an older broker: MultiProduce (or Produce) from now on, these again
                self._open_stream = None
                exc = errors.BrokerUnavailableError(f"ProduceStream unimplemented: {exc}")
            if isinstance(exc, MultiProduceUnimplemented):
                # an older broker: one Produce per batch from now on, these again
                self._multi_produce = None
                exc = errors.BrokerUnavailableError(f"MultiProduce unimplemented: {exc}")
            if exc is not None or not isinstance(resp, logstore_pb2.MultiProduceResponse):
                for batch in batches:
                    self._settle(batch, resp, exc)
                continue
            results = resp.results
            if len(results) != len(batches):
                err = errors.InternalError(
                    f"MultiProduce answered {len(results)} results for {len(batches)} batches"
                )
                for batch in batches:
                    self._settle(batch, None, err)
                continue
            for batch, r in zip(batches, results, strict=True):
                if r.status.code:
                    self._settle(batch, None, translate_status(r.status, self._address))
                else:
                    self._settle(batch, r, None)

    def _settle(self, batch: ProducerBatch, resp: Any, exc: BaseException | None) -> None:
        """One batch's answer (see the module docstring). Lock held."""
        acc = self._acc
        idem = self._idem
        q = acc._queues[(batch.topic, batch.partition)]
        batch.in_flight = False
        q.in_flight -= 1
        if exc is None:
            q.unacked.remove(batch)
            batch.base_offset = resp.base_offset
            acc._complete(batch, None)
            if not q.unacked:
                q.recovering = False
            return
        err = translate(exc, self._address)
        now = time.monotonic()
        if idem.enabled and isinstance(err, errors.OutOfOrderSequenceError):
            old_id = batch.generation != idem.generation or idem.stale
            if old_id or batch.sent_behind:
                # Not stored: it goes again once the batches before it are settled.
                batch.rebuild = old_id
                batch.retry_at = now
                q.recovering = True
                return
        elif retriable(err):
            hint = getattr(err, "retry_after_ms", None)
            delay = self._backoff.delay_s(batch.attempts - 1, hint)
            if now + delay < batch.deadline:
                batch.retry_at = now + delay
                q.recovering = True
                return
            err = type(err)(
                f"{err} (gave up after {batch.attempts} attempt(s): "
                f"delivery_timeout_ms={acc._delivery_timeout_ms})"
            )
        q.unacked.remove(batch)
        if idem.enabled:
            # The broker may or may not hold this batch: the sequence is broken.
            idem.sequence_broken()
        acc._complete(batch, err)
        if not q.unacked:
            q.recovering = False
