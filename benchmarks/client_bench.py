"""Client library benchmark (issue 5, "Speed"): the Python ``Producer`` sending
1,000,000 100-B records with ``send()`` (one call per record) and with
``send_many()`` (lists of 10,000), acks=1, linger 5 ms, 1 MiB batches; and a
``Consumer`` reading them back as Record objects (``poll``) and as numpy columns
(``poll_columns``). Records/s. The broker runs in its own process.

Reference points from issue 5: Kafka's single producer thread ~820,000
records/s of 100 B; redis-py pipelined XADD ~240,000/s on this machine;
kafka-python ~15,000/s per core.
"""

from __future__ import annotations

from benchmarks._stats import MB, Figure
from benchmarks.systems.logstore_sys import Driver, client_available
from benchmarks.workloads import Ctx, base_args, new_topic, timed

SIZE = 100


def run(ctx: Ctx) -> list[Figure]:
    if not client_available():
        raise RuntimeError("logstore.client is not importable yet")
    figs: list[Figure] = []
    n = ctx.scale.client_records
    system = Driver()
    d = ctx.workdir / "client-bench"
    d.mkdir(parents=True, exist_ok=True)
    system.start(d)
    info = {"workload": "client", "system": "logstore", "size": SIZE, "records": n}
    try:
        replay_topic = ""
        for method in ("send", "send_many"):
            vals: list[float] = []
            for r in range(ctx.runs):
                topic = new_topic("client")
                system.create(topic)
                a = base_args(ctx, system, "produce", topic=topic, n=n, size=SIZE, durable=False)
                count, elapsed, _ = timed(ctx, [a | {"impl": "client", "method": method}])
                vals.append(count / elapsed)
                ctx.log(f"client Producer.{method}: {vals[-1]:,.0f} records/s")
                if method == "send_many" and r == 0:
                    replay_topic = topic
                else:
                    system.delete(topic)
            mi = {**info, "mode": f"Producer.{method}(), acks=1", "bound": "grpc_unary_1mib"}
            figs.append(Figure(f"Producer.{method} records/s", "records/s", values=vals, info=mi))
            figs.append(
                Figure(
                    f"Producer.{method} MB/s", "MB/s", values=[v * SIZE / MB for v in vals], info=mi
                )
            )
        for mode, call in (("objects", "poll"), ("columns", "poll_columns")):
            vals = []
            for _ in range(ctx.runs):
                a = base_args(ctx, system, "replay", topic=replay_topic, n=n, mode=mode)
                count, elapsed, _ = timed(ctx, [a | {"impl": "client"}])
                if count < n:
                    raise RuntimeError(f"Consumer.{call} read {count:,} of {n:,}")
                vals.append(count / elapsed)
                ctx.log(f"client Consumer.{call}: {vals[-1]:,.0f} records/s")
            ci = {**info, "mode": f"Consumer.{call}()", "bound": "grpc_stream_1mib"}
            figs.append(Figure(f"Consumer.{call} records/s", "records/s", values=vals, info=ci))
        system.delete(replay_topic)
    finally:
        system.stop()
    return figs
