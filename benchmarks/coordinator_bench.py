"""Coordinator cost: heartbeats/s with 1,000 members in 100 groups while W1 runs
(issue 10, "Speed").

``python -m benchmarks.coordinator_bench [--members 1000] [--groups 100] [--runs 3]``,
or the ``coordinator`` section of ``benchmarks.run``.

One broker (child process, default config: 3 s heartbeat interval, 45 s
session). Simulated members are raw gRPC ``ConsumerGroupHeartbeat`` loops
(``grpc.aio``, no client library) in ``PROCESSES`` processes; every group
subscribes to one 10-partition topic, so each of its 10 members gets one
partition; a simulated member releases a revoked partition at once (it
reports ``assignment - revoking`` as owned in its next heartbeat). Three
modes, each W1 (``Producer.send_many`` of ``w1_records`` x 100 B, acks=1, one
producer process, as in W1) run ``runs`` times:

* ``none``: W1 alone.
* ``paced``: every member heartbeats at the interval the broker gives in its
  reply (3 s, so ~333 heartbeats/s for 1,000 members), starting at a random
  phase.
* ``max``: every member heartbeats again as soon as its reply arrives, with at
  most ``MAX_INFLIGHT`` heartbeats in flight per process (4 x 32 = 128, below
  the broker's ``max_concurrent_requests`` 256): the rate the coordinator
  sustains, and what it costs the produce path.

In both, W1 starts 12 s (4 intervals) after every member has joined, so the
rebalances of the joins (each writes and fsyncs coordinator records) are over.

Figures: W1 records/s per mode, heartbeats/s answered during W1 (completion
times inside W1's window) and in the second before W1 started (the
coordinator without the produce load), heartbeat latency p50/p99 during W1,
and errors (any heartbeat that failed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._stats import Figure

NAME = "coordinator"
PROCESSES = 4
MAX_INFLIGHT = 32
TOPIC_PARTITIONS = 10
SIZE = 100


def _beater(
    bootstrap: str, topic: str, groups: list[str], mode: str, q: Any, stop: Any, seed: int
) -> None:
    """One process of simulated members (``groups[i]`` = member i's group)."""
    import asyncio

    import grpc

    from logstore.v1 import groups_pb2 as gpb
    from logstore.v1 import groups_pb2_grpc

    async def go() -> tuple[list[float], list[float], int]:
        done: list[float] = []
        lat: list[float] = []
        errors = 0
        rnd = random.Random(seed)
        sem = asyncio.Semaphore(MAX_INFLIGHT)
        async with grpc.aio.insecure_channel(bootstrap) as ch:
            stub = groups_pb2_grpc.GroupsStub(ch)

            async def beat(req: Any) -> Any:
                nonlocal errors
                async with sem:
                    t = time.monotonic()
                    try:
                        reply = await stub.ConsumerGroupHeartbeat(req, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        return None
                    now = time.monotonic()
                    done.append(now)
                    lat.append(now - t)
                    return reply

            async def member(group: str, joined: asyncio.Event) -> None:
                req = gpb.ConsumerGroupHeartbeatRequest(group_id=group, member_epoch=0)
                req.topic_names.names.append(topic)
                reply = None
                while reply is None and not stop.is_set():
                    reply = await beat(req)
                joined.set()
                if reply is None:
                    return
                mid, epoch = reply.member_id, reply.member_epoch
                interval = reply.heartbeat_interval_ms / 1000
                if mode == "paced":
                    await asyncio.sleep(rnd.random() * interval)
                while not stop.is_set():
                    owned = {(t.topic, p) for t in reply.assignment.topics for p in t.partitions}
                    owned -= {(t.topic, p) for t in reply.revoking.topics for p in t.partitions}
                    req = gpb.ConsumerGroupHeartbeatRequest(
                        group_id=group, member_id=mid, member_epoch=epoch
                    )
                    by: dict[str, list[int]] = {}
                    for t, p in owned:
                        by.setdefault(t, []).append(p)
                    for t, ps in by.items():
                        req.owned.topics.add(topic=t, partitions=sorted(ps))
                    got = await beat(req)
                    if got is not None:
                        reply, epoch = got, got.member_epoch
                        interval = got.heartbeat_interval_ms / 1000
                    if mode == "paced":
                        await asyncio.sleep(interval)
                await beat(
                    gpb.ConsumerGroupHeartbeatRequest(
                        group_id=group, member_id=mid, member_epoch=-1
                    )
                )

            events = [asyncio.Event() for _ in groups]
            tasks = [asyncio.create_task(member(g, e)) for g, e in zip(groups, events, strict=True)]
            for e in events:
                await e.wait()
            q.put(("joined", os.getpid()))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await asyncio.gather(*tasks)
        return done, lat, errors

    done, lat, errors = asyncio.run(go())
    q.put(("result", done, lat, errors))


def _start_beaters(
    bootstrap: str, topic: str, members: int, groups: int, mode: str, tag: str
) -> tuple[list[Any], Any, Any]:
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    names = [f"{tag}-g{i % groups}" for i in range(members)]
    procs = []
    for k in range(PROCESSES):
        p = ctx.Process(
            target=_beater,
            args=(bootstrap, topic, names[k::PROCESSES], mode, q, stop, k),
            daemon=True,
        )
        p.start()
        procs.append(p)
    for _ in procs:
        kind, *_ = q.get(timeout=300)
        assert kind == "joined", kind
    return procs, q, stop


def _stop_beaters(procs: list[Any], q: Any, stop: Any) -> tuple[list[float], list[float], int]:
    stop.set()
    done: list[float] = []
    lat: list[float] = []
    errors = 0
    for _ in procs:
        kind, d, lt, e = q.get(timeout=120)
        assert kind == "result", kind
        done += d
        lat += lt
        errors += e
    for p in procs:
        p.join(timeout=15)
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
    return done, lat, errors


def measure(
    members: int, groups: int, records: int, runs: int, workdir: Path, log: Any
) -> list[Figure]:
    import numpy as np

    from benchmarks._proc import run_workers
    from benchmarks.systems import worker
    from benchmarks.systems.logstore_sys import Broker
    from logstore.client import Admin

    modes = ("none", "paced", "max")
    labels = {
        "none": "W1 alone",
        "paced": f"{members:,} members / {groups} groups at the heartbeat interval",
        "max": f"{members:,} members / {groups} groups, max rate ({PROCESSES} x "
        f"{MAX_INFLIGHT} in flight)",
    }
    info = {"workload": NAME, "system": "logstore", "members": members, "groups": groups}
    w1 = {
        m: Figure(
            f"{NAME} W1 produce records/s",
            "records/s",
            info={**info, "mode": labels[m], "records": records, "size": SIZE},
        )
        for m in modes
    }
    hbs = {
        m: Figure(
            f"{NAME} heartbeats/s during W1", "heartbeats/s", info={**info, "mode": labels[m]}
        )
        for m in modes[1:]
    }
    alone = {
        m: Figure(
            f"{NAME} heartbeats/s without W1",
            "heartbeats/s",
            info={**info, "mode": labels[m]},
        )
        for m in modes[1:]
    }
    p50 = {
        m: Figure(
            f"{NAME} heartbeat latency p50",
            "ms",
            higher_is_better=False,
            info={**info, "mode": labels[m]},
        )
        for m in modes[1:]
    }
    p99 = {
        m: Figure(
            f"{NAME} heartbeat latency p99",
            "ms",
            higher_is_better=False,
            info={**info, "mode": labels[m]},
        )
        for m in modes[1:]
    }
    errs = {
        m: Figure(
            f"{NAME} failed heartbeats",
            "calls",
            higher_is_better=False,
            info={**info, "mode": labels[m]},
        )
        for m in modes[1:]
    }
    d = Path(tempfile.mkdtemp(prefix="coordinator-", dir=workdir))
    broker = Broker(d / "data", d / "broker.log")
    broker.start()
    addr = broker.grpc_address
    try:
        with Admin(addr) as admin:
            admin.create_topic("coord-subscribed", TOPIC_PARTITIONS)
            for run in range(runs):
                for mode in modes:
                    topic = f"coord-w1-{run}-{mode}"
                    admin.create_topic(topic, 1)
                    beaters = None
                    if mode != "none":
                        beaters = _start_beaters(
                            addr, "coord-subscribed", members, groups, mode, f"r{run}-{mode}"
                        )
                        # joins and the rebalances they cause write (and fsync) coordinator
                        # records; wait for the steady state (4 intervals of 3 s; with 2 s
                        # the max-rate window still overlapped the join storm: ~230/s
                        # instead of ~780/s). A tiny smoke run has too few members to need it.
                        time.sleep(12.0 if members >= 100 else 1.0)
                    quiet_end = time.monotonic()
                    args = {
                        "system": "logstore",
                        "op": "produce",
                        "params": {"grpc": addr},
                        "deadline_s": 180,
                        "impl": "auto",
                        "topic": topic,
                        "n": records,
                        "size": SIZE,
                        "durable": False,
                    }
                    try:
                        (r,) = run_workers(worker, [args], timeout_s=300)
                    finally:
                        got = _stop_beaters(*beaters) if beaters else None
                    rate = r["count"] / (r["end"] - r["start"])
                    w1[mode].values.append(rate)
                    line = f"{NAME} run {run + 1} {mode}: W1 {rate:,.0f} records/s"
                    if got is not None:
                        done, lat = np.asarray(got[0]), np.asarray(got[1])
                        inside = (done >= r["start"]) & (done <= r["end"])
                        hb = float(inside.sum()) / (r["end"] - r["start"])
                        lat_in = lat[inside] * 1000 if inside.any() else np.asarray([np.nan])
                        before = (done >= quiet_end - 1.0) & (done <= quiet_end)
                        alone[mode].values.append(float(before.sum()))
                        hbs[mode].values.append(hb)
                        p50[mode].values.append(float(np.percentile(lat_in, 50)))
                        p99[mode].values.append(float(np.percentile(lat_in, 99)))
                        errs[mode].values.append(float(got[2]))
                        line += (
                            f", {hb:,.0f} heartbeats/s ({before.sum():,} in the second "
                            f"before W1; p50 {p50[mode].values[-1]:.1f} ms, "
                            f"p99 {p99[mode].values[-1]:.1f} ms, {got[2]} failed)"
                        )
                    log(line)
                    admin.delete_topic(topic)
    finally:
        broker.stop()
        shutil.rmtree(d, ignore_errors=True)
    out: list[Figure] = [w1[m] for m in modes]
    for m in modes[1:]:
        out += [alone[m], hbs[m], p50[m], p99[m], errs[m]]
    return out


def run(ctx: Any) -> list[Figure]:
    """The ``coordinator`` section of ``benchmarks.run`` (sizes from ``ctx.scale``)."""
    s = ctx.scale
    return measure(s.coord_members, s.coord_groups, s.w1_records, ctx.runs, ctx.workdir, ctx.log)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report
    from benchmarks.machine import write_results

    p = argparse.ArgumentParser(prog="python -m benchmarks.coordinator_bench")
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    started = time.time()
    figs = measure(
        a.members,
        a.groups,
        a.records,
        a.runs,
        a.workdir or Path(tempfile.gettempdir()),
        lambda msg: print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True),
    )
    print(report.figures_table({"figures": [f.to_dict() for f in figs]}))
    if a.json is not None:
        write_results(a.json, figs, started, {"argv": argv, **vars(a), "json": str(a.json)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
