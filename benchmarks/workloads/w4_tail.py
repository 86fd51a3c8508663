"""W4 tail latency: produce at a fixed 2,000 and 20,000 records/s for 20 s with
one tailing consumer (another process); end-to-end latency = consumer receive
time - the record's intended send time (CLOCK_MONOTONIC, in the payload).

logstore: ProduceStream and Subscribe, once with acks=1 and once with
acks=all, each with the pacer's linger 1 ms (the records due within 1 ms of
the oldest go as one batch: the figures named ``W4 <rate>/s latency ...``)
and with linger 0 (each wake-up of the pacer sends the records due at once:
``W4 <rate>/s linger 0 latency ...``, the issue's "p50 <= 1 ms with
linger_ms=0"). Redis: pipelined XADD of the records due + XREAD BLOCK.
JetStream: publish_async + ordered push consumer. p50/p99/p99.9 in ms; each
percentile is the median over the runs. W4C (``w4_client``) measures the
same through the ``Producer`` and ``Consumer`` that users call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._stats import Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, paced_latency_runs

NAME = "W4"
TITLE = "end-to-end latency at a fixed rate"
SIZE = 100
#: the logstore pacer's linger (ms): 1 is the published W4 row, 0 the
#: issue's linger_ms=0 target; the peers have no such setting (one row each)
LOGSTORE_LINGERS_MS = (1, 0)


def run(ctx: Ctx, system: System) -> list[Figure]:
    figs: list[Figure] = []
    seconds = ctx.scale.w4_seconds
    lingers: tuple[int | None, ...] = LOGSTORE_LINGERS_MS if system.name == "logstore" else (None,)
    for durable in system.durability_modes:
        system.set_durable(durable)
        for rate in ctx.scale.w4_rates:
            for linger in lingers:
                figs += _one(ctx, system, durable, rate, seconds, linger)
    return figs


def _one(
    ctx: Ctx, system: System, durable: bool, rate: int, seconds: float, linger: int | None
) -> list[Figure]:
    n = int(rate * seconds)
    # linger 1 keeps the names of earlier runs; linger 0 has its own
    where = f"{rate:,}/s" if linger in (None, 1) else f"{rate:,}/s linger {linger}"
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
    if linger is not None:
        info["linger_ms"] = linger
    tail = {"op": "tail", "n": n, "deadline_s": seconds + 30}
    prod: dict[str, Any] = {"op": "paced", "rate": rate, "seconds": seconds}
    prod.update(size=SIZE, durable=durable)
    if linger is not None:
        prod["linger_ms"] = linger
    figs, all_lat = paced_latency_runs(ctx, system, durable, NAME, where, info, "w4", tail, prod)
    if not all_lat:
        return []
    # the distribution of the last run, for the plots (201 quantiles)
    q = np.linspace(0, 100, 201)
    figs[0].info["quantiles_ms"] = (
        (np.percentile(all_lat[-1], q) / 1e6).tolist() if all_lat[-1].size else []
    )
    return figs
