"""One producer batch: the records of one partition on their way to the broker.

A batch is open (records are appended to ``parts``, under the producer's
lock) until it is full or the sender drains it (its linger has passed and its
partition may have another request in flight, or a flush or close asked for
it). Drained, it gets its place in the partition's order (the idempotent
``sequence`` and the pid ``generation`` it was numbered under), its records
are joined (and compressed) once into ``payload``, and it is sent, maybe
retried, and completed once (``done`` set, with ``base_offset`` or
``error``). See :mod:`._sender` for the order and retry rules. ``parts``
holds the encoded records as a list of byte strings whose concatenation is
the records field: two per record (the bytes before the value and the
value) from ``send``, one per run of records from ``send_many`` of
same-length values (joined with the shared prefix as separator, so the
sender's join has one piece per run, not two per record: with the request
built from header and records as two pieces, the producer's CPU per W5
batch of 200 records fell from ~110 to ~55-65 us in process).

A waiting batch whose records compress past the room it was closed for is
split (:meth:`ProducerBatch.halves`) into two batches sent in its place,
before it is numbered; its handles find their record's batch through
:meth:`ProducerBatch.leaf`, and it is done once both halves are.
"""

from __future__ import annotations

import threading
import time

from logstore import errors

#: Guards every Done's hand-over of its event (held for a few bytecodes).
_DONE_LOCK = threading.Lock()


class Done:
    """A batch's completion: ``threading.Event``'s ``set`` / ``is_set`` /
    ``wait``, with the event made only for a waiter that comes before the set.

    An Event (a Condition over a Lock) costs ~2 us to make and ~1 us to set,
    once per batch: ~3 % of the producer's CPU per batch at 1,000 partitions,
    where most batches complete with nobody waiting on them (a ``flush`` or a
    result read afterwards finds them set)."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        with _DONE_LOCK:
            self._flag = True
            event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        with _DONE_LOCK:
            # Under the lock: a set either comes before (the flag) or finds the event.
            if self._flag:
                return True
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        return event.wait(timeout)


def record_offset(records: bytes, k: int) -> int:
    """Where record ``k`` starts in an encoded records field (each record: the
    field's one-byte tag 0x7a, a varint length, the record). A Python walk,
    only for the rare split of a batch."""
    pos = 0
    for _ in range(k):
        pos += 1  # the tag
        length = shift = 0
        while True:
            byte = records[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        pos += length
    return pos


class ProducerBatch:
    """Records for one partition; closed once, then sent (and maybe retried) in order."""

    __slots__ = (
        "attempts",
        "base_offset",
        "base_ts",
        "codec",
        "compressed",
        "compressing",
        "count",
        "crc",
        "created",
        "created_ms",
        "deadline",
        "done",
        "error",
        "explicit_count",
        "explicit_max_ts",
        "explicit_min_ts",
        "generation",
        "header",
        "in_flight",
        "max_ts",
        "parent",
        "partition",
        "parts",
        "payload",
        "pool_failed",
        "producer_epoch",
        "producer_id",
        "rebuild",
        "retry_at",
        "sent_behind",
        "sequence",
        "size",
        "split",
        "topic",
    )

    def __init__(self, topic: str, partition: int, delivery_timeout_s: float) -> None:
        self.topic = topic
        self.partition = partition
        self.parts: list[bytes] = []
        self.size = 0  # bytes of encoded records
        self.count = 0
        self.created = time.monotonic()
        self.created_ms = time.time_ns() // 1_000_000
        self.deadline = self.created + delivery_timeout_s
        self.explicit_count = 0  # records with their own timestamp
        self.explicit_min_ts = 0
        self.explicit_max_ts = 0
        #: (records as they will be sent, codec): compressed ahead by the
        #: sender while the partition's earlier batches are in flight
        self.compressed: tuple[bytes, int] | None = None
        #: on a compression thread now (the sender neither sends nor hands it
        #: out again until it is back); pool_failed: it raised there, so the
        #: sender compresses it itself, where a failure fails the batch
        self.compressing = False
        self.pool_failed = False
        #: the bytes after the request header (records or compressed_records),
        #: their codec, CRC32C and timestamps: fixed once built, so every retry
        #: carries exactly the same records
        self.payload: bytes | None = None
        self.codec = 0
        self.crc = 0
        self.base_ts = 0
        self.max_ts = 0
        #: the unary ProduceRequest's fields but the records, kept for retries
        #: (the request is ``header + payload``; MultiProduce sends the two
        #: pieces without joining them first)
        self.header: bytes | None = None
        #: idempotent base sequence (-1: not numbered yet) and the producer-id
        #: generation it belongs to (see _idempotence.Idempotence.generation)
        self.sequence = -1
        self.generation = -1
        self.producer_id = 0
        self.producer_epoch = 0
        #: sent while earlier batches of its partition were unacknowledged, so
        #: an OUT_OF_ORDER_SEQUENCE reply may only mean they were not stored yet
        self.sent_behind = False
        #: renumber under the current producer id before the next try
        self.rebuild = False
        self.in_flight = False
        self.attempts = 0
        self.retry_at = 0.0
        self.done = Done()
        self.base_offset = -1
        self.error: errors.LogStoreError | None = None
        #: (records in the first half, first half, second half) once split
        self.split: tuple[int, ProducerBatch, ProducerBatch] | None = None
        self.parent: ProducerBatch | None = None

    def halves(self) -> tuple[ProducerBatch, ProducerBatch]:
        """Split a closed, unnumbered batch of two or more records into two (each
        with its records, sizes and the same deadline); records this split."""
        assert self.count > 1 and self.payload is None and self.split is None
        k = self.count // 2
        records = b"".join(self.parts)
        cut = record_offset(records, k)
        out: list[ProducerBatch] = []
        for part, count in ((records[:cut], k), (records[cut:], self.count - k)):
            b = ProducerBatch(self.topic, self.partition, 0.0)
            b.parts, b.count = [part], count
            b.size = len(part)
            b.created, b.created_ms, b.deadline = self.created, self.created_ms, self.deadline
            # Which records of a mixed batch carry a timestamp is not kept: a
            # half of one takes the batch's time as its base (the broker takes
            # the true max timestamp from the records, whatever is sent).
            all_explicit = self.explicit_count == self.count
            b.explicit_count = count if all_explicit else 0
            b.explicit_min_ts = self.explicit_min_ts if all_explicit else 0
            b.explicit_max_ts = self.explicit_max_ts if all_explicit else 0
            b.parent = self
            out.append(b)
        self.split = (k, out[0], out[1])
        self.parts = []
        return out[0], out[1]

    def leaf(self, index: int) -> tuple[ProducerBatch, int]:
        """The batch that carried record ``index`` of this one, and its index there."""
        b = self
        while b.split is not None:
            k, first, second = b.split
            b, index = (first, index) if index < k else (second, index - k)
        return b, index

    def pieces(self, first: int, count: int) -> list[tuple[ProducerBatch, int, int]]:
        """``(batch, first index, count)`` of the batches that carried records
        ``first .. first + count - 1`` of this one (itself unless it was split)."""
        if self.split is None:
            return [(self, first, count)]
        k, a, b = self.split
        out: list[tuple[ProducerBatch, int, int]] = []
        if first < k:
            out += a.pieces(first, min(count, k - first))
        if first + count > k:
            start = max(first, k)
            out += b.pieces(start - k, first + count - start)
        return out
