"""kill -9 under acks=ALL load: every acknowledged record survives exactly once, in order.

kill -9 keeps the page cache, so this proves the broker's recovery path
(torn tails, checkpoints, offsets) and that an ack is only sent for a stored
record; the simulated-disk power-cut tests of storage are what prove fsync.
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

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import ALL, connect, create_topic, fetch_all, produce

ROUNDS = 24
PRODUCERS = 4
PARTITIONS = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_keeps_every_acked_record(tmp_path: Path) -> None:
    """After 24 kill -9s under acks=ALL load: each acked record once, in order, contiguous."""
    seed = int(os.environ.get("LOGSTORE_CRASH_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed={seed} (rerun with LOGSTORE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    data = tmp_path / "data"
    # (partition, producer) -> acked (offset, value) in send order
    acked: dict[tuple[int, int], list[tuple[int, bytes]]] = defaultdict(list)
    sent: set[bytes] = set()
    lock = threading.Lock()
    b = start_broker(data)
    with connect(b) as s:
        create_topic(s, "crash", partitions=PARTITIONS)
    b.stop()
    for rnd in range(ROUNDS):
        b = start_broker(data)
        stop = threading.Event()
        first_ack = threading.Event()

        def producer(
            pid: int,
            broker_address: str,
            stop: threading.Event,
            first_ack: threading.Event,
            rnd: int,
        ) -> None:
            part = pid % PARTITIONS
            n = 0
            with connect(broker_address) as s:
                while not stop.is_set():
                    size = 1 + (n * 7 + pid) % 20
                    values = [f"r{rnd}-p{pid}-{n}-{i}".encode() * 3 for i in range(size)]
                    with lock:
                        sent.update(values)
                    try:
                        r = produce(s, "crash", values, partition=part, acks=ALL, timeout=5)
                    except grpc.RpcError:
                        return
                    with lock:
                        acked[(part, pid)].extend(
                            (r.base_offset + i, v) for i, v in enumerate(values)
                        )
                    first_ack.set()
                    n += 1

        threads = [
            threading.Thread(target=producer, args=(p, b.grpc_address, stop, first_ack, rnd))
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
                stored = fetch_all(s, "crash", part)
                offsets = [o for o, _ in stored]
                assert offsets == list(range(len(stored))), f"offsets not contiguous in {part}"
                values = [v for _, v in stored]
                assert len(values) == len(set(values)), f"duplicated record in partition {part}"
                assert set(values) <= sent
                at = dict(stored)
                for (p, _pid), records in acked.items():
                    if p != part:
                        continue
                    for off, v in records:
                        assert at.get(off) == v, f"acked record lost: {v!r} at {part}/{off}"
                    assert [o for o, _ in records] == sorted(o for o, _ in records)
            total = sum(len(v) for v in acked.values())
            print(f"{total} acked records verified after {ROUNDS} kill -9 rounds")
            assert total > 0
            s.ListTopics(pb.ListTopicsRequest(), timeout=10)
    finally:
        assert b.stop() == 0
