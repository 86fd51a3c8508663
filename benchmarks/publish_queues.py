"""The work-queue tables (issue 11: W8, W8R) from one results JSON, into docs/benchmarks.md.

``python -m benchmarks.publish_queues RESULTS.json [--docs docs] [--print]`` replaces
the part of ``docs/benchmarks.md`` between ``<!-- BEGIN QUEUES GENERATED -->`` and
``<!-- END QUEUES GENERATED -->`` (the hand-written "Work queues" prose above the
markers says what each row is) with:

* a run line: the file, its date, the machine and the 1-minute load average when
  the run and each W8 run started (the 2 cores are shared);
* W8: one row per system and setting, columns drain records/s, produce-to-ack p50
  and p99 at the paced rate, and the fill (one producer, confirmed) records/s;
  every cell the median of the run's runs with (min .. max);
* W8R: one row per system, kill -> first / all redelivered and acquired -> all.

``--print`` writes the tables to stdout and leaves the page alone. Kept apart from
``benchmarks.publish`` (the main tables and the consumer-groups ones) so each
section is regenerated from its own run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._stats import fmt

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- BEGIN QUEUES GENERATED -->", "<!-- END QUEUES GENERATED -->"
NAMES = {"logstore": "logstore", "redis": "Redis Streams", "rabbitmq": "RabbitMQ"}
ORDER = ("logstore", "rabbitmq", "redis")
W8_COLUMNS = (
    ("W8 drain records/s", "drain, records/s"),
    ("W8 produce-to-ack p50", "produce-to-ack p50, ms"),
    ("W8 produce-to-ack p99", "produce-to-ack p99, ms"),
    ("W8 paced producer sent tasks/s", "paced producer sent, tasks/s"),
    ("W8 fill records/s", "fill (1 producer, durable), records/s"),
)
W8R_COLUMNS = (
    ("W8R kill to first redelivered", "kill -9 → first redelivered, ms"),
    ("W8R kill to all redelivered", "kill -9 → all redelivered, ms"),
    ("W8R acquired to all redelivered", "acquired → all redelivered, ms"),
)


def _cell(f: dict[str, Any] | None) -> str:
    if f is None:
        return ""
    s = fmt(f["median"])
    if len(f.get("values", [])) > 1:
        s += f" ({fmt(f['min'])} .. {fmt(f['max'])})"
    return s


def _table(figs: list[dict[str, Any]], workload: str, columns: tuple[tuple[str, str], ...]) -> str:
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for f in figs:
        info = f.get("info", {})
        if info.get("workload") != workload:
            continue
        rows.setdefault((info["system"], str(info.get("mode", ""))), {})[f["name"]] = f
    order = sorted(rows, key=lambda k: ORDER.index(k[0]) if k[0] in ORDER else 99)
    # a column no figure of this run has (an older run) is left out, not shown empty
    columns = tuple(c for c in columns if any(c[0] in r for r in rows.values()))
    return report.markdown_table(
        ["system", "setting", *(title for _, title in columns)],
        [
            [NAMES.get(s, s), mode, *(_cell(rows[(s, mode)].get(name)) for name, _ in columns)]
            for s, mode in order
        ],
    )


def _loads(figs: list[dict[str, Any]]) -> str:
    loads = [
        x for f in figs if f["name"] == "W8 drain records/s" for x in f["info"].get("loads", [])
    ]
    return f"{min(loads):.1f} .. {max(loads):.1f}" if loads else "?"


def generated(results: dict[str, Any], json_name: str) -> str:
    m, v = results["machine"], results["versions"]
    figs = results["figures"]
    ran = set(results["config"].get("systems", []))
    servers = ", ".join(f"{k} {val}" for k, val in v["servers"].items() if val and k in ran)
    clients = ", ".join(
        f"{k} {v['clients'][k]}"
        for k in ("logstore", "pika", "aio-pika", "redis", "hiredis")
        if v["clients"].get(k)
    )
    first = next((f for f in figs if f.get("info", {}).get("workload") == "W8"), None)
    sizes = ""
    if first is not None:
        i = first["info"]
        sizes = (
            f" W8: {i['tasks']:,} tasks of {i['size']} B drained by {i['workers']} worker "
            f"processes; latency: {i['latency_tasks']:,} tasks at {i['rate']:,} tasks/s."
        )
    load0 = m.get("loadavg")
    minutes = results.get("elapsed_s", 0) / 60
    parts = [
        f"Run `{json_name}` ({results['created_utc']}, {minutes:.0f} min): "
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}. Servers: {servers}. Clients: {clients}. "
        f"Median of {results['config']['runs']} runs (min .. max).{sizes} Load average (1 min) "
        f"when the run started: {load0[0]:.1f}; when each W8 run started: {_loads(figs)}."
        if load0
        else f"Run `{json_name}` ({results['created_utc']}).",
        "### W8 work queue: drain and produce-to-ack latency (one run)\n\n"
        + _table(figs, "W8", W8_COLUMNS),
        "### W8R redelivery after a worker's kill -9 (same run)\n\n"
        + _table(figs, "W8R", W8R_COLUMNS),
    ]
    if results.get("skipped"):
        parts.append(
            "Skipped: " + "; ".join(f"{k}: {val}" for k, val in results["skipped"].items())
        )
    if results.get("errors"):
        parts.append(
            "Failed parts of this run: " + "; ".join(e["error"] for e in results["errors"])
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.publish_queues")
    p.add_argument("results", type=Path)
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--print", action="store_true", help="print the tables, leave the page alone")
    a = p.parse_args(argv)
    text = generated(json.loads(a.results.read_text()), a.results.name)
    if a.print:
        print(text)
        return 0
    page = a.docs / "benchmarks.md"
    doc = page.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{page} has no {BEGIN} ... {END} region (the Work queues section)")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(head + BEGIN + "\n" + text + "\n" + END + tail)
    print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
