"""CPU cost of the W8 drain (issue 11): broker and worker CPU seconds per 100,000 records.

``python -m benchmarks.w8_profile [--tasks 200000] [--workers 8] [--runs 3] [--py-spy OUT]``

Starts a broker (temp data dir, loopback), and for each run: a fresh topic of
one partition and share group, the W8 fill (acks=all, 1 MiB requests), then
the W8 drain by ``--workers`` worker processes (``logstore_sys.work``: a
``ShareConsumer`` 500 records a poll, ``msg.ack()`` each). It prints, per run,
the drain rate and the CPU time the broker (``/proc/<pid>/stat``, utime +
stime) and the workers (``resource.getrusage`` in each) spent on the drain,
per 100,000 records. CPU time is what this measures because the machine's
other load disturbs it far less than the wall-clock rate (two shared cores:
a busy neighbour halves the rate but barely moves the CPU per record).

``--latency RATE`` instead runs W8's latency half: the workers waiting on an
empty queue and one paced producer (ProduceStream, ``--linger-ms``) sending
RATE tasks/s for ``--seconds``; it prints produce-to-ack p50 / p99 and the
CPU per 100,000 tasks.

``--max-records N`` (the workers' ``max_records``, default the client's 500)
and ``--max-inflight N`` (the group's ``max_inflight_records``, default the
broker's 2,000) size the fetches (docs/benchmarks.md, "W8 latency: where the time
goes", "Fetch sizing").

``--py-spy OUT`` samples the broker during each drain (``py-spy record
--format raw``, appended run by run to ``OUT``) and prints the top self and
inclusive frames of logstore's own code.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from benchmarks._proc import run_workers
from benchmarks.systems import worker
from benchmarks.systems.logstore_sys import Driver

_TICK = os.sysconf("SC_CLK_TCK")
#: extra py-spy flags (e.g. W8_SPY="--threads --gil")
_SPY_EXTRA = os.environ.get("W8_SPY", "").split()


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _stime_s(pid: int) -> float:
    """stime of ``pid`` (all its threads): the kernel's share (fsync, futex, epoll, sockets)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / _TICK


def _thread_cpu_s(pid: int) -> float:
    """utime + stime of ``pid``'s main thread (the broker's event loop)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _threads_cpu_s(pid: int) -> Counter[int]:
    """utime + stime of each of ``pid``'s threads, by thread id."""
    out: Counter[int] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(task.name)] += (int(fields[11]) + int(fields[12])) / _TICK
    return out


def _thread_names(pid: int) -> dict[int, str]:
    """Python thread names by thread id (``py-spy dump``; Python does not name OS threads)."""
    exe = Path(sys.executable).parent / "py-spy"
    try:
        text = subprocess.run(
            [str(exe), "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for m in re.finditer(r"^Thread (\d+) \([^)]*\): \"([^\"]*)\"", text, re.M):
        names[int(m.group(1))] = re.sub(r"_\d+$", "", m.group(2))
    return names


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--format", "raw", "-o", str(out),
         "--rate", "200", "--nonblocking", *_SPY_EXTRA],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _top(raw: Path, n: int = 25) -> None:
    """Self and inclusive shares of py-spy's raw (collapsed) stacks."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")
        total += k
        self_t[frames[-1]] += k
        for f in set(frames):
            if "logstore" in f or "grpc" in f:
                incl[f] += k
    if not total:
        print("no samples")
        return
    print(f"\nself time (of {total} samples):")
    for f, k in self_t.most_common(n):
        print(f"  {100 * k / total:5.1f}%  {f}")
    print("\ninclusive (logstore / grpc frames):")
    for f, k in incl.most_common(n):
        print(f"  {100 * k / total:5.1f}%  {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--py-spy", type=Path, default=None, help="raw py-spy output file")
    ap.add_argument(
        "--py-spy-worker", type=Path, default=None, help="raw py-spy output of one worker"
    )
    ap.add_argument("--latency", type=int, default=0, help="paced tasks/s (0: the drain)")
    ap.add_argument("--linger-ms", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--metrics", default="", help="print broker metric lines containing these")
    ap.add_argument("--max-records", type=int, default=0, help="per poll (0: the default)")
    ap.add_argument("--max-inflight", type=int, default=0, help="group window (0: default)")
    a = ap.parse_args()
    driver = Driver()
    with tempfile.TemporaryDirectory(prefix="w8prof-") as tmp:
        driver.start(Path(tmp))
        try:
            assert driver.broker is not None and driver.broker.child is not None
            pid = driver.broker.child.pid
            params = driver.params()
            rows = []
            for run in range(a.runs):
                topic = f"w8p-{uuid.uuid4().hex[:8]}"
                group = f"{topic}-g"
                driver.create(topic, 1)
                driver.create_share_group(topic, group, 5_000, a.max_inflight)
                fill = {
                    "system": "logstore",
                    "op": "produce",
                    "params": params,
                    "topic": topic,
                    "n": a.tasks,
                    "size": 100,
                    "durable": True,
                    "deadline_s": 180,
                    "partitions_list": [0],
                }
                if not a.latency:
                    run_workers(worker, [fill], timeout_s=300)
                import multiprocessing as mp

                acked = mp.get_context("spawn").Value("q", 0)
                args = [
                    {
                        "system": "logstore",
                        "op": "work",
                        "params": params,
                        "topic": topic,
                        "group": group,
                        "member": i,
                        "n": a.tasks,
                        "acked": acked,
                        "stamped": False,
                        "deadline_s": 180,
                        **({"max_records": a.max_records} if a.max_records else {}),
                    }
                    for i in range(a.workers)
                ]
                load = os.getloadavg()[0]
                spy = None
                if a.py_spy is not None:
                    out = a.py_spy.with_suffix(f".{run}.txt")
                    spy = _spy(pid, out)
                    time.sleep(1.0)
                wspy: list[subprocess.Popen[bytes]] = []
                wout = None
                if a.py_spy_worker is not None:
                    wout = a.py_spy_worker.with_suffix(f".{run}.txt")

                    def prepare(
                        path: Path = wout, spies: list[subprocess.Popen[bytes]] = wspy
                    ) -> None:
                        # the workers are started (and wait at the barrier): sample one
                        kids = mp.active_children()
                        if kids and kids[0].pid is not None:
                            spies.append(_spy(kids[0].pid, path))
                            time.sleep(1.0)

                lead: list[dict[str, object]] = []
                if a.latency:
                    total = int(a.latency * a.seconds)
                    for w in args:
                        w["n"], w["stamped"], w["deadline_s"] = total, True, a.seconds + 60
                    lead = [
                        {
                            "system": "logstore",
                            "op": "paced",
                            "params": params,
                            "topic": topic,
                            "rate": a.latency,
                            "seconds": a.seconds,
                            "size": 100,
                            "durable": True,
                            "linger_ms": a.linger_ms,
                            "deadline_s": a.seconds + 60,
                        }
                    ]
                c0 = _cpu_s(pid)
                s0 = _stime_s(pid)
                m0 = _thread_cpu_s(pid)
                t0 = _threads_cpu_s(pid)
                res = run_workers(
                    worker,
                    [*lead, *args],
                    timeout_s=300,
                    prepare=prepare if a.py_spy_worker is not None else None,
                )
                c1 = _cpu_s(pid)
                s1 = _stime_s(pid)
                m1 = _thread_cpu_s(pid)
                t1 = _threads_cpu_s(pid)
                if lead:
                    import numpy as np

                    from benchmarks._stats import latency_percentiles_ms

                    res = res[1:]
                    lat = np.concatenate([np.asarray(r["lat_ns"], dtype=np.int64) for r in res])
                    pct = latency_percentiles_ms(lat)
                    print(f"  latency p50 {pct['p50']:.1f} ms, p99 {pct['p99']:.1f} ms")
                    got = np.concatenate([np.asarray(r["got_ns"], dtype=np.int64) for r in res])
                    if len(got):  # the stages: produce -> poll returned, then the ack commit
                        g = latency_percentiles_ms(got)
                        ack = latency_percentiles_ms(lat - got)
                        print(
                            f"  produce->fetched p50 {g['p50']:.1f} ms, p99 {g['p99']:.1f} ms; "
                            f"ack commit p50 {ack['p50']:.1f} ms, p99 {ack['p99']:.1f} ms"
                        )
                for sp in [spy, *wspy]:
                    if sp is not None:
                        sp.send_signal(2)
                        sp.wait(30)
                got = sum(int(r["count"]) for r in res)
                start = min(float(r["start"]) for r in res)
                end = max(float(r["last_ack"]) for r in res if r["count"])
                wcpu = sum(float(r.get("cpu_s", 0.0)) for r in res)
                per = 100_000 / max(1, got)
                busy = 100 * (m1 - m0) / (end - start)
                print(
                    f"  broker event-loop thread busy {busy:.0f} % of the run; broker system "
                    f"(kernel) CPU {(s1 - s0) * per:.3f} s / 100k"
                )
                names = _thread_names(pid)  # the I/O pool's threads summed as one row
                by_name: Counter[str] = Counter()
                for tid, cpu in t1.items():
                    by_name[names.get(tid, f"thread {tid}")] += (cpu - t0.get(tid, 0.0)) * per
                print(
                    "  broker CPU s / 100k by thread: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in by_name.most_common() if v > 0)
                )
                rows.append((got / (end - start), (c1 - c0) * per, wcpu * per, load))
                print(
                    f"run {run}: {got:,} records, drain {got / (end - start):,.0f}/s, broker "
                    f"{(c1 - c0) * per:.3f} CPU s / 100k, workers {wcpu * per:.3f} CPU s / 100k "
                    f"(load {load:.2f})",
                    flush=True,
                )
                if a.metrics:
                    import urllib.request

                    assert driver.broker is not None
                    url = f"http://{driver.broker.metrics_address}/metrics"
                    for line in (
                        urllib.request.urlopen(url, timeout=10).read().decode().splitlines()
                    ):
                        if any(k in line for k in a.metrics.split(",")) and not line.startswith(
                            "#"
                        ):
                            print("  " + line)
                driver.delete(topic, 1)
                if spy is not None:
                    _top(out)
                if wspy and wout is not None:
                    print("\nworker 0:")
                    _top(wout)
            rows.sort(key=lambda r: r[1])
            med = rows[len(rows) // 2]
            print(
                f"median by broker CPU: drain {med[0]:,.0f}/s, broker {med[1]:.3f} CPU s / 100k, "
                f"workers {med[2]:.3f} CPU s / 100k"
            )
        finally:
            driver.stop()


if __name__ == "__main__":
    main()
