"""High watermark vs log end offset (issue 9, reshape): readers are served up
to the high watermark, appends go to the log end offset.

On one broker the two are equal after every append; the tests lower the high
watermark through the partition's private field (the seam replication will
replace with follower acknowledgements) to show that reads stop there.
"""

from __future__ import annotations

import pytest

from logstore.errors import OffsetOutOfRangeError
from logstore.storage import Store
from tests.simdisk import SimDisk

pytestmark = pytest.mark.timeout(30)


def _store() -> Store:
    disk = SimDisk(seed=0)
    disk.mkdir("/data")
    store = Store.open("/data", fs=disk)
    store.create_topic("t")
    for i in range(5):
        store.append("t", 0, [f"{i}-{j}".encode() for j in range(2)])
    return store


def test_high_watermark_equals_log_end_offset_on_one_broker() -> None:
    """After appends, a reopen and a truncation the high watermark is the log end."""
    store = _store()
    lg = store.partition("t", 0)
    assert lg.high_watermark == lg.log_end_offset == 10
    assert store.high_watermark("t", 0) == 10
    assert store.partition_info("t", 0).high_watermark == 10
    lg.truncate_to(4)
    assert lg.high_watermark == lg.log_end_offset == 4
    assert store.read_frames("t", 0, 0, 1 << 20).high_watermark == 4
    store.close()


def test_reads_are_served_up_to_the_high_watermark_only() -> None:
    """With the high watermark below the log end, reads stop before it, a read at it
    is empty and past it is out of range; appends still go to the log end."""
    store = _store()
    lg = store.partition("t", 0)
    lg._high_watermark = 6  # the seam: records 6..9 written, not committed
    assert [r.offset for r in store.read("t", 0, 0)] == list(range(6))
    res = store.read_frames("t", 0, 4, 1 << 20)
    assert (res.high_watermark, res.next_offset) == (6, 6)
    assert store.read("t", 0, 6) == []
    with pytest.raises(OffsetOutOfRangeError) as exc_info:
        store.read("t", 0, 8)
    assert exc_info.value.log_end_offset == 6
    assert store.offset_for_time("t", 0, 0) == (0, store.read("t", 0, 0)[0].timestamp_ms)
    assert store.append("t", 0, [b"next"]) == 10
    assert lg.high_watermark == 11  # committed on append (one broker)
    store.close()


def test_read_frames_stops_before_the_stop_offset_but_returns_the_first_frame() -> None:
    """With stop_offset, no frame after the first starts at or past it (batches of 2 here),
    the high watermark still bounds it, and the first frame comes even when it holds it."""
    store = _store()
    assert store.read_frames("t", 0, 0, 1 << 20, 5).next_offset == 6  # frames 0-1, 2-3, 4-5
    assert store.read_frames("t", 0, 2, 1 << 20, 4).next_offset == 4
    assert store.read_frames("t", 0, 3, 1 << 20, 3).next_offset == 4  # the first, whole
    assert store.read_frames("t", 0, 0, 1 << 20, 99).next_offset == 10
    whole = store.read_frames("t", 0, 0, 1 << 20)
    assert store.read_frames("t", 0, 0, 1 << 20, 6).data == whole.data[: len(whole.data) * 3 // 5]
    store.close()
