"""How a client proves who it is: a bearer token and/or TLS (mutual TLS).

:class:`Credentials` is given to ``Producer``, ``Consumer``, ``Admin``,
``GroupConsumer`` and ``ShareConsumer`` (``credentials=``) and used by the
one place channels are made (``_rpc.Connection``):

- ``tls_ca`` / ``tls`` : the channel is TLS, the broker's certificate
  checked against ``tls_ca`` (a PEM file; empty = the system roots);
  ``tls_server_name`` overrides the name checked (default: the host of the
  address);
- ``tls_cert`` + ``tls_key``: the client's certificate, for a broker with
  ``--auth mtls`` (its common name is the principal) or any ``--tls-client-ca``;
- ``token`` (or ``token_file``, read once): sent on every call as the
  metadata ``authorization: Bearer <token>``. It works over TLS and, for a
  loopback broker, over plaintext; the token is never part of an error
  message or a ``repr``.

:meth:`Credentials.from_env` reads ``LOGSTORE_TOKEN``,
``LOGSTORE_TOKEN_FILE``, ``LOGSTORE_TLS_CA``, ``LOGSTORE_TLS_CERT``,
``LOGSTORE_TLS_KEY``, ``LOGSTORE_TLS_SERVER_NAME`` (as logctl does).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from logstore import errors

#: Token files and PEM files are small.
_MAX_FILE_BYTES: Final = 1024 * 1024


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise errors.InvalidArgumentError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise errors.InvalidArgumentError(f"{what} {path} is larger than {_MAX_FILE_BYTES} bytes")
    return data


@dataclass(frozen=True)
class Credentials:
    """A client's token and TLS settings (see the module docstring)."""

    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise errors.InvalidArgumentError("tls_cert and tls_key go together")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert or self.tls_server_name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials | None:
        """Credentials from ``LOGSTORE_*`` variables; None when none is set."""
        e = os.environ if env is None else env
        values: dict[str, Any] = {
            "token": e.get("LOGSTORE_TOKEN") or None,
            "token_file": e.get("LOGSTORE_TOKEN_FILE") or None,
            "tls_ca": e.get("LOGSTORE_TLS_CA") or None,
            "tls_cert": e.get("LOGSTORE_TLS_CERT") or None,
            "tls_key": e.get("LOGSTORE_TLS_KEY") or None,
            "tls_server_name": e.get("LOGSTORE_TLS_SERVER_NAME") or None,
        }
        if not any(values.values()):
            return None
        return cls(**values)

    def bearer(self) -> str | None:
        """The token (from ``token`` or ``token_file``), None if there is none."""
        if self.token:
            return self.token.strip()
        if self.token_file:
            token = _read(self.token_file, "token file").decode(errors="replace").strip()
            if not token:
                raise errors.InvalidArgumentError(f"token file {self.token_file} is empty")
            return token
        return None

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to ``address`` with these credentials (TLS and/or the token)."""
        opts = list(options)
        if self.uses_tls:
            root = _read(self.tls_ca, "TLS CA") if self.tls_ca else None
            key = _read(self.tls_key, "TLS key") if self.tls_key else None
            cert = _read(self.tls_cert, "TLS certificate") if self.tls_cert else None
            creds = grpc.ssl_channel_credentials(root, key, cert)
            if self.tls_server_name:
                opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
            channel = grpc.secure_channel(address, creds, options=opts)
        else:
            channel = grpc.insecure_channel(address, options=opts)
        token = self.bearer()
        if token is None:
            return channel
        return grpc.intercept_channel(channel, _BearerInterceptor(token))


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[Any]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerInterceptor(<token hidden>)"

    def _details(self, details: Any) -> _Details:
        return _Details(details, [*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, cont: Callable[..., Any], details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_unary_stream(self, cont: Callable[..., Any], details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_stream_unary(
        self, cont: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return cont(self._details(details), requests)

    def intercept_stream_stream(
        self, cont: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return cont(self._details(details), requests)
