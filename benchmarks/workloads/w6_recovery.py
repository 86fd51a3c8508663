"""W6 recovery (logstore only): time from exec of the broker to serving (its first
stdout line, then a successful Fetch of the last record) after a clean shutdown
(SIGTERM: clean-shutdown marker, no scan) and after ``kill -9`` (re-scan of the
data after the last recovery-point checkpoint), for each data size.

Data: 1 KiB records written through the broker with acks=1 into a topic with
128 MiB segments. The unclean case first appends 16 MiB more, then kills the
broker at once. Clean restart must not grow with the data; unclean must grow
only with the data after the recovery point. Sizes of 10 GiB are opt-in
(``--big``) and need 2.5x that much free space.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

from benchmarks._stats import Figure, MiB
from benchmarks.systems._base import System
from benchmarks.systems.logstore_sys import GRPC_OPTIONS, Broker
from benchmarks.workloads import Ctx, timed

NAME = "W6"
TITLE = "restart time, clean and after kill -9"
SIZE = 1024
TOPIC = "recovery"
SEGMENT_BYTES = 128 * MiB
UNCLEAN_TAIL_BYTES = 16 * MiB


def _produce(ctx: Ctx, broker: Broker, nbytes: int) -> None:
    args: dict[str, Any] = {
        "system": "logstore",
        "op": "produce",
        "params": {"grpc": broker.grpc_address},
        "topic": TOPIC,
        "n": nbytes // SIZE,
        "size": SIZE,
        "durable": False,
        "impl": "raw",
        "deadline_s": max(ctx.deadline_s, 600.0),
    }
    timed(ctx, [args])


def _serving_after(
    broker: Broker, t_exec: float, last_offset: int, timeout_s: float = 300
) -> float:
    """Seconds from exec until a Fetch of ``last_offset`` succeeds."""
    import grpc

    from logstore.v1 import logstore_pb2 as pb
    from logstore.v1 import logstore_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(broker.grpc_address, options=GRPC_OPTIONS) as ch:
        stub = logstore_pb2_grpc.LogStoreStub(ch)
        req = pb.FetchRequest(topic=TOPIC, partition=0, offset=last_offset, max_bytes=1)
        while True:
            try:
                stub.Fetch(req, timeout=10)
                return time.monotonic() - t_exec
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


def _end_offset(broker: Broker) -> int:
    import grpc

    from logstore.v1 import logstore_pb2 as pb
    from logstore.v1 import logstore_pb2_grpc

    with grpc.insecure_channel(broker.grpc_address, options=GRPC_OPTIONS) as ch:
        resp = logstore_pb2_grpc.LogStoreStub(ch).ListOffsets(
            pb.ListOffsetsRequest(topic=TOPIC, partitions=[0], position=pb.OFFSET_SPEC_LATEST),
            timeout=30,
        )
        return int(resp.offsets[0].offset)


def _restart(broker: Broker) -> tuple[float, float, int]:
    t_exec = time.monotonic()
    first_line = broker.start(timeout_s=600)
    end = _end_offset(broker)
    serving = _serving_after(broker, t_exec, max(0, end - 1))
    return first_line, serving, end


def run(ctx: Ctx, system: System, sizes: tuple[int, ...] | None = None) -> list[Figure]:
    import grpc

    from logstore.v1 import logstore_pb2 as pb
    from logstore.v1 import logstore_pb2_grpc

    figs: list[Figure] = []
    for nbytes in sizes or ctx.scale.w6_bytes:
        d = ctx.workdir / f"w6-{nbytes}"
        free = shutil.disk_usage(ctx.workdir).free
        if free < 2.5 * nbytes:
            ctx.log(f"{NAME}: skipping {nbytes / 2**30:.2f} GiB: only {free / 2**30:.1f} GiB free")
            continue
        label = f"{nbytes / 2**30:g} GiB" if nbytes >= 1 << 30 else f"{nbytes >> 20} MiB"
        info = {"workload": NAME, "system": "logstore", "data": label, "data_bytes": nbytes}
        clean = Figure(
            f"{NAME} restart clean {label}",
            "s",
            higher_is_better=False,
            info={**info, "mode": "clean"},
        )
        unclean = Figure(
            f"{NAME} restart kill -9 {label}",
            "s",
            higher_is_better=False,
            info={**info, "mode": "kill -9"},
        )
        d.mkdir(parents=True, exist_ok=True)
        broker = Broker(d / "data", d / "broker.log")
        try:
            broker.start()
            with grpc.insecure_channel(broker.grpc_address) as ch:
                logstore_pb2_grpc.LogStoreStub(ch).CreateTopic(
                    pb.CreateTopicRequest(
                        name=TOPIC, partitions=1, config={"segment_bytes": str(SEGMENT_BYTES)}
                    ),
                    timeout=60,
                )
            t0 = time.monotonic()
            _produce(ctx, broker, nbytes)
            ctx.log(f"{NAME}: wrote {label} in {time.monotonic() - t0:.1f} s")
            broker.stop()
            for _ in range(ctx.runs):
                _, serving, _ = _restart(broker)
                clean.values.append(serving)
                broker.stop()
            for _ in range(ctx.runs):
                _restart(broker)
                _produce(ctx, broker, UNCLEAN_TAIL_BYTES)
                broker.stop(signal.SIGKILL)
                _, serving, _ = _restart(broker)
                unclean.values.append(serving)
                broker.stop()
            ctx.log(f"{NAME} {label}: clean {clean.median:.3f} s, kill -9 {unclean.median:.3f} s")
        finally:
            if broker.child is not None:
                broker.stop(signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)
        figs += [clean, unclean]
    return figs


def big_sizes(workdir: Path) -> tuple[int, ...]:
    """The opt-in 10 GiB size, when 25 GiB are free."""
    return (10 << 30,) if shutil.disk_usage(workdir).free > 25 * (1 << 30) else ()
