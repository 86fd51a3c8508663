"""Produce, ProduceStream and InitProducer: validate, append, reply.

Data path (DESIGN.md, "the bytes on disk are the bytes on the wire"): Produce
and ProduceStream receive the raw request bytes;
:func:`logstore.wire.split_produce_request` parses the small header fields
with upb and hands the records' bytes to ``Store.append_raw`` unchanged. Work
per request, never per record. A compressed batch is stored as sent too
(its compressed_records field); it is decompressed once, bounded, on an I/O
thread (not the event loop: up to ~130 ms for 64 MiB of gzip output) to
validate and count its records, and ``max_batch_bytes`` counts its
compressed size. A topic whose ``compression_type`` names a codec
has every batch sent with another one recompressed to it (on an I/O thread)
before that check.

Where the append runs: an uncompressed batch of at most
``inline_append_max_bytes`` (64 KiB) is appended on the event loop
(``Store.try_append_raw``: a page-cache write; a roll waits for no fsync), so
a small message costs no thread-pool hop and no future; a larger or
compressed one, or one whose partition lock is busy (a retention pass, a
cleaner swap), is appended on an I/O thread (``Runtime.run_io``).

acks: NONE replies once the batch is validated and queued (appends of one
partition stay in order, chained per partition; shutdown waits for them);
LEADER once appended; ALL once fsynced (group commit, the reply waits on the
store's future for the offset after the batch, handed to the loop by
``Runtime.wait_threadsafe``: one ``call_soon_threadsafe`` per flusher turn).

Memory bounds: request bytes are counted against max_inflight_produce_bytes
from arrival until the append returns (acks=NONE: until the queued append
finishes). A ProduceStream holds at most ``produce_stream_max_inflight``
requests between reading and replying.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import DecodeError

from logstore.errors import InvalidArgumentError
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import (
    HEADER_SIZE,
    ProduceHead,
    SplitRequest,
    codec_of,
    decompress_reservation,
    partition_for_key,
    recompress,
    split_produce_request,
)

from .._runtime import Context, Runtime, shutting_down, write_reply
from .._status import OK_STATUS, log_unexpected, rich_status
from ._common import check_client_writable, check_enum, status_name

if TYPE_CHECKING:
    from logstore.storage import AppendResult, PartitionLog

log = logging.getLogger("logstore.broker")

PartitionKey = tuple[str, int]

#: Topics whose produce counters ProduceHandlers keeps at hand (the cache is
#: emptied past it; each entry is three references to the registry's own
#: children).
_MAX_CACHED_TOPICS: Final = 10_000


class ProduceHandlers:
    """Produce, ProduceStream and InitProducer."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        # acks=NONE appends, chained per partition so a client's batches keep
        # their order; shutdown waits for them (Runtime.spawn).
        self._none_tail: dict[PartitionKey, asyncio.Future[None]] = {}
        self._counters: dict[str, tuple[Any, Any, Any]] = {}
        self._batch_ok = runtime.metrics.requests.labels("ProduceStream.batch", "OK")

    async def init_producer(
        self, request: pb.InitProducerRequest, context: Context
    ) -> pb.InitProducerResponse:
        producer_id, epoch = await self._rt.run_io(self._rt.store.init_producer)
        log.info(
            "producer id issued", extra={"fields": {"producer_id": producer_id, "epoch": epoch}}
        )
        return pb.InitProducerResponse(producer_id=producer_id, producer_epoch=epoch)

    def _route(self, header: pb.ProduceRequest) -> tuple[str, int, PartitionLog]:
        """The partition a request goes to (by number or by key), from the store.

        An unknown topic or partition is the store's own error
        (``Store.topic`` / ``Store.partition``), the one place that knows.
        """
        if not header.topic:
            raise InvalidArgumentError("topic is required")
        check_client_writable(header.topic)
        refusal = self._rt.produce_refusals.get(header.topic)
        if refusal is not None:  # share-group back pressure (QUEUE_LATENCY_EXCEEDED)
            raise refusal
        has_partition = header.HasField("partition")
        has_key = header.HasField("partition_key")
        if has_partition == has_key:
            raise InvalidArgumentError(
                "set exactly one of partition and partition_key "
                f"(got {'both' if has_partition else 'neither'})"
            )
        store = self._rt.store
        if has_key:
            count = store.topic(header.topic).partitions
            p = partition_for_key(header.partition_key, count)
        else:
            p = header.partition
        return header.topic, p, store.partition(header.topic, p)

    def _append_blocking(self, topic: str, partition: int, split: SplitRequest) -> AppendResult:
        h = split.header
        return self._rt.store.append_raw(
            topic,
            partition,
            split.records,
            split.record_count,
            base_timestamp_ms=h.base_timestamp_ms if h.HasField("base_timestamp_ms") else None,
            # Computed from the records, never the client's optional field.
            max_timestamp_ms=split.max_timestamp_ms,
            producer_id=h.producer_id,
            producer_epoch=h.producer_epoch,
            base_sequence=h.base_sequence,
            codec=split.codec,
            plain=split.plain,
        )

    def _append_inline(
        self, topic: str, partition: int, split: SplitRequest
    ) -> AppendResult | None:
        """The append on the event loop, or None if it must go to a thread
        (see the module docstring)."""
        if split.codec or len(split.records) > self._rt.config.inline_append_max_bytes:
            return None
        h = split.header
        return self._rt.store.try_append_raw(
            topic,
            partition,
            split.records,
            split.record_count,
            base_timestamp_ms=h.base_timestamp_ms if h.HasField("base_timestamp_ms") else None,
            max_timestamp_ms=split.max_timestamp_ms,
            producer_id=h.producer_id,
            producer_epoch=h.producer_epoch,
            base_sequence=h.base_sequence,
        )

    async def _append(self, topic: str, partition: int, split: SplitRequest) -> AppendResult:
        result = self._append_inline(topic, partition, split)
        if result is None:
            result = await self._rt.run_io(self._append_blocking, topic, partition, split)
        if result.duplicate:
            self._rt.metrics.produce_duplicates.inc()
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
            produced_bytes, records, batches = self._topic_counters(topic)
            produced_bytes.inc(len(split.records))
            records.inc(split.record_count)
            batches.inc()
        return result

    def _topic_counters(self, topic: str) -> tuple[Any, Any, Any]:
        """The topic's produce bytes / records / batches counters: a
        ``labels()`` lookup costs ~1.5 us, three per batch; the children are
        kept (as the registry keeps them), at most _MAX_CACHED_TOPICS."""
        counters = self._counters.get(topic)
        if counters is None:
            if len(self._counters) >= _MAX_CACHED_TOPICS:
                self._counters.clear()
            m = self._rt.metrics
            counters = (
                m.produce_bytes.labels(topic),
                m.produce_records.labels(topic),
                m.produce_batches.labels(topic),
            )
            self._counters[topic] = counters
        return counters

    async def _sync(self, topic: str, partition: int, end_offset: int) -> None:
        t0 = time.perf_counter()
        # Cancelling this task (the client went away) leaves the store's
        # future alone (the flusher completes it later): wait_threadsafe's
        # loop future is this task's own.
        await self._rt.wait_threadsafe(self._rt.store.sync_to(topic, partition, end_offset))
        self._rt.metrics.sync_wait.observe(time.perf_counter() - t0)

    async def _stored_codec(
        self, topic: str, plog: PartitionLog, split: SplitRequest
    ) -> SplitRequest:
        """The batch as the topic's ``compression_type`` stores it: as sent
        (``producer``, the default: no work), or recompressed to its codec at
        the topic's ``compression_<codec>_level`` on an I/O thread (the event
        loop keeps serving; the time is counted in
        logstore_produce_recompress_seconds)."""
        wanted = plog.config.compression_type
        if wanted == "producer":
            return split
        codec = codec_of(wanted)
        if codec == split.codec:
            return split
        t0 = time.perf_counter()
        out = await self._rt.run_io(recompress, split, codec, plog.config.level_for(codec))
        self._rt.metrics.recompress_seconds.labels(topic).inc(time.perf_counter() - t0)
        return out

    def _acquire_bytes(self, size: int, inflate: int = 0) -> None:
        """Take ``size`` request bytes and ``inflate`` of the decompression
        budget (ResourceExhaustedError, holding neither, past either)."""
        limits = self._rt.limits
        limits.produce_bytes.acquire(size)
        if inflate:
            try:
                limits.decompress_bytes.acquire(inflate)
            except BaseException:
                limits.produce_bytes.release(size)
                raise

    def _release_bytes(self, size: int, inflate: int = 0) -> None:
        self._rt.limits.produce_bytes.release(size)
        if inflate:
            self._rt.limits.decompress_bytes.release(inflate)

    def _queue_none(
        self, topic: str, partition: int, split: SplitRequest, size: int, inflate: int
    ) -> None:
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
                self._rt.metrics.acks_none_errors.inc()
                log.warning(
                    "acks=NONE batch failed after its reply: %s",
                    exc,
                    extra={"fields": {"topic": topic, "partition": partition}},
                )
            finally:
                self._release_bytes(size, inflate)
                if self._none_tail.get(key) is task:
                    del self._none_tail[key]

        task = self._rt.spawn(run())
        self._none_tail[key] = task

    async def _produce_one(
        self,
        raw: bytes | memoryview,
        head: ProduceHead | None = None,
        default_acks: int = pb.ACKS_ALL,
    ) -> tuple[int, Callable[[], Awaitable[pb.ProduceResponse]]]:
        """Validate and append one request; return what completes its reply.

        Appends happen in call order (a ProduceStream awaits this before
        reading its next request); the returned callable waits for the fsync
        when acks=ALL, so fsyncs of a stream overlap with later appends.
        ``head``: the request's header if the caller parsed it already
        (MultiProduce); ``default_acks``: the acks of a request that leaves
        its own unset (MultiProduce's request-wide value).
        """
        size = len(raw)
        # A compressed batch holds its decompressed records until appended.
        inflate = decompress_reservation(raw, head)
        self._acquire_bytes(size, inflate)
        held = True
        try:
            if inflate:
                # decompressing (bounded, up to ~130 ms) off the event loop
                split = await self._rt.run_io(split_produce_request, raw, head)
            else:
                split = split_produce_request(raw, head)
            header = split.header
            check_enum(pb.Acks, "acks", header.acks)
            acks = header.acks or default_acks
            topic, partition, plog = self._route(header)
            split = await self._stored_codec(topic, plog, split)
            # The store checks this at append too; checking here refuses the
            # batch before an acks=NONE reply is sent. It counts the bytes
            # stored: compressed, and after any recompression.
            plog.config.check_batch_bytes(HEADER_SIZE + len(split.records), plog.name)
            if acks == pb.ACKS_NONE:
                self._queue_none(topic, partition, split, size, inflate)
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
                self._release_bytes(size, inflate)
        reply = pb.ProduceResponse(
            request_id=header.request_id,
            partition=partition,
            base_offset=result.base_offset,
            timestamp_ms=result.timestamp_ms,
            log_start_offset=result.log_start_offset,
            duplicate=result.duplicate,
            high_watermark=plog.high_watermark,
            log_end_offset=plog.log_end_offset,
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
        if acks == pb.ACKS_LEADER:

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

        A reader task (one per stream) appends, in request order, and puts each
        request's completion in ``pending``; this coroutine takes them in order
        and writes the replies. Hand-offs are plain loop futures set by the
        other side (no task, queue or ``asyncio.wait`` per message: when idle
        this coroutine parks on one future that the reader, the reader's end
        or shutdown sets). ``pending`` holds at most
        ``produce_stream_max_inflight`` completions, so a client that never
        reads its replies stops being read from (HTTP/2 flow control) instead
        of growing the broker.
        """
        loop = asyncio.get_running_loop()
        stream = _StreamState(self._rt.config.produce_stream_max_inflight)

        async def read_all() -> None:
            iterator = aiter(requests)
            while True:
                stream.waiting_for_client = True
                try:
                    raw = await anext(iterator)
                except StopAsyncIteration:
                    break
                finally:
                    stream.waiting_for_client = False
                item = await self._stream_one(raw)
                while stream.full():
                    await stream.wait_for_room(loop)
                stream.put(item)
            stream.put(None)

        reader = loop.create_task(read_all())
        reader.add_done_callback(lambda _: stream.wake_writer())
        stopping = loop.create_task(self._rt.stop_event.wait())
        stopping.add_done_callback(lambda _: stream.wake_writer())
        try:
            while True:
                if self._rt.stopping and not stream.pending and stream.waiting_for_client:
                    # Every batch read so far has been answered.
                    raise shutting_down(
                        "the broker is shutting down; every batch sent on this stream before "
                        "this status was answered; resend the rest when it is back"
                    )
                if not stream.pending:
                    if reader.done():
                        reader.result()  # the request stream itself failed
                        return
                    await stream.wait_for_item(loop)
                    continue
                item = stream.take()
                if item is None:
                    return
                await write_reply(context, await item())
        finally:
            reader.cancel()
            stopping.cancel()

    async def _stream_one(self, raw: bytes) -> Callable[[], Awaitable[pb.ProduceResponse]]:
        """Like _produce_one, but any failure becomes this request's own status."""
        batches = self._rt.metrics.requests
        ok = self._batch_ok
        try:
            request_id, complete = await self._produce_one(raw)
        except Exception as exc:
            batches.labels("ProduceStream.batch", status_name(exc)).inc()
            return _error_reply(_peek_request_id(raw), exc)
        # From here on nothing refers to `raw`: up to produce_stream_max_inflight
        # completions wait in the stream's queue and must not pin request bytes.

        async def guarded() -> pb.ProduceResponse:
            try:
                reply = await complete()
            except Exception as exc:
                batches.labels("ProduceStream.batch", status_name(exc)).inc()
                return await _error_reply(request_id, exc)()
            reply.status.CopyFrom(OK_STATUS)
            ok.inc()
            return reply

        return guarded

    # -- fetch and subscribe -------------------------------------------------


Completion = Callable[[], Awaitable[pb.ProduceResponse]]


class _StreamState:
    """A ProduceStream's completions between its reader and its writer, and the
    one future each side parks on (event loop only)."""

    __slots__ = ("_room", "_wake", "limit", "pending", "waiting_for_client")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Completions in request order; None: the request stream ended.
        self.pending: collections.deque[Completion | None] = collections.deque()
        #: The reader is waiting for the client's next request, not appending.
        self.waiting_for_client = True
        self._wake: asyncio.Future[None] | None = None  # the writer parks here
        self._room: asyncio.Future[None] | None = None  # the reader parks here

    def full(self) -> bool:
        return len(self.pending) >= self.limit

    def put(self, item: Completion | None) -> None:
        self.pending.append(item)
        self.wake_writer()

    def take(self) -> Completion | None:
        item = self.pending.popleft()
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        return item

    def wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait_for_item(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until put, the reader's end or shutdown (``wake_writer``)."""
        self._wake = loop.create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    async def wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        self._room = loop.create_future()
        try:
            await self._room
        finally:
            self._room = None


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
