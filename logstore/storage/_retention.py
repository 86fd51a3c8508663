"""Retention: which of a partition's oldest segments may be deleted.

Only whole sealed segments go (never the active one, so a partition always
keeps its log end offset), oldest first, while either rule holds for the
oldest one left:

- time: ``retention_ms >= 0`` and the segment's newest timestamp is more than
  ``retention_ms`` before ``now_ms`` (a segment with no timestamp, -1, is
  kept);
- size: ``retention_bytes >= 0`` and the partition without it is still at
  least ``retention_bytes`` big.

The decision is all this module does; the partition moves its log start
offset to the first segment kept, then deletes the others (so a reader never
finds an offset above the start in no segment). The only I/O is
``Segment.ensure_indexes`` (a sealed segment's max timestamp comes from its
time index, checked on first use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from logstore.config import TopicConfig

if TYPE_CHECKING:
    from ._segment import Segment


def expired_prefix(segments: Sequence[Segment], config: TopicConfig, now_ms: int) -> int:
    """How many of the oldest segments retention deletes (0..len - 1)."""
    n = 0
    total: int = sum(s.size for s in segments)
    while n < len(segments) - 1:
        seg = segments[n]
        if config.retention_ms >= 0:
            seg.ensure_indexes()  # its max timestamp comes from the time index
        by_time = (
            config.retention_ms >= 0
            and seg.max_timestamp_ms >= 0
            and now_ms - seg.max_timestamp_ms > config.retention_ms
        )
        by_size = config.retention_bytes >= 0 and total - seg.size >= config.retention_bytes
        if not (by_time or by_size):
            break
        total -= seg.size
        n += 1
    return n
