"""One flusher turn over many partitions fsyncs them at once, and every
acknowledged record is still durable.

The broker's flusher thread serves a MultiProduce with acks=ALL over many
partitions in one turn, their fsyncs run concurrently (``_group_commit``,
``FLUSH_PARALLELISM``) so the file system commits them together. These tests
run on the simulated disk (``tests/simdisk.py``): the power is cut with every
unsynced change lost once every partition's ``sync_to`` future is done (what
the broker waits for before it replies), and each partition must hold every
record; a partition whose fsync a turn skipped, or a waiter completed before
its own partition's fsync, loses records in some cut.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import wait

import pytest

from logstore.storage import Store
from tests.storagehelp import ROOT, all_values, sim_disk

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 40
SEEDS = range(6)


def test_a_turn_over_many_partitions_fsyncs_them_at_once_and_each_is_durable() -> None:
    """Appends to 40 partitions, then every partition's sync_to (a MultiProduce
    with acks=ALL): once all are done, power cuts keep every record of every
    partition; and the turn's fsyncs overlapped (one at a time before)."""
    disk = sim_disk()
    real_fsync = disk.fsync
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def slow_fsync(fd: int, path: str = "") -> None:
        # A disk that takes 5 ms an fsync, so overlapping ones show.
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.005)
            real_fsync(fd, path)
        finally:
            with lock:
                active[0] -= 1

    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", partitions=PARTITIONS)
    store.flush()
    disk.fsync = slow_fsync  # type: ignore[method-assign]
    store.start_flusher()
    acked: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    try:
        for rnd in range(3):
            ends = {}
            for p in range(PARTITIONS):
                value = f"r{rnd}-p{p}".encode() * 20
                ends[p] = store.append("t", p, [value]) + 1
                acked[p].append(value)
            futures = [store.sync_to("t", p, end) for p, end in ends.items()]
            done, not_done = wait(futures, timeout=60)
            assert not not_done
            for f in done:
                f.result()
            # The reply would go now: every acked record must survive any cut.
            for seed in SEEDS:
                after = disk.power_cut(random.Random(seed * 10 + rnd), keep_unsynced_changes=False)
                reopened = Store.open(ROOT, fs=after)
                try:
                    for p in range(PARTITIONS):
                        assert all_values(reopened, "t", p) == acked[p], (rnd, seed, p)
                finally:
                    reopened.close()
    finally:
        store.close()
    # A bound, not an exact count: how many of a turn's fsyncs overlap depends
    # on thread scheduling; one at a time (the old flusher) is 1.
    assert peak[0] > 1, peak[0]


def test_the_flusher_survives_idle_intervals() -> None:
    """Idle checkpoint intervals (a turn with no partition) leave the flusher
    serving: an acks=ALL append after several of them is answered (a first
    version of the parallel turn died on the empty one and every later
    sync_to waited forever)."""
    from logstore.config import StoreConfig

    disk = sim_disk()
    store = Store.open(ROOT, StoreConfig(recovery_checkpoint_interval_ms=20), fs=disk)
    store.create_topic("t", partitions=2)
    store.start_flusher()
    try:
        time.sleep(0.2)  # ~10 idle intervals
        end = store.append("t", 1, [b"after idle"]) + 1
        store.sync_to("t", 1, end).result(timeout=30)
        assert any(t.name == "logstore-flusher" for t in threading.enumerate())
    finally:
        store.close()
