"""One producer batch: the records of one partition on their way to the broker.

A batch is open (records are appended to ``parts``, under the producer's
lock) until it is full, its linger passes or a flush closes it; then it is
sent, and possibly retried, one request at a time, and completed once
(``done`` set, with ``base_offset`` or ``error``). ``parts`` holds the
encoded records as a list of byte strings, joined once when the request is
built (see :mod:`._sender`).
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
        "partition",
        "parts",
        "request",
        "retry_at",
        "size",
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
