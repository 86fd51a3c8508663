"""A raw ShareGroups client over the generated stubs (tests only; the real
client is logstore.client's ShareConsumer)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc, records_pb2, share_pb2_grpc
from logstore.v1 import share_pb2 as spb
from logstore.wire import decode_objects, stored_frames

Got = dict[tuple[str, int, int], tuple[bytes | None, int, list[tuple[str, bytes]]]]


class ShareClient:
    """Both stubs on one channel, and one member of one group."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.share = share_pb2_grpc.ShareGroupsStub(self.channel)
        self.log = logstore_pb2_grpc.LogStoreStub(self.channel)
        self.group = ""
        self.member = ""

    def close(self) -> None:
        self.channel.close()

    def topic(self, name: str, partitions: int = 1) -> None:
        self.log.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions), timeout=10)

    def produce(
        self,
        topic: str,
        values: list[bytes],
        partition: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
        keys: list[bytes] | None = None,
    ) -> int:
        """One batch; the base offset."""
        recs = [
            records_pb2.Record(
                value=v,
                key=keys[i] if keys else None,
                headers=[records_pb2.Header(key=n, value=hv) for n, hv in headers or []],
            )
            for i, v in enumerate(values)
        ]
        req = pb.ProduceRequest(topic=topic, partition=partition, records=recs, acks=pb.ACKS_ALL)
        return int(self.log.Produce(req, timeout=10).base_offset)

    def join(self, group: str, topics: list[str]) -> str:
        r = self.share.ShareGroupHeartbeat(
            spb.ShareGroupHeartbeatRequest(group_id=group, topics=topics), timeout=10
        )
        self.group, self.member = group, r.member_id
        return str(r.member_id)

    def fetch(
        self,
        max_records: int = 100,
        wait_ms: int = 0,
        acks: list[spb.AcknowledgementBatch] | None = None,
        timeout: float = 40,
    ) -> spb.ShareFetchResponse:
        return self.share.ShareFetch(
            spb.ShareFetchRequest(
                group_id=self.group,
                member_id=self.member,
                max_records=max_records,
                max_wait_ms=wait_ms,
                acknowledgements=acks or [],
            ),
            timeout=timeout,
        )

    def ack(self, acks: list[spb.AcknowledgementBatch]) -> list[spb.AcknowledgeResult]:
        r = self.share.ShareAcknowledge(
            spb.ShareAcknowledgeRequest(
                group_id=self.group, member_id=self.member, acknowledgements=acks
            ),
            timeout=10,
        )
        return list(r.acknowledgements)


def ack(
    topic: str, first: int, last: int, kind: int = spb.ACCEPT, partition: int = 0, **kw: object
) -> spb.AcknowledgementBatch:
    return spb.AcknowledgementBatch(
        topic=topic,
        partition=partition,
        first_offset=first,
        last_offset=last,
        type=kind,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def acquired(reply: spb.ShareFetchResponse) -> Got:
    """(topic, partition, offset) -> (value, delivery count, headers) of every
    acquired record of a reply (records outside the acquired ranges skipped)."""
    out: Got = {}
    for p in reply.partitions:
        recs = {r.offset: r for r in decode_objects(stored_frames(p.records), 0)}
        for a in p.acquired:
            for off in range(a.first_offset, a.last_offset + 1):
                r = recs.get(off)
                if r is not None:
                    out[(p.topic, p.partition, off)] = (r.value, a.delivery_count, list(r.headers))
    return out


def status_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo reason, message) of an error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    return err.code(), info.reason, err.details() or ""
