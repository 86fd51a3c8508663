"""Error details on the wire: every error class survives broker -> status -> client intact.

The broker puts a ``google.rpc.ErrorInfo`` (stable reason, metadata) and, where
retriable, a ``google.rpc.RetryInfo`` on every error status; the client rebuilds
the exact class from the reason. Unit round trips cover every class in
``logstore.errors.BY_REASON``; live tests cover the errors a client can cause.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from logstore import errors
from logstore.broker._status import rich_status
from logstore.client import Admin, Consumer
from logstore.client._rpc import translate
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess
from tests.test_broker_helpers import connect, create_topic, produce, records

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "logstore" / "v1" / "logstore.proto"
# the consumer-group reasons are documented with their service
GROUPS_PROTO = ROOT / "proto" / "logstore" / "v1" / "groups.proto"
SHARE_PROTO = ROOT / "proto" / "logstore" / "v1" / "share.proto"
SECURITY_PROTO = ROOT / "proto" / "logstore" / "v1" / "security.proto"


class StatusRpcError(grpc.RpcError):
    """A grpc.RpcError as a client sees it: code, details and trailing metadata."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> object:
        return self._status.trailing_metadata


def sample(cls: type[errors.LogStoreError]) -> errors.LogStoreError:
    """One instance of ``cls`` with its typical details filled in."""
    message = f"sample {cls.__name__}: what went wrong and what to do"
    if issubclass(cls, errors.OffsetOutOfRangeError):
        return cls(message, 3, 17)
    if issubclass(cls, errors.ResourceExhaustedError):
        return cls(message, 250)
    if issubclass(cls, errors.StorageError):
        return cls(errno.EIO, message)
    if issubclass(cls, errors.BrokerShuttingDownError):
        return cls(message, retry_after_ms=1000)
    return cls(message, metadata={"topic": "orders", "partition": "2"})


def over_the_wire(exc: errors.LogStoreError) -> errors.LogStoreError:
    """What the client rebuilds from the status the broker sends for ``exc``."""
    return translate(StatusRpcError(rpc_status.to_status(rich_status(exc))))


@pytest.mark.parametrize("reason", sorted(errors.BY_REASON))
def test_every_error_class_round_trips(reason: str) -> None:
    """Each class comes back as the same class, message, metadata and retry delay."""
    cls = errors.BY_REASON[reason]
    sent = sample(cls)
    got = over_the_wire(sent)
    assert type(got) is cls
    assert str(got) == str(sent)
    assert got.metadata == sent.metadata
    assert got.retry_after_ms == sent.retry_after_ms
    if isinstance(sent, errors.OffsetOutOfRangeError):
        assert isinstance(got, errors.OffsetOutOfRangeError)
        assert (got.log_start_offset, got.log_end_offset) == (3, 17)


def test_every_status_has_error_info_and_retry_info_only_when_retriable() -> None:
    """ErrorInfo (domain logstore.v1, the class's reason) always; RetryInfo iff retry_after_ms."""
    for reason, cls in errors.BY_REASON.items():
        sent = sample(cls)
        status = rich_status(sent)
        infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        retries = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(infos) == 1, reason
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        assert (info.reason, info.domain) == (reason, "logstore.v1")
        assert len(retries) == (sent.retry_after_ms is not None), reason


def test_unexpected_exception_is_internal_without_its_text() -> None:
    """A bug's exception reaches the client as InternalError with no detail of the bug."""
    got = over_the_wire(RuntimeError("secret detail"))  # type: ignore[arg-type]
    assert type(got) is errors.InternalError
    assert "secret" not in str(got)


def test_unknown_reason_falls_back_to_the_status_code() -> None:
    """A reason newer than the client (or another domain) is translated by status code."""
    status = rich_status(errors.UnknownTopicError("gone"))
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_NEW", domain="logstore.v1")
    del status.details[:]
    status.details.add().Pack(info)
    got = translate(StatusRpcError(rpc_status.to_status(status)))
    assert type(got) is errors.NotFoundError and str(got) == "gone"


def _all_error_classes() -> list[type[errors.LogStoreError]]:
    out, pending = [], [errors.LogStoreError]
    while pending:
        cls = pending.pop()
        out.append(cls)
        pending.extend(cls.__subclasses__())
    return out


def test_every_error_class_declares_its_own_reason() -> None:
    """No class inherits its parent's reason: each is told apart on the wire."""
    missing = [c.__name__ for c in _all_error_classes() if "reason" not in vars(c)]
    assert missing == [], (
        f'{missing}: add `reason = "..."` to the class and a row to the reason table '
        "in proto/logstore/v1/logstore.proto"
    )
    assert set(errors.BY_REASON.values()) == set(_all_error_classes())


def test_reasons_are_unique_and_documented_in_the_proto() -> None:
    """Every reason of logstore.errors has a row in a .proto's reason table, with its code."""
    text = "".join(p.read_text() for p in (PROTO, GROUPS_PROTO, SHARE_PROTO, SECURITY_PROTO))
    rows = dict(re.findall(r"^//   ([A-Z_]+) +([A-Z_]+) +", text, re.MULTILINE))
    for reason, cls in errors.BY_REASON.items():
        assert rows.get(reason) == cls.status, f"{reason} ({cls.status}) not documented"
    assert len({cls.reason for cls in errors.BY_REASON.values()}) == len(errors.BY_REASON)


# -- live: a real broker, the real client ---------------------------------------


def test_out_of_range_reaches_the_consumer_with_the_valid_range(broker: BrokerProcess) -> None:
    """A Consumer reading past the end gets OffsetOutOfRangeError with start and end, not -1."""
    with Admin(broker.grpc_address) as admin:
        admin.create_topic("t", 1)
    with connect(broker) as s:
        produce(s, "t", [b"a", b"b", b"c"])
    consumer = Consumer(broker.grpc_address)
    try:
        consumer.assign([("t", 0)])
        consumer.seek(("t", 0), 99)
        with pytest.raises(errors.OffsetOutOfRangeError) as err:
            consumer.poll(2000)
    finally:
        consumer.close()
    assert (err.value.log_start_offset, err.value.log_end_offset) == (0, 3)


def _produce_error(stub: object, request: pb.ProduceRequest) -> errors.LogStoreError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Produce(request, timeout=10)  # type: ignore[attr-defined]
    return translate(err.value)


def test_producer_errors_arrive_as_distinct_classes(broker: BrokerProcess) -> None:
    """Fenced, out-of-order sequence and unknown producer id are three classes, not one."""
    with connect(broker) as s:
        create_topic(s, "t")
        pid = s.InitProducer(pb.InitProducerRequest(), timeout=10).producer_id

        def req(producer_id: int, epoch: int, seq: int) -> pb.ProduceRequest:
            return pb.ProduceRequest(
                topic="t",
                partition=0,
                records=records([b"x"]),
                producer_id=producer_id,
                producer_epoch=epoch,
                base_sequence=seq,
            )

        s.Produce(req(pid, 1, 0), timeout=10)
        fenced = _produce_error(s, req(pid, 0, 1))
        gap = _produce_error(s, req(pid, 1, 5))
        unknown = _produce_error(s, req(pid + 1_000_000, 0, 0))
    assert type(fenced) is errors.InvalidProducerEpochError
    assert type(gap) is errors.OutOfOrderSequenceError
    assert type(unknown) is errors.UnknownProducerIdError


def test_admin_errors_arrive_as_their_classes(broker: BrokerProcess) -> None:
    """Topic exists, unknown topic, unknown partition and bad name keep their classes."""
    with Admin(broker.grpc_address) as admin:
        admin.create_topic("t", 2)
        with pytest.raises(errors.TopicExistsError):
            admin.create_topic("t", 2)
        with pytest.raises(errors.UnknownTopicError):
            admin.delete_topic("missing")
        with pytest.raises(errors.InvalidTopicNameError):
            admin.create_topic("no/slash", 1)
    with connect(broker) as s, pytest.raises(grpc.RpcError) as err:
        s.Fetch(pb.FetchRequest(topic="t", partition=5), timeout=10)
    assert type(translate(err.value)) is errors.UnknownPartitionError


def test_produce_stream_batch_status_carries_error_info(broker: BrokerProcess) -> None:
    """A bad batch's own status on a ProduceStream has the ErrorInfo reason too."""
    with connect(broker) as s:
        create_topic(s, "t")
        replies = list(
            s.ProduceStream(
                iter(
                    [
                        pb.ProduceRequest(topic="t", partition=0, records=records([b"a"])),
                        pb.ProduceRequest(topic="t", partition=9, records=records([b"b"])),
                    ]
                ),
                timeout=10,
            )
        )
    assert [r.status.code for r in replies] == [0, grpc.StatusCode.NOT_FOUND.value[0]]
    info = error_details_pb2.ErrorInfo()
    assert replies[1].status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("UNKNOWN_PARTITION", "logstore.v1")
