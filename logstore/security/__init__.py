"""Security: TLS material, users and tokens, ACLs, quotas -- pure modules.

Nothing here speaks gRPC or touches the store: the broker builds its
credentials and its one authorization check (``logstore.broker._security``)
on these, and ``logctl users|acls --data-dir`` uses the stores directly on a
stopped broker's directory.

- :mod:`._tls`: server certificate, key and optional client CA read from
  files, re-read on demand (SIGHUP rotation);
- :mod:`._users`: ``users.json``, one salted scrypt hash per user; tokens
  are printed once and never stored;
- :mod:`._acl`: the ACL model (Kafka's shape), ``acls.json`` and the
  matcher with its per-connection decision cache;
- :mod:`._quota`: per-principal byte-rate token buckets and ``quotas.json``,
  the per-principal overrides of the broker's default rates.

Constants: ``RESOURCE_TYPES``, ``OPERATIONS``, ``PATTERN_TYPES``,
``PERMISSIONS`` (the ACL vocabulary, lower case); ``ANONYMOUS`` (the
principal of every call with ``--auth none``); ``TOKEN_PREFIX`` (``lst_``,
how a logstore token starts, so secret scanners can find leaked ones).
"""

from ._acl import (
    OPERATIONS,
    PATTERN_TYPES,
    PERMISSIONS,
    RESOURCE_TYPES,
    Acl,
    AclFilter,
    AclStore,
    Authorizer,
)
from ._files import DataDirLock
from ._quota import ByteQuota, QuotaManager, QuotaOverride, QuotaStore
from ._tls import TlsFiles, TlsMaterial
from ._users import ANONYMOUS, TOKEN_PREFIX, UserInfo, UserStore, check_principal_name

__all__ = [
    "ANONYMOUS",
    "OPERATIONS",
    "PATTERN_TYPES",
    "PERMISSIONS",
    "RESOURCE_TYPES",
    "TOKEN_PREFIX",
    "Acl",
    "AclFilter",
    "AclStore",
    "Authorizer",
    "ByteQuota",
    "DataDirLock",
    "QuotaManager",
    "QuotaOverride",
    "QuotaStore",
    "TlsFiles",
    "TlsMaterial",
    "UserInfo",
    "UserStore",
    "check_principal_name",
]
