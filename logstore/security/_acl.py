"""ACLs in Kafka's shape, their file ``<data-dir>/acls.json``, and the matcher.

An :class:`Acl` is ``principal`` (a user or certificate name, or ``*`` for
everyone) x resource (``resource_type`` topic | group | cluster, and
``name`` matched ``literal``-ly or as a ``prefix``; literal ``*`` is every
resource of the type; the cluster's one resource is named ``cluster``) x
``operation`` (read, write, create, delete, alter, describe) x
``permission`` (allow | deny).

Decision (:meth:`Authorizer.authorize`), Kafka's rules:

1. a super user (broker config ``super_users``) may do everything;
2. any matching ``deny`` wins over every ``allow``;
3. otherwise a matching ``allow`` permits; ``describe`` is also permitted by
   an allow of read, write, delete or alter on the same resource (as Kafka
   implies DESCRIBE from them), unless ``describe`` itself is denied;
4. no matching ACL: denied.

Cost: a decision looks at the literal ACLs of the exact name (a dict), the
wildcard ones, and the prefix ones (a list scanned once); the broker then
caches the decision per connection and resource (:meth:`Authorizer.allowed`,
a bounded dict), so the hot path is one dict lookup. The cache belongs to
one ``Authorizer``, which is immutable: an ACL change builds a new one
(:meth:`AclStore.authorizer`) and the old cache goes with it.

File (JSON, atomic): ``{"version": 1, "acls": [{"principal": ..., "resource_type":
..., "pattern_type": ..., "name": ..., "operation": ..., "permission": ...}]}``.
Thread-safety: :class:`AclStore` takes a lock around changes; an
``Authorizer`` is safe to share (a racing cache fill stores the same answer).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Final

from logstore.errors import InvalidArgumentError, StorageError

from ._files import read_json, write_json
from ._users import check_principal_name

ACLS_FILE: Final = "acls.json"
RESOURCE_TYPES: Final = ("topic", "group", "cluster")
OPERATIONS: Final = ("read", "write", "create", "delete", "alter", "describe")
PATTERN_TYPES: Final = ("literal", "prefix")
PERMISSIONS: Final = ("allow", "deny")
CLUSTER: Final = "cluster"
WILDCARD: Final = "*"
MAX_ACLS: Final = 100_000
#: Longest resource name an ACL may name (topic names are at most 249).
MAX_RESOURCE_NAME: Final = 255
#: Decisions cached per Authorizer; past it the cache is cleared (a burst of
#: distinct connections x resources) rather than grown: 64 Ki entries are a
#: few MiB.
DECISION_CACHE_ENTRIES: Final = 65_536
_IMPLY_DESCRIBE: Final = frozenset({"read", "write", "delete", "alter", "describe"})


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidArgumentError(f"bad {what} {value[:64]!r}: one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True, order=True)
class Acl:
    """One rule; see the module docstring. Validated on construction."""

    principal: str
    resource_type: str
    pattern_type: str
    name: str
    operation: str
    permission: str

    def __post_init__(self) -> None:
        if self.principal != WILDCARD:
            check_principal_name(self.principal, "principal")
        _one_of(self.resource_type, RESOURCE_TYPES, "resource type")
        _one_of(self.pattern_type, PATTERN_TYPES, "pattern type")
        _one_of(self.operation, OPERATIONS, "operation")
        _one_of(self.permission, PERMISSIONS, "permission")
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_RESOURCE_NAME:
            raise InvalidArgumentError(
                f"an ACL's resource name must be 1..{MAX_RESOURCE_NAME} characters"
            )
        if any(ord(c) < 0x20 for c in self.name):
            raise InvalidArgumentError("an ACL's resource name may not hold control characters")
        if self.resource_type == CLUSTER and self.name not in (CLUSTER, WILDCARD):
            raise InvalidArgumentError(f"the cluster resource is named {CLUSTER!r}")

    def matches(self, principal: str, resource_type: str, name: str) -> bool:
        if self.principal not in (WILDCARD, principal) or self.resource_type != resource_type:
            return False
        if self.pattern_type == "prefix":
            return name.startswith(self.name)
        return self.name in (WILDCARD, name)


@dataclass(frozen=True)
class AclFilter:
    """Which ACLs to list or remove: every field None matches anything."""

    principal: str | None = None
    resource_type: str | None = None
    pattern_type: str | None = None
    name: str | None = None
    operation: str | None = None
    permission: str | None = None

    def matches(self, acl: Acl) -> bool:
        return all(want is None or want == getattr(acl, key) for key, want in asdict(self).items())


class Authorizer:
    """An immutable ACL set plus the decision cache (see the module docstring)."""

    def __init__(self, acls: Iterable[Acl], super_users: Iterable[str] = ()) -> None:
        self.super_users = frozenset(super_users)
        self._literal: dict[tuple[str, str], list[Acl]] = {}
        self._other: list[Acl] = []  # prefix and wildcard-name ACLs
        for acl in acls:
            if acl.pattern_type == "literal" and acl.name != WILDCARD:
                self._literal.setdefault((acl.resource_type, acl.name), []).append(acl)
            else:
                self._other.append(acl)
        self._cache: dict[tuple[str, str, str, str, str], bool] = {}

    def authorize(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        """The decision, uncached (see the module docstring for the rules)."""
        if principal in self.super_users:
            return True
        if resource_type == CLUSTER:
            name = CLUSTER
        found = [
            acl
            for acl in (*self._literal.get((resource_type, name), ()), *self._other)
            if acl.matches(principal, resource_type, name)
        ]
        if operation == "describe":
            if any(a.permission == "deny" and a.operation == "describe" for a in found):
                return False
            return any(a.permission == "allow" and a.operation in _IMPLY_DESCRIBE for a in found)
        if any(a.permission == "deny" and a.operation == operation for a in found):
            return False
        return any(a.permission == "allow" and a.operation == operation for a in found)

    def allowed(
        self, connection: str, principal: str, resource_type: str, name: str, operation: str
    ) -> bool:
        """:meth:`authorize`, cached per connection and resource (O(1) once cached)."""
        key = (connection, principal, resource_type, name, operation)
        hit = self._cache.get(key)
        if hit is None:
            hit = self.authorize(principal, resource_type, name, operation)
            if len(self._cache) >= DECISION_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = hit
        return hit


class AclStore:
    """The ACLs of one data directory; every change is written before it is used."""

    def __init__(self, path: str, acls: list[Acl]) -> None:
        self.path = path
        self._acls = sorted(set(acls))
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: str) -> AclStore:
        path = os.path.join(data_dir, ACLS_FILE)
        raw = read_json(path)
        acls: list[Acl] = []
        if raw is not None:
            try:
                if raw["version"] != 1:
                    raise StorageError(f"{path}: unknown version {raw['version']!r}")
                acls = [Acl(**item) for item in raw["acls"]]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(f"{path} is not an ACL file: {exc!r}") from None
            except InvalidArgumentError as exc:
                raise StorageError(f"{path} holds a bad ACL: {exc}") from None
        return cls(path, acls)

    def _save(self, acls: list[Acl]) -> None:
        write_json(self.path, {"version": 1, "acls": [asdict(a) for a in acls]})

    def add(self, acls: Iterable[Acl]) -> int:
        """Add ``acls`` (existing ones are kept once); how many were new."""
        with self._lock:
            merged = sorted(set(self._acls).union(acls))
            added = len(merged) - len(self._acls)
            if len(merged) > MAX_ACLS:
                raise InvalidArgumentError(f"at most {MAX_ACLS} ACLs")
            if added:
                self._save(merged)
                self._acls = merged
            return added

    def remove(self, flt: AclFilter) -> list[Acl]:
        """Remove every ACL ``flt`` matches; the removed ones."""
        with self._lock:
            gone = [a for a in self._acls if flt.matches(a)]
            if gone:
                keep = [a for a in self._acls if not flt.matches(a)]
                self._save(keep)
                self._acls = keep
            return gone

    def list(self, flt: AclFilter | None = None) -> list[Acl]:
        with self._lock:
            return [a for a in self._acls if flt is None or flt.matches(a)]

    def authorizer(self, super_users: Iterable[str] = ()) -> Authorizer:
        """A fresh :class:`Authorizer` (empty cache) over the current ACLs."""
        with self._lock:
            return Authorizer(self._acls, super_users)
