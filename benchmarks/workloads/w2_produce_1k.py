"""W2 produce: 100,000 records of 1 KiB, one producer and 8 concurrent producer
processes (each sending 1/8 of the records to the same topic/stream), MB/s."""

from __future__ import annotations

from benchmarks._stats import Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, throughput_figures, timed

NAME = "W2"
TITLE = "produce 1 KiB records, 1 and 8 producers"
SIZE = 1024


def run(ctx: Ctx, system: System) -> list[Figure]:
    n = ctx.scale.w2_records
    figs: list[Figure] = []
    for durable in system.durability_modes:
        system.set_durable(durable)
        for producers in (1, ctx.scale.w2_producers):
            info = {
                "workload": NAME,
                "system": system.name,
                "mode": system.label(durable),
                "durable": durable,
                "records": n,
                "size": SIZE,
                "producers": producers,
                "bound": "grpc_unary_1mib" if not durable else "disk_seq_fdatasync",
            }
            counts = []
            for _ in range(ctx.runs):
                topic = new_topic("w2")
                system.create(topic)
                per = n // producers
                args = [
                    base_args(
                        ctx, system, "produce", topic=topic, n=per, size=SIZE, durable=durable
                    )
                    for _ in range(producers)
                ]
                try:
                    count, elapsed, res = timed(ctx, args)
                finally:
                    system.delete(topic)
                counts.append((count, elapsed))
                info["impl"] = res[0].get("impl", "")
                ctx.log(
                    f"{NAME} {system.name} {system.label(durable)} x{producers}: "
                    f"{count * SIZE / elapsed / 1e6:,.1f} MB/s"
                )
            figs += throughput_figures(f"{NAME} produce x{producers}", info, counts, SIZE)
    return figs
