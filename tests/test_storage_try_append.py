"""Store.try_append_raw: the broker's event-loop append never waits for a partition's lock."""

from __future__ import annotations

import pytest

from logstore.errors import InvalidArgumentError, UnknownProducerIdError, UnknownTopicError
from logstore.storage import Store
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import encode_values, split_produce_request
from tests.simdisk import SimDisk

ROOT = "/data"


def _batch(values: list[bytes]) -> tuple[bytes, int, int]:
    raw = pb.ProduceRequest(topic="t", partition=0).SerializeToString() + encode_values(values)
    split = split_produce_request(raw)
    return bytes(split.records), split.record_count, split.max_timestamp_ms


def _store() -> Store:
    disk = SimDisk(seed=0)
    disk.mkdir(ROOT)
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    return store


def test_try_append_gives_none_and_writes_nothing_while_the_lock_is_held() -> None:
    """With the partition's lock held (a roll, retention, a cleaner swap) the call
    returns None at once and nothing is written; once free it appends and wakes
    listeners like append_raw."""
    store = _store()
    records, count, max_ts = _batch([b"a", b"b"])
    woken: list[tuple[str, int, int]] = []
    store.add_append_listener(lambda t, p, end: woken.append((t, p, end)))
    lg = store.partition("t", 0)
    with lg._lock:  # what another writer holds
        got = store.try_append_raw(
            "t", 0, records, count, base_timestamp_ms=None, max_timestamp_ms=max_ts
        )
    assert got is None
    assert store.offsets("t", 0) == (0, 0) and woken == []
    res = store.try_append_raw(
        "t", 0, records, count, base_timestamp_ms=None, max_timestamp_ms=max_ts
    )
    assert res is not None and (res.base_offset, res.last_offset) == (0, 1)
    assert woken == [("t", 0, 2)]
    assert [r.value for r in store.read("t", 0, 0)] == [b"a", b"b"]
    store.close()


def test_try_append_refuses_what_append_raw_refuses() -> None:
    """Same checks as append_raw: an empty batch, an unknown topic, a producer id
    never issued."""
    store = _store()
    records, count, max_ts = _batch([b"a"])
    with pytest.raises(InvalidArgumentError):
        store.try_append_raw("t", 0, b"", 0, base_timestamp_ms=None, max_timestamp_ms=max_ts)
    with pytest.raises(UnknownTopicError):
        store.try_append_raw(
            "nope", 0, records, count, base_timestamp_ms=None, max_timestamp_ms=max_ts
        )
    with pytest.raises(UnknownProducerIdError, match="never issued"):
        store.try_append_raw(
            "t", 0, records, count, base_timestamp_ms=None, max_timestamp_ms=max_ts,
            producer_id=10**9,
        )  # fmt: skip
    assert store.offsets("t", 0) == (0, 0)
    store.close()
