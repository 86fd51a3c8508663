"""Helpers shared by the broker tests (no tests here): raw gRPC stubs, not the client library."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc, records_pb2
from tests.brokerproc import BrokerProcess

ALL = pb.ACKS_ALL
LEADER = pb.ACKS_LEADER
NONE = pb.ACKS_NONE


@contextlib.contextmanager
def connect(broker: BrokerProcess | str) -> Iterator[logstore_pb2_grpc.LogStoreStub]:
    """A stub on a fresh channel to ``broker``; the channel is closed afterwards."""
    address = broker if isinstance(broker, str) else broker.grpc_address
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield logstore_pb2_grpc.LogStoreStub(channel)
    finally:
        channel.close()


def records(
    values: Sequence[bytes], keys: Sequence[bytes | None] | None = None
) -> list[records_pb2.Record]:
    out = []
    for i, v in enumerate(values):
        r = records_pb2.Record(value=v)
        if keys is not None and keys[i] is not None:
            r.key = keys[i]
        out.append(r)
    return out


def produce(
    stub: logstore_pb2_grpc.LogStoreStub,
    topic: str,
    values: Sequence[bytes],
    partition: int = 0,
    acks: int = pb.ACKS_UNSPECIFIED,
    timeout: float = 10,
    **fields: object,
) -> pb.ProduceResponse:
    req = pb.ProduceRequest(
        topic=topic, partition=partition, acks=acks, records=records(values), **fields
    )
    return stub.Produce(req, timeout=timeout)


def decode(
    raw: pb.FetchResponse | pb.SubscribeResponse, from_offset: int = 0
) -> list[tuple[int, bytes]]:
    """(offset, value) of every record at or after ``from_offset``."""
    out = []
    for batch in raw.batches:
        for i, rec in enumerate(batch.records):
            off = batch.base_offset + i
            if off >= from_offset:
                out.append((off, rec.value))
    return out


def fetch_all(
    stub: logstore_pb2_grpc.LogStoreStub, topic: str, partition: int = 0, offset: int = 0
) -> list[tuple[int, bytes]]:
    """Every record from ``offset`` to the high watermark."""
    out: list[tuple[int, bytes]] = []
    while True:
        resp = stub.Fetch(
            pb.FetchRequest(topic=topic, partition=partition, offset=offset), timeout=10
        )
        got = decode(resp, offset)
        out.extend(got)
        if not got or got[-1][0] + 1 >= resp.high_watermark:
            return out
        offset = got[-1][0] + 1


def create_topic(
    stub: logstore_pb2_grpc.LogStoreStub, name: str, partitions: int = 1, **config: str
) -> pb.TopicInfo:
    return stub.CreateTopic(
        pb.CreateTopicRequest(name=name, partitions=partitions, config=config), timeout=10
    ).topic


def retry_info(err: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo in an error's rich status details, or None."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


def scrape(broker: BrokerProcess) -> str:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
