"""``logctl users`` and ``logctl acls``: the broker's users (tokens) and ACLs.

Through a running broker (``--bootstrap``, as a principal allowed to alter
the cluster: a super user) or, with ``--data-dir DIR``, directly on a
stopped broker's data directory -- how the first user is made. ``--data-dir``
takes the directory's lock, so it refuses a directory a broker is running
on (exit 1, one line).

``users create NAME`` prints the token on stdout and nothing else (so
``logctl users create ci > ci.token`` works); it is shown only this once, and
logctl never prints it anywhere else. ACLs are Kafka's: ``acls add
--principal P (--topic T | --group G | --cluster) [--prefix] --operation OP
[--operation OP...] [--deny]``; ``acls remove`` takes the same selectors and
removes every ACL they match (``--all`` for every ACL: at least one selector
or ``--all`` is required, so a bare ``acls remove`` cannot wipe them).

Quotas are Kafka's ``kafka-configs --entity-type users`` overrides: ``quotas
set --principal P [--produce-bytes-per-s N] [--fetch-bytes-per-s N]`` sets
the given rates (bytes per second, 0 = unlimited for P; the other rate
stays), ``quotas remove --principal P`` drops P's overrides (back to the
broker's ``quota_produce_bytes_per_s`` / ``quota_fetch_bytes_per_s``),
``quotas list [--principal P]`` shows them (through a broker, with its
defaults). Through a broker they apply from P's next request; with
``--data-dir`` from the broker's next start.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._format import ArgumentError, table, write_json
from ._options import DEFAULT_BOOTSTRAP, Bootstrap, ConnectTimeout, Output, OutputOpt, admin

if TYPE_CHECKING:
    from logstore.client import AclBinding

users_app = typer.Typer(
    help="Create, list and delete users (bearer tokens).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
acls_app = typer.Typer(
    help="Add, list and remove ACLs (principal x resource x operation x allow/deny).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

quotas_app = typer.Typer(
    help="Set, list and remove per-principal byte-rate quotas (overrides of the broker default).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        help="Work on a STOPPED broker's data directory instead of through --bootstrap.",
    ),
]
OPERATIONS = ("read", "write", "create", "delete", "alter", "describe")


# -- users ---------------------------------------------------------------------


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User (principal) name.")],
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Create a user; print its token (only now: keep it)."""
    if data_dir is not None:
        from logstore.security import DataDirLock, UserStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            token = UserStore.open(data_dir).create(name)
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            token = a.create_user(name)
    if output is Output.json:
        write_json({"user": name, "token": token})
    else:
        sys.stdout.write(token + "\n")
        sys.stderr.write(f"created user {name}; its token is shown only this once\n")


@users_app.command("list")
def users_list(
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """List users (names only: tokens are never stored)."""
    if data_dir is not None:
        from logstore.security import DataDirLock, UserStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            users = [(u.name, u.created_ms) for u in UserStore.open(data_dir).list()]
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            users = [(u.name, u.created_ms) for u in a.list_users()]
    if output is Output.json:
        write_json([{"user": n, "created_ms": c} for n, c in users])
    else:
        table(
            ["USER", "CREATED"],
            [(n, dt.datetime.fromtimestamp(c / 1000, dt.UTC).isoformat()) for n, c in users],
        )


@users_app.command("delete")
def users_delete(
    name: Annotated[str, typer.Argument(help="User name.")],
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Delete a user; its token stops working at once."""
    if data_dir is not None:
        from logstore.security import DataDirLock, UserStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            UserStore.open(data_dir).delete(name)
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            a.delete_user(name)
    if output is Output.json:
        write_json({"deleted": name})
    else:
        sys.stdout.write(f"deleted user {name}\n")


# -- acls ----------------------------------------------------------------------

Principal = Annotated[
    str | None, typer.Option("--principal", help="User or certificate name, or '*'.")
]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="Topic name (or prefix).")]
GroupOpt = Annotated[str | None, typer.Option("--group", help="Group id (or prefix).")]
ClusterOpt = Annotated[bool, typer.Option("--cluster", help="The cluster resource.")]
PrefixOpt = Annotated[bool, typer.Option("--prefix", help="NAME is a prefix.")]
OperationOpt = Annotated[
    list[str] | None,
    typer.Option("--operation", help=f"One of {', '.join(OPERATIONS)} (repeatable)."),
]
DenyOpt = Annotated[bool, typer.Option("--deny", help="A deny ACL (beats every allow).")]


def _resource(topic: str | None, group: str | None, cluster: bool) -> tuple[str, str] | None:
    given = [(t, n) for t, n in (("topic", topic), ("group", group)) if n is not None]
    if cluster:
        given.append(("cluster", "cluster"))
    if len(given) > 1:
        raise ArgumentError("give at most one of --topic, --group, --cluster")
    return given[0] if given else None


def _operations(ops: list[str] | None) -> list[str]:
    out = []
    for given in ops or []:
        op = given.strip().lower()
        if op not in OPERATIONS:
            raise ArgumentError(f"--operation {given!r}: one of {', '.join(OPERATIONS)}")
        out.append(op)
    return out


def _acl_json(a: Any) -> dict[str, str]:
    return {
        "principal": a.principal,
        "resource_type": a.resource_type,
        "pattern_type": a.pattern_type,
        "name": a.name,
        "operation": a.operation,
        "permission": a.permission,
    }


def _print_acls(acls: list[Any], output: Output) -> None:
    if output is Output.json:
        write_json([_acl_json(a) for a in acls])
    else:
        table(
            ["PRINCIPAL", "RESOURCE", "PATTERN", "NAME", "OPERATION", "PERMISSION"],
            [
                (a.principal, a.resource_type, a.pattern_type, a.name, a.operation, a.permission)
                for a in acls
            ],
        )


@acls_app.command("add")
def acls_add(
    principal: Principal = None,
    topic: TopicOpt = None,
    group: GroupOpt = None,
    cluster: ClusterOpt = False,
    prefix: PrefixOpt = False,
    operation: OperationOpt = None,
    deny: DenyOpt = False,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Add ACLs: one per --operation."""
    if not principal:
        raise ArgumentError("acls add needs --principal (a user, a certificate name, or '*')")
    resource = _resource(topic, group, cluster)
    if resource is None:
        raise ArgumentError("acls add needs one of --topic, --group, --cluster")
    ops = _operations(operation)
    if not ops:
        raise ArgumentError(f"acls add needs --operation ({', '.join(OPERATIONS)})")
    fields = {
        "principal": principal,
        "resource_type": resource[0],
        "pattern_type": "prefix" if prefix else "literal",
        "name": resource[1],
        "permission": "deny" if deny else "allow",
    }
    if data_dir is not None:
        from logstore.security import Acl, AclStore, DataDirLock  # noqa: PLC0415

        with DataDirLock(data_dir):
            added = AclStore.open(data_dir).add([Acl(operation=op, **fields) for op in ops])
    else:
        from logstore.client import AclBinding  # noqa: PLC0415

        with admin(bootstrap, connect_timeout_ms) as a:
            added = a.create_acls([AclBinding(operation=op, **fields) for op in ops])
    if output is Output.json:
        write_json({"added": added})
    else:
        sys.stdout.write(f"added {added} ACL(s)\n")


def _filter(
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    prefix: bool,
    operation: list[str] | None,
    deny: bool | None,
) -> dict[str, str | None]:
    resource = _resource(topic, group, cluster)
    ops = _operations(operation)
    if len(ops) > 1:
        raise ArgumentError("give at most one --operation here")
    return {
        "principal": principal,
        "resource_type": resource[0] if resource else None,
        "name": resource[1] if resource else None,
        "pattern_type": ("prefix" if prefix else "literal") if resource else None,
        "operation": ops[0] if ops else None,
        "permission": None if deny is None else ("deny" if deny else "allow"),
    }


@acls_app.command("list")
def acls_list(
    principal: Principal = None,
    topic: TopicOpt = None,
    group: GroupOpt = None,
    cluster: ClusterOpt = False,
    prefix: PrefixOpt = False,
    operation: OperationOpt = None,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """List ACLs (the selectors narrow the list)."""
    flt = _filter(principal, topic, group, cluster, prefix, operation, None)
    acls: list[Any]
    if data_dir is not None:
        from logstore.security import AclFilter, AclStore, DataDirLock  # noqa: PLC0415

        with DataDirLock(data_dir):
            acls = AclStore.open(data_dir).list(AclFilter(**flt))
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            acls = a.list_acls(**flt)
    _print_acls(acls, output)


@acls_app.command("remove")
def acls_remove(
    principal: Principal = None,
    topic: TopicOpt = None,
    group: GroupOpt = None,
    cluster: ClusterOpt = False,
    prefix: PrefixOpt = False,
    operation: OperationOpt = None,
    deny: Annotated[
        bool | None, typer.Option("--deny/--allow", help="Only deny (or allow) ACLs.")
    ] = None,
    remove_all: Annotated[bool, typer.Option("--all", help="Remove every ACL.")] = False,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Remove every ACL the selectors match."""
    flt = _filter(principal, topic, group, cluster, prefix, operation, deny)
    if not any(flt.values()) and not remove_all:
        raise ArgumentError("acls remove needs a selector (--principal, --topic, ...) or --all")
    gone: list[Any] | list[AclBinding]
    if data_dir is not None:
        from logstore.security import AclFilter, AclStore, DataDirLock  # noqa: PLC0415

        with DataDirLock(data_dir):
            gone = AclStore.open(data_dir).remove(AclFilter(**flt))
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            gone = a.delete_acls(**flt)
    if output is Output.json:
        write_json([_acl_json(a) for a in gone])
    else:
        sys.stdout.write(f"removed {len(gone)} ACL(s)\n")


# -- quotas --------------------------------------------------------------------

QuotaPrincipal = Annotated[
    str | None, typer.Option("--principal", help="User or certificate name.")
]
ProduceRate = Annotated[
    int | None,
    typer.Option("--produce-bytes-per-s", help="Produce rate, bytes/s (0 = unlimited)."),
]
FetchRate = Annotated[
    int | None,
    typer.Option("--fetch-bytes-per-s", help="Fetch rate, bytes/s (0 = unlimited)."),
]


def _rate_text(rate: int | None) -> str:
    if rate is None:
        return "default"
    return "unlimited" if rate == 0 else str(rate)


def _print_quotas(quotas: list[Any], output: Output, defaults: tuple[int, int] | None) -> None:
    rows = [(q.principal, q.produce_bytes_per_s, q.fetch_bytes_per_s) for q in quotas]
    if output is Output.json:
        body: dict[str, Any] = {
            "quotas": [
                {"principal": p, "produce_bytes_per_s": pr, "fetch_bytes_per_s": fe}
                for p, pr, fe in rows
            ]
        }
        if defaults is not None:
            body["default_produce_bytes_per_s"], body["default_fetch_bytes_per_s"] = defaults
        write_json(body)
        return
    if defaults is not None:
        rows.insert(0, ("(default)", defaults[0], defaults[1]))
    table(
        ["PRINCIPAL", "PRODUCE_BYTES_PER_S", "FETCH_BYTES_PER_S"],
        [(p, _rate_text(pr), _rate_text(fe)) for p, pr, fe in rows],
    )


def _need_principal(principal: str | None, command: str) -> str:
    if not principal:
        raise ArgumentError(f"quotas {command} needs --principal (a user or certificate name)")
    from logstore import errors  # noqa: PLC0415
    from logstore.security import check_principal_name  # noqa: PLC0415

    try:
        return check_principal_name(principal, "--principal")
    except errors.InvalidArgumentError as exc:
        raise ArgumentError(str(exc)) from None


@quotas_app.command("set")
def quotas_set(
    principal: QuotaPrincipal = None,
    produce_bytes_per_s: ProduceRate = None,
    fetch_bytes_per_s: FetchRate = None,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Override a principal's produce and/or fetch rate."""
    name = _need_principal(principal, "set")
    if produce_bytes_per_s is None and fetch_bytes_per_s is None:
        raise ArgumentError("quotas set needs --produce-bytes-per-s and/or --fetch-bytes-per-s")
    from logstore import errors  # noqa: PLC0415
    from logstore.security._quota import check_rate  # noqa: PLC0415

    for flag, value in (("--produce-bytes-per-s", produce_bytes_per_s),
                        ("--fetch-bytes-per-s", fetch_bytes_per_s)):  # fmt: skip
        if value is not None:
            try:
                check_rate(value, flag)
            except errors.InvalidArgumentError as exc:
                raise ArgumentError(str(exc)) from None
    if data_dir is not None:
        from logstore.security import DataDirLock, QuotaStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            quota: Any = QuotaStore.open(data_dir).set(name, produce_bytes_per_s, fetch_bytes_per_s)
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            quota = a.set_quotas(
                name, produce_bytes_per_s=produce_bytes_per_s, fetch_bytes_per_s=fetch_bytes_per_s
            )
    if output is Output.json:
        _print_quotas([quota], output, None)
    else:
        sys.stdout.write(
            f"quotas of {name}: produce {_rate_text(quota.produce_bytes_per_s)}, "
            f"fetch {_rate_text(quota.fetch_bytes_per_s)} (bytes/s)\n"
        )


@quotas_app.command("list")
def quotas_list(
    principal: QuotaPrincipal = None,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """List quota overrides (through a broker: with its defaults first)."""
    name = _need_principal(principal, "list") if principal is not None else None
    if data_dir is not None:
        from logstore.security import DataDirLock, QuotaStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            _print_quotas(QuotaStore.open(data_dir).list(name), output, None)
        return
    with admin(bootstrap, connect_timeout_ms) as a:
        got = a.describe_quotas(name)
    defaults = (got.default_produce_bytes_per_s, got.default_fetch_bytes_per_s)
    _print_quotas(got.overrides, output, defaults)


@quotas_app.command("remove")
def quotas_remove(
    principal: QuotaPrincipal = None,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    output: OutputOpt = Output.text,
    connect_timeout_ms: ConnectTimeout = 5000,
) -> None:
    """Remove a principal's overrides (back to the broker defaults)."""
    name = _need_principal(principal, "remove")
    if data_dir is not None:
        from logstore.security import DataDirLock, QuotaStore  # noqa: PLC0415

        with DataDirLock(data_dir):
            removed = QuotaStore.open(data_dir).remove(name)
    else:
        with admin(bootstrap, connect_timeout_ms) as a:
            removed = a.remove_quotas(name)
    if output is Output.json:
        write_json({"principal": name, "removed": removed})
    else:
        what = "removed the quotas of" if removed else "no quotas to remove for"
        sys.stdout.write(f"{what} {name}\n")
