"""The embedded Store API: topics, append/read, time lookups, retention, group commit, bad input."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from logstore import OffsetAndTimestamp, Record, Store, StoreConfig
from logstore.errors import (
    DirectoryInUseError,
    InvalidArgumentError,
    InvalidBatchError,
    InvalidConfigError,
    InvalidTopicNameError,
    OffsetOutOfRangeError,
    StorageError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "data")
    yield s  # type: ignore[misc]
    s.close()


def test_readme_example_round_trip(tmp_path: Path) -> None:
    """The README's embedded example works: append, read from exactly an offset, offsets, flush."""
    with Store.open(tmp_path / "data") as store:
        store.create_topic("events", partitions=3, config={"retention_ms": 86_400_000})
        first = store.append(
            "events", 0, [b"v1", Record(key=b"k", value=b"v2", headers=[("h", b"x")])]
        )
        recs = store.read("events", 0, offset=first + 1, max_bytes=1 << 20)
        assert [(r.offset, r.key, r.value, r.headers) for r in recs] == [
            (1, b"k", b"v2", [("h", b"x")])
        ]
        assert store.offsets("events", 0) == (0, 2)
        store.flush()
        assert [t.name for t in store.topics()] == ["events"]
        assert store.topics()[0].config.retention_ms == 86_400_000


def test_read_returns_a_batch_larger_than_max_bytes(store: Store) -> None:
    """read() returns at least one record even when its batch exceeds max_bytes."""
    store.create_topic("t")
    store.append("t", 0, [b"x" * 5000])
    assert len(store.read("t", 0, 0, max_bytes=10)) == 1
    assert store.read("t", 0, 1) == []


def test_null_and_empty_keys_and_values_differ(store: Store) -> None:
    """A null key/value and an empty one are stored and read back distinctly."""
    store.create_topic("t")
    store.append("t", 0, [Record(key=None, value=None), Record(key=b"", value=b"")])
    a, b = store.read("t", 0, 0)
    assert (a.key, a.value) == (None, None)
    assert (b.key, b.value) == (b"", b"")


def test_offsets_survive_clean_and_unclean_reopen(tmp_path: Path) -> None:
    """Flushed records survive a reopen; a clean close restarts without losing the end offset."""
    d = tmp_path / "data"
    s = Store.open(d)
    s.create_topic("t", 2, {"segment_bytes": 4096, "index_interval_bytes": 256})
    for i in range(300):
        s.append("t", i % 2, [b"%06d" % i] * 3)
    s.close()
    s = Store.open(d)
    assert s.offsets("t", 0) == (0, 450)
    s.append("t", 0, [b"tail"], sync=True)
    s._abandon()  # no clean marker: the next open recovers from the recovery point
    s = Store.open(d)
    assert s.offsets("t", 0) == (0, 451)
    assert s.read("t", 0, 450)[0].value == b"tail"
    assert [r.value for r in s.read("t", 1, 3, max_bytes=1)] == [b"000003"] * 3
    s.close()


def test_offset_for_time_finds_first_record_at_or_after(store: Store) -> None:
    """offset_for_time returns the first offset whose timestamp is >= the given one, or None."""
    store.create_topic("t", 1, {"segment_bytes": 2048, "index_interval_bytes": 100})
    for i in range(200):
        store.append("t", 0, [b"x" * 20], timestamp_ms=1_000 + 10 * i)
    assert store.offset_for_time("t", 0, 0).offset == 0
    assert store.offset_for_time("t", 0, 1_000 + 10 * 57).offset == 57
    assert store.offset_for_time("t", 0, 1_000 + 10 * 57 - 3).offset == 57
    assert store.offset_for_time("t", 0, 10**13) is None
    recs = [Record(value=b"a", timestamp_ms=5_000), Record(value=b"b", timestamp_ms=9_000)]
    first = store.append("t", 0, recs, timestamp_ms=5_000)
    assert store.offset_for_time("t", 0, 8_000).offset == first + 1


def test_offset_for_time_answers_offset_and_timestamp(store: Store) -> None:
    """offset_for_time's one answer is an OffsetAndTimestamp: the first record at or
    after the time, with that record's own (later) timestamp."""
    store.create_topic("t")
    store.append("t", 0, [Record(value=b"a", timestamp_ms=5_000)], timestamp_ms=5_000)
    store.append("t", 0, [Record(value=b"b", timestamp_ms=9_000)], timestamp_ms=9_000)
    found = store.offset_for_time("t", 0, 6_000)
    assert isinstance(found, OffsetAndTimestamp)
    assert (found.offset, found.timestamp_ms) == (1, 9_000)
    assert store.partition("t", 0).offset_for_time(6_000) == found
    assert not hasattr(store, "find_time")


def test_retention_by_size_and_time_deletes_whole_sealed_segments(store: Store) -> None:
    """Retention deletes only whole sealed segments and advances the log start offset."""
    store.create_topic("t", 1, {"segment_bytes": 1000})
    for i in range(100):
        store.append("t", 0, [b"y" * 50], timestamp_ms=1_000_000 + i)
    before = store.partition_info("t", 0)
    assert before.segment_count > 5
    store.alter_topic_config("t", {"retention.bytes": 2000})
    store.maintain(now_ms=1_000_200)
    after = store.partition_info("t", 0)
    assert after.size_bytes <= 2000 + 1000
    assert after.log_start_offset > 0 and after.log_end_offset == 100
    assert store.read("t", 0, after.log_start_offset)[0].offset == after.log_start_offset
    with pytest.raises(OffsetOutOfRangeError, match=r"valid offsets are \d+\.\.100"):
        store.read("t", 0, 0)
    store.alter_topic_config("t", {"retention_ms": 1}, reset=["retention_bytes"])
    store.maintain(now_ms=2_000_000)
    assert store.partition_info("t", 0).segment_count == 1  # the active one stays


def test_delete_records_advances_start_and_persists(tmp_path: Path) -> None:
    """delete_records moves the log start offset; it survives a reopen."""
    d = tmp_path / "data"
    with Store.open(d) as s:
        s.create_topic("t")
        s.append("t", 0, [b"a", b"b", b"c"])
        assert s.delete_records("t", 0, 2) == 2
        with pytest.raises(OffsetOutOfRangeError):
            s.delete_records("t", 0, 4)
    with Store.open(d) as s:
        assert s.offsets("t", 0) == (2, 3)
        assert [r.value for r in s.read("t", 0, 2)] == [b"c"]


def test_group_commit_shares_fsyncs(store: Store) -> None:
    """Eight threads appending with sync=True all complete, with fewer fsyncs than appends."""
    store.create_topic("t")
    calls = 0
    real = store.fs.fsync

    def counting(fd: int, path: str = "") -> None:
        nonlocal calls
        calls += 1
        real(fd, path)

    store.fs.fsync = counting  # type: ignore[method-assign]
    per_thread = 40

    def worker(i: int) -> None:
        for j in range(per_thread):
            store.append("t", 0, [b"%d-%d" % (i, j)], sync=True)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.offsets("t", 0)[1] == 8 * per_thread
    assert store.partition("t", 0).flushed_offset == 8 * per_thread
    assert 0 < calls < 8 * per_thread


def test_flusher_thread_completes_sync_futures(store: Store) -> None:
    """With the broker's flusher thread, sync_to futures complete once the data is fsynced."""
    store.create_topic("t")
    store.start_flusher()
    futs = []
    for i in range(50):
        off = store.append("t", 0, [b"%d" % i])
        futs.append(store.sync_to("t", 0, off + 1))
    for f in futs:
        f.result(timeout=10)
    assert store.partition("t", 0).flushed_offset == 50


def test_bad_topic_names_are_rejected(store: Store) -> None:
    """Names breaking Kafka's rules or using '__' are rejected and create nothing on disk."""
    before = sorted(os.listdir(store.path))
    for name in ["", ".", "..", "a/b", "../x", "a" * 250, "ü", "__internal", "a b"]:
        with pytest.raises(InvalidTopicNameError):
            store.create_topic(name)
    assert sorted(os.listdir(store.path)) == before
    store.create_topic("__consumer_offsets", internal=True)
    assert store.topics() == []


def test_bad_arguments_raise_typed_errors_and_keep_data(store: Store) -> None:
    """Bad configs, counts, partitions, offsets and batches raise typed errors; data is unharmed."""
    store.create_topic("t", 2)
    store.append("t", 0, [b"keep"])
    with pytest.raises(TopicExistsError):
        store.create_topic("t")
    with pytest.raises(InvalidConfigError, match="unknown config key 'retention_minutes'"):
        store.create_topic("u", 1, {"retention_minutes": 5})
    with pytest.raises(InvalidConfigError, match="segment_bytes"):
        store.create_topic("u", 1, {"segment_bytes": 2**33})
    with pytest.raises(InvalidConfigError, match="compaction"):
        store.alter_topic_config("t", {"cleanup.policy": "compaction"})
    with pytest.raises(InvalidArgumentError, match=r"1\.\.10000"):
        store.create_topic("u", 0)
    with pytest.raises(InvalidArgumentError, match="larger"):
        store.create_partitions("t", 1)
    with pytest.raises(UnknownTopicError):
        store.append("nope", 0, [b"x"])
    with pytest.raises(UnknownPartitionError, match=r"0\.\.1"):
        store.append("t", 2, [b"x"])
    with pytest.raises(InvalidArgumentError, match="empty batch"):
        store.append("t", 0, [])
    with pytest.raises(OffsetOutOfRangeError, match=r"0\.\.1"):
        store.read("t", 0, 2)
    with pytest.raises(OffsetOutOfRangeError):
        store.read("t", 0, -1)
    store.alter_topic_config("t", {"max_batch_bytes": 200})
    with pytest.raises(InvalidBatchError, match="max_batch_bytes"):
        store.append("t", 0, [b"z" * 300])
    assert [r.value for r in store.read("t", 0, 0)] == [b"keep"]
    assert store.create_partitions("t", 3).partitions == 3
    assert store.offsets("t", 2) == (0, 0)


def test_second_opener_gets_clear_error(store: Store) -> None:
    """A second open of the same directory fails with 'in use by pid N'."""
    with pytest.raises(DirectoryInUseError, match=f"in use by pid {os.getpid()}"):
        Store.open(store.path)


def test_unknown_file_in_data_directory_is_named(tmp_path: Path) -> None:
    """An unknown file in the data directory is an error naming it; leftover *.tmp is removed."""
    d = tmp_path / "data"
    Store.open(d).close()
    (d / "stray.txt").write_text("x")
    with pytest.raises(StorageError, match=r"stray\.txt"):
        Store.open(d)
    (d / "stray.txt").unlink()
    (d / "topics.json.tmp").write_text("half")
    Store.open(d).close()
    assert not (d / "topics.json.tmp").exists()


def test_delete_topic_removes_directories(store: Store) -> None:
    """delete_topic removes the topic's data; the name can be reused afterwards."""
    store.create_topic("t", 3)
    store.append("t", 1, [b"x"])
    store.delete_topic("t")
    assert not any(n.startswith("t-") for n in os.listdir(store.path))
    with pytest.raises(UnknownTopicError):
        store.offsets("t", 0)
    store.create_topic("t", 1)
    assert store.offsets("t", 0) == (0, 0)


def test_fd_cap_holds_with_many_partitions(tmp_path: Path) -> None:
    """Open descriptors stay under max_open_segments with many partitions written and read."""
    with Store.open(tmp_path / "data", StoreConfig(max_open_segments=16)) as s:
        s.create_topic("t", 200)
        for p in range(200):
            s.append("t", p, [b"x"])
        for p in range(200):
            assert s.read("t", p, 0)[0].value == b"x"
        assert s.stats().open_files <= 16
        fds = len(os.listdir("/proc/self/fd"))
        assert fds < 100


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded example in README.md runs as written (twice: the second run reopens)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    m = re.search(r"```python\n(.*?)```", readme, re.S)
    assert m is not None
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(m.group(1), "README.md", "exec"), {})
    with Store.open(tmp_path / "data-embedded") as s:
        assert s.offsets("events", 0) == (0, 4)
