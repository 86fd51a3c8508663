"""The Python client of a logstore broker: Producer, Consumer, Admin.

Uses only the public gRPC API (``logstore.v1``), the wire format
(``logstore.wire``) and the one exception hierarchy (``logstore.errors``);
it never imports the broker or the storage engine.
"""

from ._address import check_address
from ._admin import Admin, PartitionDescription, PartitionOffset, TopicDescription, TopicInfo
from ._columns import ColumnBatch
from ._consumer import Consumer, TopicPartition
from .producer import Producer, RecordHandle, SendResult, parse_acks

__all__ = [
    "Admin",
    "ColumnBatch",
    "Consumer",
    "PartitionDescription",
    "PartitionOffset",
    "Producer",
    "RecordHandle",
    "SendResult",
    "TopicDescription",
    "TopicInfo",
    "TopicPartition",
    "check_address",
    "parse_acks",
]
