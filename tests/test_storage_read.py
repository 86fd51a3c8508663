"""Embedded reads: ``Store.read`` (Record objects) and ``Store.read_columns``
(the client's ColumnBatch) decode the same stored frames to the same records."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore import Store
from logstore.v1 import records_pb2
from logstore.wire import ColumnBatch, Record

_records = st.lists(
    st.builds(
        Record,
        value=st.none() | st.binary(max_size=40),
        key=st.none() | st.binary(max_size=8),
        headers=st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2),
        timestamp_ms=st.integers(-(10**12), 10**13),
    ),
    min_size=1,
    max_size=12,
)


def _same(cols: ColumnBatch, recs: list[Record]) -> None:
    assert cols.to_records() == recs
    assert cols.offsets.dtype == np.int64 and cols.timestamps_ms.dtype == np.int64


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(_records, min_size=1, max_size=5), data=st.data())
def test_read_columns_equal_read(batches: list[list[Record]], data: st.DataObject) -> None:
    """read_columns gives the records read gives (keys, nulls, headers, timestamps),
    from any start offset and for any max_bytes."""
    with tempfile.TemporaryDirectory() as d, Store.open(d) as store:
        store.create_topic("t", 1)
        expected: list[Record] = []
        for i, b in enumerate(batches):
            base = store.append("t", 0, b, timestamp_ms=1_000 + i)
            for k, r in enumerate(b):
                expected.append(
                    Record(r.value, r.key, r.headers, r.timestamp_ms or 1_000 + i, base + k)
                )
        start = data.draw(st.integers(0, len(expected) - 1))
        max_bytes = data.draw(st.sampled_from([1, 100, 1 << 20]))
        recs = store.read("t", 0, start, max_bytes)
        assert recs and recs == expected[start : start + len(recs)]
        cols = store.read_columns("t", 0, start, max_bytes)
        assert (cols.topic, cols.partition) == ("t", 0)
        _same(cols, recs)


def test_read_columns_at_end_is_empty(tmp_path: Path) -> None:
    """read_columns at the log end offset returns an empty batch, like read."""
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append("t", 0, [b"a", b"bb"])
        assert store.read("t", 0, 2) == []
        cols = store.read_columns("t", 0, 2)
        assert len(cols) == 0 and len(cols.value_offsets) == 1


def test_read_fixed_size_values_across_batches(tmp_path: Path) -> None:
    """Fixed-size values (the vectorized path) read back exactly, across many batches."""
    values = [bytes([i % 251]) * 100 for i in range(3000)]
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        for i in range(0, 3000, 1000):
            store.append("t", 0, values[i : i + 1000], timestamp_ms=5)
        got: list[bytes | None] = []
        off = 0
        while off < 3000:
            cols = store.read_columns("t", 0, off, 50_000)
            got += [cols.value(i) for i in range(len(cols))]
            assert cols.offsets[0] == off and (np.diff(cols.offsets) == 1).all()
            off = int(cols.offsets[-1]) + 1
        assert got == values
        recs = store.read("t", 0, 1500, 1 << 20)
        assert [r.value for r in recs] == values[1500 : 1500 + len(recs)]
        assert {r.timestamp_ms for r in recs} == {5} and recs[0].offset == 1500


def test_fields_after_a_header_are_not_lost(tmp_path: Path) -> None:
    """A record whose key, value or timestamp follow its headers (valid protobuf,
    fields out of number order) reads back whole through the columnar path."""

    def record(i: int) -> bytes:
        first = records_pb2.Record(headers=[records_pb2.Header(key="h", value=b"x")])
        then = records_pb2.Record(key=b"k%d" % i, value=b"v%d" % i, timestamp_ms=7_000 + i)
        body = first.SerializeToString() + then.SerializeToString()
        return b"\x7a" + bytes([len(body)]) + body

    n = 200  # above the count where Store.read decodes through the columns
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append_raw("t", 0, b"".join(record(i) for i in range(n)), n, base_timestamp_ms=5)
        expected = [Record(b"v%d" % i, b"k%d" % i, [("h", b"x")], 7_000 + i, i) for i in range(n)]
        assert store.read("t", 0, 0) == expected
        assert store.read_columns("t", 0, 0).to_records() == expected
        assert store.read("t", 0, n - 1) == expected[-1:]  # one record: upb, the reference
