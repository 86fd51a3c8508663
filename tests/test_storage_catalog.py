"""Regression tests for topics.json and metadata changes (issue 9, items 3, 4, 5, 6, 13).

Each test failed on the code before the fix.

Most run on the simulated disk (``tests/simdisk.py``): a clean close, kill -9
(``process_crash``: the page cache survives), injected EIO/ENOSPC and a full
disk (``capacity``). The ones about symlinks and the rebuild command use real
files in ``tmp_path``.
"""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest

from logstore.errors import (
    CatalogError,
    DiskFullError,
    StorageError,
    UnknownTopicError,
)
from logstore.storage import Store
from tests.simdisk import SimDisk
from tests.storagehelp import ROOT, all_values, log_file, sim_disk

pytestmark = pytest.mark.timeout(60)


# --- 3. missing or short topics.json never deletes data -------------------------------------
def _store_with_data(disk: SimDisk, partitions: int = 2) -> None:
    store = Store.open(ROOT, fs=disk)
    store.create_topic("orders", partitions=partitions, config={"retention_ms": 99_000_000})
    for p in range(partitions):
        store.append("orders", p, [f"o{p}".encode()], sync=True)
    store.close()


def test_missing_topics_json_refuses_to_open_and_deletes_nothing() -> None:
    """Without topics.json the store refuses to open with one line naming the file
    and the way out; every partition directory is still there."""
    disk = sim_disk()
    _store_with_data(disk)
    disk.unlink(f"{ROOT}/topics.json")
    with pytest.raises(CatalogError) as exc_info:
        Store.open(ROOT, fs=disk)
    msg = str(exc_info.value)
    assert f"{ROOT}/topics.json is missing" in msg and "rebuild_catalog=True" in msg
    assert "\n" not in msg
    assert disk.exists(log_file("orders-0", 0)) and disk.exists(log_file("orders-1", 0))
    store = Store.open(ROOT, fs=disk, rebuild_catalog=True)
    assert [(t.name, t.partitions) for t in store.topics()] == [("orders", 2)]
    assert all_values(store, "orders", 1) == [b"o1"]
    store.close()
    store = Store.open(ROOT, fs=disk)  # the rebuilt catalog is durable
    assert all_values(store, "orders", 0) == [b"o0"]
    store.close()


def test_topics_json_listing_fewer_partitions_refuses_to_open() -> None:
    """A topics.json that lists fewer partitions than hold data refuses the open;
    the rebuild restores the count and keeps the topic's config."""
    disk = sim_disk()
    _store_with_data(disk, partitions=3)
    raw = json.loads(disk.read_file(f"{ROOT}/topics.json"))
    raw["orders"]["partitions"] = 2
    disk.write_file(f"{ROOT}/topics.json", json.dumps(raw).encode())
    with pytest.raises(CatalogError, match="orders-2"):
        Store.open(ROOT, fs=disk)
    assert disk.exists(log_file("orders-2", 0))
    store = Store.open(ROOT, fs=disk, rebuild_catalog=True)
    info = store.topic("orders")
    assert info.partitions == 3 and info.config.retention_ms == 99_000_000
    assert all_values(store, "orders", 2) == [b"o2"]
    store.close()


def test_damaged_topics_json_refuses_to_open() -> None:
    """A topics.json that does not parse refuses the open (naming the file)."""
    disk = sim_disk()
    _store_with_data(disk)
    disk.write_file(f"{ROOT}/topics.json", b'{"orders": {"partit')
    with pytest.raises(CatalogError, match=r"topics\.json is damaged"):
        Store.open(ROOT, fs=disk)
    assert disk.exists(log_file("orders-1", 0))


def test_rebuild_keeps_good_entries_and_deletes_nothing_of_the_damaged_one() -> None:
    """A rebuild after one malformed entry keeps the other topics' configs, and the
    rebuilt topic gets retention -1: old segments survive maintain() (a default
    7-day retention would delete data because its metadata was damaged)."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("old", partitions=1, config={"retention_ms": -1, "segment_bytes": 200})
    store.create_topic("fine", partitions=1, config={"retention_ms": 12_345_000})
    for i in range(5):  # several segments of records stamped in 2001
        store.append("old", 0, [b"x" * 100], timestamp_ms=1_000_000_000_000 + i)
    store.close()
    raw = json.loads(disk.read_file(f"{ROOT}/topics.json"))
    raw["old"]["partitions"] = "many"
    disk.write_file(f"{ROOT}/topics.json", json.dumps(raw).encode())
    with pytest.raises(CatalogError, match="topic 'old': partition count"):
        Store.open(ROOT, fs=disk)
    store = Store.open(ROOT, fs=disk, rebuild_catalog=True)
    assert store.topic("fine").config.retention_ms == 12_345_000
    assert store.topic("old").config.retention_ms == -1
    assert store.topic("old").config.retention_bytes == -1
    store.maintain()
    assert store.offsets("old", 0) == (0, 5)
    assert len(all_values(store, "old", 0)) == 5
    store.close()


def test_empty_partition_directory_of_an_interrupted_create_is_removed() -> None:
    """A partition directory topics.json does not list and that holds no record
    (a CreateTopic cut before topics.json was written) is removed at open."""
    disk = sim_disk()
    _store_with_data(disk)
    disk.mkdir(f"{ROOT}/half-0")
    disk.write_file(log_file("half-0", 0), b"")
    store = Store.open(ROOT, fs=disk)
    assert not disk.exists(f"{ROOT}/half-0")
    assert [t.name for t in store.topics()] == ["orders"]
    store.close()


def test_rebuild_catalog_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m logstore.storage rebuild-catalog DIR` rebuilds a lost topics.json."""
    from logstore.storage.__main__ import main

    with Store.open(tmp_path) as store:
        store.create_topic("events", partitions=2)
        store.append("events", 1, [b"kept"])
    (tmp_path / "topics.json").unlink()
    assert main(["rebuild-catalog", str(tmp_path)]) == 0
    assert "events\tpartitions=2" in capsys.readouterr().out
    with Store.open(tmp_path) as store:
        assert all_values(store, "events", 1) == [b"kept"]


# --- 4. names read back from topics.json --------------------------------------------------
def test_crafted_topic_name_in_topics_json_cannot_escape(tmp_path: Path) -> None:
    """A name like ../../x read back from topics.json is refused; nothing is created
    outside the data directory."""
    data = tmp_path / "data" / "deep"
    Store.open(data).close()
    bad = {"../../x": {"partitions": 1, "config": {}}}
    (data / "topics.json").write_text(json.dumps(bad))
    with pytest.raises(CatalogError, match=r"topics\.json is damaged"):
        Store.open(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["deep"]


# --- 5. metadata changes applied only once durable ------------------------------------------
def _fail_topics_json(disk: SimDisk, err: int = errno.ENOSPC) -> None:
    disk.inject(lambda op, path: err if op == "write_file" and "topics.json" in path else None)


def test_create_topic_that_fails_on_a_full_disk_is_not_live() -> None:
    """A CreateTopic whose topics.json write fails leaves no topic: appends to it
    fail, and no directory of it is left."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    _fail_topics_json(disk)
    with pytest.raises(DiskFullError):
        store.create_topic("orders")
    disk.clear_faults()
    assert [t.name for t in store.topics()] == []
    with pytest.raises(UnknownTopicError):
        store.append("orders", 0, [b"payment"], sync=True)
    assert not disk.exists(f"{ROOT}/orders-0")
    store.create_topic("orders")  # works once there is space
    assert store.append("orders", 0, [b"payment"], sync=True) == 0
    store.close()


def test_create_partitions_and_alter_config_that_fail_change_nothing() -> None:
    """Failed CreatePartitions / AlterTopicConfig leave the topic as it was."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config={"retention_ms": 5000})
    _fail_topics_json(disk)
    with pytest.raises(DiskFullError):
        store.create_partitions("t", 3)
    with pytest.raises(DiskFullError):
        store.alter_topic_config("t", {"retention_ms": 7000})
    disk.clear_faults()
    assert store.topic("t").partitions == 1
    assert store.topic("t").config.retention_ms == 5000
    assert store.partition("t", 0).config.retention_ms == 5000
    assert not disk.exists(f"{ROOT}/t-1")
    store.close()


def test_failed_delete_topic_keeps_the_topic() -> None:
    """A DeleteTopic that fails part-way leaves the topic listed and readable."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", partitions=2)
    store.append("t", 1, [b"kept"], sync=True)
    disk.fail_next("replace", errno.EIO)
    with pytest.raises(StorageError):
        store.delete_topic("t")
    assert [t.name for t in store.topics()] == ["t"]
    assert all_values(store, "t", 1) == [b"kept"]
    assert store.append("t", 1, [b"more"], sync=True) == 1
    store.close()
    store = Store.open(ROOT, fs=disk)
    assert all_values(store, "t", 1) == [b"kept", b"more"]
    store.close()


def test_failed_delete_records_does_not_move_the_start() -> None:
    """A DeleteRecords whose checkpoint write fails leaves the log start offset."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    store.append("t", 0, [b"a", b"b", b"c", b"d"], sync=True)
    disk.inject(
        lambda op, path: errno.ENOSPC if op == "write_file" and "log-start" in path else None
    )
    with pytest.raises(DiskFullError):
        store.delete_records("t", 0, 3)
    disk.clear_faults()
    assert store.offsets("t", 0) == (0, 4)
    assert all_values(store) == [b"a", b"b", b"c", b"d"]
    assert store.delete_records("t", 0, 3) == 3
    store.close()


def test_topic_created_again_after_a_failed_catalog_write_keeps_its_records() -> None:
    """DeleteTopic whose topics.json write fails, then CreateTopic of the same name:
    after kill -9 the new topic does not inherit the old one's log start offset
    (which would hide its acknowledged records)."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t")
    store.append("t", 0, [b"old-%d" % i for i in range(10)], sync=True)
    assert store.delete_records("t", 0, 8) == 8  # log start 8 in the checkpoint
    failed = []

    def once(op: str, path: str) -> int | None:
        if op == "write_file" and "topics.json" in path and not failed:
            failed.append(path)
            return errno.EIO
        return None

    disk.inject(once)
    store.delete_topic("t")  # the data goes; the smaller topics.json is not written
    disk.clear_faults()
    assert failed
    store.create_topic("t")
    assert store.append("t", 0, [b"new-%d" % i for i in range(5)], sync=True) == 0
    disk = disk.process_crash()
    store = Store.open(ROOT, fs=disk)
    assert store.offsets("t", 0) == (0, 5)
    assert all_values(store) == [b"new-%d" % i for i in range(5)]
    store.close()


# --- 6. a full disk can be recovered through the API ----------------------------------------
def test_delete_topic_and_delete_records_work_on_a_full_disk() -> None:
    """With the disk 100 % full, DeleteTopic and a DeleteRecords that frees whole
    segments succeed, and the space they free takes appends again."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("big", config={"segment_bytes": 2048})
    store.create_topic("keep", config={"segment_bytes": 2048})
    for i in range(20):
        store.append("big", 0, [bytes([i]) * 900], sync=True)
        store.append("keep", 0, [bytes([i]) * 900], sync=True)
    disk.capacity = disk.used_bytes()
    with pytest.raises(DiskFullError):
        store.append("keep", 0, [b"x" * 900], sync=True)
    store.delete_topic("big")
    assert [t.name for t in store.topics()] == ["keep"]
    assert store.delete_records("keep", 0, 15) == 15
    assert store.append("keep", 0, [b"after"], sync=True) == 20
    store.close()
    store = Store.open(ROOT, fs=disk)
    assert [t.name for t in store.topics()] == ["keep"]
    assert store.offsets("keep", 0) == (15, 21)
    store.close()


def test_restart_after_a_crash_on_a_full_disk_is_not_refused() -> None:
    """kill -9 after CreateTopic, then a restart with the disk 100 % full: the store
    opens and serves what it has."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", partitions=2)
    store.append("t", 0, [b"a"], sync=True)
    disk = disk.process_crash()
    disk.capacity = disk.used_bytes()
    store = Store.open(ROOT, fs=disk)
    assert all_values(store) == [b"a"]
    store.close()


# --- 13. listing does not wait for a big create --------------------------------------------
def test_listing_topics_does_not_wait_for_the_store_lock() -> None:
    """topics() answers while another thread holds the store lock (a big create)."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("a")
    answer: list[list[str]] = []
    with store._lock:
        t = threading.Thread(target=lambda: answer.append([x.name for x in store.topics()]))
        t.start()
        t.join(timeout=5)
    assert answer == [["a"]]
    store.close()


def test_topics_json_is_the_same_as_a_full_dump() -> None:
    """The incrementally built topics.json equals json.dumps of the whole catalog."""
    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    for name in ["b", "a", "__internal", "c.d"]:
        store.create_topic(name, partitions=2, internal=name.startswith("__"))
    store.alter_topic_config("a", {"retention_ms": 1234})
    store.delete_topic("b")
    want = {
        t.name: {"partitions": t.partitions, "config": t.config.to_dict()}
        for t in store.topics(include_internal=True)
    }
    got = disk.read_file(f"{ROOT}/topics.json").decode()
    assert got == json.dumps(want, indent=1, sort_keys=True)
    store.close()


def test_full_disk_frees_space_inside_the_active_segment_and_of_an_empty_topic() -> None:
    """On a 100 % full disk, DeleteRecords inside the active segment (no file freed) and
    DeleteTopic of an empty topic succeed: the metadata write uses the space reserve,
    which the store recreates when space returns."""
    from logstore.storage._names import RESERVE_FILE

    disk = sim_disk()
    store = Store.open(ROOT, fs=disk)
    reserve = f"{ROOT}/{RESERVE_FILE}"
    store.create_topic("one")  # one segment only: nothing to free by deleting files
    store.create_topic("empty")
    for i in range(5):
        store.append("one", 0, [bytes([i]) * 100], sync=True)
    disk.capacity = disk.used_bytes()
    with pytest.raises(DiskFullError):
        store.append("one", 0, [b"x" * 900], sync=True)
    assert store.delete_records("one", 0, 3) == 3
    store.delete_topic("empty")
    assert [t.name for t in store.topics()] == ["one"]
    assert not disk.exists(reserve)
    disk.capacity = None
    store.maintain()
    assert disk.exists(reserve)
    store.close()
    store = Store.open(ROOT, fs=disk)
    assert [t.name for t in store.topics()] == ["one"]
    assert store.offsets("one", 0) == (3, 5)
    store.close()
