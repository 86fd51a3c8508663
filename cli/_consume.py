"""``logctl consume``: replay records as text lines or JSON lines.

Without ``--follow`` the command reads each partition up to its high
watermark as it was when the command started, then exits 0. With
``--follow`` it keeps waiting, writing and flushing each record as it
arrives, until stopped: SIGTERM ends it with exit 0, SIGINT (Ctrl-C) with
130 like any Unix tool, both after flushing what was printed. Offsets outside
the partition's range are refused before reading, naming the valid range;
the end offset itself is valid (nothing to read yet).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from logstore import errors
from logstore.client import Admin, Consumer

from ._format import ReaderGone, Terminated, record_json


def run(
    topic: str,
    *,
    partition: int | None,
    start: tuple[str, int],
    max_records: int | None,
    follow: bool,
    bootstrap: str,
    json_output: bool,
    connect_timeout_ms: int,
) -> None:
    wanted = [partition] if partition is not None else []
    with Admin(bootstrap, connect_timeout_ms=connect_timeout_ms) as admin:
        ends = {o.partition: o.offset for o in admin.list_offsets(topic, "latest", wanted)}
        if partition is not None and partition not in ends:
            raise errors.UnknownPartitionError(f"topic {topic!r} has no partition {partition}")
        kind, arg = start
        if kind == "latest":
            positions = dict(ends)
        elif kind == "time":
            positions = {o.partition: o.offset for o in admin.list_offsets(topic, arg, wanted)}
        else:
            earliest = {
                o.partition: o.offset for o in admin.list_offsets(topic, "earliest", wanted)
            }
            positions = dict(earliest)
            if kind == "offset":
                assert partition is not None
                lo, hi = earliest[partition], ends[partition]
                if not lo <= arg <= hi:
                    raise errors.OffsetOutOfRangeError(
                        f"offset {arg} is out of range for {topic} partition {partition}: "
                        f"valid offsets are {lo}..{hi} ({hi} is the end, where the next "
                        "record will be written)",
                        lo,
                        hi,
                    )
                positions[partition] = arg
    if max_records == 0:
        return
    active = sorted(p for p in positions if follow or positions[p] < ends[p])
    if not active:
        return
    consumer = Consumer(bootstrap, connect_timeout_ms=connect_timeout_ms)
    count = 0
    progress = None
    if not follow and sys.stderr.isatty() and not sys.stdout.isatty():
        # records go to a pipe or file, a person watches the terminal
        total = sum(ends[p] - positions[p] for p in active)
        if max_records is not None:
            total = min(total, max_records)
        progress = Progress(
            TextColumn("consuming"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = progress.add_task("consume", total=total)
        progress.start()
    out_text = sys.stdout
    out_bin = sys.stdout.buffer
    try:
        consumer.assign([(topic, p) for p in active])
        for p in active:
            consumer.seek((topic, p), positions[p])
        remaining = set(active)
        while follow or remaining:
            budget = None if max_records is None else max_records - count
            polled: dict[Any, Any] = consumer.poll(500 if follow else 1000, budget)
            done_now = []
            for tp, recs in polled.items():
                p = tp.partition
                end = ends[p]
                for r in recs:
                    if not follow and r.offset >= end:
                        break
                    if json_output:
                        out_text.write(record_json(topic, p, r) + "\n")
                        if follow:
                            out_text.flush()
                    else:
                        out_bin.write((r.value or b"") + b"\n")
                        if follow:
                            out_bin.flush()
                    count += 1
                if not follow and consumer.position(tp) >= end:
                    done_now.append(p)
            if progress is not None:
                progress.update(task, completed=count)
            if done_now:
                remaining.difference_update(done_now)
                if remaining:
                    consumer.assign([(topic, p) for p in sorted(remaining)])
            if max_records is not None and count >= max_records:
                break
    except Terminated:
        if not follow:
            raise
    except BrokenPipeError:
        raise ReaderGone from None
    finally:
        if progress is not None:
            progress.stop()
        consumer.close()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise ReaderGone from None
    if sys.stderr.isatty():
        sys.stderr.write(f"consumed {count} records\n")
