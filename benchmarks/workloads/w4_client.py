"""W4C tail latency through the client library: what a new user sees.

Paced ``Producer.send()`` calls (one per record, when it is due) at 2,000 and
20,000 records/s for 10 s with one tailing ``Consumer`` (another process)
polling partition 0: acks=all (the default) for ``linger_ms`` 0, 1 and 5, and
acks=1 for ``linger_ms`` 0 (the issue's p50 target is for both); end-to-end latency =
the time ``poll()`` returned the record - its intended send time
(CLOCK_MONOTONIC, in the payload), so a producer that falls behind shows up as
latency. ``delivered`` = records consumed within 10 s of the end of sending.
W4 (``w4_tail``) measures the raw ``ProduceStream`` / ``Subscribe`` path; this
one the ``Producer`` and ``Consumer`` that users call (issue 12, gap 3).
logstore only (the peers have no such client here). p50/p99/p99.9 in ms; each
percentile is the median over the runs.
"""

from __future__ import annotations

from benchmarks._stats import Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, paced_latency_runs

NAME = "W4C"
TITLE = "end-to-end latency through Producer.send and Consumer.poll"
SIZE = 100
LINGERS_MS = (0, 1, 5)
#: acks=1 rows: linger 0 only (the p50 target's setting; a full sweep doubles the run)
LINGERS_MS_ACKS_1 = (0,)
#: how long after the last send the consumer may still take to count a record delivered
GRACE_S = 10.0
#: seconds of sending per run (issue 12's 10 s; shorter if the scale's W4 is)
SECONDS = 10.0


def run(ctx: Ctx, system: System, lingers: tuple[int, ...] = LINGERS_MS) -> list[Figure]:
    figs: list[Figure] = []
    seconds = min(SECONDS, ctx.scale.w4_seconds)
    for durable in sorted(system.durability_modes, reverse=True):  # acks=all first
        system.set_durable(durable)
        for rate in ctx.scale.w4_rates:
            for linger in lingers if durable else LINGERS_MS_ACKS_1:
                figs += _one(ctx, system, durable, rate, seconds, linger)
    return figs


def _one(
    ctx: Ctx, system: System, durable: bool, rate: int, seconds: float, linger: int
) -> list[Figure]:
    n = int(rate * seconds)
    info = {
        "workload": NAME,
        "system": system.name,
        "mode": f"{system.label(durable)} linger_ms={linger}",
        "durable": durable,
        "rate": rate,
        "seconds": seconds,
        "size": SIZE,
        "linger_ms": linger,
        "bound": "grpc_unary_tiny",
    }
    where = f"{rate:,}/s linger {linger}"
    tail = {"op": "client_tail", "n": n, "deadline_s": seconds + GRACE_S + 1.0}
    prod = {"op": "client_paced", "rate": rate, "seconds": seconds}
    prod.update(size=SIZE, durable=durable, linger_ms=linger)
    figs, _ = paced_latency_runs(ctx, system, durable, NAME, where, info, "w4c", tail, prod)
    return figs
