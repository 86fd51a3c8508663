"""Produce quotas per principal against a real broker (slow: 12 s of producing).

Two principals produce flat out at the same time against a broker with
``quota_produce_bytes_per_s``; each is held to its own quota (the broker
answers RESOURCE_EXHAUSTED with a RetryInfo of exactly debt / rate, which the
producer honours), so neither starves the other. The small, fast slice of the
same arithmetic is ``test_security_units.test_quota_delay_pays_back_the_debt_exactly``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from logstore.client import Admin, Producer
from tests.secbroker import start_secure
from tests.tlshelp import make_pki

QUOTA = 300_000  # bytes/s per principal
VALUE = b"v" * 1000
WARMUP_S = 2.0  # the first second's burst (a full bucket) is not the steady rate
WINDOW_S = 10.0


@pytest.mark.slow
def test_a_producer_over_quota_is_held_to_it_and_another_is_unaffected(tmp_path: Path) -> None:
    """Over 10 s each flat-out principal lands within 10 % of the quota (a range: the
    rate includes request overhead, ~3 %, and scheduling noise); without the quota each
    would push several MB/s, far outside it, so the check fails on a broker without quotas."""
    pki = make_pki(tmp_path / "pki")
    env = {"LOGSTORE_QUOTA_PRODUCE_BYTES_PER_S": str(QUOTA)}
    s = start_secure(tmp_path / "data", pki, env=env)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        with Admin(s.address, credentials=s.admin_creds()) as a:
            tokens = {}
            for name in ("a", "b"):
                a.create_topic(f"q-{name}", 1)
                tokens[name] = a.create_user(f"tenant-{name}")
                from logstore.client import AclBinding

                a.create_acls(
                    [AclBinding(f"tenant-{name}", "topic", "literal", f"q-{name}", op, "allow")
                     for op in ("write", "describe")]
                )  # fmt: skip

        def flood(name: str) -> None:
            # A request of R bytes is let through whole and leaves R / quota seconds of
            # debt, so the rate holds over a window of several requests: the default 4 MiB
            # requests are 14 s of this quota each, past the 10 s window. 256 KiB requests
            # (0.9 s each) are what a tenant under such a quota would send.
            with Producer(
                s.address, credentials=s.creds(tokens[name]), linger_ms=5,
                retry_backoff_ms=5, retry_backoff_max_ms=10, delivery_timeout_ms=120_000,
                batch_bytes=64 << 10, max_request_bytes=256 << 10,
            ) as p:  # fmt: skip
                while not stop.is_set():
                    p.send_many(f"q-{name}", [VALUE] * 16, partition=0)

        threads += [threading.Thread(target=flood, args=(n,), daemon=True) for n in ("a", "b")]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)
        with Admin(s.address, credentials=s.admin_creds()) as a:

            def ends() -> dict[str, int]:
                return {n: a.list_offsets(f"q-{n}")[0].offset for n in ("a", "b")}

            first, t0 = ends(), time.monotonic()
            time.sleep(WINDOW_S)
            last, t1 = ends(), time.monotonic()
        rates = {n: (last[n] - first[n]) * len(VALUE) / (t1 - t0) for n in ("a", "b")}
        print("rates B/s", rates)
        for n, rate in rates.items():
            assert 0.9 * QUOTA <= rate <= 1.1 * QUOTA, (n, rates)
    finally:
        stop.set()
        for t in threads:
            t.join(30)  # a flood thread left running fails whatever test runs next
        s.broker.stop()
