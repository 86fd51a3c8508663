"""Regression tests for topic-name validation and temp-file creation (issue 9, item 4).

Each test failed on the code before the fix.

Most run on the simulated disk (``tests/simdisk.py``): a clean close, kill -9
(``process_crash``: the page cache survives), injected EIO/ENOSPC and a full
disk (``capacity``). The ones about symlinks and the rebuild command use real
files in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from logstore.errors import (
    InvalidTopicNameError,
)
from logstore.storage import Store
from logstore.storage._names import check_topic_name
from tests.simdisk import SimDisk

pytestmark = pytest.mark.timeout(60)

ROOT = "/data"


def _disk() -> SimDisk:
    disk = SimDisk(seed=0)
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    return disk


def _values(store: Store, topic: str = "t", part: int = 0, offset: int = 0) -> list[bytes]:
    out: list[bytes] = []
    end = store.offsets(topic, part)[1]
    while offset < end:
        recs = store.read(topic, part, offset)
        assert recs, offset
        out += [r.value or b"" for r in recs]
        offset = recs[-1].offset + 1
    return out


def _log_file(part_dir: str, base: int) -> str:
    return f"{ROOT}/{part_dir}/{base:020d}.log"


# --- 4. names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a\n", "a\nb", "\na", "a\r"])
def test_topic_names_with_newlines_are_rejected(name: str) -> None:
    """A topic name is validated with a full match: no trailing newline."""
    with pytest.raises(InvalidTopicNameError):
        check_topic_name(name)
    disk = _disk()
    store = Store.open(ROOT, fs=disk)
    with pytest.raises(InvalidTopicNameError):
        store.create_topic(name)
    store.close()
    Store.open(ROOT, fs=disk).close()


def test_planted_tmp_symlink_cannot_redirect_a_checkpoint_write(tmp_path: Path) -> None:
    """A symlink planted as topics.json.tmp is replaced, its target never written."""
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    data = tmp_path / "data"
    with Store.open(data) as store:
        os.symlink(target, data / "topics.json.tmp")
        store.create_topic("t")
        assert target.read_bytes() == b"precious"
        assert "t" in json.loads((data / "topics.json").read_text())
