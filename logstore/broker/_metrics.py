"""Prometheus metrics of one broker, in their own registry.

Counters and histograms are updated per request or per batch (never per
record). Partition offsets and sizes and the store's open files and mapped
index bytes are read from the store at scrape time by :class:`StoreCollector`
(in the HTTP server's thread; the store's read methods are thread-safe), so
the data path pays nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._groups_runtime import group_lag

if TYPE_CHECKING:
    from logstore.storage import Store

    from ._groups_runtime import GroupsRuntime
    from ._share_runtime import ShareRuntime

#: A scrape waits at most this long for the coordinator's state (it is read
#: between coordinator calls, on the event loop).
_GROUP_SCRAPE_TIMEOUT_S: Final = 5.0

log = logging.getLogger("logstore.broker")

#: Latency buckets (s): loopback round trips are ~0.5 ms, fsyncs 0.2-20 ms.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class BrokerMetrics:
    """Every metric the broker exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "logstore_requests",
            "RPCs answered, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "logstore_request_seconds",
            "RPC latency by method (Fetch includes long-poll waits)",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.produce_bytes = Counter(
            "logstore_produce_bytes", "Record bytes appended, by topic", ["topic"], registry=r
        )
        self.produce_records = Counter(
            "logstore_produce_records", "Records appended, by topic", ["topic"], registry=r
        )
        self.produce_batches = Counter(
            "logstore_produce_batches", "Batches appended, by topic", ["topic"], registry=r
        )
        self.recompress_seconds = Counter(
            "logstore_produce_recompress_seconds",
            "Time spent recompressing batches to a topic's compression_type, by topic",
            ["topic"],
            registry=r,
        )
        self.produce_duplicates = Counter(
            "logstore_produce_duplicate_batches",
            "Idempotent retries answered with their original offset",
            registry=r,
        )
        self.fetch_bytes = Counter(
            "logstore_fetch_bytes",
            "Frame bytes sent by Fetch and Subscribe",
            ["method"],
            registry=r,
        )
        self.fetch_records = Counter(
            "logstore_fetch_records",
            "Records sent by Fetch and Subscribe (from the requested offset)",
            ["method"],
            registry=r,
        )
        self.sync_wait = Histogram(
            "logstore_fsync_wait_seconds",
            "acks=ALL: time from append to the group-commit fsync covering it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "logstore_fsync_seconds",
            "Duration of one group-commit fsync of a partition (flusher thread)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_batch_size = Histogram(
            "logstore_fsync_batch_size",
            "acks=ALL waiters completed by one group-commit fsync",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "logstore_inflight_produce_bytes", "Produce request bytes being handled", registry=r
        )
        self.inflight_requests = Gauge(
            "logstore_inflight_requests", "Requests being handled", registry=r
        )
        self.long_poll_waiters = Gauge(
            "logstore_long_poll_waiters", "Fetch requests parked in a long poll", registry=r
        )
        self.subscriptions = Gauge("logstore_subscriptions", "Open Subscribe streams", registry=r)
        self.rejected = Counter(
            "logstore_rejected_requests",
            "Requests refused with RESOURCE_EXHAUSTED, by the limit hit",
            ["reason"],
            registry=r,
        )
        # Not labelled by group: group ids come and go, and a counter's
        # children are never removed, so per-group series would grow forever.
        self.group_rebalances = Counter(
            "logstore_group_rebalances",
            "Group epoch bumps (membership, subscription or topic changes)",
            registry=r,
        )
        self.group_fenced = Counter(
            "logstore_group_fenced_requests",
            "Group requests refused as from an unknown or fenced member, by reason",
            ["reason"],
            registry=r,
        )
        self.acks_none_errors = Counter(
            "logstore_acks_none_errors",
            "acks=NONE batches that failed after the reply was sent",
            registry=r,
        )

    def attach_store(self, store: Store) -> None:
        self.registry.register(StoreCollector(store))
        self.registry.register(CleanerCollector(store))
        fsync = self.fsync_seconds
        batch = self.fsync_batch_size

        # Called by the store's flusher thread after each partition fsync.
        def on_fsync(_log: object, seconds: float, waiters: int) -> None:
            fsync.observe(seconds)
            batch.observe(waiters)

        store.on_fsync = on_fsync

    def attach_groups(self, groups: GroupsRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.registry.register(GroupCollector(groups, loop))

    def attach_share(self, share: ShareRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.registry.register(ShareCollector(share, loop))


class GroupCollector:
    """Members per group and lag per group/topic/partition, computed at scrape time.

    The coordinator's state is read on the event loop between coordinator
    calls; the lag (one read of at most one batch per lagging partition) in the
    I/O pool. The series are bounded by max_groups x the partitions each group
    subscribes to or has committed (max_committed_partitions_per_group)."""

    def __init__(self, groups: GroupsRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self._groups = groups
        self._loop = loop

    def describe(self) -> list[Any]:
        return []

    async def _rows(self) -> list[tuple[str, int, dict[Any, Any]]]:
        g = self._groups
        descs = await g.read(lambda c: [c.describe_group(x.group_id) for x in c.list_groups()])
        out = []
        for d in descs:
            lags = await g.runtime.run_io(group_lag, g.runtime.store, d)
            out.append((d.group_id, len(d.members), lags))
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        members = GaugeMetricFamily(
            "logstore_group_members", "Members of each consumer group", labels=["group"]
        )
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "logstore_group_lag_records",
            "Log end offset minus the group's committed offset",
            labels=labels,
        )
        lag_s = GaugeMetricFamily(
            "logstore_group_lag_seconds",
            "Age of the oldest record the group has not committed",
            labels=labels,
        )
        try:
            rows = asyncio.run_coroutine_threadsafe(self._rows(), self._loop).result(
                _GROUP_SCRAPE_TIMEOUT_S
            )
        except Exception as exc:  # loading, shutting down, or a slow loop
            log.debug("group metrics scrape skipped: %s", exc)
            rows = []
        for gid, n, lags in rows:
            members.add_metric([gid], n)
            for (topic, part), (_owner, _c, _end, records, ms) in lags.items():
                lv = [gid, topic, str(part)]
                lag.add_metric(lv, records)
                lag_s.add_metric(lv, ms / 1000)
        yield from (members, lag, lag_s)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ShareCollector:
    """Share groups (work queues), computed at scrape time from the coordinator
    (read on the event loop between its calls): per group/topic/partition the
    available (due, in the window), acquired, delayed and dead-lettered counts
    and the oldest available record's age; per group the acknowledge rate, the
    estimated drain time (back pressure) and per member its in-flight records.
    Series are bounded by max_groups x share partitions and members."""

    def __init__(self, share: ShareRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self._share = share
        self._loop = loop

    def describe(self) -> list[Any]:
        return []

    async def _rows(self) -> tuple[list[Any], int]:
        now = _now_ms()
        return await self._share.read(
            lambda c: ([c.describe(g, now_ms=now) for g in c.list_groups()], c.parked_records)
        )

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["group", "topic", "partition"]
        fams = {
            name: GaugeMetricFamily(f"logstore_share_{name}", doc, labels=labels)
            for name, doc in (
                ("available_records", "Records that can be acquired now (in the window)"),
                ("acquired_records", "Records acquired (locked) now"),
                ("delayed_records", "Records waiting for their deliver-at time or release delay"),
                ("dead_lettered_records", "Records moved to the dead-letter topic, in total"),
                ("oldest_available_age_seconds", "Age of the oldest available record"),
            )
        }
        rate = GaugeMetricFamily(
            "logstore_share_ack_rate", "Acknowledgements per second over 60 s", labels=["group"]
        )
        drain = GaugeMetricFamily(
            "logstore_share_estimated_drain_seconds",
            "Backlog / acknowledge rate (-1: no estimate), against max_queue_latency_ms",
            labels=["group"],
        )
        inflight = GaugeMetricFamily(
            "logstore_share_member_inflight_records",
            "Records each share-group member holds",
            labels=["group", "member"],
        )
        try:
            descs, parked = asyncio.run_coroutine_threadsafe(self._rows(), self._loop).result(
                _GROUP_SCRAPE_TIMEOUT_S
            )
        except Exception as exc:  # loading, shutting down, or a slow loop
            log.debug("share metrics scrape skipped: %s", exc)
            descs, parked = [], 0
        now = _now_ms()
        for d in descs:
            for pc in d.partitions:
                lv = [d.group_id, pc.topic, str(pc.partition)]
                fams["available_records"].add_metric(lv, pc.available)
                fams["acquired_records"].add_metric(lv, pc.acquired)
                fams["delayed_records"].add_metric(lv, pc.delayed)
                fams["dead_lettered_records"].add_metric(lv, pc.dead_lettered_total)
                age = (
                    (now - pc.oldest_available_ts_ms) / 1000
                    if pc.oldest_available_ts_ms >= 0
                    else 0
                )
                fams["oldest_available_age_seconds"].add_metric(lv, max(0.0, age))
            rate.add_metric([d.group_id], d.ack_rate_per_s)
            est = self._share.drain_estimates.get(d.group_id, 0)
            drain.add_metric([d.group_id], est / 1000 if est >= 0 else -1)
            for m in d.consumers:
                inflight.add_metric([d.group_id, m.consumer_id], m.in_flight)
        yield from fams.values()
        yield from (rate, drain, inflight)
        yield GaugeMetricFamily(
            "logstore_share_parked_records",
            "Delayed records parked below the windows, all share partitions together",
            value=parked,
        )
        yield GaugeMetricFamily(
            "logstore_share_parked_records_limit",
            "share_max_delayed_records_total: past it delayed records stay in the windows",
            value=self._share.config.max_delayed_records_total,
        )
        yield CounterMetricFamily(
            "logstore_share_dead_letters_produced",
            "Records appended to dead-letter topics by this broker since start",
            value=self._share.dead_letters_produced,
        )
        yield CounterMetricFamily(
            "logstore_share_log_start_lost_records",
            "Unfinished share-group records removed by retention before delivery",
            value=self._share.log_start_lost,
        )


class StoreCollector:
    """Partition offsets and sizes, open files and mapped bytes, read at scrape time."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []  # collected lazily: the set of partitions changes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["topic", "partition"]
        start = GaugeMetricFamily(
            "logstore_partition_log_start_offset", "Log start offset", labels=labels
        )
        end = GaugeMetricFamily(
            "logstore_partition_log_end_offset", "Log end offset (high watermark)", labels=labels
        )
        size = GaugeMetricFamily(
            "logstore_partition_size_bytes", "Bytes of .log files", labels=labels
        )
        segs = GaugeMetricFamily("logstore_partition_segments", "Segment count", labels=labels)
        try:
            for topic in self._store.topics():
                for p in range(topic.partitions):
                    info = self._store.partition_info(topic.name, p)
                    lv = [topic.name, str(p)]
                    start.add_metric(lv, info.log_start_offset)
                    end.add_metric(lv, info.log_end_offset)
                    size.add_metric(lv, info.size_bytes)
                    segs.add_metric(lv, info.segment_count)
            stats = self._store.stats()
        except Exception as exc:  # a scrape during shutdown or deletion: export what we have
            log.debug("metrics scrape incomplete: %s", exc)
            yield from (start, end, size, segs)
            return
        yield from (start, end, size, segs)
        yield GaugeMetricFamily(
            "logstore_open_files", "Open segment files of the store", value=stats.open_files
        )
        yield GaugeMetricFamily(
            "logstore_mapped_index_bytes",
            "Bytes of index files memory-mapped by the store",
            value=stats.mapped_index_bytes,
        )
        yield GaugeMetricFamily(
            "logstore_partitions", "Partitions in the store", value=stats.partitions
        )


class CleanerCollector:
    """The log cleaner's counters (``store.cleaner.stats``, kept by the cleaner
    thread) and each compacted partition's dirty ratio, read at scrape time:
    the cleaner pays nothing for them. Series: one per compacted partition."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []  # collected lazily: the set of partitions changes

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self._store.cleaner.stats
        counters = (
            ("runs", "Partition cleans run by the log cleaner", st.runs),
            ("passes", "Key-map passes of the log cleaner", st.passes),
            ("bytes_read", "Segment bytes the log cleaner read", st.bytes_read),
            ("bytes_written", "Bytes the log cleaner wrote to cleaned segments", st.bytes_written),
            ("records_removed", "Records compaction removed (tombstones included)",
             st.records_removed),
            ("tombstones_removed", "Tombstones (null values) compaction removed",
             st.tombstones_removed),
            ("segments_swapped", "Segments replaced or deleted by the cleaner",
             st.segments_swapped),
        )  # fmt: skip
        for name, doc, value in counters:
            yield CounterMetricFamily(f"logstore_cleaner_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "logstore_cleaner_last_clean_seconds",
            "Duration of the cleaner's last partition clean",
            value=st.last_clean_seconds,
        )
        dirty = GaugeMetricFamily(
            "logstore_partition_dirty_ratio",
            "Compacted partitions: share of cleanable bytes past the cleaned point",
            labels=["topic", "partition"],
        )
        try:
            for topic in self._store.topics(include_internal=True):
                if not topic.config.compact:
                    continue
                for p in range(topic.partitions):
                    ratio = self._store.dirty_ratio(topic.name, p)
                    if ratio is not None:
                        dirty.add_metric([topic.name, str(p)], ratio)
        except Exception as exc:  # a scrape during shutdown or deletion: export what we have
            log.debug("cleaner metrics scrape incomplete: %s", exc)
        yield dirty
