"""Timing and statistics shared by every benchmark.

A *figure* is one measured quantity (records/s, MB/s, a latency percentile),
measured ``runs`` times; it reports the median with min and max. Latencies are
kept as numpy int64 nanosecond arrays and reduced with ``np.percentile``.

Clocks: ``time.monotonic_ns()`` is CLOCK_MONOTONIC on Linux, one clock for
every process on the machine, so a timestamp written into a payload by the
producer process can be subtracted in the consumer process.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MB = 1_000_000  # MB/s are decimal megabytes, as disk and network vendors quote them
MiB = 1 << 20
KiB = 1 << 10


@dataclass
class Figure:
    """One quantity measured ``len(values)`` times."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    #: Larger is better (throughput) or smaller is better (latency, time, memory).
    higher_is_better: bool = True
    #: Free-form details: the configuration of this figure, the limit that bounds it.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values)) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return float(min(self.values)) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return float(max(self.values)) if self.values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": self.lo,
            "max": self.hi,
            "values": list(self.values),
            "higher_is_better": self.higher_is_better,
            **({"info": self.info} if self.info else {}),
        }


def latency_percentiles_ms(lat_ns: np.ndarray | Sequence[int]) -> dict[str, float]:
    """p50/p99/p99.9/max of nanosecond latencies, in milliseconds."""
    a = np.asarray(lat_ns, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"p50": nan, "p99": nan, "p99.9": nan, "max": nan}
    p = np.percentile(a, [50, 99, 99.9]) / 1e6
    top = float(a.max() / 1e6)
    return {"p50": float(p[0]), "p99": float(p[1]), "p99.9": float(p[2]), "max": top}


def fmt(value: float, unit: str = "") -> str:
    """Human format: 3 significant digits with thousands separators."""
    if math.isnan(value):
        return "-"
    a = abs(value)
    if a >= 100 or value == int(value):
        s = f"{value:,.0f}"
    elif a >= 10:
        s = f"{value:.1f}"
    elif a >= 1:
        s = f"{value:.2f}"
    elif a == 0:
        s = "0"
    else:
        s = f"{value:.3g}"
    return f"{s} {unit}".rstrip()


class Deadline:
    """A wall-clock bound on one run: ``expired()`` says when to stop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def repeat(runs: int, fn: Callable[[int], dict[str, float]]) -> dict[str, list[float]]:
    """Call ``fn(run_index)`` ``runs`` times; gather each key's values over the runs."""
    out: dict[str, list[float]] = {}
    for i in range(runs):
        for k, v in fn(i).items():
            out.setdefault(k, []).append(v)
    return out
