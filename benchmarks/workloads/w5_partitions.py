"""W5 partitions: 1, 10, 100 and 1,000 partitions (logstore) / streams (Redis) /
subjects of one stream (JetStream): produce throughput spread round-robin over
the partitions (100-B records, acks=1 / appendfsync no), then the server's RSS
and open file descriptors, on a server restarted fresh for W5. For logstore
RSS must stay within +50 MB from 1 to 1,000 partitions and descriptors under
the broker's cap. (Redis keeps every record in memory, so its RSS grows with
the data, not the stream count.)

Consumer side (logstore only): the records just produced are read back by
one ``Consumer`` assigned every partition, as numpy columns, once with its
MultiFetch (one long poll for all its partitions per request) and once with
its per-partition Fetch fallback (what it did before issue 12), records/s.
"""

from __future__ import annotations

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
        consume: dict[str, Figure] = {}
        if system.name == "logstore":
            for fetch, mode in (
                ("multi", "Consumer, MultiFetch"),
                ("unary", "Consumer, Fetch per partition"),
            ):
                consume[fetch] = Figure(
                    f"{NAME} {parts} partitions consume ({fetch}) records/s",
                    "records/s",
                    info={**info, "mode": mode, "bound": "grpc_stream_1mib"},
                )
        for run_no in range(ctx.runs):
            topic = new_topic("w5")
            system.create(topic, parts)
            try:
                # one producer, round-robin over every partition, batches of n/parts records
                args = base_args(
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
                count, elapsed, _ = timed(ctx, [args])
                rec.values.append(count / elapsed)
                rss.values.append(system.rss() / MB)
                fds.values.append(system.fds())
                maps.values.append(mapped_count(system.pid))
                if system.name == "logstore":
                    # Alternate which goes first: the first read after the
                    # produce run pays for its leftovers (measured: about 2x
                    # slower whichever path it is).
                    order = list(consume.items())
                    if run_no % 2:
                        order.reverse()
                    for fetch, fig in order:
                        got, took, _ = timed(
                            ctx,
                            [
                                base_args(
                                    ctx,
                                    system,
                                    "replay_parts",
                                    topic=topic,
                                    n=int(count),
                                    partitions=parts,
                                    fetch=fetch,
                                )
                            ],
                        )
                        if got < count:
                            raise RuntimeError(f"W5 consume read {got:,} of {count:,.0f} records")
                        fig.values.append(got / took)
                        ctx.log(
                            f"{NAME} logstore {parts} partitions consume ({fetch}): "
                            f"{got / took:,.0f} records/s"
                        )
            finally:
                system.delete(topic, parts)
            ctx.log(
                f"{NAME} {system.name} {parts} partitions: {count / elapsed:,.0f} records/s, "
                f"RSS {rss.values[-1]:,.0f} MB, {fds.values[-1]:.0f} fds"
            )
        figs += [rec, rss, fds, maps, *consume.values()]
    return figs
