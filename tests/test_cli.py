"""logctl as a real subprocess against a real broker on port 0: every command, the
replay options, --follow, and each user error with its exit code and one stderr line."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.brokerproc import BrokerProcess, start_broker

ROOT = Path(__file__).resolve().parents[1]
N_LINES = 100_000


@pytest.fixture(scope="module")
def cli_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for this module; tests use their own topics."""
    b = start_broker(tmp_path_factory.mktemp("cli") / "data")
    try:
        yield b
    finally:
        b.stop()


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSTORE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def read_lines(proc: subprocess.Popen[bytes], n: int, timeout_s: float = 20) -> bytes:
    """What ``proc`` printed to stdout until ``n`` full lines arrived, it closed its
    stdout, or ``timeout_s`` passed (the caller asserts on what came)."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout_s
    while got.count(b"\n") < n and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            got += chunk
    return got


def logctl(
    broker: BrokerProcess | None,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run logctl to completion (bootstrap from LOGSTORE_BOOTSTRAP)."""
    extra = {"LOGSTORE_BOOTSTRAP": broker.grpc_address} if broker else {}
    extra.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        check=False,
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=_env(extra),
        cwd=ROOT,
        timeout=timeout,
    )
    return proc


def logctl_many(
    broker: BrokerProcess | None,
    cases: list[tuple[str, ...]],
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent logctl commands concurrently (each a subprocess, waited for)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: logctl(broker, *args, stdin=stdin, env=env), cases))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, pattern: str) -> None:
    """Exit ``code`` with exactly one stderr line matching ``pattern``, no traceback or panel."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    errors_ = [ln for ln in lines if ln.startswith("logctl: error:")]
    assert len(errors_) == 1, proc.stderr
    assert re.search(pattern, errors_[0]), errors_[0]
    assert "Traceback" not in proc.stderr
    assert not any(ch in proc.stderr for ch in "╭╰│")


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def loaded(cli_broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Topic 'events' (1 partition) holding 100,000 lines produced from a file by logctl."""
    lines = [b"line-%06d" % i for i in range(N_LINES)]
    lines[10] = b""  # an empty line is a record with an empty value
    lines[11] = b"caf\xc3\xa9"  # UTF-8
    lines[12] = b"\xff\xfe"  # not UTF-8: value_b64
    path = tmp_path_factory.mktemp("input") / "lines.txt"
    # \r\n on some lines, and the last line without a newline
    path.write_bytes(
        b"".join(ln + (b"\r\n" if i % 3 == 0 else b"\n") for i, ln in enumerate(lines[:-1]))
        + lines[-1]
    )
    assert logctl(cli_broker, "topics", "create", "events", "--partitions", "1").returncode == 0
    proc = logctl(cli_broker, "produce", "events", "--file", str(path))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"produced 100000 records .*partition 0: 0\.\.99999", proc.stderr)
    assert "records/s" in proc.stderr
    return lines


def test_version() -> None:
    """logctl --version prints the package version and exits 0."""
    proc = logctl(None, "--version")
    assert proc.returncode == 0
    assert re.fullmatch(r"logctl \d+\.\d+\.\d+\n", proc.stdout)


def test_produce_100k_lines_and_consume_them_in_order_as_json(
    cli_broker: BrokerProcess, loaded: list[bytes]
) -> None:
    """Every line comes back once, in offset order, in the documented JSON format."""
    proc = logctl(cli_broker, "consume", "events", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    recs = _json_lines(proc.stdout)
    assert [r["offset"] for r in recs] == list(range(N_LINES))
    assert set(recs[0]) == {
        "topic",
        "partition",
        "offset",
        "timestamp_ms",
        "key",
        "value",
        "headers",
    }
    assert recs[0]["topic"] == "events" and recs[0]["partition"] == 0
    assert recs[0]["key"] is None and recs[0]["headers"] == []
    assert recs[0]["timestamp_ms"] > 1_600_000_000_000
    assert recs[10]["value"] == "" and recs[11]["value"] == "café"
    assert "value" not in recs[12] and recs[12]["value_b64"] == "//4="
    for i in (0, 5, 999, 54_321, N_LINES - 1):
        assert recs[i]["value"] == loaded[i].decode()


def test_consume_text_and_max(cli_broker: BrokerProcess, loaded: list[bytes]) -> None:
    """Text output is one value per line; --max counts records."""
    proc = logctl(cli_broker, "consume", "events", "--max", "5")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [ln.decode() for ln in loaded[:5]]


def test_replay_from_an_offset(cli_broker: BrokerProcess, loaded: list[bytes]) -> None:
    """--partition P --offset N starts exactly at N; the end offset itself is valid and empty."""
    proc = logctl(
        cli_broker, "consume", "events", "--partition", "0", "--offset", "99990", "-o", "json"
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["offset"] for r in _json_lines(proc.stdout)] == list(range(99990, N_LINES))
    end = logctl(cli_broker, "consume", "events", "--partition", "0", "--offset", str(N_LINES))
    assert end.returncode == 0 and end.stdout == ""


def test_replay_from_absolute_and_relative_time(cli_broker: BrokerProcess) -> None:
    """--from-time ISO (with a zone, or UTC when none) and -1h start at the first record at or
    after that time; a time after the last record gives nothing and exit 0."""
    from logstore.client import Producer

    assert logctl(cli_broker, "topics", "create", "timed").returncode == 0
    now_ms = int(time.time() * 1000)
    two_hours_ago = now_ms - 2 * 3_600_000
    with Producer(cli_broker.grpc_address) as p:
        p.send("timed", b"old1", timestamp_ms=two_hours_ago)
        p.send("timed", b"old2", timestamp_ms=two_hours_ago + 1)
        p.flush()
        p.send("timed", b"new1", timestamp_ms=now_ms)
        p.send("timed", b"new2", timestamp_ms=now_ms + 1)
    cut = datetime.fromtimestamp((now_ms - 3_600_000) / 1000, UTC)
    iso_z = cut.strftime("%Y-%m-%dT%H:%M:%SZ")
    iso_naive = cut.strftime("%Y-%m-%dT%H:%M:%S")  # no zone: UTC
    iso_plus2 = cut.astimezone(timezone(timedelta(hours=2))).isoformat()
    specs = ("-1h", "-90m", iso_z, iso_naive, iso_plus2, "-3h", "2999-01-01T00:00:00+02:00")
    procs = logctl_many(cli_broker, [("consume", "timed", "--from-time", s) for s in specs])
    for spec, proc in zip(specs, procs, strict=True):
        assert proc.returncode == 0, proc.stderr
        if spec == "-3h":
            assert proc.stdout.splitlines() == ["old1", "old2", "new1", "new2"]
        elif spec.startswith("2999"):  # after the last record: nothing, exit 0
            assert proc.stdout == ""
        else:
            assert proc.stdout.splitlines() == ["new1", "new2"], spec
    offs = logctl(cli_broker, "offsets", "timed", "--time", iso_z, "-o", "json")
    assert offs.returncode == 0
    row = json.loads(offs.stdout)["partitions"][0]
    assert (row["earliest"], row["latest"], row["offset"], row["found"]) == (0, 4, 2, True)


def test_follow_tails_while_producing(cli_broker: BrokerProcess, tmp_path: Path) -> None:
    """consume --follow prints records produced after it started, each flushed at once,
    and exits 0 when stopped by SIGTERM."""
    assert logctl(cli_broker, "topics", "create", "tailed", "--partitions", "2").returncode == 0
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "consume", "tailed", "--follow", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env({"LOGSTORE_BOOTSTRAP": cli_broker.grpc_address}),
        cwd=ROOT,
    )
    try:
        time.sleep(1.0)
        for batch in (b"a\nb\nc\n", b"d\ne\n"):
            assert logctl(cli_broker, "produce", "tailed", stdin=batch).returncode == 0
        got = read_lines(follower, 5)
        values = sorted(json.loads(line)["value"] for line in got.splitlines())
        assert values == ["a", "b", "c", "d", "e"]
        assert follower.poll() is None  # still following
    finally:
        os.kill(follower.pid, signal.SIGTERM)
        code = follower.wait(timeout=20)
        assert follower.stderr is not None
        err = follower.stderr.read().decode()
        follower.stdout.close() if follower.stdout else None
        follower.stderr.close()
    assert code == 0, err
    assert "Traceback" not in err


def test_topics_commands(cli_broker: BrokerProcess) -> None:
    """topics create/list/describe/alter/delete work, in text and JSON."""
    created = logctl(
        cli_broker, "topics", "create", "tp-cmd", "--partitions", "2", "--config",
        "retention_ms=3600000", "--config", "segment.bytes=1048576", "-o", "json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["partitions"] == 2 and info["config"]["retention_ms"] == "3600000"
    assert info["config"]["segment_bytes"] == "1048576"
    listed = logctl(cli_broker, "topics", "list")
    assert re.search(r"^tp-cmd\s+2$", listed.stdout, re.M)
    described = logctl(cli_broker, "topics", "describe", "tp-cmd", "-o", "json")
    d = json.loads(described.stdout)
    assert [p["partition"] for p in d["partition_info"]] == [0, 1]
    text = logctl(cli_broker, "topics", "describe", "tp-cmd")
    assert "retention_ms" in text.stdout and "PARTITION" in text.stdout
    altered = logctl(
        cli_broker, "topics", "alter", "tp-cmd", "--config", "retention_ms=60000",
        "--partitions", "3", "-o", "json",
    )  # fmt: skip
    assert altered.returncode == 0, altered.stderr
    a = json.loads(altered.stdout)
    assert a["partitions"] == 3 and a["config"]["retention_ms"] == "60000"
    offs = logctl(cli_broker, "offsets", "tp-cmd", "-o", "json")
    assert [p["partition"] for p in json.loads(offs.stdout)["partitions"]] == [0, 1, 2]
    assert logctl(cli_broker, "topics", "delete", "tp-cmd").returncode == 0
    listed = logctl(cli_broker, "topics", "list", "-o", "json")
    assert "tp-cmd" not in [t["name"] for t in json.loads(listed.stdout)]


def test_keyed_produce_and_a_line_without_the_separator(cli_broker: BrokerProcess) -> None:
    """--key-separator splits key/value; a line without it fails naming the line number, after
    storing the lines before it (the summary says so), and nothing after it."""
    assert logctl(cli_broker, "topics", "create", "keyed", "--partitions", "3").returncode == 0
    proc = logctl(
        cli_broker, "produce", "keyed", "--key-separator", "=", stdin=b"a=1\nb=2\nbroken\nd=4\n"
    )
    assert_one_line_error(proc, 1, r"line 3 .*separator '='")
    assert "produced 2 records" in proc.stderr
    out = logctl(cli_broker, "consume", "keyed", "-o", "json")
    recs = _json_lines(out.stdout)
    assert sorted((r["key"], r["value"]) for r in recs) == [("a", "1"), ("b", "2")]


def test_user_errors_give_one_line_and_exit_1(
    cli_broker: BrokerProcess, loaded: list[bytes]
) -> None:
    """Errors the broker reports (or that need a request) exit 1 with one clear line,
    and the stored data is unharmed afterwards."""
    cases = [
        (("consume", "nosuch"), r"unknown topic 'nosuch'"),
        (("consume", "events", "--partition", "7"), r"partition"),
        (("produce", "events", "--partition", "7"), r"partition"),
        (("topics", "create", "bad name!"), r"bad name!"),
        (("topics", "create", "__internal"), r"__internal"),
        (("topics", "create", "cfg", "--config", "bogus_key=1"), r"bogus_key"),
        (("topics", "create", "cfg", "--config", "retention_ms=-5"), r"retention_ms"),
        (("topics", "create", "events"), r"already exists"),
        (("topics", "describe", "nosuch"), r"nosuch"),
        (("topics", "delete", "nosuch"), r"nosuch"),
        (("topics", "alter", "events", "--partitions", "1", "--config", "x=1"), r"x"),
        (("consume", "events", "--partition", "0", "--offset", "100001"), r"0\.\.100000"),
        (("offsets", "nosuch"), r"nosuch"),
    ]
    procs = logctl_many(cli_broker, [args for args, _ in cases], stdin=b"x\n")
    for (_, pattern), proc in zip(cases, procs, strict=True):
        assert_one_line_error(proc, 1, pattern)
    latest = logctl(cli_broker, "offsets", "events", "-o", "json")
    assert json.loads(latest.stdout)["partitions"] == [
        {"partition": 0, "earliest": 0, "latest": N_LINES}
    ]
    tail = logctl(cli_broker, "consume", "events", "--partition", "0", "--offset", "99998")
    assert tail.stdout.splitlines() == [ln.decode() for ln in loaded[-2:]]


def test_argument_errors_exit_2_before_any_request(tmp_path: Path) -> None:
    """Usage errors and bad arguments exit 2 with one line and never contact the broker
    (the bootstrap points at a closed port)."""
    env = {"LOGSTORE_BOOTSTRAP": f"127.0.0.1:{_closed_port()}"}
    cases = [
        (("consume", "t", "--bogus"), r"No such option"),
        (("consume", "t", "--offset", "3"), r"--offset needs --partition"),
        (("consume", "t", "--from-beginning", "--latest"), r"one start position"),
        (("consume", "t", "--from-time", "yesterday"), r"bad time"),
        (("consume", "t", "--output", "xml"), r"xml"),
        (("topics", "create", "t", "--config", "novalue"), r"key=value"),
        (("topics", "create", "t", "--partitions", "0"), r"partitions"),
        (("topics", "alter", "t"), r"nothing to alter"),
        (("produce", "t", "--acks", "2"), r"acks"),
        (
            ("produce", "t", "--compression", "zstd", "--compression-threads", "0"),
            r"1\.\.16, not 0",
        ),
        (("produce", "t", "--compression", "lz4", "--compression-threads", "17"), r"not 17"),
        (("produce", "t", "--compression", "zstd", "--compression-threads", "x"), r"integer"),
        (("produce", "t", "--compression-threads", "2"), r"needs --compression"),
        (("produce", "t", "--file", str(tmp_path / "missing.txt")), r"no such file"),
        (("nosuchcommand",), r"No such command"),
        ((), r"Missing command"),
    ]
    procs = logctl_many(None, [args for args, _ in cases], env=env)
    for (_, pattern), proc in zip(cases, procs, strict=True):
        assert_one_line_error(proc, 2, pattern)


def test_malformed_bootstrap_is_an_argument_error_at_once() -> None:
    """A --bootstrap (or LOGSTORE_BOOTSTRAP) that is not HOST:PORT exits 2 at once with one
    line naming it, instead of gRPC core log lines or a 5 s wait and exit 1. (An empty
    LOGSTORE_BOOTSTRAP counts as unset, as for every Click envvar.)"""
    cases: list[tuple[tuple[str, ...], dict[str, str]]] = [
        (("topics", "list", "--bootstrap", ""), {}),
        (("topics", "list"), {"LOGSTORE_BOOTSTRAP": "garbage"}),
        (("consume", "t", "--bootstrap", "garbage"), {}),
        (("produce", "t", "--bootstrap", "host:abc"), {}),
        (("offsets", "t", "--bootstrap", "127.0.0.1:0"), {}),
        (("topics", "create", "t", "--bootstrap", "::1:7070"), {}),
        (("topics", "list", "--bootstrap", "bad host:7070"), {}),
    ]
    # A connect deadline far above what start-up costs even on a loaded machine: a
    # command that tried to connect would take at least this long.
    connect_timeout_ms = 60_000
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(
            pool.map(
                lambda c: logctl(
                    None, *c[0], stdin=b"x\n",
                    env={"LOGSTORE_CONNECT_TIMEOUT_MS": str(connect_timeout_ms), **c[1]},
                ),
                cases,
            )
        )  # fmt: skip
    elapsed = time.monotonic() - started
    for proc in procs:
        assert_one_line_error(proc, 2, r"--bootstrap: bad broker address .*HOST:PORT")
        assert len(proc.stderr.splitlines()) == 1, proc.stderr  # no gRPC core lines
    # Refused before any connect attempt: far below one connect deadline.
    assert elapsed < connect_timeout_ms / 1000 / 2, elapsed


def test_times_out_of_range_are_argument_errors() -> None:
    """--from-time and offsets --time beyond year 9999 (or int64) exit 2 with one line
    naming the range, before any request (the bootstrap is a closed port)."""
    env = {"LOGSTORE_BOOTSTRAP": f"127.0.0.1:{_closed_port()}"}
    cases = [
        ("consume", "t", "--from-time", "99999999999999999999"),
        ("offsets", "t", "--time", "9223372036854775806"),
        ("consume", "t", "--from-time", "-99999999999d"),
    ]
    for proc in logctl_many(None, cases, env=env):
        assert_one_line_error(proc, 2, r"time .* is out of range: .*9999-12-31")


def test_a_stored_timestamp_no_datetime_can_hold_is_shown_as_ms(
    cli_broker: BrokerProcess,
) -> None:
    """offsets --time that finds a record stored with timestamp 2**63-2 (any client may send
    it) prints that number instead of failing with 'unexpected ValueError'."""
    from logstore.client import Producer

    assert logctl(cli_broker, "topics", "create", "far-future").returncode == 0
    with Producer(cli_broker.grpc_address) as p:
        p.send("far-future", b"x", timestamp_ms=2**63 - 2).result(10)
    text, js = logctl_many(
        cli_broker,
        [
            ("offsets", "far-future", "--time", "9999-12-31T00:00:00Z"),
            ("offsets", "far-future", "--time", "9999-12-31T00:00:00Z", "-o", "json"),
        ],
    )
    assert text.returncode == 0, text.stderr
    assert f"{2**63 - 2} ms since the epoch" in text.stdout
    assert json.loads(js.stdout)["partitions"][0]["timestamp_ms"] == 2**63 - 2


def test_file_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """produce --file DIR exits 2 saying it is a directory (not 'no such file')."""
    env = {"LOGSTORE_BOOTSTRAP": f"127.0.0.1:{_closed_port()}"}
    proc = logctl(None, "produce", "t", "--file", str(tmp_path), env=env)
    assert_one_line_error(proc, 2, r"is a directory")


def test_sigint_stops_follow_with_exit_130_after_what_was_printed(
    cli_broker: BrokerProcess,
) -> None:
    """Ctrl-C (SIGINT) during consume --follow exits 130 like other Unix tools, with every
    record printed before it on stdout and no traceback."""
    assert logctl(cli_broker, "topics", "create", "interrupted").returncode == 0
    assert logctl(cli_broker, "produce", "interrupted", stdin=b"r1\nr2\nr3\n").returncode == 0
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "consume", "interrupted", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env({"LOGSTORE_BOOTSTRAP": cli_broker.grpc_address}),
        cwd=ROOT,
    )
    try:
        got = read_lines(follower, 3)
        assert got == b"r1\nr2\nr3\n"
        assert follower.poll() is None  # following, past the records
    finally:
        os.kill(follower.pid, signal.SIGINT)
        code = follower.wait(timeout=20)
        rest, err = follower.communicate(timeout=5)
    assert code == 130, err
    assert rest == b""  # nothing half-written after the signal
    assert b"Traceback" not in err


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_broker_down_is_one_clear_line() -> None:
    """A closed port of our own gives 'cannot reach broker at HOST:PORT', exit 1, promptly."""
    port = _closed_port()
    flags = ("--bootstrap", f"127.0.0.1:{port}", "--connect-timeout-ms", "1000")
    cases = [(*args, *flags) for args in (("topics", "list"), ("consume", "t"), ("produce", "t"))]
    started = time.monotonic()
    for proc in logctl_many(None, cases, stdin=b"x\n"):
        assert_one_line_error(proc, 1, rf"cannot reach broker at 127\.0\.0\.1:{port}")
    assert time.monotonic() - started < 20


def test_environment_variables_and_flag_precedence(cli_broker: BrokerProcess) -> None:
    """LOGSTORE_BOOTSTRAP, LOGSTORE_OUTPUT and LOGSTORE_CONNECT_TIMEOUT_MS set their flags;
    the command-line flag wins over the variable."""
    closed = f"127.0.0.1:{_closed_port()}"
    ok = logctl(
        None, "topics", "list", "--bootstrap", cli_broker.grpc_address,
        env={"LOGSTORE_BOOTSTRAP": closed, "LOGSTORE_OUTPUT": "json"},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert isinstance(json.loads(ok.stdout), list)
    viaenv = logctl(
        None, "topics", "create", "envtopic",
        env={"LOGSTORE_BOOTSTRAP": cli_broker.grpc_address, "LOGSTORE_OUTPUT": "json"},
    )  # fmt: skip
    assert viaenv.returncode == 0, viaenv.stderr
    assert json.loads(viaenv.stdout)["name"] == "envtopic"
    env = {"LOGSTORE_BOOTSTRAP": closed, "LOGSTORE_CONNECT_TIMEOUT_MS": "500"}
    down = logctl(None, "topics", "list", env=env)
    assert_one_line_error(down, 1, "cannot reach broker")


def test_variables_that_would_change_a_command_are_not_read(cli_broker: BrokerProcess) -> None:
    """LOGSTORE_OFFSET, LOGSTORE_MAX, LOGSTORE_PARTITION(S), LOGSTORE_FROM_TIME, LOGSTORE_ACKS
    and the like left in the environment do not change what a command does."""
    stray = {
        "LOGSTORE_PARTITIONS": "4",
        "LOGSTORE_PARTITION": "0",
        "LOGSTORE_OFFSET": "3",
        "LOGSTORE_MAX": "1",
        "LOGSTORE_FROM_TIME": "2999-01-01",
        "LOGSTORE_LATEST": "1",
        "LOGSTORE_ACKS": "2",
        "LOGSTORE_KEY_SEPARATOR": "=",
        "LOGSTORE_TIME": "garbage",
        "LOGSTORE_CONFIG": "bogus_key=1",
    }
    created = logctl(cli_broker, "topics", "create", "stray-env", env=stray)
    assert created.returncode == 0, created.stderr
    assert "with 1 partition(s)" in created.stdout
    produced = logctl(cli_broker, "produce", "stray-env", stdin=b"a=1\nb\nc\nd\ne\n", env=stray)
    assert produced.returncode == 0, produced.stderr
    consumed, offs = logctl_many(
        cli_broker, [("consume", "stray-env"), ("offsets", "stray-env", "-o", "json")], env=stray
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["a=1", "b", "c", "d", "e"]
    assert offs.returncode == 0, offs.stderr
    assert "offset" not in json.loads(offs.stdout)["partitions"][0]  # no --time from the env


def test_serve_starts_a_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    """logctl serve prints the listening line, serves, and exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cli.main", "serve", "--data-dir", str(tmp_path / "d"),
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )  # fmt: skip
    try:
        line = read_lines(proc, 1, timeout_s=30)
        m = re.match(rb"logstore listening grpc=(\S+) metrics=\S+ data_dir=", line)
        assert m, line
        listed = logctl(None, "topics", "list", "--bootstrap", m.group(1).decode())
        assert listed.returncode == 0, listed.stderr
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert code == 0


def test_offset_below_the_log_start_names_the_range(cli_broker: BrokerProcess) -> None:
    """After records before offset 5 are deleted, --offset 2 fails naming 5..10; 5 still works."""
    from logstore.client import Admin

    assert logctl(cli_broker, "topics", "create", "trimmed").returncode == 0
    lines = b"".join(b"r%d\n" % i for i in range(10))
    assert logctl(cli_broker, "produce", "trimmed", stdin=lines).returncode == 0
    with Admin(cli_broker.grpc_address) as admin:
        assert admin.delete_records("trimmed", 0, 5) == 5
    below, at_start = logctl_many(
        cli_broker,
        [
            ("consume", "trimmed", "--partition", "0", "--offset", "2"),
            ("consume", "trimmed", "--partition", "0", "--offset", "5"),
        ],
    )
    assert_one_line_error(below, 1, r"offset 2 .*5\.\.10")
    assert at_start.returncode == 0
    assert at_start.stdout.splitlines() == [f"r{i}" for i in range(5, 10)]
