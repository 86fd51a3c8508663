"""The coordinator's records: what it appends to the compacted ``__consumer_offsets``.

Every state change of the coordinator is one of these records; replaying them
in log order rebuilds the state (``Coordinator.load``). The topic is compacted
(latest record per key wins, a ``None`` value is a tombstone), so each key
names exactly the piece of state its value replaces.

Encoding, format version 1 (``RECORD_FORMAT_VERSION``), UTF-8 JSON with no
whitespace and sorted object keys, so equal records are equal bytes:

* group metadata, type 0: key ``[0, group_id]``; value: epoch, assignor,
  empty_since_ms.
* member, type 1: key ``[1, group_id, member_id]``; value: instance_id,
  client_id, host, topics, regex, assignor, rebalance_timeout_ms, epoch,
  previous_epoch, assigned, revoking.
* target assignment, type 2: key ``[2, group_id, member_id]``; value: epoch,
  partitions.
* committed offset, type 3: key ``[3, group_id, topic, partition]``; value:
  offset, metadata, commit_ms, leader_epoch.

Every value is a JSON object with ``"v": 1`` (its format version), e.g. key
``[3,"g","events",0]`` value
``{"commit_ms":5,"leader_epoch":-1,"metadata":"","offset":42,"v":1}``.

Partition sets are encoded as ``{"topic": [p, ...]}`` with sorted topics and
partitions. A tombstone of the group metadata key deletes the whole group
(the coordinator writes tombstones for every other key of the group first, so
compaction drops them all).

Compatibility: the key layout of a type never changes (a new layout would be a
new type number, since compaction compares key bytes). A value carries its
version ``v``; a decoder reads every version up to its own and raises
:class:`~logstore.errors.CorruptRecordError` for a newer one or for bytes that
are not a record, rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, TypeAlias

from logstore._json_records import check_version, decode_json, json_int, key_type
from logstore._json_records import dumps as _dumps

RECORD_FORMAT_VERSION: Final = 1
#: The format's name in CorruptRecordError messages.
_WHAT: Final = "coordinator"

#: (topic, partition)
TopicPartition: TypeAlias = tuple[str, int]


class RecordType(IntEnum):
    """Element 0 of every key."""

    GROUP_METADATA = 0
    MEMBER = 1
    TARGET_ASSIGNMENT = 2
    OFFSET_COMMIT = 3


@dataclass(frozen=True)
class GroupMetadataKey:
    """Key of a group's metadata; its tombstone deletes the group."""

    group_id: str


@dataclass(frozen=True)
class MemberKey:
    """Key of one member's record."""

    group_id: str
    member_id: str


@dataclass(frozen=True)
class TargetAssignmentKey:
    """Key of one member's target assignment."""

    group_id: str
    member_id: str


@dataclass(frozen=True)
class OffsetCommitKey:
    """Key of the committed offset of one partition."""

    group_id: str
    topic: str
    partition: int


RecordKey: TypeAlias = GroupMetadataKey | MemberKey | TargetAssignmentKey | OffsetCommitKey


@dataclass(frozen=True)
class GroupMetadataValue:
    """The group epoch (bumped on every change of membership, subscription or
    topic metadata), the assignor in use, and since when the group has had no
    members (-1 while it has some; drives offset retention)."""

    epoch: int
    assignor: str
    empty_since_ms: int = -1


@dataclass(frozen=True)
class MemberValue:
    """A member as the coordinator knows it, current assignment included.

    ``epoch`` is the member epoch (the group epoch of the target it has
    reconciled to; -2 for a static member that left and may come back);
    ``assigned`` are the partitions it may consume now; ``revoking`` those it
    was told to release and has not yet confirmed released (still owned)."""

    instance_id: str | None
    client_id: str
    host: str
    topics: tuple[str, ...]
    regex: str | None
    assignor: str | None
    rebalance_timeout_ms: int
    epoch: int
    previous_epoch: int
    assigned: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition]


@dataclass(frozen=True)
class TargetAssignmentValue:
    """The partitions the assignor wants this member to own, and the group
    epoch at which that target was computed."""

    epoch: int
    partitions: frozenset[TopicPartition]


@dataclass(frozen=True)
class OffsetCommitValue:
    """A committed position: the next offset to consume, as in Kafka."""

    offset: int
    metadata: str
    commit_ms: int
    #: Placeholder for Kafka's leader epoch (logstore has no replication): -1.
    leader_epoch: int = -1


RecordValue: TypeAlias = (
    GroupMetadataValue | MemberValue | TargetAssignmentValue | OffsetCommitValue
)

#: Key array lengths by type (3 for the others).
_KEY_LENGTHS: Final = {RecordType.GROUP_METADATA: 2, RecordType.OFFSET_COMMIT: 4}

_VALUE_TYPES: Final[dict[type[Any], type[Any]]] = {
    GroupMetadataKey: GroupMetadataValue,
    MemberKey: MemberValue,
    TargetAssignmentKey: TargetAssignmentValue,
    OffsetCommitKey: OffsetCommitValue,
}


@dataclass(frozen=True)
class CoordinatorRecord:
    """One record: ``value`` None is a tombstone of ``key``."""

    key: RecordKey
    value: RecordValue | None

    def __post_init__(self) -> None:
        assert self.value is None or isinstance(self.value, _VALUE_TYPES[type(self.key)]), self


def _parts(tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        out.setdefault(topic, []).append(partition)
    return out


def _unparts(obj: Mapping[str, list[int]]) -> frozenset[TopicPartition]:
    return frozenset((str(t), _int(p)) for t, ps in obj.items() for p in ps)


def _int(x: Any) -> int:
    return json_int(x, _WHAT)


def encode_key(key: RecordKey) -> bytes:
    """The key bytes: equal keys give equal bytes (compaction compares them)."""
    if isinstance(key, GroupMetadataKey):
        return _dumps([RecordType.GROUP_METADATA, key.group_id])
    if isinstance(key, MemberKey):
        return _dumps([RecordType.MEMBER, key.group_id, key.member_id])
    if isinstance(key, TargetAssignmentKey):
        return _dumps([RecordType.TARGET_ASSIGNMENT, key.group_id, key.member_id])
    return _dumps([RecordType.OFFSET_COMMIT, key.group_id, key.topic, key.partition])


def encode_value(value: RecordValue | None) -> bytes | None:
    """The value bytes, or None for a tombstone."""
    if value is None:
        return None
    v: dict[str, Any] = {"v": RECORD_FORMAT_VERSION}
    if isinstance(value, GroupMetadataValue):
        v |= {
            "epoch": value.epoch,
            "assignor": value.assignor,
            "empty_since_ms": value.empty_since_ms,
        }
    elif isinstance(value, MemberValue):
        v |= {
            "instance_id": value.instance_id,
            "client_id": value.client_id,
            "host": value.host,
            "topics": list(value.topics),
            "regex": value.regex,
            "assignor": value.assignor,
            "rebalance_timeout_ms": value.rebalance_timeout_ms,
            "epoch": value.epoch,
            "previous_epoch": value.previous_epoch,
            "assigned": _parts(value.assigned),
            "revoking": _parts(value.revoking),
        }
    elif isinstance(value, TargetAssignmentValue):
        v |= {"epoch": value.epoch, "partitions": _parts(value.partitions)}
    else:
        v |= {
            "offset": value.offset,
            "metadata": value.metadata,
            "commit_ms": value.commit_ms,
            "leader_epoch": value.leader_epoch,
        }
    return _dumps(v)


def encode(record: CoordinatorRecord) -> tuple[bytes, bytes | None]:
    """(key bytes, value bytes or None) as appended to ``__consumer_offsets``."""
    return encode_key(record.key), encode_value(record.value)


def decode(key: bytes, value: bytes | None) -> CoordinatorRecord:
    """The record stored as ``key``/``value``; CorruptRecordError if they are not one."""
    return decode_json(key, value, _WHAT, _decode)


def _decode(k: Any, v: Any) -> CoordinatorRecord:
    kind = key_type(k, RecordType, _KEY_LENGTHS, 3, _WHAT)
    rkey: RecordKey
    if kind is RecordType.GROUP_METADATA:
        rkey = GroupMetadataKey(k[1])
    elif kind is RecordType.MEMBER:
        rkey = MemberKey(k[1], k[2])
    elif kind is RecordType.TARGET_ASSIGNMENT:
        rkey = TargetAssignmentKey(k[1], k[2])
    else:
        rkey = OffsetCommitKey(k[1], k[2], _int(k[3]))
    if v is None:
        return CoordinatorRecord(rkey, None)
    v = check_version(v, RECORD_FORMAT_VERSION, _WHAT)
    value: RecordValue
    if kind is RecordType.GROUP_METADATA:
        value = GroupMetadataValue(_int(v["epoch"]), str(v["assignor"]), _int(v["empty_since_ms"]))
    elif kind is RecordType.MEMBER:
        value = MemberValue(
            instance_id=_opt_str(v["instance_id"]),
            client_id=str(v["client_id"]),
            host=str(v["host"]),
            topics=tuple(str(t) for t in v["topics"]),
            regex=_opt_str(v["regex"]),
            assignor=_opt_str(v["assignor"]),
            rebalance_timeout_ms=_int(v["rebalance_timeout_ms"]),
            epoch=_int(v["epoch"]),
            previous_epoch=_int(v["previous_epoch"]),
            assigned=_unparts(v["assigned"]),
            revoking=_unparts(v["revoking"]),
        )
    elif kind is RecordType.TARGET_ASSIGNMENT:
        value = TargetAssignmentValue(_int(v["epoch"]), _unparts(v["partitions"]))
    else:
        value = OffsetCommitValue(
            _int(v["offset"]), str(v["metadata"]), _int(v["commit_ms"]), _int(v["leader_epoch"])
        )
    return CoordinatorRecord(rkey, value)


def _opt_str(x: Any) -> str | None:
    return None if x is None else str(x)
