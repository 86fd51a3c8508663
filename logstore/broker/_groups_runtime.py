"""The coordinator runtime: one :class:`~logstore.coordinator.Coordinator` on a store.

Contract (CONVENTIONS.md rule 5; ``docs/architecture.md``, "Consumer group
coordinator"): the one-writer group commit, the stale rebuild after a failed
append, the load by replay and the timer are
:class:`~logstore.broker._state_runtime.StateRuntime`'s (shared with the share
groups). What is particular to the consumer groups:

* Group commit over ``__consumer_offsets`` (acks=ALL): measured with 16
  concurrent committers over gRPC, ext4, a loaded 2-core machine: ~770
  commits/s with one fsync per commit, ~1,400-1,800 with batches; one
  committer alone is unchanged (one call per batch).
* At start (before the gRPC port opens) the coordinator is
  ``Coordinator.load``-ed, then retargeted with ``on_metadata`` (topics may
  have changed while the broker was down) and ticked: groups and offsets
  survive a clean restart and a kill -9 (every acknowledged record was
  fsynced). A failed append rebuilds it the same way.
* Timers: ``tick(now)`` expires members and offsets, so a session timeout
  fires within a few ms of its deadline, not on the 10 s maintenance loop. A
  steady heartbeat writes nothing and only pushes its own deadline later, so
  a timer armed earlier at worst fires early, finds nothing and re-arms. A
  failed timer retries after one heartbeat interval.

``__consumer_offsets`` has **one partition** for now (one coordinator per
broker; a partition per coordinator shard is the follow-up once groups are
sharded). Its cleanup policy is ``delete`` with ``retention_ms=-1`` (keep
forever) plus ``compact``: the cleaner keeps the latest record per key
(every coordinator record is keyed: group, member, assignment, or group +
partition for a commit), so the topic stays about as large as the state, not
the history of commits. Segments are 100 MiB (Kafka's
``offsets.topic.segment.bytes``), since the active segment is never cleaned. A
directory whose internal topic was created before compaction existed gets the
same config at start.

A handler's records are appended in batches of at most
``MAX_APPEND_BYTES``; a crash between two batches of one result leaves a
prefix, which the coordinator's record order keeps consistent (every prefix
of its log has one owner per partition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from logstore.coordinator import (
    Coordinator,
    CoordinatorRecord,
    GroupConfig,
    GroupDescription,
    GroupMetadataKey,
    GroupMetadataValue,
    TopicPartition,
    decode,
    encode,
    regex_matches,
)
from logstore.errors import GroupIdNotFoundError, LogStoreError

from ._state_runtime import StateRuntime, now_ms

if TYPE_CHECKING:
    from logstore.storage import Store

    from ._runtime import Runtime

log = logging.getLogger("logstore.broker")

#: The internal topic of the coordinator's records.
OFFSETS_TOPIC: Final = "__consumer_offsets"
#: Its partition count (see the module docstring).
OFFSETS_PARTITIONS: Final = 1
#: Compacted, never deleted by time or size; 100 MiB segments (see the module docstring).
OFFSETS_TOPIC_CONFIG: Final = {
    "cleanup_policy": "compact",
    "retention_ms": -1,
    "segment_bytes": 100 * 1024 * 1024,
}


class GroupsRuntime(StateRuntime[Coordinator, CoordinatorRecord]):
    """The broker's coordinator, its log and its timer (see the module docstring)."""

    topic = OFFSETS_TOPIC
    partitions = OFFSETS_PARTITIONS
    topic_config = OFFSETS_TOPIC_CONFIG
    enforce_topic_config = True
    what = "coordinator"
    records_name = "the group's records"

    def __init__(self, runtime: Runtime, config: GroupConfig) -> None:
        super().__init__(runtime, Coordinator(config))
        self.config = config
        #: Called with the group ids whose epoch a replayed record bumped.
        self.on_rebalance: Callable[[str], None] = lambda _gid: None

    def _timer_retry_ms(self) -> int:
        return self.config.heartbeat_interval_ms  # one heartbeat interval rather than never

    # ------------------------------------------------------------- the records

    def _encode(self, record: CoordinatorRecord) -> tuple[bytes, bytes | None]:
        return encode(record)

    def _decode(self, key: bytes, value: bytes | None) -> CoordinatorRecord:
        return decode(key, value)

    def _build(self, records: list[CoordinatorRecord]) -> Coordinator:
        c = Coordinator.load(records, config=self.config, topics=self.topics(), now_ms=now_ms())
        log.info(
            "consumer groups loaded",
            extra={"fields": {"records": len(records), "groups": len(c.list_groups())}},
        )
        return c

    async def _after_load(self) -> None:
        # Topics may have changed while the broker was down (or since the failure).
        result = self.coordinator.on_metadata(self.topics(), now_ms=now_ms())
        await self._commit(result.records)

    def _replay(self, records: Iterable[CoordinatorRecord]) -> None:
        for r in records:
            if isinstance(r.key, GroupMetadataKey) and isinstance(r.value, GroupMetadataValue):
                self._count_rebalance(r.key.group_id, r.value.epoch)
            self.coordinator.replay(r)

    def _count_rebalance(self, group_id: str, epoch: int) -> None:
        try:
            before = self.coordinator.describe_group(group_id).epoch
        except GroupIdNotFoundError:
            before = 0
        if epoch > before:
            self.on_rebalance(group_id)

    # --------------------------------------------------------------- calls

    async def on_metadata(self) -> None:
        """Topics were created, deleted or got partitions: retarget every group."""
        if not self._ready or self._rt.stopping:
            return
        try:
            await self.call(lambda c, now: c.on_metadata(self.topics(), now_ms=now))
        except LogStoreError as exc:
            # The topic change itself succeeded; the coordinator is rebuilt
            # (with on_metadata) before its next call.
            log.error("retargeting groups after a topic change failed: %s", exc)


LagRow = tuple[str, int, int, int, int]


def group_lag(
    store: Store, desc: GroupDescription, now: int | None = None
) -> dict[TopicPartition, LagRow]:
    """Per partition the group subscribes to, owns or has committed:
    ``(owner, committed or -1, log end offset, lag in offsets, lag in ms)``.
    The lag in ms is the age of the oldest record not committed (the record at
    the committed offset, or the log start when none), 0 when caught up.
    Blocking (store reads): run it in the I/O pool. One read per lagging
    partition, of at most one batch."""
    now = time.time_ns() // 1_000_000 if now is None else now
    topics = {t.name: t.partitions for t in store.topics()}
    owners: dict[TopicPartition, str] = {}
    wanted: set[TopicPartition] = set(desc.offsets)
    for m in desc.members:
        for tp in m.assigned | m.revoking:
            owners[tp] = m.member_id
        wanted |= m.assigned | m.revoking | m.target
        names = set(m.topics)
        if m.regex is not None:
            names |= regex_matches(m.regex, topics)
        for t in names:
            wanted |= {(t, p) for p in range(topics.get(t, 0))}
    out: dict[TopicPartition, LagRow] = {}
    for tp in sorted(wanted):
        committed = desc.offsets[tp].offset if tp in desc.offsets else -1
        if tp[0] not in topics or tp[1] >= topics[tp[0]]:
            out[tp] = (owners.get(tp, ""), committed, 0, 0, 0)
            continue
        try:
            start, _ = store.offsets(*tp)
            end = store.high_watermark(*tp)
            pos = max(start, committed if committed >= 0 else start)
            lag = max(0, end - pos)
            lag_ms = 0
            if lag:
                recs = store.read(tp[0], tp[1], pos, 1)
                if recs:
                    lag_ms = max(0, now - recs[0].timestamp_ms)
        except Exception:  # deleted while we looked: report it as empty
            start = end = lag = lag_ms = 0
        out[tp] = (owners.get(tp, ""), committed, end, lag, lag_ms)
    return out
