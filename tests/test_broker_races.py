"""Races between a client and the broker end in precise statuses, never in a traceback.

A Subscribe whose client deadline passes while the broker is writing is the
client's own ending (CANCELLED / DEADLINE_EXCEEDED on its side); the broker
must not log it as an unexpected failure. Races of admin calls with reads and
writes get their precise status: ListOffsets by time against DeleteRecords is
OUT_OF_RANGE, Produce against DeleteTopic is NOT_FOUND (storage raises the
domain errors; the broker maps them through the one status table).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc._cython.cygrpc import ExecuteBatchError  # what a write to an ended call raises
from prometheus_client import generate_latest

from logstore.broker._config import BrokerConfig
from logstore.broker._metrics import BrokerMetrics
from logstore.broker._rpc_table import RPCS
from logstore.broker._service import LogStoreService
from logstore.storage import Store
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import connect, create_topic, produce, scrape

#: 40 batches of 4 x 60 KB: ~10 MB, far more than a reader that sleeps
#: 50 ms per message drains in a 0.3 s deadline, so the deadline hits mid-write.
BATCHES = 40
SUBSCRIBERS = 12


def test_subscribe_deadline_mid_write_is_not_an_unexpected_error(tmp_path: Path) -> None:
    """Subscribers whose deadline expires mid-stream: no ERROR line, no traceback, counted."""
    b = start_broker(tmp_path / "data", env={"LOGSTORE_SUBSCRIBE_MAX_BYTES": "65536"})
    try:
        with connect(b) as s:
            create_topic(s, "t")
            for _ in range(BATCHES):
                produce(s, "t", [b"y" * 60_000] * 4, acks=pb.ACKS_LEADER)
        codes: Counter[str] = Counter()
        for _ in range(SUBSCRIBERS):
            with grpc.insecure_channel(b.grpc_address) as ch:
                call = ch.unary_stream(
                    "/logstore.v1.LogStore/Subscribe",
                    request_serializer=pb.SubscribeRequest.SerializeToString,
                    response_deserializer=None,
                )
                stream = call(pb.SubscribeRequest(topic="t", partition=0), timeout=0.3)
                try:
                    for _ in stream:
                        time.sleep(0.05)
                except grpc.RpcError as err:
                    codes[err.code().name] += 1
        assert codes == {"DEADLINE_EXCEEDED": SUBSCRIBERS}
        time.sleep(0.5)  # let the broker finish the handlers
        log = b.log()
        assert " ERROR " not in log and "Traceback" not in log, log
        metrics = scrape(b)
        assert 'code="INTERNAL",method="Subscribe"' not in metrics
        assert (
            f'logstore_requests_total{{code="CANCELLED",method="Subscribe"}} {SUBSCRIBERS}.0'
            in (metrics)
        )
    finally:
        assert b.stop() == 0


def test_list_offsets_by_time_racing_delete_records(tmp_path: Path) -> None:
    """ListOffsets by time while DeleteRecords advances the start: OK or OUT_OF_RANGE only."""
    b = start_broker(tmp_path / "data")
    try:
        with connect(b) as s:
            create_topic(s, "t", segment_bytes="3000")
            for _ in range(150):
                produce(s, "t", [b"x" * 200] * 2, acks=pb.ACKS_LEADER)
            stop = threading.Event()
            codes: Counter[str] = Counter()

            def lister() -> None:
                with connect(b) as s2:
                    while not stop.is_set():
                        try:
                            s2.ListOffsets(pb.ListOffsetsRequest(topic="t", timestamp_ms=0))
                            codes["OK"] += 1
                        except grpc.RpcError as err:
                            codes[err.code().name] += 1

            threads = [threading.Thread(target=lister) for _ in range(2)]
            for t in threads:
                t.start()
            try:
                for before in range(2, 300, 2):
                    s.DeleteRecords(
                        pb.DeleteRecordsRequest(topic="t", partition=0, before_offset=before),
                        timeout=10,
                    )
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
        assert set(codes) <= {"OK", "OUT_OF_RANGE"}, codes
        assert codes["OK"] > 0
        assert "Traceback" not in b.log()
    finally:
        assert b.stop() == 0


def test_produce_racing_delete_topic(tmp_path: Path) -> None:
    """Produce (acks=ALL) while its topic is deleted and re-created: OK or NOT_FOUND only."""
    b = start_broker(tmp_path / "data")
    try:
        stop = threading.Event()
        codes: Counter[str] = Counter()

        def producer() -> None:
            with connect(b) as s2:
                while not stop.is_set():
                    try:
                        produce(s2, "t", [b"x" * 100] * 4)
                        codes["OK"] += 1
                    except grpc.RpcError as err:
                        codes[err.code().name] += 1

        with connect(b) as s:
            create_topic(s, "t")
            threads = [threading.Thread(target=producer) for _ in range(2)]
            for t in threads:
                t.start()
            try:
                for _ in range(40):
                    s.DeleteTopic(pb.DeleteTopicRequest(name="t"), timeout=10)
                    create_topic(s, "t")
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
        assert set(codes) <= {"OK", "NOT_FOUND"}, codes
        assert "Traceback" not in b.log()
    finally:
        assert b.stop() == 0


class _GoneContext:
    """A servicer context whose call already ended: every write fails as gRPC's does."""

    def __init__(self) -> None:
        self.aborted: tuple[object, ...] | None = None

    async def write(self, message: object) -> None:
        raise ExecuteBatchError('Failed "execute_batch"')

    async def abort(self, *args: object) -> None:
        self.aborted = args
        raise AssertionError(f"aborted {args}")


def test_subscribe_write_to_an_ended_call_is_cancelled_not_internal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The exact race, in process: the write fails because the call ended -> CANCELLED, quiet."""

    async def main() -> tuple[_GoneContext, str]:
        config = BrokerConfig(data_dir=str(tmp_path / "data"))
        store = Store.open(config.data_dir, config.store_config())
        try:
            store.create_topic("t", 1)
            store.append("t", 0, [b"x"])
            metrics = BrokerMetrics()
            svc = LogStoreService(store, config, metrics)
            svc.start(asyncio.get_running_loop())
            rpc = next(r for r in RPCS if r.name == "Subscribe")
            handler = svc.wrap(rpc, svc.areas["fetch"].subscribe)  # type: ignore[attr-defined]
            ctx = _GoneContext()
            request = pb.SubscribeRequest(topic="t", partition=0).SerializeToString()
            await asyncio.wait_for(handler(request, ctx), 10)  # type: ignore[arg-type]
            svc.begin_shutdown()
            await svc.drain_background()
            return ctx, generate_latest(metrics.registry).decode()
        finally:
            store.close()

    with caplog.at_level(logging.DEBUG, logger="logstore.broker"):
        ctx, text = asyncio.run(main())
    assert ctx.aborted is None
    assert 'logstore_requests_total{code="CANCELLED",method="Subscribe"} 1.0' in text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
