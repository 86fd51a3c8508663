"""Chaos-test group member: consumes as a GroupConsumer and logs what it did, in order.

Run as ``python -m tests.group_member BOOTSTRAP GROUP TOPIC RUN_ID OUT_PATH MODE``.

MODE ``manual``:
The member joins ``GROUP`` (manual commits, ``auto_offset_reset="earliest"``)
and loops: ``poll`` (at most ``MAX_RECORDS``), then writes one ``P`` line per
record and **flushes the file before committing**, then commits exactly the
next offset after each partition's last record (``commit(offsets)``,
synchronous) and only after the commit returned writes one ``C`` line per
partition. So the file shows, for every record, that it was processed before
any commit covering it, and a ``C`` line is a commit the broker acknowledged.

Lines (space separated, one flush per poll):

* ``P partition offset key seq``: a processed record (value ``key seq``)
* ``C partition next_offset``: an acknowledged commit
* ``A|R|L partition,...``: on_assign / on_revoke / on_lost
* ``E text``: a retried error (broker restarting and similar)
* ``J member_id``: joined (SIGTERM is handled from here on)
* ``X``: a clean exit after SIGTERM (commit done, group left)

MODE ``static``: as manual, as a static member whose instance id is the 7th
argument (a replacement started with the same id takes over its partitions).

MODE ``auto``: the library commits (``enable_auto_commit``, every 1 s, and
synchronously on revoke and on close); the member only polls, writes ``P``
lines and pauses, with no retries of its own after the join: any error from ``poll`` or
``close`` exits 1, so the library alone must ride through a broker restart.

Manual mode: retriable errors (the broker being restarted: UNAVAILABLE, DEADLINE_EXCEEDED,
a stale epoch while a heartbeat is in flight) are retried every 100 ms for up
to ``RETRY_S``; a commit refused because the membership was lost (fenced or
unknown member) is logged as ``L`` and not retried (those records stay
uncommitted; the test says whether that was allowed). SIGTERM makes the loop
stop after the current poll's commit, then ``close()`` leaves the group and
the process exits 0. Any other error exits 1 with the traceback on stderr.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, TypeVar

from logstore import errors
from logstore.client import GroupConsumer, TopicPartition

#: Records per poll: small, so that a member's processed-but-uncommitted tail
#: (at most one poll) is small and polls/commits interleave with the chaos.
MAX_RECORDS = 500
#: "Processing" time of one poll, between writing its records and committing
#: them: the 200,000 records take ~15 s of consuming, the test's events land
#: while the members are busy, and a kill -9 can hit a run between processing
#: and committing (the test aims its kills at that window). Every 8th poll is
#: slow (0.4 s, more than a heartbeat interval), so revocations and new
#: assignments also arrive while a member still holds an uncommitted poll.
PAUSE_S = 0.05
SLOW_PAUSE_S = 0.4
#: How long a retriable error is retried (a broker restart takes ~1-3 s here).
RETRY_S = 60.0

T = TypeVar("T")
_RETRY = (
    errors.BrokerUnavailableError,
    errors.DeadlineExceededError,
    errors.ResourceExhaustedError,
    errors.StaleMemberEpochError,
)


def _parts(tps: list[TopicPartition]) -> str:
    return ",".join(str(p) for _, p in tps) or "-"


def main() -> None:
    bootstrap, group, topic, run_id, out_path, mode = sys.argv[1:7]
    auto = mode == "auto"
    instance = sys.argv[7] if mode == "static" else None
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    out: IO[str] = open(out_path, "a", buffering=1 << 20)  # noqa: SIM115 (closed at exit)
    events: list[str] = []

    def note(tag: str) -> Callable[[list[TopicPartition]], None]:
        return lambda tps: events.append(f"{tag} {_parts(tps)}\n")

    gc = retry(
        lambda: GroupConsumer(
            bootstrap,
            group,
            topics=[topic],
            auto_offset_reset="earliest",
            enable_auto_commit=auto,
            auto_commit_interval_ms=1_000,
            client_id=run_id,
            group_instance_id=instance,
            on_assign=note("A"),
            on_revoke=note("R"),
            on_lost=note("L"),
            fetch_max_wait_ms=200,
        ),
        out,
    )
    out.write(f"J {gc.member_id}\n")
    out.flush()
    polls = 0
    while not stop:
        if auto:  # the library alone must ride through a broker restart
            got = gc.poll(200, max_records=MAX_RECORDS)
        else:
            got = retry(lambda: gc.poll(200, max_records=MAX_RECORDS), out)
        lines = events[:]
        events.clear()
        offsets: dict[TopicPartition, int] = {}
        for tp, recs in got.items():
            for r in recs:
                assert r.value is not None
                lines.append(f"P {tp.partition} {r.offset} {r.value.decode()}\n")
            offsets[tp] = recs[-1].offset + 1
        out.write("".join(lines))
        out.flush()  # processed (on disk for the test) before committed
        if offsets:
            polls += 1
            time.sleep(PAUSE_S if polls % 8 else SLOW_PAUSE_S)
            if auto:
                continue  # the next poll commits (every second), on revoke and on close
            try:
                retry(functools.partial(gc.commit, offsets), out)
            except (errors.UnknownMemberIdError, errors.FencedMemberEpochError) as exc:
                out.write(f"L commit refused: {exc}\n")
            else:
                out.write("".join(f"C {tp.partition} {o}\n" for tp, o in offsets.items()))
            out.flush()
    if auto:
        gc.close()
    else:
        retry(gc.close, out)
    out.write("".join(events) + "X\n")
    out.close()


def retry(fn: Callable[[], T], out: IO[str]) -> T:
    """``fn()``, retrying the errors a broker restart causes for up to RETRY_S."""
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            return fn()
        except _RETRY as exc:
            if time.monotonic() > deadline:
                raise
            out.write(f"E {type(exc).__name__}\n")
            time.sleep(0.1)


if __name__ == "__main__":
    main()
