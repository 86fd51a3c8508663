"""Batch compression, side by side in one run: none / lz4 / zstd (issue 14, "Speed").

``python -m benchmarks.compression_bench [--records N] [--runs R] [--json PATH]
[--link-mbit M]``, or the ``compression`` section of ``python -m benchmarks.run
--sections compression`` (sizes from the scale: ``compression_records``).

One broker process (``python -m logstore.broker``, port 0, its own data
directory); this process is the client. For each workload and codec, in one
run and interleaved (none, lz4, zstd, none, lz4, zstd, ...) so the machine's
load hits them alike:

* **W1-corpus**: one record per line of ``benchmarks/corpus/log_lines.jsonl``
  (4,000 JSON log lines, ~300 B each: timestamps, levels, hosts, paths, a
  random 128-bit trace id, user agents; written by :func:`make_corpus`, seed
  14), cycled to ``--records``.
* **W2-corpus**: records of ~1.2 KiB, four consecutive corpus lines joined by
  newlines (W2's 1 KiB records, with realistic content).

Each run: a fresh topic; a ``Producer(compression=codec)`` sends the records
with ``send_many`` (acks=all, linger 5 ms, 1 MiB batches, one partition) and
flushes; then the topic's ``.log`` bytes are summed; then a ``Consumer`` polls
them all back as objects. Figures per codec: produce records/s, payload MB/s
(record bytes, uncompressed), bytes on disk per record (frames included),
consumer records/s, and the CPU time per MB of payload of the producer (this
process) and of the broker while producing. Medians over ``--runs``.

On loopback the link is not a bound: the producer and the broker share the
machine's 2 cores, and a codec's CPU is the whole cost. ``--link-mbit M``
(root) shapes the client <-> broker traffic to ``M`` Mbit/s each way with the
kernel's queueing (:mod:`benchmarks._link`), the case compression is for:
bytes, not CPU, are the bound.

Not a test: it prints a table (and optionally JSON). The issue's target is
zstd W2 payload MB/s >= 1.5x uncompressed acks=all, with on-disk bytes <= 1/3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._link import LinkError, limited_link
from benchmarks._stats import Figure
from benchmarks.systems.logstore_sys import Broker

CORPUS = Path(__file__).resolve().parent / "corpus" / "log_lines.jsonl"
#: codec[:level][@threads] (no level: the codec's default, zstd 1; zstd:3 is Kafka's
#: default; no threads: the producer's default compression_threads, 2; zstd@1
#: compresses on the sender thread alone, as before the pool)
CODECS = ("none", "lz4", "zstd", "zstd@1", "zstd:3")
WORKLOADS = ("W1-corpus", "W2-corpus")
MB = 1e6


def make_corpus(path: Path = CORPUS, lines: int = 4000, seed: int = 14) -> None:
    """Write the corpus (deterministic: the same file for the same seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(log_lines(lines, seed)) + "\n")


def log_lines(lines: int, seed: int = 14) -> list[str]:
    """``lines`` JSON log lines from the corpus generator (the corpus file is the
    first 4,000 of seed 14)."""
    rnd = random.Random(seed)
    services = ["api-gateway", "billing", "auth", "search", "orders", "inventory", "notifications"]
    paths = [
        "/api/v1/users/{id}", "/api/v1/orders/{id}", "/api/v1/orders", "/api/v2/search",
        "/health", "/api/v1/cart/{id}/items", "/api/v1/payments/{id}/capture", "/login", "/logout",
    ]  # fmt: skip
    agents = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0 "
        "Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "okhttp/4.12.0",
        "python-requests/2.32.3",
        "curl/8.5.0",
    ]
    msgs = [
        "request completed", "request completed", "request completed",
        "cache miss, loaded from db", "slow query", "upstream timeout, retrying",
        "payment declined", "token refreshed", "rate limited",
    ]  # fmt: skip
    errors = ["db connection reset", "nil pointer in handler", "upstream 503"]
    statuses = [200, 201, 204, 304, 400, 401, 404, 429, 500, 503]
    weights = [60, 8, 5, 5, 5, 3, 6, 3, 3, 2]
    ts = 1764633600000
    out = []
    for _ in range(lines):
        ts += rnd.randint(0, 40)
        status = rnd.choices(statuses, weights)[0]
        level = "ERROR" if status >= 500 else "WARN" if status >= 400 else "INFO"
        svc = rnd.choice(services)
        rec = {
            "ts": ts,
            "level": level,
            "service": svc,
            "host": f"{svc}-{rnd.randint(1, 12)}.prod.eu-west-1",
            "trace_id": f"{rnd.getrandbits(128):032x}",
            "method": rnd.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE"]),
            "path": rnd.choice(paths).replace("{id}", str(rnd.randint(1, 99999))),
            "status": status,
            "latency_ms": round(rnd.lognormvariate(3, 1), 1),
            "user_agent": rnd.choice(agents),
            "msg": rnd.choice(msgs) if status < 500 else "internal error: " + rnd.choice(errors),
        }
        out.append(json.dumps(rec, separators=(",", ":")))
    return out


def corpus_records(workload: str, n: int) -> list[bytes]:
    """``n`` records: the corpus file's lines (one per record for W1, four joined
    for W2), then more lines from the same generator, never the corpus again.

    Cycling the 1.2 MB corpus would repeat it exactly inside a batch once
    batches hold more than 1.2 MB of records (they do: a 1 MiB zstd batch
    holds ~7 MB), and zstd level 3 (window 2 MiB) then stores the repeats
    almost for free (measured: 0.03 of the size instead of 0.15), a ratio real
    logs never give."""
    per = 4 if workload == "W2-corpus" else 1
    lines = CORPUS.read_bytes().splitlines()
    if len(lines) < n * per:
        extra = log_lines(n * per - len(lines), seed=15)
        lines += [x.encode() for x in extra]
    if per > 1:
        lines = [b"\n".join(lines[i : i + per]) for i in range(0, per * n, per)]
    return lines[:n]


def one_run(
    broker: Broker, data_dir: Path, topic: str, codec: str, values: list[bytes]
) -> dict[str, float]:
    from logstore.client import Admin, Consumer, Producer

    with Admin(broker.grpc_address) as admin:
        admin.create_topic(topic, 1)
    n = len(values)
    payload = sum(map(len, values))
    spec, _, threads = codec.partition("@")
    name, _, level = spec.partition(":")
    with Producer(
        broker.grpc_address,
        acks="all",
        compression=name,
        compression_level=int(level) if level else None,
        **({"compression_threads": int(threads)} if threads else {}),
        linger_ms=5,
    ) as p:
        cpu0 = _cpu_s(broker)
        t0 = time.perf_counter()
        for i in range(0, n, 10_000):
            p.send_many(topic, values[i : i + 10_000], partition=0)
        p.flush()
        produce_s = time.perf_counter() - t0
        cpu1 = _cpu_s(broker)
    disk = sum(f.stat().st_size for f in (data_dir / f"{topic}-0").glob("*.log"))
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for recs in c.poll(5000).values():
                got += len(recs)
        consume_s = time.perf_counter() - t0
    with Admin(broker.grpc_address) as admin:
        admin.delete_topic(topic)
    return {
        "produce_records_per_s": n / produce_s,
        "payload_mb_per_s": payload / produce_s / MB,
        "disk_bytes_per_record": disk / n,
        "payload_bytes_per_record": payload / n,
        "consume_records_per_s": n / consume_s,
        # CPU time per MB of payload while producing (this process, the broker):
        # on a shared, loaded machine throughput follows their sum.
        "producer_cpu_ms_per_mb": (cpu1[0] - cpu0[0]) * 1e3 / (payload / MB),
        "broker_cpu_ms_per_mb": (cpu1[1] - cpu0[1]) * 1e3 / (payload / MB),
    }


def _cpu_s(broker: Broker) -> tuple[float, float]:
    """(this process's, the broker's) user + system CPU seconds so far."""
    t = os.times()
    assert broker.child is not None
    stat = Path(f"/proc/{broker.child.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return t.user + t.system, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


Results = dict[str, dict[str, list[dict[str, float]]]]  # workload -> codec -> runs


def measure(
    records: int,
    runs: int,
    workdir: Path,
    log: Callable[[str], None],
    codecs: tuple[str, ...] = CODECS,
    workloads: tuple[str, ...] = WORKLOADS,
    link_mbit: float | None = None,
) -> Results:
    """Every (workload, codec) ``runs`` times, interleaved, on one broker; with
    ``link_mbit`` the client reaches it over a link of that speed each way
    (:mod:`benchmarks._link`)."""
    results: Results = {}
    with (
        tempfile.TemporaryDirectory(prefix="compression-bench-", dir=workdir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        data = Path(tmp) / "data"
        broker = Broker(data, Path(tmp) / "broker.log")
        broker.start()
        try:
            if link_mbit is not None:
                port = int(broker.grpc_address.rsplit(":", 1)[1])
                stack.enter_context(limited_link(port, link_mbit))
            for workload in workloads:
                n = records if workload == "W1-corpus" else max(1, records // 4)
                values = corpus_records(workload, n)
                by: dict[str, list[dict[str, float]]] = {c: [] for c in codecs}
                for r in range(runs):
                    for codec in codecs:
                        topic = (
                            f"{workload}-{codec}-{r}".lower().replace(":", "-").replace("@", "-t")
                        )
                        by[codec].append(one_run(broker, data, topic, codec, values))
                    log(f"compression {workload} round {r + 1}/{runs} done")
                results[workload] = by
        finally:
            broker.stop()
    return results


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(x[key] for x in runs))


def figures(results: Results, records: int) -> list[Figure]:
    """The section's figures; ratios are per round (codec / none of the same
    round, so both saw the same load), then the median."""
    out: list[Figure] = []
    units = {
        "produce_records_per_s": ("produce records/s", "records/s", True),
        "payload_mb_per_s": ("produce payload MB/s", "MB/s", True),
        "disk_bytes_per_record": ("disk bytes/record", "B", False),
        "consume_records_per_s": ("consume records/s", "records/s", True),
        "producer_cpu_ms_per_mb": ("producer CPU per MB", "ms", False),
        "broker_cpu_ms_per_mb": ("broker CPU per MB", "ms", False),
    }
    for workload, by in results.items():
        for codec, runs in by.items():
            info = {"workload": workload, "codec": codec, "records": records, "acks": "all"}
            for key, (name, unit, higher) in units.items():
                out.append(
                    Figure(f"compression {name}", unit, [x[key] for x in runs], higher, dict(info))
                )
            if codec != "none":
                none = by["none"]
                out.append(
                    Figure(
                        "compression payload MB/s vs none",
                        "x",
                        [
                            x["payload_mb_per_s"] / y["payload_mb_per_s"]
                            for x, y in zip(runs, none, strict=True)
                        ],
                        True,
                        dict(info),
                    )
                )
                out.append(
                    Figure(
                        "compression disk bytes vs none",
                        "x",
                        [
                            x["disk_bytes_per_record"] / y["disk_bytes_per_record"]
                            for x, y in zip(runs, none, strict=True)
                        ],
                        False,
                        dict(info),
                    )
                )
    return out


def run(ctx: Any) -> list[Figure]:
    """The ``compression`` section of ``benchmarks.run`` (sizes from ``ctx.scale``)."""
    records = ctx.scale.compression_records
    return figures(measure(records, ctx.runs, ctx.workdir, ctx.log), records)


def table(results: Results) -> str:
    """The markdown table of docs/benchmarks.md (medians)."""
    lines = [
        "| workload | codec | records/s | payload MB/s | vs none | disk bytes/record "
        "| consumer records/s | producer CPU ms/MB | broker CPU ms/MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, by in results.items():
        for codec, runs in by.items():
            vs = (
                statistics.median(
                    x["payload_mb_per_s"] / y["payload_mb_per_s"]
                    for x, y in zip(runs, by["none"], strict=True)
                )
                if codec != "none"
                else 1.0
            )
            lines.append(
                f"| {workload.removesuffix('-corpus')} | {codec} "
                f"| {_median(runs, 'produce_records_per_s'):,.0f} "
                f"| {_median(runs, 'payload_mb_per_s'):.1f} | {vs:.2f}x "
                f"| {_median(runs, 'disk_bytes_per_record'):,.1f} "
                f"| {_median(runs, 'consume_records_per_s'):,.0f} "
                f"| {_median(runs, 'producer_cpu_ms_per_mb'):.2f} "
                f"| {_median(runs, 'broker_cpu_ms_per_mb'):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--codecs",
        default=",".join(CODECS),
        help="comma-separated codec[:level][@threads] rows (none first: the ratios need it)",
    )
    ap.add_argument("--workloads", default="W1,W2", help="comma-separated: W1, W2")
    ap.add_argument("--write-corpus", action="store_true", help="(re)write the corpus and exit")
    ap.add_argument(
        "--link-mbit",
        type=float,
        help="shape the client <-> broker traffic to this many Mbit/s each way (root, tc)",
    )
    a = ap.parse_args()
    if a.write_corpus:
        make_corpus()
        return
    codecs = tuple(c.strip() for c in a.codecs.split(",") if c.strip())
    if not codecs or codecs[0] != "none":
        ap.error("--codecs must start with none (every ratio is against it)")
    workloads = tuple(f"{w.strip().upper()}-corpus" for w in a.workloads.split(",") if w.strip())
    if not workloads or not set(workloads) <= set(WORKLOADS):
        ap.error(f"--workloads must name some of W1, W2, not {a.workloads!r}")
    load_before = os.getloadavg()
    try:
        results = measure(
            a.records,
            a.runs,
            Path(tempfile.gettempdir()),
            lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True),
            codecs,
            workloads,
            a.link_mbit,
        )
    except LinkError as exc:
        raise SystemExit(f"compression_bench: {exc}") from None
    load_after = os.getloadavg()
    print(table(results))
    print(
        f"\n{a.records:,} W1 / {a.records // 4:,} W2 records, median of {a.runs} interleaved "
        f"runs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        + (f"a {a.link_mbit:g} Mbit/s link each way" if a.link_mbit else "loopback, unshaped")
    )
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "records": a.records,
                    "runs": a.runs,
                    "link_mbit": a.link_mbit,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
