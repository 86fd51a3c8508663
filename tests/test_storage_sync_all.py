"""``Store.flush`` of many partitions: one ``syncfs`` (``FileSystem.sync_all``)
instead of a fdatasync per partition, and everything it covered durable after
a simulated power cut; a failed ``syncfs`` falls back to the per-partition
fsyncs; the first flush, which opens the handle, still fsyncs one by one."""

from __future__ import annotations

import errno
from pathlib import Path

from logstore.config import StoreConfig
from logstore.storage import Store
from logstore.storage._fs import FileSystem
from logstore.storage._store import SYNC_ALL_MIN_PARTITIONS
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import encode_values, split_produce_request
from tests.simdisk import SimDisk

ROOT = "/data"
PARTS = SYNC_ALL_MIN_PARTITIONS + 4
CONFIG = StoreConfig(recovery_checkpoint_interval_ms=3_600_000)


def _batch(n: int, size: int = 1) -> tuple[bytes, int, int]:
    raw = pb.ProduceRequest(topic="t").SerializeToString() + encode_values([b"v" * size] * n)
    split = split_produce_request(raw)
    return bytes(split.records), split.record_count, split.max_timestamp_ms


def _open(disk: SimDisk, parts: int = PARTS, **topic: object) -> Store:
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    store = Store.open(ROOT, CONFIG, fs=disk)
    store.create_topic("t", partitions=parts, config=topic or None)
    return store


def _append_all(store: Store, parts: int = PARTS, n: int = 3, size: int = 1) -> None:
    records, count, max_ts = _batch(n, size)
    for p in range(parts):
        store.append_raw("t", p, records, count, max_timestamp_ms=max_ts)


def _offsets(store: Store, parts: int = PARTS) -> list[list[int]]:
    """Every record's offset, read back partition by partition (a frame lost
    below the recovery point raises: the end offset alone would not show it)."""
    out = []
    for p in range(parts):
        got: list[int] = []
        while len(got) < store.partition("t", p).log_end_offset:
            got += [r.offset for r in store.read("t", p, len(got))]
        out.append(got)
    return out


def test_second_flush_is_one_syncfs_and_survives_a_power_cut() -> None:
    disk = SimDisk(seed=11)
    store = _open(disk)
    _append_all(store)
    store.flush()  # opens the handle; fsyncs partition by partition
    assert disk.stats.calls["open_sync_all"] == 1
    assert disk.stats.calls["sync_all"] == 0
    _append_all(store)
    fsyncs = disk.stats.calls["fsync"]
    store.flush()
    assert disk.stats.calls["sync_all"] == 1
    # No segment fsynced one by one (what is left: the checkpoint file's own).
    assert disk.stats.calls["fsync"] - fsyncs <= 1
    assert [store.partition("t", p).flushed_offset for p in range(PARTS)] == [6] * PARTS
    # Without the syncfs the second batches were only in the page cache.
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, CONFIG, fs=after)
    assert _offsets(reopened) == [list(range(6))] * PARTS
    reopened.close()
    store.close()
    assert disk.stats.calls["close_sync_all"] == 1


def test_a_failed_syncfs_falls_back_to_fsyncs() -> None:
    disk = SimDisk(seed=12)
    store = _open(disk)
    _append_all(store)
    store.flush()
    _append_all(store)
    disk.fail_next("sync_all", errno.EIO)
    fsyncs = disk.stats.calls["fsync"]
    store.flush()  # no error: the partitions' own fsyncs made it durable
    assert disk.stats.calls["fsync"] - fsyncs >= PARTS
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, CONFIG, fs=after)
    assert _offsets(reopened) == [list(range(6))] * PARTS
    reopened.close()
    _append_all(store)  # no partition was failed by the syncfs error
    store.close()


def test_syncfs_covers_a_rolled_segment_and_its_name() -> None:
    """A roll between two flushes: the sealed segment and the new file's
    directory entry are made durable by the syncfs (no fsync_dir of the
    partition), and the records in the new segment survive a power cut that
    keeps no directory change that was not made durable."""
    disk = SimDisk(seed=13)
    store = _open(disk, segment_bytes=1024)
    _append_all(store, n=3, size=300)
    store.flush()
    _append_all(store, n=3, size=300)  # does not fit: each partition rolls
    assert all(len(store.partition("t", p).segments) == 2 for p in range(PARTS))
    dir_fsyncs = disk.stats.calls["fsync_dir"]
    store.flush()
    assert disk.stats.calls["sync_all"] == 1
    assert disk.stats.calls["fsync_dir"] - dir_fsyncs <= 1  # the checkpoint's directory
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, CONFIG, fs=after)
    assert _offsets(reopened) == [list(range(6))] * PARTS
    assert all(len(reopened.partition("t", p).segments) == 2 for p in range(PARTS))
    reopened.close()
    store.close()


def test_few_partitions_are_fsynced_one_by_one() -> None:
    disk = SimDisk(seed=14)
    parts = SYNC_ALL_MIN_PARTITIONS
    store = _open(disk, parts=parts)
    for _ in range(3):
        _append_all(store, parts=parts)
        store.flush()
    assert disk.stats.calls["open_sync_all"] == 0
    assert disk.stats.calls["sync_all"] == 0
    store.close()


def test_real_file_system_syncfs(tmp_path: Path) -> None:
    fs = FileSystem()
    handle = fs.open_sync_all(str(tmp_path))
    if handle is not None:  # Linux 5.8 or later
        fs.sync_all(handle, str(tmp_path))
        fs.close_sync_all(handle)
    store = Store.open(str(tmp_path / "data"), CONFIG)
    store.create_topic("t", partitions=PARTS)
    for _ in range(3):
        _append_all(store)
        store.flush()
    assert [store.partition("t", p).flushed_offset for p in range(PARTS)] == [9] * PARTS
    store.close()


def test_a_truncation_after_the_notes_marks_nothing() -> None:
    """A partition truncated between ``sync_work`` and ``mark_synced``: the noted
    end may name other records by then, so nothing is marked durable (its own
    fsync turn covers it) and the durable offset never passes the log end."""
    disk = SimDisk(seed=15)
    store = _open(disk, parts=1)
    _append_all(store, parts=1)
    lg = store.partition("t", 0)
    lg.flush()
    _append_all(store, parts=1)
    work = lg.sync_work()
    assert work is not None and work.target == 6
    lg.truncate_to(3)
    assert lg.mark_synced(work) == 0
    assert lg.flushed_offset <= lg.log_end_offset == 3
    store.close()


def test_appends_during_the_syncfs_are_left_to_the_next_flush() -> None:
    """Under a steady produce records arrive while the ``syncfs`` runs. The flush
    makes durable what was appended before it began, so those later records get
    no fsync of their own per partition (one each for 1,000 partitions, once a
    second, was most of the flusher's work): the next flush takes them."""
    disk = SimDisk(seed=16)
    store = _open(disk)
    _append_all(store)
    store.flush()  # opens the handle
    _append_all(store)
    syncfs = disk.sync_all

    def syncfs_then_appends(handle: int, path: str = "") -> None:
        syncfs(handle, path)
        _append_all(store)  # after the syncfs: not covered by it

    disk.sync_all = syncfs_then_appends  # type: ignore[method-assign]
    fsyncs = disk.stats.calls["fsync"]
    store.flush()
    assert disk.stats.calls["fsync"] - fsyncs <= 1  # the checkpoint file's own
    assert [store.partition("t", p).flushed_offset for p in range(PARTS)] == [6] * PARTS
    assert [store.partition("t", p).log_end_offset for p in range(PARTS)] == [9] * PARTS
    # What was appended before the flush survives; the later records may (the
    # page cache may have written them back before the cut) or may not.
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, CONFIG, fs=after)
    assert all(got[:6] == list(range(6)) for got in _offsets(reopened))
    reopened.close()
    disk.sync_all = syncfs  # type: ignore[method-assign]
    store.flush()  # the next flush takes them
    assert [store.partition("t", p).flushed_offset for p in range(PARTS)] == [9] * PARTS
    store.close()
