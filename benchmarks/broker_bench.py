"""Broker end-to-end benchmark (issue 4, "Speed"): the broker in its own process,
clients over loopback gRPC with the raw API (the ``logstore.wire`` encoder, 4
requests in flight per producer), so the figures are the broker's, not the
client library's (benchmarks.client_bench measures that).

* produce 1,000,000 100-B records in 1 MiB batches, acks=1 and acks=all, with 1
  and 8 concurrent producer processes: records/s, MB/s, produce latency p50/p99
  per request;
* fetch them all back (raw frames): records/s, MB/s;
* broker CPU per MB produced, for batches filled up to max_batch_bytes with
  100 B, 1 KiB and 10 KiB records (~9,000 to ~100 per batch): the broker's cost
  must grow with batches, not records (target: max/min within 1.5x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._stats import MB, Figure
from benchmarks.systems.logstore_sys import Driver
from benchmarks.workloads import Ctx, base_args, new_topic, timed

SIZE = 100


def _fig(
    name: str, unit: str, info: dict[str, Any], values: list[float], higher: bool = True
) -> Figure:
    return Figure(
        name,
        unit,
        values=values,
        higher_is_better=higher,
        info={"workload": "broker", "system": "logstore", "impl": "raw gRPC", **info},
    )


def run(ctx: Ctx) -> list[Figure]:
    figs: list[Figure] = []
    n = ctx.scale.broker_records
    system = Driver()
    d = ctx.workdir / "broker-bench"
    d.mkdir(parents=True, exist_ok=True)
    system.start(d)
    try:
        for durable in (False, True):
            label = system.label(durable)
            for producers in (1, ctx.scale.w2_producers):
                recs, mbs, p50, p99, fetch_recs, fetch_mbs = [], [], [], [], [], []
                for _ in range(ctx.runs):
                    topic = new_topic("broker")
                    system.create(topic)
                    try:
                        args = [
                            base_args(
                                ctx, system, "produce", topic=topic, n=n // producers, size=SIZE
                            )
                            | {"durable": durable, "impl": "raw"}
                            for _ in range(producers)
                        ]
                        count, elapsed, res = timed(ctx, args)
                        recs.append(count / elapsed)
                        mbs.append(count * SIZE / elapsed / MB)
                        lat = (
                            np.concatenate([np.asarray(r["lat_ns"], dtype=np.int64) for r in res])
                            / 1e6
                        )
                        p50.append(float(np.percentile(lat, 50)))
                        p99.append(float(np.percentile(lat, 99)))
                        if producers == 1:
                            fa = base_args(
                                ctx, system, "replay", topic=topic, n=int(count), mode="frames"
                            )
                            c2, e2, r2 = timed(ctx, [fa | {"impl": "raw"}])
                            fetch_recs.append(c2 / e2)
                            fetch_mbs.append(r2[0]["bytes"] / e2 / MB)
                    finally:
                        system.delete(topic)
                    ctx.log(f"broker produce {label} x{producers}: {recs[-1]:,.0f} records/s")
                info = {"mode": label, "producers": producers, "size": SIZE, "records": n}
                bound = {"bound": "disk_seq_fdatasync" if durable else "grpc_unary_1mib"}
                figs += [
                    _fig(f"produce x{producers} records/s", "records/s", info | bound, recs),
                    _fig(f"produce x{producers} MB/s", "MB/s", info | bound, mbs),
                    _fig(f"produce x{producers} latency p50", "ms", info, p50, False),
                    _fig(f"produce x{producers} latency p99", "ms", info, p99, False),
                ]
                if fetch_recs:
                    fi = {
                        "mode": "Fetch, raw frames",
                        "size": SIZE,
                        "records": n,
                        "bound": "grpc_unary_1mib",
                    }
                    figs += [
                        _fig("fetch records/s", "records/s", fi, fetch_recs),
                        _fig("fetch MB/s", "MB/s", fi, fetch_mbs),
                    ]
        # broker CPU per MB, by record size (batches full, acks=1, one producer)
        total_bytes = n * SIZE
        cpu: dict[int, list[float]] = {}
        for size in (100, 1024, 10 * 1024):
            cpu[size] = []
            for _ in range(ctx.runs):
                topic = new_topic("cpu")
                system.create(topic)
                try:
                    c0 = system.cpu()
                    a = base_args(
                        ctx,
                        system,
                        "produce",
                        topic=topic,
                        n=max(1, total_bytes // size),
                        size=size,
                    )
                    count, _, _ = timed(ctx, [a | {"durable": False, "impl": "raw"}])
                    c1 = system.cpu()
                finally:
                    system.delete(topic)
                cpu[size].append((c1 - c0) / (count * size / MB) * 1000)
            figs.append(
                _fig(
                    f"broker CPU per MB, {size} B records",
                    "ms/MB",
                    {"mode": "acks=1", "size_b": size},
                    cpu[size],
                    False,
                )
            )
            ctx.log(f"broker CPU per MB with {size} B records: {np.median(cpu[size]):.2f} ms")
        meds = [float(np.median(v)) for v in cpu.values()]
        # CPU time has 10 ms resolution (CLK_TCK): tiny runs may read 0
        ratio = max(meds) / min(meds) if min(meds) > 0 else float("nan")
        figs.append(
            _fig(
                "broker CPU per MB, max/min over record sizes",
                "x",
                {"mode": "target <= 1.5"},
                [ratio],
                False,
            )
        )
    finally:
        system.stop()
    return figs
