"""SegmentList: an immutable ordered list of segments that does no I/O."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from logstore.storage._segments import SegmentList


def _segs(*bases: int) -> list[Any]:
    return [SimpleNamespace(base_offset=b) for b in bases]


def test_floor_finds_the_segment_that_would_hold_an_offset() -> None:
    """floor(o) is the last segment based at or below o; -1 below the first."""
    view = SegmentList(_segs(10, 20, 35))
    assert [view.floor(o) for o in (0, 9, 10, 19, 20, 34, 35, 10**9)] == [-1, -1, 0, 0, 1, 1, 2, 2]
    assert view.active.base_offset == 35 and len(view) == 3


def test_bases_must_increase() -> None:
    """A list whose base offsets do not strictly increase is a programmer error."""
    with pytest.raises(AssertionError):
        SegmentList(_segs(5, 5))
