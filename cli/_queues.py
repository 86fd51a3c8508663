"""``logctl queues`` (share groups) and ``logctl dlq`` (their dead letters).

``queues list|describe|create|alter|delete``: one Admin call each (the
ShareGroups service). ``describe`` prints the group's settings, its totals
(available, acquired, delayed, dead-lettered, the oldest available record's
age, the acknowledge rate, the estimated drain time), the members with their
in-flight counts and a row per partition; ``--output json`` gives the same as
one document. ``create`` / ``alter`` take ``--topic T[:PRIORITY]``
(repeatable; the topic must exist; PRIORITY an integer, higher first, 0 by
default), ``--visibility-timeout 30s``, ``--max-delivery-attempts N``,
``--max-inflight N``, ``--dead-letter-topic X``, ``--ttl 1h``,
``--ordering-keys/--no-ordering-keys``, ``--max-queue-latency 10s`` and
``--auto-offset-reset earliest|latest`` (durations are ``500ms``, ``30s``,
``10m``, ``2h``, ``1d``).

``dlq list G`` reads the group's dead-letter topic (its name from the group's
settings) with a plain Consumer from the start to the end it had when the
command began, and prints one row per dead letter: where it came from
(source topic, partition, offset), its delivery count, reason, the consumer's
last error text and its first / last delivery and dead-letter times, from the
``logstore-dlq-*`` headers. ``dlq show G`` prints whole dead letters (key,
value, every header); ``--max N`` bounds both (default 100 for list, 20 for
show); ``--output json`` one document. ``dlq redrive G [--to TOPIC] [--max N]``
moves dead letters back to their source topic (or TOPIC); redriving twice
never duplicates (the broker keeps the group's redrive position).

Wrong input is one line on stderr and a non-zero exit, and changes nothing:
exit 2 for what is found before any request (a bad duration, ``T:P`` or
number, an alter with nothing to change), 1 for what the broker refuses (an
unknown group or topic, a value out of its bounds) -- it checks a config
whole before storing it.
"""

from __future__ import annotations

import inspect
import re
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from logstore import errors

from ._commands import Conn, admin_command, with_options
from ._format import (
    ArgumentError,
    fields_json,
    format_ms,
    parse_duration,
    record_json,
    table,
    write_json,
)
from ._options import Output, credentials

if TYPE_CHECKING:
    from logstore.client import Admin, ShareGroupDescription, ShareGroupSettings
    from logstore.wire import Record

queues_app = typer.Typer(
    help="List, describe, create, alter and delete share groups (work queues).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
dlq_app = typer.Typer(
    help="List, show and redrive the dead letters of a share group.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

GroupArg = Annotated[str, typer.Argument(help="Share group id.")]
#: Dead-letter headers (share.proto).
DLQ_PREFIX: Final = "logstore-dlq-"
# T or T:PRIORITY; topic names are [a-zA-Z0-9._-], a priority an optionally signed integer.
_TOPIC_PRIO: Final = re.compile(r"([a-zA-Z0-9._-]+)(?::([+-]?[0-9]{1,7}))?", re.ASCII)
#: The columns of a describe's partition table.
_PARTITION_HEADERS: Final = (
    "TOPIC",
    "PARTITION",
    "START",
    "END",
    "AVAILABLE",
    "ACQUIRED",
    "DELAYED",
    "DLQ",
    "OLDEST_S",
)
#: How many dead letters list / show print by default.
_LIST_DEFAULT: Final = 100
_SHOW_DEFAULT: Final = 20


def parse_topic_priority(text: str) -> tuple[str, int]:
    """``T`` -> (T, 0); ``T:PRIORITY`` -> (T, PRIORITY); else ArgumentError."""
    m = _TOPIC_PRIO.fullmatch(text)
    if m is None:
        raise ArgumentError(
            f"--topic {text!r}: use TOPIC or TOPIC:PRIORITY with an integer priority "
            "(e.g. emails.high:10)"
        )
    return m.group(1), int(m.group(2) or 0)


VisibilityOpt = Annotated[
    str | None,
    typer.Option("--visibility-timeout", help="Lock per delivery (e.g. 30s; default 30s)."),
]
AttemptsOpt = Annotated[
    int | None,
    typer.Option("--max-delivery-attempts", help="Deliveries before dead-lettering (1..255)."),
]
InflightOpt = Annotated[
    int | None, typer.Option("--max-inflight", help="Records in flight per partition.")
]
DlqTopicOpt = Annotated[str | None, typer.Option("--dead-letter-topic", help="Default: GROUP.dlq.")]
TtlOpt = Annotated[
    str | None, typer.Option("--ttl", help="Dead-letter records older than this (e.g. 1h).")
]
OrderingOpt = Annotated[
    bool | None,
    typer.Option("--ordering-keys/--no-ordering-keys", help="One record per key in flight."),
]
LatencyOpt = Annotated[
    str | None,
    typer.Option(
        "--max-queue-latency", help="Refuse produce past this estimated drain time (e.g. 10s)."
    ),
]
ResetOpt = Annotated[
    str | None, typer.Option("--auto-offset-reset", help="earliest (default) or latest.")
]
TopicsOpt = Annotated[
    list[str] | None,
    typer.Option("--topic", help="TOPIC or TOPIC:PRIORITY (repeatable; higher first)."),
]


#: The settings options of ``create`` and ``alter`` (``with_options``), by keyword.
_SETTINGS_OPTIONS: Final = [
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=t)
    for name, t in (
        ("topic", TopicsOpt),
        ("visibility_timeout", VisibilityOpt),
        ("max_delivery_attempts", AttemptsOpt),
        ("max_inflight", InflightOpt),
        ("dead_letter_topic", DlqTopicOpt),
        ("ttl", TtlOpt),
        ("ordering_keys", OrderingOpt),
        ("max_queue_latency", LatencyOpt),
        ("auto_offset_reset", ResetOpt),
    )
]


def _settings_args(
    topic: list[str] | None = None,
    visibility_timeout: str | None = None,
    max_delivery_attempts: int | None = None,
    max_inflight: int | None = None,
    dead_letter_topic: str | None = None,
    ttl: str | None = None,
    ordering_keys: bool | None = None,
    max_queue_latency: str | None = None,
    auto_offset_reset: str | None = None,
) -> dict[str, Any]:
    """The Admin keyword settings of the options given (ArgumentError on a bad one)."""
    out: dict[str, Any] = {}
    if topic:
        prios: dict[str, int] = {}
        for text in topic:
            name, prio = parse_topic_priority(text)
            if name in prios and prios[name] != prio:
                raise ArgumentError(f"--topic {name} given twice with different priorities")
            prios[name] = prio
        out["topic_priorities"] = prios
    if visibility_timeout is not None:
        out["visibility_timeout_ms"] = parse_duration(visibility_timeout, "--visibility-timeout")
    if max_delivery_attempts is not None:
        out["max_delivery_attempts"] = max_delivery_attempts
    if max_inflight is not None:
        out["max_inflight_records"] = max_inflight
    if dead_letter_topic is not None:
        if not dead_letter_topic:
            raise ArgumentError("--dead-letter-topic must not be empty")
        out["dead_letter_topic"] = dead_letter_topic
    if ttl is not None:
        out["message_ttl_ms"] = parse_duration(ttl, "--ttl")
    if ordering_keys is not None:
        out["ordering_keys"] = ordering_keys
    if max_queue_latency is not None:
        out["max_queue_latency_ms"] = parse_duration(max_queue_latency, "--max-queue-latency")
    if auto_offset_reset is not None:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ArgumentError(
                f"--auto-offset-reset must be earliest or latest, not {auto_offset_reset!r}"
            )
        out["auto_offset_reset"] = auto_offset_reset
    if out.get("visibility_timeout_ms") == 0:
        raise ArgumentError("--visibility-timeout must be more than 0")
    return out


def _check_topics(a: Admin, settings: dict[str, Any]) -> None:
    """Every --topic names an existing topic (so a typo changes nothing)."""
    known = {t.name for t in a.list_topics()}
    missing = sorted(set(settings.get("topic_priorities", {})) - known)
    if missing:
        raise errors.UnknownTopicError(f"unknown topic(s) {', '.join(missing)}: nothing changed")


def settings_json(s: ShareGroupSettings) -> dict[str, Any]:
    return fields_json(s)


def _settings_rows(s: ShareGroupSettings) -> list[tuple[str, Any]]:
    return [(k, "-" if v is None else v) for k, v in settings_json(s).items()]


def _print_settings(verb: str, group: str, s: ShareGroupSettings, output: Output) -> None:
    if output is Output.json:
        write_json({"group_id": group, "settings": settings_json(s)})
        return
    sys.stdout.write(f"{verb} share group {group}\n")
    table(["SETTING", "VALUE"], _settings_rows(s))


def describe_json(d: ShareGroupDescription) -> dict[str, Any]:
    """The documented JSON of ``queues describe``."""
    return {
        "group_id": d.group_id,
        "settings": settings_json(d.settings),
        "available": d.available,
        "acquired": d.acquired,
        "delayed": d.delayed,
        "dead_lettered": d.dead_lettered,
        "oldest_available_age_ms": d.oldest_available_age_ms,
        "acknowledge_rate_per_s": d.acknowledge_rate_per_s,
        "estimated_drain_ms": d.estimated_drain_ms,
        "members": [fields_json(m) for m in d.members],
        "partitions": [fields_json(p) for p in d.partitions],
    }


@queues_app.command("list")
@admin_command
def queues_list(
    *,
    conn: Conn,
) -> None:
    """List share groups with their member counts."""
    with conn.admin() as a:
        groups = a.list_share_groups()
    conn.emit(
        [{"group_id": g.group_id, "members": g.members} for g in groups],
        lambda: table(["GROUP", "MEMBERS"], [(g.group_id, g.members) for g in groups]),
    )


@queues_app.command("describe")
@admin_command
def queues_describe(
    group: GroupArg,
    *,
    conn: Conn,
) -> None:
    """Show a share group's settings, counts, members and partitions."""
    with conn.admin() as a:
        d = a.describe_share_group(group)
    s = d.settings
    members = [
        (m.member_id, m.client_id or "-", m.host or "-", m.inflight_records, ",".join(m.topics))
        for m in d.members
    ]
    partitions = [
        (
            p.topic,
            p.partition,
            p.start_offset,
            p.end_offset,
            p.available,
            p.acquired,
            p.delayed,
            p.dead_lettered,
            f"{p.oldest_available_age_ms / 1000:.1f}",
        )
        for p in d.partitions
    ]
    conn.emit_tables(
        describe_json(d),
        f"share group {d.group_id}: {len(d.members)} member(s), available {d.available}, "
        f"acquired {d.acquired}, delayed {d.delayed}, dead-lettered {d.dead_lettered}, "
        f"oldest available {d.oldest_available_age_ms / 1000:.1f} s, "
        f"acks {d.acknowledge_rate_per_s:.1f}/s, drain {d.estimated_drain_ms / 1000:.1f} s\n"
        f"visibility timeout {s.visibility_timeout_ms} ms, max delivery attempts "
        f"{s.max_delivery_attempts}, dead-letter topic {s.dead_letter_topic}\n",
        [
            (["MEMBER", "CLIENT", "HOST", "IN_FLIGHT", "TOPICS"], members),
            (_PARTITION_HEADERS, partitions),
        ],
    )


@queues_app.command("create")
@admin_command
@with_options(_SETTINGS_OPTIONS)
def queues_create(
    group: GroupArg,
    *,
    conn: Conn,
    **options: Any,
) -> None:
    """Create a share group (unset settings take the broker's defaults)."""
    settings = _settings_args(**options)
    with conn.admin() as a:
        _check_topics(a, settings)
        s = a.create_share_group(group, **settings)
    _print_settings("created", group, s, conn.output)


@queues_app.command("alter")
@admin_command
@with_options(_SETTINGS_OPTIONS)
def queues_alter(
    group: GroupArg,
    *,
    conn: Conn,
    **options: Any,
) -> None:
    """Change the given settings of a share group (--topic replaces the priorities)."""
    settings = _settings_args(**options)
    if not settings:
        raise ArgumentError("nothing to alter: give at least one setting (see --help)")
    with conn.admin() as a:
        _check_topics(a, settings)
        s = a.alter_share_group(
            group, replace_topic_priorities="topic_priorities" in settings, **settings
        )
    _print_settings("altered", group, s, conn.output)


@queues_app.command("delete")
@admin_command
def queues_delete(
    group: GroupArg,
    *,
    conn: Conn,
) -> None:
    """Delete a share group without active members (its dead-letter topic is kept)."""
    with conn.admin() as a:
        a.delete_share_group(group)
    conn.emit({"deleted": group}, f"deleted share group {group}\n")


# -- dead letters --------------------------------------------------------------


def _header(r: Record, name: str) -> str | None:
    found = None
    for k, v in r.headers:
        if k == name:
            found = v.decode("utf-8", errors="replace")
    return found


def _int_header(r: Record, name: str) -> int | None:
    text = _header(r, name)
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def dead_letter_json(topic: str, partition: int, r: Record) -> dict[str, Any]:
    """One dead letter: where it is, where it came from, why, and the delivery times."""
    first = _int_header(r, DLQ_PREFIX + "first-delivery-ms")
    last = _int_header(r, DLQ_PREFIX + "last-delivery-ms")
    return {
        "dlq_topic": topic,
        "dlq_partition": partition,
        "dlq_offset": r.offset,
        "source_topic": _header(r, DLQ_PREFIX + "source-topic"),
        "source_partition": _int_header(r, DLQ_PREFIX + "source-partition"),
        "source_offset": _int_header(r, DLQ_PREFIX + "source-offset"),
        "delivery_count": _int_header(r, DLQ_PREFIX + "delivery-count"),
        "reason": _header(r, DLQ_PREFIX + "reason"),
        "error": _header(r, DLQ_PREFIX + "error"),
        "first_delivery_ms": first or None,
        "last_delivery_ms": last or None,
        "dead_lettered_ms": r.timestamp_ms,
    }


def read_dead_letters(conn: Conn, group: str, limit: int) -> tuple[str, list[tuple[int, Record]]]:
    """The group's dead-letter topic and up to ``limit`` of its records (oldest first per
    partition), read from the start to the end it had now. An absent topic: none."""
    from logstore.client import Consumer  # noqa: PLC0415 (startup time)

    with conn.admin() as a:
        topic = a.describe_share_group(group).settings.dead_letter_topic
        try:
            d = a.describe_topic(topic)
        except errors.NotFoundError:
            return topic, []
    ends = {p.partition: p.log_end_offset for p in d.partitions}
    starts = {p.partition: p.log_start_offset for p in d.partitions}
    todo = {p for p in ends if ends[p] > starts[p]}
    out: list[tuple[int, Record]] = []
    if not todo or limit == 0:
        return topic, out
    with Consumer(
        conn.bootstrap, connect_timeout_ms=conn.connect_timeout_ms, credentials=credentials()
    ) as c:
        c.assign([(topic, p) for p in sorted(todo)])
        c.seek_to_beginning()
        deadline = time.monotonic() + 30
        while todo and len(out) < limit:
            if time.monotonic() > deadline:
                raise errors.DeadlineExceededError(
                    f"reading dead-letter topic {topic} took over 30 s"
                )
            for tp, records in c.poll(500, max_records=limit - len(out)).items():
                for r in records:
                    if r.offset < ends[tp.partition]:
                        out.append((tp.partition, r))
                if c.position(tp) >= ends[tp.partition]:
                    todo.discard(tp.partition)
            for p in list(todo):
                if c.position((topic, p)) >= ends[p]:
                    todo.discard(p)
    return topic, out[:limit]


def _check_max(value: int | None, default: int) -> int:
    if value is None:
        return default
    if value < 0:
        raise ArgumentError(f"--max must be >= 0, not {value}")
    return value


MaxOpt = Annotated[int | None, typer.Option("--max", help="At most N dead letters.")]


@dlq_app.command("list")
@admin_command
def dlq_list(
    group: GroupArg,
    max_records: MaxOpt = None,
    *,
    conn: Conn,
) -> None:
    """One row per dead letter: source, deliveries, reason, error, times (default 100)."""
    limit = _check_max(max_records, _LIST_DEFAULT)
    topic, letters = read_dead_letters(conn, group, limit)
    rows = [dead_letter_json(topic, p, r) for p, r in letters]
    if conn.output is Output.json:
        write_json({"group_id": group, "dead_letter_topic": topic, "dead_letters": rows})
        return
    sys.stdout.write(f"share group {group}: {len(rows)} dead letter(s) in {topic}\n")

    def when(ms: int | None) -> str:
        return format_ms(ms) if ms else "-"

    table(
        ["DLQ_OFFSET", "SOURCE", "DELIVERIES", "REASON", "ERROR", "FIRST", "LAST", "DEAD_AT"],
        [
            (
                f"{x['dlq_partition']}:{x['dlq_offset']}",
                f"{x['source_topic']}-{x['source_partition']}@{x['source_offset']}",
                "-" if x["delivery_count"] is None else x["delivery_count"],
                x["reason"] or "-",
                (x["error"] or "-")[:60],
                when(x["first_delivery_ms"]),
                when(x["last_delivery_ms"]),
                when(x["dead_lettered_ms"]),
            )
            for x in rows
        ],
    )


@dlq_app.command("show")
@admin_command
def dlq_show(
    group: GroupArg,
    max_records: MaxOpt = None,
    *,
    conn: Conn,
) -> None:
    """Whole dead letters: key, value and every header (default 20)."""
    import json  # noqa: PLC0415

    limit = _check_max(max_records, _SHOW_DEFAULT)
    topic, letters = read_dead_letters(conn, group, limit)
    docs = [
        {**dead_letter_json(topic, p, r), "record": json.loads(record_json(topic, p, r))}
        for p, r in letters
    ]
    if conn.output is Output.json:
        write_json({"group_id": group, "dead_letter_topic": topic, "dead_letters": docs})
        return
    sys.stdout.write(f"share group {group}: {len(docs)} dead letter(s) in {topic}\n")
    for doc in docs:
        rec = doc["record"]
        sys.stdout.write(
            f"\n{topic}:{doc['dlq_partition']}:{doc['dlq_offset']} from "
            f"{doc['source_topic']}-{doc['source_partition']}@{doc['source_offset']}: "
            f"{doc['reason']} after {doc['delivery_count']} deliveries\n"
        )
        sys.stdout.write(f"  error: {doc['error'] or '-'}\n")
        sys.stdout.write(f"  key: {rec.get('key', rec.get('key_b64'))}\n")
        sys.stdout.write(f"  value: {rec.get('value', rec.get('value_b64'))}\n")
        for name, value in rec["headers"]:
            sys.stdout.write(f"  header {name}: {value}\n")


@dlq_app.command("redrive")
@admin_command
def dlq_redrive(
    group: GroupArg,
    to: Annotated[
        str | None, typer.Option("--to", help="Move here (default: each record's source).")
    ] = None,
    max_records: Annotated[
        int | None, typer.Option("--max", help="At most N (default: all).")
    ] = None,
    *,
    conn: Conn,
) -> None:
    """Move dead letters back to their source topic (or --to); never duplicates."""
    if max_records is not None and max_records < 1:
        raise ArgumentError(f"--max must be >= 1, not {max_records}")
    if to is not None and not to:
        raise ArgumentError("--to must not be empty")
    with conn.admin() as a:
        a.describe_share_group(group)  # an unknown group fails before any topic check
        if to is not None:
            a.describe_topic(to)
        r = a.redrive_dead_letters(group, to_topic=to, max_records=max_records or 0)
    if conn.output is Output.json:
        write_json({"group_id": group, "redriven": r.redriven, "remaining": r.remaining})
    else:
        where = to or "their source topics"
        sys.stdout.write(
            f"redrove {r.redriven} dead letter(s) of {group} to {where}; {r.remaining} left\n"
        )
