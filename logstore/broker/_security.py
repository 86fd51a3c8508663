"""The broker's one authentication, authorization and quota check.

:class:`Guard` is called by the service wrapper (``_service.py``) for every
RPC of every service -- never by a handler -- in this order:

1. :meth:`Guard.authenticate`: the principal. ``auth none``: ``ANONYMOUS``
   and nothing else is checked (today's loopback default). ``token``: the
   ``authorization`` metadata ``Bearer <token>``, verified against
   ``users.json`` (scrypt, in an I/O thread) once per connection and token,
   then cached by (peer, SHA-256 of the token): one dict lookup per request.
   A token that failed is remembered too (by its digest, the last
   ``BAD_TOKEN_CACHE_ENTRIES``, until users change), so a client retrying a
   bad token costs a lookup, not a scrypt; and at most
   ``TOKEN_CHECKS_AT_ONCE`` scrypt checks run at once, so a flood of fresh
   bad tokens queues behind them instead of taking the whole I/O pool (and
   ~16 MiB each) from the data path.
   ``mtls``: the client certificate's common name (gRPC verified the chain
   against ``tls_client_ca`` during the handshake). Failure:
   UNAUTHENTICATED, with a message saying how to authenticate.
2. :meth:`Guard.authorize`: every :class:`~._rpc_table.Check` of the RPC's
   ``ACCESS`` entry against the current :class:`~logstore.security.Authorizer`
   (cached per connection and resource). A denied topic operation of a
   principal that may not even ``describe`` the topic is answered exactly as
   a missing topic is (NOT_FOUND ``unknown topic 'x'``), so ACLs never tell
   whether a topic exists; otherwise PERMISSION_DENIED naming the operation
   and the resource.
   MultiProduce / MultiFetch (``per_entry`` in ACCESS) are decided per
   batch / partition and the denials returned, for the handler to answer
   those entries alone.
3. quotas (``produce_quota`` / ``fetch_quota``: a unary call in debt is
   RESOURCE_EXHAUSTED with RetryInfo; ProduceStream requests and Subscribe
   pushes (:meth:`Guard.throttled_stream`) wait the delay instead). Rates are
   the broker default or the principal's override from ``quotas.json``
   (:meth:`Guard.quotas_changed` after AlterQuotas).

Every failure is one structured WARN line (principal, peer, operation,
resource; never a token) and a metric (``logstore_auth_failures_total``,
``logstore_authorization_denials_total``).

Produce requests arrive as raw bytes: :func:`peek_topic` reads the topic
(field 1; the last occurrence wins, as protobuf parsing does) without
parsing the records (upb skips them in C; see ``_topic_only_type``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from prometheus_client import CollectorRegistry, Counter

from logstore.errors import (
    AuthenticationError,
    AuthorizationError,
    InvalidRequestError,
    LogStoreError,
    QuotaExceededError,
    UnknownTopicError,
)
from logstore.security import (
    ANONYMOUS,
    AclStore,
    Authorizer,
    ByteQuota,
    QuotaManager,
    QuotaStore,
    UserStore,
)
from logstore.v1 import logstore_pb2

from ._config import BrokerConfig
from ._rpc_table import Access
from ._runtime import Context

log = logging.getLogger("logstore.broker.audit")

#: Verified (peer, token digest) -> principal entries kept; past it the
#: cache is cleared (each entry costs one scrypt to rebuild).
PRINCIPAL_CACHE_ENTRIES: Final = 65_536
#: Digests of tokens that failed verification, kept (oldest dropped first)
#: so that repeating one costs a dict lookup instead of a scrypt.
BAD_TOKEN_CACHE_ENTRIES: Final = 4_096
#: scrypt verifications running at once (each ~16 MiB and tens of ms of CPU
#: in an I/O thread); further ones wait their turn.
TOKEN_CHECKS_AT_ONCE: Final = 2
_HOW: Final = (
    "send the metadata 'authorization: Bearer <token>' (logctl --token or LOGSTORE_TOKEN; "
    "a super user creates tokens with 'logctl users create NAME')"
)


def _topic_views() -> tuple[type[Message], type[Message]]:
    """Messages with only the fields authorization reads of the raw-bytes requests.

    ``ProduceTopic`` is ProduceRequest's field 1 (``string topic``);
    ``MultiProduceTopics`` is MultiProduceRequest's field 15 (``repeated
    ProduceRequest batches``) as ProduceTopics. Parsing a request's bytes as
    one reads the topics with protobuf's own semantics (the last occurrence
    wins, UTF-8 checked) while upb skips every other field -- the repeated
    records included -- in C: 0.15 ms for a 1 MiB, 10,000-record request,
    where a Python walk of the top-level fields took 14 ms (each record is a
    top-level field) and a full parse far more.
    """
    fdp = descriptor_pb2.FileDescriptorProto(
        name="logstore_broker_internal/produce_topic.proto",
        package="logstore.broker.internal",
        syntax="proto3",
    )
    fd = descriptor_pb2.FieldDescriptorProto
    one = fdp.message_type.add(name="ProduceTopic")
    one.field.add(name="topic", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    many = fdp.message_type.add(name="MultiProduceTopics")
    many.field.add(
        name="batches",
        number=15,
        type=fd.TYPE_MESSAGE,
        label=fd.LABEL_REPEATED,
        type_name=".logstore.broker.internal.ProduceTopic",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("logstore.broker.internal.ProduceTopic")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("logstore.broker.internal.MultiProduceTopics")
        ),
    )


_PRODUCE_TOPIC, _MULTI_PRODUCE_TOPICS = _topic_views()
assert logstore_pb2.ProduceRequest.DESCRIPTOR.fields_by_name["topic"].number == 1
assert logstore_pb2.MultiProduceRequest.DESCRIPTOR.fields_by_name["batches"].number == 15
#: The view each raw-bytes RPC is authorized on (its ACCESS fields exist in it).
RAW_VIEWS: Final[dict[str, type[Message]]] = {
    "Produce": _PRODUCE_TOPIC,
    "ProduceStream": _PRODUCE_TOPIC,
    "MultiProduce": _MULTI_PRODUCE_TOPICS,
}


def raw_view(method: str, raw: bytes) -> Message:
    """``raw`` parsed as ``method``'s authorization view; InvalidRequestError if malformed."""
    try:
        return RAW_VIEWS[method].FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(f"malformed {method} request: {exc}") from None


def peek_topic(raw: bytes) -> str:
    """The ``topic`` a serialized ProduceRequest parses to; InvalidRequestError if malformed.

    Exactly protobuf's answer (see ``_topic_only_type``), without parsing the records.
    """
    return str(raw_view("Produce", raw).topic)  # type: ignore[attr-defined]


def field_values(message: Any, path: str) -> Iterable[str]:
    """The strings at ``path`` (dotted; repeated fields are iterated) of ``message``."""
    head, _, rest = path.partition(".")
    value = getattr(message, head)
    items = value if hasattr(value, "__len__") and not isinstance(value, str) else (value,)
    if not rest:
        return [v for v in items if v]
    out: list[str] = []
    for item in items:
        out.extend(field_values(item, rest))
    return out


class Guard:
    """Authentication, authorization and quotas of one broker (see the module docstring)."""

    def __init__(
        self,
        config: BrokerConfig,
        data_dir: str,
        registry: CollectorRegistry,
        run_io: Callable[..., Awaitable[Any]],
    ) -> None:
        self.mode = config.auth
        self.enabled = config.auth != "none"
        self.super_users = config.super_user_names
        self.users = UserStore.open(data_dir)
        self.acls = AclStore.open(data_dir)
        self.authorizer: Authorizer = self.acls.authorizer(self.super_users)
        self.quotas = QuotaManager(
            config.quota_produce_bytes_per_s,
            config.quota_fetch_bytes_per_s,
            QuotaStore.open(data_dir),
        )
        # Quotas need a principal: with --auth none there are none.
        self.produce_quota = self.quotas.produce if self.enabled else None
        self.fetch_quota = self.quotas.fetch if self.enabled else None
        self._run_io = run_io
        self._principals: dict[tuple[str, bytes], str] = {}
        self._bad_tokens: OrderedDict[bytes, None] = OrderedDict()
        self._token_checks = asyncio.Semaphore(TOKEN_CHECKS_AT_ONCE)
        self.auth_failures = Counter(
            "logstore_auth_failures",
            "Calls refused UNAUTHENTICATED, by method",
            ["method"],
            registry=registry,
        )
        self.denials = Counter(
            "logstore_authorization_denials",
            "Calls refused by an ACL, by method and resource type",
            ["method", "resource_type"],
            registry=registry,
        )
        self.throttled = Counter(
            "logstore_quota_throttled",
            "Calls refused or delayed by a byte-rate quota, by method",
            ["method"],
            registry=registry,
        )

    # -- changes (the Security handlers) -------------------------------------

    def acls_changed(self) -> None:
        """Use the new ACLs from the next request on (a fresh, empty decision cache)."""
        self.authorizer = self.acls.authorizer(self.super_users)

    def quotas_changed(self) -> None:
        """Use the new per-principal quota overrides from the next request on."""
        self.quotas.reload()

    def users_changed(self) -> None:
        """Forget verified tokens (a deleted user's token stops working at once)
        and failed ones (a new user's token is checked afresh)."""
        self._principals.clear()
        self._bad_tokens.clear()

    # -- 1. authentication ---------------------------------------------------

    def _fail(self, context: Context, method: str, why: str, message: str) -> AuthenticationError:
        self.auth_failures.labels(method).inc()
        log.warning(
            "authentication failed",
            extra={"fields": {"peer": context.peer(), "operation": method, "reason": why}},
        )
        return AuthenticationError(message)

    async def authenticate(self, context: Context, method: str) -> str:
        """The call's principal; AuthenticationError (UNAUTHENTICATED) if it has none."""
        if not self.enabled:
            return ANONYMOUS
        if self.mode == "mtls":
            auth = context.auth_context()
            names = list(auth.get("x509_common_name") or ())
            name = names[0].decode(errors="replace") if names else ""
            if not name:
                raise self._fail(
                    context,
                    method,
                    "no client certificate",
                    "this broker authenticates by client certificate (mutual TLS): connect "
                    "with --tls-cert and --tls-key signed by its client CA",
                )
            return name
        header = ""
        for md_key, value in context.invocation_metadata() or ():
            if md_key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if not header:
            raise self._fail(context, method, "no token", f"no credentials: {_HOW}")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._fail(
                context, method, "not a bearer token", f"the authorization metadata is not "
                f"'Bearer <token>': {_HOW}"
            )  # fmt: skip
        digest = hashlib.sha256(token.encode(errors="replace")).digest()
        key = (context.peer(), digest)
        principal = self._principals.get(key) or await self._verify(key, token)
        if principal is None:
            raise self._fail(
                context,
                method,
                "bad token",
                "the bearer token is not valid (unknown, deleted or mistyped); "
                "ask a super user for a new one ('logctl users create NAME')",
            )
        return principal

    async def _verify(self, key: tuple[str, bytes], token: str) -> str | None:
        """scrypt-check ``token`` (one of ``TOKEN_CHECKS_AT_ONCE``) unless it
        failed before, and remember the answer -- unless the users changed
        meanwhile (a user deleted during the check must not be cached)."""
        digest = key[1]
        if digest in self._bad_tokens:
            return None
        async with self._token_checks:
            # a call that waited its turn may find the answer known by now
            if (known := self._principals.get(key)) is not None:
                return known
            if digest in self._bad_tokens:
                return None
            generation = self.users.generation
            verified = await self._run_io(self.users.verify, token)
        if self.users.generation != generation:
            return str(verified) if verified is not None else None
        if verified is None:
            self._bad_tokens[digest] = None
            self._bad_tokens.move_to_end(digest)
            while len(self._bad_tokens) > BAD_TOKEN_CACHE_ENTRIES:
                self._bad_tokens.popitem(last=False)
            return None
        if len(self._principals) >= PRINCIPAL_CACHE_ENTRIES:
            self._principals.clear()
        self._principals[key] = principal = str(verified)
        return principal

    # -- 2. authorization ----------------------------------------------------

    def _deny(
        self, context: Context, method: str, principal: str, rtype: str, name: str, op: str
    ) -> None:
        self.denials.labels(method, rtype).inc()
        log.warning(
            "authorization denied",
            extra={
                "fields": {
                    "principal": principal,
                    "peer": context.peer(),
                    "operation": op,
                    "resource": f"{rtype}:{name}",
                    "method": method,
                }
            },
        )

    def decide(
        self, context: Context, method: str, principal: str, rtype: str, name: str, op: str
    ) -> LogStoreError | None:
        """One decision: None when allowed, else the error the principal may see
        (audited: one WARN line and the denials metric)."""
        authz = self.authorizer
        peer = context.peer()
        if authz.allowed(peer, principal, rtype, name, op):
            return None
        self._deny(context, method, principal, rtype, name, op)
        if (
            rtype == "topic"
            and op != "create"
            and not authz.allowed(peer, principal, rtype, name, "describe")
        ):
            # Exactly what the store says of a missing topic (_store.py).
            return UnknownTopicError(f"unknown topic {name!r}")
        what = "the cluster" if rtype == "cluster" else f"{rtype} {name!r}"
        return AuthorizationError(f"principal {principal!r} may not {op} {what}")

    def check(
        self, context: Context, method: str, principal: str, rtype: str, name: str, op: str
    ) -> None:
        """One decision; raises the error the principal may see when denied."""
        error = self.decide(context, method, principal, rtype, name, op)
        if error is not None:
            raise error

    def authorize(self, access: Access, request: Any, context: Context, method: str,
                  principal: str) -> dict[int, LogStoreError] | None:  # fmt: skip
        """Every check of ``access`` on a parsed request (or its authorization view).

        Raises the first denial -- except for a ``per_entry`` RPC, whose
        denials are returned instead, by entry index (None: every entry is
        allowed), for the handler to answer those entries alone.
        """
        if not self.enabled:
            return None
        if access.per_entry:
            return self._entry_denials(access, request, context, method, principal)
        for chk in access.checks:
            if chk.resource_type == "cluster":
                self.check(context, method, principal, "cluster", "cluster", chk.operation)
                continue
            for name in field_values(request, chk.field):
                self.check(context, method, principal, chk.resource_type, name, chk.operation)
        return None

    def _entry_denials(self, access: Access, request: Any, context: Context, method: str,
                       principal: str) -> dict[int, LogStoreError] | None:  # fmt: skip
        """Each entry's first denied check, by index. O(1) per entry: a decision is a
        cached dict lookup, and each distinct resource is decided (and a denial
        audited) once per request however many entries name it."""
        denied: dict[int, LogStoreError] = {}
        heads = {chk.field.partition(".")[0] for chk in access.checks}
        assert len(heads) == 1, "per_entry checks share one repeated field"
        entries = getattr(request, heads.pop())
        for chk in access.checks:
            sub = chk.field.partition(".")[2]
            rtype, op = chk.resource_type, chk.operation
            seen: dict[str, LogStoreError | None] = {}
            simple = "." not in sub  # the common case: one string field per entry
            for i, entry in enumerate(entries):
                if i in denied:
                    continue
                for name in (getattr(entry, sub),) if simple else field_values(entry, sub):
                    if not name:
                        continue
                    try:
                        error = seen[name]
                    except KeyError:
                        error = seen[name] = self.decide(
                            context, method, principal, rtype, name, op
                        )
                    if error is not None:
                        denied[i] = error
                        break
        return denied or None

    def filter_list(self, access: Access, reply: Any, context: Context, principal: str) -> None:
        """Trim a List reply to what ``principal`` may describe (in place)."""
        if not self.enabled or access.list_filter is None:
            return
        field, name_field, rtype = access.list_filter
        items = getattr(reply, field)
        authz, peer = self.authorizer, context.peer()
        keep = [
            item
            for item in items
            if authz.allowed(peer, principal, rtype, getattr(item, name_field), "describe")
        ]
        if len(keep) != len(items):
            kept = [type(item)() for item in keep]
            for new, old in zip(kept, keep, strict=True):
                new.CopyFrom(old)
            del items[:]
            items.extend(kept)

    def checked_produce_stream(
        self, requests: AsyncIterator[bytes], context: Context, method: str, principal: str
    ) -> AsyncIterator[bytes]:
        """``requests`` with each one's topic authorized and its bytes charged to the quota
        (a stream over its quota is slowed down, not failed)."""
        import asyncio  # noqa: PLC0415 (only streams need it)

        async def gen() -> AsyncIterator[bytes]:
            async for raw in requests:
                if self.enabled:
                    self.check(context, method, principal, "topic", peek_topic(raw), "write")
                quota = self.produce_quota
                if quota is not None:
                    delay = quota.delay_ms(principal)
                    if delay:
                        self.throttled.labels(method).inc()
                        await asyncio.sleep(delay / 1000)
                    quota.charge(principal, len(raw))
                yield raw

        return gen()

    # -- 3. quotas -----------------------------------------------------------

    def throttled_stream(self, context: Context, method: str, principal: str) -> Context:
        """``context`` whose writes (a Subscribe's pushes) are charged to the principal's
        fetch quota: past it, the next push waits the delay a Fetch's RetryInfo would
        name -- the stream is slowed, not failed (as ProduceStream's requests are)."""
        quota = self.fetch_quota
        assert quota is not None
        throttled = _ThrottledContext(context, quota, principal, lambda: self._throttle(method))
        return cast(Context, throttled)

    def _throttle(self, method: str) -> None:
        self.throttled.labels(method).inc()

    def over_quota(self, method: str, principal: str, kind: str, delay_ms: int) -> None:
        if delay_ms:
            self.throttled.labels(method).inc()
            raise QuotaExceededError(
                f"principal {principal!r} is over its {kind} quota; retry in {delay_ms} ms",
                delay_ms,
            )


class _ThrottledContext:
    """A servicer context whose ``write`` pays into a fetch quota (see
    :meth:`Guard.throttled_stream`); everything else is the real context's.

    The wait happens inside ``write``, so the handler's own shutdown and
    client-gone handling (it awaits the write) covers it: a cancelled write
    cancels the sleep.
    """

    def __init__(
        self, context: Context, quota: ByteQuota, principal: str, on_throttle: Callable[[], None]
    ) -> None:
        self._context = context
        self._quota = quota
        self._principal = principal
        self._on_throttle = on_throttle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        import asyncio  # noqa: PLC0415 (only streams need it)

        quota, principal = self._quota, self._principal
        delay = quota.delay_ms(principal)
        if delay:
            self._on_throttle()
            await asyncio.sleep(delay / 1000)
        await self._context.write(message)
        quota.charge(principal, len(message))
