"""Admin RPCs: one store call each, run in the I/O pool.

Thin by design (CONVENTIONS.md 6): decode, one call into the store, encode.
Domain errors propagate to the one status boundary in ``LogStoreService.wrap``.
CreateTopic, CreatePartitions and DeleteTopic then tell the coordinator
(``Runtime.topics_changed``), so group targets follow without member restarts.
Topic configs are checked against this broker's ``max_request_bytes`` (a
topic's ``max_batch_bytes`` + 64 KiB must fit in one request).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from logstore.config import MAX_PARTITIONS, TopicConfig
from logstore.errors import InvalidArgumentError, InvalidConfigError
from logstore.v1 import logstore_pb2 as pb

from .._runtime import Context, Runtime
from ._common import check_client_writable, check_enum

if TYPE_CHECKING:
    from logstore.storage import TopicInfo

log = logging.getLogger("logstore.broker")


class AdminHandlers:
    """Topic, partition, record and offset administration."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._store = runtime.store
        self._config = runtime.config
        self.run_io = runtime.run_io

    def _check_topic_config(self, config: TopicConfig) -> None:
        limit = self._config.max_batch_bytes_limit
        if config.max_batch_bytes > limit:
            raise InvalidConfigError(
                f"max_batch_bytes {config.max_batch_bytes} is above this broker's limit {limit} "
                "(max_request_bytes - 64 KiB); raise the broker's max_request_bytes first"
            )

    async def create_topic(
        self, request: pb.CreateTopicRequest, context: Context
    ) -> pb.CreateTopicResponse:
        config = dict(request.config)
        self._check_topic_config(TopicConfig.from_mapping(config))
        # No default: 0 is what a client that forgot the field sends, and
        # silently making 1 partition is not what it asked for.
        if not 1 <= request.partitions <= MAX_PARTITIONS:
            raise InvalidArgumentError(
                f"partitions must be in 1..{MAX_PARTITIONS}, got {request.partitions}"
            )
        info = await self.run_io(self._store.create_topic, request.name, request.partitions, config)
        log.info(
            "topic created",
            extra={"fields": {"topic": info.name, "partitions": info.partitions}},
        )
        await self._rt.topics_changed()
        return pb.CreateTopicResponse(topic=_topic_pb(info))

    async def delete_topic(
        self, request: pb.DeleteTopicRequest, context: Context
    ) -> pb.DeleteTopicResponse:
        check_client_writable(request.name)
        await self.run_io(self._store.delete_topic, request.name)
        log.info("topic deleted", extra={"fields": {"topic": request.name}})
        await self._rt.topics_changed()
        return pb.DeleteTopicResponse()

    async def list_topics(
        self, request: pb.ListTopicsRequest, context: Context
    ) -> pb.ListTopicsResponse:
        topics = await self.run_io(self._store.topics)
        return pb.ListTopicsResponse(
            topics=[_topic_pb(t) for t in topics if not t.name.startswith("__")]
        )

    def _describe_blocking(self, name: str) -> pb.DescribeTopicResponse:
        info = self._store.topic(name)
        parts = []
        for p in range(info.partitions):
            pi = self._store.partition_info(name, p)
            parts.append(
                pb.PartitionInfo(
                    partition=pi.partition,
                    log_start_offset=pi.log_start_offset,
                    log_end_offset=pi.log_end_offset,
                    size_bytes=pi.size_bytes,
                    segment_count=pi.segment_count,
                    high_watermark=pi.high_watermark,
                )
            )
        return pb.DescribeTopicResponse(topic=_topic_pb(info), partitions=parts)

    async def describe_topic(
        self, request: pb.DescribeTopicRequest, context: Context
    ) -> pb.DescribeTopicResponse:
        return await self.run_io(self._describe_blocking, request.name)

    async def alter_topic_config(
        self, request: pb.AlterTopicConfigRequest, context: Context
    ) -> pb.AlterTopicConfigResponse:
        check_client_writable(request.name)
        current = self._store.topic(request.name)
        changes = dict(request.set)
        reset = list(request.reset)
        self._check_topic_config(current.config.with_changes(changes, reset))
        info = await self.run_io(self._store.alter_topic_config, request.name, changes, reset)
        log.info(
            "topic config altered",
            extra={"fields": {"topic": info.name, "set": changes, "reset": reset}},
        )
        return pb.AlterTopicConfigResponse(topic=_topic_pb(info))

    async def create_partitions(
        self, request: pb.CreatePartitionsRequest, context: Context
    ) -> pb.CreatePartitionsResponse:
        check_client_writable(request.name)
        info = await self.run_io(self._store.create_partitions, request.name, request.partitions)
        log.info(
            "partitions added",
            extra={"fields": {"topic": info.name, "partitions": info.partitions}},
        )
        await self._rt.topics_changed()
        return pb.CreatePartitionsResponse(topic=_topic_pb(info))

    async def delete_records(
        self, request: pb.DeleteRecordsRequest, context: Context
    ) -> pb.DeleteRecordsResponse:
        check_client_writable(request.topic)
        start = await self.run_io(
            self._store.delete_records, request.topic, request.partition, request.before_offset
        )
        log.info(
            "records deleted",
            extra={
                "fields": {
                    "topic": request.topic,
                    "partition": request.partition,
                    "log_start_offset": start,
                }
            },
        )
        return pb.DeleteRecordsResponse(log_start_offset=start)

    def _list_offsets_blocking(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        info = self._store.topic(request.topic)
        partitions = list(request.partitions) or list(range(info.partitions))
        out = []
        which = request.WhichOneof("spec")
        if which == "position":
            check_enum(pb.OffsetSpec, "position", request.position)
        for p in partitions:
            plog = self._store.partition(info.name, p)  # the store's error if none
            # LATEST is the high watermark: readers are served up to it.
            start, end = plog.log_start_offset, plog.high_watermark
            if which == "timestamp_ms":
                # One lookup gives both the offset and that record's timestamp.
                found = self._store.offset_for_time(info.name, p, request.timestamp_ms)
                if found is None:
                    out.append(pb.PartitionOffset(partition=p, offset=end, found=False))
                    continue
                offset, ts = found
                out.append(
                    pb.PartitionOffset(partition=p, offset=offset, timestamp_ms=ts, found=True)
                )
            elif which == "position" and request.position == pb.OFFSET_SPEC_EARLIEST:
                out.append(pb.PartitionOffset(partition=p, offset=start, found=True))
            else:
                out.append(pb.PartitionOffset(partition=p, offset=end, found=True))
        return pb.ListOffsetsResponse(offsets=out)

    async def list_offsets(
        self, request: pb.ListOffsetsRequest, context: Context
    ) -> pb.ListOffsetsResponse:
        return await self.run_io(self._list_offsets_blocking, request)


def _topic_pb(info: TopicInfo) -> pb.TopicInfo:
    return pb.TopicInfo(name=info.name, partitions=info.partitions, config=info.config.to_strings())
