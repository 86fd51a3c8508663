"""What the results were measured on: machine, OS, Python, and the version of
every system and client library under test."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

CLIENT_PACKAGES = (
    "logstore",
    "grpcio",
    "protobuf",
    "numpy",
    "crc32c",
    "redis",
    "hiredis",
    "nats-py",
    "pika",
    "aio-pika",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _version_of(exe: str, *args: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, *args], check=False, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v=?(\d+\.\d+\.\d+)", out) or re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip() or None


def machine_info() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _mem_total_bytes(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        # the 2 cores are shared with other work: the load when the run started
        "loadavg": list(os.getloadavg()),
    }


def versions(server_exes: dict[str, str | None]) -> dict[str, Any]:
    """Versions of the server binaries (name -> path) and of the client packages."""
    servers = {
        name: (_version_of(exe, "--version") if exe else None) for name, exe in server_exes.items()
    }
    clients: dict[str, str | None] = {}
    for pkg in CLIENT_PACKAGES:
        try:
            clients[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            clients[pkg] = None
    return {"servers": servers, "clients": clients}


def write_results(path: Path, figures: list[Any], started: float, config: dict[str, Any]) -> None:
    """A results JSON of one stand-alone benchmark (the shape ``benchmarks.run``
    writes: created_utc, config, machine, versions, figures, elapsed_s)."""
    import datetime as dt
    import json

    doc = {
        "created_utc": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config,
        "machine": machine_info(),
        "versions": versions({}),
        "figures": [f.to_dict() for f in figures],
        "elapsed_s": time.time() - started,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")
