"""kill -9 under acks=ALL load: every acknowledged record survives exactly once, in order.

kill -9 keeps the page cache, so this proves the broker's recovery path
(torn tails, checkpoints, offsets) and that an ack is only sent for a stored
record; the simulated-disk power-cut tests of storage are what prove fsync.
The kill loop and the check are ``tests/_crash_helpers.py``'s (shared with
the MultiProduce crash test).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests._crash_helpers import CrashLog, kill9_rounds, verify_after_restart
from tests.brokerproc import start_broker
from tests.test_broker_helpers import ALL, connect, create_topic, produce

ROUNDS = 24
PRODUCERS = 4
PARTITIONS = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_keeps_every_acked_record(tmp_path: Path) -> None:
    """After 24 kill -9s under acks=ALL load: each acked record once, in order, contiguous."""
    seed = int(os.environ.get("LOGSTORE_CRASH_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed={seed} (rerun with LOGSTORE_CRASH_SEED={seed})")
    data = tmp_path / "data"
    log = CrashLog()
    b = start_broker(data)
    with connect(b) as s:
        create_topic(s, "crash", partitions=PARTITIONS)
    b.stop()

    def producer(
        pid: int, address: str, rnd: int, stop: threading.Event, first_ack: threading.Event
    ) -> None:
        part = pid % PARTITIONS
        n = 0
        with connect(address) as s:
            while not stop.is_set():
                size = 1 + (n * 7 + pid) % 20
                values = [f"r{rnd}-p{pid}-{n}-{i}".encode() * 3 for i in range(size)]
                log.sending(values)
                try:
                    r = produce(s, "crash", values, partition=part, acks=ALL, timeout=5)
                except grpc.RpcError:
                    return
                log.acknowledged(part, pid, r.base_offset, values)
                first_ack.set()
                n += 1

    kill9_rounds(data, ROUNDS, PRODUCERS, producer, random.Random(seed))
    verify_after_restart(data, "crash", PARTITIONS, log, ROUNDS)
