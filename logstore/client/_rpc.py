"""The client's one gRPC boundary: channels, raw-bytes methods, error translation.

Every ``grpc.RpcError`` the client sees is turned into a
:class:`~logstore.errors.LogStoreError` by :func:`translate` -- the only place
that looks at gRPC status codes. The broker's message is kept verbatim; the
class is rebuilt from the ``google.rpc.ErrorInfo`` reason the broker sends
(with its metadata, e.g. ``OffsetOutOfRangeError.log_start_offset``), or
chosen by status when there is none. ``retry_after_ms`` comes from a
``google.rpc.RetryInfo`` detail when the broker sent one; its absence means
"do not retry unchanged".

:class:`Connection` owns one channel. The first call waits at most
``connect_timeout_ms`` for the channel to become ready and otherwise fails with
``BrokerUnavailableError("cannot reach broker at HOST:PORT ...")`` -- without
this, a gRPC call to a closed port would either fail instantly with an opaque
message or (with wait_for_ready) hang forever. An address that is not
``HOST:PORT`` fails at once with InvalidArgumentError (see ``_address``).

Produce and Fetch (and MultiFetch, Subscribe) use raw-bytes methods (no serializer /
deserializer): the producer builds request bytes itself (header fields +
already encoded records) and the consumer walks the reply's stored frames
itself. :func:`translate_status` turns a per-partition ``google.rpc.Status``
inside a multi-partition reply into the same exception.
Thread-safe: a channel and its stubs may be used from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from logstore import errors
from logstore.v1 import logstore_pb2, logstore_pb2_grpc

from ._address import check_address
from ._credentials import Credentials

_T = TypeVar("_T")

#: Largest message either side accepts. A Fetch reply holds at least one whole
#: batch (max_batch_bytes is at most 1 GiB by config, 1 MiB by default), so the
#: receive limit must not be what stops a consumer; 256 MiB bounds memory.
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024

_SERVICE: Final = "/logstore.v1.LogStore/"

_BY_STATUS: Final[dict[grpc.StatusCode, type[errors.LogStoreError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: errors.TopicExistsError,
    grpc.StatusCode.OUT_OF_RANGE: errors.OffsetOutOfRangeError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: errors.CorruptRecordError,
    grpc.StatusCode.UNAVAILABLE: errors.BrokerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    grpc.StatusCode.INTERNAL: errors.InternalError,
    grpc.StatusCode.UNKNOWN: errors.InternalError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.AuthorizationError,
}


def _status_details(exc: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, int | None]:
    """The ErrorInfo (None when absent) and RetryInfo delay in ms (None) of a rich status."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        return None, None
    if status is None:
        return None, None
    return _details(status)


def _details(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo | None, int | None]:
    info: error_details_pb2.ErrorInfo | None = None
    retry_ms: int | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            found = error_details_pb2.ErrorInfo()
            detail.Unpack(found)
            if found.domain == errors.ERROR_DOMAIN:
                info = found
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            d = retry.retry_delay
            retry_ms = int(d.seconds) * 1000 + int(d.nanos) // 1_000_000
    return info, retry_ms


def translate(exc: BaseException, address: str = "") -> errors.LogStoreError:
    """The client's exception for ``exc`` (a grpc.RpcError or already ours).

    With an ErrorInfo of domain ``logstore.v1`` whose reason this client
    knows, the exact class is rebuilt (:data:`logstore.errors.BY_REASON`) with
    its metadata; otherwise (a status from gRPC itself, or a reason newer than
    this client) the class is chosen by status code.
    """
    if isinstance(exc, errors.LogStoreError):
        return exc
    if not isinstance(exc, grpc.RpcError):
        return errors.InternalError(f"{type(exc).__name__}: {exc}")
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(code)
    info, retry_ms = _status_details(exc)
    return _error(code, message, info, retry_ms, address)


def translate_status(status: status_pb2.Status, address: str = "") -> errors.LogStoreError:
    """The client's exception for a ``google.rpc.Status`` carried in a reply (a
    MultiFetch partition's or a MultiProduce batch's own status, code != 0),
    rebuilt exactly as :func:`translate` rebuilds an RPC's status."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    info, retry_ms = _details(status)
    return _error(code, status.message or code.name, info, retry_ms, address)


_CODES: Final = {c.value[0]: c for c in grpc.StatusCode}


def _error(
    code: grpc.StatusCode,
    message: str,
    info: error_details_pb2.ErrorInfo | None,
    retry_ms: int | None,
    address: str,
) -> errors.LogStoreError:
    known = errors.BY_REASON.get(info.reason) if info is not None else None
    if info is not None and known is not None and known.status == code.name:
        return known.from_details(message, dict(info.metadata), retry_ms)
    cls = _BY_STATUS.get(code, errors.LogStoreError)
    if cls is errors.ResourceExhaustedError:
        return errors.ResourceExhaustedError(message, retry_ms)
    if cls is errors.BrokerUnavailableError and address:
        return errors.BrokerUnavailableError(f"broker at {address} is unavailable: {message}")
    if cls is errors.LogStoreError:
        return errors.LogStoreError(f"{code.name}: {message}")
    return cls(message)


class Connection:
    """One channel to the broker, raw Produce/Fetch methods, typed unary calls."""

    def __init__(
        self,
        address: str,
        connect_timeout_ms: int = 5000,
        credentials: Credentials | None = None,
    ) -> None:
        self.address = check_address(address)
        self.connect_timeout_ms = connect_timeout_ms
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
            # Subscribe (the one server-streaming method) is read on its reader
            # thread itself instead of through the channel's spin thread: one
            # thread hand-off less per pushed message, ~15-20 µs of CPU per
            # message at W4's 2,000/s (docs/benchmarks.md, eleventh session).
            # Such a call cannot be waited on as a future; the Consumer only
            # iterates and cancels it.
            # (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream)
            ("SingleThreadedUnaryStream", 1),
        ]
        # credentials None: plaintext, no token (a loopback broker's default).
        # The token rides in an interceptor, so self.channel may be an
        # intercepted channel; readiness and close use it all the same.
        self.channel = (credentials or Credentials()).channel(address, options)
        self.stub = logstore_pb2_grpc.LogStoreStub(self.channel)
        # request_serializer None: the request is sent as the bytes given.
        self.produce_raw = self.channel.unary_unary(
            _SERVICE + "Produce",
            request_serializer=None,
            response_deserializer=logstore_pb2.ProduceResponse.FromString,
        )
        # The producer's ordered pipeline: raw requests in, one reply each, in order.
        self.produce_stream = self.channel.stream_stream(
            _SERVICE + "ProduceStream",
            request_serializer=None,
            response_deserializer=logstore_pb2.ProduceResponse.FromString,
        )
        # response_deserializer None: the reply arrives as bytes (stored frames).
        self.fetch_raw = self.channel.unary_unary(
            _SERVICE + "Fetch",
            request_serializer=logstore_pb2.FetchRequest.SerializeToString,
            response_deserializer=None,
        )
        # Many partitions in one long poll; the reply arrives as bytes too.
        self.multi_fetch_raw = self.channel.unary_unary(
            _SERVICE + "MultiFetch",
            request_serializer=logstore_pb2.MultiFetchRequest.SerializeToString,
            response_deserializer=None,
        )
        # A tail of one partition pushed by the broker; each message arrives as
        # bytes (a SubscribeResponse, readable by parse_fetch).
        self.subscribe_raw = self.channel.unary_stream(
            _SERVICE + "Subscribe",
            request_serializer=logstore_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=None,
        )
        self._ready = False
        self._ready_lock = threading.Lock()

    def ensure_ready(self) -> None:
        """Wait up to the connect deadline for the channel; BrokerUnavailableError if not."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            timeout_s = self.connect_timeout_ms / 1000
            try:
                grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
            except grpc.FutureTimeoutError:
                raise errors.BrokerUnavailableError(
                    f"cannot reach broker at {self.address} (no connection within {timeout_s:g} s)"
                ) from None
            self._ready = True

    def call(self, method: Callable[..., _T], request: Any, timeout_s: float) -> _T:
        """Unary call with the connect check and error translation."""
        self.ensure_ready()
        try:
            return method(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from exc

    def close(self) -> None:
        self.channel.close()
