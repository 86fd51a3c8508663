"""Offset and Position are distinct kinds at type-check level: mypy --strict
rejects a byte position passed where storage expects an offset, and the
reverse (logstore/_types.py)."""

from __future__ import annotations

from pathlib import Path

import mypy.api

ROOT = Path(__file__).resolve().parent.parent

# Each line marked `# wrong` must be the only kind of error mypy reports; the
# unmarked calls are the right kinds and must pass, so the check cannot pass
# by rejecting everything.
SNIPPET = """\
from logstore._types import Offset, Position
from logstore.storage._index import OffsetIndex
from logstore.storage._segment import Segment
from logstore.storage._segments import SegmentList


def f(seg: Segment, segs: SegmentList, idx: OffsetIndex, p: Position, o: Offset) -> None:
    seg.locate(o)
    seg.locate(p)  # wrong
    seg.read_frames_at(p, 1, o)
    seg.read_frames_at(o, 1)  # wrong
    seg.truncate_at(p, o)
    seg.truncate_at(o, p)  # wrong
    segs.floor(o)
    segs.floor(p)  # wrong
    found = seg.locate(o)
    if found is not None:
        seg.frames(found[0], seg.size)
        seg.locate(found[0])  # wrong
    idx.count_below_position(p)
    idx.count_below_position(o)  # wrong
"""


def test_mypy_rejects_a_position_passed_as_an_offset(tmp_path: Path) -> None:
    """mypy --strict reports exactly the calls that mix Offset and Position."""
    src = tmp_path / "kinds.py"
    src.write_text(SNIPPET)
    wrong = {n for n, line in enumerate(SNIPPET.splitlines(), 1) if line.endswith("# wrong")}
    # The project's own cache (warm after `make lint`): ~2 s; ~5 s cold.
    out, err, _ = mypy.api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"), str(src)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = {int(line.split(":")[1]) for line in errors}
    assert lines == wrong, (out, err)
    assert all("[arg-type]" in line for line in errors), out
