"""Child processes: free loopback ports, servers started and stopped by PID,
RSS / descriptors / CPU read from /proc, and client worker processes.

Rules kept here so no workload can break them: servers listen on 127.0.0.1
only, on a port chosen by the kernel that is never a peer's default port; every
child is stopped by its own PID (SIGTERM, then SIGKILL after a bound) and
waited for; worker processes are bounded in time and killed by PID if late.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Default ports of the systems under test (and of logstore itself): never used,
#: so a benchmark can never talk to a system service by accident.
RESERVED_PORTS = frozenset({4222, 6222, 8222, 6379, 16379, 7070, 9464})
HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (not one of RESERVED_PORTS)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise RuntimeError("no free port found")


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                msg = f"nothing listening on {HOST}:{port} after {timeout_s} s"
                raise TimeoutError(msg) from exc
            time.sleep(0.02)


class Child:
    """A server started as a child process, stopped by its PID."""

    def __init__(self, args: Sequence[str], log_path: Path, **popen: Any) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.args, stderr=self._log, stdout=popen.pop("stdout", self._log), **popen
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for f in (self.proc.stdout, self._log):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        return self.proc.returncode

    def kill(self) -> int:
        return self.stop(signal.SIGKILL, 5.0)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds (all threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def loop_switches(pid: int) -> int:
    """Voluntary context switches of a process's main thread: for an asyncio
    server, about one per loop turn that found nothing ready and slept."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def mapped_count(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return -1


# ---- worker processes -------------------------------------------------------------------------
#
# A worker is a top-level function ``fn(args, ready) -> dict``: it connects, calls ``ready()``
# (a barrier: all workers start timing together), runs, and returns its figures (typically its
# own start/end monotonic times and counts). Workers are *spawned*, not forked: grpc and asyncio
# state must not be inherited.


def _entry(fn: Callable[..., dict[str, Any]], args: Any, barrier: Any, q: Any, index: int) -> None:
    try:

        def ready() -> None:
            barrier.wait(timeout=120)

        q.put((index, fn(args, ready), None))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        q.put((index, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))


class WorkerError(RuntimeError):
    pass


def run_workers(
    fn: Callable[..., dict[str, Any]],
    args_list: Sequence[Any],
    timeout_s: float,
    on_ready: Callable[[], None] | None = None,
    prepare: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn`` in ``len(args_list)`` spawned processes; return their results in order.

    All workers pass one barrier before timing starts. With ``prepare`` the
    parent is a party too and calls ``prepare()`` (while the workers, already
    started and connected, may be waiting at the barrier) before it passes the
    barrier; with ``on_ready`` it calls that right after. Late workers are
    killed by PID after ``timeout_s`` and the call raises WorkerError.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    barrier = ctx.Barrier(len(args_list) + (1 if on_ready or prepare else 0))
    procs = [
        ctx.Process(target=_entry, args=(fn, a, barrier, q, i), daemon=True)
        for i, a in enumerate(args_list)
    ]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    try:
        if prepare is not None:
            try:
                prepare()
            except BaseException:
                barrier.abort()
                raise
        if on_ready is not None or prepare is not None:
            barrier.wait(timeout=120)
        if on_ready is not None:
            on_ready()
        deadline = time.monotonic() + timeout_s
        while len(results) + len(errors) < len(procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors.append(f"timed out after {timeout_s} s")
                break
            try:
                i, res, err = q.get(timeout=min(remaining, 1.0))
            except Exception:  # queue.Empty
                if not any(p.is_alive() for p in procs) and q.empty():
                    errors.append("a worker died without a result")
                    break
                continue
            if err is not None:
                errors.append(err)
            else:
                results[i] = res
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
        q.close()
    if errors:
        raise WorkerError(errors[0])
    return [results[i] for i in range(len(procs))]


def aggregate_rate(results: Sequence[dict[str, Any]], key: str = "count") -> tuple[float, float]:
    """(total count, elapsed seconds from the first start to the last end)."""
    total = sum(r[key] for r in results)
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return float(total), float(elapsed)
