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

The window start advances past the contiguous prefix of terminal records
(ACCEPTED, ARCHIVED, GAP) and of *delayed* ones (AVAILABLE with a not-before
time, due or not), which are **parked**: kept below the window, with every
column and their offset, in sorted numpy columns (``parked_arrays``; durable
as parked-chunk records of at most 512, see ``_records``), at most
``max_delayed_records`` (a coordinator setting) of them -- past that the
window start stops at the next delayed record (back pressure, not memory).
So a long delay never holds back the records behind it. ``speo`` minus the
window start is at most the group's ``max_inflight_records``: offsets past it
are not read into the window, so an acquisition returns fewer records (back
pressure) and memory is bounded; acquired records, parked or not, are at most
``max_inflight_records`` too. The share-partition start offset
(:attr:`SharePartition.spso`) is the lowest parked offset, else the window
start: everything below it is finished and never redelivered, and offsets
between it and the window start that are not parked are finished.

Representation: dense numpy columns over the window (index i = offset
``window start + i``; a :class:`Work` puts the parked records first and
indexes both by entry, with an offset column): state u1, delivery count u1,
holder i4 (index into a table of consumer ids; kept after a lock expires, so
a late acknowledgement from that consumer is told LOCK_EXPIRED rather than
NOT_ACQUIRED), until i8, first and last delivery time i8 (0 = never
delivered), error i4 (index into a table of error texts), dead-letter reason
u1; and, from the log, timestamp i8, key hash u8. About 50 bytes an offset,
never one Python object per record. Every operation is a handful of numpy
passes over the window (O(window), 2,000 by default: ~10 us each); Python
work is O(ranges) for acknowledgements and O(runs) for results and records.
The one place with work per distinct key is ordering keys: ``np.unique``
over the keys in the window (O(W log W) in C, no Python loop).

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
    PARKED_CHUNK_RECORDS,
    U1,
    U8,
    ShareChunkValue,
    ShareParkedValue,
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

    Two forms: per-offset columns (the constructor), or offset **ranges**
    (:meth:`from_ranges`: whole batches, one timestamp each), which stay
    ranges -- a share fetch that reads a 10,000-record batch to take the 500
    or 2,000 offsets its window has room for builds columns for those only
    (:meth:`between`), not for the whole batch. ``offsets`` and
    ``timestamps`` of the ranges form are built on first use.
    """

    __slots__ = (
        "_offsets",
        "_ranges",
        "_timestamps",
        "deliver_at",
        "end_offset",
        "key_hash",
        "start_offset",
    )

    def __init__(
        self,
        start_offset: int,
        end_offset: int,
        offsets: I8,
        timestamps: I8,
        deliver_at: I8 | None = None,
        key_hash: U8 | None = None,
    ) -> None:
        n = len(offsets)
        assert len(timestamps) == n
        assert deliver_at is None or len(deliver_at) == n
        assert key_hash is None or len(key_hash) == n
        assert start_offset <= end_offset
        if n:
            assert start_offset <= int(offsets[0])
            assert int(offsets[-1]) < end_offset
            assert bool(np.all(np.diff(offsets) > 0))
        self.start_offset = start_offset
        self.end_offset = end_offset
        self._offsets: I8 | None = offsets
        self._timestamps: I8 | None = timestamps
        self.deliver_at = deliver_at
        self.key_hash = key_hash
        self._ranges: tuple[I8, I8, I8] | None = None

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
        its max timestamp). Kept as ranges (O(batches), no work per record)."""
        f = np.asarray(firsts, dtype=np.int64)
        last = np.asarray(lasts, dtype=np.int64)
        ts = np.asarray(timestamps, dtype=np.int64)
        assert len(f) == len(last) == len(ts)
        assert bool(np.all(last >= f)) and bool(np.all(f[1:] > last[:-1]))
        assert start_offset <= end_offset
        if len(f):
            assert start_offset <= int(f[0]) and int(last[-1]) < end_offset
        self = cls.__new__(cls)
        self.start_offset, self.end_offset = start_offset, end_offset
        self._offsets = self._timestamps = None
        self.deliver_at = self.key_hash = None
        self._ranges = (f, last, ts)
        return self

    @property
    def offsets(self) -> I8:
        if self._offsets is None:
            self._offsets, self._timestamps = self._expand(self.start_offset, self.end_offset)
        return self._offsets

    @property
    def timestamps(self) -> I8:
        if self._timestamps is None:
            self._offsets, self._timestamps = self._expand(self.start_offset, self.end_offset)
        return self._timestamps

    def _expand(self, start: int, end: int) -> tuple[I8, I8]:
        """Offsets and timestamps of the ranges form within ``[start, end)``
        (numpy over the ranges: O(ranges + offsets in it))."""
        assert self._ranges is not None
        f, last, ts = self._ranges
        a = int(np.searchsorted(last, start, side="left"))  # first range ending at/after start
        b = int(np.searchsorted(f, end, side="left"))  # ranges starting before end
        if b <= a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = np.maximum(f[a:b], start)
        hi = np.minimum(last[a:b], end - 1)
        lens = hi - lo + 1
        total = int(lens.sum())
        # offset k of the concatenation = lo[range] + (k - start of range)
        begins = np.cumsum(lens) - lens
        offsets = np.repeat(lo - begins, lens) + np.arange(total, dtype=np.int64)
        return offsets, np.repeat(ts[a:b], lens)

    def between(self, start: int, end: int) -> tuple[I8, I8, I8 | None, U8 | None]:
        """The columns (offsets, timestamps, deliver_at, key_hash) of the
        candidates in ``[start, end)``."""
        if self._ranges is not None and self._offsets is None:
            offsets, ts = self._expand(start, end)
            return offsets, ts, None, None
        lo = int(np.searchsorted(self.offsets, start))
        hi = int(np.searchsorted(self.offsets, end))
        return (
            self.offsets[lo:hi],
            self.timestamps[lo:hi],
            None if self.deliver_at is None else self.deliver_at[lo:hi],
            None if self.key_hash is None else self.key_hash[lo:hi],
        )


def _runs(idx: npt.NDArray[np.intp], off: I8, *attrs: npt.NDArray[Any]) -> list[tuple[int, int]]:
    """Split sorted entry indices into (first, last) index runs whose offsets
    are contiguous and that are equal in every ``attrs`` column (O(n) numpy,
    O(runs) Python)."""
    if len(idx) == 0:
        return []
    brk = np.diff(off[idx]) != 1
    for a in attrs:
        v = a[idx]
        brk |= v[1:] != v[:-1]
    cut = np.flatnonzero(brk)
    firsts = np.concatenate(([0], cut + 1))
    lasts = np.concatenate((cut, [len(idx) - 1]))
    return list(zip(idx[firsts].tolist(), idx[lasts].tolist(), strict=True))


#: The per-entry columns of a Work (and of a parked chunk, with ``off``).
_WORK_COLS: Final = (
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
)


def _terminal(state: U1) -> B1:
    t: B1 = (state == ACCEPTED) | (state == ARCHIVED) | (state == GAP)
    return t


class Work:
    """A writable copy of a share partition's state that operations change;
    ``value()`` turns it into the state record's value (and
    ``parked_changes`` into the parked chunks to write). Created by
    :meth:`SharePartition.work`.

    Entries: the ``np0`` parked records (offsets below the window start, in
    offset order) followed by the dense window ``[wstart, speo)``; ``off`` is
    every entry's offset, and every column is indexed by entry, so one numpy
    pass covers parked and window records alike."""

    def __init__(self, p: SharePartition, config: ShareGroupConfig, max_parked: int) -> None:
        self.group_id, self.topic, self.partition = p.group_id, p.topic, p.partition
        self.config = config
        self.max_parked = max_parked
        v = p.value
        assert v is not None
        self.wstart = v.spso
        self.holders = list(v.holders)
        self.errors = list(v.errors)
        pk = p.parked_arrays()
        self.np0 = len(pk.off)
        self.pchunk: I8 = pk.chunk
        self.porig = pk
        hmap = np.array([self._holder_index(h) for h in pk.holders] + [-1], dtype=np.int32)
        emap = np.array([self._error_index(e) for e in pk.errors] + [-1], dtype=np.int32)
        self.hmap, self.emap = hmap, emap
        self.off: I8 = np.concatenate((pk.off, np.arange(v.spso, v.speo, dtype=np.int64)))
        self.state: U1 = np.concatenate((pk.state, v.state))
        self.count: U1 = np.concatenate((pk.count, v.count))
        self.holder: I4 = np.concatenate((hmap[pk.holder], v.holder)).astype(np.int32)
        self.until: I8 = np.concatenate((pk.until, v.until))
        self.first_ms: I8 = np.concatenate((pk.first_ms, v.first_ms))
        self.last_ms: I8 = np.concatenate((pk.last_ms, v.last_ms))
        self.error: I4 = np.concatenate((emap[pk.error], v.error)).astype(np.int32)
        self.dl_reason: U1 = np.concatenate((pk.dl_reason, v.dl_reason))
        self.ts: I8 = np.concatenate((pk.ts, p.ts))
        self.key: U8 = np.concatenate((pk.key, p.key))
        self.accepted_total = v.accepted_total
        self.dead_lettered_total = v.dead_lettered_total
        self.changed = False
        self.new_chunk: tuple[int, ShareChunkValue] | None = None
        self.parked_changes: list[tuple[int, ShareParkedValue | None]] = []
        self.dead_letters: list[DeadLetter] = []
        self.acquired: list[AcquiredRange] = []

    # ----------------------------------------------------------- helpers

    @property
    def speo(self) -> int:
        return self.wstart + len(self.state) - self.np0

    @property
    def spso(self) -> int:
        """The share-partition start offset as of the last ``value()``: the
        lowest parked offset, else the window start."""
        return int(self.off[0]) if self.np0 else self.wstart

    def _window_empty(self) -> bool:
        return len(self.state) == self.np0

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
        for a, b in _runs(idx, self.off, self.count, self.error, self.first_ms, self.last_ms):
            e = int(self.error[a])
            self.dead_letters.append(
                DeadLetter(
                    self.group_id,
                    self.config.dead_letter_topic_for(self.group_id),
                    self.topic,
                    self.partition,
                    int(self.off[a]),
                    int(self.off[b]),
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

    def _span(self, first: int, last: int) -> tuple[int, int]:
        """Entry indices ``[a, b)`` of the offsets ``first..last``."""
        a = int(np.searchsorted(self.off, first, side="left"))
        b = int(np.searchsorted(self.off, last, side="right"))
        return a, b

    # -------------------------------------------------------- operations

    def extend(self, c: Candidates) -> None:
        """Take the candidates that fit in the window (up to
        ``max_inflight_records`` offsets past the window start) as new
        AVAILABLE offsets; the offsets between them are gaps."""
        if self._window_empty() and c.start_offset > self.speo:
            # Nothing in the window: start it where the broker read (the
            # first read of a partition, or the log start moved past us).
            self.wstart = c.start_offset
            self.changed = True
        limit = self.wstart + self.config.max_inflight_records
        if c.start_offset > self.speo:
            # The broker read from past our end (retention removed offsets
            # we had not read): the offsets between are gaps.
            self._append_gap(min(c.start_offset, limit) - self.speo)
        start = self.speo
        end = min(c.end_offset, limit)
        if end <= start:
            return
        n = end - start
        offsets, c_ts, c_due, c_key = c.between(start, end)
        pos = offsets - start
        gap = np.ones(n, dtype=np.bool_)
        gap[pos] = False
        ts = np.zeros(n, dtype=np.int64)
        ts[pos] = c_ts
        due = np.zeros(n, dtype=np.int64)
        if c_due is not None:
            due[pos] = c_due
        key = np.zeros(n, dtype=np.uint64)
        if c_key is not None and self.config.ordering_keys:
            key[pos] = c_key
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
        speo = self.speo
        self.off = np.concatenate((self.off, np.arange(speo, speo + n, dtype=np.int64)))
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
        """Acquire up to ``max_records`` available, due records (parked or in
        the window) in offset order for ``consumer`` (after expiring locks and
        dead-lettering TTL-expired ones), keeping at most
        ``max_inflight_records`` acquired; returns how many."""
        self.expire(now_ms)
        eligible = (self.state == AVAILABLE) & (self.until <= now_ms)
        ttl = self.config.message_ttl_ms
        if ttl is not None:
            old = eligible & (self.ts < now_ms - ttl)
            self._to_dead_letter(np.flatnonzero(old), DeadLetterReason.TTL_EXPIRED)
            eligible &= ~old
        if self.config.ordering_keys:
            eligible &= self._key_heads()
        # parked records count against the in-flight bound once acquired
        room = self.config.max_inflight_records - int((self.state == ACQUIRED).sum())
        idx = np.flatnonzero(eligible)[: max(min(max_records, room), 0)]
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
        for a, b in _runs(idx, self.off, self.count):
            self.acquired.append(
                AcquiredRange(
                    self.topic,
                    self.partition,
                    int(self.off[a]),
                    int(self.off[b]),
                    int(self.count[a]),
                    lock,
                )
            )
        return len(idx)

    def _key_heads(self) -> B1:
        """True where a record may go out under ordering keys: it has no key,
        or it is its key's first record still pending (available -- delayed or
        not, parked or not -- or acquired), so at most one per key is in
        flight and keys go in offset order."""
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
        """Whether ``consumer`` may acknowledge ``first..last`` now. Offsets
        between the share-partition start and the window start that are not
        parked are finished (accepted, archived or gaps: which one is
        forgotten once they leave the window)."""
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
        a, b = self._span(first, last)
        finished_out = (last - first + 1) - (b - a)
        st, ho, un = self.state[a:b], self.holder[a:b], self.until[a:b]
        real = st != GAP
        if not bool(real.any()) and finished_out == 0:
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
        if bool(done.any()) or finished_out:
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
        a, b = self._span(first, last)
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

    def undeliver(self, consumer: str, first: int, last: int) -> int:
        """Records of ``first..last`` that ``consumer`` acquired but the broker
        could not send (cut from a reply by its byte budget) go back to
        AVAILABLE as if never acquired: the delivery count is lowered again
        (the attempt is not counted, so it can neither dead-letter them nor
        use up an attempt) and a record never delivered before forgets its
        first delivery time. Returns how many."""
        if consumer not in self.holders:
            return 0
        h = self.holders.index(consumer)
        a, b = self._span(first, last)
        idx = a + np.flatnonzero((self.state[a:b] == ACQUIRED) & (self.holder[a:b] == h))
        if len(idx) == 0:
            return 0
        self.state[idx] = AVAILABLE
        self.holder[idx] = -1
        self.until[idx] = 0
        self.count[idx] = np.maximum(self.count[idx].astype(np.int32) - 1, 0).astype(np.uint8)
        never = idx[self.count[idx] == 0]
        self.first_ms[never] = 0
        self.last_ms[never] = 0
        self.changed = True
        return len(idx)

    def truncate_below(self, log_start_offset: int) -> int:
        """Offsets below ``log_start_offset`` left the log (retention, delete
        records): unfinished ones there (parked or in the window) become GAP
        (they cannot be delivered or dead-lettered any more); returns how
        many were unfinished. An empty window moves to the new log start."""
        if self._window_empty() and log_start_offset > self.wstart:
            self.wstart = log_start_offset
            self.changed = True
        k = int(np.searchsorted(self.off, log_start_offset))
        if k == 0:
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
        a, b = self._span(first, last)
        if a >= b:
            return 0
        idx = a + np.flatnonzero(self.state[a:b] == DEAD_LETTER)
        self.state[idx] = ARCHIVED
        self.changed = bool(len(idx)) or self.changed
        return len(idx)

    def advance(self) -> int:
        """Move the window start past its prefix of finished records and of
        delayed ones (AVAILABLE with a not-before time, due or not), which are
        parked while fewer than ``max_parked`` records are parked; drop
        finished records below it. Returns how far the window start moved."""
        np0 = self.np0
        term = _terminal(self.state)
        wst = self.state[np0:]
        park = (wst == AVAILABLE) & (self.until[np0:] > 0)
        skip = term[np0:] | park
        k = int(np.argmin(skip)) if not bool(skip.all()) else len(skip)
        room = max(self.max_parked - (np0 - int(term[:np0].sum())), 0)
        if k:
            cum = np.cumsum(park[:k])
            if int(cum[-1]) > room:
                # the parked set is full: the window start stops at the first
                # delayed record that does not fit (back pressure, bounded memory)
                k = int(np.searchsorted(cum, room, side="right"))
        keep = ~term
        keep[np0 + k :] = True
        self._diff_parked(keep, k)
        if k == 0 and bool(keep[:np0].all()):
            return 0
        self.wstart += k
        old_chunk = self.pchunk
        newly = np0 + np.flatnonzero(keep[np0 : np0 + k])
        for name in ("off", *_WORK_COLS):
            setattr(self, name, getattr(self, name)[keep])
        self.np0 = int(keep[: np0 + k].sum())
        # chunk of every parked entry: the old ones keep theirs, the newly
        # parked get new chunks of PARKED_CHUNK_RECORDS (key: first offset)
        fresh = self.off[len(old_chunk[keep[:np0]]) : self.np0]
        assert len(fresh) == len(newly)
        keys = fresh[(np.arange(len(fresh)) // PARKED_CHUNK_RECORDS) * PARKED_CHUNK_RECORDS]
        self.pchunk = np.concatenate((old_chunk[keep[:np0]], keys)).astype(np.int64)
        self.changed = True
        return k

    def _diff_parked(self, keep: B1, k: int) -> None:
        """Fill ``parked_changes``: every old chunk with a changed or dropped
        record (rewritten, or tombstoned when empty), then the new chunks of
        the records parked now (``keep``/``k`` as in :meth:`advance`, before
        the columns are cut)."""
        np0 = self.np0
        pk = self.porig
        changed = ~keep[:np0]
        if np0:
            changed |= self.holder[:np0] != self.hmap[pk.holder]
            changed |= self.error[:np0] != self.emap[pk.error]
            for name in ("state", "count", "until", "first_ms", "last_ms", "dl_reason"):
                changed |= getattr(self, name)[:np0] != getattr(pk, name)
        keys = np.unique(self.pchunk[changed]).tolist() if bool(changed.any()) else []
        for key in keys:
            a = int(np.searchsorted(self.pchunk, key, side="left"))
            b = int(np.searchsorted(self.pchunk, key, side="right"))
            sel = a + np.flatnonzero(keep[a:b])
            self.parked_changes.append((key, self._chunk(sel) if len(sel) else None))
        new = np0 + np.flatnonzero(keep[np0 : np0 + k])
        for i in range(0, len(new), PARKED_CHUNK_RECORDS):
            sel = new[i : i + PARKED_CHUNK_RECORDS]
            self.parked_changes.append((int(self.off[sel[0]]), self._chunk(sel)))

    def _chunk(self, sel: npt.NDArray[np.intp]) -> ShareParkedValue:
        holder, holders = _compact_table(self.holder[sel], self.holders)
        error, errors = _compact_table(self.error[sel], self.errors)
        return ShareParkedValue(
            off=self.off[sel],
            state=self.state[sel],
            count=self.count[sel],
            holder=holder,
            until=self.until[sel],
            first_ms=self.first_ms[sel],
            last_ms=self.last_ms[sel],
            error=error,
            dl_reason=self.dl_reason[sel],
            ts=self.ts[sel],
            key_hash=self.key[sel],
            holders=holders,
            errors=errors,
        )

    def value(self) -> ShareStateValue:
        """The state record's value (the window; tables compacted to the
        entries in use), after :meth:`advance` (which fills
        ``parked_changes``)."""
        self.advance()
        w = slice(self.np0, None)
        holder, holders = _compact_table(self.holder[w], self.holders)
        error, errors = _compact_table(self.error[w], self.errors)
        return ShareStateValue(
            spso=self.wstart,
            state=self.state[w],
            count=self.count[w],
            holder=holder,
            until=self.until[w],
            first_ms=self.first_ms[w],
            last_ms=self.last_ms[w],
            error=error,
            dl_reason=self.dl_reason[w],
            holders=holders,
            errors=errors,
            accepted_total=self.accepted_total,
            dead_lettered_total=self.dead_lettered_total,
        )


def _compact_table(col: I4, table: list[str]) -> tuple[I4, tuple[str, ...]]:
    """``col`` (indexes into ``table``, -1 for none) re-indexed to the entries
    in use, and those entries. A mark per table entry, not ``np.unique``
    (numpy 2's goes through a masked-array check, a hash table and a sort:
    ~20-40 us a call, and a state record makes two to four of them per fetch;
    the tables are small, one entry per holder or distinct error text)."""
    n = len(table)
    seen = np.zeros(n + 1, dtype=np.bool_)
    seen[col] = True  # -1 marks the spare last slot
    used = np.flatnonzero(seen[:n])
    if len(used) == n:  # every entry in use: the indexes stand as they are
        return col.astype(np.int32, copy=True), tuple(table)
    remap = np.full(n + 1, -1, dtype=np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    return remap[col], tuple(table[i] for i in used.tolist())


@dataclass(frozen=True, eq=False)
class Entries:
    """Every unfinished-or-windowed record of a share partition as columns
    (parked records, then the window), indexed by entry; ``off`` is each
    entry's offset, ``chunk`` the parked chunk of a parked entry (-1 in the
    window), ``holder``/``error`` index ``holders``/``errors``. Read-only."""

    off: I8
    chunk: I8
    state: U1
    count: U1
    holder: I4
    until: I8
    first_ms: I8
    last_ms: I8
    error: I4
    dl_reason: U1
    ts: I8
    key: U8
    holders: tuple[str, ...]
    errors: tuple[str, ...]


def _empty_entries() -> Entries:
    z8 = np.zeros(0, dtype=np.int64)
    z4 = np.zeros(0, dtype=np.int32)
    z1 = np.zeros(0, dtype=np.uint8)
    return Entries(z8, z8, z1, z1, z4, z8, z8, z8, z4, z1, z8, np.zeros(0, np.uint64), (), ())


def _concat_parked(chunks: Iterable[tuple[int, ShareParkedValue]]) -> Entries:
    """The parked chunks as one set of columns (chunks in key order, which is
    offset order), holder and error tables merged (O(records) numpy,
    O(chunks + table entries) Python)."""
    items = list(chunks)
    if not items:
        return _empty_entries()
    holders: dict[str, int] = {}
    errors: dict[str, int] = {}
    hcols, ecols = [], []
    for _, c in items:
        hm = np.array([holders.setdefault(h, len(holders)) for h in c.holders] + [-1], np.int32)
        em = np.array([errors.setdefault(e, len(errors)) for e in c.errors] + [-1], np.int32)
        hcols.append(hm[c.holder])
        ecols.append(em[c.error])

    def cat(name: str) -> npt.NDArray[Any]:
        return np.concatenate([getattr(c, name) for _, c in items])

    return Entries(
        off=cat("off"),
        chunk=np.repeat(
            np.array([k for k, _ in items], dtype=np.int64), [len(c.off) for _, c in items]
        ),
        state=cat("state"),
        count=cat("count"),
        holder=np.concatenate(hcols).astype(np.int32),
        until=cat("until"),
        first_ms=cat("first_ms"),
        last_ms=cat("last_ms"),
        error=np.concatenate(ecols).astype(np.int32),
        dl_reason=cat("dl_reason"),
        ts=cat("ts"),
        key=cat("key_hash"),
        holders=tuple(holders),
        errors=tuple(errors),
    )


def reset_parked_locks(c: ShareParkedValue) -> ShareParkedValue:
    """A parked chunk with every acquired record available again (restart)."""
    acq = c.state == ACQUIRED
    if not bool(acq.any()):
        return c
    return ShareParkedValue(
        off=c.off,
        state=np.where(acq, np.uint8(AVAILABLE), c.state).astype(np.uint8),
        count=c.count.copy(),
        holder=np.where(acq, np.int32(-1), c.holder).astype(np.int32),
        until=np.where(acq, np.int64(0), c.until).astype(np.int64),
        first_ms=c.first_ms.copy(),
        last_ms=c.last_ms.copy(),
        error=c.error.copy(),
        dl_reason=c.dl_reason.copy(),
        ts=c.ts.copy(),
        key_hash=c.key_hash.copy(),
        holders=c.holders,
        errors=c.errors,
    )


def _next_event(state: U1, until: I8, after_ms: int) -> int | None:
    """The earliest lock end (even one at or before ``after_ms``: tick has
    work) or not-before time after ``after_ms``; None: nothing pending."""
    times = until[(state == ACQUIRED) | ((state == AVAILABLE) & (until > after_ms))]
    return int(times.min()) if len(times) else None


def next_deadline_of(v: ShareStateValue, now_ms: int) -> int | None:
    """See :meth:`SharePartition.next_deadline` (the window only)."""
    t = _next_event(v.state, v.until, now_ms)
    return None if t is None else max(t, now_ms)


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
    record, -1 when none; the broker adds the log backlog past ``speo``.
    ``spso`` is the share-partition start offset (lowest unfinished record),
    ``parked`` how many records are parked below the window (counted in
    ``available``/``delayed``/``acquired``/``dead_letter_pending`` too)."""

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
    parked: int = 0


class SharePartition:
    """Replayed state of one (group, topic, partition); see the module docstring."""

    def __init__(self, group_id: str, topic: str, partition: int) -> None:
        self.group_id, self.topic, self.partition = group_id, topic, partition
        self.value: ShareStateValue | None = None
        self.chunks: dict[int, ShareChunkValue] = {}
        self.parked: dict[int, ShareParkedValue] = {}
        self.ts: I8 = np.zeros(0, dtype=np.int64)
        self.key: U8 = np.zeros(0, dtype=np.uint64)
        #: bumped on every replayed change (the coordinator's deadline index)
        self.version = 0
        self._parked_cache: Entries | None = None
        self._entries_cache: Entries | None = None
        self._lock_min: int | None = None
        self._lock_min_ok = False

    @property
    def initialized(self) -> bool:
        """False until the first state record (no start offset chosen yet)."""
        return self.value is not None

    @property
    def speo(self) -> int:
        """End of the window (-1 before initialization)."""
        return -1 if self.value is None else self.value.speo

    @property
    def spso(self) -> int:
        """The share-partition start offset: the lowest parked record, else
        the window start (-1 before initialization). Everything below it is
        finished."""
        if self.value is None:
            return -1
        if self.parked:
            return int(self.parked[min(self.parked)].off[0])
        return self.value.spso

    @property
    def parked_count(self) -> int:
        """Records parked below the window."""
        return sum(len(c.off) for c in self.parked.values())

    def work(
        self,
        config: ShareGroupConfig,
        *,
        start_offset: int | None = None,
        max_parked: int = 100_000,
    ) -> Work:
        """A writable copy to run operations on (an uninitialized partition
        starts empty at ``start_offset``); at most ``max_parked`` records
        parked below the window."""
        if self.value is None:
            assert start_offset is not None
            p = SharePartition(self.group_id, self.topic, self.partition)
            p.value = empty_state(start_offset)
            w = Work(p, config, max_parked)
            w.changed = True
            return w
        return Work(self, config, max_parked)

    # ------------------------------------------------------------- replay

    def _changed(self) -> None:
        self.version += 1
        self._entries_cache = None
        self._lock_min_ok = False

    def install_chunk(self, first_offset: int, chunk: ShareChunkValue) -> None:
        """Replay a window chunk (facts of offsets entering the window)."""
        self.chunks[first_offset] = chunk
        if self.value is not None:
            self._rebuild_meta()
        self._changed()

    def drop_chunk(self, first_offset: int) -> None:
        """Replay a chunk tombstone."""
        self.chunks.pop(first_offset, None)

    def install_parked(self, first_offset: int, chunk: ShareParkedValue | None) -> None:
        """Replay a parked chunk (None: its tombstone)."""
        if chunk is None:
            self.parked.pop(first_offset, None)
        else:
            self.parked[first_offset] = chunk
        self._parked_cache = None
        self._changed()

    def install(self, value: ShareStateValue) -> None:
        """Replay a state snapshot; the facts come from the chunks."""
        self.value = value
        self._rebuild_meta()
        self._changed()

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
        """Window chunks wholly below the window start ``spso`` (to
        tombstone; parked records carry their own facts)."""
        return sorted(f for f, c in self.chunks.items() if f + len(c.gap) <= spso)

    def reset_locks(self) -> None:
        """After a restart: every acquired record (in the window or parked)
        is available again, its delivery count kept (KIP-932); locks are not
        durable."""
        v = self.value
        if v is None:
            return
        for k, c in list(self.parked.items()):
            r = reset_parked_locks(c)
            if r is not c:
                self.parked[k] = r
                self._parked_cache = None
        self._changed()
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

    def parked_arrays(self) -> Entries:
        """The parked records as one set of columns (cached until a parked
        chunk is replayed)."""
        if self._parked_cache is None:
            self._parked_cache = _concat_parked(sorted(self.parked.items()))
        return self._parked_cache

    def entries(self) -> Entries:
        """Parked records then the window, as columns (cached until the next
        replayed change); holder and error index the merged tables."""
        v = self.value
        if v is None:
            return _empty_entries()
        if self._entries_cache is not None:
            return self._entries_cache
        pk = self.parked_arrays()
        if len(pk.off) == 0:
            e = Entries(
                np.arange(v.spso, v.speo, dtype=np.int64),
                np.full(len(v.state), -1, dtype=np.int64),
                v.state,
                v.count,
                v.holder,
                v.until,
                v.first_ms,
                v.last_ms,
                v.error,
                v.dl_reason,
                self.ts,
                self.key,
                v.holders,
                v.errors,
            )
        else:
            holders = {h: i for i, h in enumerate(v.holders)}
            errors = {x: i for i, x in enumerate(v.errors)}
            hm = np.array(
                [holders.setdefault(h, len(holders)) for h in pk.holders] + [-1], np.int32
            )
            em = np.array([errors.setdefault(x, len(errors)) for x in pk.errors] + [-1], np.int32)

            def cat(name: str, win: npt.NDArray[Any]) -> npt.NDArray[Any]:
                return np.concatenate((getattr(pk, name), win))

            e = Entries(
                cat("off", np.arange(v.spso, v.speo, dtype=np.int64)),
                cat("chunk", np.full(len(v.state), -1, dtype=np.int64)),
                cat("state", v.state),
                cat("count", v.count),
                np.concatenate((hm[pk.holder], v.holder)).astype(np.int32),
                cat("until", v.until),
                cat("first_ms", v.first_ms),
                cat("last_ms", v.last_ms),
                np.concatenate((em[pk.error], v.error)).astype(np.int32),
                cat("dl_reason", v.dl_reason),
                cat("ts", self.ts),
                cat("key", self.key),
                tuple(holders),
                tuple(errors),
            )
        self._entries_cache = e
        return e

    def _locks_end(self) -> int | None:
        """The earliest lock end (cached until the next replayed change)."""
        if not self._lock_min_ok:
            e = self.entries()
            u = e.until[e.state == ACQUIRED]
            self._lock_min = int(u.min()) if len(u) else None
            self._lock_min_ok = True
        return self._lock_min

    def next_event_after(self, after_ms: int) -> int | None:
        """The earliest lock end (even one already past) or not-before time
        after ``after_ms``; None: nothing pending."""
        if self.value is None:
            return None
        e = self.entries()
        return _next_event(e.state, e.until, after_ms)

    def next_deadline(self, now_ms: int) -> int | None:
        """The earliest lock end or not-before time after ``now_ms`` (a lock
        already past is ``now_ms``: tick has work); None: nothing pending."""
        t = self.next_event_after(now_ms)
        return None if t is None else max(t, now_ms)

    def has_expired_locks(self, now_ms: int) -> bool:
        """Whether some lock ended at or before ``now_ms`` (O(1) once cached)."""
        t = self._locks_end()
        return t is not None and t <= now_ms

    def available_now(self, now_ms: int) -> int:
        """Records that an acquisition could hand out now (parked or in the window)."""
        if self.value is None:
            return 0
        e = self.entries()
        return int(((e.state == AVAILABLE) & (e.until <= now_ms)).sum())

    def counts(self, now_ms: int) -> PartitionCounts:
        """Counts for describe / metrics (parked records included)."""
        v = self.value
        assert v is not None
        e = self.entries()
        st = e.state
        due = (st == AVAILABLE) & (e.until <= now_ms)
        acq = st == ACQUIRED
        per: list[int] = np.bincount(e.holder[acq], minlength=len(e.holders)).tolist()
        return PartitionCounts(
            self.topic,
            self.partition,
            self.spso,
            v.speo,
            available=int(due.sum()),
            delayed=int(((st == AVAILABLE) & (e.until > now_ms)).sum()),
            acquired=int(acq.sum()),
            dead_letter_pending=int((st == DEAD_LETTER).sum()),
            accepted_total=v.accepted_total,
            dead_lettered_total=v.dead_lettered_total,
            oldest_available_ts_ms=int(e.ts[due].min()) if bool(due.any()) else -1,
            in_flight={h: int(n) for h, n in zip(e.holders, per, strict=True) if n},
            parked=self.parked_count,
        )

    def pending_dead_letters(self, config: ShareGroupConfig) -> list[DeadLetter]:
        """Every DEAD_LETTER run not yet confirmed (after a restart the broker
        produces them again: at-least-once into the dead-letter topic)."""
        if self.value is None:
            return []
        e = self.entries()
        idx = np.flatnonzero(e.state == DEAD_LETTER)
        out = []
        for a, b in _runs(idx, e.off, e.count, e.error, e.first_ms, e.last_ms, e.dl_reason):
            x = int(e.error[a])
            out.append(
                DeadLetter(
                    self.group_id,
                    config.dead_letter_topic_for(self.group_id),
                    self.topic,
                    self.partition,
                    int(e.off[a]),
                    int(e.off[b]),
                    int(e.count[a]),
                    DeadLetterReason(int(e.dl_reason[a])),
                    e.errors[x] if x >= 0 else "",
                    int(e.first_ms[a]),
                    int(e.last_ms[a]),
                )
            )
        return out

    def record_states(self) -> Iterable[tuple[int, int, int]]:
        """(offset, state, delivery count) of every parked record and every
        offset in the window, in offset order -- per record, for tests and
        debugging only (not the broker's path)."""
        if self.value is None:
            return []
        e = self.entries()
        return zip(e.off.tolist(), e.state.tolist(), e.count.tolist(), strict=True)
