"""Embedded storage engine benchmark (issue 3, "Speed"): ``logstore.Store``
with no server, in this process.

For 100-B and 1 KiB records:

* append records/s and MB/s: no fsync; ``flush()`` after every batch; group
  commit across 8 threads (each appends a batch with ``sync=True``; one fsync
  serves every waiter behind it);
* sequential read records/s: ``Store.read`` (Record objects, target
  >= 1,500,000/s for 100-B records), ``Store.read_columns`` (the client's
  ColumnBatch, target >= 5,000,000/s) and ``Store.read_frames`` (raw stored
  frames, what the broker sends);
* random ``read(offset)`` latency p50/p99 over a partition of many 1 MiB
  segments (batches of 100 records);
* restart time of ``Store.open`` after ``close()`` and after ``kill -9`` of the
  process that wrote the data;
* appending pre-built 1 MiB frames (``append_raw``, the broker's path: with
  the batch's max timestamp given, as the broker computes it while splitting
  the request), MB/s: target >= 400 MB/s to the page cache; and the per-batch
  cost of ``append_raw`` left to find the max timestamp in the records itself;
* per-batch cost of the append path for batches filled up to max_batch_bytes
  with 10 KiB records (~100 per batch) vs 100-B records (~9,000 per batch):
  target within 1.5x.

Batches are full (up to ``max_batch_bytes`` = 1 MiB) unless said otherwise.
Every measurement is bounded by bytes (``Scale``) and by ``TIME_LIMIT_S``.
Large sizes are opt-in (``--bytes``) and check free space first. Run alone:
``python -m benchmarks.storage_bench [--bytes N] [--runs N]``.

Side by side with another tree (the "today" column): ``--baseline DIR``
(e.g. a ``git worktree add --detach /tmp/old main``) runs this same
measurement code against DIR's ``logstore`` and against this tree's, each in
its own process, alternating for ``--rounds`` rounds so that drift and
neighbours on a shared machine hit both columns alike; the table gives the
median over rounds of each figure, and new/today. A figure the baseline has no
API for (``read_columns``) shows "-".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._stats import MB, Figure, MiB, fmt
from benchmarks.systems import payloads

TIME_LIMIT_S = 10.0
MAX_BATCH = MiB
GROUP_THREADS = 8
GROUP_BATCH_RECORDS = 100
RANDOM_READS = 2_000
#: Below every timestamp: as a batch's max timestamp it leaves the base
#: timestamp as the max (what the broker passes for records without their own).
#: Spelled here, not imported, so the bench also runs against older trees.
NO_TIMESTAMP_MS = -(1 << 63)


def _per_batch(size: int, batch_bytes: int = MAX_BATCH) -> int:
    """Records of ``size`` bytes that fill a batch of ``batch_bytes`` (header included)."""
    from logstore.wire import encode_values

    one = len(encode_values([b"\x00" * size]))
    return max(1, (batch_bytes - _frame_overhead()) // one)


def _frame_overhead() -> int:
    from logstore.wire import FRAME_OVERHEAD

    return int(FRAME_OVERHEAD)


def _open(path: Path) -> Any:
    from logstore import Store

    return Store.open(path)


def _fresh(ctx_dir: Path, name: str) -> Path:
    d = ctx_dir / name
    shutil.rmtree(d, ignore_errors=True)
    return d


def _append_run(
    d: Path, size: int, total_bytes: int, per_batch: int, after: Callable[[Any], None] | None
) -> tuple[int, float]:
    values = payloads(size, per_batch * 64)
    n_batches = max(1, total_bytes // (per_batch * size))
    with _open(d) as store:
        store.create_topic("t", 1)
        deadline = time.perf_counter() + TIME_LIMIT_S
        t0 = time.perf_counter()
        count = 0
        for b in range(n_batches):
            i = (b % 64) * per_batch
            store.append("t", 0, values[i : i + per_batch])
            if after is not None:
                after(store)
            count += per_batch
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
    return count, elapsed


def _group_commit(d: Path, size: int, total_bytes: int) -> tuple[int, float]:
    values = payloads(size, GROUP_BATCH_RECORDS)
    per_thread = max(1, total_bytes // (GROUP_THREADS * GROUP_BATCH_RECORDS * size))
    counts = [0] * GROUP_THREADS
    with _open(d) as store:
        store.create_topic("t", 1)
        deadline = time.perf_counter() + TIME_LIMIT_S
        barrier = threading.Barrier(GROUP_THREADS + 1)

        def work(k: int) -> None:
            barrier.wait()
            for _ in range(per_thread):
                store.append("t", 0, values, sync=True)
                counts[k] += GROUP_BATCH_RECORDS
                if time.perf_counter() > deadline:
                    break

        threads = [threading.Thread(target=work, args=(k,)) for k in range(GROUP_THREADS)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    return sum(counts), elapsed


def _fill(
    d: Path, size: int, total_bytes: int, per_batch: int, config: dict[str, Any] | None = None
) -> int:
    """Write ``total_bytes`` of records in batches of ``per_batch`` (append_raw); the count."""
    from logstore.wire import encode_values

    values = payloads(size, per_batch)
    body = encode_values(values)
    n_batches = max(1, total_bytes // (per_batch * size))
    with _open(d) as store:
        store.create_topic("t", 1, config or {})
        for _ in range(n_batches):
            store.append_raw("t", 0, body, per_batch)
    return n_batches * per_batch


def _read_objects(d: Path, n: int) -> tuple[int, float]:
    with _open(d) as store:
        t0 = time.perf_counter()
        off = count = 0
        deadline = t0 + TIME_LIMIT_S
        while off < n and time.perf_counter() < deadline:
            recs = store.read("t", 0, off, max_bytes=MiB)
            if not recs:
                break
            count += len(recs)
            off = recs[-1].offset + 1
        return count, time.perf_counter() - t0


def _read_columns(d: Path, n: int) -> tuple[int, float]:
    with _open(d) as store:
        t0 = time.perf_counter()
        off = count = 0
        deadline = t0 + TIME_LIMIT_S
        while off < n and time.perf_counter() < deadline:
            cols = store.read_columns("t", 0, off, max_bytes=MiB)
            if not len(cols):
                break
            count += len(cols)
            off = int(cols.offsets[-1]) + 1
        return count, time.perf_counter() - t0


def _read_frames(d: Path, n: int) -> tuple[int, int, float]:
    with _open(d) as store:
        t0 = time.perf_counter()
        off = nbytes = 0
        deadline = t0 + TIME_LIMIT_S
        while off < n and time.perf_counter() < deadline:
            res = store.read_frames("t", 0, off, 4 * MiB)
            if not res.data:
                break
            nbytes += len(res.data)
            off = res.next_offset
        return off, nbytes, time.perf_counter() - t0


def _random_reads(d: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(42)
    offsets = [rng.randrange(n) for _ in range(RANDOM_READS)]
    with _open(d) as store:
        lat_obj = np.empty(len(offsets), dtype=np.int64)
        lat_raw = np.empty(len(offsets), dtype=np.int64)
        for i, off in enumerate(offsets):
            t = time.perf_counter_ns()
            recs = store.read("t", 0, off, max_bytes=1)
            lat_obj[i] = time.perf_counter_ns() - t
            assert recs and recs[0].offset == off
        for i, off in enumerate(offsets):
            t = time.perf_counter_ns()
            store.read_frames("t", 0, off, 1)
            lat_raw[i] = time.perf_counter_ns() - t
    return lat_obj, lat_raw


_WRITER = """
import os, signal, sys
from logstore import Store
from logstore.wire import encode_values
path = sys.argv[1]
size, per_batch, n_batches = (int(x) for x in sys.argv[2:5])
clean = sys.argv[5] == "1"
body = encode_values([os.urandom(size)] * per_batch)
store = Store.open(path)
if "t" not in [t.name for t in store.topics()]:
    store.create_topic("t", 1, {"segment_bytes": 64 << 20})
for _ in range(n_batches):
    store.append_raw("t", 0, body, per_batch)
if clean:
    store.close()
else:
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _restart(d: Path, size: int, total_bytes: int, clean: bool) -> float:
    """Write ``total_bytes`` in a child process that closes cleanly or kills itself (-9);
    return the time of ``Store.open`` here."""
    per_batch = _per_batch(size)
    n_batches = max(1, total_bytes // (per_batch * size))
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _WRITER,
            str(d),
            str(size),
            str(per_batch),
            str(n_batches),
            "1" if clean else "0",
        ],
        check=False,
        timeout=600,
        capture_output=True,
    )
    if p.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"writer failed: {p.stderr.decode(errors='replace')[-500:]}")
    t0 = time.perf_counter()
    store = _open(d)
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed


def _figure(name: str, unit: str, info: dict[str, Any], higher: bool = True) -> Figure:
    return Figure(
        name,
        unit,
        higher_is_better=higher,
        info={"workload": "storage", "system": "logstore", **info},
    )


def run(ctx: Any, total_bytes: int | None = None) -> list[Figure]:
    """All storage figures; ``ctx`` gives workdir, runs, scale and log()."""
    total = total_bytes or ctx.scale.storage_bytes
    base = ctx.workdir / "storage"
    base.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(base).free < 4 * total:
        raise RuntimeError(f"not enough free space for {total >> 20} MiB of storage benchmarks")
    figs: list[Figure] = []
    runs = ctx.runs

    def add(
        name: str, unit: str, info: dict[str, Any], values: list[float], higher: bool = True
    ) -> None:
        f = _figure(name, unit, info, higher)
        f.values = values
        figs.append(f)
        ctx.log(f"storage {name}: {fmt(f.median, unit)}")

    for size in (100, 1024):
        per = _per_batch(size)
        info = {"size": size, "batch_records": per}
        for mode, after, bound in (
            ("no fsync", None, "disk_write_pagecache"),
            ("flush per batch", lambda s: s.flush(), "disk_seq_fdatasync"),
        ):
            recs, mbs = [], []
            for r in range(runs):
                c, e = _append_run(_fresh(base, f"a{size}-{r}"), size, total, per, after)
                recs.append(c / e)
                mbs.append(c * size / e / MB)
                shutil.rmtree(base / f"a{size}-{r}", ignore_errors=True)
            add(
                f"append {size} B {mode} records/s",
                "records/s",
                {**info, "mode": mode, "bound": bound},
                recs,
            )
            add(f"append {size} B {mode} MB/s", "MB/s", {**info, "mode": mode, "bound": bound}, mbs)
        recs = []
        for r in range(runs):
            c, e = _group_commit(_fresh(base, f"g{size}-{r}"), size, total // 4)
            recs.append(c / e)
            shutil.rmtree(base / f"g{size}-{r}", ignore_errors=True)
        gi = {
            "size": size,
            "batch_records": GROUP_BATCH_RECORDS,
            "threads": GROUP_THREADS,
            "mode": "group commit",
        }
        add(f"append {size} B group commit x{GROUP_THREADS} records/s", "records/s", gi, recs)

        # sequential reads
        d = _fresh(base, f"r{size}")
        n = _fill(d, size, total, per)
        obj, cols, frames, frames_mb = [], [], [], []
        has_columns = hasattr(_store_class(), "read_columns")
        for _ in range(runs):
            c, e = _read_objects(d, n)
            obj.append(c / e)
            if has_columns:
                c, e = _read_columns(d, n)
                cols.append(c / e)
            c2, nb, e2 = _read_frames(d, n)
            frames.append(c2 / e2)
            frames_mb.append(nb / e2 / MB)
        add(
            f"read {size} B objects records/s",
            "records/s",
            {"size": size, "mode": "Record objects"},
            obj,
        )
        if has_columns:
            add(
                f"read {size} B columns records/s",
                "records/s",
                {"size": size, "mode": "ColumnBatch"},
                cols,
            )
        add(
            f"read {size} B frames records/s",
            "records/s",
            {"size": size, "mode": "raw frames"},
            frames,
        )
        add(
            f"read {size} B frames MB/s",
            "MB/s",
            {"size": size, "mode": "raw frames", "bound": "memcpy"},
            frames_mb,
        )
        shutil.rmtree(d, ignore_errors=True)

    # random reads over many segments (1 MiB segments, batches of 100 records)
    d = _fresh(base, "rand")
    rand_bytes = min(total, 64 * MiB)
    n = _fill(d, 100, rand_bytes, 100, {"segment_bytes": MiB})
    segs = len(list((d / "t-0").glob("*.log")))
    p = {k: [] for k in ("obj50", "obj99", "raw50", "raw99")}
    for _ in range(runs):
        lo, lr = _random_reads(d, n)
        p["obj50"].append(float(np.percentile(lo, 50)) / 1e3)
        p["obj99"].append(float(np.percentile(lo, 99)) / 1e3)
        p["raw50"].append(float(np.percentile(lr, 50)) / 1e3)
        p["raw99"].append(float(np.percentile(lr, 99)) / 1e3)
    ri = {"size": 100, "segments": segs, "batch_records": 100, "reads": RANDOM_READS}
    add("random read(offset) p50", "µs", {**ri, "mode": "Record objects"}, p["obj50"], False)
    add("random read(offset) p99", "µs", {**ri, "mode": "Record objects"}, p["obj99"], False)
    add("random read_frames(offset) p50", "µs", {**ri, "mode": "raw frames"}, p["raw50"], False)
    add("random read_frames(offset) p99", "µs", {**ri, "mode": "raw frames"}, p["raw99"], False)
    shutil.rmtree(d, ignore_errors=True)

    # restart: clean vs kill -9
    for clean in (True, False):
        vals = []
        for r in range(runs):
            d = _fresh(base, f"restart-{clean}-{r}")
            vals.append(_restart(d, 1024, total, clean))
            shutil.rmtree(d, ignore_errors=True)
        mode = "clean" if clean else "kill -9"
        add(f"Store.open after {mode}", "s", {"mode": mode, "data_bytes": total}, vals, False)

    # pre-built 1 MiB frames via append_raw (the broker's path), and per-batch cost
    from logstore.wire import encode_values

    for size in (100, 10 * 1024):
        per = _per_batch(size)
        body = encode_values(payloads(size, per))
        mbs, per_batch_us, unknown_max_us = [], [], []
        for r in range(runs):
            d = _fresh(base, f"raw{size}-{r}")
            with _open(d) as store:
                store.create_topic("t", 1)
                n_batches = max(1, total // len(body))
                t0 = time.perf_counter()
                done = 0
                for _ in range(n_batches):
                    store.append_raw("t", 0, body, per, max_timestamp_ms=NO_TIMESTAMP_MS)
                    done += 1
                    if time.perf_counter() - t0 > TIME_LIMIT_S:
                        break
                e = time.perf_counter() - t0
                # the same batches with the max timestamp left to append_raw
                t1 = time.perf_counter()
                for _ in range(done):
                    store.append_raw("t", 0, body, per)
                unknown_max_us.append((time.perf_counter() - t1) / done * 1e6)
            mbs.append(done * len(body) / e / MB)
            per_batch_us.append(e / done * 1e6)
            shutil.rmtree(d, ignore_errors=True)
        bi = {"size": size, "batch_records": per, "batch_bytes": len(body) + _frame_overhead()}
        add(
            f"append_raw 1 MiB batches of {size} B records MB/s",
            "MB/s",
            {**bi, "mode": "append_raw", "bound": "disk_write_pagecache"},
            mbs,
        )
        add(
            f"append_raw per-batch cost, {size} B records",
            "µs",
            {**bi, "mode": "append_raw"},
            per_batch_us,
            False,
        )
        add(
            f"append_raw per-batch cost, {size} B records, max timestamp not given",
            "µs",
            {**bi, "mode": "append_raw, max_timestamp_ms=None"},
            unknown_max_us,
            False,
        )
    # the same through Store.append (values list: includes encoding)
    for size in (100, 10 * 1024):
        per = _per_batch(size)
        us = []
        for r in range(runs):
            c, e = _append_run(_fresh(base, f"enc{size}-{r}"), size, total, per, None)
            us.append(e / (c / per) * 1e6)
            shutil.rmtree(base / f"enc{size}-{r}", ignore_errors=True)
        add(
            f"append per-batch cost, {size} B records",
            "µs",
            {"size": size, "batch_records": per, "mode": "append (encode + write)"},
            us,
            False,
        )
    shutil.rmtree(base, ignore_errors=True)
    return figs


def _store_class() -> Any:
    from logstore import Store

    return Store


#: Run in a child process: bind ``logstore`` to the tree under test, then load
#: this measurement code from this tree, run it, print the figures as JSON.
_CHILD = """
import json, sys, tempfile
from pathlib import Path
tree, here, nbytes, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
import logstore, logstore.storage, logstore.wire
assert logstore.__file__.startswith(tree), logstore.__file__
sys.path.insert(0, here)
from benchmarks.storage_bench import run
from benchmarks.workloads import QUICK, Ctx
with tempfile.TemporaryDirectory(prefix="logstore-storage-bench-") as d:
    figs = run(Ctx(workdir=Path(d), runs=runs, scale=QUICK, verbose=False), nbytes)
print(json.dumps([f.to_dict() for f in figs]))
"""


def _run_tree(tree: Path, nbytes: int, runs: int) -> list[dict[str, Any]]:
    here = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(tree)}  # also for the restart writer child
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(here), str(nbytes), str(runs)],
        cwd=tempfile.gettempdir(),
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if p.returncode != 0:
        raise RuntimeError(f"bench of {tree} failed: {p.stderr[-2000:]}")
    out: list[dict[str, Any]] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def compare(baseline: Path, nbytes: int, rounds: int) -> str:
    """Both trees, alternating per round; a side-by-side table of medians over rounds."""
    here = Path(__file__).resolve().parent.parent
    values: dict[str, dict[str, list[float]]] = {"today": {}, "new": {}}
    meta: dict[str, tuple[str, bool]] = {}
    order: list[str] = []
    for r in range(rounds):
        for label, tree in (
            (("today", baseline), ("new", here))
            if r % 2 == 0
            else (
                ("new", here),
                ("today", baseline),
            )
        ):
            for f in _run_tree(tree, nbytes, 1):
                name = f["name"]
                if name not in meta:
                    meta[name] = (f["unit"], f["higher_is_better"])
                    order.append(name)
                values[label].setdefault(name, []).extend(f["values"])
            print(f"  round {r + 1}/{rounds}: {label} done", file=sys.stderr, flush=True)

    def cell(vs: list[float] | None, unit: str) -> str:
        if not vs:
            return "-"
        med = float(np.median(vs))
        return f"{fmt(med, unit)} [{fmt(min(vs))} .. {fmt(max(vs))}]"

    rows = [("figure", f"today ({baseline})", "new (this tree)", "new/today", "better")]
    for name in order:
        unit, higher = meta[name]
        old, new = values["today"].get(name), values["new"].get(name)
        ratio = f"{np.median(new) / np.median(old):.2f}x" if old and new else "-"
        rows.append(
            (name, cell(old, unit), cell(new, unit), ratio, "higher" if higher else "lower")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    head = f"storage bench, {rounds} rounds alternating, median [min .. max] over rounds"
    return head + "\n" + "\n".join(lines)


def main() -> int:
    from benchmarks.report import figures_table
    from benchmarks.workloads import QUICK, Ctx

    p = argparse.ArgumentParser(prog="python -m benchmarks.storage_bench")
    p.add_argument("--bytes", type=int, default=QUICK.storage_bytes, help="data per measurement")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another tree to measure side by side")
    p.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds per tree")
    a = p.parse_args()
    if a.baseline is not None:
        print(compare(a.baseline.resolve(), a.bytes, a.rounds))
        return 0
    with tempfile.TemporaryDirectory(prefix="logstore-storage-bench-") as d:
        ctx = Ctx(workdir=Path(d), runs=a.runs, scale=QUICK)
        figs = run(ctx, a.bytes)
    print(figures_table({"figures": [f.to_dict() for f in figs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
