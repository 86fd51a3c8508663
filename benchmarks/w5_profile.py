"""CPU cost per batch of W5's produce (issue 12): broker and client microseconds a batch.

``python -m benchmarks.w5_profile [--partitions 1000] [--rounds 7] [--records 200000]
[--wait-s 0] [--same-topic]``

Starts a broker (temp data dir, loopback) and runs W5's produce ``--rounds``
times back to back, as W5's runs follow each other: each round a fresh topic of
``--partitions`` partitions, ``--records`` 100-B records sent by one
``Producer.send_many`` round robin in chunks of records / partitions (acks=1,
linger 5 ms, W5's ``batch_bytes``), flushed, then the topic deleted. It prints,
per round, the rate and the CPU time the broker (``/proc/<pid>/task/*/stat``,
utime + stime of every thread; "all rounds" also names the event loop's, the
main thread's, share) and this client process (``getrusage``) spent,
per batch sent, and the broker's open descriptors after the flush; then the
medians, and the CPU of all rounds together per batch (finer than one round's
10 ms clock ticks allow). CPU per batch is what the other sessions'
load disturbs least; the rate is printed for context only.

``--same-topic`` produces every round into one topic, created before the
first and deleted after the last: round 0 is W5's (every batch the first
append to its partition), the later ones append to partitions that have data.

``--wait-s`` sleeps after the broker starts (time to attach ``py-spy record
--pid``, whose pid is printed first).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.systems.logstore_sys import Broker
from logstore.client import Admin, Producer

SIZE = 100


def _broker_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of every broker thread, and of its event loop's (the main) thread."""
    ticks = loop = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a pool thread that just ended
            continue
        t = int(fields[11]) + int(fields[12])
        ticks += t
        loop += t if tid == str(pid) else 0
    hz = os.sysconf("SC_CLK_TCK")
    return ticks / hz, loop / hz


def _client_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--wait-s", type=float, default=0.0)
    ap.add_argument("--same-topic", action="store_true", help="every round into one topic")
    ap.add_argument(
        "--max-request-bytes", type=int, default=None, help="the Producer's (default its own)"
    )
    a = ap.parse_args()
    n, parts = a.records, a.partitions
    chunk = max(1, n // parts)
    work = Path(tempfile.mkdtemp(prefix="w5-profile-"))
    broker = Broker(work / "data", work / "broker.log")
    broker.start()
    assert broker.child is not None
    pid = broker.child.proc.pid
    print(f"broker pid {pid}", flush=True)
    time.sleep(a.wait_s)
    values = [os.urandom(SIZE // 2).hex().encode() for _ in range(n)]
    admin = Admin(broker.grpc_address)
    rates: list[float] = []
    broker_us: list[float] = []
    client_us: list[float] = []
    fds: list[int] = []
    total_b = total_c = total_loop = 0.0
    total_batches = 0
    extra = {} if a.max_request_bytes is None else {"max_request_bytes": a.max_request_bytes}
    try:
        for r in range(a.rounds):
            topic = "w5p" if a.same_topic else f"w5p-{r}"
            if r == 0 or not a.same_topic:
                admin.create_topic(topic, partitions=parts)
            producer = Producer(
                broker.grpc_address,
                acks="1",
                linger_ms=5,
                batch_bytes=max(4096, min(1 << 20, chunk * (SIZE + 6) + 512)),
                **extra,
            )
            (b0, l0), c0, t0 = _broker_cpu_s(pid), _client_cpu_s(), time.monotonic()
            sent = batches = 0
            while sent < n:
                k = min(chunk, n - sent)
                producer.send_many(topic, values[sent : sent + k], partition=batches % parts)
                sent += k
                batches += 1
            producer.flush()
            t1, (b1, l1), c1 = time.monotonic(), _broker_cpu_s(pid), _client_cpu_s()
            fds.append(len(os.listdir(f"/proc/{pid}/fd")))
            total_b += b1 - b0
            total_loop += l1 - l0
            total_c += c1 - c0
            total_batches += batches
            producer.close()
            if not a.same_topic or r == a.rounds - 1:
                admin.delete_topic(topic)
            rates.append(n / (t1 - t0))
            broker_us.append((b1 - b0) / batches * 1e6)
            client_us.append((c1 - c0) / batches * 1e6)
            print(
                f"round {r}: {rates[-1]:,.0f} records/s, broker {broker_us[-1]:.0f} µs/batch, "
                f"client {client_us[-1]:.0f} µs/batch ({batches} batches), broker fds {fds[-1]}",
                flush=True,
            )
    finally:
        admin.close()
        broker.stop()
    print(
        f"all rounds: broker {total_b / total_batches * 1e6:.1f} µs/batch (event loop "
        f"{total_loop / total_batches * 1e6:.1f}), client "
        f"{total_c / total_batches * 1e6:.1f} µs/batch; broker fds at most {max(fds)}"
    )
    print(
        f"median: {statistics.median(rates):,.0f} records/s, broker "
        f"{statistics.median(broker_us):.0f} µs/batch, client {statistics.median(client_us):.0f} "
        f"µs/batch; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
