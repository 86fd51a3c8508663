"""Turn a results JSON into the docs: PNG plots (matplotlib) and markdown tables.

``python -m benchmarks.publish [RESULTS.json] [--docs docs]`` (default: the
newest file in benchmarks/results/) writes

* ``docs/bench-throughput.png``  W1-W3 throughput per system and mode
* ``docs/bench-latency.png``     W4 latency percentiles per system, mode and rate
* ``docs/bench-partitions.png``  W5 server RSS (and descriptors) against partition count

and replaces the part of ``docs/benchmarks.md`` between ``<!-- BEGIN
GENERATED -->`` and ``<!-- END GENERATED -->`` with the tables of that run.

``python -m benchmarks.publish --groups W7.json REBALANCE.json ...`` writes only
the consumer-groups tables (issue 10), between ``<!-- BEGIN GROUPS GENERATED
-->`` and ``<!-- END GROUPS GENERATED -->``, each file's tables headed by its run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._stats import fmt

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
SYSTEM_NAMES = {"logstore": "logstore", "redis": "Redis Streams", "nats": "JetStream"}
#: Workloads shown systems side by side; the others as one row per figure.
PIVOTED = ("W1", "W2", "W3", "W4", "W5", "W7")
COLORS = {"logstore": "#1f77b4", "redis": "#d62728", "nats": "#2ca02c"}


def newest() -> Path:
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    if not files:
        raise SystemExit("no results in benchmarks/results/: run `make bench-compare` first")
    return files[-1]


def _col(f: dict[str, Any]) -> str:
    info = f.get("info", {})
    system = info.get("system", "")
    return f"{SYSTEM_NAMES.get(system, system)}, {info.get('mode', '')}"


def _cell(f: dict[str, Any]) -> str:
    s = fmt(f["median"])
    if len(f.get("values", [])) > 1:
        s += f" ({fmt(f['min'])} .. {fmt(f['max'])})"
    return s


def pivot(figs: list[dict[str, Any]], workload: str) -> str:
    """Rows: figure name (+unit); columns: system, mode; cells: median (min .. max)."""
    sel = [f for f in figs if f.get("info", {}).get("workload") == workload]
    cols: list[str] = []
    rows: dict[str, dict[str, str]] = defaultdict(dict)
    for f in sel:
        c = _col(f)
        if c not in cols:
            cols.append(c)
        name = f["name"].removeprefix(workload).strip()
        if f["unit"] not in name:
            name += f" ({f['unit']})"
        rows[name][c] = _cell(f)
    return report.markdown_table(
        ["", *cols], [[r, *(rows[r].get(c, "") for c in cols)] for r in rows]
    )


def flat(results: dict[str, Any], workload: str) -> str:
    """One row per figure: figure, mode, median, min .. max, % of the limit."""
    lims = results.get("limits", {})
    rows = []
    for f in results["figures"]:
        info = f.get("info", {})
        if info.get("workload") != workload:
            continue
        p = report.pct_of_limit(f, lims)
        rows.append(
            [
                f["name"].removeprefix(workload).strip(),
                str(info.get("mode", "")),
                fmt(f["median"], f["unit"]),
                f"{fmt(f['min'])} .. {fmt(f['max'])}" if len(f.get("values", [])) > 1 else "",
                f"{p[0]:.0f} % of {p[1]}" if p else "",
            ]
        )
    return report.markdown_table(["figure", "mode", "median", "min .. max", "% of limit"], rows)


def logstore_pct_table(results: dict[str, Any]) -> str:
    """Every logstore figure that has a bounding limit, with its percentage."""
    lims = results.get("limits", {})
    out = []
    for f in results["figures"]:
        info = f.get("info", {})
        if info.get("system") != "logstore" or f["unit"] not in ("MB/s", "ms"):
            continue
        p = report.pct_of_limit(f, lims)
        if p:
            out.append(
                [
                    info.get("workload", ""),
                    f["name"],
                    str(info.get("mode", "")),
                    fmt(f["median"], f["unit"]),
                    f"{p[0]:.0f} %",
                    p[1],
                ]
            )
    return report.markdown_table(["", "figure", "mode", "median", "% of limit", "limit"], out)


def _find(figs: list[dict[str, Any]], name: str, system: str, mode: str | None = None) -> float:
    for f in figs:
        info = f.get("info", {})
        if (
            f["name"] == name
            and info.get("system") == system
            and (mode is None or info.get("mode") == mode)
        ):
            return float(f["median"])
    return math.nan


def headline(results: dict[str, Any]) -> str:
    """The README table: the main figure of each workload, systems side by side."""
    figs = results["figures"]
    cols = [
        ("logstore", "acks=1"),
        ("logstore", "acks=all (fsync)"),
        ("redis", "appendfsync no"),
        ("redis", "appendfsync always"),
        ("nats", "file, fsync ≤ 2 min"),
    ]
    heads = [
        "",
        "logstore acks=1",
        "logstore acks=all",
        "Redis, appendfsync no",
        "Redis, appendfsync always",
        "JetStream (fsync ≤ 2 min)",
    ]
    rows = []
    for label, name in (
        ("W1 produce 100 B, records/s", "W1 produce records/s"),
        ("W2 produce 1 KiB, MB/s, 1 producer", "W2 produce x1 MB/s"),
        ("W2 produce 1 KiB, MB/s, 8 producers", "W2 produce x8 MB/s"),
        ("W4 p99 latency at 2,000/s, ms", "W4 2,000/s latency p99"),
        ("W4 p99 latency at 20,000/s, ms", "W4 20,000/s latency p99"),
    ):
        rows.append([label, *(fmt(_find(figs, name, s, m)) for s, m in cols)])
    replay = {
        "logstore": max(
            _find(figs, "W3 replay records/s", "logstore", m) for m in ("objects", "columns")
        ),
        "redis": _find(figs, "W3 replay records/s", "redis"),
        "nats": _find(figs, "W3 replay records/s", "nats"),
    }
    rows.append(
        [
            "W3 replay 100 B, records/s (logstore: columns/objects, best)",
            fmt(replay["logstore"]),
            "",
            fmt(replay["redis"]),
            "",
            fmt(replay["nats"]),
        ]
    )
    return report.markdown_table(heads, rows)


def _get(
    figs: list[dict[str, Any]], name: str, system: str = "logstore", mode: str | None = None
) -> float:
    return _find(figs, name, system, mode)


def _issue12_rows(figs: list[dict[str, Any]]) -> list[list[str]]:
    """Issue 12's targets, as its text words them. The W4 latency rows take
    the better of the raw stream's linger 1 ms row (the one published in the
    W4 table) and its linger 0 row, since choosing ``linger_ms`` is the
    user's; both are printed."""
    rows: list[list[str]] = []

    def row(target: str, figure: str, cond: bool, *vals: float) -> None:
        state = "-" if any(math.isnan(v) for v in vals) else ("met" if cond else "**NOT MET**")
        rows.append([target, figure, state])

    redis_always = _get(figs, "W4 2,000/s latency p99", "redis", "appendfsync always")
    nats = _get(figs, "W4 2,000/s latency p99", "nats")
    for mode in ("acks=1", "acks=all (fsync)"):
        l1 = _get(figs, "W4 2,000/s latency p99", mode=mode)
        l0 = _get(figs, "W4 2,000/s linger 0 latency p99", mode=mode)
        best = min(l1, l0) if not (math.isnan(l1) or math.isnan(l0)) else l1
        row(
            f"W4 p99 at 2,000/s ≤ Redis `appendfsync always` and ≤ JetStream, logstore {mode} "
            "(better of linger 1 / 0)",
            f"{fmt(l1)} / {fmt(l0)} ms vs {fmt(redis_always)} / {fmt(nats)} ms",
            best <= min(redis_always, nats),
            best,
            redis_always,
            nats,
        )
    p50s = {
        f"raw {mode}": _get(figs, "W4 2,000/s linger 0 latency p50", mode=mode)
        for mode in ("acks=1", "acks=all (fsync)")
    }
    for mode in ("acks=1", "acks=all (fsync)"):
        p50s[f"Producer {mode}"] = _get(
            figs, "W4C 2,000/s linger 0 latency p50", mode=f"{mode} linger_ms=0"
        )
    row(
        "W4 p50 at 2,000/s ≤ 1 ms with linger_ms=0 (raw stream; Producer → Consumer, W4C)",
        ", ".join(f"{k} {fmt(v)}" for k, v in p50s.items()) + " ms",
        all(v <= 1.0 for v in p50s.values()),
        *p50s.values(),
    )
    mode = "acks=all (fsync)"
    l1 = _get(figs, "W4 20,000/s latency p99", mode=mode)
    l0 = _get(figs, "W4 20,000/s linger 0 latency p99", mode=mode)
    d1 = _get(figs, "W4 20,000/s delivered", mode=mode)
    d0 = _get(figs, "W4 20,000/s linger 0 delivered", mode=mode)
    met_by = [p for p, d in ((l1, d1), (l0, d0)) if p <= 5.0 and d >= 100.0]
    row(
        "W4 p99 at 20,000/s ≤ 5 ms, acks=all, every record delivered (better of linger 1 / 0)",
        f"{fmt(l1)} / {fmt(l0)} ms, delivered {fmt(d1)} / {fmt(d0)} %",
        bool(met_by),
        l1,
        d1,
    )
    one = _get(figs, "W5 1 partitions records/s", mode="acks=1")
    many = _get(figs, "W5 1000 partitions records/s", mode="acks=1")
    row(
        "W5 produce at 1,000 partitions ≥ 50 % of 1 partition (same run)",
        f"{fmt(many)} / {fmt(one)} records/s = {100 * many / one:.1f} %"
        if one and not math.isnan(one + many)
        else "-",
        many >= 0.5 * one,
        many,
        one,
    )
    return rows


def targets(results: dict[str, Any]) -> str:
    """The targets of issues 3-6 and 12, each with this run's figures and met / NOT MET."""
    figs = results["figures"]
    rows: list[list[str]] = []

    def row(target: str, figure: str, ok: bool | None) -> None:
        rows.append([target, figure, "-" if ok is None else ("met" if ok else "**NOT MET**")])

    def ok(cond: bool, *vals: float) -> bool | None:
        return None if any(math.isnan(v) for v in vals) else cond

    a1 = _get(figs, "W1 produce records/s", mode="acks=1")
    aa = _get(figs, "W1 produce records/s", mode="acks=all (fsync)")
    row(
        "W1 ≥ 1,000,000 records/s, acks=1, one Python producer",
        f"{fmt(a1)} records/s",
        ok(a1 >= 1e6, a1),
    )
    row(
        "W1 acks=all ≥ 80 % of acks=1",
        f"{100 * aa / a1:.0f} %" if a1 else "-",
        ok(aa >= 0.8 * a1, aa, a1),
    )
    # ahead of both peers on W1-W3, like for like (page cache vs page cache, fsync vs fsync)
    peers_fast = [("redis", "appendfsync no"), ("nats", None)]
    peers_safe = [("redis", "appendfsync always"), ("nats", None)]
    comparisons = []
    for name, lmode_fast, lmode_safe in (
        ("W1 produce records/s", "acks=1", "acks=all (fsync)"),
        ("W2 produce x1 MB/s", "acks=1", "acks=all (fsync)"),
        ("W2 produce x8 MB/s", "acks=1", "acks=all (fsync)"),
    ):
        for lmode, peers in ((lmode_fast, peers_fast), (lmode_safe, peers_safe)):
            mine = _get(figs, name, mode=lmode)
            for sys_, pmode in peers:
                theirs = _get(figs, name, sys_, pmode)
                if not math.isnan(theirs):
                    comparisons.append((f"{name} {lmode} vs {sys_}", mine, theirs))
    best_replay = max(_get(figs, "W3 replay records/s", mode=m) for m in ("objects", "columns"))
    for sys_ in ("redis", "nats"):
        theirs = _get(figs, "W3 replay records/s", sys_)
        if not math.isnan(theirs):
            comparisons.append((f"W3 replay vs {sys_}", best_replay, theirs))
    if comparisons:
        worst = min(comparisons, key=lambda c: c[1] / c[2])
        row(
            "logstore ahead of Redis Streams and JetStream on W1-W3 (same run)",
            f"{sum(c[1] > c[2] for c in comparisons)} of {len(comparisons)} comparisons ahead; "
            f"smallest lead: {worst[0]} at {worst[1] / worst[2]:.1f}x",
            all(c[1] > c[2] for c in comparisons),
        )
    for lmode, rmode in (("acks=1", "appendfsync no"), ("acks=all (fsync)", "appendfsync always")):
        mine = _get(figs, "W4 2,000/s latency p99", mode=lmode)
        r = _get(figs, "W4 2,000/s latency p99", "redis", rmode)
        n = _get(figs, "W4 2,000/s latency p99", "nats")
        peers = [v for v in (r, n) if not math.isnan(v)]
        row(
            f"W4 p99 at 2,000/s ≤ both peers' p99 (logstore {lmode} vs Redis {rmode}, JetStream)",
            f"{fmt(mine)} ms vs {fmt(r)} / {fmt(n)} ms",
            ok(mine <= min(peers), mine, *peers) if peers else None,
        )
    rows.extend(_issue12_rows(figs))
    r1 = _get(figs, "W5 1 partitions RSS")
    r1000 = _get(figs, "W5 1000 partitions RSS")
    f1000 = _get(figs, "W5 1000 partitions open fds")
    row(
        "W5 broker RSS within +50 MB from 1 to 1,000 partitions",
        f"{fmt(r1)} → {fmt(r1000)} MB ({r1000 - r1:+.1f} MB); {fmt(f1000)} fds at 1,000",
        ok(r1000 - r1 <= 50, r1, r1000),
    )
    c10 = _get(figs, "W6 restart clean 10 GiB")
    row(
        "W6 clean restart < 1 s at 10 GiB",
        f"{fmt(c10)} s" if not math.isnan(c10) else "not run (--big)",
        ok(c10 < 1.0, c10),
    )
    raw = _get(figs, "append_raw 1 MiB batches of 100 B records MB/s")
    row(
        "storage: pre-built 1 MiB frames ≥ 400 MB/s to the page cache",
        f"{fmt(raw)} MB/s",
        ok(raw >= 400, raw),
    )
    for prefix, label in (
        ("append_raw", "append_raw (the broker's path)"),
        ("append", "Store.append (encode + write)"),
    ):
        small = _get(figs, f"{prefix} per-batch cost, 100 B records")
        big = _get(figs, f"{prefix} per-batch cost, 10240 B records")
        ratio = max(small, big) / min(small, big) if small and big else math.nan
        row(
            f"storage: per-batch cost within 1.5x, 100 B vs 10 KiB records, {label}",
            f"{fmt(small)} vs {fmt(big)} µs ({ratio:.2f}x)",
            ok(ratio <= 1.5, ratio),
        )
    cpu = _get(figs, "broker CPU per MB, max/min over record sizes")
    row(
        "broker: CPU per MB within 1.5x from 100 B to 10 KiB records",
        f"{cpu:.2f}x",
        ok(cpu <= 1.5, cpu),
    )
    w7 = {s: _get(figs, "W7 group drain records/s", s) for s in ("logstore", "redis", "nats")}
    row(
        "W7 group drain: logstore ahead of Redis Streams and JetStream (same run)",
        " vs ".join(f"{fmt(v)}" for v in w7.values()) + " records/s"
        if not math.isnan(w7["logstore"])
        else str(results.get("skipped", {}).get("W7 logstore", "logstore not run")),
        ok(w7["logstore"] > max(w7["redis"], w7["nats"]), *w7.values()),
    )
    send = _get(figs, "Producer.send records/s")
    many = _get(figs, "Producer.send_many records/s")
    row(
        "client: aim at Kafka's ~820,000 records/s per producer thread",
        f"send() {fmt(send)}, send_many() {fmt(many)} records/s",
        ok(many >= 820_000, many),
    )
    return report.markdown_table(["target", "this run", ""], rows)


# ---- plots --------------------------------------------------------------------------------------


def _bars(ax: Any, figs: list[dict[str, Any]], title: str, ylabel: str, log: bool = False) -> None:
    labels = [f"{f['info']['system']}\n{f['info'].get('mode', '')}" for f in figs]
    colors = [COLORS.get(f["info"]["system"], "grey") for f in figs]
    med = [f["median"] for f in figs]
    lo = [f["median"] - f["min"] for f in figs]
    hi = [f["max"] - f["median"] for f in figs]
    ax.bar(range(len(figs)), med, color=colors, yerr=[lo, hi], capsize=3)
    ax.set_xticks(range(len(figs)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    for i, v in enumerate(med):
        ax.annotate(fmt(v), (i, v), ha="center", va="bottom", fontsize=7)


def plots(results: dict[str, Any], docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = results["figures"]
    written = []

    def sel(name: str) -> list[dict[str, Any]]:
        return [f for f in figs if f["name"] == name]

    panels = [
        ("W1 produce records/s", "W1 produce 100 B (1 producer)", "records/s"),
        ("W2 produce x1 MB/s", "W2 produce 1 KiB, 1 producer", "MB/s"),
        ("W2 produce x8 MB/s", "W2 produce 1 KiB, 8 producers", "MB/s"),
        ("W3 replay records/s", "W3 replay 100 B", "records/s"),
    ]
    panels = [p for p in panels if sel(p[0])]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
        for ax, (name, title, unit) in zip(
            axes if len(panels) > 1 else [axes], panels, strict=True
        ):
            _bars(ax, sel(name), title, unit)
        fig.suptitle(f"Throughput, median of {results['config']['runs']} runs (bars: min..max)")
        fig.tight_layout()
        path = docs / "bench-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    w4 = [f for f in figs if f.get("info", {}).get("workload") == "W4" and f["unit"] == "ms"]
    rates = sorted({f["info"]["rate"] for f in w4})
    if w4:
        fig, axes = plt.subplots(1, len(rates), figsize=(7 * len(rates), 4.5), squeeze=False)
        for ax, rate in zip(axes[0], rates, strict=True):
            order = {"logstore": 0, "redis": 1, "nats": 2}
            groups = list(
                dict.fromkeys(
                    _col(f)
                    for f in sorted(w4, key=lambda f: order.get(f["info"]["system"], 9))
                    if f["info"]["rate"] == rate
                )
            )
            width = 0.25
            for k, pct in enumerate(("p50", "p99", "p99.9")):
                vals = []
                for g in groups:
                    m = [
                        f
                        for f in w4
                        if f["info"]["rate"] == rate and _col(f) == g and f["name"].endswith(pct)
                    ]
                    vals.append(m[0]["median"] if m else math.nan)
                ax.bar([i + k * width for i in range(len(groups))], vals, width, label=pct)
            ax.set_xticks(
                [i + width for i in range(len(groups))], groups, fontsize=7, rotation=30, ha="right"
            )
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title(f"W4 end-to-end latency at {rate:,} records/s")
            ax.legend()
        fig.tight_layout()
        path = docs / "bench-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    w5 = [f for f in figs if f.get("info", {}).get("workload") == "W5"]
    if w5:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for system in sorted({f["info"]["system"] for f in w5}):
            for ax, suffix in ((ax1, "RSS"), (ax2, "open fds")):
                pts = sorted(
                    (f["info"]["partitions"], f["median"])
                    for f in w5
                    if f["info"]["system"] == system
                    and f["name"].endswith(suffix)
                    and "partitions" in f["info"]
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker="o",
                        label=SYSTEM_NAMES.get(system, system),
                        color=COLORS.get(system),
                    )
            idle = [
                f["median"] for f in w5 if f["info"]["system"] == system and "idle" in f["name"]
            ]
            if idle:
                ax1.axhline(idle[0], linestyle=":", color=COLORS.get(system), linewidth=1)
        for ax, lab in ((ax1, "server RSS (MB); dotted: idle"), (ax2, "server open descriptors")):
            ax.set_xscale("log")
            ax.set_xlabel("partitions / streams / subjects")
            ax.set_ylabel(lab)
            ax.legend()
        ax1.set_title("W5 server RSS after producing")
        ax2.set_title("W5 open file descriptors")
        fig.tight_layout()
        path = docs / "bench-partitions.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def generated_markdown(results: dict[str, Any], json_name: str) -> str:
    m = results["machine"]
    v = results["versions"]
    parts = [
        f"Run `{json_name}` ({results['created_utc']}, "
        f"{results.get('elapsed_s', 0) / 60:.0f} min): "
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}. Servers: "
        + ", ".join(f"{k} {val}" for k, val in v["servers"].items() if val)
        + ". Clients: "
        + ", ".join(f"{k} {val}" for k, val in v["clients"].items() if val)
        + f". Median of {results['config']['runs']} runs (min .. max).",
        "### Headline\n\n" + headline(results),
        "### Targets\n\n" + targets(results),
        "### Machine limits (same run)\n\n" + report.limits_table(results, markdown=True),
        "### logstore as % of the limit that bounds it\n\n" + logstore_pct_table(results),
    ]
    titles = {
        "W1": "W1 produce 100 B, one producer",
        "W2": "W2 produce 1 KiB, 1 and 8 producers",
        "W3": "W3 replay from the beginning",
        "W4": "W4 end-to-end latency at a fixed rate",
        "W5": "W5 partitions: throughput, RSS, descriptors",
        "W6": "W6 restart (logstore)",
        "W7": "W7 group drain: 4 members, commits",
        "storage": "Embedded storage engine (issue 3)",
        "broker": "Broker end to end, raw gRPC clients (issue 4)",
        "client": "Python client library (issue 5)",
    }
    present = {f.get("info", {}).get("workload") for f in results["figures"]}
    for w, title in titles.items():
        if w in present:
            table = pivot(results["figures"], w) if w in PIVOTED else flat(results, w)
            parts.append(f"### {title}\n\n" + table)
    if results.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items()))
    if results.get("errors"):
        parts.append(
            "Failed parts of this run: " + "; ".join(e["error"] for e in results["errors"])
        )
    return "\n\n".join(parts)


# ---- consumer groups (issue 10) -----------------------------------------------------------------

GROUPS_BEGIN, GROUPS_END = "<!-- BEGIN GROUPS GENERATED -->", "<!-- END GROUPS GENERATED -->"
#: Settle target of the issue, in heartbeat intervals.
SETTLE_TARGET_INTERVALS = 2.0


def _range(f: dict[str, Any], unit: str = "") -> str:
    s = fmt(f["median"], unit)
    if len(f.get("values", [])) > 1:
        s += f" ({fmt(f['min'])} .. {fmt(f['max'])})"
    return s


def _run_line(results: dict[str, Any], json_name: str) -> str:
    m = results["machine"]
    return (
        f"Run `{json_name}` ({results['created_utc']}, "
        f"{results.get('elapsed_s', 0) / 60:.0f} min): {m['cpu_model']}, {m['cores']} cores, "
        f"{m['memory_bytes'] / 2**30:.0f} GiB, Python {m['python']}"
        + "".join(
            f", {k} {v}" for k, v in results.get("versions", {}).get("servers", {}).items() if v
        )
        + "."
    )


def w7_markdown(results: dict[str, Any]) -> str:
    """W7 systems side by side, and each run's per-member record counts."""
    figs = results["figures"]
    out = [pivot(figs, "W7")]
    lines = []
    for f in figs:
        info = f.get("info", {})
        if f["name"] == "W7 largest member share" and "per_member" in info:
            runs = "; ".join(" / ".join(f"{c:,}" for c in counts) for counts in info["per_member"])
            name = SYSTEM_NAMES.get(info["system"], info["system"])
            lines.append(f"- {name}: {runs}")
    if lines:
        out.append("Records drained by each of the 4 members, per run:\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def rebalance_markdown(results: dict[str, Any]) -> str:
    figs = {f["name"]: f for f in results["figures"]}
    rows = []
    info: dict[str, Any] = {}
    for case, trigger in (
        ("join", "the new member starts its join heartbeat"),
        ("leave", "the member starts close() (commit, leave heartbeat)"),
        ("kill -9", "detection: first DescribeGroup without the killed member"),
    ):
        ms = figs.get(f"rebalance {case} settle")
        iv = figs.get(f"rebalance {case} settle in heartbeat intervals")
        if ms is None or iv is None:
            continue
        info = ms["info"]
        met = iv["max"] <= SETTLE_TARGET_INTERVALS
        rows.append([case, trigger, _range(ms, "ms"), _range(iv), "met" if met else "**NOT MET**"])
    det = figs.get("rebalance kill -9 to detection")
    table = report.markdown_table(
        ["event", "measured from", "settle, ms", "settle, heartbeat intervals", "≤ 2 intervals"],
        rows,
    )
    cfg = (
        f"{info.get('members')} member processes (`GroupConsumer`, polling), "
        f"{info.get('partitions')} partitions, heartbeat interval "
        f"{info.get('heartbeat_interval_ms', 0):,} ms, session timeout "
        f"{info.get('session_timeout_ms', 0):,} ms"
    )
    if det is not None:
        cfg += f"; kill -9 to detection: {_range(det, 'ms')}"
    return table + "\n\n" + cfg + "."


def compaction_markdown(results: dict[str, Any]) -> str:
    rows = []
    mode = ""
    for f in results["figures"]:
        info = f.get("info", {})
        if info.get("workload") != "compaction":
            continue
        mode = str(info.get("mode", ""))
        rows.append([f["name"].removeprefix("compaction").strip(), _range(f, f["unit"])])
    return f"{mode}.\n\n" + report.markdown_table(["figure", "median (min .. max)"], rows)


def coordinator_markdown(results: dict[str, Any]) -> str:
    by: dict[str, dict[str, str]] = defaultdict(dict)
    modes: list[str] = []
    for f in results["figures"]:
        info = f.get("info", {})
        if info.get("workload") != "coordinator":
            continue
        mode = str(info.get("mode", ""))
        if mode not in modes:
            modes.append(mode)
        by[mode][f["name"].removeprefix("coordinator").strip()] = _range(f, f["unit"])
    cols = [
        "W1 produce records/s",
        "heartbeats/s without W1",
        "heartbeats/s during W1",
        "heartbeat latency p50",
        "heartbeat latency p99",
        "failed heartbeats",
    ]
    return report.markdown_table(
        ["", *cols], [[m, *(by[m].get(c, "-") for c in cols)] for m in modes]
    )


def groups_markdown(parts: dict[str, tuple[dict[str, Any], str]]) -> str:
    """The consumer-groups section from up to four results files (W7, rebalance,
    compaction, coordinator), each table headed by its run and machine."""
    out = []
    render = {
        "W7": ("W7 group drain: logstore vs Redis Streams vs JetStream (one run)", w7_markdown),
        "rebalance": ("Rebalance settle time", rebalance_markdown),
        "compaction": ("Compaction (storage only)", compaction_markdown),
        "coordinator": ("Coordinator cost while W1 runs", coordinator_markdown),
    }
    for key, (title, fn) in render.items():
        if key in parts:
            results, name = parts[key]
            out.append(f"### {title}\n\n{_run_line(results, name)}\n\n{fn(results)}")
    return "\n\n".join(out)


def publish_groups(paths: list[Path], page: Path) -> None:
    parts: dict[str, tuple[dict[str, Any], str]] = {}
    for path in paths:
        results = json.loads(path.read_text())
        present = {f.get("info", {}).get("workload") for f in results["figures"]}
        for key in ("W7", "rebalance", "compaction", "coordinator"):
            if key in present:
                parts[key] = (results, path.name)
    text = page.read_text()
    if GROUPS_BEGIN not in text or GROUPS_END not in text:
        text += f"\n{GROUPS_BEGIN}\n{GROUPS_END}\n"
    head, rest = text.split(GROUPS_BEGIN, 1)
    _, tail = rest.split(GROUPS_END, 1)
    page.write_text(head + GROUPS_BEGIN + "\n" + groups_markdown(parts) + "\n" + GROUPS_END + tail)
    print(f"updated {page} (consumer groups)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.publish")
    p.add_argument("results", nargs="?", type=Path)
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--no-page", action="store_true", help="plots only, leave benchmarks.md alone")
    p.add_argument("--headline", action="store_true", help="print the README table and stop")
    p.add_argument(
        "--groups",
        nargs="+",
        type=Path,
        help="results files of W7 / rebalance / compaction / coordinator: write only the "
        "consumer-groups tables",
    )
    a = p.parse_args(argv)
    if a.groups:
        publish_groups(a.groups, a.docs / "benchmarks.md")
        return 0
    path = a.results or newest()
    results = json.loads(path.read_text())
    if a.headline:
        print(headline(results))
        return 0
    a.docs.mkdir(parents=True, exist_ok=True)
    for w in plots(results, a.docs):
        print(f"wrote {w}")
    page = a.docs / "benchmarks.md"
    if not a.no_page:
        text = page.read_text() if page.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN not in text or END not in text:
            text += f"\n{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        page.write_text(
            head + BEGIN + "\n" + generated_markdown(results, path.name) + "\n" + END + tail
        )
        print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
