"""Log compaction: its configuration, null keys refused on a compacted topic,
and the cleaner (latest record per key, tombstones, crash safety)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from logstore import Store
from logstore.config import StoreConfig, TopicConfig
from logstore.errors import InvalidArgumentError, InvalidConfigError
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import Record, encode_records, keyed_record_count
from tests.brokerproc import start_broker
from tests.simdisk import SimDisk
from tests.test_broker_helpers import connect, records


def test_cleanup_policy_spellings() -> None:
    """Kafka's policy spellings are accepted (delete,compact = compact,delete); others refused."""
    assert TopicConfig.from_mapping({"cleanup.policy": "compact"}).compact
    both = TopicConfig.from_mapping({"cleanup_policy": "delete,compact"})
    assert both.cleanup_policy == "compact,delete" and both.compact and both.delete
    assert not TopicConfig().compact and TopicConfig().delete
    with pytest.raises(InvalidConfigError, match="cleanup_policy"):
        TopicConfig.from_mapping({"cleanup_policy": "shred"})


def test_compaction_config_defaults_and_ranges() -> None:
    """Compaction keys have Kafka's defaults and aliases, and out-of-range values are refused."""
    c = TopicConfig()
    assert (c.delete_retention_ms, c.min_cleanable_dirty_ratio, c.min_compaction_lag_ms) == (
        86_400_000,
        0.5,
        0,
    )
    c = TopicConfig.from_mapping(
        {
            "min.cleanable.dirty.ratio": "0.25",
            "delete.retention.ms": "5",
            "min.compaction.lag.ms": 7,
        }
    )
    assert (c.delete_retention_ms, c.min_cleanable_dirty_ratio, c.min_compaction_lag_ms) == (
        5,
        0.25,
        7,
    )
    for bad in ({"min_cleanable_dirty_ratio": "1.5"}, {"min_cleanable_dirty_ratio": "nan"},
                {"min_cleanable_dirty_ratio": "x"}, {"delete_retention_ms": -1}):  # fmt: skip
        with pytest.raises(InvalidConfigError):
            TopicConfig.from_mapping(bad)


def test_compact_config_survives_reopen(tmp_path: Path) -> None:
    """A compacted topic's config (float ratio included) round-trips through topics.json."""
    cfg = {"cleanup_policy": "compact", "min_cleanable_dirty_ratio": 0.1}
    with Store.open(str(tmp_path)) as store:
        store.create_topic("c", 1, cfg)
    with Store.open(str(tmp_path)) as store:
        got = store.topic("c").config
        assert got.compact and got.min_cleanable_dirty_ratio == 0.1


def test_keyed_record_count_counts_present_keys() -> None:
    """The key view counts records with a key (empty keys included), not null ones."""
    body, count, _ = encode_records([Record(b"v", key=b"k"), Record(b"v"), Record(b"v", key=b"")])
    assert count == 3
    assert keyed_record_count(body) == 2


def test_null_key_refused_on_compacted_topic(tmp_path: Path) -> None:
    """append and append_raw refuse a null-keyed batch on a compacted topic, storing nothing."""
    with Store.open(str(tmp_path)) as store:
        store.create_topic("c", 1, {"cleanup_policy": "compact,delete"})
        store.create_topic("d", 1)
        store.append("c", 0, [Record(b"v", key=b"k")])
        with pytest.raises(InvalidArgumentError, match="null key"):
            store.append("c", 0, [Record(b"v", key=b"k"), Record(b"v2")])
        body, count, _ = encode_records([Record(b"x")])
        with pytest.raises(InvalidArgumentError, match="null key"):
            store.append_raw("c", 0, body, count)
        assert store.offsets("c", 0) == (0, 1)
        store.append("d", 0, [Record(b"no key")])  # a delete topic takes them


def test_null_key_refused_through_broker(tmp_path: Path) -> None:
    """Produce of a null-keyed record to a compacted topic is INVALID_ARGUMENT; keyed ones land."""
    b = start_broker(tmp_path / "data")
    try:
        with connect(b) as stub:
            stub.CreateTopic(
                pb.CreateTopicRequest(name="c", partitions=1, config={"cleanup.policy": "compact"}),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Produce(
                    pb.ProduceRequest(
                        topic="c", partition=0, records=records([b"a", b"b"], [b"k", None])
                    ),
                    timeout=10,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "null key" in (err.value.details() or "")
            ok = stub.Produce(
                pb.ProduceRequest(topic="c", partition=0, records=records([b"a"], [b"k"])),
                timeout=10,
            )
            assert ok.base_offset == 0
    finally:
        b.stop()


# --- the cleaner ------------------------------------------------------------------------------
ROOT = "/data"
T0 = 1_700_000_000_000
COMPACT = {"cleanup_policy": "compact", "segment_bytes": 600, "delete_retention_ms": 0}


def _fresh_disk(seed: int = 0) -> SimDisk:
    disk = SimDisk(seed=seed)
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    return disk


def _read_all(store: Store, topic: str = "c") -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record from the log start to the end, as (offset, key, value)."""
    start, end = store.offsets(topic, 0)
    out: list[tuple[int, bytes | None, bytes | None]] = []
    offset = start
    while offset < end:
        recs = store.read(topic, 0, offset)
        if not recs:
            break
        out += [(r.offset, r.key, r.value) for r in recs]
        offset = recs[-1].offset + 1
    return out


def _check_compacted(
    got: list[tuple[int, bytes | None, bytes | None]],
    appended: dict[int, tuple[bytes, bytes | None]],
    intact_from: int,
) -> None:
    """``got`` is a sub-log of ``appended`` (same offsets and contents, in order) that
    keeps each key's latest record (a tombstone may go, and then every record of its
    key), and every record at or above ``intact_from``."""
    offsets = [o for o, _k, _v in got]
    assert offsets == sorted(set(offsets))
    for o, k, v in got:
        assert appended[o] == (k, v), o
    present = set(offsets)
    latest: dict[bytes, int] = {}
    for o, (k, _v) in sorted(appended.items()):
        latest[k] = o
    for k, o in latest.items():
        if appended[o][1] is None and o not in present:
            assert not [1 for _o, k2, _v in got if k2 == k], f"key {k!r} came back"
        else:
            assert o in present, f"latest record of {k!r} (offset {o}) lost"
    assert {o for o in appended if o >= intact_from} <= present


def _cleaned_store(disk: SimDisk, buffer_bytes: int = 16 << 20) -> Store:
    return Store.open(ROOT, StoreConfig(cleaner_buffer_bytes=buffer_bytes), fs=disk)


def test_clean_keeps_latest_per_key_and_original_offsets() -> None:
    """A clean keeps each key's latest record at its original offset and timestamp, drops
    superseded ones, never touches the active segment, and the result survives reopen."""
    disk = _fresh_disk()
    store = _cleaned_store(disk)
    store.create_topic("c", 1, COMPACT)
    appended: dict[int, tuple[bytes, bytes | None]] = {}
    for i in range(80):
        k, v = f"k{i % 7}".encode(), f"v{i}".encode() * 5
        off = store.append(
            "c", 0, [Record(v, key=k), Record(v + b"!", key=b"x")], timestamp_ms=T0 + i
        )
        appended[off], appended[off + 1] = (k, v), (b"x", v + b"!")
    before = {r.offset: r.timestamp_ms for r in _all_records(store)}
    active_base = store.partition("c", 0).segments[-1].base_offset
    assert store.clean(T0 + 1000) == 1
    got = _read_all(store)
    _check_compacted(got, appended, active_base)
    assert len(got) < len(appended) / 3
    for r in _all_records(store):
        assert r.timestamp_ms == before[r.offset]
    store.close()
    store = _cleaned_store(disk)
    assert _read_all(store) == got
    assert not [n for n in disk.walk() if n.endswith(".cleaned")]
    store.close()


def _all_records(store: Store) -> list[Record]:
    start, end = store.offsets("c", 0)
    out: list[Record] = []
    while start < end:
        recs = store.read("c", 0, start)
        if not recs:
            break
        out += recs
        start = recs[-1].offset + 1
    return out


def test_dirty_ratio_and_lag_gate_cleaning() -> None:
    """No clean below min_cleanable_dirty_ratio, none of segments younger than
    min_compaction_lag_ms, and a delete-policy topic is never cleaned."""
    disk = _fresh_disk()
    store = _cleaned_store(disk)
    store.create_topic(
        "c", 1, {**COMPACT, "min_cleanable_dirty_ratio": 0.99, "min_compaction_lag_ms": 10_000}
    )
    store.create_topic("d", 1, {"segment_bytes": 600})
    for i in range(40):
        for t in ("c", "d"):
            store.append(t, 0, [Record(b"v" * 50, key=b"same")], timestamp_ms=T0 + i)
    n_d = len(store.partition("d", 0).segments)
    assert store.clean(T0 + 5_000) == 0  # every record younger than the lag
    store.alter_topic_config("c", {"min_compaction_lag_ms": 0})
    store.alter_topic_config("c", {"min_cleanable_dirty_ratio": 0.99})
    assert store.clean(T0 + 50_000) == 1  # all dirty: ratio 1.0 > 0.99
    assert store.clean(T0 + 50_000) == 0  # nothing dirty left
    assert len(store.partition("d", 0).segments) == n_d
    assert len(_read_all(store, "d")) == 40
    store.close()


def test_tombstones_removed_only_after_delete_retention() -> None:
    """A tombstone survives the clean that first passes it and any clean within
    delete_retention_ms; a later clean drops it and the key stays gone."""
    disk = _fresh_disk()
    store = _cleaned_store(disk)
    store.create_topic("c", 1, {**COMPACT, "delete_retention_ms": 60_000})
    store.append("c", 0, [Record(b"old", key=b"gone")], timestamp_ms=T0)
    store.append("c", 0, [Record(None, key=b"gone")], timestamp_ms=T0 + 1)
    for i in range(30):
        store.append("c", 0, [Record(b"f" * 60, key=f"fill{i}".encode())], timestamp_ms=T0 + 2)
    lg = store.partition("c", 0)
    store.clean(T0 + 10, force=True)
    assert [(k, v) for _o, k, v in _read_all(store) if k == b"gone"] == [(b"gone", None)]
    for i in range(30):  # more dirty data so the next clean runs
        store.append("c", 0, [Record(b"g" * 60, key=f"more{i}".encode())], timestamp_ms=T0 + 3)
    store.clean(T0 + 30_000, force=True)
    assert [(k, v) for _o, k, v in _read_all(store) if k == b"gone"] == [(b"gone", None)]
    for i in range(30):
        store.append("c", 0, [Record(b"h" * 60, key=f"last{i}".encode())], timestamp_ms=T0 + 4)
    store.clean(T0 + 120_000, force=True)
    assert [k for _o, k, _v in _read_all(store) if k == b"gone"] == []
    assert lg.cleaned_offset > 0
    store.close()


def test_tiny_key_map_cleans_in_several_passes() -> None:
    """With a key map smaller than the dirty section's distinct keys, the cleaner makes
    several passes and the result is the same as one pass."""
    results = []
    for buffer_bytes in (1024, 16 << 20):  # 21 keys vs ~350,000
        disk = _fresh_disk()
        store = _cleaned_store(disk, buffer_bytes)
        # Tombstones kept (a later pass may drop those an earlier one passed).
        store.create_topic("c", 1, {**COMPACT, "delete_retention_ms": 10**12})
        appended: dict[int, tuple[bytes, bytes | None]] = {}
        for i in range(300):
            k = f"key{(i * 37) % 90}".encode()
            v = None if i % 11 == 0 else f"v{i}".encode()
            appended[store.append("c", 0, [Record(v, key=k)], timestamp_ms=T0 + i)] = (k, v)
        store.clean(T0 + 10_000, force=True)
        got = _read_all(store)
        _check_compacted(got, appended, store.partition("c", 0).segments[-1].base_offset)
        results.append((got, store.cleaner.stats.passes))
        store.close()
    (small, passes_small), (big, passes_big) = results
    assert passes_small > 1 and passes_big == 1
    assert small == big


def test_power_cut_at_every_io_step_of_a_clean() -> None:
    """A power cut at any I/O call of a clean leaves every segment file either wholly
    old or wholly new (or gone, if cleaned empty), and the reopened log keeps every
    acknowledged latest record."""
    disk = _fresh_disk()
    store = _cleaned_store(disk)
    store.create_topic("c", 1, COMPACT)
    appended: dict[int, tuple[bytes, bytes | None]] = {}
    for i in range(60):  # latest records spread over the segments: some rewritten, some dropped
        k = f"k{(i * 7) % 23 if i % 3 else i % 4}".encode()
        v = None if i % 13 == 5 else f"v{i}".encode() * 4
        appended[store.append("c", 0, [Record(v, key=k)], sync=True)] = (k, v)
    directory = f"{ROOT}/c-0"
    logs_before = {
        n: disk.read_bytes(f"{directory}/{n}")
        for n in disk.listdir(directory)
        if n.endswith(".log")
    }
    active = max(logs_before)
    cuts: list[SimDisk] = []

    def cut(op: str, path: str) -> int | None:
        cuts.append(disk.power_cut(random.Random(len(cuts))))
        return None

    disk.inject(cut)
    assert store.clean(force=True) == 1
    disk.clear_faults()
    cuts.append(disk.power_cut(random.Random(len(cuts))))
    logs_after = {
        n: disk.read_bytes(f"{directory}/{n}")
        for n in disk.listdir(directory)
        if n.endswith(".log")
    }
    rewritten = [n for n in logs_after if logs_after[n] != logs_before[n]]
    assert rewritten and len(logs_after) < len(logs_before) and len(cuts) > 10
    store.close()
    for after in cuts:
        for n, old in logs_before.items():
            path = f"{directory}/{n}"
            if n == active:
                assert after.read_bytes(path) == old  # never cleaned, every record synced
                continue
            if not after.exists(path):
                assert n not in logs_after, f"{n} lost, not cleaned empty"
                continue
            assert after.read_bytes(path) in (old, logs_after.get(n)), n
        reopened = _cleaned_store(after)
        _check_compacted(_read_all(reopened), appended, int(active[:20]))
        reopened.close()


def _fetch_all(stub: Any, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of every record from the log start, read as another
    language's client would (a clean moving the start meanwhile restarts the read)."""
    out: list[tuple[int, bytes | None, bytes | None]] = []
    desc = stub.DescribeTopic(pb.DescribeTopicRequest(name=topic), timeout=10)
    offset = desc.partitions[0].log_start_offset
    while True:
        try:
            resp = stub.Fetch(pb.FetchRequest(topic=topic, partition=0, offset=offset), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            return _fetch_all(stub, topic)
        if not resp.batches:
            return out
        for b in resp.batches:
            for i, r in enumerate(b.records):
                o = b.base_offset + (r.offset_delta if b.attributes & 0x08 else i)
                if o >= offset:
                    key = r.key if r.HasField("key") else None
                    out.append((o, key, r.value if r.HasField("value") else None))
            offset = b.base_offset + b.last_offset_delta + 1


def test_broker_cleaner_thread_compacts_in_background(tmp_path: Path) -> None:
    """The broker's cleaner thread compacts a compacted topic on its own; a Fetch from 0
    then returns only each key's latest records (before the active segment) with their
    offsets."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_MAINTAIN_INTERVAL_MS": "200"})
    try:
        with connect(b) as stub:
            cfg = {
                "cleanup_policy": "compact",
                "segment_bytes": "600",
                "min_compaction_lag_ms": "0",
            }
            stub.CreateTopic(pb.CreateTopicRequest(name="c", partitions=1, config=cfg), timeout=10)
            appended: dict[int, tuple[bytes, bytes | None]] = {}
            for i in range(100):
                k, v = f"k{i % 5}".encode(), f"value-{i}".encode() * 3
                resp = stub.Produce(
                    pb.ProduceRequest(topic="c", partition=0, records=records([v], [k])), timeout=10
                )
                appended[resp.base_offset] = (k, v)
            deadline = time.monotonic() + 20
            got = _fetch_all(stub, "c")
            while len(got) > 30 and time.monotonic() < deadline:
                time.sleep(0.2)
                got = _fetch_all(stub, "c")
            assert len(got) <= 30, f"not compacted: {len(got)} records"
            _check_compacted(got, appended, 99)
    finally:
        b.stop()


def test_cleaner_settings_reach_the_cleaner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cleaner_buffer_bytes and cleaner_io_max_bytes_per_s go from the broker's
    environment to the store's cleaner, and the throttle sleeps for the bytes done
    beyond the rate (the sleep requested is checked, not elapsed time)."""
    from logstore.broker._config import BrokerConfig
    from logstore.storage import _cleaner

    cfg = BrokerConfig.resolve(
        env={"LOGSTORE_CLEANER_IO_MAX_BYTES_PER_S": "1000", "LOGSTORE_CLEANER_BUFFER_BYTES": "4800"}
    ).store_config()
    with Store.open(str(tmp_path), cfg) as store:
        assert store.cleaner.throttle.bytes_per_s == 1000
        assert store.cleaner.keymap.capacity == 200  # 24 bytes a key
    with pytest.raises(InvalidConfigError):
        StoreConfig(cleaner_buffer_bytes=10)
    slept: list[float] = []
    monkeypatch.setattr(_cleaner.time, "sleep", slept.append)
    throttle = _cleaner.Throttle(1000)
    throttle.add(500)
    assert slept and 0.4 < slept[0] <= 0.5
    _cleaner.Throttle(0).add(10**9)
    assert len(slept) == 1
