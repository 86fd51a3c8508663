"""``logctl queues`` and ``logctl dlq`` as subprocesses: argument errors (exit 2, one line,
before any request), and against a real broker: create / alter / describe (table and JSON
counts) / list / delete, dead letters listed and shown with their source and reason, and
redrive that moves each once; every refused command changes nothing."""

from __future__ import annotations

import json
import time

import pytest

from logstore.client import Admin, Producer, ShareConsumer
from tests.brokerproc import BrokerProcess
from tests.test_cli import assert_one_line_error, logctl, logctl_many

ARG_ERRORS: list[tuple[tuple[str, ...], str]] = [
    (("queues", "create", "g", "--topic", "a:b"), r"--topic 'a:b': use TOPIC or TOPIC:PRIORITY"),
    (("queues", "create", "g", "--topic", "a:1:2"), r"--topic 'a:1:2'"),
    (("queues", "create", "g", "--topic", "a:1", "--topic", "a:2"), r"given twice"),
    (("queues", "create", "g", "--visibility-timeout", "30"), r"bad duration '30'"),
    (("queues", "create", "g", "--visibility-timeout", "0s"), r"more than 0"),
    (("queues", "create", "g", "--ttl", "1 hour"), r"bad duration '1 hour' for --ttl"),
    (("queues", "create", "g", "--max-queue-latency", "-1s"), r"--max-queue-latency"),
    (("queues", "create", "g", "--auto-offset-reset", "middle"), r"earliest or latest"),
    (("queues", "create", "g", "--dead-letter-topic", ""), r"must not be empty"),
    (("queues", "create", "g", "--max-delivery-attempts", "x"), r"attempts.*valid integer"),
    (("queues", "alter", "g"), r"nothing to alter"),
    (("queues", "describe"), r"Missing argument"),
    (("dlq", "list", "g", "--max", "-1"), r"--max must be >= 0"),
    (("dlq", "show", "g", "--max", "-5"), r"--max must be >= 0"),
    (("dlq", "redrive", "g", "--max", "0"), r"--max must be >= 1"),
    (("dlq", "redrive", "g", "--to", ""), r"--to must not be empty"),
    (("queues", "list", "--bootstrap", "nohost"), r"bad broker address"),
]


@pytest.mark.parametrize(("args", "pattern"), ARG_ERRORS)
def test_argument_errors_are_one_line_exit_2(args: tuple[str, ...], pattern: str) -> None:
    """Each bad argument: exit 2 with one stderr line naming it, before any request (no
    broker listens on the default address)."""
    proc = logctl(None, *args, env={"LOGSTORE_CONNECT_TIMEOUT_MS": "200"})
    assert_one_line_error(proc, 2, pattern)


def test_create_alter_describe_list_delete(broker: BrokerProcess) -> None:
    """create sets exactly the settings given (the rest the broker's defaults), alter
    changes only what it names, describe and list show the group (table and JSON), and
    delete removes it."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("emails.high", 1)
        a.create_topic("emails.low", 2)
    create = logctl(
        broker,
        "queues",
        "create",
        "emails",
        "--topic",
        "emails.high:10",
        "--topic",
        "emails.low:1",
        "--visibility-timeout",
        "45s",
        "--max-delivery-attempts",
        "3",
        "--ttl",
        "1h",
        "--dead-letter-topic",
        "emails.dead",
        "--ordering-keys",
        "--max-queue-latency",
        "10s",
        "-o",
        "json",
    )
    assert create.returncode == 0, create.stderr
    s = json.loads(create.stdout)["settings"]
    assert s["visibility_timeout_ms"] == 45_000 and s["max_delivery_attempts"] == 3
    assert s["message_ttl_ms"] == 3_600_000 and s["dead_letter_topic"] == "emails.dead"
    assert s["ordering_keys"] is True and s["max_queue_latency_ms"] == 10_000
    assert s["topic_priorities"] == {"emails.high": 10, "emails.low": 1}
    assert s["max_inflight_records"] == 2000  # default
    alter = logctl(
        broker, "queues", "alter", "emails", "--max-delivery-attempts", "7", "-o", "json"
    )
    assert alter.returncode == 0, alter.stderr
    s2 = json.loads(alter.stdout)["settings"]
    assert s2 == {**s, "max_delivery_attempts": 7}
    lst, lst_json, text, js = logctl_many(
        broker,
        [
            ("queues", "list"),
            ("queues", "list", "-o", "json"),
            ("queues", "describe", "emails"),
            ("queues", "describe", "emails", "-o", "json"),
        ],
    )
    assert lst.returncode == 0 and ["emails", "0"] in [ln.split() for ln in lst.stdout.splitlines()]
    assert {"group_id": "emails", "members": 0} in json.loads(lst_json.stdout)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("share group emails: 0 member(s), available 0")
    d = json.loads(js.stdout)
    assert d["group_id"] == "emails" and d["settings"] == s2
    for key in ("available", "acquired", "delayed", "dead_lettered", "oldest_available_age_ms"):
        assert d[key] == 0, key
    delete = logctl(broker, "queues", "delete", "emails")
    assert delete.returncode == 0 and "deleted share group emails" in delete.stdout
    gone = logctl(broker, "queues", "describe", "emails")
    assert_one_line_error(gone, 1, r"emails")


def test_describe_counts_members_and_in_flight(broker: BrokerProcess) -> None:
    """With 5 records, 2 acquired by a consumer and 1 acknowledged, describe shows 1
    accepted past, 2 acquired, 2 available, the member with 2 in flight."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("work", 1)
    with Producer(broker.grpc_address) as p:
        for i in range(5):
            p.send("work", f"t{i}".encode(), partition=0)
        p.flush()
    with ShareConsumer(broker.grpc_address, "q", ["work"], client_id="w1") as c:
        got = c.poll(5000, max_records=3)
        assert len(got) == 3
        got[0].ack()
        c.commit()
        proc = logctl(broker, "queues", "describe", "q", "-o", "json")
        assert proc.returncode == 0, proc.stderr
        d = json.loads(proc.stdout)
        assert (d["acquired"], d["available"], d["dead_lettered"]) == (2, 2, 0)
        [m] = d["members"]
        assert m["client_id"] == "w1" and m["inflight_records"] == 2 and m["host"]
        assert m["member_id"] == c.member_id
        [p0] = d["partitions"]
        assert (p0["topic"], p0["start_offset"], p0["end_offset"]) == ("work", 1, 5)
        text = logctl(broker, "queues", "describe", "q")
        assert "acquired 2" in text.stdout and "w1" in text.stdout
        refused = logctl(broker, "queues", "delete", "q")
        assert_one_line_error(refused, 1, r"share group q has 1 consumers")
        for m in got[1:]:
            m.ack()
    assert logctl(broker, "queues", "describe", "q").returncode == 0  # not deleted


def _poison(broker: BrokerProcess, group: str, n: int) -> None:
    """Create ``group`` (2 attempts) on topic 'jobs' and dead-letter ``n`` records by
    rejecting each (reason "bad-<i>")."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("jobs", 1)
        a.create_share_group(group, max_delivery_attempts=2)
    with Producer(broker.grpc_address) as p:
        for i in range(n):
            p.send("jobs", f"job-{i}".encode(), key=f"k{i}".encode(), partition=0)
        p.flush()
    with ShareConsumer(broker.grpc_address, group, ["jobs"]) as c:
        seen = 0
        deadline = time.monotonic() + 20
        while seen < n and time.monotonic() < deadline:
            for m in c.poll(1000):
                m.reject(f"bad-{m.offset}")
                seen += 1
        c.commit()
    assert seen == n


def _wait_dead(broker: BrokerProcess, group: str, n: int) -> None:
    deadline = time.monotonic() + 20
    with Admin(broker.grpc_address) as a:
        while a.describe_share_group(group).dead_lettered < n:
            assert time.monotonic() < deadline, "dead letters not produced"
            time.sleep(0.1)


def test_dlq_list_show_and_redrive_once(broker: BrokerProcess) -> None:
    """Rejected records appear in dlq list/show with source topic, partition, offset,
    delivery count 1, reason REJECTED and the error text; redrive moves them back once
    (a second redrive moves none), and --to a missing topic fails changing nothing."""
    _poison(broker, "jobsq", 3)
    _wait_dead(broker, "jobsq", 3)
    lst, show, js = logctl_many(
        broker,
        [
            ("dlq", "list", "jobsq"),
            ("dlq", "show", "jobsq", "--max", "2"),
            ("dlq", "list", "jobsq", "-o", "json"),
        ],
    )
    assert lst.returncode == 0, lst.stderr
    assert lst.stdout.startswith("share group jobsq: 3 dead letter(s) in jobsq.dlq")
    rows = [ln.split() for ln in lst.stdout.splitlines()[2:]]
    assert [r[1:5] for r in rows] == [
        [f"jobs-0@{i}", "1", "REJECTED", f"bad-{i}"] for i in range(3)
    ]
    docs = json.loads(js.stdout)["dead_letters"]
    assert [(d["source_topic"], d["source_partition"], d["source_offset"]) for d in docs] == [
        ("jobs", 0, i) for i in range(3)
    ]
    assert all(d["first_delivery_ms"] and d["last_delivery_ms"] for d in docs)
    assert show.returncode == 0, show.stderr
    assert show.stdout.count("from jobs-0@") == 2 and "value: job-0" in show.stdout
    assert "key: k0" in show.stdout and "header logstore-dlq-reason: REJECTED" in show.stdout
    bad_to = logctl(broker, "dlq", "redrive", "jobsq", "--to", "nope")
    assert_one_line_error(bad_to, 1, r"nope")
    unknown = logctl(broker, "dlq", "redrive", "nosuchgroup")
    assert_one_line_error(unknown, 1, r"nosuchgroup")
    first = logctl(broker, "dlq", "redrive", "jobsq", "--max", "2", "-o", "json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"group_id": "jobsq", "redriven": 2, "remaining": 1}
    rest = logctl(broker, "dlq", "redrive", "jobsq")
    assert rest.returncode == 0 and "redrove 1 dead letter(s)" in rest.stdout
    again = logctl(broker, "dlq", "redrive", "jobsq", "-o", "json")
    assert json.loads(again.stdout)["redriven"] == 0
    with Admin(broker.grpc_address) as a:
        [end] = a.list_offsets("jobs", "latest")
    assert end.offset == 6  # 3 originals + 3 redriven, none twice


def test_dlq_of_unknown_group_and_empty_dlq(broker: BrokerProcess) -> None:
    """dlq list of an unknown group is one line and exit 1; of a group with no dead
    letters (its dead-letter topic not created yet) it lists none."""
    proc = logctl(broker, "dlq", "list", "nosuch")
    assert_one_line_error(proc, 1, r"nosuch")
    with Admin(broker.grpc_address) as a:
        a.create_share_group("fresh")
    ok = logctl(broker, "dlq", "list", "fresh", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["dead_letters"] == []


def test_refused_create_and_alter_change_nothing(broker: BrokerProcess) -> None:
    """create with an unknown --topic, a value out of the broker's bounds, or another config
    for an existing group, and alter of an unknown group: exit 1, one line, settings kept."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("t", 1)
        a.create_share_group("keep", visibility_timeout_ms=20_000)
    cases = [
        (("queues", "create", "new", "--topic", "missing"), r"missing"),
        (("queues", "create", "new", "--max-delivery-attempts", "0"), r"max_delivery_attempts"),
        (("queues", "create", "new", "--visibility-timeout", "30d"), r"visibility"),
        (("queues", "create", "keep", "--visibility-timeout", "40s"), r"keep"),
        (("queues", "alter", "keep", "--topic", "missing:3"), r"missing"),
        (("queues", "alter", "ghost", "--max-delivery-attempts", "3"), r"ghost"),
        (("queues", "delete", "ghost"), r"ghost"),
        (("queues", "describe", "ghost"), r"ghost"),
        (("dlq", "show", "ghost"), r"ghost"),
    ]
    for args, pattern in cases:
        assert_one_line_error(logctl(broker, *args), 1, pattern)
    with Admin(broker.grpc_address) as a:
        assert [g.group_id for g in a.list_share_groups()] == ["keep"]
        s = a.describe_share_group("keep").settings
    assert s.visibility_timeout_ms == 20_000 and s.topic_priorities == {}


def test_describe_counts_delayed_records(broker: BrokerProcess) -> None:
    """A record produced with `logctl produce --delay 1h` is not handed out and counts as
    delayed in describe; one produced without a delay is handed out."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("later", 1)
    held = logctl(broker, "produce", "later", "--delay", "1h", stdin=b"tomorrow\n")
    assert held.returncode == 0, held.stderr
    now = logctl(broker, "produce", "later", stdin=b"today\n")
    assert now.returncode == 0, now.stderr
    with ShareConsumer(broker.grpc_address, "dq", ["later"]) as c:
        got = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got += c.poll(500)
        assert [m.value for m in got] == [b"today"]
        got[0].ack()
        c.commit()
        proc = logctl(broker, "queues", "describe", "dq", "-o", "json")
    d = json.loads(proc.stdout)
    assert (d["delayed"], d["acquired"], d["available"]) == (1, 0, 0), d
