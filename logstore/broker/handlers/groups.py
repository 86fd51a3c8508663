"""Groups RPCs (``proto/logstore/v1/groups.proto``): decode, one coordinator call, encode.

Each handler turns the request into arguments of one
:class:`~logstore.coordinator.Coordinator` call made through
:class:`~logstore.broker._groups_runtime.GroupsRuntime` (serialized; records
appended and fsynced before the reply) and encodes the reply. The only store
work here is what the coordinator must not do itself: end offsets and lag for
DescribeGroup, and resolving a reset's target offsets (clamped to [log start,
high watermark]) before the coordinator call, in the I/O pool. Coordinator
errors (typed :mod:`logstore.errors` classes with their reasons) go up to the
one status boundary in the service wrapper; fenced and unknown-member errors
are also counted (``logstore_group_fenced_requests``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from logstore.coordinator import (
    EMPTY,
    LEAVE_EPOCH,
    RECONCILING,
    STABLE,
    STATIC_LEAVE_EPOCH,
    TopicPartition,
)
from logstore.errors import (
    FencedMemberEpochError,
    InvalidGroupRequestError,
    UnknownMemberIdError,
)
from logstore.v1 import groups_pb2 as gpb

from .._groups_runtime import group_lag
from .._runtime import Context, Runtime

if TYPE_CHECKING:
    from logstore.coordinator import Coordinator, GroupDescription

    from .._groups_runtime import GroupsRuntime

T = TypeVar("T")

_STATES = {
    EMPTY: gpb.GROUP_STATE_EMPTY,
    RECONCILING: gpb.GROUP_STATE_RECONCILING,
    STABLE: gpb.GROUP_STATE_STABLE,
}


def partition_set(tps: Iterable[TopicPartition]) -> gpb.PartitionSet:
    """``tps`` as a PartitionSet: topics sorted, partitions ascending."""
    by_topic: dict[str, list[int]] = {}
    for t, p in tps:
        by_topic.setdefault(t, []).append(p)
    return gpb.PartitionSet(
        topics=[
            gpb.TopicPartitions(topic=t, partitions=sorted(ps))
            for t, ps in sorted(by_topic.items())
        ]
    )


def _pairs(sets: Iterable[gpb.TopicPartitions]) -> list[TopicPartition]:
    return [(s.topic, p) for s in sets for p in s.partitions]


class GroupsHandlers:
    """The Groups service (consumer groups, KIP-848)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._store = runtime.store
        assert runtime.groups is not None, "Runtime.groups must be set before the handlers"
        self._groups: GroupsRuntime = runtime.groups
        self._fenced = runtime.metrics.group_fenced

    async def _call(self, what: Callable[[Coordinator, int], Any]) -> Any:
        try:
            return await self._groups.call(what)
        except (UnknownMemberIdError, FencedMemberEpochError) as exc:
            self._fenced.labels(exc.reason).inc()
            raise

    # ------------------------------------------------------------ members

    async def consumer_group_heartbeat(
        self, request: gpb.ConsumerGroupHeartbeatRequest, context: Context
    ) -> gpb.ConsumerGroupHeartbeatResponse:
        which = request.WhichOneof("subscription")
        topics = list(request.topic_names.names) if which == "topic_names" else None
        regex = request.topic_regex if which == "topic_regex" else None
        owned = _pairs(request.owned.topics) if request.HasField("owned") else None
        self._check_request_size(len(owned or ()))
        reply = await self._call(
            lambda c, now: c.heartbeat(
                request.group_id,
                request.member_id,
                request.member_epoch,
                now_ms=now,
                instance_id=request.instance_id if request.HasField("instance_id") else None,
                topics=topics,
                regex=regex,
                assignor=request.assignor if request.HasField("assignor") else None,
                owned=owned,
                rebalance_timeout_ms=request.rebalance_timeout_ms,
                client_id=request.client_id,
                host=_host(context, self._groups.config.max_host_length),
            )
        )
        return gpb.ConsumerGroupHeartbeatResponse(
            member_id=reply.member_id,
            member_epoch=reply.member_epoch,
            heartbeat_interval_ms=reply.heartbeat_interval_ms,
            assignment=partition_set(reply.assigned),
            revoking=partition_set(reply.revoking),
        )

    async def leave_group(
        self, request: gpb.LeaveGroupRequest, context: Context
    ) -> gpb.LeaveGroupResponse:
        epoch = STATIC_LEAVE_EPOCH if request.temporary else LEAVE_EPOCH
        if not request.member_id:
            raise InvalidGroupRequestError("member_id must be a non-empty string")
        await self._call(
            lambda c, now: c.heartbeat(request.group_id, request.member_id, epoch, now_ms=now)
        )
        return gpb.LeaveGroupResponse()

    def _check_request_size(self, n: int) -> None:
        limit = self._groups.config.max_partitions_per_request
        if n > limit:
            raise InvalidGroupRequestError(
                f"the request names {n} partitions; the limit is {limit} "
                "(max_partitions_per_request)"
            )

    # ------------------------------------------------------------ offsets

    async def offset_commit(
        self, request: gpb.OffsetCommitRequest, context: Context
    ) -> gpb.OffsetCommitResponse:
        self._check_request_size(len(request.partitions))
        offsets: dict[TopicPartition, tuple[int, str]] = {}
        for p in request.partitions:
            if (p.topic, p.partition) in offsets:
                raise InvalidGroupRequestError(
                    f"partition {p.topic}:{p.partition} is named twice in one commit"
                )
            offsets[(p.topic, p.partition)] = (p.offset, p.metadata)
        await self._call(
            lambda c, now: c.commit_offsets(
                request.group_id, request.member_id, request.member_epoch, offsets, now_ms=now
            )
        )
        return gpb.OffsetCommitResponse()

    async def offset_fetch(
        self, request: gpb.OffsetFetchRequest, context: Context
    ) -> gpb.OffsetFetchResponse:
        self._check_group_id(request.group_id)
        named = _pairs(request.partitions)
        self._check_request_size(len(named))
        whole = {s.topic for s in request.partitions if not s.partitions}

        def fetch(c: Coordinator) -> list[gpb.CommittedOffset]:
            out = []
            committed = c.fetch_offsets(request.group_id)
            if not request.partitions:
                wanted = sorted(committed)
            else:
                wanted = sorted(set(named) | {tp for tp in committed if tp[0] in whole})
            for tp in wanted:
                v = committed.get(tp)
                if v is None:
                    out.append(
                        gpb.CommittedOffset(
                            topic=tp[0], partition=tp[1], offset=-1, commit_timestamp_ms=-1
                        )
                    )
                else:
                    out.append(
                        gpb.CommittedOffset(
                            topic=tp[0],
                            partition=tp[1],
                            offset=v.offset,
                            metadata=v.metadata,
                            commit_timestamp_ms=v.commit_ms,
                        )
                    )
            return out

        return gpb.OffsetFetchResponse(offsets=await self._groups.read(fetch))

    def _check_group_id(self, group_id: str) -> None:
        limit = self._groups.config.max_group_id_length
        if not group_id or len(group_id) > limit:
            raise InvalidGroupRequestError(
                f"group id must be 1..{limit} characters (max_group_id_length), not {len(group_id)}"
            )

    # -------------------------------------------------------------- admin

    async def list_groups(
        self, request: gpb.ListGroupsRequest, context: Context
    ) -> gpb.ListGroupsResponse:
        listing = await self._groups.read(lambda c: c.list_groups())
        return gpb.ListGroupsResponse(
            groups=[
                gpb.GroupListing(
                    group_id=g.group_id, state=_STATES[g.state], member_count=g.member_count
                )
                for g in listing
            ]
        )

    async def describe_group(
        self, request: gpb.DescribeGroupRequest, context: Context
    ) -> gpb.DescribeGroupResponse:
        self._check_group_id(request.group_id)
        desc = await self._groups.read(lambda c: c.describe_group(request.group_id))
        lags = await self._rt.run_io(group_lag, self._store, desc)
        return gpb.DescribeGroupResponse(
            group_id=desc.group_id,
            state=_STATES[desc.state],
            group_epoch=desc.epoch,
            assignor=desc.assignor,
            members=[
                gpb.GroupMember(
                    member_id=m.member_id,
                    instance_id=m.instance_id,
                    client_id=m.client_id,
                    host=m.host,
                    member_epoch=m.member_epoch,
                    subscribed_topic_names=list(m.topics),
                    subscribed_topic_regex=m.regex,
                    assigned=partition_set(m.assigned),
                    revoking=partition_set(m.revoking),
                    target=partition_set(m.target),
                )
                for m in desc.members
            ],
            partitions=[
                gpb.PartitionLag(
                    topic=tp[0],
                    partition=tp[1],
                    member_id=owner,
                    committed_offset=committed,
                    log_end_offset=end,
                    lag_records=lag,
                    lag_ms=lag_ms,
                )
                for tp, (owner, committed, end, lag, lag_ms) in lags.items()
            ],
        )

    async def delete_group(
        self, request: gpb.DeleteGroupRequest, context: Context
    ) -> gpb.DeleteGroupResponse:
        self._check_group_id(request.group_id)
        await self._groups.call(lambda c, now: c.delete_group(request.group_id))
        return gpb.DeleteGroupResponse()

    async def reset_offsets(
        self, request: gpb.ResetOffsetsRequest, context: Context
    ) -> gpb.ResetOffsetsResponse:
        self._check_group_id(request.group_id)
        which = request.WhichOneof("to")
        if which is None:
            raise InvalidGroupRequestError(
                "say where to reset: position, offset, timestamp_ms or shift_by"
            )
        if which == "position" and request.position not in (
            gpb.RESET_POSITION_EARLIEST,
            gpb.RESET_POSITION_LATEST,
        ):
            raise InvalidGroupRequestError(
                f"position {request.position} is not EARLIEST (1) or LATEST (2)"
            )
        if which == "offset" and request.offset < 0:
            raise InvalidGroupRequestError(f"offset {request.offset} must be >= 0")
        self._check_request_size(sum(len(s.partitions) for s in request.partitions))
        # The group must exist (and its committed partitions are the default set).
        desc = await self._groups.read(lambda c: c.describe_group(request.group_id))
        tps = await self._rt.run_io(self._reset_partitions, request, desc)
        self._check_request_size(len(tps))
        bounds = await self._rt.run_io(self._bounds, request, tps)

        def resolve(tp: TopicPartition, current: int | None) -> int:
            start, end, at_time = bounds[tp]
            if which == "position":
                return start if request.position == gpb.RESET_POSITION_EARLIEST else end
            if which == "timestamp_ms":
                return end if at_time is None else at_time
            if which == "offset":
                target = request.offset
            else:
                target = (start if current is None else current) + request.shift_by
            return min(max(target, start), end)

        plan = await self._groups.call(
            lambda c, now: c.reset_offsets(
                request.group_id, tps, resolve, now_ms=now, dry_run=request.dry_run
            )
        )
        return gpb.ResetOffsetsResponse(
            partitions=[
                gpb.ResetPartition(
                    topic=e.topic,
                    partition=e.partition,
                    previous_offset=-1 if e.current is None else e.current,
                    new_offset=e.new,
                )
                for e in plan
            ],
            applied=not request.dry_run,
        )

    def _reset_partitions(
        self, request: gpb.ResetOffsetsRequest, desc: GroupDescription
    ) -> list[TopicPartition]:
        if not request.partitions:
            return sorted(desc.offsets)
        out: set[TopicPartition] = set()
        for s in request.partitions:
            info = self._store.topic(s.topic)  # UnknownTopicError: NOT_FOUND
            for p in s.partitions or range(info.partitions):
                self._store.partition(s.topic, p)  # UnknownPartitionError: NOT_FOUND
                out.add((s.topic, p))
        return sorted(out)

    def _bounds(
        self, request: gpb.ResetOffsetsRequest, tps: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int, int | None]]:
        out: dict[TopicPartition, tuple[int, int, int | None]] = {}
        for t, p in tps:
            start, _ = self._store.offsets(t, p)
            end = self._store.high_watermark(t, p)
            at = None
            if request.WhichOneof("to") == "timestamp_ms":
                found = self._store.offset_for_time(t, p, request.timestamp_ms)
                at = None if found is None else found.offset
            out[(t, p)] = (start, end, at)
        return out


def _host(context: Context, limit: int) -> str:
    peer = context.peer() or ""
    return peer[:limit]
