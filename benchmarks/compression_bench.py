"""Batch compression, side by side in one run: none / lz4 / zstd (issue 14, "Speed").

``python -m benchmarks.compression_bench [--records N] [--runs R] [--json PATH]``.

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
consumer records/s. Medians over ``--runs``.

Not a test: it prints a table (and optionally JSON). The issue's target is
zstd W2 payload MB/s >= 1.5x uncompressed acks=all, with on-disk bytes <= 1/3.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.systems.logstore_sys import Broker

CORPUS = Path(__file__).resolve().parent / "corpus" / "log_lines.jsonl"
CODECS = ("none", "lz4", "zstd")
MB = 1e6


def make_corpus(path: Path = CORPUS, lines: int = 4000, seed: int = 14) -> None:
    """Write the corpus (deterministic: the same file for the same seed)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def corpus_records(workload: str, n: int) -> list[bytes]:
    lines = CORPUS.read_bytes().splitlines()
    if workload == "W2-corpus":
        lines = [b"\n".join(lines[i : i + 4]) for i in range(0, len(lines) - 3, 4)]
    return [lines[i % len(lines)] for i in range(n)]


def one_run(
    broker: Broker, data_dir: Path, topic: str, codec: str, values: list[bytes]
) -> dict[str, float]:
    from logstore.client import Admin, Consumer, Producer

    with Admin(broker.grpc_address) as admin:
        admin.create_topic(topic, 1)
    n = len(values)
    payload = sum(map(len, values))
    with Producer(broker.grpc_address, acks="all", compression=codec, linger_ms=5) as p:
        t0 = time.perf_counter()
        for i in range(0, n, 10_000):
            p.send_many(topic, values[i : i + 10_000], partition=0)
        p.flush()
        produce_s = time.perf_counter() - t0
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
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write-corpus", action="store_true", help="(re)write the corpus and exit")
    a = ap.parse_args()
    if a.write_corpus:
        make_corpus()
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="compression-bench-") as tmp:
        data = Path(tmp) / "data"
        broker = Broker(data, Path(tmp) / "broker.log")
        broker.start()
        try:
            for workload in ("W1-corpus", "W2-corpus"):
                n = a.records if workload == "W1-corpus" else a.records // 4
                values = corpus_records(workload, n)
                runs: dict[str, list[dict[str, float]]] = {c: [] for c in CODECS}
                for r in range(a.runs):
                    for codec in CODECS:
                        runs[codec].append(
                            one_run(broker, data, f"{workload}-{codec}-{r}".lower(), codec, values)
                        )
                results[workload] = {
                    c: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
                    for c, rs in runs.items()
                }
        finally:
            broker.stop()
    print(f"{'workload':<10} {'codec':<5} {'records/s':>10} {'payload MB/s':>12} "
          f"{'disk B/rec':>10} {'payload B/rec':>13} {'consume rec/s':>13}")  # fmt: skip
    for workload, by in results.items():
        for codec, f in by.items():
            print(
                f"{workload:<10} {codec:<5} {f['produce_records_per_s']:>10,.0f} "
                f"{f['payload_mb_per_s']:>12.1f} {f['disk_bytes_per_record']:>10.1f} "
                f"{f['payload_bytes_per_record']:>13.1f} {f['consume_records_per_s']:>13,.0f}"
            )
    if a.json:
        a.json.write_text(
            json.dumps({"records": a.records, "runs": a.runs, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
