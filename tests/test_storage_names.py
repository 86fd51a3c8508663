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
from tests.storagehelp import ROOT, sim_disk

pytestmark = pytest.mark.timeout(60)


# --- 4. names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a\n", "a\nb", "\na", "a\r"])
def test_topic_names_with_newlines_are_rejected(name: str) -> None:
    """A topic name is validated with a full match: no trailing newline."""
    with pytest.raises(InvalidTopicNameError):
        check_topic_name(name)
    disk = sim_disk()
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
