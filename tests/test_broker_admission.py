"""Admission: waiting requests (long polls) and working requests are bounded separately.

A Fetch parked in a long poll holds a ``max_long_poll_waiters`` slot, not a
``max_concurrent_requests`` one, so idle consumers cannot starve produce and
admin calls, and the waiter bound is the one that refuses extra long polls.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import (
    connect,
    create_topic,
    decode,
    produce,
    retry_info,
    scrape,
    wait_until,
)

POLL_MS = 8000


def _poll(topic: str, partition: int) -> pb.FetchRequest:
    return pb.FetchRequest(
        topic=topic, partition=partition, offset=0, min_bytes=1, max_wait_ms=POLL_MS
    )


def park(s: object, b: BrokerProcess, topic: str, partitions: range) -> list[grpc.Future]:
    """Long polls on ``partitions``, each parked before the next is sent.

    One at a time: a Fetch does its first read in a working slot, so a burst
    larger than max_concurrent_requests would be refused (rightly) before
    its members park.
    """
    polls = []
    for n, p in enumerate(partitions, start=1):
        polls.append(s.Fetch.future(_poll(topic, p), timeout=30))  # type: ignore[attr-defined]
        wait_until(lambda n=n: f"logstore_long_poll_waiters {n}.0" in scrape(b))
    return polls


def test_parked_long_polls_leave_the_request_budget_free(tmp_path: Path) -> None:
    """30 parked long polls with max_concurrent_requests 4: produce and admin calls still work."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_MAX_CONCURRENT_REQUESTS": "4"})
    try:
        with connect(b) as s:
            create_topic(s, "idle", partitions=30)
            create_topic(s, "orders")
            polls = park(s, b, "idle", range(30))
            assert "logstore_inflight_requests 0.0" in scrape(b)
            assert produce(s, "orders", [b"hello"]).base_offset == 0
            assert "orders" in {
                t.name for t in s.ListTopics(pb.ListTopicsRequest(), timeout=10).topics
            }
            produce(s, "idle", [b"wake"], partition=7)
            assert decode(polls[7].result(timeout=10)) == [(0, b"wake")]
            for f in polls:
                f.cancel()
    finally:
        assert b.stop() == 0


def test_waiter_bound_is_reachable_and_refuses_with_retry_info(tmp_path: Path) -> None:
    """max_long_poll_waiters 5 above max_concurrent_requests 2: 5 park, the 6th is refused."""
    b = start_broker(
        tmp_path / "data",
        env={"LOGSTORE_MAX_CONCURRENT_REQUESTS": "2", "LOGSTORE_MAX_LONG_POLL_WAITERS": "5"},
    )
    try:
        with connect(b) as s:
            create_topic(s, "t", partitions=6)
            polls = park(s, b, "t", range(5))
            try:
                s.Fetch(_poll("t", 5), timeout=10)
                raise AssertionError("the sixth long poll was admitted")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_long_poll_waiters" in err.details()
                assert retry_info(err) is not None
            # Not waiting (min_bytes 0): a working request, admitted.
            s.Fetch(pb.FetchRequest(topic="t", partition=5), timeout=10)
            for f in polls:
                f.cancel()
            text = scrape(b)
            assert 'logstore_rejected_requests_total{reason="max_long_poll_waiters"} 1.0' in text
            assert 'reason="max_concurrent_requests"' not in text
    finally:
        assert b.stop() == 0


def test_inflight_produce_bytes_gauge_reads_the_limiter(tmp_path: Path) -> None:
    """logstore_inflight_produce_bytes is the produce-bytes limiter's count at scrape
    time: bytes a request holds show up, and go once it releases them."""
    import asyncio

    from prometheus_client import generate_latest

    from logstore.broker._config import BrokerConfig
    from logstore.broker._metrics import BrokerMetrics
    from logstore.broker._service import LogStoreService
    from logstore.storage import Store

    def gauge(metrics: BrokerMetrics) -> str:
        text = generate_latest(metrics.registry).decode()
        return next(ln for ln in text.splitlines() if ln.startswith("logstore_inflight_produce"))

    async def main() -> list[str]:
        config = BrokerConfig(data_dir=str(tmp_path / "data"))
        store = Store.open(config.data_dir, config.store_config())
        try:
            metrics = BrokerMetrics()
            svc = LogStoreService(store, config, metrics)
            svc.start(asyncio.get_running_loop())
            produce = svc.areas["produce"]
            seen = [gauge(metrics)]
            produce._acquire_bytes(1234)  # type: ignore[attr-defined]
            produce._acquire_bytes(66)  # type: ignore[attr-defined]
            seen.append(gauge(metrics))
            produce._release_bytes(1234)  # type: ignore[attr-defined]
            seen.append(gauge(metrics))
            await svc.drain_background()
            return seen
        finally:
            store.close()

    assert asyncio.run(main()) == [
        "logstore_inflight_produce_bytes 0.0",
        "logstore_inflight_produce_bytes 1300.0",
        "logstore_inflight_produce_bytes 66.0",
    ]
