"""kill -9 under acks=ALL MultiProduce load: every record a MultiProduce result
acknowledged survives exactly once, in order, in every partition.

Each producer sends MultiProduce requests carrying one batch for each of
several partitions (sometimes two for one partition); a batch counts as
acknowledged only when its own result is OK. As in test_broker_crash, kill -9
keeps the page cache, so this proves that a multi-partition reply is only
sent for stored batches and that recovery keeps them; the storage power-cut
tests prove the fsync itself.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import ALL, connect, create_topic, fetch_all, records

PRODUCERS = 3
PARTITIONS = 6


def _run(tmp_path: Path, rounds: int, seed: int) -> None:
    print(f"multi crash test seed={seed} (rerun with LOGSTORE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    data = tmp_path / "data"
    acked: dict[int, list[tuple[int, bytes]]] = defaultdict(list)  # partition -> acked
    sent: set[bytes] = set()
    lock = threading.Lock()
    b = start_broker(data)
    with connect(b) as s:
        create_topic(s, "mcrash", partitions=PARTITIONS, segment_bytes="65536")
    b.stop()
    for rnd in range(rounds):
        b = start_broker(data)
        stop = threading.Event()
        first_ack = threading.Event()

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
                            pb.ProduceRequest(
                                topic="mcrash", partition=part, records=records(values)
                            )
                        )
                    with lock:
                        for values in values_by:
                            sent.update(values)
                    try:
                        resp = s.MultiProduce(
                            pb.MultiProduceRequest(acks=ALL, batches=batches), timeout=5
                        )
                    except grpc.RpcError:
                        return
                    with lock:
                        for part, values, r in zip(parts, values_by, resp.results, strict=True):
                            if r.status.code == code_pb2.OK:
                                acked[part].extend(
                                    (r.base_offset + i, v) for i, v in enumerate(values)
                                )
                    first_ack.set()
                    n += 1

        threads = [
            threading.Thread(target=producer, args=(p, b.grpc_address, rnd, stop, first_ack))
            for p in range(PRODUCERS)
        ]
        for t in threads:
            t.start()
        assert first_ack.wait(20), "no acknowledgement within 20 s"
        time.sleep(rng.uniform(0, 0.25))
        b.kill()
        stop.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()

    b = start_broker(data)
    try:
        with connect(b) as s:
            for part in range(PARTITIONS):
                stored = fetch_all(s, "mcrash", part)
                offsets = [o for o, _ in stored]
                assert offsets == list(range(len(stored))), f"offsets not contiguous in {part}"
                values = [v for _, v in stored]
                assert len(values) == len(set(values)), f"duplicated record in partition {part}"
                assert set(values) <= sent
                at = dict(stored)
                for off, v in acked[part]:
                    assert at.get(off) == v, f"acked record lost: {v!r} at {part}/{off}"
            total = sum(len(v) for v in acked.values())
            print(f"{total} acked records verified after {rounds} kill -9 rounds")
            assert total > 0
    finally:
        assert b.stop() == 0


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
