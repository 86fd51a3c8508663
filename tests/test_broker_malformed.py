"""Malformed request bytes: every LogStore, Groups and ShareGroups method answers INVALID_ARGUMENT.

The methods are the ones server reflection lists for ``logstore.v1.LogStore``,
``logstore.v1.Groups`` and ``logstore.v1.ShareGroups`` (so a method added to
any of the .protos is covered without editing this file). Each
gets truncated bytes, an overlong varint, an invalid wire type and seeded
random bytes; the broker log must not report any of them as unexpected.
"""

from __future__ import annotations

import random

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess

SERVICE = "logstore.v1.LogStore"
GROUPS_SERVICE = "logstore.v1.Groups"
SHARE_SERVICE = "logstore.v1.ShareGroups"
SECURITY_SERVICE = "logstore.v1.Security"
#: Field 1 (a length-delimited field in every request that has one) says 5
#: bytes follow, 2 do.
TRUNCATED = b"\x0a\x05ab"
#: Field 2 as a varint of 11 bytes; a varint has at most 10.
OVERLONG_VARINT = b"\x10" + b"\xff" * 10 + b"\x01"
#: Field 1 with wire type 6, which does not exist.
BAD_WIRE_TYPE = b"\x0e\x00"
MALFORMED = {"truncated": TRUNCATED, "overlong": OVERLONG_VARINT, "wire type 6": BAD_WIRE_TYPE}
#: Precise codes random bytes may get (random bytes can parse as a request).
PRECISE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a Subscribe that parsed and waits
}
RANDOM_CASES = 6


def reflected_methods(
    address: str, service_name: str = SERVICE
) -> list[descriptor_pb2.MethodDescriptorProto]:
    """A service's methods as server reflection describes them."""
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=service_name)]),
                timeout=10,
            )
        )
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in fd.service:
            if f"{fd.package}.{service.name}" == service_name:
                return list(service.method)
    raise AssertionError(f"reflection does not describe {service_name}")


def all_methods(address: str) -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    """(service, method) of every service, as reflection lists them."""
    return [
        (s, m)
        for s in (SERVICE, GROUPS_SERVICE, SHARE_SERVICE, SECURITY_SERVICE)
        for m in reflected_methods(address, s)
    ]


def call(
    ch: grpc.Channel,
    method: descriptor_pb2.MethodDescriptorProto,
    raw: bytes,
    service: str = SERVICE,
) -> tuple[grpc.StatusCode, str]:
    """Send ``raw`` as the request; the status (a stream's per-batch status for ProduceStream)."""
    path = f"/{service}/{method.name}"
    try:
        if method.client_streaming:
            stream = ch.stream_stream(path)
            replies = list(stream(iter([raw]), timeout=3))
            status = pb.ProduceResponse.FromString(replies[0]).status
            return code_of(status.code), status.message
        if method.server_streaming:
            for _ in ch.unary_stream(path)(raw, timeout=1.5):
                break
            return grpc.StatusCode.OK, ""
        ch.unary_unary(path)(raw, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


def code_of(value: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == value)


def test_every_method_refuses_malformed_bytes_with_invalid_argument(
    broker: BrokerProcess,
) -> None:
    """Truncated, overlong-varint and bad-wire-type bytes get INVALID_ARGUMENT saying so."""
    methods = all_methods(broker.grpc_address)
    assert {m.name for _, m in methods} >= {
        "Produce",
        "Fetch",
        "Subscribe",
        "ListOffsets",
        "ConsumerGroupHeartbeat",
        "ResetOffsets",
        "CreateUser",
        "CreateAcls",
    }
    with grpc.insecure_channel(broker.grpc_address) as ch:
        for service, method in methods:
            for what, raw in MALFORMED.items():
                code, details = call(ch, method, raw, service)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method.name, what, details)
                assert "could not be parsed" in details or "malformed" in details, details
    log = broker.log()
    assert "unexpectedly" not in log and "Traceback" not in log, log


def test_random_bytes_get_a_precise_status(broker: BrokerProcess) -> None:
    """Seeded random bytes to every method: a precise status, never UNKNOWN or INTERNAL."""
    rng = random.Random(20261201)
    methods = all_methods(broker.grpc_address)
    with grpc.insecure_channel(broker.grpc_address) as ch:
        for _ in range(RANDOM_CASES):
            for service, method in methods:
                raw = rng.randbytes(rng.randrange(1, 64))
                code, details = call(ch, method, raw, service)
                assert code in PRECISE, (method.name, raw.hex(), code, details)
    log = broker.log()
    assert "unexpectedly" not in log and "Traceback" not in log, log
