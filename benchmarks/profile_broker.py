"""Profile the broker (or the client) under the produce workload with py-spy.

``python -m benchmarks.profile_broker [--seconds 20] [--acks 1|all] [--target broker|producer]``

``--target broker`` (default) starts a broker (child process, loopback, temp
data dir), keeps one producer process sending 100-B records with the client
library (W1's producer) while ``py-spy record`` samples the broker twice: once
to a flamegraph SVG (``docs/broker-produce-profile.svg``) and once in raw form,
from which the biggest costs are computed: self time per function (the leaf
frame) and inclusive time of logstore's own functions.

``--target producer`` samples the producer process instead (W1's
``Producer.send_many`` loop; ``docs/client-produce-profile.svg``).

Needs ptrace rights (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._proc import run_workers
from benchmarks.systems import worker
from benchmarks.systems.logstore_sys import Broker

ROOT = Path(__file__).resolve().parent.parent


def _py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed (it is in the dev extra)")
    return found


def _load(
    broker: Broker, topic: str, durable: bool, stop: threading.Event, errors: list[str]
) -> None:
    while not stop.is_set():
        args: dict[str, Any] = {
            "system": "logstore",
            "op": "produce",
            "params": {"grpc": broker.grpc_address},
            "topic": topic,
            "n": 1_000_000,
            "size": 100,
            "durable": durable,
            "deadline_s": 10,
        }
        try:
            run_workers(worker, [args], timeout_s=120)
        except Exception as exc:
            errors.append(str(exc))
            return


def _record(pid: int, fmt: str, out: Path, seconds: float) -> None:
    cmd = [
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--duration",
        str(int(seconds)),
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",
    ]
    if fmt == "raw":
        # --gil: only samples holding the GIL, i.e. Python CPU time (an idle event
        # loop in epoll or a worker waiting on its queue is not a cost)
        cmd += ["--function", "--gil"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {p.stderr.strip()[-400:]}")


_PRODUCER = """
import sys, time
from benchmarks.systems.logstore_sys import produce
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    produce({"params": {"grpc": sys.argv[1]}, "topic": "profile", "n": 1_000_000, "size": 100,
             "durable": sys.argv[3] == "all", "deadline_s": 10}, lambda: None)
"""


def _record_command(cmd: list[str], fmt: str, out: Path, seconds: float) -> None:
    spy = [_py_spy(), "record", "--rate", "200", "--format", fmt, "--output", str(out)]
    if fmt == "raw":
        spy += ["--function", "--gil"]
    p = subprocess.run(
        [*spy, "--", *cmd], check=False, capture_output=True, text=True, timeout=seconds + 120
    )
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {p.stderr.strip()[-400:]}")


def top_costs(
    raw: Path, n: int = 8
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(function, self %)], [(logstore function, inclusive %)]) from raw output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        self_c[frames[-1]] += count
        for fr in set(frames):
            if "logstore/" in fr or "logstore\\" in fr:
                incl[fr] += count
    pct = 100.0 / max(1, total)
    return (
        total,
        [(f, c * pct) for f, c in self_c.most_common(n)],
        [(f, c * pct) for f, c in incl.most_common(n)],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_broker")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--acks", choices=("1", "all"), default="1")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--target", choices=("broker", "producer"), default="broker")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="logstore-profile-") as d:
        broker = Broker(Path(d) / "data", Path(d) / "broker.log")
        broker.start()
        assert broker.child is not None
        try:
            import grpc

            from logstore.v1 import logstore_pb2 as pb
            from logstore.v1 import logstore_pb2_grpc

            with grpc.insecure_channel(broker.grpc_address) as ch:
                logstore_pb2_grpc.LogStoreStub(ch).CreateTopic(
                    pb.CreateTopicRequest(
                        name="profile", partitions=1, config={"retention_bytes": str(1 << 30)}
                    ),
                    timeout=30,
                )
            if a.target == "producer":
                svg = a.out / "client-produce-profile.svg"
                raw = Path(d) / "profile.raw"
                cmd = [sys.executable, "-c", _PRODUCER, broker.grpc_address, str(a.seconds), a.acks]
                _record_command(cmd, "flamegraph", svg, a.seconds)
                _record_command(cmd, "raw", raw, a.seconds)
                total, self_top, incl_top = top_costs(raw)
                _print(svg, total, a.acks, self_top, incl_top)
                return 0
            stop = threading.Event()
            errors: list[str] = []
            load = threading.Thread(
                target=_load, args=(broker, "profile", a.acks == "all", stop, errors)
            )
            load.start()
            time.sleep(3)  # let the producer connect and reach steady state
            svg = a.out / "broker-produce-profile.svg"
            raw = Path(d) / "profile.raw"
            try:
                _record(broker.child.pid, "flamegraph", svg, a.seconds)
                _record(broker.child.pid, "raw", raw, a.seconds)
            finally:
                stop.set()
                load.join(timeout=180)
            if errors:
                print(f"load generator failed: {errors[0]}")
            total, self_top, incl_top = top_costs(raw)
        finally:
            broker.stop()
    _print(svg, total, a.acks, self_top, incl_top)
    return 0


def _print(
    svg: Path,
    total: int,
    acks: str,
    self_top: list[tuple[str, float]],
    incl_top: list[tuple[str, float]],
) -> None:
    print(f"wrote {svg} ({total} GIL-holding samples in the raw pass, acks={acks})")
    print("\nself time (leaf function), % of samples:")
    for f, v in self_top:
        print(f"  {v:5.1f} %  {f}")
    print("\ninclusive time of logstore functions, % of samples:")
    for f, v in incl_top:
        print(f"  {v:5.1f} %  {f}")


if __name__ == "__main__":
    sys.exit(main())
