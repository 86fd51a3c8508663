"""The share coordinator: every share group of one broker (KIP-932's queues).

Contract (the same as the consumer-group coordinator, CONVENTIONS.md rule 5):

* Every handler (``configure_group``, ``join``, ``heartbeat``, ``leave``,
  ``acquire``, ``undeliver``, ``acknowledge``, ``dead_lettered``, ``delete_group``,
  ``on_log_start``, ``redrive_intent``, ``redrive_done``, ``tick``)
  validates, computes and returns a :class:`Result`:
  the records to append to ``__share_group_state`` and the reply. It changes
  no durable state; a handler that raises a typed :mod:`logstore.errors`
  error returned nothing and changed nothing.
* Durable state changes only in :meth:`ShareCoordinator.replay`. The caller
  appends a result's records (fsync), replays them, then answers, **before
  the next handler call** (handlers run one at a time).
* :meth:`ShareCoordinator.load` replays a log from scratch, also one as
  compaction leaves it (latest record per key), and then makes every
  acquired record available again with its delivery count kept: locks do not
  survive a restart (KIP-932), delivery counts and acknowledgements do.

Volatile, not in records (like the group coordinator's timers): the
membership (consumers, their subscriptions and session deadlines; after a
restart consumers get ``UnknownMemberIdError`` and join again), topic
metadata (``on_metadata``), the acknowledgement-rate window, the
round-robin cursor of equal-priority partitions, and each consumer's last
``MAX_REMEMBERED_ACKS`` applied ACCEPT/REJECT and RELEASE ranges: a repeat of
one by the same consumer (a client resending a request whose reply was lost)
is answered OK and applied nothing, where it would be refused as
ALREADY_ACKNOWLEDGED / NOT_ACQUIRED / HELD_BY_OTHER; a RELEASE is forgotten
once the consumer acquires an offset of it again.

Membership: any consumer of a group may acquire from every partition of the
topics it subscribes to (no assignment: consumers may outnumber partitions;
the simplest useful reading of KIP-932's share-group heartbeat). A consumer
that leaves, or misses ``session_timeout_ms`` of heartbeats (any handler call
of it counts as one), has its acquired records made available again (their
delivery counts kept; at the limit they are dead-lettered).

Priority: partitions are served in the order of their topic's priority
(``topic_priorities``, higher first), equal priorities round-robin per call;
an acquisition takes everything it can from a higher-priority partition
before it looks at a lower one. Strict priority has no starvation guard: a
low-priority topic waits while a higher one has due records (document your
capacity accordingly, or give both topics the same priority).

The broker's fetch, in three steps (nothing is read twice):

1. ``plan = fetch_plan(group, consumer, now_ms=...)``: the partitions, in
   priority order, whose window has room, each with the offset to read from
   (None: no state yet; resolve ``auto_offset_reset`` against the log) and
   how many offsets the window can still take.
2. The broker reads those offsets from the log and builds
   :class:`Candidates` per partition with numpy (``Candidates.from_ranges``
   for batches without delay headers when ordering keys are off).
3. ``result = acquire(group, consumer, max_records=..., now_ms=...,
   candidates=...)``: append, replay, answer with ``result.reply.acquired``,
   and produce ``result.reply.dead_letters`` to the dead-letter topic, then
   ``dead_lettered(...)`` each (a crash in between: ``pending_dead_letters``
   lists them again at start; the broker skips copies already produced).

Memory is bounded by ``ShareCoordinatorConfig`` (groups, consumers, share
partitions) times ``max_inflight_records`` plus ``max_delayed_records``
parked records. A volatile deadline index (a heap of each share partition's
next lock end or due time, kept by replay) makes ``tick`` and its
``next_deadline_ms`` O(consumers + log n per partition whose deadline
passed), not O(share partitions x window). Getting past N delayed records
takes N / ``max_inflight_records`` fetch rounds (each reads one window and
parks what is delayed). Not thread-safe: one thread (the broker's
coordinator lock) calls it.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from logstore.errors import (
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    GroupNotEmptyError,
    InvalidGroupRequestError,
    TooManyGroupsError,
    UnknownMemberIdError,
)
from logstore.share._config import ShareCoordinatorConfig, ShareGroupConfig
from logstore.share._partition import (
    AckError,
    AckKind,
    AckResult,
    AcquiredRange,
    Candidates,
    DeadLetter,
    PartitionCounts,
    SharePartition,
    Work,
)
from logstore.share._records import (
    ShareChunkKey,
    ShareChunkValue,
    ShareGroupKey,
    ShareGroupValue,
    ShareParkedKey,
    ShareParkedValue,
    ShareRecord,
    ShareRedriveKey,
    ShareRedriveValue,
    ShareStateKey,
    ShareStateValue,
)

TopicPartition = tuple[str, int]
T = TypeVar("T")


@dataclass(frozen=True)
class Result(Generic[T]):
    """Records to append to ``__share_group_state`` (in order), then the
    reply for the caller (the share counterpart of the group coordinator's
    ``Result``)."""

    records: tuple[ShareRecord, ...]
    reply: T


#: The acknowledgement rate is measured over this window (volatile).
_ACK_RATE_WINDOW_MS = 60_000


@dataclass(frozen=True)
class Ack:
    """One acknowledgement: ``kind`` for offsets ``first_offset..last_offset``
    (inclusive). ``delay_ms`` (RELEASE): not redelivered before; ``lock_ms``
    (RENEW): the lock ends this long from now (0: the group's visibility
    timeout); ``error`` (REJECT, RELEASE): the text kept for the dead-letter
    header."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    kind: AckKind
    delay_ms: int = 0
    lock_ms: int = 0
    error: str = ""


@dataclass(frozen=True)
class Membership:
    """Reply to join / heartbeat: the consumer's id, when to beat again, and
    the partitions it may acquire from (every partition of its topics)."""

    consumer_id: str
    heartbeat_interval_ms: int
    session_timeout_ms: int
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class PartitionRead:
    """Step 1 of a fetch: read ``topic``/``partition`` from ``start_offset``
    (None: the partition has no state; read from the log start for
    ``auto_offset_reset`` "earliest", from the high watermark for "latest"),
    at most ``max_offsets`` offsets (the room left in the window)."""

    topic: str
    partition: int
    priority: int
    start_offset: int | None
    auto_offset_reset: str
    max_offsets: int


@dataclass(frozen=True)
class Acquisition:
    """Reply to acquire: the ranges handed to the consumer (priority order,
    then offset order) and the records the broker must dead-letter."""

    acquired: tuple[AcquiredRange, ...]
    dead_letters: tuple[DeadLetter, ...]

    @property
    def record_count(self) -> int:
        """Offsets acquired in total."""
        return sum(r.last_offset - r.first_offset + 1 for r in self.acquired)


@dataclass(frozen=True)
class AckReply:
    """Reply to acknowledge: one result per range, in request order, and the
    records the broker must dead-letter (rejected, or released at the limit)."""

    results: tuple[AckResult, ...]
    dead_letters: tuple[DeadLetter, ...]


@dataclass(frozen=True)
class ShareTickResult:
    """Records of expired locks and sessions, the dead letters they caused,
    and the next time tick has work or a delayed record becomes due (None:
    nothing pending), so a timer can be armed exactly and long polls woken."""

    records: tuple[ShareRecord, ...]
    dead_letters: tuple[DeadLetter, ...]
    next_deadline_ms: int | None


@dataclass(frozen=True)
class ConsumerDescription:
    """A consumer as describe shows it; ``in_flight`` = records it holds."""

    consumer_id: str
    topics: tuple[str, ...]
    in_flight: int


@dataclass(frozen=True)
class ShareGroupDescription:
    """``logctl queues describe``: config, consumers, per-partition counts and
    totals (``oldest_available_ts_ms`` -1 when nothing is available;
    ``ack_rate_per_s`` over the last minute, volatile)."""

    group_id: str
    config: ShareGroupConfig
    dead_letter_topic: str
    consumers: tuple[ConsumerDescription, ...]
    partitions: tuple[PartitionCounts, ...]
    available: int
    delayed: int
    acquired: int
    dead_letter_pending: int
    dead_lettered_total: int
    accepted_total: int
    oldest_available_ts_ms: int
    ack_rate_per_s: float


#: Applied acknowledgement ranges remembered per consumer (volatile), so a
#: retry of a request whose reply was lost is answered OK, not refused.
MAX_REMEMBERED_ACKS = 256

#: (topic, partition, first_offset, last_offset, kind) of an applied range.
_Applied = tuple[str, int, int, int, AckKind]


@dataclass
class _Consumer:
    topics: frozenset[str]
    session_deadline_ms: int
    #: ACCEPT/REJECT ranges this consumer had applied (terminal: always true).
    finished: deque[_Applied] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_ACKS))
    #: RELEASE ranges it had applied, forgotten once it acquires an offset of one
    #: again (a RELEASE of that new delivery must be checked, not remembered).
    released: deque[_Applied] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_ACKS))


#: Refusals a repeat of an applied acknowledgement can get (its first attempt
#: finished or released the records).
_REPEAT_ERRORS = frozenset(
    {AckError.ALREADY_ACKNOWLEDGED, AckError.NOT_ACQUIRED, AckError.HELD_BY_OTHER}
)


def _remembered(m: _Consumer, a: Ack) -> bool:
    """Whether consumer ``m`` had applied ``a``'s kind to all of ``a``'s range."""
    if a.kind is AckKind.ACCEPT or a.kind is AckKind.REJECT:
        applied = m.finished
    elif a.kind is AckKind.RELEASE:
        applied = m.released
    else:
        return False
    return any(
        t == a.topic and p == a.partition and f <= a.first_offset and a.last_offset <= l_
        and k is a.kind
        for t, p, f, l_, k in applied
    )  # fmt: skip


@dataclass
class _Group:
    config: ShareGroupConfig
    partitions: dict[TopicPartition, SharePartition] = field(default_factory=dict)
    redrive: ShareRedriveValue = field(default_factory=lambda: ShareRedriveValue(0))


def _work_next_event(w: Work, after_ms: int) -> int | None:
    """The next lock end or not-before time after ``after_ms`` of a Work
    whose ``value()`` was taken (parked entries and window alike)."""
    st, un = w.state, w.until
    times = un[(st == 1) | ((st == 0) & (un > after_ms))]  # ACQUIRED, AVAILABLE
    return int(times.min()) if len(times) else None


class ShareCoordinator:
    """All share groups of one broker (see the module docstring)."""

    def __init__(
        self,
        config: ShareCoordinatorConfig | None = None,
        topics: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.config = config or ShareCoordinatorConfig()
        self._topics: dict[str, int] = dict(topics or {})
        self._new_id = id_factory or (lambda: str(uuid.uuid4()))
        self._groups: dict[str, _Group] = {}
        # volatile (module docstring)
        self._consumers: dict[str, dict[str, _Consumer]] = {}
        self._cursor: dict[str, int] = {}
        self._acks: dict[str, deque[tuple[int, int]]] = {}
        # Deadline index (volatile, rebuilt by replay): a heap of (time,
        # version, group, topic, partition), one valid entry per share
        # partition with something pending -- its earliest lock end or
        # not-before time after the clock when it last changed. Stale entries
        # (older version, deleted partition) are skipped and compacted away,
        # so tick and next_deadline_ms cost O(log n) per event, not
        # O(share partitions x window).
        self._deadlines: list[tuple[int, int, str, str, int]] = []
        self._clock = 0
        #: Records parked in every share partition (kept by replay), and what the
        #: handler running now parked on top of that before its records are
        #: replayed: ``max_delayed_records_total`` bounds their sum.
        self._parked_total = 0
        self._parked_pending = 0

    # ---------------------------------------------------------------- replay

    @classmethod
    def load(
        cls,
        records: Iterable[ShareRecord],
        *,
        config: ShareCoordinatorConfig | None = None,
        topics: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
    ) -> ShareCoordinator:
        """A coordinator rebuilt by replaying ``records`` in order; acquired
        records are then available again (delivery counts kept)."""
        c = cls(config, topics, id_factory)
        for r in records:
            c.replay(r)
        for gid, g in c._groups.items():
            for tp, p in g.partitions.items():
                p.reset_locks()
                c._index(gid, tp, p)
        return c

    def _index(self, gid: str, tp: TopicPartition, p: SharePartition) -> None:
        """Put ``p``'s next deadline after the clock into the heap."""
        t = p.next_event_after(self._clock)
        if t is not None:
            heapq.heappush(self._deadlines, (t, p.version, gid, tp[0], tp[1]))
        live = sum(len(g.partitions) for g in self._groups.values())
        if len(self._deadlines) > 2 * live + 64:
            self._deadlines = [e for e in self._deadlines if self._valid(e)]
            heapq.heapify(self._deadlines)

    def _valid(self, e: tuple[int, int, str, str, int]) -> bool:
        g = self._groups.get(e[2])
        p = None if g is None else g.partitions.get((e[3], e[4]))
        return p is not None and p.version == e[1]

    def replay(self, record: ShareRecord) -> None:
        """Apply one record: the only place durable state changes. Tolerates
        partition records before their group record (compaction moves a
        re-written group record after them)."""
        key, value = record.key, record.value
        self._parked_pending = 0  # the handler's records are being replayed
        g = self._groups.get(key.group_id)
        if isinstance(key, ShareGroupKey):
            if value is None:
                gone = self._groups.pop(key.group_id, None)
                if gone is not None:
                    self._parked_total -= sum(p.parked_count for p in gone.partitions.values())
                return
            assert isinstance(value, ShareGroupValue)
            if g is None:
                self._groups[key.group_id] = _Group(value.config)
            else:
                g.config = value.config
            return
        if g is None:
            if value is None:
                return
            g = self._groups[key.group_id] = _Group(ShareGroupConfig())
        if isinstance(key, ShareRedriveKey):
            assert value is None or isinstance(value, ShareRedriveValue)
            g.redrive = value or ShareRedriveValue(0)
            return
        tp = (key.topic, key.partition)
        p = g.partitions.get(tp)
        if value is None:
            if p is None:
                return
            if isinstance(key, ShareStateKey):
                self._parked_total -= p.parked_count
                del g.partitions[tp]
            elif isinstance(key, ShareParkedKey):
                self._parked_total -= p.parked_count
                p.install_parked(key.first_offset, None)
                self._parked_total += p.parked_count
                self._index(key.group_id, tp, p)
            else:
                assert isinstance(key, ShareChunkKey)
                p.drop_chunk(key.first_offset)
            return
        if p is None:
            p = g.partitions[tp] = SharePartition(key.group_id, key.topic, key.partition)
        if isinstance(key, ShareStateKey):
            assert isinstance(value, ShareStateValue)
            p.install(value)
        elif isinstance(key, ShareParkedKey):
            assert isinstance(value, ShareParkedValue)
            self._parked_total -= p.parked_count
            p.install_parked(key.first_offset, value)
            self._parked_total += p.parked_count
        else:
            assert isinstance(key, ShareChunkKey) and isinstance(value, ShareChunkValue)
            p.install_chunk(key.first_offset, value)
        self._index(key.group_id, tp, p)

    def apply(self, result: Result[Any]) -> Any:
        """Replay ``result``'s records and return its reply (for callers that
        keep the log themselves, like tests; the broker appends first)."""
        for r in result.records:
            self.replay(r)
        return result.reply

    def snapshot(self) -> dict[str, Any]:
        """The replayed durable state as comparable data (membership, timers
        and metadata excluded; acquired records shown as acquired)."""
        return {
            gid: {
                "config": g.config,
                "partitions": {
                    tp: (p.value, dict(sorted(p.chunks.items())), dict(sorted(p.parked.items())))
                    for tp, p in sorted(g.partitions.items())
                },
            }
            for gid, g in sorted(self._groups.items())
        }

    # ------------------------------------------------------------ validation

    def _check_id(self, what: str, value: object, limit_name: str) -> None:
        limit = getattr(self.config, limit_name)
        if not isinstance(value, str) or not value:
            raise InvalidGroupRequestError(f"{what} must be a non-empty string")
        if len(value) > limit:
            raise InvalidGroupRequestError(
                f"{what} is {len(value)} characters; the limit is {limit} ({limit_name})"
            )

    def _check_group_config(self, group_id: str, cfg: ShareGroupConfig) -> None:
        c = self.config
        if (
            not c.min_visibility_timeout_ms
            <= cfg.visibility_timeout_ms
            <= c.max_visibility_timeout_ms
        ):
            raise InvalidGroupRequestError(
                f"visibility_timeout_ms must be in {c.min_visibility_timeout_ms}.."
                f"{c.max_visibility_timeout_ms} (min/max_visibility_timeout_ms), "
                f"not {cfg.visibility_timeout_ms}"
            )
        if len(cfg.topic_priorities) > c.max_topics_per_group:
            raise InvalidGroupRequestError(
                f"topic_priorities names {len(cfg.topic_priorities)} topics; the limit is "
                f"{c.max_topics_per_group} (max_topics_per_group)"
            )
        if cfg.dead_letter_topic_for(group_id) in cfg.topic_priorities:
            raise InvalidGroupRequestError(
                f"the dead-letter topic {cfg.dead_letter_topic_for(group_id)!r} cannot be one "
                "of the group's topics"
            )

    def _group(self, group_id: str) -> _Group:
        g = self._groups.get(group_id)
        if g is None:
            raise GroupIdNotFoundError(f"share group {group_id!r} does not exist")
        return g

    def _member(self, group_id: str, consumer_id: str, now_ms: int) -> _Consumer:
        self._clock = max(self._clock, now_ms)
        self._check_id("group id", group_id, "max_group_id_length")
        m = self._consumers.get(group_id, {}).get(consumer_id)
        if m is None or m.session_deadline_ms <= now_ms:
            raise UnknownMemberIdError(
                f"share group {group_id} has no consumer {consumer_id!r} (it left, timed out, "
                "or the broker restarted); join again"
            )
        return m

    # ------------------------------------------------------------ membership

    def configure_group(self, group_id: str, config: ShareGroupConfig) -> Result[None]:
        """Create the group with ``config``, or change its config (effective
        at once; a smaller ``max_inflight_records`` stops the window growing,
        nothing in it is dropped). Raises InvalidGroupRequestError,
        TooManyGroupsError."""
        self._check_id("group id", group_id, "max_group_id_length")
        self._check_group_config(group_id, config)
        if group_id not in self._groups and len(self._groups) >= self.config.max_groups:
            raise TooManyGroupsError(
                f"the share coordinator holds {len(self._groups)} groups; the limit is "
                f"{self.config.max_groups} (max_groups)"
            )
        return Result((ShareRecord(ShareGroupKey(group_id), ShareGroupValue(config)),), None)

    def group_config(self, group_id: str) -> ShareGroupConfig:
        """The config of an existing group (GroupIdNotFoundError otherwise)."""
        return self._group(group_id).config

    def join(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        now_ms: int,
        consumer_id: str | None = None,
    ) -> Result[Membership]:
        """A consumer joins (a group that does not exist is created with the
        default config: one record). ``consumer_id`` None gets a new id; the id
        of a current member re-joins it with the new subscription. Raises
        InvalidGroupRequestError, TooManyGroupsError, GroupMaxSizeReachedError."""
        self._check_id("group id", group_id, "max_group_id_length")
        if consumer_id is not None:
            self._check_id("consumer id", consumer_id, "max_consumer_id_length")
        subs = self._check_topics(group_id, topics)
        members = self._consumers.get(group_id, {})
        records: tuple[ShareRecord, ...] = ()
        if group_id not in self._groups:
            records = self.configure_group(group_id, ShareGroupConfig()).records
        cid = consumer_id or self._new_id()
        live = sum(1 for m in members.values() if m.session_deadline_ms > now_ms)
        if cid not in members and live >= self.config.max_consumers_per_group:
            raise GroupMaxSizeReachedError(
                f"share group {group_id} has {live} consumers; the limit is "
                f"{self.config.max_consumers_per_group} (max_consumers_per_group)"
            )
        self._consumers.setdefault(group_id, {})[cid] = _Consumer(
            subs, now_ms + self.config.session_timeout_ms
        )
        return Result(records, self._membership(cid, subs))

    def _check_topics(self, group_id: str, topics: Sequence[str]) -> frozenset[str]:
        subs = frozenset(topics)
        if not subs:
            raise InvalidGroupRequestError("a share consumer must subscribe to at least one topic")
        if len(subs) > self.config.max_topics_per_group:
            raise InvalidGroupRequestError(
                f"subscription names {len(subs)} topics; the limit is "
                f"{self.config.max_topics_per_group} (max_topics_per_group)"
            )
        for t in subs:
            if not isinstance(t, str) or not t or t.startswith("__"):
                raise InvalidGroupRequestError(
                    f"cannot subscribe a share group to {t!r}: empty or internal topic name"
                )
        g = self._groups.get(group_id)
        cfg = g.config if g is not None else ShareGroupConfig()
        if cfg.dead_letter_topic_for(group_id) in subs:
            raise InvalidGroupRequestError(
                f"share group {group_id} cannot consume its own dead-letter topic "
                f"{cfg.dead_letter_topic_for(group_id)!r}"
            )
        return subs

    def _membership(self, cid: str, subs: frozenset[str]) -> Membership:
        parts = tuple((t, p) for t in sorted(subs) for p in range(self._topics.get(t, 0)))
        return Membership(
            cid, self.config.heartbeat_interval_ms, self.config.session_timeout_ms, parts
        )

    def heartbeat(
        self,
        group_id: str,
        consumer_id: str,
        *,
        now_ms: int,
        topics: Sequence[str] | None = None,
    ) -> Result[Membership]:
        """Keep ``consumer_id`` in the group (and change its subscription when
        ``topics`` is given). Writes no record. Raises UnknownMemberIdError."""
        m = self._member(group_id, consumer_id, now_ms)
        if topics is not None:
            m.topics = self._check_topics(group_id, topics)
        m.session_deadline_ms = now_ms + self.config.session_timeout_ms
        return Result((), self._membership(consumer_id, m.topics))

    def leave(
        self, group_id: str, consumer_id: str, *, now_ms: int
    ) -> Result[tuple[DeadLetter, ...]]:
        """The consumer leaves; its acquired records become available, or are
        dead-lettered at the delivery limit (the reply: produce them, then
        ``dead_lettered``). Raises UnknownMemberIdError."""
        self._member(group_id, consumer_id, now_ms)
        records, dls = self._release_consumer(group_id, consumer_id)
        del self._consumers[group_id][consumer_id]
        return Result(tuple(records), tuple(dls))

    def _release_consumer(
        self, group_id: str, consumer_id: str
    ) -> tuple[list[ShareRecord], list[DeadLetter]]:
        g = self._groups.get(group_id)
        records: list[ShareRecord] = []
        dls: list[DeadLetter] = []
        if g is None:
            return records, dls
        for p in g.partitions.values():
            if p.value is None or consumer_id not in p.entries().holders:
                continue
            w = p.work(g.config, max_parked=self.config.max_delayed_records)
            w.release_holder(consumer_id)
            records += self._finish(group_id, p, w)
            dls += w.dead_letters
        return records, dls

    def _finish(self, group_id: str, p: SharePartition | None, w: Work) -> list[ShareRecord]:
        """The records that take partition ``p`` to ``w``'s state."""
        if not w.changed:
            return []
        # The broker-wide bound: this partition may park what it has plus the
        # room left in all of them (records it finishes now free theirs).
        before = w.np0
        left = self.config.max_delayed_records_total - self._parked_total - self._parked_pending
        w.max_parked = min(self.config.max_delayed_records, before + max(left, 0))
        value = w.value()
        self._parked_pending += w.np0 - before
        out: list[ShareRecord] = []
        if w.new_chunk is not None:
            first, chunk = w.new_chunk
            if first + len(chunk.gap) > value.spso:
                out.append(ShareRecord(ShareChunkKey(group_id, w.topic, w.partition, first), chunk))
        for first, parked in w.parked_changes:
            key = ShareParkedKey(group_id, w.topic, w.partition, first)
            out.append(ShareRecord(key, parked))
        out.append(ShareRecord(ShareStateKey(group_id, w.topic, w.partition), value))
        if p is not None:
            for first in p.stale_chunks(value.spso):
                out.append(ShareRecord(ShareChunkKey(group_id, w.topic, w.partition, first), None))
        return out

    # ----------------------------------------------------------------- fetch

    def _ordered(self, group_id: str, g: _Group, topics: frozenset[str]) -> list[TopicPartition]:
        """Partitions of ``topics`` by priority (higher first), equal
        priorities rotated by a per-group cursor (fairness, volatile)."""
        tps = sorted(
            ((t, p) for t in topics for p in range(self._topics.get(t, 0))),
            key=lambda tp: (-g.config.priority(tp[0]), tp),
        )
        if not tps:
            return tps
        shift = self._cursor.get(group_id, 0) % len(tps)
        out: list[TopicPartition] = []
        i = 0
        while i < len(tps):
            j = i
            prio = g.config.priority(tps[i][0])
            while j < len(tps) and g.config.priority(tps[j][0]) == prio:
                j += 1
            band = tps[i:j]
            k = shift % len(band)
            out += band[k:] + band[:k]
            i = j
        return out

    def fetch_plan(
        self,
        group_id: str,
        consumer_id: str,
        *,
        now_ms: int,
        freed: Mapping[TopicPartition, int] | None = None,
    ) -> tuple[PartitionRead, ...]:
        """Step 1 of a fetch (see the module docstring): the partitions of
        the consumer's topics whose window has room, in priority order.
        ``freed``: offsets per partition that acknowledgements applied in the
        same call as the acquisition will finish (ACCEPT), which can move the
        window start by at most that much: the room planned grows by it
        (bounded by ``max_inflight_records``), so a fetch that accepts 500
        records reads the 500 its acks make room for (``Work.extend`` takes
        only what fits once they applied). Changes nothing. Raises
        UnknownMemberIdError."""
        m = self._member(group_id, consumer_id, now_ms)
        g = self._group(group_id)
        freed = freed or {}
        out = []
        for tp in self._ordered(group_id, g, m.topics):
            p = g.partitions.get(tp)
            cap = g.config.max_inflight_records
            if p is None or p.value is None:
                out.append(
                    PartitionRead(
                        tp[0],
                        tp[1],
                        g.config.priority(tp[0]),
                        None,
                        g.config.auto_offset_reset,
                        cap,
                    )
                )
                continue
            room = min(cap, p.value.spso + cap - p.value.speo + freed.get(tp, 0))
            if room > 0:
                out.append(
                    PartitionRead(
                        tp[0],
                        tp[1],
                        g.config.priority(tp[0]),
                        p.value.speo,
                        g.config.auto_offset_reset,
                        room,
                    )
                )
        return tuple(out)

    def has_work(self, group_id: str, *, now_ms: int, log_end: Callable[[str, int], int]) -> bool:
        """Whether a fetch of ``group_id`` could acquire a record now: a share
        partition with an available, due record, or with window room and
        records in the log past its end (``log_end(topic, partition)``: the
        high watermark), or a subscribed partition without state that has
        records. Read-only; numpy over each window. The broker wakes parked
        fetches after a batch only when this holds (a batch that only took
        records makes none available), and a woken fetch skips its read and
        acquisition when it does not. Lock ends and delays coming due are the
        timer's (it wakes every parked fetch). Unknown group: False."""
        g = self._groups.get(group_id)
        if g is None:
            return False
        cap = g.config.max_inflight_records
        topics = {t for m in self._consumers.get(group_id, {}).values() for t in m.topics}
        for t in topics:
            for part in range(self._topics.get(t, 0)):
                p = g.partitions.get((t, part))
                if p is None or p.value is None:
                    if log_end(t, part) > 0:
                        return True
                    continue
                v = p.value
                if v.spso + cap - v.speo > 0 and log_end(t, part) > v.speo:
                    return True
                if p.available_now(now_ms) > 0:
                    return True
        return False

    def acquire(
        self,
        group_id: str,
        consumer_id: str,
        *,
        max_records: int,
        now_ms: int,
        candidates: Mapping[TopicPartition, Candidates] | None = None,
    ) -> Result[Acquisition]:
        """Step 3 of a fetch: take ``candidates`` into the windows, then
        acquire up to ``max_records`` available, due records for the consumer
        across its partitions in priority order (expired locks are released
        and TTL-expired records dead-lettered on the way). Returns the
        acquired ranges (each with its delivery count, counted in the records
        so a restart keeps it) and the dead letters. Counts as a heartbeat.
        Raises UnknownMemberIdError, InvalidGroupRequestError (bad
        ``max_records``, candidates for a partition not subscribed),
        ResourceExhausted-type TooManyGroupsError (``max_share_partitions``)."""
        m = self._member(group_id, consumer_id, now_ms)
        g = self._group(group_id)
        if not 1 <= max_records <= self.config.max_fetch_records:
            raise InvalidGroupRequestError(
                f"max_records must be in 1..{self.config.max_fetch_records} "
                f"(max_fetch_records), not {max_records}"
            )
        cands = dict(candidates or {})
        ordered = self._ordered(group_id, g, m.topics)
        known = set(ordered)
        bad = [tp for tp in cands if tp not in known]
        if bad:
            raise InvalidGroupRequestError(
                f"candidates for {bad[0][0]}:{bad[0][1]}, which consumer {consumer_id} of "
                f"share group {group_id} does not subscribe to (or does not exist)"
            )
        new = [tp for tp in cands if tp not in g.partitions]
        total = sum(len(x.partitions) for x in self._groups.values())
        if new and total + len(new) > self.config.max_share_partitions:
            raise TooManyGroupsError(
                f"the share coordinator holds {total} share partitions; the limit is "
                f"{self.config.max_share_partitions} (max_share_partitions)"
            )
        records: list[ShareRecord] = []
        acquired: list[AcquiredRange] = []
        dls: list[DeadLetter] = []
        left = max_records
        for tp in ordered:
            p = g.partitions.get(tp)
            c = cands.get(tp)
            if p is None or p.value is None:
                if c is None:
                    continue
                w = (p or SharePartition(group_id, *tp)).work(
                    g.config,
                    start_offset=c.start_offset,
                    max_parked=self.config.max_delayed_records,
                )
            else:
                if (
                    c is None
                    and (left == 0 or p.available_now(now_ms) == 0)
                    and not p.has_expired_locks(now_ms)
                ):
                    # nothing to take, expire or read: skip the copy (read-only
                    # numpy checks; a fetch over 100 idle partitions stays cheap)
                    continue
                w = p.work(g.config, max_parked=self.config.max_delayed_records)
            if c is not None:
                w.extend(c)
            if left > 0:
                left -= w.acquire(consumer_id, left, now_ms)
            else:
                w.expire(now_ms)
            records += self._finish(group_id, p, w)
            acquired += w.acquired
            dls += w.dead_letters
        self._cursor[group_id] = self._cursor.get(group_id, 0) + 1
        m.session_deadline_ms = now_ms + self.config.session_timeout_ms
        if m.released and acquired:
            m.released = deque(
                (
                    e
                    for e in m.released
                    if not any(
                        r.topic == e[0]
                        and r.partition == e[1]
                        and r.first_offset <= e[3]
                        and e[2] <= r.last_offset
                        for r in acquired
                    )
                ),
                maxlen=MAX_REMEMBERED_ACKS,
            )
        return Result(tuple(records), Acquisition(tuple(acquired), tuple(dls)))

    # ----------------------------------------------------------- acknowledge

    def acknowledge(
        self, group_id: str, consumer_id: str, acks: Sequence[Ack], *, now_ms: int
    ) -> Result[AckReply]:
        """Apply ``acks`` in order; each range is applied wholly or refused
        with an :class:`AckError` in its result (LOCK_EXPIRED, HELD_BY_OTHER,
        NOT_ACQUIRED, ALREADY_ACKNOWLEDGED) and changes nothing. An ACCEPT
        once replayed is never redelivered. Counts as a heartbeat. Raises
        UnknownMemberIdError, InvalidGroupRequestError (too many ranges, a
        range with first > last, a delay, lock or error text past its bound)."""
        m = self._member(group_id, consumer_id, now_ms)
        g = self._group(group_id)
        c = self.config
        if len(acks) > c.max_ack_ranges:
            raise InvalidGroupRequestError(
                f"{len(acks)} acknowledgement ranges; the limit is {c.max_ack_ranges} "
                "(max_ack_ranges)"
            )
        for a in acks:
            where = f"{a.topic}:{a.partition} offsets {a.first_offset}..{a.last_offset}"
            if not isinstance(a.kind, AckKind):
                raise InvalidGroupRequestError(f"{where}: unknown acknowledgement kind {a.kind!r}")
            if a.first_offset < 0 or a.first_offset > a.last_offset:
                raise InvalidGroupRequestError(f"{where}: need 0 <= first_offset <= last_offset")
            if not 0 <= a.delay_ms <= c.max_release_delay_ms:
                raise InvalidGroupRequestError(
                    f"{where}: delay_ms must be in 0..{c.max_release_delay_ms} "
                    f"(max_release_delay_ms), not {a.delay_ms}"
                )
            if not 0 <= a.lock_ms <= c.max_visibility_timeout_ms:
                raise InvalidGroupRequestError(
                    f"{where}: lock_ms must be in 0..{c.max_visibility_timeout_ms} "
                    f"(max_visibility_timeout_ms), not {a.lock_ms}"
                )
            if len(a.error.encode()) > c.max_error_text_bytes:
                raise InvalidGroupRequestError(
                    f"{where}: error text is {len(a.error.encode())} bytes; the limit is "
                    f"{c.max_error_text_bytes} (max_error_text_bytes)"
                )
        works: dict[TopicPartition, Work] = {}
        results: list[AckResult] = []
        accepted = 0  # newly accepted offsets (a remembered repeat is not counted again)
        for a in acks:
            tp = (a.topic, a.partition)
            p = g.partitions.get(tp)
            if p is None or p.value is None:
                results.append(
                    AckResult(
                        a.topic,
                        a.partition,
                        a.first_offset,
                        a.last_offset,
                        AckError.NOT_ACQUIRED,
                        f"{a.topic}:{a.partition}: nothing was delivered from it to this group",
                    )
                )
                continue
            w = works.get(tp)
            if w is None:
                w = works[tp] = p.work(g.config, max_parked=self.config.max_delayed_records)
            r = w.acknowledge(
                consumer_id,
                a.first_offset,
                a.last_offset,
                a.kind,
                now_ms,
                delay_ms=a.delay_ms,
                lock_ms=a.lock_ms or g.config.visibility_timeout_ms,
                error=a.error,
            )
            if r.error is AckError.OK:
                entry = (a.topic, a.partition, a.first_offset, a.last_offset, a.kind)
                if a.kind is AckKind.ACCEPT or a.kind is AckKind.REJECT:
                    m.finished.append(entry)
                elif a.kind is AckKind.RELEASE:
                    m.released.append(entry)
                if a.kind is AckKind.ACCEPT:
                    accepted += a.last_offset - a.first_offset + 1
            elif r.error in _REPEAT_ERRORS and _remembered(m, a):
                # A repeat (the reply to the first attempt was lost): it was
                # applied then, and is not applied twice now.
                r = AckResult(a.topic, a.partition, a.first_offset, a.last_offset, AckError.OK)
            results.append(r)
        records: list[ShareRecord] = []
        dls: list[DeadLetter] = []
        for tp, w in works.items():
            records += self._finish(group_id, g.partitions[tp], w)
            dls += w.dead_letters
        m.session_deadline_ms = now_ms + c.session_timeout_ms
        if accepted:
            # one bucket per second: at most 60 entries per group
            q = self._acks.setdefault(group_id, deque())
            second = now_ms // 1000 * 1000
            if q and q[-1][0] == second:
                q[-1] = (second, q[-1][1] + accepted)
            else:
                q.append((second, accepted))
            while q and q[0][0] <= now_ms - _ACK_RATE_WINDOW_MS:
                q.popleft()
        return Result(tuple(records), AckReply(tuple(results), tuple(dls)))

    def undeliver(
        self, group_id: str, consumer_id: str, ranges: Sequence[AcquiredRange], *, now_ms: int
    ) -> Result[int]:
        """Ranges ``acquire`` handed to ``consumer_id`` that the broker did not
        send (cut from the reply by ``fetch_max_bytes``): available again with
        their delivery count as before the acquisition, so an attempt that
        never reached the consumer is not counted (nor dead-letters them at
        ``max_delivery_attempts``). Records of another holder, or no longer
        acquired, are left alone. Returns how many went back. Raises
        UnknownMemberIdError."""
        self._member(group_id, consumer_id, now_ms)
        g = self._group(group_id)
        works: dict[TopicPartition, Work] = {}
        n = 0
        for r in ranges:
            tp = (r.topic, r.partition)
            p = g.partitions.get(tp)
            if p is None or p.value is None:
                continue
            w = works.get(tp)
            if w is None:
                w = works[tp] = p.work(g.config, max_parked=self.config.max_delayed_records)
            n += w.undeliver(consumer_id, r.first_offset, r.last_offset)
        records: list[ShareRecord] = []
        for tp, w in works.items():
            records += self._finish(group_id, g.partitions[tp], w)
        return Result(tuple(records), n)

    def dead_lettered(
        self, group_id: str, topic: str, partition: int, first_offset: int, last_offset: int
    ) -> Result[int]:
        """The broker produced these offsets to the dead-letter topic: they
        become ARCHIVED (finished). Returns how many were waiting; 0 (and no
        record) when none were, so a repeat is harmless."""
        g = self._group(group_id)
        p = g.partitions.get((topic, partition))
        if p is None or p.value is None:
            return Result((), 0)
        w = p.work(g.config, max_parked=self.config.max_delayed_records)
        n = w.confirm_dead_letters(first_offset, last_offset)
        if n == 0:
            return Result((), 0)
        return Result(tuple(self._finish(group_id, p, w)), n)

    def pending_dead_letters(self) -> list[DeadLetter]:
        """Every dead letter not yet confirmed by ``dead_lettered`` (call at
        start, after ``load``)."""
        out: list[DeadLetter] = []
        for _, g in sorted(self._groups.items()):
            for _, p in sorted(g.partitions.items()):
                out += p.pending_dead_letters(g.config)
        return out

    # -------------------------------------------------------------- redrive

    def redrive_state(self, group_id: str) -> ShareRedriveValue:
        """The group's redrive position (and intent under way). Raises
        GroupIdNotFoundError."""
        return self._group(group_id).redrive

    def redrive_intent(
        self,
        group_id: str,
        end: int,
        to_topic: str,
        targets: Iterable[tuple[str, int, int]],
    ) -> Result[None]:
        """The broker is about to move the dead letters ``[position, end)``
        back (to ``to_topic``, "" = their sources); ``targets`` are the
        partitions it appends to with their log end offsets now. Raises
        GroupIdNotFoundError, InvalidGroupRequestError (``end`` not past the
        position, or an intent already under way: finish it first)."""
        r = self._group(group_id).redrive
        if r.intent_end >= 0:
            raise InvalidGroupRequestError(
                f"share group {group_id} has a redrive under way up to {r.intent_end}"
            )
        if end <= r.position:
            raise InvalidGroupRequestError(
                f"redrive end {end} is not past the position {r.position}"
            )
        value = ShareRedriveValue(r.position, end, to_topic, tuple(sorted(targets)))
        return Result((ShareRecord(ShareRedriveKey(group_id), value),), None)

    def redrive_done(self, group_id: str, position: int) -> Result[None]:
        """The redrive under way (if any) is complete; the position moves to
        ``position`` (never back). Raises GroupIdNotFoundError."""
        r = self._group(group_id).redrive
        value = ShareRedriveValue(max(r.position, position))
        if value == r:
            return Result((), None)
        return Result((ShareRecord(ShareRedriveKey(group_id), value),), None)

    # ------------------------------------------------------------ lifecycle

    def tick(self, now_ms: int) -> ShareTickResult:
        """Consumers past their session leave; expired locks release their
        records (dead-lettered at the delivery limit). Returns the records
        and the next deadline (lock ends, sessions, delayed records' due
        times). Changes only membership itself (volatile). Cost: O(consumers)
        for sessions plus O(log n) per share partition with a deadline at or
        before ``now_ms`` (the deadline index), not O(share partitions x
        window)."""
        self._clock = max(self._clock, now_ms)
        records: list[ShareRecord] = []
        dls: list[DeadLetter] = []
        gone: list[tuple[str, str]] = []
        for gid, members in self._consumers.items():
            for cid, m in members.items():
                if m.session_deadline_ms <= now_ms:
                    gone.append((gid, cid))
        for gid, cid in gone:
            del self._consumers[gid][cid]
        # partitions whose deadline passed (from the index), and those held by
        # a consumer that left (a departure is rare: a scan of its group)
        due: dict[tuple[str, TopicPartition], SharePartition] = {}
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            e = heapq.heappop(heap)
            if self._valid(e):
                due[(e[2], (e[3], e[4]))] = self._groups[e[2]].partitions[(e[3], e[4])]
        leaving: dict[str, set[str]] = {}
        for gid, cid in gone:
            leaving.setdefault(gid, set()).add(cid)
        for gid, cids in leaving.items():
            g = self._groups.get(gid)
            for tp, p in (g.partitions if g is not None else {}).items():
                if p.value is not None and cids & set(p.entries().holders):
                    due[(gid, tp)] = p
        deadlines = [
            m.session_deadline_ms for members in self._consumers.values() for m in members.values()
        ]
        # One Work per partition, so expiry and departures make one record.
        for (gid, tp), p in sorted(due.items()):
            g = self._groups[gid]
            holds = leaving.get(gid, set()) & set(p.entries().holders)
            if not holds and not p.has_expired_locks(now_ms):
                # a delayed record came due: nothing to write; re-arm
                self._index(gid, tp, p)
                continue
            w = p.work(g.config, max_parked=self.config.max_delayed_records)
            for cid in sorted(holds):
                w.release_holder(cid)
            w.expire(now_ms)
            recs = self._finish(gid, p, w)
            records += recs
            dls += w.dead_letters
            if recs:
                t = _work_next_event(w, now_ms)
            else:
                t = p.next_event_after(now_ms)
                self._index(gid, tp, p)
            if t is not None:
                deadlines.append(max(t, now_ms))
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)
        if heap:
            deadlines.append(max(heap[0][0], now_ms))
        return ShareTickResult(tuple(records), tuple(dls), min(deadlines) if deadlines else None)

    def delete_group(self, group_id: str, *, now_ms: int) -> Result[None]:
        """Delete a group without live consumers: tombstones for every key of
        it, the group's last. Raises GroupIdNotFoundError, GroupNotEmptyError."""
        g = self._group(group_id)
        live = [
            c
            for c, m in self._consumers.get(group_id, {}).items()
            if m.session_deadline_ms > now_ms
        ]
        if live:
            raise GroupNotEmptyError(
                f"share group {group_id} has {len(live)} consumers; stop them first"
            )
        records: list[ShareRecord] = []
        for (t, p), sp in sorted(g.partitions.items()):
            for first in sorted(sp.chunks):
                records.append(ShareRecord(ShareChunkKey(group_id, t, p, first), None))
            for first in sorted(sp.parked):
                records.append(ShareRecord(ShareParkedKey(group_id, t, p, first), None))
            records.append(ShareRecord(ShareStateKey(group_id, t, p), None))
        if g.redrive != ShareRedriveValue(0):
            records.append(ShareRecord(ShareRedriveKey(group_id), None))
        records.append(ShareRecord(ShareGroupKey(group_id), None))
        self._consumers.pop(group_id, None)
        return Result(tuple(records), None)

    def on_log_start(self, topic: str, partition: int, log_start_offset: int) -> Result[int]:
        """The log start of ``topic``/``partition`` moved to
        ``log_start_offset`` (retention or DeleteRecords): in every group,
        unfinished records below it are dropped from the window (they can no
        longer be read, so neither delivered nor dead-lettered) and the start
        offset moves up to it. Returns how many unfinished records were lost
        (for a WARN line and a metric)."""
        records: list[ShareRecord] = []
        lost = 0
        for gid, g in sorted(self._groups.items()):
            p = g.partitions.get((topic, partition))
            if p is None or p.value is None or p.spso >= log_start_offset:
                continue
            w = p.work(g.config, max_parked=self.config.max_delayed_records)
            lost += w.truncate_below(log_start_offset)
            records += self._finish(gid, p, w)
        return Result(tuple(records), lost)

    def on_metadata(self, topics: Mapping[str, int]) -> None:
        """The current topics and partition counts (volatile input). State of
        a partition of a deleted topic is kept until the group is deleted."""
        self._topics = dict(topics)

    # ----------------------------------------------------------------- reads

    @property
    def parked_records(self) -> int:
        """Delayed records parked in all share partitions (bounded by
        ``max_delayed_records_total``)."""
        return self._parked_total

    def list_groups(self) -> tuple[str, ...]:
        """Names of every share group."""
        return tuple(sorted(self._groups))

    def partition(self, group_id: str, topic: str, partition: int) -> SharePartition | None:
        """The replayed state of one share partition (None: no state yet).
        Read-only for callers."""
        g = self._groups.get(group_id)
        return None if g is None else g.partitions.get((topic, partition))

    def describe(self, group_id: str, *, now_ms: int) -> ShareGroupDescription:
        """Counts for ``logctl queues describe`` and the metrics. Raises
        GroupIdNotFoundError."""
        g = self._group(group_id)
        parts = tuple(
            p.counts(now_ms) for _, p in sorted(g.partitions.items()) if p.value is not None
        )
        per: dict[str, int] = {}
        for pc in parts:
            for cid, n in pc.in_flight.items():
                per[cid] = per.get(cid, 0) + n
        consumers = tuple(
            ConsumerDescription(cid, tuple(sorted(m.topics)), per.get(cid, 0))
            for cid, m in sorted(self._consumers.get(group_id, {}).items())
            if m.session_deadline_ms > now_ms
        )
        oldest = [pc.oldest_available_ts_ms for pc in parts if pc.oldest_available_ts_ms >= 0]
        q = self._acks.get(group_id, deque())
        recent = sum(n for t, n in q if t > now_ms - _ACK_RATE_WINDOW_MS)
        return ShareGroupDescription(
            group_id,
            g.config,
            g.config.dead_letter_topic_for(group_id),
            consumers,
            parts,
            available=sum(pc.available for pc in parts),
            delayed=sum(pc.delayed for pc in parts),
            acquired=sum(pc.acquired for pc in parts),
            dead_letter_pending=sum(pc.dead_letter_pending for pc in parts),
            dead_lettered_total=sum(pc.dead_lettered_total for pc in parts),
            accepted_total=sum(pc.accepted_total for pc in parts),
            oldest_available_ts_ms=min(oldest) if oldest else -1,
            ack_rate_per_s=recent * 1000 / _ACK_RATE_WINDOW_MS,
        )
