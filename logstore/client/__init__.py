"""The Python client of a logstore broker: Producer, Consumer, GroupConsumer,
ShareConsumer (work queues), Worker (tasks over a share group), Admin.

Uses only the public gRPC API (``logstore.v1``), the wire format
(``logstore.wire``) and the one exception hierarchy (``logstore.errors``);
it never imports the broker or the storage engine.

Delayed delivery: ``Producer.send(..., delay_ms=...)`` or ``deliver_at_ms=...``
sets the record header ``DELIVER_AT_HEADER`` (``logstore-deliver-at-ms``,
ASCII decimal epoch ms) that share consumers honour; ``MAX_DELAY_MS`` is the
longest delay the producer accepts.

Compression: ``Producer(compression=..., compression_threads=...)`` compresses
up to ``compression_threads`` batches at once (``DEFAULT_COMPRESSION_THREADS``,
2), at most ``MAX_COMPRESSION_THREADS`` (16).
"""

from logstore.wire import ColumnBatch

from ._address import check_address
from ._admin import (
    AclBinding,
    Admin,
    GroupDescription,
    GroupListing,
    GroupMemberDescription,
    GroupPartitionLag,
    OffsetReset,
    PartitionDescription,
    PartitionOffset,
    QuotaListing,
    QuotaOverride,
    RedriveResult,
    ResetPlan,
    ShareGroupDescription,
    ShareGroupListing,
    ShareGroupSettings,
    ShareMemberDescription,
    SharePartitionDescription,
    TopicDescription,
    TopicInfo,
    UserListing,
)
from ._consumer import Consumer, TopicPartition
from ._credentials import Credentials
from ._group_consumer import GroupConsumer
from ._share_consumer import AckFailure, ShareConsumer, ShareMessage
from ._worker import Reject, Worker
from .producer import (
    DEFAULT_COMPRESSION_THREADS,
    DELIVER_AT_HEADER,
    MAX_COMPRESSION_THREADS,
    MAX_DELAY_MS,
    Producer,
    RecordHandle,
    SendResult,
    parse_acks,
    resolve_deliver_at,
)

__all__ = [
    "AclBinding",
    "QuotaListing",
    "QuotaOverride",
    "UserListing",
    "DELIVER_AT_HEADER",
    "DEFAULT_COMPRESSION_THREADS",
    "MAX_COMPRESSION_THREADS",
    "MAX_DELAY_MS",
    "AckFailure",
    "Admin",
    "ColumnBatch",
    "Consumer",
    "Credentials",
    "GroupConsumer",
    "GroupDescription",
    "GroupListing",
    "GroupMemberDescription",
    "GroupPartitionLag",
    "OffsetReset",
    "PartitionDescription",
    "PartitionOffset",
    "Producer",
    "RecordHandle",
    "RedriveResult",
    "Reject",
    "ResetPlan",
    "SendResult",
    "ShareConsumer",
    "ShareGroupDescription",
    "ShareGroupListing",
    "ShareGroupSettings",
    "ShareMemberDescription",
    "ShareMessage",
    "SharePartitionDescription",
    "TopicDescription",
    "TopicInfo",
    "TopicPartition",
    "Worker",
    "check_address",
    "parse_acks",
    "resolve_deliver_at",
]
