"""W4 tail latency: produce at a fixed 2,000 and 20,000 records/s for 20 s with
one tailing consumer (another process); end-to-end latency = consumer receive
time - the record's intended send time (CLOCK_MONOTONIC, in the payload).

logstore: ProduceStream with linger 0 (each wake-up of the paced producer
sends the records due as one batch) and Subscribe, once with acks=1 and once
with acks=all. Redis: pipelined XADD of the records due + XREAD BLOCK.
JetStream: publish_async + ordered push consumer. p50/p99/p99.9 in ms; each
percentile is the median over the runs.
"""

from __future__ import annotations

import numpy as np

from benchmarks._stats import Figure, latency_percentiles_ms
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, timed

NAME = "W4"
TITLE = "end-to-end latency at a fixed rate"
SIZE = 100


def run(ctx: Ctx, system: System) -> list[Figure]:
    figs: list[Figure] = []
    seconds = ctx.scale.w4_seconds
    for durable in system.durability_modes:
        system.set_durable(durable)
        for rate in ctx.scale.w4_rates:
            n = int(rate * seconds)
            info = {
                "workload": NAME,
                "system": system.name,
                "mode": system.label(durable),
                "durable": durable,
                "rate": rate,
                "seconds": seconds,
                "size": SIZE,
                "bound": "grpc_unary_tiny",
            }
            pct: dict[str, Figure] = {
                k: Figure(
                    f"{NAME} {rate:,}/s latency {k}", "ms", higher_is_better=False, info=dict(info)
                )
                for k in ("p50", "p99", "p99.9")
            }
            delivered = Figure(f"{NAME} {rate:,}/s delivered", "%", info=dict(info))
            all_lat: list[np.ndarray] = []
            for _ in range(ctx.runs):
                topic = new_topic("w4")
                system.create(topic)
                tail = base_args(ctx, system, "tail", topic=topic, n=n, deadline_s=seconds + 30)
                prod = base_args(ctx, system, "paced", topic=topic, rate=rate, seconds=seconds)
                prod.update(size=SIZE, durable=durable)
                try:
                    _, _, res = timed(ctx, [tail, prod])
                except Exception as exc:
                    # one failed run (a broker error) loses this run only
                    ctx.fail(f"{NAME} {system.name} {system.label(durable)} {rate}/s", exc)
                    continue
                finally:
                    system.delete(topic)
                lat = np.asarray(res[0]["lat_ns"])
                all_lat.append(lat)
                p = latency_percentiles_ms(lat)
                for k, f in pct.items():
                    f.values.append(p[k])
                delivered.values.append(100.0 * res[0]["count"] / max(1, n))
                ctx.log(
                    f"{NAME} {system.name} {system.label(durable)} {rate}/s: "
                    f"p50 {p['p50']:.2f} ms p99 {p['p99']:.2f} ms p99.9 {p['p99.9']:.2f} ms "
                    f"({res[0]['count']:,}/{n:,} delivered)"
                )
            if not all_lat:
                continue
            # the distribution of the last run, for the plots (201 quantiles)
            q = np.linspace(0, 100, 201)
            pct["p50"].info["quantiles_ms"] = (
                (np.percentile(all_lat[-1], q) / 1e6).tolist() if all_lat[-1].size else []
            )
            figs += [*pct.values(), delivered]
    return figs
