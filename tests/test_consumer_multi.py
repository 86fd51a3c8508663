"""The Consumer fetches its partitions with MultiFetch: one request for many
partitions, a partition's own error raised for it alone, seeks mid-flight."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from logstore import errors
from logstore.client import Admin, Consumer, GroupConsumer, Producer
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import scrape


@pytest.fixture(scope="module")
def cbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("cmulti") / "data")
    try:
        yield b
    finally:
        b.stop()


def _requests(text: str, method: str) -> float:
    pat = rf'logstore_requests_total\{{code="OK",method="{method}"\}} ([0-9.e+]+)'
    return sum(float(m) for m in re.findall(pat, text))


def _drain(c: Consumer, n: int, timeout_s: float = 60) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < n and time.monotonic() < deadline:
        for tp, recs in c.poll(500).items():
            out.setdefault(tp.partition, []).extend(r.value for r in recs if r.value is not None)
            got += len(recs)
    return out


def _filled_topic(addr: str, topic: str, partitions: int, rounds: int) -> None:
    """Create ``topic``; ``rounds`` records ``b"<part>-<i>"`` in every partition."""
    with Admin(addr) as a:
        a.create_topic(topic, partitions)
    with Producer(addr) as p:
        for i in range(rounds):
            for part in range(partitions):
                p.send(topic, f"{part}-{i}".encode(), partition=part)
        p.flush()


def _assign_from_start(c: Consumer, topic: str, partitions: int) -> None:
    c.assign([(topic, part) for part in range(partitions)])
    for part in range(partitions):
        c.seek((topic, part), 0)


def test_consumer_reads_300_partitions_with_few_multifetch_requests(cbroker) -> None:
    """Every record of 300 partitions comes back in order per partition, through
    MultiFetch only (no unary Fetch) and far fewer requests than partitions."""
    addr = cbroker.grpc_address
    _filled_topic(addr, "cm-wide", 300, 3)
    before = scrape(cbroker)
    with Consumer(addr, fetch_max_wait_ms=100) as c:
        _assign_from_start(c, "cm-wide", 300)
        out = _drain(c, 900)
    after = scrape(cbroker)
    assert out == {part: [f"{part}-{i}".encode() for i in range(3)] for part in range(300)}
    assert _requests(after, "Fetch") == _requests(before, "Fetch")
    multi = _requests(after, "MultiFetch") - _requests(before, "MultiFetch")
    # A range: how many requests depends on how polls and replies interleave; a
    # fetch per partition (the old consumer) would be at least 300.
    assert 1 <= multi < 100, multi


def test_a_partitions_own_error_is_raised_for_it_and_the_others_keep_their_data(
    cbroker,
) -> None:
    """A seek past the end of one partition: poll raises OffsetOutOfRangeError naming
    that partition, and the other partition's records still all arrive."""
    addr = cbroker.grpc_address
    with Admin(addr) as a:
        a.create_topic("cm-err", 2)
    with Producer(addr) as p:
        for i in range(5):
            p.send("cm-err", b"a%d" % i, partition=0)
            p.send("cm-err", b"b%d" % i, partition=1)
        p.flush()
    with Consumer(addr, fetch_max_wait_ms=100) as c:
        c.assign([("cm-err", 0), ("cm-err", 1)])
        c.seek(("cm-err", 0), 0)
        c.seek(("cm-err", 1), 1000)
        out: dict[int, list[bytes]] = {}
        raised = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (raised is None or len(out.get(0, [])) < 5):
            try:
                for tp, recs in c.poll(300).items():
                    out.setdefault(tp.partition, []).extend(r.value or b"" for r in recs)
            except errors.OffsetOutOfRangeError as exc:
                raised = exc
                c.seek(("cm-err", 1), 0)
        assert raised is not None
        assert raised.metadata["partition"] == "1" and raised.metadata["topic"] == "cm-err"
        assert out[0] == [b"a%d" % i for i in range(5)]
        while len(out.get(1, [])) < 5 and time.monotonic() < deadline:
            for tp, recs in c.poll(300).items():
                out.setdefault(tp.partition, []).extend(r.value or b"" for r in recs)
        assert out[1] == [b"b%d" % i for i in range(5)]


def test_a_seek_during_a_long_poll_keeps_the_other_partitions_fetching(cbroker) -> None:
    """With a long poll in flight over three idle partitions, a seek of one
    re-fetches it from the new offset and a record appended to another arrives."""
    addr = cbroker.grpc_address
    with Admin(addr) as a:
        a.create_topic("cm-seek", 3)
    with Producer(addr) as p:
        for i in range(4):
            p.send("cm-seek", b"s%d" % i, partition=2)
        p.flush()
        with Consumer(addr, fetch_max_wait_ms=5000) as c:
            c.assign([("cm-seek", n) for n in range(3)])
            c.seek(("cm-seek", 0), 0)
            c.seek(("cm-seek", 1), 0)
            c.seek(("cm-seek", 2), 4)
            assert c.poll(200) == {}  # a long poll over all three is now in flight
            c.seek(("cm-seek", 2), 2)
            p.send("cm-seek", b"late", partition=0)
            p.flush()
            out = _drain(c, 3, 30)
    assert out == {2: [b"s2", b"s3"], 0: [b"late"]}


def test_group_consumer_fetches_its_partitions_with_multifetch(cbroker) -> None:
    """A GroupConsumer owning 40 partitions reads them all through its inner
    Consumer's MultiFetch: no unary Fetch reaches the broker."""
    addr = cbroker.grpc_address
    with Admin(addr) as a:
        a.create_topic("cm-group", 40)
    with Producer(addr) as p:
        for part in range(40):
            p.send("cm-group", b"g%d" % part, partition=part)
        p.flush()
    before = scrape(cbroker)
    with GroupConsumer(
        addr, "cm-g", topics=["cm-group"], auto_offset_reset="earliest", fetch_max_wait_ms=100
    ) as g:
        got: set[bytes] = set()
        deadline = time.monotonic() + 60
        while len(got) < 40 and time.monotonic() < deadline:
            for recs in g.poll(500).values():
                got.update(r.value or b"" for r in recs)
    after = scrape(cbroker)
    assert got == {b"g%d" % part for part in range(40)}
    assert _requests(after, "Fetch") == _requests(before, "Fetch")
    assert _requests(after, "MultiFetch") > _requests(before, "MultiFetch")


def test_a_backlog_of_many_partitions_is_fetched_by_several_requests_in_flight(cbroker) -> None:
    """12 partitions with a backlog, fetch_max_bytes 1 MiB: their replies could hold
    12 MiB, so the first poll's fetch goes as 3 MultiFetch requests of 4 partitions
    (about _REQUEST_SPLIT_BYTES each; one request slot kept free), not one serial
    12 MiB reply. Every record still comes back once, in order per partition."""
    addr = cbroker.grpc_address
    _filled_topic(addr, "cm-split", 12, 20)
    with Consumer(addr, fetch_max_wait_ms=100, fetch_max_bytes=1 << 20) as c:
        _assign_from_start(c, "cm-split", 12)
        c._issue_all(time.monotonic())  # what the first poll sends
        sizes = sorted(len(members) for members, _ in c._fetches.values())
        assert sizes == [4, 4, 4]
        out = _drain(c, 240)
    assert out == {part: [f"{part}-{i}".encode() for i in range(20)] for part in range(12)}
