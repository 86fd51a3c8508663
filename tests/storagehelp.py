"""Helpers shared by the storage regression tests: a simulated disk with the data
directory made, reading every value of a partition, and segment file paths."""

from __future__ import annotations

from logstore.storage import Store
from tests.simdisk import SimDisk

ROOT = "/data"


def sim_disk() -> SimDisk:
    """A simulated disk (seed 0) with ``ROOT`` made and its parent fsynced."""
    disk = SimDisk(seed=0)
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    return disk


def all_values(store: Store, topic: str = "t", part: int = 0, offset: int = 0) -> list[bytes]:
    """Every value from ``offset`` to the log end (null values as b"")."""
    out: list[bytes] = []
    end = store.offsets(topic, part)[1]
    while offset < end:
        recs = store.read(topic, part, offset)
        assert recs, offset
        out += [r.value or b"" for r in recs]
        offset = recs[-1].offset + 1
    return out


def log_file(part_dir: str, base: int) -> str:
    """The path of the segment based at ``base`` in ``ROOT/part_dir``."""
    return f"{ROOT}/{part_dir}/{base:020d}.log"
