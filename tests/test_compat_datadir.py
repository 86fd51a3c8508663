"""A data directory written by release 0.1.0 opens, reads and accepts appends in this release.

``tests/data/datadir-0.1.0.tar.gz`` was written by the 0.1.0 storage engine (commit 932673a) and
closed cleanly: two topics, several segments with sparse indexes, headers, null and empty keys and
values, records deleted by ``delete_records``, and an idempotent producer's batches with their
snapshot. ``datadir-0.1.0.expected.json`` lists every record it held, as 0.1.0 read them back.
Any change to the on-disk format must keep these tests green (or convert the directory on open).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from logstore import Record, Store
from logstore.wire import encode_records

DATA = Path(__file__).parent / "data"


def _unpack(tmp_path: Path) -> str:
    with tarfile.open(DATA / "datadir-0.1.0.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return str(tmp_path / "datadir")


def _expected() -> dict[str, Any]:
    with open(DATA / "datadir-0.1.0.expected.json") as f:
        result: dict[str, Any] = json.load(f)
    return result


def _all_records(store: Store, topic: str, partition: int) -> list[list[Any]]:
    start, end = store.offsets(topic, partition)
    out: list[list[Any]] = []
    offset = start
    while offset < end:
        records = store.read(topic, partition, offset=offset, max_bytes=1 << 20)
        out += [
            [
                r.offset,
                r.timestamp_ms,
                None if r.key is None else r.key.hex(),
                None if r.value is None else r.value.hex(),
                [[k, v.hex()] for k, v in r.headers],
            ]
            for r in records
        ]
        offset = records[-1].offset + 1
    return out


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "after-crash"])
def test_release_0_1_0_directory_reads_back_every_record(tmp_path: Path, clean: bool) -> None:
    """Every record, offset, timestamp and header of the 0.1.0 directory reads back unchanged,
    whether it was closed cleanly or (marker removed) has to be recovered."""
    path = _unpack(tmp_path)
    if not clean:
        os.unlink(os.path.join(path, ".clean_shutdown"))
    expected = _expected()
    with Store.open(path) as store:
        assert {t.name: t.partitions for t in store.topics()} == {"events": 2, "keyed": 1}
        for key, want in expected.items():
            if key == "producer":
                continue
            topic, partition = key.split("/")
            assert store.offsets(topic, int(partition)) == (want["start"], want["end"])
            assert _all_records(store, topic, int(partition)) == want["records"]
        # 0.1.0 stored inflated max timestamps (append time when records carry their
        # own): batch 20's record 0 is found, not an earlier batch's last offset.
        assert store.offset_for_time("events", 0, 1_700_000_000_000 + 20_000).offset == 100


def test_release_0_1_0_directory_takes_appends_and_keeps_producer_state(tmp_path: Path) -> None:
    """Appends continue after the old log end, the old idempotent producer's retry is still
    recognised as a duplicate, and everything survives a second reopen."""
    path = _unpack(tmp_path)
    producer = _expected()["producer"]
    with Store.open(path) as store:
        _, end = store.offsets("events", 0)
        first = store.append("events", 0, [Record(key=b"new", value=b"after-upgrade")], sync=True)
        assert first == end
        body, n, _ = encode_records([b"idem-2-%d" % i for i in range(4)])
        retry = store.append_raw(
            "keyed", 0, body, n, producer_id=producer["id"], producer_epoch=producer["epoch"],
            base_sequence=8,
        )  # fmt: skip
        assert retry.duplicate
    with Store.open(path) as store:
        last = store.read("events", 0, offset=end)
        assert [(r.offset, r.key, r.value) for r in last] == [(end, b"new", b"after-upgrade")]
