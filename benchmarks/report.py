"""Tables: every figure with median, min-max and, for logstore, % of the machine
limit that bounds it (the figure's ``info["bound"]``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from benchmarks._stats import MB, fmt

LIMIT_NAMES = {
    "disk_seq_fdatasync": "sequential disk write + fdatasync",
    "disk_write_pagecache": "page-cache write",
    "fsync_rate_4kib": "fsync rate, 4 KiB",
    "fsync_rate_1mib": "fsync rate, 1 MiB",
    "memcpy": "memcpy",
    "tcp_loopback": "loopback TCP",
    "tcp_rtt": "loopback TCP round trip",
    "grpc_unary_tiny": "gRPC tiny unary calls",
    "grpc_unary_1mib": "gRPC 1 MiB unary",
    "grpc_stream_1mib": "gRPC 1 MiB stream",
    "grpc_w4_p50": "W4's messages through a do-nothing gRPC server, 2,000/s, p50",
    "grpc_w4_p99": "W4's messages through a do-nothing gRPC server, 2,000/s, p99",
    "tcp_w4_p50": "W4's messages as TCP frames through a do-nothing asyncio server, p50",
    "tcp_w4_p99": "W4's messages as TCP frames through a do-nothing asyncio server, p99",
}


def pct_of_limit(
    fig: dict[str, Any], limits: dict[str, dict[str, Any]]
) -> tuple[float, str] | None:
    """(percent, limit name) for a figure with a bound, else None.

    Throughput in MB/s (records/s are converted with the record size) against
    a MB/s limit; latency against one tiny gRPC round trip (floor / value).
    """
    info = fig.get("info", {})
    bound = info.get("bound")
    if not bound or bound not in limits:
        return None
    lim = limits[bound]["median"]
    v = fig["median"]
    if not lim or math.isnan(v) or not v:
        return None
    unit = fig["unit"]
    if bound == "grpc_unary_tiny" and unit == "ms":
        # the floor of a latency: one tiny gRPC round trip (1 / calls per second)
        return 100.0 * (1000.0 / lim) / v, "one gRPC round trip"
    if unit == "MB/s":
        return 100.0 * v / lim, LIMIT_NAMES[bound]
    if unit == "records/s" and info.get("size"):
        return 100.0 * v * info["size"] / MB / lim, LIMIT_NAMES[bound]
    return None


def _row(fig: dict[str, Any], limits: dict[str, dict[str, Any]], with_pct: bool) -> list[str]:
    info = fig.get("info", {})
    unit = fig["unit"]
    cells = [
        info.get("workload", ""),
        fig["name"].removeprefix(info.get("workload", "")).strip(),
        info.get("system", ""),
        str(info.get("mode", "")),
        fmt(fig["median"], unit),
        f"{fmt(fig['min'])} .. {fmt(fig['max'])}" if len(fig.get("values", [])) > 1 else "",
    ]
    if with_pct:
        p = pct_of_limit(fig, limits) if info.get("system", "logstore") == "logstore" else None
        cells.append(f"{p[0]:.0f} % of {p[1]}" if p else "")
    return cells


def markdown_table(headers: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def text_table(headers: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


HEADERS = ["", "figure", "system", "mode", "median", "min .. max", "% of the limit"]


def figures_table(results: dict[str, Any], markdown: bool = False) -> str:
    limits = results.get("limits", {})
    rows = [_row(f, limits, True) for f in results.get("figures", [])]
    return (markdown_table if markdown else text_table)(HEADERS, rows)


def limits_table(results: dict[str, Any], markdown: bool = False) -> str:
    rows = []
    for k, f in results.get("limits", {}).items():
        rows.append(
            [
                LIMIT_NAMES.get(k, k),
                fmt(f["median"], f["unit"]),
                f"{fmt(f['min'])} .. {fmt(f['max'])}",
            ]
        )
    return (markdown_table if markdown else text_table)(["limit", "median", "min .. max"], rows)
