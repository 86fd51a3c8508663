"""The plain Consumer against a scripted in-process LogStore service: a fetch that the
broker ends with a plain CANCELLED (its graceful stop ends in-flight long polls so) is
retried like UNAVAILABLE instead of failing ``poll`` (seen in CI: a group member exited
during the chaos test's broker restart)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc

from logstore.client import Consumer
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc


class FakeLogStore(logstore_pb2_grpc.LogStoreServicer):
    """Fetch: the first call ends CANCELLED, later ones answer an empty partition."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetches = 0

    def Fetch(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.fetches += 1
            first = self.fetches == 1
        if first:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return pb.FetchResponse(high_watermark=0, log_start_offset=0)


def test_a_fetch_cancelled_by_the_broker_is_retried() -> None:
    """poll() after a broker-side CANCELLED returns (empty) instead of raising, and the
    fetch was sent again."""
    fake = FakeLogStore()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logstore_pb2_grpc.add_LogStoreServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Consumer(f"127.0.0.1:{port}") as c:
            c.assign([("t", 0)])
            c.seek(("t", 0), 0)
            got = []
            for _ in range(10):
                got += c.poll(200)
                if fake.fetches >= 2:
                    break
            assert got == []
            assert fake.fetches >= 2
    finally:
        server.stop(0)
