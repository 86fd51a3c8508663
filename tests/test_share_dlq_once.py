"""Dead letters exactly once: the share runtime in-process, on a real Store, with the
dead-letter confirmation failing after the copies were appended (fault injection) --
retried in the same process, and listed again by a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from logstore.broker import _share_runtime as sr
from logstore.broker._config import BrokerConfig
from logstore.broker._metrics import BrokerMetrics
from logstore.broker._runtime import Runtime
from logstore.errors import InternalError
from logstore.share import Ack, AckKind, ShareGroupConfig
from logstore.storage import Store
from logstore.wire import Record


def run(path: Path, body: Callable[[sr.ShareRuntime, Store], Awaitable[None]]) -> None:
    async def main() -> None:
        store = Store.open(str(path))
        store.start_flusher()
        rt = Runtime(store, BrokerConfig(data_dir=str(path)), BrokerMetrics())
        rt.start(asyncio.get_running_loop())
        share = sr.ShareRuntime(rt)
        rt.share = share
        await share.start()
        try:
            await body(share, store)
        finally:
            await share.stop()
            rt.begin_shutdown()
            await rt.drain()
            store.close()

    asyncio.run(main())


def dlq_sources(store: Store) -> list[bytes]:
    """The source offsets of the copies in g.dlq, in order ([] before it exists)."""
    try:
        end = store.high_watermark("g.dlq", 0)
    except Exception:
        return []
    out: list[bytes] = []
    pos = 0
    while pos < end:
        batch = store.read("g.dlq", 0, pos)
        out += [dict(r.headers)["logstore-dlq-source-offset"] for r in batch]
        pos = batch[-1].offset + 1
    return out


async def reject_all(share: sr.ShareRuntime, n: int) -> None:
    """Acquire the n records of t and REJECT them (they become dead letters)."""
    await share.on_metadata()  # the topic was created on the store directly
    cfg = ShareGroupConfig(auto_offset_reset="earliest")
    await share.call(lambda c, now: c.configure_group("g", cfg))
    m = await share.call(lambda c, now: c.join("g", ["t"], now_ms=now))
    got = await share.fetch(
        "g", m.consumer_id, max_records=n, max_bytes=1 << 20, wait_ms=0, on_park=lambda: None
    )
    assert sum(r.last_offset - r.first_offset + 1 for f in got for r in f.acquired) == n
    ack = Ack("t", 0, 0, n - 1, AckKind.REJECT, error="poison")
    await share.call(lambda c, now: c.acknowledge("g", m.consumer_id, [ack], now_ms=now))


async def until(cond: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_a_failed_confirmation_does_not_dead_letter_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies of 3 rejected records are appended and fsynced, then the confirmation
    fails once: the retry (1 s later) finds the 3 copies in the dead-letter topic and
    appends nothing; the records end ARCHIVED. (Before: the retry appended them again, 6
    copies.)"""
    real = sr._confirm
    fails = [1]

    def flaky(d: Any, c: Any, now: int) -> Any:
        if fails[0]:
            fails[0] -= 1
            raise InternalError("injected: the confirmation failed")
        return real(d, c, now)

    monkeypatch.setattr(sr, "_confirm", flaky)

    async def body(share: sr.ShareRuntime, store: Store) -> None:
        store.create_topic("t", 1)
        store.append("t", 0, [Record(b"v%d" % i) for i in range(3)])
        await reject_all(share, 3)
        await until(
            lambda: fails[0] == 0 and not share.coordinator.pending_dead_letters(),
            "the dead letters were not confirmed",
        )
        assert dlq_sources(store) == [b"0", b"1", b"2"]

    run(tmp_path / "d", body)


def test_dead_letters_a_crash_left_unconfirmed_are_not_produced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The confirmation never comes (the broker stops after the copies were appended, as
    a crash between the two would leave it); the next start lists the records again and
    finds their copies in the tail of the dead-letter topic: still 2 copies, and the
    records are confirmed. (Before: produced again at start, 4 copies.)"""

    def never(d: Any, c: Any, now: int) -> Any:
        raise InternalError("injected: the broker died before confirming")

    monkeypatch.setattr(sr, "_confirm", never)

    async def first(share: sr.ShareRuntime, store: Store) -> None:
        store.create_topic("t", 1)
        store.append("t", 0, [Record(b"v%d" % i) for i in range(2)])
        await reject_all(share, 2)
        await until(lambda: len(dlq_sources(store)) == 2, "the copies were not appended")

    run(tmp_path / "d", first)
    monkeypatch.undo()

    async def second(share: sr.ShareRuntime, store: Store) -> None:
        await until(
            lambda: not share.coordinator.pending_dead_letters(),
            "the dead letters were not confirmed after the restart",
        )
        assert dlq_sources(store) == [b"0", b"1"]

    run(tmp_path / "d", second)
