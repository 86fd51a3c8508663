"""The broker exports the log cleaner's work as Prometheus metrics: runs, bytes read
and written, records and tombstones removed, the last clean's duration, and each
compacted partition's dirty ratio."""

from __future__ import annotations

import re
import time
from pathlib import Path

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import records_pb2
from tests.brokerproc import start_broker
from tests.test_broker_helpers import connect, records, scrape


def _value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m is not None, f"{name}{labels} not exported"
    return float(m.group(1))


def test_cleaner_metrics_after_a_clean(tmp_path: Path) -> None:
    """After the broker's cleaner thread compacts a topic, a scrape shows its runs,
    bytes read and written, records and tombstones removed, a last clean duration, and
    the topic's dirty ratio back at 0 (everything cleanable is clean)."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_MAINTAIN_INTERVAL_MS": "200"})
    try:
        before = scrape(b)
        assert _value(before, "logstore_cleaner_runs_total") == 0
        with connect(b) as stub:
            cfg = {
                "cleanup_policy": "compact",
                "segment_bytes": "600",
                "min_cleanable_dirty_ratio": "0.01",
            }
            stub.CreateTopic(pb.CreateTopicRequest(name="c", partitions=1, config=cfg), timeout=10)
            for i in range(100):
                # Unique keys now and then: segments that keep some records are rewritten.
                k = f"u{i}".encode() if i % 7 == 3 else f"k{i % 5}".encode()
                # Every 10th record of k0 is a tombstone, superseded by a later k0.
                v = None if i % 10 == 0 and i < 90 else f"value-{i}".encode() * 3
                batch = records([v], [k]) if v is not None else [records_pb2.Record(key=k)]
                stub.Produce(pb.ProduceRequest(topic="c", partition=0, records=batch), timeout=10)
        deadline = time.monotonic() + 20
        text = scrape(b)
        dirty = ("logstore_partition_dirty_ratio", '{partition="0",topic="c"}')
        while _value(text, "logstore_cleaner_records_removed_total") == 0 or _value(text, *dirty):
            assert time.monotonic() < deadline, "the cleaner did not run"
            time.sleep(0.2)
            text = scrape(b)
        assert _value(text, "logstore_cleaner_runs_total") >= 1
        assert _value(text, "logstore_cleaner_bytes_read_total") > 0
        assert _value(text, "logstore_cleaner_bytes_written_total") > 0
        assert _value(text, "logstore_cleaner_records_removed_total") >= 60
        assert _value(text, "logstore_cleaner_tombstones_removed_total") >= 1
        assert _value(text, "logstore_cleaner_last_clean_seconds") > 0
        # The coordinator's compacted topic is a compacted partition like any other.
        assert 'logstore_partition_dirty_ratio{partition="0",topic="__consumer_offsets"}' in text
    finally:
        b.stop()
