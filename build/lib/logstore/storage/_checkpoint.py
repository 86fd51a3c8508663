"""Atomic checkpoint files: write a temp file, fsync it, rename it over the old
one, fsync the directory. After a crash a checkpoint is either the old or the
new version, never a mix; a missing checkpoint reads as empty.

Offset checkpoints (recovery points, log start offsets) are text::

    0                      version
    2                      number of entries
    events 0 1234          topic partition offset
    events 1 99
"""

from __future__ import annotations

import json
import os
from typing import Any

from logstore.errors import StorageError

from ._fs import FileSystem
from ._names import TMP_SUFFIX

_VERSION = "0"


def write_atomic(fs: FileSystem, path: str, data: bytes) -> None:
    tmp = path + TMP_SUFFIX
    fs.write_file(tmp, data)
    fs.replace(tmp, path)
    fs.fsync_dir(os.path.dirname(path) or ".")


def write_offsets(fs: FileSystem, path: str, offsets: dict[tuple[str, int], int]) -> None:
    lines = [_VERSION, str(len(offsets))]
    lines += [f"{t} {p} {o}" for (t, p), o in sorted(offsets.items())]
    write_atomic(fs, path, ("\n".join(lines) + "\n").encode())


def read_offsets(fs: FileSystem, path: str) -> dict[tuple[str, int], int]:
    if not fs.exists(path):
        return {}
    text = fs.read_file(path).decode(errors="replace")
    lines = text.splitlines()
    try:
        if lines[0] != _VERSION:
            raise ValueError(f"version {lines[0]!r}")
        count = int(lines[1])
        out: dict[tuple[str, int], int] = {}
        for line in lines[2 : 2 + count]:
            t, p, o = line.split(" ")
            out[(t, int(p))] = int(o)
        if len(out) != count:
            raise ValueError("entry count mismatch")
        return out
    except (IndexError, ValueError) as exc:
        raise StorageError(f"checkpoint {path} is malformed: {exc}") from None


def write_json(fs: FileSystem, path: str, value: Any) -> None:
    write_atomic(fs, path, json.dumps(value, indent=1, sort_keys=True).encode())


def read_json(fs: FileSystem, path: str, default: Any) -> Any:
    if not fs.exists(path):
        return default
    try:
        return json.loads(fs.read_file(path))
    except ValueError as exc:
        raise StorageError(f"checkpoint {path} is malformed: {exc}") from None
