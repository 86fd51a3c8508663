"""W1 produce: 1,000,000 records of 100 B from one producer process.

logstore acks=1 and acks=all; Redis pipelined XADD with appendfsync no/always;
JetStream async publish (file storage, fsync ≤ 2 min). Records/s and MB/s,
plus the per-request (per pipeline) latency p50/p99 where the driver gives it.
"""

from __future__ import annotations

import numpy as np

from benchmarks._stats import Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, throughput_figures, timed

NAME = "W1"
TITLE = "produce 100 B records, 1 producer"
SIZE = 100


def run(ctx: Ctx, system: System) -> list[Figure]:
    n = ctx.scale.w1_records
    figs: list[Figure] = []
    for durable in system.durability_modes:
        system.set_durable(durable)
        info = {
            "workload": NAME,
            "system": system.name,
            "mode": system.label(durable),
            "durable": durable,
            "records": n,
            "size": SIZE,
            "bound": "grpc_unary_1mib" if not durable else "disk_seq_fdatasync",
        }
        counts = []
        p50 = Figure(f"{NAME} produce latency p50", "ms", higher_is_better=False, info=dict(info))
        p99 = Figure(f"{NAME} produce latency p99", "ms", higher_is_better=False, info=dict(info))
        for _ in range(ctx.runs):
            topic = new_topic("w1")
            system.create(topic)
            try:
                count, elapsed, res = timed(
                    ctx,
                    [
                        base_args(
                            ctx, system, "produce", topic=topic, n=n, size=SIZE, durable=durable
                        )
                    ],
                )
            finally:
                system.delete(topic)
            counts.append((count, elapsed))
            lat = res[0].get("lat_ns")
            if lat:
                a = np.asarray(lat) / 1e6
                p50.values.append(float(np.percentile(a, 50)))
                p99.values.append(float(np.percentile(a, 99)))
            info["impl"] = res[0].get("impl", "")
            ctx.log(
                f"{NAME} {system.name} {system.label(durable)}: {count / elapsed:,.0f} records/s"
            )
        figs += throughput_figures(f"{NAME} produce", info, counts, SIZE)
        for f in (p50, p99):
            if f.values:
                f.info["impl"] = info["impl"]
                f.info["per"] = "request" if system.name != "redis" else "pipeline of 1,000"
                figs.append(f)
    return figs
