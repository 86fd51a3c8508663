"""The one boundary where domain errors become gRPC statuses.

Every :class:`~logstore.errors.LogStoreError` names its status (``.status``, a
``grpc.StatusCode`` name); :data:`STATUS_CODES` is the single table that maps
those names to codes. Errors carrying ``retry_after_ms`` (broker limits) get a
``google.rpc.RetryInfo`` in the rich status details
(``grpc-status-details-bin``); disk full and oversized requests get none, so
clients do not retry them unchanged. Anything that is not a LogStoreError is a
bug or an unexpected environment failure: INTERNAL, with the traceback logged
on the broker and a short message to the client.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from logstore.errors import LogStoreError, ResourceExhaustedError

log = logging.getLogger("logstore.broker")

STATUS_CODES: Final[dict[str, grpc.StatusCode]] = {
    "OK": grpc.StatusCode.OK,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "UNKNOWN": grpc.StatusCode.UNKNOWN,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ABORTED": grpc.StatusCode.ABORTED,
    "OUT_OF_RANGE": grpc.StatusCode.OUT_OF_RANGE,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DATA_LOSS": grpc.StatusCode.DATA_LOSS,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
}

INTERNAL_MESSAGE: Final = "internal error on the broker; see its log"


def rich_status(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status for ``exc`` (unexpected exceptions are INTERNAL)."""
    if isinstance(exc, LogStoreError):
        code = STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
        message = str(exc)
    else:
        code = grpc.StatusCode.INTERNAL
        message = INTERNAL_MESSAGE
    status = status_pb2.Status(code=code.value[0], message=message)
    retry_ms = getattr(exc, "retry_after_ms", None)
    if isinstance(exc, ResourceExhaustedError) and retry_ms is not None:
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=retry_ms // 1000, nanos=(retry_ms % 1000) * 1_000_000
            )
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    return status


OK_STATUS: Final = status_pb2.Status(code=code_pb2.OK)


def log_unexpected(exc: BaseException, what: str) -> None:
    if not isinstance(exc, LogStoreError):
        log.error("%s failed unexpectedly", what, exc_info=exc)


async def abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    """End the RPC with the status of ``exc`` (rich details in the trailers)."""
    status = rpc_status.to_status(rich_status(exc))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")
