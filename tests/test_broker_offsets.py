"""Every reply that carries a partition's end carries the high watermark and the log end
offset as two fields (equal on one broker; replication will make them differ)."""

from __future__ import annotations

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import BrokerProcess
from tests.test_broker_helpers import connect, create_topic, produce


def test_replies_carry_high_watermark_and_log_end_offset(broker: BrokerProcess) -> None:
    """Produce, Fetch, Subscribe and DescribeTopic: both fields, both 3 after 3 records."""
    with connect(broker) as s:
        create_topic(s, "t")
        produce(s, "t", [b"a", b"b"])
        reply = produce(s, "t", [b"c"])
        assert (reply.high_watermark, reply.log_end_offset) == (3, 3)
        none = produce(s, "t", [b"d"], acks=pb.ACKS_NONE)
        assert (none.high_watermark, none.log_end_offset) == (0, 0)  # documented
        fetched = s.Fetch(pb.FetchRequest(topic="t", partition=0, offset=0), timeout=10)
        assert fetched.log_end_offset == fetched.high_watermark >= 3
        pushed = next(s.Subscribe(pb.SubscribeRequest(topic="t", partition=0), timeout=10))
        assert pushed.log_end_offset == pushed.high_watermark >= 3
        info = s.DescribeTopic(pb.DescribeTopicRequest(name="t"), timeout=10).partitions[0]
        assert info.high_watermark == info.log_end_offset >= 3
        latest = s.ListOffsets(pb.ListOffsetsRequest(topic="t"), timeout=10).offsets[0]
        assert latest.offset == info.high_watermark
