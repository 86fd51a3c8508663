"""Security admin RPCs (security.proto): users, ACLs and quota overrides, one store
call each.

Thin like every handler area: the stores (``logstore.security``) validate
and write atomically in an I/O thread; then the :class:`~.._security.Guard`
is told, so the next request of every connection sees the change.
Authorization (cluster alter / describe) is the wrapper's, as for every RPC.
A created token is in the reply only; it is never logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from logstore.errors import InvalidArgumentError
from logstore.security import Acl, AclFilter, QuotaOverride
from logstore.v1 import security_pb2 as pb

from .._runtime import Context, Runtime

if TYPE_CHECKING:
    from .._security import Guard

log = logging.getLogger("logstore.broker")

#: ACLs in one CreateAcls request.
MAX_ACLS_PER_REQUEST = 10_000
_FIELDS = ("principal", "resource_type", "pattern_type", "name", "operation", "permission")


def _binding(acl: Acl) -> pb.AclBinding:
    return pb.AclBinding(**{f: getattr(acl, f) for f in _FIELDS})


def _quota(q: QuotaOverride) -> pb.QuotaDescription:
    out = pb.QuotaDescription(principal=q.principal)
    if q.produce_bytes_per_s is not None:
        out.produce_bytes_per_s = q.produce_bytes_per_s
    if q.fetch_bytes_per_s is not None:
        out.fetch_bytes_per_s = q.fetch_bytes_per_s
    return out


def _filter(flt: pb.AclBindingFilter) -> AclFilter:
    return AclFilter(**{f: (getattr(flt, f) or None) for f in _FIELDS})


class SecurityHandlers:
    """Users and ACLs of this broker's data directory."""

    def __init__(self, runtime: Runtime, guard: Guard) -> None:
        self._guard = guard
        self.run_io = runtime.run_io

    async def create_user(
        self, request: pb.CreateUserRequest, context: Context
    ) -> pb.CreateUserResponse:
        token = await self.run_io(self._guard.users.create, request.name)
        log.info("user created", extra={"fields": {"user": request.name}})
        return pb.CreateUserResponse(token=token)

    async def delete_user(
        self, request: pb.DeleteUserRequest, context: Context
    ) -> pb.DeleteUserResponse:
        await self.run_io(self._guard.users.delete, request.name)
        self._guard.users_changed()
        log.info("user deleted", extra={"fields": {"user": request.name}})
        return pb.DeleteUserResponse()

    async def list_users(
        self, request: pb.ListUsersRequest, context: Context
    ) -> pb.ListUsersResponse:
        users = await self.run_io(self._guard.users.list)
        return pb.ListUsersResponse(
            users=[pb.UserDescription(name=u.name, created_ms=u.created_ms) for u in users]
        )

    async def create_acls(
        self, request: pb.CreateAclsRequest, context: Context
    ) -> pb.CreateAclsResponse:
        if len(request.acls) > MAX_ACLS_PER_REQUEST:
            raise InvalidArgumentError(f"at most {MAX_ACLS_PER_REQUEST} ACLs per request")
        if not request.acls:
            raise InvalidArgumentError("CreateAcls needs at least one ACL")
        acls = [Acl(**{f: getattr(b, f) for f in _FIELDS}) for b in request.acls]
        added = await self.run_io(self._guard.acls.add, acls)
        self._guard.acls_changed()
        log.info("acls added", extra={"fields": {"added": added}})
        return pb.CreateAclsResponse(added=added)

    async def delete_acls(
        self, request: pb.DeleteAclsRequest, context: Context
    ) -> pb.DeleteAclsResponse:
        gone = await self.run_io(self._guard.acls.remove, _filter(request.filter))
        self._guard.acls_changed()
        log.info("acls removed", extra={"fields": {"removed": len(gone)}})
        return pb.DeleteAclsResponse(removed=[_binding(a) for a in gone])

    async def list_acls(self, request: pb.ListAclsRequest, context: Context) -> pb.ListAclsResponse:
        acls = await self.run_io(self._guard.acls.list, _filter(request.filter))
        return pb.ListAclsResponse(acls=[_binding(a) for a in acls])

    async def alter_quotas(
        self, request: pb.AlterQuotasRequest, context: Context
    ) -> pb.AlterQuotasResponse:
        store = self._guard.quotas.store
        assert store is not None
        produce = request.produce_bytes_per_s if request.HasField("produce_bytes_per_s") else None
        fetch = request.fetch_bytes_per_s if request.HasField("fetch_bytes_per_s") else None
        if request.remove:
            if produce is not None or fetch is not None:
                raise InvalidArgumentError(
                    "AlterQuotas: remove takes no rates (it removes both overrides)"
                )
            removed = await self.run_io(store.remove, request.principal)
            self._guard.quotas_changed()
            log.info("quota removed", extra={"fields": {"principal": request.principal}})
            return pb.AlterQuotasResponse(
                quota=pb.QuotaDescription(principal=request.principal), removed=removed
            )
        override = await self.run_io(store.set, request.principal, produce, fetch)
        self._guard.quotas_changed()
        log.info(
            "quota set",
            extra={
                "fields": {
                    "principal": request.principal,
                    "produce_bytes_per_s": produce,
                    "fetch_bytes_per_s": fetch,
                }
            },
        )
        return pb.AlterQuotasResponse(quota=_quota(override))

    async def describe_quotas(
        self, request: pb.DescribeQuotasRequest, context: Context
    ) -> pb.DescribeQuotasResponse:
        quotas = self._guard.quotas
        assert quotas.store is not None
        found = await self.run_io(quotas.store.list, request.principal or None)
        return pb.DescribeQuotasResponse(
            quotas=[_quota(q) for q in found],
            default_produce_bytes_per_s=int(quotas.produce.rate),
            default_fetch_bytes_per_s=int(quotas.fetch.rate),
        )
