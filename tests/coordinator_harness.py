"""A coordinator plus the log it would append to, for the coordinator tests.

Every result is appended to ``log`` and replayed, and after each step a fresh
``Coordinator.load`` of the log (and of the log as compaction would leave it)
must equal the live state.
"""

from __future__ import annotations

import itertools
from typing import Any, TypeVar

from logstore.coordinator import Coordinator, CoordinatorRecord, GroupConfig, Result, decode, encode

T = TypeVar("T")

TEST_CONFIG = GroupConfig(
    heartbeat_interval_ms=100,
    session_timeout_ms=1_000,
    min_session_timeout_ms=100,
    rebalance_timeout_ms=2_000,
    offsets_retention_ms=10_000,
)


def compacted(log: list[CoordinatorRecord]) -> list[CoordinatorRecord]:
    """What log compaction keeps: the latest record per key, tombstones dropped."""
    latest: dict[Any, tuple[int, CoordinatorRecord]] = {}
    for i, r in enumerate(log):
        latest[encode(r)[0]] = (i, r)
    return [r for _, r in sorted(latest.values(), key=lambda x: x[0]) if r.value is not None]


class Harness:
    def __init__(
        self, topics: dict[str, int] | None = None, config: GroupConfig = TEST_CONFIG
    ) -> None:
        self.topics = dict(topics or {})
        self.config = config
        counter = itertools.count(1)
        self.ids = lambda: f"m{next(counter)}"
        self.coord = Coordinator(config, self.topics, self.ids)
        self.log: list[CoordinatorRecord] = []

    def run(self, result: Result[T]) -> T:
        """Append (through the byte encoding) and replay, then check replay."""
        for r in result.records:
            key, value = encode(r)
            r2 = decode(key, value)
            assert r2 == r
            self.log.append(r2)
        reply = self.coord.apply(result)
        self.check_replay()
        return reply

    def records(self, records: tuple[CoordinatorRecord, ...]) -> None:
        self.run(Result(records, None))

    def check_replay(self) -> None:
        live = self.coord.snapshot()
        assert Coordinator.load(self.log, config=self.config, topics=self.topics).snapshot() == live
        assert (
            Coordinator.load(compacted(self.log), config=self.config, topics=self.topics).snapshot()
            == live
        )

    def restart(self, now_ms: int) -> None:
        """A broker restart: a new coordinator replayed from the log."""
        self.coord = Coordinator.load(
            self.log, config=self.config, topics=self.topics, now_ms=now_ms, id_factory=self.ids
        )

    def metadata(self, topics: dict[str, int], now_ms: int) -> None:
        self.topics = dict(topics)
        self.run(self.coord.on_metadata(topics, now_ms=now_ms))
