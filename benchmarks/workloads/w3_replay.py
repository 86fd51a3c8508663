"""W3 replay: read W1's 1,000,000 100-B records back from the beginning.

The data is written once (untimed, page-cache durability) and read ``runs``
times: logstore ``Consumer`` as objects and as numpy columns (and raw stored
frames, the floor of any client), Redis ``XRANGE`` in chunks of 10,000,
JetStream ordered push consumer. Records/s.
"""

from __future__ import annotations

from benchmarks._stats import Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, throughput_figures, timed

NAME = "W3"
TITLE = "replay 100 B records from the beginning"
SIZE = 100
MODES = {"logstore": ("objects", "columns", "frames"), "redis": ("XRANGE",), "nats": ("ordered",)}


def run(ctx: Ctx, system: System) -> list[Figure]:
    n = ctx.scale.w3_records
    topic = new_topic("w3")
    system.create(topic)
    figs: list[Figure] = []
    try:
        system.set_durable(False)
        timed(ctx, [base_args(ctx, system, "produce", topic=topic, n=n, size=SIZE, durable=False)])
        for mode in MODES[system.name]:
            info = {
                "workload": NAME,
                "system": system.name,
                "mode": mode,
                "records": n,
                "size": SIZE,
                "bound": "grpc_stream_1mib",
            }
            counts = []
            for _ in range(ctx.runs):
                count, elapsed, res = timed(
                    ctx, [base_args(ctx, system, "replay", topic=topic, n=n, mode=mode)]
                )
                if count < n:
                    raise RuntimeError(f"{system.name} replay read {count:,} of {n:,} records")
                counts.append((count, elapsed))
                info["impl"] = res[0].get("impl", "")
                ctx.log(f"{NAME} {system.name} {mode}: {count / elapsed:,.0f} records/s")
            figs += throughput_figures(f"{NAME} replay", info, counts, SIZE)
    finally:
        system.delete(topic)
    return figs
