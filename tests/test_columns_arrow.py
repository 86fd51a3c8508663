"""ColumnBatch.to_arrow(): the records round-trip, the zero-copy columns really
share memory with the numpy buffers, and a missing pyarrow names the extra.

Needs pyarrow (in the ``dev`` extra); pandas, Polars and DuckDB are not used.
"""

from __future__ import annotations

import gc
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.wire import (
    ColumnBatch,
    Record,
    decode_columns,
    empty_columns,
    encode_frame,
    encode_record,
    parse_fetch,
)
from logstore.wire._columns import ARROW_EXTRA

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pa() -> Any:
    return pytest.importorskip("pyarrow")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _columns(
    batches: list[list[Record]], start: int = 0, max_records: int | None = None
) -> tuple[ColumnBatch, list[Record]]:
    """Encode ``batches`` as stored frames, decode them as columns; (columns, expected)."""
    frames, expected, offset, base_ts = [], [], 0, 1000
    for i, recs in enumerate(batches):
        data = b"".join(encode_record(r.value, r.key, r.headers, r.timestamp_ms) for r in recs)
        frames.append(encode_frame(data, len(recs), offset, base_ts + i))
        expected += [
            Record(r.value, r.key, r.headers, r.timestamp_ms or base_ts + i, offset + j)
            for j, r in enumerate(recs)
        ]
        offset += len(recs)
    reply = b"".join(frames) + b"\x10" + _varint(offset) + b"\x18" + _varint(0)
    want = [r for r in expected if r.offset >= start]
    if max_records is not None:
        want = want[:max_records]
    return decode_columns("t", 7, parse_fetch(reply), start, max_records), want


def _rows(pa: Any, rb: Any) -> list[Record]:
    """The Arrow batch read back as Records (timestamps as their int64 milliseconds)."""
    ts = rb.column("timestamp_ms").cast(pa.int64()).to_pylist()
    return [
        Record(v, k, [(h["key"], h["value"]) for h in hs], t, o)
        for o, t, k, v, hs in zip(
            rb.column("offset").to_pylist(),
            ts,
            rb.column("key").to_pylist(),
            rb.column("value").to_pylist(),
            rb.column("headers").to_pylist(),
            strict=True,
        )
    ]


_records = st.builds(
    Record,
    value=st.none() | st.binary(max_size=120),
    key=st.none() | st.binary(max_size=20),
    headers=st.none() | st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=8)), max_size=3),
    timestamp_ms=st.sampled_from([0, 1, -5, 2**40, 1_700_000_000_000]),
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_records, min_size=1, max_size=15), min_size=1, max_size=4),
    start=st.integers(0, 40),
    max_records=st.none() | st.integers(1, 30),
)
def test_arrow_round_trips_the_records(
    batches: list[list[Record]], start: int, max_records: int | None
) -> None:
    """Every record (null and empty keys/values, headers, any start and max_records) comes
    back from the Arrow batch unchanged, with nulls as Arrow nulls."""
    pa = pytest.importorskip("pyarrow")
    cols, want = _columns(batches, start, max_records)
    rb = cols.to_arrow()
    rb.validate(full=True)
    assert rb.num_rows == len(want)
    assert _rows(pa, rb) == want
    assert rb.column("key").null_count == sum(r.key is None for r in want)
    assert rb.column("value").null_count == sum(r.value is None for r in want)
    assert rb.schema.metadata == {b"topic": b"t", b"partition": b"7"}


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


@pytest.mark.parametrize("start", [0, 1234])
def test_zero_copy_columns_share_the_numpy_buffers(pa: Any, start: int) -> None:
    """offset, timestamp_ms and the key/value offsets and data are views of the ColumnBatch's
    numpy arrays (same addresses), also for a batch sliced from a start offset."""
    recs = [Record(bytes([i % 251]) * 100, b"k%d" % (i % 10)) for i in range(3000)]
    cols, _ = _columns([recs[:1500], recs[1500:]], start)
    rb = cols.to_arrow()
    assert rb.num_rows == 3000 - start
    assert rb.column("offset").buffers()[1].address == _address(cols.offsets)
    assert rb.column("timestamp_ms").buffers()[1].address == _address(cols.timestamps_ms)
    for name, data, offs in (
        ("key", cols.keys, cols.key_offsets),
        ("value", cols.values, cols.value_offsets),
    ):
        bitmap, offsets, buf = rb.column(name).buffers()
        assert bitmap is None  # no nulls: no bitmap made at all
        assert offsets.address == _address(offs)
        assert buf.address == _address(data)


def test_nulls_get_a_bitmap_and_keep_zero_copy_data(pa: Any) -> None:
    """A column with nulls gets an Arrow validity bitmap (the copied part); its data and
    offsets are still the numpy buffers."""
    recs = [Record(None if i % 3 == 0 else b"v" * 10, None if i % 2 else b"k") for i in range(300)]
    cols, want = _columns([recs])
    rb = cols.to_arrow()
    assert rb.column("value").to_pylist() == [r.value for r in want]
    assert rb.column("key").to_pylist() == [r.key for r in want]
    bitmap, offsets, data = rb.column("value").buffers()
    assert bitmap is not None
    assert offsets.address == _address(cols.value_offsets)
    assert data.address == _address(cols.values)


def test_batch_outlives_the_column_batch(pa: Any) -> None:
    """The Arrow batch keeps the numpy memory alive after the ColumnBatch is gone."""
    cols, want = _columns([[Record(b"x%d" % i, headers=[("h", b"%d" % i)]) for i in range(200)]])
    rb = cols.to_arrow()
    del cols
    gc.collect()
    assert _rows(pa, rb) == want


def test_empty_batch_has_the_schema(pa: Any) -> None:
    """An empty ColumnBatch gives an empty batch with the full schema."""
    rb = empty_columns("t", 0).to_arrow()
    assert rb.num_rows == 0
    assert rb.schema.names == ["offset", "timestamp_ms", "key", "value", "headers"]
    assert rb.schema.field("timestamp_ms").type == pa.timestamp("ms", tz="UTC")


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pyarrow, to_arrow() raises ImportError naming `logstore[analytics]`."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    cols, _ = _columns([[Record(b"a")]])
    with pytest.raises(ImportError, match=r"pip install 'logstore\[analytics\]'"):
        cols.to_arrow()


def test_the_named_extra_exists_and_dev_has_pyarrow() -> None:
    """The extra the error names is in pyproject.toml and installs pyarrow; `dev` has it too."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name in (ARROW_EXTRA, "dev"):
        assert any(req.startswith("pyarrow") for req in extras[name]), name
