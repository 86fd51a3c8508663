"""MultiProduce and MultiFetch: many partitions in one round trip (Kafka's
Produce and Fetch shapes), on top of the single-partition machinery.

MultiProduce receives the raw request bytes; :func:`logstore.wire.split_multi_produce`
cuts them into the batches (slices of the request, not copies, except for
acks=NONE, whose batches outlive the request), so each batch is the
serialized ProduceRequest as sent, and each goes through
:meth:`ProduceHandlers._produce_one` (``handlers/produce.py``) exactly as a
unary Produce does: the same split (records stored as they arrived, never
re-serialized), routing, codec, size checks, idempotent sequences,
acks=NONE queueing and acks=ALL group commit. Each batch's header is walked
and parsed once (:func:`logstore.wire.produce_head`, here to route it; the
split reuses it). The request's ``acks`` applies to every batch: a batch
that leaves its own unset takes the request's value (passed to
``_produce_one``, the batch is not copied); one that sets a different value
is refused alone. Batches for one partition are appended in request order
(one chain per partition, appending one batch after the other); chains run
concurrently, each started at once up to its first wait
(:func:`~logstore.broker._runtime.run_eagerly`: an inline acks=0/1 append
never waits, so it costs no task). Every failure is that batch's own status in its result, so
one bad partition does not fail the others; only a request that does not
parse, carries no batches or more than :data:`MAX_MULTI_BATCHES`, or has an
unknown acks fails as a whole.

MultiFetch reads every listed partition with
:meth:`FetchHandlers._read_blocking` (``handlers/fetch.py``: the store's
stored frames, CRC-checked, and the log end offset), all in one I/O-pool call
per pass (one thread hop, not one per partition), in request order, within a
total byte budget (``max_bytes``, default 50 MiB, capped at the broker's
``fetch_max_bytes``) and each partition's own ``max_bytes``: the first
partition with data returns at least one whole batch; after it a partition is
read only with what is left of the budget, and one whose first batch would
not fit returns no batches (so the reply's batches never exceed the total,
except by that first batch). Each partition's error (unknown topic or
partition, offset out of range, corrupt batch) is its own status. Long poll:
when the partitions hold fewer than ``min_bytes`` and none has an error, the
request moves to a long-poll waiter slot and waits on every partition at once
(:meth:`WaitRegistry.waiting_any`); an append to any of them wakes it, and
only the partitions appended to are read again. It replies when
``min_bytes`` is reached, a partition has an error, ``max_wait_ms`` (capped
at 30 s) passes, or the broker shuts down.

The reply is built by hand (the RPC table marks it raw-response): per
partition, the stored frames unchanged followed by the serialized small
fields, behind one tag and length (:func:`logstore.wire.partition_data`);
no batch is parsed or re-serialized.

Authorization is the service wrapper's (``_security.Guard``), per batch /
partition: the entries it denies arrive as ``denied`` (index -> error) and
are answered with that error (PERMISSION_DENIED, or the missing-topic
NOT_FOUND) without being appended or read; a denied partition does not end
a long poll.

Memory bounds: a MultiProduce holds its request bytes (at most
``max_request_bytes``) and counts each batch against
``max_inflight_produce_bytes`` as a Produce does; a MultiFetch holds at most
its budget plus one batch, and per partition one small result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from logstore.errors import InvalidArgumentError, LogStoreError
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import (
    ProduceHead,
    partition_data,
    partition_for_key,
    produce_head,
    produce_header,
    split_multi_produce,
)

from .._config import MAX_WAIT_MS_CAP
from .._runtime import Context, Runtime, current_slot, run_eagerly
from .._status import OK_STATUS, log_unexpected, rich_status
from ._common import DEFAULT_MAX_BYTES, check_enum, status_name

if TYPE_CHECKING:
    from google.rpc import status_pb2

    from .fetch import FetchHandlers
    from .produce import ProduceHandlers

log = logging.getLogger("logstore.broker")

#: Batches one MultiProduce may carry, and partitions one MultiFetch may
#: list: 10,000 is the most partitions a topic may have (CreateTopic's
#: bound), so one request can cover a whole topic; the request's bytes are
#: bounded separately by max_request_bytes.
MAX_MULTI_BATCHES: Final = 10_000
MAX_MULTI_PARTITIONS: Final = 10_000
#: A MultiFetch's total budget when it leaves max_bytes 0: Kafka's
#: fetch.max.bytes default (the broker's fetch_max_bytes caps it).
DEFAULT_MULTI_FETCH_MAX_BYTES: Final = 50 << 20


def _error_result(request_id: int, exc: BaseException, what: str) -> pb.ProduceResponse:
    log_unexpected(exc, what)
    return pb.ProduceResponse(request_id=request_id, base_offset=-1, status=rich_status(exc))


class _Read:
    """One MultiFetch entry's current answer."""

    __slots__ = ("data", "error", "hwm", "leo", "lso", "next_offset")

    def __init__(self) -> None:
        self.data: bytes = b""
        self.error: status_pb2.Status | None = None
        self.hwm = self.lso = self.leo = self.next_offset = 0


class MultiHandlers:
    """MultiProduce and MultiFetch, over the produce and fetch areas."""

    def __init__(self, runtime: Runtime, produce: ProduceHandlers, fetch: FetchHandlers) -> None:
        self._rt = runtime
        self._produce = produce
        self._fetch = fetch

    # -- MultiProduce ----------------------------------------------------------

    def _prepare(self, raw: bytes | memoryview, acks: int) -> tuple[ProduceHead, Hashable]:
        """The batch's parsed header (handed on to ``_produce_one``, so its
        fields are walked and parsed once) and the key of its partition's
        chain; InvalidArgumentError when its acks is unknown or differs from
        the request's."""
        head = produce_head(raw)
        header = head.header
        own = int(header.acks)
        if own != pb.ACKS_UNSPECIFIED:
            check_enum(pb.Acks, "acks", own)
            if own != acks:
                raise InvalidArgumentError(
                    f"this batch's acks {pb.Acks.Name(own)} differs from the request's "
                    f"{pb.Acks.Name(acks)}; leave it unset or make it equal"
                )
        key: Hashable = (header.topic, header.partition if header.HasField("partition") else None)
        if header.HasField("partition_key") and not header.HasField("partition"):
            try:
                count = self._rt.store.topic(header.topic).partitions
            except LogStoreError:
                pass  # _produce_one reports the unknown topic for this batch
            else:
                key = (header.topic, partition_for_key(header.partition_key, count))
        return head, key

    async def multi_produce(
        self, raw: bytes, context: Context, denied: Mapping[int, LogStoreError] | None = None
    ) -> pb.MultiProduceResponse:
        split = split_multi_produce(raw)
        check_enum(pb.Acks, "acks", split.acks)
        n = len(split.batches)
        if n == 0:
            raise InvalidArgumentError("a MultiProduceRequest needs at least one batch")
        if n > MAX_MULTI_BATCHES:
            raise InvalidArgumentError(
                f"{n} batches in one MultiProduceRequest; at most {MAX_MULTI_BATCHES}"
            )
        acks = split.acks or pb.ACKS_ALL
        # The batches are slices of the request; an acks=NONE batch outlives
        # the request (appended after the reply) and is counted against
        # max_inflight_produce_bytes alone, so it gets its own bytes: a slice
        # would keep the whole request alive until its last batch is stored.
        batches: Sequence[bytes | memoryview] = split.batches
        if acks == pb.ACKS_NONE:
            batches = [bytes(b) for b in split.batches]
        counter = self._rt.metrics.requests
        results: list[pb.ProduceResponse | None] = [None] * n
        chains: dict[Hashable, list[tuple[int, bytes | memoryview, ProduceHead]]] = {}
        for i, batch in enumerate(batches):
            if denied and i in denied:  # the service wrapper's ACL decision
                counter.labels("MultiProduce.batch", status_name(denied[i])).inc()
                results[i] = _error_result(_peek_request_id(batch), denied[i], "MultiProduce batch")
                continue
            try:
                head, key = self._prepare(batch, acks)
            except Exception as exc:
                counter.labels("MultiProduce.batch", status_name(exc)).inc()
                results[i] = _error_result(_peek_request_id(batch), exc, "MultiProduce batch")
                continue
            chains.setdefault(key, []).append((i, batch, head))
        request_id = split.request_id
        ok = [0]  # batches answered OK, counted once for the request

        async def run_chain(batches: list[tuple[int, bytes | memoryview, ProduceHead]]) -> None:
            # Append one after the other (the partition's order), then wait
            # for the completions (acks=ALL: fsyncs overlap with the appends).
            pending = []
            for i, batch, head in batches:
                try:
                    request_id, complete = await self._produce._produce_one(batch, head, acks)
                except Exception as exc:
                    counter.labels("MultiProduce.batch", status_name(exc)).inc()
                    results[i] = _error_result(head.header.request_id, exc, "MultiProduce batch")
                    continue
                pending.append((i, request_id, complete))
            for i, request_id, complete in pending:
                try:
                    reply = await complete()
                except Exception as exc:
                    counter.labels("MultiProduce.batch", status_name(exc)).inc()
                    results[i] = _error_result(request_id, exc, "MultiProduce batch")
                    continue
                reply.status.CopyFrom(OK_STATUS)
                ok[0] += 1
                results[i] = reply

        # Each chain runs at once up to its first wait (an inline append with
        # acks=1 or 0 never waits: no task for it); only chains that wait (an
        # append on an I/O thread, an fsync) go on as tasks, concurrently.
        waiting = [t for b in chains.values() if (t := run_eagerly(run_chain(b))) is not None]
        try:
            if waiting:
                await asyncio.gather(*waiting)
        finally:
            if ok[0]:
                counter.labels("MultiProduce.batch", "OK").inc(ok[0])
        response = pb.MultiProduceResponse(request_id=request_id)
        response.results.extend(r for r in results if r is not None)
        assert len(response.results) == n
        return response

    # -- MultiFetch -------------------------------------------------------------

    async def multi_fetch(
        self,
        request: pb.MultiFetchRequest,
        context: Context,
        denied: Mapping[int, LogStoreError] | None = None,
    ) -> bytes:
        if request.max_bytes < 0 or request.min_bytes < 0 or request.max_wait_ms < 0:
            raise InvalidArgumentError("max_bytes, min_bytes and max_wait_ms must be >= 0")
        entries = list(request.partitions)
        n = len(entries)
        if n == 0:
            raise InvalidArgumentError("a MultiFetchRequest needs at least one partition")
        if n > MAX_MULTI_PARTITIONS:
            raise InvalidArgumentError(
                f"{n} partitions in one MultiFetchRequest; at most {MAX_MULTI_PARTITIONS}"
            )
        cap = self._rt.config.fetch_max_bytes
        total = min(request.max_bytes or DEFAULT_MULTI_FETCH_MAX_BYTES, cap)
        need = min(request.min_bytes, total)
        wait_ms = min(request.max_wait_ms, MAX_WAIT_MS_CAP)
        if denied:
            # Partitions the ACLs deny (the service wrapper's decision) are
            # not read and do not end the long poll; the reply answers each
            # with its error, in its place.
            served = [e for i, e in enumerate(entries) if i not in denied]
            reads = await self._fetch_entries(served, total, cap, need, wait_ms)
            it = iter(reads)
            return _reply(entries, [_denied(denied[i]) if i in denied else next(it)
                                    for i in range(n)])  # fmt: skip
        return _reply(entries, await self._fetch_entries(entries, total, cap, need, wait_ms))

    async def _fetch_entries(
        self, entries: list[pb.FetchPartition], total: int, cap: int, need: int, wait_ms: int
    ) -> list[_Read]:
        reads = [_Read() for _ in entries]
        if not entries:
            return reads
        await self._rt.run_io(self._read_pass, entries, range(len(entries)), reads, total, cap)
        if not self._done(reads, need) and wait_ms > 0 and not self._rt.stopping:
            await self._long_poll(entries, reads, total, cap, need, wait_ms)
        for entry, read in zip(entries, reads, strict=True):
            if read.data:
                self._rt.metrics.fetch_bytes.labels("MultiFetch").inc(len(read.data))
                self._rt.metrics.fetch_records.labels("MultiFetch").inc(
                    max(0, read.next_offset - entry.offset)
                )
        return reads

    @staticmethod
    def _done(reads: list[_Read], need: int) -> bool:
        got = 0
        for read in reads:
            if read.error is not None:
                return True
            got += len(read.data)
        return got >= need

    async def _long_poll(
        self,
        entries: list[pb.FetchPartition],
        reads: list[_Read],
        total: int,
        cap: int,
        need: int,
        wait_ms: int,
    ) -> None:
        # As a unary Fetch: from here on this request holds a long-poll
        # waiter slot instead of a concurrent-request slot.
        current_slot().move_to(self._rt.limits.waiters, self._rt.metrics.long_poll_waiters)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        where: dict[Hashable, list[int]] = {}
        for i, entry in enumerate(entries):
            where.setdefault((entry.topic, entry.partition), []).append(i)
        with self._rt.waiters.waiting_any(where) as group:
            # Read everything once more after registering: an append between
            # the first pass and the registration is seen here, so no wake-up
            # is lost. Later passes read only the partitions appended to
            # since the previous pass began (an append during a pass wakes
            # the next wait at once).
            group.take_woken()
            again: list[int] = list(range(len(entries)))
            while True:
                if again:
                    await self._rt.run_io(self._read_pass, entries, again, reads, total, cap)
                remaining = deadline - loop.time()
                if self._done(reads, need) or remaining <= 0 or self._rt.stopping:
                    return
                await group.wait(remaining)
                woken = group.take_woken()
                again = sorted({i for key in woken for i in where.get(key, ())})

    def _read_pass(
        self,
        entries: list[pb.FetchPartition],
        indices: range | list[int],
        reads: list[_Read],
        total: int,
        cap: int,
    ) -> None:
        """Read ``indices`` (ascending) into ``reads`` within the budget (I/O thread).

        The budget left for a partition is ``total`` minus the bytes of the
        partitions already holding data (re-read ones not counted); the first
        partition with data in the reply takes at least one whole batch.
        """
        redo = set(indices)
        held = sum(len(r.data) for i, r in enumerate(reads) if i not in redo)
        for i in indices:
            entry, read = entries[i], reads[i]
            read.data = b""
            read.error = None
            if entry.max_bytes < 0:
                read.error = rich_status(
                    InvalidArgumentError(f"max_bytes {entry.max_bytes} must be >= 0")
                )
                continue
            left = total - held
            try:
                if left <= 0 and held:
                    # No room: only this partition's offsets (no data read).
                    self._offsets_only(entry, read)
                    continue
                own = min(entry.max_bytes or DEFAULT_MAX_BYTES, cap)
                limit = min(own, left) if held else min(own, total)
                result, log_end = self._fetch._read_blocking(
                    entry.topic, entry.partition, entry.offset, max(limit, 1)
                )
            except LogStoreError as exc:
                read.error = rich_status(exc)
                continue
            read.hwm, read.lso, read.leo = result.high_watermark, result.log_start_offset, log_end
            data = result.data
            if data and (not held or len(data) <= left):
                read.data = bytes(data)
                read.next_offset = result.next_offset
                held += len(data)

    def _offsets_only(self, entry: pb.FetchPartition, read: _Read) -> None:
        store = self._rt.store
        lso, leo = store.offsets(entry.topic, entry.partition)
        read.hwm, read.lso, read.leo = store.high_watermark(entry.topic, entry.partition), lso, leo


def _denied(error: LogStoreError) -> _Read:
    read = _Read()
    read.error = rich_status(error)
    return read


def _peek_request_id(raw: bytes | memoryview) -> int:
    """request_id of a batch that may be malformed (0 when unreadable)."""
    try:
        return int(produce_header(raw).request_id)
    except LogStoreError:
        return 0


def _reply(entries: list[pb.FetchPartition], reads: list[_Read]) -> bytes:
    """The serialized MultiFetchResponse: per entry, its stored frames
    unchanged and then its small fields (see the module docstring)."""
    pieces: list[bytes] = []
    for entry, read in zip(entries, reads, strict=True):
        if read.error is not None:
            small = pb.PartitionData(
                topic=entry.topic, partition=entry.partition, status=read.error
            ).SerializeToString()
        else:
            small = pb.PartitionData(
                topic=entry.topic,
                partition=entry.partition,
                high_watermark=read.hwm,
                log_start_offset=read.lso,
                log_end_offset=read.leo,
            ).SerializeToString()
        # One join for the whole reply: the frames are copied once, into it.
        pieces += partition_data(read.data, small)
    return b"".join(pieces)
