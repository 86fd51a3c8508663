"""A recovery checkpoint writes the changed partitions' producer snapshots
several at a time (``Store._snapshot_changed_producers``), each still atomic
and durable, and the recovery-point file only after all of them."""

from __future__ import annotations

import threading

import pytest

from logstore.config import StoreConfig
from logstore.errors import StorageError
from logstore.storage import Store
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import encode_values, split_produce_request
from tests.simdisk import SimDisk

ROOT = "/data"
PARTS = 4
# No checkpoint of the store's own during a test: each test calls it; every
# changed partition's snapshot is due at each (the interval's own tests:
# test_storage_snapshot_interval.py).
CONFIG = StoreConfig(recovery_checkpoint_interval_ms=3_600_000, producer_snapshot_interval_ms=0)


class _BarrierDisk(SimDisk):
    """A SimDisk whose snapshot directory fsyncs wait for each other when armed:
    they pass only once ``parties`` of them are in flight at the same time."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.barrier: threading.Barrier | None = None

    def fsync_dir(self, path: str) -> None:
        barrier = self.barrier
        if barrier is not None and "/t-" in path:
            # Generous: only a serial writer (the old loop) ever waits this long,
            # and then the barrier breaks and the checkpoint raises.
            barrier.wait(timeout=20)
        super().fsync_dir(path)


def _batch(n: int) -> tuple[bytes, int, int]:
    raw = pb.ProduceRequest(topic="t").SerializeToString() + encode_values([b"v"] * n)
    split = split_produce_request(raw)
    return bytes(split.records), split.record_count, split.max_timestamp_ms


def _store(disk: SimDisk) -> tuple[Store, int, int]:
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    store = Store.open(ROOT, CONFIG, fs=disk)
    store.create_topic("t", partitions=PARTS)
    pid, epoch = store.init_producer()
    records, count, max_ts = _batch(3)
    for p in range(PARTS):
        store.append_raw(
            "t", p, records, count, max_timestamp_ms=max_ts, producer_id=pid, producer_epoch=epoch
        )
    return store, pid, epoch


def test_snapshots_of_one_checkpoint_run_at_the_same_time() -> None:
    """Every changed partition's snapshot is in flight at once (fails on a
    one-after-the-other loop: the barrier breaks)."""
    disk = _BarrierDisk()
    store, _, _ = _store(disk)
    assert all(store.partition("t", p).producers.changed for p in range(PARTS))
    disk.barrier = threading.Barrier(PARTS)
    store._write_recovery_points(force=True)
    disk.barrier = None
    assert not any(store.partition("t", p).producers.changed for p in range(PARTS))
    store.close()


def test_snapshots_survive_a_power_cut_after_the_checkpoint() -> None:
    """After the checkpoint, a power cut keeps every partition's producer state:
    the producer's retry of its last batch is a duplicate everywhere."""
    disk = SimDisk(seed=1)
    store, pid, epoch = _store(disk)
    for p in range(PARTS):
        store.partition("t", p).flush()  # the records themselves durable
    assert all(store.partition("t", p).producers.changed for p in range(PARTS))
    store._write_recovery_points(force=True)
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, CONFIG, fs=after)
    records, count, max_ts = _batch(3)
    for p in range(PARTS):
        res = reopened.append_raw(
            "t", p, records, count, max_timestamp_ms=max_ts, producer_id=pid, producer_epoch=epoch
        )
        assert res.duplicate and (res.base_offset, res.last_offset) == (0, 2), p
    reopened.close()
    store.close()


def test_one_failed_snapshot_fails_the_checkpoint_but_not_the_others() -> None:
    """A snapshot that fails raises out of the checkpoint and the recovery-point
    file is not rewritten; the other partitions' snapshots are still written
    (the old loop stopped at the first failure, leaving the rest unwritten)."""
    disk = SimDisk(seed=2)
    store, _, _ = _store(disk)
    store._write_recovery_points(force=True, snapshots=False)  # an earlier checkpoint
    for p in range(PARTS):
        store.partition("t", p).flush()  # so this one would move the recovery points
    before = disk.read_bytes(f"{ROOT}/recovery-point-offset-checkpoint")
    bad = store.partition("t", 1).directory
    disk.fail_next("write_file", path=bad + "/")
    with pytest.raises(StorageError):
        store._write_recovery_points(force=True)
    assert disk.read_bytes(f"{ROOT}/recovery-point-offset-checkpoint") == before
    changed = [store.partition("t", p).producers.changed for p in range(PARTS)]
    assert changed == [False, True, False, False]
    store._write_recovery_points(force=True)  # the failed one is retried next time
    assert not store.partition("t", 1).producers.changed
    store.close()
