"""A real 100 % full disk (a small tmpfs): space can be freed through the API.

Needs root to mount the tmpfs (skipped otherwise); runs in about a second. The
simulated-disk versions of these checks (tests/test_storage_catalog.py) run
everywhere; this one proves the same on a real file system, where a rename,
an unlink and posix_fallocate behave as the kernel makes them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore.errors import DiskFullError
from logstore.storage import Store

pytestmark = pytest.mark.timeout(60)

TMPFS_BYTES = 4 * 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> None:
    """Fill the file system to the last byte."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def test_full_tmpfs_is_recovered_through_the_api(tmpfs: Path) -> None:
    """On a 100 % full tmpfs: reads work, appends fail with DiskFullError, and
    DeleteRecords, DeleteTopic and a restart all work and free space."""
    data = tmpfs / "data"
    store = Store.open(data)
    store.create_topic("fill", config={"segment_bytes": 70_000})
    store.create_topic("spare", config={"segment_bytes": 70_000})
    value = b"x" * 4000
    for i in range(40):
        store.append("spare", 0, [bytes([i]) + value] * 4)
        store.append("fill", 0, [bytes([i]) + value] * 4)
    store.flush()
    _fill(tmpfs)
    assert os.statvfs(tmpfs).f_bavail == 0
    assert store.read("fill", 0, 0, max_bytes=1)[0].value == bytes([0]) + value
    with pytest.raises(DiskFullError):
        for _ in range(20):  # the page left of the last block may take one
            store.append("fill", 0, [value] * 4, sync=True)
    # DeleteTopic first: its data goes before the smaller topics.json is written
    store.delete_topic("fill")
    assert [t.name for t in store.topics()] == ["spare"]
    _fill(tmpfs)
    assert store.delete_records("spare", 0, 120) == 120  # frees whole segments first
    store.create_topic("fresh")  # in the space just freed
    store.append("fresh", 0, [b"f"], sync=True)
    # restart while full after a crash (kill -9 leaves no checkpoint of "fresh")
    store._abandon()
    _fill(tmpfs)
    store = Store.open(data)
    assert store.offsets("spare", 0) == (120, 160)
    assert store.read("spare", 0, 159)[0].value == bytes([39]) + value
    assert store.read("fresh", 0, 0)[0].value == b"f"
    store.close()
    store = Store.open(data)  # and after a clean close, still full
    os.unlink(tmpfs / "filler")
    assert store.append("spare", 0, [b"after"], sync=True) == 160
    store.close()


def test_full_tmpfs_frees_space_inside_the_active_segment_and_of_an_empty_topic(
    tmpfs: Path,
) -> None:
    """On a 100 % full tmpfs, DeleteRecords inside the active segment and DeleteTopic of
    an empty topic (no data file to free first) succeed through the space reserve."""
    data = tmpfs / "data"
    store = Store.open(data)
    store.create_topic("one")
    store.create_topic("empty")
    for i in range(5):
        store.append("one", 0, [bytes([i]) * 1000], sync=True)
    _fill(tmpfs)
    assert os.statvfs(tmpfs).f_bavail == 0
    assert store.delete_records("one", 0, 3) == 3
    store.delete_topic("empty")
    assert [t.name for t in store.topics()] == ["one"]
    os.unlink(tmpfs / "filler")
    store.maintain()
    assert any(p.name.endswith("reserve") for p in data.iterdir())
    store.close()
    with Store.open(data) as store:
        assert store.offsets("one", 0) == (3, 5)
