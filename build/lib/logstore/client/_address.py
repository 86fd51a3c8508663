"""Broker addresses: ``HOST:PORT``, checked before a channel is made.

An address is ``HOST:PORT`` where HOST is a DNS name (labels of letters,
digits, ``-`` and ``_``, 1..63 bytes each, 253 in total: RFC 1035 with the
underscore real names use), an IPv4 address, or an IPv6 address in brackets
(``[::1]:7070``), and PORT is 1..65535 in ASCII digits.

Why check at all: gRPC takes any string as a target. An empty one makes its
core print raw resolver errors on stderr; one it cannot parse (``garbage``,
``host:abc``) is only reported as "not ready" when the connect deadline
(5 s by default) has passed. A malformed address is the caller's mistake, so
it fails at once with :class:`~logstore.errors.InvalidArgumentError`.
Whether the name resolves, and whether a broker listens there, is still only
known by connecting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from logstore import errors

#: The largest TCP port (ports are 16-bit); 0 is "any port" for a listener
#: and cannot be connected to.
_MAX_PORT: Final = 65535
#: RFC 1035: a name is at most 253 characters, a label 1..63.
_MAX_NAME: Final = 253
_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _bad(address: str, why: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(
        f"bad broker address {address!r}: {why} (want HOST:PORT, e.g. 127.0.0.1:7070, "
        "broker.example.com:7070 or [::1]:7070)"
    )


def check_address(address: str) -> str:
    """``address`` unchanged if it is a well-formed ``HOST:PORT``; else InvalidArgumentError."""
    if not address:
        raise _bad(address, "empty")
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise _bad(address, "no port")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= _MAX_PORT:
        raise _bad(address, f"port must be 1..{_MAX_PORT}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad(address, "not an IPv6 address in brackets") from None
        return address
    if ":" in host:
        raise _bad(address, "an IPv6 address needs brackets")
    labels = host.rstrip(".").split(".")
    if len(host) > _MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        raise _bad(address, "not a host name or IP address")
    return address
