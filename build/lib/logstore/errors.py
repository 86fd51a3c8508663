"""One exception hierarchy for every layer of logstore.

Each class names the gRPC status code it maps to (``status``, a name of
``grpc.StatusCode``), so the broker translates domain errors to statuses in
one table and the client translates statuses back to these classes in one
place; this module itself imports nothing of gRPC.

Programmer errors are ``assert``s, not these. Storage translates ``OSError``
into :class:`StorageError` (or :class:`DiskFullError`) at exactly one place,
the I/O seam, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar


class LogStoreError(Exception):
    """Base of every error logstore raises on purpose."""

    status: ClassVar[str] = "UNKNOWN"


class InvalidArgumentError(LogStoreError, ValueError):
    """A request or call argument is malformed; nothing was changed."""

    status = "INVALID_ARGUMENT"


class InvalidTopicNameError(InvalidArgumentError):
    """A topic name breaks Kafka's rules or uses the reserved ``__`` prefix."""


class InvalidConfigError(InvalidArgumentError):
    """An unknown configuration key or a value outside its allowed range."""


class InvalidBatchError(InvalidArgumentError):
    """An empty, malformed or oversized batch, or one whose CRC does not match."""


class NotFoundError(LogStoreError, LookupError):
    """Something named does not exist."""

    status = "NOT_FOUND"


class UnknownTopicError(NotFoundError):
    """The topic does not exist."""


class UnknownPartitionError(NotFoundError):
    """The topic exists but has no such partition."""


class TopicExistsError(LogStoreError):
    """CreateTopic of a topic that already exists."""

    status = "ALREADY_EXISTS"


class OffsetOutOfRangeError(LogStoreError, IndexError):
    """An offset below the log start offset or above the log end offset."""

    status = "OUT_OF_RANGE"

    def __init__(self, message: str, log_start_offset: int = -1, log_end_offset: int = -1):
        super().__init__(message)
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class FailedPreconditionError(LogStoreError):
    """The request is well-formed but the current state forbids it."""

    status = "FAILED_PRECONDITION"


class OutOfOrderSequenceError(FailedPreconditionError):
    """An idempotent producer's sequence number skips ahead (records lost)."""


class InvalidProducerEpochError(FailedPreconditionError):
    """An idempotent producer's epoch is older than the current one (fenced)."""


class UnknownProducerIdError(FailedPreconditionError):
    """The producer id was never issued or has expired; call InitProducer again."""


class CorruptRecordError(LogStoreError):
    """Stored bytes fail their CRC or framing checks; they are never served."""

    status = "DATA_LOSS"


class StorageError(LogStoreError, OSError):
    """An I/O error of the data directory (EIO and the like)."""

    status = "INTERNAL"


class DiskFullError(StorageError):
    """ENOSPC: the disk is full. Nothing half-written is served; retry later."""

    status = "RESOURCE_EXHAUSTED"


class DirectoryInUseError(StorageError):
    """Another process holds the data directory's lock."""

    status = "FAILED_PRECONDITION"


class StoreClosedError(LogStoreError):
    """The store (or broker) is closed or shutting down."""

    status = "UNAVAILABLE"


class ResourceExhaustedError(LogStoreError):
    """A limit of the broker was reached; retry after ``retry_after_ms``."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class BrokerUnavailableError(LogStoreError):
    """The broker cannot be reached or is shutting down (client side)."""

    status = "UNAVAILABLE"


class DeadlineExceededError(LogStoreError, TimeoutError):
    """A deadline passed before the operation completed (client side)."""

    status = "DEADLINE_EXCEEDED"


class InternalError(LogStoreError):
    """The broker failed in a way the caller cannot fix (client side)."""

    status = "INTERNAL"


__all__ = [
    "BrokerUnavailableError",
    "CorruptRecordError",
    "DeadlineExceededError",
    "DirectoryInUseError",
    "DiskFullError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidBatchError",
    "InvalidConfigError",
    "InvalidProducerEpochError",
    "InvalidTopicNameError",
    "LogStoreError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "ResourceExhaustedError",
    "StorageError",
    "StoreClosedError",
    "TopicExistsError",
    "UnknownPartitionError",
    "UnknownProducerIdError",
    "UnknownTopicError",
]
