"""A partition's read cursor and the store's cache of frames cut by a read.

Why: a share fetch reads ``max_records`` (500) offsets from where the last
one stopped, and a producer's batch holds ~10,000 records of 100 B. Without
a cursor every such read looked its start offset up again through the
sparse index (``Segment.locate``: an index search, a 64 KiB read and a walk
of frame heads), read from there up to ``max_bytes`` (4 MiB) and CRC-checked
the whole batch again: twenty times per batch.

* :class:`ReadCursor` (one per partition, ``PartitionLog._cursor``): where
  the last read's last frame starts (position and base offset) and where the
  frame after it starts (position and offset). A read of an offset in that
  last frame, or of exactly the next offset while that position is inside the
  segment, starts there without the index.
* :class:`CutFrame` in the store-wide :class:`FrameCache` (bounded LRU, one
  entry per partition): the CRC-checked bytes of a read's last frame when the
  read stopped inside it (its ``stop_offset`` fell before the frame's end, so
  the reader comes back for the rest). A read of an offset in that frame is
  answered from these bytes: no read, no CRC. Only bounded reads (share
  fetches) stop inside a frame, so the Fetch path never fills the cache.

Validity: both carry the partition's **read generation**
(``PartitionLog._read_generation``), which every change that removes or
rewrites stored bytes moves (under the partition lock): a truncation (before
and after it cuts the file), a segment leaving or being replaced in the list
(retention, DeleteRecords, a cleaner's swap or drop: ``_set_segments``), and
a cleaner swap before it retires the old segment. Appends and rolls only add
bytes, so they leave it alone; a roll seals the cursor's segment, and a
position at that segment's end is not used (the next offset is in the next
segment: the index lookup finds it). A reader takes the generation before it
reads and stores the cursor with it, so a cursor built across a change is
stale at once; a reader checks the offsets (log start, high watermark) first
and the generation second, and serves a cached frame only if it ends at or
below the high watermark: at worst it answers as a read that ran just before
the change did, which the lock-free read path allows anyway (module
docstring of ``_partition``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from ._segment import Segment

#: Bytes of cut frames the store keeps over all partitions.
FRAME_CACHE_BYTES: Final = 64 << 20
#: A frame larger than this is not kept (it would crowd out the others).
FRAME_CACHE_MAX_FRAME: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class ReadCursor:
    """Where a partition's last read ended (module docstring)."""

    generation: int
    segment: Segment
    #: The last frame read: its position and base offset.
    last_position: int
    last_base: int
    #: The position after it and the offset after it.
    end_position: int
    next_offset: int

    def position_of(self, generation: int, offset: int) -> int | None:
        """The position to read ``offset`` from, or None when the cursor
        does not know it (stale, or another place in the log)."""
        if generation != self.generation:
            return None
        if offset == self.next_offset and self.end_position < self.segment.size:
            return self.end_position
        if self.last_base <= offset < self.next_offset:
            return self.last_position
        return None


@dataclass(frozen=True, slots=True)
class CutFrame:
    """The CRC-checked bytes of one frame a read stopped inside."""

    generation: int
    segment: Segment
    position: int
    base_offset: int
    next_offset: int
    data: bytes
    #: Facts readers derived from ``data`` (``FetchResult.memo``).
    memo: dict[object, object]

    def holds(self, generation: int, offset: int, high_watermark: int) -> bool:
        return (
            generation == self.generation
            and self.base_offset <= offset < self.next_offset
            and self.next_offset <= high_watermark
        )


class FrameCache:
    """Store-wide, bounded (``max_bytes``): the last :class:`CutFrame` of each
    partition, least recently used dropped first. Thread-safe."""

    def __init__(self, max_bytes: int = FRAME_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._frames: OrderedDict[object, CutFrame] = OrderedDict()
        self._bytes = 0
        #: Reads answered from the cache (for tests and metrics).
        self.hits = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, owner: object) -> CutFrame | None:
        with self._lock:
            f = self._frames.get(owner)
            if f is not None:
                self._frames.move_to_end(owner)
            return f

    def put(self, owner: object, frame: CutFrame) -> None:
        if len(frame.data) > min(FRAME_CACHE_MAX_FRAME, self.max_bytes):
            self.drop(owner)
            return
        with self._lock:
            old = self._frames.pop(owner, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._frames[owner] = frame
            self._bytes += len(frame.data)
            while self._bytes > self.max_bytes:
                _, gone = self._frames.popitem(last=False)
                self._bytes -= len(gone.data)

    def drop(self, owner: object) -> None:
        with self._lock:
            old = self._frames.pop(owner, None)
            if old is not None:
                self._bytes -= len(old.data)

    def count_hit(self) -> None:
        self.hits += 1  # approximate under threads: a statistic
