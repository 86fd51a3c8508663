"""logstore.client against a real broker process (port 0): produce, consume as objects
and as columns, seeks, admin RPCs and error translation end to end."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logstore import errors
from logstore.client import Admin, Consumer, Producer
from tests.brokerproc import BrokerProcess, start_broker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for this module (each test uses its own topics)."""
    b = start_broker(tmp_path_factory.mktemp("client") / "data")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def admin(shared_broker: BrokerProcess) -> Iterator[Admin]:
    with Admin(shared_broker.grpc_address) as a:
        yield a


def _drain(c: Consumer, n: int, timeout_s: float = 20) -> list[tuple[int, int, bytes | None]]:
    out: list[tuple[int, int, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for tp, recs in c.poll(500).items():
            out.extend((tp.partition, r.offset, r.value) for r in recs)
    return out


@pytest.mark.parametrize("acks", ["all", "1", "0"])
def test_round_trip_with_every_acks_value(
    shared_broker: BrokerProcess, admin: Admin, acks: str
) -> None:
    """Records sent with send and send_many come back in order with their keys and headers."""
    topic = f"rt-{acks.replace('-', 'm')}"
    admin.create_topic(topic, 1)
    with Producer(shared_broker.grpc_address, acks=acks) as p:
        h = p.send(topic, b"first", key=b"k", headers=[("h", b"\xff")], timestamp_ms=42)
        many = p.send_many(topic, [b"v%d" % i for i in range(2000)])
        p.flush()
        if acks != "0":
            assert h.result() == (0, 0)
            assert many.offsets()[0][1] == 1
    with Consumer(shared_broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got: list = []
        deadline = time.monotonic() + 20
        while len(got) < 2001 and time.monotonic() < deadline:
            for recs in c.poll(500).values():
                got.extend(recs)
    assert [r.offset for r in got] == list(range(2001))
    assert (got[0].key, got[0].value, got[0].headers, got[0].timestamp_ms) == (
        b"k",
        b"first",
        [("h", b"\xff")],
        42,
    )
    assert [r.value for r in got[1:]] == [b"v%d" % i for i in range(2000)]
    assert all(r.timestamp_ms > 1_600_000_000_000 for r in got[1:])


def test_columns_match_objects_on_real_fetches(shared_broker: BrokerProcess, admin: Admin) -> None:
    """poll_columns returns the same records as poll for data fetched from the broker."""
    admin.create_topic("cols", 2)
    with Producer(shared_broker.grpc_address) as p:
        for i in range(3000):
            key = b"%d" % (i % 7) if i % 3 else None
            p.send("cols", None if i % 97 == 0 else b"%05d" % i, key=key)
    by_obj: dict[int, list] = {0: [], 1: []}
    by_col: dict[int, list] = {0: [], 1: []}
    with Consumer(shared_broker.grpc_address) as c1, Consumer(shared_broker.grpc_address) as c2:
        c1.assign([("cols", 0), ("cols", 1)])
        c2.assign([("cols", 0), ("cols", 1)])
        deadline = time.monotonic() + 20
        while sum(map(len, by_obj.values())) < 3000 and time.monotonic() < deadline:
            for tp, recs in c1.poll(500).items():
                by_obj[tp.partition].extend(recs)
        while sum(map(len, by_col.values())) < 3000 and time.monotonic() < deadline:
            for tp, batch in c2.poll_columns(500, max_records=700).items():
                assert len(batch) <= 700
                by_col[tp.partition].extend(batch.to_records())
    assert by_obj == by_col
    assert sum(map(len, by_obj.values())) == 3000


def test_seek_position_and_seek_to_time(shared_broker: BrokerProcess, admin: Admin) -> None:
    """seek/seek_to_beginning/end/time set position(); records before a seek are skipped."""
    admin.create_topic("seek", 1)
    with Producer(shared_broker.grpc_address) as p:
        p.send_many("seek", [b"a%d" % i for i in range(100)]).wait()
        time.sleep(0.05)
        mid_ms = int(time.time() * 1000)
        time.sleep(0.05)
        p.send_many("seek", [b"b%d" % i for i in range(50)]).wait()
    with Consumer(shared_broker.grpc_address) as c:
        c.assign([("seek", 0)])
        assert c.position(("seek", 0)) == 0
        c.seek(("seek", 0), 37)
        first = _drain(c, 1)
        assert first[0][1:] == (37, b"a37")
        c.seek_to_end()
        assert c.position(("seek", 0)) == 150
        assert c.poll(200) == {}
        c.seek_to_time(mid_ms)
        assert c.position(("seek", 0)) == 100
        assert _drain(c, 50)[0][2] == b"b0"
        c.seek_to_beginning()
        assert c.position(("seek", 0)) == 0
        c.seek(("seek", 0), 151)
        with pytest.raises(errors.OffsetOutOfRangeError):
            c.poll(2000)


def test_long_poll_wakes_on_append_and_prefetch_continues(
    shared_broker: BrokerProcess, admin: Admin
) -> None:
    """A consumer waiting at the end gets a record produced later, well before its timeout."""
    admin.create_topic("tail", 1)
    with Consumer(shared_broker.grpc_address, fetch_max_wait_ms=5000) as c:
        c.assign([("tail", 0)])
        assert c.poll(300) == {}
        with Producer(shared_broker.grpc_address) as p:
            started = time.monotonic()
            p.send("tail", b"late").result()
        got = c.poll(5000)
        assert time.monotonic() - started < 3
        assert [r.value for r in got[next(iter(got))]] == [b"late"]


def test_every_admin_rpc(shared_broker: BrokerProcess, admin: Admin) -> None:
    """Create, list, describe, alter, add partitions, delete records, list offsets, delete."""
    info = admin.create_topic("adm", 2, {"retention.ms": "3600000"})
    assert (info.name, info.partitions, info.config["retention_ms"]) == ("adm", 2, "3600000")
    assert "adm" in [t.name for t in admin.list_topics()]
    with Producer(shared_broker.grpc_address) as p:
        p.send_many("adm", [b"x"] * 10, partition=1).wait()
    d = admin.describe_topic("adm")
    assert [(q.partition, q.log_end_offset) for q in d.partitions] == [(0, 0), (1, 10)]
    assert admin.alter_topic_config("adm", {"retention_ms": "7200000"}).config["retention_ms"] == (
        "7200000"
    )
    assert admin.alter_topic_config("adm", reset=["retention_ms"]).config["retention_ms"] == str(
        7 * 86_400_000
    )
    assert admin.create_partitions("adm", 3).partitions == 3
    assert admin.delete_records("adm", 1, 4) == 4
    earliest = admin.list_offsets("adm", "earliest")
    latest = admin.list_offsets("adm", "latest")
    assert [o.offset for o in earliest] == [0, 4, 0]
    assert [o.offset for o in latest] == [0, 10, 0]
    future = admin.list_offsets("adm", int(time.time() * 1000) + 3_600_000, [1])
    assert (future[0].offset, future[0].found) == (10, False)
    pid, _ = admin.init_producer()
    assert pid >= 1
    admin.delete_topic("adm")
    with pytest.raises(errors.NotFoundError, match="adm"):
        admin.describe_topic("adm")


def test_broker_errors_keep_their_status_and_message(admin: Admin) -> None:
    """Broker rejections arrive as the matching logstore.errors class with the broker's words."""
    admin.create_topic("dup", 1)
    with pytest.raises(errors.TopicExistsError, match="dup"):
        admin.create_topic("dup", 1)
    with pytest.raises(errors.InvalidArgumentError):
        admin.create_topic("bad name!", 1)
    with pytest.raises(errors.InvalidArgumentError, match="bogus"):
        admin.create_topic("cfg", 1, {"bogus": "1"})
    with pytest.raises(errors.NotFoundError):
        admin.list_offsets("nope")
    with pytest.raises(errors.OffsetOutOfRangeError):
        admin.delete_records("dup", 0, 99)


def test_producer_unknown_topic_and_partition(shared_broker: BrokerProcess, admin: Admin) -> None:
    """send() to an unknown topic or partition raises at once, naming it."""
    admin.create_topic("small", 2)
    with Producer(shared_broker.grpc_address) as p:
        with pytest.raises(errors.NotFoundError, match="nosuch"):
            p.send("nosuch", b"v")
        with pytest.raises(errors.UnknownPartitionError, match=r"0\.\.1"):
            p.send("small", b"v", partition=5)


def test_client_imports_neither_broker_nor_storage() -> None:
    """logstore.client and cli import no broker or storage module (ast and sys.modules)."""
    for path in [*(ROOT / "logstore" / "client").glob("*.py"), *(ROOT / "cli").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith(("logstore.broker", "logstore.storage")):
                    # the one exception: logctl serve, inside its function
                    assert path.name == "main.py" and node.col_offset > 0, (path, name)
    code = (
        "import sys, logstore.client, cli.main; "
        "bad = [m for m in sys.modules if m.startswith(('logstore.broker', 'logstore.storage'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lost_reply_retry_is_deduplicated_by_the_real_broker(
    shared_broker: BrokerProcess, admin: Admin
) -> None:
    """A batch the broker stored but whose reply was 'lost' (reported UNAVAILABLE) is retried with
    the same producer id and sequence; the broker answers with the original offset, once stored."""
    from logstore.client.producer import GrpcTransport

    class LosingTransport(GrpcTransport):
        lost = 0
        # the unary Produce path (tests/test_producer_pipeline.py drops MultiProduce
        # requests and breaks the ProduceStream)
        multi_produce = None  # type: ignore[assignment]
        open_stream = None  # type: ignore[assignment]

        def produce(self, request: bytes, timeout_s: float, callback: Any) -> None:
            if self.lost < 2:
                self.lost += 1

                def lose(resp: Any, exc: BaseException | None) -> None:
                    assert exc is None  # stored on the broker...
                    callback(None, errors.BrokerUnavailableError("reply lost"))  # ...not told

                super().produce(request, timeout_s, lose)
            else:
                super().produce(request, timeout_s, callback)

    admin.create_topic("dedup", 1)
    transport = LosingTransport(shared_broker.grpc_address, 5000, 30_000)
    with Producer(transport=transport, retry_backoff_ms=10) as p:
        h = p.send("dedup", b"only-once")
        assert h.result(20) == (0, 0)
        assert p.send("dedup", b"second").result(20) == (0, 1)
    assert transport.lost == 2
    with Consumer(shared_broker.grpc_address) as c:
        c.assign([("dedup", 0)])
        got = _drain(c, 2)
        assert c.poll(300) == {}
    assert [v for _, _, v in got] == [b"only-once", b"second"]
    assert admin.list_offsets("dedup", "latest")[0].offset == 2


def test_producer_rides_out_a_broker_restart(tmp_path: Path) -> None:
    """Records sent while the broker restarts (same port) are retried and stored exactly once."""
    b = start_broker(tmp_path / "data")
    port = b.grpc_address.rsplit(":", 1)[1]
    try:
        with Admin(b.grpc_address) as a:
            a.create_topic("restart", 1)
        with Producer(b.grpc_address, retry_backoff_ms=50, delivery_timeout_ms=60_000) as p:
            first = p.send_many("restart", [b"a%d" % i for i in range(100)])
            first.wait(20)
            assert b.stop() == 0
            during = p.send_many("restart", [b"b%d" % i for i in range(100)])
            time.sleep(0.5)
            b = start_broker(tmp_path / "data", "--listen", f"127.0.0.1:{port}")
            during.wait(40)
        with Consumer(b.grpc_address) as c:
            c.assign([("restart", 0)])
            got = _drain(c, 200)
            assert c.poll(300) == {}
        assert [v for _, _, v in got] == [b"a%d" % i for i in range(100)] + [
            b"b%d" % i for i in range(100)
        ]
    finally:
        b.stop()


def test_iteration_yields_partition_and_record(shared_broker: BrokerProcess, admin: Admin) -> None:
    """Iterating a Consumer yields (TopicPartition, Record) in offset order per partition."""
    admin.create_topic("iter", 2)
    with Producer(shared_broker.grpc_address) as p:
        for i in range(10):
            p.send("iter", b"%d" % i, partition=i % 2)
    seen: dict[int, list[int]] = {0: [], 1: []}
    with Consumer(shared_broker.grpc_address) as c:
        c.assign([("iter", 0), ("iter", 1)])
        for tp, rec in c:
            assert tp.topic == "iter"
            seen[tp.partition].append(rec.offset)
            if sum(map(len, seen.values())) == 10:
                break
    assert seen == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
