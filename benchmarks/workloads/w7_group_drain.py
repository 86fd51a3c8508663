"""W7 group drain: 4 members of one consumer group drain 1,000,000 100-B records,
committing (acknowledging) as they go; each member is its own process.

The clock starts only when every member is connected and, for logstore, the
group has **settled**; then ``w7_members`` worker processes pass one start
barrier and drain together. It runs from the barrier to the moment the last
record's commit/ack has been answered by the server (each member stamps the
time after its last acknowledged batch; members that find nothing left do not
move the end), so the figure is records/s and MB/s of "consumed and
committed". The server's peak RSS is sampled every 50 ms during the drain,
and each member's record count is logged and kept (``largest member share``:
25 % is a perfect split of the work between 4 members).

* Redis Streams: the stream is filled (untimed, page-cache durability), then
  ``XGROUP CREATE`` at id 0; each member connects, passes the barrier, and loops
  ``XREADGROUP >`` (COUNT 1,000) then ``XACK`` of that batch's ids (one round
  trip each); ``XPENDING`` must be empty afterwards.
* JetStream: filled, then one durable pull consumer (explicit ack, ack-pending
  bound above the batch); 4 pull subscribers bind, pass the barrier, then
  ``fetch(1000)`` and ``msg.ack()`` for each message and one ``flush()`` (a
  PING/PONG) so the acks have reached the server before the batch counts; the
  consumer must have no pending and no ack-pending messages afterwards.
* logstore: a topic with ``PARTITIONS`` partitions and 4 ``GroupConsumer``
  members (``auto_offset_reset="earliest"``, manual ``commit()`` after each
  poll; see ``logstore_sys.group_drain``). A partition moves to a new member
  only after its previous owner's next heartbeat (3 s, the broker's default
  interval, unchanged here), so the members join the still-empty topic and poll
  until DescribeGroup shows 4 members, every partition owned and nothing
  revoking (``logstore_sys.unsettled``); then they stop polling, the parent
  fills the topic (untimed) and releases the barrier. Without this, a drain
  that takes under a second was done by the first member to join, alone. The
  group's committed offsets (OffsetFetch) must reach the end offsets
  afterwards. With a client library that has no ``GroupConsumer`` this is
  skipped with one line.

The members share one counter of acknowledged records (a ``multiprocessing``
value): a member that finds nothing to read stops once the group's total
reaches the record count, so no member ends on a guessed idle timeout.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks._stats import MB, Figure
from benchmarks.systems._base import System
from benchmarks.workloads import Ctx, base_args, new_topic, throughput_figures

NAME = "W7"
TITLE = "group drain: 4 members, commits"
SIZE = 100
#: Partitions of the logstore topic: one per member, so a balanced assignment
#: gives each member one (Redis and JetStream have one stream, shared).
PARTITIONS = 4
#: The one line printed (and recorded) while logstore has no consumer groups.
LOGSTORE_SKIP = "logstore consumer groups not available yet"
MODES = {
    "redis": "XREADGROUP+XACK, 1,000/batch",
    "nats": "durable pull, fetch 1,000, ack each",
    "logstore": "GroupConsumer, commit per poll",
}


def logstore_groups_available() -> bool:
    """True once the client library has consumer groups (the placeholder lights up)."""
    try:
        from logstore import client
    except Exception:
        return False
    return hasattr(client, "GroupConsumer")


def unavailable(system: System) -> str | None:
    """Why W7 cannot run against ``system`` (None when it can)."""
    if system.name == "logstore" and not logstore_groups_available():
        return LOGSTORE_SKIP
    return None


class _PeakRss:
    """Samples the server's RSS every ``interval_s`` in a thread; ``peak`` in bytes."""

    def __init__(self, system: System, interval_s: float = 0.05) -> None:
        self.system = system
        self.interval_s = interval_s
        self.peak = system.rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.system.rss())

    def __enter__(self) -> _PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)
        self.peak = max(self.peak, self.system.rss())


def _settle_then_fill(
    ctx: Ctx,
    system: System,
    group: str,
    topic: str,
    members: int,
    settled: Any,
    parked: Any,
    fill: dict[str, Any],
) -> None:
    """logstore: wait until the group has settled, let the members stop polling, fill."""
    from benchmarks._proc import run_workers
    from benchmarks.systems import worker

    t0 = time.monotonic()
    t = system.wait_group_settled(  # type: ignore[attr-defined]
        group, members, {(topic, p) for p in range(PARTITIONS)}
    )
    settled.set()
    while parked.value < members:
        time.sleep(0.01)
    ctx.log(f"{NAME} logstore: group settled {t - t0:.1f} s after the members were spawned")
    run_workers(worker, [fill], timeout_s=ctx.deadline_s + 120)


def run(ctx: Ctx, system: System) -> list[Figure]:
    from benchmarks._proc import run_workers
    from benchmarks.systems import worker

    why = unavailable(system)
    if why:
        print(f"  {NAME} {system.name}: skipped: {why}", flush=True)
        ctx.skipped[f"{NAME} {system.name}"] = why
        return []
    n, members = ctx.scale.w7_records, ctx.scale.w7_members
    parts = PARTITIONS if system.name == "logstore" else 1
    info = {
        "workload": NAME,
        "system": system.name,
        "mode": MODES[system.name],
        "records": n,
        "members": members,
        "size": SIZE,
        "bound": "grpc_stream_1mib",
    }
    counts: list[tuple[float, float]] = []
    rss = Figure(f"{NAME} server peak RSS", "MB", higher_is_better=False, info=dict(info))
    spread = Figure(f"{NAME} largest member share", "%", higher_is_better=False, info=dict(info))
    spawn = mp.get_context("spawn")
    for _ in range(ctx.runs):
        topic = new_topic("w7")
        group = f"{topic}-group"
        system.create(topic, parts)
        try:
            system.set_durable(False)
            fill = base_args(ctx, system, "produce", topic=topic, n=n, size=SIZE, durable=False)
            fill["partitions_list"] = list(range(parts))
            settled, parked = spawn.Event(), spawn.Value("i", 0)
            prepare: Callable[[], None] | None = None
            if system.name == "logstore":
                # Members join the empty topic first; the fill waits for the group to settle.
                prepare = functools.partial(
                    _settle_then_fill, ctx, system, group, topic, members, settled, parked, fill
                )
            else:
                # Filled first; the members connect, then pass the start barrier together.
                run_workers(worker, [fill], timeout_s=ctx.deadline_s + 120)
                system.create_group(topic, group, parts)
                settled.set()
            acked = spawn.Value("q", 0)  # the group's acknowledged records, all members
            args = [
                base_args(
                    ctx,
                    system,
                    "group_drain",
                    topic=topic,
                    group=group,
                    member=i,
                    n=n,
                    partitions=parts,
                    acked=acked,
                    settled=settled,
                    parked=parked,
                )
                for i in range(members)
            ]
            with _PeakRss(system) as peak:
                res = run_workers(worker, args, timeout_s=ctx.deadline_s + 240, prepare=prepare)
            got = sum(int(r["count"]) for r in res)
            if got < n:
                raise RuntimeError(f"{system.name} group drained {got:,} of {n:,} records")
            left = system.group_outstanding(topic, group, parts)
            if left:
                raise RuntimeError(f"{system.name} group left {left:,} records unacknowledged")
            start = min(float(r["start"]) for r in res)
            end = max(float(r["last_ack"]) for r in res if r["count"])
            counts.append((float(got), end - start))
            rss.values.append(peak.peak / MB)
            per_member = [int(r["count"]) for r in res]
            spread.values.append(100.0 * max(per_member) / got)
            per = ", ".join(f"{c:,}" for c in per_member)
            owned = "; ".join(",".join(r["owned"]) for r in res if r.get("owned"))
            ctx.log(
                f"{NAME} {system.name}: {got / (end - start):,.0f} records/s "
                f"(members {per}{'; partitions ' + owned if owned else ''}), "
                f"server peak RSS {peak.peak / MB:,.0f} MB"
            )
            spread.info.setdefault("per_member", []).append(per_member)
            if system.name == "logstore":
                spread.info.setdefault("owned", []).append([r["owned"] for r in res])
        finally:
            system.delete(topic, parts)
    return [*throughput_figures(f"{NAME} group drain", info, counts, SIZE), rss, spread]
