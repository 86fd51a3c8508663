"""Worker and ShareConsumer against a real broker: graceful shutdown of a worker process
mid-run (every task finished exactly once across two workers, released ones handed over
at once), a worker ``kill -9``ed while holding records (another worker gets them after the
visibility timeout, nothing lost), a task longer than the visibility timeout renewed (not
redelivered), Reject and a task that always fails reaching the dead-letter topic with the
documented headers."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from logstore import errors
from logstore.client import Admin, Consumer, Producer, Reject, ShareConsumer, ShareMessage, Worker
from tests.brokerproc import BrokerProcess, start_broker

ROOT = Path(__file__).resolve().parent.parent


def produce(addr: str, topic: str, n: int, partitions: int = 1) -> list[str]:
    values = [f"task-{i:04d}" for i in range(n)]
    with Producer(addr) as p:
        for i, v in enumerate(values):
            p.send(topic, v.encode(), partition=i % partitions)
        p.flush()
    return values


def start_worker(
    addr: str, group: str, topic: str, out: Path, task_ms: int, concurrency: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.share_worker",
            addr,
            group,
            topic,
            str(out),
            str(task_ms),
            str(concurrency),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


def lines(path: Path, kind: str) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split() for ln in path.read_text().splitlines() if ln.startswith(kind + " ")]


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def test_graceful_shutdown_mid_run_loses_nothing_and_repeats_nothing(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """SIGTERM to a worker process in the middle of 300 tasks: it exits 0 after draining;
    with a second worker, every task is finished exactly once (none lost, none finished
    twice), and the records it released are handed over at once (all done well before the
    30 s visibility timeout)."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("jobs", 2)
        a.create_share_group("g", visibility_timeout_ms=30_000)
    values = produce(addr, "jobs", 300, partitions=2)
    out_a, out_b = tmp_path / "a.log", tmp_path / "b.log"
    a_proc = start_worker(addr, "g", "jobs", out_a, 30, 4)
    b_proc = start_worker(addr, "g", "jobs", out_b, 30, 4)
    try:
        wait_for(lambda: len(lines(out_a, "D")) >= 20, 60, "worker A to finish 20 tasks")
        t_term = time.monotonic()
        a_proc.send_signal(signal.SIGTERM)
        assert a_proc.wait(30) == 0, a_proc.stderr.read() if a_proc.stderr else ""
        assert lines(out_a, "X"), "worker A did not drain"
        started_a = {ln[1] for ln in lines(out_a, "S")}
        done_a = {ln[1] for ln in lines(out_a, "D")}
        assert started_a == done_a, "A abandoned a started task"
        wait_for(
            lambda: len(lines(out_a, "D")) + len(lines(out_b, "D")) >= 300, 25, "every task done"
        )
        assert time.monotonic() - t_term < 25  # released, not waiting for 30 s locks
        time.sleep(0.5)  # a duplicate would show up now
        done = [ln[1] for ln in lines(out_a, "D") + lines(out_b, "D")]
        counts = collections.Counter(done)
        assert sorted(counts) == values
        assert [v for v, c in counts.items() if c > 1] == []
    finally:
        b_proc.send_signal(signal.SIGTERM)
        try:
            b_proc.wait(30)
        finally:
            stop(b_proc)
            stop(a_proc)
    with Admin(addr) as a:
        d = a.describe_share_group("g")
    assert (d.available, d.acquired, d.dead_lettered) == (0, 0, 0)


def test_kill9_worker_records_go_to_another_after_visibility_timeout(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """A worker process kill -9'ed while its 4 tasks run (each would take 60 s): another
    worker gets those records only after the 2 s visibility timeout (delivery count 2),
    and finishes every task: nothing lost."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("jobs", 1)
        a.create_share_group("g", visibility_timeout_ms=2_000)
    values = produce(addr, "jobs", 12)
    out_a, out_b = tmp_path / "a.log", tmp_path / "b.log"
    a_proc = start_worker(addr, "g", "jobs", out_a, 60_000, 4)
    try:
        wait_for(lambda: len(lines(out_a, "S")) >= 4, 30, "worker A to start 4 tasks")
        held = {ln[1] for ln in lines(out_a, "S")}
        a_proc.kill()
        a_proc.wait(10)
        t_kill = time.monotonic()
        b_proc = start_worker(addr, "g", "jobs", out_b, 10, 4)
        try:
            wait_for(lambda: len(lines(out_b, "D")) >= 12, 40, "worker B to finish all")
            done = {ln[1]: int(ln[2]) for ln in lines(out_b, "D")}
            assert sorted(done) == values
            for v in held:
                assert done[v] >= 2, (v, done[v])  # a redelivery, counted
            # the held ones came back after the lock expired, not before
            firsts = [ln[1] for ln in lines(out_b, "S")]
            assert held <= set(firsts)
            assert time.monotonic() - t_kill >= 1.0
        finally:
            b_proc.send_signal(signal.SIGTERM)
            b_proc.wait(30)
            stop(b_proc)
    finally:
        stop(a_proc)


def _run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


def test_long_task_is_renewed_not_redelivered(broker: BrokerProcess) -> None:
    """A task of 4.5 s under a 2 s visibility timeout: the worker renews its lock, so a
    second consumer polling meanwhile gets nothing, and the task runs exactly once."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("slow", 1)
        a.create_share_group("g", visibility_timeout_ms=2_000)
    produce(addr, "slow", 1)
    runs: list[int] = []
    worker = Worker(addr, "g", ["slow"], concurrency=1, poll_timeout_ms=100)

    @worker.task
    def slow(msg: ShareMessage) -> None:
        runs.append(msg.delivery_count)
        time.sleep(4.5)

    t = _run_in_thread(worker)
    try:
        wait_for(lambda: runs, 20, "the task to start")
        with ShareConsumer(addr, "g", ["slow"]) as other:
            stolen = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                stolen += other.poll(500)
            assert stolen == []
        wait_for(lambda: worker.stats["accepted"] == 1, 20, "the task to finish")
    finally:
        worker.stop()
        t.join(30)
    assert runs == [1]
    with Admin(addr) as a:
        d = a.describe_share_group("g")
    assert (d.available, d.acquired) == (0, 0)


def _dead_letters(addr: str, topic: str, n: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    with Admin(addr) as a:  # the dead-letter topic is created with the first dead letter
        wait_for(lambda: topic in {t.name for t in a.list_topics()}, 20, f"topic {topic}")
    with Consumer(addr) as c:
        c.assign([(topic, 0)])
        c.seek_to_beginning()
        deadline = time.monotonic() + 20
        while len(out) < n:
            assert time.monotonic() < deadline, f"only {len(out)} dead letters"
            for records in c.poll(500).values():
                for r in records:
                    h = {k: v.decode() for k, v in r.headers}
                    h["value"] = (r.value or b"").decode()
                    out.append(h)
    return out


def test_reject_and_poison_reach_the_dead_letter_topic(broker: BrokerProcess) -> None:
    """Reject("bad address") dead-letters at once (delivery count 1, reason REJECTED, the
    text as error); a task that always raises is delivered exactly max_delivery_attempts
    (3) times and then dead-lettered (reason MAX_DELIVERY_ATTEMPTS, error "ValueError:
    ..."), with source topic, partition and offset."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("mail", 1)
        a.create_share_group("g", max_delivery_attempts=3)
    produce(addr, "mail", 2)  # task-0000 is rejected, task-0001 always fails
    deliveries: list[tuple[str, int]] = []
    worker = Worker(
        addr,
        "g",
        ["mail"],
        concurrency=2,
        retry_backoff_ms=10,
        retry_backoff_max_ms=50,
        poll_timeout_ms=100,
    )

    @worker.task
    def send(msg: ShareMessage) -> None:
        deliveries.append(((msg.value or b"").decode(), msg.delivery_count))
        if msg.value == b"task-0000":
            raise Reject("bad address")
        raise ValueError("smtp down")

    t = _run_in_thread(worker)
    try:
        letters = _dead_letters(addr, "g.dlq", 2)
    finally:
        worker.stop()
        t.join(30)
    by = {h["value"]: h for h in letters}
    rej, poison = by["task-0000"], by["task-0001"]
    assert rej["logstore-dlq-reason"] == "REJECTED" and rej["logstore-dlq-error"] == "bad address"
    assert rej["logstore-dlq-delivery-count"] == "1"
    assert poison["logstore-dlq-reason"] == "MAX_DELIVERY_ATTEMPTS"
    assert poison["logstore-dlq-delivery-count"] == "3"
    assert poison["logstore-dlq-error"] == "ValueError: smtp down"
    for h, off in ((rej, "0"), (poison, "1")):
        assert (h["logstore-dlq-source-topic"], h["logstore-dlq-source-partition"]) == ("mail", "0")
        assert h["logstore-dlq-source-offset"] == off
    assert [c for v, c in deliveries if v == "task-0001"] == [1, 2, 3]
    assert [c for v, c in deliveries if v == "task-0000"] == [1]


def test_acks_are_batched_and_an_expired_lock_is_refused(broker: BrokerProcess) -> None:
    """200 records acked one by one cost a handful of requests, not 200; an ack after the
    1 s lock expired is refused: commit() raises FailedPreconditionError naming the offset,
    on_ack_error gets it, and the record is delivered again (delivery count 2)."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("acks", 1)
        a.create_share_group("g", visibility_timeout_ms=1_000)
    produce(addr, "acks", 201)
    refused: list[object] = []
    with ShareConsumer(addr, "g", ["acks"], max_records=200, on_ack_error=refused.extend) as c:
        got: list[ShareMessage] = []
        while len(got) < 200:
            got += c.poll(2000, max_records=200 - len(got))
        before = c.requests_sent
        for m in got:
            m.ack()
        c.commit()
        assert c.requests_sent - before <= 1 and refused == []
        [late] = c.poll(5000)
        assert late.offset == 200
        time.sleep(1.5)  # its lock expires
        late.ack()
        with pytest.raises(errors.FailedPreconditionError, match=r"acks-0 offset 200"):
            c.commit()
        assert len(refused) == 1
        again = []
        deadline = time.monotonic() + 10
        while not again and time.monotonic() < deadline:
            again = c.poll(1000)
        assert [(m.offset, m.delivery_count) for m in again] == [(200, 2)]
        again[0].ack()


def test_consumer_rides_through_a_broker_kill9_and_restart(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """A ShareConsumer acking 300 records while the broker is kill -9'ed and restarted on
    the same port: it retries, rejoins after UNKNOWN_MEMBER_ID, and in the end every record
    was processed, and none whose ACCEPT commit() confirmed is delivered again."""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("jobs", 2)
        a.create_share_group("g", visibility_timeout_ms=5_000)
    values = produce(addr, "jobs", 300, partitions=2)
    confirmed: set[str] = set()
    seen: set[str] = set()
    redelivered_confirmed: list[str] = []
    restarted = False
    procs = [broker]
    try:
        with ShareConsumer(addr, "g", ["jobs"], max_records=20, on_ack_error=lambda f: None) as c:
            first_member = c.member_id
            deadline = time.monotonic() + 90
            while confirmed != set(values):
                assert time.monotonic() < deadline, f"{len(confirmed)} of 300 confirmed"
                msgs = c.poll(1000)
                batch = []
                for m in msgs:
                    v = (m.value or b"").decode()
                    if v in confirmed:
                        redelivered_confirmed.append(v)
                    seen.add(v)
                    m.ack()
                    batch.append(v)
                try:
                    c.commit()
                    confirmed.update(batch)
                except errors.LogStoreError:
                    pass  # not confirmed: may come again, which is allowed
                if not restarted and len(confirmed) >= 100:
                    restarted = True
                    broker.kill()
                    procs.append(start_broker(broker.data_dir, "--listen", addr))
            assert c.member_id != first_member  # rejoined after UNKNOWN_MEMBER_ID
        assert restarted and seen == set(values)
        assert redelivered_confirmed == []
    finally:
        for p in procs[1:]:  # the fixture stops the first
            p.stop()


def test_a_retried_ack_whose_reply_was_lost_is_reported_ok(broker: BrokerProcess) -> None:
    """The reply to a ShareAcknowledge and to a ShareFetch carrying acks is lost after
    the broker applied them (a fault-injecting connection: the call goes through, then
    UNAVAILABLE is raised as a dropped reply would); the consumer sends them again, and
    the broker answers the repeats OK (it remembers this member's applied ranges), so
    commit() raises nothing, on_ack_error gets nothing, and every record is accepted
    once: none is delivered again. (On the old broker each repeat was refused as
    ALREADY_ACKNOWLEDGED and commit raised FailedPreconditionError.)"""
    addr = broker.grpc_address
    with Admin(addr) as a:
        a.create_topic("lost", 1)
        a.create_share_group("g", visibility_timeout_ms=60_000)
    produce(addr, "lost", 20)
    refused: list[object] = []
    with ShareConsumer(
        addr,
        "g",
        ["lost"],
        max_records=10,
        on_ack_error=refused.extend,
        ack_flush_interval_ms=600_000,  # acks ride on the next fetch, or on commit
    ) as c:
        real_call = c._conn.call
        drop = {"ShareAcknowledge": 1, "ShareFetch": 0}

        def lossy(method: object, request: object, timeout_s: float) -> object:
            reply = real_call(method, request, timeout_s)  # type: ignore[arg-type]
            name = type(request).__name__.removesuffix("Request")
            if drop.get(name) and getattr(request, "acknowledgements", None):
                drop[name] -= 1
                raise errors.BrokerUnavailableError("injected: the reply was lost")
            return reply

        c._conn.call = lossy  # type: ignore[method-assign,assignment]
        got: list[ShareMessage] = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += c.poll(2000, max_records=10 - len(got))
        assert [m.offset for m in got] == list(range(10))
        for m in got[:8]:
            m.ack()
        got[8].reject("bad")
        got[9].nack()
        c.commit()  # applied, reply dropped, retried: OK
        assert drop["ShareAcknowledge"] == 0 and refused == []
        # now a fetch carrying acks loses its reply: poll retries it with the acks
        drop["ShareFetch"] = 1
        more: list[ShareMessage] = []
        deadline = time.monotonic() + 30
        while len(more) < 11 and time.monotonic() < deadline:
            batch = c.poll(2000, max_records=11 - len(more))
            for m in batch:
                m.ack()
            more += batch
        assert c.poll(1500) == []  # carries the last acks
        assert drop["ShareFetch"] == 0 and refused == []
        # offset 9 (released) came back once; 10..19 once each; nothing else
        assert sorted(m.offset for m in more) == list(range(9, 20))
        assert c.poll(1500) == []
