"""The runnable examples in examples/, executed end to end against a real broker.

``examples/group_aggregate.py``: 3 worker processes in one consumer group
aggregate a topic (count and sum per key with DuckDB over ``to_arrow()``); the
test stops the example with SIGTERM in the middle of the data, checks that what
it saved is the exact aggregate of each partition's records below the saved
offset, restarts it with ``--drain`` and compares the merged result with the
aggregate computed here from the produced records.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore.client import Admin, Producer
from logstore.errors import GroupIdNotFoundError
from tests.brokerproc import BrokerProcess, start_broker

ROOT = Path(__file__).resolve().parent.parent
AGGREGATE = ROOT / "examples" / "group_aggregate.py"
TOPIC, GROUP, PARTS, WORKERS = "sales", "sales-agg", 6, 3
PHASE1, PHASE2 = 2_000, 8_000
WAIT_S = 60.0

# (partition, offset, key, value) of every record produced
Produced = list[tuple[int, int, str | None, int | None]]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path / "data", env={"LOGSTORE_GROUP_HEARTBEAT_INTERVAL_MS": "100"})
    try:
        yield b
    finally:
        b.stop()


def produce(address: str, rng: random.Random, count: int, out: Produced) -> None:
    """``count`` records: 40 keys, integer values (negatives too); a few null values
    (counted, adding nothing to the sum) and null keys (counted under "<null>")."""
    sent = []
    with Producer(address) as p:
        for i in range(count):
            key = None if i % 997 == 0 else f"store-{rng.randrange(40)}"
            value = None if i % 501 == 0 else rng.randrange(-1_000, 100_000)
            raw_key = None if key is None else key.encode()
            raw_value = None if value is None else str(value).encode()
            # null keys go to a fixed partition so partitions get both kinds
            part = 0 if key is None else None
            sent.append((p.send(TOPIC, raw_value, key=raw_key, partition=part), key, value))
        p.flush()
    for handle, key, value in sent:
        partition, offset = handle.result(30)
        out.append((partition, offset, key, value))


def expected(records: Produced) -> dict[str, dict[str, int]]:
    agg: dict[str, dict[str, int]] = {}
    for _, _, key, value in records:
        a = agg.setdefault("<null>" if key is None else key, {"count": 0, "sum": 0})
        a["count"] += 1
        a["sum"] += value or 0
    return dict(sorted(agg.items()))


def saved(state_dir: Path) -> dict[int, dict[str, object]]:
    """The example's state files, read here independently: partition -> document."""
    out = {}
    for path in state_dir.glob(f"{TOPIC}-*.json"):
        doc = json.loads(path.read_text())
        out[int(doc["partition"])] = doc
    return out


def saved_count(state_dir: Path) -> int:
    return sum(n for doc in saved(state_dir).values() for n, _ in doc["keys"].values())  # type: ignore[attr-defined]


def start(broker: BrokerProcess, state_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Run the example (its stderr to example.log, truncated: one run's log)."""
    args = ["--bootstrap", broker.grpc_address, "--topic", TOPIC, "--group", GROUP]
    args += ["--state-dir", str(state_dir), "--workers", str(WORKERS), "--json", *extra]
    cmd = [sys.executable, str(AGGREGATE), *args]
    with open(state_dir.parent / "example.log", "wb") as log:  # the child keeps its own fd
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)


def finish(proc: subprocess.Popen[bytes], state_dir: Path) -> dict[str, object]:
    """Wait for the example's exit (0) and return its JSON result."""
    try:
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (state_dir.parent / "example.log").read_text(errors="replace")
    assert proc.returncode == 0, f"example exited {proc.returncode}; log:\n{log}"
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def aggregated(state_dir: Path) -> int:
    """The records the last run's workers added to saved state, from their exit lines."""
    log = (state_dir.parent / "example.log").read_text(errors="replace")
    counts = [int(m) for m in re.findall(r"worker \d+: aggregated (\d+) records", log)]
    assert len(counts) == WORKERS, log
    return sum(counts)


def wait_for(what: str, cond: object, proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = (state_dir.parent / "example.log").read_text(errors="replace")
            pytest.fail(f"{what}: not reached (exit {proc.poll()}); log:\n{log}")
        time.sleep(0.02)


def test_group_aggregate_resumes_after_sigterm_and_is_exact(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """Stopped mid-stream with SIGTERM and restarted, the example's group of 3 workers
    saves, per partition, exactly the aggregate of the records below its saved offset,
    and its final merged count and sum per key equal those of the produced records."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with Admin(broker.grpc_address) as admin:
        admin.create_topic(TOPIC, partitions=PARTS)
    rng = random.Random(20261202)
    records: Produced = []
    produce(broker.grpc_address, rng, PHASE1, records)

    # Run 1: follow; the group splits the partitions; stop it midway through phase 2.
    proc = start(broker, state_dir, "--max-poll-records", "20")
    wait_for("phase 1 aggregated", lambda: saved_count(state_dir) == PHASE1, proc, state_dir)
    with Admin(broker.grpc_address) as admin:
        members = admin.describe_group(GROUP).members
    owned = [{tp.partition for tp in m.assigned} for m in members]
    assert len(members) == WORKERS and all(owned), owned
    assert sorted(p for o in owned for p in o) == list(range(PARTS)), owned
    produce(broker.grpc_address, rng, PHASE2, records)
    wait_for("phase 2 started", lambda: saved_count(state_dir) > PHASE1 + 200, proc, state_dir)
    proc.send_signal(signal.SIGTERM)
    first = finish(proc, state_dir)
    total = PHASE1 + PHASE2
    assert PHASE1 < first["records"] < total, "the stop was not midway"  # type: ignore[operator]
    # partitions moved between workers as they joined; none was aggregated twice
    assert aggregated(state_dir) == first["records"]

    # What was saved is exact for every partition up to its saved offset.
    docs = saved(state_dir)
    for p, doc in docs.items():
        below = [r for r in records if r[0] == p and r[1] < doc["next_offset"]]  # type: ignore[operator]
        want = {k: [a["count"], a["sum"]] for k, a in expected(below).items()}
        assert doc["keys"] == want, f"partition {p} at {doc['next_offset']}"
    merged = {k: {"count": n, "sum": s} for k, (n, s) in _sum_docs(docs).items()}
    assert first["keys"] == merged
    with Admin(broker.grpc_address) as admin:
        d = admin.describe_group(GROUP)
    assert d.members == [], "the workers left the group on SIGTERM"
    for lag in d.partitions:
        # committed before the state is written: never behind the saved offset
        assert (lag.committed_offset or 0) >= docs.get(lag.partition, {}).get("next_offset", 0)  # type: ignore[operator]

    # Run 2: resume and drain; the merged aggregate is exact.
    second = finish(start(broker, state_dir, "--drain", "--max-poll-records", "500"), state_dir)
    assert second["records"] == total
    assert aggregated(state_dir) == total - first["records"], "run 2 did not resume"  # type: ignore[operator]
    assert second["keys"] == expected(records)
    with Admin(broker.grpc_address) as admin:
        ends = {o.partition: o.offset for o in admin.list_offsets(TOPIC, "latest")}
        d = admin.describe_group(GROUP)
    assert second["partitions"] == {str(p): e for p, e in ends.items() if e > 0}
    assert {lag.partition: lag.committed_offset for lag in d.partitions} == ends
    assert all(lag.lag_records == 0 for lag in d.partitions)


def _sum_docs(docs: dict[int, dict[str, object]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for doc in docs.values():
        for k, (n, s) in doc["keys"].items():  # type: ignore[attr-defined]
            a = out.setdefault(k, [0, 0])
            a[0] += n
            a[1] += s
    return dict(sorted(out.items()))


def test_group_aggregate_stopped_at_once_still_stops_every_worker_gracefully(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """``--drain`` on an empty topic is done before the workers have even imported:
    the parent must still wait until each can take SIGTERM gracefully (it prints a
    ready line), so every worker leaves the group and logs its exit line. Stopping
    them at once (the old parent) killed them mid-import: no exit lines, and the
    group kept members until their sessions expired."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with Admin(broker.grpc_address) as admin:
        admin.create_topic(TOPIC, partitions=PARTS)
    result = finish(start(broker, state_dir, "--drain"), state_dir)
    assert result["records"] == 0
    assert aggregated(state_dir) == 0  # one exit line per worker
    with Admin(broker.grpc_address) as admin:
        try:  # a worker stopped before its first poll never joined: no group at all
            members = admin.describe_group(GROUP).members
        except GroupIdNotFoundError:
            members = []
    assert members == [], "a worker left a member behind"


def test_group_aggregate_unknown_topic_is_one_line_and_exit_2(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """A wrong topic is one clear line on stderr, no traceback, and nothing saved."""
    state_dir = tmp_path / "state"
    cmd = [sys.executable, str(AGGREGATE), "--bootstrap", broker.grpc_address, "--topic", "nosuch"]
    cmd += ["--group", GROUP, "--state-dir", str(state_dir), "--drain"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["group_aggregate: unknown topic 'nosuch'"]
    assert list(state_dir.iterdir()) == []
