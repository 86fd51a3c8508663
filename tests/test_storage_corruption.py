"""Corrupt-then-recover tests on real files (DESIGN.md, "Recovery and corruption").

Each test builds a data directory in ``tmp_path`` with the real I/O seam, then
damages it the way a crash or a bad disk would: a byte flipped or a frame cut
at a random position *after* the recovery point (a torn tail: truncated to the
longest valid prefix, one WARN line) or *before* it (corruption: reported on
read as CorruptRecordError, nothing truncated, the rest still serves), or an
index file deleted, emptied, truncated or overwritten (lookups still right).

An unclean shutdown is simulated in-process: the store is abandoned without
``close()`` (the page cache keeps everything written, as after kill -9) and
its directory lock is released. Random positions come from seeded RNGs; the
seed is in the test id.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from logstore.config import StoreConfig
from logstore.errors import CorruptRecordError
from logstore.storage._fs import FileSystem
from logstore.wire import FrameHeader, decode_header

TOPIC = "t"
CONFIG = StoreConfig(recovery_checkpoint_interval_ms=0)
TS0 = 1_700_000_000_000


class CrashFS(FileSystem):
    """The real seam, remembering descriptors so a test can 'crash' a store."""

    def __init__(self) -> None:
        self.fds: set[int] = set()
        self.lock_fds: list[int] = []

    def open(self, path: str, *, create: bool = False) -> int:
        fd = super().open(path, create=create)
        self.fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.discard(fd)
        super().close(fd)

    def lock(self, path: str) -> int:
        fd = super().lock(path)
        self.lock_fds.append(fd)
        return fd

    def crash(self) -> None:
        """Release the lock as the kernel does when the process dies."""
        for fd in self.lock_fds:
            self.unlock(fd)
        self.lock_fds.clear()

    def release(self) -> None:
        for fd in list(self.fds):
            self.close(fd)


@dataclass
class Written:
    """What a test appended to one partition: values per offset, timestamps per offset."""

    values: list[bytes]
    timestamps: list[int]


class Harness:
    """Opens stores on one directory; crashed stores are kept (never closed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.crashed: list[tuple[Any, CrashFS]] = []
        self.store: Any = None
        self.fs: CrashFS | None = None

    def open(self, config: StoreConfig = CONFIG) -> Any:
        from logstore.storage import Store

        self.fs = CrashFS()
        self.store = Store.open(self.root, config, fs=self.fs)
        return self.store

    def crash(self) -> None:
        assert self.fs is not None
        self.fs.crash()
        self.crashed.append((self.store, self.fs))
        self.store = self.fs = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def cleanup(self) -> None:
        self.close()
        for _store, fs in self.crashed:
            fs.release()
        self.crashed.clear()

    def part_dir(self, partition: int) -> Path:
        return self.root / f"{TOPIC}-{partition}"

    def recovery_point(self, partition: int) -> int:
        text = (self.root / "recovery-point-offset-checkpoint").read_text().splitlines()
        for line in text[2:]:
            t, p, o = line.split(" ")
            if (t, int(p)) == (TOPIC, partition):
                return int(o)
        return 0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "data")
    try:
        yield h
    finally:
        h.cleanup()


def frames_on_disk(part_dir: Path) -> list[tuple[Path, int, FrameHeader]]:
    """Every frame of every segment file: (log path, byte position, header)."""
    out = []
    for log in sorted(part_dir.glob("*.log")):
        data = log.read_bytes()
        pos = 0
        while pos < len(data):
            h = decode_header(data, pos)
            out.append((log, pos, h))
            pos += h.frame_size
    return out


def append_batches(store: Any, partition: int, w: Written, n: int, rng: random.Random) -> None:
    """Append ``n`` batches of 1-4 records with distinct values and timestamps."""
    for _ in range(n):
        count = rng.randint(1, 4)
        ts = TS0 + len(w.values) * 10 + rng.randint(-15, 0)
        vals = [
            f"p{partition}-o{len(w.values) + i}-".encode() + rng.randbytes(rng.randint(0, 120))
            for i in range(count)
        ]
        base = store.append(TOPIC, partition, vals, timestamp_ms=ts)
        assert base == len(w.values)
        w.values += vals
        w.timestamps += [ts] * count


def check_reads(
    store: Any, partition: int, w: Written, start: int, end: int, *, bulk: bool = True
) -> None:
    """Offsets [start, end) read back exactly, one batch at a time (and in bulk)."""
    off = start
    while off < end:
        recs = store.read(TOPIC, partition, off, max_bytes=1)
        assert recs and recs[0].offset == off
        for r in recs:
            assert r.value == w.values[r.offset] and r.timestamp_ms == w.timestamps[r.offset]
        off = recs[-1].offset + 1
    assert off == end
    if not bulk:
        return
    got: list[bytes] = []
    while start + len(got) < end:  # a read may stop at a segment's end
        recs = store.read(TOPIC, partition, start + len(got), max_bytes=1 << 22)
        assert recs
        got += [r.value for r in recs]
    assert got[: end - start] == w.values[start:end]


def setup_two_partitions(
    harness: Harness, rng: random.Random, segment_bytes: int, flushed: int, unflushed: int
) -> tuple[Written, Written]:
    """Partition 0 and 1 with ``flushed`` batches flushed, then ``unflushed`` more."""
    store = harness.open()
    store.create_topic(
        TOPIC,
        partitions=2,
        config={"segment_bytes": segment_bytes, "index_interval_bytes": 0, "retention_ms": -1},
    )
    w0, w1 = Written([], []), Written([], [])
    append_batches(store, 0, w0, flushed, rng)
    append_batches(store, 1, w1, flushed, rng)
    store.flush()
    append_batches(store, 0, w0, unflushed, rng)
    append_batches(store, 1, w1, unflushed, rng)
    return w0, w1


def damage(path: Path, pos: int, kind: str, rng: random.Random) -> None:
    """Flip one byte at ``pos`` (``flip``) or cut the file there (``cut``)."""
    if kind == "cut":
        os.truncate(path, pos)
    else:
        with open(path, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ rng.randint(1, 255)]))


@pytest.mark.parametrize("kind", ["cut", "flip"])
@pytest.mark.parametrize("seed", range(6))
def test_torn_tail_after_recovery_point_is_truncated(
    harness: Harness, caplog: pytest.LogCaptureFixture, kind: str, seed: int
) -> None:
    """Damage after the recovery point is a torn tail: cut to the longest valid prefix, WARN."""
    rng = random.Random(seed)
    w0, w1 = setup_two_partitions(harness, rng, segment_bytes=2048, flushed=8, unflushed=30)
    harness.crash()
    rp = harness.recovery_point(0)
    assert rp > 0, "flush() must advance the recovery point (interval 0)"
    after = [
        (p, pos, h) for p, pos, h in frames_on_disk(harness.part_dir(0)) if h.base_offset >= rp
    ]
    assert len(after) > 5, "the test needs unflushed frames after the recovery point"
    path, fpos, h = rng.choice(after)
    at = fpos + rng.randrange(h.frame_size)
    damage(path, at, kind, rng)
    expected_end = h.base_offset  # the damaged frame and everything after it go
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logstore"):
        store = harness.open()
    assert store.offsets(TOPIC, 0) == (0, expected_end)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("t-0" in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]
    for log in harness.part_dir(0).glob("*.log"):
        assert int(log.stem) <= expected_end, f"segment {log.name} after the torn tail survived"
    check_reads(store, 0, w0, 0, expected_end)
    assert store.offsets(TOPIC, 1) == (0, len(w1.values))
    check_reads(store, 1, w1, 0, len(w1.values))
    # offsets after the cut are reused by new appends only because they were
    # never acknowledged durable; the recovery point is never gone below
    assert expected_end >= rp
    w0.values, w0.timestamps = w0.values[:expected_end], w0.timestamps[:expected_end]
    append_batches(store, 0, w0, 3, rng)
    harness.close()
    store = harness.open()
    check_reads(store, 0, w0, 0, len(w0.values))


@pytest.mark.parametrize(("kind", "at"), [("cut", 0), ("cut", 30), ("cut", 71), ("flip", 3)])
def test_torn_frame_right_after_recovery_point(
    harness: Harness, caplog: pytest.LogCaptureFixture, kind: str, at: int
) -> None:
    """A torn first frame after the recovery point is a torn tail, not corruption."""
    rng = random.Random(7)
    w0, _w1 = setup_two_partitions(harness, rng, segment_bytes=1 << 20, flushed=5, unflushed=3)
    harness.crash()
    rp = harness.recovery_point(0)
    path, fpos, _h = next(f for f in frames_on_disk(harness.part_dir(0)) if f[2].base_offset == rp)
    damage(path, fpos + at, kind, rng)
    with caplog.at_level(logging.WARNING, logger="logstore"):
        store = harness.open()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert store.offsets(TOPIC, 0) == (0, rp)
    check_reads(store, 0, w0, 0, rp)
    w0.values, w0.timestamps = w0.values[:rp], w0.timestamps[:rp]
    append_batches(store, 0, w0, 3, rng)  # appends continue where the torn frame was
    check_reads(store, 0, w0, 0, len(w0.values))


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
@pytest.mark.parametrize("seed", range(5))
def test_flipped_byte_before_recovery_point_is_reported_not_truncated(
    harness: Harness, shutdown: str, seed: int
) -> None:
    """A bad frame before the recovery point reads as CorruptRecordError; the rest serves."""
    rng = random.Random(100 + seed)
    w0, w1 = setup_two_partitions(harness, rng, segment_bytes=2048, flushed=30, unflushed=0)
    harness.store.flush()
    end0 = len(w0.values)
    if shutdown == "clean":
        harness.close()
    else:
        harness.crash()
    assert harness.recovery_point(0) == end0
    frames = frames_on_disk(harness.part_dir(0))
    path, fpos, bad = rng.choice(frames)
    damage(path, fpos + rng.randrange(bad.frame_size), "flip", rng)
    store = harness.open()
    assert store.offsets(TOPIC, 0) == (0, end0), "corruption must not truncate the log"
    for _p, _pos, h in frames:
        if h is bad:
            for off in (h.base_offset, h.next_offset - 1):
                with pytest.raises(CorruptRecordError):
                    store.read(TOPIC, 0, off, max_bytes=1)
        else:
            check_reads(store, 0, w0, h.base_offset, h.next_offset, bulk=False)
    check_reads(store, 1, w1, 0, len(w1.values))
    base = store.append(TOPIC, 0, [b"after"], sync=True)
    assert base == end0
    assert [r.value for r in store.read(TOPIC, 0, base)] == [b"after"]


@pytest.mark.parametrize("seed", range(5))
def test_cut_before_recovery_point_keeps_the_end(harness: Harness, seed: int) -> None:
    """Bytes lost before the recovery point: end kept, lost range corrupt, offsets not reused."""
    rng = random.Random(200 + seed)
    w0, w1 = setup_two_partitions(harness, rng, segment_bytes=2048, flushed=30, unflushed=0)
    end0 = len(w0.values)
    harness.crash()
    assert harness.recovery_point(0) == end0
    frames = frames_on_disk(harness.part_dir(0))
    path, fpos, cut_frame = rng.choice(frames)
    at = fpos + rng.randrange(cut_frame.frame_size)
    damage(path, at, "cut", rng)
    store = harness.open()
    start, end = store.offsets(TOPIC, 0)
    assert (start, end) == (0, end0), "the end must not go below the recovery point"
    lost_from = cut_frame.base_offset
    lost_to = max(h.next_offset for p, _pos, h in frames if p == path)
    for _p, _pos, h in frames:
        if lost_from <= h.base_offset < lost_to:
            with pytest.raises(CorruptRecordError):
                store.read(TOPIC, 0, h.base_offset, max_bytes=1)
        else:
            check_reads(store, 0, w0, h.base_offset, h.next_offset, bulk=False)
    check_reads(store, 1, w1, 0, len(w1.values))
    base = store.append(TOPIC, 0, [b"new"], sync=True)
    assert base == end0
    harness.close()
    store = harness.open()
    assert store.offsets(TOPIC, 0) == (0, end0 + 1)
    assert [r.value for r in store.read(TOPIC, 0, end0)] == [b"new"]


def _break_index(path: Path, how: str, rng: random.Random) -> None:
    if how == "none":  # the control: intact indexes
        return
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "zeros":
        path.write_bytes(bytes(path.stat().st_size or 4096))
    elif how == "truncated":
        size = path.stat().st_size
        os.truncate(path, rng.randrange(size) if size else 0)
    elif how == "garbage":
        path.write_bytes(rng.randbytes(max(path.stat().st_size, 64)))
    else:  # "shuffled": valid-looking entries in the wrong places
        data = path.read_bytes()
        width = 16 if path.suffix == ".timeindex" else 8
        entries = [data[i : i + width] for i in range(0, len(data) - width + 1, width)]
        rng.shuffle(entries)
        path.write_bytes(b"".join(entries))


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
@pytest.mark.parametrize(
    "how", ["none", "delete", "empty", "zeros", "truncated", "garbage", "shuffled"]
)
def test_broken_index_files_lookups_still_right(harness: Harness, shutdown: str, how: str) -> None:
    """Deleted/emptied/zeroed/cut/garbled/shuffled indexes: lookups by offset and time right."""
    rng = random.Random(f"{how}-{shutdown}")
    store = harness.open()
    store.create_topic(
        TOPIC, partitions=1, config={"segment_bytes": 4096, "index_interval_bytes": 100}
    )
    w = Written([], [])
    append_batches(store, 0, w, 60, rng)
    store.flush()
    if shutdown == "clean":
        harness.close()
    else:
        harness.crash()
    indexes = sorted(harness.part_dir(0).glob("*index"))
    assert len(indexes) >= 4
    for path in indexes:
        _break_index(path, how, rng)
    store = harness.open()
    end = len(w.values)
    assert store.offsets(TOPIC, 0) == (0, end)
    for off in range(end):
        recs = store.read(TOPIC, 0, off, max_bytes=1)
        assert recs[0].offset == off and recs[0].value == w.values[off]
    for ts in range(min(w.timestamps) - 5, max(w.timestamps) + 6, 3):
        expected = next((o for o, t in enumerate(w.timestamps) if t >= ts), None)
        found = store.offset_for_time(TOPIC, 0, ts)
        assert (None if found is None else found.offset) == expected, ts
    # and the partition keeps working
    append_batches(store, 0, w, 10, rng)
    check_reads(store, 0, w, 0, len(w.values))
