"""The kill -9 loop and the check after it, shared by the broker crash tests
(``test_broker_crash.py``: unary Produce; ``test_broker_crash_multi.py``:
MultiProduce). Each test brings only its producer: what it sends and how it
tells an acknowledged batch.

:func:`kill9_rounds` starts the broker on one data directory ``rounds``
times, runs the producers until one acknowledgement has arrived, waits a
random 0-250 ms (the test's seeded ``rng``) and kills the broker with
SIGKILL mid-load. :func:`verify_after_restart` then starts it once more and
checks, for every partition: offsets contiguous from 0, no record twice,
nothing stored that was never sent, every acknowledged record at the offset
its acknowledgement gave, and each producer's acknowledged offsets in the
order it sent them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.test_broker_helpers import connect, fetch_all

#: A producer thread's body: ``(producer number, broker address, round,
#: stop, first_ack)``; it sends until ``stop`` is set or the broker is gone
#: (an RpcError: return), sets ``first_ack`` after each acknowledgement and
#: records what it sends and what was acknowledged in the :class:`CrashLog`.
Producer = Callable[[int, str, int, threading.Event, threading.Event], None]


class CrashLog:
    """What the producers sent and what the broker acknowledged (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: set[bytes] = set()
        #: (partition, producer) -> acknowledged (offset, value), in send order
        self.acked: dict[tuple[int, int], list[tuple[int, bytes]]] = defaultdict(list)

    def sending(self, values: list[bytes]) -> None:
        """Before the request goes out: these may be stored from now on."""
        with self._lock:
            self.sent.update(values)

    def acknowledged(
        self, partition: int, producer: int, base_offset: int, values: list[bytes]
    ) -> None:
        """A batch the broker acknowledged at ``base_offset``."""
        with self._lock:
            self.acked[(partition, producer)].extend(
                (base_offset + i, v) for i, v in enumerate(values)
            )


def kill9_rounds(
    data: Path, rounds: int, producers: int, producer: Producer, rng: random.Random
) -> None:
    """``rounds`` times: start the broker, run ``producers`` threads of
    ``producer`` until the first acknowledgement, wait 0-250 ms, kill -9."""
    for rnd in range(rounds):
        b = start_broker(data)
        stop = threading.Event()
        first_ack = threading.Event()
        threads = [
            threading.Thread(target=producer, args=(p, b.grpc_address, rnd, stop, first_ack))
            for p in range(producers)
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


def verify_after_restart(
    data: Path, topic: str, partitions: int, log: CrashLog, rounds: int
) -> int:
    """Restart the broker and check every partition of ``topic`` against
    ``log`` (see the module docstring); return the acknowledged records checked."""
    b = start_broker(data)
    try:
        with connect(b) as s:
            for part in range(partitions):
                stored = fetch_all(s, topic, part)
                offsets = [o for o, _ in stored]
                assert offsets == list(range(len(stored))), f"offsets not contiguous in {part}"
                values = [v for _, v in stored]
                assert len(values) == len(set(values)), f"duplicated record in partition {part}"
                assert set(values) <= log.sent
                at = dict(stored)
                for (p, _producer), acked in log.acked.items():
                    if p != part:
                        continue
                    for off, v in acked:
                        assert at.get(off) == v, f"acked record lost: {v!r} at {part}/{off}"
                    assert [o for o, _ in acked] == sorted(o for o, _ in acked)
            total = sum(len(v) for v in log.acked.values())
            print(f"{total} acked records verified after {rounds} kill -9 rounds")
            assert total > 0
            s.ListTopics(pb.ListTopicsRequest(), timeout=10)
    finally:
        assert b.stop() == 0
    return total
