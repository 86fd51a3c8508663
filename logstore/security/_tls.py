"""TLS material of a listener: server certificate chain, key, optional client CA.

:meth:`TlsFiles.load` reads the three PEM files into a :class:`TlsMaterial`
(bytes; nothing is parsed beyond checking that each holds a PEM block, the
TLS library checks the rest when it is handed the material). The broker
builds gRPC's *dynamic* server credentials on it: gRPC asks a fetcher for the
current material at each new handshake, and on SIGHUP the broker re-reads
the files and hands the fetcher the new material, so new connections get the
new certificate while open ones keep their session. A failed re-read (a
half-written file, a key that does not match) keeps the old material and is
logged: a rotation mistake must not take the listener down.

TLS versions and ciphers are gRPC's (BoringSSL's) defaults: TLS 1.2 and 1.3
only, no weak suites; nothing here offers to weaken them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from logstore.errors import InvalidConfigError

#: PEM files are small; a certificate chain of a few certs is a few KiB.
MAX_PEM_BYTES: Final = 1024 * 1024


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise InvalidConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise InvalidConfigError(f"{what} {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one listener: certificate chain, key, client CA (or None)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def __repr__(self) -> str:  # never the key, in a log line or a traceback
        return f"TlsMaterial(cert_chain={len(self.cert_chain)} B, private_key=<hidden>)"


@dataclass(frozen=True)
class TlsFiles:
    """Where a listener's TLS material lives (``client_ca`` empty: no client certs)."""

    cert: str
    key: str
    client_ca: str = ""

    def load(self) -> TlsMaterial:
        """The files' contents; InvalidConfigError naming the file that is unusable."""
        cert = _read_pem(self.cert, "TLS certificate")
        key = _read_pem(self.key, "TLS key")
        if b"PRIVATE KEY-----" not in key:
            raise InvalidConfigError(f"TLS key {self.key} holds no private key")
        ca = _read_pem(self.client_ca, "TLS client CA") if self.client_ca else None
        return TlsMaterial(cert, key, ca)
