"""Durable JSON files of the security stores, and the data directory's lock.

``write_json(path, obj)`` is the checkpoint discipline of the store: write
``path.tmp``, fsync it, ``os.replace`` it over ``path``, fsync the directory.
A crash (kill -9, power cut) at any point leaves either the old file or the
new one, never a mix; a leftover ``*.tmp`` is ignored here and deleted by
``Store.open``. Files are created mode 0600: ``users.json`` holds hashes, not
tokens, but nobody else needs to read it.

:class:`DataDirLock` takes the same ``flock`` on ``<data-dir>/.lock`` the
broker's store holds while it runs, so ``logctl users|acls --data-dir``
refuses a directory a running broker owns (it would not see the change, and
would overwrite it on its next write).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Final

from logstore.errors import DirectoryInUseError, StorageError

#: The store's lock file (``logstore.storage._names.LOCK_FILE``; repeated here
#: because this package sits below the storage layer's imports).
LOCK_FILE: Final = ".lock"
#: users.json / acls.json are small (at most MAX_USERS / MAX_ACLS entries):
#: a bigger file is not ours.
MAX_FILE_BYTES: Final = 64 * 1024 * 1024


def read_json(path: str) -> Any | None:
    """The parsed file, or None when it does not exist; StorageError if unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise StorageError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{path} is not valid JSON: {exc}") from exc


def write_json(path: str, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically and durably (see module doc)."""
    data = json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"
    tmp = path + ".tmp"
    directory = os.path.dirname(path) or "."
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


class DataDirLock:
    """``flock`` of a stopped broker's data directory, held for a ``with`` block."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._fd = -1

    def __enter__(self) -> DataDirLock:
        if not os.path.isdir(self.data_dir):
            raise StorageError(f"data directory {self.data_dir} does not exist")
        path = os.path.join(self.data_dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryInUseError(
                f"data directory {self.data_dir} is in use by a running broker; manage users "
                "and ACLs through it (--bootstrap) or stop it first"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
