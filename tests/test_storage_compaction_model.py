"""A Hypothesis state machine for log compaction against a dict model: appends of
keyed records and tombstones, cleans (forced, and tiny key maps for several passes),
reopen, kill -9 and power cut on the simulated disk. After every step, reading the
whole log gives each key's latest record (or, for a removed tombstone, nothing of its
key) at its original offset, in offset order, and every record at or above the highest
cleaned point is intact."""

from __future__ import annotations

import random

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from logstore import Store
from logstore.config import StoreConfig
from logstore.wire import Record
from tests.simdisk import SimDisk
from tests.test_storage_compaction import _check_compacted, _read_all

pytestmark = pytest.mark.timeout(180)

ROOT = "/data"
T0 = 1_700_000_000_000
KEYS = [f"k{i}".encode() for i in range(12)]


class CompactionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk = SimDisk(seed=0)
        self.disk.mkdir(ROOT)
        self.disk.fsync_dir("/")
        self.buffer = 16 << 20
        self.store = self._open()
        self.store.create_topic(
            "c", 1, {"cleanup_policy": "compact", "segment_bytes": 500, "delete_retention_ms": 1000}
        )
        self.appended: dict[int, tuple[bytes, bytes | None]] = {}
        self.intact_from = 0
        self.now = T0
        self.rng = random.Random(0)

    def _open(self) -> Store:
        return Store.open(ROOT, StoreConfig(cleaner_buffer_bytes=self.buffer), fs=self.disk)

    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
        tomb=st.lists(st.booleans(), min_size=4, max_size=4),
        size=st.integers(1, 60),
    )
    def append(self, keys: list[bytes], tomb: list[bool], size: int) -> None:
        self.now += 100
        recs = [
            Record(None if tomb[i] else f"{k.decode()}@{self.now}".encode() * size, key=k)
            for i, k in enumerate(keys)
        ]
        base = self.store.append("c", 0, recs, sync=True, timestamp_ms=self.now)
        for i, r in enumerate(recs):
            assert r.key is not None
            self.appended[base + i] = (r.key, r.value)

    @rule(advance=st.integers(0, 3000), tiny=st.booleans())
    def clean(self, advance: int, tiny: bool) -> None:
        self.now += advance
        if tiny != (self.buffer == 1024):  # a tiny key map: several passes
            self.buffer = 1024 if tiny else 16 << 20
            self.store.close()
            self.store = self._open()
        self.store.clean(self.now, force=True)
        self.intact_from = max(self.intact_from, self.store.partition("c", 0).cleaned_offset)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    @rule()
    def kill(self) -> None:
        self.disk = self.disk.process_crash()
        self.store = self._open()

    @rule(torn=st.sampled_from([0.0, 0.5]))
    def power_cut(self, torn: float) -> None:
        self.disk = self.disk.power_cut(self.rng, torn=torn)
        self.store = self._open()

    @invariant()
    def log_matches_model(self) -> None:
        _check_compacted(_read_all(self.store), self.appended, self.intact_from)

    def teardown(self) -> None:
        self.store.close()


TestCompactionModel = CompactionModel.TestCase
TestCompactionModel.settings = settings(
    settings(),
    max_examples=40,
    stateful_step_count=40,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
