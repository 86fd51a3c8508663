"""Idempotence: the producer id, its epoch and a sequence number per partition.

With ``idempotent=True`` the producer asks the broker for an id
(``InitProducer``) before its first batch and numbers records per
(topic, partition) from 0: a batch's ``base_sequence`` is the number of
records sent to that partition before it, wrapping at 2**31 like Kafka's
int32 sequence. The broker keeps the last sequences of each id, so a batch
retried after its reply was lost is answered with its original offset
instead of being stored twice.

A batch that fails for good after a request was sent may or may not be on
the broker: the numbering is then broken, so the id is marked stale and,
once no request is in flight, the sender takes a new id (with sequences from
0 again; ``generation`` counts the ids taken, so a batch knows whether it was
numbered under the current one).

At most :data:`MAX_IN_FLIGHT` (5) batches per partition may be unacknowledged:
the broker remembers the last 5 batches of each producer (Kafka's rule for
``max.in.flight.requests.per.connection`` with idempotence), so a retry of
any of them is still recognised as a duplicate.

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

#: Unacknowledged batches per partition the broker's duplicate check covers
#: (``logstore.storage._producers.BATCHES_KEPT``).
MAX_IN_FLIGHT: Final = 5


class Idempotence:
    """Producer id, epoch and next sequence per (topic, partition)."""

    __slots__ = (
        "_init",
        "_init_lock",
        "_lock",
        "_next_seq",
        "enabled",
        "generation",
        "producer_epoch",
        "producer_id",
        "stale",
    )

    def __init__(
        self, enabled: bool, init_producer: Callable[[], tuple[int, int]], lock: threading.Lock
    ) -> None:
        self.enabled = enabled
        self._init = init_producer
        self._lock = lock
        self._init_lock = threading.Lock()  # one InitProducer at a time
        self.producer_id = 0
        self.producer_epoch = 0
        #: True when the next batch needs a new id first (none yet, or a broken sequence)
        self.stale = enabled
        #: how many producer ids were taken (a batch numbered under an older one
        #: is renumbered if the broker says it was not stored)
        self.generation = 0
        self._next_seq: dict[tuple[str, int], int] = {}

    def refresh_if_stale(self) -> None:
        """Take a new producer id if needed (raises the broker's LogStoreError). Lock not held."""
        if not self.stale:
            return
        with self._init_lock:
            if not self.stale:
                return  # another thread took one meanwhile
            pid, epoch = self._init()
            self._adopt(pid, epoch)

    def _adopt(self, pid: int, epoch: int) -> None:
        with self._lock:
            self.producer_id, self.producer_epoch = pid, epoch
            self._next_seq.clear()
            self.generation += 1
            self.stale = False

    def next_sequence(self, tp: tuple[str, int], record_count: int) -> int:
        """The base sequence of a batch of ``record_count`` records to ``tp``. Lock held."""
        seq = self._next_seq.get(tp, 0)
        self._next_seq[tp] = (seq + record_count) & SEQUENCE_MASK
        return seq

    def sequence_broken(self) -> None:
        """A sent batch failed for good: the broker may hold it or not. Lock held."""
        self.stale = True
