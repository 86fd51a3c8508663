"""``logctl consume``: replay records as text lines or JSON lines.

Three steps, each its own function:

1. :func:`resolve_start` turns the start option into a position per
   partition, and the end (the log end offset when the command started) at
   which a reader without ``--follow`` stops. Earliest, latest and a time are
   answered by ``ListOffsets``; ``--offset`` is taken as given and checked by
   the broker on the first fetch -- the one start-offset range check, in the
   domain layer, which refuses an offset outside log start..log end naming the
   valid range (the end itself is valid: nothing to read yet).
2. :func:`consume_loop` polls a :class:`~logstore.client.Consumer` and hands
   each partition's records to the output, stopping at the ends (or, with
   ``--follow``, never), after ``--max`` records, or on a signal.
3. :class:`TextOutput` / :class:`JsonOutput` format them: one value per line,
   or one JSON object per line (``_format.record_json``).

Without ``--follow`` the command reads each partition up to its end and exits
0. With ``--follow`` it keeps waiting, writing and flushing records as they
arrive, until stopped: SIGTERM ends it with exit 0, SIGINT (Ctrl-C) with 130
like any Unix tool, both after flushing what was printed.

With ``--group G`` (:func:`run_group`) the command is a member of consumer
group G instead: it reads the partitions the coordinator gives it, from G's
committed offsets (else the beginning, or the end with ``--latest``), commits
exactly what it printed, and leaves the group on exit (SIGINT: 130, as above).
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from logstore import errors
from logstore.client import Admin, Consumer, GroupConsumer, TopicPartition
from logstore.wire import Record

from ._format import ReaderGone, Terminated, record_json
from ._options import credentials

StartKind = Literal["earliest", "latest", "time", "offset"]


@dataclass(frozen=True)
class Start:
    """Where to start: each partition's first record, its end, the first record at or
    after ``value`` ms, or offset ``value`` of the one partition given."""

    kind: StartKind
    value: int = 0


@dataclass(frozen=True)
class Plan:
    """What to read: first offset and end offset (at the start) per partition."""

    positions: dict[int, int]
    ends: dict[int, int]

    def active(self, follow: bool) -> list[int]:
        """Partitions to read: all when following, else those with something before
        their end (a position past the end is read, so the broker can refuse it)."""
        return sorted(p for p, pos in self.positions.items() if follow or pos != self.ends[p])


def resolve_start(admin: Admin, topic: str, partition: int | None, start: Start) -> Plan:
    """Positions and ends of ``topic``'s partitions (or of ``partition`` only)."""
    wanted = [partition] if partition is not None else []
    ends = {o.partition: o.offset for o in admin.list_offsets(topic, "latest", wanted)}
    if partition is not None and partition not in ends:
        raise errors.UnknownPartitionError(f"topic {topic!r} has no partition {partition}")
    if start.kind == "latest":
        positions = dict(ends)
    elif start.kind == "time":
        positions = {o.partition: o.offset for o in admin.list_offsets(topic, start.value, wanted)}
    elif start.kind == "offset":
        assert partition is not None  # main checks --offset needs --partition
        positions = {partition: start.value}
    else:
        positions = {o.partition: o.offset for o in admin.list_offsets(topic, "earliest", wanted)}
    return Plan(positions, ends)


class Output(Protocol):
    """Writes the records of one partition; ``flush`` makes them visible."""

    def write(self, partition: int, records: list[Record]) -> None: ...

    def flush(self) -> None: ...


class TextOutput:
    """One value per line (raw bytes; a null value is an empty line)."""

    def __init__(self) -> None:
        self._out = sys.stdout.buffer

    def write(self, partition: int, records: list[Record]) -> None:
        self._out.write(b"".join([(r.value or b"") + b"\n" for r in records]))

    def flush(self) -> None:
        self._out.flush()


class JsonOutput:
    """One JSON object per line, the documented format (``_format.record_json``)."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._out = sys.stdout

    def write(self, partition: int, records: list[Record]) -> None:
        topic = self._topic
        self._out.write("".join([record_json(topic, partition, r) + "\n" for r in records]))

    def flush(self) -> None:
        self._out.flush()


_OFFSET = attrgetter("offset")


def consume_loop(
    consumer: Consumer,
    topic: str,
    plan: Plan,
    active: list[int],
    output: Output,
    *,
    max_records: int | None,
    follow: bool,
    progress: Any = None,
) -> int:
    """Read ``active`` partitions of ``plan`` into ``output``; the number of records written.

    Without ``follow`` a partition is done once a reply has come back for it and
    its position is at or past its end; records at or after the end are not
    written (they arrived after the command started). SIGTERM ends a follower
    normally; SIGINT (KeyboardInterrupt) is raised.
    """
    consumer.assign([(topic, p) for p in active])
    for p in active:
        consumer.seek((topic, p), plan.positions[p])
    count = 0
    remaining = set(active)
    ends = plan.ends
    try:
        while follow or remaining:
            budget = None if max_records is None else max_records - count
            polled: dict[Any, list[Record]] = consumer.poll(500 if follow else 1000, budget)
            for tp, got in polled.items():
                # without --follow, records at or after the end came after the start
                cut = (
                    len(got) if follow else bisect.bisect_left(got, ends[tp.partition], key=_OFFSET)
                )
                if cut:
                    output.write(tp.partition, got[:cut] if cut < len(got) else got)
                    count += cut
            if follow:
                if polled:
                    output.flush()
            else:
                done = [
                    p
                    for p in remaining
                    if consumer.high_watermark((topic, p)) is not None
                    and consumer.position((topic, p)) >= ends[p]
                ]
                if done:
                    remaining.difference_update(done)
                    if remaining:
                        consumer.assign([(topic, p) for p in sorted(remaining)])
            if progress is not None:
                progress.update(count)
            if max_records is not None and count >= max_records:
                break
    except Terminated:  # SIGTERM: the way a supervisor stops a follower
        if not follow:
            raise
    return count


class _Progress:
    """A Rich bar on stderr while records go to a pipe or file and a person watches."""

    def __init__(self, total: int) -> None:
        self._progress = Progress(
            TextColumn("consuming"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("consume", total=total)
        self._progress.start()

    def update(self, count: int) -> None:
        self._progress.update(self._task, completed=count)

    def stop(self) -> None:
        self._progress.stop()


def run(
    topic: str,
    *,
    partition: int | None,
    start: Start,
    max_records: int | None,
    follow: bool,
    bootstrap: str,
    json_output: bool,
    connect_timeout_ms: int,
) -> None:
    with Admin(
        bootstrap, connect_timeout_ms=connect_timeout_ms, credentials=credentials()
    ) as admin:
        plan = resolve_start(admin, topic, partition, start)
    active = plan.active(follow)
    if max_records == 0 or not active:
        return
    output: Output = JsonOutput(topic) if json_output else TextOutput()
    consumer = Consumer(bootstrap, connect_timeout_ms=connect_timeout_ms, credentials=credentials())
    progress = None
    if not follow and sys.stderr.isatty() and not sys.stdout.isatty():
        total = sum(max(0, plan.ends[p] - plan.positions[p]) for p in active)
        progress = _Progress(total if max_records is None else min(total, max_records))
    count = 0
    try:
        count = consume_loop(
            consumer,
            topic,
            plan,
            active,
            output,
            max_records=max_records,
            follow=follow,
            progress=progress,
        )
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


class Printed:
    """Next offset after the last printed record per partition, and what was committed."""

    def __init__(self) -> None:
        self.printed: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def commit(self, member: GroupConsumer, only: list[TopicPartition] | None = None) -> None:
        """Commit what was printed and not yet committed (of ``only``, or of every owned)."""
        keep = set(member.assignment()) if only is None else set(only)
        todo = {
            tp: o for tp, o in self.printed.items() if tp in keep and self.committed.get(tp) != o
        }
        if todo:
            member.commit(todo)
            self.committed.update(todo)


def group_loop(
    member: GroupConsumer,
    state: Printed,
    output: Output,
    *,
    max_records: int | None,
    follow: bool,
) -> int:
    """Print what ``member`` is given and commit exactly what was printed; the count.

    Commits after every flushed batch (one OffsetCommit per poll that printed
    something), in ``on_revoke`` (see :func:`run_group`), and once more in
    ``finally`` for what a signal interrupted between printing and committing,
    so a second run continues after the last printed record. Without
    ``follow`` it stops at the first second with nothing new once the member
    owns partitions (what is there has been read).
    """
    count = 0
    try:
        while True:
            budget = None if max_records is None else max_records - count
            polled = member.poll(500 if follow else 1000, budget)
            for tp, got in polled.items():
                output.write(tp.partition, got)
                count += len(got)
                state.printed[tp] = got[-1].offset + 1
            if polled:
                output.flush()
                state.commit(member)
            elif not follow and member.assignment():
                break
            if max_records is not None and count >= max_records:
                break
    except Terminated:  # SIGTERM: the way a supervisor stops a follower
        if not follow:
            raise
    finally:
        try:
            output.flush()
            state.commit(member)
        except (errors.LogStoreError, BrokenPipeError):
            pass  # best effort on the way out: at worst these are printed again
    return count


def run_group(
    topic: str,
    group: str,
    *,
    latest: bool,
    max_records: int | None,
    follow: bool,
    bootstrap: str,
    json_output: bool,
    connect_timeout_ms: int,
) -> None:
    """``consume TOPIC --group G``: read as a member of G from its committed offsets
    (else from the beginning, or the end with ``--latest``); leave G on exit."""
    if max_records == 0:
        return
    output: Output = JsonOutput(topic) if json_output else TextOutput()
    state = Printed()
    holder: list[GroupConsumer] = []

    def on_revoke(tps: list[TopicPartition]) -> None:
        if holder:
            output.flush()
            state.commit(holder[0], tps)

    member = GroupConsumer(
        bootstrap,
        group,
        topics=[topic],
        auto_offset_reset="latest" if latest else "earliest",
        enable_auto_commit=False,  # we commit exactly what was printed
        on_revoke=on_revoke,
        connect_timeout_ms=connect_timeout_ms,
        credentials=credentials(),
        client_id="logctl",
    )
    holder.append(member)
    count = 0
    try:
        count = group_loop(member, state, output, max_records=max_records, follow=follow)
    except BrokenPipeError:
        raise ReaderGone from None
    finally:
        member.close()  # leaves the group: its partitions move to the others now
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise ReaderGone from None
    if sys.stderr.isatty():
        sys.stderr.write(f"consumed {count} records\n")
