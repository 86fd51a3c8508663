"""The benchmark runner: ``python -m benchmarks.run [--quick | --compare] [...]``.

* ``--quick`` (``make bench``): logstore only, reduced sizes, a few minutes.
* ``--compare`` (``make bench-compare``): logstore, Redis Streams, NATS
  JetStream and (for the work-queue workloads W8 / W8R only) RabbitMQ side by
  side at full sizes, in one run.

Prints the machine limits, then one table of every figure (median of
``--runs`` runs, min .. max, and each logstore figure as % of the limit that
bounds it), and writes ``benchmarks/results/<UTC date-time>-<host>.json``.
Every server is a child process on a free loopback port with a temporary data
directory, stopped by PID; a system that is not installed is skipped with one
line; a workload that fails is reported with one line and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import shutil
import socket
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from benchmarks import limits, machine, report
from benchmarks._stats import Figure
from benchmarks.systems import find_exe, load
from benchmarks.workloads import FULL, QUICK, TINY, Ctx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOADS = {
    "W1": "benchmarks.workloads.w1_produce",
    "W2": "benchmarks.workloads.w2_produce_1k",
    "W3": "benchmarks.workloads.w3_replay",
    "W4": "benchmarks.workloads.w4_tail",
    "W4C": "benchmarks.workloads.w4_client",
    "W5": "benchmarks.workloads.w5_partitions",
    "W6": "benchmarks.workloads.w6_recovery",
    "W7": "benchmarks.workloads.w7_group_drain",
    "W8": "benchmarks.workloads.w8_work_queue",
    "W8R": "benchmarks.workloads.w8_redelivery",
}
#: Workloads that run on some systems only (the others run on every system but RabbitMQ).
ONLY_ON = {
    "W4C": {"logstore"},
    "W6": {"logstore"},
    "W8": {"logstore", "redis", "rabbitmq"},
    "W8R": {"logstore", "redis", "rabbitmq"},
}
#: RabbitMQ is a work-queue peer only (issue 11): it has no log to replay or tail.
QUEUE_ONLY_SYSTEMS = {"rabbitmq"}
SECTIONS = {
    "storage": "benchmarks.storage_bench",
    "broker": "benchmarks.broker_bench",
    "client": "benchmarks.client_bench",
    # consumer groups (issue 10); not in the default --sections (minutes each at full size)
    "rebalance": "benchmarks.rebalance_bench",
    "compaction": "benchmarks.compaction_bench",
    "coordinator": "benchmarks.coordinator_bench",
    # batch compression (issue 14): none / lz4 / zstd side by side
    "compression": "benchmarks.compression_bench",
}
#: Sections run when --sections is not given.
DEFAULT_SECTIONS = ("storage", "broker", "client")
SYSTEMS = ("logstore", "redis", "nats", "rabbitmq")


def runs_on(workload: str, system: str) -> bool:
    """Whether ``workload`` is run against ``system``."""
    if workload in ONLY_ON:
        return system in ONLY_ON[workload]
    return system not in QUEUE_ONLY_SYSTEMS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="logstore only, reduced sizes")
    mode.add_argument("--compare", action="store_true", help="logstore vs Redis vs JetStream")
    p.add_argument("--scale", choices=("tiny", "quick", "full"), help="override the sizes")
    p.add_argument("--systems", help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--workloads", help="comma-separated subset of " + ",".join(WORKLOADS))
    p.add_argument(
        "--sections",
        help="comma-separated: limits,workloads,"
        + ",".join(SECTIONS)
        + " (default: limits,workloads,"
        + ",".join(DEFAULT_SECTIONS)
        + ")",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per figure (median, min, max)")
    p.add_argument("--limit-seconds", type=float, default=2.0, help="seconds per limit probe")
    p.add_argument("--deadline", type=float, default=180.0, help="bound on one timed run (s)")
    p.add_argument("--big", action="store_true", help="W6 also with 10 GiB (checks free space)")
    p.add_argument(
        "--impl",
        choices=("auto", "client", "raw"),
        default="auto",
        help="logstore client side: client library or raw gRPC",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temp data dirs")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    scale = {"tiny": TINY, "quick": QUICK, "full": FULL}[
        a.scale or ("quick" if a.quick else "full" if a.compare else "quick")
    ]
    systems = a.systems.split(",") if a.systems else (list(SYSTEMS) if a.compare else ["logstore"])
    workloads = a.workloads.split(",") if a.workloads else list(WORKLOADS)
    sections = (a.sections or "limits,workloads," + ",".join(DEFAULT_SECTIONS)).split(",")
    unknown = [s for s in systems if s not in SYSTEMS] + [
        w for w in workloads if w not in WORKLOADS
    ]
    if unknown:
        print(f"unknown system or workload: {', '.join(unknown)}", file=sys.stderr)
        return 2

    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="logstore-bench-", dir=a.workdir))
    ctx = Ctx(
        workdir=workdir,
        runs=a.runs,
        scale=scale,
        deadline_s=a.deadline,
        verbose=not a.quiet,
        impl=a.impl,
    )
    results: dict[str, Any] = {
        "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {
            "argv": sys.argv[1:] if argv is None else argv,
            "scale": vars(scale),
            "runs": a.runs,
            "systems": systems,
            "workloads": workloads,
            "sections": sections,
            "impl": a.impl,
        },
        "machine": machine.machine_info(),
        "versions": machine.versions(
            {"redis": find_exe("redis-server"), "nats": find_exe("nats-server")}
        ),
        "limits": {},
        "figures": [],
        "skipped": {},
        "errors": [],
    }
    figures: list[Figure] = []

    def fail(where: str, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0]
        line = f"{where}: {type(exc).__name__}: {first}"
        print(f"FAILED {line}", flush=True)
        results["errors"].append({"where": where, "error": line, "trace": traceback.format_exc()})

    try:
        if "limits" in sections:
            print("== machine limits", flush=True)
            try:
                lims = limits.measure(workdir, a.runs, a.limit_seconds)
                results["limits"] = {k: f.to_dict() for k, f in lims.items()}
                print(report.limits_table(results), flush=True)
            except Exception as exc:
                fail("limits", exc)

        if "workloads" in sections:
            for name in systems:
                driver_cls = load(name)
                why = driver_cls.unavailable()
                if why:
                    print(f"skipping {name}: {why}", flush=True)
                    results["skipped"][name] = why
                    continue
                todo = [w for w in workloads if runs_on(w, name)]
                if not todo:
                    continue
                print(f"== {name}: {', '.join(todo)}", flush=True)
                system = driver_cls()
                sysdir = workdir / name
                sysdir.mkdir()
                try:
                    system.start(sysdir)
                    results["versions"]["servers"].setdefault(name, system.server_version())
                    for w in todo:
                        mod = importlib.import_module(WORKLOADS[w])
                        try:
                            kw = {}
                            if w == "W6" and a.big:
                                kw["sizes"] = (*scale.w6_bytes, *mod.big_sizes(workdir))
                            figures.extend(mod.run(ctx, system, **kw))
                        except Exception as exc:
                            fail(f"{w} {name}", exc)
                except Exception as exc:
                    fail(f"start {name}", exc)
                finally:
                    system.stop()

        for sec, modname in SECTIONS.items():
            if sec in sections:
                print(f"== {sec}", flush=True)
                try:
                    figures.extend(importlib.import_module(modname).run(ctx))
                except Exception as exc:
                    fail(sec, exc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results["skipped"].update(ctx.skipped)
    results["errors"] += [{"where": e.split(":")[0], "error": e} for e in ctx.errors]
    results["figures"] = [f.to_dict() for f in figures]
    results["elapsed_s"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    print()
    print(report.figures_table(results))
    a.out.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    path = a.out / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{host}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {path}")
    if results["errors"]:
        print(
            f"{len(results['errors'])} part(s) failed: "
            + "; ".join(e["error"] for e in results["errors"])
        )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
