"""``logctl groups`` as a subprocess against a real broker: list, describe (table and
JSON, lag in records and seconds), reset-offsets with each spec and a dry run, delete
only when empty, and every wrong input as one stderr line with its exit code, leaving
the committed offsets unchanged. Groups are made through the raw Groups stubs."""

from __future__ import annotations

import json
import time

from logstore.v1 import groups_pb2 as gpb
from tests.brokerproc import BrokerProcess
from tests.test_broker_groups import Client
from tests.test_cli import assert_one_line_error, logctl, logctl_many


def member(c: Client, group: str, topic: str, offsets: dict[int, int]) -> str:
    """A member of ``group`` on ``topic`` (owning every partition) that committed
    ``offsets``; its member id."""
    r = c.join(group, [topic], client_id="cli-test")
    c.commit(group, r.member_id, r.member_epoch, {(topic, p): o for p, o in offsets.items()})
    return r.member_id


def leave(c: Client, group: str, member_id: str) -> None:
    c.groups.LeaveGroup(gpb.LeaveGroupRequest(group_id=group, member_id=member_id), timeout=10)


def test_list_and_describe_table_and_json(gbroker: BrokerProcess, raw: Client) -> None:
    """list shows the group's state and members; describe prints a table and JSON whose
    committed offset, end, lag in records and lag in seconds are the broker's numbers."""
    raw.topic("d", 2)
    raw.produce("d", 0, 10, timestamp_ms=int(time.time() * 1000) - 60_000)
    raw.produce("d", 1, 3)
    mid = member(raw, "g-d", "d", {0: 4, 1: 3})
    lst, lst_json, text, js = logctl_many(
        gbroker,
        [
            ("groups", "list"),
            ("groups", "list", "--output", "json"),
            ("groups", "describe", "g-d"),
            ("groups", "describe", "g-d", "--output", "json"),
        ],
    )
    assert lst.returncode == 0, lst.stderr
    assert ["g-d", "stable", "1"] in [ln.split() for ln in lst.stdout.splitlines()]
    assert {"group_id": "g-d", "state": "stable", "member_count": 1} in json.loads(lst_json.stdout)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("group g-d: stable, epoch ") and "lag 6 record(s)" in lines[0]
    member_row = next(ln.split() for ln in lines if ln.startswith(mid))
    assert member_row[1] == "cli-test" and member_row[-2:] == ["d:0,1", "-"]
    rows = {ln.split()[1]: ln.split() for ln in lines if ln.startswith("d ")}
    assert rows["0"][2:6] == [mid, "4", "10", "6"]
    assert 60.0 <= float(rows["0"][6]) < 120.0
    assert rows["1"][3:7] == ["3", "3", "0", "0.0"]
    d = json.loads(js.stdout)
    assert (d["group_id"], d["state"], d["assignor"]) == ("g-d", "stable", "uniform")
    [m] = d["members"]
    assert (m["member_id"], m["client_id"]) == (mid, "cli-test") and m["host"]
    assert m["assigned"] == [{"topic": "d", "partition": 0}, {"topic": "d", "partition": 1}]
    p0, p1 = d["partitions"]
    assert (p0["committed_offset"], p0["log_end_offset"], p0["lag_records"]) == (4, 10, 6)
    assert 60_000 <= p0["lag_ms"] < 120_000 and p0["lag_seconds"] == p0["lag_ms"] / 1000
    assert (p1["lag_records"], p1["lag_ms"]) == (0, 0)
    leave(raw, "g-d", mid)
    out = logctl(gbroker, "groups", "list")
    assert ["g-d", "empty", "0"] in [ln.split() for ln in out.stdout.splitlines()]


def test_reset_offsets_each_spec_dry_run_and_topic_partitions(
    gbroker: BrokerProcess, raw: Client
) -> None:
    """Each of --to-earliest/--to-latest/--to-offset/--to-time (epoch ms, ISO, relative)/
    --shift-by commits what the plan says; --dry-run prints the plan and commits nothing;
    --topic T:P limits the reset to those partitions."""
    raw.topic("r", 2)
    raw.produce("r", 0, 10, timestamp_ms=1_000)
    raw.produce("r", 0, 10, timestamp_ms=2_000)
    raw.produce("r", 1, 5, timestamp_ms=1_000)
    leave(raw, "g-r", member(raw, "g-r", "r", {0: 5, 1: 2}))
    dry = logctl(gbroker, "groups", "reset-offsets", "g-r", "--to-latest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [ln.split() for ln in dry.stdout.splitlines()[1:3]] == [
        ["r", "0", "5", "20"],
        ["r", "1", "2", "5"],
    ]
    assert "dry run" in dry.stdout and "nothing committed" in dry.stdout
    assert raw.committed("g-r") == {("r", 0): 5, ("r", 1): 2}
    cases: list[tuple[tuple[str, ...], int]] = [
        (("--to-earliest",), 0),
        (("--to-latest",), 20),
        (("--to-offset", "12"), 12),
        (("--to-offset", "999"), 20),  # clamped to the end
        (("--shift-by", "-5"), 15),
        (("--shift-by", "-100"), 0),
        (("--to-time", "1500"), 10),
        (("--to-time", "1970-01-01T00:00:01.500Z"), 10),
        (("--to-time", "-1h"), 20),  # every record is older: the end
    ]
    for spec, want in cases:
        before = raw.committed("g-r")[("r", 0)]
        proc = logctl(
            gbroker, "groups", "reset-offsets", "g-r", *spec, "--topic", "r:0", "-o", "json"
        )
        assert proc.returncode == 0, (spec, proc.stderr)
        plan = json.loads(proc.stdout)
        assert plan["applied"] is True
        assert plan["partitions"] == [
            {"topic": "r", "partition": 0, "previous_offset": before, "new_offset": want}
        ], spec
        assert raw.committed("g-r") == {("r", 0): want, ("r", 1): 2}, spec
    whole = logctl(gbroker, "groups", "reset-offsets", "g-r", "--to-earliest", "--topic", "r")
    assert whole.returncode == 0 and "reset 2 partition(s) of group g-r" in whole.stdout
    assert raw.committed("g-r") == {("r", 0): 0, ("r", 1): 0}


def test_refused_commands_change_nothing(gbroker: BrokerProcess, raw: Client) -> None:
    """reset-offsets and delete of a group with members, an unknown group, topic or
    partition, and every bad argument: one stderr line, exit 1 (broker) or 2 (argument),
    and the committed offsets are unchanged after each."""
    raw.topic("x", 1)
    raw.produce("x", 0, 10)
    mid = member(raw, "g-x", "x", {0: 7})
    want = {("x", 0): 7}
    busy = logctl_many(
        gbroker,
        [
            ("groups", "reset-offsets", "g-x", "--to-earliest"),
            ("groups", "delete", "g-x"),
        ],
    )
    for proc in busy:
        assert_one_line_error(proc, 1, r"group g-x: it has 1 member\(s\); stop them first")
    assert raw.committed("g-x") == want
    leave(raw, "g-x", mid)
    reset = ("groups", "reset-offsets", "g-x")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("groups", "describe", "nope"), 1, r"consumer group 'nope' does not exist"),
        (("groups", "delete", "nope"), 1, r"consumer group 'nope' does not exist"),
        (("groups", "reset-offsets", "nope", "--to-earliest"), 1, r"'nope' does not exist"),
        ((*reset, "--to-earliest", "--topic", "missing"), 1, r"missing"),
        ((*reset, "--to-earliest", "--topic", "x:5"), 1, r"partition"),
        ((*reset,), 2, r"choose where to reset: --to-earliest, --to-latest"),
        ((*reset, "--to-earliest", "--to-offset", "3"), 2, r"not --to-earliest and --to-offset"),
        ((*reset, "--to-latest", "--shift-by", "1"), 2, r"not --to-latest and --shift-by"),
        ((*reset, "--to-time", "yesterday"), 2, r"bad time 'yesterday'"),
        ((*reset, "--to-offset", "-1"), 2, r"--to-offset"),
        ((*reset, "--to-offset", "abc"), 2, r"--to-offset"),
        ((*reset, "--to-earliest", "--topic", "x:a"), 2, r"--topic 'x:a': use TOPIC or"),
        ((*reset, "--to-earliest", "--topic", "x:"), 2, r"--topic 'x:': use TOPIC or"),
        ((*reset, "--to-earliest", "--topic", ":0"), 2, r"--topic ':0': use TOPIC or"),
    ]
    procs = logctl_many(gbroker, [args for args, _, _ in cases])
    for (args, code, pattern), proc in zip(cases, procs, strict=True):
        assert_one_line_error(proc, code, pattern)
        assert proc.stdout == "", args
    assert raw.committed("g-x") == want


def test_delete_only_when_empty(gbroker: BrokerProcess, raw: Client) -> None:
    """delete refuses a group with members; once empty it removes the group and its
    offsets (text and JSON output)."""
    raw.topic("del", 1)
    mid = member(raw, "g-del", "del", {0: 0})
    assert_one_line_error(logctl(gbroker, "groups", "delete", "g-del"), 1, r"1 member")
    assert raw.committed("g-del") == {("del", 0): 0}
    leave(raw, "g-del", mid)
    proc = logctl(gbroker, "groups", "delete", "g-del")
    assert proc.returncode == 0 and proc.stdout == "deleted group g-del\n", proc.stderr
    assert raw.committed("g-del") == {}
    listed = logctl(gbroker, "groups", "list", "--output", "json")
    assert "g-del" not in [g["group_id"] for g in json.loads(listed.stdout)]
    assert_one_line_error(logctl(gbroker, "groups", "delete", "g-del"), 1, r"does not exist")
