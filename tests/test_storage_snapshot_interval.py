"""The recovery checkpoint writes a partition's producer snapshot only when it is
due (``producer_snapshot_interval_ms`` after the last one); a clean close always
writes one; a crash between snapshots rebuilds the producer state from the log,
so a producer's retry is still a duplicate (``PartitionLog._load_producers``).
The store's clock is a fake one the tests move: no test waits for the interval."""

from __future__ import annotations

import time

import pytest

from logstore.broker._config import BrokerConfig
from logstore.config import StoreConfig
from logstore.errors import InvalidConfigError
from logstore.storage import Store
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import encode_values, split_produce_request
from tests.simdisk import SimDisk

ROOT = "/data"
PARTS = 3
INTERVAL_MS = 60_000


class _Clock:
    """``now_ms`` of the store and its partitions: frozen until a test moves it."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr("logstore.storage._partition.now_ms", fake)
    monkeypatch.setattr("logstore.storage._store.now_ms", fake)
    return fake


def _batch(n: int) -> tuple[bytes, int, int]:
    raw = pb.ProduceRequest(topic="t").SerializeToString() + encode_values([b"v"] * n)
    split = split_produce_request(raw)
    return bytes(split.records), split.record_count, split.max_timestamp_ms


def _config(interval_ms: int = INTERVAL_MS) -> StoreConfig:
    # No checkpoint of the store's own during a test: each test calls it.
    return StoreConfig(
        recovery_checkpoint_interval_ms=3_600_000, producer_snapshot_interval_ms=interval_ms
    )


def _snapshots(disk: SimDisk, store: Store) -> list[list[str]]:
    dirs = [store.partition("t", p).directory for p in range(PARTS)]
    return [sorted(n for n in disk.listdir(d) if n.endswith(".snapshot")) for d in dirs]


def _open(disk: SimDisk, config: StoreConfig) -> tuple[Store, int, int]:
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    store = Store.open(ROOT, config, fs=disk)
    store.create_topic("t", partitions=PARTS)
    pid, epoch = store.init_producer()
    return store, pid, epoch


def _append_all(store: Store, pid: int, epoch: int, seq: int) -> None:
    records, count, max_ts = _batch(3)
    for p in range(PARTS):
        res = store.append_raw(
            "t", p, records, count, max_timestamp_ms=max_ts, producer_id=pid,
            producer_epoch=epoch, base_sequence=seq,
        )  # fmt: skip
        assert not res.duplicate


def test_checkpoint_writes_a_snapshot_only_when_it_is_due(clock: _Clock) -> None:
    disk = SimDisk(seed=3)
    store, pid, epoch = _open(disk, _config())
    _append_all(store, pid, epoch, 0)
    clock.ms += INTERVAL_MS - 1
    store._write_recovery_points(force=True)
    # Changed, but the partitions were opened less than the interval ago.
    assert _snapshots(disk, store) == [[]] * PARTS
    assert all(store.partition("t", p).producers.changed for p in range(PARTS))
    clock.ms += 1
    store._write_recovery_points(force=True)
    assert _snapshots(disk, store) == [["00000000000000000003.snapshot"]] * PARTS
    assert not any(store.partition("t", p).producers.changed for p in range(PARTS))
    # Changed again right after a snapshot: not due until the interval passes.
    _append_all(store, pid, epoch, 3)
    clock.ms += INTERVAL_MS - 1
    store._write_recovery_points(force=True)
    assert _snapshots(disk, store) == [["00000000000000000003.snapshot"]] * PARTS
    clock.ms += 1
    store._write_recovery_points(force=True)
    assert (
        _snapshots(disk, store)
        == [["00000000000000000003.snapshot", "00000000000000000006.snapshot"]] * PARTS
    )
    store.close()


def test_interval_zero_snapshots_at_every_checkpoint(clock: _Clock) -> None:
    disk = SimDisk(seed=4)
    store, pid, epoch = _open(disk, _config(0))
    _append_all(store, pid, epoch, 0)
    store._write_recovery_points(force=True)
    assert _snapshots(disk, store) == [["00000000000000000003.snapshot"]] * PARTS
    store.close()


def test_close_writes_the_snapshot_that_was_not_due(clock: _Clock) -> None:
    disk = SimDisk(seed=5)
    config = _config()
    store, pid, epoch = _open(disk, config)
    _append_all(store, pid, epoch, 0)
    store.flush()  # forces the recovery checkpoint: still no snapshot due
    assert _snapshots(disk, store) == [[]] * PARTS
    store.close()
    reopened = Store.open(ROOT, config, fs=disk)
    assert _snapshots(disk, reopened) == [["00000000000000000003.snapshot"]] * PARTS
    reopened.close()


def test_power_cut_between_snapshots_rebuilds_producer_state_from_the_log(clock: _Clock) -> None:
    """No snapshot was written (not due); the records were durable. After the
    power cut the retry of each partition's last batch is a duplicate with its
    original offsets, and the producer's next sequence is accepted."""
    disk = SimDisk(seed=6)
    config = _config()
    store, pid, epoch = _open(disk, config)
    _append_all(store, pid, epoch, 0)
    _append_all(store, pid, epoch, 3)
    store.flush()
    assert _snapshots(disk, store) == [[]] * PARTS
    after = disk.power_cut(keep_unsynced_changes=False)
    reopened = Store.open(ROOT, config, fs=after)
    records, count, max_ts = _batch(3)
    for p in range(PARTS):
        retry = reopened.append_raw(
            "t", p, records, count, max_timestamp_ms=max_ts, producer_id=pid,
            producer_epoch=epoch, base_sequence=3,
        )  # fmt: skip
        assert retry.duplicate and (retry.base_offset, retry.last_offset) == (3, 5), p
        nxt = reopened.append_raw(
            "t", p, records, count, max_timestamp_ms=max_ts, producer_id=pid,
            producer_epoch=epoch, base_sequence=6,
        )  # fmt: skip
        assert not nxt.duplicate and nxt.base_offset == 6, p
    reopened.close()
    store.close()


def test_negative_interval_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match="producer_snapshot_interval_ms"):
        StoreConfig(producer_snapshot_interval_ms=-1)
    with pytest.raises(InvalidConfigError, match="producer_snapshot_interval_ms"):
        BrokerConfig.resolve({"producer_snapshot_interval_ms": -1})
    assert (
        BrokerConfig.resolve({"producer_snapshot_interval_ms": 0})
        .store_config()
        .producer_snapshot_interval_ms
        == 0
    )
