"""Per-principal byte-rate quotas: one token bucket per principal and kind.

Kafka's model: a request is never cut short; its bytes are charged after
the fact, and a principal whose bucket is in debt is refused
(RESOURCE_EXHAUSTED) with a delay of exactly ``debt / rate`` -- the time the
bucket needs to refill to zero, which brings the principal's average back to
its rate. A bucket holds at most ``burst_s`` seconds of rate (1 s), so an
idle principal cannot save up more than one second's worth.

Bounded: at most ``MAX_PRINCIPALS`` buckets per kind; past it the buckets
that are full (a full bucket and a missing one behave the same) are dropped.
Thread-safety: the broker calls this from its event loop only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_PRINCIPALS: Final = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class ByteQuota:
    """One rate (bytes/s) applied to every principal separately."""

    def __init__(
        self,
        rate_bytes_per_s: int,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert rate_bytes_per_s > 0
        self.rate = float(rate_bytes_per_s)
        self.capacity = self.rate * burst_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, principal: str) -> _Bucket:
        now = self._clock()
        b = self._buckets.get(principal)
        if b is None:
            if len(self._buckets) >= MAX_PRINCIPALS:
                self._drop_full(now)
            b = self._buckets[principal] = _Bucket(self.capacity, now)
        else:
            b.tokens = min(self.capacity, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        return b

    def _drop_full(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.tokens + (now - b.stamp) * self.rate >= self.capacity:
                del self._buckets[key]

    def delay_ms(self, principal: str) -> int:
        """0 if ``principal`` may send now, else how long until its debt is paid."""
        b = self._bucket(principal)
        if b.tokens >= 0:
            return 0
        return max(1, math.ceil(-b.tokens / self.rate * 1000))

    def charge(self, principal: str, nbytes: int) -> None:
        """Take ``nbytes`` from the principal's bucket (it may go into debt)."""
        self._bucket(principal).tokens -= nbytes


class QuotaManager:
    """The produce and fetch quotas of a broker; None = unlimited."""

    def __init__(self, produce_bytes_per_s: int, fetch_bytes_per_s: int) -> None:
        self.produce = ByteQuota(produce_bytes_per_s) if produce_bytes_per_s > 0 else None
        self.fetch = ByteQuota(fetch_bytes_per_s) if fetch_bytes_per_s > 0 else None
