"""W4C's latency split (issue 12): the Consumer's fetch path against its Subscribe tail.

``python -m benchmarks.w4c_profile [--rate 2000] [--seconds 5] [--linger-ms 0] [--acks all]
[--runs 3] [--stream-max-partitions 0,4] [--raw-producer]``

Starts a broker (temp data dir, loopback) and, per run and per
``--stream-max-partitions`` value (interleaved, so the machine's load falls on
both alike), a fresh one-partition topic, one tailing ``Consumer`` process
(``Consumer(stream_max_partitions=N)``: 0 is the MultiFetch path, 4 the
default that tails over Subscribe) and one process sending paced
``Producer.send()`` calls (W4C's ``client_paced`` setup; ``--raw-producer``:
W4's raw ``ProduceStream`` pacer instead, to tell the producer's share from
the rest). It prints per run the end-to-end p50 / p99 (``poll`` returned the
record - its intended send time), the records delivered, the CPU per record
of the consumer and the producer (``resource.getrusage`` in each) and of the
broker (``/proc/<pid>/stat``), and, when the consumer streams, the consumer's
own hop: a pushed message read by the stream's reader thread -> handled by
``poll`` (p50 / p90). CPU per record is the figure the machine's other load
disturbs least; the last line is the median over the runs.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.systems import paced_values
from benchmarks.systems.logstore_sys import Broker, paced


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _produce(addr: str, opts: dict[str, Any], go: Any, out: Any) -> None:
    total = int(opts["rate"] * opts["seconds"])
    if opts["raw_producer"]:
        c0 = _cpu_s()
        args = {"params": {"grpc": addr}, "size": 100, "durable": opts["acks"] == "all"}
        args.update({k: opts[k] for k in ("rate", "seconds", "topic", "linger_ms")})
        paced(args, go.wait)
        out.put(("producer", (_cpu_s() - c0) / total))
        return
    from logstore.client import Producer

    producer = Producer(addr, acks=opts["acks"], linger_ms=opts["linger_ms"])
    go.wait()
    c0 = _cpu_s()
    for _, vals in paced_values(opts["rate"], total, 100):
        for v in vals:
            producer.send(opts["topic"], v, partition=0)
    producer.flush(60)
    out.put(("producer", (_cpu_s() - c0) / total))
    producer.close()


def _consume(addr: str, opts: dict[str, Any], stream_max: int, go: Any, out: Any) -> None:
    from logstore.client import Consumer

    read_at: collections.deque[int] = collections.deque()
    hops: list[int] = []

    class Timed(Consumer):
        """Timestamps a pushed message as the reader thread gets it and as poll handles it."""

        def _open_stream(self, part: Any) -> None:
            real = self._conn.subscribe_raw

            def timed_call(req: Any) -> Any:
                call = real(req)

                class Call:
                    def __iter__(self) -> Any:
                        for raw in call:
                            read_at.append(time.monotonic_ns())
                            yield raw

                    def cancel(self) -> Any:
                        return call.cancel()

                return Call()

            self._conn.subscribe_raw = timed_call  # type: ignore[method-assign]
            try:
                super()._open_stream(part)
            finally:
                self._conn.subscribe_raw = real  # type: ignore[method-assign]

        def _handle_stream(self, sid: int, payload: Any) -> None:
            if isinstance(payload, bytes) and read_at:
                hops.append(time.monotonic_ns() - read_at.popleft())
            super()._handle_stream(sid, payload)

    n = int(opts["rate"] * opts["seconds"])
    consumer = Timed(addr, stream_max_partitions=stream_max)
    consumer.assign([(opts["topic"], 0)])
    consumer.seek((opts["topic"], 0), 0)
    consumer.poll(timeout_ms=10)
    lat = np.zeros(n, dtype=np.int64)
    count = 0
    go.set()
    c0 = _cpu_s()
    deadline = time.monotonic() + opts["seconds"] + 10.0
    while count < n and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=500)
        now = time.monotonic_ns()
        for recs in polled.values():
            for r in recs:
                if count < n and r.value is not None:
                    lat[count] = now - int.from_bytes(r.value[:8], "little")
                count += 1
    cpu = (_cpu_s() - c0) / max(count, 1)
    consumer.close()
    out.put(("consumer", (count, lat[: min(count, n)], cpu, hops[len(hops) // 5 :])))


def _one(addr: str, opts: dict[str, Any], stream_max: int, bpid: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_consume, args=(addr, opts, stream_max, go, out)),
        ctx.Process(target=_produce, args=(addr, opts, go, out)),
    ]
    for p in procs:
        p.start()
    go.wait()
    b0 = _proc_cpu_s(bpid)
    res = dict(out.get(timeout=opts["seconds"] + 120) for _ in procs)
    broker_cpu = _proc_cpu_s(bpid) - b0
    for p in procs:
        p.join(timeout=30)
    count, lat_ns, ccpu, hops = res["consumer"]
    n = int(opts["rate"] * opts["seconds"])
    lat = lat_ns / 1e6
    row = {
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "delivered": 100.0 * count / n,
        "consumer_us": ccpu * 1e6,
        "producer_us": res["producer"] * 1e6,
        "broker_us": broker_cpu / n * 1e6,
        "hop_p50_us": float(np.percentile(hops, 50)) / 1e3 if hops else float("nan"),
        "hop_p90_us": float(np.percentile(hops, 90)) / 1e3 if hops else float("nan"),
    }
    return row


def _fmt(smax: int, row: dict[str, float]) -> str:
    return (
        f"stream_max_partitions={smax}: p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  "
        f"delivered {row['delivered']:.1f} %  CPU us/record: consumer {row['consumer_us']:.1f} "
        f"producer {row['producer_us']:.1f} broker {row['broker_us']:.1f}  "
        f"hop p50/p90 {row['hop_p50_us']:.0f}/{row['hop_p90_us']:.0f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--linger-ms", type=int, default=0)
    ap.add_argument("--acks", choices=("all", "1"), default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stream-max-partitions", default="0,4", help="comma-separated values")
    ap.add_argument("--raw-producer", action="store_true")
    a = ap.parse_args()
    smaxes = [int(v) for v in a.stream_max_partitions.split(",")]
    from logstore.client import Admin

    with tempfile.TemporaryDirectory(prefix="w4c-profile-") as tmp:
        broker = Broker(Path(tmp) / "data", Path(tmp) / "broker.log", [])
        broker.start()
        assert broker.child is not None
        try:
            admin = Admin(broker.grpc_address)
            rows: dict[int, list[dict[str, float]]] = {s: [] for s in smaxes}
            print(f"load average at start: {os.getloadavg()}", flush=True)
            for run in range(a.runs):
                for smax in smaxes:
                    topic = f"w4c-{run}-{smax}"
                    admin.create_topic(topic, partitions=1)
                    opts = {
                        "rate": a.rate,
                        "seconds": a.seconds,
                        "linger_ms": a.linger_ms,
                        "acks": a.acks,
                        "topic": topic,
                        "raw_producer": a.raw_producer,
                    }
                    row = _one(broker.grpc_address, opts, smax, broker.child.proc.pid)
                    rows[smax].append(row)
                    print(f"run {run + 1} " + _fmt(smax, row), flush=True)
            admin.close()
            print(f"load average at end: {os.getloadavg()}")
            for smax in smaxes:
                med = {k: statistics.median(r[k] for r in rows[smax]) for k in rows[smax][0]}
                print("median " + _fmt(smax, med))
        finally:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
