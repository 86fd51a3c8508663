"""The partition read cursor and the store's cut-frame cache (``logstore/storage/_read_cursor.py``).

A bounded read (a share fetch's ``stop_offset``) that continues where the last one
stopped skips the index lookup, and one inside the frame the last read stopped in is
answered from that frame's cached bytes. Each test here changes the log under a cursor
the way the module docstring says invalidates it (truncation, retention, DeleteRecords,
a cleaner's swap, a roll) and checks that the next read returns what a read without any
cursor returns; each fails if that change left the cursor or the cached frame valid.
"""

from __future__ import annotations

import pytest

from logstore import Store
from logstore.config import StoreConfig
from logstore.storage._read_cursor import CutFrame, FrameCache
from logstore.storage._segment import Segment
from logstore.wire import Record, decode_objects, stored_frames
from tests.storagehelp import ROOT, sim_disk


def _store(topic_config: dict[str, object] | None = None) -> Store:
    store = Store.open(ROOT, StoreConfig(), fs=sim_disk())
    store.create_topic("t", 1, topic_config or {})
    return store


def _batch(store: Store, n: int, tag: str, keys: list[bytes] | None = None) -> int:
    recs = [Record(f"{tag}{i}".encode(), key=None if keys is None else keys[i]) for i in range(n)]
    return store.append("t", 0, recs)


def _values(store: Store, offset: int, stop: int) -> list[tuple[int, bytes]]:
    """Records at ``offset``.. of one bounded read (as a share fetch reads)."""
    res = store.read_frames("t", 0, offset, 4 << 20, stop)
    return [(r.offset, r.value or b"") for r in decode_objects(stored_frames(res.data), offset)]


def _uncached(store: Store, offset: int, stop: int) -> list[tuple[int, bytes]]:
    """The same read with no cursor and no cache (what the log holds)."""
    lg = store.partition("t", 0)
    saved, lg.frame_cache = lg.frame_cache, None
    lg._cursor = None
    try:
        return _values(store, offset, stop)
    finally:
        lg.frame_cache = saved
        lg._cursor = None


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(Segment, name)

    def counted(self: Segment, *a: object, **kw: object) -> object:
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(Segment, name, counted)
    return calls


def test_continuing_reads_skip_the_index_and_reread_no_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty 50-offset reads through a 1,000-record batch: one index lookup and the
    file read once (the old path: twenty of each), the same records as without."""
    store = _store()
    _batch(store, 10, "a")
    _batch(store, 1000, "b")
    _batch(store, 10, "c")
    want = [_uncached(store, o, o + 50) for o in range(10, 1010, 50)]
    locates = _counting(monkeypatch, "locate")
    preads = _counting(monkeypatch, "pread")
    got = [_values(store, o, o + 50) for o in range(10, 1010, 50)]
    assert got == want
    assert len(locates) == 1
    assert len(preads) == 2  # the first read's lookup (frame heads) and its read; then none
    # ... and the read after the batch continues at the cursor: no lookup either
    locates.clear()
    assert _values(store, 1010, 1020) == [(1010 + i, f"c{i}".encode()) for i in range(10)]
    assert not locates


def test_small_batches_continue_at_the_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """One-record batches (a producer at linger 1 ms): each read starts where the last
    stopped, with no index lookup after the first."""
    store = _store({"index_interval_bytes": 64})
    for i in range(300):
        _batch(store, 1, f"s{i}-")
    want = [_uncached(store, o, o + 25) for o in range(0, 300, 25)]
    locates = _counting(monkeypatch, "locate")
    assert [_values(store, o, o + 25) for o in range(0, 300, 25)] == want
    assert len(locates) == 1


def test_truncation_invalidates_the_cut_frame() -> None:
    """A cached frame cut by truncation and replaced by new records at the same
    offsets (and file positions) is not served."""
    store = _store()
    _batch(store, 100, "a")
    _batch(store, 100, "old")
    assert _values(store, 100, 150)[0] == (100, b"old0")  # frame 100..199 cached
    store.partition("t", 0).truncate_to(100)
    _batch(store, 100, "new")
    got = _values(store, 120, 150)
    assert got == _uncached(store, 120, 150)
    assert got[0] == (120, b"new20")


def test_truncation_invalidates_the_position_cursor() -> None:
    """After truncating to a cursor's next offset and appending frames of another
    size, a read of that offset finds the new frame, not a stale position."""
    store = _store()
    _batch(store, 40, "a")
    _batch(store, 40, "b")
    _values(store, 0, 40)  # cursor: next offset 40 at the end of frame a
    lg = store.partition("t", 0)
    lg.truncate_to(0)
    _batch(store, 7, "x")
    _batch(store, 50, "y")
    got = _values(store, 40, 57)
    assert got == _uncached(store, 40, 57)
    assert got[0] == (40, b"y33")


def test_retention_and_delete_records_invalidate() -> None:
    """Segments deleted below the log start: the cursor and cut frame into them go,
    reads past the start are as without a cursor, reads below it are refused."""
    store = _store({"segment_bytes": 2000})
    for i in range(60):
        _batch(store, 20, f"r{i}-")
    lg = store.partition("t", 0)
    assert len(lg.segments) > 3
    _values(store, 5, 10)  # a cut frame in the first segment
    gen = lg._read_generation
    cut = store.delete_records("t", 0, lg.segments[2].base_offset)
    assert lg._read_generation > gen and lg._cursor is None
    assert store.frame_cache.get(lg) is None
    assert _values(store, cut + 3, cut + 9) == _uncached(store, cut + 3, cut + 9)
    with pytest.raises(Exception, match="out of range"):
        _values(store, 5, 10)


def test_cleaner_swap_invalidates_the_cut_frame() -> None:
    """A compacted topic: the cut frame of a batch whose duplicate keys the cleaner
    then removes is not served after the swap; the read returns the cleaned batch."""
    compact = {"cleanup_policy": "compact", "delete_retention_ms": 0, "segment_bytes": 1 << 20}
    store = _store(compact)
    # even offsets unique keys (kept), odd ones k0..k4 (superseded by the next batch)
    keys = [f"u{i}".encode() if i % 2 == 0 else f"k{i % 5}".encode() for i in range(50)]
    _batch(store, 50, "a", keys)
    _batch(store, 5, "b", [f"k{i}".encode() for i in range(5)])
    lg = store.partition("t", 0)
    lg.roll()
    _batch(store, 1, "c", [b"u-last"])
    before = _values(store, 10, 20)
    assert (11, b"a11") in before  # the whole batch, cached as a cut frame
    assert store.clean(force=True) >= 1
    got = _values(store, 11, 30)
    assert got == _uncached(store, 11, 30)
    assert all(o % 2 == 0 for o, _ in got if o < 50), got


def test_roll_cursor_at_segment_end_goes_to_the_next_segment() -> None:
    """A cursor at the end of the active segment, which a roll then seals: the next
    offset is read from the new segment."""
    store = _store()
    _batch(store, 30, "a")
    assert _values(store, 0, 30)[-1] == (29, b"a29")  # cursor at the segment's end
    store.partition("t", 0).roll()
    _batch(store, 30, "b")
    got = _values(store, 30, 45)
    assert got == _uncached(store, 30, 45)
    assert got[0] == (30, b"b0")


def test_roll_keeps_a_cut_frame_of_the_sealed_segment() -> None:
    """A roll adds a segment and changes no stored byte: the cut frame stays valid and
    the read continues into the new segment."""
    store = _store()
    _batch(store, 100, "a")
    _values(store, 0, 40)
    lg = store.partition("t", 0)
    gen = lg._read_generation
    lg.roll()
    _batch(store, 10, "b")
    assert lg._read_generation == gen
    hits = store.frame_cache.hits
    got = _values(store, 40, 105)
    assert store.frame_cache.hits == hits + 1
    assert got == _uncached(store, 40, 105)
    assert got[-1] == (99, b"a99")  # a read ends at its segment's end
    assert _values(store, 100, 105) == [(100 + i, f"b{i}".encode()) for i in range(10)]


def test_frame_cache_is_bounded() -> None:
    """Least recently used first; a frame over the bound is not kept."""
    cache = FrameCache(max_bytes=1000)
    store = _store()
    seg = store.partition("t", 0).segments[0]

    def frame(n: int) -> CutFrame:
        return CutFrame(0, seg, 0, 0, 1, b"x" * n, {})

    a, b, c = object(), object(), object()
    cache.put(a, frame(400))
    cache.put(b, frame(400))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, frame(400))
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.size_bytes == 800
    cache.put(a, frame(2000))  # too big: dropped, not kept
    assert cache.get(a) is None and cache.size_bytes == 400


def test_read_cached_answers_only_from_the_cut_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_cached`` (the share fetch's try on the event loop) returns exactly what
    ``read_frames`` returns when the cut frame holds the read, reads no file, and is
    None otherwise: no cached frame, a read going past the frame, a stale frame."""
    store = _store()
    _batch(store, 100, "a")
    _batch(store, 10, "b")
    assert store.read_cached("t", 0, 0, 50) is None  # nothing cached yet
    store.read_frames("t", 0, 0, 4 << 20, 50)  # caches frame 0..99
    preads = _counting(monkeypatch, "pread")
    hit = store.read_cached("t", 0, 50, 80)
    assert hit is not None and not preads
    assert hit == store.read_frames("t", 0, 50, 4 << 20, 80)
    assert store.read_cached("t", 0, 50, 105) is None  # would continue into batch b
    store.partition("t", 0).truncate_to(0)
    _batch(store, 100, "d")
    assert store.read_cached("t", 0, 50, 80) is None  # invalidated by the truncation
    assert _values(store, 50, 80)[0] == (50, b"d50")
