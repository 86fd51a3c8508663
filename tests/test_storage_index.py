"""The sparse indexes' last entry: ``last()`` answers from a Python copy of the
last entry (every append reads it twice), and every change of the entries
other than an append must make it forget that copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from logstore._types import Position
from logstore.storage._fs import FileSystem
from logstore.storage._index import OFFSET_DTYPE, TIME_DTYPE, IndexCache, OffsetIndex, TimeIndex


def _offset_index(tmp_path: Path) -> OffsetIndex:
    return OffsetIndex(FileSystem(), str(tmp_path / "0.index"), IndexCache(1 << 20))


def _time_index(tmp_path: Path) -> TimeIndex:
    return TimeIndex(FileSystem(), str(tmp_path / "0.timeindex"), IndexCache(1 << 20))


def test_last_follows_appends(tmp_path: Path) -> None:
    idx, tix = _offset_index(tmp_path), _time_index(tmp_path)
    assert idx.last() == (0, 0) and tix.last() is None
    for i in range(1, 5):
        idx.append(i * 10, Position(i * 100))
        tix.append(1_000 + i, i * 10)
        assert idx.last() == (i * 10, i * 100)
        assert tix.last() == (1_000 + i, i * 10)
    idx.unmap()
    tix.unmap()


def test_appends_still_refuse_a_smaller_entry(tmp_path: Path) -> None:
    idx, tix = _offset_index(tmp_path), _time_index(tmp_path)
    idx.append(10, Position(100))
    tix.append(1_000, 10)
    with pytest.raises(AssertionError):
        idx.append(10, Position(200))
    with pytest.raises(AssertionError):
        tix.append(1_000, 20)
    idx.unmap()
    tix.unmap()


def test_truncate_and_reset_forget_the_last_entry(tmp_path: Path) -> None:
    idx, tix = _offset_index(tmp_path), _time_index(tmp_path)
    for i in range(1, 4):
        idx.append(i, Position(i * 8))
        tix.append(i * 5, i)
    idx.truncate_entries(1)
    tix.truncate_entries(2)
    assert idx.last() == (1, 8)
    assert tix.last() == (10, 2)
    # an append after a truncation is checked against the entry that remains
    idx.append(2, Position(9))
    assert idx.last() == (2, 9)
    idx.reset()
    tix.reset()
    assert idx.last() == (0, 0) and tix.last() is None
    idx.append(1, Position(1))  # smaller than anything before the reset: accepted
    assert idx.last() == (1, 1)
    idx.unmap()
    tix.unmap()


def test_replace_with_as_many_entries_is_seen(tmp_path: Path) -> None:
    """A rebuilt index of the same length: the entry count alone does not tell
    the copy is stale."""
    idx, tix = _offset_index(tmp_path), _time_index(tmp_path)
    idx.append(1, Position(10))
    idx.append(2, Position(20))
    tix.append(100, 1)
    tix.append(200, 2)
    assert idx.last() == (2, 20) and tix.last() == (200, 2)
    idx.replace(np.array([(5, 50), (6, 60)], dtype=OFFSET_DTYPE))
    tix.replace(np.array([(500, 5, 0), (600, 6, 0)], dtype=TIME_DTYPE))
    assert idx.last() == (6, 60)
    assert tix.last() == (600, 6)
    # sealed (a rebuild on first use after a restart writes the file)
    idx.seal()
    tix.seal()
    idx.replace(np.array([(8, 80), (9, 90)], dtype=OFFSET_DTYPE))
    tix.replace(np.array([(800, 8, 0), (900, 9, 0)], dtype=TIME_DTYPE))
    assert idx.last() == (9, 90)
    assert tix.last() == (900, 9)
    assert Path(idx.path).read_bytes() == np.array([(8, 80), (9, 90)], OFFSET_DTYPE).tobytes()


def test_sealed_index_reloaded_from_its_file(tmp_path: Path) -> None:
    """A sealed (unmapped) index loaded again after its file was rewritten."""
    idx = _offset_index(tmp_path)
    idx.append(1, Position(10))
    idx.append(2, Position(20))
    idx.seal()
    assert idx.last() == (2, 20)
    Path(idx.path).write_bytes(np.array([(7, 70)], dtype=OFFSET_DTYPE).tobytes())
    idx.cache.drop(idx._key)
    idx.load()
    assert idx.n == 1
    assert idx.last() == (7, 70)
