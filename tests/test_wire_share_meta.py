"""logstore.wire.share_metadata: the per-record columns a share partition acquires
from (offsets, timestamps, deliver-at, key hashes), against the reference rules
(parse_deliver_at, key_hash) applied to the records decode_objects gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.errors import CorruptRecordError
from logstore.wire import (
    DELIVER_AT_HEADER,
    MAX_DELIVER_AT_DIGITS,
    Record,
    _share_meta,
    build_offset_frame,
    decode_objects,
    deliver_at_header,
    encode_frame,
    encode_record,
    encode_values,
    key_hash,
    key_hashes,
    parse_deliver_at,
    share_metadata,
    stored_frames,
)

BASE_TS = 1_764_633_600_000


def _frame(base: int, records: list[Record], base_ts: int = BASE_TS) -> bytes:
    body = b"".join(encode_record(r.value, r.key, r.headers, r.timestamp_ms) for r in records)
    return encode_frame(body, len(records), base, base_ts)


def _expected(data: bytes, start: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """The reference: each rule applied record by record to decode_objects' records."""
    recs = decode_objects(stored_frames(data), start)
    delays = []
    for r in recs:
        vals = [v for k, v in r.headers or [] if k == DELIVER_AT_HEADER]
        delays.append(parse_deliver_at(vals[-1]) if vals else 0)
    return (
        [r.offset for r in recs],
        [r.timestamp_ms for r in recs],
        delays,
        [key_hash(r.key) for r in recs],
    )


def _check(data: bytes, start: int = 0) -> None:
    m = share_metadata(data, start, want_keys=True, want_delays=True)
    offs, ts, delays, hashes = _expected(data, start)
    frames = stored_frames(data).frames
    assert m.start_offset == start
    assert m.end_offset == max(start, frames[-1][1].next_offset if frames else start)
    assert m.offsets.dtype == np.int64 and m.deliver_at.dtype == np.int64
    assert m.key_hash.dtype == np.uint64
    assert m.offsets.tolist() == offs
    assert m.timestamps.tolist() == ts
    assert m.deliver_at.tolist() == delays
    assert m.key_hash.tolist() == hashes


def test_parse_deliver_at_rule() -> None:
    """The header rule: 1-16 ASCII digits are the time; anything else is no delay (0)."""
    assert parse_deliver_at(b"1764633600000") == 1_764_633_600_000
    assert parse_deliver_at(b"0") == 0
    assert parse_deliver_at(b"0001") == 1
    assert parse_deliver_at(b"9" * MAX_DELIVER_AT_DIGITS) == 10**16 - 1
    for bad in (
        b"",
        b"-5",
        b"+5",
        b" 5",
        b"5 ",
        b"1.5",
        b"1e9",
        b"9" * 17,
        b"\x00\x01",
        "٣".encode(),
    ):
        assert parse_deliver_at(bad) == 0, bad
    assert deliver_at_header(1234) == (DELIVER_AT_HEADER, b"1234")
    with pytest.raises(ValueError, match=r"0 \.\. 10"):
        deliver_at_header(-1)


def test_no_headers_no_keys_fast_path() -> None:
    """Value-only records: offsets and base timestamps, no delay, no key hash."""
    data = encode_frame(encode_values([b"v" * 100] * 300), 300, 40, BASE_TS)
    data += encode_frame(encode_values([b"w" * 10] * 5), 5, 340, BASE_TS + 7)
    m = share_metadata(data, 0, want_keys=True, want_delays=True)
    assert m.offsets.tolist() == list(range(40, 345))
    assert m.timestamps.tolist() == [BASE_TS] * 300 + [BASE_TS + 7] * 5
    assert not m.deliver_at.any() and not m.key_hash.any()
    _check(data)


def test_start_offset_and_max_records() -> None:
    """Records before start_offset are skipped; max_records caps the count."""
    data = _frame(0, [Record(b"a", headers=[deliver_at_header(5 + i)]) for i in range(10)])
    data += _frame(10, [Record(b"b", key=b"k%d" % i) for i in range(10)])
    m = share_metadata(data, 7, want_keys=True, want_delays=True, max_records=5)
    assert (m.start_offset, m.end_offset) == (7, 12)
    assert m.offsets.tolist() == [7, 8, 9, 10, 11]
    assert m.deliver_at.tolist() == [12, 13, 14, 0, 0]
    assert m.key_hash.tolist() == [0, 0, 0, key_hash(b"k0"), key_hash(b"k1")]
    _check(data, 7)
    past = share_metadata(data, 20, want_keys=True, want_delays=True)
    assert (len(past.offsets), past.start_offset, past.end_offset) == (0, 20, 20)
    assert share_metadata(data, 0, want_keys=False, want_delays=False).end_offset == 20


def test_headers_mixed_last_wins_malformed_is_zero() -> None:
    """Records with and without the header, other headers around it, repeats (the last
    counts), malformed values (no delay), timestamps of their own and tombstones."""
    recs = [
        Record(b"x"),
        Record(b"x", headers=[deliver_at_header(BASE_TS + 60_000)]),
        Record(b"x", headers=[("trace", b"abc"), deliver_at_header(99), ("z", b"")]),
        Record(b"x", headers=[deliver_at_header(1), deliver_at_header(2)]),
        Record(b"x", headers=[deliver_at_header(1), (DELIVER_AT_HEADER, b"soon")]),
        Record(b"x", headers=[(DELIVER_AT_HEADER, b"-10")]),
        Record(b"x", headers=[(DELIVER_AT_HEADER, b"")]),
        Record(b"x", headers=[(DELIVER_AT_HEADER, b"1" * 17)]),
        Record(b"x", headers=[("logstore-deliver-at-mz", b"5")]),
        Record(b"x", headers=[("", b"5")]),
        Record(None, key=b"gone", headers=[deliver_at_header(7)], timestamp_ms=BASE_TS - 5),
        Record(None),
    ]
    data = _frame(100, recs)
    m = share_metadata(data, 0, want_keys=True, want_delays=True)
    assert m.deliver_at.tolist() == [0, BASE_TS + 60_000, 99, 2, 0, 0, 0, 0, 0, 0, 7, 0]
    assert m.timestamps.tolist()[10] == BASE_TS - 5
    assert m.key_hash.tolist()[10] == key_hash(b"gone") != 0
    assert m.key_hash.tolist()[11] == 0
    _check(data)


def test_want_flags_skip_the_columns() -> None:
    """Without want_delays/want_keys those columns are all 0, whatever the records hold."""
    data = _frame(0, [Record(b"x", key=b"k", headers=[deliver_at_header(5)])] * 3)
    m = share_metadata(data, 0, want_keys=False, want_delays=False)
    assert m.deliver_at.tolist() == [0, 0, 0] and m.key_hash.tolist() == [0, 0, 0]
    assert m.offsets.tolist() == [0, 1, 2]


def test_format2_compacted_frames_with_gaps() -> None:
    """Format-2 (compacted) frames: offsets with gaps, headers and keys as in format 1."""
    f2 = build_offset_frame(
        10,
        [
            (10, Record(b"a", key=b"k1", headers=[deliver_at_header(111)])),
            (13, Record(None, key=b"k2")),
            (17, Record(b"c", headers=[(DELIVER_AT_HEADER, b"bad")])),
            (18, Record(b"d", key=b"", timestamp_ms=BASE_TS + 3)),
        ],
        BASE_TS,
        last_offset=25,
    )
    data = _frame(0, [Record(b"z", headers=[deliver_at_header(5)])] * 10) + f2
    data += _frame(26, [Record(b"y", key=b"k1")])
    m = share_metadata(data, 0, want_keys=True, want_delays=True)
    assert m.offsets.tolist() == [*range(10), 10, 13, 17, 18, 26]
    assert m.end_offset == 27
    # the compacted frame's hole at its end (19..25) is covered by end_offset
    tail = share_metadata(data, 0, want_keys=False, want_delays=False, max_records=14)
    assert (tail.offsets.tolist()[-1], tail.end_offset) == (18, 26)
    hole = share_metadata(f2, 19, want_keys=False, want_delays=False)
    assert (len(hole.offsets), hole.end_offset) == (0, 26)
    assert m.deliver_at.tolist() == [5] * 10 + [111, 0, 0, 0, 0]
    assert m.key_hash.tolist()[10] == m.key_hash.tolist()[14] == key_hash(b"k1")
    assert m.key_hash.tolist()[13] == key_hash(b"") != 0
    _check(data)
    # a start offset inside a gap begins at the next record
    assert share_metadata(data, 14, want_keys=True, want_delays=True).offsets.tolist() == [
        17,
        18,
        26,
    ]
    _check(data, 14)


def test_non_canonical_header_message_is_read_by_upb() -> None:
    """A Header whose value precedes its name (valid protobuf) still gives its time."""
    inner = b"\x12\x03123" + b"\x0a" + bytes([len(DELIVER_AT_HEADER)]) + DELIVER_AT_HEADER.encode()
    body = b"\x12\x01x" + b"\x22" + bytes([len(inner)]) + inner
    rec = b"\x7a" + bytes([len(body)]) + body
    plain = encode_record(b"x", None, [deliver_at_header(9)])
    data = encode_frame(plain + rec + plain, 3, 0, BASE_TS)
    m = share_metadata(data, 0, want_keys=False, want_delays=True)
    assert m.deliver_at.tolist() == [9, 123, 9]


def test_key_hash_is_stable_and_never_zero() -> None:
    """key_hash is a fixed function (pinned values), 0 only for a null key."""
    assert key_hash(None) == 0
    assert key_hash(b"") != 0
    assert key_hash(b"a") != key_hash(b"a\x00") != key_hash(b"\x00a")
    # pinned: a change of the algorithm would re-key every durable share state
    assert (key_hash(b""), key_hash(b"order-42")) == (0x1, 0x9AC6ABC7168D213D)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=50))
def test_key_hashes_match_the_reference(keys: list[bytes | None]) -> None:
    """The vectorized key_hashes equals key_hash record by record (any keys, null ones too)."""
    present = [k or b"" for k in keys]
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum([len(k) for k in present], out=offsets[1:])
    buf = np.frombuffer(b"".join(present), np.uint8)
    valid = np.array([k is not None for k in keys], np.bool_)
    assert key_hashes(buf, offsets, valid).tolist() == [key_hash(k) for k in keys]


_header = st.one_of(
    st.builds(deliver_at_header, st.integers(0, 10**16 - 1)),
    st.tuples(st.just(DELIVER_AT_HEADER), st.binary(max_size=18)),
    st.tuples(st.sampled_from(["a", "trace-id", DELIVER_AT_HEADER[:-1]]), st.binary(max_size=30)),
)
_record = st.builds(
    Record,
    st.one_of(st.none(), st.binary(max_size=200)),
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), st.lists(_header, max_size=4)),
    st.sampled_from([0, 0, BASE_TS + 1, 5]),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(_record, min_size=1, max_size=12), min_size=1, max_size=4),
    st.booleans(),
    st.integers(0, 40),
)
def test_matches_the_reference_on_random_frames(
    batches: list[list[Record]], compacted: bool, start: int
) -> None:
    """Random frames (format 1, or format 2 with gaps), any headers and keys: the
    columns equal the reference rules applied record by record."""
    data = b""
    base = 0
    for i, recs in enumerate(batches):
        if compacted and i % 2:
            pairs = [(base + 2 * j + 1, r) for j, r in enumerate(recs)]
            data += build_offset_frame(base, pairs, BASE_TS + i, last_offset=pairs[-1][0] + 2)
            base = pairs[-1][0] + 3
        else:
            data += _frame(base, recs, BASE_TS + i)
            base += len(recs)
    _check(data, start)


def test_canonical_records_never_take_a_per_record_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records as producers write them (headers, keys, tombstones) are read without upb:
    no per-record Python on the broker's path."""

    def boom(*args: object) -> None:
        raise AssertionError("per-record upb path taken")

    monkeypatch.setattr(_share_meta, "_decode_upb", boom)
    monkeypatch.setattr(_share_meta.records_pb2.Record, "FromString", boom)
    recs = [
        Record(
            None if i % 7 == 0 else b"v" * (i % 50),
            key=None if i % 3 == 0 else b"key-%d" % (i % 11),
            headers=[("a", b"1"), deliver_at_header(1000 + i)] if i % 2 else None,
            timestamp_ms=BASE_TS + i if i % 5 == 0 else 0,
        )
        for i in range(500)
    ]
    # a format-1 frame, then a compacted (format-2) one: offsets 250, 252, ...
    compacted = [(250 + 2 * j, r) for j, r in enumerate(recs[250:])]
    data = _frame(0, recs[:250]) + build_offset_frame(250, compacted, BASE_TS, last_offset=800)
    m = share_metadata(data, 0, want_keys=True, want_delays=True)
    assert m.offsets.tolist() == [*range(250), *range(250, 750, 2)]
    assert m.deliver_at.tolist() == [1000 + i if i % 2 else 0 for i in range(500)]
    assert m.key_hash.tolist() == [key_hash(r.key) for r in recs]
    _check(data, 0)


def test_format2_deltas_that_do_not_increase_are_corruption() -> None:
    """A compacted frame whose record offsets repeat is CorruptRecordError, as in
    decode_columns."""
    frame = build_offset_frame(10, [(10, Record(b"a")), (12, Record(b"b"))], BASE_TS)
    assert frame.count(b"\x28\x02") == 1
    data = frame.replace(b"\x28\x02", b"\x28\x00")  # offset 12 -> 10 (the CRC is not read)
    with pytest.raises(CorruptRecordError, match="do not increase"):
        share_metadata(data, 0, want_keys=False, want_delays=False)
    with pytest.raises(CorruptRecordError, match="do not increase"):
        decode_objects(stored_frames(data), 0)
    past_end = build_offset_frame(10, [(10, Record(b"a")), (12, Record(b"b"))], BASE_TS)
    data = past_end.replace(b"\x28\x02", b"\x28\x09")  # offset 19 > last offset 12
    with pytest.raises(CorruptRecordError, match="do not increase"):
        share_metadata(data, 0, want_keys=False, want_delays=False)


def test_a_header_that_does_not_parse_is_corruption() -> None:
    """A Header message whose name runs past it (bytes no producer writes) is reported as
    CorruptRecordError, not read as some other time."""
    inner = b"\x0a\x30abc"  # a 48-byte name in a 5-byte header
    body = b"\x12\x01x" + b"\x22" + bytes([len(inner)]) + inner
    rec = b"\x7a" + bytes([len(body)]) + body
    data = encode_frame(rec, 1, 0, BASE_TS)
    with pytest.raises(CorruptRecordError, match="headers do not parse"):
        share_metadata(data, 0, want_keys=False, want_delays=True)
    # without want_delays the headers are not read at all
    assert share_metadata(data, 0, want_keys=False, want_delays=False).offsets.tolist() == [0]
