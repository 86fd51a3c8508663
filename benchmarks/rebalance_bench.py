"""Rebalance settle time of a consumer group (issue 10, "Speed").

``python -m benchmarks.rebalance_bench [--members 8] [--runs 3] [--heartbeat-ms 3000]``,
or the ``rebalance`` section of ``benchmarks.run``.

One broker (a child process) with the group heartbeat interval given (default:
the broker's own 3 s) and a session timeout of ``SESSION_INTERVALS`` heartbeat
intervals (lowered from 45 s, through ``group_min_session_timeout_ms``, only
so that the kill -9 case does not take most of a minute per run). A topic with
``3 x members`` partitions (empty: settling is the protocol's work, not the
data's) and ``members`` member processes, each a ``GroupConsumer`` polling in
a loop (``poll_columns(100 ms)``; auto-commit on, so revocation commits).

**Settled** = DescribeGroup (polled every 20 ms) shows the expected number of
members, none with partitions revoking, each owning exactly its target, and
every partition owned (``logstore_sys.unsettled``). Each run, on a group that
has settled with ``members`` members:

* **join**: a new member process stamps ``time.monotonic()`` (one clock for
  every process of the machine) just before its ``GroupConsumer`` sends the join
  heartbeat; settle time = first settled answer (of ``members + 1``) - stamp.
* **leave**: that member stamps the time just before ``close()`` (commit,
  on_revoke, leave heartbeat); settle time = first settled answer - stamp.
* **kill -9**: a member is SIGKILLed. *Detection* is the first DescribeGroup
  answer (polled every 20 ms) without it: the coordinator removes a member when
  its session timer fires (within a few ms of last heartbeat + session timeout),
  so "kill -> detection" is reported too, and it is the session timeout minus
  the time since the last heartbeat. Settle time = first settled answer
  (``members - 1``) - detection.

Figures: settle time in ms and in heartbeat intervals (the issue's target:
settle within 2 intervals of the triggering event).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._stats import Figure

NAME = "rebalance"
#: Session timeout in heartbeat intervals (Kafka's defaults are 45 s / 3 s = 15).
SESSION_INTERVALS = 4
#: A member's poll slice: the client reconciles its assignment inside poll.
POLL_MS = 100


def _member(bootstrap: str, group: str, topic: str, idx: int, q: Any, stop: Any) -> None:
    """One member process: join, poll until ``stop``, then close (leave)."""
    from logstore.client import GroupConsumer

    q.put(("join", idx, time.monotonic(), os.getpid()))
    gc = GroupConsumer(bootstrap, group, topics=[topic], auto_offset_reset="earliest")
    q.put(("joined", idx, time.monotonic(), os.getpid()))
    try:
        while not stop.is_set():
            gc.poll_columns(POLL_MS)
    finally:
        q.put(("leave", idx, time.monotonic(), os.getpid()))
        gc.close()
        q.put(("left", idx, time.monotonic(), os.getpid()))


class _Members:
    """Member processes, each stopped by its own event or killed by its PID."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.ctx = mp.get_context("spawn")
        self.q = self.ctx.Queue()
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.procs: dict[int, tuple[Any, Any]] = {}
        self.events: list[tuple[str, int, float, int]] = []
        self._next = 0

    def start(self) -> int:
        idx = self._next
        self._next += 1
        stop = self.ctx.Event()
        p = self.ctx.Process(
            target=_member,
            args=(self.bootstrap, self.group, self.topic, idx, self.q, stop),
            daemon=True,
        )
        p.start()
        self.procs[idx] = (p, stop)
        return idx

    def stamp(self, kind: str, idx: int, timeout_s: float = 60.0) -> float:
        """The time member ``idx`` reported event ``kind`` (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for k, i, t, _pid in self.events:
                if k == kind and i == idx:
                    return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"member {idx} did not report {kind!r} in {timeout_s} s")
            try:
                self.events.append(self.q.get(timeout=min(left, 1.0)))
            except Exception:  # queue.Empty
                continue

    def stop(self, idx: int) -> None:
        self.procs[idx][1].set()

    def kill(self, idx: int) -> float:
        p, _ = self.procs[idx]
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        t = time.monotonic()
        p.join(timeout=10)
        return t

    def close(self) -> None:
        for _p, stop in self.procs.values():
            stop.set()
        for p, _ in self.procs.values():
            p.join(timeout=15)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
        self.q.close()


def _wait_gone(admin: Any, group: str, members: int, timeout_s: float) -> float:
    """First DescribeGroup answer with ``members`` members; its request time."""
    from benchmarks.systems.logstore_sys import SETTLE_POLL_S

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = time.monotonic()
        if len(admin.describe_group(group).members) == members:
            return t
        time.sleep(SETTLE_POLL_S)
    raise TimeoutError(f"group {group} still has more than {members} members")


def measure(members: int, runs: int, heartbeat_ms: int, workdir: Path, log: Any) -> list[Figure]:
    from benchmarks.systems.logstore_sys import Broker, wait_settled
    from logstore.client import Admin

    session_ms = SESSION_INTERVALS * heartbeat_ms
    env = {
        "LOGSTORE_GROUP_HEARTBEAT_INTERVAL_MS": str(heartbeat_ms),
        "LOGSTORE_GROUP_SESSION_TIMEOUT_MS": str(session_ms),
        "LOGSTORE_GROUP_MIN_SESSION_TIMEOUT_MS": str(min(session_ms, 45_000)),
    }
    partitions = 3 * members
    info = {
        "workload": NAME,
        "system": "logstore",
        "members": members,
        "partitions": partitions,
        "heartbeat_interval_ms": heartbeat_ms,
        "session_timeout_ms": session_ms,
    }
    cases = ("join", "leave", "kill -9")
    ms = {
        c: Figure(
            f"{NAME} {c} settle",
            "ms",
            higher_is_better=False,
            info={**info, "mode": f"{members} members, {c}"},
        )
        for c in cases
    }
    hb = {
        c: Figure(
            f"{NAME} {c} settle in heartbeat intervals",
            "intervals",
            higher_is_better=False,
            info={**info, "mode": f"{members} members, {c}"},
        )
        for c in cases
    }
    detect = Figure(
        f"{NAME} kill -9 to detection",
        "ms",
        higher_is_better=False,
        info={**info, "mode": f"session timeout {session_ms:,} ms"},
    )
    d = Path(tempfile.mkdtemp(prefix="rebalance-", dir=workdir))
    broker = Broker(d / "data", d / "broker.log", env=env)
    broker.start()
    try:
        with Admin(broker.grpc_address) as admin:
            for run in range(runs):
                topic, group = f"rebalance-{run}", f"rebalance-{run}-group"
                admin.create_topic(topic, partitions)
                tps = {(topic, p) for p in range(partitions)}
                m = _Members(broker.grpc_address, group, topic)
                try:
                    first = [m.start() for _ in range(members)]
                    t0 = time.monotonic()
                    wait_settled(admin, group, members, tps, 120)
                    log(f"{NAME}: {members} members settled {time.monotonic() - t0:.1f} s")
                    # (a) one joins
                    new = m.start()
                    start = m.stamp("join", new)
                    t = wait_settled(admin, group, members + 1, tps, 120)
                    ms["join"].values.append((t - start) * 1000)
                    # (b) it leaves
                    m.stop(new)
                    start = m.stamp("leave", new)
                    t = wait_settled(admin, group, members, tps, 120)
                    ms["leave"].values.append((t - start) * 1000)
                    # (c) one is killed
                    killed_at = m.kill(first[0])
                    detected = _wait_gone(admin, group, members - 1, session_ms / 1000 + 60)
                    t = wait_settled(admin, group, members - 1, tps, 120)
                    ms["kill -9"].values.append((t - detected) * 1000)
                    detect.values.append((detected - killed_at) * 1000)
                    log(
                        f"{NAME} run {run + 1}: join {ms['join'].values[-1]:,.0f} ms, "
                        f"leave {ms['leave'].values[-1]:,.0f} ms, kill -9 "
                        f"{ms['kill -9'].values[-1]:,.0f} ms after detection "
                        f"(detected {detect.values[-1]:,.0f} ms after the kill); "
                        f"heartbeat {heartbeat_ms} ms"
                    )
                finally:
                    m.close()
                    admin.delete_topic(topic)
    finally:
        broker.stop()
        shutil.rmtree(d, ignore_errors=True)
    for c in cases:
        hb[c].values = [v / heartbeat_ms for v in ms[c].values]
    return [*(f for c in cases for f in (ms[c], hb[c])), detect]


def run(ctx: Any) -> list[Figure]:
    """The ``rebalance`` section of ``benchmarks.run`` (sizes from ``ctx.scale``)."""
    s = ctx.scale
    return measure(s.rebalance_members, ctx.runs, s.rebalance_heartbeat_ms, ctx.workdir, ctx.log)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report
    from benchmarks.machine import write_results

    p = argparse.ArgumentParser(prog="python -m benchmarks.rebalance_bench")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--heartbeat-ms", type=int, default=3000)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    started = time.time()
    figs = measure(
        a.members,
        a.runs,
        a.heartbeat_ms,
        a.workdir or Path(tempfile.gettempdir()),
        lambda msg: print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True),
    )
    print(report.figures_table({"figures": [f.to_dict() for f in figs]}))
    if a.json is not None:
        write_results(a.json, figs, started, {"argv": argv, **vars(a), "json": str(a.json)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
