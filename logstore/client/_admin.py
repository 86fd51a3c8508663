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

Share groups (the ``ShareGroups`` service, share.proto): ``list_share_groups``,
``describe_share_group`` (config, members with their in-flight counts, per
partition available / acquired / delayed / dead-lettered counts and the oldest
available record's age, the acknowledge rate), ``create_share_group`` and
``alter_share_group`` (keyword settings, unset ones keep the broker's default
or the current value; the effective :class:`ShareGroupSettings` is returned),
``delete_share_group`` (only without active members) and
``redrive_dead_letters`` (dead letters back to their source topic or
``to_topic``; redriving twice never duplicates). Their errors:
``GroupIdNotFoundError``, ``GroupNotEmptyError``, ``InvalidGroupRequestError``
and, for a create with another config, an ``ALREADY_EXISTS`` error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from logstore import errors
from logstore.v1 import (
    groups_pb2,
    groups_pb2_grpc,
    logstore_pb2,
    security_pb2,
    security_pb2_grpc,
    share_pb2,
    share_pb2_grpc,
)

from ._consumer import TopicPartition
from ._credentials import Credentials
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


@dataclass(frozen=True)
class ShareGroupSettings:
    """A share group's settings as the broker reports them (every field set; ``None``
    for "none": no TTL, no latency bound). Bounds are documented in share.proto."""

    visibility_timeout_ms: int
    max_delivery_attempts: int
    max_inflight_records: int
    dead_letter_topic: str
    message_ttl_ms: int | None
    ordering_keys: bool
    max_queue_latency_ms: int | None
    topic_priorities: dict[str, int]
    auto_offset_reset: str


@dataclass(frozen=True)
class ShareGroupListing:
    """One share group of ``list_share_groups``: its id and active member count."""

    group_id: str
    members: int


@dataclass(frozen=True)
class ShareMemberDescription:
    """A member of ``describe_share_group``: ids, host, topics and how many records it
    holds acquired now (``inflight_records``)."""

    member_id: str
    client_id: str
    host: str
    inflight_records: int
    topics: list[str]


@dataclass(frozen=True)
class SharePartitionDescription:
    """The group's state on one partition: the share-partition start offset (everything
    below is done), the log end, and counts of records available, acquired, delayed and
    dead-lettered (in total), and the age of the oldest available record."""

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    available: int
    acquired: int
    delayed: int
    dead_lettered: int
    oldest_available_age_ms: int


@dataclass(frozen=True)
class ShareGroupDescription:
    """``describe_share_group``'s answer; members sorted by id, partitions by topic and
    number; the totals are sums over the partitions (the age: the oldest)."""

    group_id: str
    settings: ShareGroupSettings
    members: list[ShareMemberDescription]
    partitions: list[SharePartitionDescription]
    acknowledge_rate_per_s: float
    estimated_drain_ms: int

    @property
    def available(self) -> int:
        return sum(p.available for p in self.partitions)

    @property
    def acquired(self) -> int:
        return sum(p.acquired for p in self.partitions)

    @property
    def delayed(self) -> int:
        return sum(p.delayed for p in self.partitions)

    @property
    def dead_lettered(self) -> int:
        return sum(p.dead_lettered for p in self.partitions)

    @property
    def oldest_available_age_ms(self) -> int:
        return max((p.oldest_available_age_ms for p in self.partitions), default=0)


@dataclass(frozen=True)
class RedriveResult:
    """``redrive_dead_letters``' answer: records moved now, and dead letters left after."""

    redriven: int
    remaining: int


#: The settings create/alter take, by name (the ShareGroupConfig fields of share.proto).
SHARE_SETTINGS: frozenset[str] = frozenset(
    {
        "visibility_timeout_ms",
        "max_delivery_attempts",
        "max_inflight_records",
        "dead_letter_topic",
        "message_ttl_ms",
        "ordering_keys",
        "max_queue_latency_ms",
        "topic_priorities",
        "auto_offset_reset",
    }
)


def _share_config(settings: Mapping[str, object]) -> share_pb2.ShareGroupConfig:
    """The proto config of keyword settings (None values are left unset)."""
    unknown = sorted(set(settings) - SHARE_SETTINGS)
    if unknown:
        raise errors.InvalidArgumentError(
            f"unknown share group setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(SHARE_SETTINGS))}"
        )
    cfg = share_pb2.ShareGroupConfig()
    for name, value in settings.items():
        if value is None:
            continue
        if name == "topic_priorities":
            assert isinstance(value, Mapping)
            for topic, prio in value.items():
                cfg.topic_priorities[str(topic)] = int(prio)
        elif name == "ordering_keys":
            if not isinstance(value, bool):
                raise errors.InvalidArgumentError(f"ordering_keys must be a bool, not {value!r}")
            cfg.ordering_keys = value
        elif name in ("dead_letter_topic", "auto_offset_reset"):
            setattr(cfg, name, str(value))
        else:
            if type(value) is not int:
                raise errors.InvalidArgumentError(f"{name} must be an int, not {value!r}")
            setattr(cfg, name, value)
    return cfg


def _settings(c: share_pb2.ShareGroupConfig) -> ShareGroupSettings:
    return ShareGroupSettings(
        visibility_timeout_ms=c.visibility_timeout_ms,
        max_delivery_attempts=c.max_delivery_attempts,
        max_inflight_records=c.max_inflight_records,
        dead_letter_topic=c.dead_letter_topic,
        message_ttl_ms=c.message_ttl_ms or None,
        ordering_keys=c.ordering_keys,
        max_queue_latency_ms=c.max_queue_latency_ms or None,
        topic_priorities=dict(sorted(c.topic_priorities.items())),
        auto_offset_reset=c.auto_offset_reset or "earliest",
    )


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


class UserListing(NamedTuple):
    """One user of ``Admin.list_users`` (its name; tokens are never stored)."""

    name: str
    created_ms: int


class AclBinding(NamedTuple):
    """One ACL (security.proto AclBinding): strings, lower case."""

    principal: str
    resource_type: str
    pattern_type: str
    name: str
    operation: str
    permission: str


class QuotaOverride(NamedTuple):
    """One principal's quota overrides (``Admin.describe_quotas``): bytes per second,
    0 = unlimited, None = the broker's default for that kind."""

    principal: str
    produce_bytes_per_s: int | None
    fetch_bytes_per_s: int | None


class QuotaListing(NamedTuple):
    """``Admin.describe_quotas``: the broker's default rates (bytes/s, 0 = unlimited)
    and the per-principal overrides."""

    default_produce_bytes_per_s: int
    default_fetch_bytes_per_s: int
    overrides: list[QuotaOverride]


def _quota(q: security_pb2.QuotaDescription) -> QuotaOverride:
    return QuotaOverride(
        q.principal,
        q.produce_bytes_per_s if q.HasField("produce_bytes_per_s") else None,
        q.fetch_bytes_per_s if q.HasField("fetch_bytes_per_s") else None,
    )


def _acl(b: security_pb2.AclBinding) -> AclBinding:
    return AclBinding(
        b.principal, b.resource_type, b.pattern_type, b.name, b.operation, b.permission
    )


def _acl_filter(fields: Mapping[str, str | None]) -> security_pb2.AclBindingFilter:
    unknown = set(fields) - set(AclBinding._fields)
    if unknown:
        raise errors.InvalidArgumentError(f"unknown ACL filter field(s): {sorted(unknown)}")
    return security_pb2.AclBindingFilter(**{k: v for k, v in fields.items() if v})


class Admin:
    """Topic administration and offsets over one connection."""

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:7070",
        *,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self._conn = Connection(bootstrap, connect_timeout_ms, credentials)
        self._groups = groups_pb2_grpc.GroupsStub(self._conn.channel)
        self._share = share_pb2_grpc.ShareGroupsStub(self._conn.channel)
        self._security = security_pb2_grpc.SecurityStub(self._conn.channel)
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

    # -- share groups ------------------------------------------------------------

    def list_share_groups(self) -> list[ShareGroupListing]:
        """Every share group, sorted by id."""
        req = share_pb2.ListShareGroupsRequest()
        resp = self._conn.call(self._share.ListShareGroups, req, self._timeout_s)
        return sorted(
            (ShareGroupListing(g.group_id, g.members) for g in resp.groups),
            key=lambda g: g.group_id,
        )

    def describe_share_group(self, group_id: str) -> ShareGroupDescription:
        """Settings, members and per-partition counts; GroupIdNotFoundError if unknown."""
        req = share_pb2.DescribeShareGroupRequest(group_id=group_id)
        r = self._conn.call(self._share.DescribeShareGroup, req, self._timeout_s)
        members = [
            ShareMemberDescription(
                m.member_id, m.client_id, m.host, m.inflight_records, sorted(m.topics)
            )
            for m in sorted(r.members, key=lambda m: m.member_id)
        ]
        parts = [
            SharePartitionDescription(
                p.topic,
                p.partition,
                p.start_offset,
                p.end_offset,
                p.available,
                p.acquired,
                p.delayed,
                p.dead_lettered,
                p.oldest_available_age_ms,
            )
            for p in sorted(r.partitions, key=lambda p: (p.topic, p.partition))
        ]
        return ShareGroupDescription(
            r.group_id,
            _settings(r.config),
            members,
            parts,
            r.acknowledge_rate_per_s,
            r.estimated_drain_ms,
        )

    def create_share_group(self, group_id: str, **settings: object) -> ShareGroupSettings:
        """Create a share group with ``settings`` (names of :data:`SHARE_SETTINGS`; unset
        ones take the broker's defaults); the effective settings. Creating it again with
        the same settings is a no-op; with others the broker refuses (ALREADY_EXISTS)."""
        req = share_pb2.CreateShareGroupRequest(group_id=group_id, config=_share_config(settings))
        return _settings(self._conn.call(self._share.CreateShareGroup, req, self._timeout_s).config)

    def alter_share_group(
        self, group_id: str, *, replace_topic_priorities: bool = False, **settings: object
    ) -> ShareGroupSettings:
        """Change the given settings of a share group (the others keep their values);
        ``replace_topic_priorities`` replaces the whole priority map (even with {})."""
        req = share_pb2.AlterShareGroupRequest(
            group_id=group_id,
            config=_share_config(settings),
            replace_topic_priorities=replace_topic_priorities,
        )
        return _settings(self._conn.call(self._share.AlterShareGroup, req, self._timeout_s).config)

    def delete_share_group(self, group_id: str) -> None:
        """Delete a share group without active members and its share state (its
        dead-letter topic is kept); GroupNotEmptyError while members are active."""
        req = share_pb2.DeleteShareGroupRequest(group_id=group_id)
        self._conn.call(self._share.DeleteShareGroup, req, self._timeout_s)

    def redrive_dead_letters(
        self, group_id: str, to_topic: str | None = None, max_records: int = 0
    ) -> RedriveResult:
        """Move the group's dead letters, oldest first, back to their source topic (or
        ``to_topic``), at most ``max_records`` (0: all). Redriving twice never duplicates."""
        if max_records < 0:
            raise errors.InvalidArgumentError(f"max_records must be >= 0, not {max_records}")
        req = share_pb2.RedriveDeadLettersRequest(
            group_id=group_id, to_topic=to_topic or "", max_records=max_records
        )
        r = self._conn.call(self._share.RedriveDeadLetters, req, self._timeout_s)
        return RedriveResult(r.redriven, r.remaining)

    # -- users and ACLs (security.proto) ---------------------------------------

    def create_user(self, name: str) -> str:
        """Create user ``name``; its bearer token (shown only now: keep it)."""
        req = security_pb2.CreateUserRequest(name=name)
        return str(self._conn.call(self._security.CreateUser, req, self._timeout_s).token)

    def delete_user(self, name: str) -> None:
        req = security_pb2.DeleteUserRequest(name=name)
        self._conn.call(self._security.DeleteUser, req, self._timeout_s)

    def list_users(self) -> list[UserListing]:
        resp = self._conn.call(
            self._security.ListUsers, security_pb2.ListUsersRequest(), self._timeout_s
        )
        return [UserListing(u.name, u.created_ms) for u in resp.users]

    def create_acls(self, acls: list[AclBinding]) -> int:
        """Add ``acls``; how many were new."""
        req = security_pb2.CreateAclsRequest(
            acls=[security_pb2.AclBinding(**a._asdict()) for a in acls]
        )
        return int(self._conn.call(self._security.CreateAcls, req, self._timeout_s).added)

    def delete_acls(self, **filter_fields: str | None) -> list[AclBinding]:
        """Remove every ACL matching the given fields (principal, resource_type,
        pattern_type, name, operation, permission); the removed ones."""
        req = security_pb2.DeleteAclsRequest(filter=_acl_filter(filter_fields))
        resp = self._conn.call(self._security.DeleteAcls, req, self._timeout_s)
        return [_acl(b) for b in resp.removed]

    def list_acls(self, **filter_fields: str | None) -> list[AclBinding]:
        """The ACLs matching the given fields (none given: all)."""
        req = security_pb2.ListAclsRequest(filter=_acl_filter(filter_fields))
        resp = self._conn.call(self._security.ListAcls, req, self._timeout_s)
        return [_acl(b) for b in resp.acls]

    def set_quotas(
        self,
        principal: str,
        *,
        produce_bytes_per_s: int | None = None,
        fetch_bytes_per_s: int | None = None,
    ) -> QuotaOverride:
        """Override ``principal``'s produce and/or fetch rate (bytes/s; 0 = unlimited);
        a rate left None keeps its current value. The principal's overrides after."""
        req = security_pb2.AlterQuotasRequest(principal=principal)
        if produce_bytes_per_s is not None:
            req.produce_bytes_per_s = produce_bytes_per_s
        if fetch_bytes_per_s is not None:
            req.fetch_bytes_per_s = fetch_bytes_per_s
        return _quota(self._conn.call(self._security.AlterQuotas, req, self._timeout_s).quota)

    def remove_quotas(self, principal: str) -> bool:
        """Drop ``principal``'s overrides (back to the broker defaults); whether it had any."""
        req = security_pb2.AlterQuotasRequest(principal=principal, remove=True)
        return bool(self._conn.call(self._security.AlterQuotas, req, self._timeout_s).removed)

    def describe_quotas(self, principal: str | None = None) -> QuotaListing:
        """The broker's default rates and the overrides (of ``principal`` only, if given)."""
        req = security_pb2.DescribeQuotasRequest(principal=principal or "")
        r = self._conn.call(self._security.DescribeQuotas, req, self._timeout_s)
        return QuotaListing(
            r.default_produce_bytes_per_s,
            r.default_fetch_bytes_per_s,
            [_quota(q) for q in r.quotas],
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
