"""Secured brokers for the security tests: PKI, a super user's token, raw calls.

``start_secure(tmp, pki, ...)`` makes the data directory, creates the super
user ``admin`` in it offline (``UserStore``, as ``logctl users create
--data-dir`` does), and starts a real broker process with TLS and
``--auth token`` (or the given mode). :func:`raw_call` sends one request to
any method of any service and returns (status code, details).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from logstore.client import Credentials
from logstore.security import UserStore
from tests.brokerproc import BrokerProcess, start_broker
from tests.tlshelp import Pki


@dataclass
class Secure:
    broker: BrokerProcess
    admin_token: str
    pki: Pki

    @property
    def address(self) -> str:
        return self.broker.grpc_address

    def creds(self, token: str | None = None, **kw: Any) -> Credentials:
        return Credentials(token=token, tls_ca=str(self.pki.ca), **kw)

    def admin_creds(self) -> Credentials:
        return self.creds(self.admin_token)

    def channel(self, token: str | None = None) -> grpc.Channel:
        return self.creds(token).channel(self.address, [])


def start_secure(
    data_dir: Path, pki: Pki, *extra: str, auth: str = "token", env: dict[str, str] | None = None
) -> Secure:
    data_dir.mkdir(parents=True, exist_ok=True)
    token = UserStore.open(str(data_dir)).create("admin")
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    args += ["--auth", auth, "--super-users", "admin", *extra]
    return Secure(start_broker(data_dir, *args, env=env), token, pki)


def raw_call(
    ch: grpc.Channel,
    service: str,
    name: str,
    raw: bytes,
    *,
    client_streaming: bool = False,
    server_streaming: bool = False,
    timeout: float = 10.0,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """One call of ``/service/name`` with request bytes ``raw``: its status and details."""
    path = f"/{service}/{name}"
    try:
        if client_streaming:
            list(ch.stream_stream(path)(iter([raw]), timeout=timeout, metadata=metadata))
        elif server_streaming:
            for _ in ch.unary_stream(path)(raw, timeout=timeout, metadata=metadata):
                break
        else:
            ch.unary_unary(path)(raw, timeout=timeout, metadata=metadata)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
