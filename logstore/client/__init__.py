"""The Python client of a logstore broker: Producer, Consumer, GroupConsumer, Admin.

Uses only the public gRPC API (``logstore.v1``), the wire format
(``logstore.wire``) and the one exception hierarchy (``logstore.errors``);
it never imports the broker or the storage engine.
"""

from logstore.wire import ColumnBatch

from ._address import check_address
from ._admin import (
    Admin,
    GroupDescription,
    GroupListing,
    GroupMemberDescription,
    GroupPartitionLag,
    OffsetReset,
    PartitionDescription,
    PartitionOffset,
    ResetPlan,
    TopicDescription,
    TopicInfo,
)
from ._consumer import Consumer, TopicPartition
from ._group_consumer import GroupConsumer
from .producer import Producer, RecordHandle, SendResult, parse_acks

__all__ = [
    "Admin",
    "ColumnBatch",
    "Consumer",
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
    "ResetPlan",
    "SendResult",
    "TopicDescription",
    "TopicInfo",
    "TopicPartition",
    "check_address",
    "parse_acks",
]
