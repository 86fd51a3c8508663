"""Per-principal byte-rate quotas: token buckets, and the override table ``quotas.json``.

Kafka's model: a request is never cut short; its bytes are charged after
the fact, and a principal whose bucket is in debt is refused
(RESOURCE_EXHAUSTED) with a delay of exactly ``debt / rate`` -- the time the
bucket needs to refill to zero, which brings the principal's average back to
its rate. A bucket holds at most ``burst_s`` seconds of rate (1 s), so an
idle principal cannot save up more than one second's worth.

Rates: each :class:`ByteQuota` (one per kind, produce and fetch) has the
broker's default rate (``quota_produce_bytes_per_s`` /
``quota_fetch_bytes_per_s``; 0 = unlimited) and per-principal overrides (as
Kafka's ``kafka-configs --entity-type users --entity-name alice
--add-config producer_byte_rate=N``), which win over the default for that
principal; an override of 0 makes that principal unlimited. Looking a rate
up is one dict lookup.

:class:`QuotaStore` is the durable override table of a data directory,
``<data-dir>/quotas.json`` (JSON, written atomically by
``_files.write_json``, as ``acls.json``)::

    {"version": 1, "quotas": {"<principal>": {"produce_bytes_per_s": <int>,
     "fetch_bytes_per_s": <int>}}}

where a missing key means "the broker default" for that kind. At most
``MAX_OVERRIDES`` principals; rates are 0..``MAX_RATE``.

Bounded: at most ``MAX_PRINCIPALS`` buckets per kind; past it the buckets
that are full (a full bucket and a missing one behave the same) are dropped.
Thread-safety: a ByteQuota is used from the broker's event loop only; a
QuotaStore takes a lock around changes (the broker calls it from I/O threads).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from logstore.errors import InvalidArgumentError, StorageError

from ._files import read_json, write_json
from ._users import check_principal_name

MAX_PRINCIPALS: Final = 10_000
QUOTAS_FILE: Final = "quotas.json"
#: Principals with an override (users are bounded the same way).
MAX_OVERRIDES: Final = 100_000
#: Largest rate an override may set (1 TiB/s; the broker flags' bound too).
MAX_RATE: Final = 1 << 40
KINDS: Final = ("produce_bytes_per_s", "fetch_bytes_per_s")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class ByteQuota:
    """A default rate (bytes/s; 0 = unlimited) and per-principal overrides, one bucket each."""

    def __init__(
        self,
        rate_bytes_per_s: int,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        overrides: Mapping[str, int] | None = None,
    ) -> None:
        assert rate_bytes_per_s >= 0
        self.rate = float(rate_bytes_per_s)
        self.burst_s = burst_s
        self._clock = clock
        self._rates: dict[str, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self.set_overrides(overrides or {})

    def set_overrides(self, overrides: Mapping[str, int]) -> None:
        """Replace the per-principal rates (buckets keep their debt; the new rate refills it)."""
        self._rates = {p: float(r) for p, r in overrides.items()}
        for p, r in self._rates.items():
            if r <= 0:
                self._buckets.pop(p, None)
        #: Whether any principal has a rate (False: the broker skips the quota).
        self.limited = self.rate > 0 or any(r > 0 for r in self._rates.values())

    def rate_of(self, principal: str) -> float:
        """The principal's rate: its override, else the default; 0 = unlimited."""
        return self._rates.get(principal, self.rate)

    def _bucket(self, principal: str, rate: float) -> _Bucket:
        now = self._clock()
        capacity = rate * self.burst_s
        b = self._buckets.get(principal)
        if b is None:
            if len(self._buckets) >= MAX_PRINCIPALS:
                self._drop_full(now)
            b = self._buckets[principal] = _Bucket(capacity, now)
        else:
            b.tokens = min(capacity, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
        return b

    def _drop_full(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            rate = self.rate_of(key)
            if rate <= 0 or b.tokens + (now - b.stamp) * rate >= rate * self.burst_s:
                del self._buckets[key]

    def delay_ms(self, principal: str) -> int:
        """0 if ``principal`` may send now, else how long until its debt is paid."""
        rate = self.rate_of(principal)
        if rate <= 0:
            return 0
        b = self._bucket(principal, rate)
        if b.tokens >= 0:
            return 0
        return max(1, math.ceil(-b.tokens / rate * 1000))

    def charge(self, principal: str, nbytes: int) -> None:
        """Take ``nbytes`` from the principal's bucket (it may go into debt)."""
        rate = self.rate_of(principal)
        if rate > 0:
            self._bucket(principal, rate).tokens -= nbytes


def check_rate(value: int, what: str) -> int:
    """``value`` if it is a valid rate (0..MAX_RATE bytes/s); InvalidArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATE:
        raise InvalidArgumentError(
            f"bad {what} {value!r}: 0..{MAX_RATE} bytes per second (0 = unlimited)"
        )
    return value


@dataclass(frozen=True)
class QuotaOverride:
    """One principal's overrides; None = the broker default for that kind."""

    principal: str
    produce_bytes_per_s: int | None = None
    fetch_bytes_per_s: int | None = None


class QuotaStore:
    """The per-principal quota overrides of one data directory (see the module docstring)."""

    def __init__(self, path: str, quotas: dict[str, dict[str, int]]) -> None:
        self.path = path
        self._quotas = quotas
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: str) -> QuotaStore:
        path = os.path.join(data_dir, QUOTAS_FILE)
        raw = read_json(path)
        quotas: dict[str, dict[str, int]] = {}
        if raw is not None:
            try:
                if raw["version"] != 1:
                    raise StorageError(f"{path}: unknown version {raw['version']!r}")
                for name, entry in raw["quotas"].items():
                    check_principal_name(name, "principal")
                    unknown = set(entry) - set(KINDS)
                    if unknown or not entry:
                        raise ValueError(f"bad keys {sorted(unknown)!r} for {name!r}")
                    quotas[name] = {k: check_rate(v, k) for k, v in entry.items()}
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(f"{path} is not a quotas file: {exc!r}") from None
            except InvalidArgumentError as exc:
                raise StorageError(f"{path} holds a bad quota: {exc}") from None
        return cls(path, quotas)

    def set(
        self,
        principal: str,
        produce_bytes_per_s: int | None = None,
        fetch_bytes_per_s: int | None = None,
    ) -> QuotaOverride:
        """Set the given rates of ``principal`` (the others stay); its overrides after."""
        check_principal_name(principal, "principal")
        given = {
            k: check_rate(v, k)
            for k, v in zip(KINDS, (produce_bytes_per_s, fetch_bytes_per_s), strict=True)
            if v is not None
        }
        if not given:
            raise InvalidArgumentError(
                "set at least one of produce_bytes_per_s and fetch_bytes_per_s"
            )
        with self._lock:
            if principal not in self._quotas and len(self._quotas) >= MAX_OVERRIDES:
                raise InvalidArgumentError(f"at most {MAX_OVERRIDES} principals with quotas")
            quotas = {**self._quotas, principal: {**self._quotas.get(principal, {}), **given}}
            self._save(quotas)
            self._quotas = quotas
            return self._override(principal, quotas[principal])

    def remove(self, principal: str) -> bool:
        """Drop every override of ``principal`` (back to the defaults); whether it had any."""
        check_principal_name(principal, "principal")
        with self._lock:
            if principal not in self._quotas:
                return False
            quotas = {k: v for k, v in self._quotas.items() if k != principal}
            self._save(quotas)
            self._quotas = quotas
            return True

    def list(self, principal: str | None = None) -> list[QuotaOverride]:
        """Every override (or ``principal``'s), sorted by principal."""
        with self._lock:
            return [
                self._override(p, q)
                for p, q in sorted(self._quotas.items())
                if principal is None or p == principal
            ]

    def rates(self, kind: str) -> dict[str, int]:
        """principal -> rate of every override of ``kind`` (one of ``KINDS``)."""
        with self._lock:
            return {p: q[kind] for p, q in self._quotas.items() if kind in q}

    def _save(self, quotas: dict[str, dict[str, int]]) -> None:
        write_json(self.path, {"version": 1, "quotas": quotas})

    @staticmethod
    def _override(principal: str, q: Mapping[str, int]) -> QuotaOverride:
        return QuotaOverride(principal, q.get(KINDS[0]), q.get(KINDS[1]))


class QuotaManager:
    """The produce and fetch quotas of a broker: defaults plus overrides."""

    def __init__(
        self, produce_bytes_per_s: int, fetch_bytes_per_s: int, store: QuotaStore | None = None
    ) -> None:
        self.store = store
        self.produce = ByteQuota(produce_bytes_per_s)
        self.fetch = ByteQuota(fetch_bytes_per_s)
        self.reload()

    def reload(self) -> None:
        """Take the store's current overrides (after a change)."""
        if self.store is not None:
            self.produce.set_overrides(self.store.rates(KINDS[0]))
            self.fetch.set_overrides(self.store.rates(KINDS[1]))
