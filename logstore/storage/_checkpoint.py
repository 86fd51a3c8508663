"""Atomic checkpoint files: write a temp file, fsync it, rename it over the old
one, fsync the directory. After a crash a checkpoint is either the old or the
new version, never a mix; a missing checkpoint reads as empty.

Offset checkpoints (recovery points, log start offsets) are text::

    0                      version
    2                      number of entries
    events 0 1234          topic partition offset
    events 1 99

Full disk: a :class:`SpaceReserve` file of ``RESERVE_BYTES`` sits in the data
directory. A metadata write that fails with ENOSPC releases it (unlinks it)
and is tried once more, so freeing space through the API (DeleteRecords
inside the active segment, DeleteTopic of an empty topic: operations that
free no whole file before they must write) works on a 100 % full disk; the
store recreates the reserve when space returns.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Final

from logstore.errors import DiskFullError, StorageError

from ._fs import FileSystem
from ._names import TMP_SUFFIX

_VERSION = "0"
#: An offset checkpoint's first lines: the version, then the entry count.
_HEADER_LINES: Final = 2

log = logging.getLogger("logstore.storage")

#: The reserve's size: a metadata write needs room for its new copy while the
#: old one exists (replaced at the rename). 256 KiB holds an offset
#: checkpoint of ~8,000 partitions (about 30 bytes a line) or a topics.json
#: of ~1,000 topics (about 200 bytes each), and is 0.025 % of a 1 GiB
#: segment's disk.
RESERVE_BYTES: Final = 256 * 1024


class SpaceReserve:
    """A file of ``size`` zero bytes, given up to let a metadata write through
    on a full disk (module docstring). Not thread-safe: the store calls it
    under its lock."""

    def __init__(self, fs: FileSystem, path: str, size: int = RESERVE_BYTES) -> None:
        self.fs = fs
        self.path = path
        self.size = size

    def ensure(self) -> bool:
        """Create the reserve if it is absent (an old data directory, or
        released); False if the disk has no room for it yet (tried again
        later). Written, not sparse, so the blocks are really held."""
        if self.fs.exists(self.path):
            return True
        try:
            write_atomic(self.fs, self.path, bytes(self.size))
        except DiskFullError:
            tmp = self.path + TMP_SUFFIX
            if self.fs.lexists(tmp):
                self.fs.unlink(tmp)
            return False
        return True

    def release(self) -> bool:
        """Unlink the reserve to free its space; False if there was none."""
        if not self.fs.exists(self.path):
            return False
        self.fs.unlink(self.path)
        # Durable at once: the freed blocks must not come back after a crash
        # with the metadata written into them.
        self.fs.fsync_dir(os.path.dirname(self.path) or ".")
        log.warning(
            "disk full: released the %d-byte space reserve %s for a metadata write; it is "
            "recreated when space returns",
            self.size, self.path,
        )  # fmt: skip
        return True


def write_atomic(
    fs: FileSystem, path: str, data: bytes, reserve: SpaceReserve | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring).

    The temp file is created with ``O_EXCL``: a leftover one (or a symlink
    planted under its name) is unlinked first, which removes the link, never
    its target. With ``reserve``, a write that fails on a full disk releases
    the reserve and is tried once more.
    """
    tmp = path + TMP_SUFFIX
    try:
        _write_atomic(fs, path, tmp, data)
    except DiskFullError:
        if reserve is None or not reserve.release():
            raise
        _write_atomic(fs, path, tmp, data)


def _write_atomic(fs: FileSystem, path: str, tmp: str, data: bytes) -> None:
    if fs.lexists(tmp):
        fs.unlink(tmp)
    fs.write_file(tmp, data, exclusive=True)
    fs.replace(tmp, path)
    fs.fsync_dir(os.path.dirname(path) or ".")


def write_offsets(
    fs: FileSystem,
    path: str,
    offsets: dict[tuple[str, int], int],
    reserve: SpaceReserve | None = None,
) -> None:
    lines = [_VERSION, str(len(offsets))]
    lines += [f"{t} {p} {o}" for (t, p), o in sorted(offsets.items())]
    write_atomic(fs, path, ("\n".join(lines) + "\n").encode(), reserve)


def read_offsets(fs: FileSystem, path: str) -> dict[tuple[str, int], int]:
    if not fs.exists(path):
        return {}
    text = fs.read_file(path).decode(errors="replace")
    lines = text.splitlines()
    try:
        if lines[0] != _VERSION:
            raise ValueError(f"version {lines[0]!r}")
        count = int(lines[1])
        out: dict[tuple[str, int], int] = {}
        for line in lines[_HEADER_LINES : _HEADER_LINES + count]:
            t, p, o = line.split(" ")
            out[(t, int(p))] = int(o)
        if len(out) != count:
            raise ValueError("entry count mismatch")
        return out
    except (IndexError, ValueError) as exc:
        raise StorageError(f"checkpoint {path} is malformed: {exc}") from None


def write_json(fs: FileSystem, path: str, value: Any) -> None:
    write_atomic(fs, path, json.dumps(value, indent=1, sort_keys=True).encode())


def read_json(fs: FileSystem, path: str, default: Any) -> Any:
    if not fs.exists(path):
        return default
    try:
        return json.loads(fs.read_file(path))
    except ValueError as exc:
        raise StorageError(f"checkpoint {path} is malformed: {exc}") from None
