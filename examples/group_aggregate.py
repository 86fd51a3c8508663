"""A consumer group of N processes computing a per-key count and sum over a topic.

    python examples/group_aggregate.py --bootstrap 127.0.0.1:7070 --topic sales \\
        --group sales-agg --state-dir ./agg-state --workers 3 [--drain] [--json]

Each record's key is the group key (UTF-8) and its value a decimal integer
(UTF-8), e.g. key ``store-7`` value ``1250``. The script starts ``--workers``
processes (itself with ``--worker-index``); each is a
:class:`~logstore.client.GroupConsumer` member of ``--group``, so the broker's
coordinator splits the topic's partitions between them and moves partitions
when one stops or starts. A member reads its partitions with
``poll_columns()``, turns each batch into a ``pyarrow.RecordBatch`` with
``ColumnBatch.to_arrow()`` (zero-copy for keys and values) and lets DuckDB
aggregate it (``GROUP BY key``: count, sum); no Python loop runs per record.

**Exactly once across restarts.** Each partition's partial aggregate is a
state file ``STATE_DIR/TOPIC-PARTITION.json``::

    {"v": 1, "topic": ..., "partition": ..., "next_offset": N,
     "keys": {"store-7": [count, sum], ...}}

holding the aggregate of exactly the records at offsets below ``next_offset``
(from the log start). After every batch a member first commits ``next_offset``
to the group (``OffsetCommit``: refused with FAILED_PRECONDITION if this
member no longer owns the partition, so a fenced member writes nothing), then
replaces the state file atomically (write a temporary file, fsync, rename,
fsync the directory); a commit that fails for a passing reason (a stale epoch
in the middle of a rebalance, the broker unavailable) is tried again after the
next poll, and a revoked partition is committed and saved before it is
released. A member that gets a partition loads its file and seeks
to its ``next_offset``, whatever offset the group committed: a process stopped
between the two steps (SIGTERM, ``kill -9``, power cut) has a committed offset
ahead of its file, and the batch in between is read again and counted once.
The committed offsets are what ``logctl groups describe`` shows as lag.

The state files live on one machine here (so the workers must share it); a
real deployment keeps them in a shared store. A member that keeps running
after losing its partition (a missed session timeout while it is still
processing) could overwrite a file after the new owner loaded it: the commit
before the write narrows this to the time between the two; a store with a
conditional write (on the member epoch) closes it.

The parent process prints the merged aggregate (the sum over partitions) when
it stops: on SIGTERM/SIGINT (it stops the workers first, by PID, and each
leaves the group after its current batch) or, with ``--drain``, once every
partition's state has reached the end offset the topic had at start. Run it
again and it resumes where the group left off. ``--merge`` prints the merged
aggregate of the state directory without consuming. Output: a table, or with
``--json`` one JSON object ``{"records": N, "keys": {key: {"count", "sum"}},
"partitions": {partition: next_offset}}``.

Each worker logs ``worker I: aggregated N records`` on stderr when it stops:
the records it added to saved state in this run (none are read twice).

Needs the ``examples`` extra (``pip install 'logstore[examples]'``: pyarrow
and duckdb).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logstore import errors

try:
    import duckdb
except ImportError as exc:
    raise SystemExit("group_aggregate.py needs duckdb: pip install 'logstore[examples]'") from exc

from logstore.client import Admin, ColumnBatch, GroupConsumer, TopicPartition

STATE_VERSION = 1
#: One aggregate query per fetched batch; a record with a null key counts under
#: NULL_KEY, a null value counts and adds nothing to the sum (SQL's sum).
QUERY = """
    SELECT coalesce(decode(key), ?) AS k,
           count(*) AS n,
           coalesce(sum(CAST(decode(value) AS BIGINT)), 0) AS s
    FROM batch GROUP BY k
"""
NULL_KEY = "<null>"
#: The parent checks the state files this often in --drain mode.
DRAIN_CHECK_S = 0.1
#: A stopped worker has this long to finish its batch and leave the group.
STOP_GRACE_S = 20.0
#: A worker prints this on stdout once SIGTERM stops it gracefully.
READY_LINE = "ready\n"

log = logging.getLogger("group_aggregate")


# -- the state of one partition ----------------------------------------------


@dataclass
class PartitionState:
    """The aggregate of the records of one partition below ``next_offset``."""

    topic: str
    partition: int
    next_offset: int | None = None  # None: nothing read yet (start at the log start)
    keys: dict[str, list[int]] = field(default_factory=dict)  # key -> [count, sum]


def state_path(state_dir: Path, topic: str, partition: int) -> Path:
    return state_dir / f"{topic}-{partition}.json"


def load_state(state_dir: Path, topic: str, partition: int) -> PartitionState:
    """The partition's saved state, or an empty one when it has none."""
    path = state_path(state_dir, topic, partition)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return PartitionState(topic, partition)
    if doc.get("v") != STATE_VERSION or (doc["topic"], doc["partition"]) != (topic, partition):
        raise SystemExit(f"{path}: not a version-{STATE_VERSION} state file of {topic}-{partition}")
    return PartitionState(topic, partition, int(doc["next_offset"]), doc["keys"])


def save_state(state_dir: Path, st: PartitionState) -> None:
    """Replace the partition's state file atomically (a crash leaves old or new)."""
    path = state_path(state_dir, st.topic, st.partition)
    doc = {
        "v": STATE_VERSION,
        "topic": st.topic,
        "partition": st.partition,
        "next_offset": st.next_offset,
        "keys": st.keys,
    }
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, sort_keys=True, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def merge(state_dir: Path, topic: str) -> dict[str, Any]:
    """The sum of every partition's saved aggregate."""
    keys: dict[str, dict[str, int]] = {}
    partitions: dict[str, int] = {}
    for path in sorted(state_dir.glob(f"{topic}-*.json")):
        suffix = path.stem[len(topic) + 1 :]
        if not suffix.isdigit():
            continue  # another topic whose name starts with "TOPIC-"
        st = load_state(state_dir, topic, int(suffix))
        partitions[str(st.partition)] = st.next_offset or 0
        for k, (n, s) in st.keys.items():
            agg = keys.setdefault(k, {"count": 0, "sum": 0})
            agg["count"] += n
            agg["sum"] += s
    return {
        "records": sum(a["count"] for a in keys.values()),
        "keys": dict(sorted(keys.items())),
        "partitions": partitions,
    }


# -- a worker: one group member ------------------------------------------------


def aggregate_batch(con: Any, cols: ColumnBatch, st: PartitionState) -> None:
    """Add one fetched batch to ``st`` with DuckDB over its Arrow form."""
    batch = cols.to_arrow()  # noqa: F841 -- DuckDB finds it by name (replacement scan)
    for k, n, s in con.execute(QUERY, [NULL_KEY]).fetchall():
        agg = st.keys.setdefault(k, [0, 0])
        agg[0] += int(n)
        agg[1] += int(s)
    st.next_offset = int(cols.offsets[-1]) + 1


#: Commit failures after which the batch stays pending and is committed (then
#: saved) after the next poll: the member still owns the partition.
TRY_AGAIN = (
    errors.StaleMemberEpochError,
    errors.BrokerUnavailableError,
    errors.DeadlineExceededError,
)


class Worker:
    """One group member: aggregates its partitions' batches, commits, saves."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.index: int = args.worker_index
        self.topic: str = args.topic
        self.max_poll_records: int = args.max_poll_records
        self.state_dir = Path(args.state_dir)
        self.owned: dict[TopicPartition, PartitionState] = {}
        #: aggregated but not yet committed and saved (after a TRY_AGAIN failure)
        self.pending: dict[TopicPartition, int] = {}  # -> records in it
        self.aggregated = 0  # records this run added to saved state (logged at exit)
        self.con = duckdb.connect()
        self.admin = Admin(args.bootstrap)
        self.consumer = GroupConsumer(
            args.bootstrap,
            args.group,
            topics=[args.topic],
            enable_auto_commit=False,  # committed per batch, before the state file
            auto_offset_reset="earliest",
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
            client_id=f"group-aggregate-{self.index}",
        )

    def on_assign(self, tps: list[TopicPartition]) -> None:
        starts = {o.partition: o.offset for o in self.admin.list_offsets(self.topic, "earliest")}
        for tp in tps:
            st = load_state(self.state_dir, tp.topic, tp.partition)
            self.owned[tp] = st
            # The file, not the committed offset, says where its aggregate ends.
            start = starts[tp.partition] if st.next_offset is None else st.next_offset
            self.consumer.seek(tp, start)
        log.info("worker %d: assigned %s", self.index, [tp.partition for tp in tps])

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        self.flush()  # still the owner while revoking: commits are accepted
        self.on_lost(tps)
        log.info("worker %d: released %s", self.index, [tp.partition for tp in tps])

    def on_lost(self, tps: list[TopicPartition]) -> None:
        # Anything unsaved is dropped: the next owner reads it again from the file's offset.
        for tp in tps:
            self.owned.pop(tp, None)
            self.pending.pop(tp, None)

    def flush(self) -> None:
        """Commit, then save, every pending partition (see the module docstring)."""
        if not self.pending:
            return
        states = [self.owned[tp] for tp in self.pending]
        try:
            self.consumer.commit({(st.topic, st.partition): st.next_offset or 0 for st in states})
        except TRY_AGAIN as exc:
            log.warning(
                "worker %d: commit failed, retried after the next poll: %s", self.index, exc
            )
            return
        except (errors.UnknownMemberIdError, errors.FencedMemberEpochError) as exc:
            # No longer the owner: the next poll calls on_lost; write nothing.
            log.warning("worker %d: commit refused, state not saved: %s", self.index, exc)
            self.on_lost(list(self.pending))
            return
        for st in states:
            save_state(self.state_dir, st)
        self.aggregated += sum(self.pending.values())
        self.pending.clear()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                got = self.consumer.poll_columns(200, max_records=self.max_poll_records)
                for tp, cols in got.items():
                    st = self.owned.get(tp)
                    if st is not None and len(cols):
                        aggregate_batch(self.con, cols, st)
                        self.pending[tp] = self.pending.get(tp, 0) + len(cols)
                self.flush()
        finally:
            log.info("worker %d: aggregated %d records", self.index, self.aggregated)
            self.consumer.close()  # leaves the group: its partitions move now
            self.admin.close()
            self.con.close()


def run_worker(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Tell the parent a SIGTERM from now on is a graceful stop (see wait_ready).
    sys.stdout.write(READY_LINE)
    sys.stdout.flush()
    Worker(args).run(stop)
    return 0


def wait_ready(workers: list[subprocess.Popen[str]], stop: threading.Event) -> bool:
    """Wait until every worker has installed its SIGTERM handler (it prints
    READY_LINE): a worker stopped before that, still importing, would die without
    leaving the group or logging its exit line. False if one exited first or
    ``STOP_GRACE_S`` passed."""
    deadline = time.monotonic() + STOP_GRACE_S
    waiting = {w.stdout: w for w in workers if w.stdout is not None}
    while waiting and not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select(list(waiting), [], [], min(left, DRAIN_CHECK_S))
        for pipe in readable:
            if pipe.readline() != READY_LINE:  # EOF: it exited before it was ready
                return False
            del waiting[pipe]
    return not waiting


# -- the parent: N workers, then the merged result ------------------------------


def drained(state_dir: Path, topic: str, ends: dict[int, int]) -> bool:
    """Whether every partition's saved state reached ``ends``."""
    for p, end in ends.items():
        if end > 0 and (load_state(state_dir, topic, p).next_offset or 0) < end:
            return False
    return True


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"{'key':<24} {'count':>10} {'sum':>16}")
    for k, agg in result["keys"].items():
        print(f"{k:<24} {agg['count']:>10} {agg['sum']:>16}")
    print(f"{result['records']} records")


def run_parent(args: argparse.Namespace, argv: list[str]) -> int:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        print_result(merge(state_dir, args.topic), args.json)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ends: dict[int, int] = {}
    if args.drain:
        with Admin(args.bootstrap) as admin:
            ends = {o.partition: o.offset for o in admin.list_offsets(args.topic, "latest")}
    base = [sys.executable, str(Path(__file__).resolve()), *argv]
    workers = [
        subprocess.Popen([*base, "--worker-index", str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(args.workers)
    ]
    code = 0
    try:
        if not wait_ready(workers, stop) and not stop.is_set():
            print("group_aggregate: a worker did not start; stopping", file=sys.stderr)
            code = 1
            stop.set()
        while not stop.is_set():
            if any(w.poll() is not None for w in workers):
                print("group_aggregate: a worker exited; stopping", file=sys.stderr)
                code = 1
                break
            if args.drain and drained(state_dir, args.topic, ends):
                break
            stop.wait(DRAIN_CHECK_S)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in workers:
            try:
                w.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
                code = 1
    print_result(merge(state_dir, args.topic), args.json)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:7070")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True, help="per-partition aggregate files")
    parser.add_argument("--workers", type=int, default=2, help="group members to start")
    parser.add_argument("--max-poll-records", type=int, default=10_000)
    parser.add_argument("--drain", action="store_true", help="stop at the end offsets at start")
    parser.add_argument("--merge", action="store_true", help="only print the saved aggregate")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.workers < 1 or args.max_poll_records < 1:
        parser.error("--workers and --max-poll-records must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.worker_index is not None:
        return run_worker(args)
    try:
        return run_parent(args, argv)
    except errors.LogStoreError as exc:  # e.g. --drain of a topic that does not exist
        print(f"group_aggregate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
