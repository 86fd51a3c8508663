"""Store: every topic and partition of one data directory.

``Store.open(path)`` creates the directory, takes its lock (``flock`` on
``.lock``; a second opener gets "data directory X in use by pid N"), finishes
interrupted topic deletions (``*.deleted``), removes leftover ``*.tmp`` files,
and opens every partition: after a clean shutdown (the ``.clean_shutdown``
marker) without scanning, else recovering from the recovery-point checkpoint.

Topics: ``topics.json`` is the source of truth for names, partition counts
and configs. Creating a topic makes and fsyncs its partition directories
first, then rewrites ``topics.json`` atomically; deleting one rewrites
``topics.json`` first, then renames each partition directory to a short
``<uuid>.deleted`` name and removes it. A crash in between leaves either
leftover directories (removed on open) or missing ones (recreated empty).

Checkpoints (atomic): recovery points advance with flushes at most every
``recovery_checkpoint_interval_ms``; log start offsets when they move.

Threads: every method is thread-safe. Embedded use starts no thread;
``start_flusher()`` (the broker) starts one that serves group commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from logstore.config import MAX_PARTITIONS, StoreConfig, TopicConfig
from logstore.errors import (
    InvalidArgumentError,
    StorageError,
    StoreClosedError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownProducerIdError,
    UnknownTopicError,
)
from logstore.wire import Record, encode_records

from ._checkpoint import read_json, read_offsets, write_json, write_offsets
from ._fs import FileSystem
from ._index import IndexCache
from ._names import (
    CLEAN_SHUTDOWN_FILE,
    DELETED_SUFFIX,
    LOCK_FILE,
    LOG_START_FILE,
    LOST_AND_FOUND,
    PRODUCER_ID_FILE,
    RECOVERY_POINT_FILE,
    STORE_FILES,
    TMP_SUFFIX,
    TOPICS_FILE,
    check_topic_name,
    parse_partition_dir,
    partition_dir,
)
from ._partition import AppendResult, FetchResult, PartitionLog, now_ms
from ._segment import HandleCache

log = logging.getLogger("logstore.storage")

#: Producer ids are handed out from blocks persisted ahead of use, so an id is
#: never reused after a crash and InitProducer costs no fsync most of the time.
PRODUCER_ID_BLOCK: Final = 1000


@dataclass(frozen=True)
class TopicInfo:
    """A topic: its name, partition count and resolved configuration."""

    name: str
    partitions: int
    config: TopicConfig


@dataclass(frozen=True)
class PartitionInfo:
    """One partition's offset range, bytes on disk and number of segments."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    segment_count: int


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
        self._topics: dict[str, TopicInfo] = {}
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._lock = threading.RLock()  # topics, checkpoints
        self._checkpoint_lock = threading.Lock()  # the recovery-point file
        self._lock_fd: int | None = None
        self._closed = False
        self._listeners: list[Callable[[str, int, int], None]] = []
        self._last_checkpoint_ms = 0
        self._checkpointed: dict[tuple[str, int], int] = {}
        self._next_producer_id = 1
        self._producer_id_limit = 0
        self._flusher: threading.Thread | None = None
        self._flush_cond = threading.Condition()
        self._flush_queue: dict[tuple[str, int], PartitionLog] = {}
        self._stop_flusher = False
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
    ) -> Store:
        """Open (creating) a data directory; see the module docstring."""
        fs = fs or FileSystem()
        p = os.path.abspath(os.fspath(path))
        fs.mkdir(p)
        self = cls(p, config or StoreConfig(), fs)
        self._lock_fd = fs.lock(os.path.join(p, LOCK_FILE))
        try:
            self._load()
        except BaseException:
            self._abandon()
            raise
        return self

    def _load(self) -> None:
        fs, p = self.fs, self.path
        clean = fs.exists(os.path.join(p, CLEAN_SHUTDOWN_FILE))
        if clean:
            fs.unlink(os.path.join(p, CLEAN_SHUTDOWN_FILE))
            fs.fsync_dir(p)
        topics_raw = read_json(fs, os.path.join(p, TOPICS_FILE), {})
        for name, t in topics_raw.items():
            self._topics[name] = TopicInfo(
                name, int(t["partitions"]), TopicConfig.from_mapping(t["config"])
            )
        recovery = read_offsets(fs, os.path.join(p, RECOVERY_POINT_FILE))
        starts = read_offsets(fs, os.path.join(p, LOG_START_FILE))
        block = read_json(fs, os.path.join(p, PRODUCER_ID_FILE), {"next": 1})
        self._next_producer_id = self._producer_id_limit = int(block["next"])
        for entry in fs.listdir(p):
            full = os.path.join(p, entry)
            if entry in STORE_FILES or entry == LOST_AND_FOUND:
                continue
            if entry.endswith(TMP_SUFFIX):
                fs.unlink(full)
            elif entry.endswith(DELETED_SUFFIX):
                fs.rmtree(full)
            elif (tp := parse_partition_dir(entry)) is not None and fs.isdir(full):
                topic, part = tp
                info = self._topics.get(topic)
                if info is None or part >= info.partitions:
                    log.warning("removing partition directory %s of no known topic", full)
                    self._remove_dir(full)
            else:
                raise StorageError(f"unknown file in data directory: {full}")
        for info in self._topics.values():
            for part in range(info.partitions):
                tp = (info.name, part)
                self._logs[tp] = self._open_log(
                    info, part, clean=clean, recovery_point=recovery.get(tp, 0),
                    log_start=starts.get(tp, 0),
                )  # fmt: skip
        self._checkpointed = {tp: lg.flushed_offset for tp, lg in self._logs.items()}
        if {tp: lg.log_start_offset for tp, lg in self._logs.items()} != starts:
            # Clamped at open (e.g. records below the start were lost): write
            # the start as it is now, or a later open would restore the old one.
            self._write_log_starts()

    def _open_log(
        self, info: TopicInfo, part: int, *, clean: bool, recovery_point: int, log_start: int
    ) -> PartitionLog:
        lg = PartitionLog.open(
            self.fs, os.path.join(self.path, partition_dir(info.name, part)), info.name, part,
            info.config, self.config, self.handles, self.index_cache,
            clean=clean, recovery_point=recovery_point, log_start_offset=log_start,
        )  # fmt: skip
        lg.on_sync_wanted = self._queue_sync
        lg.on_log_start_changed = lambda _lg: self._write_log_starts()
        lg.on_recovery_point_lowered = lambda _lg: self._write_recovery_points(
            force=True, snapshots=False
        )
        return lg

    def close(self) -> None:
        """Flush everything, write checkpoints and the clean-shutdown marker,
        release the lock. Idempotent."""
        if self._closed:
            return
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
            try:
                self._write_recovery_points(force=True)
                self._write_log_starts()
                if not failed:
                    self.fs.write_file(os.path.join(self.path, CLEAN_SHUTDOWN_FILE), b"")
                    self.fs.fsync_dir(self.path)
            finally:
                self.handles.close_all()
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
        check_topic_name(name, internal=internal)
        _check_partition_count(partitions)
        cfg = TopicConfig.from_mapping(config)
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            info = TopicInfo(name, partitions, cfg)
            self._add_partitions(info, 0, partitions)
            self._topics[name] = info
            self._write_topics()
            log.debug("created topic %s with %d partitions", name, partitions)
            return info

    def _add_partitions(self, info: TopicInfo, first: int, last: int) -> None:
        new: dict[tuple[str, int], PartitionLog] = {}
        try:
            for part in range(first, last):
                new[(info.name, part)] = self._open_log(
                    info, part, clean=False, recovery_point=0, log_start=0
                )
            for lg in new.values():
                lg.sync_once()  # fsyncs the directory that holds the new segment file
            self.fs.fsync_dir(self.path)
        except BaseException:
            for lg in new.values():
                lg.abandon()
                self._remove_dir(lg.directory)
            raise
        self._logs.update(new)

    def delete_topic(self, name: str) -> None:
        with self._lock:
            self._check_open()
            info = self.topic(name)
            del self._topics[name]
            self._write_topics()
            removed = [self._logs.pop((name, part)) for part in range(info.partitions)]
            # Forget the topic's checkpointed offsets before removing its data, so
            # a topic created later under the same name starts from nothing.
            self._write_recovery_points(force=True)
            self._write_log_starts()
            for lg in removed:
                lg.abandon()
                self._remove_dir(lg.directory)
            log.debug("deleted topic %s", name)

    def _remove_dir(self, directory: str) -> None:
        tmp = os.path.join(self.path, uuid.uuid4().hex[:12] + DELETED_SUFFIX)
        self.fs.replace(directory, tmp)
        self.fs.fsync_dir(self.path)
        self.fs.rmtree(tmp)

    def topics(self, *, include_internal: bool = False) -> list[TopicInfo]:
        with self._lock:
            return sorted(
                (
                    t
                    for t in self._topics.values()
                    if include_internal or not t.name.startswith("__")
                ),
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
        with self._lock:
            self._check_open()
            info = self.topic(name)
            cfg = info.config.with_changes(set, list(reset))
            info = TopicInfo(name, info.partitions, cfg)
            self._topics[name] = info
            for part in range(info.partitions):
                lg = self._logs[(name, part)]
                lg.config = cfg
                for seg in lg.segments:
                    seg.index_interval_bytes = cfg.index_interval_bytes
            self._write_topics()
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
            _check_partition_count(total)
            new = TopicInfo(name, total, info.config)
            self._add_partitions(new, info.partitions, total)
            self._topics[name] = new
            self._write_topics()
            return new

    def _write_topics(self) -> None:
        data = {
            t.name: {"partitions": t.partitions, "config": t.config.to_dict()}
            for t in self._topics.values()
        }
        write_json(self.fs, os.path.join(self.path, TOPICS_FILE), data)

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
    ) -> int:
        """Append records as one batch; return the offset of the first one.

        Returns once the batch is written (page cache); with ``sync=True``,
        once it is fsynced.
        """
        self._check_open()
        lg = self.partition(topic, partition)
        body, count, max_ts = encode_records(records)
        if count == 0:
            raise InvalidArgumentError("empty batch: append needs at least one record")
        res = self._append(lg, body, count, timestamp_ms, max_ts or None, 0, 0, 0)
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
    ) -> AppendResult:
        """Append the serialized records field of a batch (the broker's path)."""
        self._check_open()
        lg = self.partition(topic, partition)
        if record_count < 1:
            raise InvalidArgumentError("empty batch: a batch needs at least one record")
        if producer_id and not 0 < producer_id < self._producer_id_limit:
            raise UnknownProducerIdError(
                f"producer id {producer_id} was never issued by this broker; call InitProducer"
            )
        return self._append(
            lg, records, record_count, base_timestamp_ms, max_timestamp_ms,
            producer_id, producer_epoch, base_sequence,
        )  # fmt: skip

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
    ) -> AppendResult:
        res = lg.append(body, count, base_ts, max_ts, pid, epoch, seq)
        if not res.duplicate:
            end = res.last_offset + 1
            for fn in self._listeners:
                fn(lg.topic, lg.partition, end)
        return res

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
        self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20
    ) -> list[Record]:
        """Records starting exactly at ``offset``; at least one if ``offset`` < end."""
        return self.partition(topic, partition).read(offset, max_bytes)

    def read_frames(self, topic: str, partition: int, offset: int, max_bytes: int) -> FetchResult:
        """Stored frames, CRC-checked and unchanged (the Fetch path)."""
        return self.partition(topic, partition).read_frames(offset, max_bytes)

    def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, log end offset)``."""
        lg = self.partition(topic, partition)
        return lg.log_start_offset, lg.log_end_offset

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        """First offset whose record timestamp is >= ``timestamp_ms``, or None."""
        found = self.partition(topic, partition).offset_for_time(timestamp_ms)
        return None if found is None else found[0]

    def find_time(self, topic: str, partition: int, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp_ms)`` of that first record, or None."""
        return self.partition(topic, partition).offset_for_time(timestamp_ms)

    def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        """Advance the log start offset; return the new one."""
        self._check_open()
        return self.partition(topic, partition).delete_records(before_offset)

    def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        lg = self.partition(topic, partition)
        segs = lg.segments
        return PartitionInfo(
            partition, lg.log_start_offset, lg.log_end_offset, sum(s.size for s in segs), len(segs)
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
        """Everything appended before this call is durable when it returns."""
        self._check_open()
        futures = [lg.sync_to(lg.log_end_offset) for lg in list(self._logs.values())]
        for f in futures:
            f.result()
        self._maybe_checkpoint(force=True)

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
            for _tp, lg in logs:
                if lg.producers.changed and not lg._closed:
                    with lg._lock:
                        lg.write_producer_snapshot()
        with self._checkpoint_lock:
            points = {tp: lg.flushed_offset for tp, lg in logs}
            if points != self._checkpointed or force:
                write_offsets(self.fs, os.path.join(self.path, RECOVERY_POINT_FILE), points)
                self._checkpointed = points
            self._last_checkpoint_ms = now_ms()

    def _write_log_starts(self) -> None:
        with self._lock:
            starts = {tp: lg.log_start_offset for tp, lg in self._logs.items()}
            write_offsets(self.fs, os.path.join(self.path, LOG_START_FILE), starts)

    # --- the flusher thread (broker) -----------------------------------------------------------
    def start_flusher(self) -> None:
        """Start the one thread that fsyncs partitions with waiters (group commit)."""
        with self._flush_cond:
            if self._flusher is not None:
                return
            self._stop_flusher = False
            self._flusher = threading.Thread(
                target=self._flush_loop, name="logstore-flusher", daemon=True
            )
            self._flusher.start()

    def _queue_sync(self, lg: PartitionLog) -> bool:
        if self._flusher is None:
            return False
        with self._flush_cond:
            self._flush_queue[(lg.topic, lg.partition)] = lg
            lg._syncing = True
            self._flush_cond.notify()
        return True

    def _flush_loop(self) -> None:
        while True:
            with self._flush_cond:
                while not self._flush_queue and not self._stop_flusher:
                    self._flush_cond.wait(
                        timeout=self.config.recovery_checkpoint_interval_ms / 1000 or 1
                    )
                    if not self._flush_queue:
                        break
                if self._stop_flusher and not self._flush_queue:
                    return
                queue, self._flush_queue = self._flush_queue, {}
            for lg in queue.values():
                t0 = time.perf_counter()
                completed = 0
                try:
                    completed = lg.sync_once()
                finally:
                    with lg._sync_lock:
                        if lg._waiters:
                            with self._flush_cond:
                                self._flush_queue[(lg.topic, lg.partition)] = lg
                        else:
                            lg._syncing = False
                self.on_fsync(lg, time.perf_counter() - t0, completed)
            try:
                self._maybe_checkpoint()
            except StorageError as exc:
                log.error("recovery checkpoint failed: %s", exc)

    def _stop_flusher_thread(self) -> None:
        t = self._flusher
        if t is None:
            return
        with self._flush_cond:
            self._stop_flusher = True
            self._flush_cond.notify()
        t.join()
        self._flusher = None
        for lg in self._logs.values():  # serve any waiter left in the caller
            with lg._sync_lock:
                lg._syncing = False
            if lg.has_waiters:
                with contextlib.suppress(StorageError):
                    lg.flush()

    # --- maintenance ------------------------------------------------------------------------------
    def maintain(self, now_ms: int | None = None) -> None:
        """Roll segments by ``segment_ms``, apply retention, expire producer
        ids, close idle partitions' handles. Runs in the caller's thread."""
        self._check_open()
        now = _now() if now_ms is None else now_ms
        for lg in list(self._logs.values()):
            lg.maybe_roll_by_time(now)
            lg.apply_retention(now)
            with lg._lock:
                lg.producers.expire(now)
            lg.close_idle(now)
        self._maybe_checkpoint()

    def stats(self) -> StoreStats:
        mapped = 0
        for lg in list(self._logs.values()):
            seg = lg.segments[-1]
            mapped += seg.index.mapped_bytes + seg.time_index.mapped_bytes
        return StoreStats(self.handles.open_count, mapped, len(self._logs), self.index_cache.nbytes)


def _now() -> int:
    return now_ms()


def _check_partition_count(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PARTITIONS:
        raise InvalidArgumentError(
            f"partition count must be an integer in 1..{MAX_PARTITIONS}, got {n!r}"
        )
