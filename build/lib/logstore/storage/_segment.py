"""One segment: a .log file of frames plus its offset and time indexes.

The segment owns its three files. Its .log descriptor and (while active) its
index maps are opened through the store's :class:`HandleCache`, an LRU with a
cap on open segments, so descriptors and maps stay bounded whatever the
number of partitions; an evicted segment simply reopens on next use.

Invariants (checked by ``assert`` where cheap):
- ``size`` is the byte length of the valid frames; bytes past it are never
  read (a concurrent append may be writing there).
- frames are contiguous: frame k+1's base offset = frame k's base offset +
  record count; ``next_offset`` is the offset after the last record.
- relative offsets (``offset - base_offset``) and positions fit in u32; the
  partition rolls before they would not.

Thread-safety: one writer at a time (the partition's lock); any number of
readers concurrently with it (``pread`` at positions below ``size``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Final

import numpy as np

from logstore.errors import CorruptRecordError, StorageError
from logstore.wire import FRAME_OVERHEAD, FrameHeader, check_crc, decode_header

from ._fs import FileSystem
from ._index import OFFSET_DTYPE, TIME_DTYPE, IndexCache, OffsetIndex, TimeIndex
from ._names import FileKind, segment_file

log = logging.getLogger("logstore.storage")

#: Bytes read at once when walking frame headers: several index intervals'
#: worth, so a lookup costs one pread whatever the batch size.
SCAN_CHUNK: Final = 64 * 1024
U32_LIMIT: Final = 1 << 32


class HandleCache:
    """LRU of segments with open handles, capped at ``max_open`` descriptors
    (one per open .log file, one per index map).

    ``acquire`` pins a segment (opening its descriptor if needed) and
    ``release`` unpins it; only unpinned segments are evicted, so a descriptor
    is never closed under a reader. If every open segment is pinned the cap is
    exceeded briefly rather than blocking.
    """

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._lru: OrderedDict[Segment, int] = OrderedDict()  # segment -> pins
        self._lock = threading.Lock()

    def acquire(self, seg: Segment) -> int:
        with self._lock:
            pins = self._lru.get(seg)
            if pins is None:
                seg._open_fd()
                self._lru[seg] = 1
                self._evict()
            else:
                self._lru[seg] = pins + 1
                self._lru.move_to_end(seg)
            fd = seg._fd
            assert fd is not None
            return fd

    def release(self, seg: Segment) -> None:
        with self._lock:
            pins = self._lru.get(seg)
            if pins is not None:
                self._lru[seg] = pins - 1

    def forget(self, seg: Segment) -> None:
        """Close a segment's handles now (it is being deleted or closed)."""
        with self._lock:
            self._lru.pop(seg, None)
            seg._close_handles()

    def _evict(self) -> None:
        # CPython's mmap keeps a dup() of the descriptor it maps, so an active
        # segment with both index maps holds three descriptors: count them.
        total = sum(s.handle_count for s in self._lru)
        if total <= self.max_open:
            return
        for seg, pins in list(self._lru.items()):
            if total <= self.max_open:
                break
            if pins == 0:
                total -= seg.handle_count
                del self._lru[seg]
                seg._close_handles()

    def settle(self) -> None:
        """Evict down to the cap again (after a pinned segment grew its maps)."""
        with self._lock:
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
        self.base_offset = base_offset
        self.handles = handles
        self.log_path = os.path.join(directory, segment_file(base_offset, FileKind.LOG))
        self.index = OffsetIndex(
            fs, os.path.join(directory, segment_file(base_offset, FileKind.INDEX)), index_cache
        )
        self.time_index = TimeIndex(
            fs, os.path.join(directory, segment_file(base_offset, FileKind.TIMEINDEX)), index_cache
        )
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp_ms = -1
        self.created_ms = 0
        self.sealed = False
        self._bytes_since_entry = 0
        #: Set by the partition from its topic config.
        self.index_interval_bytes = 4096
        #: Whether the indexes were checked against the log (see ensure_indexes).
        self._indexes_checked = False
        self._index_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_lock = threading.Lock()

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
        if fs.size(fd, seg.log_path):
            fs.truncate(fd, 0, seg.log_path)  # a stale file past a truncation point
        fs.close(fd)
        for idx in (seg.index, seg.time_index):
            if fs.exists(idx.path):
                fs.unlink(idx.path)
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
        seg.size = fs.file_size(seg.log_path)
        seg.next_offset = base_offset if next_offset is None else next_offset
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
            self._fd = self.fs.open(self.log_path, create=not self.sealed)

    @property
    def handle_count(self) -> int:
        """Descriptors this segment holds now (its .log and its index maps)."""
        return (self._fd is not None) + self.index.is_mapped + self.time_index.is_mapped

    def _close_handles(self) -> None:
        """Called by the HandleCache only, when the segment is unpinned."""
        self.index.unmap()
        self.time_index.unmap()
        fd, self._fd = self._fd, None
        if fd is not None:
            self.fs.close(fd)

    def pread(self, size: int, position: int) -> bytes:
        fd = self.handles.acquire(self)
        try:
            return self.fs.pread(fd, size, position, self.log_path)
        finally:
            self.handles.release(self)

    # --- writing ------------------------------------------------------------------------
    def fits(self, frame_size: int, record_count: int, segment_bytes: int) -> bool:
        """Whether a frame can be appended without breaking a limit."""
        if self.size == 0:
            return self.next_offset + record_count - self.base_offset < U32_LIMIT
        return (
            self.size + frame_size <= segment_bytes
            and self.size + frame_size < U32_LIMIT
            and self.next_offset + record_count - self.base_offset < U32_LIMIT
            and not self.index.is_full
            and not self.time_index.is_full
        )

    def append(
        self,
        head: bytearray,
        body: bytes | memoryview,
        header_base: int,
        record_count: int,
        max_timestamp_ms: int,
        index_interval_bytes: int,
    ) -> None:
        """Append one frame whose base offset is ``header_base`` (already patched).

        On a write error the file is truncated back to its previous size, so
        nothing half-written is ever served; the error propagates.
        """
        assert header_base == self.next_offset
        pos = self.size
        frame_size = len(head) + len(body)
        add_entry = bool(pos) and self._bytes_since_entry >= index_interval_bytes
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
        rel = header_base - self.base_offset
        self.max_timestamp_ms = max(self.max_timestamp_ms, max_timestamp_ms)
        if add_entry:
            with self._index_lock:
                self.index.append(rel, pos)
                last = self.time_index.last()
                if last is None or self.max_timestamp_ms > last[0]:
                    self.time_index.append(self.max_timestamp_ms, rel)
            self._bytes_since_entry = 0
        self._bytes_since_entry += frame_size
        # size before next_offset: a reader that sees the new end offset must
        # also see the bytes that hold it.
        self.size = pos + frame_size
        self.next_offset = header_base + record_count

    def sync(self) -> None:
        """fdatasync the .log file (indexes are rebuilt after a crash)."""
        fd = self.handles.acquire(self)
        try:
            self.fs.fsync(fd, self.log_path)
        finally:
            self.handles.release(self)

    def seal(self) -> None:
        """Make this segment read-only: final time entry, trimmed indexes, fsync."""
        self._final_time_entry()
        self.sync()
        self.index.seal()
        self.time_index.seal()
        self.sealed = True

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

    def _append_final_time_entry(self) -> None:
        last = self.time_index.last()
        if self.size and (last is None or self.max_timestamp_ms > last[0]):
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
        self.handles.forget(self)
        self.index.delete()
        self.time_index.delete()
        if self.fs.exists(self.log_path):
            self.fs.unlink(self.log_path)

    # --- reading ----------------------------------------------------------------------------
    def _header_at(self, buf: bytes, pos_in_buf: int, pos: int) -> FrameHeader:
        try:
            return decode_header(buf, pos_in_buf)
        except CorruptRecordError as exc:
            raise CorruptRecordError(f"{self.log_path} at byte {pos}: {exc}") from None

    def frames(self, start_pos: int, end_pos: int) -> Iterator[tuple[int, FrameHeader]]:
        """Walk frame headers from ``start_pos`` (a frame boundary) to ``end_pos``.

        Yields ``(position, header)``; raises CorruptRecordError on a bad head
        or a frame running past ``end_pos``. No CRC check.
        """
        pos = start_pos
        buf = b""
        buf_start = pos
        while pos < end_pos:
            off = pos - buf_start
            if off + FRAME_OVERHEAD > len(buf):
                buf = self.pread(min(SCAN_CHUNK, end_pos - pos), pos)
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
            yield pos, h
            pos += h.frame_size

    def position_of(self, offset: int) -> tuple[int, FrameHeader]:
        """Position and header of the frame containing ``offset``.

        Uses the sparse index, verified against the frame found there; a
        wrong entry (corrupt index) falls back to a scan from the start.
        """
        assert self.base_offset <= offset < self.next_offset
        self.ensure_indexes()
        rel, pos = self.index.lookup(offset - self.base_offset)
        limit = self.size
        if pos and not self._entry_matches(rel, pos):
            self._rebuild_indexes_locked("an offset index entry does not match the log")
            rel, pos = self.index.lookup(offset - self.base_offset)
        for p, h in self.frames(pos, limit):
            if h.base_offset > offset:
                break
            if offset < h.next_offset:
                return p, h
        raise CorruptRecordError(
            f"{self.log_path}: offset {offset} not found (missing or damaged data)"
        )

    def read_frames(self, pos: int, max_bytes: int) -> tuple[bytes, int]:
        """CRC-checked whole frames from ``pos``: at least one, then as many as
        fit in ``max_bytes``. Returns ``(bytes, next_offset)``."""
        limit = self.size
        want = max(min(max_bytes, limit - pos), FRAME_OVERHEAD)
        buf = self.pread(want, pos)
        mv = memoryview(buf)
        off = 0
        next_offset = -1
        while off + FRAME_OVERHEAD <= len(mv):
            h = self._header_at(buf, off, pos + off)
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
                raise CorruptRecordError(f"{self.log_path} at byte {pos + off}: {exc}") from None
            if next_offset != -1 and h.base_offset != next_offset:
                raise CorruptRecordError(
                    f"{self.log_path} at byte {pos + off}: base offset {h.base_offset}, "
                    f"expected {next_offset}"
                )
            next_offset = h.next_offset
            off = end
        if off == 0:
            raise CorruptRecordError(f"{self.log_path}: no whole frame at byte {pos}")
        if off == len(buf):
            return buf, next_offset
        return bytes(mv[:off]), next_offset

    # --- index verification ----------------------------------------------------------
    def _entry_matches(self, rel: int, pos: int) -> bool:
        """Whether the frame at ``pos`` starts at relative offset ``rel``."""
        if pos >= self.size:
            return False
        try:
            h = decode_header(self.pread(FRAME_OVERHEAD, pos))
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
            if not self._entry_matches(int(offs[k]["rel"]), int(offs[k]["pos"])):
                return "an offset index entry does not match the log"
        start = int(offs[-1]["pos"]) if len(offs) else 0
        tail_max = -1
        last_rel = -1
        try:
            for _p, h in self.frames(start, self.size):
                tail_max = max(tail_max, h.max_timestamp_ms)
                last_rel = h.base_offset - self.base_offset
        except CorruptRecordError as exc:
            return f"the log past the last index entry does not parse ({exc})"
        last_ts, last_trel = int(times[-1]["ts"]), int(times[-1]["rel"])
        if tail_max > last_ts or last_trel > last_rel:
            return "the time index does not cover the end of the segment"
        self.max_timestamp_ms = last_ts
        return None

    def _rebuild_indexes_locked(self, why: str) -> None:
        with self._index_lock:
            self._rebuild_indexes(why)

    def _rebuild_indexes(self, why: str) -> None:
        """Rebuild both indexes from the frame headers (lock held)."""
        log.warning("%s: rebuilding indexes: %s", self.log_path, why)
        interval = self.index_interval_bytes
        offs: list[tuple[int, int]] = []
        times: list[tuple[int, int, int]] = []
        mx = -1
        since = 0
        rel = 0
        try:
            for pos, h in self.frames(0, self.size):
                rel = h.base_offset - self.base_offset
                mx = max(mx, h.max_timestamp_ms)
                if pos and since >= interval:
                    offs.append((rel, pos))
                    if not times or mx > times[-1][0]:
                        times.append((mx, rel, 0))
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

    def truncate_to(self, pos: int, next_offset: int) -> None:
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
        self._bytes_since_entry = pos - self.index.last()[1] if self.index.n else pos
