"""Start a real broker process for tests: port 0, stopped by PID.

``start_broker(data_dir)`` runs ``python -m logstore.broker`` (the same entry
point as ``logctl serve``) with gRPC and metrics on 127.0.0.1 port 0, reads
the first stdout line ``logstore listening grpc=HOST:PORT metrics=HOST:PORT
data_dir=PATH`` and returns a handle. Tests stop it with ``stop()`` (SIGTERM,
then wait) or ``kill()`` (SIGKILL, then wait); the ``broker`` fixture in
conftest.py always does.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"^logstore listening grpc=(\S+) metrics=(\S+) data_dir=(.+)$")


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[bytes]
    grpc_address: str
    metrics_address: str
    data_dir: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for exit; SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> int:
        """kill -9 and wait."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_pipes(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_broker(
    data_dir: str | Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> BrokerProcess:
    """Start a broker on ``data_dir`` and wait for its first stdout line."""
    data_dir = Path(data_dir)
    log_path = data_dir.parent / f"{data_dir.name}-broker-{time.monotonic_ns()}.log"
    args = [
        sys.executable,
        "-m",
        "logstore.broker",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        *extra_args,
    ]
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=full_env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise RuntimeError(
                f"broker did not start (exit {proc.returncode}); log:\n"
                + log_path.read_text(errors="replace")
            )
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            line += chunk
    first = line.split(b"\n", 1)[0].decode()
    m = _LINE.match(first)
    if not m:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"unexpected first line from broker: {first!r}")
    return BrokerProcess(proc, m.group(1), m.group(2), Path(m.group(3)), log_path, args)
