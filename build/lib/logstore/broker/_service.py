"""The LogStore gRPC service: decode, one call into the store, encode.

Data path (DESIGN.md, "the bytes on disk are the bytes on the wire"):

- Produce / ProduceStream receive the raw request bytes (identity request
  deserializer); :func:`logstore.wire.split_produce_request` parses the small
  header fields with upb and hands the records' bytes to
  ``Store.append_raw`` unchanged. Work per request, never per record.
- Fetch / Subscribe reply with ``FetchResult.data`` (stored frames, CRC-checked
  by the store) followed by the serialized ``high_watermark`` and
  ``log_start_offset`` fields (identity response serializer): the batches are
  never parsed or re-serialized. Protobuf readers accept fields in any order.

Threads: handlers run on the event loop; every store call that may touch the
disk runs in a bounded thread pool (``io_threads``) so a slow disk never
stalls the loop. Cheap in-memory lookups (``store.topic``) run inline.
The store's append listener runs on the appending thread and only schedules
a wake-up on the loop (``call_soon_threadsafe``) when someone is waiting on
that partition.

Memory bounds: produce request bytes are counted from arrival until the
append returns (acks=NONE: until the queued append finishes); Subscribe awaits
each write (HTTP/2 flow control), so a reader that stops reading holds at most
one message of ``subscribe_max_bytes`` plus the transport's window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from logstore.errors import (
    InvalidArgumentError,
    InvalidBatchError,
    LogStoreError,
    OffsetOutOfRangeError,
    StoreClosedError,
    UnknownPartitionError,
)
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import HEADER_SIZE, SplitRequest, partition_for_key, split_produce_request

from ._config import MAX_WAIT_MS_CAP, BrokerConfig
from ._limits import Limits
from ._metrics import BrokerMetrics
from ._status import OK_STATUS, abort, log_unexpected, rich_status

if TYPE_CHECKING:
    from logstore.storage import AppendResult, FetchResult, Store, TopicInfo

log = logging.getLogger("logstore.broker")

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
PartitionKey = tuple[str, int]

DEFAULT_MAX_BYTES: Final = 1 << 20
_SUBSCRIBE_RECHECK_S: Final = 5.0


class LogStoreService:
    """Handlers of ``logstore.v1.LogStore``; one per broker."""

    def __init__(self, store: Store, config: BrokerConfig, metrics: BrokerMetrics) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._limits = Limits(
            max_concurrent_requests=config.max_concurrent_requests,
            max_inflight_produce_bytes=config.max_inflight_produce_bytes,
            max_long_poll_waiters=config.max_long_poll_waiters,
            max_subscriptions=config.max_subscriptions,
            retry_after_ms=config.retry_after_ms,
            on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
        )
        self._pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="logstore-io")
        # Events of Fetch long polls and Subscribe streams, per partition. Read
        # (membership only) from appending threads; mutated on the loop only.
        self._waiters: dict[PartitionKey, set[asyncio.Event]] = {}
        # acks=NONE appends, chained per partition so a client's batches keep
        # their order; the tasks are kept so shutdown can wait for them.
        self._none_tail: dict[PartitionKey, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._store.add_append_listener(self._on_append)

    def begin_shutdown(self) -> None:
        """Refuse new requests; answer long polls and end subscriptions now."""
        self._stopping = True
        self._stop_event.set()
        for events in self._waiters.values():
            for ev in events:
                ev.set()

    async def drain_background(self) -> None:
        """Wait for queued acks=NONE appends, then stop the I/O threads."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in the I/O pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args))

    # -- wake-ups ------------------------------------------------------------

    def _on_append(self, topic: str, partition: int, end_offset: int) -> None:
        # Appending thread. A racy membership test is enough: a waiter
        # registers first and reads after, so an append it misses here is one
        # its own read sees.
        if (topic, partition) in self._waiters and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, (topic, partition))

    def _wake(self, key: PartitionKey) -> None:
        for ev in self._waiters.get(key, ()):
            ev.set()

    def _register(self, key: PartitionKey) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.setdefault(key, set()).add(ev)
        if self._stopping:
            ev.set()
        return ev

    def _unregister(self, key: PartitionKey, ev: asyncio.Event) -> None:
        events = self._waiters.get(key)
        if events is not None:
            events.discard(ev)
            if not events:
                del self._waiters[key]

    # -- handler wrappers (admission, metrics, the one error boundary) --------

    def wrap(
        self, method: str, fn: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[[Any, Context], Coroutine[Any, Any, Any]]:
        """Wrap ``fn``: admission, the error -> status boundary, metrics."""
        gauge = self._limits.subscriptions if method == "Subscribe" else self._limits.requests
        gauge_metric = (
            self._metrics.subscriptions
            if method == "Subscribe"
            else self._metrics.inflight_requests
        )
        requests = self._metrics.requests
        latency = self._metrics.latency.labels(method)

        async def handler(request: Any, context: Context) -> Any:
            t0 = time.perf_counter()
            try:
                if self._stopping:
                    raise StoreClosedError("the broker is shutting down; retry on its restart")
                gauge.acquire()
            except LogStoreError as exc:
                requests.labels(method, exc.status).inc()
                await abort(context, exc)
            gauge_metric.inc()
            code = "OK"
            try:
                return await fn(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = _code(exc)
                log_unexpected(exc, method)
                await abort(context, exc)
            finally:
                gauge.release()
                gauge_metric.dec()
                requests.labels(method, code).inc()
                latency.observe(time.perf_counter() - t0)

        return handler

    # -- produce -------------------------------------------------------------

    def _route(self, header: pb.ProduceRequest) -> tuple[str, int, TopicInfo]:
        if not header.topic:
            raise InvalidArgumentError("topic is required")
        has_partition = header.HasField("partition")
        has_key = header.HasField("partition_key")
        if has_partition == has_key:
            raise InvalidArgumentError(
                "set exactly one of partition and partition_key "
                f"(got {'both' if has_partition else 'neither'})"
            )
        info = self._store.topic(header.topic)
        if has_key:
            return header.topic, partition_for_key(header.partition_key, info.partitions), info
        p = header.partition
        if not 0 <= p < info.partitions:
            raise UnknownPartitionError(
                f"topic {header.topic!r} has partitions 0..{info.partitions - 1}; "
                f"there is no partition {p}"
            )
        return header.topic, p, info

    def _check_batch(self, split: SplitRequest, info: TopicInfo) -> None:
        # The store checks this too; checking here rejects the batch before an
        # acks=NONE reply is sent (the stored batch is header + records).
        size = HEADER_SIZE + len(split.records)
        if size > info.config.max_batch_bytes:
            raise InvalidBatchError(
                f"batch of {size} bytes exceeds max_batch_bytes {info.config.max_batch_bytes} "
                f"of topic {info.name!r}; split it into smaller batches"
            )

    def _append_blocking(self, topic: str, partition: int, split: SplitRequest) -> AppendResult:
        h = split.header
        return self._store.append_raw(
            topic,
            partition,
            split.records,
            split.record_count,
            base_timestamp_ms=h.base_timestamp_ms if h.HasField("base_timestamp_ms") else None,
            max_timestamp_ms=h.max_timestamp_ms if h.HasField("max_timestamp_ms") else None,
            producer_id=h.producer_id,
            producer_epoch=h.producer_epoch,
            base_sequence=h.base_sequence,
        )

    async def _append(self, topic: str, partition: int, split: SplitRequest) -> AppendResult:
        result = await self.run_io(self._append_blocking, topic, partition, split)
        if result.duplicate:
            self._metrics.produce_duplicates.inc()
            log.info(
                "duplicate batch answered with its original offset",
                extra={
                    "fields": {
                        "topic": topic,
                        "partition": partition,
                        "offset": result.base_offset,
                        "producer_id": split.header.producer_id,
                        "sequence": split.header.base_sequence,
                    }
                },
            )
        else:
            self._metrics.produce_bytes.labels(topic).inc(len(split.records))
            self._metrics.produce_records.labels(topic).inc(split.record_count)
            self._metrics.produce_batches.labels(topic).inc()
        return result

    async def _sync(self, topic: str, partition: int, end_offset: int) -> None:
        t0 = time.perf_counter()
        # shield: cancelling this task (the client went away) must not cancel
        # the store's future, which the flusher thread completes later.
        await asyncio.shield(asyncio.wrap_future(self._store.sync_to(topic, partition, end_offset)))
        self._metrics.sync_wait.observe(time.perf_counter() - t0)

    def _acquire_bytes(self, size: int) -> None:
        self._limits.produce_bytes.acquire(size)
        self._metrics.inflight_bytes.inc(size)

    def _release_bytes(self, size: int) -> None:
        self._limits.produce_bytes.release(size)
        self._metrics.inflight_bytes.dec(size)

    def _queue_none(self, topic: str, partition: int, split: SplitRequest, size: int) -> None:
        """acks=NONE: append in the background, after this partition's earlier ones."""
        key = (topic, partition)
        previous = self._none_tail.get(key)

        async def run() -> None:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                result = await self._append(topic, partition, split)
                log.debug(
                    "acks=NONE batch appended",
                    extra={
                        "fields": {
                            "topic": topic,
                            "partition": partition,
                            "offset": result.base_offset,
                        }
                    },
                )
            except Exception as exc:
                self._metrics.acks_none_errors.inc()
                log.warning(
                    "acks=NONE batch failed after its reply: %s",
                    exc,
                    extra={"fields": {"topic": topic, "partition": partition}},
                )
            finally:
                self._release_bytes(size)
                if self._none_tail.get(key) is task:
                    del self._none_tail[key]

        task = asyncio.get_running_loop().create_task(run())
        self._none_tail[key] = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _produce_one(
        self, raw: bytes
    ) -> tuple[int, Callable[[], Awaitable[pb.ProduceResponse]]]:
        """Validate and append one request; return what completes its reply.

        Appends happen in call order (a ProduceStream awaits this before
        reading its next request); the returned callable waits for the fsync
        when acks=ALL, so fsyncs of a stream overlap with later appends.
        """
        size = len(raw)
        self._acquire_bytes(size)
        held = True
        try:
            split = split_produce_request(raw)
            header = split.header
            topic, partition, info = self._route(header)
            self._check_batch(split, info)
            if header.acks == pb.ACKS_NONE:
                self._queue_none(topic, partition, split, size)
                held = False
                reply = pb.ProduceResponse(
                    request_id=header.request_id, partition=partition, base_offset=-1
                )

                async def none_reply() -> pb.ProduceResponse:
                    return reply

                return header.request_id, none_reply
            result = await self._append(topic, partition, split)
        finally:
            if held:
                self._release_bytes(size)
        reply = pb.ProduceResponse(
            request_id=header.request_id,
            partition=partition,
            base_offset=result.base_offset,
            timestamp_ms=result.timestamp_ms,
            log_start_offset=result.log_start_offset,
            duplicate=result.duplicate,
        )
        log.debug(
            "batch appended",
            extra={
                "fields": {
                    "topic": topic,
                    "partition": partition,
                    "offset": result.base_offset,
                    "last_offset": result.last_offset,
                }
            },
        )
        if header.acks == pb.ACKS_LEADER:

            async def leader_reply() -> pb.ProduceResponse:
                return reply

            return header.request_id, leader_reply

        async def all_reply() -> pb.ProduceResponse:
            await self._sync(topic, partition, result.last_offset + 1)
            return reply

        return header.request_id, all_reply

    async def produce(self, raw: bytes, context: Context) -> pb.ProduceResponse:
        _, complete = await self._produce_one(raw)
        return await complete()

    async def produce_stream(self, requests: AsyncIterator[bytes], context: Context) -> None:
        """Append each request in order; reply in order; end at once when idle at shutdown.

        A reader task appends (in request order) and queues each request's
        completion; this coroutine awaits them in order and writes the replies.
        The queue holds at most ``produce_stream_max_inflight`` requests, so a
        client that never reads its replies stops being read from (HTTP/2
        flow control) instead of growing the broker.
        """
        queue: asyncio.Queue[Callable[[], Awaitable[pb.ProduceResponse]] | None] = asyncio.Queue(
            self._config.produce_stream_max_inflight
        )
        waiting_for_client = [True]  # the reader is blocked on the client, not appending

        async def read_all() -> None:
            iterator = aiter(requests)
            while True:
                waiting_for_client[0] = True
                try:
                    raw = await anext(iterator)
                except StopAsyncIteration:
                    break
                finally:
                    waiting_for_client[0] = False
                await queue.put(await self._stream_one(raw))
            await queue.put(None)

        loop = asyncio.get_running_loop()
        reader = loop.create_task(read_all())
        stopping = loop.create_task(self._stop_event.wait())
        try:
            while True:
                if self._stopping and queue.empty() and waiting_for_client[0]:
                    # Every batch read so far has been answered.
                    raise StoreClosedError(
                        "the broker is shutting down; every batch sent on this stream before "
                        "this status was answered; resend the rest when it is back"
                    )
                if reader.done() and queue.empty():
                    reader.result()  # the request stream itself failed
                    return
                get = loop.create_task(queue.get())
                waits: set[asyncio.Future[Any]] = {get}
                if not reader.done():
                    waits.add(reader)
                if not self._stopping:
                    waits.add(stopping)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                item = get.result()
                if item is None:
                    return
                await context.write(await item())
        finally:
            reader.cancel()
            stopping.cancel()

    async def _stream_one(self, raw: bytes) -> Callable[[], Awaitable[pb.ProduceResponse]]:
        """Like _produce_one, but any failure becomes this request's own status."""
        batches = self._metrics.requests
        try:
            request_id, complete = await self._produce_one(raw)
        except Exception as exc:
            batches.labels("ProduceStream.batch", _code(exc)).inc()
            return _error_reply(_peek_request_id(raw), exc)
        # From here on nothing refers to `raw`: up to produce_stream_max_inflight
        # completions wait in the stream's queue and must not pin request bytes.

        async def guarded() -> pb.ProduceResponse:
            try:
                reply = await complete()
            except Exception as exc:
                batches.labels("ProduceStream.batch", _code(exc)).inc()
                return await _error_reply(request_id, exc)()
            reply.status.CopyFrom(OK_STATUS)
            batches.labels("ProduceStream.batch", "OK").inc()
            return reply

        return guarded

    # -- fetch and subscribe -------------------------------------------------

    def _read_blocking(
        self, topic: str, partition: int, offset: int, max_bytes: int
    ) -> FetchResult:
        return self._store.read_frames(topic, partition, offset, max_bytes)

    async def _read(self, topic: str, partition: int, offset: int, max_bytes: int) -> FetchResult:
        return await self.run_io(self._read_blocking, topic, partition, offset, max_bytes)

    def _account_read(self, method: str, result: FetchResult, offset: int) -> None:
        if result.data:
            self._metrics.fetch_bytes.labels(method).inc(len(result.data))
            self._metrics.fetch_records.labels(method).inc(max(0, result.next_offset - offset))

    async def fetch(self, request: pb.FetchRequest, context: Context) -> bytes:
        if request.max_bytes < 0 or request.min_bytes < 0 or request.max_wait_ms < 0:
            raise InvalidArgumentError("max_bytes, min_bytes and max_wait_ms must be >= 0")
        max_bytes = min(request.max_bytes or DEFAULT_MAX_BYTES, self._config.fetch_max_bytes)
        need = min(request.min_bytes, max_bytes)
        wait_ms = min(request.max_wait_ms, MAX_WAIT_MS_CAP)
        topic, partition, offset = request.topic, request.partition, request.offset
        result = await self._read(topic, partition, offset, max_bytes)
        if len(result.data) < need and wait_ms > 0 and not self._stopping:
            result = await self._long_poll(topic, partition, offset, max_bytes, need, wait_ms)
        self._account_read("Fetch", result, offset)
        return _frames_reply(result)

    async def _long_poll(
        self, topic: str, partition: int, offset: int, max_bytes: int, need: int, wait_ms: int
    ) -> FetchResult:
        self._limits.waiters.acquire()
        self._metrics.long_poll_waiters.inc()
        key = (topic, partition)
        ev = self._register(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        try:
            while True:
                ev.clear()
                # Read after registering: an append between the first read and
                # the registration is seen here, so no wake-up is lost.
                result = await self._read(topic, partition, offset, max_bytes)
                remaining = deadline - loop.time()
                if len(result.data) >= need or remaining <= 0 or self._stopping:
                    return result
                try:
                    await asyncio.wait_for(ev.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            self._unregister(key, ev)
            self._limits.waiters.release()
            self._metrics.long_poll_waiters.dec()

    async def _start_offset(self, request: pb.SubscribeRequest) -> int:
        topic, partition = request.topic, request.partition
        start, end = self._store.offsets(topic, partition)
        which = request.WhichOneof("start")
        if which == "offset":
            if not start <= request.offset <= end:
                raise OffsetOutOfRangeError(
                    f"offset {request.offset} is out of range for {topic}-{partition}: "
                    f"valid offsets are {start}..{end} (log start offset..log end offset)",
                    start,
                    end,
                )
            return request.offset
        if which == "timestamp_ms":
            found = await self.run_io(
                self._store.offset_for_time, topic, partition, request.timestamp_ms
            )
            return end if found is None else found
        if which == "position" and request.position == pb.START_POSITION_LATEST:
            return end
        return start

    async def subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        if request.max_bytes < 0:
            raise InvalidArgumentError("max_bytes must be >= 0")
        max_bytes = min(request.max_bytes or DEFAULT_MAX_BYTES, self._config.subscribe_max_bytes)
        topic, partition = request.topic, request.partition
        offset = await self._start_offset(request)
        key = (topic, partition)
        ev = self._register(key)
        log.info(
            "subscription started",
            extra={"fields": {"topic": topic, "partition": partition, "offset": offset}},
        )
        try:
            while not self._stopping:
                ev.clear()
                result = await self._read(topic, partition, offset, max_bytes)
                if not result.data:
                    # Re-read now and then even without appends, so a deleted
                    # topic or retention past `offset` ends the stream.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ev.wait(), _SUBSCRIBE_RECHECK_S)
                    continue
                await self._write_or_stop(context, _frames_reply(result), ev)
                self._account_read("Subscribe", result, offset)
                offset = result.next_offset
            raise StoreClosedError(
                f"the broker is shutting down; resubscribe to {topic}-{partition} from offset "
                f"{offset} when it is back"
            )
        finally:
            self._unregister(key, ev)

    async def _write_or_stop(self, context: Context, message: bytes, ev: asyncio.Event) -> None:
        """Await the write (flow control); give up at once when shutting down."""
        write = asyncio.ensure_future(context.write(message))
        # If this handler is cancelled (the client went away), the write fails
        # on its own; retrieve that so it is not reported as unhandled.
        write.add_done_callback(_consume_exception)
        try:
            while not write.done():
                if self._stopping:
                    raise StoreClosedError(
                        "the broker is shutting down; resubscribe when it is back"
                    )
                ev.clear()
                stop = asyncio.ensure_future(ev.wait())
                try:
                    await asyncio.wait({write, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
            write.result()
        finally:
            write.cancel()


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _code(exc: BaseException) -> str:
    return exc.status if isinstance(exc, LogStoreError) else "INTERNAL"


def _frames_reply(result: FetchResult) -> bytes:
    """Stored frames + the two small fields, as one serialized FetchResponse."""
    tail = pb.FetchResponse(
        high_watermark=result.high_watermark, log_start_offset=result.log_start_offset
    ).SerializeToString()
    return bytes(result.data) + tail if result.data else tail


def _peek_request_id(raw: bytes) -> int:
    """request_id of a request that may be malformed (0 when unreadable)."""
    try:
        return int(pb.ProduceRequest.FromString(raw).request_id)
    except DecodeError:
        return 0


def _error_reply(
    request_id: int, exc: BaseException
) -> Callable[[], Awaitable[pb.ProduceResponse]]:
    log_unexpected(exc, "ProduceStream batch")
    reply = pb.ProduceResponse(request_id=request_id, base_offset=-1, status=rich_status(exc))

    async def done() -> pb.ProduceResponse:
        return reply

    return done
