"""The layer picture of DESIGN.md holds: imports point down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# layer -> modules it must never import
FORBIDDEN = {
    "logstore/wire": ("logstore.storage", "logstore.broker", "logstore.client", "cli", "grpc"),
    "logstore/storage": ("logstore.broker", "logstore.client", "cli", "grpc"),
    "logstore/client": ("logstore.storage", "logstore.broker", "cli"),
    "logstore/broker": ("logstore.client", "cli"),
    # the coordinator is pure: no gRPC, no storage I/O, no generated code
    "logstore/coordinator": (
        "logstore.storage",
        "logstore.broker",
        "logstore.client",
        "logstore.v1",
        "cli",
        "grpc",
    ),
    # share groups are pure in the same way
    "logstore/share": (
        "logstore.storage",
        "logstore.broker",
        "logstore.client",
        "logstore.coordinator",
        "logstore.v1",
        "cli",
        "grpc",
    ),
    # security is pure too: files and hashes, no gRPC, no store, no generated code
    "logstore/security": (
        "logstore.storage",
        "logstore.broker",
        "logstore.client",
        "logstore.coordinator",
        "logstore.share",
        "logstore.v1",
        "cli",
        "grpc",
    ),
    "cli": ("logstore.storage", "logstore.broker"),
}
ROOT_MODULES = ("logstore/errors.py", "logstore/config.py", "logstore/_types.py")


def _imports(path: Path) -> list[tuple[str, ast.AST, list[ast.AST]]]:
    """Every imported module name with the node and its enclosing function stack."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, ast.AST, list[ast.AST]]] = []

    def visit(node: ast.AST, stack: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = [*stack, child] if isinstance(child, ast.FunctionDef) else stack
            if isinstance(child, ast.Import):
                out.extend((a.name, child, stack) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, child, stack))
            visit(child, inner)

    visit(tree, [])
    return out


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name, node, stack in _imports(path):
            if not any(name == f or name.startswith(f + ".") for f in forbidden):
                continue
            # The one allowed exception: `logctl serve` imports the broker in its function.
            if (
                layer == "cli"
                and name.startswith("logstore.broker")
                and any(getattr(f, "name", "") == "serve" for f in stack)
            ):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)} imports {name}")
    return bad


def test_layers_import_only_downwards() -> None:
    """No module imports a layer above it (ast scan of every file)."""
    bad: list[str] = []
    for layer, forbidden in FORBIDDEN.items():
        bad += _violations(layer, forbidden)
    for mod in ROOT_MODULES:
        for name, node, _ in _imports(ROOT / mod):
            if name.startswith(("logstore.storage", "logstore.broker", "logstore.client", "grpc")):
                bad.append(f"{mod}:{getattr(node, 'lineno', 0)} imports {name}")
    assert bad == []


def test_scan_would_catch_a_violation(tmp_path: Path) -> None:
    """The ast scan itself finds an upward import (so the test above can fail)."""
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom logstore.storage import Store\n")
    assert [n for n, _, _ in _imports(f)] == ["os", "logstore.storage"]


def test_importing_the_client_does_not_load_storage() -> None:
    """`import logstore.client` (and `from logstore import Record`) leave storage unloaded."""
    code = (
        "import sys\n"
        "import logstore.client\n"
        "from logstore import Record\n"
        "bad = [m for m in sys.modules if m.startswith(('logstore.storage', 'logstore.broker'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""


def test_importing_store_does_not_load_grpc() -> None:
    """`from logstore import Store` loads the storage engine without gRPC or the client."""
    code = (
        "import sys\n"
        "from logstore import Store\n"
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith('logstore.client')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
