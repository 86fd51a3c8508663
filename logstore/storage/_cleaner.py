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
- Both scans read ``READ_CHUNK`` (1 MiB) of frames at a time, locate the
  chunk's records and key spans with numpy (``wire`` ``locate_fast``, as
  columnar reads do), hash the keys vectorized (:class:`~._keymap.KeyHasher`,
  keyed afresh per run) and decide keep/drop with numpy: no per-record Python
  except re-encoding the kept records of a batch that lost some.
- Compressed batches are decompressed (once per chunk, bounded like every
  reader) and then located with numpy like the others.
- Rewritten batches keep their base offset, last offset, timestamps and
  producer fields; a batch that lost records becomes a format-2 frame
  (``build_offset_frame``, CRC recomputed), compressed again with the
  batch's codec at the topic's level for it (``compression_<codec>_level``;
  unless that does not make it smaller); an unchanged batch is copied byte
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

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from logstore._types import Position
from logstore.errors import CorruptRecordError
from logstore.wire import (
    CODEC_NONE,
    FetchedFrames,
    FrameHeader,
    Record,
    build_offset_frame,
    check_crc,
    compress,
    compressed_field,
    decode_header,
    decode_objects,
    readable_frames,
    stored_frames,
)
from logstore.wire._columns import _decode_upb, _Fallback, _gather, locate_fast
from logstore.wire._frame import ATTR_CODEC_MASK, with_records

from ._keymap import KeyHasher, KeyMap
from ._names import CLEANED_SUFFIX

if TYPE_CHECKING:
    from ._partition import PartitionLog
    from ._segment import Segment

log = logging.getLogger("logstore.storage")

_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]
_B = npt.NDArray[np.bool_]

#: Bytes of frames read per pread while cleaning (bounds the cleaner's
#: read buffer; a larger frame is read whole).
READ_CHUNK = 1 << 20
#: Digests gathered before one merge into the key map (~1.5 MiB of arrays).
MERGE_KEYS = 65_536


class _Cols(NamedTuple):
    """What the cleaner needs of a chunk's records: one entry per record."""

    offsets: _I64
    timestamps: _I64
    key_valid: _B
    value_valid: _B
    #: (n, 2) uint64 key digests (junk where the key is null).
    digests: _U64
    #: Index of each frame's first record, then the record count.
    bounds: list[int]


def _columns(chunk: bytes, frames: list[tuple[int, FrameHeader]], hasher: KeyHasher) -> _Cols:
    """The chunk's records located with numpy (``locate_fast``, as
    ``decode_columns`` and ``share_metadata`` do; upb for records not in
    canonical layout) and their keys hashed vectorized: no per-record Python
    in the common case. Empty batches hold no record and are skipped."""
    bounds = [0, *itertools.accumulate(h.record_count for _p, h in frames)]
    if any(h.attributes & ATTR_CODEC_MASK for _p, h in frames):
        # Compressed frames: decompressed (bounded, once per chunk) into their
        # uncompressed equivalents, same record counts, then located with
        # numpy like any others (upb on them was ~8x slower).
        plain = readable_frames(FetchedFrames(chunk, frames, 0, 0))
        chunk, frames = plain.buf, plain.frames
    full = [(p, h) for p, h in frames if h.record_count]
    if not full:
        z = np.zeros(0, np.int64)
        b = np.zeros(0, np.bool_)
        return _Cols(z, z, b, b, np.zeros((0, 2), np.uint64), bounds)
    try:
        loc = locate_fast(chunk, full, offset_deltas=True)
        keys, key_offsets = _gather(loc.arr, loc.kstart, loc.kstop, loc.bounds)
        return _Cols(
            loc.offsets,
            loc.timestamps,
            loc.key_valid,
            loc.value_valid,
            hasher.digests(keys, key_offsets),
            bounds,
        )
    except _Fallback:
        c = _decode_upb("", 0, chunk, full)
        return _Cols(
            c.offsets,
            c.timestamps_ms,
            c.key_valid,
            c.value_valid,
            hasher.digests(c.keys, c.key_offsets),
            bounds,
        )


def _recompressed(frame: bytes, codec: int, level: int | None) -> bytes:
    """A rewritten (format-2) frame with its records compressed again under the
    batch's original ``codec`` at ``level`` (the topic's level for it: the
    producer's is not stored), so compaction keeps what the topic stored
    compressed, compressed; the frame as it is when that does not make it
    smaller."""
    h = decode_header(frame)
    body = memoryview(frame)[h.records_start :]
    tail = compressed_field(compress(body, codec, level))
    if len(tail) >= len(body):
        return frame
    return with_records(frame, h, tail, h.attributes | codec)


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
        self.hasher = KeyHasher()
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
        # New secret bases per run: no one can craft keys that collide (_keymap).
        self.hasher = KeyHasher()
        try:
            self._clean_passes(lg, segs, now)
        finally:
            self.keymap.release()  # the map's memory is held only while cleaning
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
    def _chunks(
        self, seg: Segment, from_offset: int, *, mapping: bool = False
    ) -> Iterator[tuple[bytes, list[tuple[int, FrameHeader]]]]:
        """``(chunk, frames)``: the segment's frames that end at or after
        ``from_offset``, CRC-checked, one ``READ_CHUNK`` pread at a time (a
        larger frame is read whole); frame positions are within ``chunk``."""
        group: list[tuple[int, FrameHeader]] = []
        for p, h in seg.frames(Position(0), seg.size):
            if h.next_offset <= from_offset:
                continue
            if group and p + h.frame_size - group[0][0] > READ_CHUNK:
                yield self._read(seg, group, mapping)
                group = []
            group.append((p, h))
        if group:
            yield self._read(seg, group, mapping)

    def _read(
        self, seg: Segment, group: list[tuple[int, FrameHeader]], mapping: bool
    ) -> tuple[bytes, list[tuple[int, FrameHeader]]]:
        start = group[0][0]
        end = group[-1][0] + group[-1][1].frame_size
        chunk = seg.pread(end - start, Position(start))
        self.stats.bytes_read += len(chunk)
        if mapping:
            self.stats.bytes_mapped += len(chunk)
        self.throttle.add(len(chunk))
        frames = [(p - start, h) for p, h in group]
        for p, h in frames:
            check_crc(chunk[p : p + h.frame_size], h)
        return chunk, frames

    def _one_pass(self, lg: PartitionLog, segs: list[Segment], now: int) -> None:
        self.stats.passes += 1
        first_dirty = max(lg.cleaned_offset, segs[0].base_offset)
        keymap = self.keymap
        keymap.reset(first_dirty, segs[-1].next_offset - first_dirty)
        map_end = first_dirty
        # Chunks' digests are merged into the map MERGE_KEYS at a time. If a
        # merge overflows, its frames are retried one by one, so the pass still
        # ends exactly at the last frame that fit. Each entry: digests, offsets,
        # per-frame bounds into them, per-frame next offsets.
        pending: list[tuple[_U64, _I64, list[int], list[int]]] = []
        pending_n = 0

        def merge() -> bool:
            nonlocal map_end, pending, pending_n
            if not pending:
                return True
            batch = pending
            pending, pending_n = [], 0
            keys = np.concatenate([k for k, _o, _b, _e in batch])
            offs = np.concatenate([o for _k, o, _b, _e in batch])
            if keymap.add(keys, offs):
                map_end = batch[-1][3][-1]
                return True
            for k, o, bounds, ends in batch:
                for (lo, hi), end in zip(itertools.pairwise(bounds), ends, strict=True):
                    if not keymap.add(k[lo:hi], o[lo:hi]):
                        return False
                    map_end = end
            return True  # pragma: no cover - the whole group failed but each part fit

        full = False
        for seg in segs:
            if seg.next_offset <= first_dirty:
                continue
            for chunk, frames in self._chunks(seg, first_dirty, mapping=True):
                cols = _columns(chunk, frames, self.hasher)
                # A null key (a topic that was not compacted before) is never
                # deduplicated: it is kept, as nothing can supersede it.
                sel = (cols.offsets >= first_dirty) & cols.key_valid
                cum = np.zeros(len(sel) + 1, np.int64)
                np.cumsum(sel, out=cum[1:])
                pending.append(
                    (
                        cols.digests[sel],
                        cols.offsets[sel],
                        cum[cols.bounds].tolist(),
                        [h.next_offset for _p, h in frames],
                    )
                )
                pending_n += int(cum[-1])
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
            for chunk, frames in self._chunks(seg, 0):
                cols = _columns(chunk, frames, self.hasher)
                offsets = cols.offsets
                newest = np.full(len(offsets), -1, np.int64)
                newest[cols.key_valid] = self.keymap.latest(cols.digests[cols.key_valid])
                # a later record of its key stays
                drop = (offsets < map_end) & (newest > offsets)
                # a tombstone past delete_retention_ms
                tomb = ~cols.value_valid
                drop |= tomb & (offsets < old_clean) & (cols.timestamps < horizon)
                cum = np.zeros(len(drop) + 1, np.int64)
                np.cumsum(drop, out=cum[1:])
                cum_t = np.zeros(len(drop) + 1, np.int64)
                np.cumsum(drop & tomb, out=cum_t[1:])
                bounds = cols.bounds
                gone = (cum[bounds[1:]] - cum[bounds[:-1]]).tolist()
                gone_t = (cum_t[bounds[1:]] - cum_t[bounds[:-1]]).tolist()
                for k, (p, h) in enumerate(frames):
                    frame = chunk[p : p + h.frame_size]
                    if not gone[k]:
                        if fd is None:
                            same_upto += len(frame)
                            continue
                        out = frame
                    else:
                        removed += gone[k]
                        tombstones += gone_t[k]
                        if fd is None:  # the first change: start the file with the same prefix
                            fd = fs.open(path, create=True)
                            fs.truncate(fd, 0, path)
                            for start in range(0, same_upto, READ_CHUNK):
                                pending.append(
                                    seg.pread(min(READ_CHUNK, same_upto - start), Position(start))
                                )
                                pending_bytes += len(pending[-1])
                                flush()
                        base = h.base_offset
                        if gone[k] == h.record_count:
                            if not (h.producer_id and base in producer_last):
                                continue
                            keep: list[tuple[int, Record]] = []
                        else:
                            # Only a batch that keeps some records is decoded
                            # (to re-encode them with their offset deltas).
                            dropped = drop[bounds[k] : bounds[k + 1]].tolist()
                            recs = decode_objects(stored_frames(frame), 0)
                            pairs = zip(recs, dropped, strict=True)
                            keep = [(r.offset, r) for r, d in pairs if not d]
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
                        if keep and h.codec != CODEC_NONE:
                            out = _recompressed(out, h.codec, lg.config.level_for(h.codec))
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
