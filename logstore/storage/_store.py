"""Store: every topic and partition of one data directory.

``Store.open(path)`` creates the directory, takes its lock (``flock`` on
``.lock``; a second opener gets "data directory X in use by pid N"), finishes
interrupted topic deletions (``*.deleted``), removes leftover ``*.tmp`` files,
and opens every partition: after a clean shutdown (the ``.clean_shutdown``
marker) without scanning, else recovering from the recovery-point checkpoint.

Topics: ``topics.json`` is the source of truth for names, partition counts
and configs; data is never deleted because it is missing or damaged: the open
then refuses with one line naming the file (a :class:`CatalogError`), and
``Store.open(path, rebuild_catalog=True)`` (``python -m logstore.storage
rebuild-catalog DIR``) rebuilds it from the partition directories. Names read
back from it are validated like new ones.

Every metadata change is applied in memory only once it is durable. Creating
a topic (or partitions) makes and fsyncs the partition directories, then
rewrites ``topics.json`` atomically, then publishes them; if the write fails
the directories are removed. A crash in between leaves directories without
records that no topic lists: removed on open. Deleting a topic works the
other way round so that it frees space on a full disk: its directories are
renamed to short ``<uuid>.deleted`` names (fsynced), removed, and then the
smaller ``topics.json`` is written; a crash in between brings the topic back
empty. ``delete_records`` likewise deletes whole segments before it writes the
log-start checkpoint, and applies the new start only once that is durable.

Flush: ``flush()`` makes more than ``SYNC_ALL_MIN_PARTITIONS`` partitions
durable with one ``syncfs`` (``_sync_all``), fewer (or after a ``syncfs``
error) with a fsync per partition.

Checkpoints (atomic): recovery points advance with flushes at most every
``recovery_checkpoint_interval_ms``, with the producer snapshots that are due
(``producer_snapshot_interval_ms``); log start offsets when they move.

Shutdown: ``close()`` writes the ``.clean_shutdown`` marker only if every
partition flushed and none failed (a partition whose fsync failed has a page
cache that may not match its disk); without it the next open re-checks every
frame from the recovery point. A full disk never refuses an open: a checkpoint
it cannot write is retried by ``maintain()``; repeated background errors are
logged once a minute.

Layout of the package: ``_catalog`` (topics.json), ``_partition`` (appends,
reads, offsets) with ``_loader`` (open and recovery), ``_group_commit``
(fsync waiters and the flusher thread), ``_retention``, ``_segments`` (the
ordered segment list) and ``_segment`` (one .log and its indexes).

Threads: every method is thread-safe. Embedded use starts no thread;
``start_flusher()`` (the broker) starts one that serves group commits.
``topics()`` takes no lock (the topic map is replaced, never mutated), so a
listing never waits for a big create.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from logstore._types import OffsetAndTimestamp
from logstore.config import StoreConfig, TopicConfig
from logstore.errors import (
    CatalogError,
    CorruptRecordError,
    DiskFullError,
    InvalidArgumentError,
    InvalidBatchError,
    StorageError,
    StoreClosedError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownProducerIdError,
    UnknownTopicError,
)
from logstore.wire import (
    ColumnBatch,
    Record,
    check_level,
    codec_of,
    compress,
    compressed_field,
    compressed_payload,
    decompress,
    encode_records,
    keyed_record_count,
    max_record_timestamp,
)

from ._catalog import Catalog, TopicInfo, check_partition_count, rebuild_hint
from ._checkpoint import SpaceReserve, read_json, read_offsets, write_json, write_offsets
from ._cleaner import Cleaner
from ._fs import FileSystem
from ._group_commit import FLUSH_PARALLELISM, Flusher
from ._index import IndexCache
from ._names import (
    CLEAN_SHUTDOWN_FILE,
    CLEANER_OFFSET_FILE,
    DELETED_SUFFIX,
    LOCK_FILE,
    LOG_START_FILE,
    LOST_AND_FOUND,
    PRODUCER_ID_FILE,
    RECOVERY_POINT_FILE,
    RESERVE_FILE,
    STORE_FILES,
    TMP_SUFFIX,
    check_topic_name,
    parse_partition_dir,
    partition_dir,
)
from ._partition import DEFAULT_READ_MAX_BYTES, AppendResult, FetchResult, PartitionLog, now_ms
from ._ratelimit import ERROR_LOG_INTERVAL_S, RateLimitedLog
from ._read_cursor import FrameCache
from ._segment import HandleCache

log = logging.getLogger("logstore.storage")

#: Producer ids are handed out from blocks persisted ahead of use, so an id is
#: never reused after a crash and InitProducer costs no fsync most of the time.
PRODUCER_ID_BLOCK: Final = 1000
#: Directories named in the "data without a catalog" error; the rest are
#: counted (a data directory may hold thousands).
_DIRS_NAMED: Final = 3
#: Hex digits of a random uuid4 in the name of a directory being deleted: 48
#: bits, so two deletions in one data directory never collide in practice.
_TMP_NAME_HEX: Final = 12


@dataclass(frozen=True)
class PartitionInfo:
    """One partition's offsets (start, end, high watermark), bytes on disk and segments."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    segment_count: int
    high_watermark: int


#: ``flush`` makes more partitions than this durable with one ``syncfs``; fewer
#: are fsynced one by one (a few fdatasyncs cost less than writing back the
#: whole file system, which may hold other programs' data).
SYNC_ALL_MIN_PARTITIONS: Final = FLUSH_PARALLELISM


@dataclass(frozen=True)
class StoreStats:
    """Resource use of a Store: open files, mapped index bytes, partitions, index cache."""

    open_files: int
    mapped_index_bytes: int
    partitions: int
    index_cache_bytes: int


class Store:
    """See the module docstring. Built by :meth:`open`."""

    def __init__(self, path: str, config: StoreConfig, fs: FileSystem) -> None:
        self.path = path
        self.config = config
        self.fs = fs
        self.handles = HandleCache(config.max_open_segments)
        self.index_cache = IndexCache(config.index_cache_bytes)
        #: Frames a bounded read stopped inside, one per partition (``_read_cursor``).
        self.frame_cache = FrameCache()
        self._topics: dict[str, TopicInfo] = {}
        self._catalog = Catalog(fs, path)
        self._reserve = SpaceReserve(fs, os.path.join(path, RESERVE_FILE))
        self._catalog.reserve = self._reserve
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._lock = threading.RLock()  # topics, checkpoints
        self._checkpoint_lock = threading.Lock()  # the recovery-point file
        self._lock_fd: int | None = None
        self._closed = False
        self._listeners: list[Callable[[str, int, int], None]] = []
        self._last_checkpoint_ms = 0
        self._checkpointed: dict[tuple[str, int], int] = {}
        #: The cleaned points last written to the cleaner checkpoint, and its lock
        #: (taken with no other lock after it, as the recovery-point one).
        self._cleaned_written: dict[tuple[str, int], int] = {}
        self._cleaned_lock = threading.Lock()
        self._stale_topics: set[str] = set()
        #: Errors of background work (flusher, maintain), rate-limited: on a
        #: full disk the same one comes every checkpoint interval (1 s).
        self._errors = RateLimitedLog(log, ERROR_LOG_INTERVAL_S)
        self._starts_dirty = False
        self._next_producer_id = 1
        self._producer_id_limit = 0
        self._flusher: Flusher | None = None
        #: ``flush``'s syncfs (``_sync_all``): its handle, and whether to try.
        self._sync_all_handle: int | None = None
        self._sync_all_supported = True
        self._sync_all_lock = threading.Lock()  # one flush's syncfs at a time
        self.cleaner = Cleaner(config.cleaner_buffer_bytes, config.cleaner_io_max_bytes_per_s)
        self._cleaner_lock = threading.Lock()  # one clean at a time
        self._cleaner_thread: threading.Thread | None = None
        self._cleaner_stop = threading.Event()
        self.cleaner.stopping = self._cleaner_stop
        #: Called after each fsync of the flusher thread with the partition,
        #: the seconds it took and the number of waiters it completed (the
        #: group-commit batch size).
        self.on_fsync: Callable[[PartitionLog, float, int], None] = lambda _p, _s, _n: None

    # --- open / close -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        fs: FileSystem | None = None,
        rebuild_catalog: bool = False,
    ) -> Store:
        """Open (creating) a data directory; see the module docstring.

        With ``rebuild_catalog``, a missing or damaged ``topics.json`` (or one
        that lists fewer partitions than there are directories) is rebuilt
        from the partition directories instead of refusing to start: every
        topic found gets as many partitions as its highest directory number
        plus one, and the default config where none is known.
        """
        fs = fs or FileSystem()
        p = os.path.abspath(os.fspath(path))
        fs.mkdir(p)
        self = cls(p, config or StoreConfig(), fs)
        self._lock_fd = fs.lock(os.path.join(p, LOCK_FILE))
        try:
            self._load(rebuild_catalog)
            # Old directories get one too; on a full disk, later (maintain).
            self._reserve.ensure()
        except BaseException:
            self._abandon()
            raise
        return self

    def _load(self, rebuild_catalog: bool) -> None:
        fs, p = self.fs, self.path
        clean = fs.exists(os.path.join(p, CLEAN_SHUTDOWN_FILE))
        if clean:
            fs.unlink(os.path.join(p, CLEAN_SHUTDOWN_FILE))
            fs.fsync_dir(p)
        found: dict[str, set[int]] = {}  # partition directories: topic -> partitions
        for entry in fs.listdir(p):
            full = os.path.join(p, entry)
            if entry in STORE_FILES or entry == LOST_AND_FOUND:
                continue
            if entry.endswith(TMP_SUFFIX):
                fs.unlink(full)
            elif entry.endswith(DELETED_SUFFIX):
                fs.rmtree(full)
            elif (tp := parse_partition_dir(entry)) is not None and fs.isdir(full):
                found.setdefault(tp[0], set()).add(tp[1])
            else:
                raise StorageError(f"unknown file in data directory: {full}")
        self._topics = self._catalog.load(found, rebuild_catalog)
        self._remove_orphans(found)
        recovery = read_offsets(fs, os.path.join(p, RECOVERY_POINT_FILE))
        starts = read_offsets(fs, os.path.join(p, LOG_START_FILE))
        cleaned = self._read_cleaned_points()
        block = read_json(fs, os.path.join(p, PRODUCER_ID_FILE), {"next": 1})
        self._next_producer_id = self._producer_id_limit = int(block["next"])
        for info in self._topics.values():
            for part in range(info.partitions):
                tp = (info.name, part)
                self._logs[tp] = self._open_log(
                    info, part, clean=clean, recovery_point=recovery.get(tp, 0),
                    log_start=starts.get(tp, 0),
                )  # fmt: skip
        self._checkpointed = {tp: lg.flushed_offset for tp, lg in self._logs.items()}
        for tp, point in cleaned.items():
            lg_ = self._logs.get(tp)
            if lg_ is not None and lg_.config.compact:
                # Never past the end: records a crash cut off were never cleaned.
                lg_.cleaned_offset = min(point, lg_.log_end_offset)
        self._cleaned_written = {
            tp: lg.cleaned_offset for tp, lg in self._logs.items() if lg.cleaned_offset
        }
        # Checkpoint entries of partitions that no longer exist (a crash between
        # a topic deletion and the checkpoint rewrite): a topic created again
        # under that name must not inherit them, so it rewrites them first.
        self._stale_topics = {
            t for t, _ in [*recovery, *starts, *cleaned] if (t, _) not in self._logs
        }
        if any(lg.log_start_offset != starts.get(tp, 0) for tp, lg in self._logs.items()):
            # Clamped at open (e.g. records below the start were lost): write
            # the start as it is now, or a later open would restore the old one.
            # On a full disk this may fail: the store still opens (a restart
            # must not be refused while full) and the write is retried.
            try:
                self._write_log_starts()
            except DiskFullError as exc:
                self._starts_dirty = True
                log.warning("log start checkpoint not written at open (retried later): %s", exc)

    def _remove_orphans(self, found: Mapping[str, set[int]]) -> None:
        """Remove partition directories the catalog does not list if they hold
        no data (left by a CreateTopic interrupted before topics.json was
        written); refuse to open if any holds data."""
        orphans = [
            os.path.join(self.path, partition_dir(t, part))
            for t, parts in found.items()
            for part in sorted(parts)
            if t not in self._topics or part >= self._topics[t].partitions
        ]
        with_data = [d for d in orphans if self._holds_data(d)]
        if with_data:
            names = ", ".join(os.path.basename(d) for d in with_data[:_DIRS_NAMED])
            more = (
                f" and {len(with_data) - _DIRS_NAMED} more" if len(with_data) > _DIRS_NAMED else ""
            )
            raise CatalogError(
                f"{self._catalog.path} does not list {len(with_data)} "
                f"partition director{'y' if len(with_data) == 1 else 'ies'} that hold data "
                f"({names}{more}); refusing to start so that nothing is deleted. Restore "
                f"topics.json from a backup, or rebuild it from the partition directories "
                f"with {rebuild_hint(self.path)}"
            )
        for d in orphans:
            log.info("removing empty partition directory %s of no known topic", d)
            self._remove_dir(d)

    def _holds_data(self, directory: str) -> bool:
        """Whether a partition directory holds records or producer state (any
        non-empty .log file, any snapshot, any file that is none of these)."""
        for name in self.fs.listdir(directory):
            full = os.path.join(directory, name)
            if name.endswith(TMP_SUFFIX) or name.endswith((".index", ".timeindex")):
                continue
            if not name.endswith(".log") or self.fs.file_size(full) > 0:
                return True
        return False

    def _open_log(
        self, info: TopicInfo, part: int, *, clean: bool, recovery_point: int, log_start: int
    ) -> PartitionLog:
        lg = PartitionLog.open(
            self.fs, os.path.join(self.path, partition_dir(info.name, part)), info.name, part,
            info.config, self.config, self.handles, self.index_cache,
            clean=clean, recovery_point=recovery_point, log_start_offset=log_start,
        )  # fmt: skip
        lg.frame_cache = self.frame_cache
        lg.on_sync_wanted = self._queue_sync
        lg.on_log_start_changed = lambda _lg: self._write_log_starts()
        lg.persist_log_start = lambda lg_, start: self._write_log_starts({lg_.key: start})
        lg.on_recovery_point_lowered = lambda _lg: self._write_recovery_points(
            force=True, snapshots=False
        )
        lg.on_cleaned_point_lowered = lambda _lg: self._write_cleaned_points(force=True)
        return lg

    def close(self) -> None:
        """Flush everything, write checkpoints and the clean-shutdown marker,
        release the lock. Idempotent."""
        if self._closed:
            return
        self._stop_cleaner_thread()
        self._stop_flusher_thread()
        failed = False
        with self._lock:
            self._closed = True
            for lg in self._logs.values():
                try:
                    lg.close()
                except StorageError as exc:
                    failed = True
                    log.error("%s: close failed: %s", lg.name, exc)
                    lg.abandon()
                if lg.failed is not None:
                    # Its page cache may not match what is on disk: the next
                    # open must re-check it from the recovery point.
                    failed = True
            try:
                try:
                    self._write_recovery_points(force=True)
                    self._write_log_starts()
                except DiskFullError as exc:
                    # The data is flushed; only the checkpoints are stale, and
                    # without the marker the next open re-checks from them.
                    log.error("checkpoints not written at close (disk full): %s", exc)
                    failed = True
                if not failed:
                    self.fs.write_file(os.path.join(self.path, CLEAN_SHUTDOWN_FILE), b"")
                    self.fs.fsync_dir(self.path)
            finally:
                self.handles.close_all()
                if self._sync_all_handle is not None:
                    with contextlib.suppress(StorageError):
                        self.fs.close_sync_all(self._sync_all_handle)
                    self._sync_all_handle = None
                self._release_lock()

    def _abandon(self) -> None:
        """Drop everything without flushing (open failed, or a simulated crash)."""
        self._stop_flusher_thread()
        self._closed = True
        for lg in self._logs.values():
            lg.abandon()
        self.handles.close_all()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            self.fs.unlock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- topics -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: Mapping[str, Any] | None = None,
        *,
        internal: bool = False,
    ) -> TopicInfo:
        """Create a topic. Its partitions become visible only once topics.json
        lists them durably; if that write fails (disk full), the new
        directories are removed and the error propagates."""
        check_topic_name(name, internal=internal)
        check_partition_count(partitions)
        cfg = TopicConfig.from_mapping(config)
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            if name in self._stale_topics:
                self._write_recovery_points(force=True, snapshots=False)
                self._write_log_starts()
                self._write_cleaned_points(force=True)
                self._stale_topics.discard(name)
            info = TopicInfo(name, partitions, cfg)
            self._add_partitions(info, 0, partitions)
            log.debug("created topic %s with %d partitions", name, partitions)
            return info

    def _add_partitions(self, info: TopicInfo, first: int, last: int) -> None:
        """Make partitions ``first..last-1`` of ``info``, write topics.json with
        ``info``, then publish both (store lock held)."""
        new: dict[tuple[str, int], PartitionLog] = {}
        try:
            for part in range(first, last):
                new[(info.name, part)] = self._open_log(
                    info, part, clean=False, recovery_point=0, log_start=0
                )
            for lg in new.values():
                lg.sync_once()  # fsyncs the directory that holds the new segment file
                if lg.failed is not None:
                    raise lg.failed
            self.fs.fsync_dir(self.path)
            topics = {**self._topics, info.name: info}
            self._catalog.write(topics, [info.name])
        except BaseException:
            for lg in new.values():
                lg.abandon()
                try:
                    self._remove_dir(lg.directory)
                except StorageError as exc:  # empty: removed by the next open
                    log.warning("%s: could not remove the new directory: %s", lg.name, exc)
            raise
        self._logs.update(new)
        # Replaced, never mutated: topics() reads it without the lock.
        self._topics = topics

    def delete_topic(self, name: str) -> None:
        """Delete a topic: its data first, then its catalog entry.

        The partition directories are renamed to ``<uuid>.deleted`` (no space
        needed) and fsynced, then removed, and only then is the smaller
        topics.json written: this works on a full disk. If a rename fails,
        the ones done are undone and the topic stays as it was. A crash after
        the renames and before topics.json is written brings the topic back
        empty at the next open (delete it again); if that write fails (still
        no space), the topic is gone in memory and the write is retried by
        ``maintain()``.
        """
        with self._lock:
            self._check_open()
            info = self.topic(name)
            logs = [self._logs[(name, part)] for part in range(info.partitions)]
            for lg in logs:
                lg.mark_deleted()  # appends in progress finish first
            moved: list[tuple[PartitionLog, str]] = []
            try:
                for lg in logs:
                    tmp = os.path.join(self.path, uuid.uuid4().hex[:_TMP_NAME_HEX] + DELETED_SUFFIX)
                    self.fs.replace(lg.directory, tmp)
                    moved.append((lg, tmp))
                self.fs.fsync_dir(self.path)
            except StorageError:
                self._undo_renames(moved)
                for lg in logs:
                    lg.unmark_deleted()
                raise
            # The topic goes before its partitions: a lookup that races this
            # finds either a partition marked deleted or no topic, both
            # UnknownTopicError, never "topic t has no partition 0".
            self._topics = {t: i for t, i in self._topics.items() if t != name}
            for lg in logs:
                self._logs.pop((name, lg.partition), None)
            for lg, tmp in moved:
                lg.abandon()
                try:
                    self.fs.rmtree(tmp)
                except StorageError as exc:  # finished by the next open
                    log.warning("%s: removing %s failed: %s", lg.name, tmp, exc)
            try:
                self.fs.fsync_dir(self.path)  # the removals durable: their space is free
                self._write_catalog_and_checkpoints([name])
            except StorageError as exc:
                self._catalog.dirty = True
                # The checkpoints may still hold its offsets: a topic created
                # again under the name before the retry must rewrite them
                # first (a create's topics.json write clears ``dirty``), or a
                # crash would give it the old log start and hide its records.
                self._stale_topics.add(name)
                log.error("deleted topic %s; writing topics.json failed (retried): %s", name, exc)
            log.debug("deleted topic %s", name)

    def _undo_renames(self, moved: list[tuple[PartitionLog, str]]) -> None:
        for lg, tmp in reversed(moved):
            try:
                self.fs.replace(tmp, lg.directory)
            except StorageError as exc:
                log.error("%s: could not undo the rename to %s: %s", lg.name, tmp, exc)
        with contextlib.suppress(StorageError):
            self.fs.fsync_dir(self.path)

    def _write_catalog_and_checkpoints(self, changed: Sequence[str] | None = None) -> None:
        """topics.json, then the checkpoints without the partitions that are gone."""
        self._catalog.write(self._topics, changed)
        # Forget a deleted topic's offsets, so a topic created later under the
        # same name starts from nothing.
        self._write_recovery_points(force=True, snapshots=False)
        self._write_log_starts()
        self._write_cleaned_points(force=True)

    def _remove_dir(self, directory: str) -> None:
        tmp = os.path.join(self.path, uuid.uuid4().hex[:_TMP_NAME_HEX] + DELETED_SUFFIX)
        self.fs.replace(directory, tmp)
        self.fs.fsync_dir(self.path)
        self.fs.rmtree(tmp)

    def topics(self, *, include_internal: bool = False) -> list[TopicInfo]:
        """Every topic, by name. Takes no lock (``_topics`` is replaced, never
        mutated), so a listing never waits for a big CreateTopic."""
        return sorted(
            (t for t in self._topics.values() if include_internal or not t.name.startswith("__")),
            key=lambda t: t.name,
        )

    def topic(self, name: str) -> TopicInfo:
        info = self._topics.get(name)
        if info is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return info

    def alter_topic_config(
        self, name: str, set: Mapping[str, Any], reset: Sequence[str] = ()
    ) -> TopicInfo:
        """Change a topic's config; applied once topics.json holds it."""
        with self._lock:
            self._check_open()
            info = self.topic(name)
            cfg = info.config.with_changes(set, list(reset))
            info = TopicInfo(name, info.partitions, cfg)
            topics = {**self._topics, name: info}
            self._catalog.write(topics, [name])
            self._topics = topics
            for part in range(info.partitions):
                self._logs[(name, part)].reconfigure(cfg)
            return info

    def create_partitions(self, name: str, total: int) -> TopicInfo:
        with self._lock:
            self._check_open()
            info = self.topic(name)
            if total <= info.partitions:
                raise InvalidArgumentError(
                    f"topic {name!r} has {info.partitions} partitions; the new count must be "
                    f"larger (partitions can only be added), got {total}"
                )
            check_partition_count(total)
            new = TopicInfo(name, total, info.config)
            self._add_partitions(new, info.partitions, total)
            return new

    def partition(self, topic: str, partition: int) -> PartitionLog:
        """The PartitionLog of ``topic``/``partition`` (typed errors if unknown)."""
        lg = self._logs.get((topic, partition))
        if lg is None:
            info = self.topic(topic)
            raise UnknownPartitionError(
                f"topic {topic!r} has no partition {partition}; valid partitions are "
                f"0..{info.partitions - 1}"
            )
        return lg

    # --- data -----------------------------------------------------------------------------
    def append(
        self,
        topic: str,
        partition: int,
        records: Iterable[bytes | Record],
        *,
        sync: bool = False,
        timestamp_ms: int | None = None,
        compression: str | int | None = None,
        compression_level: int | None = None,
    ) -> int:
        """Append records as one batch; return the offset of the first one.

        Returns once the batch is written (page cache); with ``sync=True``,
        once it is fsynced. ``compression`` (``"none"``, ``"gzip"``,
        ``"lz4"``, ``"zstd"``) stores the batch compressed
        (``compression_level``: the codec's, None for its default); None
        means the topic's ``compression_type`` (``producer``: none) at the
        topic's ``compression_<codec>_level``.
        """
        self._check_open()
        lg = self.partition(topic, partition)
        if compression is None:
            wanted = lg.config.compression_type
            compression = "none" if wanted == "producer" else wanted
            if compression_level is None:
                compression_level = lg.config.level_for(codec_of(compression))
        codec = codec_of(compression)
        check_level(codec, compression_level)
        body, count, max_ts = encode_records(records)
        if count == 0:
            raise InvalidArgumentError("empty batch: append needs at least one record")
        plain = None
        if codec:
            plain = body
            body = compressed_field(compress(plain, codec, compression_level))
        res = self._append(lg, body, count, timestamp_ms, max_ts or None, 0, 0, 0, codec, plain)
        if sync:
            lg.sync_to(res.last_offset + 1).result()
        return res.base_offset

    def append_raw(
        self,
        topic: str,
        partition: int,
        records: bytes | memoryview,
        record_count: int,
        *,
        base_timestamp_ms: int | None = None,
        max_timestamp_ms: int | None = None,
        producer_id: int = 0,
        producer_epoch: int = 0,
        base_sequence: int = 0,
        codec: int = 0,
        plain: bytes | memoryview | None = None,
    ) -> AppendResult:
        """Append the serialized records field of a batch (the broker's path).

        ``max_timestamp_ms`` must be the largest timestamp a record carries
        (:data:`logstore.wire.NO_TIMESTAMP_MS` when none does), as
        ``split_produce_request`` computes it; when None it is computed here
        from the records (one upb parse). Time search and retention trust it.
        With a ``codec``, ``records`` is the compressed_records field, stored
        as it is, and ``plain`` the decompressed records (decompressed here,
        bounded, when None).
        """
        self._check_open()
        lg = self.partition(topic, partition)
        if record_count < 1:
            raise InvalidArgumentError("empty batch: a batch needs at least one record")
        if codec and plain is None:
            try:
                payload = compressed_payload(records, "append_raw")
                plain = decompress(payload, codec, "append_raw")
            except CorruptRecordError as exc:
                raise InvalidBatchError(str(exc)) from exc
        if max_timestamp_ms is None:
            max_timestamp_ms = max_record_timestamp(records if plain is None else plain)
        if producer_id and not 0 < producer_id < self._producer_id_limit:
            raise UnknownProducerIdError(
                f"producer id {producer_id} was never issued by this broker; call InitProducer"
            )
        return self._append(
            lg, records, record_count, base_timestamp_ms, max_timestamp_ms,
            producer_id, producer_epoch, base_sequence, codec, plain,
        )  # fmt: skip

    def try_append_raw(
        self,
        topic: str,
        partition: int,
        records: bytes | memoryview,
        record_count: int,
        *,
        base_timestamp_ms: int | None,
        max_timestamp_ms: int | None,
        producer_id: int = 0,
        producer_epoch: int = 0,
        base_sequence: int = 0,
    ) -> AppendResult | None:
        """:meth:`append_raw` of an uncompressed batch, or None at once (nothing
        written) if the partition's lock is held (a roll, a retention pass, a
        cleaner swap, another append): the broker's event loop calls this
        for small batches and appends on an I/O thread when it gets None.
        Same checks and errors as :meth:`append_raw`."""
        self._check_open()
        lg = self.partition(topic, partition)
        if record_count < 1:
            raise InvalidArgumentError("empty batch: a batch needs at least one record")
        if producer_id and not 0 < producer_id < self._producer_id_limit:
            raise UnknownProducerIdError(
                f"producer id {producer_id} was never issued by this broker; call InitProducer"
            )
        self._check_keys(lg, records, record_count)
        res = lg.try_append(
            records, record_count, base_timestamp_ms, max_timestamp_ms, producer_id,
            producer_epoch, base_sequence,
        )  # fmt: skip
        if res is not None and not res.duplicate:
            end = res.last_offset + 1
            for fn in self._listeners:
                fn(lg.topic, lg.partition, end)
        return res

    def append_frames(
        self, topic: str, partition: int, frames: bytes | bytearray | memoryview
    ) -> int:
        """Append a run of whole pre-built frames that keep their offsets (gaps
        allowed, e.g. format-2 frames from ``logstore.wire.build_offset_frame``);
        return the log end offset after them. Each frame's base offset must be
        >= the log end offset and its CRC must match (InvalidBatchError). The
        seam for tests of gaps, and what a replication follower will use."""
        self._check_open()
        lg = self.partition(topic, partition)
        end = lg.append_frames(frames)
        for fn in self._listeners:
            fn(lg.topic, lg.partition, end)
        return end

    def _append(
        self,
        lg: PartitionLog,
        body: bytes | memoryview,
        count: int,
        base_ts: int | None,
        max_ts: int | None,
        pid: int,
        epoch: int,
        seq: int,
        codec: int = 0,
        plain: bytes | memoryview | None = None,
    ) -> AppendResult:
        self._check_keys(lg, body if plain is None else plain, count)
        res = lg.append(body, count, base_ts, max_ts, pid, epoch, seq, codec, plain)
        if not res.duplicate:
            end = res.last_offset + 1
            for fn in self._listeners:
                fn(lg.topic, lg.partition, end)
        return res

    @staticmethod
    def _check_keys(lg: PartitionLog, records: bytes | memoryview, count: int) -> None:
        if lg.config.compact and keyed_record_count(records) != count:
            # Kafka refuses these too: compaction keeps the latest record per
            # key, and a record without one has no place in that.
            raise InvalidArgumentError(
                f"{lg.name}: a record with a null key cannot go to a compacted topic "
                f"(cleanup_policy {lg.config.cleanup_policy!r}); give every record a key"
            )

    def init_producer(self) -> tuple[int, int]:
        """A new producer id (>= 1) and its epoch (0)."""
        with self._lock:
            self._check_open()
            if self._next_producer_id >= self._producer_id_limit:
                limit = self._next_producer_id + PRODUCER_ID_BLOCK
                write_json(self.fs, os.path.join(self.path, PRODUCER_ID_FILE), {"next": limit})
                self._producer_id_limit = limit
            pid = self._next_producer_id
            self._next_producer_id += 1
            return pid, 0

    def read(
        self, topic: str, partition: int, offset: int, max_bytes: int = DEFAULT_READ_MAX_BYTES
    ) -> list[Record]:
        """Records starting exactly at ``offset``; at least one if ``offset`` < end."""
        return self.partition(topic, partition).read(offset, max_bytes)

    def read_columns(
        self, topic: str, partition: int, offset: int, max_bytes: int = DEFAULT_READ_MAX_BYTES
    ) -> ColumnBatch:
        """The records :meth:`read` returns, as columns (the same ColumnBatch as
        ``Consumer.poll_columns``): no Python object per record."""
        return self.partition(topic, partition).read_columns(offset, max_bytes)

    def read_frames(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        stop_offset: int | None = None,
    ) -> FetchResult:
        """Stored frames, CRC-checked and unchanged (the Fetch path); after the
        first, none starting at or after ``stop_offset`` (None: the high watermark)."""
        return self.partition(topic, partition).read_frames(offset, max_bytes, stop_offset)

    def read_cached(
        self, topic: str, partition: int, offset: int, stop_offset: int | None = None
    ) -> FetchResult | None:
        """:meth:`read_frames` answered from the cut-frame cache alone (no
        I/O, so an event loop may call it), or None (``PartitionLog.read_cached``)."""
        return self.partition(topic, partition).read_cached(offset, stop_offset)

    def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, log end offset)``."""
        lg = self.partition(topic, partition)
        return lg.log_start_offset, lg.log_end_offset

    def high_watermark(self, topic: str, partition: int) -> int:
        """The offset below which records are committed and served (on a single
        broker, the log end offset)."""
        return self.partition(topic, partition).high_watermark

    def offset_for_time(
        self, topic: str, partition: int, timestamp_ms: int
    ) -> OffsetAndTimestamp | None:
        """The first record whose timestamp is >= ``timestamp_ms`` (its offset and
        its own timestamp), or None if there is none below the high watermark."""
        return self.partition(topic, partition).offset_for_time(timestamp_ms)

    def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        """Advance the log start offset; return the new one. Frees the whole
        segments below it first, so it works on a full disk; the new start is
        applied only once its checkpoint is durable (see PartitionLog)."""
        self._check_open()
        lg = self.partition(topic, partition)
        with self._lock:  # one checkpoint writer: a later start is never overwritten
            return lg.delete_records(before_offset)

    def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        lg = self.partition(topic, partition)
        segs = lg.segments
        return PartitionInfo(
            partition,
            lg.log_start_offset,
            lg.log_end_offset,
            sum(s.size for s in segs),
            len(segs),
            lg.high_watermark,
        )

    def add_append_listener(self, fn: Callable[[str, int, int], None]) -> None:
        self._listeners.append(fn)

    # --- durability -------------------------------------------------------------------------
    def sync_to(self, topic: str, partition: int, offset: int) -> Future[None]:
        """Done when every offset below ``offset`` of the partition is fsynced."""
        fut = self.partition(topic, partition).sync_to(offset)
        if self._flusher is None:
            self._maybe_checkpoint()
        return fut

    def flush(self) -> None:
        """Everything appended before this call is durable when it returns.

        With more than :data:`SYNC_ALL_MIN_PARTITIONS` partitions to make
        durable, one ``syncfs`` of the data directory's file system does it
        (``_sync_all``; 1,000 partitions: 1-4 ms of this process's CPU against
        ~130 ms for 1,000 fdatasyncs); the per-partition fsyncs below then
        find nothing left. Each partition's target is its log end when the
        call began: under a steady produce, records appended during the
        ``syncfs`` are the next flush's, not a fsync of their own each."""
        self._check_open()
        logs = list(self._logs.values())
        ends = [lg.log_end_offset for lg in logs]
        self._sync_all(logs)
        # After a syncfs nearly every partition is durable already: no
        # future for those (1,000 partitions: ~5-10 ms of Python a flush,
        # once a second, holding the GIL the event loop wants).
        # (min: a truncation since may have taken the log end below the note)
        waits = [
            (lg, lg.sync_to(min(end, lg.log_end_offset)))
            for lg, end in zip(logs, ends, strict=True)
            if not lg.durable(end)
        ]
        for lg, f in waits:
            try:
                f.result()
                lg.sync_roll_leftovers()
            except UnknownTopicError:
                # Its topic was deleted while we waited: nothing of it is left to
                # make durable, and the deletion itself was made durable first.
                continue
        self._maybe_checkpoint(force=True)

    def _sync_all(self, logs: list[PartitionLog]) -> None:
        """One ``syncfs`` for every partition with something to make durable, if
        there are more than :data:`SYNC_ALL_MIN_PARTITIONS` and the file system
        supports it; on any error nothing is marked and the caller's
        per-partition fsyncs run as before (each reports its own file's error).

        The handle is opened by the first flush that would use it, and that
        flush still fsyncs partition by partition: ``syncfs`` reports the
        write-back errors since its handle was opened, so an error from before
        is found by the per-file fsyncs first."""
        with self._sync_all_lock:
            self._sync_all_locked(logs)

    def _sync_all_locked(self, logs: list[PartitionLog]) -> None:
        if self._sync_all_handle is None:
            if len(logs) > SYNC_ALL_MIN_PARTITIONS and self._sync_all_supported:
                try:
                    self._sync_all_handle = self.fs.open_sync_all(self.path)
                except StorageError as exc:
                    self._errors.log(f"syncfs unavailable, fsyncing partitions one by one: {exc}")
                self._sync_all_supported = self._sync_all_handle is not None
            return
        work = [(lg, w) for lg in logs if (w := lg.sync_work()) is not None]
        if len(work) <= SYNC_ALL_MIN_PARTITIONS:
            return
        try:
            self.fs.sync_all(self._sync_all_handle, self.path)
        except StorageError as exc:
            self._errors.log(f"syncfs failed, fsyncing partitions one by one: {exc}")
            return
        for lg, w in work:
            lg.mark_synced(w)

    def _maybe_checkpoint(self, force: bool = False) -> None:
        now = now_ms()
        if (
            not force
            and now - self._last_checkpoint_ms < self.config.recovery_checkpoint_interval_ms
        ):
            return
        with self._lock:
            if not self._closed:
                self._write_recovery_points(force=force)

    def _snapshot_changed_producers(self, changed: list[PartitionLog]) -> None:
        """Write the producer snapshot of each of ``changed``, up to
        :data:`FLUSH_PARALLELISM` at once, returning when all are durable.

        Each snapshot is an atomic write (file fsync, rename, directory fsync)
        under its partition's lock; one after the other, a checkpoint after a
        produce to 1,000 partitions took ~0.5 s of the flusher thread (which
        serves acks=ALL waiters between checkpoints) and as long again of
        directory fsyncs competing with the appends. The file system commits
        concurrent fsyncs together, as for the flusher's turns. Lock order is
        kept: the caller holds the store lock and waits; each worker takes only
        its partition's lock. The first error is raised after all have run
        (the recovery-point file is written only after every snapshot)."""
        if len(changed) <= 1:
            for lg in changed:
                lg.snapshot_producers_if_changed()
            return
        workers = min(FLUSH_PARALLELISM, len(changed))
        with ThreadPoolExecutor(workers, thread_name_prefix="logstore-snapshot") as pool:
            futures = [pool.submit(lg.snapshot_producers_if_changed) for lg in changed]
        for f in futures:
            f.result()

    def _write_recovery_points(self, force: bool = False, snapshots: bool = True) -> None:
        """Write the recovery-point checkpoint (and, unless told not to, the
        producer snapshots of partitions whose state changed).

        Lock order: the store lock, then a partition's lock; the checkpoint
        file itself has its own lock, taken with no other held after it, so a
        partition holding its lock (truncate_to) may call this with
        ``snapshots=False``.
        """
        logs = list(self._logs.items())
        if snapshots:
            # Only the snapshots due (``producer_snapshot_interval_ms``): the
            # others' state is rebuilt from the log after a crash.
            due = now_ms() - self.config.producer_snapshot_interval_ms
            self._snapshot_changed_producers(
                [lg for _tp, lg in logs if lg.producers.changed and lg.snapshot_ms <= due]
            )
        with self._checkpoint_lock:
            points = {tp: lg.flushed_offset for tp, lg in logs}
            if points != self._checkpointed or force:
                write_offsets(
                    self.fs, os.path.join(self.path, RECOVERY_POINT_FILE), points, self._reserve
                )
                self._checkpointed = points
            self._last_checkpoint_ms = now_ms()

    def _write_log_starts(self, pending: Mapping[tuple[str, int], int] | None = None) -> None:
        """Write the log-start checkpoint; ``pending`` starts not applied yet."""
        with self._lock:
            starts = {tp: lg.log_start_offset for tp, lg in self._logs.items()}
            starts.update(pending or {})
            write_offsets(self.fs, os.path.join(self.path, LOG_START_FILE), starts, self._reserve)
            self._starts_dirty = False

    def _read_cleaned_points(self) -> dict[tuple[str, int], int]:
        """The cleaner checkpoint; a missing file (a directory from before it
        existed) or a damaged one is empty: every compacted partition is then
        dirty from its start, which costs one re-clean, never a record."""
        path = os.path.join(self.path, CLEANER_OFFSET_FILE)
        try:
            return read_offsets(self.fs, path)
        except StorageError as exc:
            log.warning("ignoring the cleaner checkpoint (cleaning from the start): %s", exc)
            return {}

    def _write_cleaned_points(self, force: bool = False) -> None:
        """Write each compacted partition's cleaned point (``_checkpoint``'s
        atomic write) if one changed. Called after a clean, whose swaps are
        durable before it (so a point never claims more than is on disk), and
        when a truncation lowers a point (a point above records written
        after it would let a tombstone go while older values of its key stay)."""
        with self._cleaned_lock:
            logs = list(self._logs.items())  # no store lock: a snapshot of the map
            points = {tp: lg.cleaned_offset for tp, lg in logs if lg.cleaned_offset}
            if points == self._cleaned_written and not force:
                return
            write_offsets(
                self.fs, os.path.join(self.path, CLEANER_OFFSET_FILE), points, self._reserve
            )
            self._cleaned_written = points

    # --- the flusher thread (broker) -----------------------------------------------------------
    def start_flusher(self) -> None:
        """Start the one thread that fsyncs partitions with waiters (group commit)."""
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = Flusher(
                self.config.recovery_checkpoint_interval_ms / 1000 or 1,
                self._flusher_checkpoint,
                self._after_fsync,
            )

    def _after_fsync(self, lg: PartitionLog, seconds: float, completed: int) -> None:
        self.on_fsync(lg, seconds, completed)  # looked up per call: set after start

    def _queue_sync(self, lg: PartitionLog) -> bool:
        flusher = self._flusher
        return flusher is not None and flusher.enqueue(lg)

    def _flusher_checkpoint(self) -> None:
        try:
            self._maybe_checkpoint()
        except StorageError as exc:
            self._errors.log(f"recovery checkpoint failed: {exc}")

    def _stop_flusher_thread(self) -> None:
        flusher = self._flusher
        if flusher is None:
            return
        flusher.stop(list(self._logs.values()))
        self._flusher = None

    # --- compaction -------------------------------------------------------------------------------
    def clean(self, now_ms: int | None = None, *, force: bool = False) -> int:
        """Run the log cleaner (``_cleaner``) over every compacted partition
        whose dirty ratio is above its ``min_cleanable_dirty_ratio`` (every
        one with dirty segments, with ``force``); return how many were
        cleaned. One clean at a time; errors are logged (rate-limited) and the
        partition is retried next time."""
        self._check_open()
        now = _now() if now_ms is None else now_ms
        cleaned = 0
        with self._cleaner_lock:
            self.cleaner.release_retired()
            for lg in list(self._logs.values()):
                if self._cleaner_stop.is_set() or self._closed:
                    break
                try:
                    cleaned += self.cleaner.clean(lg, now, force=force)
                except StorageError as exc:
                    self._errors.log(f"{lg.name}: cleaning failed: {exc}")
            try:
                # Also after a failed or stopped clean: its finished passes count.
                self._write_cleaned_points()
            except StorageError as exc:  # retried after the next clean
                self._errors.log(f"cleaner checkpoint not written: {exc}")
        return cleaned

    def dirty_ratio(self, topic: str, partition: int, now_ms: int | None = None) -> float | None:
        """The share of a compacted partition's cleanable bytes at or past its
        cleaned point (what ``min_cleanable_dirty_ratio`` is compared with; 0.0
        with nothing cleanable), or None if its policy does not compact."""
        lg = self.partition(topic, partition)
        if not lg.config.compact:
            return None
        now = _now() if now_ms is None else now_ms
        return Cleaner.dirty_ratio(lg, Cleaner.cleanable(lg, now))

    def start_cleaner(self, interval_ms: int) -> None:
        """Clean in one background thread every ``interval_ms`` (the broker);
        ``maintain`` then leaves cleaning to it."""
        if self._cleaner_thread is not None:
            return

        def run() -> None:
            while not self._cleaner_stop.wait(interval_ms / 1000):
                try:
                    self.clean()
                except StorageError as exc:  # a closed store: the loop ends
                    self._errors.log(f"cleaner: {exc}")

        self._cleaner_thread = threading.Thread(target=run, name="logstore-cleaner", daemon=True)
        self._cleaner_thread.start()

    def _stop_cleaner_thread(self) -> None:
        self._cleaner_stop.set()
        thread = self._cleaner_thread
        if thread is not None:
            thread.join()
            self._cleaner_thread = None
        with self._cleaner_lock:
            self.cleaner.release_retired()

    # --- maintenance ------------------------------------------------------------------------------
    def maintain(self, now_ms: int | None = None) -> None:
        """Roll segments by ``segment_ms``, apply retention, expire producer
        ids, close idle partitions' handles, and (unless a cleaner thread
        runs, see :meth:`start_cleaner`) clean compacted partitions. Runs in
        the caller's thread."""
        self._check_open()
        now = _now() if now_ms is None else now_ms
        for lg in list(self._logs.values()):
            try:
                lg.maybe_roll_by_time(now)
                lg.apply_retention(now)
            except StorageError as exc:
                # Retention frees space before it writes the checkpoint, so a
                # full disk fails only the write; it is retried next time.
                self._starts_dirty = True
                self._errors.log(f"{lg.name}: maintenance failed: {exc}")
            lg.expire_producers(now)
            lg.close_idle(now)
        with self._lock:
            if self._closed:
                return
            self._reserve.ensure()  # recreated once space returns
            try:
                if self._catalog.dirty:
                    self._write_catalog_and_checkpoints()
                if self._starts_dirty:
                    self._write_log_starts()
            except StorageError as exc:
                self._errors.log(f"metadata write retry failed: {exc}")
        self._maybe_checkpoint()
        if self._cleaner_thread is None:
            self.clean(now)

    def stats(self) -> StoreStats:
        mapped = 0
        for lg in list(self._logs.values()):
            seg = lg.segments[-1]
            mapped += seg.index.mapped_bytes + seg.time_index.mapped_bytes
        return StoreStats(self.handles.open_count, mapped, len(self._logs), self.index_cache.nbytes)


def _now() -> int:
    return now_ms()
