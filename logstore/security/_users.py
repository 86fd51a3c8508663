"""Users and their bearer tokens: ``<data-dir>/users.json``.

A token is ``lst_<id>_<secret>``: ``id`` (16 hex digits, random) names the
user record without a scan, ``secret`` is 32 random bytes (urlsafe base64).
It is returned once by :meth:`UserStore.create` and never stored: the file
keeps, per user, the id, a random 16-byte salt and
``scrypt(secret, salt, n=2**14, r=8, p=1)`` (32 bytes; ~16 MiB and tens of
milliseconds per check, which is why the broker caches a verified token per
connection). :meth:`UserStore.verify` compares with ``hmac.compare_digest``
(constant time), and hashes even when the id is unknown, so timing does not
tell a wrong id from a wrong secret.

File layout (JSON, written atomically by ``_files.write_json``)::

    {"version": 1, "users": {"<name>": {"id": "<16 hex>", "salt": "<hex>",
     "hash": "<hex>", "n": 16384, "r": 8, "p": 1, "created_ms": <int>}}}

Thread-safety: one lock around every method; the broker calls them from its
I/O threads. A principal name is 1..128 of ``[A-Za-z0-9._@=+-]`` (so a
certificate's common name or an e-mail address fits); ``*`` is never a name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from logstore.errors import InvalidArgumentError, StorageError, UnknownUserError, UserExistsError

from ._files import read_json, write_json

USERS_FILE: Final = "users.json"
TOKEN_PREFIX: Final = "lst_"
#: The principal of every call when authentication is off (``--auth none``).
ANONYMOUS: Final = "ANONYMOUS"
MAX_USERS: Final = 100_000
MAX_NAME: Final = 128
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._@=+-]{1,128}")
_ID_BYTES: Final = 8
_SECRET_BYTES: Final = 32
_SALT_BYTES: Final = 16
#: scrypt cost: n=2**14, r=8 is the interactive-login setting of the scrypt
#: paper (16 MiB); maxmem leaves room for it.
_N: Final = 1 << 14
_R: Final = 8
_P: Final = 1
_DKLEN: Final = 32
_MAXMEM: Final = 64 * 1024 * 1024
_TOKEN_RE: Final = re.compile(r"lst_([0-9a-f]{16})_([A-Za-z0-9_-]{20,64})")


@dataclass(frozen=True)
class UserInfo:
    """A user as listed: its name and creation time (ms since the epoch)."""

    name: str
    created_ms: int


def check_principal_name(name: str, what: str = "user name") -> str:
    """``name`` if it is a valid principal name; InvalidArgumentError naming the rule."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"bad {what} {name[: MAX_NAME + 1]!r}: 1..{MAX_NAME} of letters, digits and ._@=+-"
        )
    return name


def _hash(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=_MAXMEM)


class UserStore:
    """The users of one data directory (see the module docstring)."""

    def __init__(self, path: str, users: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._users = users
        self._by_id = {u["id"]: name for name, u in users.items()}
        self._lock = threading.Lock()
        #: Bumped by every change: the broker drops verified tokens it cached.
        self.generation = 0

    @classmethod
    def open(cls, data_dir: str) -> UserStore:
        path = os.path.join(data_dir, USERS_FILE)
        raw = read_json(path)
        users: dict[str, dict[str, Any]] = {}
        if raw is not None:
            try:
                if raw["version"] != 1:
                    raise StorageError(f"{path}: unknown version {raw['version']!r}")
                for name, u in raw["users"].items():
                    check_principal_name(name)
                    users[name] = {
                        "id": str(u["id"]),
                        "salt": bytes.fromhex(u["salt"]).hex(),
                        "hash": bytes.fromhex(u["hash"]).hex(),
                        "n": int(u["n"]),
                        "r": int(u["r"]),
                        "p": int(u["p"]),
                        "created_ms": int(u["created_ms"]),
                    }
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(f"{path} is not a users file: {exc!r}") from None
        return cls(path, users)

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        write_json(self.path, {"version": 1, "users": users})

    def create(self, name: str) -> str:
        """Add user ``name``; its token (the only time it exists outside the client)."""
        check_principal_name(name)
        user_id = secrets.token_hex(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = _hash(secret.encode(), salt, _N, _R, _P)
        with self._lock:
            if name in self._users:
                raise UserExistsError(f"user {name!r} already exists")
            if len(self._users) >= MAX_USERS:
                raise InvalidArgumentError(f"at most {MAX_USERS} users")
            record = {
                "id": user_id,
                "salt": salt.hex(),
                "hash": digest.hex(),
                "n": _N,
                "r": _R,
                "p": _P,
                "created_ms": int(time.time() * 1000),
            }
            users = {**self._users, name: record}
            self._save(users)
            self._users = users
            self._by_id[user_id] = name
            self.generation += 1
        return f"{TOKEN_PREFIX}{user_id}_{secret}"

    def delete(self, name: str) -> None:
        """Remove user ``name`` (UnknownUserError if there is none); its token stops working."""
        with self._lock:
            record = self._users.get(name)
            if record is None:
                raise UnknownUserError(f"unknown user {name[: MAX_NAME + 1]!r}")
            users = {k: v for k, v in self._users.items() if k != name}
            self._save(users)
            self._users = users
            self._by_id.pop(record["id"], None)
            self.generation += 1

    def list(self) -> list[UserInfo]:
        with self._lock:
            return [UserInfo(n, u["created_ms"]) for n, u in sorted(self._users.items())]

    def verify(self, token: str) -> str | None:
        """The user whose token this is, or None (constant-time compare; see module doc)."""
        m = _TOKEN_RE.fullmatch(token)
        with self._lock:
            name = self._by_id.get(m.group(1)) if m else None
            record = self._users.get(name) if name is not None else None
        if m is None or record is None:
            # Same work as a real check, so a wrong id costs what a wrong secret does.
            _hash(token.encode(errors="replace")[:256], b"\0" * _SALT_BYTES, _N, _R, _P)
            return None
        digest = _hash(
            m.group(2).encode(),
            bytes.fromhex(record["salt"]),
            record["n"],
            record["r"],
            record["p"],
        )
        return name if hmac.compare_digest(digest, bytes.fromhex(record["hash"])) else None
