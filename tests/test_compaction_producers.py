"""Compaction keeps each idempotent producer's last batch (as an empty batch when every
record of it was superseded), so the producer state rebuilt from a compacted log still
answers a retry of that batch as a duplicate."""

from __future__ import annotations

import pytest

from logstore import Store
from logstore.config import StoreConfig
from logstore.errors import InvalidBatchError
from logstore.wire import (
    Record,
    build_head,
    build_offset_frame,
    check_crc,
    decode_objects,
    encode_records,
    stored_frames,
)
from tests.storagehelp import ROOT, sim_disk

COMPACT = {"cleanup_policy": "compact", "segment_bytes": 400, "delete_retention_ms": 0}


def _values(store: Store) -> dict[bytes, bytes | None]:
    start, end = store.offsets("c", 0)
    out: dict[bytes, bytes | None] = {}
    while start < end:
        recs = store.read("c", 0, start)
        if not recs:
            break
        for r in recs:
            assert r.key is not None
            out[r.key] = r.value
        start = recs[-1].offset + 1
    return out


def test_retry_of_last_batch_deduped_after_restart_over_compacted_log() -> None:
    """An idempotent producer's records are all superseded by another producer and
    cleaned away; after a restart that rebuilds producer state from the log (its
    snapshots unreadable), a retry of its last batch is a duplicate with the original
    offset, nothing is appended, and every key keeps its latest value."""
    disk = sim_disk()
    store = Store.open(ROOT, StoreConfig(), fs=disk)
    store.create_topic("c", 1, COMPACT)
    pid, epoch = store.init_producer()
    first, n1, _ = encode_records([Record(b"p-a", key=b"a"), Record(b"p-b", key=b"b")])
    last, n2, _ = encode_records([Record(b"p-c", key=b"c")])
    store.append_raw("c", 0, first, n1, producer_id=pid, producer_epoch=epoch, base_sequence=0)
    res = store.append_raw("c", 0, last, n2, producer_id=pid, producer_epoch=epoch, base_sequence=2)
    for i in range(30):  # another writer supersedes a, b, c and fills segments
        store.append(
            "c", 0, [Record(f"new-{k}-{i}".encode() * 4, key=k) for k in (b"a", b"b", b"c")]
        )
    store.partition("c", 0).roll()
    want = _values(store)
    assert store.clean(force=True) == 1
    assert _values(store) == want
    start = store.offsets("c", 0)[0]
    frames = stored_frames(store.read_frames("c", 0, start, 1 << 20).data).frames
    kept = [h for _p, h in frames if h.producer_id == pid]
    # Only its last batch is left, with no record, its sequence fields intact.
    assert [
        (h.base_offset, h.record_count, h.base_sequence, h.last_offset_delta) for h in kept
    ] == [(res.base_offset, 0, 2, 0)]
    store.close()
    directory = f"{ROOT}/c-0"
    for name in disk.listdir(directory):
        if name.endswith(".snapshot"):
            disk.write_file(f"{directory}/{name}", b"{not json")
    store = Store.open(ROOT, StoreConfig(), fs=disk)
    end = store.offsets("c", 0)[1]
    again = store.append_raw(
        "c", 0, last, n2, producer_id=pid, producer_epoch=epoch, base_sequence=2
    )
    assert again.duplicate and again.base_offset == res.base_offset
    assert store.offsets("c", 0)[1] == end
    assert _values(store) == want
    store.close()


def test_empty_batch_only_in_format_2() -> None:
    """A format-2 batch may hold no record (it parses, CRC-checks and decodes to nothing,
    keeping its end offset); a format-1 head with no record is still refused."""
    frame = build_offset_frame(10, [], 5, last_offset=14, producer_id=7, base_sequence=3)
    ((pos, h),) = stored_frames(frame).frames
    check_crc(frame[pos : pos + h.frame_size], h)
    assert (h.record_count, h.next_offset, h.producer_id) == (0, 15, 7)
    assert decode_objects(stored_frames(frame), 0) == []
    with pytest.raises(InvalidBatchError):
        build_head(0, 0, 5, 5)
    with pytest.raises(InvalidBatchError):
        build_offset_frame(10, [], 5)  # no records and no end offset
