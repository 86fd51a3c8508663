"""A simulated disk for storage tests: the I/O seam with power cuts and faults.

:class:`SimDisk` implements every method of :class:`logstore.storage._fs.FileSystem`
(same signatures, same errors) over an in-memory tree, and remembers what a
real disk would still hold after losing power (DESIGN.md, "The I/O seam"):

- per file, its *written* bytes (the page cache) and its *synced* bytes (the
  content as of the last ``fsync``/``write_file``/``sync_map``);
- per directory, its current entries and its *durable* entries (as of the last
  ``fsync_dir``), plus the log of entry changes (creations, renames, unlinks)
  made since, each change atomic.

:meth:`SimDisk.power_cut` returns a new disk holding what survives a power
loss: every directory keeps its durable entries plus a random prefix of the
changes logged since (possibly none: a created file disappears, a rename
reverts, an unlinked file comes back); every file keeps a length chosen from
its synced length, its written length and the multiples of 512 between them;
below the shorter of the two, every 512-byte sector that differs is either its
old or its new version; above the synced length, surviving sectors may be torn
(zeros or garbage) if asked. Writes through a map are file writes like any
other, made durable by ``sync_map``. :meth:`SimDisk.process_crash` is kill -9:
the page cache survives, descriptors, maps and locks do not.

Faults: :meth:`SimDisk.fail_next` fails the next calls of one operation with an
errno (``append`` may first write a prefix of its data); :meth:`SimDisk.inject`
installs a predicate called on every fallible call; ``capacity`` makes appends,
truncates and allocations beyond it fail with ENOSPC after writing what fits.
Errors are raised exactly as the real seam raises them: ``translate(OSError)``
chained from the OSError, so storage sees StorageError/DiskFullError.

Paths are strings, normalised with ``posixpath.normpath``; relative paths are
taken from ``/``. Nothing here touches the real file system. Thread-safe (one
lock around every call).
"""

from __future__ import annotations

import errno as errno_mod
import os
import posixpath
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from logstore.errors import DirectoryInUseError
from logstore.storage._fs import FileSystem, translate

SECTOR = 512

#: ``predicate(op, path) -> errno or None``; ``path`` is the file's path for
#: descriptor-based calls (as opened), "" when unknown.
Injector = Callable[[str, str], "int | None"]


class SimMap(bytearray):
    """The writable buffer ``SimDisk.map`` returns (a bytearray, so numpy can view it)."""

    _inode: _File
    _closed: bool


class _File:
    __slots__ = ("data", "maps", "synced")

    def __init__(self) -> None:
        self.data = bytearray()  # what a read sees now (the page cache)
        self.synced = b""  # what survives a power cut for sure
        self.maps: list[SimMap] = []

    def materialize(self) -> None:
        """Copy writes made through live maps into ``data``."""
        for m in self.maps:
            n = min(len(m), len(self.data))
            if self.data[:n] != m[:n]:
                self.data[:n] = m[:n]


class _Dir:
    __slots__ = ("durable", "entries", "log")

    def __init__(self) -> None:
        self.entries: dict[str, _Node] = {}
        self.durable: dict[str, _Node] = {}
        # each change since the last fsync_dir: a list of (name, node or None), atomic
        self.log: list[list[tuple[str, _Node | None]]] = []

    def change(self, *mutations: tuple[str, _Node | None]) -> None:
        for name, node in mutations:
            if node is None:
                self.entries.pop(name, None)
            else:
                self.entries[name] = node
        self.log.append(list(mutations))


_Node = _File | _Dir


@dataclass
class _Fault:
    op: str
    err: int
    count: int
    path: str | None
    partial: bool


@dataclass
class _Fd:
    inode: _File
    path: str


@dataclass
class Stats:
    """Counters of calls, for tests that check what storage did."""

    calls: Counter[str] = field(default_factory=Counter)


def _oserror(err: int, path: str) -> OSError:
    return OSError(err, os.strerror(err), path)


class SimDisk(FileSystem):
    """An in-memory, FileSystem-compatible disk that can lose power and fail calls.

    A subclass only so that it type-checks where a FileSystem is expected: it
    overrides every public method (checked at import, below), so nothing ever
    reaches the real file system.
    """

    def __init__(self, *, seed: int = 0, capacity: int | None = None) -> None:
        self.root = _Dir()
        self.capacity = capacity
        self.rng = random.Random(seed)
        self.stats = Stats()
        self._lock = threading.RLock()
        self._fds: dict[int, _Fd] = {}
        self._next_fd = 1000
        self._locks: dict[int, int] = {}  # id(inode) -> fd holding the flock
        self._faults: list[_Fault] = []
        self._injectors: list[Injector] = []
        self._maps: list[SimMap] = []

    # --- helpers for tests ------------------------------------------------------
    def fail_next(
        self,
        op: str,
        err: int = errno_mod.EIO,
        count: int = 1,
        *,
        path: str | None = None,
        partial: bool = False,
    ) -> None:
        """Fail the next ``count`` calls of ``op`` (on a path containing ``path``).

        With ``partial``, a failing ``append`` first writes a random prefix of
        its data (as a real short write followed by an error would).
        """
        assert hasattr(self, op), f"unknown operation {op}"
        self._faults.append(_Fault(op, err, count, path, partial))

    def inject(self, predicate: Injector) -> None:
        """Call ``predicate(op, path)`` on every fallible call; an errno fails it."""
        self._injectors.append(predicate)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._injectors.clear()

    def open_fds(self) -> int:
        """Descriptors currently open (the directory lock included)."""
        return len(self._fds)

    def live_maps(self) -> int:
        """Maps not yet unmapped (a map outlives its descriptor, as with mmap)."""
        with self._lock:
            return len(self._maps)

    def used_bytes(self) -> int:
        return sum(len(n.data) for n in self._all_files())

    def read_bytes(self, path: str) -> bytes:
        """The current content of a file (test helper; no fault injection)."""
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            node.materialize()
            return bytes(node.data)

    def durable_bytes(self, path: str) -> bytes:
        """The synced content of a file (test helper)."""
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            return node.synced

    def poke(self, path: str, position: int, data: bytes, *, durable: bool = True) -> None:
        """Overwrite bytes of a file in place (and in its synced copy): corruption."""
        with self._lock:
            node = self._lookup(path)
            assert isinstance(node, _File), path
            node.materialize()
            end = position + len(data)
            assert end <= len(node.data), "poke past the end of the file"
            node.data[position:end] = data
            for m in node.maps:
                if position < len(m):
                    m[position : min(end, len(m))] = data[: min(end, len(m)) - position]
            if durable:
                synced = bytearray(node.synced)
                if end <= len(synced):
                    synced[position:end] = data
                    node.synced = bytes(synced)

    def walk(self) -> dict[str, int]:
        """Every file path with its current size (test helper)."""
        out: dict[str, int] = {}

        def rec(d: _Dir, prefix: str) -> None:
            for name, node in d.entries.items():
                p = posixpath.join(prefix, name)
                if isinstance(node, _Dir):
                    rec(node, p)
                else:
                    node.materialize()
                    out[p] = len(node.data)

        with self._lock:
            rec(self.root, "/")
        return out

    # --- crashes ----------------------------------------------------------------
    def process_crash(self) -> SimDisk:
        """The disk as a new process sees it after kill -9: page cache intact."""
        with self._lock:
            memo: dict[int, _Node] = {}

            def copy(node: _Node) -> _Node:
                if id(node) in memo:
                    return memo[id(node)]
                if isinstance(node, _File):
                    node.materialize()
                    f = _File()
                    f.data = bytearray(node.data)
                    f.synced = node.synced
                    memo[id(node)] = f
                    return f
                d = _Dir()
                memo[id(node)] = d
                d.entries = {k: copy(v) for k, v in node.entries.items()}
                d.durable = {k: copy(v) for k, v in node.durable.items()}
                d.log = [[(k, None if v is None else copy(v)) for k, v in op] for op in node.log]
                return d

            new = SimDisk(seed=self.rng.randrange(1 << 30), capacity=self.capacity)
            root = copy(self.root)
            assert isinstance(root, _Dir)
            new.root = root
            return new

    def power_cut(
        self,
        rng: random.Random | None = None,
        *,
        torn: float = 0.0,
        keep_unsynced_changes: bool = True,
    ) -> SimDisk:
        """The disk after a power loss (this disk is left unchanged).

        ``torn`` is the probability that a surviving sector beyond a file's
        synced length holds zeros or garbage instead of what was written.
        With ``keep_unsynced_changes`` False, every directory reverts exactly to
        its durable entries; otherwise a random prefix of the changes since
        survives (directory updates are journaled in order).
        """
        rng = rng or self.rng
        with self._lock:
            for n in self._all_files():
                n.materialize()
            files: dict[int, _File] = {}
            dirs: dict[int, _Dir] = {}

            def cut_file(node: _File) -> _File:
                if id(node) in files:
                    return files[id(node)]
                f = _File()
                f.data = bytearray(_survivor(node.synced, bytes(node.data), rng, torn))
                f.synced = bytes(f.data)
                files[id(node)] = f
                return f

            def cut_dir(node: _Dir) -> _Dir:
                if id(node) in dirs:
                    return dirs[id(node)]
                d = _Dir()
                dirs[id(node)] = d
                entries = dict(node.durable)
                keep = rng.randint(0, len(node.log)) if keep_unsynced_changes else 0
                for op in node.log[:keep]:
                    for name, child in op:
                        if child is None:
                            entries.pop(name, None)
                        else:
                            entries[name] = child
                for name, child in sorted(entries.items()):
                    d.entries[name] = (
                        cut_file(child) if isinstance(child, _File) else cut_dir(child)
                    )
                d.durable = dict(d.entries)
                return d

            new = SimDisk(seed=rng.randrange(1 << 30), capacity=self.capacity)
            new.root = cut_dir(self.root)
            return new

    # --- internals --------------------------------------------------------------
    def _all_dirs(self) -> list[_Dir]:
        """Every directory reachable from the root, by entry or durable entry."""
        out: dict[int, _Dir] = {}
        stack: list[_Dir] = [self.root]
        while stack:
            d = stack.pop()
            if id(d) in out:
                continue
            out[id(d)] = d
            nodes = list(d.entries.values()) + list(d.durable.values())
            stack += [n for n in nodes if isinstance(n, _Dir)]
        return list(out.values())

    def _all_files(self) -> list[_File]:
        out: dict[int, _File] = {}
        for d in self._all_dirs():
            for node in list(d.entries.values()) + list(d.durable.values()):
                if isinstance(node, _File):
                    out[id(node)] = node
        for f in self._fds.values():
            out[id(f.inode)] = f.inode
        return list(out.values())

    @staticmethod
    def _norm(path: str | os.PathLike[str]) -> str:
        p = posixpath.normpath("/" + os.fspath(path))
        return "/" + p.lstrip("/")

    def _split(self, path: str) -> tuple[list[str], str]:
        p = self._norm(path)
        parts = [x for x in p.split("/") if x]
        if not parts:
            return [], ""
        return parts[:-1], parts[-1]

    def _dir_of(self, parts: list[str], path: str) -> _Dir:
        d = self.root
        for part in parts:
            node = d.entries.get(part)
            if node is None:
                raise _oserror(errno_mod.ENOENT, path)
            if not isinstance(node, _Dir):
                raise _oserror(errno_mod.ENOTDIR, path)
            d = node
        return d

    def _lookup(self, path: str) -> _Node:
        parts, name = self._split(path)
        if not name:
            return self.root
        d = self._dir_of(parts, path)
        node = d.entries.get(name)
        if node is None:
            raise _oserror(errno_mod.ENOENT, path)
        return node

    def _check(self, op: str, path: str) -> _Fault | None:
        """Raise (or return a partial-append fault) if a fault applies to this call."""
        self.stats.calls[op] += 1
        for fault in self._faults:
            if fault.op == op and fault.count > 0 and (fault.path is None or fault.path in path):
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
                if op == "append" and fault.partial:
                    return fault
                raise _oserror(fault.err, path)
        for inj in self._injectors:
            err = inj(op, path)
            if err:
                raise _oserror(err, path)
        return None

    def _fd(self, fd: int) -> _Fd:
        try:
            return self._fds[fd]
        except KeyError:
            raise _oserror(errno_mod.EBADF, str(fd)) from None

    def _room(self, grow: int) -> int:
        """How many of ``grow`` more bytes fit under the capacity."""
        if self.capacity is None:
            return grow
        return max(0, min(grow, self.capacity - self.used_bytes()))

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                return fn()
            except OSError as exc:
                raise translate(exc, what) from exc

    # --- files (the FileSystem interface) --------------------------------------------
    def open(self, path: str, *, create: bool = False) -> int:
        """Open ``path`` for reading and appending; create it if asked."""

        def go() -> int:
            self._check("open", path)
            parts, name = self._split(path)
            d = self._dir_of(parts, path)
            node = d.entries.get(name)
            if node is None:
                if not create:
                    raise _oserror(errno_mod.ENOENT, path)
                node = _File()
                d.change((name, node))
            if isinstance(node, _Dir):
                raise _oserror(errno_mod.EISDIR, path)
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = _Fd(node, self._norm(path))
            return fd

        return self._run(f"opening {path}", go)  # type: ignore[no-any-return]

    def append(self, fd: int, buffers: list[Any], path: str = "") -> int:
        """Write ``buffers`` at the end of the file; return bytes written."""

        def go() -> int:
            f = self._fd(fd)
            data = b"".join(bytes(b) for b in buffers)
            fault = self._check("append", f.path)
            f.inode.materialize()
            if fault is not None:
                cut = self.rng.randrange(len(data)) if data else 0
                f.inode.data += data[: self._room(cut)]
                raise _oserror(fault.err, f.path)
            room = self._room(len(data))
            f.inode.data += data[:room]
            if room < len(data):
                raise _oserror(errno_mod.ENOSPC, f.path)
            return len(data)

        return self._run(f"writing {path or fd}", go)  # type: ignore[no-any-return]

    def pread(self, fd: int, size: int, position: int, path: str = "") -> bytes:
        """Up to ``size`` bytes at ``position`` (fewer only at end of file)."""

        def go() -> bytes:
            f = self._fd(fd)
            self._check("pread", f.path)
            if size < 0 or position < 0:
                raise _oserror(errno_mod.EINVAL, f.path)
            f.inode.materialize()
            return bytes(f.inode.data[position : position + size])

        return self._run(f"reading {path or fd}", go)  # type: ignore[no-any-return]

    def size(self, fd: int, path: str = "") -> int:
        def go() -> int:
            f = self._fd(fd)
            self._check("size", f.path)
            return len(f.inode.data)

        return self._run(f"stat {path or fd}", go)  # type: ignore[no-any-return]

    def fsync(self, fd: int, path: str = "") -> None:
        def go() -> None:
            f = self._fd(fd)
            self._check("fsync", f.path)
            f.inode.materialize()
            f.inode.synced = bytes(f.inode.data)

        self._run(f"fsync {path or fd}", go)

    def truncate(self, fd: int, length: int, path: str = "") -> None:
        def go() -> None:
            f = self._fd(fd)
            self._check("truncate", f.path)
            if length < 0:
                raise _oserror(errno_mod.EINVAL, f.path)
            f.inode.materialize()
            cur = len(f.inode.data)
            if length <= cur:
                del f.inode.data[length:]
            else:
                if self._room(length - cur) < length - cur:
                    raise _oserror(errno_mod.ENOSPC, f.path)
                f.inode.data += bytes(length - cur)

        self._run(f"truncating {path or fd}", go)

    def allocate(self, fd: int, length: int, path: str = "") -> None:
        """Reserve ``length`` bytes (posix_fallocate): extend with zeros, never shrink."""

        def go() -> None:
            f = self._fd(fd)
            self._check("allocate", f.path)
            if length <= 0:
                raise _oserror(errno_mod.EINVAL, f.path)
            f.inode.materialize()
            cur = len(f.inode.data)
            if length > cur:
                if self._room(length - cur) < length - cur:
                    raise _oserror(errno_mod.ENOSPC, f.path)
                f.inode.data += bytes(length - cur)

        self._run(f"allocating {length} bytes for {path or fd}", go)

    def close(self, fd: int) -> None:
        def go() -> None:
            f = self._fd(fd)
            del self._fds[fd]  # released even when close reports an error
            for key, holder in list(self._locks.items()):
                if holder == fd:
                    del self._locks[key]
            self._check("close", f.path)

        self._run("closing a file", go)

    # --- maps -----------------------------------------------------------------------
    def map(self, fd: int, length: int, path: str = "") -> SimMap:  # type: ignore[override]
        def go() -> SimMap:
            f = self._fd(fd)
            self._check("map", f.path)
            f.inode.materialize()
            if length <= 0 or length > len(f.inode.data):
                # mmap.mmap raises ValueError for a length beyond the file
                raise ValueError(f"mmap length {length} is greater than file size")
            m = SimMap(f.inode.data[:length])
            m._inode = f.inode
            m._closed = False
            f.inode.maps.append(m)
            self._maps.append(m)
            return m

        return self._run(f"mapping {path or fd}", go)  # type: ignore[no-any-return]

    def sync_map(self, m: SimMap, path: str = "") -> None:  # type: ignore[override]
        def go() -> None:
            if m._closed:
                raise ValueError("mmap closed or invalid")
            self._check("sync_map", path)
            node = m._inode
            node.materialize()
            synced = bytearray(node.synced)
            n = min(len(m), len(node.data))
            if len(synced) < n:
                synced += node.data[len(synced) : n]
            synced[:n] = node.data[:n]
            node.synced = bytes(synced)

        self._run(f"msync {path}", go)

    def unmap(self, m: SimMap) -> None:  # type: ignore[override]
        with self._lock:
            if m._closed:
                return
            # mmap.close() refuses while buffers (numpy views) are exported
            try:
                m.append(0)
            except BufferError:
                raise BufferError("cannot close exported pointers exist") from None
            m.pop()
            m._inode.materialize()
            # by identity: bytearrays compare by value
            m._inode.maps[:] = [x for x in m._inode.maps if x is not m]
            self._maps[:] = [x for x in self._maps if x is not m]
            m._closed = True

    # --- whole files and directories ---------------------------------------------------
    def read_file(self, path: str) -> bytes:
        def go() -> bytes:
            self._check("read_file", path)
            node = self._lookup(path)
            if isinstance(node, _Dir):
                raise _oserror(errno_mod.EISDIR, path)
            node.materialize()
            return bytes(node.data)

        return self._run(f"reading {path}", go)  # type: ignore[no-any-return]

    def write_file(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Create or replace ``path`` with ``data`` and fsync it (not atomic);
        with ``exclusive``, EEXIST if it exists (O_EXCL)."""

        def go() -> None:
            self._check("write_file", path)
            parts, name = self._split(path)
            d = self._dir_of(parts, path)
            node = d.entries.get(name)
            if node is not None and exclusive:
                raise _oserror(errno_mod.EEXIST, path)
            if isinstance(node, _Dir):
                raise _oserror(errno_mod.EISDIR, path)
            if node is None:
                node = _File()
                d.change((name, node))
            node.materialize()
            del node.data[:]
            room = self._room(len(data))
            node.data += bytes(data[:room])
            if room < len(data):
                raise _oserror(errno_mod.ENOSPC, path)
            node.synced = bytes(node.data)

        self._run(f"writing {path}", go)

    def replace(self, src: str, dst: str) -> None:
        def go() -> None:
            self._check("replace", src)
            sparts, sname = self._split(src)
            dparts, dname = self._split(dst)
            sd = self._dir_of(sparts, src)
            dd = self._dir_of(dparts, dst)
            node = sd.entries.get(sname)
            if node is None:
                raise _oserror(errno_mod.ENOENT, src)
            target = dd.entries.get(dname)
            if target is node:
                return
            if isinstance(target, _Dir):
                if not isinstance(node, _Dir):
                    raise _oserror(errno_mod.EISDIR, dst)
                if target.entries:
                    raise _oserror(errno_mod.ENOTEMPTY, dst)
            elif target is not None and isinstance(node, _Dir):
                raise _oserror(errno_mod.ENOTDIR, dst)
            if sd is dd:
                sd.change((dname, node), (sname, None))  # one atomic change
            else:
                dd.change((dname, node))
                sd.change((sname, None))

        self._run(f"renaming {src} to {dst}", go)

    def open_sync_all(self, path: str) -> int | None:
        def go() -> int:
            self._check("open_sync_all", path)
            if not isinstance(self._lookup(path), _Dir):
                raise _oserror(errno_mod.ENOTDIR, path)
            return -1  # one disk: the handle names nothing more

        result: int = self._run(f"opening {path}", go)
        return result

    def sync_all(self, handle: int, path: str = "") -> None:
        """Every file's data and every directory's entries durable (syncfs)."""

        def go() -> None:
            self._check("sync_all", path)
            for f in self._all_files():
                f.materialize()
                f.synced = bytes(f.data)
            for d in self._all_dirs():
                d.durable = dict(d.entries)
                d.log.clear()

        self._run(f"syncfs {path or handle}", go)

    def close_sync_all(self, handle: int) -> None:
        self.stats.calls["close_sync_all"] += 1

    def fsync_dir(self, path: str) -> None:
        def go() -> None:
            self._check("fsync_dir", path)
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise _oserror(errno_mod.ENOTDIR, path)
            node.durable = dict(node.entries)
            node.log.clear()

        self._run(f"fsync directory {path}", go)

    def unlink(self, path: str) -> None:
        def go() -> None:
            self._check("unlink", path)
            parts, name = self._split(path)
            d = self._dir_of(parts, path)
            node = d.entries.get(name)
            if node is None:
                raise _oserror(errno_mod.ENOENT, path)
            if isinstance(node, _Dir):
                raise _oserror(errno_mod.EISDIR, path)
            d.change((name, None))

        self._run(f"deleting {path}", go)

    def listdir(self, path: str) -> list[str]:
        def go() -> list[str]:
            self._check("listdir", path)
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise _oserror(errno_mod.ENOTDIR, path)
            return sorted(node.entries)

        return self._run(f"listing {path}", go)  # type: ignore[no-any-return]

    def mkdir(self, path: str) -> None:
        """``os.makedirs(path, exist_ok=True)``."""

        def go() -> None:
            self._check("mkdir", path)
            d = self.root
            for part in self._split(path)[0] + [self._split(path)[1]]:
                if not part:
                    continue
                node = d.entries.get(part)
                if node is None:
                    node = _Dir()
                    d.change((part, node))
                elif not isinstance(node, _Dir):
                    raise _oserror(errno_mod.EEXIST, path)
                d = node

        self._run(f"creating directory {path}", go)

    def rmtree(self, path: str) -> None:
        def go() -> None:
            self._check("rmtree", path)
            parts, name = self._split(path)
            parent = self._dir_of(parts, path)
            node = parent.entries.get(name)
            if node is None:
                raise _oserror(errno_mod.ENOENT, path)
            if not isinstance(node, _Dir):
                raise _oserror(errno_mod.ENOTDIR, path)

            def empty(d: _Dir) -> None:
                for child_name, child in sorted(d.entries.items()):
                    if isinstance(child, _Dir):
                        empty(child)
                    d.change((child_name, None))

            empty(node)
            parent.change((name, None))

        self._run(f"removing {path}", go)

    def exists(self, path: str) -> bool:
        with self._lock:
            try:
                self._lookup(path)
            except OSError:
                return False
            return True

    def lexists(self, path: str) -> bool:
        """No symlinks here: the same as ``exists``."""
        return self.exists(path)

    def isdir(self, path: str) -> bool:
        with self._lock:
            try:
                return isinstance(self._lookup(path), _Dir)
            except OSError:
                return False

    def file_size(self, path: str) -> int:
        def go() -> int:
            self._check("file_size", path)
            node = self._lookup(path)
            if isinstance(node, _Dir):
                return 4096
            node.materialize()
            return len(node.data)

        return self._run(f"stat {path}", go)  # type: ignore[no-any-return]

    # --- the directory lock -------------------------------------------------------------
    def lock(self, path: str) -> int:
        """Take the (simulated) exclusive lock on ``path``; the fd holds it."""
        fd = self.open(path, create=True)
        with self._lock:
            inode = self._fds[fd].inode
            holder = self._locks.get(id(inode))
            if holder is not None:
                owner = bytes(inode.data[:32]).decode(errors="replace").strip() or "unknown"
                del self._fds[fd]
                raise DirectoryInUseError(
                    errno_mod.EBUSY,
                    f"data directory {posixpath.dirname(self._norm(path))} in use by pid {owner}",
                )
            self._locks[id(inode)] = fd
            inode.materialize()
            inode.data[:] = f"{os.getpid()}\n".encode()
        return fd

    def unlock(self, fd: int) -> None:
        with self._lock:
            f = self._fds.pop(fd, None)
            if f is not None:
                self._locks.pop(id(f.inode), None)


_NOT_OVERRIDDEN = [
    name
    for name, value in vars(FileSystem).items()
    if callable(value) and not name.startswith("_") and name not in vars(SimDisk)
]
assert not _NOT_OVERRIDDEN, f"SimDisk must override FileSystem.{_NOT_OVERRIDDEN}"


def _survivor(synced: bytes, written: bytes, rng: random.Random, torn: float) -> bytes:
    """What one file holds after a power cut (see the module docstring)."""
    lo, hi = sorted((len(synced), len(written)))
    choices = [lo, hi, *range((lo // SECTOR + 1) * SECTOR, hi, SECTOR)]
    length = rng.choice(choices)
    out = bytearray()
    # below both lengths: each differing sector is old or new
    common = min(lo, length)
    for start in range(0, common, SECTOR):
        end = min(start + SECTOR, common)
        old, new = synced[start:end], written[start:end]
        out += old if old == new or rng.random() < 0.5 else new
    # above the shorter one: only the longer version has bytes there
    longer = written if len(written) >= len(synced) else synced
    out += longer[common:length]
    if torn and len(written) > len(synced):
        for start in range(len(synced) - len(synced) % SECTOR, length, SECTOR):
            s = max(start, len(synced))
            end = min(start + SECTOR, length)
            if s < end and rng.random() < torn:
                junk = bytes(end - s) if rng.random() < 0.5 else rng.randbytes(end - s)
                out[s:end] = junk
    return bytes(out)
