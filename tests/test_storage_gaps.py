"""Logs whose offsets have gaps (within format-2 batches and between batches
and segments), built through ``Store.append_frames``: reads from every offset,
time search, truncation, deletion, and reopen after a clean close, a kill -9
and a power cut (the simulated disk) all see the kept offsets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from logstore import Store
from logstore.errors import InvalidBatchError
from logstore.wire import Record, build_offset_frame, encode_frame, encode_values
from tests.simdisk import SimDisk

ROOT = "/data"
T0 = 1_700_000_000_000


def _gappy_frames() -> tuple[bytes, dict[int, tuple[bytes, int]], int]:
    """A run of frames with gaps, the records it holds {offset: (value, ts)} and
    its end offset. Every batch is ~300 B, so a 1 KiB segment rolls often."""
    frames = []
    kept: dict[int, tuple[bytes, int]] = {}
    base = 0
    for k in range(12):
        ts = T0 + 1000 * k
        if k % 3 == 2:  # format 1 after a gap of k offsets
            values = [f"f1-{k}-{i}".encode() * 20 for i in range(3)]
            base += k
            frames.append(encode_frame(encode_values(values), 3, base, ts))
            for i, v in enumerate(values):
                kept[base + i] = (v, ts)
            base += 3
        else:  # format 2: records 0, 2, 5 of 8 offsets (last offset kept past them)
            offsets = [base, base + 2, base + 5]
            recs = [(o, Record(f"f2-{k}-{o}".encode() * 20)) for o in offsets]
            frames.append(build_offset_frame(base, recs, ts, last_offset=base + 7))
            for o, r in recs:
                assert r.value is not None
                kept[o] = (r.value, ts)
            base += 8
    return b"".join(frames), kept, base


def _check_reads(store: Store, kept: dict[int, tuple[bytes, int]], start: int, end: int) -> None:
    """A read from every offset (removed ones too) returns the records after it."""
    offsets = sorted(o for o in kept if o >= start)
    for offset in range(start, end + 1):
        want = [o for o in offsets if o >= offset]
        recs = store.read("t", 0, offset, max_bytes=1)  # the first batch only
        cols = store.read_columns("t", 0, offset, max_bytes=1)
        assert cols.to_records() == recs
        if not want:
            assert recs == []
            continue
        assert recs and recs[0].offset == want[0], (offset, recs[:1], want[0])
        got = _read_all(store, offset, end)
        assert [r.offset for r in got] == want
        assert [(r.value, r.timestamp_ms) for r in got] == [kept[o] for o in want]
        frames = store.read_frames("t", 0, offset, 1 << 20)
        assert offset < frames.next_offset <= end


def _read_all(store: Store, offset: int, end: int) -> list[Record]:
    """Every record from ``offset`` on (a read stops at a segment's end)."""
    out: list[Record] = []
    while offset < end:
        recs = store.read("t", 0, offset, max_bytes=1 << 20)
        if not recs:
            break
        out += recs
        offset = recs[-1].offset + 1
    return out


def _open(path: str | Path, fs: SimDisk | None = None) -> Store:
    return Store.open(path, fs=fs) if fs is not None else Store.open(path)


def test_gaps_read_from_every_offset_and_survive_a_clean_reopen(tmp_path: Path) -> None:
    """Records keep their offsets across rolls and a clean reopen; the log end is the
    last batch's next offset and appends continue from it."""
    run, kept, end = _gappy_frames()
    with Store.open(tmp_path) as store:
        store.create_topic("t", config={"segment_bytes": 1024, "index_interval_bytes": 100})
        assert store.append_frames("t", 0, run) == end
        assert len(store.partition("t", 0).segments) > 3
        assert store.offsets("t", 0) == (0, end)
        _check_reads(store, kept, 0, end)
    with Store.open(tmp_path) as store:
        assert store.offsets("t", 0) == (0, end)
        _check_reads(store, kept, 0, end)
        assert store.append("t", 0, [b"next"]) == end
        kept[end] = (b"next", store.read("t", 0, end)[0].timestamp_ms)
        end += 1
    with Store.open(tmp_path) as store:
        _check_reads(store, kept, 0, end)


@pytest.mark.parametrize("how", ["kill", "power_cut"])
def test_gaps_survive_a_kill_and_a_power_cut(how: str) -> None:
    """After kill -9 (page cache kept) or a power cut after a flush, recovery scans the
    frames with gaps, keeps every one and truncates nothing."""
    disk = SimDisk(seed=0)
    disk.mkdir(ROOT)
    disk.fsync_dir("/")
    run, kept, end = _gappy_frames()
    store = Store.open(ROOT, fs=disk)
    store.create_topic("t", config={"segment_bytes": 1024, "index_interval_bytes": 100})
    store.append("t", 0, [b"first"], timestamp_ms=T0 - 1)
    store.flush()  # the recovery point inside the log: recovery scans the gaps after it
    store.append_frames("t", 0, encode_frame(encode_values([b"x"]), 1, 3, T0 - 1))
    _, mid = store.offsets("t", 0)
    shifted = b"".join(
        build_offset_frame(
            o + mid,
            [(o + mid, Record(v))],
            ts,
        )
        for o, (v, ts) in sorted(kept.items())[:3]
    )
    store.append_frames("t", 0, shifted + _shift(run, mid + 10))
    expect = {0: (b"first", T0 - 1), 3: (b"x", T0 - 1)}
    expect.update({o + mid: vt for o, vt in sorted(kept.items())[:3]})
    expect.update({o + mid + 10: vt for o, vt in kept.items()})
    final = mid + 10 + end
    assert store.offsets("t", 0) == (0, final)
    if how == "kill":
        after = disk.process_crash()
    else:
        store.flush()
        after = disk.power_cut(random.Random(1), torn=0.5)
    store = Store.open(ROOT, fs=after)
    assert store.offsets("t", 0) == (0, final)
    _check_reads(store, expect, 0, final)
    store.close()


def _shift(run: bytes, by: int) -> bytes:
    """The same frames ``by`` offsets later (the base offset is not covered by the CRC)."""
    from logstore.wire import decode_header, patch_base_offset

    out = bytearray(run)
    pos = 0
    while pos < len(out):
        h = decode_header(out, pos)
        head = bytearray(out[pos : pos + 20])
        patch_base_offset(head, h.base_offset + by)
        out[pos : pos + 20] = head
        pos += h.frame_size
    return bytes(out)


def test_time_search_truncate_and_delete_records_with_gaps(tmp_path: Path) -> None:
    """offset_for_time answers a kept record; truncate_to in a gap ends the log where
    the last kept frame ends; delete_records into a gap reads from the next record."""
    run, kept, _end = _gappy_frames()
    with Store.open(tmp_path) as store:
        store.create_topic("t", config={"segment_bytes": 1024, "index_interval_bytes": 100})
        store.append_frames("t", 0, run)
        for k in range(12):
            first = min(o for o, (_v, ts) in kept.items() if ts >= T0 + 1000 * k)
            assert store.offset_for_time("t", 0, T0 + 1000 * k - 500).offset == first
        assert store.offset_for_time("t", 0, T0 + 12_000) is None
        # batch 0 is offsets 0..7 with records 0, 2, 5; batch 1 is 8..15
        assert store.delete_records("t", 0, 6) == 6
        assert store.read("t", 0, 6)[0].offset == 8
        assert store.offset_for_time("t", 0, 0).offset == 8
        # batch 2 (format 1) is 18..20 after a gap of 2: 17 is in the gap, so the
        # log ends where batch 1 (8..15) ends
        store.partition("t", 0).truncate_to(17)
        log_end = store.offsets("t", 0)[1]
        assert log_end == 16
        assert [r.offset for r in _read_all(store, 6, log_end)] == [8, 10, 13]
    with Store.open(tmp_path) as store:
        assert store.offsets("t", 0) == (6, log_end)


def test_append_frames_rejects_overlaps_and_bad_crcs(tmp_path: Path) -> None:
    """A frame below the log end, overlapping its predecessor, or with a bad CRC is
    InvalidBatchError and nothing is written."""
    with Store.open(tmp_path) as store:
        store.create_topic("t")
        store.append("t", 0, [b"a", b"b"])
        with pytest.raises(InvalidBatchError, match="below the log end"):
            store.append_frames("t", 0, encode_frame(encode_values([b"c"]), 1, 1, 1))
        good = encode_frame(encode_values([b"c"]), 1, 5, 1)
        with pytest.raises(InvalidBatchError, match="below the log end"):
            store.append_frames("t", 0, good + good)
        bad = bytearray(good)
        bad[-1] ^= 1
        with pytest.raises(InvalidBatchError, match="CRC"):
            store.append_frames("t", 0, bytes(bad))
        assert store.offsets("t", 0) == (0, 2)
        assert store.append_frames("t", 0, good) == 6
        assert [r.offset for r in store.read("t", 0, 0)] == [0, 1, 5]
        assert store.read("t", 0, 2)[0].offset == 5
