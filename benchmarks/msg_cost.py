"""The broker's cost per ProduceStream message and Subscribe push, A/B between source trees.

``python -m benchmarks.msg_cost [--tree NAME=PATH ...] [--rate 2000] [--seconds 5]
[--linger-ms 0] [--acks all] [--runs 3] [--client raw|producer] [--max-in-flight 5]
[--threads] [--strace] [--py-spy DIR]``

Per run and per ``--tree`` (interleaved, every other round in reverse, so the
machine's load falls on every tree alike) it starts a fresh broker from that
tree (``PYTHONPATH=PATH``, with ``PYTHONSAFEPATH`` so the current directory's
``logstore`` does not shadow it; without ``--tree``: this checkout), one
broker at a time (two brokers side by side measured the first one started
faster, same code), with a one-partition topic, one tailing process and one
paced producer process. ``--client raw`` is W4's pair (``ProduceStream``
pacer + raw ``Subscribe``), ``producer`` W4C's (``Producer(linger_ms)`` +
``Consumer``). The clients always run this checkout's code: only the broker
differs between trees.

Printed per run: end-to-end p50 / p99 (ms), the ProduceStream messages the
broker answered (its ``logstore_requests_total{method="ProduceStream.batch"}``)
and the broker's CPU (``/proc/<pid>/stat`` utime + stime over the run) per
message and per record, and the event loop's sleeps per message (voluntary
context switches of the broker's main thread). CPU per message is the figure
the machine's other load disturbs least; the last lines are the medians per tree.
The producer's and the tail's own CPU (``os.times`` from their start barrier
to their end) per message are printed too. ``--threads``
prints it by broker thread (``/proc/<pid>/task``). ``--strace``
attaches ``strace -c -f`` to each broker and prints the system calls per
message (a count the machine's load hardly moves; strace slows the broker).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._proc import cpu_seconds, loop_switches
from benchmarks.systems import logstore_sys
from benchmarks.systems.logstore_sys import Broker


def _proc_user_sys_s(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (the kernel's ``comm``; threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, tail = (task / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        if task.name == str(pid):
            name = "main (event loop)"
        f = tail.split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


_BATCHES = re.compile(r'^logstore_requests_total\{code="OK",method="ProduceStream\.batch"\} (\S+)$')


def _messages(metrics_addr: str) -> float:
    """ProduceStream messages answered OK so far (the broker's counter)."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = _BATCHES.match(line)
        if m:
            return float(m.group(1))
    return 0.0


def _client(op: str, args: dict[str, Any], go: Any, out: Any) -> None:
    fn = getattr(logstore_sys, op)
    mark = [0.0]

    def ready() -> None:
        mark[0] = cpu_seconds(os.getpid())  # from here on, the measured part
        (go.set if op in ("tail", "client_tail") else go.wait)()

    res = fn(args, ready)
    res["cpu_s"] = cpu_seconds(os.getpid()) - mark[0]
    out.put((op, res))


def _top_frames(path: Path, limit: int = 30) -> str:
    """The event loop thread's busy samples by innermost frame, in %."""
    own: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0] or "select" in frames[-1]:
            continue
        busy += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
    rows = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    return f"  loop busy samples {busy}\n" + "\n".join(
        f"  {100 * n / busy:5.1f} %  {f}" for f, n in rows
    )


def _one(
    broker: Broker,
    opts: dict[str, Any],
    topic: str,
    strace: bool,
    threads: bool,
    spy_out: Path | None = None,
) -> dict[str, float]:
    n = int(opts["rate"] * opts["seconds"])
    params = {"grpc": broker.grpc_address}
    common = {"params": params, "topic": topic, "size": 100, "durable": opts["acks"] == "all"}
    prod = {**common, "rate": opts["rate"], "seconds": opts["seconds"]}
    prod["linger_ms"] = opts["linger_ms"]
    prod["max_in_flight"] = opts["max_in_flight"]
    tail = {**common, "n": n, "deadline_s": opts["seconds"] + 30}
    ops = {
        "raw": ("tail", "paced"),
        "producer": ("client_tail", "client_paced"),
    }[opts["client"]]
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(ops[0], tail, go, out)),
        ctx.Process(target=_client, args=(ops[1], prod, go, out)),
    ]
    assert broker.child is not None
    pid = broker.child.proc.pid
    tracer = None
    if strace:
        trace_out = Path(tempfile.mkstemp(prefix="msg-cost-strace-")[1])
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-o", str(trace_out), "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    for p in procs:
        p.start()
    go.wait()
    spy = None
    if spy_out is not None:
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                *("record", "--pid", str(pid), "-r", "500", "-f", "raw", "-o", str(spy_out)),
                *("--nonblocking", "--threads", "--duration", str(int(opts["seconds"]))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    m0, t0 = _messages(broker.metrics_address), _thread_cpu_s(pid)
    u0, k0 = _proc_user_sys_s(pid)
    s0 = loop_switches(pid)
    res = dict(out.get(timeout=opts["seconds"] + 120) for _ in procs)
    u1, k1 = _proc_user_sys_s(pid)
    cpu, m1 = (u1 - u0) + (k1 - k0), _messages(broker.metrics_address)
    t1, s1 = _thread_cpu_s(pid), loop_switches(pid)
    for p in procs:
        p.join(timeout=30)
    if spy is not None and spy_out is not None:
        spy.wait(60)
        print(_top_frames(spy_out), flush=True)
    messages = max(m1 - m0, 1.0)
    lat = res[ops[0]]["lat_ns"] / 1e6
    row = {
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "delivered": 100.0 * res[ops[0]]["count"] / n,
        "messages": messages,
        "us_msg": cpu / messages * 1e6,
        "us_rec": cpu / n * 1e6,
        "sys_pct": 100.0 * (k1 - k0) / cpu if cpu else float("nan"),
        "sleeps_msg": (s1 - s0) / messages,
        "sys_msg": float("nan"),
        "producer_us_msg": res[ops[1]]["cpu_s"] / messages * 1e6,
        "tail_us_msg": res[ops[0]]["cpu_s"] / messages * 1e6,
    }
    if threads:
        per = {k: (v - t0.get(k, 0.0)) / messages * 1e6 for k, v in t1.items()}
        print(
            "  broker CPU us/message by thread: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v),
            flush=True,
        )
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        text = trace_out.read_text()
        trace_out.unlink()
        total = re.search(r"^-+\s.*\n\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
        if total:
            row["sys_msg"] = int(total.group(1)) / messages
        print(text, flush=True)
    return row


def _fmt(name: str, row: dict[str, float]) -> str:
    return (
        f"{name:>8}: p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  "
        f"delivered {row['delivered']:.1f} %  messages {row['messages']:.0f}  "
        f"broker CPU {row['us_msg']:.0f} us/message {row['us_rec']:.0f} us/record "
        f"({row['sys_pct']:.0f} % system)  "
        f"loop sleeps/message {row['sleeps_msg']:.2f}  "
        f"producer {row['producer_us_msg']:.0f} / tail {row['tail_us_msg']:.0f} us/message"
        + (f"  syscalls/message {row['sys_msg']:.1f}" if row["sys_msg"] == row["sys_msg"] else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--linger-ms", type=int, default=0)
    ap.add_argument("--acks", choices=("all", "1"), default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--client", choices=("raw", "producer"), default="raw")
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=5,
        help="raw pacer: messages unanswered at most (1 at a low --rate: one record a message)",
    )
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--threads", action="store_true", help="print CPU per message by thread")
    ap.add_argument("--py-spy", type=Path, default=None, help="DIR for py-spy raw profiles")
    a = ap.parse_args()
    if a.py_spy is not None:
        a.py_spy.mkdir(parents=True, exist_ok=True)
    trees = [t.split("=", 1) for t in a.tree] or [["this", ""]]
    opts = {
        "rate": a.rate,
        "seconds": a.seconds,
        "linger_ms": a.linger_ms,
        "acks": a.acks,
        "client": a.client,
        "max_in_flight": a.max_in_flight,
    }
    from logstore.client import Admin

    with tempfile.TemporaryDirectory(prefix="msg-cost-") as tmp:
        rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
        print(f"load average at start: {os.getloadavg()}", flush=True)
        for run in range(a.runs):
            # every other round in reverse, so neither tree always goes first
            for name, path in trees if run % 2 == 0 else trees[::-1]:
                env = {"PYTHONPATH": path, "PYTHONSAFEPATH": "1"} if path else {}
                work = Path(tmp) / f"{name}-{run}"
                work.mkdir()
                b = Broker(work / "data", work / "broker.log", (), env)
                b.start()
                try:
                    with Admin(b.grpc_address) as admin:
                        admin.create_topic("mc", partitions=1)
                    spy = a.py_spy / f"{name}-{run}.txt" if a.py_spy is not None else None
                    row = _one(b, opts, "mc", a.strace, a.threads, spy)
                finally:
                    b.stop()
                rows[name].append(row)
                print(f"run {run + 1} " + _fmt(name, row), flush=True)
        print(f"load average at end: {os.getloadavg()}")
        for name, rs in rows.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print("median " + _fmt(name, med))


if __name__ == "__main__":
    main()
