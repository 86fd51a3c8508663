"""W4's slow 1 %: where the slowest records' time went, stage by stage (issue 12).

``python -m benchmarks.w4_stalls [--rate 2000] [--seconds 10] [--acks 1,all] [--runs 3]
[--linger-ms 1] [--fifo] [--variant NAME=SETTINGS ...]``

Starts one broker per ``--variant`` (temp data dirs, loopback) and, per run,
per acks and per variant (interleaved, so the machine's other load falls on
every variant alike), W4's own raw ``ProduceStream`` pacer (``paced``, linger
1 ms as in the published row) and raw ``Subscribe`` tail (``tail``) on a
fresh topic. A variant's SETTINGS are comma-separated ``key=value`` pairs:
each becomes ``LOGSTORE_<KEY>`` for the broker (``event_loop=uvloop``) and the
trial settings ``switch_us=`` (the broker's ``sys.setswitchinterval``, µs),
``gc_freeze=1`` (``gc.freeze()`` once serving), ``gc_gen0=`` (the gen-0
threshold), ``watchdog=1`` (the stack of the loop thread whenever it has not
ticked for 3 ms) and ``client_switch_us=`` (the pacer's and the tail's switch
interval). Empty: the defaults.

``--fifo`` (root only) runs this process and its children (the brokers, the
pacer, the tail) under ``SCHED_FIFO`` priority 5: on a machine loaded by other
work the ordinary scheduler leaves the three processes waiting for a core for
tens of ms, which buries the broker's own behaviour; under FIFO they wait only
for each other (as on a quiet machine). The kernel's RT throttling (95 %)
bounds what they can take. (The processes' start-up then starves the
broker for ~0.1-0.2 s before the first record: the stalls listed at negative
times.)

Each process stamps its stages (CLOCK_MONOTONIC, shared by the processes):

- the pacer (it wraps ``paced_steps`` and its queue): when it woke with
  records due, handed the message to gRPC, and gRPC's request thread took it;
- the broker (this module is its ``__main__`` and patches the handlers): a
  ProduceStream message's ``_produce_one`` entered and returned (the append
  done), each Subscribe push's reply built (the offsets it carries); its event
  loop's stalls (a 1 ms probe that wakes > 1 ms late), its cyclic GC passes
  (``gc.callbacks``), the CPU time of each event-loop callback over 0.3 ms and
  of each call of its background work (flusher turn, checkpoint, periodic
  flush and maintain), and its CPU per thread (``/proc/self/task``);
- the tail: each record's receive time; the pacer's and the tail's CPU.

Per record the stages are: intended send -> the pacer woke (the linger is 1 ms
of it) -> handed to gRPC -> gRPC's thread took it -> the broker read it ->
appended -> push built -> received. It prints per variant the p50 / p99
end-to-end, the median (and p90) of each stage for all records and for the
slowest 1 %, how late the pacer woke, the share of the slowest 1 % whose path
overlapped a broker loop stall or a GC pass, and the CPU figures above (which
the machine's other load disturbs far less than wall-clock ones).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

_LINE = re.compile(rb"logstore listening grpc=(\S+) metrics=(\S+)")
_OUT_ENV = "W4_STALLS_OUT"


# ---- the broker side (this module as the broker's __main__) -----------------------------------


def _broker_main() -> int:
    """Run the broker with the stage stamps patched in; dump them at exit."""
    import asyncio

    from logstore.broker import _server
    from logstore.broker.handlers import fetch, produce

    produced: list[tuple[int, int]] = []  # (_produce_one entered, returned)
    pushed: list[tuple[int, int, int]] = []  # (written, first offset, next offset)
    ready: list[tuple[int, int]] = []  # (a push's reply built, next offset)
    stalls: list[tuple[int, int]] = []  # (probe due, woke)
    gcs: list[tuple[int, int, int]] = []  # (start, end, generation)
    now = time.monotonic_ns
    real_one = produce.ProduceHandlers._produce_one

    async def produce_one(self: Any, raw: bytes, *a: Any, **k: Any) -> Any:
        t0 = now()
        try:
            return await real_one(self, raw, *a, **k)
        finally:
            produced.append((t0, now()))

    produce.ProduceHandlers._produce_one = produce_one  # type: ignore[method-assign]
    real_account = fetch.FetchHandlers._account_read

    def account(self: Any, name: str, result: Any, offset: int) -> Any:
        if name == "Subscribe":
            pushed.append((now(), offset, result.next_offset))
        return real_account(self, name, result, offset)

    fetch.FetchHandlers._account_read = account  # type: ignore[method-assign]
    real_reply = fetch._frames_reply

    def frames_reply(result: Any, log_end_offset: int) -> bytes:
        ready.append((now(), result.next_offset))
        return real_reply(result, log_end_offset)

    fetch._frames_reply = frames_reply
    gc_start = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = now()
        else:
            gcs.append((gc_start[0], now(), info["generation"]))

    gc.callbacks.append(on_gc)

    threads: list[tuple[int, dict[str, int]]] = []  # (when, thread -> CPU ticks)

    def thread_cpu() -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        ticks = {}
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                f = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = names.get(int(task.name), (task / "comm").read_text().strip())
                ticks[f"{name} {task.name}"] = int(f[11]) + int(f[12])
        threads.append((now(), ticks))

    tick = [now()]
    caught: dict[str, int] = {}  # the loop thread's stack when it had not ticked for 3 ms
    caught_at: list[tuple[int, int, str]] = []  # (when, since the last tick, stack)
    loop_tid = threading.get_ident()

    def watchdog() -> None:
        seen = 0
        while True:
            time.sleep(0.001)
            t = tick[0]
            if t != seen and now() - t > 3_000_000:
                seen = t
                frame = sys._current_frames().get(loop_tid)
                where = []
                while frame is not None and len(where) < 6:
                    code = frame.f_code
                    where.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
                    frame = frame.f_back
                key = " < ".join(where)
                caught[key] = caught.get(key, 0) + 1
                caught_at.append((now(), now() - t, key))

    if os.environ.get("W4S_WATCHDOG"):
        threading.Thread(target=watchdog, daemon=True, name="w4s-watchdog").start()

    async def probe() -> None:
        last = 0
        while True:
            if now() - last > 1_000_000_000:
                last = now()
                thread_cpu()
            due = now() + 1_000_000
            await asyncio.sleep(0.001)
            woke = tick[0] = now()
            if woke - due > 1_000_000:
                stalls.append((due, woke))

    # CPU time (the machine's other load barely moves it) of each event-loop
    # callback over 0.3 ms, and of each call of the broker's background work
    slow_callbacks: dict[str, list[int]] = {}
    work_cpu: dict[str, list[int]] = {}
    cpu_ns = time.thread_time_ns
    real_run = asyncio.events.Handle._run

    def run(self: Any) -> None:
        c0 = cpu_ns()
        real_run(self)
        used = cpu_ns() - c0
        if used > 300_000:
            cb = self._callback
            key = getattr(cb, "__qualname__", None) or type(cb).__name__
            coro = getattr(getattr(cb, "__self__", None), "get_coro", None)
            if coro is not None:
                key = f"{key} ({getattr(coro(), '__qualname__', '?')})"
            slow_callbacks.setdefault(key, []).append(used)

    asyncio.events.Handle._run = run  # type: ignore[method-assign]
    from logstore.storage import _group_commit, _store

    def timed(owner: Any, attr: str) -> None:
        real = getattr(owner, attr)

        def call(*a: Any, **k: Any) -> Any:
            c0 = cpu_ns()
            try:
                return real(*a, **k)
            finally:
                work_cpu.setdefault(f"{owner.__name__}.{attr}", []).append(cpu_ns() - c0)

        setattr(owner, attr, call)

    for owner, attr in (
        (_store.Store, "flush"),
        (_store.Store, "maintain"),
        (_store.Store, "_maybe_checkpoint"),
        (_group_commit.Flusher, "_turn"),
    ):
        timed(owner, attr)
    real_periodic = _server.Broker.start_periodic

    def start_periodic(self: Any) -> None:
        real_periodic(self)
        # trial settings (a variant's switch_us=, gc_freeze=, gc_gen0=)
        if os.environ.get("W4S_SWITCH_US"):
            sys.setswitchinterval(int(os.environ["W4S_SWITCH_US"]) / 1e6)
        if os.environ.get("W4S_GC_GEN0"):
            gc.set_threshold(int(os.environ["W4S_GC_GEN0"]), *gc.get_threshold()[1:])
        if os.environ.get("W4S_GC_FREEZE"):
            gc.freeze()
        self._tasks.append(asyncio.get_running_loop().create_task(probe()))

    _server.Broker.start_periodic = start_periodic  # type: ignore[method-assign]
    try:
        return _server.serve_main(*sys.argv[1:4])
    finally:
        out = {
            "caught": caught,
            "caught_at": caught_at,
            "slow_callbacks": slow_callbacks,
            "work_cpu": work_cpu,
            "threads": threads,
            "produced": produced,
            "pushed": pushed,
            "ready": ready,
            "stalls": stalls,
            "gcs": gcs,
        }
        Path(os.environ[_OUT_ENV]).write_text(json.dumps(out))


# ---- the client side --------------------------------------------------------------------------


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _client_settings(opts: dict[str, Any]) -> None:
    """A variant's client-side trial settings (client_switch_us=)."""
    if opts.get("client_switch_us"):
        sys.setswitchinterval(int(opts["client_switch_us"]) / 1e6)


def _produce(addr: str, opts: dict[str, Any], go: Any, out: Any) -> None:
    _client_settings(opts)
    from benchmarks import systems
    from benchmarks.systems.logstore_sys import paced

    real = systems.paced_steps
    handed: list[tuple[int, int, int]] = []  # (handed to gRPC, first index, end index)

    t0: list[int] = []  # the first record's stamp: its intended send time

    def stamped(*a: Any, **k: Any) -> Any:
        index = 0
        for wait_s, vals in real(*a, **k):
            if vals and not t0:
                t0.append(int.from_bytes(vals[0][:8], "little"))
            woke = time.monotonic_ns()
            yield wait_s, vals
            if vals:  # resumed after the message went into gRPC's request queue
                handed.append((time.monotonic_ns(), index, index + len(vals), woke))
                index += len(vals)

    systems.paced_steps = stamped
    import queue

    taken: list[int] = []  # gRPC's request thread took message k from the pacer's queue
    real_get = queue.Queue.get

    def get(self: Any, *a: Any, **k: Any) -> Any:
        item = real_get(self, *a, **k)
        if item is not None:
            taken.append(time.monotonic_ns())
        return item

    queue.Queue.get = get  # type: ignore[method-assign]
    args = {"params": {"grpc": addr}, "size": 100, "durable": opts["acks"] == "all"}
    args.update({k: opts[k] for k in ("rate", "seconds", "topic", "linger_ms")})
    c0 = _cpu_s()
    res = paced(args, go.wait)
    cpu = (_cpu_s() - c0) / (res["end"] - res["start"])
    handed = [(*h, taken[k]) for k, h in enumerate(handed)]
    out.put(("producer", (t0[0], handed, cpu)))


def _consume(addr: str, opts: dict[str, Any], go: Any, out: Any) -> None:
    from benchmarks.systems.logstore_sys import tail

    _client_settings(opts)
    n = int(opts["rate"] * opts["seconds"])
    args = {"params": {"grpc": addr}, "n": n, "topic": opts["topic"]}
    c0 = _cpu_s()
    res = tail({**args, "deadline_s": opts["seconds"] + 30}, go.set)
    cpu = (_cpu_s() - c0) / (res["end"] - res["start"])
    out.put(("consumer", (res["lat_ns"], cpu)))


def _run_once(addr: str, opts: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_consume, args=(addr, opts, go, out)),
        ctx.Process(target=_produce, args=(addr, opts, go, out)),
    ]
    for p in procs:
        p.start()
    res = dict(out.get(timeout=opts["seconds"] + 120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    t0, handed, pcpu = res["producer"]
    lat, ccpu = res["consumer"]
    return (t0, handed), np.asarray(lat), (pcpu, ccpu)


class _Broker:
    def __init__(self, name: str, settings: str, tmp: Path) -> None:
        self.name = name
        self.client = {
            k: v for k, v in (kv.split("=", 1) for kv in filter(None, settings.split(",")))
        }
        self.out = tmp / f"{name}.json"
        env = dict(os.environ, **{_OUT_ENV: str(self.out)})
        for kv in filter(None, settings.split(",")):
            k, v = kv.split("=", 1)
            env[f"LOGSTORE_{k.upper()}"] = env[f"W4S_{k.upper()}"] = v
        args = [sys.executable, "-m", "benchmarks.w4_stalls", "--serve", str(tmp / name)]
        args += ["127.0.0.1:0", "127.0.0.1:0"]
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        m = _LINE.match(self.proc.stdout.readline())
        if not m:
            self.proc.kill()
            raise RuntimeError(f"broker {name} did not start: {(tmp / f'{name}.log').read_text()}")
        self.addr = m.group(1).decode()

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


def _stages(
    t0: int,
    handed: list[Any],
    lat: np.ndarray,
    rate: float,
    data: dict[str, Any],
    window: tuple[int, int],
    linger_ms: float,
) -> dict[str, Any]:
    """Per record: the stage durations (ns) and end-to-end latency; see the module docstring."""
    n = len(lat)
    lo, hi = window
    produced = [p for p in data["produced"] if lo <= p[0] <= hi]
    pushed = [p for p in data["ready"] if lo <= p[0] <= hi]
    interval = 1e9 / rate
    msg_of = np.zeros(n, dtype=np.int64)
    handed_at = np.zeros(n, dtype=np.int64)
    woke_at = np.zeros(n, dtype=np.int64)
    taken_at = np.zeros(n, dtype=np.int64)
    for k, (t, a, b, woke, took) in enumerate(handed):
        msg_of[a:b] = k
        handed_at[a:b] = t
        woke_at[a:b] = woke
        taken_at[a:b] = took
    if len(produced) < len(handed):
        raise RuntimeError(f"broker saw {len(produced)} messages, pacer sent {len(handed)}")
    entered = np.array([p[0] for p in produced])[msg_of]
    appended = np.array([p[1] for p in produced])[msg_of]
    push_next = [p[1] for p in pushed]
    push_at = np.array([p[0] for p in pushed])
    pidx = np.array([bisect.bisect_right(push_next, i) for i in range(n)])
    pushed_at = push_at[np.minimum(pidx, len(push_at) - 1)]
    return {
        "e2e": lat,
        "handed": handed_at,
        "woke": woke_at,
        "taken": taken_at,
        # each message: the pacer woke this long after its oldest record's linger ended
        "late": np.array(
            [w - (t0 + a * interval + linger_ms * 1e6) for _t, a, _b, w, _took in handed]
        ),
        "entered": entered,
        "appended": appended,
        "pushed": pushed_at,
        # as the pacer stamps them (paced_steps)
        "intended": (t0 + np.arange(n) * interval).astype(np.int64),
        "stalls": [s for s in data["stalls"] if lo <= s[0] <= hi],
        "gcs": [g for g in data["gcs"] if lo <= g[0] <= hi],
        "caught_at": [c for c in data.get("caught_at", []) if lo <= c[0] <= hi],
    }


def _report(name: str, runs: list[dict[str, Any]]) -> None:
    lat = np.concatenate([r["e2e"] for r in runs]) / 1e6
    each = ", ".join(f"{np.percentile(r['e2e'], 99) / 1e6:.2f}" for r in runs)
    print(
        f"{name}: p50 {np.percentile(lat, 50):.2f} ms p99 {np.percentile(lat, 99):.2f} ms "
        f"(each run's p99: {each})"
    )
    names = (
        "pacer woke",
        "pacer send",
        "to grpc thread",
        "to broker",
        "append",
        "to push",
        "to consumer",
    )
    alls: dict[str, list[np.ndarray]] = {k: [] for k in names}
    slows: dict[str, list[np.ndarray]] = {k: [] for k in names}
    overlap_stall, overlap_gc, slow_n = 0, 0, 0
    stall_ms: list[float] = []
    gc_ms: list[float] = []
    for r in runs:
        e2e = r["e2e"]
        received = r["intended"] + e2e
        st = {
            "pacer woke": r["woke"] - r["intended"],
            "pacer send": r["handed"] - r["woke"],
            "to grpc thread": r["taken"] - r["handed"],
            "to broker": r["entered"] - np.maximum(r["taken"], r["handed"]),
            "append": r["appended"] - r["entered"],
            "to push": r["pushed"] - r["appended"],
            "to consumer": received - r["pushed"],
        }
        slow = e2e >= np.percentile(e2e, 99)
        slow_n += int(slow.sum())
        for k in names:
            alls[k].append(st[k])
            slows[k].append(st[k][slow])
        stalls = np.array(r["stalls"]).reshape(-1, 2)
        gcs = np.array(r["gcs"]).reshape(-1, 3)
        for i in np.flatnonzero(slow):
            a, b = r["intended"][i], received[i]
            if stalls.size and np.any((stalls[:, 0] < b) & (stalls[:, 1] > a)):
                overlap_stall += 1
            if gcs.size and np.any((gcs[:, 0] < b) & (gcs[:, 1] > a)):
                overlap_gc += 1
        stall_ms += list((stalls[:, 1] - stalls[:, 0]) / 1e6) if stalls.size else []
        big = [
            f"{(a - r['intended'][0]) / 1e6:.0f}+{(b - a) / 1e6:.0f}"
            for a, b in stalls.tolist()
            if b - a > 5_000_000
        ]
        if big:
            print(f"  loop stalls > 5 ms (ms after the first record is due + length): {big[:8]}")
        for when, since, key in r["caught_at"]:
            at = (when - r["intended"][0]) / 1e6
            if 0 < at < (r["intended"][-1] - r["intended"][0]) / 1e6:
                print(f"    watchdog at {at:.0f} ms, {since / 1e6:.0f} ms without a tick: {key}")
        gc_ms += list((gcs[:, 1] - gcs[:, 0]) / 1e6) if gcs.size else []
    late = np.concatenate([r["late"] for r in runs]) / 1e3
    print(
        "  pacer woke late, per message, us: p50 {:.0f} p90 {:.0f} p99 {:.0f}; "
        "> 0.5 ms: {:.1f} %".format(*np.percentile(late, [50, 90, 99]), 100 * np.mean(late > 500))
    )
    row_all = "  ".join(f"{k} {np.median(np.concatenate(alls[k])) / 1e3:.0f}" for k in names)
    print(f"  all records, median us:  {row_all}")
    cat = {k: np.concatenate(slows[k]) / 1e3 for k in names}
    print("  slowest 1 %, median us:  " + "  ".join(f"{k} {np.median(cat[k]):.0f}" for k in names))
    print(
        "  slowest 1 %, p90 us:     "
        + "  ".join(f"{k} {np.percentile(cat[k], 90):.0f}" for k in names)
    )
    top = max(names, key=lambda k: float(np.median(cat[k])))
    print(f"  largest slow stage: {top}")
    print(
        f"  slowest 1 % overlapping a broker loop stall > 1 ms: {overlap_stall}/{slow_n}; "
        f"a GC pass: {overlap_gc}/{slow_n}"
    )
    n_runs_s = len(runs)
    if stall_ms:
        print(
            f"  loop stalls > 1 ms: {len(stall_ms) / n_runs_s:.0f}/run, "
            f"median {statistics.median(stall_ms):.2f} ms, max {max(stall_ms):.2f} ms"
        )
    if gc_ms:
        print(
            f"  GC passes: {len(gc_ms) / n_runs_s:.0f}/run, "
            f"median {statistics.median(gc_ms):.3f} ms, max {max(gc_ms):.2f} ms"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        sys.exit(_broker_main())
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--acks", default="1,all")
    ap.add_argument("--linger-ms", type=float, default=1.0, help="the pacer's (W4's row: 1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], help="NAME=k=v,k=v")
    ap.add_argument("--fifo", action="store_true", help="SCHED_FIFO 5 for every process (root)")
    a = ap.parse_args()
    if a.fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))  # inherited by the children
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in (a.variant or ["default"])]
    from logstore.client import Admin

    with tempfile.TemporaryDirectory(prefix="w4-stalls-") as tmp:
        brokers = [_Broker(name, settings, Path(tmp)) for name, settings in variants]
        windows: dict[tuple[str, str], list[Any]] = {}
        print(f"load average at start: {os.getloadavg()}", flush=True)
        try:
            for run in range(a.runs):
                for acks in a.acks.split(","):
                    for b in brokers:
                        topic = f"w4s-{run}-{acks}"
                        admin = Admin(b.addr)
                        admin.create_topic(topic, partitions=1)
                        admin.close()
                        opts = {"rate": a.rate, "seconds": a.seconds, "acks": acks}
                        opts.update(topic=topic, linger_ms=a.linger_ms, **b.client)
                        lo = time.monotonic_ns()
                        handed, lat, cpu = _run_once(b.addr, opts)
                        hi = time.monotonic_ns()
                        windows.setdefault((b.name, acks), []).append((handed, lat, (lo, hi), cpu))
                        print(
                            f"run {run + 1} {b.name} acks={acks}: p99 "
                            f"{np.percentile(lat, 99) / 1e6:.2f} ms",
                            flush=True,
                        )
        finally:
            datas = {b.name: b.stop() for b in brokers}
        print(f"load average at end: {os.getloadavg()}")
        for (name, acks), rows in windows.items():
            runs = []
            for handed, lat, win, _cpu in rows:
                runs.append(_stages(*handed, lat, a.rate, datas[name], win, a.linger_ms))
            _report(f"{name} acks={acks}", runs)
            _threads(datas[name]["threads"], [r[2] for r in rows])
            pcpu = statistics.median(r[3][0] for r in rows) * 1000
            ccpu = statistics.median(r[3][1] for r in rows) * 1000
            print(f"  client CPU ms/s: pacer {pcpu:.0f}, tail {ccpu:.0f}")
        for name, data in datas.items():
            print(f"{name}: event-loop callbacks over 0.3 ms of CPU (count, median / max ms):")
            slow = sorted(data["slow_callbacks"].items(), key=lambda kv: -sum(kv[1]))[:10]
            for key, used in slow:
                print(
                    f"  {len(used):5d}  {np.median(used) / 1e6:.2f} / {max(used) / 1e6:.2f}  {key}"
                )
            print(f"{name}: CPU per call of background work (calls, median / p99 / max ms):")
            for key, used in sorted(data["work_cpu"].items()):
                u = np.array(used) / 1e6
                print(
                    f"  {len(u):6d}  {np.median(u):.3f} / {np.percentile(u, 99):.3f} / "
                    f"{u.max():.3f}  {key}"
                )
            caught = sorted(data["caught"].items(), key=lambda kv: -kv[1])[:12]
            if caught:
                print(f"{name}: the loop thread's stack when it had not ticked for 3 ms (count):")
                for key, count in caught:
                    print(f"  {count:5d}  {key}")


def _threads(snaps: list[Any], windows: list[tuple[int, int]]) -> None:
    """The broker's CPU per thread over the runs (ms per second of run)."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    span = 0.0
    for lo, hi in windows:
        inside = [s for s in snaps if lo <= s[0] <= hi]
        if len(inside) < 2:
            continue
        (t0, a), (t1, b) = inside[0], inside[-1]
        span += (t1 - t0) / 1e9
        for k, v in b.items():
            used[k] = used.get(k, 0.0) + (v - a.get(k, 0)) * tick_ms
    top = sorted(used.items(), key=lambda kv: -kv[1])[:8]
    print(
        "  broker CPU ms/s by thread: "
        + ", ".join(f"{k} {v / max(span, 1e-9):.0f}" for k, v in top if v > 0)
    )


if __name__ == "__main__":
    main()
