"""A read that took the segment list before a cleaner swap and reads the replaced segment
after it: it gets the right records, and it never loads the new segment's index against
the old file, nor writes the old file's index where the new segment's lives."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from logstore import Store
from logstore.config import StoreConfig
from logstore.errors import CorruptRecordError
from logstore.storage._segment import Segment
from logstore.wire import Record, decode_header
from tests.storagehelp import ROOT, sim_disk

COMPACT = {
    "cleanup_policy": "compact",
    "segment_bytes": 4000,
    "index_interval_bytes": 64,
    "delete_retention_ms": 0,
}


def _entries_match_log(seg: Segment, raw: bytes) -> bool:
    """Whether every (relative offset, position) entry of an index file's bytes points at
    a frame of ``seg``'s current log with that base offset."""
    arr = np.frombuffer(raw[: len(raw) - len(raw) % 8], dtype=[("rel", "<u4"), ("pos", "<u4")])
    for rel, pos in arr.tolist():
        try:
            h = decode_header(seg.pread(80, pos))
        except CorruptRecordError:  # an entry pointing into the middle of a frame
            return False
        if h.base_offset != seg.base_offset + rel:
            return False
    return True


@pytest.mark.parametrize("cache_bytes", [0, 32 << 20])
def test_read_interleaved_with_swap_keeps_old_and_new_indexes_apart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cache_bytes: int
) -> None:
    """With no index cache (every lookup reads the index file) and with one: a read
    that holds the pre-swap segment while the swap happens returns the records it asked
    for, no index is rebuilt for a mismatch, and the new segment's index file and cached
    entries point at its own frames."""
    disk = sim_disk()
    store = Store.open(ROOT, StoreConfig(index_cache_bytes=cache_bytes), fs=disk)
    store.create_topic("c", 1, COMPACT)
    for i in range(200):
        # Keys u* are unique (kept); k* repeat (older ones removed): segments shrink.
        key = f"u{i}".encode() if i % 3 == 0 else f"k{i % 4}".encode()
        store.append("c", 0, [Record(f"v{i}".encode() * 6, key=key)])
    lg = store.partition("c", 0)
    lg.roll()
    target = lg.segments[1]
    wanted = target.base_offset + (target.next_offset - target.base_offset) * 3 // 4
    before = [(r.offset, r.value) for r in store.read("c", 0, wanted)][:3]
    real_locate = Segment.locate
    swapped: list[Segment] = []

    def locate_after_swap(self: Segment, offset: int) -> object:
        # The reader has its segment (the old list); the cleaner swaps it now.
        if self is target and not swapped:
            swapped.append(self)
            assert store.clean(force=True) == 1
            assert self not in lg.segments  # replaced: the reader holds the old one
        return real_locate(self, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(Segment, "locate", locate_after_swap)
    caplog.set_level(logging.DEBUG, logger="logstore.storage")
    caplog.clear()
    got = [(r.offset, r.value) for r in store.read("c", 0, wanted)][:3]
    monkeypatch.setattr(Segment, "locate", real_locate)
    assert swapped, "the interleaving did not happen"
    assert got == before
    rebuilt = [r.getMessage() for r in caplog.records if "does not match" in r.getMessage()]
    assert not rebuilt, rebuilt
    new = next(s for s in lg.segments if s.base_offset == target.base_offset)
    assert new.size < target.size  # it was rewritten
    assert _entries_match_log(new, disk.read_bytes(new.index.path))
    assert _entries_match_log(new, new.index.entries().tobytes())
    fresh = store.read("c", 0, wanted)  # the new segment: the cleaned records from there
    assert fresh and fresh[0].offset >= wanted
    assert all(r.value == f"v{r.offset}".encode() * 6 for r in fresh)
    store.close()


def test_replaced_segment_descriptor_outlives_its_readers_then_reads_move_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next clean run releases a replaced segment's descriptor only once no reader
    holds it (a reader mid-pread keeps reading the old file), and a read holding a list
    from before that release reads the cleaned segment instead."""
    disk = sim_disk()
    store = Store.open(ROOT, StoreConfig(index_cache_bytes=0), fs=disk)
    store.create_topic("c", 1, COMPACT)
    for i in range(200):
        key = f"u{i}".encode() if i % 3 == 0 else f"k{i % 4}".encode()
        store.append("c", 0, [Record(f"v{i}".encode() * 6, key=key)])
    lg = store.partition("c", 0)
    lg.roll()
    target = lg.segments[1]
    old_bytes = disk.read_bytes(target.log_path)
    assert store.clean(force=True) == 1
    assert target not in lg.segments
    fd = lg.handles.acquire(target)  # a reader in the middle of a pread
    store.clean(force=True)  # releases the previous run's replaced segments
    assert disk.pread(fd, len(old_bytes), 0) == old_bytes  # still open, still the old file
    lg.handles.release(target)
    assert target._fd is None  # closed with its last reader
    store.close()


def test_read_of_a_segment_replaced_before_the_previous_clean_reads_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read holding a segment list from before two clean runs (the replaced segment's
    descriptor released by the second) reads the cleaned segment, from the current list,
    instead of opening the new file at the path as if it were the old one."""
    disk = sim_disk()
    store = Store.open(ROOT, StoreConfig(index_cache_bytes=0), fs=disk)
    store.create_topic("c", 1, COMPACT)
    for i in range(200):
        key = f"u{i}".encode() if i % 3 == 0 else f"k{i % 4}".encode()
        store.append("c", 0, [Record(f"v{i}".encode() * 6, key=key)])
    lg = store.partition("c", 0)
    lg.roll()
    target = lg.segments[1]
    wanted = target.base_offset + 1
    real_locate = Segment.locate
    swapped: list[Segment] = []

    def locate_after_two_cleans(self: Segment, offset: int) -> object:
        if self is target and not swapped:
            swapped.append(self)
            assert store.clean(force=True) == 1
            store.clean(force=True)  # releases the previous run's replaced segments
        return real_locate(self, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(Segment, "locate", locate_after_two_cleans)
    got = store.read("c", 0, wanted)
    monkeypatch.setattr(Segment, "locate", real_locate)
    assert swapped
    assert got and got[0].offset >= wanted
    assert all(r.value == f"v{r.offset}".encode() * 6 for r in got)
    assert [(r.offset, r.value) for r in got] == [
        (r.offset, r.value) for r in store.read("c", 0, wanted)
    ]
    store.close()
