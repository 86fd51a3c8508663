"""The ShareGroups service of a real broker, over raw gRPC with the generated stubs.

Acquire / ACCEPT / RELEASE / REJECT / RENEW, locks that exclude other members
and expire, dead letters after exactly max_delivery_attempts deliveries with
their headers, delayed delivery against the broker's clock, priorities,
ordering keys, the share state across a broker kill -9, a member process
kill -9'ed, back pressure from max_queue_latency_ms, and the precise status of
wrong input. Locks are 1000 ms (the broker's min_visibility_timeout_ms) where
expiry is tested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import records_pb2
from logstore.v1 import share_pb2 as spb
from logstore.wire import Record, decode_objects, parse_fetch, stored_frames
from tests.brokerproc import BrokerProcess, start_broker
from tests.sharehelp import ShareClient, ack, acquired, status_of
from tests.test_broker_helpers import scrape

ROOT = Path(__file__).resolve().parent.parent
LOCK_MS = 1000


@pytest.fixture(scope="module")
def sbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the module's tests (each uses its own topics and groups)."""
    b = start_broker(tmp_path_factory.mktemp("share") / "data")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def client(sbroker: BrokerProcess) -> Iterator[ShareClient]:
    c = ShareClient(sbroker.grpc_address)
    try:
        yield c
    finally:
        c.close()


def create(c: ShareClient, group: str, **cfg: object) -> spb.ShareGroupConfig:
    r = c.share.CreateShareGroup(
        spb.CreateShareGroupRequest(group_id=group, config=spb.ShareGroupConfig(**cfg)),  # type: ignore[arg-type]
        timeout=10,
    )
    return r.config


def member(address: str, group: str, topics: list[str]) -> ShareClient:
    m = ShareClient(address)
    m.join(group, topics)
    return m


def read_topic(c: ShareClient, topic: str, partition: int = 0) -> list[Record]:
    """Every record of a partition ([] while the topic does not exist)."""
    fetch = c.channel.unary_unary("/logstore.v1.LogStore/Fetch")
    req = pb.FetchRequest(topic=topic, partition=partition, offset=0, max_bytes=1 << 20)
    try:
        raw = fetch(req.SerializeToString(), timeout=10)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return []
        raise
    return list(decode_objects(parse_fetch(raw), 0))


def wait_topic(c: ShareClient, topic: str, n: int = 1) -> list[Record]:
    """The records of ``topic`` once it has at least ``n`` (10 s at most)."""
    deadline = time.time() + 10
    recs = read_topic(c, topic)
    while len(recs) < n and time.time() < deadline:
        time.sleep(0.05)
        recs = read_topic(c, topic)
    return recs


# -- acknowledgements ------------------------------------------------------------------


def test_accept_release_reject_renew_and_refusals(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """Each kind applies; a range the caller does not hold is refused per range, never applied."""
    client.topic("ack-t")
    client.produce("ack-t", [b"a", b"b", b"c", b"d"])
    create(client, "ack-g", visibility_timeout_ms=5000)
    client.join("ack-g", ["ack-t"])
    got = acquired(client.fetch(10))
    assert sorted(o for _, _, o in got) == [0, 1, 2, 3]
    other = member(sbroker.grpc_address, "ack-g", ["ack-t"])
    try:
        # another member cannot acknowledge what this one holds
        (res,) = other.ack([ack("ack-t", 0, 0)])
        assert (res.code, res.reason) == (9, "INVALID_RECORD_STATE")
        assert "another consumer" in res.message
        results = client.ack(
            [
                ack("ack-t", 0, 0),  # ACCEPT
                ack("ack-t", 1, 1, spb.RELEASE),
                ack("ack-t", 2, 2, spb.REJECT, error="bad input"),
                ack("ack-t", 3, 3, spb.RENEW, extend_ms=20_000),
                ack("ack-t", 0, 0),  # again by the same member: a repeat, answered OK
            ]
        )
        assert [r.code for r in results] == [0, 0, 0, 0, 0]
        (res,) = other.ack([ack("ack-t", 0, 0)])  # by another: already accepted
        assert (res.code, res.reason) == (9, "INVALID_RECORD_STATE")
        # the released record goes to the next fetch (of anyone), delivery count 2
        again = acquired(other.fetch(10))
        assert list(again) == [("ack-t", 0, 1)] and again[("ack-t", 0, 1)][1] == 2
    finally:
        other.close()
    # the renewed lock outlives the 5 s visibility timeout it was acquired with
    d = client.share.DescribeShareGroup(spb.DescribeShareGroupRequest(group_id="ack-g"), timeout=10)
    (p,) = d.partitions
    assert p.acquired == 2 and p.dead_lettered + p.available <= 1


def test_two_members_never_hold_the_same_record(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """While locked, a record is handed to one member only; together they get every record once."""
    client.topic("two-t", 2)
    for p in (0, 1):
        client.produce("two-t", [b"%d-%d" % (p, i) for i in range(50)], partition=p)
    client.join("two-g", ["two-t"])
    other = member(sbroker.grpc_address, "two-g", ["two-t"])
    try:
        seen: list[tuple[str, int, int]] = []
        for _ in range(10):
            seen += acquired(client.fetch(7))
            seen += acquired(other.fetch(11))
        assert len(seen) == len(set(seen)) == 100
    finally:
        other.close()


def test_an_expired_lock_redelivers_and_its_ack_is_refused(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """After the lock the record goes to the next fetch; the late ACCEPT is refused."""
    client.topic("exp-t")
    client.produce("exp-t", [b"x"])
    create(client, "exp-g", visibility_timeout_ms=LOCK_MS)
    client.join("exp-g", ["exp-t"])
    (a,) = client.fetch(10).partitions[0].acquired
    other = member(sbroker.grpc_address, "exp-g", ["exp-t"])
    try:
        t0 = time.time()
        reply = other.fetch(10, wait_ms=5000)  # woken by the broker's lock timer
        waited = time.time() - t0
        again = acquired(reply)
        assert list(again) == [("exp-t", 0, 0)] and again[("exp-t", 0, 0)][1] == 2
        assert waited < 4.0, f"the expiry timer woke the long poll late ({waited:.1f} s)"
        (b,) = reply.partitions[0].acquired
        assert b.lock_deadline_ms - LOCK_MS >= a.lock_deadline_ms  # not before the lock ended
        (late,) = client.ack([ack("exp-t", 0, 0)])
        assert (late.code, late.reason) == (9, "INVALID_RECORD_STATE")
        (ok,) = other.ack([ack("exp-t", 0, 0)])
        assert ok.code == 0
    finally:
        other.close()


def test_poison_record_reaches_the_dlq_after_exactly_max_deliveries(client: ShareClient) -> None:
    """Released max_delivery_attempts times: dead-lettered with the headers, not redelivered."""
    client.topic("poison-t")
    client.produce("poison-t", [b"poison"], headers=[("trace", b"42")])
    create(client, "poison-g", max_delivery_attempts=3)
    client.join("poison-g", ["poison-t"])
    deliveries = []
    for attempt in range(1, 5):
        got = acquired(client.fetch(10, wait_ms=200))
        if not got:
            break
        ((_, count, _),) = got.values()
        deliveries.append(count)
        assert count == attempt
        (r,) = client.ack([ack("poison-t", 0, 0, spb.RELEASE, error=f"boom {attempt}")])
        assert r.code == 0
    assert deliveries == [1, 2, 3]
    (rec,) = wait_topic(client, "poison-g.dlq")
    h = dict(rec.headers)
    assert rec.value == b"poison"
    assert h["trace"] == b"42"
    assert h["logstore-dlq-source-topic"] == b"poison-t"
    assert h["logstore-dlq-source-partition"] == b"0"
    assert h["logstore-dlq-source-offset"] == b"0"
    assert h["logstore-dlq-delivery-count"] == b"3"
    assert h["logstore-dlq-reason"] == b"MAX_DELIVERY_ATTEMPTS"
    assert h["logstore-dlq-error"] == b"boom 3"
    assert h["logstore-dlq-group"] == b"poison-g"
    first, last = int(h["logstore-dlq-first-delivery-ms"]), int(h["logstore-dlq-last-delivery-ms"])
    assert 0 < first <= last
    assert acquired(client.fetch(10)) == {}


def test_reject_dead_letters_at_once_with_reason_rejected(client: ShareClient) -> None:
    """REJECT: never redelivered, in the DLQ with reason REJECTED and the consumer's text."""
    client.topic("rej-t")
    client.produce("rej-t", [b"r"])
    client.join("rej-g", ["rej-t"])
    assert acquired(client.fetch(10))
    (r,) = client.ack([ack("rej-t", 0, 0, spb.REJECT, error="schema mismatch")])
    assert r.code == 0
    (rec,) = wait_topic(client, "rej-g.dlq")
    h = dict(rec.headers)
    assert (h["logstore-dlq-reason"], h["logstore-dlq-error"]) == (b"REJECTED", b"schema mismatch")
    assert h["logstore-dlq-delivery-count"] == b"1"
    assert acquired(client.fetch(10, wait_ms=200)) == {}


# -- delays, priorities, ordering keys ---------------------------------------------------


def test_delayed_records_are_never_delivered_early(client: ShareClient) -> None:
    """A record with logstore-deliver-at-ms is acquired no earlier than that time by the
    broker's clock (its acquisition time = lock deadline - visibility timeout; tolerance 0 ms)."""
    client.topic("delay-t")
    create(client, "delay-g", visibility_timeout_ms=10_000)
    client.join("delay-g", ["delay-t"])
    at = int(time.time() * 1000) + 1500
    client.produce("delay-t", [b"now"])
    client.produce("delay-t", [b"later"], headers=[("logstore-deliver-at-ms", str(at).encode())])
    first = acquired(client.fetch(10))
    assert [v for v, _, _ in first.values()] == [b"now"]
    deadline = time.time() + 10
    got: dict[tuple[str, int, int], object] = {}
    reply = None
    while not got and time.time() < deadline:
        reply = client.fetch(10, wait_ms=3000)  # woken by the delay's timer
        got = acquired(reply)  # type: ignore[assignment]
    assert reply is not None and list(got) == [("delay-t", 0, 1)]
    (a,) = reply.partitions[0].acquired
    acquired_at = a.lock_deadline_ms - 10_000
    assert acquired_at >= at, f"delivered {at - acquired_at} ms early"
    assert acquired_at - at < 2000, "the delay's timer fired late"


def test_higher_priority_topic_always_first(client: ShareClient) -> None:
    """Both topics backlogged: every high-priority record is handed out before any low one."""
    client.topic("prio-high")
    client.topic("prio-low")
    client.produce("prio-low", [b"l%d" % i for i in range(20)])
    client.produce("prio-high", [b"h%d" % i for i in range(20)])
    create(client, "prio-g", topic_priorities={"prio-high": 10, "prio-low": 1})
    client.join("prio-g", ["prio-high", "prio-low"])
    order: list[str] = []
    for _ in range(10):
        order += [t for t, _, _ in sorted(acquired(client.fetch(6)))]
    assert order == ["prio-high"] * 20 + ["prio-low"] * 20


def test_ordering_keys_one_in_flight_per_key(client: ShareClient, sbroker: BrokerProcess) -> None:
    """With ordering_keys a key's next record waits while one is acquired (offset order)."""
    client.topic("ord-t")
    keys = [b"k1", b"k2"] * 3
    client.produce("ord-t", [b"%d" % i for i in range(6)], keys=keys)
    create(client, "ord-g", ordering_keys=True)
    client.join("ord-g", ["ord-t"])
    other = member(sbroker.grpc_address, "ord-g", ["ord-t"])
    try:
        a = acquired(client.fetch(10))
        b = acquired(other.fetch(10))
        assert sorted(o for _, _, o in a) == [0, 1] and b == {}
        client.ack([ack("ord-t", 0, 0)])
        b = acquired(other.fetch(10))
        assert sorted(o for _, _, o in b) == [2]  # k1's next, k2 still held
    finally:
        other.close()


# -- durability ---------------------------------------------------------------------------


def test_acknowledgements_survive_a_broker_kill_9(tmp_path: Path) -> None:
    """After kill -9 and restart: no ACCEPTed record redelivered, none lost, counts kept."""
    b = start_broker(tmp_path / "data")
    try:
        c = ShareClient(b.grpc_address)
        c.topic("dur-t")
        c.produce("dur-t", [b"%d" % i for i in range(10)])
        c.join("dur-g", ["dur-t"])
        got = acquired(c.fetch(6))
        assert sorted(o for _, _, o in got) == list(range(6))
        assert all(r.code == 0 for r in c.ack([ack("dur-t", 0, 2)]))
        c.close()
        b.kill()
        b = start_broker(tmp_path / "data")
        old = c.member
        c = ShareClient(b.grpc_address)
        c.group, c.member = "dur-g", old
        with pytest.raises(grpc.RpcError) as err:
            c.fetch(10)  # the old member id is gone with the broker
        assert status_of(err.value)[:2] == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "UNKNOWN_MEMBER_ID",
        )
        c.join("dur-g", ["dur-t"])
        after = acquired(c.fetch(100))
        assert sorted(o for _, _, o in after) == list(range(3, 10))
        counts = {o: n for (_, _, o), (_, n, _) in after.items()}
        assert counts == {3: 2, 4: 2, 5: 2, 6: 1, 7: 1, 8: 1, 9: 1}
        c.close()
    finally:
        b.stop()


_MEMBER = """
import sys
sys.path.insert(0, {root!r})
from tests.sharehelp import ShareClient, acquired
c = ShareClient({addr!r})
c.join("crash-g", ["crash-t"])
r = c.fetch(5)
got = acquired(r)
deadline = max(a.lock_deadline_ms for p in r.partitions for a in p.acquired)
print(",".join(str(o) for _, _, o in sorted(got)) + " " + str(deadline), flush=True)
import time
time.sleep(60)
"""


def test_a_killed_member_s_records_go_to_another_after_the_lock(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """A member process kill -9'ed holding records: another gets them after the lock."""
    client.topic("crash-t")
    client.produce("crash-t", [b"%d" % i for i in range(8)])
    create(client, "crash-g", visibility_timeout_ms=LOCK_MS)
    code = _MEMBER.format(root=str(ROOT), addr=sbroker.grpc_address)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        offsets, lock_end = proc.stdout.readline().split()
        held = [int(x) for x in offsets.split(",")]
        assert held == [0, 1, 2, 3, 4]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        client.join("crash-g", ["crash-t"])
        seen: dict[int, int] = {}
        deadline = time.time() + 10
        while len(seen) < 8 and time.time() < deadline:
            reply = client.fetch(10, wait_ms=2000)
            for (_, _, o), (_, n, _) in acquired(reply).items():
                seen[o] = n
            for p in reply.partitions:
                for a in p.acquired:
                    if (
                        a.delivery_count == 2
                    ):  # redelivered: not before the dead member's lock ended
                        assert a.lock_deadline_ms - LOCK_MS >= int(lock_end)
        assert sorted(seen) == list(range(8))
        assert {o: seen[o] for o in held} == dict.fromkeys(held, 2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- back pressure -------------------------------------------------------------------------


def test_queue_latency_bound_refuses_produce_with_retry_info(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """Backlog / ack rate past max_queue_latency_ms: Produce gets RESOURCE_EXHAUSTED
    QUEUE_LATENCY_EXCEEDED with RetryInfo; the gauge and a WARN line show it."""
    client.topic("bp-t")
    client.produce("bp-t", [b"x"] * 500)
    create(client, "bp-g", max_queue_latency_ms=1000)
    client.join("bp-g", ["bp-t"])
    client.fetch(1)
    client.ack([ack("bp-t", 0, 0)])  # 1 ack / 60 s: 499 records take ~8 h
    deadline = time.time() + 10
    err = None
    while time.time() < deadline:
        try:
            client.produce("bp-t", [b"more"])
        except grpc.RpcError as exc:
            err = exc
            break
        time.sleep(0.2)
    assert err is not None, "producing was never refused"
    code, reason, message = status_of(err)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_LATENCY_EXCEEDED")
    assert "bp-g" in message
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)  # type: ignore[union-attr]
    assert retry.retry_delay.ToMilliseconds() > 0
    text = scrape(sbroker)
    assert 'logstore_share_estimated_drain_seconds{group="bp-g"}' in text
    assert "queue latency near its bound" in sbroker.log()
    # other topics are not throttled
    client.topic("bp-other")
    client.produce("bp-other", [b"fine"])


# -- wrong input ----------------------------------------------------------------------------


def _refused(fn: object, *args: object, **kw: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)  # type: ignore[operator]
    return status_of(exc.value)


INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_input_gets_precise_statuses(client: ShareClient, sbroker: BrokerProcess) -> None:
    """Every refusal has its code and reason; nothing is applied."""
    s = client.share
    assert _refused(s.ShareGroupHeartbeat, spb.ShareGroupHeartbeatRequest(group_id="w"))[:2] == (
        INVALID,
        "INVALID_GROUP_REQUEST",
    )
    assert _refused(
        s.ShareGroupHeartbeat, spb.ShareGroupHeartbeatRequest(group_id="", topics=["x"])
    )[:2] == (INVALID, "INVALID_GROUP_REQUEST")
    assert _refused(s.ShareFetch, spb.ShareFetchRequest(group_id="w", member_id="nobody"))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNKNOWN_MEMBER_ID",
    )
    assert _refused(s.DescribeShareGroup, spb.DescribeShareGroupRequest(group_id="no-such"))[
        :2
    ] == (grpc.StatusCode.NOT_FOUND, "GROUP_ID_NOT_FOUND")
    assert _refused(s.DeleteShareGroup, spb.DeleteShareGroupRequest(group_id="no-such"))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "GROUP_ID_NOT_FOUND",
    )
    client.topic("w-t")
    client.join("w-g", ["w-t"])
    for req in (
        spb.ShareFetchRequest(group_id="w-g", member_id=client.member, max_records=-1),
        spb.ShareFetchRequest(group_id="w-g", member_id=client.member, max_records=10**6),
        spb.ShareFetchRequest(group_id="w-g", member_id=client.member, max_wait_ms=10**6),
        spb.ShareFetchRequest(group_id="w-g", member_id=client.member, max_bytes=-5),
    ):
        assert _refused(s.ShareFetch, req)[:2] == (INVALID, "INVALID_GROUP_REQUEST"), req
    for bad in (
        ack("w-t", 0, 0, kind=0),
        ack("w-t", 0, 0, kind=99),
        ack("w-t", 5, 2),
        ack("w-t", -1, 2),
        ack("w-t", 0, 0, spb.RELEASE, delay_ms=-1),
        ack("w-t", 0, 0, spb.REJECT, error="x" * 5000),
    ):
        code, reason, _ = _refused(client.ack, [bad])
        assert (code, reason) == (INVALID, "INVALID_GROUP_REQUEST"), bad
    assert _refused(
        s.ShareAcknowledge, spb.ShareAcknowledgeRequest(group_id="w-g", member_id=client.member)
    )[:2] == (INVALID, "INVALID_GROUP_REQUEST")
    # config values out of range, and a create that contradicts the existing config
    assert _refused(create, client, "w-cfg", visibility_timeout_ms=5)[:2] == (
        INVALID,
        "INVALID_GROUP_REQUEST",
    )
    assert _refused(create, client, "w-cfg", max_delivery_attempts=0)[:2] == (
        INVALID,
        "INVALID_GROUP_REQUEST",
    )
    assert _refused(create, client, "w-cfg", auto_offset_reset="middle")[:2] == (
        INVALID,
        "INVALID_GROUP_REQUEST",
    )
    create(client, "w-cfg", max_delivery_attempts=4)
    assert create(client, "w-cfg", max_delivery_attempts=4).max_delivery_attempts == 4
    assert _refused(create, client, "w-cfg", max_delivery_attempts=7)[:2] == (
        grpc.StatusCode.ALREADY_EXISTS,
        "GROUP_ALREADY_EXISTS",
    )
    # DeleteShareGroup with an active member
    assert _refused(s.DeleteShareGroup, spb.DeleteShareGroupRequest(group_id="w-g"))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NON_EMPTY_GROUP",
    )
    assert "Traceback" not in sbroker.log()


def test_admin_create_alter_list_describe_delete(client: ShareClient) -> None:
    """Create fills defaults, Alter keeps unset fields, List/Describe show it, Delete ends it."""
    cfg = create(client, "adm-g", visibility_timeout_ms=2000)
    assert (cfg.visibility_timeout_ms, cfg.max_delivery_attempts, cfg.max_inflight_records) == (
        2000,
        5,
        2000,
    )
    assert cfg.dead_letter_topic == "adm-g.dlq" and cfg.auto_offset_reset == "earliest"
    s = client.share
    alt = s.AlterShareGroup(
        spb.AlterShareGroupRequest(
            group_id="adm-g", config=spb.ShareGroupConfig(max_delivery_attempts=9)
        ),
        timeout=10,
    ).config
    assert (alt.visibility_timeout_ms, alt.max_delivery_attempts) == (2000, 9)
    listed = s.ListShareGroups(spb.ListShareGroupsRequest(), timeout=10).groups
    assert "adm-g" in [g.group_id for g in listed]
    d = s.DescribeShareGroup(spb.DescribeShareGroupRequest(group_id="adm-g"), timeout=10)
    assert d.config.max_delivery_attempts == 9
    s.DeleteShareGroup(spb.DeleteShareGroupRequest(group_id="adm-g"), timeout=10)
    listed = s.ListShareGroups(spb.ListShareGroupsRequest(), timeout=10).groups
    assert "adm-g" not in [g.group_id for g in listed]


# -- redrive -------------------------------------------------------------------------------


def _reject_all(c: ShareClient, topic: str, n: int) -> None:
    got = acquired(c.fetch(100))
    assert len(got) == n
    results = c.ack([ack(topic, 0, n - 1, spb.REJECT, error="bad")])
    assert results[0].code == 0


def _redrive(c: ShareClient, group: str, **kw: object) -> spb.RedriveDeadLettersResponse:
    return c.share.RedriveDeadLetters(
        spb.RedriveDeadLettersRequest(group_id=group, **kw),  # type: ignore[arg-type]
        timeout=30,
    )


def _redriven(recs: list[Record]) -> list[bytes]:
    return [v for r in recs for n, v in r.headers if n == "logstore-redrive-from"]


def test_redrive_moves_dead_letters_back_once(client: ShareClient) -> None:
    """Redrive puts each dead letter back in its source once; a second redrive moves nothing;
    the redriven records are delivered again, without the old dlq headers."""
    client.topic("rd-t")
    client.produce("rd-t", [b"a", b"b", b"c"], headers=[("app", b"1")])
    client.join("rd-g", ["rd-t"])
    _reject_all(client, "rd-t", 3)
    assert len(wait_topic(client, "rd-g.dlq", 3)) == 3
    r = _redrive(client, "rd-g", max_records=2)
    assert (r.redriven, r.remaining) == (2, 1)
    r = _redrive(client, "rd-g")
    assert (r.redriven, r.remaining) == (1, 0)
    assert (_redrive(client, "rd-g").redriven, _redrive(client, "rd-g").remaining) == (0, 0)
    src = read_topic(client, "rd-t")
    assert [x.value for x in src] == [b"a", b"b", b"c", b"a", b"b", b"c"]
    assert _redriven(src) == [b"rd-g.dlq/0/0", b"rd-g.dlq/0/1", b"rd-g.dlq/0/2"]
    again = acquired(client.fetch(100))
    assert sorted(o for _, _, o in again) == [3, 4, 5]
    for _, _, headers in again.values():
        names = {n for n, _ in headers}
        assert "app" in names and not any(n.startswith("logstore-dlq-") for n in names)
    # to_topic, and its refusals
    client.topic("rd-other")
    assert _refused(_redrive, client, "rd-g", to_topic="no-such-topic")[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_TOPIC",
    )
    assert _refused(_redrive, client, "no-such-group")[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "GROUP_ID_NOT_FOUND",
    )
    assert _refused(_redrive, client, "rd-g", max_records=-1)[:2] == (
        INVALID,
        "INVALID_GROUP_REQUEST",
    )


def test_a_redrive_interrupted_by_a_crash_finishes_exactly_once(tmp_path: Path) -> None:
    """An intent left by a crash after 1 of 3 appends: the next redrive appends the other 2 only."""
    from logstore.share import ShareRecord, ShareRedriveKey, ShareRedriveValue, encode
    from logstore.storage import Store
    from logstore.wire import Record as WireRecord

    b = start_broker(tmp_path / "data")
    try:
        c = ShareClient(b.grpc_address)
        c.topic("cr-t")
        c.produce("cr-t", [b"x", b"y", b"z"])
        c.join("cr-g", ["cr-t"])
        _reject_all(c, "cr-t", 3)
        dl = wait_topic(c, "cr-g.dlq", 3)
        c.close()
    finally:
        b.stop()
    store = Store.open(tmp_path / "data")
    try:
        hw = store.high_watermark("cr-t", 0)
        intent = ShareRecord(
            ShareRedriveKey("cr-g"), ShareRedriveValue(0, 3, "", (("cr-t", 0, hw),))
        )
        key, value = encode(intent)
        end = store.append("__share_group_state", 0, [WireRecord(value=value, key=key)])
        store.sync_to("__share_group_state", 0, end + 1).result()
        first = dl[0]
        done = [(n, v) for n, v in first.headers if not n.startswith("logstore-dlq-")]
        done.append(("logstore-redrive-from", b"cr-g.dlq/0/0"))
        end = store.append("cr-t", 0, [WireRecord(value=first.value, headers=done)])
        store.sync_to("cr-t", 0, end + 1).result()
    finally:
        store.close()
    b = start_broker(tmp_path / "data")
    try:
        c = ShareClient(b.grpc_address)
        r = _redrive(c, "cr-g")
        assert (r.redriven, r.remaining) == (2, 0)
        src = read_topic(c, "cr-t")
        assert _redriven(src) == [b"cr-g.dlq/0/0", b"cr-g.dlq/0/1", b"cr-g.dlq/0/2"]
        assert [x.value for x in src[3:]] == [b"x", b"y", b"z"]
        assert _redrive(c, "cr-g").redriven == 0
        c.close()
    finally:
        b.stop()


def test_describe_and_metrics_show_the_queue(client: ShareClient, sbroker: BrokerProcess) -> None:
    """Describe and the metrics give available / acquired / delayed counts, members' in-flight."""
    client.topic("met-t")
    client.produce("met-t", [b"%d" % i for i in range(10)])
    at = int(time.time() * 1000) + 60_000
    client.produce("met-t", [b"later"], headers=[("logstore-deliver-at-ms", str(at).encode())])
    r = client.share.ShareGroupHeartbeat(
        spb.ShareGroupHeartbeatRequest(group_id="met-g", topics=["met-t"], client_id="w-1"),
        timeout=10,
    )
    client.group, client.member = "met-g", r.member_id
    # a fetch reads max_records new offsets: 11 takes the delayed one into the window
    assert len(acquired(client.fetch(11))) == 10
    client.ack([ack("met-t", 4, 9, spb.RELEASE)])
    d = client.share.DescribeShareGroup(spb.DescribeShareGroupRequest(group_id="met-g"), timeout=10)
    (m,) = d.members
    assert (m.member_id, m.client_id, m.inflight_records) == (r.member_id, "w-1", 4)
    assert m.host and list(m.topics) == ["met-t"]
    (p,) = d.partitions
    assert (p.acquired, p.delayed, p.end_offset) == (4, 1, 11)
    assert p.available == 6
    text = scrape(sbroker)
    labels = 'group="met-g",partition="0",topic="met-t"'
    assert f"logstore_share_acquired_records{{{labels}}} 4.0" in text
    assert f"logstore_share_delayed_records{{{labels}}} 1.0" in text
    assert f"logstore_share_available_records{{{labels}}} 6.0" in text
    assert (
        f'logstore_share_member_inflight_records{{group="met-g",member="{m.member_id}"}} 4.0'
        in text
    )


def test_delayed_records_no_fetch_has_read_count_as_delayed(client: ShareClient) -> None:
    """Records past the window (never read by a fetch) that carry a deliver-at time in the
    future are counted as delayed, not available, in describe; a due deliver-at counts as
    available. (The old describe counted all 7 records past the window as available.)"""
    client.topic("ahead-t")
    create(client, "ahead-g")
    client.join("ahead-g", ["ahead-t"])
    later = str(int(time.time() * 1000) + 3_600_000).encode()
    past = str(int(time.time() * 1000) - 1_000).encode()
    client.produce("ahead-t", [b"a"])
    client.produce("ahead-t", [b"b"])
    client.produce("ahead-t", [b"x"] * 5, headers=[("logstore-deliver-at-ms", later)])
    client.produce("ahead-t", [b"due"], headers=[("logstore-deliver-at-ms", past)])
    # a fetch of 1 reads one batch: the window is offset 0; offsets 1..7 are past it
    assert list(acquired(client.fetch(1))) == [("ahead-t", 0, 0)]
    d = client.share.DescribeShareGroup(
        spb.DescribeShareGroupRequest(group_id="ahead-g"), timeout=10
    )
    (p,) = [p for p in d.partitions if p.topic == "ahead-t"]
    assert (p.acquired, p.available, p.delayed, p.end_offset) == (1, 2, 5, 8)


def test_the_broker_wide_parked_bound_is_a_setting_with_a_gauge(tmp_path: Path) -> None:
    """share_max_delayed_records_total (here from the environment) bounds what every share
    partition parks together: two groups' 6 delayed records park 4, the rest stay in the
    windows; the gauge and its limit are scraped."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_SHARE_MAX_DELAYED_RECORDS_TOTAL": "4"})
    try:
        c = ShareClient(b.grpc_address)
        c.topic("pk-t")
        later = str(int(time.time() * 1000) + 3_600_000).encode()
        for _ in range(3):
            c.produce("pk-t", [b"x"], headers=[("logstore-deliver-at-ms", later)])
        for g in ("pk-a", "pk-b"):
            c.join(g, ["pk-t"])
            for _ in range(3):
                assert acquired(c.fetch(10)) == {}
        text = scrape(b)
        assert "logstore_share_parked_records 4.0" in text
        assert "logstore_share_parked_records_limit 4.0" in text
        delayed = 0
        for g in ("pk-a", "pk-b"):
            d = c.share.DescribeShareGroup(spb.DescribeShareGroupRequest(group_id=g), timeout=10)
            delayed += sum(p.delayed for p in d.partitions)
        assert delayed == 6  # parked or not, all are delayed
        c.close()
    finally:
        b.stop()


def test_records_removed_by_delete_records_leave_the_window_with_a_warning(
    client: ShareClient, sbroker: BrokerProcess
) -> None:
    """DeleteRecords past unfinished records: they are dropped (WARN with the count), the rest
    is delivered, and the late ACCEPT of a dropped one is refused."""
    client.topic("ret-t")
    client.produce("ret-t", [b"%d" % i for i in range(10)])
    client.join("ret-g", ["ret-t"])
    first = acquired(client.fetch(2))
    assert sorted(o for _, _, o in first) == [0, 1]
    client.log.DeleteRecords(
        pb.DeleteRecordsRequest(topic="ret-t", partition=0, before_offset=5), timeout=10
    )
    rest = acquired(client.fetch(100))
    assert sorted(o for _, _, o in rest) == [5, 6, 7, 8, 9]
    (late,) = client.ack([ack("ret-t", 0, 1)])
    assert (late.code, late.reason) == (9, "INVALID_RECORD_STATE")
    line = [
        ln for ln in sbroker.log().splitlines() if "removed by retention" in ln and "ret-t" in ln
    ]
    assert line and "lost=5" in line[0], line


def test_a_reply_stays_within_fetch_max_bytes(tmp_path: Path) -> None:
    """Redelivered ranges past fetch_max_bytes are given back, not sent: every record still
    arrives, in replies of about fetch_max_bytes, and a range cut from a reply is not a
    delivery attempt: each record arrives first with delivery count 1 and, after one
    RELEASE, with 2 (the old broker released the cut ranges, counting an attempt the
    consumer never saw: counts of 3 and more here, and a dead letter at the limit)."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_FETCH_MAX_BYTES": "1024"})
    try:
        c = ShareClient(b.grpc_address)
        c.topic("big-t")
        for i in range(6):
            c.produce("big-t", [b"%d" % i + b"x" * 400])  # one ~420 B batch each
        create(c, "big-g", visibility_timeout_ms=60_000)
        c.join("big-g", ["big-t"])
        first: set[int] = set()
        counts: dict[int, int] = {}
        for _ in range(10):
            got = acquired(c.fetch(100))
            first |= {o for _, _, o in got}
            counts.update({o: v[1] for (_, _, o), v in got.items()})
        assert first == set(range(6))
        assert set(counts.values()) == {1}, counts
        c.ack([ack("big-t", 0, 5, spb.RELEASE)])
        seen: set[int] = set()
        sizes = []
        for _ in range(20):
            reply = c.fetch(100)
            sizes += [len(p.records) for p in reply.partitions]
            got = acquired(reply)
            seen |= {o for _, _, o in got}
            counts.update({o: v[1] for (_, _, o), v in got.items()})
            if seen == first:
                break
        assert seen == first
        assert set(counts.values()) == {2}, counts
        assert max(sizes) <= 1024 + 500, sizes
        c.close()
    finally:
        b.stop()


# -- cost of a fetch ---------------------------------------------------------------------


def _produce_singles(c: ShareClient, topic: str, n: int, headers: list[tuple[str, bytes]]) -> None:
    """``n`` batches of one record each (acks=leader, 64 in flight: ~1 s for 2,500)."""
    hs = [records_pb2.Header(key=k, value=v) for k, v in headers]
    rec = [records_pb2.Record(value=b"x" * 100, headers=hs)]
    futs = []
    for i in range(n):
        req = pb.ProduceRequest(topic=topic, partition=0, records=rec, acks=pb.ACKS_LEADER)
        futs.append(c.log.Produce.future(req, timeout=30))
        if len(futs) == 64 or i == n - 1:
            for f in futs:
                f.result()
            futs = []


def test_a_fetch_reads_and_sends_only_the_batches_it_acquires(client: ShareClient) -> None:
    """A backlog of 2,500 one-record batches: a fetch of 500 acquires 500 and its reply holds
    those 500 frames only (it read to 4 MiB before: ~23,000 frames, 250-550 ms a fetch)."""
    client.topic("cost-t")
    _produce_singles(client, "cost-t", 2500, [])
    create(client, "cost-g", auto_offset_reset="earliest")
    client.join("cost-g", ["cost-t"])
    acks: list[spb.AcknowledgementBatch] = []
    for k in range(3):
        reply = client.fetch(500, acks=acks)
        (p,) = reply.partitions
        assert [(a.first_offset, a.last_offset) for a in p.acquired] == [(500 * k, 500 * k + 499)]
        frames = stored_frames(p.records).frames
        assert (len(frames), frames[0][1].base_offset) == (500, 500 * k)
        acks = [ack("cost-t", 500 * k, 500 * k + 499)]


def test_a_big_batch_is_cut_to_the_acquired_records_in_the_reply(client: ShareClient) -> None:
    """One stored batch of 2,000 records of one size: a fetch of 100 replies a frame of
    those 100 records only (base offset, count, CRC rebuilt; the values and timestamps as
    produced), not the whole 2,000-record batch (the reply was ~20x larger). A batch whose
    records differ in size is sent whole, as stored."""
    client.topic("trim-t")
    client.produce("trim-t", [b"%06d" % i for i in range(2000)])
    create(client, "trim-g", auto_offset_reset="earliest")
    client.join("trim-g", ["trim-t"])
    whole = len(read_topic_frames(client, "trim-t"))
    acks: list[spb.AcknowledgementBatch] = []
    for k in range(2):
        reply = client.fetch(100, acks=acks)
        (p,) = reply.partitions
        assert [(a.first_offset, a.last_offset) for a in p.acquired] == [(100 * k, 100 * k + 99)]
        assert len(p.records) * 10 < whole
        recs = decode_objects(parse_fetch(p.records, True), 0)  # CRCs checked
        assert [r.offset for r in recs] == list(range(100 * k, 100 * k + 100))
        assert [r.value for r in recs] == [b"%06d" % i for i in range(100 * k, 100 * k + 100)]
        assert len({r.timestamp_ms for r in recs}) == 1 and recs[0].timestamp_ms > 0
        acks = [ack("trim-t", 100 * k, 100 * k + 99)]
    client.fetch(1, acks=acks)
    client.topic("mixed-t")
    client.produce("mixed-t", [b"x" * (1 + i % 7) for i in range(2000)])
    create(client, "mixed-g", auto_offset_reset="earliest")
    client.join("mixed-g", ["mixed-t"])
    (p,) = client.fetch(100).partitions
    assert len(p.records) == len(read_topic_frames(client, "mixed-t"))


def read_topic_frames(c: ShareClient, topic: str) -> bytes:
    """The stored frames of partition 0 of ``topic`` (a plain Fetch from offset 0)."""
    fetch = c.channel.unary_unary("/logstore.v1.LogStore/Fetch")
    req = pb.FetchRequest(topic=topic, partition=0, offset=0, max_bytes=1 << 20)
    raw = fetch(req.SerializeToString(), timeout=10)
    frames = parse_fetch(raw)
    return bytes(b"".join(frames.buf[pos : pos + h.frame_size] for pos, h in frames.frames))


def _state_end(c: ShareClient) -> int:
    """The log end offset of __share_group_state (records the share runtime appended)."""
    req = pb.ListOffsetsRequest(topic="__share_group_state", position=pb.OFFSET_SPEC_LATEST)
    return int(c.log.ListOffsets(req, timeout=10).offsets[0].offset)


def test_due_records_behind_more_than_max_records_delayed_ones_are_found_in_two_reads(
    client: ShareClient,
) -> None:
    """300 records delayed by an hour, then 5 due ones: a fetch of 1 (which reads 1 new
    offset first) reads on through the window's room once instead of one offset per round
    (each round an fsynced append), and returns a due record at once."""
    client.topic("cut-t")
    at = str(int(time.time() * 1000) + 3_600_000).encode()
    _produce_singles(client, "cut-t", 300, [("logstore-deliver-at-ms", at)])
    client.produce("cut-t", [b"due%d" % i for i in range(5)])
    create(client, "cut-g", auto_offset_reset="earliest")
    client.join("cut-g", ["cut-t"])
    before = _state_end(client)
    t0 = time.monotonic()
    got = acquired(client.fetch(1, wait_ms=10_000))
    assert sorted(o for _, _, o in got) == [300]
    assert time.monotonic() - t0 < 5, "the fetch waited although due records were there"
    # two rounds (a chunk and a state record each, plus a tick's), not ~300
    assert _state_end(client) - before <= 10
