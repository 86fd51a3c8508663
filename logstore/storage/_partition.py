"""PartitionLog: one topic-partition: appends, reads and its offsets.

Offsets: ``log_start_offset`` <= every readable offset < ``high_watermark``
<= ``log_end_offset``. The log end offset is where the next append goes; the
high watermark is the end of what readers are served (committed records).
On a single broker every appended record is committed, so the append path
advances the high watermark to the log end offset at once
(``_advance_high_watermark``, the one place replication will change);
truncation lowers both. ``flushed_offset`` is the offset
below which everything is fsynced; the store checkpoints it as the recovery
point.

Writes (append, roll, truncate, retention, delete_records) hold the
partition's lock: one writer at a time. Reads take no lock: they work on a
snapshot of the segment list (replaced, never mutated in place) and read
only below each segment's published ``size``.

Group commit (``sync_to``): waiters queue on the partition's
:class:`~._group_commit.GroupCommit`. With the store's flusher thread running,
it fsyncs and completes them; otherwise the first waiter becomes the leader,
fsyncs for everyone queued behind it, and loops until no waiter is left
(leader/follower, no thread).

Rolls: a roll seals the active segment *without* fsync (final time entry,
trimmed indexes), creates the next one and takes the producer snapshot in
memory, all under the lock and none of it waiting for the disk; the new
segment takes appends at once. Their durability is the group commit's: the
next fsync turn (``_sync_files``) fsyncs every sealed segment still listed
in ``_unsynced`` (log, then indexes), the active one, writes the snapshot and
fsyncs the directory (the new segment's name), and only then moves
``flushed_offset`` (the checkpointed recovery point) past them; so an
acks=ALL append into a rolled-to segment is answered only once the records
before it, the segment's name and its own bytes are durable. After the lock
is released a roll queues such a turn on the flusher thread
(``GroupCommit.request_sync``), so acks=1 records of a sealed segment become
durable within a turn too. A crash before that turn leaves the sealed
segment past the recovery point: recovery re-checks it like the active one
(a torn tail there, or frames that end before the next segment's base, drops
every later segment: ``_loader``) and ``open`` lists it as unsynced again (a
kill -9 keeps pages no fsync covered). A compacted topic's rolls still fsync
under the lock: its cleaner leaves segments that end before the next base on
purpose, so recovery could not tell that from a lost tail.

Open and recovery: ``open`` loads the segments with ``_loader`` (what a
clean shutdown, a crash, a torn tail and corruption before the recovery point
each mean is stated there), then rebuilds the producer state from the last
snapshot. Retention rules: ``_retention``; the segment list: ``_segments``.

Reads: a damaged frame is reported (CorruptRecordError) only when it is the
first one asked for; a read that reaches it after good frames returns those.

Gaps: offsets increase but need not be contiguous, within a batch (format-2
frames) or between batches and segments. ``append_frames`` writes pre-built
frames keeping their offsets (the test seam today; a replication follower
and compaction later). An offset lookup returns the first batch whose last
offset is >= the target (Kafka's translateOffset), so a read of an offset
that a gap removed returns the records after it; the log end offset after
a frame is its ``next_offset``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Final

from logstore._types import Offset, OffsetAndTimestamp, Position
from logstore.config import StoreConfig, TopicConfig
from logstore.errors import (
    CorruptRecordError,
    InvalidBatchError,
    LogStoreError,
    OffsetOutOfRangeError,
    StorageError,
    StoreClosedError,
    UnknownTopicError,
)
from logstore.wire import (
    HEADER_SIZE,
    NO_TIMESTAMP_MS,
    ColumnBatch,
    FrameHeader,
    Record,
    batch_view,
    build_head,
    check_crc,
    decode_columns,
    decode_objects,
    decode_records,
    every_record_timestamped,
    patch_base_offset,
    stored_frames,
)

from ._checkpoint import write_atomic
from ._fs import FileSystem
from ._group_commit import GroupCommit
from ._index import IndexCache
from ._loader import load_segments
from ._names import FileKind, segment_file
from ._producers import ProducerState
from ._read_cursor import CutFrame, FrameCache, ReadCursor
from ._retention import expired_prefix
from ._segment import HandleCache, Segment, SegmentReplacedError
from ._segments import SegmentList

log = logging.getLogger("logstore.storage")

#: Producer-state snapshots kept per partition (older ones are deleted): the
#: newest, and one before it in case the newest is unreadable (Kafka keeps 2).
SNAPSHOTS_KEPT: Final = 2
#: What an embedded ``read`` returns at most per call when not told (1 MiB,
#: the broker's Fetch default): at least one whole batch still comes back.
DEFAULT_READ_MAX_BYTES: Final = 1 << 20
_NS_PER_MS: Final = 1_000_000


def now_ms() -> int:
    return time.time_ns() // _NS_PER_MS


@dataclass(frozen=True, slots=True)
class SyncWork:
    """What one partition had to make durable when a ``syncfs`` was about to
    start (``PartitionLog.sync_work``)."""

    target: int
    sealed: tuple[Segment, ...]
    dir_dirty: bool
    dir_changes: int
    truncations: int  # ``_snapshot_gen``: bumped by every truncation


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

    ``memo``: when ``data`` is exactly one frame kept in the store's cut-frame
    cache (``_read_cursor``), a dict that lives as long as those bytes stay
    cached, for facts a reader derives from them (the share runtime keeps
    "no deliver-at header" and "records of one size" there instead of
    scanning the same 944 KB batch on every fetch); else None.
    """

    data: bytes
    high_watermark: int
    log_start_offset: int
    next_offset: int
    memo: dict[object, object] | None = None


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
        self.key = (topic, partition)
        self.config = config
        self.store_config = store_config
        self.handles = handles
        self.index_cache = index_cache
        # Replaced as a whole, never mutated (see _segments).
        self._view = SegmentList()
        self.log_start_offset = 0
        self._high_watermark = 0
        self.producers = ProducerState(
            store_config.max_producer_ids, store_config.producer_id_expiration_ms
        )
        self.last_append_ms = now_ms()
        self._lock = threading.Lock()
        self.commits = GroupCommit(self._sync_files)
        self._dir_dirty = False
        #: Sealed segments whose log and indexes are not durable yet (a roll
        #: seals without fsync; see "Rolls" in the module docstring). Under
        #: the lock; ``_set_segments`` drops the ones that leave the list.
        self._unsynced: list[Segment] = []
        #: The producer-state snapshot a roll took (its offset, its bytes and
        #: the truncation generation it belongs to), written by the next
        #: fsync turn. Under the lock.
        self._pending_snapshot: tuple[int, bytes, int] | None = None
        #: Serialises snapshot files (writes and their cleanup); taken after
        #: the partition lock, or alone by the fsync turn, never the other way.
        self._snapshot_lock = threading.Lock()
        #: Bumped by a truncation (under both locks): a snapshot taken before
        #: it describes records that are gone and is not written.
        self._snapshot_gen = 0
        #: Rolls so far (each sets ``_dir_dirty``): a ``syncfs`` clears the flag
        #: only if no roll came after it started (``mark_synced``).
        self._dir_changes = 0
        #: When the producer state was last snapshotted (or, at open, loaded):
        #: the recovery checkpoint writes the next one only
        #: ``producer_snapshot_interval_ms`` after it (rolls and close always do).
        self.snapshot_ms = now_ms()
        self._failed: StorageError | None = None
        self._deleted = False
        self._closed = False
        #: Set by the store: called with the partition when it has sync waiters
        #: and no fsync runs; True if the flusher thread took them.
        self.on_sync_wanted: Callable[[PartitionLog], bool] = lambda _p: False
        self.commits.on_wanted = lambda: self.on_sync_wanted(self)
        self.on_log_start_changed: Callable[[PartitionLog], None] = lambda _p: None
        #: Set by the store: make ``start`` the durable log start offset of this
        #: partition (raises StorageError if it cannot).
        self.persist_log_start: Callable[[PartitionLog, int], None] = lambda _p, _s: None
        self.on_recovery_point_lowered: Callable[[PartitionLog], None] = lambda _p: None
        #: The cleaner's cleaned point (``_cleaner``): offsets below it were
        #: deduplicated by a pass. Persisted by the store in the cleaner
        #: checkpoint; 0 (all dirty) when it has no entry.
        self.cleaned_offset = 0
        #: Set by the store: persist the cleaned points now (a truncation lowered one).
        self.on_cleaned_point_lowered: Callable[[PartitionLog], None] = lambda _p: None
        #: The read cursor and the read generation that validates it (and the
        #: cut frames): moved by every change that removes or rewrites stored
        #: bytes, under the lock (``_read_cursor``).
        self._cursor: ReadCursor | None = None
        self._read_generation = 0
        #: Set by the store: the store-wide cache of cut frames (None: none kept).
        self.frame_cache: FrameCache | None = None

    # --- offsets ------------------------------------------------------------------
    @property
    def failed(self) -> StorageError | None:
        """The I/O error that made the partition read-only, or None.

        A failed partition's page cache no longer matches what was fsynced
        (after a failed fsync the kernel may have dropped dirty pages), so its
        store never writes the clean-shutdown marker: the next open re-checks
        every frame from the recovery point instead of trusting it.
        """
        return self._failed

    @property
    def active(self) -> Segment:
        return self._view.active

    @property
    def log_end_offset(self) -> int:
        """The offset the next append gets (written, maybe not committed)."""
        return self._view.active.next_offset

    @property
    def high_watermark(self) -> int:
        """The offset below which records are committed and served to readers."""
        return self._high_watermark

    def _advance_high_watermark(self, offset: int) -> None:
        """Records below ``offset`` are committed (lock held). A single broker
        commits on append; replication will call this on follower acks."""
        assert offset <= self.log_end_offset
        self._high_watermark = max(self._high_watermark, offset)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def segments(self) -> list[Segment]:
        """The segments, oldest first (a snapshot: a new list each call)."""
        return self._view.as_list

    def _set_segments(self, segments: list[Segment]) -> None:
        for seg in segments:
            seg.index_interval_bytes = self.config.index_interval_bytes
        new = {id(s) for s in segments}
        if any(id(s) not in new for s in self._view):
            # A segment left (retention, truncation) or was replaced (a
            # cleaner swap): read cursors into it are stale (``_read_cursor``).
            self._invalidate_reads()
        self._view = SegmentList(segments)
        if self._unsynced:
            # Deleted (retention, truncation) or replaced (a cleaner swap,
            # whose file is fsynced): nothing of them left to make durable.
            kept = {id(s) for s in segments}
            self._unsynced = [s for s in self._unsynced if id(s) in kept]

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
        """Open (creating if needed) a partition directory and recover it
        (``_loader``)."""
        self = cls(fs, directory, topic, partition, config, store_config, handles, index_cache)
        loaded = load_segments(
            fs, directory, self.name, handles, index_cache, config.index_interval_bytes,
            now_ms(), clean=clean, recovery_point=recovery_point,
            log_start_offset=log_start_offset, strict_segment_ends=not config.compact,
        )  # fmt: skip
        self._set_segments(loaded.segments)
        self._dir_dirty = loaded.dir_dirty
        self.log_start_offset = max(log_start_offset, self.segments[0].base_offset)
        self.log_start_offset = min(self.log_start_offset, self.log_end_offset)
        flushed = self.log_end_offset if loaded.clean else min(recovery_point, self.log_end_offset)
        self.commits.reset_flushed(flushed)
        # After a crash, sealed segments past the recovery point may hold
        # frames that were only ever in the page cache (a kill -9 after a
        # roll, which does not fsync): the first fsync turn makes them
        # durable before the recovery point passes them.
        self._unsynced = [s for s in self.segments[:-1] if s.size and s.next_offset > flushed]
        self._advance_high_watermark(self.log_end_offset)
        self._load_producers(loaded.snapshots)
        return self

    def _load_producers(self, snapshots: list[int]) -> None:
        end = self.log_end_offset
        start = self.log_start_offset
        usable = [s for s in snapshots if s <= end]
        for s in snapshots:
            if s > end:
                self.fs.unlink(self._snapshot_path(s))
        from_offset: int = self.segments[0].base_offset
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
            self._replay_producers(Offset(from_offset), end)
        except CorruptRecordError as exc:
            log.warning("%s: producer state rebuilt only partly: %s", self.name, exc)

    def _replay_producers(self, from_offset: Offset, end: int) -> None:
        i = max(self._view.floor(from_offset), 0)
        for seg in self.segments[i:]:
            if seg.next_offset <= from_offset or seg.size == 0:
                continue
            pos = Position(0)
            if seg.base_offset < from_offset:
                found = seg.locate(from_offset)
                if found is None:  # a gap to the segment's end
                    continue
                pos = found[0]
            for _p, h in seg.frames(pos, seg.size):
                if h.producer_id and h.base_offset >= from_offset and h.producer_epoch >= 0:
                    # A batch's sequences span its offsets (Kafka: base
                    # sequence + last offset delta), present records or not.
                    self.producers.update(
                        h.producer_id, h.producer_epoch, h.base_sequence,
                        h.last_offset_delta + 1, h.base_offset, h.base_timestamp_ms,
                    )  # fmt: skip
                if h.next_offset >= end:
                    break

    def _snapshot_path(self, offset: int) -> str:
        return os.path.join(self.directory, segment_file(offset, FileKind.SNAPSHOT))

    def snapshot_producers_if_changed(self) -> None:
        """Snapshot the producer state if it changed since the last one."""
        if self.producers.changed and not self._closed:
            with self._lock:
                if not self._closed:
                    self.write_producer_snapshot()

    def expire_producers(self, now: int) -> None:
        """Forget producer ids idle for longer than the expiration."""
        with self._lock:
            self.producers.expire(now)

    def write_producer_snapshot(self) -> None:
        """Snapshot the producer state at the log end offset (under the lock);
        it supersedes a roll's snapshot not written yet."""
        if not self.producers.changed:
            return
        with self._snapshot_lock:
            self._pending_snapshot = None
            self._write_snapshot(self.log_end_offset, self.producers.to_json())
        self.producers.changed = False

    def _write_snapshot(self, end: int, data: bytes) -> None:
        """Write a snapshot file (atomic, durable) and drop all but the newest
        older ones (``_snapshot_lock`` held)."""
        write_atomic(self.fs, self._snapshot_path(end), data)
        self.snapshot_ms = now_ms()
        old = sorted(
            o
            for n in self.fs.listdir(self.directory)
            if n.endswith(".snapshot") and (o := int(n.split(".")[0])) != end
        )
        for o in old[: max(len(old) - (SNAPSHOTS_KEPT - 1), 0)]:
            self.fs.unlink(self._snapshot_path(o))

    def _write_pending_snapshot(self, pending: tuple[int, bytes, int]) -> None:
        """The fsync turn writes a roll's snapshot, unless a truncation made it
        stale since it was taken (an older snapshot written after a newer one
        is harmless: the newest one at or below the log end is loaded)."""
        end, data, gen = pending
        with self._snapshot_lock:
            if gen == self._snapshot_gen:
                self._write_snapshot(end, data)

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
        codec: int = 0,
        plain: bytes | memoryview | None = None,
    ) -> AppendResult:
        """Append one batch (the serialized records field) and return where it went.

        With a ``codec``, ``records`` is the batch's compressed_records field
        (stored as it is; ``max_batch_bytes`` counts it) and ``plain`` its
        decompressed records field, which the timestamp check reads.
        """
        result = self._append(
            records, record_count, base_timestamp_ms, max_timestamp_ms, producer_id,
            producer_epoch, base_sequence, codec, plain, wait_for_lock=True,
        )  # fmt: skip
        assert result is not None
        return result

    def try_append(
        self,
        records: bytes | memoryview,
        record_count: int,
        base_timestamp_ms: int | None = None,
        max_timestamp_ms: int | None = None,
        producer_id: int = 0,
        producer_epoch: int = 0,
        base_sequence: int = 0,
    ) -> AppendResult | None:
        """:meth:`append` of an uncompressed batch if the partition's lock is
        free now, else None at once (nothing written): for a caller that must
        not block (the broker's event loop), which then appends on a thread.
        The append itself never waits for the disk (page-cache write; a roll
        fsyncs nothing)."""
        return self._append(
            records, record_count, base_timestamp_ms, max_timestamp_ms, producer_id,
            producer_epoch, base_sequence, 0, None, wait_for_lock=False,
        )  # fmt: skip

    def _append(
        self,
        records: bytes | memoryview,
        record_count: int,
        base_timestamp_ms: int | None,
        max_timestamp_ms: int | None,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        codec: int,
        plain: bytes | memoryview | None,
        *,
        wait_for_lock: bool,
    ) -> AppendResult | None:
        assert (codec == 0) == (plain is None)
        self.config.check_batch_bytes(HEADER_SIZE + len(records), self.name)
        now = now_ms()
        base_ts = now if base_timestamp_ms is None else base_timestamp_ms
        max_ts = self._effective_max_ts(
            records if plain is None else plain, record_count, base_ts, max_timestamp_ms
        )
        head = build_head(
            len(records), record_count, base_ts, max_ts, producer_id, producer_epoch,
            base_sequence, records=records, attributes=codec,
        )  # fmt: skip
        if not self._lock.acquire(blocking=wait_for_lock):
            return None
        try:
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
            next_after = seg.next_offset + record_count
            rolled = False
            if not seg.fits(frame_size, next_after, self.config.segment_bytes) or (
                seg.size and now - seg.created_ms >= self.config.segment_ms
            ):
                try:
                    seg = self._roll(now)
                except StorageError as exc:
                    # A half-done roll (sealed indexes, a new file) is not undone
                    # here: stop writing; a restart recovers the partition.
                    self._failed = exc
                    raise
                rolled = True
            base = seg.next_offset
            patch_base_offset(head, base)
            try:
                seg.append(head, records, base, base + record_count, max_ts)
            except StorageError as exc:
                self._check_after_failed_write(seg, exc)
                raise
            if producer_id:
                self.producers.update(
                    producer_id, producer_epoch, base_sequence, record_count, base, base_ts
                )
            self._advance_high_watermark(base + record_count)
            self.last_append_ms = now
            result = AppendResult(base, base + record_count - 1, base_ts, self.log_start_offset)
        finally:
            self._lock.release()
        if rolled:
            self._after_roll()
        return result

    def append_frames(self, frames: bytes | bytearray | memoryview) -> int:
        """Append a run of whole pre-built frames keeping their offsets; return
        the log end offset after them.

        Each frame's base offset must be >= the log end offset (and >= the
        previous frame's next offset), its CRC32C must match and it must
        respect ``max_batch_bytes``: else InvalidBatchError and nothing is
        written. Gaps are kept (format-2 frames may have gaps inside). The
        producer state follows the frames' producer fields without duplicate
        checks. What tests use to build logs with gaps, and what a
        replication follower will need.
        """
        data = bytes(frames)
        parsed: list[tuple[int, FrameHeader]] = []
        try:
            for pos, h in stored_frames(data).frames:
                check_crc(memoryview(data)[pos : pos + h.frame_size], h)
                parsed.append((pos, h))
        except CorruptRecordError as exc:
            raise InvalidBatchError(f"{self.name}: not a run of valid frames: {exc}") from exc
        if not parsed:
            raise InvalidBatchError(f"{self.name}: append_frames needs at least one frame")
        for _pos, h in parsed:
            self.config.check_batch_bytes(h.batch_length, self.name)
        now = now_ms()
        mv = memoryview(data)
        rolled = False
        with self._lock:
            self._check_writable()
            expect = self.log_end_offset
            for _pos, h in parsed:
                if h.base_offset < expect:
                    raise InvalidBatchError(
                        f"{self.name}: frame at offset {h.base_offset} is below the log end "
                        f"offset or the previous frame's end ({expect})"
                    )
                expect = h.next_offset
            for pos, h in parsed:
                seg = self.active
                if not seg.fits(h.frame_size, h.next_offset, self.config.segment_bytes):
                    if seg.size == 0:
                        raise InvalidBatchError(
                            f"{self.name}: frame at offset {h.base_offset} spans more than 2**32 "
                            f"offsets past its segment's base {seg.base_offset}"
                        )
                    try:
                        seg = self._roll(now)
                    except StorageError as exc:
                        self._failed = exc
                        raise
                    rolled = True
                try:
                    seg.append(
                        mv[pos : pos + h.frame_size], b"", h.base_offset, h.next_offset,
                        h.max_timestamp_ms,
                    )  # fmt: skip
                except StorageError as exc:
                    self._check_after_failed_write(seg, exc)
                    raise
                if h.producer_id:
                    self.producers.update(
                        h.producer_id, h.producer_epoch, h.base_sequence,
                        h.last_offset_delta + 1, h.base_offset, h.base_timestamp_ms,
                    )  # fmt: skip
                self._advance_high_watermark(h.next_offset)
            self.last_append_ms = now
            end = self.log_end_offset
        if rolled:
            self._after_roll()
        return end

    @staticmethod
    def _effective_max_ts(
        records: bytes | memoryview, record_count: int, base_ts: int, max_ts: int | None
    ) -> int:
        """The batch's max timestamp: the max over its records' effective
        timestamps (a record without one has the base timestamp).

        ``max_ts`` is the largest timestamp a record carries (None or
        NO_TIMESTAMP_MS: none does). The base counts only if some record has
        no timestamp of its own: that matters only when the records' max is
        below the base (records with old CreateTimes appended without a batch
        timestamp), and only then are the records parsed (once, in C).
        """
        if max_ts is None or max_ts == NO_TIMESTAMP_MS:
            return base_ts
        if max_ts >= base_ts or not every_record_timestamped(records, record_count):
            return max(max_ts, base_ts)
        return max_ts

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

    def _deleted_error(self) -> UnknownTopicError:
        return UnknownTopicError(f"unknown topic {self.topic!r} (deleted)")

    def mark_deleted(self) -> None:
        """The topic is being deleted: from now on appends, fsyncs and reads
        that fail raise UnknownTopicError (not the I/O error of a directory
        that is gone). Waits for an append in progress."""
        with self._lock:
            self._deleted = True

    def unmark_deleted(self) -> None:
        """The deletion was rolled back."""
        with self._lock:
            self._deleted = False

    def _check_writable(self) -> None:
        if self._deleted:
            raise self._deleted_error()
        if self._closed:
            raise StoreClosedError(f"{self.name} is closed")
        if self._failed is not None:
            raise StorageError(
                f"{self.name} is read-only after an I/O error ({self._failed}); "
                "restart the store to recover it"
            )

    def _roll(self, now: int) -> Segment:
        """Seal the active segment and start a new one (lock held); nothing
        here waits for the disk (see "Rolls" in the module docstring)."""
        old = self.active
        if old.size == 0:
            return old
        # A compacted topic's rolls still fsync here: its cleaner leaves
        # segments that end before the next one's base on purpose, so recovery
        # cannot tell a lost tail of an unsynced one from that (``_loader``).
        compact = self.config.compact
        old.seal(sync=compact)
        if not compact:
            self._unsynced.append(old)
        new = Segment.create(
            self.fs, self.directory, old.next_offset, self.handles, self.index_cache, now
        )
        self._dir_dirty = True
        self._dir_changes += 1
        self._set_segments([*self.segments, new])
        if compact:
            self.write_producer_snapshot()
        elif self.producers.changed:
            self._pending_snapshot = (new.base_offset, self.producers.to_json(), self._snapshot_gen)
            self.producers.changed = False
        log.info("%s: rolled segment at offset %d", self.name, new.base_offset)
        return new

    def _after_roll(self) -> None:
        """Lock released after a roll: queue this partition's fsync turn on
        the flusher thread if there is one (the broker), so the sealed
        segment, its indexes, the snapshot and the new name become durable
        soon even when no acks=ALL producer asks. Embedded (no thread), the
        next ``flush``/``sync_to``/``close`` does it."""
        self.commits.request_sync()

    def roll(self) -> None:
        with self._lock:
            self._check_writable()
            self._roll(now_ms())
        self._after_roll()

    # --- durability ----------------------------------------------------------------------
    @property
    def flushed_offset(self) -> int:
        """Every offset below it is fsynced (the store checkpoints it)."""
        return self.commits.flushed_offset

    def durable(self, offset: int) -> bool:
        """Whether every offset below ``offset`` is durable and a roll left
        nothing undurable (no sealed segment, snapshot or name): then
        ``sync_to(offset)`` and :meth:`sync_roll_leftovers` have nothing to
        do. Read without the lock (what a flush asks after its ``syncfs``)."""
        return self.flushed_offset >= offset and not self._roll_leftovers

    @property
    def _roll_leftovers(self) -> bool:
        """A roll left something undurable that no offset waits for: a sealed
        segment, a producer snapshot or a new name."""
        return bool(self._unsynced or self._dir_dirty or self._pending_snapshot is not None)

    def sync_to(self, offset: int) -> Future[None]:
        """A future done when every offset below ``offset`` is fsynced (group
        commit: see ``_group_commit``)."""
        return self.commits.sync_to(offset)

    def sync_once(self) -> int:
        """One fsync of everything appended so far; completes the waiters it
        covers and returns how many it completed."""
        return self.commits.sync_once()

    def _sync_files(self) -> tuple[int, BaseException | None]:
        """One fsync turn: the sealed segments a roll left unsynced (log and
        indexes), the active segment, a roll's producer snapshot and, if it
        changed (a roll or a recovery made a file), the directory; return the
        offset that is durable after it, or the error. The partition's lock is
        held only to take what to sync, never across an fsync."""
        with self._lock:
            target = self.log_end_offset
            seg = self.active
            sealed = list(self._unsynced)
            snapshot, self._pending_snapshot = self._pending_snapshot, None
            dir_dirty = self._dir_dirty
            self._dir_dirty = False
            failed: LogStoreError | None = self._deleted_error() if self._deleted else self._failed
        if failed is not None:
            return target, failed
        try:
            for old in sealed:
                self._sync_segment(old, old.sync_sealed)
            if self.flushed_offset < target:
                self._sync_segment(seg, seg.sync)
            if snapshot is not None:
                self._write_pending_snapshot(snapshot)
            if dir_dirty:
                # The names of new segments (and of a snapshot): an acks=ALL
                # record in a rolled-to segment is durable only with it.
                self.fs.fsync_dir(self.directory)
        except StorageError as exc:
            if self._deleted:  # the directory was renamed away under us
                return target, self._deleted_error()
            # After a failed fsync the page cache state is unknown
            # (PostgreSQL's "fsyncgate"): stop accepting writes.
            self._failed = exc
            return target, exc
        if sealed:
            with self._lock:
                self._forget_synced(sealed)
        return target, None

    def _forget_synced(self, sealed: list[Segment] | tuple[Segment, ...]) -> None:
        """``sealed`` are durable now: off the unsynced list (lock held)."""
        done = {id(s) for s in sealed}
        self._unsynced = [s for s in self._unsynced if id(s) not in done]

    def sync_work(self) -> SyncWork | None:
        """What a ``syncfs`` started after this call makes durable here (the
        log end, the sealed segments and the directory entries a roll left),
        or None if there is nothing to make durable or a fsync turn must do it
        (a roll's producer snapshot still to write, a failed or deleted
        partition). Hand it to :meth:`mark_synced` after the ``syncfs``."""
        with self._lock:
            if self._failed is not None or self._deleted or self._closed:
                return None
            if self._pending_snapshot is not None:
                return None
            target = self.log_end_offset
            if self.flushed_offset >= target and not self._unsynced and not self._dir_dirty:
                return None
            return SyncWork(
                target, tuple(self._unsynced), self._dir_dirty, self._dir_changes,
                self._snapshot_gen,
            )  # fmt: skip

    def mark_synced(self, work: SyncWork) -> int:
        """A ``syncfs`` that started after :meth:`sync_work` returned ``work``
        succeeded: what it listed is durable. Completes the waiters it covers
        and returns how many."""
        with self._lock:
            if self._snapshot_gen != work.truncations or self._failed is not None:
                # Truncated since (the offsets noted may be other records now),
                # or failed: the partition's own fsync turn decides.
                return 0
            self._forget_synced(work.sealed)
            if work.dir_dirty and self._dir_changes == work.dir_changes:
                self._dir_dirty = False  # no roll since: no name left undurable
        return self.commits.mark_durable(work.target)

    def _sync_segment(self, seg: Segment, sync: Callable[[], None]) -> None:
        """Run ``sync`` of ``seg``; a segment that left the list meanwhile
        (retention, a truncation, a cleaner swap) has nothing left to make
        durable, so its failure (a file gone, a replaced descriptor) is not
        an I/O error of the partition."""
        try:
            sync()
        except (StorageError, SegmentReplacedError):
            if any(s is seg for s in self._view):
                raise

    @property
    def has_waiters(self) -> bool:
        return self.commits.has_waiters

    def flush(self) -> None:
        """Everything appended before this call is durable when it returns,
        and so is what a roll left to sync (a roll by time adds no offset, so
        ``sync_to`` alone may find nothing to wait for)."""
        self.sync_to(self.log_end_offset).result()
        self.sync_roll_leftovers()

    def sync_roll_leftovers(self) -> None:
        """One fsync turn if a roll left something undurable (a sealed
        segment, a snapshot, a new name) that no offset waits for."""
        if self._roll_leftovers:
            _target, error = self._sync_files()
            if error is not None and not self._deleted:
                raise error

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

    def _check_read_offset(self, offset: int) -> tuple[int, int]:
        """``(log start, high watermark)`` if a reader may ask for ``offset``."""
        start, hw = self.log_start_offset, self._high_watermark
        if not start <= offset <= hw:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.name}: valid offsets are "
                f"{start}..{hw} (log start offset..high watermark)",
                start,
                hw,
            )
        return start, hw

    def _invalidate_reads(self) -> None:
        """Stored bytes are about to change or went: every read cursor and
        cut frame of this partition is stale (lock held; ``_read_cursor``)."""
        self._read_generation += 1
        self._cursor = None
        if self.frame_cache is not None:
            self.frame_cache.drop(self)

    def read_frames(
        self, offset: int, max_bytes: int, stop_offset: int | None = None
    ) -> FetchResult:
        """Stored frames from the one containing ``offset`` (see FetchResult),
        none at or past the high watermark, nor (after the first) any starting
        at or after ``stop_offset``: a reader that wants N offsets (a share
        fetch's window room) does not check and copy the rest of ``max_bytes``
        (4 MiB of 1-record batches is ~23,000 frames, ~300 ms).

        A read that continues where the last one stopped starts at the read
        cursor's position instead of an index lookup, and one inside the
        frame the last read stopped in is answered from that frame's cached
        bytes (``_read_cursor``: what each is and what invalidates them)."""
        start, end = self._check_read_offset(offset)
        if offset == end:
            return FetchResult(b"", end, start, end)
        limit = end if stop_offset is None else max(offset + 1, min(end, stop_offset))
        gen = self._read_generation  # before anything is read (``_read_cursor``)
        cache = self.frame_cache
        if cache is not None:
            cut = cache.get(self)
            if cut is not None and cut.holds(gen, offset, end):
                cache.count_hit()
                return self._from_cut_frame(cut, gen, start, end, max_bytes, limit)
        cur = self._cursor
        at = None if cur is None else cur.position_of(gen, offset)
        view = self._view
        try:
            if cur is not None and at is not None:
                found: tuple[Segment, Position] | None = (cur.segment, Position(at))
            else:
                try:
                    found = self._locate(view, view.floor(Offset(offset)), Offset(offset))
                except SegmentReplacedError:
                    # A cleaner swap replaced the segment and its descriptor is
                    # closed (a list taken before the previous clean): the current
                    # list has the cleaned one, and a swap needs a whole clean run.
                    view = self._view
                    found = self._locate(view, view.floor(Offset(offset)), Offset(offset))
            if found is None:
                if offset < self.log_start_offset:  # deleted by retention meanwhile
                    self._check_read_offset(offset)
                raise CorruptRecordError(
                    f"{self.name}: offset {offset} is missing from the log (data lost before "
                    f"the recovery point)"
                )
            seg, pos = found
            try:
                data, nxt, last_pos, last_base = seg.read_frames_from(pos, max_bytes, Offset(limit))
            except SegmentReplacedError:
                # see above; bounded by clean runs (a swap moves the
                # generation before it retires the segment: the cursor is
                # not taken again)
                return self.read_frames(offset, max_bytes, stop_offset)
        except StorageError as exc:
            if self._deleted:
                raise self._deleted_error() from exc
            if offset < self.log_start_offset:  # deleted by retention under us
                raise OffsetOutOfRangeError(
                    f"offset {offset} was deleted from {self.name} while being read",
                    self.log_start_offset,
                    self.log_end_offset,
                ) from exc
            raise
        if offset < self.log_start_offset:
            # Retention or DeleteRecords moved the start past ``offset`` while
            # it was read (the start moves before the segments go). What was
            # read may then be the next segment's frames: a deleted segment
            # can show no frame at ``offset``, and ``_locate`` goes on to the
            # next segment as for a gap. Such records would skip the offsets
            # in between, so the read gets the clear error instead.
            raise OffsetOutOfRangeError(
                f"offset {offset} was deleted from {self.name} while being read",
                self.log_start_offset,
                self.log_end_offset,
            )
        memo = self._remember(gen, seg, pos, data, nxt, last_pos, last_base, limit)
        return FetchResult(data, end, start, nxt, memo)

    def read_cached(self, offset: int, stop_offset: int | None = None) -> FetchResult | None:
        """:meth:`read_frames` of ``offset`` when the store's cut-frame cache
        answers it whole (no file read: safe on an event loop), else None.
        The frame is returned alone, so it is what ``read_frames`` would
        return only when ``stop_offset`` ends inside it; otherwise None."""
        cache = self.frame_cache
        if cache is None:
            return None
        start, end = self.log_start_offset, self._high_watermark
        if not start <= offset < end:
            return None
        gen = self._read_generation
        cut = cache.get(self)
        if cut is None or not cut.holds(gen, offset, end):
            return None
        limit = end if stop_offset is None else max(offset + 1, min(end, stop_offset))
        if limit > cut.next_offset:
            return None  # the read would go on past the frame
        cache.count_hit()
        self._cursor = ReadCursor(
            gen, cut.segment, cut.position, cut.base_offset,
            cut.position + len(cut.data), cut.next_offset,
        )  # fmt: skip
        return FetchResult(cut.data, end, start, cut.next_offset, cut.memo)

    def _remember(
        self, gen: int, seg: Segment, pos: int, data: bytes, nxt: int, last_pos: int,
        last_base: int, limit: int,
    ) -> dict[object, object] | None:  # fmt: skip
        """Keep the cursor after a read; and the last frame's bytes when the
        read stopped inside it (``limit`` before its end: the reader comes
        back for the rest). Returns the cached frame's memo when ``data`` is
        that one frame (``FetchResult.memo``)."""
        end_pos = pos + len(data)
        self._cursor = ReadCursor(gen, seg, last_pos, last_base, end_pos, nxt)
        if self.frame_cache is not None and limit < nxt:
            frame = data if last_pos == pos else data[last_pos - pos :]
            cut = CutFrame(gen, seg, last_pos, last_base, nxt, frame, {})
            self.frame_cache.put(self, cut)
            return cut.memo if frame is data else None
        return None

    def _from_cut_frame(
        self, cut: CutFrame, gen: int, start: int, end: int, max_bytes: int, limit: int
    ) -> FetchResult:
        """A read answered from a cached cut frame, continued by the frames
        after it when ``limit`` and ``max_bytes`` leave room."""
        data, nxt = cut.data, cut.next_offset
        seg, end_pos = cut.segment, cut.position + len(cut.data)
        last_pos, last_base = cut.position, cut.base_offset
        if nxt < limit and len(data) < max_bytes and end_pos < seg.size:
            try:
                more, nxt2, lp, lb = seg.read_frames_from(
                    Position(end_pos), max_bytes - len(data), Offset(limit)
                )
            except StorageError:
                # A bad frame after good ones: these are returned; the next
                # read, starting at it, reports it (as ``read_frames_at``).
                # A deleted or swapped segment: the next read finds out.
                more = b""
            if more:
                self._remember(gen, seg, end_pos, more, nxt2, lp, lb, limit)
                return FetchResult(data + more, end, start, nxt2)
        self._cursor = ReadCursor(gen, seg, last_pos, last_base, end_pos, nxt)
        return FetchResult(data, end, start, nxt, cut.memo)

    @staticmethod
    def _locate(view: SegmentList, i: int, offset: Offset) -> tuple[Segment, Position] | None:
        """The segment and position of the first frame whose last offset is
        >= ``offset``, starting at segment ``i`` (the floor of ``offset``);
        None if no segment has one."""
        if i < 0:
            return None
        seg = view[i]
        if offset < seg.next_offset:
            found = seg.locate(offset)
            if found is not None:
                return seg, found[0]
        elif seg.damaged:
            return None
        # A gap to the end of segment i: the next non-empty segment's first frame.
        for later in view.as_list[i + 1 :]:
            if later.size:
                return later, Position(0)
        return None

    def read(self, offset: int, max_bytes: int = DEFAULT_READ_MAX_BYTES) -> list[Record]:
        """Records from exactly ``offset``: at least one if ``offset`` < end.

        Decoded through the columns (:meth:`read_columns`) when there are more
        than a few records: building Records from per-column lists costs ~0.5
        us a record, where reading each field of a upb message from Python
        costs ~0.8-2 us (see ``logstore.wire.decode_objects``).
        """
        while True:
            res = self.read_frames(offset, max_bytes)
            recs = decode_objects(stored_frames(res.data), offset)
            if recs or res.next_offset >= res.high_watermark:
                return recs
            # The frames read hold no record at or after ``offset`` (a batch
            # whose last records were removed keeps its end offset): go on
            # from their end, so a read below the end returns a record.
            offset = res.next_offset

    def read_columns(self, offset: int, max_bytes: int = DEFAULT_READ_MAX_BYTES) -> ColumnBatch:
        """Records from exactly ``offset`` as columns (the client's ColumnBatch):
        at least one record if ``offset`` < end, an empty batch at the end."""
        while True:
            res = self.read_frames(offset, max_bytes)
            cols = decode_columns(self.topic, self.partition, stored_frames(res.data), offset)
            if len(cols) or res.next_offset >= res.high_watermark:
                return cols
            offset = res.next_offset  # no record in these frames (see read)

    def offset_for_time(self, timestamp_ms: int) -> OffsetAndTimestamp | None:
        """The first record with timestamp >= the given one (its offset and its
        own timestamp), or None if there is none below the high watermark.

        Raises OffsetOutOfRangeError if records were deleted (DeleteRecords,
        retention) under the search; the caller may ask again.
        """
        start = self.log_start_offset  # one snapshot: it may move under us
        hw = self._high_watermark
        try:
            try:
                found = self._offset_for_time(timestamp_ms, start)
            except SegmentReplacedError:  # a cleaner swap under the search (see read_frames)
                found = self._offset_for_time(timestamp_ms, start)
            return None if found is None or found.offset >= hw else found
        except (StorageError, CorruptRecordError) as exc:
            if self._deleted:
                raise self._deleted_error() from exc
            if self.log_start_offset == start:
                raise
            raise OffsetOutOfRangeError(
                f"{self.name}: records were deleted during the search by time (log start "
                f"offset {start} -> {self.log_start_offset}); retry",
                self.log_start_offset,
                self.log_end_offset,
            ) from exc

    def _offset_for_time(self, timestamp_ms: int, start: int) -> OffsetAndTimestamp | None:
        for seg in list(self.segments):
            if seg.next_offset <= start or seg.size == 0:
                continue
            seg.ensure_indexes()
            if seg.max_timestamp_ms < timestamp_ms:
                continue
            rel = seg.time_index.scan_start(timestamp_ms)
            start_off = Offset(max(seg.base_offset + rel, start))
            if start_off >= seg.next_offset:
                continue
            found = seg.locate(start_off)
            if found is None:  # a gap to the segment's end
                continue
            for p, h in seg.frames(found[0], seg.size):
                if h.max_timestamp_ms < timestamp_ms or h.next_offset <= start:
                    continue
                frame = seg.pread(h.frame_size, p)
                check_crc(frame, h)
                for r in decode_records(
                    batch_view(frame), h.base_offset, h.base_timestamp_ms, start
                ):
                    if r.timestamp_ms >= timestamp_ms:
                        return OffsetAndTimestamp(Offset(r.offset), r.timestamp_ms)
                # The batch claims a max >= the target but no record has it
                # (release 0.1.0 stored inflated maxima): the answer is later.
        return None

    # --- deletion ---------------------------------------------------------------------
    def delete_records(self, before_offset: int) -> int:
        """Advance the log start offset to ``before_offset``; return it.

        Space first, metadata second, so that freeing space works on a full
        disk: the whole segments below ``before_offset`` are deleted and the
        start moves to the first remaining segment's base (what a reopen
        would find without any checkpoint); then the new start is made
        durable (``persist_log_start``) and only then applied. If that write
        fails, the error propagates and the start stays where the data says.
        """
        with self._lock:
            self._check_writable_or_failed()
            self._check_offset(before_offset)
            if before_offset <= self.log_start_offset:
                return self.log_start_offset
            segs = self.segments
            n = max(self._view.floor(Offset(before_offset)), 0)  # whole segments below it
            if n:
                # The start moves before the segments go, so a reader never
                # finds an offset above the start in no segment.
                self.log_start_offset = max(self.log_start_offset, segs[n].base_offset)
                self._delete_segments_below(before_offset, "delete records")
                self.fs.fsync_dir(self.directory)  # the space is free once this is durable
        self.persist_log_start(self, before_offset)
        with self._lock:
            self.log_start_offset = max(self.log_start_offset, before_offset)
            return self.log_start_offset

    def _check_writable_or_failed(self) -> None:
        """Deleting records works on a failed partition (it frees space), not on
        a closed or deleted one."""
        if self._deleted:
            raise self._deleted_error()
        if self._closed:
            raise StoreClosedError(f"{self.name} is closed")

    def reconfigure(self, config: TopicConfig) -> None:
        """Apply a changed topic config (limits, retention, index interval)."""
        with self._lock:
            self.config = config
            for seg in self.segments:
                seg.index_interval_bytes = config.index_interval_bytes

    def _delete_segments_below(self, offset: int, why: str) -> None:
        """Delete sealed segments whose records are all below ``offset`` (lock held)."""
        segs = self.segments
        n = max(self._view.floor(Offset(offset)), 0)  # the segment holding offset stays
        if n:
            self._set_segments(segs[n:])
            for seg in segs[:n]:
                log.info("%s: deleting segment at offset %d (%s)", self.name, seg.base_offset, why)
                seg.delete()

    def apply_retention(self, now: int) -> bool:
        """Delete whole sealed segments past retention_ms / retention_bytes
        (the rules: ``_retention``); nothing when the policy is ``compact``
        alone."""
        changed = False
        if not self.config.delete:
            return False
        with self._lock:
            segs = self.segments
            n = expired_prefix(segs, self.config, now)
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

    # --- compaction hooks (the cleaner, ``_cleaner``) ----------------------------------------
    def _sealed_index(self, seg: Segment) -> int:
        """Index of ``seg`` in the current list if it is there and sealed, else -1."""
        view = self._view
        for i, s in enumerate(view):
            if s is seg:
                return i if i < len(view) - 1 else -1
        return -1

    def producer_last_batches(self) -> set[int]:
        """Base offsets of every known idempotent producer's last batch."""
        with self._lock:
            return self.producers.last_batch_offsets()

    def swap_cleaned(self, seg: Segment, cleaned_path: str) -> bool:
        """Replace sealed ``seg``'s file with the fsynced ``cleaned_path`` (same
        base offset, a subset of its records). False, and nothing changed, if
        ``seg`` is no longer a sealed segment of this partition (retention or
        a truncation took it). Lock held for this one swap only."""
        fs = self.fs
        with self._lock:
            self._check_writable()
            i = self._sealed_index(seg)
            if i < 0:
                return False
            self._invalidate_reads()  # before the retire: no cursor leads a read into it
            # Readers that took the old list keep reading the old inode
            # through this pinned descriptor (released by the next clean) and
            # the old indexes' in-memory entries: retired before any file of
            # it is touched, so it never reads the new index (``_index``).
            self.handles.acquire(seg)
            seg.retire()
            try:
                # Old indexes go first (durably): an old index beside the new
                # log could point into the middle of a frame; a missing one is
                # rebuilt on open.
                for path in (seg.index.path, seg.time_index.path):
                    if fs.exists(path):
                        fs.unlink(path)
                fs.fsync_dir(self.directory)
                fs.replace(cleaned_path, seg.log_path)
                fs.fsync_dir(self.directory)
                new = Segment.load(
                    fs, self.directory, seg.base_offset, self.handles, self.index_cache,
                    seg.next_offset, now_ms(),
                )  # fmt: skip
                new.sealed = True
                new.index_interval_bytes = self.config.index_interval_bytes
                new._rebuild_indexes_locked("written by the cleaner", logging.DEBUG)
                new.index.seal()
                new.time_index.seal()
            except StorageError as exc:
                self._failed = exc
                raise
            segs = self._view.as_list
            segs[i] = new
            self._set_segments(segs)
            return True

    def drop_cleaned_segment(self, seg: Segment) -> None:
        """Delete sealed ``seg``, every record of which the cleaner removed (the
        first segment moves the log start offset, as retention does)."""
        moved = False
        with self._lock:
            self._check_writable()
            i = self._sealed_index(seg)
            if i < 0:
                return
            segs = self._view.as_list
            del segs[i]
            if i == 0:
                self.log_start_offset = max(self.log_start_offset, segs[0].base_offset)
                moved = True
            self._set_segments(segs)
            seg.delete()
            self.fs.fsync_dir(self.directory)
        if moved:
            self.on_log_start_changed(self)

    def maybe_roll_by_time(self, now: int) -> None:
        with self._lock:
            if self._closed or self._failed is not None:
                return
            seg = self.active
            if not (seg.size and now - seg.created_ms >= self.config.segment_ms):
                return
            self._roll(now)
        self._after_roll()

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
            i = max(self._view.floor(Offset(offset)), 0)
            seg = segs[i]
            if offset <= seg.base_offset:
                pos = Position(0)
                offset_at = seg.base_offset
            else:
                # Inside a batch: keep the whole batch; in a gap: the end of
                # the last frame kept (where the log's frames really end).
                pos, offset_at = seg.cut_point(Offset(offset))
                # A log start inside the gap: the log ends there, not below it
                # (the next append goes to the log start).
                offset_at = Offset(max(offset_at, self.log_start_offset))
            if offset_at >= self.log_end_offset:
                return
            self._invalidate_reads()  # and again once cut (``_read_cursor``)
            # Lower the checkpointed recovery point (to a frame boundary) before
            # touching a file: a crash after the truncation must not find a
            # recovery point past the end, which would read as lost data.
            self.commits.lower_flushed(offset_at)
            self.on_recovery_point_lowered(self)
            if self.cleaned_offset > offset_at:
                # Records appended after the truncation were never mapped.
                self.cleaned_offset = offset_at
                self.on_cleaned_point_lowered(self)
            for later in segs[i + 1 :]:
                later.delete()
            with self._snapshot_lock:
                # A roll's snapshot not written yet describes records at or
                # past its offset: stale if they are cut.
                self._snapshot_gen += 1
                self._pending_snapshot = None
            self._set_segments(segs[: i + 1])
            # The kept segment is active again: truncate_at fsyncs its log, and
            # an active segment's indexes are rebuilt after a crash.
            self._unsynced = [s for s in self._unsynced if s is not seg]
            if len(segs) > i + 1:
                # The deletions must be durable before we return: segments that
                # came back after a power cut would start exactly at the new
                # recovery point and be taken as valid data.
                self.fs.fsync_dir(self.directory)
            seg.sealed = False
            seg.truncate_at(pos, offset_at)
            self._high_watermark = min(self._high_watermark, offset_at)
            self.producers.truncate(offset_at)
            self._invalidate_reads()

    # --- close -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, snapshot producer state, trim the active indexes; idempotent."""
        if self._closed:
            return
        if self._failed is None:
            self.flush()
        with self._lock:
            self._closed = True
            self._invalidate_reads()
            if self._failed is None:
                self.write_producer_snapshot()
                self.active.close()
            for seg in self.segments:
                self.handles.forget(seg)

    def abandon(self) -> None:
        """Close handles without flushing (a simulated crash, or a deleted topic)."""
        with self._lock:
            self._closed = True
            self._invalidate_reads()
            for seg in self.segments:
                self.handles.forget(seg)
            for seg in self.segments:
                seg.index.unmap()
                seg.time_index.unmap()
