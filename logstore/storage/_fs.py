"""The I/O seam: every file operation of ``logstore.storage`` goes through here.

:class:`FileSystem` is the real one (POSIX calls on file descriptors). Tests
substitute a simulated disk with the same methods that knows, per file, what
was fsynced, and can cut the power or fail any call with EIO or ENOSPC
(``tests/simdisk.py``). Nothing else in storage calls ``open``, ``os.*`` or
``mmap`` on data-directory files.

Contract:
- ``OSError`` is translated here, once, into :class:`~logstore.errors.StorageError`
  (``ENOSPC``/``EDQUOT`` into :class:`~logstore.errors.DiskFullError`) with the
  path in the message; callers never see a bare ``OSError``.
- ``append`` writes every buffer at the end of the file, retrying short writes;
  if it raises, the file may hold a prefix of the data (the caller truncates
  back to its last good length).
- ``fsync`` is ``fdatasync``: it makes the file's data (and its size) durable.
  A new file's *name* is durable only after ``fsync_dir`` of its directory.
- ``replace`` is atomic (``rename(2)``); durable after ``fsync_dir``.
- ``sync_all`` (``syncfs(2)``, Linux 5.8 and later, which report write-back
  errors) makes every file's data, every file's size and every directory entry
  on the file system durable in one call. Its handle, opened once with
  ``open_sync_all``, reports every write-back error of the file system since it
  was opened, not which file failed: a caller that must attribute an error
  fsyncs the files one by one after a failure (each descriptor still reports
  its own file's error).
- Memory maps: ``map`` returns a writable buffer of a file preallocated with
  ``posix_fallocate`` (a sparse file under ENOSPC turns a write through a map
  into SIGBUS); ``sync_map`` flushes it (msync); ``unmap`` closes it. Callers
  drop every numpy view of a map before ``unmap``.
Thread-safety: the methods are as thread-safe as the system calls they wrap;
the owners (segments, the store) serialise writers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import platform
import shutil
import sys
from typing import Any, Final

from logstore.errors import DirectoryInUseError, DiskFullError, StorageError

#: Data files are only ever appended to (and truncated), so O_APPEND: every
#: write lands at the current end, whatever the file offset.
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
#: rw-r--r--: only the broker writes its files; operators' tools (backups,
#: ``logstore.storage`` inspection) may read them. The umask still applies.
FILE_MODE: Final = 0o644
#: Bytes of the lock file read to name its owner: it holds ``"<pid>\n"``, at
#: most 8 bytes on Linux (pid_max <= 4,194,304); 32 leaves room for any OS.
_LOCK_OWNER_BYTES: Final = 32


def _syncfs_function() -> Any:
    """libc's ``syncfs`` where it reports write-back errors (Linux >= 5.8), else None."""
    if sys.platform != "linux":
        return None
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None  # older kernels return 0 from syncfs after a failed write-back
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs  # ctypes releases the GIL
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS: Final = _syncfs_function()


def translate(exc: OSError, what: str) -> StorageError:
    """The typed storage error for an OSError raised while doing ``what``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(errno.ENOSPC, f"disk full while {what}: {exc.strerror}")
    return StorageError(exc.errno or errno.EIO, f"I/O error while {what}: {exc.strerror or exc}")


class io:  # noqa: N801 - used as ``with io(what):``, as a function would be
    """Translate any OSError raised in the block (used by FileSystem only). A
    class, not ``contextlib.contextmanager``: ~0.3 against ~1.2 us per block,
    and every append goes through one."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # None: nothing is swallowed; a StorageError or a non-OSError goes on as it is
        if kind is not None and issubclass(kind, OSError) and not issubclass(kind, StorageError):
            assert isinstance(exc, OSError)
            raise translate(exc, self.what) from exc


class FileSystem:
    """Real file I/O on POSIX file descriptors."""

    # --- files -------------------------------------------------------------
    def open(self, path: str, *, create: bool = False) -> int:
        """Open ``path`` for reading and appending; create it if asked."""
        flags = _OPEN_FLAGS | (os.O_CREAT if create else 0)
        with io(f"opening {path}"):
            return os.open(path, flags, FILE_MODE)

    def append(self, fd: int, buffers: list[Any], path: str = "") -> int:
        """Write ``buffers`` (bytes-like) at the end of the file; return bytes written."""
        total = sum(map(len, buffers))
        with io(f"writing {path or fd}"):
            written = os.writev(fd, buffers)
            while written < total:  # short write: continue with the rest
                rest = b"".join(bytes(b) for b in buffers)[written:]
                written += os.write(fd, rest)
        return total

    def pread(self, fd: int, size: int, position: int, path: str = "") -> bytes:
        """Up to ``size`` bytes at ``position`` (fewer only at end of file)."""
        with io(f"reading {path or fd}"):
            data = os.pread(fd, size, position)
            if len(data) < size and data:
                # pread may return short on some filesystems; loop to EOF.
                parts = [data]
                got = len(data)
                while got < size:
                    more = os.pread(fd, size - got, position + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            return data

    def size(self, fd: int, path: str = "") -> int:
        with io(f"stat {path or fd}"):
            return os.fstat(fd).st_size

    def fsync(self, fd: int, path: str = "") -> None:
        with io(f"fsync {path or fd}"):
            os.fdatasync(fd)

    def truncate(self, fd: int, length: int, path: str = "") -> None:
        with io(f"truncating {path or fd}"):
            os.ftruncate(fd, length)

    def allocate(self, fd: int, length: int, path: str = "") -> None:
        """Reserve ``length`` bytes (posix_fallocate), so maps never hit ENOSPC."""
        with io(f"allocating {length} bytes for {path or fd}"):
            os.posix_fallocate(fd, 0, length)

    def close(self, fd: int) -> None:
        with io("closing a file"):
            os.close(fd)

    # --- maps ---------------------------------------------------------------
    def map(self, fd: int, length: int, path: str = "") -> mmap.mmap:
        with io(f"mapping {path or fd}"):
            return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def sync_map(self, m: mmap.mmap, path: str = "") -> None:
        with io(f"msync {path}"):
            m.flush()

    def unmap(self, m: mmap.mmap) -> None:
        m.close()

    # --- whole files and directories ------------------------------------------
    def read_file(self, path: str) -> bytes:
        with io(f"reading {path}"), open(path, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Create or replace ``path`` with ``data`` and fsync it (not atomic).

        Never follows a symlink at ``path`` (``O_NOFOLLOW``: ELOOP instead);
        with ``exclusive``, the file must not exist yet (``O_EXCL``: EEXIST), so
        a file or symlink planted under a temp name cannot redirect the write.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        with io(f"writing {path}"):
            fd = os.open(path, flags, FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        with io(f"renaming {src} to {dst}"):
            os.replace(src, dst)

    def open_sync_all(self, path: str) -> int | None:
        """A handle for :meth:`sync_all` of the file system that holds ``path``
        (a directory), or None where ``syncfs`` is not usable."""
        if _SYNCFS is None:
            return None
        with io(f"opening {path}"):
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def sync_all(self, handle: int, path: str = "") -> None:
        """``syncfs``: everything written to the file system so far is durable."""
        with io(f"syncfs {path or handle}"):
            if _SYNCFS(handle) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)

    def close_sync_all(self, handle: int) -> None:
        with io("closing the syncfs handle"):
            os.close(handle)

    def fsync_dir(self, path: str) -> None:
        with io(f"fsync directory {path}"):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def unlink(self, path: str) -> None:
        with io(f"deleting {path}"):
            os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        with io(f"listing {path}"):
            return sorted(os.listdir(path))

    def mkdir(self, path: str) -> None:
        with io(f"creating directory {path}"):
            os.makedirs(path, exist_ok=True)

    def rmtree(self, path: str) -> None:
        with io(f"removing {path}"):
            shutil.rmtree(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def lexists(self, path: str) -> bool:
        """Whether ``path`` exists, a dangling symlink included."""
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def file_size(self, path: str) -> int:
        with io(f"stat {path}"):
            return os.stat(path).st_size

    # --- the directory lock ----------------------------------------------------
    def lock(self, path: str) -> int:
        """Take ``flock(LOCK_EX|LOCK_NB)`` on ``path``; the fd holds the lock."""
        with io(f"opening {path}"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = (
                    os.pread(fd, _LOCK_OWNER_BYTES, 0).decode(errors="replace").strip() or "unknown"
                )
            finally:
                os.close(fd)
            raise DirectoryInUseError(
                errno.EBUSY,
                f"data directory {os.path.dirname(path)} in use by pid {owner}",
            ) from None
        with io(f"writing {path}"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def unlock(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)
