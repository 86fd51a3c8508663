"""GroupConsumer over a real broker: sharing, failover from committed offsets, resets,
the heartbeat thread, max_poll_interval_ms, static membership.

Short timeouts come from the broker's ``LOGSTORE_GROUP_*`` environment (session
1.5 s, heartbeat 200 ms) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logstore import errors
from logstore.client import Admin, GroupConsumer, Producer, TopicPartition
from tests.brokerproc import BrokerProcess, start_broker

SESSION_MS = 1500
ENV = {
    "LOGSTORE_GROUP_SESSION_TIMEOUT_MS": str(SESSION_MS),
    "LOGSTORE_GROUP_MIN_SESSION_TIMEOUT_MS": "500",
    "LOGSTORE_GROUP_HEARTBEAT_INTERVAL_MS": "200",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("gc") / "data", env=ENV)
    try:
        yield b
    finally:
        b.stop()


def make_topic(b: BrokerProcess, name: str, partitions: int, per_partition: int) -> None:
    with Admin(b.grpc_address) as admin:
        admin.create_topic(name, partitions=partitions)
    with Producer(b.grpc_address) as p:
        for part in range(partitions):
            for i in range(per_partition):
                p.send(name, b"%d-%d" % (part, i), partition=part)
        p.flush()


def drain(
    members: list[GroupConsumer], until: int, seen: list[tuple[TopicPartition, int]], limit_s: float
) -> None:
    """Poll every member in turn until ``seen`` has ``until`` records (or the limit)."""
    deadline = time.monotonic() + limit_s
    while len(seen) < until and time.monotonic() < deadline:
        for m in members:
            for tp, recs in m.poll(100).items():
                seen.extend((tp, r.offset) for r in recs)


def settle(
    members: list[GroupConsumer],
    total: int,
    seen: list[tuple[TopicPartition, int]] | None = None,
    limit_s: float = 10.0,
) -> None:
    """Poll until the members own ``total`` partitions between them, disjointly and evenly."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        owned = [set(m.assignment()) for m in members]
        even = all(len(o) == total // len(members) for o in owned)
        if even and sum(len(o) for o in owned) == total and len(set().union(*owned)) == total:
            return
        for m in members:
            for tp, recs in m.poll(50).items():
                assert seen is not None, "records arrived while settling"
                seen.extend((tp, r.offset) for r in recs)
    raise AssertionError(f"never settled: {[m.assignment() for m in members]}")


def test_two_members_share_then_failover_from_committed_offsets(broker: BrokerProcess) -> None:
    """Each partition goes to exactly one of two members; every record is read once
    across both; when one closes the other takes all partitions from the committed
    offsets, with no loss and no duplicate past them."""
    make_topic(broker, "share", 4, 25)
    a = GroupConsumer(
        broker.grpc_address, "g-share", topics=["share"], auto_offset_reset="earliest"
    )
    b = GroupConsumer(
        broker.grpc_address, "g-share", topics=["share"], auto_offset_reset="earliest"
    )
    try:
        seen: list[tuple[TopicPartition, int]] = []
        settle([a, b], 4, seen)
        assert len(a.assignment()) == 2 and len(b.assignment()) == 2
        drain([a, b], 100, seen, 20)
        assert sorted(seen) == sorted(
            (TopicPartition("share", p), o) for p in range(4) for o in range(25)
        )
        a.commit()
        b.commit()
        with Producer(broker.grpc_address) as p:
            for part in range(4):
                for _ in range(10):
                    p.send("share", b"late", partition=part)
            p.flush()
        a.close()
        more: list[tuple[TopicPartition, int]] = []
        settle([b], 4, more)
        drain([b], 40, more, 20)
        assert sorted(more) == sorted(
            (TopicPartition("share", p), o) for p in range(4) for o in range(25, 35)
        )
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("reset", ["earliest", "latest", "error"])
def test_auto_offset_reset_without_committed_offsets(broker: BrokerProcess, reset: str) -> None:
    """With nothing committed, earliest reads from 0, latest only new records, error raises."""
    topic = f"reset-{reset}"
    make_topic(broker, topic, 1, 5)
    c = GroupConsumer(broker.grpc_address, f"g-{reset}", topics=[topic], auto_offset_reset=reset)
    try:
        if reset == "error":
            with pytest.raises(errors.FailedPreconditionError, match="no committed offset"):
                for _ in range(50):
                    c.poll(100)
            c.seek((topic, 0), 3)
            got = c.poll(2000)
            assert [r.offset for r in got[TopicPartition(topic, 0)]] == [3, 4]
            return
        seen: list[tuple[TopicPartition, int]] = []
        settle([c], 1, seen)
        with Producer(broker.grpc_address) as p:
            p.send(topic, b"new", partition=0)
            p.flush()
        drain([c], 6 if reset == "earliest" else 1, seen, 10)
        want = list(range(6)) if reset == "earliest" else [5]
        assert [o for _, o in seen] == want
    finally:
        c.close()


@pytest.mark.parametrize("reset", ["earliest", "latest", "error"])
def test_committed_offset_outside_the_log_gets_auto_offset_reset(
    broker: BrokerProcess, reset: str
) -> None:
    """A committed offset below the log start (DeleteRecords) or past the log end is
    reset by auto_offset_reset (earliest: log start, latest: log end) instead of the
    fetch's OUT_OF_RANGE escaping poll; error raises one naming the group and partition."""
    topic = f"oor-{reset}"
    make_topic(broker, topic, 2, 10)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    group = f"g-oor-{reset}"
    first = GroupConsumer(broker.grpc_address, group, topics=[topic], enable_auto_commit=False)
    try:
        settle([first], 2, [])
        first.commit({tp0: 3, tp1: 50})  # tp1: past its end (10)
    finally:
        first.close()
    with Admin(broker.grpc_address) as admin:
        assert admin.delete_records(topic, 0, 6) == 6  # tp0's committed 3 is gone
    c = GroupConsumer(broker.grpc_address, group, topics=[topic], auto_offset_reset=reset)
    try:
        if reset == "error":
            for _ in range(2):  # one error per partition, until each is seeked
                with pytest.raises(errors.OffsetOutOfRangeError) as info:
                    for _ in range(50):
                        c.poll(100)
                msg = str(info.value)
                assert f"group {group}" in msg and "auto_offset_reset is 'error'" in msg
                if f"{topic}-0" in msg:
                    assert "offset 3 " in msg and "valid 6..10" in msg
                    c.seek(tp0, 6)
                else:
                    assert f"offset 50 of {topic}-1" in msg and "valid 0..10" in msg
                    c.seek(tp1, 9)
            seen: list[tuple[TopicPartition, int]] = []
            drain([c], 5, seen, 10)
            assert sorted(seen) == [(tp0, 6), (tp0, 7), (tp0, 8), (tp0, 9), (tp1, 9)]
            return
        seen = []
        settle([c], 2, seen)
        if reset == "latest":
            with Producer(broker.grpc_address) as p:
                p.send(topic, b"new", partition=0)
                p.send(topic, b"new", partition=1)
                p.flush()
        want = (
            [(tp0, o) for o in range(6, 10)] + [(tp1, o) for o in range(10)]
            if reset == "earliest"
            else [(tp0, 10), (tp1, 10)]
        )
        drain([c], len(want), seen, 10)
        assert sorted(seen) == want
    finally:
        c.close()


class _FlakyOffsetFetch:
    """The Groups stub, but its first ``failures`` OffsetFetch calls fail as a broker
    that is restarting does (UNAVAILABLE)."""

    def __init__(self, stub: Any, failures: int) -> None:
        self._stub = stub
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def OffsetFetch(self, req: Any, timeout: float) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise errors.BrokerUnavailableError("broker at test is unavailable: restarting")
        return self._stub.OffsetFetch(req, timeout=timeout)


def test_offset_fetch_failing_while_the_broker_restarts_is_retried(
    broker: BrokerProcess,
) -> None:
    """Placing a new partition retries an OffsetFetch that fails with UNAVAILABLE (the
    broker restarting) instead of raising it from poll."""
    make_topic(broker, "flaky", 1, 3)
    c = GroupConsumer(
        broker.grpc_address, "g-flaky", topics=["flaky"], auto_offset_reset="earliest"
    )
    flaky = _FlakyOffsetFetch(c._stub, failures=2)
    c._stub = flaky  # type: ignore[assignment]
    try:
        seen: list[tuple[TopicPartition, int]] = []
        drain([c], 3, seen, 10)
        assert [o for _, o in seen] == [0, 1, 2] and flaky.calls == 3
    finally:
        c.close()


class _FailingHeartbeats:
    """The Groups stub, but its next ``failures`` heartbeats fail with INTERNAL, as the
    broker answers when appending the group's records failed ("nothing changed; retry")."""

    def __init__(self, stub: Any, failures: int) -> None:
        self._stub = stub
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def ConsumerGroupHeartbeat(self, req: Any, timeout: float) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise errors.InternalError("appending the group's records failed; retry")
        return self._stub.ConsumerGroupHeartbeat(req, timeout=timeout)


def test_heartbeat_failing_with_internal_is_retried(broker: BrokerProcess) -> None:
    """A heartbeat answered INTERNAL (a failed append on the broker) is retried by the
    heartbeat thread; the member keeps its partitions and poll raises nothing."""
    make_topic(broker, "hb-internal", 1, 3)
    c = GroupConsumer(
        broker.grpc_address, "g-hb-internal", topics=["hb-internal"], auto_offset_reset="earliest"
    )
    failing = _FailingHeartbeats(c._stub, failures=2)
    c._stub = failing  # type: ignore[assignment]
    try:
        member = c.member_id
        seen: list[tuple[TopicPartition, int]] = []
        drain([c], 3, seen, 10)
        deadline = time.monotonic() + 10
        while failing.calls <= failing.failures + 1 and time.monotonic() < deadline:
            c.poll(100)  # the old code raised the heartbeat thread's InternalError here
        assert failing.calls > failing.failures + 1
        assert [o for _, o in seen] == [0, 1, 2] and c.member_id == member
        assert c.assignment() == [TopicPartition("hb-internal", 0)]
    finally:
        c.close()


class _SlowAsyncCommits:
    """The Groups stub, but an async OffsetCommit reaches the broker only after
    ``delay_s`` (as when gRPC happens to run a later call first)."""

    def __init__(self, stub: Any, delay_s: float) -> None:
        self._stub = stub
        self.delay_s = delay_s
        self.OffsetCommit = self  # sync calls: __call__; async ones: future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def __call__(self, req: Any, timeout: float) -> Any:
        return self._stub.OffsetCommit(req, timeout=timeout)

    def future(self, req: Any, timeout: float) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def late() -> None:
            time.sleep(self.delay_s)
            try:
                fut.set_result(self._stub.OffsetCommit(req, timeout=timeout))
            except Exception as exc:
                fut.set_exception(exc)

        threading.Thread(target=late, daemon=True).start()
        return fut


def test_sync_commit_lands_after_earlier_async_commits(broker: BrokerProcess) -> None:
    """commit() waits for earlier commit_async calls, so a slow async commit cannot land
    after it and move the committed offset back (Kafka's ordering promise)."""
    make_topic(broker, "order", 1, 5)
    tp = TopicPartition("order", 0)
    c = GroupConsumer(
        broker.grpc_address,
        "g-order",
        topics=["order"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    c._stub = _SlowAsyncCommits(c._stub, delay_s=0.5)  # type: ignore[assignment]
    try:
        seen: list[tuple[TopicPartition, int]] = []
        drain([c], 5, seen, 10)
        c.commit_async()  # offset 5, reaching the broker 0.5 s from now
        c.commit({tp: 2})  # later: must be the one that stays
        time.sleep(0.8)
        with Admin(broker.grpc_address) as admin:
            desc = admin.describe_group("g-order")
        assert [p.committed_offset for p in desc.partitions] == [2]
    finally:
        c.close()


def test_broker_restart_neither_fails_poll_nor_loses_a_commit(tmp_path: Path) -> None:
    """Across a broker kill -9 and restart: an auto-commit that failed while the broker
    was down is logged, not raised from the next poll, and a commit() made while it is
    down is retried until it is back and then stored."""
    # A 5 s session: the restarts (1-3 s each on a loaded machine) must not expire it.
    env = {**ENV, "LOGSTORE_GROUP_SESSION_TIMEOUT_MS": "5000"}
    b = start_broker(tmp_path / "data", env=env)
    address = b.grpc_address
    restarted: list[BrokerProcess] = []
    timer = threading.Timer(
        0.5,
        lambda: restarted.append(start_broker(tmp_path / "data", "--listen", address, env=env)),
    )
    tp = TopicPartition("rs", 0)
    try:
        make_topic(b, "rs", 1, 10)
        c = GroupConsumer(
            address, "g-rs", topics=["rs"], auto_offset_reset="earliest", auto_commit_interval_ms=1
        )
        try:
            deadline = time.monotonic() + 10
            while not c.poll(100, max_records=2) and time.monotonic() < deadline:
                pass
            b.kill()
            # auto-commit of offset 2 is due: it fails; the records come from the buffer
            assert [r.offset for r in c.poll(300, max_records=2)[tp]] == [2, 3]
            time.sleep(0.3)  # the failed commit's callback has run
            b = start_broker(tmp_path / "data", "--listen", address, env=env)
            for _ in range(5):
                c.poll(100, max_records=2)  # the old code raised the failed auto-commit here
            b.kill()
            timer.start()
            c.commit({tp: 7})  # the broker is down: retried until it is back
            with Admin(address) as admin:
                desc = admin.describe_group("g-rs")
            assert [p.committed_offset for p in desc.partitions] == [7]
        finally:
            c.close()
    finally:
        b.kill()
        if timer.is_alive():
            timer.join(30)  # a broker it starts is stopped below, not leaked
        for r in restarted:
            r.kill()


def test_slow_processing_keeps_partitions(broker: BrokerProcess) -> None:
    """Sleeping longer than the session timeout between polls (under max_poll_interval)
    keeps the partitions: the heartbeat thread keeps the member alive."""
    make_topic(broker, "slow", 2, 3)
    lost: list[list[TopicPartition]] = []
    c = GroupConsumer(
        broker.grpc_address,
        "g-slow",
        topics=["slow"],
        auto_offset_reset="earliest",
        on_lost=lost.append,
        max_poll_interval_ms=20_000,
    )
    try:
        seen: list[tuple[TopicPartition, int]] = []
        settle([c], 2, seen)
        member = c.member_id
        time.sleep(SESSION_MS / 1000 * 2)
        drain([c], 6, seen, 10)
        assert len(seen) == 6 and not lost and c.member_id == member
        assert len(c.assignment()) == 2
    finally:
        c.close()


def test_max_poll_interval_breach_fires_on_lost_and_rejoins(broker: BrokerProcess) -> None:
    """Not polling for longer than max_poll_interval_ms leaves the group; the next poll
    calls on_lost with the partitions and the member rejoins and gets them back."""
    make_topic(broker, "breach", 2, 1)
    lost: list[list[TopicPartition]] = []
    c = GroupConsumer(
        broker.grpc_address,
        "g-breach",
        topics=["breach"],
        auto_offset_reset="earliest",
        on_lost=lost.append,
        max_poll_interval_ms=800,
    )
    try:
        settle([c], 2, [])
        before = c.member_id
        time.sleep(1.6)
        c.poll(100)
        assert lost == [[TopicPartition("breach", 0), TopicPartition("breach", 1)]]
        settle([c], 2, [])
        assert c.member_id != before
    finally:
        c.close()


def test_static_member_restart_reclaims_its_partitions(broker: BrokerProcess) -> None:
    """A static member that closes (epoch -2) and restarts with the same instance id gets
    the same partitions back, while the other member keeps its own."""
    make_topic(broker, "static", 4, 0)
    kw = {"topics": ["static"], "auto_offset_reset": "earliest"}
    a = GroupConsumer(broker.grpc_address, "g-static", group_instance_id="pod-a", **kw)  # type: ignore[arg-type]
    b = GroupConsumer(broker.grpc_address, "g-static", group_instance_id="pod-b", **kw)  # type: ignore[arg-type]
    try:
        settle([a, b], 4)
        mine, theirs = a.assignment(), b.assignment()
        a.close()
        a = GroupConsumer(broker.grpc_address, "g-static", group_instance_id="pod-a", **kw)  # type: ignore[arg-type]
        settle([a, b], 4)
        assert a.assignment() == mine and b.assignment() == theirs
    finally:
        a.close()
        b.close()


def test_fenced_member_fires_on_lost_and_rejoins(broker: BrokerProcess) -> None:
    """When another join takes over the member's instance id (fencing it), the next
    heartbeat's UNKNOWN_MEMBER_ID makes poll call on_lost with every owned partition
    and the member rejoins with epoch 0 and owns them again."""
    import grpc

    from logstore.v1 import groups_pb2 as gpb
    from logstore.v1 import groups_pb2_grpc

    make_topic(broker, "fenced", 2, 0)
    lost: list[list[TopicPartition]] = []
    c = GroupConsumer(
        broker.grpc_address,
        "g-fenced",
        topics=["fenced"],
        group_instance_id="pod-f",
        on_lost=lost.append,
    )
    try:
        settle([c], 2)
        before = c.assignment()
        with grpc.insecure_channel(broker.grpc_address) as ch:
            req = gpb.ConsumerGroupHeartbeatRequest(
                group_id="g-fenced", member_epoch=0, instance_id="pod-f"
            )
            req.topic_names.names.append("fenced")
            groups_pb2_grpc.GroupsStub(ch).ConsumerGroupHeartbeat(req, timeout=10)
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            c.poll(100)
        assert lost == [before]
        settle([c], 2)
        assert c.assignment() == before
    finally:
        c.close()


def test_pattern_subscription_follows_new_topics(broker: BrokerProcess) -> None:
    """A regex subscription is assigned the partitions of a matching topic created later."""
    make_topic(broker, "pat-a", 1, 0)
    c = GroupConsumer(broker.grpc_address, "g-pat", pattern="pat-.*")
    try:
        settle([c], 1)
        make_topic(broker, "pat-b", 1, 0)
        settle([c], 2)
        assert {tp.topic for tp in c.assignment()} == {"pat-a", "pat-b"}
    finally:
        c.close()


def test_consumer_reassign_ignores_the_cancelled_fetch(broker: BrokerProcess) -> None:
    """A partition unassigned while its fetch is in flight and assigned again does not
    raise the cancelled fetch's CancelledError from the next poll (regression)."""
    from logstore.client import Consumer

    make_topic(broker, "reassign", 1, 0)
    with Consumer(broker.grpc_address, fetch_max_wait_ms=2000) as c:
        c.assign([("reassign", 0)])
        c.seek(("reassign", 0), 0)
        assert c.poll(50) == {}  # the long-poll fetch is now in flight
        c.assign([])
        c.assign([("reassign", 0)])
        c.seek(("reassign", 0), 0)  # the same epoch as the cancelled fetch's
        time.sleep(0.2)  # its done callback has queued its event
        assert c.poll(100) == {}


def committed_of(b: BrokerProcess, group: str) -> dict[tuple[str, int], int]:
    import grpc

    from logstore.v1 import groups_pb2 as gpb
    from logstore.v1 import groups_pb2_grpc

    with grpc.insecure_channel(b.grpc_address) as ch:
        reply = groups_pb2_grpc.GroupsStub(ch).OffsetFetch(
            gpb.OffsetFetchRequest(group_id=group), timeout=10
        )
    return {(o.topic, o.partition): o.offset for o in reply.offsets}


def test_auto_commit_and_commit_async_commit_what_poll_returned(broker: BrokerProcess) -> None:
    """Auto-commit commits what earlier polls returned once its interval passed; with
    auto-commit off nothing is committed until commit_async(), which commits it."""
    make_topic(broker, "autoc", 1, 4)
    c = GroupConsumer(
        broker.grpc_address,
        "g-auto",
        topics=["autoc"],
        auto_offset_reset="earliest",
        auto_commit_interval_ms=200,
    )
    try:
        seen: list[tuple[TopicPartition, int]] = []
        settle([c], 1, seen)
        drain([c], 4, seen, 10)
        time.sleep(0.3)
        c.poll(100)  # the interval passed: this poll commits asynchronously
        deadline = time.monotonic() + 5
        while committed_of(broker, "g-auto") != {("autoc", 0): 4} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert committed_of(broker, "g-auto") == {("autoc", 0): 4}
    finally:
        c.close()
    m = GroupConsumer(
        broker.grpc_address,
        "g-manual",
        topics=["autoc"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        auto_commit_interval_ms=1,
    )
    try:
        seen = []
        settle([m], 1, seen)
        drain([m], 4, seen, 10)
        m.poll(100)
        assert committed_of(broker, "g-manual") == {}
        done: list[object] = []
        m.commit_async(done.append)
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done == [None] and committed_of(broker, "g-manual") == {("autoc", 0): 4}
    finally:
        m.close()


def test_commit_waits_for_the_new_epoch_of_a_slow_heartbeat_reply(
    broker: BrokerProcess,
) -> None:
    """A commit racing the heartbeat that advanced the member's epoch (STALE_MEMBER_EPOCH)
    is retried once that reply arrives, even when it takes longer than 50 ms (it used to
    retry after a fixed 50 ms with the same stale epoch and raise)."""
    make_topic(broker, "stale", 2, 5)
    a = GroupConsumer(
        broker.grpc_address,
        "g-stale",
        topics=["stale"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    b: GroupConsumer | None = None
    try:
        seen: list[tuple[TopicPartition, int]] = []
        drain([a], 10, seen, 10)
        # From now on a's heartbeat replies arrive 400 ms late (a slow network).
        call = a._conn.call
        beat = a._stub.ConsumerGroupHeartbeat

        def slow(method: Any, request: Any, timeout_s: float) -> Any:
            reply = call(method, request, timeout_s)
            if method is beat:
                time.sleep(0.4)
            return reply

        a._conn.call = slow  # type: ignore[method-assign]
        b = GroupConsumer(broker.grpc_address, "g-stale", topics=["stale"])
        deadline = time.monotonic() + 10
        while len(a.assignment()) != 1 and time.monotonic() < deadline:
            a.poll(20)  # releases one partition; its heartbeat advances a's epoch
        assert len(a.assignment()) == 1
        time.sleep(0.1)  # that heartbeat reached the broker; its reply is still on the way
        kept = a.assignment()[0]
        a.commit({kept: 5})
        assert committed_of(broker, "g-stale")[tuple(kept)] == 5
    finally:
        a.close()
        if b is not None:
            b.close()
