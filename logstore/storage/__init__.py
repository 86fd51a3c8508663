"""The storage engine: segments, partitions, the store (DESIGN.md, "Storage").

Usable alone (embedded mode, no server, no background thread)::

    from logstore import Store
    with Store.open("./data") as store:
        store.create_topic("events", partitions=3)
        first = store.append("events", 0, [b"v1", b"v2"])
        records = store.read("events", 0, offset=first)
"""

from logstore._types import OffsetAndTimestamp

from ._catalog import TopicInfo
from ._fs import FileSystem
from ._partition import AppendResult, FetchResult, PartitionLog
from ._ratelimit import RateLimitedLog
from ._store import PartitionInfo, Store, StoreStats

__all__ = [
    "AppendResult",
    "FetchResult",
    "FileSystem",
    "OffsetAndTimestamp",
    "PartitionInfo",
    "PartitionLog",
    "RateLimitedLog",
    "Store",
    "StoreStats",
    "TopicInfo",
]
