"""The consumer: assigned partitions, positions, long-poll Fetch with prefetch.

Each assigned partition has a position (the next offset to return), at most
one Fetch in flight and at most ``_MAX_BUFFERED`` (2) fetched replies waiting,
so memory is bounded by about 3 x ``fetch_max_bytes`` per partition (plus one
batch when a single batch exceeds it). As soon as a reply is taken in, the
next Fetch is issued from where it ends -- before the reply is decoded -- so
the broker works on the next reply while this one is decoded and while the
caller processes it.

Fetches are long polls (``min_bytes=1``, ``max_wait_ms``), so an idle
partition costs one request per ``fetch_max_wait_ms``. Replies are parsed from
raw bytes: each batch's CRC32C is checked, records below the position are
skipped (a reply may start with the batch containing it) and records stored
with timestamp 0 get their batch's timestamp (see ``logstore.wire._columns``).
Offsets may have gaps (a compacted log): a position in a gap returns the next
record, and once a reply is taken the position is its last frame's
``next_offset`` (past offsets removed after the last record), where the next
Fetch starts.

``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED`` with a retry hint are retried for
``retry_timeout_ms``, waiting by the client's one backoff policy
(:mod:`._backoff`: full jitter between 0 and min(``retry_backoff_max_ms``,
``retry_backoff_ms`` x 2**failures), at least the broker's hint); other
errors (OUT_OF_RANGE with the valid range, NOT_FOUND, DATA_LOSS) are raised
from ``poll``, with the partition's ``topic`` and ``partition`` added to the
error's ``metadata``. A ``seek`` cancels the
partition's in-flight fetch and drops its buffer.

Not thread-safe: use one Consumer from one thread (as Kafka's).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple

import grpc

from logstore import errors
from logstore.v1 import logstore_pb2
from logstore.wire import (
    ColumnBatch,
    FetchedFrames,
    Record,
    decode_columns,
    decode_objects,
    parse_fetch,
)

from ._backoff import Backoff, retriable
from ._credentials import Credentials
from ._rpc import Connection, translate

_RESETS: Final = ("earliest", "latest")
#: Fetched replies kept per partition. Two lets the next fetch be in flight
#: while one reply is decoded and another waits (decoding 1 MiB as objects
#: takes about as long as fetching it on this machine).
_MAX_BUFFERED: Final = 2


class TopicPartition(NamedTuple):
    """A (topic, partition) pair: the keys of ``poll``'s result and of ``assignment``."""

    topic: str
    partition: int


class _Part:
    __slots__ = (
        "buffers",
        "epoch",
        "fail_since",
        "failures",
        "fetch_offset",
        "future",
        "hwm",
        "lso",
        "position",
        "retry_at",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.position: int | None = None
        self.epoch = 0
        self.future: Any = None
        #: fetched replies not yet fully returned, with the offset each ends at
        self.buffers: deque[tuple[FetchedFrames, int]] = deque()
        self.fetch_offset = 0
        self.hwm: int | None = None
        self.lso: int | None = None
        self.retry_at = 0.0
        self.fail_since: float | None = None
        self.failures = 0  # consecutive retriable failures (the backoff's attempt)


class Consumer:
    """Reads assigned partitions of a broker; see the module docstring."""

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:7070",
        *,
        fetch_max_bytes: int = 1 << 20,
        fetch_max_wait_ms: int = 500,
        auto_offset_reset: str = "earliest",
        check_crcs: bool = True,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        request_timeout_ms: int = 30_000,
        retry_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
    ) -> None:
        if auto_offset_reset not in _RESETS:
            raise errors.InvalidArgumentError(
                f"auto_offset_reset must be earliest or latest, not {auto_offset_reset!r}"
            )
        if not 0 <= fetch_max_wait_ms <= 30_000 or fetch_max_bytes < 1:
            raise errors.InvalidArgumentError(
                "fetch_max_wait_ms must be in 0..30000 and fetch_max_bytes >= 1"
            )
        self._conn = Connection(bootstrap, connect_timeout_ms, credentials)
        self.address = bootstrap
        self._max_bytes = fetch_max_bytes
        self._max_wait_ms = fetch_max_wait_ms
        self._reset = auto_offset_reset
        self._check_crcs = check_crcs
        self._timeout_s = request_timeout_ms / 1000
        self._retry_timeout_s = retry_timeout_ms / 1000
        self._backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms)
        self._parts: dict[TopicPartition, _Part] = {}
        self._events: queue.Queue[tuple[TopicPartition, int, Any]] = queue.Queue()
        self._rr = 0
        self._epoch_seq = 0
        self._closed = False

    # -- assignment and positions -----------------------------------------

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any previous assignment)."""
        wanted = [TopicPartition(t, p) for t, p in partitions]
        for tp, part in list(self._parts.items()):
            if tp not in wanted:
                self._cancel(part)
                del self._parts[tp]
        for tp in wanted:
            if tp not in self._parts:
                self._parts[tp] = _Part(tp)

    def assignment(self) -> list[TopicPartition]:
        return list(self._parts)

    def _part(self, tp: tuple[str, int]) -> _Part:
        part = self._parts.get(TopicPartition(*tp))
        if part is None:
            raise errors.InvalidArgumentError(f"{tp[0]}-{tp[1]} is not assigned")
        return part

    def _cancel(self, part: _Part) -> None:
        # Epochs come from one counter of the consumer, not per partition: a
        # partition unassigned and assigned again is a new _Part, and a per-part
        # count could give it the epoch of the old part's cancelled fetch.
        self._epoch_seq += 1
        part.epoch = self._epoch_seq
        if part.future is not None:
            part.future.cancel()
            part.future = None
        part.buffers.clear()
        part.retry_at = 0.0
        part.fail_since = None
        part.failures = 0

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """Next ``poll`` returns records from ``offset`` (checked by the broker)."""
        part = self._part(tp)
        self._cancel(part)
        part.position = offset
        part.fetch_offset = offset

    def list_offsets(
        self, tps: Iterable[tuple[str, int]], spec: str | int
    ) -> dict[TopicPartition, tuple[int, bool]]:
        """``"earliest"``, ``"latest"`` or a timestamp (ms) -> {tp: (offset, found)}."""
        by_topic: dict[str, list[int]] = {}
        for t, p in tps:
            by_topic.setdefault(t, []).append(p)
        out: dict[TopicPartition, tuple[int, bool]] = {}
        for topic, parts in by_topic.items():
            req = logstore_pb2.ListOffsetsRequest(topic=topic, partitions=parts)
            if spec == "earliest":
                req.position = logstore_pb2.OFFSET_SPEC_EARLIEST
            elif spec == "latest":
                req.position = logstore_pb2.OFFSET_SPEC_LATEST
            elif isinstance(spec, int):
                req.timestamp_ms = spec
            else:
                raise errors.InvalidArgumentError(f"bad offset spec {spec!r}")
            resp = self._conn.call(self._conn.stub.ListOffsets, req, self._timeout_s)
            for po in resp.offsets:
                out[TopicPartition(topic, po.partition)] = (po.offset, po.found)
        return out

    def _seek_spec(self, tps: Iterable[tuple[str, int]] | None, spec: str | int) -> None:
        targets = list(self._parts) if tps is None else [TopicPartition(*tp) for tp in tps]
        for tp, (offset, _) in self.list_offsets(targets, spec).items():
            if tp in self._parts:
                self.seek(tp, offset)

    def seek_to_beginning(self, tps: Iterable[tuple[str, int]] | None = None) -> None:
        self._seek_spec(tps, "earliest")

    def seek_to_end(self, tps: Iterable[tuple[str, int]] | None = None) -> None:
        self._seek_spec(tps, "latest")

    def seek_to_time(self, timestamp_ms: int, tps: Iterable[tuple[str, int]] | None = None) -> None:
        """Position at the first record with timestamp >= ``timestamp_ms`` (else the end)."""
        self._seek_spec(tps, int(timestamp_ms))

    def position(self, tp: tuple[str, int]) -> int:
        """The offset of the next record ``poll`` returns for ``tp``."""
        part = self._part(tp)
        if part.position is None:
            self._resolve([part])
        assert part.position is not None
        return part.position

    def high_watermark(self, tp: tuple[str, int]) -> int | None:
        """The log end offset seen in the last fetch reply, or None."""
        return self._part(tp).hwm

    def _resolve(self, parts: list[_Part]) -> None:
        unknown = [p.tp for p in parts if p.position is None]
        if unknown:
            for tp, (offset, _) in self.list_offsets(unknown, self._reset).items():
                self.seek(tp, offset)

    # -- fetching ------------------------------------------------------------

    def _issue(self, part: _Part) -> None:
        tp = part.tp
        req = logstore_pb2.FetchRequest(
            topic=tp.topic,
            partition=tp.partition,
            offset=part.fetch_offset,
            max_bytes=self._max_bytes,
            min_bytes=1,
            max_wait_ms=self._max_wait_ms,
        )
        self._conn.ensure_ready()
        epoch = part.epoch
        events = self._events
        fut = self._conn.fetch_raw.future(req, timeout=self._max_wait_ms / 1000 + self._timeout_s)
        part.future = fut
        fut.add_done_callback(lambda f: events.put((tp, epoch, f)))

    def _issue_all(self, now: float) -> float | None:
        """Start a fetch for each partition that has none and room to buffer its reply."""
        wake: float | None = None
        for part in self._parts.values():
            if (
                part.future is not None
                or len(part.buffers) >= _MAX_BUFFERED
                or part.position is None
            ):
                continue
            if part.retry_at > now:
                wake = part.retry_at if wake is None else min(wake, part.retry_at)
                continue
            self._issue(part)
        return wake

    def _handle(self, event: tuple[TopicPartition, int, Any]) -> None:
        tp, epoch, fut = event
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch:
            return  # stale: seeked or unassigned since
        part.future = None
        try:
            raw = fut.result()
        except BaseException as exc:
            err = translate(exc, self.address)
            now = time.monotonic()
            # A plain CANCELLED of a call still current (not seeked away) was ended by
            # the broker, not by us (we cancel only what is stale, ignored above): its
            # graceful stop ends in-flight long polls so. Retried like UNAVAILABLE.
            cancelled = isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.CANCELLED
            if retriable(err) or cancelled:
                if part.fail_since is None:
                    part.fail_since = now
                if now - part.fail_since < self._retry_timeout_s:
                    hint = getattr(err, "retry_after_ms", None)
                    part.retry_at = now + self._backoff.delay_s(part.failures, hint)
                    part.failures += 1
                    return
            # Name the partition, so a caller holding several can react to this
            # one (GroupConsumer applies auto_offset_reset to an OUT_OF_RANGE).
            err.metadata.setdefault("topic", tp.topic)
            err.metadata.setdefault("partition", str(tp.partition))
            raise err from None
        part.fail_since = None
        part.failures = 0
        result = parse_fetch(raw, self._check_crcs)
        part.hwm = result.high_watermark
        part.lso = result.log_start_offset
        if result.frames:
            last = result.frames[-1][1]
            # The last frame's next offset, not base + count: offsets may have
            # gaps (a compacted log), within a batch and after its last record.
            end = last.next_offset
            part.buffers.append((result, end))
            part.fetch_offset = end

    def _wait(self, deadline: float, objects: bool, max_records: int | None) -> dict[Any, Any]:
        if self._closed:
            raise errors.StoreClosedError("consumer is closed")
        self._resolve(list(self._parts.values()))
        while True:
            # take everything that already arrived
            while True:
                try:
                    ev = self._events.get_nowait()
                except queue.Empty:
                    break
                self._handle(ev)
            now = time.monotonic()
            wake = self._issue_all(now)  # the next fetches fly while we decode
            out = self._take(objects, max_records)
            if out:
                self._issue_all(now)  # and while the caller works
                return out
            left = deadline - now
            if left <= 0:
                return {}
            if wake is not None:
                left = min(left, max(0.0, wake - now))
            try:
                ev = self._events.get(timeout=left)
            except queue.Empty:
                continue
            self._handle(ev)

    def _take(self, objects: bool, max_records: int | None) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        parts = list(self._parts.values())
        if not parts:
            return out
        self._rr = (self._rr + 1) % len(parts)
        budget = max_records
        for part in parts[self._rr :] + parts[: self._rr]:
            if not part.buffers:
                continue
            if budget is not None and budget <= 0:
                break
            assert part.position is not None
            result, end = part.buffers[0]
            got: Any
            if objects:
                got = decode_objects(result, part.position, budget)
                n = len(got)
                last = got[-1].offset if n else None
            else:
                tp = part.tp
                got = decode_columns(tp.topic, tp.partition, result, part.position, budget)
                n = len(got)
                last = int(got.offsets[-1]) if n else None
            if last is not None:
                part.position = last + 1
            if last is None or part.position >= end or budget is None or n < budget:
                # Everything in this reply is taken: the position moves past
                # it, over any offsets a gap removed after its last record.
                part.position = max(part.position, end)
                part.buffers.popleft()
            if n:
                out[part.tp] = got
                if budget is not None:
                    budget -= n
        return out

    def poll(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records from the assigned partitions, waiting up to ``timeout_ms`` for some.

        Returns {} when none arrived in time. Raises the broker's error
        (OffsetOutOfRangeError naming the valid range, UnknownTopicError...).
        """
        deadline = time.monotonic() + timeout_ms / 1000
        return self._wait(deadline, True, max_records)

    def poll_columns(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, ColumnBatch]:
        """Like :meth:`poll`, as one :class:`ColumnBatch` per partition."""
        deadline = time.monotonic() + timeout_ms / 1000
        return self._wait(deadline, False, max_records)

    def __iter__(self) -> Iterator[tuple[TopicPartition, Record]]:
        """Yield ``(tp, record)`` forever (until ``close``)."""
        while not self._closed:
            for tp, records in self.poll(1000).items():
                for r in records:
                    yield tp, r

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for part in self._parts.values():
            self._cancel(part)
        self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
