"""W8 work queue (issue 11): 200,000 tasks of 100 B, 8 worker processes that
acknowledge every task on its own; RabbitMQ, Redis Streams and logstore share groups.

Each run, for each row (system and durability setting):

* **drain**: the tasks are produced first by one producer with the row's
  durability (the fill, timed on its own: "fill records/s"), then ``w8_workers``
  worker processes pass one barrier and drain the queue. The clock runs from the
  first worker's start to the last task's acknowledgement (each worker stamps the
  time after its last ack; the end is the latest stamp), so the figure is
  records/s of "delivered and acknowledged". The queue must be empty afterwards.
* **latency**: a fresh queue, the workers waiting on it, and one paced producer
  sending ``w8_rate`` tasks/s for ``w8_latency_seconds``; each task carries its
  *intended* send time (``time.monotonic_ns``, the same clock in every process of
  the machine), so a producer that falls behind shows as latency; a worker takes
  ``ack time - send time`` right after acknowledging a task. p50 and p99 of all
  tasks.

Rows (what "ack" means for each):

* RabbitMQ: durable classic queue, persistent messages, publisher confirms
  (aio-pika, 1,000 confirms in flight for the fill; each paced message's confirm
  awaited in the background); workers are pika consumers, prefetch 100, one
  ``basic_ack`` per message (AMQP acks have no reply: the time is taken once the
  ack frame was written). The publish rate of a pika ``BlockingConnection``
  awaiting each confirm is measured too (W8 "publish, pika" row, ``w8_pika_tasks``).
* Redis Streams: ``XADD`` pipelined 1,000 a round trip (fill) or the tasks due at
  each wake-up (paced); workers ``XREADGROUP > COUNT 100`` then one ``XACK`` per
  entry, the batch's XACKs in one pipeline (a reply for each). AOF on, with
  ``appendfsync everysec`` and ``always`` (two rows).
* logstore: a topic of ``PARTITIONS`` partition(s) and a share group
  (``visibility_timeout_ms`` 5,000, ``auto_offset_reset`` earliest); each worker
  is a ``ShareConsumer`` (500 records a poll, the client's default, see
  ``logstore_sys.SHARE_MAX_RECORDS``) calling ``msg.ack()`` per message. In the
  drain the acks ride on the next fetch (the client batches them into ranges);
  in the latency run each poll's acks are ``commit()``ed and the latency taken
  when the broker answered, i.e. once the acknowledgement is fsynced in
  ``__share_group_state``. Producer acks=all (fsync); the paced producer is
  ProduceStream with the records due within ``linger_ms`` in one batch: two
  rows, 1 ms and 10 ms (ShareFetch's cost grows with the number of stored
  batches, so tiny batches cost it throughput). Skipped with one line while
  ``logstore.client`` has no ``ShareConsumer``.

Workers stop when the shared counter of acknowledged tasks (a
``multiprocessing`` value) reaches the task count, so none ends on a guessed idle
timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

import numpy as np

from benchmarks._stats import Figure, latency_percentiles_ms
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic

NAME = "W8"
TITLE = "work queue: 8 workers, ack each"
SIZE = 100
#: Partitions of the logstore topic: one, as the peers' one queue / stream.
PARTITIONS = 1
#: pika publishes (one confirm awaited at a time, ~1,100-2,100/s here) measured
#: once per run for the "pika" publish row: 5-9 s.
PIKA_TASKS = 10_000
LOGSTORE_SKIP = "logstore share groups (logstore.client.ShareConsumer) not available yet"

#: Per system: (mode label, knobs). The label says the durability of acknowledged
#: work; knobs: ``appendfsync`` (Redis, set with CONFIG SET before the row) and
#: ``linger_ms`` (logstore's paced producer: the records due within it go as one
#: batch; the peers send what is due at each wake-up, ~1 ms apart).
ROWS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "rabbitmq": [("durable classic queue, persistent, confirms; prefetch 100, ack each", {})],
    "redis": [
        ("AOF appendfsync everysec; XREADGROUP 100, XACK each", {"appendfsync": "everysec"}),
        ("AOF appendfsync always; XREADGROUP 100, XACK each", {"appendfsync": "always"}),
    ],
    "logstore": [
        (
            "acks=all (fsync), acks fsynced; ShareConsumer 500/poll, msg.ack() each; linger 1 ms",
            {"linger_ms": 1},
        ),
        (
            "acks=all (fsync), acks fsynced; ShareConsumer 500/poll, msg.ack() each; linger 10 ms",
            {"linger_ms": 10},
        ),
    ],
}


def logstore_share_available() -> bool:
    """True once the client library has share groups (the logstore row lights up)."""
    try:
        from logstore import client
    except Exception:
        return False
    return hasattr(client, "ShareConsumer")


def unavailable(system: System) -> str | None:
    """Why W8 / W8R cannot run against ``system`` (None when it can)."""
    if system.name not in ROWS:
        return f"{system.name} has no work-queue driver"
    if system.name == "logstore" and not logstore_share_available():
        return LOGSTORE_SKIP
    return None


def _skip(ctx: Ctx, name: str, system: System) -> bool:
    why = unavailable(system)
    if why:
        print(f"  {name} {system.name}: skipped: {why}", flush=True)
        ctx.skipped[f"{name} {system.name}"] = why
    return why is not None


def _fill(ctx: Ctx, system: System, topic: str, n: int, op: str = "produce") -> tuple[float, float]:
    from benchmarks._proc import run_workers
    from benchmarks.systems import worker

    fill = base_args(ctx, system, op, topic=topic, n=n, size=SIZE, durable=True)
    fill["partitions_list"] = list(range(PARTITIONS if system.name == "logstore" else 1))
    (res,) = run_workers(worker, [fill], timeout_s=ctx.deadline_s + 120)
    if int(res["count"]) < n:
        raise RuntimeError(f"{system.name} fill sent {res['count']:,} of {n:,} tasks")
    return float(res["count"]), float(res["end"]) - float(res["start"])


def _workers(
    ctx: Ctx, system: System, topic: str, group: str, n: int, acked: Any, stamped: bool
) -> list[dict[str, Any]]:
    return [
        base_args(
            ctx,
            system,
            "work",
            topic=topic,
            group=group,
            member=i,
            n=n,
            acked=acked,
            stamped=stamped,
            visibility_ms=ctx.scale.w8r_visibility_ms,
        )
        for i in range(ctx.scale.w8_workers)
    ]


def _check_empty(system: System, topic: str, group: str, got: int, n: int) -> None:
    if got < n:
        raise RuntimeError(f"{system.name} workers acknowledged {got:,} of {n:,} tasks")
    left = system.share_outstanding(topic, group)
    if left:
        raise RuntimeError(f"{system.name} queue left {left:,} tasks unacknowledged")


def run(ctx: Ctx, system: System) -> list[Figure]:
    from benchmarks._proc import run_workers
    from benchmarks.systems import worker

    if _skip(ctx, NAME, system):
        return []
    sc = ctx.scale
    n = sc.w8_tasks
    total = int(sc.w8_rate * sc.w8_latency_seconds)
    spawn = mp.get_context("spawn")
    figures: list[Figure] = []
    for mode, knobs in ROWS[system.name]:
        info = {
            "workload": NAME,
            "system": system.name,
            "mode": mode,
            "tasks": n,
            "workers": sc.w8_workers,
            "size": SIZE,
            "rate": sc.w8_rate,
            "latency_tasks": total,
        }
        drain = Figure(f"{NAME} drain records/s", "records/s", info=dict(info))
        fill = Figure(f"{NAME} fill records/s", "records/s", info=dict(info))
        p50 = Figure(f"{NAME} produce-to-ack p50", "ms", higher_is_better=False, info=dict(info))
        p99 = Figure(f"{NAME} produce-to-ack p99", "ms", higher_is_better=False, info=dict(info))
        sent = Figure(f"{NAME} paced producer sent tasks/s", "tasks/s", info=dict(info))
        pika = Figure(
            f"{NAME} fill records/s",
            "records/s",
            info={**info, "mode": "pika BlockingConnection, confirm each", "tasks": PIKA_TASKS},
        )
        if "appendfsync" in knobs:
            system.set_appendfsync(knobs["appendfsync"])  # type: ignore[attr-defined]
        loads: list[float] = []
        drain.info["loads"] = loads  # 1-min load average as each run starts (shared cores)
        for _ in range(ctx.runs):
            loads.append(round(os.getloadavg()[0], 2))
            # -- drain of pre-produced tasks
            topic = new_topic("w8")
            group = f"{topic}-g"
            system.create(topic, PARTITIONS)
            try:
                system.create_share_group(topic, group, sc.w8r_visibility_ms)
                count, secs = _fill(ctx, system, topic, n)
                fill.values.append(count / secs)
                acked = spawn.Value("q", 0)
                res = run_workers(
                    worker,
                    _workers(ctx, system, topic, group, n, acked, False),
                    timeout_s=ctx.deadline_s + 120,
                )
                got = sum(int(r["count"]) for r in res)
                _check_empty(system, topic, group, got, n)
                start = min(float(r["start"]) for r in res)
                end = max(float(r["last_ack"]) for r in res if r["count"])
                drain.values.append(got / (end - start))
                per = ", ".join(f"{int(r['count']):,}" for r in res)
                ctx.log(
                    f"{NAME} {system.name} [{mode}]: fill {count / secs:,.0f}/s, "
                    f"drain {got / (end - start):,.0f} records/s (workers {per})"
                )
            finally:
                system.delete(topic, PARTITIONS)
            if system.name == "rabbitmq":
                topic = new_topic("w8p")
                system.create(topic)
                try:
                    count, secs = _fill(ctx, system, topic, PIKA_TASKS, op="produce_pika")
                    pika.values.append(count / secs)
                finally:
                    system.delete(topic)
            # -- produce-to-ack latency at a fixed rate
            topic = new_topic("w8l")
            group = f"{topic}-g"
            system.create(topic, PARTITIONS)
            try:
                system.create_share_group(topic, group, sc.w8r_visibility_ms)
                acked = spawn.Value("q", 0)
                prod = base_args(
                    ctx,
                    system,
                    "paced",
                    topic=topic,
                    rate=sc.w8_rate,
                    seconds=sc.w8_latency_seconds,
                    size=SIZE,
                    durable=True,
                    linger_ms=float(knobs.get("linger_ms", 1)),
                )
                args = _workers(ctx, system, topic, group, total, acked, True)
                for a in args:
                    a["deadline_s"] = sc.w8_latency_seconds + ctx.deadline_s
                res = run_workers(worker, [prod, *args], timeout_s=ctx.deadline_s + 120)
                got = sum(int(r["count"]) for r in res[1:])
                _check_empty(system, topic, group, got, total)
                lat = np.concatenate([np.asarray(r["lat_ns"], dtype=np.int64) for r in res[1:]])
                pct = latency_percentiles_ms(lat)
                p50.values.append(pct["p50"])
                p99.values.append(pct["p99"])
                sent_s = float(res[0]["end"]) - float(res[0]["start"])
                # below the rate when the producer cannot keep up (then its backlog is latency)
                sent.values.append(int(res[0]["count"]) / sent_s)
                ctx.log(
                    f"{NAME} {system.name} [{mode}]: {total:,} tasks at {sc.w8_rate:,}/s "
                    f"(sent in {sent_s:.1f} s): produce-to-ack p50 {pct['p50']:.1f} ms, "
                    f"p99 {pct['p99']:.1f} ms, max {pct['max']:.1f} ms"
                )
            finally:
                system.delete(topic, PARTITIONS)
        figures += [drain, p50, p99, sent, fill]
        if pika.values:
            figures.append(pika)
    return figures
