"""logctl: serve, topics, produce, consume, offsets, groups, queues, dlq.

Exit codes: 0 ok; 2 for argument errors found before any request is sent
(usage errors included); 1 for everything else, including what the broker
rejects. Every failure is one line on stderr (``logctl: error: ...``): Typer
runs with ``standalone_mode=False``, its exceptions are handled in
:func:`main`, and neither Rich panels nor tracebacks are shown.

Environment: only what a user sets once per shell or machine, never what
changes what a command does (a stray ``LOGSTORE_OFFSET`` or ``LOGSTORE_MAX``
must not silently change a replay). The flag wins over the variable.

- ``LOGSTORE_BOOTSTRAP``: the broker's HOST:PORT (every client command);
- ``LOGSTORE_OUTPUT``: ``text`` or ``json`` (every client command);
- ``LOGSTORE_CONNECT_TIMEOUT_MS``: how long to wait for the broker (a
  property of the network, like the address);
- ``LOGSTORE_TOKEN`` / ``LOGSTORE_TOKEN_FILE``: the bearer token (or a file
  holding it) sent to a broker with ``--auth token``; ``LOGSTORE_TLS_CA``,
  ``LOGSTORE_TLS_CERT``, ``LOGSTORE_TLS_KEY``, ``LOGSTORE_TLS_SERVER_NAME``:
  TLS to the broker (mutual with cert + key). They are options of
  ``logctl`` itself, before the command (``logctl --token-file F topics
  list``); the token is never printed.

``serve`` passes what was given to the broker, which resolves its own
environment and ``--config-file`` (flag > environment > file > default).
"""

from __future__ import annotations

import enum
import os
import signal
import stat
import sys
from types import FrameType
from typing import Annotated, Any

import typer

import logstore
from logstore import errors

from ._format import (
    ArgumentError,
    ReaderGone,
    Terminated,
    format_ms,
    human_bytes,
    parse_duration,
    parse_time,
    table,
    write_json,
)
from ._groups import groups_app
from ._options import (
    DEFAULT_BOOTSTRAP,
    Bootstrap,
    ConnectTimeout,
    Output,
    OutputOpt,
    set_credentials,
)
from ._options import admin as _admin
from ._queues import dlq_app, queues_app
from ._security import acls_app, quotas_app, users_app

# The client (grpc, protobuf, numpy) is imported inside the commands that use
# it: usage errors, --help and --version then answer in a fraction of the time.

app = typer.Typer(
    name="logctl",
    help="Operate and use a logstore broker.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
topics_app = typer.Typer(
    help="Create, list, describe, alter and delete topics.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(topics_app, name="topics")
app.add_typer(groups_app, name="groups")
app.add_typer(queues_app, name="queues")
app.add_typer(dlq_app, name="dlq")
app.add_typer(users_app, name="users")
app.add_typer(acls_app, name="acls")
app.add_typer(quotas_app, name="quotas")


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        help="key=value (repeatable), e.g. retention_ms=86400000.",
    ),
]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"logctl {logstore.__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="LOGSTORE_TOKEN",
            show_envvar=True,
            help="Bearer token (prefer --token-file or the variable: a flag shows in ps).",
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option("--token-file", envvar="LOGSTORE_TOKEN_FILE", help="File holding the token."),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="TLS to the broker, checked against system CAs.")
    ] = False,
    tls_ca: Annotated[
        str | None,
        typer.Option("--tls-ca", envvar="LOGSTORE_TLS_CA", help="PEM CA of the broker's cert."),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option("--tls-cert", envvar="LOGSTORE_TLS_CERT", help="Client cert (mutual TLS)."),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option("--tls-key", envvar="LOGSTORE_TLS_KEY", help="Key of --tls-cert."),
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(
            "--tls-server-name",
            envvar="LOGSTORE_TLS_SERVER_NAME",
            help="Name the broker's certificate must carry (default: the --bootstrap host).",
        ),
    ] = None,
) -> None:
    """logctl: operate and use a logstore broker."""
    set_credentials(
        token=token,
        token_file=token_file,
        tls=tls,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_server_name=tls_server_name,
    )


def _parse_config(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArgumentError(f"--config wants key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# -- serve ---------------------------------------------------------------------


@app.command()
def serve(
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Data directory.")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="gRPC HOST:PORT.")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option("--metrics-listen", help="Prometheus HOST:PORT.")
    ] = None,
    config_file: Annotated[
        str | None, typer.Option("--config-file", help="TOML file of broker settings.")
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option("--log-format", help="text or json.")
    ] = None,
    allow_remote: Annotated[
        bool | None,
        typer.Option(
            "--allow-remote", help="Listen on a non-loopback address (needs TLS and --auth)."
        ),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option("--insecure", help="With --allow-remote: without TLS/auth anyway (WARN)."),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", help="PEM certificate chain (gRPC and metrics).")
    ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="PEM key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        str | None, typer.Option("--tls-client-ca", help="PEM CA of client certs (mutual TLS).")
    ] = None,
    auth: Annotated[
        str | None, typer.Option("--auth", help="none (loopback only) | token | mtls.")
    ] = None,
    super_users: Annotated[
        str | None, typer.Option("--super-users", help="NAME,... that pass every ACL.")
    ] = None,
) -> None:
    """Run the broker (flags > LOGSTORE_* environment > --config-file > defaults)."""
    # The one allowed import of the broker (DESIGN.md, layers).
    from logstore.broker import serve_main  # noqa: PLC0415

    code = serve_main(
        data_dir=data_dir,
        listen=listen,
        metrics_listen=metrics_listen,
        config_file=config_file,
        log_format=log_format.value if log_format is not None else None,
        allow_remote=allow_remote,
        insecure=insecure,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        auth=auth,
        super_users=super_users,
    )
    raise typer.Exit(code)


# -- topics --------------------------------------------------------------------


def _topic_json(info: Any) -> dict[str, Any]:
    return {"name": info.name, "partitions": info.partitions, "config": info.config}


@topics_app.command("create")
def topics_create(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1)] = 1,
    config: ConfigOpt = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Create a topic."""
    cfg = _parse_config(config)
    with _admin(bootstrap, connect_timeout_ms) as admin:
        info = admin.create_topic(name, partitions, cfg)
    if output is Output.json:
        write_json(_topic_json(info))
    else:
        sys.stdout.write(f"created topic {info.name} with {info.partitions} partition(s)\n")


@topics_app.command("list")
def topics_list(
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """List topics."""
    with _admin(bootstrap, connect_timeout_ms) as admin:
        infos = admin.list_topics()
    if output is Output.json:
        write_json([_topic_json(i) for i in infos])
    else:
        table(["TOPIC", "PARTITIONS"], [(i.name, i.partitions) for i in infos])


@topics_app.command("describe")
def topics_describe(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Show a topic's configuration and partitions."""
    with _admin(bootstrap, connect_timeout_ms) as admin:
        d = admin.describe_topic(name)
    parts = [
        {
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "log_end_offset": p.log_end_offset,
            "size_bytes": p.size_bytes,
            "segment_count": p.segment_count,
        }
        for p in d.partitions
    ]
    if output is Output.json:
        write_json({**_topic_json(d.topic), "partition_info": parts})
        return
    sys.stdout.write(f"topic {d.topic.name}: {d.topic.partitions} partition(s)\n")
    table(["CONFIG", "VALUE"], sorted(d.topic.config.items()))
    sys.stdout.write("\n")
    table(
        ["PARTITION", "START", "END", "RECORDS", "SIZE", "SEGMENTS"],
        [
            (
                p.partition,
                p.log_start_offset,
                p.log_end_offset,
                p.log_end_offset - p.log_start_offset,
                human_bytes(p.size_bytes),
                p.segment_count,
            )
            for p in d.partitions
        ],
    )


@topics_app.command("alter")
def topics_alter(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    config: ConfigOpt = None,
    reset: Annotated[
        list[str] | None,
        typer.Option("--reset", help="Key back to its default."),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option("--partitions", "-p", min=1),
    ] = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Change a topic's configuration and/or increase its partitions."""
    cfg = _parse_config(config)
    if not cfg and not reset and partitions is None:
        raise ArgumentError("nothing to alter: give --config key=value, --reset or --partitions")
    with _admin(bootstrap, connect_timeout_ms) as admin:
        info = None
        if cfg or reset:
            info = admin.alter_topic_config(name, cfg, reset or [])
        if partitions is not None:
            current = (info or admin.describe_topic(name).topic).partitions
            if partitions != current:  # the broker rejects a decrease
                info = admin.create_partitions(name, partitions)
        if info is None:
            info = admin.describe_topic(name).topic
    if output is Output.json:
        write_json(_topic_json(info))
    else:
        sys.stdout.write(f"altered topic {info.name}: {info.partitions} partition(s)\n")


@topics_app.command("delete")
def topics_delete(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Delete a topic and all its records."""
    with _admin(bootstrap, connect_timeout_ms) as admin:
        admin.delete_topic(name)
    if output is Output.json:
        write_json({"deleted": name})
    else:
        sys.stdout.write(f"deleted topic {name}\n")


# -- produce / consume / offsets -------------------------------------------------


def _check_input_file(path: str) -> None:
    """--file names a readable regular file; else ArgumentError saying what it is."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ArgumentError(f"--file {path!r}: no such file") from None
    except OSError as exc:
        raise ArgumentError(f"--file {path!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ArgumentError(f"--file {path!r} is a directory, not a file of lines")
    if not stat.S_ISREG(st.st_mode):
        raise ArgumentError(f"--file {path!r} is not a regular file (use stdin for a pipe)")
    if not os.access(path, os.R_OK):
        raise ArgumentError(f"--file {path!r}: permission denied")


@app.command()
def produce(
    topic: Annotated[str, typer.Argument(help="Topic to append to.")],
    partition: Annotated[
        int | None,
        typer.Option(
            "--partition",
            min=0,
            help="Append to this partition (default: by key, else sticky).",
        ),
    ] = None,
    key_separator: Annotated[
        str | None,
        typer.Option(
            "--key-separator",
            help="Split each line into key and value at the first SEP.",
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="Read lines from PATH."),
    ] = None,
    acks: Annotated[str, typer.Option("--acks", help="0, 1 or all.")] = "all",
    compression: Annotated[
        str,
        typer.Option("--compression", help="Compress each batch: none, gzip, lz4 or zstd."),
    ] = "none",
    compression_level: Annotated[
        int | None,
        typer.Option(
            "--compression-level",
            help="The codec's level (zstd -7..22, default 1; gzip 1..9, 6; lz4 0..16, 0).",
        ),
    ] = None,
    compression_threads: Annotated[
        int | None,
        typer.Option(
            "--compression-threads",
            help="Batches compressed at once, each on its own thread (1..16, default 2; "
            "needs --compression).",
        ),
    ] = None,
    delay: Annotated[
        str | None,
        typer.Option(
            "--delay",
            help="Hold each record from share consumers this long after it is sent "
            "(500ms, 30s, 10m, 2h, 1d).",
        ),
    ] = None,
    deliver_at: Annotated[
        str | None,
        typer.Option(
            "--deliver-at",
            help="Hold the records from share consumers until this time (ISO 8601, UTC "
            "when no zone, or epoch ms).",
        ),
    ] = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Append one record per input line (stdin or --file); summary on stderr."""
    from logstore.client import (  # noqa: PLC0415 (startup time)
        MAX_COMPRESSION_THREADS,
        parse_acks,
        resolve_deliver_at,
    )
    from logstore.wire import CODEC_NONE, check_level, codec_of, require_codec  # noqa: PLC0415

    from . import _produce  # noqa: PLC0415 (startup time)

    try:
        parse_acks(acks)
    except errors.InvalidArgumentError as exc:
        raise ArgumentError(str(exc)) from None
    try:
        check_level(codec_of(compression), compression_level)
        require_codec(codec_of(compression))
    except (errors.InvalidArgumentError, ImportError) as exc:
        raise ArgumentError(f"--compression {compression}: {exc}") from None
    if compression_threads is not None:
        if codec_of(compression) == CODEC_NONE:
            raise ArgumentError("--compression-threads needs --compression gzip, lz4 or zstd")
        if not 1 <= compression_threads <= MAX_COMPRESSION_THREADS:
            raise ArgumentError(
                f"--compression-threads must be 1..{MAX_COMPRESSION_THREADS}, "
                f"not {compression_threads}"
            )
    if key_separator == "":
        raise ArgumentError("--key-separator must not be empty")
    if delay is not None and deliver_at is not None:
        raise ArgumentError("--delay and --deliver-at cannot be combined: give one")
    delay_ms = parse_duration(delay, "--delay") if delay is not None else None
    deliver_at_ms = parse_time(deliver_at) if deliver_at is not None else None
    if delay_ms is not None or deliver_at_ms is not None:
        try:
            resolve_deliver_at(delay_ms, deliver_at_ms)
        except errors.InvalidArgumentError as exc:
            option = "--delay" if delay is not None else "--deliver-at"
            raise ArgumentError(f"{option} {delay or deliver_at}: {exc}") from None
    if file is not None:
        _check_input_file(file)
    _produce.run(
        topic,
        partition=partition,
        key_separator=key_separator,
        path=file,
        acks=acks,
        bootstrap=bootstrap,
        json_output=output is Output.json,
        connect_timeout_ms=connect_timeout_ms,
        compression=compression,
        compression_level=compression_level,
        compression_threads=compression_threads,
        delay_ms=delay_ms,
        deliver_at_ms=deliver_at_ms,
    )


@app.command()
def consume(
    topic: Annotated[str, typer.Argument(help="Topic to read.")],
    partition: Annotated[
        int | None,
        typer.Option("--partition", min=0, help="Read only this partition."),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help="Start at each partition's first record (the default).",
        ),
    ] = False,
    offset: Annotated[
        int | None,
        typer.Option("--offset", min=0, help="Start here (needs --partition)."),
    ] = None,
    from_time: Annotated[
        str | None,
        typer.Option(
            "--from-time",
            help="ISO 8601 (UTC if no zone) or -90s, -15m, -1h, -2d.",
        ),
    ] = None,
    latest: Annotated[
        bool,
        typer.Option("--latest", help="Start at the end (new only)."),
    ] = False,
    max_records: Annotated[
        int | None,
        typer.Option("--max", min=0, help="Stop after N records."),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep waiting for more.")] = False,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Read as a member of this consumer group; commit."),
    ] = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Replay records from the beginning, an offset, a time or the end."""
    starts = [
        name
        for name, given in (
            ("--from-beginning", from_beginning),
            ("--offset", offset is not None),
            ("--from-time", from_time is not None),
            ("--latest", latest),
        )
        if given
    ]
    if len(starts) > 1:
        raise ArgumentError(f"choose one start position, not {' and '.join(starts)}")
    if offset is not None and partition is None:
        raise ArgumentError("--offset needs --partition")
    if group is not None and (partition is not None or offset is not None or from_time):
        raise ArgumentError(
            "--group reads the group's partitions from its committed offsets; "
            "it cannot be combined with --partition, --offset or --from-time"
        )
    at_time = parse_time(from_time) if from_time is not None else None
    from . import _consume  # noqa: PLC0415 (startup time)

    if group is not None:
        _consume.run_group(
            topic,
            group,
            latest=latest,
            max_records=max_records,
            follow=follow,
            bootstrap=bootstrap,
            json_output=output is Output.json,
            connect_timeout_ms=connect_timeout_ms,
        )
        return

    start = _consume.Start("earliest")
    if offset is not None:
        start = _consume.Start("offset", offset)
    elif at_time is not None:
        start = _consume.Start("time", at_time)
    elif latest:
        start = _consume.Start("latest")
    _consume.run(
        topic,
        partition=partition,
        start=start,
        max_records=max_records,
        follow=follow,
        bootstrap=bootstrap,
        json_output=output is Output.json,
        connect_timeout_ms=connect_timeout_ms,
    )


@app.command()
def offsets(
    topic: Annotated[str, typer.Argument(help="Topic.")],
    at_time: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="Offset of the first record at or after this time (ISO 8601 or -1h...).",
        ),
    ] = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Earliest and latest offsets per partition (or the offset at --time)."""
    ts = parse_time(at_time) if at_time is not None else None
    with _admin(bootstrap, connect_timeout_ms) as admin:
        earliest = admin.list_offsets(topic, "earliest")
        latest = admin.list_offsets(topic, "latest")
        by_time = admin.list_offsets(topic, ts) if ts is not None else None
    rows: list[dict[str, Any]] = []
    for i, (e, la) in enumerate(zip(earliest, latest, strict=True)):
        row: dict[str, Any] = {"partition": e.partition, "earliest": e.offset, "latest": la.offset}
        if by_time is not None:
            t = by_time[i]
            row["offset"] = t.offset
            row["found"] = t.found
            row["timestamp_ms"] = t.timestamp_ms if t.found else None
        rows.append(row)
    if output is Output.json:
        write_json({"topic": topic, "partitions": rows})
        return
    if by_time is None:
        table(["PARTITION", "EARLIEST", "LATEST"], [tuple(r.values()) for r in rows])
    else:
        table(
            ["PARTITION", "EARLIEST", "LATEST", "OFFSET", "TIMESTAMP"],
            [
                (
                    r["partition"],
                    r["earliest"],
                    r["latest"],
                    r["offset"],
                    format_ms(r["timestamp_ms"]) if r["found"] else "(end: none at/after)",
                )
                for r in rows
            ],
        )


# -- the one error handler -------------------------------------------------------


def _error(message: str, code: int) -> int:
    line = " ".join(str(message).split()) or "failed"
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    sys.stderr.write(f"logctl: error: {line}\n")
    sys.stderr.flush()
    return code


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run(argv: list[str] | None = None) -> int:
    """Run logctl with ``argv``; the exit code (no SystemExit)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8", errors="strict")
    try:
        rv = app(args=argv, prog_name="logctl", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except ArgumentError as exc:
        return _error(str(exc), 2)
    except typer.TyperException as exc:  # click usage errors and the like
        return _error(exc.format_message(), getattr(exc, "exit_code", 2))
    except typer.Abort:
        return _error("aborted", 1)
    except errors.LogStoreError as exc:
        return _error(str(exc), 1)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM outside consume --follow
        try:
            sys.stdout.flush()  # what was printed before the signal is kept
        except (BrokenPipeError, ValueError):
            pass
        return 130
    except (BrokenPipeError, ReaderGone):
        # the reader went away (logctl consume | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        return _error(f"unexpected {type(exc).__name__}: {exc}", 1)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return code


def main() -> None:
    """Entry point of the ``logctl`` command."""
    sys.exit(run())


if __name__ == "__main__":
    main()
