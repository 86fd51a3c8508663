"""The workloads W1-W7 of the side-by-side benchmark (issue 6), one module each.

Every workload module has ``NAME``, ``TITLE`` and ``run(ctx, system) ->
list[Figure]``; it runs ``ctx.runs`` times with a fresh topic (stream) per run,
deletes it afterwards, and bounds every run in time (``ctx.deadline_s``) and in
count (``ctx.scale``). Figures carry ``info`` = workload, system, mode, and
the machine limit that bounds them (``bound``), for the report's "% of limit".

W7 (group drain, issue 10) runs against Redis, JetStream and logstore (its
logstore side is skipped with one line if ``logstore.client.GroupConsumer`` is
missing). W8 (work queue) and W8R (redelivery after a kill -9), issue 11, run
against RabbitMQ, Redis and logstore (logstore skipped with one line while
``logstore.client.ShareConsumer`` is missing).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._proc import aggregate_rate, run_workers
from benchmarks._stats import MB, Figure
from benchmarks.systems import worker
from benchmarks.systems._base import System

_topic_ids = itertools.count(1)


@dataclass
class Scale:
    """Sizes of one run; ``FULL`` is issue 6's, ``QUICK`` is ``make bench``'s."""

    w1_records: int = 1_000_000
    w2_records: int = 100_000
    w2_producers: int = 8
    w3_records: int = 1_000_000
    w4_rates: tuple[int, ...] = (2_000, 20_000)
    w4_seconds: float = 20.0
    w5_partitions: tuple[int, ...] = (1, 10, 100, 1_000)
    w5_records: int = 200_000
    #: W5's consumer side (logstore): partition counts read back both ways.
    w5_consume_partitions: tuple[int, ...] = (1, 10, 100, 1_000)
    w6_bytes: tuple[int, ...] = (256 << 20, 1 << 30)
    storage_bytes: int = 256 << 20
    broker_records: int = 1_000_000
    client_records: int = 1_000_000
    w7_records: int = 1_000_000
    w7_members: int = 4
    #: Consumer-group sections (issue 10): rebalance, compaction, coordinator.
    rebalance_members: int = 8
    rebalance_heartbeat_ms: int = 3_000
    compaction_keys: int = 10_000_000
    #: Batch compression (issue 14): W1-corpus records (W2-corpus gets a quarter).
    compression_records: int = 800_000
    coord_members: int = 1_000
    coord_groups: int = 100
    #: W8 work queue (issue 11): tasks drained, worker processes, the paced rate and
    #: how long it runs (10 s at 5,000/s = 50,000 tasks a latency run).
    w8_tasks: int = 200_000
    w8_workers: int = 8
    w8_rate: int = 5_000
    w8_latency_seconds: float = 10.0
    #: W8R redelivery: tasks the killed worker holds, and the visibility timeout
    #: (logstore lock, Redis XAUTOCLAIM min-idle; RabbitMQ has none).
    w8r_tasks: int = 100
    w8r_visibility_ms: int = 5_000


FULL = Scale()
QUICK = Scale(
    w1_records=200_000,
    w2_records=50_000,
    w3_records=200_000,
    w4_seconds=5.0,
    w5_partitions=(1, 10, 100, 1_000),
    w5_records=50_000,
    w6_bytes=(64 << 20, 256 << 20),
    storage_bytes=64 << 20,
    broker_records=300_000,
    client_records=300_000,
    w7_records=200_000,
    compaction_keys=1_000_000,
    compression_records=400_000,
    w8_tasks=50_000,
    w8_latency_seconds=5.0,
)
TINY = Scale(
    w1_records=2_000,
    w2_records=400,
    w2_producers=2,
    w3_records=2_000,
    w4_rates=(500,),
    w4_seconds=0.5,
    w5_partitions=(1, 10),
    w5_records=1_000,
    w5_consume_partitions=(10,),
    w6_bytes=(1 << 20,),
    storage_bytes=2 << 20,
    broker_records=2_000,
    client_records=2_000,
    w7_records=2_000,
    rebalance_members=3,
    rebalance_heartbeat_ms=300,
    compaction_keys=20_000,
    compression_records=4_000,
    coord_members=20,
    coord_groups=4,
    w8_tasks=2_000,
    w8_workers=2,
    w8_rate=500,
    w8_latency_seconds=0.5,
    w8r_tasks=10,
    w8r_visibility_ms=1_000,
)


@dataclass
class Ctx:
    workdir: Path
    runs: int = 3
    scale: Scale = field(default_factory=Scale)
    #: Upper bound on one timed run of one worker.
    deadline_s: float = 180.0
    verbose: bool = True
    #: logstore client side: "auto" (client library if present), "client" or "raw".
    impl: str = "auto"
    #: Failures of one part of a workload that let the rest go on (the runner reports them).
    errors: list[str] = field(default_factory=list)
    #: Parts of a workload skipped on purpose, with the reason (W7 logstore).
    skipped: dict[str, str] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def fail(self, where: str, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0]
        line = f"{where}: {type(exc).__name__}: {first}"
        print(f"FAILED {line}", flush=True)
        self.errors.append(line)


def new_topic(prefix: str) -> str:
    return f"{prefix}-{next(_topic_ids)}-{time.monotonic_ns() % 1_000_000}"


def base_args(ctx: Ctx, system: System, op: str, **kw: Any) -> dict[str, Any]:
    return {
        "system": system.name,
        "op": op,
        "params": system.params(),
        "deadline_s": ctx.deadline_s,
        "impl": ctx.impl,
        **kw,
    }


def timed(ctx: Ctx, args_list: list[dict[str, Any]]) -> tuple[float, float, list[dict[str, Any]]]:
    """Run workers; (records, seconds, raw results). Bounded by ctx.deadline_s + start-up."""
    res = run_workers(worker, args_list, timeout_s=ctx.deadline_s + 120)
    count, elapsed = aggregate_rate(res)
    return count, elapsed, res


def paced_latency_runs(
    ctx: Ctx,
    system: System,
    durable: bool,
    name: str,
    where: str,
    info: dict[str, Any],
    topic_prefix: str,
    tail: dict[str, Any],
    prod: dict[str, Any],
) -> tuple[list[Figure], list[Any]]:
    """The W4 / W4C measurement: ``ctx.runs`` runs of a paced producer and a tailing
    consumer (worker ops ``prod["op"]`` and ``tail["op"]``, each a fresh topic); per run
    the tail's latencies (``lat_ns``) give p50/p99/p99.9 (ms) and its count the
    delivered share of ``tail["n"]``. ``tail`` and ``prod`` are the ops' other
    arguments (``topic`` added here). Returns the three percentile figures and the
    delivered one, named ``"<name> <where> latency p50"`` ..., and each run's latencies
    (numpy arrays); a failed run is reported and skipped."""
    import numpy as np

    from benchmarks._stats import latency_percentiles_ms

    n = int(tail["n"])
    pct: dict[str, Figure] = {
        k: Figure(f"{name} {where} latency {k}", "ms", higher_is_better=False, info=dict(info))
        for k in ("p50", "p99", "p99.9")
    }
    delivered = Figure(f"{name} {where} delivered", "%", info=dict(info))
    lats: list[Any] = []
    for _ in range(ctx.runs):
        topic = new_topic(topic_prefix)
        system.create(topic)
        tail_args = base_args(ctx, system, **tail, topic=topic)
        prod_args = base_args(ctx, system, **prod, topic=topic)
        try:
            _, _, res = timed(ctx, [tail_args, prod_args])
        except Exception as exc:
            # one failed run (a broker error) loses this run only
            ctx.fail(f"{name} {system.name} {system.label(durable)} {where}", exc)
            continue
        finally:
            system.delete(topic)
        lat = np.asarray(res[0]["lat_ns"])
        lats.append(lat)
        p = latency_percentiles_ms(lat)
        for k, f in pct.items():
            f.values.append(p[k])
        delivered.values.append(100.0 * res[0]["count"] / max(1, n))
        ctx.log(
            f"{name} {system.name} {system.label(durable)} {where}: "
            f"p50 {p['p50']:.2f} ms p99 {p['p99']:.2f} ms p99.9 {p['p99.9']:.2f} ms "
            f"({res[0]['count']:,}/{n:,} delivered)"
        )
    return [*pct.values(), delivered], lats


def throughput_figures(
    prefix: str, info: dict[str, Any], counts: list[tuple[float, float]], size: int
) -> list[Figure]:
    recs = Figure(f"{prefix} records/s", "records/s", info=dict(info))
    mbs = Figure(f"{prefix} MB/s", "MB/s", info=dict(info))
    for count, elapsed in counts:
        recs.values.append(count / elapsed)
        mbs.values.append(count * size / elapsed / MB)
    return [recs, mbs]
