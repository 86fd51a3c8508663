"""Idempotence: the producer id, its epoch and a sequence number per partition.

With ``idempotent=True`` the producer asks the broker for an id
(``InitProducer``) before its first batch and numbers records per
(topic, partition) from 0: a batch's ``base_sequence`` is the number of
records sent to that partition before it, wrapping at 2**31 like Kafka's
int32 sequence. The broker keeps the last sequences of each id, so a batch
retried after its reply was lost is answered with its original offset
instead of being stored twice.

A batch that fails for good after a request was sent may or may not be on
the broker: the numbering is then broken, so the id is marked stale and the
next batch first takes a new id (with sequences from 0 again).

Thread-safety: sequences are handed out under the producer's lock (the
caller holds it, see :meth:`Idempotence.next_sequence`); ``refresh`` runs on
the sender thread or in ``send`` and takes the lock itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

#: Sequences are int32 on the wire and wrap to 0 after 2**31 - 1 (as Kafka's).
SEQUENCE_MASK: Final = 0x7FFFFFFF


class Idempotence:
    """Producer id, epoch and next sequence per (topic, partition)."""

    __slots__ = ("_init", "_lock", "_next_seq", "enabled", "producer_epoch", "producer_id", "stale")

    def __init__(
        self, enabled: bool, init_producer: Callable[[], tuple[int, int]], lock: threading.Lock
    ) -> None:
        self.enabled = enabled
        self._init = init_producer
        self._lock = lock
        self.producer_id = 0
        self.producer_epoch = 0
        #: True when the next batch needs a new id first (none yet, or a broken sequence)
        self.stale = enabled
        self._next_seq: dict[tuple[str, int], int] = {}

    def refresh_if_stale(self) -> None:
        """Take a new producer id if needed (raises the broker's LogStoreError). Lock not held."""
        if not self.stale:
            return
        pid, epoch = self._init()
        with self._lock:
            self.producer_id, self.producer_epoch = pid, epoch
            self._next_seq.clear()
            self.stale = False

    def next_sequence(self, tp: tuple[str, int], record_count: int) -> int:
        """The base sequence of a batch of ``record_count`` records to ``tp``. Lock held."""
        seq = self._next_seq.get(tp, 0)
        self._next_seq[tp] = (seq + record_count) & SEQUENCE_MASK
        return seq

    def sequence_broken(self) -> None:
        """A sent batch failed for good: the broker may hold it or not. Lock held."""
        self.stale = True
