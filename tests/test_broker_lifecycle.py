"""Broker process lifecycle: startup line, configuration, SIGTERM drain, restart, idempotence."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from logstore.broker import BrokerConfig
from logstore.broker._config import AUTO_MAX_OPEN_SEGMENTS, auto_max_open_segments
from logstore.errors import InvalidConfigError
from logstore.storage._names import CLEAN_SHUTDOWN_FILE
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import connect, create_topic, decode, fetch_all, produce, records


def test_first_line_and_json_logs(tmp_path: Path) -> None:
    """The first stdout line names the bound ports and data dir; --log-format json logs JSON."""
    b = start_broker(tmp_path / "data", "--log-format", "json")
    try:
        assert b.grpc_address.startswith("127.0.0.1:") and not b.grpc_address.endswith(":0")
        assert b.metrics_address.startswith("127.0.0.1:")
        assert b.data_dir == (tmp_path / "data").resolve()
        limits = Path(f"/proc/{b.pid}/limits").read_text().splitlines()
        nofile = next(x for x in limits if x.startswith("Max open files")).split()
        assert nofile[3] == nofile[4], "RLIMIT_NOFILE soft limit not raised to the hard limit"
        with connect(b) as s:
            create_topic(s, "logged")
    finally:
        assert b.stop() == 0
    lines = [json.loads(line) for line in b.log().splitlines() if line.strip()]
    assert any(x["msg"] == "topic created" and x["topic"] == "logged" for x in lines)
    # The descriptor budget is reported: max_open_segments=0 (the default) is
    # half the raised soft limit, at most AUTO_MAX_OPEN_SEGMENTS.
    listening = next(x for x in lines if x["msg"] == "listening")
    assert listening["nofile"] == int(nofile[3])
    assert listening["max_open_segments"] == max(
        4, min(AUTO_MAX_OPEN_SEGMENTS, listening["nofile"] // 2)
    )
    assert all({"ts", "level", "msg"} <= x.keys() for x in lines)


def _run_broker_expect_fail(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "logstore.broker", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    return proc.stderr


def test_non_loopback_refused_without_allow_remote(tmp_path: Path) -> None:
    """Listening on a non-loopback address is refused (exit 2, one line) unless --allow-remote."""
    err = _run_broker_expect_fail(
        tmp_path, "--listen", "0.0.0.0:0", "--metrics-listen", "127.0.0.1:0"
    )
    assert "--allow-remote" in err and "0.0.0.0:0" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_rejected_naming_the_key(tmp_path: Path) -> None:
    """Unknown TOML keys and bad environment values stop the broker, naming the key."""
    cfg = tmp_path / "broker.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nmax_turbo = 3\n')
    err = _run_broker_expect_fail(tmp_path, "--config-file", str(cfg))
    assert "max_turbo" in err
    err = _run_broker_expect_fail(
        tmp_path, "--listen", "127.0.0.1:0", env={"LOGSTORE_MAX_SUBSCRIPTIONS": "lots"}
    )
    assert "max_subscriptions" in err and "LOGSTORE_MAX_SUBSCRIPTIONS" in err


def test_max_open_segments_0_is_sized_from_the_descriptor_limit() -> None:
    """The default (0) gives the store half the RLIMIT_NOFILE soft limit, at most
    AUTO_MAX_OPEN_SEGMENTS and at least 4; a set value is the store's cap as is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert BrokerConfig().max_open_segments == 0
    try:
        for limit, cap in ((1000, 500), (7, 4), (1 << 20, AUTO_MAX_OPEN_SEGMENTS)):
            if hard != resource.RLIM_INFINITY and limit > hard:
                continue  # cannot raise past the hard limit unprivileged
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            assert auto_max_open_segments() == cap
            assert BrokerConfig().store_config().max_open_segments == cap
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert BrokerConfig(max_open_segments=64).store_config().max_open_segments == 64
    with pytest.raises(InvalidConfigError, match="max_open_segments"):
        BrokerConfig(max_open_segments=2)
    with pytest.raises(InvalidConfigError, match="max_open_segments"):
        BrokerConfig(max_open_segments=-1)


def test_config_precedence(tmp_path: Path) -> None:
    """flag > LOGSTORE_<NAME> environment > TOML file > default, per key."""
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        'listen = "127.0.0.1:1111"\nmax_subscriptions = 7\nmax_long_poll_waiters = 9\n'
        "[broker]\nretry_after_ms = 42\n"
    )
    env = {"LOGSTORE_MAX_SUBSCRIPTIONS": "8", "LOGSTORE_LISTEN": "127.0.0.1:2222"}
    c = BrokerConfig.resolve({"listen": "127.0.0.1:3333", "data_dir": None}, env, cfg)
    assert c.listen == "127.0.0.1:3333"
    assert c.max_subscriptions == 8
    assert c.max_long_poll_waiters == 9
    assert c.retry_after_ms == 42
    assert c.data_dir == "./data"
    assert BrokerConfig.resolve({}, {}, None) == BrokerConfig()
    with pytest.raises(InvalidConfigError, match="max_request_bytes"):
        BrokerConfig.resolve({}, {"LOGSTORE_MAX_REQUEST_BYTES": "1000000"}, None)
    with pytest.raises(InvalidConfigError, match="listen"):
        BrokerConfig(listen="nowhere")


def test_sigterm_ends_a_subscribe_push_held_by_flow_control(tmp_path: Path) -> None:
    """A Subscribe whose reader stopped reading (its push parked on HTTP/2 flow
    control) ends with UNAVAILABLE (resubscribe later) at SIGTERM, not with the
    CANCELLED of a write cut by the shutdown: shutdown cancels the parked write
    and that becomes the shutting-down status (Runtime.write_or_stop)."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_SHUTDOWN_GRACE_MS": "20000"})
    with connect(b) as s:
        create_topic(s, "held")
        sub = s.Subscribe(pb.SubscribeRequest(topic="held", partition=0), timeout=120)
        for _ in range(200):  # 12 MB: far more than the HTTP/2 and socket windows
            produce(s, "held", [b"z" * 60_000])
        time.sleep(0.5)  # the broker's push is parked on the unread stream now
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # shutdown has begun while the write is parked
        got = 0
        with pytest.raises(grpc.RpcError) as err:
            for msg in sub:  # what the windows held, then the status
                got += len(decode(msg))
        rc = b.proc.wait(60)
        elapsed = time.monotonic() - t0
    b.stop()
    assert rc == 0
    # A parked write that shutdown does not cancel holds the exit until the
    # 20 s grace ends (then gRPC cuts the call, UNAVAILABLE too): ~21 s. With
    # the cancel it exits once this client read the windows: ~1-3 s. 12 s
    # leaves room for a loaded machine and still fails the former.
    assert elapsed < 12, f"shutdown took {elapsed:.1f}s"
    # A range: some of the 12 MB backlog was in the windows (> 0 read) but not all of it
    # (< the 200 records produced), so the stream ended early, mid-backlog; a broker that
    # waited out the push would deliver all 200 (and take ~21 s, failing the check above).
    assert 0 < got < 200, got
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def test_sigterm_drains_and_restarts_instantly(tmp_path: Path) -> None:
    """SIGTERM answers long polls and ends subscriptions at once, exits 0, restarts clean."""
    b = start_broker(tmp_path / "data")
    with connect(b) as s:
        create_topic(s, "drain")
        produce(s, "drain", [b"a", b"b"])
        poll = s.Fetch.future(
            pb.FetchRequest(topic="drain", partition=0, offset=2, min_bytes=1, max_wait_ms=30_000),
            timeout=60,
        )
        sub = s.Subscribe(pb.SubscribeRequest(topic="drain", partition=0), timeout=60)
        assert decode(next(sub)) == [(0, b"a"), (1, b"b")]
        sub_error: list[grpc.RpcError] = []

        def drain_sub() -> None:
            try:
                for _ in sub:
                    pass
            except grpc.RpcError as err:
                sub_error.append(err)

        reader = threading.Thread(target=drain_sub)
        reader.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        resp = poll.result(timeout=10)
        assert list(resp.batches) == [] and resp.high_watermark == 2
        reader.join(10)
        assert sub_error and sub_error[0].code() == grpc.StatusCode.UNAVAILABLE
        rc = b.proc.wait(15)
        elapsed = time.monotonic() - t0
    b.stop()
    assert rc == 0
    assert elapsed < 4, f"shutdown took {elapsed:.1f}s"
    assert (tmp_path / "data" / CLEAN_SHUTDOWN_FILE).exists()
    t1 = time.monotonic()
    b2 = start_broker(tmp_path / "data")
    try:
        started = time.monotonic() - t1
        with connect(b2) as s:
            assert fetch_all(s, "drain") == [(0, b"a"), (1, b"b")]
            assert produce(s, "drain", [b"c"]).base_offset == 2
        assert started < 10
    finally:
        assert b2.stop() == 0


def test_sigterm_lets_inflight_produce_finish(tmp_path: Path) -> None:
    """Produce requests in flight at SIGTERM are answered (grace period), not dropped."""
    b = start_broker(tmp_path / "data")
    acked: list[int] = []
    errors: list[grpc.StatusCode] = []
    with connect(b) as s:
        create_topic(s, "busy")

        def loop() -> None:
            for _ in range(10_000):
                try:
                    r = produce(s, "busy", [b"x" * 1000] * 100)
                    acked.append(r.base_offset)
                except grpc.RpcError as err:
                    errors.append(err.code())
                    return

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 20:
            time.sleep(0.01)
        b.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        assert b.proc.wait(15) == 0
    b.stop()
    # Requests sent after the server stopped accepting: refused by the broker
    # (UNAVAILABLE), by gRPC core during its shutdown (CANCELLED, never run),
    # or by the closed port (UNAVAILABLE).
    assert set(errors) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    b2 = start_broker(tmp_path / "data")
    try:
        with connect(b2) as s:
            stored = {o for o, _ in fetch_all(s, "busy")}
        assert all(set(range(off, off + 100)) <= stored for off in acked)
    finally:
        assert b2.stop() == 0


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_idempotent_retry_across_restart(tmp_path: Path, how: str) -> None:
    """A batch retried after a broker restart (clean or kill -9) is not stored twice."""
    b = start_broker(tmp_path / "data")
    with connect(b) as s:
        create_topic(s, "idem")
        init = s.InitProducer(pb.InitProducerRequest(), timeout=10)
        ids = {"producer_id": init.producer_id, "producer_epoch": init.producer_epoch}
        first = produce(s, "idem", [b"a", b"b"], base_sequence=0, **ids)
        second = produce(s, "idem", [b"c"], base_sequence=2, **ids)
    if how == "sigterm":
        assert b.stop() == 0
    else:
        b.kill()
    b2 = start_broker(tmp_path / "data")
    try:
        with connect(b2) as s:
            again = produce(s, "idem", [b"c"], base_sequence=2, **ids)
            assert (again.base_offset, again.duplicate) == (second.base_offset, True)
            older = produce(s, "idem", [b"a", b"b"], base_sequence=0, **ids)
            assert (older.base_offset, older.duplicate) == (first.base_offset, True)
            nxt = produce(s, "idem", [b"d"], base_sequence=3, **ids)
            assert nxt.base_offset == 3 and not nxt.duplicate
            with pytest.raises(grpc.RpcError) as err:
                produce(s, "idem", [b"e"], base_sequence=9, **ids)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert fetch_all(s, "idem") == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
    finally:
        assert b2.stop() == 0


def test_sigterm_ends_idle_produce_stream_after_answering(tmp_path: Path) -> None:
    """At SIGTERM an idle ProduceStream gets every reply it is owed, then UNAVAILABLE, at once."""
    b = start_broker(tmp_path / "data")
    release = threading.Event()
    with connect(b) as s:
        create_topic(s, "ps")

        def requests() -> Iterator[pb.ProduceRequest]:
            for i in range(3):
                yield pb.ProduceRequest(
                    topic="ps", partition=0, request_id=i, records=records([b"%d" % i])
                )
            release.wait(30)  # then idle: the client sends nothing more

        call = s.ProduceStream(requests(), timeout=60)
        replies = [next(call) for _ in range(3)]
        assert [r.base_offset for r in replies] == [0, 1, 2]
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 3
        release.set()
        assert b.proc.wait(15) == 0
    b.stop()


def test_corrupt_batch_is_data_loss_and_others_still_serve(tmp_path: Path) -> None:
    """A stored batch whose bytes were damaged is DATA_LOSS; later batches still serve."""
    b = start_broker(tmp_path / "data")
    with connect(b) as s:
        create_topic(s, "rot")
        produce(s, "rot", [b"first-batch-value"] * 3)
        produce(s, "rot", [b"second"])
    assert b.stop() == 0
    seg = tmp_path / "data" / "rot-0" / "00000000000000000000.log"
    raw = bytearray(seg.read_bytes())
    pos = raw.index(b"first-batch-value")
    raw[pos] ^= 0xFF
    seg.write_bytes(bytes(raw))
    b2 = start_broker(tmp_path / "data")
    try:
        with connect(b2) as s:
            with pytest.raises(grpc.RpcError) as err:
                s.Fetch(pb.FetchRequest(topic="rot", partition=0, offset=0), timeout=10)
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert fetch_all(s, "rot", offset=3) == [(3, b"second")]
    finally:
        assert b2.stop() == 0


def test_cancelled_acks_all_requests_do_not_break_group_commit(tmp_path: Path) -> None:
    """Clients that cancel while waiting for fsync leave the broker durable and stoppable."""
    b = start_broker(tmp_path / "data")
    with connect(b) as s:
        create_topic(s, "cancel")
        req = pb.ProduceRequest(topic="cancel", partition=0, records=records([b"v" * 1000] * 200))
        for _ in range(30):
            call = s.ProduceStream(iter([req] * 40), timeout=30)
            next(call)
            call.cancel()
            futures = [s.Produce.future(req, timeout=30) for _ in range(10)]
            time.sleep(0.002)
            for f in futures:
                f.cancel()
        # Group commit still works: a new acks=ALL request is answered.
        r = produce(s, "cancel", [b"after"], timeout=10)
        assert r.base_offset > 0
    assert b.stop(timeout=20) == 0
    assert "Traceback" not in b.log()
