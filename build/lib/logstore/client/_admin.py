"""Admin: every administrative RPC of the broker, returning plain dataclasses.

Errors are the broker's, translated once in ``_rpc.translate`` (message and
status kept): ``TopicExistsError``, ``NotFoundError``, ``InvalidArgumentError``,
``OffsetOutOfRangeError``, ``BrokerUnavailableError`` ("cannot reach broker at
HOST:PORT") and so on. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from logstore.v1 import logstore_pb2

from ._rpc import Connection


@dataclass(frozen=True)
class TopicInfo:
    """A topic: its name, partition count and every config key with its value."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionDescription:
    """One partition of ``describe_topic``: its offset range, bytes and segment count."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    segment_count: int


@dataclass(frozen=True)
class TopicDescription:
    """``describe_topic``'s answer: the topic and its partitions, in partition order."""

    topic: TopicInfo
    partitions: list[PartitionDescription]


@dataclass(frozen=True)
class PartitionOffset:
    """One partition of ``list_offsets``: the offset, and for a time, whether a record
    at or after it was ``found`` (else ``offset`` is the end) and its ``timestamp_ms``."""

    partition: int
    offset: int
    timestamp_ms: int
    found: bool


def _info(t: logstore_pb2.TopicInfo) -> TopicInfo:
    return TopicInfo(t.name, t.partitions, dict(sorted(t.config.items())))


class Admin:
    """Topic administration and offsets over one connection."""

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:7070",
        *,
        connect_timeout_ms: int = 5_000,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self._conn = Connection(bootstrap, connect_timeout_ms)
        self.address = bootstrap
        self._timeout_s = request_timeout_ms / 1000

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str | int] | None = None
    ) -> TopicInfo:
        req = logstore_pb2.CreateTopicRequest(
            name=name,
            partitions=partitions,
            config={k: str(v) for k, v in (config or {}).items()},
        )
        return _info(self._conn.call(self._conn.stub.CreateTopic, req, self._timeout_s).topic)

    def delete_topic(self, name: str) -> None:
        req = logstore_pb2.DeleteTopicRequest(name=name)
        self._conn.call(self._conn.stub.DeleteTopic, req, self._timeout_s)

    def list_topics(self) -> list[TopicInfo]:
        req = logstore_pb2.ListTopicsRequest()
        resp = self._conn.call(self._conn.stub.ListTopics, req, self._timeout_s)
        return sorted((_info(t) for t in resp.topics), key=lambda t: t.name)

    def describe_topic(self, name: str) -> TopicDescription:
        req = logstore_pb2.DescribeTopicRequest(name=name)
        resp = self._conn.call(self._conn.stub.DescribeTopic, req, self._timeout_s)
        parts = [
            PartitionDescription(
                p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes, p.segment_count
            )
            for p in sorted(resp.partitions, key=lambda p: p.partition)
        ]
        return TopicDescription(_info(resp.topic), parts)

    def alter_topic_config(
        self,
        name: str,
        set: Mapping[str, str | int] | None = None,
        reset: Iterable[str] = (),
    ) -> TopicInfo:
        req = logstore_pb2.AlterTopicConfigRequest(
            name=name, set={k: str(v) for k, v in (set or {}).items()}, reset=list(reset)
        )
        return _info(self._conn.call(self._conn.stub.AlterTopicConfig, req, self._timeout_s).topic)

    def create_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Increase ``name`` to ``partitions`` partitions in total."""
        req = logstore_pb2.CreatePartitionsRequest(name=name, partitions=partitions)
        return _info(self._conn.call(self._conn.stub.CreatePartitions, req, self._timeout_s).topic)

    def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        """Advance the log start offset; returns the new one."""
        req = logstore_pb2.DeleteRecordsRequest(
            topic=topic, partition=partition, before_offset=before_offset
        )
        resp = self._conn.call(self._conn.stub.DeleteRecords, req, self._timeout_s)
        return int(resp.log_start_offset)

    def list_offsets(
        self, topic: str, spec: str | int = "latest", partitions: Iterable[int] = ()
    ) -> list[PartitionOffset]:
        """``"earliest"``, ``"latest"`` or a timestamp in ms, per partition (all by default)."""
        req = logstore_pb2.ListOffsetsRequest(topic=topic, partitions=list(partitions))
        if spec == "earliest":
            req.position = logstore_pb2.OFFSET_SPEC_EARLIEST
        elif spec == "latest":
            req.position = logstore_pb2.OFFSET_SPEC_LATEST
        else:
            req.timestamp_ms = int(spec)
        resp = self._conn.call(self._conn.stub.ListOffsets, req, self._timeout_s)
        return sorted(
            (PartitionOffset(o.partition, o.offset, o.timestamp_ms, o.found) for o in resp.offsets),
            key=lambda o: o.partition,
        )

    def init_producer(self) -> tuple[int, int]:
        """A new idempotent producer ``(id, epoch)``."""
        req = logstore_pb2.InitProducerRequest()
        resp = self._conn.call(self._conn.stub.InitProducer, req, self._timeout_s)
        return resp.producer_id, resp.producer_epoch

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
