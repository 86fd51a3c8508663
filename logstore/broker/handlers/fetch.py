"""Fetch and Subscribe: stored frames out, unchanged; long polls and tails wait, not poll.

Both reply with ``FetchResult.data`` (stored frames, CRC-checked by the
store) followed by the serialized ``high_watermark``, ``log_start_offset`` and
``log_end_offset`` fields (the RPC table marks them raw-response): the batches are never parsed
or re-serialized. Protobuf readers accept fields in any order.

A Fetch with ``min_bytes`` not yet available parks in a long poll: it moves
its admission slot from max_concurrent_requests to max_long_poll_waiters and
waits on the partition in the runtime's WaitRegistry until an append, its
``max_wait_ms`` (capped at 30 s) or shutdown. A Subscribe waits the same way
between pushes and re-reads every 5 s even without appends, so a deleted
topic or retention past its offset ends the stream.

Subscribe's push path, per append: one wake-up (the append's listener; on
the loop's own thread when the append ran there), one read (on the event
loop when the stream is caught up: at most ``inline_read_max_bytes`` of the
tail, in the page cache; else ``subscribe_max_bytes`` on an I/O thread), one
awaited write, and no task of its own (shutdown cancels a write held up by
flow control: ``Runtime.write_or_stop``); between pushes it parks on its
waiter's one future (``_waiters.Waiter``), woken in the loop's next turn.

Memory bounds: Subscribe awaits each write (HTTP/2 flow control), so a reader
that stops reading holds at most one message of ``subscribe_max_bytes`` plus
the transport's window.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from logstore.errors import InvalidArgumentError
from logstore.v1 import logstore_pb2 as pb

from .._config import MAX_WAIT_MS_CAP
from .._runtime import Context, Runtime, current_slot, shutting_down
from ._common import DEFAULT_MAX_BYTES, check_enum

if TYPE_CHECKING:
    from logstore.storage import FetchResult

log = logging.getLogger("logstore.broker")

#: A Subscribe with nothing to send re-reads this often even without appends.
_SUBSCRIBE_RECHECK_S: Final = 5.0


class FetchHandlers:
    """Fetch (with long polls) and Subscribe."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        m = runtime.metrics
        # by method, looked up once (labels() costs ~1.5 us; this runs per push)
        self._counters = {
            method: (m.fetch_bytes.labels(method), m.fetch_records.labels(method))
            for method in ("Fetch", "Subscribe")
        }

    def _read_blocking(
        self, topic: str, partition: int, offset: int, max_bytes: int
    ) -> tuple[FetchResult, int]:
        result = self._rt.store.read_frames(topic, partition, offset, max_bytes)
        # Read after the frames: the log end offset only grows, so it is never
        # below the high watermark the read saw.
        return result, self._rt.store.offsets(topic, partition)[1]

    async def _read(
        self, topic: str, partition: int, offset: int, max_bytes: int
    ) -> tuple[FetchResult, int]:
        """Stored frames from ``offset`` and the log end offset after reading them."""
        return await self._rt.run_io(self._read_blocking, topic, partition, offset, max_bytes)

    def _account_read(self, method: str, result: FetchResult, offset: int) -> None:
        if result.data:
            fetched_bytes, records = self._counters[method]
            fetched_bytes.inc(len(result.data))
            records.inc(max(0, result.next_offset - offset))

    async def fetch(self, request: pb.FetchRequest, context: Context) -> bytes:
        if request.max_bytes < 0 or request.min_bytes < 0 or request.max_wait_ms < 0:
            raise InvalidArgumentError("max_bytes, min_bytes and max_wait_ms must be >= 0")
        max_bytes = min(request.max_bytes or DEFAULT_MAX_BYTES, self._rt.config.fetch_max_bytes)
        need = min(request.min_bytes, max_bytes)
        wait_ms = min(request.max_wait_ms, MAX_WAIT_MS_CAP)
        topic, partition, offset = request.topic, request.partition, request.offset
        result, log_end = await self._read(topic, partition, offset, max_bytes)
        if len(result.data) < need and wait_ms > 0 and not self._rt.stopping:
            result, log_end = await self._long_poll(
                topic, partition, offset, max_bytes, need, wait_ms
            )
        self._account_read("Fetch", result, offset)
        return _frames_reply(result, log_end)

    async def _long_poll(
        self, topic: str, partition: int, offset: int, max_bytes: int, need: int, wait_ms: int
    ) -> tuple[FetchResult, int]:
        # From here on this request waits: it holds a long-poll waiter slot
        # instead of a concurrent-request slot (and keeps it to the reply).
        current_slot().move_to(self._rt.limits.waiters, self._rt.metrics.long_poll_waiters)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        with self._rt.waiters.waiting((topic, partition)) as waiter:
            while True:
                waiter.clear()
                # Read after registering: an append between the first read and
                # the registration is seen here, so no wake-up is lost.
                result, log_end = await self._read(topic, partition, offset, max_bytes)
                remaining = deadline - loop.time()
                if len(result.data) >= need or remaining <= 0 or self._rt.stopping:
                    return result, log_end
                await waiter.wait(remaining)

    async def _start_offset(self, request: pb.SubscribeRequest) -> int:
        topic, partition = request.topic, request.partition
        store = self._rt.store
        start = store.offsets(topic, partition)[0]
        which = request.WhichOneof("start")
        if which == "offset":
            # Its range is checked by the store's first read, the one place
            # that knows the partition's offsets (OUT_OF_RANGE before any push).
            return request.offset
        if which == "timestamp_ms":
            found = await self._rt.run_io(
                store.offset_for_time, topic, partition, request.timestamp_ms
            )
            return store.high_watermark(topic, partition) if found is None else found.offset
        if which == "position":
            check_enum(pb.StartPosition, "position", request.position)
            if request.position == pb.START_POSITION_LATEST:
                return store.high_watermark(topic, partition)
        return start

    async def subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        if request.max_bytes < 0:
            raise InvalidArgumentError("max_bytes must be >= 0")
        max_bytes = min(request.max_bytes or DEFAULT_MAX_BYTES, self._rt.config.subscribe_max_bytes)
        inline_bytes = min(max_bytes, self._rt.config.inline_read_max_bytes)
        topic, partition = request.topic, request.partition
        offset = await self._start_offset(request)
        started = False
        caught_up = False  # the last read reached the end: the next one is small
        with self._rt.waiters.waiting((topic, partition)) as waiter:
            while not self._rt.stopping:
                waiter.clear()
                if caught_up and inline_bytes:
                    # The tail, in the page cache: read on the loop, bounded
                    # (plus one whole batch), no thread-pool hop.
                    result, log_end = self._read_blocking(topic, partition, offset, inline_bytes)
                else:
                    result, log_end = await self._read(topic, partition, offset, max_bytes)
                caught_up = result.next_offset >= result.high_watermark
                if not started:  # the first read checked the start offset
                    started = True
                    log.info(
                        "subscription started",
                        extra={
                            "fields": {"topic": topic, "partition": partition, "offset": offset}
                        },
                    )
                if not result.data:
                    # Re-read now and then even without appends, so a deleted
                    # topic or retention past `offset` ends the stream.
                    await waiter.wait(_SUBSCRIBE_RECHECK_S)
                    continue
                await self._rt.write_or_stop(
                    context,
                    _frames_reply(result, log_end),
                    "the broker is shutting down; resubscribe when it is back",
                )
                self._account_read("Subscribe", result, offset)
                offset = result.next_offset
                if caught_up:
                    # The read reached the end: re-reading now would find
                    # nothing unless an append came since its clear(), and
                    # such an append has woken the waiter (this returns at
                    # once). One read per push, not two.
                    await waiter.wait(_SUBSCRIBE_RECHECK_S)
        raise shutting_down(
            f"the broker is shutting down; resubscribe to {topic}-{partition} from offset "
            f"{offset} when it is back"
        )


def _frames_reply(result: FetchResult, log_end_offset: int) -> bytes:
    """Stored frames + the three small fields, as one serialized FetchResponse."""
    tail = pb.FetchResponse(
        high_watermark=result.high_watermark,
        log_start_offset=result.log_start_offset,
        log_end_offset=log_end_offset,
    ).SerializeToString()
    return bytes(result.data) + tail if result.data else tail
