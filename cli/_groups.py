"""``logctl groups``: list, describe, reset-offsets and delete consumer groups.

Each command is one Admin call (``logstore.client.Admin``, the Groups
service) and prints a table for people or, with ``--output json``, one JSON
document for scripts. Lag is shown in records (offsets from the committed
offset to the log end) and in seconds (the age of the oldest record the group
has not committed).

``reset-offsets`` takes exactly one of ``--to-earliest``, ``--to-latest``,
``--to-offset N``, ``--to-time T`` (the forms of ``consume --from-time``) and
``--shift-by N``, optionally ``--topic T`` or ``--topic T:P[,P...]``, and
``--dry-run`` to print the plan without committing. Argument errors (no spec,
two specs, a bad time, a bad ``T[:P]``) exit 2 before any request; what the
broker refuses (unknown group, topic or partition; a group with members)
exits 1 and changes nothing -- the broker checks everything before it
commits anything.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from ._commands import Conn, admin_command
from ._format import ArgumentError, fields_json, parse_time, table, write_json
from ._options import Output

if TYPE_CHECKING:
    from logstore.client import GroupDescription, ResetPlan, TopicPartition

groups_app = typer.Typer(
    help="List, describe, reset the offsets of, and delete consumer groups.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

GroupArg = Annotated[str, typer.Argument(help="Consumer group id.")]

# T, or T:P[,P...]: topic names are [a-zA-Z0-9._-] (never ':'), partitions ASCII digits.
_TOPIC_SPEC: Final = re.compile(r"([a-zA-Z0-9._-]+)(?::([0-9]+(?:,[0-9]+)*))?", re.ASCII)


def parse_topic_spec(text: str) -> tuple[str, list[int] | None]:
    """``T`` -> (T, None: every partition); ``T:P[,P...]`` -> (T, [P...]); else ArgumentError."""
    m = _TOPIC_SPEC.fullmatch(text)
    if m is None:
        raise ArgumentError(
            f"--topic {text!r}: use TOPIC or TOPIC:PARTITION[,PARTITION...] "
            "(e.g. events or events:0,2)"
        )
    if m.group(2) is None:
        return m.group(1), None
    return m.group(1), sorted({int(p) for p in m.group(2).split(",")})


def _tp_list(tps: list[TopicPartition]) -> list[dict[str, Any]]:
    return [{"topic": t, "partition": p} for t, p in tps]


def _tp_text(tps: list[TopicPartition]) -> str:
    by: dict[str, list[str]] = {}
    for t, p in tps:
        by.setdefault(t, []).append(str(p))
    return " ".join(f"{t}:{','.join(ps)}" for t, ps in by.items()) or "-"


def _or_dash(value: object) -> object:
    return "-" if value is None or value == "" else value


@groups_app.command("list")
@admin_command
def groups_list(
    *,
    conn: Conn,
) -> None:
    """List consumer groups with their state and member count."""
    with conn.admin() as a:
        groups = a.list_groups()
    conn.emit(
        [
            {"group_id": g.group_id, "state": g.state, "member_count": g.member_count}
            for g in groups
        ],
        lambda: table(
            ["GROUP", "STATE", "MEMBERS"], [(g.group_id, g.state, g.member_count) for g in groups]
        ),
    )


def describe_json(d: GroupDescription) -> dict[str, Any]:
    """The documented JSON of ``groups describe`` (committed_offset null when none)."""
    return {
        **fields_json(d),
        "members": [
            {
                **fields_json(m),
                "assigned": _tp_list(m.assigned),
                "revoking": _tp_list(m.revoking),
                "target": _tp_list(m.target),
            }
            for m in d.members
        ],
        "partitions": [fields_json(p, "lag_seconds") for p in d.partitions],
    }


@groups_app.command("describe")
@admin_command
def groups_describe(
    group: GroupArg,
    *,
    conn: Conn,
) -> None:
    """Show a group's members and, per partition, committed offset, end and lag."""
    with conn.admin() as a:
        d = a.describe_group(group)
    total = sum(p.lag_records for p in d.partitions)
    members = [
        (
            m.member_id,
            _or_dash(m.client_id),
            _or_dash(m.host),
            m.member_epoch,
            _tp_text(m.assigned),
            _tp_text(m.revoking),
        )
        for m in d.members
    ]
    partitions = [
        (
            p.topic,
            p.partition,
            _or_dash(p.member_id),
            _or_dash(p.committed_offset),
            p.log_end_offset,
            p.lag_records,
            f"{p.lag_seconds:.1f}",
        )
        for p in d.partitions
    ]
    conn.emit_tables(
        describe_json(d),
        f"group {d.group_id}: {d.state}, epoch {d.group_epoch}, assignor {d.assignor}, "
        f"{len(d.members)} member(s), lag {total} record(s)\n",
        [
            (["MEMBER", "CLIENT", "HOST", "EPOCH", "ASSIGNED", "REVOKING"], members),
            (["TOPIC", "PARTITION", "MEMBER", "COMMITTED", "END", "LAG", "LAG_S"], partitions),
        ],
    )


def _reset_spec(
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_time: str | None,
    shift_by: int | None,
) -> str | tuple[str, int]:
    """The one spec given, or ArgumentError (none, or two)."""
    given = [
        name
        for name, on in (
            ("--to-earliest", to_earliest),
            ("--to-latest", to_latest),
            ("--to-offset", to_offset is not None),
            ("--to-time", to_time is not None),
            ("--shift-by", shift_by is not None),
        )
        if on
    ]
    if not given:
        raise ArgumentError(
            "choose where to reset: --to-earliest, --to-latest, --to-offset N, "
            "--to-time T or --shift-by N"
        )
    if len(given) > 1:
        raise ArgumentError(f"choose one reset position, not {' and '.join(given)}")
    if to_earliest:
        return "earliest"
    if to_latest:
        return "latest"
    if to_offset is not None:
        return ("offset", to_offset)
    if to_time is not None:
        return ("time", parse_time(to_time))
    assert shift_by is not None
    return ("shift", shift_by)


def plan_json(group: str, plan: ResetPlan) -> dict[str, Any]:
    return {
        "group_id": group,
        "applied": plan.applied,
        "partitions": [fields_json(p) for p in plan.partitions],
    }


@groups_app.command("reset-offsets")
@admin_command
def groups_reset_offsets(
    group: GroupArg,
    to_earliest: Annotated[
        bool, typer.Option("--to-earliest", help="Each partition's first offset.")
    ] = False,
    to_latest: Annotated[
        bool, typer.Option("--to-latest", help="Each partition's end (skip what is stored).")
    ] = False,
    to_offset: Annotated[
        int | None,
        typer.Option("--to-offset", min=0, help="This offset (clamped to the log)."),
    ] = None,
    to_time: Annotated[
        str | None,
        typer.Option(
            "--to-time",
            help="First record at or after: ISO 8601 (UTC if no zone), -90s, -15m, -1h, -2d.",
        ),
    ] = None,
    shift_by: Annotated[
        int | None,
        typer.Option("--shift-by", help="The committed offset plus N (negative: back)."),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic", help="TOPIC or TOPIC:P[,P...] (default: every committed partition)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, commit nothing.")
    ] = False,
    *,
    conn: Conn,
) -> None:
    """Move an empty group's committed offsets (refused while it has members)."""
    spec = _reset_spec(to_earliest, to_latest, to_offset, to_time, shift_by)
    name, parts = parse_topic_spec(topic) if topic is not None else (None, None)
    with conn.admin() as a:
        plan = a.reset_offsets(group, spec, topic=name, partitions=parts, dry_run=dry_run)
    if conn.output is Output.json:
        write_json(plan_json(group, plan))
        return
    table(
        ["TOPIC", "PARTITION", "PREVIOUS", "NEW"],
        [
            (p.topic, p.partition, _or_dash(p.previous_offset), p.new_offset)
            for p in plan.partitions
        ],
    )
    n = len(plan.partitions)
    if plan.applied:
        sys.stdout.write(f"reset {n} partition(s) of group {group}\n")
    else:
        sys.stdout.write(
            f"dry run: {n} partition(s) of group {group} would move; nothing committed\n"
        )


@groups_app.command("delete")
@admin_command
def groups_delete(
    group: GroupArg,
    *,
    conn: Conn,
) -> None:
    """Delete an empty group and its committed offsets (refused while it has members)."""
    with conn.admin() as a:
        a.delete_group(group)
    conn.emit({"deleted": group}, f"deleted group {group}\n")
