"""Idempotent-producer state of one partition.

For each producer id the partition keeps its epoch and its last
``BATCHES_KEPT`` (5, as Kafka) batches: first and last sequence number and the
offset they were stored at. A retry of one of them is a duplicate and gets its
original offset; a sequence that skips ahead is an out-of-order error; an older
epoch is fenced. The state is rebuilt after a restart from the newest snapshot
(``<offset>.snapshot``, JSON, written at roll, at checkpoints and at clean
close) plus the frame headers after it. Producers not seen for
``expiration_ms`` are dropped by :meth:`expire`; at most ``max_ids`` are kept
(the least recently used goes first).

Not thread-safe: the partition's lock guards it.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from logstore.errors import (
    InvalidProducerEpochError,
    OutOfOrderSequenceError,
)

BATCHES_KEPT: Final = 5


@dataclass
class _Batch:
    first_seq: int
    last_seq: int
    base_offset: int
    timestamp_ms: int


@dataclass
class _Producer:
    epoch: int
    last_seen_ms: int
    batches: deque[_Batch] = field(default_factory=lambda: deque(maxlen=BATCHES_KEPT))


class ProducerState:
    def __init__(self, max_ids: int, expiration_ms: int) -> None:
        self.max_ids = max_ids
        self.expiration_ms = expiration_ms
        self._producers: OrderedDict[int, _Producer] = OrderedDict()
        self.changed = False

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, pid: int, epoch: int, first_seq: int, count: int, where: str) -> _Batch | None:
        """The stored batch if this one is a duplicate; None if it may be
        appended; raise if it is out of order or fenced."""
        p = self._producers.get(pid)
        last_seq = first_seq + count - 1
        if p is None:
            if first_seq != 0:
                raise OutOfOrderSequenceError(
                    f"{where}: producer {pid} is unknown here (new or expired) and its first "
                    f"batch has sequence {first_seq}, expected 0; call InitProducer again"
                )
            return None
        if epoch < p.epoch:
            raise InvalidProducerEpochError(
                f"{where}: producer {pid} epoch {epoch} is older than the current epoch "
                f"{p.epoch}; this producer was fenced"
            )
        if epoch > p.epoch:
            if first_seq != 0:
                raise OutOfOrderSequenceError(
                    f"{where}: producer {pid} new epoch {epoch} must start at sequence 0, "
                    f"got {first_seq}"
                )
            return None
        for b in p.batches:
            if b.first_seq == first_seq and b.last_seq == last_seq:
                return b
        expected = p.batches[-1].last_seq + 1 if p.batches else 0
        if first_seq != expected:
            raise OutOfOrderSequenceError(
                f"{where}: producer {pid} sent sequence {first_seq}, expected {expected} "
                f"(records between were lost or reordered)"
            )
        return None

    def update(
        self, pid: int, epoch: int, first_seq: int, count: int, base_offset: int, now_ms: int
    ) -> None:
        p = self._producers.get(pid)
        if p is None or epoch != p.epoch:
            p = _Producer(epoch, now_ms)
            self._producers[pid] = p
        p.last_seen_ms = now_ms
        p.batches.append(_Batch(first_seq, first_seq + count - 1, base_offset, now_ms))
        self._producers.move_to_end(pid)
        while len(self._producers) > self.max_ids:
            self._producers.popitem(last=False)
        self.changed = True

    def last_batch_offsets(self) -> set[int]:
        """The base offset of each known producer's last batch (what the
        cleaner keeps, see ``_cleaner``)."""
        return {p.batches[-1].base_offset for p in self._producers.values() if p.batches}

    def expire(self, now_ms: int) -> int:
        dead = [
            pid
            for pid, p in self._producers.items()
            if now_ms - p.last_seen_ms >= self.expiration_ms
        ]
        for pid in dead:
            del self._producers[pid]
        if dead:
            self.changed = True
        return len(dead)

    def truncate(self, offset: int) -> None:
        """Forget batches at or after ``offset`` (the log was truncated)."""
        for pid in list(self._producers):
            p = self._producers[pid]
            kept = [b for b in p.batches if b.base_offset < offset]
            if kept:
                p.batches = deque(kept, maxlen=BATCHES_KEPT)
            else:
                del self._producers[pid]
        self.changed = True

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            str(pid): {
                "epoch": p.epoch,
                "last_seen_ms": p.last_seen_ms,
                "batches": [
                    [b.first_seq, b.last_seq, b.base_offset, b.timestamp_ms] for b in p.batches
                ],
            }
            for pid, p in self._producers.items()
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def load_json(self, raw: bytes) -> None:
        data = json.loads(raw)
        self._producers.clear()
        for pid, p in data.items():
            prod = _Producer(int(p["epoch"]), int(p["last_seen_ms"]))
            for first, last, base, ts in p["batches"]:
                prod.batches.append(_Batch(int(first), int(last), int(base), int(ts)))
            self._producers[int(pid)] = prod
        self.changed = False
