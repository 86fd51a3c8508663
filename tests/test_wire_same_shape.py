"""inspect_records' same-shape fast path (only the first record parsed, the
others proven to be it but for the payload of a last key or value) answers
exactly what parsing every record answers: the count, the max timestamp, or
the refusal, on well-formed records and on damaged ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.errors import InvalidBatchError
from logstore.v1 import records_pb2
from logstore.wire._record_views import (
    _max,
    _same_shape_records,
    _timestamps,
    count_records,
    inspect_records,
)


def _reference(records: bytes) -> tuple[int, int] | str | None:
    """inspect_records by parsing every record (the path before the fast one)."""
    try:
        timestamps, other = _timestamps(records)
        if other:
            return None
        count = count_records(records)
    except InvalidBatchError:
        return "refused"
    return None if count is None else (count, _max(timestamps))


def _ours(records: bytes | memoryview) -> tuple[int, int] | str | None:
    try:
        return inspect_records(records)
    except InvalidBatchError:
        return "refused"


def _records(
    n: int, size: int, key: bytes | None, ts: int, headers: list[tuple[str, bytes]], seed: int
) -> bytes:
    out = []
    for i in range(n):
        r = records_pb2.Record(value=bytes((seed + i + j) % 256 for j in range(size)))
        if key is not None:
            r.key = key
        if ts:
            r.timestamp_ms = ts
        for hk, hv in headers:
            r.headers.add(key=hk, value=hv)
        out.append(b"\x7a" + _varint(r.ByteSize()) + r.SerializeToString())
    return b"".join(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_w5_records_take_the_fast_path() -> None:
    raw = _records(200, 100, None, 0, [], 3)
    assert _same_shape_records(raw) == (200, -(1 << 63)) == _reference(raw)
    assert _same_shape_records(memoryview(raw)) == (200, -(1 << 63))
    stamped = _records(50, 8, b"k", 1_764_700_000_000, [], 1)
    assert _same_shape_records(stamped) == (50, 1_764_700_000_000) == _reference(stamped)


def test_a_bad_header_name_in_one_record_is_still_refused() -> None:
    """Headers precede the value in Record's field order, so they are in the
    compared bytes: one record whose header name is not UTF-8 differs there
    (no fast path) and the full parse refuses the batch, as before."""
    good = _records(10, 20, None, 0, [("h", b"v")], 0)
    size = len(good) // 10
    bad = bytearray(good)
    at = 7 * size + bytes(good[:size]).index(b"h")
    bad[at] = 0xFF
    assert _same_shape_records(bytes(bad)) is None
    assert _ours(bytes(bad)) == "refused" == _reference(bytes(bad))
    # The same damage in every record: the fast path parses the first and refuses.
    every = bytearray(good)
    for i in range(10):
        every[i * size + bytes(good[:size]).index(b"h")] = 0xFF
    with pytest.raises(InvalidBatchError):
        _same_shape_records(bytes(every))


@given(
    st.integers(1, 40),
    st.integers(0, 140),
    st.one_of(st.none(), st.binary(max_size=10)),
    st.sampled_from([0, 1, -5, 1_764_700_000_000]),
    st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)), max_size=2),
    st.integers(0, 255),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_the_fast_path_agrees_with_parsing_every_record(
    n: int,
    size: int,
    key: bytes | None,
    ts: int,
    headers: list[tuple[str, bytes]],
    seed: int,
    damage: list[tuple[int, int]],
) -> None:
    raw = bytearray(_records(n, size, key, ts, headers, seed))
    for at, byte in damage:
        raw[at % len(raw)] = byte
    data = bytes(raw)
    expected = _reference(data)
    assert _ours(data) == expected
    assert _ours(memoryview(b"xx" + data)[2:]) == expected


@given(st.binary(max_size=80))
def test_the_fast_path_agrees_on_any_bytes(raw: bytes) -> None:
    assert _ours(raw) == _reference(raw)
