"""The options every client command of logctl shares (bootstrap, output, connect
timeout) and the Admin it builds: one definition, used by ``main`` and by the
command groups in their own modules (``_groups``).

Credentials (token, TLS) are options of ``logctl`` itself, before the
command (``logctl --token-file F topics list``) or their ``LOGSTORE_*``
variables: the root callback stores them once (:func:`set_credentials`) and
every client a command builds takes :func:`credentials`."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Final

import typer

from logstore import errors

from ._format import ArgumentError

if TYPE_CHECKING:
    from logstore.client import Admin, Credentials

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:7070"


class Output(enum.StrEnum):
    text = "text"
    json = "json"


def _check_bootstrap(value: str) -> str:
    """A malformed address is an argument error (exit 2) found before any request."""
    from logstore.client import check_address  # noqa: PLC0415 (startup time)

    try:
        return check_address(value)
    except errors.InvalidArgumentError as exc:
        raise ArgumentError(f"--bootstrap: {exc}") from None


Bootstrap = Annotated[
    str,
    typer.Option(
        "--bootstrap",
        envvar="LOGSTORE_BOOTSTRAP",
        help="Broker HOST:PORT.",
        show_default=True,
        callback=_check_bootstrap,
    ),
]
OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", envvar="LOGSTORE_OUTPUT", help="text or json.")
]
ConnectTimeout = Annotated[
    int,
    typer.Option(
        "--connect-timeout-ms",
        envvar="LOGSTORE_CONNECT_TIMEOUT_MS",
        min=1,
        help="Give up connecting to the broker after this long.",
    ),
]


#: The root options' credential settings (None values: not given).
_CREDENTIALS: dict[str, str | bool | None] = {}


def set_credentials(**settings: str | bool | None) -> None:
    """Remember ``logctl``'s --token/--token-file/--tls* options for this run."""
    _CREDENTIALS.clear()
    _CREDENTIALS.update(settings)


def credentials() -> Credentials | None:
    """The client Credentials of this run; None when no credential option was given."""
    if not any(_CREDENTIALS.values()):
        return None
    from logstore.client import Credentials  # noqa: PLC0415 (startup time)

    try:
        return Credentials(**_CREDENTIALS)  # type: ignore[arg-type]
    except errors.InvalidArgumentError as exc:
        raise ArgumentError(str(exc)) from None


def admin(bootstrap: str, connect_timeout_ms: int) -> Admin:
    """An Admin; the client (grpc, protobuf, numpy) is imported only here, so usage
    errors, --help and --version answer in a fraction of the time."""
    from logstore.client import Admin  # noqa: PLC0415 (startup time)

    return Admin(bootstrap, connect_timeout_ms=connect_timeout_ms, credentials=credentials())
