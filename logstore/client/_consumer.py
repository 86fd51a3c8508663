"""The consumer: assigned partitions, positions, long-poll MultiFetch with prefetch.

Each assigned partition has a position (the next offset to return), at most
one fetch in flight and at most ``_MAX_BUFFERED`` (2) fetched replies waiting,
so memory is bounded by about 3 x ``fetch_max_bytes`` per partition (plus one
batch when a single batch exceeds it), and each request's reply by
``fetch_request_max_bytes``. As soon as a reply is taken in, the next fetch is
issued from where it ends -- before the reply is decoded -- so the broker
works on the next reply while this one is decoded and while the caller
processes it.

Partitions ready to fetch go in one ``MultiFetch`` (one round trip and one
long poll for all of them, Kafka's fetch shape), listed in a rotating order so
the request's byte budget favours none -- or, when their replies could pass
``_REQUEST_SPLIT_BYTES`` (4 MiB: more than 4 partitions at the default
``fetch_max_bytes``), in up to ``_MAX_FETCHES - 1`` requests. Each request's
total budget is that 4 MiB too (or one partition's ``fetch_max_bytes`` if
larger, within ``fetch_request_max_bytes``), so during a backlog several
small replies are in flight instead of one serial 16 MiB one. A partition that becomes ready while
one is in flight (its buffer drained, a seek) goes in a new request rather
than waiting for the long poll of idle ones to end; at most
``_MAX_FETCHES`` (4) are in flight, a bound on the broker's long-poll waiters
per consumer (a Fetch per partition took one per partition).

Fetches are long polls (``min_bytes=1``, ``max_wait_ms``), so idle
partitions cost about one request per ``fetch_max_wait_ms``. Replies are
parsed from raw bytes (each partition's entry as a FetchResponse): each
batch's CRC32C is checked, records below the position are skipped (a reply
may start with the batch containing it) and records stored with timestamp 0
get their batch's timestamp (see ``logstore.wire._columns``).
Offsets may have gaps (a compacted log): a position in a gap returns the next
record, and once a reply is taken the position is its last frame's
``next_offset`` (past offsets removed after the last record), where the next
Fetch starts.

A failed request, or a partition's own status in the reply, is that
partition's failure: ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED`` with a retry
hint are retried for ``retry_timeout_ms``, waiting by the client's one backoff policy
(:mod:`._backoff`: full jitter between 0 and min(``retry_backoff_max_ms``,
``retry_backoff_ms`` x 2**failures), at least the broker's hint); other
errors (OUT_OF_RANGE with the valid range, NOT_FOUND, DATA_LOSS) are raised
from ``poll``, with the partition's ``topic`` and ``partition`` added to the
error's ``metadata`` (the other partitions of that reply keep their
data for the next ``poll``). A ``seek`` drops the partition's buffer and its
part of any in-flight fetch (the request itself is cancelled once no
partition of it is current). Against a broker without MultiFetch
(UNIMPLEMENTED) the consumer falls back to one unary Fetch per partition.

Tailing few partitions over ``Subscribe`` (the producer's rule for its
ordered stream, mirrored): while at most ``stream_max_partitions``
(:data:`STREAM_MAX_PARTITIONS`, 4; 0 never streams) are assigned, a partition
whose last fetch reached the high watermark (caught up: no backlog, which
MultiFetch reads faster) opens one ``Subscribe`` stream from its fetch offset
instead of fetching again, so the broker pushes each append without a request
round trip (a fetch cycle is a round trip plus the client's work, and a record
appended meanwhile waits for the next one). A reader thread per stream puts
each pushed message into the consumer's stream buffer, bounded in bytes
(:data:`_STREAM_BUFFER_FACTOR` x ``fetch_max_bytes``, shared by the streams,
counted until ``poll`` has returned the records): when full, the reader stops
reading, so HTTP/2 flow control holds the broker back and memory does not
grow with a slow poller (at most the bound -- or one message, when a single
one is larger -- plus one message held per reader and the transport's
window). ``poll`` takes the pushed messages exactly as fetched replies (same
decoding, CRC checks, position tracking; records below the position skipped).
A ``seek``, ``assign`` (to more than the limit, or dropping the partition) or
``close`` cancels the stream, whose undelivered messages are dropped; the
records already buffered are kept and fetching resumes where they end. A
stream that ends (broker restart: UNAVAILABLE; NOT_FOUND, OUT_OF_RANGE,
DATA_LOSS...) falls back to fetching from where it ended, so the fetch path's
retries and errors apply unchanged (a stream that failed before pushing
anything is not reopened for ``_STREAM_RETRY_S``); a broker answering
UNIMPLEMENTED (older than Subscribe) turns streaming off for this consumer.

Not thread-safe: use one Consumer from one thread (as Kafka's); the stream
readers are internal threads that touch only the buffer's lock and the event
queue.
"""

from __future__ import annotations

import queue
import threading
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
    partition_meta,
    split_multi_fetch,
)

from ._backoff import Backoff, retriable
from ._credentials import Credentials
from ._rpc import Connection, translate, translate_status

_RESETS: Final = ("earliest", "latest")
#: Fetched replies kept per partition. Two lets the next fetch be in flight
#: while one reply is decoded and another waits (decoding 1 MiB as objects
#: takes about as long as fetching it on this machine).
_MAX_BUFFERED: Final = 2
#: MultiFetch requests in flight at once (see the module docstring): one for
#: the partitions ready together, more for ones that become ready while it
#: long-polls; 4 keeps a consumer's broker long-poll slots small and fixed.
_MAX_FETCHES: Final = 4
#: A backlog of many partitions is fetched by several MultiFetch requests in
#: flight, each of about this many bytes (at most ``fetch_max_bytes`` a
#: partition), rather than one: a reply is one gRPC message, sent and
#: received serially, so one 16 MiB reply at a time left the broker and the
#: client each idle while the other worked.
_REQUEST_SPLIT_BYTES: Final = 4 << 20
#: fetch_request_max_bytes's default: Kafka's fetch.max.bytes (the broker caps
#: a reply at its own fetch_max_bytes, 16 MiB by default).
DEFAULT_FETCH_REQUEST_MAX_BYTES: Final = 50 << 20
#: At most this many assigned partitions are tailed over Subscribe streams
#: once caught up (the producer's ``STREAM_MAX_PARTITIONS`` rule, mirrored);
#: more are fetched with MultiFetch only (one request for all of them beats a
#: stream and a thread each). ``stream_max_partitions`` overrides it; 0 never
#: streams.
STREAM_MAX_PARTITIONS: Final = 4
#: The stream buffer holds at most this many x ``fetch_max_bytes`` (for all of a
#: consumer's streams together): as much as a partition's fetched replies.
_STREAM_BUFFER_FACTOR: Final = _MAX_BUFFERED
#: A stream that ended before pushing anything (too many subscriptions, an
#: error the fetch then reports) is not reopened for this long: the partition
#: is fetched meanwhile, so a broker refusing streams costs no extra calls.
_STREAM_RETRY_S: Final = 1.0


class TopicPartition(NamedTuple):
    """A (topic, partition) pair: the keys of ``poll``'s result and of ``assignment``."""

    topic: str
    partition: int


class _Stream:
    """One Subscribe call and its reader thread."""

    __slots__ = ("call", "pushed", "sid", "stopped", "thread")

    def __init__(self, sid: int, call: Any) -> None:
        self.sid = sid
        self.call = call
        self.stopped = False
        self.pushed = 0  # messages taken in by poll
        self.thread: threading.Thread | None = None


class _Part:
    __slots__ = (
        "buffers",
        "caught_up",
        "epoch",
        "fail_since",
        "failures",
        "fetch_offset",
        "future",
        "hwm",
        "lso",
        "position",
        "retry_at",
        "stream",
        "stream_after",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.position: int | None = None
        self.epoch = 0
        self.future: Any = None
        #: fetched (or pushed) replies not yet fully returned, with the offset
        #: each ends at and the bytes it holds of the stream buffer (0: fetched)
        self.buffers: deque[tuple[FetchedFrames, int, int]] = deque()
        #: the last fetch reached the high watermark (may stream from here)
        self.caught_up = False
        self.stream: _Stream | None = None
        self.stream_after = 0.0  # no stream opened before this (monotonic)
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
        fetch_request_max_bytes: int = DEFAULT_FETCH_REQUEST_MAX_BYTES,
        auto_offset_reset: str = "earliest",
        check_crcs: bool = True,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        request_timeout_ms: int = 30_000,
        retry_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        stream_max_partitions: int = STREAM_MAX_PARTITIONS,
    ) -> None:
        if auto_offset_reset not in _RESETS:
            raise errors.InvalidArgumentError(
                f"auto_offset_reset must be earliest or latest, not {auto_offset_reset!r}"
            )
        if not 0 <= fetch_max_wait_ms <= 30_000 or fetch_max_bytes < 1:
            raise errors.InvalidArgumentError(
                "fetch_max_wait_ms must be in 0..30000 and fetch_max_bytes >= 1"
            )
        if not 1 <= fetch_request_max_bytes < 1 << 31:
            raise errors.InvalidArgumentError(
                f"fetch_request_max_bytes must be in 1..{(1 << 31) - 1}, "
                f"not {fetch_request_max_bytes}"
            )
        if not 0 <= stream_max_partitions <= 10_000:
            raise errors.InvalidArgumentError(
                f"stream_max_partitions must be in 0..10000, not {stream_max_partitions}"
            )
        self._conn = Connection(bootstrap, connect_timeout_ms, credentials)
        self.address = bootstrap
        self._max_bytes = fetch_max_bytes
        self._request_max_bytes = fetch_request_max_bytes
        #: each request's total budget: about _REQUEST_SPLIT_BYTES (never below
        #: one partition's fetch_max_bytes), so a backlog's replies stay small
        #: and several are in flight, within fetch_request_max_bytes
        self._reply_max_bytes = min(
            fetch_request_max_bytes, max(_REQUEST_SPLIT_BYTES, fetch_max_bytes)
        )
        self._max_wait_ms = fetch_max_wait_ms
        self._reset = auto_offset_reset
        self._check_crcs = check_crcs
        self._timeout_s = request_timeout_ms / 1000
        self._retry_timeout_s = retry_timeout_ms / 1000
        self._backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms)
        self._parts: dict[TopicPartition, _Part] = {}
        # (fetch id, its grpc future) as each MultiFetch ends
        self._events: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        #: in-flight MultiFetch by id: its (partition, epoch) members and future
        self._fetches: dict[int, tuple[list[tuple[TopicPartition, int]], Any]] = {}
        #: False once the broker answered MultiFetch UNIMPLEMENTED (a broker
        #: older than the RPC): one unary Fetch per partition from then on.
        self._multi = True
        #: fetch ids of unary Fetches (their reply is one FetchResponse)
        self._unary: set[int] = set()
        self._fetch_seq = 0
        self._rotate = 0
        self._rr = 0
        self._epoch_seq = 0
        self._closed = False
        #: Subscribe streams while at most this many partitions are assigned;
        #: 0 once the broker answered Subscribe UNIMPLEMENTED.
        self._stream_max = stream_max_partitions
        #: the live streams by id (negative: events of fetches have positive ids)
        self._streams: dict[int, tuple[TopicPartition, _Stream]] = {}
        self._stream_seq = 0
        #: bytes pushed and not yet returned by poll, their bound, and the
        #: lock/condition the readers wait on when the buffer is full
        self._stream_bytes = 0
        self._stream_peak = 0  # the most _stream_bytes ever held (tests, metrics)
        self._stream_bound = _STREAM_BUFFER_FACTOR * fetch_max_bytes
        self._stream_cond = threading.Condition()
        #: Subscribe streams opened so far (tests and diagnostics)
        self.streams_opened = 0

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
        if len(self._parts) > self._stream_max:
            for part in self._parts.values():
                self._stop_stream(part)

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
            fid, part.future = part.future, None
            self._cancel_if_stale(fid)
        self._stop_stream(part)
        self._release(sum(charged for _, _, charged in part.buffers))
        part.buffers.clear()
        part.caught_up = False
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

    def _issue_unary(self, part: _Part) -> None:
        """A unary Fetch of ``part`` (brokers without MultiFetch)."""
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
        fut = self._conn.fetch_raw.future(req, timeout=self._max_wait_ms / 1000 + self._timeout_s)
        self._track([part], fut)
        self._unary.add(self._fetch_seq)

    def _track(self, parts: list[_Part], fut: Any) -> None:
        self._fetch_seq += 1
        fid = self._fetch_seq
        events = self._events
        self._fetches[fid] = ([(part.tp, part.epoch) for part in parts], fut)
        for part in parts:
            part.future = fid
        fut.add_done_callback(lambda f: events.put((fid, f)))

    def _issue(self, parts: list[_Part]) -> None:
        """One MultiFetch for ``parts``, from each one's fetch offset."""
        k = self._rotate % len(parts)
        self._rotate += 1
        parts = parts[k:] + parts[:k]  # the reply's byte budget favours none
        req = logstore_pb2.MultiFetchRequest(
            partitions=[
                logstore_pb2.FetchPartition(
                    topic=part.tp.topic,
                    partition=part.tp.partition,
                    offset=part.fetch_offset,
                    max_bytes=self._max_bytes,
                )
                for part in parts
            ],
            max_bytes=self._reply_max_bytes,
            min_bytes=1,
            max_wait_ms=self._max_wait_ms,
        )
        self._conn.ensure_ready()
        fut = self._conn.multi_fetch_raw.future(
            req, timeout=self._max_wait_ms / 1000 + self._timeout_s
        )
        self._track(parts, fut)

    def _current(self, tp: TopicPartition, epoch: int, fid: int) -> _Part | None:
        """The partition if this fetch is still its current one (not seeked or unassigned)."""
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch or part.future != fid:
            return None
        return part

    def _cancel_if_stale(self, fid: int) -> None:
        """Cancel fetch ``fid`` once none of its partitions is waiting for it."""
        entry = self._fetches.get(fid)
        if entry is None:
            return
        members, fut = entry
        if all(self._current(tp, epoch, fid) is None for tp, epoch in members):
            del self._fetches[fid]
            self._unary.discard(fid)
            fut.cancel()

    def _issue_all(self, now: float) -> float | None:
        """Fetch, in one request, every partition that has no fetch in flight and
        room to buffer its reply (while fewer than _MAX_FETCHES are in flight);
        tail the caught-up ones over Subscribe when few are assigned."""
        wake: float | None = None
        ready = []
        stream = len(self._parts) <= self._stream_max
        for part in self._parts.values():
            if part.future is not None or part.stream is not None or part.position is None:
                continue
            if stream and part.caught_up and part.retry_at <= now:
                if part.stream_after <= now:
                    self._open_stream(part)
                    continue
                wake = part.stream_after if wake is None else min(wake, part.stream_after)
            if len(part.buffers) >= _MAX_BUFFERED:
                continue
            if part.retry_at > now:
                wake = part.retry_at if wake is None else min(wake, part.retry_at)
                continue
            ready.append(part)
        if not self._multi:
            for part in ready:
                self._issue_unary(part)
        elif ready and len(self._fetches) < _MAX_FETCHES:
            for group in self._groups(ready):
                self._issue(group)
        return wake

    def _groups(self, ready: list[_Part]) -> list[list[_Part]]:
        """``ready`` cut into requests whose replies may hold about
        ``_REQUEST_SPLIT_BYTES`` (each partition up to ``fetch_max_bytes``): as
        many as the free request slots allow, less one kept for partitions
        that become ready while these long-poll."""
        free = _MAX_FETCHES - len(self._fetches)
        want = -(-len(ready) * self._max_bytes // _REQUEST_SPLIT_BYTES)
        k = max(1, min(free - 1, want, len(ready)))
        size = -(-len(ready) // k)
        return [ready[i : i + size] for i in range(0, len(ready), size)]

    # -- Subscribe streams -----------------------------------------------------

    def _open_stream(self, part: _Part) -> None:
        """Tail ``part`` from its fetch offset over one Subscribe stream."""
        self._conn.ensure_ready()
        req = logstore_pb2.SubscribeRequest(
            topic=part.tp.topic,
            partition=part.tp.partition,
            offset=part.fetch_offset,
            max_bytes=min(self._max_bytes, (1 << 31) - 1),
        )
        self._stream_seq += 1
        st = _Stream(-self._stream_seq, self._conn.subscribe_raw(req))
        self._streams[st.sid] = (part.tp, st)
        part.stream = st
        self.streams_opened += 1
        st.thread = threading.Thread(
            target=self._read_stream, args=(st,), name=f"logstore-subscribe-{part.tp}", daemon=True
        )
        st.thread.start()

    def _read_stream(self, st: _Stream) -> None:
        """The reader thread: each pushed message into the bounded buffer (waiting
        while it is full, so flow control holds the broker back), then an event."""
        events = self._events
        cond = self._stream_cond
        try:
            for raw in st.call:
                n = len(raw)
                with cond:
                    # Wait for room; a message larger than the bound gets in alone.
                    while (
                        not st.stopped
                        and self._stream_bytes
                        and (self._stream_bytes + n > self._stream_bound)
                    ):
                        cond.wait(1.0)
                    if st.stopped:
                        return
                    self._stream_bytes += n
                    self._stream_peak = max(self._stream_peak, self._stream_bytes)
                events.put((st.sid, raw))
        except BaseException as exc:  # the call's end: an RpcError (ours: CANCELLED)
            if not st.stopped:
                events.put((st.sid, exc))
            return
        if not st.stopped:
            events.put((st.sid, None))  # ended without an error: fetch from here

    def _release(self, n: int) -> None:
        """``n`` bytes of the stream buffer are no longer held."""
        if n:
            with self._stream_cond:
                self._stream_bytes -= n
                self._stream_cond.notify_all()

    def _stop_stream(self, part: _Part) -> None:
        """Cancel ``part``'s stream; its undelivered messages are dropped as they
        arrive, the buffered ones kept (fetching resumes where they end)."""
        st = part.stream
        if st is None:
            return
        part.stream = None
        part.caught_up = False
        self._streams.pop(st.sid, None)
        st.stopped = True
        st.call.cancel()
        with self._stream_cond:
            self._stream_cond.notify_all()

    def _handle_stream(self, sid: int, payload: Any) -> None:
        """A pushed message (bytes), or the stream's end (None or the exception)."""
        entry = self._streams.get(sid)
        if entry is None:  # stopped: a seek, assign or close
            if isinstance(payload, bytes):
                self._release(len(payload))
            return
        tp, st = entry
        part = self._parts[tp]  # unassigning a partition stops its stream first
        if not isinstance(payload, bytes):
            del self._streams[sid]
            part.stream = None
            part.caught_up = False  # fetch next, with the fetch path's errors and retries
            st.stopped = True
            if (
                isinstance(payload, grpc.RpcError)
                and payload.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                self._stream_max = 0  # an older broker: fetch only from now on
            elif not st.pushed:
                part.stream_after = time.monotonic() + _STREAM_RETRY_S
            return
        n = len(payload)
        try:
            result = parse_fetch(payload, self._check_crcs)
        except BaseException:
            self._release(n)
            self._stop_stream(part)
            raise
        st.pushed += 1
        part.hwm = result.high_watermark
        part.lso = result.log_start_offset
        frames = result.frames
        if frames and frames[0][1].next_offset <= part.fetch_offset:
            # Never twice: frames that end at or below what is buffered already.
            frames = [f for f in frames if f[1].next_offset > part.fetch_offset]
            result = result._replace(frames=frames)
        if not frames:
            self._release(n)
            return
        end = frames[-1][1].next_offset
        part.buffers.append((result, end, n))
        part.fetch_offset = end

    def _failed(
        self, part: _Part, err: errors.LogStoreError, may_retry: bool, name: bool
    ) -> errors.LogStoreError | None:
        """Schedule ``part``'s retry (None), or the error to raise once retries are over."""
        now = time.monotonic()
        if may_retry:
            if part.fail_since is None:
                part.fail_since = now
            if now - part.fail_since < self._retry_timeout_s:
                hint = getattr(err, "retry_after_ms", None)
                part.retry_at = now + self._backoff.delay_s(part.failures, hint)
                part.failures += 1
                return None
        if name:
            # Name the partition, so a caller holding several can react to this
            # one (GroupConsumer applies auto_offset_reset to an OUT_OF_RANGE).
            err.metadata.setdefault("topic", part.tp.topic)
            err.metadata.setdefault("partition", str(part.tp.partition))
        return err

    def _handle(self, event: tuple[int, Any]) -> None:
        fid, fut = event
        if fid < 0:
            self._handle_stream(fid, fut)
            return
        entry = self._fetches.pop(fid, None)
        unary = fid in self._unary
        self._unary.discard(fid)
        if entry is None:
            return  # cancelled: every partition of it was seeked or unassigned
        members, _ = entry
        live: list[tuple[int, _Part]] = []
        for i, (tp, epoch) in enumerate(members):
            part = self._current(tp, epoch, fid)
            if part is not None:
                part.future = None
                live.append((i, part))
        if not live:
            return
        try:
            raw = fut.result()
        except BaseException as exc:
            if (
                not unary
                and isinstance(exc, grpc.RpcError)
                and exc.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                self._multi = False  # an older broker: fetch these again one by one
                return
            err = translate(exc, self.address)
            # A plain CANCELLED of a call still current (not seeked away) was ended by
            # the broker, not by us (we cancel only what is stale, ignored above): its
            # graceful stop ends in-flight long polls so. Retried like UNAVAILABLE.
            cancelled = isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.CANCELLED
            may_retry = retriable(err) or cancelled
            raised = None
            for _, part in live:
                raised = self._failed(part, err, may_retry, len(members) == 1) or raised
            if raised is not None:
                raise raised from None
            return
        entries = [raw] if unary else split_multi_fetch(raw)
        if len(entries) != len(members):
            raise errors.CorruptRecordError(
                f"a MultiFetch reply from {self.address} has {len(entries)} partitions for "
                f"{len(members)} asked"
            )
        first: errors.LogStoreError | None = None
        for i, part in live:
            result = parse_fetch(entries[i], self._check_crcs)
            if not result.frames and not unary:
                status = partition_meta(entries[i]).status
                if status.code != 0:
                    err = translate_status(status, self.address)
                    raised = self._failed(part, err, retriable(err), True)
                    first = first or raised
                    continue
            part.fail_since = None
            part.failures = 0
            part.hwm = result.high_watermark
            part.lso = result.log_start_offset
            if result.frames:
                last = result.frames[-1][1]
                # The last frame's next offset, not base + count: offsets may have
                # gaps (a compacted log), within a batch and after its last record.
                end = last.next_offset
                part.buffers.append((result, end, 0))
                part.fetch_offset = end
            # No backlog left: the next read of this partition may be a stream.
            part.caught_up = part.fetch_offset >= result.high_watermark
        if first is not None:
            # The reply's other partitions are buffered: the next poll returns them.
            raise first from None

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
            result, end, charged = part.buffers[0]
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
                if charged:
                    self._release(charged)
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
        threads = [p.stream.thread for p in self._parts.values() if p.stream is not None]
        for part in self._parts.values():
            self._cancel(part)
        for _, fut in self._fetches.values():
            fut.cancel()
        self._fetches.clear()
        self._unary.clear()
        for thread in threads:
            if thread is not None:
                thread.join(timeout=2.0)  # a cancelled call ends its read at once
        self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
