"""W8R redelivery (issue 11): how long after a worker's ``kill -9`` the tasks it
held are handed to another worker, against the visibility timeout.

Each run: ``w8r_tasks`` (100) tasks are produced (durable); a *survivor* worker
process connects and waits; a *victim* worker process takes all the tasks
without acknowledging them and reports their ids; the survivor is let go (it
starts consuming), and right after, the harness ``kill -9``s the victim by PID.
The survivor acknowledges everything it receives and stamps each task's
receipt. Figures: kill -> first and kill -> last of the victim's tasks handed
to the survivor, and acquired -> last (the lock clock starts when the victim
took the tasks, ~tens of ms before the kill). Every held task must arrive.

* logstore: share group with ``visibility_timeout_ms = w8r_visibility_ms``
  (5,000): the lock expires, the records are available again, the survivor's
  next share fetch acquires them.
* RabbitMQ: no lock timeout: the kernel closes the killed process's socket, the
  broker requeues its unacked messages and pushes them to the survivor.
* Redis Streams: no lock timeout either: the survivor runs ``XAUTOCLAIM`` with
  min-idle = the same 5,000 ms every 100 ms (``redis_sys.CLAIM_INTERVAL_S``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from typing import Any

from benchmarks._proc import _entry
from benchmarks._stats import Figure
from benchmarks.systems import worker
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic
from benchmarks.workloads.w8_work_queue import PARTITIONS, _fill, _skip

NAME = "W8R"
TITLE = "redelivery after kill -9"
MODES = {
    "rabbitmq": "requeue on connection loss (no lock timeout)",
    "redis": "XAUTOCLAIM min-idle {v:,} ms every 100 ms",
    "logstore": "share group, visibility_timeout_ms {v:,}",
}


def _stop(p: Any) -> None:
    if p.is_alive() and p.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=10)


def one_run(ctx: Ctx, system: System) -> dict[str, float]:
    """One kill -9; seconds from the kill (and from the acquisition) to redelivery."""
    k, vis = ctx.scale.w8r_tasks, ctx.scale.w8r_visibility_ms
    spawn = mp.get_context("spawn")
    topic = new_topic("w8r")
    group = f"{topic}-g"
    system.create(topic, PARTITIONS)
    victim = survivor = None
    try:
        system.create_share_group(topic, group, vis)
        _fill(ctx, system, topic, k)
        q, held = spawn.Queue(), spawn.Queue()
        common = {"topic": topic, "group": group, "k": k, "visibility_ms": vis}
        bound_s = vis / 1000 + 60
        go = spawn.Barrier(2)
        survivor = spawn.Process(
            target=_entry,
            args=(worker, base_args(ctx, system, "claim", **common, deadline_s=bound_s), go, q, 1),
            daemon=True,
        )
        survivor.start()
        hold_args = base_args(ctx, system, "hold", **common, held=held, deadline_s=bound_s)
        alone = spawn.Barrier(1)  # kept referenced until the child has unpickled it
        victim = spawn.Process(target=_entry, args=(worker, hold_args, alone, q, 0), daemon=True)
        victim.start()
        acquired, ids = held.get(timeout=120)
        if len(ids) < k:
            raise RuntimeError(f"{system.name} victim acquired {len(ids)} of {k} tasks")
        go.wait(timeout=120)  # the survivor is connected and starts consuming now
        killed = time.monotonic()
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        _i, res, err = q.get(timeout=bound_s + 60)
        if err is not None:
            raise RuntimeError(err)
        seen: dict[bytes, float] = res["seen"]
        lost = [i for i in ids if i not in seen]
        if lost:
            raise RuntimeError(f"{system.name}: {len(lost)} of the killed worker's tasks lost")
        times = [seen[i] for i in ids]
        return {
            "first": min(times) - killed,
            "last": max(times) - killed,
            "from_acquire": max(times) - acquired,
            "held_before_kill": killed - acquired,
        }
    finally:
        for p in (victim, survivor):
            if p is not None:
                _stop(p)
        system.delete(topic, PARTITIONS)


def run(ctx: Ctx, system: System) -> list[Figure]:
    if _skip(ctx, NAME, system):
        return []
    vis = ctx.scale.w8r_visibility_ms
    info = {
        "workload": NAME,
        "system": system.name,
        "mode": MODES[system.name].format(v=vis),
        "tasks": ctx.scale.w8r_tasks,
        "visibility_ms": vis,
    }
    figs = {
        "first": Figure(
            f"{NAME} kill to first redelivered", "ms", higher_is_better=False, info=dict(info)
        ),
        "last": Figure(
            f"{NAME} kill to all redelivered", "ms", higher_is_better=False, info=dict(info)
        ),
        "from_acquire": Figure(
            f"{NAME} acquired to all redelivered", "ms", higher_is_better=False, info=dict(info)
        ),
    }
    for _ in range(ctx.runs):
        r = one_run(ctx, system)
        for key, fig in figs.items():
            fig.values.append(r[key] * 1000)
        ctx.log(
            f"{NAME} {system.name}: kill -> first {r['first'] * 1000:,.0f} ms, "
            f"all {r['last'] * 1000:,.0f} ms (held {r['held_before_kill'] * 1000:,.0f} ms "
            f"before the kill; visibility {vis:,} ms)"
        )
    return list(figs.values())
