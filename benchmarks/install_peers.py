"""Install what ``make bench-compare`` needs: the peer servers and the bench extra.

* ``apt-get update`` then ``apt-get install -y --no-install-recommends
  redis-server nats-server rabbitmq-server`` (Debian packages, one at a time;
  needs root). The Debian packages also start system services on their
  default ports on some systems; the benchmarks never use those: every server is
  started by the harness as its own child on a free loopback port.
* ``pip install -e '.[bench]'`` into the running interpreter (redis[hiredis],
  nats-py, pika, aio-pika, matplotlib).

A peer that cannot be installed is reported with one line and skipped; this
script never ends with a traceback and always exits 0, so ``make bench-compare``
goes on with whatever is available (the runner says which peers it skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Debian package -> the executable the harness runs.
PEERS: dict[str, str] = {
    "redis-server": "redis-server",
    "nats-server": "nats-server",
    # the harness runs the node script itself (benchmarks/systems/rabbitmq_sys.py)
    "rabbitmq-server": "/usr/lib/rabbitmq/bin/rabbitmq-server",
}
#: Bounds on each step, so a broken mirror cannot hang the run.
APT_UPDATE_TIMEOUT_S = 300
APT_INSTALL_TIMEOUT_S = 600
PIP_TIMEOUT_S = 600


def _run(cmd: list[str], timeout_s: int) -> tuple[bool, str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        p = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env
        )
    except FileNotFoundError:
        return False, f"{cmd[0]} not found"
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s} s"
    tail = (p.stderr or p.stdout).strip().splitlines()
    return p.returncode == 0, tail[-1] if tail else f"exit {p.returncode}"


def _find(exe: str) -> str | None:
    if exe.startswith("/"):
        return exe if Path(exe).exists() else None
    # The Debian packages install into /usr/bin; /usr/sbin for safety.
    return shutil.which(exe) or next(
        (str(p) for p in (Path("/usr/bin") / exe, Path("/usr/sbin") / exe) if p.exists()), None
    )


def install_system_peers() -> dict[str, str | None]:
    missing = [pkg for pkg, exe in PEERS.items() if _find(exe) is None]
    if missing:
        if shutil.which("apt-get") is None:
            for pkg in missing:
                print(f"skipping {pkg}: no apt-get on this machine; install it by hand")
        else:
            if os.geteuid() != 0:
                print("apt-get needs root: run as root or install the peers by hand")
            ok, msg = _run(["apt-get", "update"], APT_UPDATE_TIMEOUT_S)
            if not ok:
                print(f"apt-get update failed ({msg}); trying the install anyway")
            for pkg in missing:  # one at a time: one failure must not block the other
                ok, msg = _run(
                    ["apt-get", "install", "-y", "--no-install-recommends", pkg],
                    APT_INSTALL_TIMEOUT_S,
                )
                if not ok:
                    print(f"skipping {pkg}: apt-get install failed: {msg}")
    found = {pkg: _find(exe) for pkg, exe in PEERS.items()}
    for pkg, path in found.items():
        print(f"{pkg}: {path}" if path else f"{pkg}: not available, its runs will be skipped")
    return found


def install_python_extra() -> bool:
    ok, msg = _run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[bench]"], PIP_TIMEOUT_S
    )
    if not ok:
        print(f"pip install of the bench extra failed ({msg}); trying each client alone")
        for req in (
            "redis[hiredis]>=5,<9",
            "nats-py>=2.7,<3",
            "pika>=1.3,<2",
            "aio-pika>=9.4,<11",
            "matplotlib>=3.8,<4",
        ):
            pip = [sys.executable, "-m", "pip", "install", "--quiet", req]
            ok1, msg1 = _run(pip, PIP_TIMEOUT_S)
            if not ok1:
                print(f"skipping {req}: {msg1}")
    for mod, what in (
        ("redis", "redis-py"),
        ("nats", "nats-py"),
        ("pika", "pika"),
        ("aio_pika", "aio-pika"),
        ("matplotlib", "matplotlib"),
    ):
        try:
            __import__(mod)
        except Exception as exc:  # any import failure means "skip it", never a traceback
            print(f"{what}: not importable ({type(exc).__name__}), its runs will be skipped")
            ok = False
    return ok


def main() -> int:
    try:
        install_system_peers()
        install_python_extra()
    except Exception as exc:  # never a traceback: the runner skips what is missing
        print(f"install_peers: {type(exc).__name__}: {exc}; continuing with what is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
