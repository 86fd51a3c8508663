"""One exception hierarchy for every layer of logstore.

Each class names the gRPC status code it maps to (``status``, a name of
``grpc.StatusCode``) and a stable machine-readable ``reason`` (Kafka-style
error names such as ``OFFSET_OUT_OF_RANGE``). The broker sends both on every
error status -- the code as the status, the reason and the error's
``metadata`` (a ``dict[str, str]``) as a ``google.rpc.ErrorInfo`` with domain
:data:`ERROR_DOMAIN`, and ``retry_after_ms`` as a ``google.rpc.RetryInfo``
when the error is retriable -- and the client rebuilds the exact class from
the reason with :meth:`LogStoreError.from_details`. :data:`BY_REASON` is the
one table from reason to class; the reasons are documented in
``proto/logstore/v1/logstore.proto`` (a test keeps the two in step). Reasons
never change once published; a new error gets a new class and reason. This
module itself imports nothing of gRPC.

Programmer errors are ``assert``s, not these. Storage translates ``OSError``
into :class:`StorageError` (or :class:`DiskFullError`) at exactly one place,
the I/O seam, with ``raise ... from exc``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from typing import ClassVar, Final

#: ``google.rpc.ErrorInfo.domain`` of every error the broker sends.
ERROR_DOMAIN: Final = "logstore.v1"


class LogStoreError(Exception):
    """Base of every error logstore raises on purpose.

    ``metadata`` holds machine-readable details (string keys and values, as in
    ``google.rpc.ErrorInfo.metadata``); ``retry_after_ms`` is set when the
    caller may retry the same request after that delay.
    """

    status: ClassVar[str] = "UNKNOWN"
    reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after_ms = retry_after_ms

    @classmethod
    def from_details(
        cls,
        message: str,
        metadata: Mapping[str, str],
        retry_after_ms: int | None = None,
    ) -> LogStoreError:
        """The error rebuilt from a status: its message, ErrorInfo metadata and RetryInfo."""
        return cls(message, metadata=metadata, retry_after_ms=retry_after_ms)


class InvalidArgumentError(LogStoreError, ValueError):
    """A request or call argument is malformed; nothing was changed."""

    status = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class InvalidRequestError(InvalidArgumentError):
    """The request bytes could not be parsed as the method's request message."""

    reason = "INVALID_REQUEST"


class InvalidTopicNameError(InvalidArgumentError):
    """A topic name breaks Kafka's rules or uses the reserved ``__`` prefix."""

    reason = "INVALID_TOPIC_NAME"


class InvalidConfigError(InvalidArgumentError):
    """An unknown configuration key or a value outside its allowed range."""

    reason = "INVALID_CONFIG"


class InvalidBatchError(InvalidArgumentError):
    """An empty, malformed or oversized batch, or one whose CRC does not match."""

    reason = "INVALID_BATCH"


class NotFoundError(LogStoreError, LookupError):
    """Something named does not exist."""

    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class UnknownTopicError(NotFoundError):
    """The topic does not exist."""

    reason = "UNKNOWN_TOPIC"


class UnknownPartitionError(NotFoundError):
    """The topic exists but has no such partition."""

    reason = "UNKNOWN_PARTITION"


class TopicExistsError(LogStoreError):
    """CreateTopic of a topic that already exists."""

    status = "ALREADY_EXISTS"
    reason = "TOPIC_ALREADY_EXISTS"


class OffsetOutOfRangeError(LogStoreError, IndexError):
    """An offset below the log start offset or above the log end offset.

    ``log_start_offset`` and ``log_end_offset`` give the valid range (-1 when
    unknown); on the wire they are the metadata keys of the same names.
    """

    status = "OUT_OF_RANGE"
    reason = "OFFSET_OUT_OF_RANGE"

    def __init__(
        self,
        message: str,
        log_start_offset: int = -1,
        log_end_offset: int = -1,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        md = dict(metadata or {})
        md["log_start_offset"] = str(log_start_offset)
        md["log_end_offset"] = str(log_end_offset)
        super().__init__(message, metadata=md, retry_after_ms=retry_after_ms)
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset

    @classmethod
    def from_details(
        cls,
        message: str,
        metadata: Mapping[str, str],
        retry_after_ms: int | None = None,
    ) -> LogStoreError:
        return cls(
            message,
            _int_or(metadata.get("log_start_offset"), -1),
            _int_or(metadata.get("log_end_offset"), -1),
            metadata=metadata,
            retry_after_ms=retry_after_ms,
        )


class FailedPreconditionError(LogStoreError):
    """The request is well-formed but the current state forbids it."""

    status = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class OutOfOrderSequenceError(FailedPreconditionError):
    """An idempotent producer's sequence number skips ahead (records lost)."""

    reason = "OUT_OF_ORDER_SEQUENCE_NUMBER"


class InvalidProducerEpochError(FailedPreconditionError):
    """An idempotent producer's epoch is older than the current one (fenced)."""

    reason = "INVALID_PRODUCER_EPOCH"


class UnknownProducerIdError(FailedPreconditionError):
    """The producer id was never issued or has expired; call InitProducer again."""

    reason = "UNKNOWN_PRODUCER_ID"


class CorruptRecordError(LogStoreError):
    """Stored bytes fail their CRC or framing checks; they are never served."""

    status = "DATA_LOSS"
    reason = "CORRUPT_RECORD"


class StorageError(LogStoreError, OSError):
    """An I/O error of the data directory (EIO and the like).

    Built like an ``OSError`` (``StorageError(errno, strerror)`` or from a
    message alone); the errno's name (``"EIO"``) is the metadata key ``errno``.
    """

    status = "INTERNAL"
    reason = "STORAGE_ERROR"

    def __init__(
        self,
        *args: object,
        metadata: Mapping[str, str] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        OSError.__init__(self, *args)
        self.metadata = dict(metadata or {})
        if isinstance(self.errno, int) and self.errno in errno.errorcode:
            self.metadata.setdefault("errno", errno.errorcode[self.errno])
        self.retry_after_ms = retry_after_ms


class DiskFullError(StorageError):
    """ENOSPC: the disk is full. Nothing half-written is served; retry later."""

    status = "RESOURCE_EXHAUSTED"
    reason = "DISK_FULL"


class DirectoryInUseError(StorageError):
    """Another process holds the data directory's lock."""

    status = "FAILED_PRECONDITION"
    reason = "DIRECTORY_IN_USE"


class CatalogError(StorageError):
    """``topics.json`` is missing, damaged, or does not list partition
    directories that hold data; the store refuses to open rather than delete
    anything (rebuild it with ``Store.open(..., rebuild_catalog=True)``)."""

    status = "FAILED_PRECONDITION"
    reason = "CATALOG_ERROR"


class StoreClosedError(LogStoreError):
    """The store (or a producer or consumer) is closed."""

    status = "UNAVAILABLE"
    reason = "STORE_CLOSED"


class ResourceExhaustedError(LogStoreError):
    """A limit of the broker was reached; retry after ``retry_after_ms``."""

    status = "RESOURCE_EXHAUSTED"
    reason = "LIMIT_REACHED"

    def __init__(
        self,
        message: str,
        retry_after_ms: int | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, retry_after_ms=retry_after_ms)


class BrokerUnavailableError(LogStoreError):
    """The broker cannot be reached or is shutting down (client side)."""

    status = "UNAVAILABLE"
    reason = "BROKER_UNAVAILABLE"


class BrokerShuttingDownError(BrokerUnavailableError):
    """The broker is shutting down; retry on its restart (or another broker)."""

    reason = "BROKER_SHUTTING_DOWN"


class DeadlineExceededError(LogStoreError, TimeoutError):
    """A deadline passed before the operation completed (client side)."""

    status = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class InternalError(LogStoreError):
    """The broker failed in a way the caller cannot fix (client side)."""

    status = "INTERNAL"
    reason = "INTERNAL"


def _int_or(text: str | None, default: int) -> int:
    # ASCII digits only: int() would also take "١٢" or " 12 ".
    if text is None or re.fullmatch(r"-?[0-9]{1,19}", text, re.ASCII) is None:
        return default
    return int(text)


# Consumer-group coordinator errors. ``reason`` is the stable machine-readable
# word the broker puts in the status details (Kafka's error names), so a client
# reacts without parsing the message.


class GroupIdNotFoundError(NotFoundError):
    """The consumer group does not exist (describe, delete)."""

    reason = "GROUP_ID_NOT_FOUND"


class UnknownMemberIdError(FailedPreconditionError):
    """The group has no member with this id (expired, left, or fenced): rejoin with epoch 0."""

    reason = "UNKNOWN_MEMBER_ID"


class FencedMemberEpochError(FailedPreconditionError):
    """The member epoch is not one the coordinator accepts (a zombie): rejoin with epoch 0."""

    reason = "FENCED_MEMBER_EPOCH"


class StaleMemberEpochError(FailedPreconditionError):
    """An offset commit carries an older member epoch: heartbeat, then commit again."""

    reason = "STALE_MEMBER_EPOCH"


class PartitionNotAssignedError(FailedPreconditionError):
    """An offset commit names a partition the member does not own; nothing was committed."""

    reason = "PARTITION_NOT_ASSIGNED"


class GroupNotEmptyError(FailedPreconditionError):
    """Delete group or reset offsets while the group still has members."""

    reason = "NON_EMPTY_GROUP"


class GroupMaxSizeReachedError(ResourceExhaustedError):
    """A join would exceed ``max_members_per_group``; the message says the limit."""

    reason = "GROUP_MAX_SIZE_REACHED"


class TooManyGroupsError(ResourceExhaustedError):
    """A join would create a group beyond ``max_groups``; the message says the limit."""

    reason = "MAX_GROUPS_REACHED"


class TooManyCommittedPartitionsError(ResourceExhaustedError):
    """A commit would keep more than ``max_committed_partitions_per_group`` offsets."""

    reason = "MAX_COMMITTED_PARTITIONS"


class InvalidGroupRequestError(InvalidArgumentError):
    """A group request breaks a documented limit or rule (ids, subscription, metadata size)."""

    reason = "INVALID_GROUP_REQUEST"


# Share-group (work queue) errors (share.proto's reason table).


class GroupAlreadyExistsError(LogStoreError):
    """CreateShareGroup of a group that exists with another config."""

    status = "ALREADY_EXISTS"
    reason = "GROUP_ALREADY_EXISTS"


class InvalidRecordStateError(FailedPreconditionError):
    """An acknowledgement of records the caller does not hold (lock expired,
    held by another consumer, never acquired, already acknowledged); sent per
    range in ``AcknowledgeResult``, nothing in that range was applied."""

    reason = "INVALID_RECORD_STATE"


class QueueLatencyExceededError(ResourceExhaustedError):
    """Produce to a topic of a share group whose estimated drain time is past
    its ``max_queue_latency_ms``; retry after ``retry_after_ms``."""

    reason = "QUEUE_LATENCY_EXCEEDED"


# Security errors (logstore.security, the broker's one authorization check).


class AuthenticationError(LogStoreError):
    """The call carries no valid credentials (no token, an unknown or deleted
    token, no client certificate under mutual TLS); the message says how to
    authenticate and never repeats the token."""

    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class AuthorizationError(LogStoreError):
    """The principal may not do this operation on this resource (an ACL)."""

    status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class UserExistsError(LogStoreError):
    """``logctl users create`` of a name that exists."""

    status = "ALREADY_EXISTS"
    reason = "USER_ALREADY_EXISTS"


class UnknownUserError(NotFoundError):
    """``logctl users delete`` of a name that does not exist."""

    reason = "UNKNOWN_USER"


class QuotaExceededError(ResourceExhaustedError):
    """The principal is over its produce or fetch byte rate; retry after
    ``retry_after_ms``, which brings it back under the rate."""

    reason = "QUOTA_EXCEEDED"


def _declared_reasons() -> dict[str, type[LogStoreError]]:
    """Every class that declares its own ``reason``, by reason.

    A subclass without a ``reason`` of its own is sent with its parent's and
    rebuilt by the client as the parent (or by status code when the codes
    differ); a test requires every class to declare one.
    """
    table: dict[str, type[LogStoreError]] = {}
    pending: list[type[LogStoreError]] = [LogStoreError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "reason" in vars(cls):
            assert cls.reason not in table, f"reason {cls.reason} declared twice"
            table[cls.reason] = cls
    return table


#: The one table from ``ErrorInfo.reason`` to the class the client rebuilds.
BY_REASON: Final[Mapping[str, type[LogStoreError]]] = _declared_reasons()


__all__ = [
    "BY_REASON",
    "ERROR_DOMAIN",
    "BrokerShuttingDownError",
    "BrokerUnavailableError",
    "CatalogError",
    "CorruptRecordError",
    "DeadlineExceededError",
    "DirectoryInUseError",
    "DiskFullError",
    "FailedPreconditionError",
    "FencedMemberEpochError",
    "GroupAlreadyExistsError",
    "GroupIdNotFoundError",
    "GroupMaxSizeReachedError",
    "GroupNotEmptyError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidBatchError",
    "InvalidConfigError",
    "InvalidGroupRequestError",
    "InvalidProducerEpochError",
    "InvalidRecordStateError",
    "InvalidRequestError",
    "InvalidTopicNameError",
    "LogStoreError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionNotAssignedError",
    "QueueLatencyExceededError",
    "ResourceExhaustedError",
    "StaleMemberEpochError",
    "StorageError",
    "StoreClosedError",
    "TooManyGroupsError",
    "TooManyCommittedPartitionsError",
    "TopicExistsError",
    "UnknownMemberIdError",
    "UnknownPartitionError",
    "UnknownProducerIdError",
    "UnknownTopicError",
]
