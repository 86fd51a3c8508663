"""The cleaner checkpoint (``cleaner-offset-checkpoint``): each compacted partition's
cleaned point survives a restart, so the first clean after it maps only the dirty
section; a missing or damaged file means "clean from the start", never a loss."""

from __future__ import annotations

import random

from logstore import Store
from logstore.config import StoreConfig
from logstore.wire import Record
from tests.simdisk import SimDisk
from tests.storagehelp import ROOT, sim_disk

T0 = 1_700_000_000_000
COMPACT = {"cleanup_policy": "compact", "segment_bytes": 600, "delete_retention_ms": 0}
CKPT = f"{ROOT}/cleaner-offset-checkpoint"


def _open(disk: SimDisk) -> Store:
    return Store.open(ROOT, StoreConfig(), fs=disk)


def _fill(store: Store, first: int, n: int) -> None:
    for i in range(first, first + n):
        store.append("c", 0, [Record(f"v{i}".encode() * 8, key=f"k{i % 6}".encode())])


def _latest(store: Store) -> dict[bytes, bytes | None]:
    start, end = store.offsets("c", 0)
    out: dict[bytes, bytes | None] = {}
    while start < end:
        recs = store.read("c", 0, start)
        if not recs:
            break
        for r in recs:
            assert r.key is not None
            out[r.key] = r.value
        start = recs[-1].offset + 1
    return out


def _second_clean(restart: str) -> tuple[int, float, int, int, int]:
    """Clean, append a dirty section, maybe restart (``"none"``, ``"close"`` or
    ``"power"``), clean again: (cleaned point and dirty ratio after the restart, the
    second clean's key-map bytes and all bytes read, the dirty bytes it had)."""
    disk = sim_disk()
    store = _open(disk)
    store.create_topic("c", 1, {**COMPACT, "min_cleanable_dirty_ratio": 0.3})
    _fill(store, 0, 60)
    store.partition("c", 0).roll()
    assert store.clean(T0 * 2) == 1
    _fill(store, 60, 30)
    store.partition("c", 0).roll()
    lg = store.partition("c", 0)
    point, ratio = lg.cleaned_offset, store.dirty_ratio("c", 0)
    dirty = sum(s.size for s in lg.segments[:-1] if s.next_offset > point)
    if restart == "close":
        store.close()
        store = _open(disk)
    elif restart == "power":
        store.flush()
        store = _open(disk.power_cut(random.Random(1)))
    lg = store.partition("c", 0)
    after = (lg.cleaned_offset, store.dirty_ratio("c", 0))
    assert after == (point, ratio), f"{restart}: {after} != {(point, ratio)}"
    read0, mapped0 = store.cleaner.stats.bytes_read, store.cleaner.stats.bytes_mapped
    assert store.clean(T0 * 2) == 1
    got = (
        point,
        ratio,
        store.cleaner.stats.bytes_mapped - mapped0,
        store.cleaner.stats.bytes_read - read0,
        dirty,
    )
    assert _latest(store) == {f"k{i % 6}".encode(): f"v{i}".encode() * 8 for i in range(84, 90)}
    store.close()
    return got


def test_restart_keeps_cleaned_point_and_next_clean_maps_only_dirty() -> None:
    """After a clean close or a power cut, the cleaned point and the dirty ratio are
    what they were before, and the next clean reads exactly what it would have read
    without the restart: its key map covers only the dirty section."""
    base = _second_clean("none")
    point, ratio, mapped, _read, dirty = base
    assert point > 0 and 0.3 < ratio < 1.0
    assert mapped == dirty  # the map is built from the dirty section alone
    assert _second_clean("close") == base
    assert _second_clean("power") == base


def test_missing_or_damaged_checkpoint_cleans_from_the_start() -> None:
    """A data directory without the file (an older one) or with a damaged one opens,
    every compacted partition dirty from its start; the next clean keeps every key's
    latest record."""
    for damage in (None, b"garbage\n", b"0\n5\nc 0 12\n"):
        disk = sim_disk()
        store = _open(disk)
        store.create_topic("c", 1, COMPACT)
        _fill(store, 0, 60)
        store.partition("c", 0).roll()
        store.clean(T0 * 2)
        want = _latest(store)
        store.close()
        assert disk.exists(CKPT)
        if damage is None:
            disk.unlink(CKPT)
        else:
            disk.write_file(CKPT, damage)
        store = _open(disk)
        assert store.partition("c", 0).cleaned_offset == 0
        assert store.dirty_ratio("c", 0) == 1.0
        assert _latest(store) == want
        assert store.clean(T0 * 2) == 1
        assert _latest(store) == want
        store.close()


def test_truncation_and_recreated_topic_lower_the_persisted_point() -> None:
    """A truncation below the cleaned point lowers it on disk at once, and a topic
    deleted and created again under its name starts with no cleaned point."""
    disk = sim_disk()
    store = _open(disk)
    store.create_topic("c", 1, COMPACT)
    _fill(store, 0, 60)
    store.partition("c", 0).roll()
    store.clean(T0 * 2)
    lg = store.partition("c", 0)
    point = lg.cleaned_offset
    cut = (lg.log_start_offset + point) // 2
    assert lg.log_start_offset < cut < point
    lg.truncate_to(cut)
    assert lg.cleaned_offset <= cut
    crashed = _open(disk.power_cut(random.Random(2)))
    assert crashed.partition("c", 0).cleaned_offset <= cut
    crashed.close()
    store.delete_topic("c")
    store.create_topic("c", 1, COMPACT)
    store.close()
    store = _open(disk)
    assert store.partition("c", 0).cleaned_offset == 0
    store.close()
