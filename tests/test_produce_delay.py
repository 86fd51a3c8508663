"""Delayed delivery on the produce side: Producer.send(delay_ms=/deliver_at_ms=) and
logctl produce --delay/--deliver-at put the logstore-deliver-at-ms header on the records
(checked on fetch from a real broker, and through share_metadata over the stored bytes);
bad values are refused with one clear error and nothing is produced."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest

from logstore import errors
from logstore.client import (
    DELIVER_AT_HEADER,
    MAX_DELAY_MS,
    Admin,
    Consumer,
    Producer,
    resolve_deliver_at,
)
from logstore.v1 import logstore_pb2 as pb
from logstore.wire import Record, key_hash, parse_fetch, share_metadata
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_cli import assert_one_line_error, logctl


@pytest.fixture(scope="module")
def dbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for this module (each test uses its own topic)."""
    b = start_broker(tmp_path_factory.mktemp("delay") / "data")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def admin(dbroker: BrokerProcess) -> Iterator[Admin]:
    with Admin(dbroker.grpc_address) as a:
        yield a


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _read(broker: BrokerProcess, topic: str, n: int, timeout_s: float = 20) -> list[Record]:
    got: list[Record] = []
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(300).values():
                got.extend(recs)
    return got


def _deliver_at(r: Record) -> int | None:
    vals = [v for k, v in r.headers or [] if k == DELIVER_AT_HEADER]
    assert len(vals) <= 1
    return int(vals[0].decode("ascii")) if vals else None


def _end_offset(admin: Admin, topic: str) -> int:
    return admin.describe_topic(topic).partitions[0].log_end_offset


def test_send_delay_and_deliver_at_arrive_as_the_header(
    dbroker: BrokerProcess, admin: Admin
) -> None:
    """delay_ms becomes now + delay, deliver_at_ms is kept as given, other headers stay,
    records without either carry no header; the stored bytes give share_metadata the same."""
    topic = "delay-send"
    admin.create_topic(topic, 1)
    at = _now_ms() + 3_600_000
    with Producer(dbroker.grpc_address) as p:
        before = _now_ms()
        p.send(topic, b"a", delay_ms=10 * 60_000)
        after = _now_ms()
        p.send(topic, b"b", deliver_at_ms=at, headers=[("trace", b"t1")], key=b"k")
        p.send(topic, b"c")
        p.send(topic, None, key=b"gone", delay_ms=0)
        p.flush()
    got = _read(dbroker, topic, 4)
    assert [r.value for r in got] == [b"a", b"b", b"c", None]
    a, b, c, d = got
    assert before + 600_000 <= (_deliver_at(a) or 0) <= after + 600_000
    assert _deliver_at(b) == at and ("trace", b"t1") in (b.headers or [])
    assert _deliver_at(c) is None
    assert before <= (_deliver_at(d) or 0) <= after + 60_000
    # the stored frames, as a raw Fetch returns them (the bytes on disk), read by
    # the share layer's function give the same times
    with grpc.insecure_channel(dbroker.grpc_address) as ch:
        fetch = ch.unary_unary(
            "/logstore.v1.LogStore/Fetch",
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=None,
        )
        raw = fetch(pb.FetchRequest(topic=topic, partition=0, offset=0), timeout=10)
    meta = share_metadata(parse_fetch(raw), 0, want_keys=True, want_delays=True)
    assert meta.offsets.tolist() == [0, 1, 2, 3]
    assert meta.deliver_at.tolist() == [_deliver_at(a), at, 0, _deliver_at(d)]
    assert meta.key_hash.tolist() == [0, key_hash(b"k"), 0, key_hash(b"gone")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_ms": 5, "deliver_at_ms": 5}, "not both"),
        ({"delay_ms": -1}, "0 .. 315360000000 (3650 days)"),
        ({"delay_ms": MAX_DELAY_MS + 1}, "0 .. 315360000000 (3650 days)"),
        ({"delay_ms": 1.5}, "integer number of milliseconds"),
        ({"delay_ms": True}, "integer number of milliseconds"),
        ({"deliver_at_ms": -5}, ">= 0"),
        ({"deliver_at_ms": 10**16}, "MAX_DELAY_MS"),
        ({"deliver_at_ms": "soon"}, "integer number of milliseconds"),
        ({"delay_ms": 5, "headers": [(DELIVER_AT_HEADER, b"7")]}, "already hold"),
    ],
)
def test_send_refuses_bad_delays_and_queues_nothing(
    dbroker: BrokerProcess, admin: Admin, kwargs: dict[str, object], message: str
) -> None:
    """Both given, negative, past the bound, not an int, or a second header: a clear
    InvalidArgumentError naming the bound, and nothing reaches the topic."""
    topic = f"delay-bad-{zlib.crc32(repr(kwargs).encode())}"
    admin.create_topic(topic, 1)
    with Producer(dbroker.grpc_address) as p:
        with pytest.raises(errors.InvalidArgumentError, match=re.escape(message)):
            p.send(topic, b"x", **kwargs)  # type: ignore[arg-type]
        p.flush()
    assert _end_offset(admin, topic) == 0


def test_resolve_deliver_at_bounds() -> None:
    """The bounds are inclusive: delay 0 and MAX_DELAY_MS, deliver-at 0 and now + MAX."""
    assert resolve_deliver_at(0, now_ms=1000) == 1000
    assert resolve_deliver_at(MAX_DELAY_MS, now_ms=1000) == 1000 + MAX_DELAY_MS
    assert resolve_deliver_at(deliver_at_ms=0, now_ms=1000) == 0
    assert resolve_deliver_at(deliver_at_ms=1000 + MAX_DELAY_MS, now_ms=1000) == 1000 + MAX_DELAY_MS
    with pytest.raises(errors.InvalidArgumentError, match="give delay_ms or deliver_at_ms"):
        resolve_deliver_at()


def test_logctl_produce_delay_and_deliver_at(dbroker: BrokerProcess, admin: Admin) -> None:
    """--delay 10m stamps each line at send time + 10 minutes; --deliver-at an ISO time
    stamps that time; keys still split with --key-separator."""
    admin.create_topic("delay-cli", 1)
    before = _now_ms()
    proc = logctl(dbroker, "produce", "delay-cli", "--delay", "10m", stdin=b"one\ntwo\n")
    after = _now_ms()
    assert proc.returncode == 0, proc.stderr
    proc = logctl(
        dbroker,
        "produce",
        "delay-cli",
        "--deliver-at",
        "2030-01-02T03:04:05Z",
        "--key-separator",
        ":",
        stdin=b"k:three\n",
    )
    assert proc.returncode == 0, proc.stderr
    got = _read(dbroker, "delay-cli", 3)
    assert [r.value for r in got] == [b"one", b"two", b"three"]
    for r in got[:2]:
        assert before + 600_000 <= (_deliver_at(r) or 0) <= after + 600_000
    iso_ms = int(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)
    assert (got[2].key, _deliver_at(got[2])) == (b"k", iso_ms)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("--delay", "10x"), r"bad duration '10x' for --delay: .*500ms, 30s, 10m, 2h or 1d"),
        (("--delay", "-5m"), r"bad duration '-5m' for --delay"),
        (("--delay", "1.5h"), r"bad duration '1.5h' for --delay"),
        (("--delay", "4000d"), r"--delay 4000d: delay_ms must be 0 \.\. 315360000000"),
        (("--deliver-at", "tomorrow"), r"bad time 'tomorrow'"),
        (("--deliver-at", "9000-01-01T00:00:00Z"), r"--deliver-at .*MAX_DELAY_MS"),
        (("--delay", "1m", "--deliver-at", "2030-01-01"), r"cannot be combined"),
    ],
)
def test_logctl_produce_bad_delay_is_one_line_and_produces_nothing(
    dbroker: BrokerProcess, admin: Admin, args: tuple[str, ...], pattern: str
) -> None:
    """A wrong --delay/--deliver-at: one stderr line, exit 2, nothing stored."""
    topic = f"delay-cli-bad-{zlib.crc32(repr(args).encode())}"
    admin.create_topic(topic, 1)
    proc = logctl(dbroker, "produce", topic, *args, stdin=b"x\ny\n")
    assert_one_line_error(proc, 2, pattern)
    assert _end_offset(admin, topic) == 0
