"""Output helpers of logctl: JSON records, tables, times, one-line errors.

Records and JSON go through plain ``sys.stdout.write`` (Rich would wrap at 80
columns and read ``[...]`` as markup when piped). Tables use Rich on a
terminal and plain aligned columns otherwise, so scripts can ``awk`` them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from logstore.wire import Record


class ArgumentError(Exception):
    """A bad argument found before any request was sent: exit 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: the polite stop of a supervisor. ``consume --follow`` ends with exit 0
    on it; SIGINT (Ctrl-C, KeyboardInterrupt itself) exits 130 like any Unix tool."""


class ReaderGone(Exception):
    """stdout's reader went away (``logctl consume | head``): stop quietly, exit 0.

    Not an OSError, so Typer's own EPIPE handling (exit 1) does not see it.
    """


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# The C string encoder of json.dumps; ASCII output (\u escapes), so no reader
# trips over encodings or U+2028 line separators inside a JSON line.
_encode_str = json.encoder.encode_basestring_ascii


def _bytes_field(name: str, data: bytes | None) -> str:
    """``"name":"text"``, ``"name_b64":"..."`` when not UTF-8, or ``"name":null``."""
    if data is None:
        return f'"{name}":null'
    try:
        return f'"{name}":{_encode_str(data.decode("utf-8"))}'
    except UnicodeDecodeError:
        return f'"{name}_b64":"{b64(data)}"'


def _header_value(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": b64(data)}


def record_json(topic: str, partition: int, r: Record) -> str:
    """One record as one JSON line (without the newline), the documented format::

        {"topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"}

    key and value are strings when they are UTF-8, else under ``key_b64`` /
    ``value_b64`` (exactly one of the two; ``null`` when absent); headers are
    ``[name, value]`` pairs, the value a string or ``{"b64": ...}``. Built by
    hand (json.dumps of a dict per record costs ~3x more on 100,000 records).
    """
    headers = (
        json.dumps(
            [[name, _header_value(v)] for name, v in r.headers],
            separators=(",", ":"),
        )
        if r.headers
        else "[]"
    )
    return (
        f'{{"topic":{_encode_str(topic)},"partition":{partition},"offset":{r.offset},'
        f'"timestamp_ms":{r.timestamp_ms},{_bytes_field("key", r.key)},'
        f'{_bytes_field("value", r.value)},"headers":{headers}}}'
    )


def fields_json(obj: Any, *properties: str) -> dict[str, Any]:
    """A dataclass's fields (in order, not recursed into), then ``properties``:
    the JSON object of a client description, one definition for every command
    that prints one."""
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return out | {name: getattr(obj, name) for name in properties}


def write_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Aligned table: Rich on a terminal, plain columns when piped."""
    if sys.stdout.isatty():
        t = Table(title=title, show_edge=False, header_style="bold cyan")
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if i and _numeric(rows, i) else "left")
        for row in rows:
            t.add_row(*(str(c) for c in row))
        Console(highlight=False).print(t)
        return
    if title:
        sys.stdout.write(title + "\n")
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


def _numeric(rows: Sequence[Sequence[Any]], i: int) -> bool:
    return all(isinstance(row[i], int) for row in rows)


_RELATIVE: Final = re.compile(r"^-(\d+)(ms|s|m|h|d)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
#: The times logctl takes and prints: what a datetime can hold, years 1..9999
#: (epoch ms -62135596800000..253402300799999). Every record timestamp and
#: ListOffsets time is an int64 of ms, far wider (292 million years): a time
#: outside this range is a typo, refused as an argument instead of reaching
#: the broker or a datetime that cannot show it.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
MIN_TIME_MS: Final = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MS
MAX_TIME_MS: Final = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MS


_DURATION: Final = re.compile(r"^(\d+)(ms|s|m|h|d)$")


def parse_duration(text: str, option: str) -> int:
    """A duration as milliseconds: a whole number and a unit, 500ms, 30s, 10m, 2h, 1d.

    Raises ArgumentError naming ``option`` and the accepted forms.
    """
    s = text.strip()
    m = _DURATION.match(s)
    if m is None or not s.isascii():
        raise ArgumentError(
            f"bad duration {text!r} for {option}: use a whole number and a unit, "
            "500ms, 30s, 10m, 2h or 1d"
        )
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_time(text: str, now_ms: int | None = None) -> int:
    """ISO 8601 (UTC when no zone), a relative time (-90s, -15m, -1h, -2d) or epoch ms.

    Raises ArgumentError naming the accepted forms, or the accepted range for
    a time before year 1 or after year 9999.
    """
    s = text.strip()
    m = _RELATIVE.match(s)
    if m and s.isascii():
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        ms = now - int(m.group(1)) * _UNIT_MS[m.group(2)]
    elif s.isascii() and s.isdigit():
        ms = int(s)
    else:
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ArgumentError(
                f"bad time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z; UTC when no zone), "
                "a relative time (-90s, -15m, -1h, -2d) or epoch milliseconds"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ms = (dt - _EPOCH) // _MS  # exact: no float between the ISO text and the ms
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            ms = MIN_TIME_MS - 1
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ArgumentError(
            f"time {text!r} is out of range: times are 0001-01-01 .. 9999-12-31 UTC "
            f"(epoch ms {MIN_TIME_MS}..{MAX_TIME_MS})"
        )
    return ms


def format_ms(ms: int) -> str:
    """ISO 8601 in UTC with ms; a timestamp no datetime can hold (another client may
    store any int64) is shown as its number of ms."""
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return f"{ms} ms since the epoch"
    # timedelta, not fromtimestamp(ms / 1000): a float of 12 digits before the
    # point rounds 9999-12-31T23:59:59.999 up into year 10000.
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
