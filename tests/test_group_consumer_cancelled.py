"""GroupConsumer against a scripted in-process Groups service (no broker), the two ways
the chaos test's auto-commit member exited 1 while the broker restarted: a plain gRPC
CANCELLED -- what a broker's graceful stop answers to calls in flight -- is retried by
the heartbeat thread and by synchronous commits instead of failing ``poll`` / ``commit``;
and the fetching channel is connected at the join, so a broker gone right after it does
not fail the first fetch's connect check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from logstore.client import GroupConsumer, TopicPartition
from logstore.v1 import groups_pb2 as gpb
from logstore.v1 import groups_pb2_grpc


class FakeGroups(groups_pb2_grpc.GroupsServicer):
    """Answers heartbeats (no assignment, epoch 1, every 20 ms) and commits; the calls
    numbered in ``cancel_heartbeats`` / ``cancel_commits`` end CANCELLED instead."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heartbeats = 0
        self.commits: list[gpb.OffsetCommitRequest] = []
        self.commit_calls = 0
        self.cancel_heartbeats: set[int] = set()
        self.cancel_commits: set[int] = set()

    def ConsumerGroupHeartbeat(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.heartbeats += 1
            cancel = self.heartbeats in self.cancel_heartbeats
        if cancel:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        epoch = -1 if request.member_epoch < 0 else 1
        return gpb.ConsumerGroupHeartbeatResponse(
            member_id="m-1", member_epoch=epoch, heartbeat_interval_ms=20
        )

    def OffsetCommit(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.commit_calls += 1
            cancel = self.commit_calls in self.cancel_commits
            if not cancel:
                self.commits.append(request)
        if cancel:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return gpb.OffsetCommitResponse()


#: address -> stop the fake's server now (the broker going away)
fake_server: dict[str, Callable[[], object]] = {}


@pytest.fixture
def fake() -> Iterator[tuple[FakeGroups, str]]:
    svc = FakeGroups()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    groups_pb2_grpc.add_GroupsServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    fake_server[address] = lambda: server.stop(0).wait()
    try:
        yield svc, address
    finally:
        fake_server.pop(address)
        server.stop(0)


def member(address: str, **kwargs: Any) -> GroupConsumer:
    return GroupConsumer(
        address, "g", topics=["t"], retry_backoff_ms=10, retry_backoff_max_ms=20, **kwargs
    )


def test_cancelled_heartbeat_is_retried_not_fatal(fake: tuple[FakeGroups, str]) -> None:
    """Two heartbeats ending CANCELLED do not fail poll; the heartbeats go on after them."""
    svc, address = fake
    svc.cancel_heartbeats = {2, 3}  # 1 is the join (in the constructor)
    gc = member(address)
    try:
        deadline = time.monotonic() + 10
        while svc.heartbeats < 6:  # 2 and 3 answered CANCELLED, then more beats
            assert gc.poll(50) == {}
            assert time.monotonic() < deadline, svc.heartbeats
        assert gc.poll(50) == {}  # the heartbeat thread did not record a fatal error
    finally:
        gc.close()


def test_cancelled_commit_is_retried(fake: tuple[FakeGroups, str]) -> None:
    """A synchronous commit whose first OffsetCommit ends CANCELLED is sent again and
    returns; the broker got exactly the offsets asked for."""
    svc, address = fake
    svc.cancel_commits = {1}
    gc = member(address)
    try:
        gc.commit({TopicPartition("t", 0): 7})
        assert svc.commit_calls == 2
        [req] = svc.commits
        assert [(p.topic, p.partition, p.offset) for p in req.partitions] == [("t", 0, 7)]
    finally:
        gc.close()


def test_fetch_channel_is_connected_at_the_join(fake: tuple[FakeGroups, str]) -> None:
    """Once the constructor has joined, the fetch channel's connect check passes even
    with the broker gone (its fetches then retry UNAVAILABLE instead of failing poll)."""
    _, address = fake
    server_stop = fake_server[address]
    gc = member(address, connect_timeout_ms=300)
    try:
        server_stop()
        gc._consumer._conn.ensure_ready()  # old code: BrokerUnavailableError after 0.3 s
    finally:
        gc.close()
