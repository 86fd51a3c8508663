"""Sparse offset and time indexes of one segment (numpy).

File formats (little-endian, fixed-size entries, no header)::

    .index      (relative offset u32, position u32)                 8 bytes
    .timeindex  (running max timestamp i64, relative offset u32, pad u32)  16 bytes

An offset entry ``(r, p)`` says: the frame whose base offset is
``segment base + r`` starts at byte ``p`` of the .log file. A time entry
``(t, r)`` says: every frame up to and including the one at relative offset
``r`` has timestamps <= t, and ``t`` is the running maximum there. Entries are
added only when ``t`` grows, so the timestamp column is non-decreasing and
``searchsorted`` is valid even when records arrive out of time order. The
time entries are 16 bytes so the i64 column is aligned: a 12-byte stride
makes numpy copy the column on every lookup.

Memory: only the active segment's indexes are memory maps, of a file
preallocated with ``posix_fallocate`` (a sparse file under ENOSPC turns a write
through a map into SIGBUS); the map starts small and doubles up to
``MAX_INDEX_BYTES``, so a thousand idle partitions do not preallocate
gigabytes. Sealed indexes are trimmed to their entries and read with one
``read_file`` into :class:`IndexCache`, a byte-bounded LRU shared by the
store; they hold no descriptor or map. No numpy view of a map leaves this
module: lookups return Python ints.

Trust: entries are hints. A lookup's answer is verified by the segment
against the frame header found at the position; the loader keeps only the
longest strictly increasing prefix of entries (a torn or zero-filled tail is
dropped). An empty or missing index file is an empty index.

Identity: a cleaner swap puts a new segment's index at the old one's path
while readers may still hold the old segment. So :class:`IndexCache` is keyed
by the index *object* (path + a generation number unique to it), never by the
path alone, and the swap detaches (``_Index.detach``) the old indexes first:
from then on they keep what they hold in memory (the cached entries, else
none: lookups then scan the old file from its start, correct and only slower)
and never read, write or delete the file at the path again. Without this a
reader of the old segment loaded the new index against the old file, found
it wrong, rebuilt it from the old file and wrote that over the new segment's
index file.

Thread-safety: the owner (Segment) serialises writers; lookups may run
concurrently with appends (an entry is written before ``n`` grows).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from logstore._types import Position
from logstore.errors import DiskFullError

from ._fs import FileSystem

log = logging.getLogger("logstore.storage")

#: Kafka's default segment.index.bytes: 10 MiB. An index that reaches it
#: makes the segment roll.
MAX_INDEX_BYTES: Final = 10 * 1024 * 1024
#: First size of an active index map (2,048 offset entries, one per 4 KiB of
#: frames: an 8 MiB segment's worth); grown by _GROWTH_FACTOR as it fills.
INITIAL_INDEX_BYTES: Final = 16 * 1024
#: Doubling: appends remap O(log n) times, at most 10 MiB / 16 KiB = 2^9 ->
#: 9 remaps per index.
_GROWTH_FACTOR: Final = 2
#: Both columns of an offset entry are u32 (relative offset, position).
_U32_LIMIT: Final = 1 << 32

OFFSET_DTYPE: Final = np.dtype([("rel", "<u4"), ("pos", "<u4")])
TIME_DTYPE: Final = np.dtype([("ts", "<i8"), ("rel", "<u4"), ("pad", "<u4")])


#: One number per index object: half of its cache key (see "Identity").
_GENERATIONS: Final = itertools.count(1)

#: An index's cache key: its file's path and the index object's generation.
CacheKey = tuple[str, int]


class IndexCache:
    """Byte-bounded LRU of sealed index arrays, keyed by index (``CacheKey``)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[CacheKey, npt.NDArray[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: CacheKey) -> npt.NDArray[Any] | None:
        with self._lock:
            arr = self._items.get(path)
            if arr is not None:
                self._items.move_to_end(path)
            return arr

    def put(self, path: CacheKey, arr: npt.NDArray[Any]) -> None:
        with self._lock:
            old = self._items.pop(path, None)
            if old is not None:
                self._bytes -= old.nbytes
            if arr.nbytes > self.max_bytes:
                return
            self._items[path] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def drop(self, path: CacheKey) -> None:
        with self._lock:
            old = self._items.pop(path, None)
            if old is not None:
                self._bytes -= old.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes


def _valid_prefix(arr: npt.NDArray[Any], limit_rel: int | None) -> int:
    """Length of the longest prefix whose relative offsets strictly increase
    (and, for offset entries, positions too), with rel <= limit_rel."""
    n = len(arr)
    if n == 0:
        return 0
    rel = arr["rel"].astype(np.int64)
    ok = np.ones(n, dtype=bool)
    ok[1:] = rel[1:] > rel[:-1]
    if "pos" in arr.dtype.names:  # type: ignore[operator]
        pos = arr["pos"].astype(np.int64)
        ok[1:] &= pos[1:] > pos[:-1]
    else:
        ts = arr["ts"]
        ok[1:] &= ts[1:] >= ts[:-1]
    if limit_rel is not None:
        ok &= rel <= limit_rel
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else n


class _Index:
    """Common state of the two index kinds; see the module docstring."""

    dtype: np.dtype[Any]

    def __init__(self, fs: FileSystem, path: str, cache: IndexCache) -> None:
        self.fs = fs
        self.path = path
        self.cache = cache
        self._key: CacheKey = (path, next(_GENERATIONS))
        #: Set by :meth:`detach`: the entries, in memory only, and no more file access.
        self._detached: npt.NDArray[Any] | None = None
        self.n = 0  # number of valid entries
        #: (n, the last entry as Python ints) when ``last()`` or an append saw
        #: n entries; a stale n means recompute. Every append reads the last
        #: entries (the monotonic check, the next entry's due test), and a
        #: numpy scalar read costs about a microsecond a field.
        self._last: tuple[int, Any] | None = None
        self._fd: int | None = None
        self._mm: Any = None
        self._arr: npt.NDArray[Any] | None = None  # view of the map (active only)
        self._capacity = 0  # entries the map can hold

    # --- state -----------------------------------------------------------------
    @property
    def is_mapped(self) -> bool:
        return self._arr is not None

    @property
    def mapped_bytes(self) -> int:
        return self._capacity * self.dtype.itemsize if self._arr is not None else 0

    @property
    def is_full(self) -> bool:
        return (self.n + 1) * self.dtype.itemsize > MAX_INDEX_BYTES

    def load(self, limit_rel: int | None = None) -> None:
        """Read the entry count from the file (sealed or after a restart)."""
        arr = self._read_file()
        self.n = _valid_prefix(arr, limit_rel)
        self._last = None

    def detach(self) -> None:
        """The file at ``path`` is about to be another index's (a cleaner swap):
        keep the entries this index has in memory (its cached ones; none if
        evicted, which only makes lookups scan from the start) and never touch
        the file again. Sealed indexes only; no I/O."""
        assert self._arr is None, "only a sealed index is detached"
        arr = self.cache.get(self._key)
        kept = arr if arr is not None and len(arr) >= self.n else np.zeros(0, dtype=self.dtype)
        self._detached = kept
        self.n = min(self.n, len(kept))
        self._last = None
        self.cache.drop(self._key)

    def _read_file(self) -> npt.NDArray[Any]:
        if self._detached is not None:
            return self._detached
        if not self.fs.exists(self.path):
            return np.zeros(0, dtype=self.dtype)
        data = self.fs.read_file(self.path)
        usable = len(data) - len(data) % self.dtype.itemsize
        return np.frombuffer(data[:usable], dtype=self.dtype)

    def entries(self) -> npt.NDArray[Any]:
        """The valid entries (read-only; a copy for the active index)."""
        if self._arr is not None:
            return self._arr[: self.n].copy()
        if self._detached is not None:
            return self._detached[: self.n]
        arr = self.cache.get(self._key)
        if arr is None or len(arr) < self.n:
            arr = self._read_file()[: self.n]
            self.cache.put(self._key, arr)
        return arr[: self.n]

    def _view(self) -> npt.NDArray[Any]:
        """Entries for a lookup, without copying."""
        if self._arr is not None:
            return self._arr[: self.n]
        return self.entries()

    # --- active maps --------------------------------------------------------------
    def map(self, min_entries: int = 0) -> None:
        """Map the file for appending (creating or growing it)."""
        assert self._detached is None, "a detached index is never appended to"
        want = max(self.n + 1, min_entries, INITIAL_INDEX_BYTES // self.dtype.itemsize)
        cap = INITIAL_INDEX_BYTES // self.dtype.itemsize
        while cap < want:
            cap *= _GROWTH_FACTOR
        cap = min(cap, MAX_INDEX_BYTES // self.dtype.itemsize)
        cap = max(cap, self.n)
        if self._arr is not None and cap <= self._capacity:
            return
        self.unmap()
        fd = self.fs.open(self.path, create=True)
        try:
            nbytes = cap * self.dtype.itemsize
            size = self.fs.size(fd, self.path)
            if size > nbytes:
                self.fs.truncate(fd, nbytes, self.path)
            self.fs.allocate(fd, nbytes, self.path)
            self._mm = self.fs.map(fd, nbytes, self.path)
        finally:
            self.fs.close(fd)
        self._arr = np.frombuffer(self._mm, dtype=self.dtype)
        self._capacity = cap
        self.cache.drop(self._key)

    def unmap(self, *, sync: bool = True) -> None:
        """Drop the map (entries stay in the file, which keeps its length).

        With ``sync`` (msync) the entries are durable on return; without, they
        are in the page cache like any write and a later ``fsync`` of the file
        makes them durable (what a roll does: :meth:`seal` with ``sync=False``,
        then :meth:`sync_file` off the append path).
        """
        if self._arr is not None:
            self._arr = None
            mm, self._mm = self._mm, None
            if sync:
                self.fs.sync_map(mm, self.path)
            try:
                self.fs.unmap(mm)
            except BufferError:
                # A numpy view is still alive (e.g. held by a traceback); the
                # map is released with it.
                pass
        self._capacity = 0

    def seal(self, *, sync: bool = True) -> None:
        """Unmap and trim the file to its entries; with ``sync``, fsync it.

        Without ``sync`` nothing waits for the disk (no msync, no fsync: a
        segment roll under the partition's lock); :meth:`sync_file` makes
        the trimmed file durable later.
        """
        self.unmap(sync=sync)
        if self._detached is not None:
            return
        if not self.fs.exists(self.path):
            if sync:
                self.fs.write_file(self.path, b"")
            return  # without sync: left missing (a missing index is an empty one)
        fd = self.fs.open(self.path)
        try:
            self.fs.truncate(fd, self.n * self.dtype.itemsize, self.path)
            if sync:
                self.fs.fsync(fd, self.path)
        finally:
            self.fs.close(fd)

    def sync_file(self) -> None:
        """Fsync the sealed index file, so its entries are durable: the
        deferred half of ``seal(sync=False)``. A missing file (never
        created, or deleted with its segment since) is an empty index:
        nothing to do."""
        if self._detached is not None or not self.fs.exists(self.path):
            return
        fd = self.fs.open(self.path)
        try:
            self.fs.fsync(fd, self.path)
        finally:
            self.fs.close(fd)

    def truncate_entries(self, n: int) -> None:
        """Keep only the first ``n`` entries."""
        assert n <= self.n
        if self._arr is not None:
            self._arr[n : self.n] = 0
        self.n = n
        self._last = None
        self.cache.drop(self._key)

    def reset(self) -> None:
        """Forget every entry (the caller rebuilds the index)."""
        if self._arr is not None:
            self._arr[: self.n] = 0
        self.n = 0
        self._last = None
        self.cache.drop(self._key)

    def replace(self, arr: npt.NDArray[Any]) -> None:
        """Replace every entry with ``arr`` (a rebuilt index)."""
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._last = None
        self.cache.drop(self._key)
        if self._detached is not None:  # rebuilt from the old file: kept in memory only
            self._detached = arr
            self.n = len(arr)
            return
        if self._arr is not None:
            self.reset()
            self.map(len(arr))
            assert self._arr is not None
            self._arr[: len(arr)] = arr
            self.n = len(arr)
        else:
            try:
                self.fs.write_file(self.path, arr.tobytes())
            except DiskFullError as exc:
                # A rebuild runs on first use of a segment, reads included: a
                # full disk must not fail a read. Entries are hints, so an empty
                # index is correct (lookups scan from the start); the file keeps
                # a prefix of the new entries, and the next open rebuilds again.
                log.warning("%s: rebuilt index not written, left empty: %s", self.path, exc)
                self.n = 0
                return
            self.n = len(arr)
            self.cache.put(self._key, arr)

    def delete(self) -> None:
        self.unmap()
        self.cache.drop(self._key)
        if self._detached is None and self.fs.exists(self.path):
            self.fs.unlink(self.path)

    def reserve(self) -> None:
        """Make room for one more entry (maps or grows the file; may raise)."""
        self._slot()

    def _slot(self) -> npt.NDArray[Any]:
        if self._arr is None or self.n >= self._capacity:
            self.map(self.n + 1)
        assert self._arr is not None
        return self._arr


class OffsetIndex(_Index):
    dtype = OFFSET_DTYPE

    def append(self, rel: int, pos: Position) -> None:
        assert 0 <= rel < _U32_LIMIT and 0 <= pos < _U32_LIMIT
        arr = self._slot()
        n = self.n
        if n:
            last_rel, last_pos = self.last()
            assert rel > last_rel and pos > last_pos, "index must increase"
        arr[n] = (rel, pos)
        self.n = n + 1  # after the entry: a concurrent lookup never sees a blank one
        self._last = (n + 1, (rel, pos))

    def lookup(self, rel: int) -> tuple[int, Position]:
        """The last entry with relative offset <= ``rel``: (relative offset, its
        frame's position); (0, 0) if none."""
        view = self._view()
        if not len(view):
            return 0, Position(0)
        i = int(np.searchsorted(view["rel"], np.uint32(rel), side="right")) - 1
        if i < 0:
            return 0, Position(0)
        return int(view[i]["rel"]), Position(int(view[i]["pos"]))

    def last(self) -> tuple[int, Position]:
        n = self.n
        if not n:
            return 0, Position(0)
        cached = self._last
        if cached is not None and cached[0] == n:
            return cached[1]  # type: ignore[no-any-return]
        e = self._view()[n - 1]
        entry = (int(e["rel"]), Position(int(e["pos"])))
        self._last = (n, entry)
        return entry

    def count_below_position(self, pos: Position) -> int:
        """Number of entries whose position is < ``pos`` (for truncation)."""
        view = self._view()
        return int(np.searchsorted(view["pos"], np.uint32(pos), side="left"))


class TimeIndex(_Index):
    dtype = TIME_DTYPE

    def append(self, ts: int, rel: int) -> None:
        arr = self._slot()
        n = self.n
        if n:
            last = self.last()
            assert last is not None and ts > last[0] and rel > last[1], "time index must increase"
        arr[n] = (ts, rel, 0)
        self.n = n + 1  # after the entry: a concurrent lookup never sees a blank one
        self._last = (n + 1, (ts, rel))

    def last(self) -> tuple[int, int] | None:
        """(max timestamp, relative offset) of the last entry, or None."""
        n = self.n
        if not n:
            return None
        cached = self._last
        if cached is not None and cached[0] == n:
            return cached[1]  # type: ignore[no-any-return]
        e = self._view()[n - 1]
        entry = (int(e["ts"]), int(e["rel"]))
        self._last = (n, entry)
        return entry

    def scan_start(self, ts: int) -> int:
        """Relative offset from which to scan for the first timestamp >= ``ts``."""
        view = self._view()
        if not len(view):
            return 0
        i = int(np.searchsorted(view["ts"], np.int64(ts), side="left"))
        return 0 if i == 0 else int(view[i - 1]["rel"])

    def count_below_rel(self, rel: int) -> int:
        view = self._view()
        return int(np.searchsorted(view["rel"], np.uint32(rel), side="left"))
