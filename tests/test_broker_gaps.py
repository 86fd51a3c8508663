"""A broker serving a log with offset gaps (built through Store.append_frames
before the broker starts): Fetch from an offset a gap removed returns the next
records with their own offsets, and the Consumer's position moves past gaps."""

from __future__ import annotations

from pathlib import Path

from logstore import Store
from logstore.client import Consumer
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import Record, build_offset_frame, encode_frame, encode_values
from tests.brokerproc import start_broker
from tests.test_broker_helpers import connect

T0 = 1_700_000_000_000


def _offsets(resp: pb.FetchResponse) -> list[tuple[int, bytes]]:
    """(offset, value) of every record, read as another language's client would
    (records.proto: offset_delta when attributes bit 3 is set)."""
    out = []
    for b in resp.batches:
        for i, r in enumerate(b.records):
            out.append((b.base_offset + (r.offset_delta if b.attributes & 0x08 else i), r.value))
    return out


def test_fetch_and_consume_from_removed_offsets(tmp_path: Path) -> None:
    """Fetch at a removed offset returns the next record; a Consumer that seeks into a
    gap reads the kept records and ends at the last batch's next offset."""
    data = tmp_path / "data"
    with Store.open(data) as store:
        store.create_topic("g")
        store.append("g", 0, [b"a0", b"a1"], timestamp_ms=T0)  # 0, 1
        run = build_offset_frame(
            5, [(6, Record(b"b6")), (9, Record(b"b9"))], T0, last_offset=12
        ) + encode_frame(encode_values([b"c20", b"c21"]), 2, 20, T0)
        assert store.append_frames("g", 0, run) == 22
    kept = [(0, b"a0"), (1, b"a1"), (6, b"b6"), (9, b"b9"), (20, b"c20"), (21, b"c21")]
    b = start_broker(data)
    try:
        with connect(b) as s:
            for offset in range(22):
                resp = s.Fetch(pb.FetchRequest(topic="g", partition=0, offset=offset), timeout=10)
                got = [kv for kv in _offsets(resp) if kv[0] >= offset]
                assert got and got[0] == next(kv for kv in kept if kv[0] >= offset), offset
                assert resp.high_watermark == 22
        consumer = Consumer(b.grpc_address, fetch_max_wait_ms=0)
        try:
            consumer.assign([("g", 0)])
            consumer.seek(("g", 0), 2)  # in the gap 2..4
            seen: list[tuple[int, bytes | None]] = []
            while len(seen) < 4:
                for recs in consumer.poll(timeout_ms=5000).values():
                    seen += [(r.offset, r.value) for r in recs]
            assert seen == kept[2:]
            assert consumer.position(("g", 0)) == 22
        finally:
            consumer.close()
    finally:
        assert b.stop() == 0


def test_consumer_position_skips_offsets_removed_after_the_last_record(tmp_path: Path) -> None:
    """When a batch's last records were removed (its last offset kept), the position
    after consuming it is the batch's next offset, not the last record's + 1."""
    data = tmp_path / "data"
    with Store.open(data) as store:
        store.create_topic("g")
        frame = build_offset_frame(0, [(0, Record(b"x")), (3, Record(b"y"))], T0, last_offset=9)
        assert store.append_frames("g", 0, frame) == 10
    b = start_broker(data)
    try:
        consumer = Consumer(b.grpc_address, fetch_max_wait_ms=0)
        try:
            consumer.assign([("g", 0)])
            consumer.seek(("g", 0), 0)
            got = consumer.poll(timeout_ms=5000)
            assert [r.offset for recs in got.values() for r in recs] == [0, 3]
            assert consumer.position(("g", 0)) == 10
        finally:
            consumer.close()
    finally:
        assert b.stop() == 0
