"""Bounded memory: clients that flood or never read cannot grow the broker without limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import (
    LEADER,
    NONE,
    connect,
    create_topic,
    fetch_all,
    produce,
    records,
    retry_info,
    rss_kib,
)

FLOOD_SECONDS = 6.0
#: Broker RSS may grow at most this much above its idle size. The configured
#: bounds allow 16 MiB of in-flight produce bytes, 4 MiB per request, 64
#: stream replies and ~1 MiB + the HTTP/2 window per subscriber; an unbounded
#: buffer would grow by the ~1 GB the flood sends.
MAX_GROWTH_MIB = 200


@pytest.mark.slow
def test_flood_and_stalled_readers_keep_memory_bounded(tmp_path: Path) -> None:
    """Floods plus never-reading subscribers and streams: RSS stays bounded, others served."""
    b = start_broker(
        tmp_path / "data",
        env={
            "LOGSTORE_MAX_INFLIGHT_PRODUCE_BYTES": str(16 << 20),
            "LOGSTORE_MAINTAIN_INTERVAL_MS": "500",
        },
    )
    stop = threading.Event()
    try:
        with connect(b) as admin:
            create_topic(
                admin,
                "flood",
                segment_bytes=str(32 << 20),
                retention_bytes=str(64 << 20),
            )
            create_topic(admin, "quiet")
        idle_kib = rss_kib(b.pid)
        flood_bytes = [0]
        lock = threading.Lock()
        value = b"f" * 1024

        def flood(acks: int) -> None:
            with connect(b) as s:
                req = pb.ProduceRequest(
                    topic="flood", partition=0, acks=acks, records=records([value] * 1000)
                )
                while not stop.is_set():
                    try:
                        s.Produce(req, timeout=10)
                        with lock:
                            flood_bytes[0] += 1 << 20
                    except grpc.RpcError as err:
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                        assert retry_info(err) is not None

        def requests_forever() -> Iterator[pb.ProduceRequest]:
            req = pb.ProduceRequest(topic="flood", partition=0, records=records([value] * 1000))
            while not stop.is_set():
                yield req

        threads = [threading.Thread(target=flood, args=(a,)) for a in (NONE, NONE, LEADER, LEADER)]
        with connect(b) as lazy:
            # Subscribers that never read, and a ProduceStream whose replies
            # are never read.
            subs = [
                lazy.Subscribe(pb.SubscribeRequest(topic="flood", partition=0), timeout=60)
                for _ in range(8)
            ]
            stream = lazy.ProduceStream(requests_forever(), timeout=60)
            for t in threads:
                t.start()
            peak = idle_kib
            served = 0
            deadline = time.monotonic() + FLOOD_SECONDS
            with connect(b) as victim:
                while time.monotonic() < deadline:
                    peak = max(peak, rss_kib(b.pid))
                    try:
                        r = produce(victim, "quiet", [b"still here"], timeout=10)
                        got = victim.Fetch(
                            pb.FetchRequest(topic="quiet", partition=0, offset=r.base_offset),
                            timeout=10,
                        )
                        assert got.batches[0].records[0].value == b"still here"
                        served += 1
                    except grpc.RpcError as err:
                        # A bound was hit: allowed, with a retry hint.
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                        assert retry_info(err) is not None
                    time.sleep(0.05)
                stop.set()
                for t in threads:
                    t.join(20)
                for sub in subs:
                    sub.cancel()
                stream.cancel()
                peak = max(peak, rss_kib(b.pid))
                assert len(fetch_all(victim, "quiet")) == served
        growth_mib = (peak - idle_kib) / 1024
        print(
            f"idle {idle_kib / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, flood "
            f"{flood_bytes[0] / 2**20:.0f} MiB, quiet client served {served} times"
        )
        assert flood_bytes[0] > 200 << 20, "the flood did not flood"
        assert served >= 10
        assert growth_mib < MAX_GROWTH_MIB
    finally:
        stop.set()
        assert b.stop() == 0
