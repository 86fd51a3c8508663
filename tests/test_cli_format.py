"""logctl's output and time parsing, in process: the JSON record format and --from-time."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli._format import MAX_TIME_MS, MIN_TIME_MS, ArgumentError, format_ms, parse_time, record_json
from logstore.wire import Record

NOW_MS = 1_700_000_000_000


def test_json_record_has_the_documented_fields_in_order() -> None:
    """A record is one JSON object: topic, partition, offset, timestamp_ms, key, value, headers."""
    line = record_json("orders", 3, Record(b"v", b"k", [("h", b"x")], 5, 42))
    assert "\n" not in line
    obj = json.loads(line)
    assert list(obj) == ["topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"]
    assert obj == {
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "timestamp_ms": 5,
        "key": "k",
        "value": "v",
        "headers": [["h", "x"]],
    }


@given(
    key=st.none() | st.binary(max_size=20) | st.text(max_size=10).map(str.encode),
    value=st.none() | st.binary(max_size=20) | st.text(max_size=10).map(str.encode),
    headers=st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), max_size=3),
)
def test_json_bytes_are_text_or_b64_exactly_one_and_null_when_absent(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """key/value appear as a UTF-8 string or under *_b64 (never both), null when absent;
    header values are strings or {"b64": ...}; everything decodes back to the bytes."""

    line = record_json("t", 0, Record(value, key, headers, 1, 0))
    assert line.isascii()
    obj = json.loads(line)
    for name, data in (("key", key), ("value", value)):
        present = [k for k in (name, name + "_b64") if k in obj]
        assert len(present) == 1
        if data is None:
            assert obj[name] is None
        elif present[0] == name:
            assert obj[name].encode() == data
        else:
            assert base64.b64decode(obj[name + "_b64"]) == data
    back = [
        (n, v.encode() if isinstance(v, str) else base64.b64decode(v["b64"]))
        for n, v in obj["headers"]
    ]
    assert back == headers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-90s", NOW_MS - 90_000),
        ("-15m", NOW_MS - 900_000),
        ("-1h", NOW_MS - 3_600_000),
        ("-2d", NOW_MS - 2 * 86_400_000),
        ("-250ms", NOW_MS - 250),
        ("2024-05-01T12:00:00Z", int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)),
        ("2024-05-01T12:00:00", int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)),
        ("2024-05-01T14:00:00+02:00", int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)),
        ("2024-05-01", int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000)),
        ("1700000000123", 1_700_000_000_123),
    ],
)
def test_times_parse_as_documented(text: str, expected: int) -> None:
    """Relative times count back from now; ISO 8601 without a zone is UTC; digits are epoch ms."""
    assert parse_time(text, now_ms=NOW_MS) == expected


@pytest.mark.parametrize("text", ["yesterday", "-5y", "1h", "2024-13-01", ""])
def test_bad_times_are_argument_errors(text: str) -> None:
    """Anything else is an ArgumentError (exit 2) explaining the accepted forms."""
    with pytest.raises(ArgumentError, match="ISO 8601"):
        parse_time(text, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "text",
    ["99999999999999999999", "9223372036854775806", "253402300800000", "-99999999999d"],
)
def test_times_beyond_what_a_datetime_holds_are_argument_errors(text: str) -> None:
    """A time outside years 1..9999 is an ArgumentError naming the range, never a ValueError."""
    with pytest.raises(ArgumentError, match=r"out of range: .*0001-01-01 \.\. 9999-12-31"):
        parse_time(text, now_ms=NOW_MS)


def test_the_edges_of_the_time_range_parse_and_print_exactly() -> None:
    """The last ms of year 9999 round-trips through parse_time and format_ms; a stored
    timestamp beyond it prints as its number of ms."""
    last = parse_time("9999-12-31T23:59:59.999Z")
    assert last == 253_402_300_799_999 == MAX_TIME_MS
    assert format_ms(last) == "9999-12-31T23:59:59.999+00:00"
    assert parse_time(str(last)) == last
    assert format_ms(MIN_TIME_MS) == "0001-01-01T00:00:00.000+00:00"
    assert format_ms(2**63 - 1) == f"{2**63 - 1} ms since the epoch"
    assert format_ms(-(2**63)) == f"{-(2**63)} ms since the epoch"
