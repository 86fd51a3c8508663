"""Coordinator records: byte encoding round-trips, keys are deterministic, bad bytes are refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.coordinator import (
    RECORD_FORMAT_VERSION,
    CoordinatorRecord,
    GroupMetadataKey,
    GroupMetadataValue,
    MemberKey,
    MemberValue,
    OffsetCommitKey,
    OffsetCommitValue,
    TargetAssignmentKey,
    TargetAssignmentValue,
    decode,
    encode,
)
from logstore.errors import CorruptRecordError

text = st.text(max_size=12)
ints = st.integers(-(2**62), 2**62)
tps = st.frozensets(st.tuples(text, st.integers(0, 10_000)), max_size=8)

group_meta = st.builds(
    CoordinatorRecord,
    st.builds(GroupMetadataKey, text),
    st.none() | st.builds(GroupMetadataValue, ints, text, ints),
)
member = st.builds(
    CoordinatorRecord,
    st.builds(MemberKey, text, text),
    st.none()
    | st.builds(
        MemberValue,
        instance_id=st.none() | text,
        client_id=text,
        host=text,
        topics=st.lists(text, max_size=4).map(tuple),
        regex=st.none() | text,
        assignor=st.none() | text,
        rebalance_timeout_ms=ints,
        epoch=ints,
        previous_epoch=ints,
        assigned=tps,
        revoking=tps,
    ),
)
target = st.builds(
    CoordinatorRecord,
    st.builds(TargetAssignmentKey, text, text),
    st.none() | st.builds(TargetAssignmentValue, ints, tps),
)
offset = st.builds(
    CoordinatorRecord,
    st.builds(OffsetCommitKey, text, text, st.integers(0, 2**31)),
    st.none() | st.builds(OffsetCommitValue, ints, text, ints, ints),
)
records = st.one_of(group_meta, member, target, offset)


@given(records)
def test_encode_decode_round_trip(record: CoordinatorRecord) -> None:
    """decode(encode(r)) == r for every record type, tombstones included."""
    key, value = encode(record)
    assert (value is None) == (record.value is None)
    assert decode(key, value) == record


@given(records, records)
def test_equal_keys_are_equal_bytes(a: CoordinatorRecord, b: CoordinatorRecord) -> None:
    """Key bytes are equal exactly when the keys are (compaction relies on it)."""
    assert (encode(a)[0] == encode(b)[0]) == (a.key == b.key)


def test_value_carries_its_version() -> None:
    """Every value says its format version, and the documented example decodes."""
    _, value = encode(
        CoordinatorRecord(OffsetCommitKey("g", "events", 0), OffsetCommitValue(42, "", 5))
    )
    assert value is not None and json.loads(value)["v"] == RECORD_FORMAT_VERSION
    assert decode(
        b'[3,"g","events",0]', b'{"commit_ms":5,"leader_epoch":-1,"metadata":"","offset":42,"v":1}'
    ) == CoordinatorRecord(OffsetCommitKey("g", "events", 0), OffsetCommitValue(42, "", 5))


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        (b"not json", None, "not JSON"),
        (b'{"a":1}', None, "typed array"),
        (b'[9,"g"]', None, "malformed"),
        (b'[0,"g","x"]', None, "wrong shape"),
        (b'[0,"g"]', b'{"epoch":1}', "no version"),
        (b'[0,"g"]', b'{"v":2,"epoch":1,"assignor":"uniform","empty_since_ms":-1}', "newer"),
        (b'[0,"g"]', b'{"v":1,"epoch":"x","assignor":"u","empty_since_ms":-1}', "integer"),
        (b'[3,"g","t",0]', b'{"v":1}', "malformed"),
    ],
)
def test_bad_bytes_are_corrupt_records(key: bytes, value: bytes | None, words: str) -> None:
    """Bytes that are not a record of a known version raise CorruptRecordError."""
    with pytest.raises(CorruptRecordError, match=words):
        decode(key, value)
