"""Regression tests for admin calls racing reads and writes (issue 9, item 12).

Each test failed on the code before the fix.

Most run on the simulated disk (``tests/simdisk.py``): a clean close, kill -9
(``process_crash``: the page cache survives), injected EIO/ENOSPC and a full
disk (``capacity``). The ones about symlinks and the rebuild command use real
files in ``tmp_path``.
"""

from __future__ import annotations

import pytest

from logstore.errors import (
    OffsetOutOfRangeError,
    UnknownTopicError,
)
from logstore.storage import Store
from tests.storagehelp import ROOT, sim_disk

pytestmark = pytest.mark.timeout(60)


# --- 12. races give precise errors ----------------------------------------------------------
def test_search_by_time_racing_delete_records_gives_a_domain_error() -> None:
    """offset_for_time while DeleteRecords removes the segment being searched raises
    OffsetOutOfRangeError or answers; never an AssertionError."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config={"segment_bytes": 1024})
    for i in range(12):
        store.append("t", 0, [b"r" * 400, b"s" * 400], timestamp_ms=1000 + i)
    lg = store.partition("t", 0)
    first = lg.segments[0]
    real = first.ensure_indexes

    def delete_meanwhile() -> None:
        real()
        first.ensure_indexes = real  # type: ignore[method-assign]
        store.delete_records("t", 0, 16)  # deletes the first segments under the search

    first.ensure_indexes = delete_meanwhile  # type: ignore[method-assign]
    try:
        found = lg.offset_for_time(0)
    except OffsetOutOfRangeError:
        pass
    else:
        assert found is not None and found.offset >= 0
    assert lg.offset_for_time(0) == (16, 1008)
    store.close()


def test_append_and_sync_racing_delete_topic_give_unknown_topic() -> None:
    """Writes that lose the race with DeleteTopic fail with UnknownTopicError, not an
    I/O error about a directory that is gone."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    lg = store.partition("t", 0)
    store.append("t", 0, [b"unsynced"])
    store.delete_topic("t")
    with pytest.raises(UnknownTopicError):
        lg.sync_to(1).result(timeout=5)
    with pytest.raises(UnknownTopicError):
        lg.append(b"\x00", 1)
    with pytest.raises(UnknownTopicError):
        store.append("t", 0, [b"late"])
    store.close()


def test_partition_lookup_racing_delete_topic_says_unknown_topic() -> None:
    """A partition lookup that runs while DeleteTopic unpublishes the topic gets
    UnknownTopicError, never UnknownPartitionError for a partition the topic had."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", partitions=2)
    seen: list[BaseException] = []

    class Logs(dict):  # type: ignore[type-arg]
        def pop(self, key: object, *default: object) -> object:
            try:  # what a concurrent Produce sees between two steps of the delete
                store.partition("t", 0)
            except LookupError as exc:
                seen.append(exc)
            return super().pop(key, *default)

    store._logs = Logs(store._logs)
    store.delete_topic("t")
    assert seen and all(type(e) is UnknownTopicError for e in seen), seen
    store.close()


def test_flush_racing_delete_topic_completes() -> None:
    """A flush whose wait on a partition fails because the topic was deleted meanwhile
    (the broker's periodic flush racing DeleteTopic) still flushes every other partition
    and returns, instead of raising UnknownTopicError with a traceback in the broker log."""
    from concurrent.futures import Future

    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("gone", partitions=1)
    store.create_topic("kept", partitions=1)
    store.append("gone", 0, [b"a"])
    store.append("kept", 0, [b"b"])
    gone = store.partition("gone", 0)

    def deleted_meanwhile(offset: int) -> Future[None]:
        fut: Future[None] = Future()
        fut.set_exception(UnknownTopicError("unknown topic 'gone' (deleted)"))
        return fut

    gone.sync_to = deleted_meanwhile  # type: ignore[method-assign]
    store.flush()
    after = disk.power_cut(keep_unsynced_changes=False)  # only what flush made durable
    store = Store.open(ROOT, fs=after)
    assert [r.value for r in store.read("kept", 0, 0)] == [b"b"]
    store.close()
