"""The LogStore gRPC service, thin: admission, parsing, one error boundary, routing.

:class:`LogStoreService` builds the handler areas (``handlers/``) on one
:class:`~logstore.broker._runtime.Runtime` and turns the RPC table
(``_rpc_table.py``) into gRPC method handlers. Every RPC goes through
:meth:`LogStoreService.wrap`, which

1. refuses it while shutting down (UNAVAILABLE, reason BROKER_SHUTTING_DOWN)
   and admits it against its bound (RESOURCE_EXHAUSTED with RetryInfo);
2. authenticates the call (``_security.Guard``; UNAUTHENTICATED before
   anything about the request is looked at);
3. parses the request bytes when the table says so, so bytes that do not
   parse are INVALID_ARGUMENT (reason INVALID_REQUEST) like any bad input,
   instead of gRPC's own UNKNOWN "Unexpected DecodeError";
4. authorizes it against the RPC's ``ACCESS`` entry and its principal's
   quota (PERMISSION_DENIED / RESOURCE_EXHAUSTED), and trims List replies to
   what the principal may describe -- the only place ACLs are checked.
   MultiProduce / MultiFetch are authorized per entry: the denied entries'
   errors are handed to the handler (``denied=``, by index), which answers
   those entries with them instead of serving them; a Subscribe's context is
   wrapped so that each push pays into the fetch quota (and waits when over);
5. calls the handler, and is the one place where a domain error becomes a
   gRPC status (``_status.py``); an unexpected exception is INTERNAL with
   its traceback logged; a client that went away mid-write is CANCELLED
   and logged at debug only;
6. counts requests by status and their latency.

Requests arrive as bytes (identity request deserializer) for every method;
raw-response methods (Fetch, Subscribe, MultiFetch) send the bytes their handler returns
(identity response serializer), the others ``SerializeToString``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from logstore.errors import InvalidRequestError, LogStoreError
from logstore.security import ANONYMOUS

from ._admission import Slot
from ._config import BrokerConfig
from ._groups_runtime import GroupsRuntime
from ._metrics import BrokerMetrics
from ._rpc_table import ACCESS, RPCS, Rpc
from ._runtime import ClientGoneError, Context, Runtime, set_current_slot, shutting_down
from ._security import Guard, raw_view
from ._share_runtime import ShareRuntime
from ._status import abort, log_unexpected
from .handlers._common import status_name
from .handlers.admin import AdminHandlers
from .handlers.fetch import FetchHandlers
from .handlers.groups import GroupsHandlers
from .handlers.multi import MultiHandlers
from .handlers.produce import ProduceHandlers
from .handlers.security import SecurityHandlers
from .handlers.share import ShareHandlers

if TYPE_CHECKING:
    from logstore.storage import Store

log = logging.getLogger("logstore.broker")

M = TypeVar("M", bound=Message)
Handler = Callable[[Any, Context], Coroutine[Any, Any, Any]]


class LogStoreService:
    """``logstore.v1.LogStore``: the handler areas behind the one wrapper; one per broker."""

    def __init__(self, store: Store, config: BrokerConfig, metrics: BrokerMetrics) -> None:
        self.runtime = Runtime(store, config, metrics)
        self.groups = GroupsRuntime(self.runtime, config.group_config())
        self.groups.on_rebalance = lambda _gid: metrics.group_rebalances.inc()
        self.runtime.groups = self.groups
        self.share = ShareRuntime(self.runtime, config.share_config())
        self.runtime.share = self.share
        produce = ProduceHandlers(self.runtime)
        fetch = FetchHandlers(self.runtime)
        self.guard = Guard(config, store.path, metrics.registry, self.runtime.run_io)
        self.areas: dict[str, object] = {
            "produce": produce,
            "fetch": fetch,
            # MultiProduce / MultiFetch: many partitions per request, through
            # the produce and fetch areas' own single-partition machinery.
            "multi": MultiHandlers(self.runtime, produce, fetch),
            "admin": AdminHandlers(self.runtime),
            "groups": GroupsHandlers(self.runtime),
            "share": ShareHandlers(self.runtime),
            "security": SecurityHandlers(self.runtime, self.guard),
        }

    # -- lifecycle -----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime.start(loop)

    def begin_shutdown(self) -> None:
        """Refuse new requests; answer long polls and end subscriptions now."""
        self.runtime.begin_shutdown()

    async def drain_background(self) -> None:
        """Wait for queued acks=NONE appends, then stop the I/O threads."""
        await self.share.stop()
        await self.runtime.drain()

    @property
    def run_io(self) -> Callable[..., Awaitable[Any]]:
        return self.runtime.run_io

    # -- the handler table ---------------------------------------------------

    def method_handlers(
        self, rpcs: tuple[Rpc, ...] = RPCS
    ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """gRPC method handlers of every row of ``rpcs`` (one service's table), by name."""
        return {rpc.name: self._method_handler(rpc) for rpc in rpcs}

    def _method_handler(self, rpc: Rpc) -> grpc.RpcMethodHandler[Any, Any]:
        fn = getattr(self.areas[rpc.area], rpc.handler)
        handler = self.wrap(rpc, fn)
        serializer = None if rpc.raw_response else _serialize
        if rpc.client_streaming and rpc.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif rpc.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            assert not rpc.client_streaming, f"{rpc.name}: stream-unary is not supported"
            make = grpc.unary_unary_rpc_method_handler
        return make(handler, request_deserializer=None, response_serializer=serializer)

    # -- the wrapper: admission, parsing, the one error boundary, metrics -----

    def wrap(self, rpc: Rpc, fn: Callable[[Any, Context], Awaitable[Any]]) -> Handler:
        """``fn`` behind admission, parsing, the error -> status boundary and metrics."""
        rt = self.runtime
        method = rpc.name
        if rpc.admission == "subscriptions":
            gauge, gauge_metric = rt.limits.subscriptions, rt.metrics.subscriptions
        else:
            gauge, gauge_metric = rt.limits.requests, rt.metrics.inflight_requests
        request_type = rpc.request if rpc.parse_request else None
        guard = self.guard
        access = ACCESS[method]
        produce_quota = guard.produce_quota if method in ("Produce", "MultiProduce") else None
        fetch_quota = guard.fetch_quota if method in ("Fetch", "MultiFetch") else None
        # Subscribe's pushes pay into the fetch quota too (slowed, not failed).
        push_quota = guard.fetch_quota if method == "Subscribe" else None
        requests = rt.metrics.requests
        latency = rt.metrics.latency.labels(method)

        async def handler(request: Any, context: Context) -> Any:
            t0 = time.perf_counter()
            try:
                if rt.stopping:
                    raise shutting_down("the broker is shutting down; retry on its restart")
                slot = Slot(gauge, gauge_metric)
            except LogStoreError as exc:
                requests.labels(method, exc.status).inc()
                await abort(context, exc)
            set_current_slot(slot)
            code = "OK"
            try:
                principal = ANONYMOUS
                if guard.enabled:
                    principal = await guard.authenticate(context, method)
                # MultiProduce / MultiFetch: the entries denied, answered alone
                denied = None
                if request_type is not None:
                    request = parse_request(request_type, request)
                    denied = guard.authorize(access, request, context, method, principal)
                elif rpc.client_streaming and guard.enabled:
                    request = guard.checked_produce_stream(request, context, method, principal)
                elif guard.enabled:  # raw Produce / MultiProduce: topics without the records
                    view = raw_view(method, request)
                    denied = guard.authorize(access, view, context, method, principal)
                if produce_quota is not None:
                    delay_ms = produce_quota.delay_ms(principal)
                    guard.over_quota(method, principal, "produce", delay_ms)
                    produce_quota.charge(principal, len(request))
                if fetch_quota is not None:
                    delay_ms = fetch_quota.delay_ms(principal)
                    guard.over_quota(method, principal, "fetch", delay_ms)
                call_context = context
                if push_quota is not None and push_quota.limited:
                    call_context = guard.throttled_stream(context, method, principal)
                if denied:
                    reply = await fn(request, call_context, denied=denied)  # type: ignore[call-arg]
                else:
                    reply = await fn(request, call_context)
                if access.list_filter is not None:
                    guard.filter_list(access, reply, context, principal)
                if fetch_quota is not None and reply is not None:
                    fetch_quota.charge(principal, len(reply))
                return reply
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except ClientGoneError as exc:
                # The client cancelled or its deadline passed while we were
                # writing: nobody is left to tell, and it is not a failure.
                code = "CANCELLED"
                log.debug("%s ended by the client: %s", method, exc)
                return None
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = status_name(exc)
                log_unexpected(exc, method)
                await abort(context, exc)
            finally:
                slot.release()
                requests.labels(method, code).inc()
                latency.observe(time.perf_counter() - t0)

        return handler


def parse_request(request_type: type[M], raw: bytes) -> M:
    """``raw`` parsed as ``request_type``; InvalidRequestError if it does not parse."""
    try:
        return request_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(
            f"the request could not be parsed as a {request_type.DESCRIPTOR.full_name} "
            f"({len(raw)} bytes): {exc}"
        ) from None


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
