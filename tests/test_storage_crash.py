"""A real crash test: kill -9 a writer process at random moments.

``tests/crash_writer.py`` appends and flushes in a loop and prints each
acknowledged (durable) end offset. The test SIGKILLs it by PID at a random
moment after at least one acknowledgement, always ``wait()``s for it, reopens
the data directory and checks that every acknowledged record is there, at its
offset, with its value, exactly once, and nothing corrupt is served. kill -9
keeps the page cache, so this proves recovery (torn tails, roll boundaries,
checkpoints, retention and delete_records, the lock of a dead owner), not
fsync; the power-cut model test proves durability.

The random seed is printed (shown on failure); rerun one with
``LOGSTORE_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.crash_writer import PARTITIONS, TOPIC, value_for

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 20


class Writer:
    """One crash_writer process and the acknowledgements it printed."""

    def __init__(self, data_dir: Path, seed: int, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "ab")  # noqa: SIM115 (closed in kill)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_writer", str(data_dir), str(seed)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._buf = b""
        self.acks: list[tuple[int, int]] = []

    def read_for(self, seconds: float, *, until_acks: int = 0) -> None:
        """Collect output for ``seconds`` (or until ``until_acks`` acks, whichever later)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + seconds
        hard = time.monotonic() + 30
        while True:
            now = time.monotonic()
            if now >= end and len(self.acks) >= until_acks:
                return
            assert now < hard, "the writer printed no acknowledgement within 30 s"
            ready, _, _ = select.select([fd], [], [], 0.01)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.wait()
                    err = self.stderr_path.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"writer exited early with {code}:\n{err}")
                self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.startswith(b"ack "):
                _, part, end = line.split()
                self.acks.append((int(part), int(end)))

    def kill(self) -> None:
        """SIGKILL by PID, wait, then take whatever it printed before dying."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
        finally:
            self.proc.wait()
            assert self.proc.stdout is not None
            self._take(self.proc.stdout.read())
            self.proc.stdout.close()
            self._stderr.close()


def _verify(data_dir: Path, acked: dict[int, int], seed: int, rnd: int) -> dict[int, int]:
    """Every acknowledged record above the log start reads back exactly; returns the ends."""
    from logstore.storage import Store

    ends = {}
    with Store.open(data_dir) as store:
        for part in range(PARTITIONS):
            start, end = store.offsets(TOPIC, part)
            where = f"seed={seed} round={rnd} partition={part}"
            assert end >= acked[part], f"{where}: end {end} < acknowledged {acked[part]}"
            assert start <= end, where
            offset = start
            while offset < end:
                recs = store.read(TOPIC, part, offset, max_bytes=1 << 20)
                assert recs and recs[0].offset == offset, where
                for r in recs:
                    assert r.offset == offset, f"{where}: offset {r.offset}, expected {offset}"
                    assert r.value == value_for(part, offset), f"{where}: bad value at {offset}"
                    offset += 1
            ends[part] = end
    return ends


@pytest.mark.timeout(180)
def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """After kill -9 at random moments, every acknowledged record is readable exactly once."""
    seed = int(os.environ.get("LOGSTORE_CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash test seed: {seed} (rerun with LOGSTORE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acked = dict.fromkeys(range(PARTITIONS), 0)
    total_acks = 0
    for rnd in range(ROUNDS):
        writer = Writer(data_dir, rng.randrange(1 << 31), tmp_path / "writer.stderr")
        try:
            # at least one acknowledgement, then a random moment
            writer.read_for(0, until_acks=1)
            writer.read_for(rng.uniform(0, 0.3))
        finally:
            writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL, (
            f"seed={seed} round={rnd}: writer exited with {writer.proc.returncode}: "
            + (tmp_path / "writer.stderr").read_text()[-2000:]
        )
        for part, end in writer.acks:
            acked[part] = max(acked[part], end)
        total_acks += len(writer.acks)
        ends = _verify(data_dir, acked, seed, rnd)
        print(f"round {rnd}: acks {len(writer.acks)}, acked {acked}, found {ends}")
    assert total_acks >= ROUNDS


def _run_then_kill(script: str, data_dir: Path) -> None:
    """Run ``script`` on ``data_dir``; once it prints "done", SIGKILL it by PID and wait."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"done\n", line + (proc.stderr.read() if proc.stderr else b"")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


_DELETE_THEN_DIE = """
import sys
from logstore.storage import Store
store = Store.open(sys.argv[1])
store.create_topic("t", config={"segment_bytes": 1024})
for i in range(30):
    store.append("t", 0, [b"%03d" % i + b"x" * 200])  # rolls every 4 batches; no flush
store.delete_records("t", 0, 20)  # deletes sealed segments past the recovery point
print("done", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_kill_after_delete_records_past_the_recovery_point(tmp_path: Path) -> None:
    """kill -9 after delete_records past the recovery point: reopens, all records read."""
    from logstore.storage import Store

    data_dir = tmp_path / "data"
    _run_then_kill(_DELETE_THEN_DIE, data_dir)
    with Store.open(data_dir) as store:
        start, end = store.offsets("t", 0)
        assert end == 30 and start <= 20, (start, end)
        values = [r.value for off in range(start, end) for r in store.read("t", 0, off, 1)[:1]]
        assert values == [b"%03d" % i + b"x" * 200 for i in range(start, end)]


_TRUNCATE_THEN_DIE = """
import sys
from logstore.storage import Store
store = Store.open(sys.argv[1])
store.create_topic("t")
store.append("t", 0, [b"a", b"b"])
store.append("t", 0, [b"c"])
store.flush()  # recovery point 3
store.partition("t", 0).truncate_to(2)  # drops "c"
print("done", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_kill_after_truncate_below_the_recovery_point(tmp_path: Path) -> None:
    """kill -9 after truncate_to below the recovery point: the truncation stands, no corruption."""
    from logstore.storage import Store

    data_dir = tmp_path / "data"
    _run_then_kill(_TRUNCATE_THEN_DIE, data_dir)
    with Store.open(data_dir) as store:
        assert store.offsets("t", 0) == (0, 2)
        assert [r.value for r in store.read("t", 0, 0)] == [b"a", b"b"]
        assert store.append("t", 0, [b"d"]) == 2


_RECREATE_THEN_DIE = """
import sys
from logstore.storage import Store
store = Store.open(sys.argv[1])
store.create_topic("t")
store.append("t", 0, [b"old"])
store.flush()  # checkpointed recovery point of t-0: 1
store.delete_topic("t")
store.create_topic("t")  # a new, empty t-0
print("done", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_kill_after_recreating_a_topic(tmp_path: Path) -> None:
    """kill -9 after delete_topic + create_topic: the new topic is empty, nothing corrupt."""
    from logstore.storage import Store

    data_dir = tmp_path / "data"
    _run_then_kill(_RECREATE_THEN_DIE, data_dir)
    with Store.open(data_dir) as store:
        assert store.offsets("t", 0) == (0, 0)
        assert store.append("t", 0, [b"new"]) == 0
        assert [r.value for r in store.read("t", 0, 0)] == [b"new"]
