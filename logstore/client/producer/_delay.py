"""Delayed delivery on the producer: ``send(..., delay_ms=...)`` or ``deliver_at_ms=...``.

Both add the record header :data:`logstore.wire.DELIVER_AT_HEADER`
(``logstore-deliver-at-ms``) whose value is the absolute time, ASCII decimal
milliseconds since the Unix epoch (the format is documented in
:mod:`logstore.wire._share_meta` and records.proto). A ``delay_ms`` becomes
an absolute time with this process's wall clock at ``send()``, so the
producer's and the broker's clocks should agree to within the precision a
delay needs (NTP keeps them within milliseconds).

The bounds: ``delay_ms`` 0 .. :data:`~logstore.wire.MAX_DELAY_MS`
(3,650 days); ``deliver_at_ms`` >= 0 and at most that far ahead of now (a
time in the past is allowed: the record is deliverable at once). Anything
else raises InvalidArgumentError naming the bound, before anything is queued.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from logstore import errors
from logstore.wire import DELIVER_AT_HEADER, MAX_DELAY_MS

_DAY_MS: Final = 86_400_000


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgumentError(
            f"{name} must be an integer number of milliseconds, not {value!r}"
        )
    return value


def resolve_deliver_at(
    delay_ms: int | None = None, deliver_at_ms: int | None = None, now_ms: int | None = None
) -> int:
    """The absolute deliver-at time (ms since the epoch) for one of ``delay_ms`` or
    ``deliver_at_ms``; raises InvalidArgumentError for both, neither, or a value out
    of bounds (module docstring). ``now_ms`` defaults to the wall clock."""
    if (delay_ms is None) == (deliver_at_ms is None):
        raise errors.InvalidArgumentError(
            "give one of delay_ms or deliver_at_ms, not both"
            if delay_ms is not None
            else "give delay_ms or deliver_at_ms"
        )
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if delay_ms is not None:
        d = _check_int("delay_ms", delay_ms)
        if not 0 <= d <= MAX_DELAY_MS:
            raise errors.InvalidArgumentError(
                f"delay_ms must be 0 .. {MAX_DELAY_MS} ({MAX_DELAY_MS // _DAY_MS} days), not {d}"
            )
        return now + d
    t = _check_int("deliver_at_ms", deliver_at_ms)
    if t < 0:
        raise errors.InvalidArgumentError(
            f"deliver_at_ms must be >= 0 (milliseconds since the Unix epoch), not {t}"
        )
    if t > now + MAX_DELAY_MS:
        raise errors.InvalidArgumentError(
            f"deliver_at_ms {t} is more than {MAX_DELAY_MS // _DAY_MS} days ahead of now "
            f"({now}); the limit is MAX_DELAY_MS = {MAX_DELAY_MS} ms"
        )
    return t


def with_deliver_at(
    headers: Sequence[tuple[str, bytes]] | None, delay_ms: int | None, deliver_at_ms: int | None
) -> list[tuple[str, bytes]]:
    """``headers`` plus the deliver-at header; refuses headers that already have one."""
    at = resolve_deliver_at(delay_ms, deliver_at_ms)
    out = list(headers or ())
    if any(name == DELIVER_AT_HEADER for name, _ in out):
        raise errors.InvalidArgumentError(
            f"headers already hold {DELIVER_AT_HEADER!r}: give the time once, as a header "
            "or as delay_ms/deliver_at_ms"
        )
    out.append((DELIVER_AT_HEADER, str(at).encode()))
    return out
