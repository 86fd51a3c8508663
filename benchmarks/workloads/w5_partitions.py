"""W5 partitions: 1, 10, 100 and 1,000 partitions (logstore) / streams (Redis) /
subjects of one stream (JetStream): produce throughput spread round-robin over
the partitions (100-B records, acks=1 / appendfsync no), then the server's RSS
and open file descriptors, on a server restarted fresh for W5. For logstore
RSS must stay within +50 MB from 1 to 1,000 partitions and descriptors under
the broker's cap. (Redis keeps every record in memory, so its RSS grows with
the data, not the stream count.)

Consumer side (logstore only, after every produce figure so its memory does
not count in their RSS): the same produce workload into a new topic, read
back by one ``Consumer`` assigned every partition, as numpy columns, once with
its MultiFetch (one long poll for all its partitions per request) and once
with its per-partition Fetch fallback (what it did before issue 12),
records/s; which goes first alternates between runs.
"""

from __future__ import annotations

from typing import Any

from benchmarks._proc import mapped_count
from benchmarks._stats import MB, Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, timed

NAME = "W5"
TITLE = "many partitions: throughput, RSS, descriptors"
SIZE = 100


def run(ctx: Ctx, system: System) -> list[Figure]:
    figs: list[Figure] = []
    n = ctx.scale.w5_records
    # A fresh server (new data dir), so what earlier workloads left in its heap
    # does not count here; the idle RSS is the baseline.
    system.stop()
    fresh = ctx.workdir / f"w5-{system.name}"
    fresh.mkdir(parents=True, exist_ok=True)
    system.start(fresh)
    system.set_durable(False)
    idle = Figure(f"{NAME} idle RSS", "MB", higher_is_better=False)
    idle.info = {"workload": NAME, "system": system.name, "mode": "fresh server, no topic"}
    idle.values.append(system.rss() / MB)
    figs.append(idle)
    for parts in ctx.scale.w5_partitions:
        info = {
            "workload": NAME,
            "system": system.name,
            "mode": system.label(False),
            "partitions": parts,
            "records": n,
            "size": SIZE,
            "bound": "grpc_unary_1mib",
        }
        rec = Figure(f"{NAME} {parts} partitions records/s", "records/s", info=dict(info))
        rss = Figure(
            f"{NAME} {parts} partitions RSS", "MB", higher_is_better=False, info=dict(info)
        )
        fds = Figure(
            f"{NAME} {parts} partitions open fds", "fds", higher_is_better=False, info=dict(info)
        )
        maps = Figure(
            f"{NAME} {parts} partitions mappings", "maps", higher_is_better=False, info=dict(info)
        )
        for _ in range(ctx.runs):
            topic = new_topic("w5")
            system.create(topic, parts)
            try:
                args = _produce_args(ctx, system, topic, n, parts)
                count, elapsed, _ = timed(ctx, [args])
                rec.values.append(count / elapsed)
                rss.values.append(system.rss() / MB)
                fds.values.append(system.fds())
                maps.values.append(mapped_count(system.pid))
            finally:
                system.delete(topic, parts)
            ctx.log(
                f"{NAME} {system.name} {parts} partitions: {count / elapsed:,.0f} records/s, "
                f"RSS {rss.values[-1]:,.0f} MB, {fds.values[-1]:.0f} fds"
            )
        figs += [rec, rss, fds, maps]
    if system.name == "logstore":
        # After every produce figure, so the reads' memory does not count in
        # the produce side's RSS.
        for parts in ctx.scale.w5_consume_partitions:
            figs += _consume(ctx, system, parts, n)
    return figs


def _produce_args(ctx: Ctx, system: System, topic: str, n: int, parts: int) -> dict[str, Any]:
    """One producer, round-robin over every partition, batches of n/parts records."""
    return base_args(
        ctx,
        system,
        "produce",
        topic=topic,
        n=n,
        size=SIZE,
        durable=False,
        partitions_list=list(range(parts)),
        batch_bytes=max(4096, min(1 << 20, (n // parts) * (SIZE + 6) + 512)),
    )


def _consume(ctx: Ctx, system: System, parts: int, n: int) -> list[Figure]:
    """The consumer side (logstore): the produce workload's records, read back by one
    Consumer over every partition, with MultiFetch and with a Fetch per partition."""
    info = {
        "workload": NAME,
        "system": system.name,
        "partitions": parts,
        "records": n,
        "size": SIZE,
        "bound": "grpc_stream_1mib",
    }
    consume = {
        fetch: Figure(
            f"{NAME} {parts} partitions consume ({fetch}) records/s",
            "records/s",
            info={**info, "mode": mode},
        )
        for fetch, mode in (
            ("multi", "Consumer, MultiFetch"),
            ("unary", "Consumer, Fetch per partition"),
        )
    }
    requests = {
        fetch: Figure(
            f"{NAME} {parts} partitions consume ({fetch}) fetch requests",
            "requests",
            higher_is_better=False,
            info=dict(fig.info),
        )
        for fetch, fig in consume.items()
    }
    for run_no in range(ctx.runs):
        topic = new_topic("w5c")
        system.create(topic, parts)
        try:
            count, _, _ = timed(ctx, [_produce_args(ctx, system, topic, n, parts)])
            # Alternate which goes first: the first read after the produce run
            # pays for its leftovers (measured: up to 2x slower either way).
            order = list(consume.items())
            if run_no % 2:
                order.reverse()
            for fetch, fig in order:
                args = base_args(
                    ctx,
                    system,
                    "replay_parts",
                    topic=topic,
                    n=int(count),
                    partitions=parts,
                    fetch=fetch,
                )
                got, took, res = timed(ctx, [args])
                requests[fetch].values.append(float(res[0].get("requests", 0)))
                if got < count:
                    raise RuntimeError(f"W5 consume read {got:,} of {count:,.0f} records")
                fig.values.append(got / took)
                ctx.log(
                    f"{NAME} logstore {parts} partitions consume ({fetch}): "
                    f"{got / took:,.0f} records/s, {requests[fetch].values[-1]:,.0f} requests"
                )
        finally:
            system.delete(topic, parts)
    return [*consume.values(), *requests.values()]
