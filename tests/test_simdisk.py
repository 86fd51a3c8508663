"""Tests of the simulated disk itself: the seam's semantics, power cuts, faults."""

from __future__ import annotations

import errno
import inspect
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.errors import DirectoryInUseError, DiskFullError, StorageError
from logstore.storage._fs import FileSystem
from tests.simdisk import SECTOR, SimDisk


def _disk_with_dir(path: str = "/d", **kw: Any) -> SimDisk:
    disk = SimDisk(**kw)
    disk.mkdir(path)
    disk.fsync_dir("/")
    return disk


def _allowed_survivors(synced: bytes, written: bytes) -> set[int]:
    lo, hi = sorted((len(synced), len(written)))
    return {lo, hi, *range((lo // SECTOR + 1) * SECTOR, hi, SECTOR)}


def test_same_interface_as_the_real_seam() -> None:
    """SimDisk overrides every public FileSystem method with the same parameters."""
    for name, real in vars(FileSystem).items():
        if callable(real) and not name.startswith("_"):
            sim = vars(SimDisk)[name]
            assert list(inspect.signature(sim).parameters) == list(
                inspect.signature(real).parameters
            ), name


def test_append_pread_size_roundtrip() -> None:
    """What append writes, pread/size/read_file/file_size read back."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    assert disk.append(fd, [b"abc", bytearray(b"de"), memoryview(b"fgh")], "/d/f") == 8
    assert disk.pread(fd, 4, 2) == b"cdef"
    assert disk.pread(fd, 100, 6) == b"gh"
    assert disk.pread(fd, 10, 50) == b""
    assert disk.size(fd) == 8
    assert disk.read_file("/d/f") == b"abcdefgh"
    assert disk.file_size("/d/f") == 8
    disk.truncate(fd, 3)
    assert disk.read_file("/d/f") == b"abc"
    disk.allocate(fd, 6)
    assert disk.read_file("/d/f") == b"abc\0\0\0"
    disk.allocate(fd, 2)  # never shrinks
    assert disk.size(fd) == 6
    disk.close(fd)
    assert disk.open_fds() == 0


def _same_ops(fs: Any, root: str) -> list[object]:
    """Run a fixed script on a FileSystem-like object; record results and errors."""
    out: list[object] = []

    def rec(fn: Callable[[], object]) -> None:
        try:
            out.append(fn())
        except StorageError as exc:
            out.append((type(exc).__name__, exc.errno, type(exc.__cause__).__name__))

    j = os.path.join
    rec(lambda: fs.mkdir(j(root, "a", "b")))
    rec(lambda: fs.isdir(j(root, "a")))
    rec(lambda: fs.exists(j(root, "a", "nope")))
    rec(lambda: fs.open(j(root, "a", "missing")))
    rec(lambda: fs.read_file(j(root, "a", "missing")))
    rec(lambda: fs.unlink(j(root, "a", "missing")))
    rec(lambda: fs.listdir(j(root, "zz")))
    rec(lambda: fs.file_size(j(root, "zz")))
    rec(lambda: fs.replace(j(root, "a", "missing"), j(root, "a", "x")))
    fd = fs.open(j(root, "a", "f.log"), create=True)
    rec(lambda: fs.append(fd, [b"hello ", b"world"], "f.log"))
    rec(lambda: fs.pread(fd, 5, 6))
    rec(lambda: fs.size(fd))
    rec(lambda: fs.fsync(fd))
    rec(lambda: fs.truncate(fd, 5))
    rec(lambda: fs.pread(fd, 100, 0))
    rec(lambda: fs.allocate(fd, 16))
    rec(lambda: fs.size(fd))
    m = fs.map(fd, 16)
    arr = np.frombuffer(m, dtype=np.uint8)
    with pytest.raises(BufferError):
        fs.unmap(m)
    del arr
    m[8:12] = b"MAPD"
    rec(lambda: fs.sync_map(m))
    rec(lambda: fs.pread(fd, 16, 0))
    fs.unmap(m)
    rec(lambda: fs.close(fd))
    rec(lambda: fs.write_file(j(root, "a", "c.tmp"), b"checkpoint"))
    rec(lambda: fs.replace(j(root, "a", "c.tmp"), j(root, "a", "c")))
    rec(lambda: fs.fsync_dir(j(root, "a")))
    rec(lambda: fs.read_file(j(root, "a", "c")))
    rec(lambda: fs.listdir(j(root, "a")))
    rec(lambda: fs.unlink(j(root, "a", "b")))
    rec(lambda: fs.replace(j(root, "a", "b"), j(root, "a", "b2")))
    rec(lambda: fs.listdir(j(root, "a")))
    rec(lambda: fs.rmtree(j(root, "a", "b2")))
    rec(lambda: fs.mkdir(j(root, "a", "c")))
    rec(lambda: fs.listdir(j(root, "a")))
    rec(lambda: fs.file_size(j(root, "a", "f.log")))
    return out


def test_matches_real_filesystem(tmp_path: Path) -> None:
    """The same calls give the same results and the same typed errors on both disks."""
    real = _same_ops(FileSystem(), str(tmp_path))
    sim = _same_ops(SimDisk(), "/data")
    assert sim == real


def test_errors_are_translated_like_the_real_seam() -> None:
    """Injected EIO is a StorageError, ENOSPC a DiskFullError, each chained from an OSError."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    disk.fail_next("fsync", errno.EIO)
    with pytest.raises(StorageError) as ei:
        disk.fsync(fd, "/d/f")
    assert not isinstance(ei.value, DiskFullError)
    assert ei.value.errno == errno.EIO
    assert isinstance(ei.value.__cause__, OSError)
    assert "fsync" in str(ei.value)
    disk.fsync(fd)  # count=1: the next one succeeds
    disk.fail_next("append", errno.ENOSPC, count=2)
    for _ in range(2):
        with pytest.raises(DiskFullError):
            disk.append(fd, [b"x"])
    assert disk.append(fd, [b"x"]) == 1
    assert disk.read_file("/d/f") == b"x"


def test_fail_next_filters_by_path() -> None:
    """A fault restricted to a path fails only calls on that path."""
    disk = _disk_with_dir()
    a = disk.open("/d/a.log", create=True)
    b = disk.open("/d/b.index", create=True)
    disk.fail_next("append", errno.EIO, path=".index")
    disk.append(a, [b"1"])
    with pytest.raises(StorageError):
        disk.append(b, [b"1"])
    disk.append(b, [b"2"])
    assert disk.read_file("/d/b.index") == b"2"


def test_partial_append_writes_a_prefix() -> None:
    """A failing append with partial=True leaves a strict prefix of its data."""
    disk = _disk_with_dir(seed=3)
    fd = disk.open("/d/f", create=True)
    disk.append(fd, [b"head"])
    prefixes = set()
    for _ in range(20):
        disk.fail_next("append", errno.EIO, partial=True)
        with pytest.raises(StorageError):
            disk.append(fd, [b"0123456789" * 10])
        tail = disk.read_file("/d/f")[4:]
        assert (b"0123456789" * 10).startswith(tail) and len(tail) < 100
        prefixes.add(len(tail))
        disk.truncate(fd, 4)
    assert len(prefixes) > 3


def test_predicate_injector() -> None:
    """inject() sees (op, path) for every fallible call and fails the ones it picks."""
    disk = _disk_with_dir()
    seen: list[tuple[str, str]] = []

    def pred(op: str, path: str) -> int | None:
        seen.append((op, path))
        return errno.ENOSPC if op == "write_file" and path.endswith(".tmp") else None

    disk.inject(pred)
    with pytest.raises(DiskFullError):
        disk.write_file("/d/x.tmp", b"1")
    disk.write_file("/d/x", b"1")
    fd = disk.open("/d/x")
    disk.pread(fd, 1, 0)
    assert ("pread", "/d/x") in seen
    disk.clear_faults()
    disk.write_file("/d/x.tmp", b"1")


def test_capacity_makes_writes_fail_with_enospc() -> None:
    """With a capacity, an append that does not fit writes what fits and raises DiskFullError."""
    disk = _disk_with_dir(capacity=100)
    fd = disk.open("/d/f", create=True)
    disk.append(fd, [b"a" * 90])
    with pytest.raises(DiskFullError):
        disk.append(fd, [b"b" * 20])
    assert disk.read_file("/d/f") == b"a" * 90 + b"b" * 10
    with pytest.raises(DiskFullError):
        disk.allocate(fd, 200)
    disk.truncate(fd, 50)
    disk.append(fd, [b"c" * 20])


def test_fsynced_data_survives_every_power_cut() -> None:
    """Bytes fsynced in a file whose name is durable are always there after a power cut."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    disk.fsync_dir("/d")
    durable = os.urandom(3000)
    disk.append(fd, [durable])
    disk.fsync(fd)
    written = durable + os.urandom(2000)
    disk.append(fd, [written[3000:]])
    lengths = set()
    for seed in range(200):
        after = disk.power_cut(random.Random(seed))
        data = after.read_file("/d/f")
        assert data.startswith(durable)
        assert written.startswith(data)
        assert len(data) in _allowed_survivors(durable, written)
        lengths.add(len(data))
    assert lengths == _allowed_survivors(durable, written)


def test_unsynced_overwrite_is_old_or_new_per_sector() -> None:
    """After truncate and re-append without fsync, each sector is its old or its new version."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    disk.fsync_dir("/d")
    old = b"O" * 2048
    disk.append(fd, [old])
    disk.fsync(fd)
    disk.truncate(fd, 100)
    disk.append(fd, [b"N" * 1948])
    new = disk.read_file("/d/f")
    mixed = False
    for seed in range(100):
        data = disk.power_cut(random.Random(seed)).read_file("/d/f")
        assert len(data) == 2048
        for s in range(0, 2048, SECTOR):
            assert data[s : s + SECTOR] in (old[s : s + SECTOR], new[s : s + SECTOR])
        mixed |= data not in (old, new)
    assert mixed


def test_torn_sectors_never_touch_synced_bytes() -> None:
    """torn= may garble sectors past the synced length, never the synced bytes."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    disk.fsync_dir("/d")
    disk.append(fd, [b"S" * 700])
    disk.fsync(fd)
    disk.append(fd, [b"W" * 4000])
    garbled = False
    for seed in range(100):
        data = disk.power_cut(random.Random(seed), torn=0.5).read_file("/d/f")
        assert data[:700] == b"S" * 700
        garbled |= data[700:] != b"W" * (len(data) - 700)
    assert garbled


def test_file_creation_needs_fsync_dir() -> None:
    """A new file disappears in a power cut unless its directory was fsynced after."""
    disk = _disk_with_dir()
    fd = disk.open("/d/new", create=True)
    disk.append(fd, [b"x"])
    disk.fsync(fd)
    assert not disk.power_cut(random.Random(0), keep_unsynced_changes=False).exists("/d/new")
    outcomes = {disk.power_cut(random.Random(s)).exists("/d/new") for s in range(30)}
    assert outcomes == {True, False}
    disk.fsync_dir("/d")
    for s in range(30):
        assert disk.power_cut(random.Random(s)).read_file("/d/new") == b"x"


def test_new_directory_needs_parent_fsync() -> None:
    """A directory made by mkdir is durable only once its parent is fsynced."""
    disk = _disk_with_dir()
    disk.mkdir("/d/t-0")
    disk.write_file("/d/t-0/x", b"1")
    disk.fsync_dir("/d/t-0")
    assert not disk.power_cut(random.Random(0), keep_unsynced_changes=False).exists("/d/t-0")
    disk.fsync_dir("/d")
    after = disk.power_cut(random.Random(0), keep_unsynced_changes=False)
    assert after.read_file("/d/t-0/x") == b"1"


def test_rename_and_unlink_revert_without_fsync_dir() -> None:
    """An unsynced rename reverts and an unsynced unlink is undone by a power cut."""
    disk = _disk_with_dir()
    disk.write_file("/d/a.tmp", b"v2")
    disk.write_file("/d/gone", b"g")
    disk.fsync_dir("/d")
    disk.replace("/d/a.tmp", "/d/a")
    disk.unlink("/d/gone")
    after = disk.power_cut(random.Random(0), keep_unsynced_changes=False)
    assert after.listdir("/d") == ["a.tmp", "gone"]
    # a prefix of the changes survives: the rename is atomic, never both names or none
    for s in range(40):
        names = disk.power_cut(random.Random(s)).listdir("/d")
        assert names in (["a.tmp", "gone"], ["a", "gone"], ["a"])
    disk.fsync_dir("/d")
    assert disk.power_cut(random.Random(0)).listdir("/d") == ["a"]


def test_map_writes_are_file_writes() -> None:
    """Writes through a map are read by pread, lost by a power cut unless sync_map ran."""
    disk = _disk_with_dir()
    fd = disk.open("/d/i.index", create=True)
    disk.fsync_dir("/d")
    disk.allocate(fd, 1024)
    disk.fsync(fd)
    m = disk.map(fd, 1024, "/d/i.index")
    arr = np.frombuffer(m, dtype="<u4")
    arr[0:2] = [7, 9]
    assert disk.pread(fd, 8, 0) == np.array([7, 9], dtype="<u4").tobytes()
    assert disk.power_cut(random.Random(0)).read_file("/d/i.index") in (
        bytes(1024),
        disk.read_file("/d/i.index"),
    )
    lost = {disk.power_cut(random.Random(s)).read_file("/d/i.index")[:8] for s in range(30)}
    assert lost == {bytes(8), np.array([7, 9], dtype="<u4").tobytes()}
    disk.sync_map(m)
    for s in range(10):
        got = disk.power_cut(random.Random(s)).read_file("/d/i.index")
        assert got[:8] == np.array([7, 9], dtype="<u4").tobytes()
    with pytest.raises(BufferError):
        disk.unmap(m)
    del arr
    disk.unmap(m)
    assert disk.live_maps() == 0
    with pytest.raises(ValueError):
        disk.map(fd, 4096)


def test_process_crash_keeps_page_cache_but_not_descriptors() -> None:
    """kill -9 keeps unsynced data; a later power cut can still lose it."""
    disk = _disk_with_dir()
    lock_fd = disk.lock("/d/.lock")
    fd = disk.open("/d/f", create=True)
    disk.append(fd, [b"unsynced"])
    after = disk.process_crash()
    assert after.read_file("/d/f") == b"unsynced"
    assert after.open_fds() == 0
    after.unlock(after.lock("/d/.lock"))  # the lock died with the process
    lost = after.power_cut(random.Random(0), keep_unsynced_changes=False)
    assert not lost.exists("/d/f")
    disk.unlock(lock_fd)


def test_directory_lock() -> None:
    """A second lock on the same path fails with 'in use by pid N' until unlocked."""
    disk = _disk_with_dir()
    fd = disk.lock("/d/.lock")
    with pytest.raises(DirectoryInUseError, match=f"/d in use by pid {os.getpid()}"):
        disk.lock("/d/.lock")
    disk.unlock(fd)
    disk.unlock(disk.lock("/d/.lock"))
    assert disk.open_fds() == 0


def test_rmtree_and_reopen_after_unlink() -> None:
    """rmtree removes a subtree; an unlinked file stays readable through its open fd."""
    disk = _disk_with_dir()
    disk.mkdir("/d/p/q")
    disk.write_file("/d/p/q/f", b"1")
    fd = disk.open("/d/p/q/f")
    disk.rmtree("/d/p")
    assert not disk.exists("/d/p")
    assert disk.pread(fd, 1, 0) == b"1"
    assert disk.walk() == {}


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["append", "fsync", "truncate"]), st.integers(0, 1500)),
        max_size=20,
    ),
    seed=st.integers(0, 1000),
)
def test_power_cut_property(ops: list[tuple[str, int]], seed: int) -> None:
    """After any appends/fsyncs/truncates a power cut leaves an allowed length and content."""
    disk = _disk_with_dir()
    fd = disk.open("/d/f", create=True)
    disk.fsync_dir("/d")
    synced = b""
    overwritten = False
    for op, n in ops:
        if op == "append":
            disk.append(fd, [bytes([n % 251]) * n])
        elif op == "fsync":
            disk.fsync(fd)
            synced = disk.read_file("/d/f")
            overwritten = False
        elif n < disk.size(fd):
            disk.truncate(fd, n)
            overwritten |= n < len(synced)
    written = disk.read_file("/d/f")
    data = disk.power_cut(random.Random(seed)).read_file("/d/f")
    assert len(data) in _allowed_survivors(synced, written)
    if not overwritten:
        assert data.startswith(synced) or synced.startswith(data)
        assert data[: len(synced)] == synced[: len(data)]
        assert written.startswith(data) or len(data) <= len(synced)
