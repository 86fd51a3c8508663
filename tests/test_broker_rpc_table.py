"""The broker's declarative RPC table matches the .proto's service, row by row."""

from __future__ import annotations

import inspect

from google.protobuf.descriptor import ServiceDescriptor

from logstore.broker._rpc_table import (
    ACCESS,
    GROUPS_RPCS,
    GROUPS_SERVICE_NAME,
    RPCS,
    SECURITY_RPCS,
    SECURITY_SERVICE_NAME,
    SERVICE_NAME,
    SERVICES,
    SHARE_RPCS,
    SHARE_SERVICE_NAME,
    Rpc,
)
from logstore.broker.handlers.admin import AdminHandlers
from logstore.broker.handlers.fetch import FetchHandlers
from logstore.broker.handlers.groups import GroupsHandlers
from logstore.broker.handlers.multi import MultiHandlers
from logstore.broker.handlers.produce import ProduceHandlers
from logstore.broker.handlers.security import SecurityHandlers
from logstore.broker.handlers.share import ShareHandlers
from logstore.v1 import groups_pb2 as gpb
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import security_pb2 as secpb
from logstore.v1 import share_pb2 as spb

AREAS = {
    "produce": ProduceHandlers,
    "fetch": FetchHandlers,
    "multi": MultiHandlers,
    "admin": AdminHandlers,
    "groups": GroupsHandlers,
    "share": ShareHandlers,
    "security": SecurityHandlers,
}


def test_every_proto_method_has_one_row_with_its_types_and_shape() -> None:
    """Names, request/response types and streaming flags are those of logstore.proto."""
    _check_service(pb.DESCRIPTOR.services_by_name["LogStore"], SERVICE_NAME, RPCS)


def test_every_groups_method_has_one_row_with_its_types_and_shape() -> None:
    """The Groups rows match groups.proto's service; SERVICES lists both tables."""
    _check_service(gpb.DESCRIPTOR.services_by_name["Groups"], GROUPS_SERVICE_NAME, GROUPS_RPCS)
    assert SERVICES == {
        SERVICE_NAME: RPCS,
        GROUPS_SERVICE_NAME: GROUPS_RPCS,
        SHARE_SERVICE_NAME: SHARE_RPCS,
        SECURITY_SERVICE_NAME: SECURITY_RPCS,
    }


def test_every_share_method_has_one_row_with_its_types_and_shape() -> None:
    """The ShareGroups rows match share.proto's service."""
    _check_service(spb.DESCRIPTOR.services_by_name["ShareGroups"], SHARE_SERVICE_NAME, SHARE_RPCS)


def test_every_security_method_has_one_row_with_its_types_and_shape() -> None:
    """The Security rows match security.proto's service."""
    _check_service(
        secpb.DESCRIPTOR.services_by_name["Security"], SECURITY_SERVICE_NAME, SECURITY_RPCS
    )


def test_every_rpc_of_every_service_has_its_authorization() -> None:
    """ACCESS covers exactly the RPCs served, and each check names a real request field
    (a new RPC cannot land without saying what it needs)."""
    rows = [rpc for table in SERVICES.values() for rpc in table]
    assert set(ACCESS) == {rpc.name for rpc in rows}
    for rpc in rows:
        access = ACCESS[rpc.name]
        for chk in access.checks:
            if chk.resource_type == "cluster":
                assert chk.field == "", rpc.name
                continue
            descriptor = rpc.request.DESCRIPTOR
            for part in chk.field.split("."):
                field = descriptor.fields_by_name.get(part)
                assert field is not None, f"{rpc.name}: no field {chk.field}"
                descriptor = field.message_type
        if access.list_filter is not None:
            reply_field, name_field, _ = access.list_filter
            item = rpc.response.DESCRIPTOR.fields_by_name[reply_field].message_type
            assert name_field in item.fields_by_name, rpc.name


def _check_service(service: ServiceDescriptor, name: str, table: tuple[Rpc, ...]) -> None:
    assert service.full_name == name
    rows = {rpc.name: rpc for rpc in table}
    assert len(rows) == len(table), "a method is listed twice"
    assert set(rows) == {m.name for m in service.methods}
    for method in service.methods:
        rpc = rows[method.name]
        assert rpc.request.DESCRIPTOR.full_name == method.input_type.full_name, rpc.name
        assert rpc.response.DESCRIPTOR.full_name == method.output_type.full_name, rpc.name
        assert rpc.client_streaming == method.client_streaming, rpc.name
        assert rpc.server_streaming == method.server_streaming, rpc.name


def test_every_row_names_an_async_handler_of_its_area() -> None:
    """Each row's handler exists on its area's class and is a coroutine function."""
    for rpc in (*RPCS, *GROUPS_RPCS, *SHARE_RPCS, *SECURITY_RPCS):
        fn = getattr(AREAS[rpc.area], rpc.handler, None)
        assert fn is not None, f"{rpc.name}: {rpc.area}.{rpc.handler} does not exist"
        assert inspect.iscoroutinefunction(fn), rpc.name


def test_raw_bytes_only_where_the_data_path_needs_them() -> None:
    """Only the produce RPCs take raw bytes; only the fetch RPCs send stored bytes."""
    assert {r.name for r in RPCS if not r.parse_request} == {
        "Produce",
        "ProduceStream",
        "MultiProduce",
    }
    assert {r.name for r in RPCS if r.raw_response} == {"Fetch", "Subscribe", "MultiFetch"}
    assert {r.name for r in RPCS if r.admission == "subscriptions"} == {"Subscribe"}
