"""One share partition: the delivery state of (group, topic, partition).

The window ``[spso, speo)`` holds every offset read from the log and not yet
finished; each has one state:

* ``AVAILABLE`` -- may be acquired once its not-before time (``until``: a
  deliver-at header or a RELEASE delay; 0 = now) has passed;
* ``ACQUIRED`` -- handed to ``holder`` under a lock that ends at ``until``;
* ``ACCEPTED`` -- done (terminal);
* ``DEAD_LETTER`` -- to be produced to the dead-letter topic (rejected,
  delivered ``max_delivery_attempts`` times, or older than the TTL): never
  acquired again; the broker produces it and confirms, which makes it
* ``ARCHIVED`` -- terminal;
* ``GAP`` -- no record at this offset (compacted away, a format-2 batch's
  hole): terminal, never handed out, counted nowhere.

The share-partition start offset ``spso`` advances past the contiguous
terminal prefix (ACCEPTED, ARCHIVED, GAP), so everything below it is
finished and never redelivered. ``speo - spso`` is at most the group's
``max_inflight_records``: offsets past it are not read into the window, so an
acquisition returns fewer records (back pressure) and memory is bounded.

Representation: dense numpy columns over the window (index i = offset
``spso + i``): state u1, delivery count u1, holder i4 (index into a table of
consumer ids; kept after a lock expires, so a late acknowledgement from that
consumer is told LOCK_EXPIRED rather than NOT_ACQUIRED), until i8, first and
last delivery time i8 (0 = never delivered), error i4 (index into a table of
error texts), dead-letter reason u1; and, from the log, timestamp i8, key hash
u8. About 50 bytes an offset, never one Python object per record. Every
operation is a handful of numpy passes over the window (O(window), 2,000 by
default: ~10 us each); Python work is O(ranges) for acknowledgements and
O(runs) for results and records. The one place with work per distinct key is
ordering keys: ``np.unique`` over the keys in the window (O(W log W) in C, no
Python loop).

Purity: a :class:`SharePartition` is changed only by :meth:`install` /
:meth:`install_chunk` / :meth:`drop_chunk` (called by the coordinator's
replay). Operations run on a :class:`Work` copy and return the new state value
and what to tell the caller; the live partition is untouched until the
records are replayed. Not thread-safe: one thread calls it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from logstore.share._config import ShareGroupConfig
from logstore.share._records import (
    B1,
    I4,
    I8,
    U1,
    U8,
    ShareChunkValue,
    ShareStateValue,
)

AVAILABLE: Final = 0
ACQUIRED: Final = 1
ACCEPTED: Final = 2
DEAD_LETTER: Final = 3
ARCHIVED: Final = 4
GAP: Final = 5

#: Names of the states (index = state code), as ``describe`` shows them.
STATE_NAMES: Final = ("available", "acquired", "accepted", "dead_letter", "archived", "gap")


class DeadLetterReason(IntEnum):
    """Why a record goes to the dead-letter topic (a header value)."""

    NONE = 0
    #: A consumer rejected it (REJECT, with its reason as the error text).
    REJECTED = 1
    #: Delivered ``max_delivery_attempts`` times, then released or its lock expired.
    MAX_DELIVERIES = 2
    #: Older than the group's ``message_ttl_ms`` when it would have been acquired.
    TTL_EXPIRED = 3


class AckKind(Enum):
    """How a consumer acknowledges a range."""

    #: Done: never delivered again.
    ACCEPT = "accept"
    #: Not done: available again after ``delay_ms`` (or dead-lettered if it
    #: was delivered ``max_delivery_attempts`` times).
    RELEASE = "release"
    #: Poison: never delivered again; dead-lettered with ``error`` as the reason.
    REJECT = "reject"
    #: Still working: the lock now ends ``lock_ms`` from now.
    RENEW = "renew"


class AckError(Enum):
    """Per-range outcome of an acknowledgement; anything but OK changed nothing."""

    OK = "OK"
    #: Some offset in the range is not acquired by anyone (never handed out,
    #: released, or past the window).
    NOT_ACQUIRED = "NOT_ACQUIRED"
    #: This consumer's lock on some offset ended (the record may be, or have
    #: been, redelivered to another consumer).
    LOCK_EXPIRED = "LOCK_EXPIRED"
    #: Some offset is acquired by another consumer now.
    HELD_BY_OTHER = "HELD_BY_OTHER"
    #: Some offset was already accepted, rejected or dead-lettered.
    ALREADY_ACKNOWLEDGED = "ALREADY_ACKNOWLEDGED"


@dataclass(frozen=True)
class AcquiredRange:
    """Offsets ``first_offset..last_offset`` (inclusive, no gaps) handed to the
    caller, each delivered ``delivery_count`` times now (1 = first delivery),
    locked until ``lock_until_ms``."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    delivery_count: int
    lock_until_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """Offsets ``first_offset..last_offset`` (inclusive, no gaps) of
    ``topic``/``partition`` that the broker must produce to the dead-letter
    topic, with these headers, then confirm with ``dead_lettered``.
    ``first_delivery_ms``/``last_delivery_ms`` are 0 for a record never
    delivered (TTL)."""

    group_id: str
    dead_letter_topic: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    delivery_count: int
    reason: DeadLetterReason
    error: str
    first_delivery_ms: int
    last_delivery_ms: int


@dataclass(frozen=True)
class AckResult:
    """Outcome of one acknowledgement range; ``message`` explains a refusal."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    error: AckError
    message: str = ""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Records the broker read from the log for one partition, as columns.

    ``start_offset`` is where it read from (the share partition's end offset,
    or the reset point for a partition without state); ``end_offset`` the next
    offset after what it read (a batch's ``next_offset``, so a hole at the end
    of a format-2 batch is covered). ``offsets`` increase strictly within
    ``[start_offset, end_offset)``; ``timestamps`` are the records' effective
    timestamps; ``deliver_at`` (ms, 0 = none) and ``key_hash`` (0 = no key) may
    be None, meaning all zero -- the fast path when no batch has a delay header
    and ordering keys are off. Offsets absent between them are gaps.
    """

    start_offset: int
    end_offset: int
    offsets: I8
    timestamps: I8
    deliver_at: I8 | None = None
    key_hash: U8 | None = None

    def __post_init__(self) -> None:
        n = len(self.offsets)
        assert len(self.timestamps) == n
        assert self.deliver_at is None or len(self.deliver_at) == n
        assert self.key_hash is None or len(self.key_hash) == n
        assert self.start_offset <= self.end_offset
        if n:
            assert self.start_offset <= int(self.offsets[0])
            assert int(self.offsets[-1]) < self.end_offset
            assert bool(np.all(np.diff(self.offsets) > 0))

    @classmethod
    def from_ranges(
        cls,
        start_offset: int,
        end_offset: int,
        firsts: Sequence[int] | I8,
        lasts: Sequence[int] | I8,
        timestamps: Sequence[int] | I8,
    ) -> Candidates:
        """Candidates from whole batches (the fast path): batch i holds every
        offset ``firsts[i]..lasts[i]`` with timestamp ``timestamps[i]`` (e.g.
        its max timestamp). Vectorized: no Python loop over records."""
        f = np.asarray(firsts, dtype=np.int64)
        lens = np.asarray(lasts, dtype=np.int64) - f + 1
        assert bool(np.all(lens > 0))
        total = int(lens.sum())
        # offset k of the concatenation = firsts[batch] + (k - start of batch)
        starts = np.cumsum(lens) - lens
        offsets = np.repeat(f - starts, lens) + np.arange(total, dtype=np.int64)
        ts = np.repeat(np.asarray(timestamps, dtype=np.int64), lens)
        return cls(start_offset, end_offset, offsets, ts)


def _runs(idx: npt.NDArray[np.intp], *attrs: npt.NDArray[Any]) -> list[tuple[int, int]]:
    """Split sorted window indices into (first, last) index runs that are
    contiguous and equal in every ``attrs`` column (O(n) numpy, O(runs) Python)."""
    if len(idx) == 0:
        return []
    brk = np.diff(idx) != 1
    for a in attrs:
        v = a[idx]
        brk |= v[1:] != v[:-1]
    cut = np.flatnonzero(brk)
    firsts = np.concatenate(([0], cut + 1))
    lasts = np.concatenate((cut, [len(idx) - 1]))
    return list(zip(idx[firsts].tolist(), idx[lasts].tolist(), strict=True))


class Work:
    """A writable copy of a share partition's state that operations change;
    ``value()`` turns it into the state record's value. Created by
    :meth:`SharePartition.work`."""

    def __init__(self, p: SharePartition, config: ShareGroupConfig) -> None:
        self.group_id, self.topic, self.partition = p.group_id, p.topic, p.partition
        self.config = config
        v = p.value
        assert v is not None
        self.spso = v.spso
        self.state: U1 = v.state.copy()
        self.count: U1 = v.count.copy()
        self.holder: I4 = v.holder.copy()
        self.until: I8 = v.until.copy()
        self.first_ms: I8 = v.first_ms.copy()
        self.last_ms: I8 = v.last_ms.copy()
        self.error: I4 = v.error.copy()
        self.dl_reason: U1 = v.dl_reason.copy()
        self.holders = list(v.holders)
        self.errors = list(v.errors)
        self.accepted_total = v.accepted_total
        self.dead_lettered_total = v.dead_lettered_total
        self.ts: I8 = p.ts.copy()
        self.key: U8 = p.key.copy()
        self.changed = False
        self.new_chunk: tuple[int, ShareChunkValue] | None = None
        self.dead_letters: list[DeadLetter] = []
        self.acquired: list[AcquiredRange] = []

    # ----------------------------------------------------------- helpers

    @property
    def speo(self) -> int:
        return self.spso + len(self.state)

    def _holder_index(self, consumer: str) -> int:
        try:
            return self.holders.index(consumer)
        except ValueError:
            self.holders.append(consumer)
            return len(self.holders) - 1

    def _error_index(self, text: str) -> int:
        if not text:
            return -1
        try:
            return self.errors.index(text)
        except ValueError:
            self.errors.append(text)
            return len(self.errors) - 1

    def _to_dead_letter(self, idx: npt.NDArray[np.intp], reason: DeadLetterReason) -> None:
        if len(idx) == 0:
            return
        self.state[idx] = DEAD_LETTER
        self.dl_reason[idx] = reason
        self.holder[idx] = -1
        self.until[idx] = 0
        self.dead_lettered_total += len(idx)
        self.changed = True
        for a, b in _runs(idx, self.count, self.error, self.first_ms, self.last_ms):
            e = int(self.error[a])
            self.dead_letters.append(
                DeadLetter(
                    self.group_id,
                    self.config.dead_letter_topic_for(self.group_id),
                    self.topic,
                    self.partition,
                    self.spso + a,
                    self.spso + b,
                    int(self.count[a]),
                    reason,
                    self.errors[e] if e >= 0 else "",
                    int(self.first_ms[a]),
                    int(self.last_ms[a]),
                )
            )

    def _make_available(self, idx: npt.NDArray[np.intp], until: int, *, keep_holder: bool) -> None:
        """Back to AVAILABLE (not before ``until``), or to the dead-letter topic
        when the delivery count reached the limit (KIP-932: archived)."""
        if len(idx) == 0:
            return
        done = self.count[idx] >= self.config.max_delivery_attempts
        self._to_dead_letter(idx[done], DeadLetterReason.MAX_DELIVERIES)
        back = idx[~done]
        self.state[back] = AVAILABLE
        self.until[back] = until
        if not keep_holder:
            self.holder[back] = -1
        self.changed = True

    # -------------------------------------------------------- operations

    def extend(self, c: Candidates) -> None:
        """Take the candidates that fit in the window (up to
        ``max_inflight_records`` offsets past ``spso``) as new AVAILABLE
        offsets; the offsets between them are gaps."""
        if len(self.state) == 0 and c.start_offset > self.speo:
            # Nothing in flight: start the window where the broker read (the
            # first read of a partition, or the log start moved past us).
            self.spso = c.start_offset
            self.changed = True
        limit = self.spso + self.config.max_inflight_records
        if c.start_offset > self.speo:
            # The broker read from past our end (retention removed offsets
            # we had not read): the offsets between are gaps.
            self._append_gap(min(c.start_offset, limit) - self.speo)
        start = self.speo
        end = min(c.end_offset, limit)
        if end <= start:
            return
        n = end - start
        lo = int(np.searchsorted(c.offsets, start))
        hi = int(np.searchsorted(c.offsets, end))
        pos = c.offsets[lo:hi] - start
        gap = np.ones(n, dtype=np.bool_)
        gap[pos] = False
        ts = np.zeros(n, dtype=np.int64)
        ts[pos] = c.timestamps[lo:hi]
        due = np.zeros(n, dtype=np.int64)
        if c.deliver_at is not None:
            due[pos] = c.deliver_at[lo:hi]
        key = np.zeros(n, dtype=np.uint64)
        if c.key_hash is not None and self.config.ordering_keys:
            key[pos] = c.key_hash[lo:hi]
        chunk = ShareChunkValue(gap=gap, ts=ts, deliver_at=due, key_hash=key)
        assert self.new_chunk is None
        self.new_chunk = (start, chunk)
        self._append(
            np.where(gap, GAP, AVAILABLE).astype(np.uint8),
            due,
            ts,
            key,
        )

    def _append_gap(self, n: int) -> None:
        self._append(
            np.full(n, GAP, dtype=np.uint8),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.uint64),
        )

    def _append(self, state: U1, until: I8, ts: I8, key: U8) -> None:
        n = len(state)
        self.state = np.concatenate((self.state, state))
        self.count = np.concatenate((self.count, np.zeros(n, dtype=np.uint8)))
        self.holder = np.concatenate((self.holder, np.full(n, -1, dtype=np.int32)))
        self.until = np.concatenate((self.until, until))
        self.first_ms = np.concatenate((self.first_ms, np.zeros(n, dtype=np.int64)))
        self.last_ms = np.concatenate((self.last_ms, np.zeros(n, dtype=np.int64)))
        self.error = np.concatenate((self.error, np.full(n, -1, dtype=np.int32)))
        self.dl_reason = np.concatenate((self.dl_reason, np.zeros(n, dtype=np.uint8)))
        self.ts = np.concatenate((self.ts, ts))
        self.key = np.concatenate((self.key, key))
        self.changed = True

    def expire(self, now_ms: int) -> None:
        """Locks that ended at or before ``now_ms`` release their records (the
        holder is remembered, for LOCK_EXPIRED)."""
        idx = np.flatnonzero((self.state == ACQUIRED) & (self.until <= now_ms))
        self._make_available(idx, 0, keep_holder=True)

    def release_holder(self, consumer: str) -> None:
        """Every record ``consumer`` holds becomes available (it left)."""
        if consumer not in self.holders:
            return
        h = self.holders.index(consumer)
        idx = np.flatnonzero((self.state == ACQUIRED) & (self.holder == h))
        self._make_available(idx, 0, keep_holder=False)

    def acquire(self, consumer: str, max_records: int, now_ms: int) -> int:
        """Acquire up to ``max_records`` available, due records in offset
        order for ``consumer`` (after expiring locks and dead-lettering
        TTL-expired ones); returns how many."""
        self.expire(now_ms)
        eligible = (self.state == AVAILABLE) & (self.until <= now_ms)
        ttl = self.config.message_ttl_ms
        if ttl is not None:
            old = eligible & (self.ts < now_ms - ttl)
            self._to_dead_letter(np.flatnonzero(old), DeadLetterReason.TTL_EXPIRED)
            eligible &= ~old
        if self.config.ordering_keys:
            eligible &= self._key_heads()
        idx = np.flatnonzero(eligible)[:max_records]
        if len(idx) == 0:
            return 0
        h = self._holder_index(consumer)
        lock = now_ms + self.config.visibility_timeout_ms
        self.state[idx] = ACQUIRED
        self.holder[idx] = h
        self.until[idx] = lock
        self.count[idx] = np.minimum(self.count[idx].astype(np.int32) + 1, 255).astype(np.uint8)
        self.first_ms[idx] = np.where(self.first_ms[idx] == 0, now_ms, self.first_ms[idx])
        self.last_ms[idx] = now_ms
        self.changed = True
        for a, b in _runs(idx, self.count):
            self.acquired.append(
                AcquiredRange(
                    self.topic,
                    self.partition,
                    self.spso + a,
                    self.spso + b,
                    int(self.count[a]),
                    lock,
                )
            )
        return len(idx)

    def _key_heads(self) -> B1:
        """True where a record may go out under ordering keys: it has no key,
        or it is its key's first record still pending (available or acquired),
        so at most one per key is in flight and keys go in offset order."""
        pending = (self.state == AVAILABLE) | (self.state == ACQUIRED)
        keyed = pending & (self.key != 0)
        out = ~keyed
        pos = np.flatnonzero(keyed)
        if len(pos):
            _, first = np.unique(self.key[pos], return_index=True)
            heads = pos[first]
            # a head that is acquired blocks its key: only available heads go
            heads = heads[self.state[heads] == AVAILABLE]
            out[heads] = True
        result: B1 = out
        return result

    def check(self, consumer: str, first: int, last: int, now_ms: int) -> tuple[AckError, str]:
        """Whether ``consumer`` may acknowledge ``first..last`` now."""
        where = f"{self.topic}:{self.partition} offsets {first}..{last}"
        if first < self.spso:
            return AckError.ALREADY_ACKNOWLEDGED, (
                f"{where}: offsets below {self.spso} (the share-partition start) are finished"
            )
        if last >= self.speo:
            return (
                AckError.NOT_ACQUIRED,
                f"{where}: offset {self.speo} and after were not delivered",
            )
        a, b = first - self.spso, last - self.spso + 1
        st, ho, un = self.state[a:b], self.holder[a:b], self.until[a:b]
        real = st != GAP
        if not bool(real.any()):
            return AckError.NOT_ACQUIRED, f"{where}: no records there (compacted away)"
        h = self.holders.index(consumer) if consumer in self.holders else -2
        acq = st == ACQUIRED
        if bool((acq & (ho != h)).any()):
            return AckError.HELD_BY_OTHER, f"{where}: acquired by another consumer now"
        if bool((acq & (un <= now_ms)).any()) or bool(((st == AVAILABLE) & (ho == h)).any()):
            return AckError.LOCK_EXPIRED, (
                f"{where}: the acquisition lock expired; the records may be redelivered"
            )
        done = (st == ACCEPTED) | (st == ARCHIVED) | (st == DEAD_LETTER)
        if bool(done.any()):
            return AckError.ALREADY_ACKNOWLEDGED, f"{where}: already accepted or rejected"
        if not bool((acq | ~real).all()):
            return AckError.NOT_ACQUIRED, f"{where}: not acquired by this consumer"
        return AckError.OK, ""

    def acknowledge(
        self,
        consumer: str,
        first: int,
        last: int,
        kind: AckKind,
        now_ms: int,
        *,
        delay_ms: int = 0,
        lock_ms: int = 0,
        error: str = "",
    ) -> AckResult:
        """Apply one acknowledgement if :meth:`check` allows it (all or
        nothing for the range; gaps inside it are skipped)."""
        code, msg = self.check(consumer, first, last, now_ms)
        if code is not AckError.OK:
            return AckResult(self.topic, self.partition, first, last, code, msg)
        a, b = first - self.spso, last - self.spso + 1
        idx = a + np.flatnonzero(self.state[a:b] == ACQUIRED)
        self.changed = True
        if error:
            self.error[idx] = self._error_index(error)
        if kind is AckKind.ACCEPT:
            self.state[idx] = ACCEPTED
            self.holder[idx] = -1
            self.until[idx] = 0
            self.accepted_total += len(idx)
        elif kind is AckKind.RELEASE:
            self._make_available(idx, now_ms + delay_ms if delay_ms else 0, keep_holder=False)
        elif kind is AckKind.REJECT:
            self._to_dead_letter(idx, DeadLetterReason.REJECTED)
        else:
            self.until[idx] = now_ms + lock_ms
        return AckResult(self.topic, self.partition, first, last, AckError.OK)

    def truncate_below(self, log_start_offset: int) -> int:
        """Offsets below ``log_start_offset`` left the log (retention, delete
        records): unfinished ones there become GAP (they cannot be delivered
        or dead-lettered any more); returns how many were unfinished."""
        k = min(max(log_start_offset - self.spso, 0), len(self.state))
        if k == 0:
            if len(self.state) == 0 and log_start_offset > self.spso:
                self.spso = log_start_offset
                self.changed = True
            return 0
        head = self.state[:k]
        lost = int(((head != ACCEPTED) & (head != ARCHIVED) & (head != GAP)).sum())
        self.state[:k] = GAP
        self.holder[:k] = -1
        self.until[:k] = 0
        self.changed = True
        return lost

    def confirm_dead_letters(self, first: int, last: int) -> int:
        """DEAD_LETTER offsets in ``first..last`` become ARCHIVED (the broker
        produced them to the dead-letter topic); returns how many."""
        a, b = max(first - self.spso, 0), min(last - self.spso + 1, len(self.state))
        if a >= b:
            return 0
        idx = a + np.flatnonzero(self.state[a:b] == DEAD_LETTER)
        self.state[idx] = ARCHIVED
        self.changed = bool(len(idx)) or self.changed
        return len(idx)

    def advance(self) -> int:
        """Move ``spso`` past the terminal prefix; returns how far (offsets)."""
        terminal = (self.state == ACCEPTED) | (self.state == ARCHIVED) | (self.state == GAP)
        k = int(np.argmin(terminal)) if not bool(terminal.all()) else len(terminal)
        if k == 0:
            return 0
        self.spso += k
        for name in (
            "state",
            "count",
            "holder",
            "until",
            "first_ms",
            "last_ms",
            "error",
            "dl_reason",
            "ts",
            "key",
        ):
            setattr(self, name, getattr(self, name)[k:])
        self.changed = True
        return k

    def value(self) -> ShareStateValue:
        """The state record's value: tables compacted to the entries in use."""
        self.advance()
        holder, holders = _compact_table(self.holder, self.holders)
        error, errors = _compact_table(self.error, self.errors)
        return ShareStateValue(
            spso=self.spso,
            state=self.state,
            count=self.count,
            holder=holder,
            until=self.until,
            first_ms=self.first_ms,
            last_ms=self.last_ms,
            error=error,
            dl_reason=self.dl_reason,
            holders=holders,
            errors=errors,
            accepted_total=self.accepted_total,
            dead_lettered_total=self.dead_lettered_total,
        )


def _compact_table(col: I4, table: list[str]) -> tuple[I4, tuple[str, ...]]:
    used = np.unique(col[col >= 0])
    remap = np.full(len(table) + 1, -1, dtype=np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    return remap[col], tuple(table[i] for i in used.tolist())


def next_deadline_of(v: ShareStateValue, now_ms: int) -> int | None:
    """See :meth:`SharePartition.next_deadline`."""
    acq = v.state == ACQUIRED
    delayed = (v.state == AVAILABLE) & (v.until > now_ms)
    times = v.until[acq | delayed]
    if len(times) == 0:
        return None
    return max(int(times.min()), now_ms)


def empty_state(spso: int) -> ShareStateValue:
    """The state of a share partition with nothing in flight, starting at ``spso``."""
    return ShareStateValue(
        spso=spso,
        state=np.zeros(0, dtype=np.uint8),
        count=np.zeros(0, dtype=np.uint8),
        holder=np.zeros(0, dtype=np.int32),
        until=np.zeros(0, dtype=np.int64),
        first_ms=np.zeros(0, dtype=np.int64),
        last_ms=np.zeros(0, dtype=np.int64),
        error=np.zeros(0, dtype=np.int32),
        dl_reason=np.zeros(0, dtype=np.uint8),
        holders=(),
        errors=(),
        accepted_total=0,
        dead_lettered_total=0,
    )


@dataclass(frozen=True)
class PartitionCounts:
    """What ``describe`` and the metrics show for one share partition.
    ``oldest_available_ts_ms`` is the timestamp of the oldest available (due)
    record, -1 when none; the broker adds the log backlog past ``speo``."""

    topic: str
    partition: int
    spso: int
    speo: int
    available: int
    delayed: int
    acquired: int
    dead_letter_pending: int
    accepted_total: int
    dead_lettered_total: int
    oldest_available_ts_ms: int
    in_flight: dict[str, int]


class SharePartition:
    """Replayed state of one (group, topic, partition); see the module docstring."""

    def __init__(self, group_id: str, topic: str, partition: int) -> None:
        self.group_id, self.topic, self.partition = group_id, topic, partition
        self.value: ShareStateValue | None = None
        self.chunks: dict[int, ShareChunkValue] = {}
        self.ts: I8 = np.zeros(0, dtype=np.int64)
        self.key: U8 = np.zeros(0, dtype=np.uint64)

    @property
    def initialized(self) -> bool:
        """False until the first state record (no start offset chosen yet)."""
        return self.value is not None

    @property
    def speo(self) -> int:
        """End of the window (-1 before initialization)."""
        return -1 if self.value is None else self.value.speo

    def work(self, config: ShareGroupConfig, *, start_offset: int | None = None) -> Work:
        """A writable copy to run operations on (an uninitialized partition
        starts empty at ``start_offset``)."""
        if self.value is None:
            assert start_offset is not None
            p = SharePartition(self.group_id, self.topic, self.partition)
            p.value = empty_state(start_offset)
            w = Work(p, config)
            w.changed = True
            return w
        return Work(self, config)

    # ------------------------------------------------------------- replay

    def install_chunk(self, first_offset: int, chunk: ShareChunkValue) -> None:
        """Replay a window chunk (facts of offsets entering the window)."""
        self.chunks[first_offset] = chunk
        if self.value is not None:
            self._rebuild_meta()

    def drop_chunk(self, first_offset: int) -> None:
        """Replay a chunk tombstone."""
        self.chunks.pop(first_offset, None)

    def install(self, value: ShareStateValue) -> None:
        """Replay a state snapshot; the facts come from the chunks."""
        self.value = value
        self._rebuild_meta()

    def _rebuild_meta(self) -> None:
        v = self.value
        assert v is not None
        n = len(v.state)
        ts = np.zeros(n, dtype=np.int64)
        key = np.zeros(n, dtype=np.uint64)
        for first, c in self.chunks.items():
            lo, hi = max(first, v.spso), min(first + len(c.gap), v.speo)
            if lo < hi:
                ts[lo - v.spso : hi - v.spso] = c.ts[lo - first : hi - first]
                key[lo - v.spso : hi - v.spso] = c.key_hash[lo - first : hi - first]
        self.ts, self.key = ts, key

    def stale_chunks(self, spso: int) -> list[int]:
        """Chunks wholly below ``spso`` (to tombstone)."""
        return sorted(f for f, c in self.chunks.items() if f + len(c.gap) <= spso)

    def reset_locks(self) -> None:
        """After a restart: every acquired record is available again, its
        delivery count kept (KIP-932); locks are not durable."""
        v = self.value
        if v is None:
            return
        acq = v.state == ACQUIRED
        if not bool(acq.any()):
            return
        state = np.where(acq, np.uint8(AVAILABLE), v.state).astype(np.uint8)
        self.value = ShareStateValue(
            spso=v.spso,
            state=state,
            count=v.count.copy(),
            holder=np.where(acq, np.int32(-1), v.holder).astype(np.int32),
            until=np.where(acq, np.int64(0), v.until).astype(np.int64),
            first_ms=v.first_ms.copy(),
            last_ms=v.last_ms.copy(),
            error=v.error.copy(),
            dl_reason=v.dl_reason.copy(),
            holders=v.holders,
            errors=v.errors,
            accepted_total=v.accepted_total,
            dead_lettered_total=v.dead_lettered_total,
        )

    # -------------------------------------------------------------- reads

    def next_deadline(self, now_ms: int) -> int | None:
        """The earliest lock end or not-before time after ``now_ms`` (a lock
        already past is ``now_ms``: tick has work); None: nothing pending."""
        return None if self.value is None else next_deadline_of(self.value, now_ms)

    def has_expired_locks(self, now_ms: int) -> bool:
        """Whether some lock ended at or before ``now_ms``."""
        v = self.value
        return v is not None and bool(((v.state == ACQUIRED) & (v.until <= now_ms)).any())

    def available_now(self, now_ms: int) -> int:
        """Records that an acquisition could hand out now, in the window."""
        v = self.value
        if v is None:
            return 0
        return int(((v.state == AVAILABLE) & (v.until <= now_ms)).sum())

    def counts(self, now_ms: int) -> PartitionCounts:
        """Counts for describe / metrics."""
        v = self.value
        assert v is not None
        st = v.state
        due = (st == AVAILABLE) & (v.until <= now_ms)
        acq = st == ACQUIRED
        per: list[int] = np.bincount(v.holder[acq], minlength=len(v.holders)).tolist()
        return PartitionCounts(
            self.topic,
            self.partition,
            v.spso,
            v.speo,
            available=int(due.sum()),
            delayed=int(((st == AVAILABLE) & (v.until > now_ms)).sum()),
            acquired=int(acq.sum()),
            dead_letter_pending=int((st == DEAD_LETTER).sum()),
            accepted_total=v.accepted_total,
            dead_lettered_total=v.dead_lettered_total,
            oldest_available_ts_ms=int(self.ts[due].min()) if bool(due.any()) else -1,
            in_flight={h: int(n) for h, n in zip(v.holders, per, strict=True) if n},
        )

    def pending_dead_letters(self, config: ShareGroupConfig) -> list[DeadLetter]:
        """Every DEAD_LETTER run not yet confirmed (after a restart the broker
        produces them again: at-least-once into the dead-letter topic)."""
        v = self.value
        if v is None:
            return []
        idx = np.flatnonzero(v.state == DEAD_LETTER)
        out = []
        for a, b in _runs(idx, v.count, v.error, v.first_ms, v.last_ms, v.dl_reason):
            e = int(v.error[a])
            out.append(
                DeadLetter(
                    self.group_id,
                    config.dead_letter_topic_for(self.group_id),
                    self.topic,
                    self.partition,
                    v.spso + a,
                    v.spso + b,
                    int(v.count[a]),
                    DeadLetterReason(int(v.dl_reason[a])),
                    v.errors[e] if e >= 0 else "",
                    int(v.first_ms[a]),
                    int(v.last_ms[a]),
                )
            )
        return out

    def record_states(self) -> Iterable[tuple[int, int, int]]:
        """(offset, state, delivery count) of every offset in the window --
        per record, for tests and debugging only (not the broker's path)."""
        v = self.value
        if v is None:
            return []
        return zip(range(v.spso, v.speo), v.state.tolist(), v.count.tolist(), strict=True)
