"""Regression tests for recovery and reads around damage (issue 9, items 1, 2 and 8).

Each test failed on the code before the fix.

Most run on the simulated disk (``tests/simdisk.py``): a clean close, kill -9
(``process_crash``: the page cache survives), injected EIO/ENOSPC and a full
disk (``capacity``). The ones about symlinks and the rebuild command use real
files in ``tmp_path``.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from logstore.config import StoreConfig
from logstore.errors import (
    CorruptRecordError,
    StorageError,
)
from logstore.storage import Store
from logstore.wire import encode_frame, encode_values
from tests.storagehelp import ROOT, all_values, log_file, sim_disk

pytestmark = pytest.mark.timeout(60)


# --- 1. a failed fsync never ends in a clean shutdown -------------------------------------
def test_failed_fsync_then_close_writes_no_clean_marker_and_reuses_no_offset() -> None:
    """After a failed fsync, close() writes no clean-shutdown marker; the reopened
    partition keeps every written record, hands out no used offset, reads from 0."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    store.append("t", 0, [b"a", b"b"], sync=True)
    store.append("t", 0, [b"c", b"d"])
    disk.fail_next("fsync", errno.EIO, path=".log")
    with pytest.raises(StorageError):
        store.append("t", 0, [b"e"], sync=True)
    store.close()
    assert not disk.exists(f"{ROOT}/.clean_shutdown")
    store = Store.open(ROOT, fs=disk)
    assert store.offsets("t", 0) == (0, 5)
    assert store.append("t", 0, [b"new"], sync=True) == 5
    assert all_values(store) == [b"a", b"b", b"c", b"d", b"e", b"new"]
    store.close()


def test_clean_open_checks_the_last_frame_against_the_checkpoint() -> None:
    """A clean-shutdown marker with a recovery point short of the last frame (as the
    old close wrote after a failed fsync) is not trusted: no offset is reused."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    store.append("t", 0, [b"a", b"b"])
    store.append("t", 0, [b"c"])
    store.close()
    # what the old code left: the marker, and a checkpoint that stops at offset 2
    disk.write_file(f"{ROOT}/recovery-point-offset-checkpoint", b"0\n1\nt 0 2\n")
    store = Store.open(ROOT, fs=disk)
    assert store.offsets("t", 0) == (0, 3)
    assert store.append("t", 0, [b"d"]) == 3
    assert all_values(store) == [b"a", b"b", b"c", b"d"]
    store.close()


# --- 8. garbage after the tail; one bad batch does not hide its neighbours ------------------
def test_garbage_after_the_last_frame_with_a_clean_marker_is_truncated() -> None:
    """Garbage after the last frame of a cleanly closed partition is dropped at open:
    records appended after the restart read, across another restart."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    for i in range(10):
        store.append("t", 0, [f"v{i}-{j}".encode() for j in range(5)])
    store.close()
    fd = disk.open(log_file("t-0", 0))
    disk.append(fd, [os.urandom(300)])
    disk.fsync(fd)
    disk.close(fd)
    store = Store.open(ROOT, fs=disk)
    assert store.append("t", 0, [b"new1", b"new2"], sync=True) == 50
    assert [r.value for r in store.read("t", 0, 50)] == [b"new1", b"new2"]
    store.close()
    store = Store.open(ROOT, fs=disk)
    assert all_values(store)[48:] == [b"v9-3", b"v9-4", b"new1", b"new2"]
    store.close()


def test_a_bad_batch_hides_neither_the_batches_before_it_nor_after_it() -> None:
    """With the batch at offset 45 damaged, a read at 0 or 40 with a normal max_bytes
    returns the valid batches before it; a read at 45 reports the corruption; the
    batch after it reads."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    for i in range(11):
        store.append("t", 0, [f"v{i}-{j}".encode() for j in range(5)])
    store.flush()
    seg = store.partition("t", 0).segments[-1]
    pos, h = seg.position_of(45)
    disk.poke(seg.log_path, pos + h.frame_size - 1, b"\xff")  # inside the records: bad CRC
    assert [r.offset for r in store.read("t", 0, 0)] == list(range(45))
    assert [r.offset for r in store.read("t", 0, 40)] == list(range(40, 45))
    with pytest.raises(CorruptRecordError):
        store.read("t", 0, 45)
    assert [r.offset for r in store.read("t", 0, 50)] == list(range(50, 55))
    store.close()


# --- 2. corruption before the recovery point keeps later segments ---------------------------
def test_corruption_before_the_recovery_point_keeps_the_later_segments() -> None:
    """After kill -9, a damaged frame before the recovery point makes only that range
    unreadable: the later segments (acknowledged records) stay and serve."""
    disk = sim_disk()
    config = StoreConfig(recovery_checkpoint_interval_ms=3_600_000)
    store = Store.open(ROOT, config, fs=disk)
    # ~1 KiB batches, 4 per segment, no index entries: nothing but the frames
    store.create_topic(
        "t", config={"segment_bytes": 4500, "index_interval_bytes": 1 << 30, "retention_ms": -1}
    )
    big = b"x" * 1000
    for i in range(6):
        store.append("t", 0, [bytes([i]) + big])
    store.flush()  # recovery point 6: inside the second segment (offsets 4..7)
    for i in range(6, 20):
        store.append("t", 0, [bytes([i]) + big], sync=True)  # acknowledged, not checkpointed
    bases = [s.base_offset for s in store.partition("t", 0).segments]
    assert bases == [0, 4, 8, 12, 16]
    disk = disk.process_crash()
    disk.poke(log_file("t-0", 4), 0, b"\xf5")  # the first frame's head of segment 4
    store = Store.open(ROOT, config, fs=disk)
    assert store.offsets("t", 0) == (0, 20)
    for off in range(8, 20):
        assert store.read("t", 0, off, max_bytes=1)[0].value == bytes([off]) + big
    assert store.read("t", 0, 0, max_bytes=1)[0].value == bytes([0]) + big
    with pytest.raises(CorruptRecordError):
        store.read("t", 0, 5)
    assert store.append("t", 0, [b"next"], sync=True) == 20
    store.close()


def test_corruption_before_the_recovery_point_in_the_last_segment_reuses_no_offset() -> None:
    """After kill -9, a damaged frame head before the recovery point of the only
    segment: records acknowledged after the checkpoint keep their offsets (the next
    append goes past them), across a reopen."""
    disk = sim_disk()
    config = StoreConfig(recovery_checkpoint_interval_ms=3_600_000)
    store = Store.open(ROOT, config, fs=disk)
    store.create_topic("t")
    for i in range(5):
        store.append("t", 0, [b"before-%d" % i])
    store.flush()  # recovery point 5
    for i in range(3):  # acknowledged (fsynced), not checkpointed: offsets 5..7
        assert store.append("t", 0, [b"acked-%d" % i], sync=True) == 5 + i
    frame_size = len(store.read_frames("t", 0, 0, 1).data)
    disk = disk.process_crash()
    disk.poke(log_file("t-0", 0), frame_size + 3, b"\x01")  # frame 1's length varint
    store = Store.open(ROOT, config, fs=disk)
    assert store.read("t", 0, 0, max_bytes=1)[0].value == b"before-0"
    assert store.offsets("t", 0) == (0, 8)
    with pytest.raises(CorruptRecordError):
        store.read("t", 0, 5)
    assert store.append("t", 0, [b"next"], sync=True) == 8
    store.close()
    store = Store.open(ROOT, config, fs=disk)
    assert store.offsets("t", 0) == (0, 9)
    assert store.read("t", 0, 8)[0].value == b"next"
    store.close()


def test_a_frame_inside_a_value_cannot_push_the_offsets_far_ahead() -> None:
    """The scan for frames after damage finds a valid-looking frame stored as a
    record's value (base offset 10**15); the end it gives stays within what the
    file's bytes can hold."""
    disk = sim_disk()
    config = StoreConfig(recovery_checkpoint_interval_ms=3_600_000)
    store = Store.open(ROOT, config, fs=disk)
    store.create_topic("t")
    store.append("t", 0, [b"first"])
    store.flush()  # recovery point 1
    nested = encode_frame(encode_values([b"x"]), 1, 10**15, 5)
    store.append("t", 0, [b"second"])
    store.append("t", 0, [nested], sync=True)  # offset 2, not checkpointed
    disk = disk.process_crash()
    disk.poke(log_file("t-0", 0), 3, b"\x01")  # frame 0's length varint
    size = disk.file_size(log_file("t-0", 0))
    store = Store.open(ROOT, config, fs=disk)
    end = store.offsets("t", 0)[1]
    assert 3 <= end <= size // 2
    assert store.append("t", 0, [b"next"]) == end
    store.close()


def test_clean_reopen_append_and_reopen_does_not_rebuild_indexes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Clean close, reopen, append, clean close, reopen (and again): the indexes are
    trusted, never rebuilt ("time index entries are not on offset index entries" came
    from the time entry the first close added, left in the middle by the appends)."""
    ts = 1_700_000_000_000
    n = 0
    with Store.open(tmp_path) as store:
        store.create_topic("t")
        for i in range(30):
            store.append("t", 0, [b"x" * 200], timestamp_ms=ts + i)
        n = 30
    with caplog.at_level(logging.WARNING, logger="logstore.storage"):
        for rnd in range(1, 4):
            with Store.open(tmp_path) as store:
                for i in range(30 + 5 * rnd):
                    store.append("t", 0, [b"y" * 200], timestamp_ms=ts + 100 * rnd + i)
                assert store.offset_for_time("t", 0, ts + 100 * rnd - 50).offset == n
                assert store.offset_for_time("t", 0, ts + 100 * rnd + 1).offset == n + 1
                n += 30 + 5 * rnd
        with Store.open(tmp_path) as store:
            assert store.offset_for_time("t", 0, ts + 301).offset == n - 45 + 1
    assert not [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
