"""One segment: a .log file of frames plus its offset and time indexes.

The segment owns its three files. Its .log descriptor and (while active) its
index maps are opened through the store's :class:`HandleCache`, an LRU with a
cap on open segments, so descriptors and maps stay bounded whatever the
number of partitions; an evicted segment simply reopens on next use.

Invariants (checked by ``assert`` where cheap):
- ``size`` is the byte length of the valid frames; bytes past it are never
  read (a concurrent append may be writing there).
- offsets increase: frame k+1's base offset >= frame k's ``next_offset``
  (base offset + last offset delta + 1). They need not be contiguous: frames
  appended through ``append_frames`` (and, later, written by compaction) may
  leave gaps within and between batches, and the first frame may start
  after the segment's base offset. ``next_offset`` is the offset after the
  last frame (for a sealed segment loaded without a scan: the next
  segment's base offset, which may lie past it when there is a gap).
- relative offsets (``offset - base_offset``) and positions fit in u32; the
  partition rolls before they would not.

Indexing: one rule decides the sparse entries (``entries_for_frame``: an
offset entry every ``index_interval_bytes`` of frames, a time entry with it
when the running maximum timestamp grew); appends, recovery and index
rebuilds all apply it.

Recovery: the segment recovers itself. ``boundary_at(recovery_point)`` walks
the frame heads to the recovery point; ``recover_from(pos, offset)`` checks
and indexes every frame after it as if appended and stops at the first bad
one (the caller truncates the torn tail with ``truncate_at``);
``resume_after_clean_open`` continues after a clean shutdown.

Thread-safety: one writer at a time (the partition's lock); any number of
readers concurrently with it (``pread`` at positions below ``size``).
Recovery runs before the partition is shared.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Final

import numpy as np

from logstore._types import Offset, Position
from logstore.config import TopicConfig
from logstore.errors import CorruptRecordError, StorageError
from logstore.wire import (
    FRAME_OVERHEAD,
    MAX_FRAME_OVERHEAD,
    MIN_RECORD_BYTES,
    FrameHeader,
    check_crc,
    decode_header,
)

from ._fs import FileSystem
from ._index import OFFSET_DTYPE, TIME_DTYPE, IndexCache, OffsetIndex, TimeIndex
from ._names import FileKind, segment_file

log = logging.getLogger("logstore.storage")

#: Bytes read per step when a damaged segment is scanned for frame heads
#: (``offset_bound``): 1 MiB, a few ms of regex and CRC work per step.
_SCAN_STEP_BYTES: Final = 1 << 20
#: What every frame starts with: its tag (0x0a), the batch length as a 5-byte
#: varint (four bytes with the continuation bit, one without) and the tag of
#: the base offset (0x09); decode_header and the CRC check the rest.
_FRAME_HEAD: Final = re.compile(rb"\x0a[\x80-\xff]{4}[\x00-\x7f]\x09", re.DOTALL)

#: Bytes read at once when walking frame headers: several index intervals'
#: worth, so a lookup costs one pread whatever the batch size.
SCAN_CHUNK: Final = 64 * 1024
U32_LIMIT: Final = 1 << 32


class SegmentReplacedError(Exception):
    """A read reached a segment that a cleaner swap replaced, or that was
    deleted (retention, truncation), after the reader took the segment list,
    and whose descriptor is closed: read again (the
    partition retries with the current list). Internal to storage (never a
    client's error, so no ``LogStoreError`` and no reason on the wire)."""


class HandleCache:
    """LRU of segments with open handles, capped at ``max_open`` descriptors
    (one per open .log file, one per index map).

    ``acquire`` pins a segment (opening its descriptor if needed) and
    ``release`` unpins it; only unpinned segments are evicted, so a descriptor
    is never closed under a reader. If every open segment is pinned the cap is
    exceeded briefly rather than blocking.

    Cost: O(1) per call, whatever the number of segments (1,000 partitions
    appended round robin open and evict a segment per append). The cache keeps
    the descriptors it counted for each segment and their running total;
    a segment's count is taken again whenever it is acquired, released or
    told to :meth:`recount` (its indexes mapped or unmapped outside a pin:
    a seal, a rebuild), and every ``max_open`` new entries the total is
    summed afresh, so a count missed elsewhere is bounded in time.
    """

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        #: segment -> [pins, descriptors counted for it]
        self._lru: OrderedDict[Segment, list[int]] = OrderedDict()
        self._total = 0  # sum of the counted descriptors
        self._opened = 0  # new entries since the total was last summed
        self._lock = threading.Lock()

    def _count(self, entry: list[int], seg: Segment) -> None:
        n = seg.handle_count
        self._total += n - entry[1]
        entry[1] = n

    def _drop(self, seg: Segment) -> None:
        entry = self._lru.pop(seg, None)
        if entry is not None:
            self._total -= entry[1]
        seg._close_handles()

    def acquire(self, seg: Segment) -> int:
        with self._lock:
            entry = self._lru.get(seg)
            if entry is None:
                seg._open_fd()
                entry = self._lru[seg] = [1, 0]
                self._opened += 1
                if self._opened >= self.max_open:
                    self._resum()
            else:
                entry[0] += 1
                self._lru.move_to_end(seg)
            self._count(entry, seg)
            if self._total > self.max_open:
                self._evict()
            fd = seg._fd
            assert fd is not None
            return fd

    def adopt(self, seg: Segment) -> None:
        """Take in a segment whose descriptor its creator opened (``seg._fd``
        set), unpinned, as the most recently used; evict down to the cap."""
        with self._lock:
            assert seg not in self._lru and seg._fd is not None
            entry = self._lru[seg] = [0, 0]
            self._opened += 1
            if self._opened >= self.max_open:
                self._resum()
            self._count(entry, seg)
            if self._total > self.max_open:
                self._evict()

    def release(self, seg: Segment) -> None:
        with self._lock:
            entry = self._lru.get(seg)
            if entry is not None:
                entry[0] -= 1
                if entry[0] == 0 and seg.retired:  # the last reader of a replaced segment
                    self._drop(seg)
                else:
                    self._count(entry, seg)

    def release_retired(self, seg: Segment) -> None:
        """Drop the cleaner's pin of a replaced segment and close its descriptor
        once no reader holds it (``forget`` would close it under a reader)."""
        with self._lock:
            entry = self._lru.get(seg)
            if entry is not None and entry[0] > 1:
                entry[0] -= 1
                return
            self._drop(seg)

    def forget_when_unpinned(self, seg: Segment) -> None:
        """A segment being deleted (retention, truncation): mark it retired
        and close its handles now if no reader holds it, else when the last
        one releases it. Closing a pinned descriptor would free its number
        for the next file opened (a roll's new segment, an index), and the
        reader's pread would read that file's bytes."""
        with self._lock:
            seg.retired = True
            entry = self._lru.get(seg)
            if entry is None or entry[0] == 0:
                self._drop(seg)

    def forget(self, seg: Segment) -> None:
        """Close a segment's handles now (it is being closed: no reader left)."""
        with self._lock:
            self._drop(seg)

    def recount(self, seg: Segment) -> None:
        """Take ``seg``'s descriptors again (its index maps changed outside
        a pin) and evict down to the cap."""
        with self._lock:
            entry = self._lru.get(seg)
            if entry is not None:
                self._count(entry, seg)
            if self._total > self.max_open:
                self._evict()

    def _resum(self) -> None:
        self._opened = 0
        total = 0
        for seg, entry in self._lru.items():
            entry[1] = seg.handle_count
            total += entry[1]
        self._total = total

    def _evict(self) -> None:
        # CPython's mmap keeps a dup() of the descriptor it maps, so an active
        # segment with both index maps holds three descriptors: count them.
        # Oldest first; pinned ones (a reader holds them) are passed over.
        victims: list[Segment] = []
        total = self._total
        for seg, (pins, counted) in self._lru.items():
            if total <= self.max_open:
                break
            if pins == 0:
                total -= counted
                victims.append(seg)
        for seg in victims:
            self._drop(seg)

    def settle(self) -> None:
        """Evict down to the cap again (after a pinned segment grew its maps)."""
        with self._lock:
            if self._total > self.max_open:
                self._evict()

    @property
    def open_count(self) -> int:
        """Descriptors held: one per open .log, one more per index map."""
        with self._lock:
            return sum(s.handle_count for s in self._lru)

    def close_all(self) -> None:
        with self._lock:
            for seg in list(self._lru):
                seg._close_handles()
            self._lru.clear()
            self._total = 0


class Segment:
    """See the module docstring. Built by :meth:`create` or :meth:`load`."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        base_offset: int,
        handles: HandleCache,
        index_cache: IndexCache,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.base_offset = Offset(base_offset)
        self.handles = handles
        self.log_path = os.path.join(directory, segment_file(base_offset, FileKind.LOG))
        self.index = OffsetIndex(
            fs, os.path.join(directory, segment_file(base_offset, FileKind.INDEX)), index_cache
        )
        self.time_index = TimeIndex(
            fs, os.path.join(directory, segment_file(base_offset, FileKind.TIMEINDEX)), index_cache
        )
        #: The end of the frames (a byte position) and the offset after them.
        self.size = Position(0)
        self.next_offset = Offset(base_offset)
        self.max_timestamp_ms = -1
        self.created_ms = 0
        self.sealed = False
        self._bytes_since_entry = 0
        #: Set by the partition from its topic config; until then its default.
        self.index_interval_bytes = TopicConfig.index_interval_bytes
        #: Whether the indexes were checked against the log (see ensure_indexes).
        self._indexes_checked = False
        self._index_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_lock = threading.Lock()
        #: Set by recovery when data before the recovery point is unreachable:
        #: an offset past the frames found is then missing, not in a gap.
        self.damaged = False
        #: Set by :meth:`retire`: a cleaner swap put another segment's files at
        #: this one's paths; it reads only through the descriptor it holds.
        self.retired = False

    def __repr__(self) -> str:
        return f"Segment({self.log_path}, size={self.size}, next={self.next_offset})"

    # --- construction -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        fs: FileSystem,
        directory: str,
        base_offset: int,
        handles: HandleCache,
        index_cache: IndexCache,
        now_ms: int,
    ) -> Segment:
        """A new empty segment; the caller fsyncs the directory before acking into it."""
        seg = cls(fs, directory, base_offset, handles, index_cache)
        fd = fs.open(seg.log_path, create=True)
        try:
            if fs.size(fd, seg.log_path):
                fs.truncate(fd, 0, seg.log_path)  # a stale file past a truncation point
            for idx in (seg.index, seg.time_index):
                if fs.exists(idx.path):
                    fs.unlink(idx.path)
        except BaseException:
            fs.close(fd)
            raise
        # The first append writes through this descriptor (the cache keeps it,
        # unpinned, until evicted): no reopen of the file just created.
        seg._fd = fd
        handles.adopt(seg)
        seg.created_ms = now_ms
        seg._indexes_checked = True
        return seg

    @classmethod
    def load(
        cls,
        fs: FileSystem,
        directory: str,
        base_offset: int,
        handles: HandleCache,
        index_cache: IndexCache,
        next_offset: int | None,
        now_ms: int,
    ) -> Segment:
        """Open an existing segment without scanning it.

        ``next_offset`` is the offset after its last record when known (the
        next segment's base, or the checkpointed end); else the caller scans.
        """
        seg = cls(fs, directory, base_offset, handles, index_cache)
        seg.size = Position(fs.file_size(seg.log_path))
        seg.next_offset = Offset(base_offset if next_offset is None else next_offset)
        limit = None if next_offset is None else next_offset - base_offset - 1
        seg.index.load(limit)
        seg.time_index.load(limit)
        last = seg.time_index.last()
        seg.max_timestamp_ms = last[0] if last else -1
        seg.created_ms = now_ms
        return seg

    # --- handles --------------------------------------------------------------------
    def _open_fd(self) -> None:
        if self._fd is None:
            if self.retired:
                # The path holds the cleaned file now: opening it would read
                # the new layout at this segment's positions.
                raise SegmentReplacedError(f"{self.log_path} was replaced or deleted")
            self._fd = self.fs.open(self.log_path, create=not self.sealed)

    def retire(self) -> None:
        """A cleaner swap is about to put a new segment's files at this one's
        paths (the caller holds its descriptor open): from now on read only
        through that descriptor and the indexes' in-memory entries."""
        assert self._fd is not None, "retire with the descriptor held"
        self.retired = True
        self.index.detach()
        self.time_index.detach()
        self._indexes_checked = True  # nothing on disk of its own to check against

    @property
    def handle_count(self) -> int:
        """Descriptors this segment holds now (its .log and its index maps)."""
        return (self._fd is not None) + self.index.is_mapped + self.time_index.is_mapped

    def _close_handles(self) -> None:
        """Called by the HandleCache only, when the segment is unpinned.

        No msync: an eviction is not a durability point. The entries stay in
        the page cache like any write; a seal or clean close fsyncs the file,
        and after a crash they are hints checked against the log (the active
        segment's indexes are never synced by the group commit either). An
        msync here was an index fdatasync on the event loop per eviction:
        with more partitions written than the cap, one per append
        (~400 -> ~270 µs an append, 1,000 partitions under a cap of 256)."""
        self.index.unmap(sync=False)
        self.time_index.unmap(sync=False)
        fd, self._fd = self._fd, None
        if fd is not None:
            self.fs.close(fd)

    def pread(self, size: int, position: Position) -> bytes:
        fd = self.handles.acquire(self)
        try:
            return self.fs.pread(fd, size, position, self.log_path)
        finally:
            self.handles.release(self)

    def fits(self, frame_size: int, frame_next_offset: int, segment_bytes: int) -> bool:
        """Whether a frame ending before ``frame_next_offset`` can be appended
        without breaking a limit."""
        if self.size == 0:
            return frame_next_offset - self.base_offset < U32_LIMIT
        return (
            self.size + frame_size <= segment_bytes
            and self.size + frame_size < U32_LIMIT
            and frame_next_offset - self.base_offset < U32_LIMIT
            and not self.index.is_full
            and not self.time_index.is_full
        )

    # --- the sparse-index rule (the one place it is written) ----------------------
    @staticmethod
    def entries_for_frame(
        pos: int,
        rel: int,
        frame_max_ts: int,
        bytes_since_entry: int,
        interval: int,
        last_rel: int,
        running_max_ts: int,
        last_time_ts: int | None,
    ) -> tuple[bool, int | None]:
        """Which index entries the frame at ``pos`` (relative offset ``rel``) gets.

        An offset entry once at least ``interval`` bytes of frames were
        written since the last one (never for the first frame: position 0
        finds it), and only past the last entry (a recovery rescan may meet
        an entry it kept); with it, a time entry of the running maximum
        timestamp if that grew since the last time entry. Returns
        ``(offset entry, time entry's timestamp or None)``. Appends, recovery
        and index rebuilds all call this.
        """
        if not (pos and bytes_since_entry >= interval and rel > last_rel):
            return False, None
        ts = max(running_max_ts, frame_max_ts)
        return True, (ts if last_time_ts is None or ts > last_time_ts else None)

    def _entries_due(self, pos: int, rel: int, frame_max_ts: int) -> tuple[bool, int | None]:
        last_time = self.time_index.last()
        last_time_ts = None if last_time is None else last_time[0]
        return self.entries_for_frame(
            pos, rel, frame_max_ts, self._bytes_since_entry, self.index_interval_bytes,
            self.index.last()[0], self.max_timestamp_ms, last_time_ts,
        )  # fmt: skip

    def _index_frame(
        self,
        pos: Position,
        rel: int,
        frame_size: int,
        frame_max_ts: int,
        due: tuple[bool, int | None],
    ) -> None:
        """Account for a frame just appended or accepted by recovery."""
        add_offset, time_ts = due
        if add_offset:
            with self._index_lock:
                if time_ts is not None:
                    self._drop_cover_time_entry()
                self.index.append(rel, pos)
                if time_ts is not None:
                    self.time_index.append(time_ts, rel)
            self._bytes_since_entry = 0
        self.max_timestamp_ms = max(self.max_timestamp_ms, frame_max_ts)
        self._bytes_since_entry += frame_size

    def _bytes_after_last_entry(self) -> int:
        """Bytes of frames after the last offset entry (``size`` known)."""
        return self.size - self.index.last()[1] if self.index.n else self.size

    # --- writing ------------------------------------------------------------------------
    def append(
        self,
        head: bytes | bytearray | memoryview,
        body: bytes | memoryview,
        header_base: int,
        frame_next_offset: int,
        max_timestamp_ms: int,
    ) -> None:
        """Append one frame whose base offset is ``header_base`` (already patched)
        and whose last offset is ``frame_next_offset - 1``.

        On a write error the file is truncated back to its previous size, so
        nothing half-written is ever served; the error propagates.
        """
        assert header_base >= self.next_offset and frame_next_offset > header_base
        pos = self.size
        frame_size = len(head) + len(body)
        rel = header_base - self.base_offset
        due = self._entries_due(pos, rel, max_timestamp_ms)
        add_entry = due[0]
        if add_entry:
            # Grow the index maps before writing the frame: an ENOSPC here
            # must not leave a written frame unaccounted for.
            self.index.reserve()
            self.time_index.reserve()
        fd = self.handles.acquire(self)
        try:
            try:
                self.fs.append(fd, [head, body], self.log_path)
            except StorageError:
                self.fs.truncate(fd, pos, self.log_path)
                raise
        finally:
            self.handles.release(self)
            if add_entry:
                self.handles.settle()
        self._index_frame(pos, rel, frame_size, max_timestamp_ms, due)
        # size before next_offset: a reader that sees the new end offset must
        # also see the bytes that hold it.
        self.size = Position(pos + frame_size)
        self.next_offset = Offset(frame_next_offset)

    def sync(self) -> None:
        """fdatasync the .log file (indexes are rebuilt after a crash)."""
        fd = self.handles.acquire(self)
        try:
            self.fs.fsync(fd, self.log_path)
        finally:
            self.handles.release(self)

    def seal(self, *, sync: bool = True) -> None:
        """Make this segment read-only: final time entry, trimmed indexes, and
        with ``sync`` an fsync of the log and both indexes.

        A roll seals with ``sync=False`` under the partition's lock (no wait
        on the disk: one fsync is ~1-5 ms, a whole append's budget); the
        partition then tracks the segment as not yet durable and its group
        commit calls :meth:`sync_sealed` before the recovery point passes it.
        """
        self._final_time_entry()
        if sync:
            self.sync()
        self.index.seal(sync=sync)
        self.time_index.seal(sync=sync)
        self.sealed = True
        self.handles.recount(self)  # its index maps are gone

    def sync_sealed(self) -> None:
        """Fsync a segment sealed with ``seal(sync=False)``: its log, then both
        index files (the deferred half of that seal; also what recovery's
        non-last segments get, which a kill -9 may have left unsynced)."""
        self.sync()
        self.index.sync_file()
        self.time_index.sync_file()

    def _final_time_entry(self) -> None:
        """Record the segment's max timestamp so a reload knows it without a scan.

        Best effort: if the index cannot grow (disk full), the entry is left
        out and ensure_indexes() rebuilds the index on first use instead.
        """
        try:
            self._append_final_time_entry()
        except StorageError as exc:
            log.warning("%s: final time index entry skipped: %s", self.log_path, exc)
            self._indexes_checked = False

    def _drop_cover_time_entry(self) -> None:
        """Drop a trailing time entry that is not on the last offset entry before
        appending another time entry.

        Such an entry is the one a close (or a rebuild) adds so that a reload
        knows the segment's max timestamp without a scan; every other time
        entry is written with an offset entry. Appends after a clean reopen
        would otherwise leave it in the middle of the index, where
        ``ensure_indexes`` takes an entry off the offset entries for damage
        and rebuilds both indexes. The entry that replaces it has a larger
        timestamp and relative offset, so nothing is lost.
        """
        last = self.time_index.last()
        if last is not None and (not self.index.n or last[1] != self.index.last()[0]):
            self.time_index.truncate_entries(self.time_index.n - 1)

    def _append_final_time_entry(self) -> None:
        last = self.time_index.last()
        if self.size and (last is None or self.max_timestamp_ms > last[0]):
            self._drop_cover_time_entry()
            last = self.time_index.last()
            lrel = self.index.last()[0]
            rel = max(lrel, (last[1] + 1) if last else 0)
            rel = min(rel, self.next_offset - 1 - self.base_offset)
            if last is None or rel > last[1]:
                self.time_index.append(self.max_timestamp_ms, rel)

    def close(self) -> None:
        """Clean close of the active segment: trim indexes so a reload knows n."""
        self._final_time_entry()
        self.handles.forget(self)
        self.index.seal()
        self.time_index.seal()

    def delete(self) -> None:
        """Remove the segment's files. A reader that holds its descriptor
        keeps reading the unlinked file to the end of its read; a read that
        reaches the segment after the last one let go gets
        SegmentReplacedError and starts again on the current list, where its
        offset is below the log start: OffsetOutOfRangeError, never another
        file's bytes (``HandleCache.forget_when_unpinned``)."""
        self.handles.forget_when_unpinned(self)
        self.index.delete()
        self.time_index.delete()
        if self.fs.exists(self.log_path):
            self.fs.unlink(self.log_path)

    # --- recovery (called by the partition's open, single-threaded) ----------------------
    def resume_after_clean_open(self) -> None:
        """Continue appending after a clean shutdown (``size`` and ``next_offset``
        were taken from the file and the checkpoint)."""
        self.next_offset = max(self.next_offset, self.base_offset)
        self._bytes_since_entry = self._bytes_after_last_entry()
        # Check the indexes against the log as closed, before appends add to
        # them (a check after appends would find the frames past the last
        # entry newer than the last time entry and rebuild for nothing).
        self.ensure_indexes()

    def forget_indexes(self) -> None:
        """Drop every index entry and the max timestamp (a rescan rebuilds them)."""
        self.index.reset()
        self.time_index.reset()
        self.max_timestamp_ms = -1

    def recover_from(self, pos: Position, expected_offset: Offset) -> str | None:
        """Accept the valid frames from byte ``pos`` (a frame boundary, where
        ``expected_offset`` starts) to the end of the file: head, CRC32C,
        contiguous offsets, indexed by the one rule as if appended. Sets
        ``size`` and ``next_offset`` to the end of the last valid frame;
        returns why scanning stopped early (a torn tail), or None. Offsets
        must increase, not be contiguous (a gap is legal). Does not
        truncate (the caller logs, then calls ``truncate_at``)."""
        self.size = pos
        self.next_offset = expected_offset
        self._bytes_since_entry = self._bytes_after_last_entry()
        file_size = self.fs.file_size(self.log_path)
        try:
            for p, h in self.frames(pos, file_size):
                if h.base_offset < self.next_offset:
                    return f"base offset {h.base_offset}, expected >= {self.next_offset}"
                check_crc(self.pread(h.frame_size, p), h)
                rel = h.base_offset - self.base_offset
                self._index_frame(
                    p, rel, h.frame_size, h.max_timestamp_ms,
                    self._entries_due(p, rel, h.max_timestamp_ms),
                )  # fmt: skip
                self.size = Position(p + h.frame_size)
                self.next_offset = h.next_offset
        except CorruptRecordError as exc:
            return str(exc)
        return None

    def offset_bound(self) -> int:
        """An offset that no record in this segment's file reaches, for when
        damage stops the walk of its frames: the largest next offset of any
        CRC-valid frame found anywhere in the file (frames after the damage
        included: the file is scanned for frame heads), at most what its bytes
        can hold (every record takes at least MIN_RECORD_BYTES, so a frame
        that only looks valid, inside a record's value, cannot push it
        further). The base offset if no frame is found."""
        file_size = self.fs.file_size(self.log_path)
        best = self.base_offset
        pos = 0
        while pos < file_size:
            # MAX_FRAME_OVERHEAD more than the step: a head (of either format)
            # that starts in this step is decoded from this read.
            chunk = self.pread(_SCAN_STEP_BYTES + MAX_FRAME_OVERHEAD, Position(pos))
            for m in _FRAME_HEAD.finditer(chunk, 0, min(_SCAN_STEP_BYTES, len(chunk))):
                p = pos + m.start()
                try:
                    h = decode_header(chunk, m.start())
                    if p + h.frame_size > file_size:
                        continue
                    check_crc(self.pread(h.frame_size, Position(p)), h)
                except CorruptRecordError:
                    continue
                best = max(best, h.next_offset)
            pos += _SCAN_STEP_BYTES
        return min(best, self.base_offset + file_size // MIN_RECORD_BYTES)

    def boundary_at(self, offset: Offset) -> Position:
        """Byte position right after the frame that ends at ``offset`` (the
        recovery point), walking frame heads without CRC from the last index
        entry before it; loads the indexes up to it and sets the max
        timestamp of the frames before it. CorruptRecordError if no frame
        ends there (damage or missing data before the recovery point)."""
        # Only entries of frames that start before the recovery point can be
        # trusted (an entry for the frame at it may point at a torn frame).
        self.index.load(offset - self.base_offset - 1)
        self.time_index.load(offset - self.base_offset - 1)
        file_size = self.fs.file_size(self.log_path)
        rel, pos = self.index.lookup(offset - self.base_offset)
        if pos:
            try:
                # The head alone (a walk bounded at the head's end would call
                # every frame "running past the end" and distrust the entry).
                h = decode_header(self.pread(MAX_FRAME_OVERHEAD, pos))
                if h.base_offset != self.base_offset + rel or pos + h.frame_size > file_size:
                    raise CorruptRecordError("bad index entry")
            except CorruptRecordError:
                self.index.reset()
                self.time_index.reset()
                pos = Position(0)
        last_ts = self.time_index.last()
        self.max_timestamp_ms = last_ts[0] if last_ts else -1
        # Stop right after the frame that ends at the recovery point: the frame
        # after it may be torn, and that is a torn tail, not corruption.
        for p, h in self.frames(pos, file_size):
            if h.base_offset >= offset or h.next_offset > offset:
                break
            self.max_timestamp_ms = max(self.max_timestamp_ms, h.max_timestamp_ms)
            if h.next_offset == offset:
                return Position(p + h.frame_size)
        raise CorruptRecordError(
            f"{self.log_path}: no frame boundary at recovery point {offset} (data missing)"
        )

    # --- reading ----------------------------------------------------------------------------
    def _header_at(self, buf: bytes, pos_in_buf: int, pos: int) -> FrameHeader:
        try:
            return decode_header(buf, pos_in_buf)
        except CorruptRecordError as exc:
            raise CorruptRecordError(f"{self.log_path} at byte {pos}: {exc}") from None

    def frames(self, start_pos: Position, end_pos: int) -> Iterator[tuple[Position, FrameHeader]]:
        """Walk frame headers from ``start_pos`` (a frame boundary) to ``end_pos``.

        Yields ``(position, header)``; raises CorruptRecordError on a bad head
        or a frame running past ``end_pos``. No CRC check.
        """
        pos: int = start_pos
        buf = b""
        buf_start = pos
        while pos < end_pos:
            off = pos - buf_start
            # A head of either format must be in the buffer (72 or 77 bytes);
            # re-read when fewer than the longest remain and more exist.
            if off + MAX_FRAME_OVERHEAD > len(buf) and buf_start + len(buf) < end_pos:
                buf = self.pread(min(SCAN_CHUNK, end_pos - pos), Position(pos))
                buf_start, off = pos, 0
                if len(buf) < FRAME_OVERHEAD:
                    raise CorruptRecordError(
                        f"{self.log_path}: truncated frame at byte {pos} (file ends early)"
                    )
            h = self._header_at(buf, off, pos)
            if pos + h.frame_size > end_pos:
                raise CorruptRecordError(
                    f"{self.log_path}: frame at byte {pos} runs past the end ({end_pos})"
                )
            yield Position(pos), h
            pos += h.frame_size

    def locate(self, offset: Offset) -> tuple[Position, FrameHeader] | None:
        """Position and header of the first frame whose last offset is >=
        ``offset`` (Kafka's translateOffset): the frame containing it, or the
        next one when a gap removed it. None when every frame ends before it
        (a gap at the end of the segment: the next segment has it).

        Uses the sparse index (its entries are frame base offsets: the frames
        before an entry all end at or before it), verified against the frame
        found there; a wrong entry (corrupt index) falls back to a scan from
        the start. Raises CorruptRecordError when the offset should be here
        but a frame head is damaged, or the segment is ``damaged``.
        """
        assert self.base_offset <= offset < self.next_offset
        self.ensure_indexes()
        rel, pos = self.index.lookup(offset - self.base_offset)
        limit = self.size
        if pos and not self._entry_matches(rel, pos):
            self._rebuild_indexes_locked("an offset index entry does not match the log")
            rel, pos = self.index.lookup(offset - self.base_offset)
        for p, h in self.frames(pos, limit):
            if offset < h.next_offset:
                return p, h
        if self.damaged:
            raise CorruptRecordError(
                f"{self.log_path}: offset {offset} not found (missing or damaged data)"
            )
        return None

    def position_of(self, offset: Offset) -> tuple[Position, FrameHeader]:
        """:meth:`locate`, raising CorruptRecordError instead of returning None."""
        found = self.locate(offset)
        if found is None:
            raise CorruptRecordError(
                f"{self.log_path}: offset {offset} not found (missing or damaged data)"
            )
        return found

    def cut_point(self, offset: Offset) -> tuple[Position, Offset]:
        """Where to truncate to drop every record at or after ``offset``,
        keeping a batch that straddles it whole: ``(position, next offset
        after the frames kept)``. The next offset is the last kept frame's
        (or the base offset when none is kept), so the segment's end stays
        where its last frame ends, gaps or not. Walks the frame heads from
        the start (a truncation is rare: replication and admin only)."""
        end = self.base_offset
        for p, h in self.frames(Position(0), self.size):
            if h.base_offset >= offset:
                return p, Offset(end)
            if offset <= h.last_offset:
                return Position(p + h.frame_size), h.next_offset
            end = h.next_offset
        return self.size, Offset(end)

    def tail_next_offset(self) -> Offset | None:
        """The offset after the last frame, found by walking the frame heads
        from the last offset index entry to ``size`` (no CRC); None if the
        frames do not run, with increasing offsets, exactly to ``size``
        (garbage or a torn frame at the end)."""
        rel, pos = self.index.last()
        if pos and not self._entry_matches(rel, pos):
            rel, pos = 0, Position(0)
        nxt = self.base_offset + rel
        try:
            for _p, h in self.frames(pos, self.size):
                if h.base_offset < nxt:
                    return None
                nxt = h.next_offset
        except CorruptRecordError:
            return None
        return Offset(nxt)

    def read_frames_at(
        self, pos: Position, max_bytes: int, end_offset: Offset | None = None
    ) -> tuple[bytes, Offset]:
        """CRC-checked whole frames from ``pos``: at least one, then as many as
        fit in ``max_bytes``, none starting at or after ``end_offset`` (the
        high watermark). Returns ``(bytes, next_offset)``.

        :meth:`read_frames_from` is the same read, also saying where its
        last frame starts."""
        data, nxt, _last_pos, _last_base = self.read_frames_from(pos, max_bytes, end_offset)
        return data, nxt

    def read_frames_from(
        self, pos: Position, max_bytes: int, end_offset: Offset | None = None
    ) -> tuple[bytes, Offset, Position, Offset]:
        """:meth:`read_frames_at`, returning ``(bytes, next_offset, position
        of the last frame, its base offset)`` (a partition's read cursor
        keeps the last two, ``PartitionLog.read_frames``).

        A bad frame (head, CRC or offset) raises CorruptRecordError only when
        it is the first one; after good frames the read stops before it and
        returns those, so one damaged batch never hides the valid data before
        it (the next read, starting at the bad one, reports it)."""
        limit = self.size
        want = max(min(max_bytes, limit - pos), MAX_FRAME_OVERHEAD)
        buf = self.pread(want, pos)
        mv = memoryview(buf)
        off = 0
        next_offset = -1
        last_off = last_base = 0
        while off + FRAME_OVERHEAD <= len(mv):
            try:
                h = self._header_at(buf, off, pos + off)
            except CorruptRecordError:
                if off:
                    break
                raise
            if off and end_offset is not None and h.base_offset >= end_offset:
                break
            end = off + h.frame_size
            if end > len(mv):
                if off:
                    break
                if pos + h.frame_size > limit:
                    raise CorruptRecordError(
                        f"{self.log_path}: frame at byte {pos} runs past the end"
                    )
                buf = self.pread(h.frame_size, pos)  # first frame > max_bytes: send it whole
                mv = memoryview(buf)
                if len(mv) < h.frame_size:
                    raise CorruptRecordError(f"{self.log_path}: truncated frame at byte {pos}")
            try:
                check_crc(mv[off:end], h)
            except CorruptRecordError as exc:
                if off:
                    break
                raise CorruptRecordError(f"{self.log_path} at byte {pos + off}: {exc}") from None
            if h.base_offset < next_offset:
                break  # an overlap: not served past it (off > 0 here); gaps are legal
            next_offset = h.next_offset
            last_off, last_base = off, h.base_offset
            off = end
        if off == 0:
            raise CorruptRecordError(f"{self.log_path}: no whole frame at byte {pos}")
        last = (Position(pos + last_off), Offset(last_base))
        if off == len(buf):
            return buf, Offset(next_offset), *last
        return bytes(mv[:off]), Offset(next_offset), *last

    # --- index verification ----------------------------------------------------------
    def _entry_matches(self, rel: int, pos: Position) -> bool:
        """Whether the frame at ``pos`` starts at relative offset ``rel``."""
        if pos >= self.size:
            return False
        try:
            h = decode_header(self.pread(MAX_FRAME_OVERHEAD, pos))
        except CorruptRecordError:
            return False
        return h.base_offset == self.base_offset + rel

    def ensure_indexes(self) -> None:
        """Check the indexes against the log once; rebuild them if they disagree.

        Indexes are hints written without checksums (and, after a crash,
        possibly torn): a wrong time index would make time lookups and
        retention silently wrong, so before first use the segment checks
        that the offset entries point at frames, that the time entries sit
        on offset entries, and that the last time entry covers the frames
        after the last offset entry (a walk of at most one index interval).
        """
        if self._indexes_checked:
            return
        with self._index_lock:
            if self._indexes_checked:
                return
            why = self._index_problem()
            if why is not None:
                self._rebuild_indexes(why)
            self._indexes_checked = True

    def _index_problem(self) -> str | None:
        if self.size == 0:
            return None
        offs = self.index.entries()
        times = self.time_index.entries()
        if not len(times):
            return "the time index is empty"
        t_rels = times["rel"][:-1]
        if len(t_rels) and not np.isin(t_rels, offs["rel"]).all():
            return "time index entries are not on offset index entries"
        for k in {0, len(offs) - 1} if len(offs) else ():
            if not self._entry_matches(int(offs[k]["rel"]), Position(int(offs[k]["pos"]))):
                return "an offset index entry does not match the log"
        start = int(offs[-1]["pos"]) if len(offs) else 0
        tail_max = -1
        last_rel = -1
        try:
            for _p, h in self.frames(Position(start), self.size):
                tail_max = max(tail_max, h.max_timestamp_ms)
                last_rel = h.base_offset - self.base_offset
        except CorruptRecordError as exc:
            return f"the log past the last index entry does not parse ({exc})"
        last_ts, last_trel = int(times[-1]["ts"]), int(times[-1]["rel"])
        if tail_max > last_ts or last_trel > last_rel:
            return "the time index does not cover the end of the segment"
        self.max_timestamp_ms = last_ts
        return None

    def _rebuild_indexes_locked(self, why: str, level: int = logging.WARNING) -> None:
        with self._index_lock:
            self._rebuild_indexes(why, level)

    def _rebuild_indexes(self, why: str, level: int = logging.WARNING) -> None:
        """Rebuild both indexes from the frame headers (lock held); logged at
        ``level`` (a repair is a warning, the cleaner's new segment is not)."""
        log.log(level, "%s: rebuilding indexes: %s", self.log_path, why)
        interval = self.index_interval_bytes
        offs: list[tuple[int, int]] = []
        times: list[tuple[int, int, int]] = []
        mx = -1
        since = 0
        rel = 0
        try:
            for pos, h in self.frames(Position(0), self.size):
                rel = h.base_offset - self.base_offset
                add_offset, time_ts = self.entries_for_frame(
                    pos, rel, h.max_timestamp_ms, since, interval,
                    offs[-1][0] if offs else 0, mx, times[-1][0] if times else None,
                )  # fmt: skip
                mx = max(mx, h.max_timestamp_ms)
                if add_offset:
                    offs.append((rel, pos))
                    if time_ts is not None:
                        times.append((time_ts, rel, 0))
                    since = 0
                since += h.frame_size
        except CorruptRecordError as exc:
            # Index the readable prefix; reads past it report the corruption.
            log.error("%s: indexes cover only the readable prefix: %s", self.log_path, exc)
        if self.size and (not times or (mx > times[-1][0] and rel > times[-1][1])):
            times.append((mx, rel, 0))
        self.index.replace(np.array(offs, dtype=OFFSET_DTYPE))
        self.time_index.replace(np.array(times, dtype=TIME_DTYPE))
        self.max_timestamp_ms = mx
        self._bytes_since_entry = since
        self._indexes_checked = True
        self.handles.recount(self)  # replace() may have mapped the indexes

    def truncate_at(self, pos: Position, next_offset: Offset) -> None:
        """Drop every byte from ``pos`` (a frame boundary) on."""
        fd = self.handles.acquire(self)
        try:
            self.fs.truncate(fd, pos, self.log_path)
            self.fs.fsync(fd, self.log_path)
        finally:
            self.handles.release(self)
        self.size = pos
        self.next_offset = next_offset
        self.index.truncate_entries(self.index.count_below_position(pos))
        self.time_index.truncate_entries(
            self.time_index.count_below_rel(next_offset - self.base_offset)
        )
        self._bytes_since_entry = self._bytes_after_last_entry()
        last_ts = self.time_index.last()
        self.max_timestamp_ms = last_ts[0] if last_ts else -1
        from_pos = self.index.last()[1] if self.index.n else Position(0)
        for _p, h in self.frames(from_pos, self.size):
            self.max_timestamp_ms = max(self.max_timestamp_ms, h.max_timestamp_ms)
