"""PartitionLog: the ordered segments of one topic-partition.

Offsets: ``log_start_offset`` <= every readable offset < ``log_end_offset``
(the high watermark on a single broker). ``flushed_offset`` is the offset
below which everything is fsynced; the store checkpoints it as the recovery
point.

Writes (append, roll, truncate, retention, delete_records) hold the
partition's lock: one writer at a time. Reads take no lock: they work on a
snapshot of the segment list (replaced, never mutated in place) and read
only below each segment's published ``size``.

Group commit (``sync_to``): waiters queue on the partition. With the store's
flusher thread running, it fsyncs and completes them; otherwise the first
waiter becomes the leader, fsyncs for everyone queued behind it, and loops
until no waiter is left (leader/follower, no thread).

Recovery (``open`` after an unclean shutdown): segments wholly below the
recovery point are trusted; from the recovery point on, every frame is
checked (head, CRC32C, contiguous offsets). The first bad frame and
everything after it are a torn tail: truncated, with one WARN line. A frame
that cannot be reached *before* the recovery point is corruption: nothing is
truncated, reads of that range raise CorruptRecordError, and appends continue
in a new segment at the recovery point so no acknowledged offset is reused.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from logstore.config import StoreConfig, TopicConfig
from logstore.errors import (
    CorruptRecordError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    StorageError,
    StoreClosedError,
)
from logstore.wire import (
    FRAME_OVERHEAD,
    PREFIX_SIZE,
    Record,
    batch_view,
    build_head,
    check_crc,
    decode_header,
    decode_records,
    patch_base_offset,
)

from ._checkpoint import write_atomic
from ._fs import FileSystem
from ._index import IndexCache
from ._names import FileKind, parse_segment_file, segment_file
from ._producers import ProducerState
from ._segment import HandleCache, Segment

log = logging.getLogger("logstore.storage")

#: Producer-state snapshots kept per partition (older ones are deleted).
SNAPSHOTS_KEPT = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class AppendResult:
    """Where an append went. ``duplicate`` means an idempotent retry: nothing
    was written and ``base_offset`` is the original one."""

    base_offset: int
    last_offset: int
    timestamp_ms: int
    log_start_offset: int
    duplicate: bool = False


@dataclass(frozen=True)
class FetchResult:
    """Stored frames (CRC-checked, unchanged) and the partition's offsets.

    ``data`` may start with a frame that begins before the requested offset;
    ``next_offset`` is the offset after the last frame in ``data``.
    """

    data: bytes
    high_watermark: int
    log_start_offset: int
    next_offset: int


class PartitionLog:
    """See the module docstring. Built by :meth:`open`."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        topic: str,
        partition: int,
        config: TopicConfig,
        store_config: StoreConfig,
        handles: HandleCache,
        index_cache: IndexCache,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.name = f"{topic}-{partition}"
        self.config = config
        self.store_config = store_config
        self.handles = handles
        self.index_cache = index_cache
        # (segments, their base offsets), replaced as one tuple so a reader
        # never pairs a segment list with the bases of another.
        self._view: tuple[list[Segment], list[int]] = ([], [])
        self.log_start_offset = 0
        self.flushed_offset = 0
        self.producers = ProducerState(
            store_config.max_producer_ids, store_config.producer_id_expiration_ms
        )
        self.last_append_ms = now_ms()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._waiters: list[tuple[int, Future[None]]] = []
        self._syncing = False
        self._dir_dirty = False
        self._failed: StorageError | None = None
        self._closed = False
        #: Set by the store: called with the partition when it has sync waiters
        #: and a flusher thread exists; returns False if there is none.
        self.on_sync_wanted: Callable[[PartitionLog], bool] = lambda _p: False
        self.on_log_start_changed: Callable[[PartitionLog], None] = lambda _p: None
        self.on_recovery_point_lowered: Callable[[PartitionLog], None] = lambda _p: None

    # --- offsets ------------------------------------------------------------------
    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def log_end_offset(self) -> int:
        return self.segments[-1].next_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def segments(self) -> list[Segment]:
        """The segments, oldest first (a snapshot: never mutated in place)."""
        return self._view[0]

    @property
    def _bases(self) -> list[int]:
        return self._view[1]

    def _set_segments(self, segments: list[Segment]) -> None:
        for seg in segments:
            seg.index_interval_bytes = self.config.index_interval_bytes
        self._view = (segments, [s.base_offset for s in segments])

    # --- open and recovery -----------------------------------------------------------
    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        topic: str,
        partition: int,
        config: TopicConfig,
        store_config: StoreConfig,
        handles: HandleCache,
        index_cache: IndexCache,
        *,
        clean: bool,
        recovery_point: int,
        log_start_offset: int,
    ) -> PartitionLog:
        """Open (creating if needed) a partition directory and recover it."""
        self = cls(fs, directory, topic, partition, config, store_config, handles, index_cache)
        fs.mkdir(directory)
        now = now_ms()
        log_bases: list[int] = []
        snapshots: list[int] = []
        index_files: set[int] = set()
        for name in fs.listdir(directory):
            parsed = parse_segment_file(directory, name)
            if parsed is None:
                fs.unlink(os.path.join(directory, name))  # leftover *.tmp
                continue
            offset, kind = parsed
            if kind is FileKind.LOG:
                log_bases.append(offset)
            elif kind is FileKind.SNAPSHOT:
                snapshots.append(offset)
            else:
                index_files.add(offset)
        log_bases.sort()
        for orphan in index_files - set(log_bases):
            for kind in (FileKind.INDEX, FileKind.TIMEINDEX):
                path = os.path.join(directory, segment_file(orphan, kind))
                if fs.exists(path):
                    fs.unlink(path)
        segments: list[Segment] = []
        for i, base in enumerate(log_bases):
            nxt = (
                log_bases[i + 1] if i + 1 < len(log_bases) else (recovery_point if clean else None)
            )
            seg = Segment.load(fs, directory, base, handles, index_cache, nxt, now)
            seg.sealed = i + 1 < len(log_bases)
            segments.append(seg)
        if not segments:
            base = max(recovery_point, log_start_offset)
            segments.append(Segment.create(fs, directory, base, handles, index_cache, now))
            self._dir_dirty = True
        self._set_segments(segments)
        if not clean:
            # Files made before the crash may be in the page cache only: fsync
            # the directory before the first acknowledgement into them.
            self._dir_dirty = True
        if clean:
            act = self.active
            act.next_offset = max(act.next_offset, act.base_offset)
            act._bytes_since_entry = act.size - act.index.last()[1] if act.index.n else act.size
        else:
            self._recover(recovery_point)
        self.log_start_offset = max(log_start_offset, self.segments[0].base_offset)
        self.log_start_offset = min(self.log_start_offset, self.log_end_offset)
        self.flushed_offset = (
            self.log_end_offset if clean else min(recovery_point, self.log_end_offset)
        )
        self._load_producers(sorted(snapshots))
        return self

    def _recover(self, recovery_point: int) -> None:
        """Re-scan everything from the recovery point (see the module docstring)."""
        interval = self.config.index_interval_bytes
        segs = self.segments
        # Retention may have deleted segments the (older) checkpoint still
        # points into: what is left starts at the first segment's base.
        recovery_point = max(recovery_point, segs[0].base_offset)
        # The segment holding the recovery point: the last one based at or below it.
        k = max(bisect.bisect_right([s.base_offset for s in segs], recovery_point) - 1, 0)
        for seg in segs[:k]:
            if not seg.size:
                seg.next_offset = seg.base_offset
        rp_seg = segs[k]
        # 1. Walk (no CRC) from a trusted index entry up to the recovery point.
        start_pos = 0
        if recovery_point > rp_seg.base_offset:
            try:
                start_pos = self._position_of_boundary(rp_seg, recovery_point)
            except CorruptRecordError as exc:
                self._corrupt_before(rp_seg, k, recovery_point, str(exc))
                return
        else:
            rp_seg.index.reset()
            rp_seg.time_index.reset()
            rp_seg.max_timestamp_ms = -1
        # 2. Check every frame after it, segment by segment.
        for j in range(k, len(segs)):
            seg = segs[j]
            pos = start_pos if j == k else 0
            expected = recovery_point if j == k else segs[j - 1].next_offset
            if j > k:
                seg.index.reset()
                seg.time_index.reset()
                seg.max_timestamp_ms = -1
                if seg.base_offset != expected:
                    self._drop_from(j, f"segment base {seg.base_offset} != expected {expected}")
                    return
            seg.size = pos
            seg.next_offset = expected
            seg._bytes_since_entry = pos - seg.index.last()[1] if seg.index.n else pos
            file_size = self.fs.file_size(seg.log_path)
            bad = self._scan_valid(seg, pos, file_size, expected, interval)
            if bad is not None:
                dropped = file_size - seg.size
                log.warning(
                    "%s: torn tail truncated at offset %d (byte %d of %s): %d bytes dropped (%s)",
                    self.name, seg.next_offset, seg.size, os.path.basename(seg.log_path),
                    dropped, bad,
                )  # fmt: skip
                seg.truncate_to(seg.size, seg.next_offset)
                self._drop_from(j + 1, "after a torn tail")
                return
            seg.sealed = j + 1 < len(segs)

    def _scan_valid(
        self, seg: Segment, pos: int, file_size: int, expected: int, interval: int
    ) -> str | None:
        """Accept valid frames from ``pos``; return why scanning stopped early."""
        try:
            for p, h in seg.frames(pos, file_size):
                if h.base_offset != expected:
                    return f"base offset {h.base_offset}, expected {expected}"
                check_crc(seg.pread(h.frame_size, p), h)
                rel = h.base_offset - seg.base_offset
                if p and seg._bytes_since_entry >= interval and rel > seg.index.last()[0]:
                    seg.index.append(rel, p)
                    last = seg.time_index.last()
                    ts = max(seg.max_timestamp_ms, h.max_timestamp_ms)
                    if last is None or ts > last[0]:
                        seg.time_index.append(ts, rel)
                    seg._bytes_since_entry = 0
                seg.max_timestamp_ms = max(seg.max_timestamp_ms, h.max_timestamp_ms)
                seg._bytes_since_entry += h.frame_size
                seg.size = p + h.frame_size
                seg.next_offset = expected = h.next_offset
        except CorruptRecordError as exc:
            return str(exc)
        return None

    def _position_of_boundary(self, seg: Segment, offset: int) -> int:
        """Byte position of the frame starting at ``offset`` (walk without CRC)."""
        # Only entries of frames that start before the recovery point can be
        # trusted (an entry for the frame at it may point at a torn frame).
        seg.index.load(offset - seg.base_offset - 1)
        seg.time_index.load(offset - seg.base_offset - 1)
        file_size = self.fs.file_size(seg.log_path)
        rel, pos = seg.index.lookup(offset - seg.base_offset)
        if pos:
            try:
                for _p, h in seg.frames(pos, min(pos + FRAME_OVERHEAD, file_size)):
                    if h.base_offset != seg.base_offset + rel:
                        raise CorruptRecordError("bad index entry")
                    break
            except CorruptRecordError:
                seg.index.reset()
                seg.time_index.reset()
                pos = 0
        last_ts = seg.time_index.last()
        seg.max_timestamp_ms = last_ts[0] if last_ts else -1
        # Stop right after the frame that ends at the recovery point: the frame
        # after it may be torn, and that is a torn tail, not corruption.
        for p, h in seg.frames(pos, file_size):
            if h.base_offset >= offset or h.next_offset > offset:
                break
            seg.max_timestamp_ms = max(seg.max_timestamp_ms, h.max_timestamp_ms)
            if h.next_offset == offset:
                return p + h.frame_size
        raise CorruptRecordError(
            f"{seg.log_path}: no frame boundary at recovery point {offset} (data missing)"
        )

    def _corrupt_before(self, seg: Segment, k: int, recovery_point: int, why: str) -> None:
        """Data before the recovery point is unreachable: keep it (reads of it
        report corruption) and continue in a new segment at the recovery point."""
        log.error(
            "%s: CORRUPTION before the recovery point %d in %s: %s; offsets %d..%d are "
            "unreadable, nothing was truncated, appends continue at %d",
            self.name, recovery_point, os.path.basename(seg.log_path), why,
            seg.base_offset, recovery_point - 1, recovery_point,
        )  # fmt: skip
        seg.next_offset = recovery_point
        seg.sealed = True
        self._drop_from(k + 1, "after corruption")
        new = Segment.create(
            self.fs, self.directory, recovery_point, self.handles, self.index_cache, now_ms()
        )
        self._dir_dirty = True
        self._set_segments([*self.segments, new])

    def _drop_from(self, j: int, why: str) -> None:
        for seg in self.segments[j:]:
            log.warning("%s: deleting segment %s (%s)", self.name, seg.log_path, why)
            seg.delete()
        self._set_segments(self.segments[:j])
        self.active.sealed = False

    def _load_producers(self, snapshots: list[int]) -> None:
        end = self.log_end_offset
        start = self.log_start_offset
        usable = [s for s in snapshots if s <= end]
        for s in snapshots:
            if s > end:
                self.fs.unlink(self._snapshot_path(s))
        from_offset = self.segments[0].base_offset
        if usable:
            try:
                self.producers.load_json(self.fs.read_file(self._snapshot_path(usable[-1])))
                from_offset = usable[-1]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: ignoring bad producer snapshot: %s", self.name, exc)
        from_offset = max(from_offset, start)
        if from_offset >= end:
            return
        try:
            self._replay_producers(from_offset, end)
        except CorruptRecordError as exc:
            log.warning("%s: producer state rebuilt only partly: %s", self.name, exc)

    def _replay_producers(self, from_offset: int, end: int) -> None:
        i = max(bisect.bisect_right(self._bases, from_offset) - 1, 0)
        for seg in self.segments[i:]:
            if seg.next_offset <= from_offset or seg.size == 0:
                continue
            pos = 0
            if seg.base_offset < from_offset:
                pos, _ = seg.position_of(from_offset)
            for _p, h in seg.frames(pos, seg.size):
                if h.producer_id and h.base_offset >= from_offset and h.producer_epoch >= 0:
                    self.producers.update(
                        h.producer_id, h.producer_epoch, h.base_sequence,
                        h.record_count, h.base_offset, h.base_timestamp_ms,
                    )  # fmt: skip
                if h.next_offset >= end:
                    break

    def _snapshot_path(self, offset: int) -> str:
        return os.path.join(self.directory, segment_file(offset, FileKind.SNAPSHOT))

    def write_producer_snapshot(self) -> None:
        """Snapshot the producer state at the log end offset (under the lock)."""
        if not self.producers.changed:
            return
        end = self.log_end_offset
        write_atomic(self.fs, self._snapshot_path(end), self.producers.to_json())
        self.producers.changed = False
        old = sorted(
            o
            for n in self.fs.listdir(self.directory)
            if n.endswith(".snapshot") and (o := int(n.split(".")[0])) != end
        )
        for o in old[: max(len(old) - (SNAPSHOTS_KEPT - 1), 0)]:
            self.fs.unlink(self._snapshot_path(o))

    # --- writing -------------------------------------------------------------------------
    def append(
        self,
        records: bytes | memoryview,
        record_count: int,
        base_timestamp_ms: int | None = None,
        max_timestamp_ms: int | None = None,
        producer_id: int = 0,
        producer_epoch: int = 0,
        base_sequence: int = 0,
    ) -> AppendResult:
        """Append one batch (the serialized records field) and return where it went."""
        batch_bytes = FRAME_OVERHEAD - PREFIX_SIZE + len(records)
        if batch_bytes > self.config.max_batch_bytes:
            raise InvalidBatchError(
                f"{self.name}: batch of {batch_bytes} bytes exceeds max_batch_bytes "
                f"{self.config.max_batch_bytes}; send smaller batches or raise the topic's "
                f"max_batch_bytes"
            )
        now = now_ms()
        base_ts = now if base_timestamp_ms is None else base_timestamp_ms
        max_ts = base_ts if max_timestamp_ms is None else max(max_timestamp_ms, base_ts)
        head = build_head(
            len(records), record_count, base_ts, max_ts, producer_id, producer_epoch,
            base_sequence, records=records,
        )  # fmt: skip
        with self._lock:
            self._check_writable()
            if producer_id:
                dup = self.producers.check(
                    producer_id, producer_epoch, base_sequence, record_count, self.name
                )
                if dup is not None:
                    return AppendResult(
                        dup.base_offset,
                        dup.base_offset + dup.last_seq - dup.first_seq,
                        dup.timestamp_ms,
                        self.log_start_offset,
                        duplicate=True,
                    )
            seg = self.active
            frame_size = len(head) + len(records)
            if not seg.fits(frame_size, record_count, self.config.segment_bytes) or (
                seg.size and now - seg.created_ms >= self.config.segment_ms
            ):
                try:
                    seg = self._roll(now)
                except StorageError as exc:
                    # A half-done roll (sealed indexes, a new file) is not undone
                    # here: stop writing; a restart recovers the partition.
                    self._failed = exc
                    raise
            base = seg.next_offset
            patch_base_offset(head, base)
            try:
                seg.append(
                    head, records, base, record_count, max_ts, self.config.index_interval_bytes
                )
            except StorageError as exc:
                self._check_after_failed_write(seg, exc)
                raise
            if producer_id:
                self.producers.update(
                    producer_id, producer_epoch, base_sequence, record_count, base, base_ts
                )
            self.last_append_ms = now
            result = AppendResult(base, base + record_count - 1, base_ts, self.log_start_offset)
        return result

    def _check_after_failed_write(self, seg: Segment, exc: StorageError) -> None:
        """After a failed append the segment truncated its file back; if the
        file does not match what the segment believes, stop writing."""
        try:
            consistent = self.fs.file_size(seg.log_path) == seg.size
        except StorageError:
            consistent = False
        if not consistent:
            self._failed = exc
            log.error("%s: write failed and was not undone (%s); read-only now", self.name, exc)
        else:
            log.warning("%s: append at offset %d failed: %s", self.name, seg.next_offset, exc)

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.name} is closed")
        if self._failed is not None:
            raise StorageError(
                f"{self.name} is read-only after an I/O error ({self._failed}); "
                "restart the store to recover it"
            )

    def _roll(self, now: int) -> Segment:
        """Seal the active segment and start a new one (lock held)."""
        old = self.active
        if old.size == 0:
            return old
        old.seal()
        new = Segment.create(
            self.fs, self.directory, old.next_offset, self.handles, self.index_cache, now
        )
        self._dir_dirty = True
        self._set_segments([*self.segments, new])
        self.write_producer_snapshot()
        log.info("%s: rolled segment at offset %d", self.name, new.base_offset)
        return new

    def roll(self) -> None:
        with self._lock:
            self._check_writable()
            self._roll(now_ms())

    # --- durability ----------------------------------------------------------------------
    def sync_to(self, offset: int) -> Future[None]:
        """A future done when every offset below ``offset`` is fsynced."""
        fut: Future[None] = Future()
        with self._sync_lock:
            if self.flushed_offset >= offset:
                fut.set_result(None)
                return fut
            self._waiters.append((offset, fut))
            if self._syncing:
                return fut
            if self.on_sync_wanted(self):
                return fut
            self._syncing = True
        self._lead_syncs()
        return fut

    def _lead_syncs(self) -> None:
        """Fsync until no waiter is left (the caller set ``_syncing``)."""
        while True:
            self.sync_once()
            with self._sync_lock:
                if not self._waiters:
                    self._syncing = False
                    return

    def sync_once(self) -> int:
        """One fsync of everything appended so far; completes the waiters it
        covers and returns how many it completed."""
        with self._lock:
            target = self.log_end_offset
            seg = self.active
            dir_dirty = self._dir_dirty
            self._dir_dirty = False
            failed = self._failed
        error: BaseException | None = failed
        if error is None:
            try:
                if self.flushed_offset < target:
                    seg.sync()
                if dir_dirty:
                    self.fs.fsync_dir(self.directory)
            except StorageError as exc:
                # After a failed fsync the page cache state is unknown
                # (PostgreSQL's "fsyncgate"): stop accepting writes.
                self._failed = error = exc
        with self._sync_lock:
            done: list[Future[None]] = []
            if error is None:
                self.flushed_offset = max(self.flushed_offset, target)
                keep = []
                for off, fut in self._waiters:
                    if off <= target:
                        done.append(fut)
                    else:
                        keep.append((off, fut))
                self._waiters = keep
            else:
                done = [f for _, f in self._waiters]
                self._waiters = []
        for fut in done:
            # A waiter may have given up (an asyncio caller cancelled the
            # wrapped future): completing it anyway must not kill the flusher.
            with contextlib.suppress(InvalidStateError):
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
        return len(done)

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def flush(self) -> None:
        """Everything appended before this call is durable when it returns."""
        self.sync_to(self.log_end_offset).result()

    # --- reading -------------------------------------------------------------------------
    def _check_offset(self, offset: int) -> tuple[int, int]:
        start, end = self.log_start_offset, self.log_end_offset
        if not start <= offset <= end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.name}: valid offsets are "
                f"{start}..{end} (log start offset..log end offset)",
                start,
                end,
            )
        return start, end

    def read_frames(self, offset: int, max_bytes: int) -> FetchResult:
        """Stored frames from the one containing ``offset`` (see FetchResult)."""
        start, end = self._check_offset(offset)
        if offset == end:
            return FetchResult(b"", end, start, end)
        segments, bases = self._view
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0 or offset >= segments[i].next_offset:
            if offset < self.log_start_offset:  # deleted by retention meanwhile
                self._check_offset(offset)
            raise CorruptRecordError(
                f"{self.name}: offset {offset} is missing from the log (data lost before the "
                f"recovery point)"
            )
        seg = segments[i]
        try:
            pos, _ = seg.position_of(offset)
            data, nxt = seg.read_frames(pos, max_bytes)
        except StorageError as exc:
            if offset < self.log_start_offset:  # deleted by retention under us
                raise OffsetOutOfRangeError(
                    f"offset {offset} was deleted from {self.name} while being read",
                    self.log_start_offset,
                    self.log_end_offset,
                ) from exc
            raise
        return FetchResult(data, end, start, nxt)

    def read(self, offset: int, max_bytes: int = 1 << 20) -> list[Record]:
        """Records from exactly ``offset``: at least one if ``offset`` < end."""
        res = self.read_frames(offset, max_bytes)
        out: list[Record] = []
        mv = memoryview(res.data)
        pos = 0
        while pos < len(mv):
            h = decode_header(mv, pos)
            frame = mv[pos : pos + h.frame_size]
            out += decode_records(batch_view(frame), h.base_offset, h.base_timestamp_ms, offset)
            pos += h.frame_size
        return out

    def offset_for_time(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first record with timestamp >= the
        given one, or None if there is none."""
        for seg in list(self.segments):
            if seg.next_offset <= self.log_start_offset or seg.size == 0:
                continue
            seg.ensure_indexes()
            if seg.max_timestamp_ms < timestamp_ms:
                continue
            rel = seg.time_index.scan_start(timestamp_ms)
            start_off = max(seg.base_offset + rel, self.log_start_offset, seg.base_offset)
            pos, _ = seg.position_of(start_off)
            for p, h in seg.frames(pos, seg.size):
                if h.max_timestamp_ms < timestamp_ms or h.next_offset <= self.log_start_offset:
                    continue
                frame = seg.pread(h.frame_size, p)
                check_crc(frame, h)
                for r in decode_records(
                    batch_view(frame), h.base_offset, h.base_timestamp_ms, self.log_start_offset
                ):
                    if r.timestamp_ms >= timestamp_ms:
                        return r.offset, r.timestamp_ms
                return h.next_offset - 1, h.max_timestamp_ms  # max ts claimed but no record: last
        return None

    # --- deletion ---------------------------------------------------------------------
    def delete_records(self, before_offset: int) -> int:
        """Advance the log start offset to ``before_offset``; return it."""
        with self._lock:
            self._check_offset(before_offset)
            if before_offset > self.log_start_offset:
                self.log_start_offset = before_offset
                self._delete_segments_below(before_offset, "delete records")
            start = self.log_start_offset
        self.on_log_start_changed(self)
        return start

    def _delete_segments_below(self, offset: int, why: str) -> None:
        """Delete sealed segments whose records are all below ``offset`` (lock held)."""
        segs = self.segments
        n = 0
        while n < len(segs) - 1 and segs[n + 1].base_offset <= offset:
            n += 1
        if n:
            self._set_segments(segs[n:])
            for seg in segs[:n]:
                log.info("%s: deleting segment at offset %d (%s)", self.name, seg.base_offset, why)
                seg.delete()

    def apply_retention(self, now: int) -> bool:
        """Delete whole sealed segments past retention_ms / retention_bytes."""
        cfg = self.config
        changed = False
        with self._lock:
            segs = self.segments
            n = 0
            total = sum(s.size for s in segs)
            while n < len(segs) - 1:
                seg = segs[n]
                if cfg.retention_ms >= 0:
                    seg.ensure_indexes()  # its max timestamp comes from the time index
                by_time = (
                    cfg.retention_ms >= 0
                    and seg.max_timestamp_ms >= 0
                    and now - seg.max_timestamp_ms > cfg.retention_ms
                )
                by_size = cfg.retention_bytes >= 0 and total - seg.size >= cfg.retention_bytes
                if not (by_time or by_size):
                    break
                total -= seg.size
                n += 1
            if n:
                new_start = segs[n].base_offset
                # The start moves before the segments go, so a reader never
                # finds an offset above the start in no segment.
                self.log_start_offset = max(self.log_start_offset, new_start)
                self._delete_segments_below(new_start, "retention")
                changed = True
        if changed:
            self.on_log_start_changed(self)
        return changed

    def maybe_roll_by_time(self, now: int) -> None:
        with self._lock:
            if self._closed or self._failed is not None:
                return
            seg = self.active
            if seg.size and now - seg.created_ms >= self.config.segment_ms:
                self._roll(now)

    def close_idle(self, now: int) -> None:
        if now - self.last_append_ms >= self.store_config.idle_close_ms:
            with self._lock:
                self.handles.forget(self.active)

    def truncate_to(self, offset: int) -> None:
        """Drop every record at or after ``offset`` (log start <= offset <= end)."""
        with self._lock:
            self._check_writable()
            self._check_offset(offset)
            if offset == self.log_end_offset:
                return
            segs = self.segments
            i = max(bisect.bisect_right(self._bases, offset) - 1, 0)
            seg = segs[i]
            if offset <= seg.base_offset:
                pos = 0
                offset_at = seg.base_offset
            else:
                pos, h = seg.position_of(offset)
                if h.base_offset != offset:  # inside a batch: keep the whole batch
                    pos += h.frame_size
                    offset_at = h.next_offset
                else:
                    offset_at = offset
            if offset_at >= self.log_end_offset:
                return
            # Lower the checkpointed recovery point (to a frame boundary) before
            # touching a file: a crash after the truncation must not find a
            # recovery point past the end, which would read as lost data.
            with self._sync_lock:
                self.flushed_offset = min(self.flushed_offset, offset_at)
            self.on_recovery_point_lowered(self)
            for later in segs[i + 1 :]:
                later.delete()
            self._set_segments(segs[: i + 1])
            if len(segs) > i + 1:
                # The deletions must be durable before we return: segments that
                # came back after a power cut would start exactly at the new
                # recovery point and be taken as valid data.
                self.fs.fsync_dir(self.directory)
            seg.sealed = False
            seg.truncate_to(pos, offset_at)
            last_ts = seg.time_index.last()
            seg.max_timestamp_ms = last_ts[0] if last_ts else -1
            from_pos = seg.index.last()[1] if seg.index.n else 0
            for _p, h in seg.frames(from_pos, seg.size):
                seg.max_timestamp_ms = max(seg.max_timestamp_ms, h.max_timestamp_ms)
            self.producers.truncate(offset_at)

    # --- close -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, snapshot producer state, trim the active indexes; idempotent."""
        if self._closed:
            return
        if self._failed is None:
            self.flush()
        with self._lock:
            self._closed = True
            if self._failed is None:
                self.write_producer_snapshot()
                self.active.close()
            for seg in self.segments:
                self.handles.forget(seg)

    def abandon(self) -> None:
        """Close handles without flushing (a simulated crash, or a deleted topic)."""
        with self._lock:
            self._closed = True
            for seg in self.segments:
                self.handles.forget(seg)
            for seg in self.segments:
                seg.index.unmap()
                seg.time_index.unmap()
