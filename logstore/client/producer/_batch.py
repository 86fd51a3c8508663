"""One producer batch: the records of one partition on their way to the broker.

A batch is open (records are appended to ``parts``, under the producer's
lock) until it is full, its linger passes or a flush closes it; then it is
sent, and possibly retried, one request at a time, and completed once
(``done`` set, with ``base_offset`` or ``error``). ``parts`` holds the
encoded records as a list of byte strings, two per record (the bytes before
the value and the value), joined once when the request is built (see
:mod:`._sender`).

A closed batch whose records compress past the room it was closed for is
split (:meth:`ProducerBatch.halves`) into two batches sent in its place; its
handles find their record's batch through :meth:`ProducerBatch.leaf`, and it
is done once both halves are.
"""

from __future__ import annotations

import threading
import time

from logstore import errors


class ProducerBatch:
    """Records for one partition; closed once, sent (and maybe retried) once at a time."""

    __slots__ = (
        "attempts",
        "base_offset",
        "compressed",
        "count",
        "created",
        "created_ms",
        "deadline",
        "done",
        "error",
        "explicit_count",
        "explicit_max_ts",
        "explicit_min_ts",
        "parent",
        "partition",
        "parts",
        "request",
        "retry_at",
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
        self.request: bytes | None = None
        #: (records as they will be sent, codec): compressed ahead by the
        #: sender while the partition's previous batch is in flight
        self.compressed: tuple[bytes, int] | None = None
        self.attempts = 0
        self.retry_at = 0.0
        self.done = threading.Event()
        self.base_offset = -1
        self.error: errors.LogStoreError | None = None
        #: (records in the first half, first half, second half) once split
        self.split: tuple[int, ProducerBatch, ProducerBatch] | None = None
        self.parent: ProducerBatch | None = None

    def halves(self) -> tuple[ProducerBatch, ProducerBatch]:
        """Split a closed, unsent batch of two or more records into two (each
        with its records, sizes and the same deadline); records this split."""
        assert self.count > 1 and self.request is None and self.split is None
        k = self.count // 2
        out: list[ProducerBatch] = []
        for parts, count in ((self.parts[: 2 * k], k), (self.parts[2 * k :], self.count - k)):
            b = ProducerBatch.__new__(ProducerBatch)
            b.topic, b.partition, b.parts, b.count = self.topic, self.partition, parts, count
            b.size = sum(map(len, parts))
            b.created, b.created_ms, b.deadline = self.created, self.created_ms, self.deadline
            # Which records of a mixed batch carry a timestamp is not kept: a
            # half of one takes the batch's time as its base (the broker takes
            # the true max timestamp from the records, whatever is sent).
            all_explicit = self.explicit_count == self.count
            b.explicit_count = count if all_explicit else 0
            b.explicit_min_ts = self.explicit_min_ts if all_explicit else 0
            b.explicit_max_ts = self.explicit_max_ts if all_explicit else 0
            b.request = b.compressed = None
            b.attempts, b.retry_at = 0, 0.0
            b.done, b.base_offset, b.error = threading.Event(), -1, None
            b.split, b.parent = None, self
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
