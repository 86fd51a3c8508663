"""Handles: what ``send`` and ``send_many`` return.

A :class:`RecordHandle` is two references (``__slots__``: the batch and the
record's index in it); every record of a batch shares the batch's one
completion event, so a handle costs no lock or event of its own. A
:class:`SendResult` covers many records as ``(batch, first index, count)``
segments, one per batch they went into.

Offsets: a record's offset is its batch's base offset (from the reply) plus
its index (in the half that carried it, if the batch was split); -1 with
acks=0 (the broker does not say) or when the batch failed.
Thread-safe: a handle is only read after the batch's event is set.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from logstore import errors

from ._batch import ProducerBatch


class RecordHandle:
    """The outcome of one ``send()``: ``result()`` -> ``(partition, offset)``."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: ProducerBatch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return self._batch.done.is_set()

    def result(self, timeout: float | None = None) -> tuple[int, int]:
        """Wait for delivery; ``(partition, offset)``, offset -1 with acks=0.

        Raises the batch's LogStoreError, or DeadlineExceededError on timeout.
        """
        if not self._batch.done.wait(timeout):
            raise errors.DeadlineExceededError(f"record not delivered within {timeout} s")
        b, index = self._batch.leaf(self._index)  # (the batch itself unless split)
        if b.error is not None:
            raise b.error
        return b.partition, (b.base_offset + index if b.base_offset >= 0 else -1)

    def exception(self, timeout: float | None = None) -> errors.LogStoreError | None:
        if not self._batch.done.wait(timeout):
            raise errors.DeadlineExceededError(f"record not delivered within {timeout} s")
        return self._batch.leaf(self._index)[0].error


class SendResult:
    """The outcome of one ``send_many()``: a sequence of handles, one per record."""

    __slots__ = ("_segments", "_starts")

    def __init__(self) -> None:
        self._segments: list[tuple[ProducerBatch, int, int]] = []  # batch, first index, count
        self._starts: list[int] = []

    def _add(self, batch: ProducerBatch, first: int, count: int) -> None:
        self._starts.append(self._starts[-1] + self._segments[-1][2] if self._segments else 0)
        self._segments.append((batch, first, count))

    def __len__(self) -> int:
        return self._starts[-1] + self._segments[-1][2] if self._segments else 0

    def add(self, handle: RecordHandle) -> None:
        """Append one ``send()`` handle (consecutive records of a batch share a segment)."""
        if self._segments:
            batch, first, count = self._segments[-1]
            if batch is handle._batch and first + count == handle._index:
                self._segments[-1] = (batch, first, count + 1)
                return
        self._add(handle._batch, handle._index, 1)

    def segments(
        self, timeout: float | None = None
    ) -> list[tuple[int, int, int, Exception | None]]:
        """``(partition, first offset, count, error)`` per batch segment, waiting for
        each; first offset is -1 with acks=0 or on error. Never raises the errors."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[tuple[int, int, int, Exception | None]] = []
        for batch, first, count in self._segments:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not batch.done.wait(left):
                raise errors.DeadlineExceededError(f"records not delivered within {timeout} s")
            for b, i, n in batch.pieces(first, count):
                offset = b.base_offset + i if b.base_offset >= 0 and b.error is None else -1
                out.append((b.partition, offset, n, b.error))
        return out

    def __getitem__(self, i: int) -> RecordHandle:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._starts, i) - 1
        batch, first, _ = self._segments[k]
        return RecordHandle(batch, first + i - self._starts[k])

    def __iter__(self) -> Iterator[RecordHandle]:
        for batch, first, count in self._segments:
            for j in range(first, first + count):
                yield RecordHandle(batch, j)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every record; raise the first batch's error, if any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for batch, _, _ in self._segments:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not batch.done.wait(left):
                raise errors.DeadlineExceededError(f"records not delivered within {timeout} s")
            if batch.error is not None:
                raise batch.error

    def offsets(self, timeout: float | None = None) -> list[tuple[int, int, int]]:
        """``(partition, first offset, count)`` per batch segment, after ``wait``."""
        self.wait(timeout)
        return [
            (b.partition, b.base_offset + i if b.base_offset >= 0 else -1, n)
            for batch, first, count in self._segments
            for b, i, n in batch.pieces(first, count)
        ]
