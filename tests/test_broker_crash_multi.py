"""kill -9 under acks=ALL MultiProduce load: every record a MultiProduce result
acknowledged survives exactly once, in order, in every partition.

Each producer sends MultiProduce requests carrying one batch for each of
several partitions (sometimes two for one partition); a batch counts as
acknowledged only when its own result is OK. As in test_broker_crash, kill -9
keeps the page cache, so this proves that a multi-partition reply is only
sent for stored batches and that recovery keeps them; the storage power-cut
tests prove the fsync itself. The kill loop and the check are
``tests/_crash_helpers.py``'s (shared with test_broker_crash).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from logstore.v1 import logstore_pb2 as pb
from tests._crash_helpers import CrashLog, kill9_rounds, verify_after_restart
from tests.brokerproc import start_broker
from tests.test_broker_helpers import ALL, connect, create_topic, records

PRODUCERS = 3
PARTITIONS = 6


def _run(tmp_path: Path, rounds: int, seed: int) -> None:
    print(f"multi crash test seed={seed} (rerun with LOGSTORE_CRASH_SEED={seed})")
    data = tmp_path / "data"
    log = CrashLog()
    b = start_broker(data)
    with connect(b) as s:
        create_topic(s, "mcrash", partitions=PARTITIONS, segment_bytes="65536")
    b.stop()

    def producer(
        pid: int, address: str, rnd: int, stop: threading.Event, first_ack: threading.Event
    ) -> None:
        n = 0
        prng = random.Random(seed * 1000 + rnd * 10 + pid)
        with connect(address) as s:
            while not stop.is_set():
                parts = prng.sample(range(PARTITIONS), prng.randint(1, PARTITIONS))
                parts.append(parts[0])  # two batches for one partition
                batches, values_by = [], []
                for k, part in enumerate(parts):
                    values = [
                        f"r{rnd}-p{pid}-{n}-{k}-{i}".encode() * 3
                        for i in range(1 + prng.randrange(15))
                    ]
                    values_by.append(values)
                    batches.append(
                        pb.ProduceRequest(topic="mcrash", partition=part, records=records(values))
                    )
                for values in values_by:
                    log.sending(values)
                try:
                    resp = s.MultiProduce(
                        pb.MultiProduceRequest(acks=ALL, batches=batches), timeout=5
                    )
                except grpc.RpcError:
                    return
                for part, values, r in zip(parts, values_by, resp.results, strict=True):
                    if r.status.code == code_pb2.OK:
                        log.acknowledged(part, pid, r.base_offset, values)
                first_ack.set()
                n += 1

    kill9_rounds(data, rounds, PRODUCERS, producer, random.Random(seed))
    verify_after_restart(data, "mcrash", PARTITIONS, log, rounds)


@pytest.mark.timeout(120)
def test_kill9_keeps_every_acked_multi_produce_record_seeded(tmp_path: Path) -> None:
    """Three seeded kill -9 rounds under MultiProduce acks=ALL load lose no acked record."""
    _run(tmp_path, rounds=3, seed=int(os.environ.get("LOGSTORE_CRASH_SEED", "12")))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill9_keeps_every_acked_multi_produce_record(tmp_path: Path) -> None:
    """Sixteen kill -9 rounds (random seed) under MultiProduce acks=ALL load."""
    _run(
        tmp_path,
        rounds=16,
        seed=int(os.environ.get("LOGSTORE_CRASH_SEED", time.time_ns() % 1_000_000)),
    )
