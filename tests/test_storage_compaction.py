"""Log compaction: its configuration, null keys refused on a compacted topic,
and the cleaner (latest record per key, tombstones, crash safety)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from logstore import Store
from logstore.config import TopicConfig
from logstore.errors import InvalidArgumentError, InvalidConfigError
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import Record, encode_records, keyed_record_count
from tests.brokerproc import start_broker
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
