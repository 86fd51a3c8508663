"""Compaction: MB/s cleaned and the cleaner's peak RSS (issue 10, "Speed").

``python -m benchmarks.compaction_bench [--keys N] [--runs R] [--buffer-bytes B]``,
or the ``compaction`` section of ``benchmarks.run``. Storage only, no broker:

1. A worker process fills one partition of a compacted topic (``segment_bytes``
   64 MiB (less for small runs), so all but the active segment are cleanable; ``max_batch_bytes``
   16 MiB) with ``Store.append`` batches of 50,000 records: every one of
   ``keys`` distinct 16-byte keys twice (two rounds in key order), each with a
   16-byte value, so a clean halves the log. Untimed; the time is logged.
2. A fresh worker process opens the store with the **default** ``StoreConfig``
   (``cleaner_buffer_bytes`` 128 MiB: ~5.59 million keys per pass at 24 bytes a
   key, no I/O bound; ``--buffer-bytes`` overrides the buffer), samples its
   own RSS every 20 ms in a thread, and runs ``Store.clean()`` once
   (the dirty ratio is 1.0, above the default 0.5). Figures: MB/s cleaned
   (bytes of the cleanable segments before the clean / seconds of the clean),
   records/s, the cleaner's passes and bytes read/written, the log size before
   and after, and peak RSS of that process (absolute and above its RSS after
   ``Store.open``, i.e. what the clean itself added).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._proc import rss_bytes, run_workers
from benchmarks._stats import MB, Figure

NAME = "compaction"
TOPIC = "compacted"
SEGMENT_BYTES = 64 << 20
BATCH = 50_000
KEY_BYTES = VALUE_BYTES = 16
ROUNDS = 2


#: Bytes one stored record takes (16-byte key and value, varints, record header).
_STORED_RECORD_BYTES = 38


def segment_bytes(keys: int) -> int:
    """64 MiB, or smaller for small runs so that at least ~8 segments are sealed
    (the active segment is never cleaned)."""
    log_bytes = keys * ROUNDS * _STORED_RECORD_BYTES
    return max(1 << 20, min(SEGMENT_BYTES, log_bytes // 8))


def _fill(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Worker: create the topic and append ``ROUNDS`` x ``keys`` keyed records."""
    from logstore.storage import Store
    from logstore.wire import Record

    keys = int(args["keys"])
    ready()
    t0 = time.monotonic()
    store = Store.open(args["dir"])
    try:
        store.create_topic(
            TOPIC,
            1,
            {
                "cleanup_policy": "compact",
                "segment_bytes": segment_bytes(keys),
                "max_batch_bytes": 16 << 20,
            },
        )
        value = b"v" * VALUE_BYTES
        batch = max(100, min(BATCH, keys // 16))  # small runs: several batches per segment
        for rnd in range(ROUNDS):
            for lo in range(0, keys, batch):
                hi = min(keys, lo + batch)
                store.append(
                    TOPIC, 0, [Record(value=value, key=b"k%015d" % i) for i in range(lo, hi)]
                )
            del rnd
        store.flush()
        info = store.partition_info(TOPIC, 0)
    finally:
        store.close()
    return {
        "seconds": time.monotonic() - t0,
        "records": info.log_end_offset,
        "bytes": info.size_bytes,
        "segments": info.segment_count,
    }


def _clean(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Worker: open with the default config, run one ``Store.clean()``; peak RSS."""
    from logstore.config import StoreConfig
    from logstore.storage import Store

    buffer_bytes = args.get("buffer_bytes")
    config = (
        StoreConfig() if buffer_bytes is None else StoreConfig(cleaner_buffer_bytes=buffer_bytes)
    )
    store = Store.open(args["dir"], config)
    try:
        lg = store.partition(TOPIC, 0)
        cleanable = sum(s.size for s in lg.segments[:-1])
        before = store.partition_info(TOPIC, 0)
        base_rss = rss_bytes(os.getpid())
        peak = [base_rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], rss_bytes(os.getpid()))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        ready()
        t0 = time.monotonic()
        cleaned = store.clean()
        elapsed = time.monotonic() - t0
        stop.set()
        t.join()
        stats = store.cleaner.stats
        after = store.partition_info(TOPIC, 0)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        store.close()
    return {
        "seconds": elapsed,
        "cleaned_partitions": cleaned,
        "cleanable_bytes": cleanable,
        "records_before": before.log_end_offset - before.log_start_offset,
        "bytes_before": before.size_bytes,
        "bytes_after": after.size_bytes,
        "passes": stats.passes,
        "bytes_read": stats.bytes_read,
        "bytes_written": stats.bytes_written,
        "records_removed": stats.records_removed,
        "base_rss": base_rss,
        "peak_rss": max(peak[0], maxrss),
    }


def measure(
    keys: int,
    runs: int,
    workdir: Path,
    log: Callable[[str], None],
    buffer_bytes: int | None = None,
) -> list[Figure]:
    from logstore.config import StoreConfig

    size = StoreConfig.cleaner_buffer_bytes if buffer_bytes is None else buffer_bytes
    buffer_desc = f"{size / (1 << 20):g} MiB" + (" (default)" if buffer_bytes is None else "")
    info = {
        "workload": NAME,
        "system": "logstore",
        "mode": f"{keys:,} keys x {ROUNDS}, cleaner_buffer_bytes {buffer_desc}",
        "cleaner_buffer_bytes": size,
        "keys": keys,
        "records": keys * ROUNDS,
        "segment_bytes": segment_bytes(keys),
        "record_bytes": KEY_BYTES + VALUE_BYTES,
    }
    figs = {
        "mbs": Figure(f"{NAME} MB/s cleaned", "MB/s", info=dict(info)),
        "rps": Figure(f"{NAME} records/s cleaned", "records/s", info=dict(info)),
        "secs": Figure(f"{NAME} clean time", "s", higher_is_better=False, info=dict(info)),
        "passes": Figure(f"{NAME} passes", "passes", higher_is_better=False, info=dict(info)),
        "read": Figure(f"{NAME} bytes read / log", "x", higher_is_better=False, info=dict(info)),
        "peak": Figure(f"{NAME} cleaner peak RSS", "MB", higher_is_better=False, info=dict(info)),
        "added": Figure(
            f"{NAME} cleaner RSS above open", "MB", higher_is_better=False, info=dict(info)
        ),
        "ratio": Figure(f"{NAME} size after / before", "%", higher_is_better=False, info=info),
    }
    d = Path(tempfile.mkdtemp(prefix="compaction-", dir=workdir))
    try:
        (filled,) = run_workers(_fill, [{"dir": str(d / "fresh"), "keys": keys}], 7200)
        log(
            f"{NAME}: filled {filled['records']:,} records, {filled['bytes'] / MB:,.0f} MB, "
            f"{filled['segments']} segments in {filled['seconds']:.1f} s "
            f"({filled['records'] / filled['seconds']:,.0f} records/s, Store.append)"
        )
        for _ in range(runs):
            run_dir = d / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(d / "fresh", run_dir)
            (r,) = run_workers(_clean, [{"dir": str(run_dir), "buffer_bytes": buffer_bytes}], 7200)
            secs = r["seconds"]
            figs["mbs"].values.append(r["cleanable_bytes"] / MB / secs)
            figs["rps"].values.append(r["records_before"] / secs)
            figs["secs"].values.append(secs)
            figs["passes"].values.append(float(r["passes"]))
            figs["read"].values.append(r["bytes_read"] / max(1, r["cleanable_bytes"]))
            figs["peak"].values.append(r["peak_rss"] / MB)
            figs["added"].values.append((r["peak_rss"] - r["base_rss"]) / MB)
            figs["ratio"].values.append(100.0 * r["bytes_after"] / r["bytes_before"])
            log(
                f"{NAME}: cleaned {r['cleanable_bytes'] / MB:,.0f} MB in {secs:.1f} s "
                f"({r['cleanable_bytes'] / MB / secs:.1f} MB/s), {r['passes']} passes, "
                f"read {r['bytes_read'] / MB:,.0f} MB, wrote {r['bytes_written'] / MB:,.0f} MB, "
                f"removed {r['records_removed']:,}; {r['bytes_before'] / MB:,.0f} -> "
                f"{r['bytes_after'] / MB:,.0f} MB; peak RSS {r['peak_rss'] / MB:,.0f} MB "
                f"({(r['peak_rss'] - r['base_rss']) / MB:+,.0f} MB over open)"
            )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    for f in figs.values():
        f.info["fill_seconds"] = filled["seconds"]
    return list(figs.values())


def run(ctx: Any) -> list[Figure]:
    """The ``compaction`` section of ``benchmarks.run`` (sizes from ``ctx.scale``)."""
    return measure(ctx.scale.compaction_keys, ctx.runs, ctx.workdir, ctx.log)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report

    p = argparse.ArgumentParser(prog="python -m benchmarks.compaction_bench")
    p.add_argument("--keys", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument(
        "--buffer-bytes", type=int, default=None, help="cleaner_buffer_bytes (default: the default)"
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    started = time.time()
    figs = measure(
        a.keys,
        a.runs,
        a.workdir or Path(tempfile.gettempdir()),
        lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True),
        a.buffer_bytes,
    )
    print(report.figures_table({"figures": [f.to_dict() for f in figs]}))
    if a.json is not None:
        from benchmarks.machine import write_results

        write_results(
            a.json,
            figs,
            started,
            {"argv": argv, "keys": a.keys, "runs": a.runs, "buffer_bytes": a.buffer_bytes},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
