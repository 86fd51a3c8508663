"""Repeated background errors are logged once, not once per retry (issue 9, item 6).

On a full disk the broker's periodic flush failed every second with a full
traceback; the storage engine's own background work (flusher checkpoints,
``maintain()``) did the same once per checkpoint interval.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from logstore.errors import DiskFullError

pytestmark = pytest.mark.timeout(30)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_rate_limited_log_logs_a_repeated_message_once() -> None:
    """RateLimitedLog logs a message the first time and suppresses repeats."""
    from logstore.storage import RateLimitedLog

    logger = logging.getLogger("logstore.test.ratelimit")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        limited = RateLimitedLog(logger, interval_s=60)
        logged = [limited.log("checkpoint failed: disk full") for _ in range(100)]
        limited.log("another error")
    finally:
        logger.removeHandler(handler)
    assert logged.count(True) == 1
    assert [r.getMessage() for r in handler.records] == [
        "checkpoint failed: disk full",
        "another error",
    ]


def test_periodic_flush_on_a_full_disk_logs_one_line_without_traceback() -> None:
    """The broker's periodic task logs a repeated StorageError once, without a
    traceback (the old loop logged a traceback every interval)."""
    from logstore.broker._server import Broker

    calls = 0

    def flush() -> None:
        nonlocal calls
        calls += 1
        raise DiskFullError(errno.ENOSPC, "disk full while writing /d/x.tmp")

    async def run_io(fn: Any) -> Any:
        return fn()

    fake = SimpleNamespace(service=SimpleNamespace(run_io=run_io))
    logger = logging.getLogger("logstore.broker")
    handler = _Collect()
    logger.addHandler(handler)

    async def main() -> None:
        task = asyncio.ensure_future(Broker._every(fake, 1, flush))  # type: ignore[arg-type]
        while calls < 20:
            await asyncio.sleep(0.005)
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    errors = [r for r in handler.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None
    assert "disk full" in errors[0].getMessage()
