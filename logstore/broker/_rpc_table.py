"""The RPC table: every method of ``logstore.v1.LogStore``, declared once.

Each row says which handler area and method serves the RPC, its request and
response types and streaming shape (as the .proto declares them; a test
checks the table against the service descriptor), and how bytes cross the
boundary:

- ``parse_request`` True: the service parses the request bytes as
  ``request`` (a DecodeError is INVALID_ARGUMENT, reason INVALID_REQUEST);
  False: the handler gets the raw bytes (Produce: ``split_produce_request``
  parses only the header and stores the records' bytes as they arrived;
  MultiProduce: ``split_multi_produce`` hands each batch's bytes on as sent).
- ``raw_response`` True: the handler returns serialized bytes (stored frames
  plus the small fields) and they are sent unchanged; False: a message,
  serialized with ``SerializeToString``.
- ``admission``: which bound the RPC counts against while it works
  (``requests`` = max_concurrent_requests, ``subscriptions`` =
  max_subscriptions); a Fetch that parks moves itself to the long-poll bound.

``ACCESS`` says, for every RPC of every service, what the broker's one
authorization check (``_security.py``, called by the service wrapper)
requires: a tuple of :class:`Check` -- resource type, operation, and the
request field(s) naming the resource (dotted: ``partitions.topic`` is the
``topic`` of every element of the repeated ``partitions``; empty for the
cluster) -- all of which must pass; ``()`` means any authenticated
principal. ``per_entry`` (MultiProduce, MultiFetch): the checks apply to
each element of the repeated field their path starts with, separately, and
a denied element is answered alone (the rest of the request is served).
``list_filter`` names the repeated reply field a List RPC trims to the
resources the principal may ``describe``. A test requires an entry for every
row, so a new RPC cannot land unguarded.

``GROUPS_RPCS`` are the rows of ``logstore.v1.Groups`` (groups.proto), served
by the same server beside LogStore; ``SHARE_RPCS`` those of
``logstore.v1.ShareGroups`` (share.proto, work queues).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from google.protobuf.message import Message

from logstore.v1 import groups_pb2 as gpb
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import security_pb2 as secpb
from logstore.v1 import share_pb2 as spb

SERVICE_NAME: Final = "logstore.v1.LogStore"
GROUPS_SERVICE_NAME: Final = "logstore.v1.Groups"
SHARE_SERVICE_NAME: Final = "logstore.v1.ShareGroups"
SECURITY_SERVICE_NAME: Final = "logstore.v1.Security"

Area = Literal["produce", "fetch", "multi", "admin", "groups", "share", "security"]
Admission = Literal["requests", "subscriptions"]


@dataclass(frozen=True)
class Rpc:
    """One row of the table; see the module docstring for the columns."""

    name: str
    area: Area
    handler: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool = False
    server_streaming: bool = False
    parse_request: bool = True
    raw_response: bool = False
    admission: Admission = "requests"


RPCS: Final[tuple[Rpc, ...]] = (
    Rpc("Produce", "produce", "produce", pb.ProduceRequest, pb.ProduceResponse,
        parse_request=False),
    Rpc("ProduceStream", "produce", "produce_stream", pb.ProduceRequest, pb.ProduceResponse,
        client_streaming=True, server_streaming=True, parse_request=False),
    Rpc("InitProducer", "produce", "init_producer", pb.InitProducerRequest,
        pb.InitProducerResponse),
    Rpc("Fetch", "fetch", "fetch", pb.FetchRequest, pb.FetchResponse, raw_response=True),
    Rpc("Subscribe", "fetch", "subscribe", pb.SubscribeRequest, pb.SubscribeResponse,
        server_streaming=True, raw_response=True, admission="subscriptions"),
    Rpc("MultiProduce", "multi", "multi_produce", pb.MultiProduceRequest,
        pb.MultiProduceResponse, parse_request=False),
    Rpc("MultiFetch", "multi", "multi_fetch", pb.MultiFetchRequest, pb.MultiFetchResponse,
        raw_response=True),
    Rpc("CreateTopic", "admin", "create_topic", pb.CreateTopicRequest, pb.CreateTopicResponse),
    Rpc("DeleteTopic", "admin", "delete_topic", pb.DeleteTopicRequest, pb.DeleteTopicResponse),
    Rpc("ListTopics", "admin", "list_topics", pb.ListTopicsRequest, pb.ListTopicsResponse),
    Rpc("DescribeTopic", "admin", "describe_topic", pb.DescribeTopicRequest,
        pb.DescribeTopicResponse),
    Rpc("AlterTopicConfig", "admin", "alter_topic_config", pb.AlterTopicConfigRequest,
        pb.AlterTopicConfigResponse),
    Rpc("CreatePartitions", "admin", "create_partitions", pb.CreatePartitionsRequest,
        pb.CreatePartitionsResponse),
    Rpc("DeleteRecords", "admin", "delete_records", pb.DeleteRecordsRequest,
        pb.DeleteRecordsResponse),
    Rpc("ListOffsets", "admin", "list_offsets", pb.ListOffsetsRequest, pb.ListOffsetsResponse),
)  # fmt: skip

GROUPS_RPCS: Final[tuple[Rpc, ...]] = (
    Rpc("ConsumerGroupHeartbeat", "groups", "consumer_group_heartbeat",
        gpb.ConsumerGroupHeartbeatRequest, gpb.ConsumerGroupHeartbeatResponse),
    Rpc("LeaveGroup", "groups", "leave_group", gpb.LeaveGroupRequest, gpb.LeaveGroupResponse),
    Rpc("OffsetCommit", "groups", "offset_commit", gpb.OffsetCommitRequest,
        gpb.OffsetCommitResponse),
    Rpc("OffsetFetch", "groups", "offset_fetch", gpb.OffsetFetchRequest, gpb.OffsetFetchResponse),
    Rpc("ListGroups", "groups", "list_groups", gpb.ListGroupsRequest, gpb.ListGroupsResponse),
    Rpc("DescribeGroup", "groups", "describe_group", gpb.DescribeGroupRequest,
        gpb.DescribeGroupResponse),
    Rpc("DeleteGroup", "groups", "delete_group", gpb.DeleteGroupRequest,
        gpb.DeleteGroupResponse),
    Rpc("ResetOffsets", "groups", "reset_offsets", gpb.ResetOffsetsRequest,
        gpb.ResetOffsetsResponse),
)  # fmt: skip

SHARE_RPCS: Final[tuple[Rpc, ...]] = (
    Rpc("ShareGroupHeartbeat", "share", "share_group_heartbeat",
        spb.ShareGroupHeartbeatRequest, spb.ShareGroupHeartbeatResponse),
    Rpc("ShareFetch", "share", "share_fetch", spb.ShareFetchRequest, spb.ShareFetchResponse,
        raw_response=True),
    Rpc("ShareAcknowledge", "share", "share_acknowledge", spb.ShareAcknowledgeRequest,
        spb.ShareAcknowledgeResponse),
    Rpc("CreateShareGroup", "share", "create_share_group", spb.CreateShareGroupRequest,
        spb.CreateShareGroupResponse),
    Rpc("AlterShareGroup", "share", "alter_share_group", spb.AlterShareGroupRequest,
        spb.AlterShareGroupResponse),
    Rpc("ListShareGroups", "share", "list_share_groups", spb.ListShareGroupsRequest,
        spb.ListShareGroupsResponse),
    Rpc("DescribeShareGroup", "share", "describe_share_group", spb.DescribeShareGroupRequest,
        spb.DescribeShareGroupResponse),
    Rpc("DeleteShareGroup", "share", "delete_share_group", spb.DeleteShareGroupRequest,
        spb.DeleteShareGroupResponse),
    Rpc("RedriveDeadLetters", "share", "redrive_dead_letters", spb.RedriveDeadLettersRequest,
        spb.RedriveDeadLettersResponse),
)  # fmt: skip

SECURITY_RPCS: Final[tuple[Rpc, ...]] = (
    Rpc("CreateUser", "security", "create_user", secpb.CreateUserRequest,
        secpb.CreateUserResponse),
    Rpc("DeleteUser", "security", "delete_user", secpb.DeleteUserRequest,
        secpb.DeleteUserResponse),
    Rpc("ListUsers", "security", "list_users", secpb.ListUsersRequest, secpb.ListUsersResponse),
    Rpc("CreateAcls", "security", "create_acls", secpb.CreateAclsRequest,
        secpb.CreateAclsResponse),
    Rpc("DeleteAcls", "security", "delete_acls", secpb.DeleteAclsRequest,
        secpb.DeleteAclsResponse),
    Rpc("ListAcls", "security", "list_acls", secpb.ListAclsRequest, secpb.ListAclsResponse),
    Rpc("AlterQuotas", "security", "alter_quotas", secpb.AlterQuotasRequest,
        secpb.AlterQuotasResponse),
    Rpc("DescribeQuotas", "security", "describe_quotas", secpb.DescribeQuotasRequest,
        secpb.DescribeQuotasResponse),
)  # fmt: skip

#: Every service the broker serves, with its rows.
SERVICES: Final[dict[str, tuple[Rpc, ...]]] = {
    SERVICE_NAME: RPCS,
    GROUPS_SERVICE_NAME: GROUPS_RPCS,
    SHARE_SERVICE_NAME: SHARE_RPCS,
    SECURITY_SERVICE_NAME: SECURITY_RPCS,
}

ResourceType = Literal["topic", "group", "cluster"]
Operation = Literal["read", "write", "create", "delete", "alter", "describe"]


@dataclass(frozen=True)
class Check:
    """One ACL requirement of an RPC (see the module docstring)."""

    resource_type: ResourceType
    operation: Operation
    field: str = ""


@dataclass(frozen=True)
class Access:
    """What an RPC needs: every check passes; ``list_filter`` = (reply field, name field,
    resource type) trimmed to what the principal may describe."""

    checks: tuple[Check, ...]
    list_filter: tuple[str, str, ResourceType] | None = None
    #: True: the checks' fields start with one repeated field of entries
    #: (MultiProduce's ``batches``, MultiFetch's ``partitions``) and each
    #: entry is authorized on its own: a denied entry gets its own status in
    #: the reply while the others are served (``Guard.authorize``).
    per_entry: bool = False


def _topic(op: Operation, field: str = "topic") -> Check:
    return Check("topic", op, field)


def _group(op: Operation) -> Check:
    return Check("group", op, "group_id")


_CLUSTER_ALTER: Final = Access((Check("cluster", "alter"),))
_CLUSTER_DESCRIBE: Final = Access((Check("cluster", "describe"),))

#: The authorization of every RPC, by method name (Kafka's operations: a
#: producer needs topic write, a consumer topic read and group read).
ACCESS: Final[dict[str, Access]] = {
    # LogStore
    "Produce": Access((_topic("write"),)),
    "ProduceStream": Access((_topic("write"),)),
    # producer ids are handed to anyone authenticated; writing needs topic write
    "InitProducer": Access(()),
    "Fetch": Access((_topic("read"),)),
    "Subscribe": Access((_topic("read"),)),
    # every batch's / partition's topic, each on its own (a denied one gets
    # its own PERMISSION_DENIED / NOT_FOUND; the others are served)
    "MultiProduce": Access((_topic("write", "batches.topic"),), per_entry=True),
    "MultiFetch": Access((_topic("read", "partitions.topic"),), per_entry=True),
    "CreateTopic": Access((_topic("create", "name"),)),
    "DeleteTopic": Access((_topic("delete", "name"),)),
    "ListTopics": Access((), ("topics", "name", "topic")),
    "DescribeTopic": Access((_topic("describe", "name"),)),
    "AlterTopicConfig": Access((_topic("alter", "name"),)),
    "CreatePartitions": Access((_topic("alter", "name"),)),
    "DeleteRecords": Access((_topic("delete"),)),
    "ListOffsets": Access((_topic("describe"),)),
    # Groups
    "ConsumerGroupHeartbeat": Access((_group("read"),)),
    "LeaveGroup": Access((_group("read"),)),
    "OffsetCommit": Access((_group("read"), _topic("read", "partitions.topic"))),
    "OffsetFetch": Access((_group("describe"),)),
    "ListGroups": Access((), ("groups", "group_id", "group")),
    "DescribeGroup": Access((_group("describe"),)),
    "DeleteGroup": Access((_group("delete"),)),
    "ResetOffsets": Access((_group("read"), _topic("read", "partitions.topic"))),
    # ShareGroups
    "ShareGroupHeartbeat": Access((_group("read"), _topic("read", "topics"))),
    "ShareFetch": Access((_group("read"),)),
    "ShareAcknowledge": Access((_group("read"),)),
    "CreateShareGroup": Access((_group("create"),)),
    "AlterShareGroup": Access((_group("alter"),)),
    "ListShareGroups": Access((), ("groups", "group_id", "group")),
    "DescribeShareGroup": Access((_group("describe"),)),
    "DeleteShareGroup": Access((_group("delete"),)),
    "RedriveDeadLetters": Access((_group("alter"), _topic("write", "to_topic"))),
    # Security
    "CreateUser": _CLUSTER_ALTER,
    "DeleteUser": _CLUSTER_ALTER,
    "ListUsers": _CLUSTER_DESCRIBE,
    "CreateAcls": _CLUSTER_ALTER,
    "DeleteAcls": _CLUSTER_ALTER,
    "ListAcls": _CLUSTER_DESCRIBE,
    "AlterQuotas": _CLUSTER_ALTER,
    "DescribeQuotas": _CLUSTER_DESCRIBE,
}
