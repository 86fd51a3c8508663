"""Input the broker used to guess at is refused precisely; the API files say what is served.

Covers the small defects of issue 9 item 13 on the broker side: partition
count 0, unknown enum values, non-ASCII digits in config integers, the
reflection versions served, and the .proto's Go package and documented edges.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from logstore.broker._config import BrokerConfig, split_address
from logstore.config import TopicConfig
from logstore.errors import InvalidConfigError
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess
from tests.test_broker_helpers import connect, create_topic, fetch_all, produce, records

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "proto" / "logstore" / "v1").glob("*.proto"))
#: Arabic-Indic, Devanagari and fullwidth digits: str.isdigit() and int() take them.
NON_ASCII_DIGITS = ["\u0661\u0662\u0663", "\u0967\u0968\u0969", "\uff11\uff12\uff13", "12\u2003"]


def _status(fn: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, timeout=10)  # type: ignore[operator]
    return err.value


def test_create_topic_with_zero_partitions_is_refused(broker: BrokerProcess) -> None:
    """CreateTopic with partitions unset (0) is INVALID_ARGUMENT and creates nothing."""
    with connect(broker) as s:
        err = _status(s.CreateTopic, pb.CreateTopicRequest(name="zero"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1..10000" in err.details()
        err = _status(s.CreateTopic, pb.CreateTopicRequest(name="neg", partitions=-3))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        names = [t.name for t in s.ListTopics(pb.ListTopicsRequest(), timeout=10).topics]
        assert names == []


def test_unknown_enum_values_are_refused(broker: BrokerProcess) -> None:
    """acks=99, a StartPosition of 7 and an OffsetSpec of 9 are INVALID_ARGUMENT; nothing stored."""
    with connect(broker) as s:
        create_topic(s, "t")
        produce(s, "t", [b"kept"])
        req = pb.ProduceRequest(topic="t", partition=0, acks=99, records=records([b"x"]))  # type: ignore[arg-type]
        err = _status(s.Produce, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "acks 99" in err.details()
        sub = s.Subscribe(
            pb.SubscribeRequest(topic="t", partition=0, position=7),  # type: ignore[arg-type]
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as sub_err:
            next(sub)
        assert sub_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = _status(s.ListOffsets, pb.ListOffsetsRequest(topic="t", position=9))  # type: ignore[arg-type]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v for _, v in fetch_all(s, "t")] == [b"kept"]


@pytest.mark.parametrize("text", NON_ASCII_DIGITS)
def test_config_integers_are_ascii_digits_only(text: str) -> None:
    """Topic and broker config integers refuse digits of other scripts and Unicode spaces."""
    with pytest.raises(InvalidConfigError):
        TopicConfig.from_mapping({"retention_ms": text})
    with pytest.raises(InvalidConfigError):
        BrokerConfig.resolve({}, env={"LOGSTORE_RETRY_AFTER_MS": text})
    with pytest.raises(InvalidConfigError):
        split_address(f"127.0.0.1:{text}")


def test_config_integers_still_take_ascii_forms() -> None:
    """Signs, '_' separators and surrounding blanks keep working."""
    from logstore.config import parse_int

    assert parse_int("\u0661\u0662") is None
    assert [parse_int(t) for t in ("12", "-1", "+3", "1_000", " 7 ")] == [12, -1, 3, 1000, 7]
    assert TopicConfig.from_mapping({"retention_ms": "86_400_000"}).retention_ms == 86_400_000


def test_topic_config_from_a_non_ascii_value_over_grpc(broker: BrokerProcess) -> None:
    """CreateTopic with retention_ms '١٢٣' is INVALID_ARGUMENT, not a topic with 123 ms."""
    with connect(broker) as s:
        err = _status(
            s.CreateTopic,
            pb.CreateTopicRequest(name="t", partitions=1, config={"retention_ms": "١٢٣"}),
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def _reflect(address: str, service: str, *requests: reflection_pb2.ServerReflectionRequest) -> list:
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha_are_served(broker: BrokerProcess, version: str) -> None:
    """Both reflection versions list LogStore and describe it and themselves."""
    service = f"grpc.reflection.{version}.ServerReflection"
    replies = _reflect(
        broker.grpc_address,
        service,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="logstore.v1.LogStore"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=service),
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"logstore.v1.LogStore", service} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto
    assert replies[2].file_descriptor_response.file_descriptor_proto, replies[2]


def test_go_package_is_a_usable_module_path() -> None:
    """go_package is HOST/.../logstore/v1;logstorev1 in every logstore .proto, the same in all."""
    found = set()
    for path in PROTOS:
        m = re.search(r'^option go_package = "([^";]+);(\w+)";', path.read_text(), re.MULTILINE)
        assert m, path
        found.add((m.group(1), m.group(2)))
    assert len(found) == 1
    ((import_path, alias),) = found
    assert "." in import_path.split("/")[0], import_path  # a host, as `go get` needs
    assert import_path.endswith("/logstore/v1") and alias == "logstorev1"


def test_proto_documents_the_edges_it_has() -> None:
    """One status for a decreasing partition count; acks=NONE replies' zero fields documented."""
    text = (ROOT / "proto" / "logstore" / "v1" / "logstore.proto").read_text()
    header = text.split('syntax = "proto3";')[0]
    failed = header.split("FAILED_PRECONDITION  ")[1].split("RESOURCE_EXHAUSTED")[0]
    assert "partition" not in failed  # INVALID_ARGUMENT, as CreatePartitions says
    response = text.split("message ProduceResponse {")[1].split("}")[0]
    assert "0 with ACKS_NONE" in response.split("int64 timestamp_ms")[0]


def test_batch_size_rule_is_stated_once_for_broker_and_storage() -> None:
    """TopicConfig.check_batch_bytes refuses above max_batch_bytes, accepts at it."""
    from logstore.errors import InvalidBatchError

    config = TopicConfig.from_mapping({"max_batch_bytes": "2000"})
    config.check_batch_bytes(2000, "t-0")
    with pytest.raises(
        InvalidBatchError, match=r"t-0: batch of 2001 bytes exceeds max_batch_bytes"
    ):
        config.check_batch_bytes(2001, "t-0")


def test_acks_none_oversized_batch_is_refused_before_the_reply(broker: BrokerProcess) -> None:
    """acks=NONE with a batch above max_batch_bytes: INVALID_ARGUMENT, nothing stored."""
    with connect(broker) as s:
        create_topic(s, "t", max_batch_bytes="2000")
        req = pb.ProduceRequest(
            topic="t", partition=0, acks=pb.ACKS_NONE, records=records([b"x" * 3000])
        )
        err = _status(s.Produce, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_batch_bytes 2000" in err.details()
        assert fetch_all(s, "t") == []
