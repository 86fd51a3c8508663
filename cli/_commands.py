"""What the admin commands of logctl (``groups``, ``queues``, ``dlq``) share:
the connection options every one of them takes (``--bootstrap``,
``--output``, ``--connect-timeout-ms``, declared once in ``_options`` and
added to each command by :func:`admin_command`), printing a result as text or
one JSON document, and one list of options for several commands
(:func:`with_options`).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._format import table, write_json
from ._options import DEFAULT_BOOTSTRAP, Bootstrap, ConnectTimeout, Output, OutputOpt, admin

if TYPE_CHECKING:
    from logstore.client import Admin

F = TypeVar("F", bound=Callable[..., Any])


def emit(output: Output, doc: Any, text: str | Callable[[], None]) -> None:
    """A command's result: ``doc`` as one JSON document with ``--output json``,
    else ``text`` (a line to print, or a function printing tables)."""
    if output is Output.json:
        write_json(doc)
    elif isinstance(text, str):
        sys.stdout.write(text)
    else:
        text()


def emit_tables(
    output: Output,
    doc: Any,
    summary: str,
    tables: Sequence[tuple[Sequence[str], Sequence[Sequence[Any]]]],
) -> None:
    """A description: ``doc`` with ``--output json``; else the ``summary``
    line(s), then each ``(headers, rows)`` table, a blank line between them; a
    table with no rows is left out unless it is the last (a describe always
    shows its partition table, even empty)."""
    if output is Output.json:
        write_json(doc)
        return
    sys.stdout.write(summary)
    shown = [t for i, t in enumerate(tables) if t[1] or i == len(tables) - 1]
    for i, (headers, rows) in enumerate(shown):
        if i:
            sys.stdout.write("\n")
        table(headers, rows)


def with_options(params: Sequence[inspect.Parameter]) -> Callable[[F], F]:
    """Add ``params`` (keyword options shared by several commands) to a command's
    signature as Typer reads it, after its first parameter; the command takes
    them as ``**kwargs``. One list of options, so commands that share them
    cannot drift apart."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)  # Typer reads the objects as they are
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        fn.__signature__ = sig.replace(parameters=[*own[:1], *params, *own[1:]])  # type: ignore[attr-defined]
        return fn

    return deco


_P = inspect.Parameter
#: The options of every admin command, after its own (``admin_command``).
_CONN_OPTIONS = [
    _P("bootstrap", _P.POSITIONAL_OR_KEYWORD, default=DEFAULT_BOOTSTRAP, annotation=Bootstrap),
    _P("output", _P.POSITIONAL_OR_KEYWORD, default=Output.text, annotation=OutputOpt),
    _P("connect_timeout_ms", _P.POSITIONAL_OR_KEYWORD, default=5000, annotation=ConnectTimeout),
]


@dataclass(frozen=True)
class Conn:
    """An admin command's connection options and output format."""

    bootstrap: str
    output: Output
    connect_timeout_ms: int

    def admin(self) -> Admin:
        return admin(self.bootstrap, self.connect_timeout_ms)

    def emit(self, doc: Any, text: str | Callable[[], None]) -> None:
        emit(self.output, doc, text)

    def emit_tables(
        self,
        doc: Any,
        summary: str,
        tables: Sequence[tuple[Sequence[str], Sequence[Sequence[Any]]]],
    ) -> None:
        emit_tables(self.output, doc, summary, tables)


def admin_command(fn: Callable[..., None]) -> Callable[..., None]:
    """A command taking ``*, conn: Conn``: Typer sees its other parameters and
    then ``--bootstrap``, ``--output`` and ``--connect-timeout-ms``, which the
    command gets as ``conn``."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "conn" and p.kind is not p.VAR_KEYWORD]

    @functools.wraps(fn)
    def command(
        *args: Any, bootstrap: str, output: Output, connect_timeout_ms: int, **kwargs: Any
    ) -> None:
        fn(*args, conn=Conn(bootstrap, output, connect_timeout_ms), **kwargs)

    command.__signature__ = sig.replace(parameters=[*own, *_CONN_OPTIONS])  # type: ignore[attr-defined]
    return command
