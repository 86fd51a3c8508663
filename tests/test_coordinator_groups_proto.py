"""groups.proto: the Groups service exists as generated code, every field and
message is documented, and every coordinator error reason is in its status table."""

from __future__ import annotations

import re
from pathlib import Path

from logstore import errors
from logstore.v1 import groups_pb2, groups_pb2_grpc

PROTO = Path(__file__).resolve().parent.parent / "proto" / "logstore" / "v1" / "groups.proto"
RPCS = {
    "ConsumerGroupHeartbeat",
    "LeaveGroup",
    "OffsetCommit",
    "OffsetFetch",
    "ListGroups",
    "DescribeGroup",
    "DeleteGroup",
    "ResetOffsets",
}


def test_service_has_every_rpc() -> None:
    """The generated Groups service offers exactly the documented RPCs."""
    service = groups_pb2.DESCRIPTOR.services_by_name["Groups"]
    assert {m.name for m in service.methods} == RPCS
    assert hasattr(groups_pb2_grpc, "GroupsServicer") and hasattr(groups_pb2_grpc, "GroupsStub")


def test_every_field_message_and_rpc_has_a_comment() -> None:
    """Each field, enum value, message and rpc line is preceded by a // comment."""
    lines = PROTO.read_text().splitlines()
    undocumented = []
    decl = re.compile(
        r"^\s*(message |enum |rpc |oneof |(optional |repeated )?[\w.]+ \w+ = \d+;|\w+ = \d+;)"
    )
    for i, line in enumerate(lines):
        if decl.match(line) and not lines[i - 1].strip().startswith("//"):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert undocumented == []


COORDINATOR_ERRORS = (
    errors.GroupIdNotFoundError,
    errors.UnknownMemberIdError,
    errors.FencedMemberEpochError,
    errors.StaleMemberEpochError,
    errors.PartitionNotAssignedError,
    errors.GroupNotEmptyError,
    errors.GroupMaxSizeReachedError,
    errors.TooManyGroupsError,
    errors.TooManyCommittedPartitionsError,
    errors.InvalidGroupRequestError,
)


def test_every_coordinator_error_reason_is_documented() -> None:
    """Each coordinator error's reason has a row, with its status, in groups.proto's table."""
    rows = dict(re.findall(r"^//   ([A-Z_]+) +([A-Z_]+) +", PROTO.read_text(), re.MULTILINE))
    assert {c.reason: c.status for c in COORDINATOR_ERRORS} == {
        c.reason: rows.get(c.reason) for c in COORDINATOR_ERRORS
    }
    assert all(errors.BY_REASON[c.reason] is c for c in COORDINATOR_ERRORS)
