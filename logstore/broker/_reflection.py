"""Server reflection, both versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection serves only v1alpha; grpcurl, Postman and newer clients ask
for v1 first. The two protocols are the same messages under two package names
(same fields, same numbers), so one servicer answers both: v1 requests are
parsed with the v1alpha classes (identical bytes). For v1 to describe itself,
its descriptor is derived from v1alpha's by renaming the package, and added
to the default pool once per process.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE: Final = reflection.SERVICE_NAME
V1_SERVICE: Final = "grpc.reflection.v1.ServerReflection"
_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
_ALPHA_PACKAGE: Final = ".grpc.reflection.v1alpha."
_V1_PACKAGE: Final = ".grpc.reflection.v1."


def _ensure_v1_descriptor() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default pool (idempotent)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    fd = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fd)
    fd.name = _V1_FILE
    fd.package = "grpc.reflection.v1"
    fd.ClearField("options")
    for message in fd.message_type:
        for field in message.field:
            if field.type_name.startswith(_ALPHA_PACKAGE):
                field.type_name = _V1_PACKAGE + field.type_name[len(_ALPHA_PACKAGE) :]
    for service in fd.service:
        for method in service.method:
            method.input_type = _V1_PACKAGE + method.input_type[len(_ALPHA_PACKAGE) :]
            method.output_type = _V1_PACKAGE + method.output_type[len(_ALPHA_PACKAGE) :]
    pool.Add(fd)


def enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection v1 and v1alpha for ``service_names`` (both reflection services added)."""
    _ensure_v1_descriptor()
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    servicer: Any = ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1_SERVICE, V1ALPHA_SERVICE):
        table = {"ServerReflectionInfo": handler}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, table),))
        server.add_registered_method_handlers(service, table)  # type: ignore[attr-defined]
