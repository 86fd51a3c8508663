"""Small helpers every handler area uses: enum checks, status names, defaults."""

from __future__ import annotations

from typing import Any, Final

from logstore.errors import InvalidArgumentError, LogStoreError

#: max_bytes of a Fetch or Subscribe that leaves it 0 (unset).
DEFAULT_MAX_BYTES: Final = 1 << 20


def check_enum(enum: Any, field: str, value: int) -> None:
    """InvalidArgumentError for a value ``enum`` does not define (proto3 keeps them)."""
    if value not in enum.values():
        known = ", ".join(f"{n} ({v})" for n, v in enum.items())
        raise InvalidArgumentError(f"{field} {value} is not a known value; known: {known}")


def status_name(exc: BaseException) -> str:
    """The status name counted in metrics for ``exc`` (INTERNAL when unexpected)."""
    return exc.status if isinstance(exc, LogStoreError) else "INTERNAL"
