"""The client's one retry policy: which errors are retried, and how long to wait.

Retried: ``UNAVAILABLE`` (:class:`~logstore.errors.BrokerUnavailableError`)
and ``RESOURCE_EXHAUSTED`` that carries the broker's RetryInfo hint
(``retry_after_ms``; without one the broker means "do not retry unchanged").
Nothing else is: every other status describes the request, not the moment.

Waits are "full jitter" (AWS Architecture Blog, "Exponential Backoff and
Jitter", 2015): ``sleep = uniform(0, min(cap, base * 2**attempt))``, and at
least the broker's hint. Full jitter spreads the retries of many clients
over the whole window, so a broker that comes back is not hit by all of
them at once; the AWS simulation found it to need the fewest calls of the
variants measured. Used by the producer (per batch) and the consumer (per
partition), the share consumer, and the :class:`~logstore.client.Worker`'s
retry delays (which pass their own ``random.Random`` so a test can seed the
schedule). Pure and thread-safe (``random.uniform`` is; a given ``rng`` is
used under the GIL like ``random``'s own instance). Without an ``rng`` it
draws from a private generator, never the global ``random``: an application
that seeds ``random`` keeps its sequence, and a background retry thread does
not disturb code that watches the global state (Hypothesis fails a test whose
strategies see it change).
"""

from __future__ import annotations

import random
from typing import Final

from logstore import errors

#: 2**attempt stops growing here: 2**30 x any base in ms is past every cap
#: (and keeps the float math finite for an attempt counter that runs long).
_MAX_EXPONENT: Final = 30
#: The library's own generator (see the module docstring).
_RNG: Final = random.Random()


def retriable(exc: errors.LogStoreError) -> bool:
    """Whether a request that failed with ``exc`` may be sent again unchanged."""
    if isinstance(exc, errors.BrokerUnavailableError):
        return True
    return isinstance(exc, errors.ResourceExhaustedError) and exc.retry_after_ms is not None


class Backoff:
    """Full-jitter exponential backoff between ``base_ms`` and ``cap_ms``."""

    __slots__ = ("base_s", "cap_s", "rng")

    def __init__(self, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> None:
        if base_ms < 0 or cap_ms < 0:
            raise errors.InvalidArgumentError(
                f"retry backoff must be >= 0 ms, not {base_ms} ms (max {cap_ms} ms)"
            )
        self.base_s = base_ms / 1000
        self.cap_s = max(cap_ms, base_ms) / 1000  # a cap below the base is the base
        self.rng = rng

    def delay_s(self, attempt: int, retry_after_ms: int | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` + 1 (``attempt`` 0 = the
        first retry): uniform in [0, min(cap, base * 2**attempt)], at least the hint."""
        window = self.window_s(attempt)
        delay: float = (self.rng or _RNG).uniform(0, window)
        if retry_after_ms is not None:
            delay = max(delay, retry_after_ms / 1000)
        return delay

    def window_s(self, attempt: int) -> float:
        """The upper end of retry ``attempt``'s wait: min(cap, base * 2**attempt) seconds."""
        return float(min(self.cap_s, self.base_s * 2 ** min(attempt, _MAX_EXPONENT)))
