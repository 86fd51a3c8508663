"""Loading a partition directory: its segments, checked as a crash requires.

``load_segments`` lists the directory (strict names; leftover ``*.tmp`` and
indexes without a log are deleted), loads every segment and decides what to
trust:

- after a clean shutdown, nothing is scanned but the active segment's tail
  from its last index entry (at most one index interval): if its frames do
  not end exactly at the end of the file and at the checkpointed end offset
  (garbage after the last frame; a checkpoint written by a partition whose
  fsync had failed), the partition is recovered as after a crash;
- after a crash, segments wholly below the recovery point are trusted; from
  the recovery point on every frame is checked (head, CRC32C, increasing
  offsets: gaps within and between batches and segments are legal, a
  compacted log has them) and indexed as if appended. The first bad frame and everything
  after it are a torn tail: truncated, with one WARN line. With ``strict_segment_ends``
  (a topic that is not compacted) a sealed segment whose frames end cleanly *before* the
  next segment's base is a torn tail too: a roll fsyncs nothing (``_partition``, "Rolls"),
  so a power cut can keep a later segment's bytes and lose the end of an earlier one, and
  only a cleaner (compacted topics, whose rolls still fsync) leaves such a gap on purpose;
  the later segments are deleted, so records are lost only as a suffix of what was not
  acknowledged. A frame that
  cannot be reached *before* the recovery point is corruption: nothing is
  truncated, reads of that range raise CorruptRecordError, later segments
  are kept and checked as usual, and (when there is none) appends continue
  in a new segment past every offset the damaged file may hold (frames after
  the damage are found by a scan for frame heads), so no acknowledged offset
  is reused.

The result is handed to the partition, which publishes the segments; nothing
else is shared while this runs (single-threaded).
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass

from logstore._types import Offset, Position
from logstore.errors import CorruptRecordError

from ._fs import FileSystem
from ._index import IndexCache
from ._names import FileKind, parse_segment_file, segment_file
from ._segment import HandleCache, Segment

log = logging.getLogger("logstore.storage")


@dataclass(frozen=True)
class LoadedLog:
    """What ``load_segments`` found."""

    segments: list[Segment]
    #: Offsets of the producer-state snapshots, sorted.
    snapshots: list[int]
    #: Whether the clean shutdown was trusted (else: recovered as after a crash).
    clean: bool
    #: Files may exist in the page cache only: fsync the directory before
    #: the first acknowledgement into them.
    dir_dirty: bool


def load_segments(
    fs: FileSystem,
    directory: str,
    name: str,
    handles: HandleCache,
    index_cache: IndexCache,
    index_interval_bytes: int,
    now_ms: int,
    *,
    clean: bool,
    recovery_point: int,
    log_start_offset: int,
    strict_segment_ends: bool = False,
) -> LoadedLog:
    """Load and check the segments of ``directory`` (see the module docstring)."""
    fs.mkdir(directory)
    log_bases: list[int] = []
    snapshots: list[int] = []
    index_files: set[int] = set()
    for entry in fs.listdir(directory):
        parsed = parse_segment_file(directory, entry)
        if parsed is None:
            fs.unlink(os.path.join(directory, entry))  # leftover *.tmp
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
    loader = _Loader(fs, directory, name, handles, index_cache, index_interval_bytes, now_ms)
    loader.strict_segment_ends = strict_segment_ends
    for i, base in enumerate(log_bases):
        last = i + 1 == len(log_bases)
        nxt = (recovery_point if clean else None) if last else log_bases[i + 1]
        seg = Segment.load(fs, directory, base, handles, index_cache, nxt, now_ms)
        seg.sealed = not last
        loader.add(seg)
    if not loader.segments:
        loader.create(max(recovery_point, log_start_offset))
    if clean and not loader.clean_tail_matches(recovery_point):
        clean = False
    if clean:
        loader.segments[-1].resume_after_clean_open()
    else:
        loader.dir_dirty = True
        loader.recover(Offset(recovery_point))
    return LoadedLog(loader.segments, sorted(snapshots), clean, loader.dir_dirty)


class _Loader:
    """The segment list being loaded and checked."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        name: str,
        handles: HandleCache,
        index_cache: IndexCache,
        index_interval_bytes: int,
        now_ms: int,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.name = name
        self.handles = handles
        self.index_cache = index_cache
        self.interval = index_interval_bytes
        self.now_ms = now_ms
        self.segments: list[Segment] = []
        self.dir_dirty = False
        self.strict_segment_ends = False

    def add(self, seg: Segment) -> None:
        seg.index_interval_bytes = self.interval  # recovery indexes by the topic's rule
        self.segments.append(seg)

    def create(self, base: int) -> None:
        seg = Segment.create(
            self.fs, self.directory, base, self.handles, self.index_cache, self.now_ms
        )
        self.add(seg)
        self.dir_dirty = True

    def clean_tail_matches(self, recovery_point: int) -> bool:
        """Whether, after a clean shutdown, the active segment's frames end
        exactly at the end of its file and at the checkpointed end offset."""
        act = self.segments[-1]
        if act.size == 0:
            ok = recovery_point <= act.base_offset
            tail: int | None = act.base_offset
        else:
            tail = act.tail_next_offset()
            ok = tail == recovery_point
        if not ok:
            log.warning(
                "%s: clean-shutdown marker present but %s ends at offset %s, not at the "
                "checkpointed %d: recovering as after a crash",
                self.name, os.path.basename(act.log_path),
                "an unparseable frame" if tail is None else tail, recovery_point,
            )  # fmt: skip
        return ok

    def recover(self, recovery_point: Offset) -> None:
        """Re-check everything from the recovery point."""
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
        start_pos = Position(0)
        if recovery_point > rp_seg.base_offset:
            try:
                start_pos = rp_seg.boundary_at(recovery_point)
            except CorruptRecordError as exc:
                self._corrupt_before(k, recovery_point, str(exc))
                return
        else:
            rp_seg.forget_indexes()
        # 2. Check every frame after it, segment by segment.
        self._check_frames_from(k, start_pos, recovery_point)

    def _check_frames_from(self, k: int, start_pos: Position, expected_offset: Offset) -> None:
        """Check every frame from byte ``start_pos`` of segment ``k`` on, which
        must start at ``expected_offset``; truncate a torn tail."""
        segs = self.segments
        for j in range(k, len(segs)):
            seg = segs[j]
            pos = start_pos if j == k else Position(0)
            expected = expected_offset if j == k else seg.base_offset
            if j > k:
                seg.forget_indexes()
                if seg.base_offset < segs[j - 1].next_offset:
                    self._drop_from(
                        j,
                        f"segment base {seg.base_offset} overlaps the previous segment, which "
                        f"ends at {segs[j - 1].next_offset}",
                    )
                    return
            bad = seg.recover_from(pos, expected)
            if bad is not None:
                dropped = self.fs.file_size(seg.log_path) - seg.size
                log.warning(
                    "%s: torn tail truncated at offset %d (byte %d of %s): %d bytes dropped (%s)",
                    self.name, seg.next_offset, seg.size, os.path.basename(seg.log_path),
                    dropped, bad,
                )  # fmt: skip
                seg.truncate_at(seg.size, seg.next_offset)
                self._drop_from(j + 1, "after a torn tail")
                return
            if self.strict_segment_ends and j + 1 < len(segs):
                nxt = segs[j + 1].base_offset
                if seg.next_offset < nxt:
                    log.warning(
                        "%s: torn tail: %s ends at offset %d, before the next segment's base %d "
                        "(its last frames were not durable)",
                        self.name, os.path.basename(seg.log_path), seg.next_offset, nxt,
                    )  # fmt: skip
                    self._drop_from(j + 1, "after a torn tail")
                    return
            seg.sealed = j + 1 < len(segs)

    def _corrupt_before(self, k: int, recovery_point: Offset, why: str) -> None:
        """Data before the recovery point is unreachable: keep it (reads of it
        report corruption). Later segments are kept and checked as usual (they
        hold acknowledged records); without one, appends continue in a new
        segment past every offset the damaged file may hold
        (``Segment.offset_bound``), so no acknowledged offset is reused."""
        segs = self.segments
        seg = segs[k]
        seg.damaged = True
        if k + 1 < len(segs):
            end = segs[k + 1].base_offset
            log.error(
                "%s: CORRUPTION before the recovery point %d in %s: %s; offsets %d..%d may be "
                "unreadable; nothing was truncated and the %d later segment(s) are kept",
                self.name, recovery_point, os.path.basename(seg.log_path), why,
                seg.base_offset, end - 1, len(segs) - k - 1,
            )  # fmt: skip
            seg.next_offset = end
            seg.sealed = True
            self._check_frames_from(k + 1, Position(0), end)
            return
        # Frames after the damage may hold records acknowledged after the last
        # checkpoint (fsynced, but the recovery point is written at most every
        # recovery_checkpoint_interval_ms): appends continue past every offset
        # the file may hold, never at the recovery point.
        end = Offset(max(recovery_point, seg.offset_bound()))
        log.error(
            "%s: CORRUPTION before the recovery point %d in %s: %s; offsets %d..%d are "
            "unreadable (%d of them after the recovery point), nothing was truncated, "
            "appends continue at %d",
            self.name, recovery_point, os.path.basename(seg.log_path), why,
            seg.base_offset, end - 1, end - recovery_point, end,
        )  # fmt: skip
        seg.next_offset = end
        seg.sealed = True
        self._drop_from(k + 1, "after corruption")
        self.create(end)

    def _drop_from(self, j: int, why: str) -> None:
        for seg in self.segments[j:]:
            log.warning("%s: deleting segment %s (%s)", self.name, seg.log_path, why)
            seg.delete()
        del self.segments[j:]
        self.segments[-1].sealed = False
