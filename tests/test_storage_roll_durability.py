"""A segment roll waits for no disk, and group commit still makes it durable.

A roll seals the old segment and creates the next one under the partition's
lock without fsync (``_partition``, "Rolls"); the next fsync turn makes the
sealed segment, its indexes and the new segment's name durable before the
recovery point passes them. These tests run on the simulated disk
(``tests/simdisk.py``) and cut the power with every unsynced directory change
lost (``keep_unsynced_changes=False``), so a record survives only if storage
fsynced both its bytes and the name of the file that holds them.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from logstore.storage import Store
from tests.simdisk import SimDisk
from tests.storagehelp import ROOT, all_values, sim_disk

pytestmark = pytest.mark.timeout(120)

#: Small segments: a 400-byte record fills most of one, so every second or
#: third append rolls.
CONFIG = {"segment_bytes": 1024}
#: Power cuts per check: each one picks every file's surviving length (between
#: synced and written) at random; many make a missing fsync show.
SEEDS = range(12)


def _survivors(disk: SimDisk, seed: int, *, keep_unsynced_changes: bool = False) -> list[bytes]:
    after = disk.power_cut(random.Random(seed), keep_unsynced_changes=keep_unsynced_changes)
    store = Store.open(ROOT, fs=after)
    try:
        return all_values(store)
    finally:
        store.close()


def test_a_roll_does_no_fsync_under_the_append() -> None:
    """An append that rolls calls no fsync, fsync_dir or msync (embedded, no flusher)."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config=CONFIG)
    store.append("t", 0, [b"a" * 700])
    before = dict(disk.stats.calls)
    assert store.append("t", 0, [b"b" * 700]) == 1  # does not fit: rolls
    assert len(store.partition("t", 0).segments) == 2
    synced = {op: disk.stats.calls[op] - before.get(op, 0) for op in ("fsync", "fsync_dir")}
    synced["sync_map"] = disk.stats.calls["sync_map"] - before.get("sync_map", 0)
    # the old code fsynced the old log and both indexes and wrote a snapshot here
    assert synced == {"fsync": 0, "fsync_dir": 0, "sync_map": 0}, synced
    store.close()


def test_sync_append_into_a_rolled_segment_makes_the_roll_durable() -> None:
    """Unsynced records in the old segment, then an acks=ALL append that rolls:
    after any power cut every record is there (old segment fsynced, new name
    fsynced), though the roll itself fsynced nothing."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config=CONFIG)
    values = [bytes([65 + i]) * 300 for i in range(3)]  # 3 x 300 B: one segment
    for v in values:
        store.append("t", 0, [v])
    last = b"z" * 300
    assert store.append("t", 0, [last], sync=True) == 3  # rolls, then fsyncs
    assert len(store.partition("t", 0).segments) == 2
    for seed in SEEDS:
        assert _survivors(disk, seed) == [*values, last], seed
    store.close()


def test_sync_after_a_kill_following_an_unsynced_roll_makes_the_old_segment_durable() -> None:
    """Roll (no fsync), kill -9 (the page cache survives), reopen, append with
    sync: the sealed segment's records, which no fsync ever covered, are
    fsynced by that append's turn before it is acknowledged."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config=CONFIG)
    store.flush()  # the topic's files are durable; no record is
    values = [bytes([65 + i]) * 300 for i in range(4)]  # the 4th rolls
    for v in values:
        store.append("t", 0, [v])
    assert len(store.partition("t", 0).segments) == 2
    disk = disk.process_crash()
    store = Store.open(ROOT, fs=disk)
    assert store.append("t", 0, [b"last"], sync=True) == 4
    for seed in SEEDS:
        assert _survivors(disk, seed) == [*values, b"last"], seed
    store.close()


def test_a_power_cut_after_an_unsynced_roll_loses_only_a_suffix() -> None:
    """The tail of a sealed segment lost while the next segment's bytes survive
    (the kernel wrote the new file back first) is a torn tail: recovery drops
    the later segment instead of serving its records past a hole."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config=CONFIG)
    values = [bytes([65 + i]) * 300 for i in range(6)]  # two a segment: 3 segments
    store.append("t", 0, [values[0]], sync=True)
    for v in values[1:]:
        store.append("t", 0, [v])
    assert len(store.partition("t", 0).segments) == 3
    # 60 cuts: each keeps a random prefix of the directory changes and a random
    # length of each file; some keep the new segment whole and cut the old one
    # at its synced length (recovery without the segment-end check served the
    # later records past a hole).
    for seed in range(60):
        got = _survivors(disk, seed, keep_unsynced_changes=True)
        assert got == values[: len(got)] and got, (seed, len(got))
    store.close()


def test_acks_all_stream_across_rolls_survives_power_cuts_at_any_moment() -> None:
    """A writer thread appends with sync=True through the flusher thread (the
    broker's group commit) across many rolls; power cuts taken while it runs
    keep every record acknowledged before the cut, in order."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config=CONFIG)
    store.start_flusher()
    acked: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set() and i < 400:
                v = f"{i:04d}".encode() * 60  # 240 B: a roll every 4 appends
                assert store.append("t", 0, [v], sync=True) == i
                acked.append(v)
                i += 1
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    cuts: list[tuple[SimDisk, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(cuts) < 8 and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
            n = len(acked)  # every one of these was acknowledged before the cut
            cuts.append((disk.power_cut(random.Random(len(cuts)), keep_unsynced_changes=False), n))
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    assert len(store.partition("t", 0).segments) > 3, "the stream must cross rolls"
    store.close()
    assert cuts
    for k, (after, n) in enumerate(cuts):
        reopened = Store.open(ROOT, fs=after)
        try:
            end = reopened.offsets("t", 0)[1]
            assert end >= n, (k, end, n)
            got: list[bytes] = []
            offset = 0
            while offset < end:
                recs = reopened.read("t", 0, offset)
                got += [r.value for r in recs]
                offset = recs[-1].offset + 1
            assert got[:n] == acked[:n], k
        finally:
            reopened.close()


def test_flush_after_a_roll_by_time_makes_the_new_segment_durable() -> None:
    """A roll by time adds no offset, so everything may already be durable up to
    the log end; flush() still fsyncs what the roll left (the sealed segment's
    indexes, the new segment's name): a power cut keeps both files."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config={"segment_ms": 1})
    assert store.append("t", 0, [b"a"], sync=True) == 0
    time.sleep(0.01)
    store.partition("t", 0).maybe_roll_by_time(int(time.time() * 1000))
    assert len(store.partition("t", 0).segments) == 2
    store.flush()
    after = disk.power_cut(random.Random(0), keep_unsynced_changes=False)
    names = sorted(n for n in after.listdir(f"{ROOT}/t-0") if n.endswith(".log"))
    assert names == [f"{0:020d}.log", f"{1:020d}.log"], names
    store.close()
