"""Admin: every administrative RPC of the broker, returning plain dataclasses.

Errors are the broker's, translated once in ``_rpc.translate`` (message and
status kept): ``TopicExistsError``, ``NotFoundError``, ``InvalidArgumentError``,
``OffsetOutOfRangeError``, ``BrokerUnavailableError`` ("cannot reach broker at
HOST:PORT") and so on. Thread-safe.

Consumer groups (the ``Groups`` service, groups.proto): ``list_groups``,
``describe_group`` (state, epoch, assignor, members, per partition the
committed offset, end offset and lag in records and ms), ``delete_group``
(only an empty group) and ``reset_offsets`` (only an empty group; a dry run
returns the plan and commits nothing). Their errors: ``GroupIdNotFoundError``,
``GroupNotEmptyError``, ``UnknownTopicError``, ``UnknownPartitionError``,
``InvalidGroupRequestError``; a reset spec this client cannot send is an
``InvalidArgumentError`` raised before any request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from logstore import errors
from logstore.v1 import groups_pb2, groups_pb2_grpc, logstore_pb2

from ._consumer import TopicPartition
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


@dataclass(frozen=True)
class GroupListing:
    """One group of ``list_groups``: its id, state (``empty``, ``reconciling``,
    ``stable``) and member count (static members away included)."""

    group_id: str
    state: str
    member_count: int


@dataclass(frozen=True)
class GroupMemberDescription:
    """A member of ``describe_group``: ids, host (the peer address of its heartbeats),
    epoch (-2 for a static member away), subscription, and its partitions: ``assigned``
    (owned now), ``revoking`` (told to release) and ``target`` (what the assignor wants)."""

    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    member_epoch: int
    subscribed_topics: list[str]
    subscribed_regex: str | None
    assigned: list[TopicPartition]
    revoking: list[TopicPartition]
    target: list[TopicPartition]


@dataclass(frozen=True)
class GroupPartitionLag:
    """The group's progress on one partition. ``committed_offset`` is None when the
    group has committed none; ``lag_records`` counts offsets from it (from the log start
    when None) to the end; ``lag_ms`` is the age of the oldest uncommitted record."""

    topic: str
    partition: int
    member_id: str | None
    committed_offset: int | None
    log_end_offset: int
    lag_records: int
    lag_ms: int

    @property
    def lag_seconds(self) -> float:
        """``lag_ms`` in seconds."""
        return self.lag_ms / 1000


@dataclass(frozen=True)
class GroupDescription:
    """``describe_group``'s answer: members sorted by id, partitions by topic and number."""

    group_id: str
    state: str
    group_epoch: int
    assignor: str
    members: list[GroupMemberDescription]
    partitions: list[GroupPartitionLag]


@dataclass(frozen=True)
class OffsetReset:
    """One partition of a reset plan: ``previous_offset`` None when nothing was committed."""

    topic: str
    partition: int
    previous_offset: int | None
    new_offset: int


@dataclass(frozen=True)
class ResetPlan:
    """``reset_offsets``' answer: per partition old -> new; ``applied`` False on a dry run."""

    partitions: list[OffsetReset]
    applied: bool


#: The reset specs: a position, or a kind with its number (offset, time in ms, shift).
ResetSpec = str | tuple[str, int]

_STATES: dict[int, str] = {
    groups_pb2.GROUP_STATE_EMPTY: "empty",
    groups_pb2.GROUP_STATE_RECONCILING: "reconciling",
    groups_pb2.GROUP_STATE_STABLE: "stable",
}


def _state(value: int) -> str:
    return _STATES.get(value, "unknown")


def _tps(s: groups_pb2.PartitionSet) -> list[TopicPartition]:
    return sorted(TopicPartition(t.topic, p) for t in s.topics for p in t.partitions)


def _reset_request(
    group_id: str,
    spec: ResetSpec,
    topic: str | None,
    partitions: Iterable[int] | None,
    dry_run: bool,
) -> groups_pb2.ResetOffsetsRequest:
    """The request for a spec, or InvalidArgumentError naming the accepted forms."""
    req = groups_pb2.ResetOffsetsRequest(group_id=group_id, dry_run=dry_run)
    parts = sorted(set(partitions)) if partitions is not None else []
    if topic is None and parts:
        raise errors.InvalidArgumentError("reset_offsets: partitions need a topic")
    if any(p < 0 for p in parts):
        raise errors.InvalidArgumentError(f"reset_offsets: negative partition in {parts}")
    if topic is not None:
        req.partitions.append(groups_pb2.TopicPartitions(topic=topic, partitions=parts))
    forms = "'earliest', 'latest', ('offset', N), ('time', MS) or ('shift', N)"
    if spec == "earliest":
        req.position = groups_pb2.RESET_POSITION_EARLIEST
    elif spec == "latest":
        req.position = groups_pb2.RESET_POSITION_LATEST
    elif isinstance(spec, tuple) and len(spec) == 2 and type(spec[1]) is int:
        kind, n = spec
        if kind == "offset":
            if n < 0:
                raise errors.InvalidArgumentError(f"reset_offsets: offset {n} is negative")
            req.offset = n
        elif kind == "time":
            req.timestamp_ms = n
        elif kind == "shift":
            req.shift_by = n
        else:
            raise errors.InvalidArgumentError(f"reset_offsets: bad spec {spec!r}: use {forms}")
    else:
        raise errors.InvalidArgumentError(f"reset_offsets: bad spec {spec!r}: use {forms}")
    return req


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
        self._groups = groups_pb2_grpc.GroupsStub(self._conn.channel)
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

    # -- consumer groups ---------------------------------------------------------

    def list_groups(self) -> list[GroupListing]:
        """Every group, sorted by id."""
        resp = self._conn.call(
            self._groups.ListGroups, groups_pb2.ListGroupsRequest(), self._timeout_s
        )
        return sorted(
            (GroupListing(g.group_id, _state(g.state), g.member_count) for g in resp.groups),
            key=lambda g: g.group_id,
        )

    def describe_group(self, group_id: str) -> GroupDescription:
        """State, members and per-partition lag; GroupIdNotFoundError for an unknown group."""
        req = groups_pb2.DescribeGroupRequest(group_id=group_id)
        r = self._conn.call(self._groups.DescribeGroup, req, self._timeout_s)
        members = [
            GroupMemberDescription(
                member_id=m.member_id,
                instance_id=m.instance_id if m.HasField("instance_id") else None,
                client_id=m.client_id,
                host=m.host,
                member_epoch=m.member_epoch,
                subscribed_topics=list(m.subscribed_topic_names),
                subscribed_regex=(
                    m.subscribed_topic_regex if m.HasField("subscribed_topic_regex") else None
                ),
                assigned=_tps(m.assigned),
                revoking=_tps(m.revoking),
                target=_tps(m.target),
            )
            for m in sorted(r.members, key=lambda m: m.member_id)
        ]
        parts = [
            GroupPartitionLag(
                topic=p.topic,
                partition=p.partition,
                member_id=p.member_id or None,
                committed_offset=p.committed_offset if p.committed_offset >= 0 else None,
                log_end_offset=p.log_end_offset,
                lag_records=p.lag_records,
                lag_ms=p.lag_ms,
            )
            for p in sorted(r.partitions, key=lambda p: (p.topic, p.partition))
        ]
        return GroupDescription(
            r.group_id, _state(r.state), r.group_epoch, r.assignor, members, parts
        )

    def delete_group(self, group_id: str) -> None:
        """Delete an empty group and its committed offsets (GroupNotEmptyError otherwise)."""
        req = groups_pb2.DeleteGroupRequest(group_id=group_id)
        self._conn.call(self._groups.DeleteGroup, req, self._timeout_s)

    def reset_offsets(
        self,
        group_id: str,
        spec: ResetSpec,
        topic: str | None = None,
        partitions: Iterable[int] | None = None,
        dry_run: bool = False,
    ) -> ResetPlan:
        """Move an empty group's committed offsets; the plan (per partition old -> new).

        ``spec``: ``"earliest"``, ``"latest"``, ``("offset", N)`` (clamped to the log),
        ``("time", MS)`` (first record at or after; the end when none), ``("shift", N)``
        (committed + N, clamped). ``topic`` (all its partitions, or ``partitions``) limits
        the reset; without it every partition the group has committed. ``dry_run``
        computes the plan and commits nothing. Raises GroupNotEmptyError while the
        group has members.
        """
        req = _reset_request(group_id, spec, topic, partitions, dry_run)
        r = self._conn.call(self._groups.ResetOffsets, req, self._timeout_s)
        plan = [
            OffsetReset(
                p.topic,
                p.partition,
                p.previous_offset if p.previous_offset >= 0 else None,
                p.new_offset,
            )
            for p in sorted(r.partitions, key=lambda p: (p.topic, p.partition))
        ]
        return ResetPlan(plan, r.applied)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
