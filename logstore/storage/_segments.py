"""SegmentList: the ordered segments of one partition, as one immutable value.

Kafka's ``LogSegments``: an ordered map from base offset to segment that does
no I/O. A partition replaces its list as a whole (append a rolled segment,
drop a prefix after retention, keep a prefix after a truncation), never
mutates it, so a reader that took one list never pairs a segment with the
base offsets of another.

Invariants (checked by ``assert``): at least one segment once published;
base offsets strictly increase. ``floor(offset)`` is the index of the
segment that would hold ``offset``: the last one whose base is <= it
(-1 below the first).

Thread-safety: immutable, so any number of readers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from logstore._types import Offset

if TYPE_CHECKING:
    from ._segment import Segment


class SegmentList:
    """See the module docstring."""

    __slots__ = ("_bases", "_segments")

    def __init__(self, segments: Sequence[Segment] = ()) -> None:
        self._segments: tuple[Segment, ...] = tuple(segments)
        self._bases: tuple[int, ...] = tuple(s.base_offset for s in self._segments)
        assert all(a < b for a, b in zip(self._bases, self._bases[1:], strict=False))

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def __getitem__(self, i: int) -> Segment:
        return self._segments[i]

    @property
    def as_list(self) -> list[Segment]:
        """The segments, oldest first (a new list: callers may slice it)."""
        return list(self._segments)

    @property
    def active(self) -> Segment:
        """The last segment (the one appends go to)."""
        return self._segments[-1]

    def floor(self, offset: Offset) -> int:
        """Index of the last segment whose base offset is <= ``offset``; -1 if none."""
        return bisect.bisect_right(self._bases, offset) - 1
