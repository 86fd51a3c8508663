"""Admission control: the broker's own bounds, answered at once (``Limits``, ``Slot``).

Each bound is a counter checked when a request arrives; past it the request
is refused with RESOURCE_EXHAUSTED and a RetryInfo hint (never queued: a
queue would be one more unbounded buffer). gRPC's ``maximum_concurrent_rpcs``
is set above the sum of these as a backstop only (it sends no hint).

Waiting and working are bounded separately: a request holds a
``max_concurrent_requests`` slot while it works, and a Fetch that parks in a
long poll moves its hold to ``max_long_poll_waiters`` (:meth:`Slot.move_to`),
so idle consumers (one per partition they follow: 300 for a 300-partition
topic) never use up the budget that produce and admin calls need.

All methods run on the event loop thread: no locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from logstore.errors import ResourceExhaustedError


@dataclass
class Gauge:
    """A bounded counter; ``on_reject(reason)`` is called for each refusal."""

    name: str
    limit: int
    retry_after_ms: int
    on_reject: Callable[[str], None]
    value: int = 0

    def acquire(self, amount: int = 1) -> None:
        """Take ``amount`` or raise ResourceExhaustedError (with a retry hint)."""
        # A single request larger than the whole budget is admitted when
        # nothing else is in flight, so it can never be refused forever.
        if self.value + amount > self.limit and self.value > 0:
            self.on_reject(self.name)
            raise ResourceExhaustedError(
                f"broker limit {self.name} reached ({self.value} in use, limit {self.limit}); "
                f"retry after {self.retry_after_ms} ms",
                retry_after_ms=self.retry_after_ms,
            )
        if self.limit == 0:
            self.on_reject(self.name)
            raise ResourceExhaustedError(
                f"broker limit {self.name} is 0; retry after {self.retry_after_ms} ms",
                retry_after_ms=self.retry_after_ms,
            )
        self.value += amount

    def release(self, amount: int = 1) -> None:
        self.value -= amount
        assert self.value >= 0, f"{self.name} released more than acquired"


class Limits:
    """The bounds of DESIGN.md's back-pressure paragraph, and the decompression budget."""

    def __init__(
        self,
        *,
        max_concurrent_requests: int,
        max_inflight_produce_bytes: int,
        max_long_poll_waiters: int,
        max_subscriptions: int,
        retry_after_ms: int,
        on_reject: Callable[[str], None],
        max_inflight_decompress_bytes: int = 256 << 20,
    ) -> None:
        self.requests = Gauge(
            "max_concurrent_requests", max_concurrent_requests, retry_after_ms, on_reject
        )
        self.produce_bytes = Gauge(
            "max_inflight_produce_bytes", max_inflight_produce_bytes, retry_after_ms, on_reject
        )
        self.waiters = Gauge(
            "max_long_poll_waiters", max_long_poll_waiters, retry_after_ms, on_reject
        )
        self.subscriptions = Gauge(
            "max_subscriptions", max_subscriptions, retry_after_ms, on_reject
        )
        #: What compressed produce requests may inflate to while validated
        #: (``wire.decompress_reservation``): bounds the decompressions at once.
        self.decompress_bytes = Gauge(
            "max_inflight_decompress_bytes",
            max_inflight_decompress_bytes,
            retry_after_ms,
            on_reject,
        )


class GaugeMetric(Protocol):
    """The part of a prometheus Gauge a Slot uses."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class Slot:
    """One admitted request's unit of one Gauge (and of its metric), until released."""

    def __init__(self, gauge: Gauge, metric: GaugeMetric) -> None:
        gauge.acquire()
        metric.inc()
        self.gauge = gauge
        self._metric = metric
        self._released = False

    def move_to(self, gauge: Gauge, metric: GaugeMetric) -> None:
        """Hold ``gauge`` instead (ResourceExhaustedError, still holding the old one, if full)."""
        assert not self._released
        gauge.acquire()
        metric.inc()
        self.gauge.release()
        self._metric.dec()
        self.gauge = gauge
        self._metric = metric

    def release(self) -> None:
        assert not self._released, "slot released twice"
        self._released = True
        self.gauge.release()
        self._metric.dec()
