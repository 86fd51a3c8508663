"""The log cleaner: compaction of partitions whose policy includes ``compact``.

Contract (Kafka's LogCleaner, simplified):

- Only sealed segments are cleaned; the active one never is. The cleanable
  range ends before the first sealed segment holding a record younger than
  ``min_compaction_lag_ms``.
- Each partition has a *cleaned point* (``PartitionLog.cleaned_offset``),
  which the store persists in ``cleaner-offset-checkpoint`` after each clean
  (without an entry everything is dirty, which costs a re-clean, never
  data). A partition is cleaned when its dirty bytes (sealed
  segments at or past the cleaned point) exceed ``min_cleanable_dirty_ratio``
  of its cleanable bytes.
- One pass maps every key of the dirty section, from the cleaned point, to
  its latest offset (:class:`~._keymap.KeyMap`, ``cleaner_buffer_bytes``); when
  the map is full the pass ends at that batch, and the next pass starts there.
  Then every cleanable segment below the map's end is rewritten, oldest first,
  keeping a record unless a later record of its key is in the map, or it is a
  tombstone (null value) that was already below the cleaned point before this
  pass and whose timestamp is more than ``delete_retention_ms`` old.
- Rewritten batches keep their base offset, last offset, timestamps and
  producer fields; a batch that lost records becomes a format-2 frame
  (``build_offset_frame``, CRC recomputed); an unchanged batch is copied byte
  for byte; a batch that lost every record goes, except the last batch of
  each idempotent producer the partition knows, which stays as an empty
  format-2 batch (Kafka does the same): the producer state rebuilt from the
  log after a restart (``_producers``; without a usable snapshot) then still
  knows its sequence, and a retry of that batch is answered as a duplicate
  instead of being appended twice. A segment that lost every
  record is deleted (the first one moves the log start offset, as retention
  does).

Crash safety: a segment's cleaned frames go to ``<base>.log.cleaned``,
fsynced; then, under the partition lock, the segment's index files (hints,
rebuilt on open when missing) are deleted, the directory fsynced, the
``.cleaned`` file renamed over ``<base>.log`` (atomic) and the directory
fsynced again. A crash leaves each segment either wholly old or wholly new;
``*.cleaned`` leftovers are deleted on open. Because segments are swapped
oldest first and a record is only removed when a later record of its key
stays, any prefix of swaps is a correct log: nothing acknowledged that is the
latest of its key is lost, and a key removed by a tombstone cannot come back
(its older records, in older segments, were swapped out first). One rename
instead of Kafka's ``.cleaned`` -> ``.swap`` -> replace: a segment here is one
file (the indexes are rebuildable hints), so there is no group of files to
commit together.

Concurrency: appends and reads take no cleaner lock; the cleaner takes the
partition lock only for one swap (rename + two directory fsyncs + index
rebuild of one segment). Readers keep the segment-list snapshot they took;
the old segment is retired (``Segment.retire``: its indexes detached, kept
in memory, never again read from or written to their paths) and its
descriptor stays open (pinned) until the next run, closed then once no
reader holds it; a reader reaching it later gets ``SegmentReplacedError``
and the partition reads again from the current list.

Not thread-safe: one cleaner (the store's ``maintain`` caller, or the
broker's one cleaner thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from logstore._types import Position
from logstore.errors import CorruptRecordError
from logstore.wire import (
    FrameHeader,
    Record,
    build_offset_frame,
    check_crc,
    decode_objects,
    stored_frames,
)

from ._keymap import KeyMap, digests
from ._names import CLEANED_SUFFIX

if TYPE_CHECKING:
    from ._partition import PartitionLog
    from ._segment import Segment

log = logging.getLogger("logstore.storage")

#: Bytes of frames read per pread while cleaning (bounds the cleaner's
#: read buffer; a larger frame is read whole).
READ_CHUNK = 1 << 20
#: Digests gathered before one merge into the key map (~1.5 MiB of arrays).
MERGE_KEYS = 65_536


@dataclass
class CleanStats:
    """What the cleaner did since the store opened, summed over partitions
    (the broker exports these as ``logstore_cleaner_*`` metrics). Written by
    the one cleaner, read by anyone (ints and a float: no torn values)."""

    runs: int = 0
    passes: int = 0
    #: Bytes read from segments: to build the key map (the dirty section
    #: only, from the cleaned point) and to rewrite segments.
    bytes_read: int = 0
    #: Of ``bytes_read``, those read to build the key map.
    bytes_mapped: int = 0
    bytes_written: int = 0
    records_removed: int = 0
    #: Of ``records_removed``, those with a null value.
    tombstones_removed: int = 0
    segments_swapped: int = 0
    #: Wall time of the last partition clean (all its passes), seconds.
    last_clean_seconds: float = 0.0


class Throttle:
    """Bounds the cleaner's I/O to ``bytes_per_s`` (0: unbounded) by sleeping."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._start = time.monotonic()
        self._done = 0

    def add(self, n: int) -> None:
        if not self.bytes_per_s:
            return
        self._done += n
        ahead = self._done / self.bytes_per_s - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(min(ahead, 1.0))


class Cleaner:
    """See the module docstring."""

    def __init__(self, buffer_bytes: int, io_bytes_per_s: int = 0) -> None:
        self.keymap = KeyMap(buffer_bytes)
        self.throttle = Throttle(io_bytes_per_s)
        self.stats = CleanStats()
        self._retired: list[Segment] = []
        #: Set by the store's close: the cleaner stops between two segments
        #: (any prefix of swaps is a correct log, see the module docstring).
        self.stopping = threading.Event()

    def release_retired(self) -> None:
        """Close the descriptors of segments replaced by the previous run."""
        for seg in self._retired:
            seg.handles.release_retired(seg)
        self._retired = []

    # --- deciding --------------------------------------------------------------------
    @staticmethod
    def cleanable(lg: PartitionLog, now: int) -> list[Segment]:
        """The sealed segments a clean may rewrite (before the compaction lag)."""
        sealed = lg.segments[:-1]
        lag = lg.config.min_compaction_lag_ms
        for i, seg in enumerate(sealed):
            if lag > 0:
                seg.ensure_indexes()  # max timestamp from the time index
                if seg.max_timestamp_ms > now - lag:
                    return sealed[:i]
        return sealed

    @staticmethod
    def dirty_ratio(lg: PartitionLog, segs: list[Segment]) -> float:
        total = sum(s.size for s in segs)
        if not total:
            return 0.0
        dirty = sum(s.size for s in segs if s.next_offset > lg.cleaned_offset)
        return dirty / total

    def clean(self, lg: PartitionLog, now: int, *, force: bool = False) -> bool:
        """Clean ``lg`` if its policy compacts and its dirty ratio is above the
        threshold (or ``force``); passes until the dirty section is done.
        Returns whether anything was cleaned."""
        if not lg.config.compact:
            return False
        segs = self.cleanable(lg, now)
        if not segs or segs[-1].next_offset <= lg.cleaned_offset:
            return False
        if not force and self.dirty_ratio(lg, segs) <= lg.config.min_cleanable_dirty_ratio:
            return False
        self.stats.runs += 1
        started = time.monotonic()
        try:
            self._clean_passes(lg, segs, now)
        finally:
            self.stats.last_clean_seconds = time.monotonic() - started
        return True

    def _clean_passes(self, lg: PartitionLog, segs: list[Segment], now: int) -> None:
        # Up to the end found now: segments sealed meanwhile wait for the next
        # run, so steady appends cannot keep one clean going forever.
        target = segs[-1].next_offset
        while not self.stopping.is_set() and lg.cleaned_offset < target:
            segs = [s for s in self.cleanable(lg, now) if s.base_offset < target]
            if not segs or segs[-1].next_offset <= lg.cleaned_offset:
                break
            self._one_pass(lg, segs, now)

    # --- one pass ------------------------------------------------------------------------
    def _frames(
        self, seg: Segment, from_offset: int, *, mapping: bool = False
    ) -> Iterator[tuple[int, bytes, list[Record]]]:
        """``(base offset, frame bytes, records)`` of the segment's frames that
        end at or after ``from_offset``, CRC-checked; one ``READ_CHUNK`` read
        and decoded at a time, so memory is bounded by a chunk's records."""
        group: list[tuple[int, FrameHeader]] = []
        for p, h in seg.frames(Position(0), seg.size):
            if h.next_offset <= from_offset:
                continue
            if group and p + h.frame_size - group[0][0] > READ_CHUNK:
                yield from self._decode(seg, group, mapping)
                group = []
            group.append((p, h))
        if group:
            yield from self._decode(seg, group, mapping)

    def _decode(
        self, seg: Segment, group: list[tuple[int, FrameHeader]], mapping: bool
    ) -> Iterator[tuple[int, bytes, list[Record]]]:
        start = group[0][0]
        end = group[-1][0] + group[-1][1].frame_size
        chunk = seg.pread(end - start, Position(start))
        self.stats.bytes_read += len(chunk)
        if mapping:
            self.stats.bytes_mapped += len(chunk)
        self.throttle.add(len(chunk))
        for p, h in group:
            frame = chunk[p - start : p - start + h.frame_size]
            check_crc(frame, h)
            yield h.base_offset, frame, decode_objects(stored_frames(frame), 0)

    def _one_pass(self, lg: PartitionLog, segs: list[Segment], now: int) -> None:
        self.stats.passes += 1
        first_dirty = max(lg.cleaned_offset, segs[0].base_offset)
        keymap = self.keymap
        keymap.clear()
        map_end = first_dirty
        # Frames' digests are merged into the map MERGE_KEYS at a time (one sort
        # each; a merge per 1,000-record batch re-sorted the whole map every
        # time). If a merge overflows, its frames are retried one by one, so the
        # pass still ends exactly at the last frame that fit.
        pending: list[tuple[npt.NDArray[np.bytes_], npt.NDArray[np.int64], int]] = []
        pending_n = 0

        def merge() -> bool:
            nonlocal map_end, pending, pending_n
            if not pending:
                return True
            batch = pending
            pending, pending_n = [], 0
            keys = np.concatenate([k for k, _o, _e in batch])
            offs = np.concatenate([o for _k, o, _e in batch])
            if keymap.add(keys, offs):
                map_end = batch[-1][2]
                return True
            for k, o, end in batch:
                if not keymap.add(k, o):
                    return False
                map_end = end
            return True  # pragma: no cover - the whole group failed but each part fit

        full = False
        for seg in segs:
            if seg.next_offset <= first_dirty:
                continue
            for _base, frame, all_recs in self._frames(seg, first_dirty, mapping=True):
                # A null key (a topic that was not compacted before) is never
                # deduplicated: it is kept, as nothing can supersede it.
                recs = [r for r in all_recs if r.offset >= first_dirty and r.key is not None]
                keys = digests([r.key for r in recs if r.key is not None])
                offs = np.fromiter((r.offset for r in recs), dtype=np.int64, count=len(recs))
                pending.append((keys, offs, stored_frames(frame).frames[0][1].next_offset))
                pending_n += len(recs)
                if pending_n >= MERGE_KEYS and not merge():
                    full = True
                    break
            if full or not merge():
                full = True
                break
            map_end = seg.next_offset  # the segment's gap past its last frame too
        if map_end == first_dirty:
            raise CorruptRecordError(
                f"{lg.name}: cleaner_buffer_bytes holds {keymap.capacity} keys, fewer than one "
                f"batch at offset {first_dirty} has; raise cleaner_buffer_bytes"
            )
        old_clean = lg.cleaned_offset
        horizon = now - lg.config.delete_retention_ms
        # Taken once per pass: a producer's later batches are appended past
        # every segment cleaned here, so a stale set only keeps a batch more.
        producer_last = lg.producer_last_batches()
        for seg in segs:
            if seg.base_offset >= map_end:
                break
            if self.stopping.is_set():
                return  # the cleaned point stays: the next run redoes this pass
            self._rewrite(lg, seg, map_end, old_clean, horizon, producer_last)
        lg.cleaned_offset = map_end

    def _rewrite(
        self,
        lg: PartitionLog,
        seg: Segment,
        map_end: int,
        old_clean: int,
        horizon: int,
        producer_last: set[int],
    ) -> None:
        """Rewrite one segment. Until the first removed record the output equals
        the segment's own prefix, so nothing is written for a segment that
        keeps everything; after it, output goes to the ``.cleaned`` file in
        ``READ_CHUNK`` writes (memory bounded by a chunk)."""
        fs = lg.fs
        path = seg.log_path + CLEANED_SUFFIX
        fd: int | None = None
        pending: list[bytes] = []
        pending_bytes = 0
        same_upto = 0  # the output so far is the segment's bytes [0, same_upto)
        written = 0
        removed = 0
        tombstones = 0

        def flush() -> None:
            nonlocal pending, pending_bytes, written
            if pending and fd is not None:
                fs.append(fd, pending, path)
                self.throttle.add(pending_bytes)
                written += pending_bytes
            pending, pending_bytes = [], 0

        try:
            for base, frame, recs in self._frames(seg, 0):
                h = stored_frames(frame).frames[0][1]
                keyed = [r.key for r in recs if r.key is not None]
                newest_of = iter(self.keymap.latest(digests(keyed)).tolist())
                keep: list[tuple[int, Record]] = []
                for r in recs:
                    newest = next(newest_of) if r.key is not None else -1
                    if r.offset < map_end and newest > r.offset:
                        continue  # a later record of its key stays
                    if r.value is None and r.offset < old_clean and r.timestamp_ms < horizon:
                        continue  # a tombstone past delete_retention_ms
                    keep.append((r.offset, r))
                if len(keep) == len(recs):
                    if fd is None:
                        same_upto += len(frame)
                        continue
                    out = frame
                else:
                    removed += len(recs) - len(keep)
                    tombstones += sum(r.value is None for r in recs) - sum(
                        r.value is None for _o, r in keep
                    )
                    if fd is None:  # the first change: start the file with the same prefix
                        fd = fs.open(path, create=True)
                        fs.truncate(fd, 0, path)
                        for start in range(0, same_upto, READ_CHUNK):
                            pending.append(
                                seg.pread(min(READ_CHUNK, same_upto - start), Position(start))
                            )
                            pending_bytes += len(pending[-1])
                            flush()
                    if not keep and not (h.producer_id and base in producer_last):
                        continue
                    out = build_offset_frame(
                        base,
                        keep,
                        h.base_timestamp_ms,
                        # An empty kept batch: its records' times are gone.
                        max_timestamp_ms=None if keep else h.base_timestamp_ms,
                        last_offset=base + h.last_offset_delta,
                        producer_id=h.producer_id,
                        producer_epoch=h.producer_epoch,
                        base_sequence=h.base_sequence,
                    )
                pending.append(out)
                pending_bytes += len(out)
                if pending_bytes >= READ_CHUNK:
                    flush()
            if fd is None:
                return  # nothing removed
            flush()
            fs.fsync(fd, path)
        finally:
            if fd is not None:
                fs.close(fd)
        self.stats.records_removed += removed
        self.stats.tombstones_removed += tombstones
        self.stats.bytes_written += written
        try:
            if not written:
                lg.drop_cleaned_segment(seg)
                self.stats.segments_swapped += 1
            elif lg.swap_cleaned(seg, path):
                self._retired.append(seg)
                self.stats.segments_swapped += 1
        finally:
            if fs.exists(path):
                fs.unlink(path)
