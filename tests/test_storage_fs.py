"""The real ``FileSystem``'s error contract: every OSError becomes the typed
storage error naming what was being done; its own errors and non-OSErrors
pass through unchanged."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from logstore.errors import StorageError
from logstore.storage._fs import FileSystem


def test_the_real_file_system_translates_os_errors(tmp_path: Path) -> None:
    """``FileSystem`` raises the typed storage errors, never a bare OSError, and
    lets its own errors through unchanged (the ``io`` block of every call)."""
    fs = FileSystem()
    with pytest.raises(StorageError, match=r"I/O error while opening .*missing") as info:
        fs.open(str(tmp_path / "missing"))
    assert info.value.errno == errno.ENOENT
    fd = fs.open(str(tmp_path / "f"), create=True)
    fs.close(fd)
    with pytest.raises(StorageError, match="I/O error while writing") as info:
        fs.append(fd, [b"x"], "f")  # a closed descriptor
    assert info.value.errno == errno.EBADF
    assert not isinstance(info.value.__cause__, StorageError)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(TypeError):  # not an OSError: through as it is
        fs.append(fd, ["not bytes"])
