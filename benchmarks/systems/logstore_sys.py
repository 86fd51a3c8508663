"""logstore: the broker as a child process, and its client side for the workers.

The client side uses ``logstore.client`` (``Producer`` / ``Consumer``) when it
is importable, else the raw gRPC API with the ``logstore.wire`` encoders (what
the client does underneath: one ProduceRequest = a header serialized by upb +
the records encoded by ``wire.encode_values``; Fetch/Subscribe replies read
with identity deserializers). ``args["impl"]`` forces one: ``"client"`` or
``"raw"``; the figures record which was used.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._proc import Child
from benchmarks.systems import paced_values, payloads
from benchmarks.systems._base import System

_LINE = re.compile(r"^logstore listening grpc=(\S+) metrics=(\S+) data_dir=(.+)$")
MiB = 1 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MiB),
    ("grpc.max_send_message_length", 64 * MiB),
    # the tail's Subscribe read on its own thread, as the Consumer's channel does
    ("SingleThreadedUnaryStream", 1),
]
SERVICE = "/logstore.v1.LogStore/"


def client_available() -> bool:
    try:
        from logstore.client import Consumer, Producer  # noqa: F401
    except Exception:
        return False
    return True


def _impl(args: dict[str, Any]) -> str:
    impl = str(args.get("impl", "auto"))
    if impl == "auto":
        return "client" if client_available() else "raw"
    return impl


class Broker:
    """One broker process on a data directory; restartable (W6)."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra = extra
        #: Extra ``LOGSTORE_*`` settings (e.g. a shorter group heartbeat interval).
        self.env = dict(env or {})
        self.child: Child | None = None
        self.grpc_address = ""
        self.metrics_address = ""

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait for the first stdout line; return seconds from exec to it."""
        t0 = time.monotonic()
        args = [
            sys.executable,
            "-m",
            "logstore.broker",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            *self.extra,
        ]
        import subprocess

        env = {**os.environ, **self.env} if self.env else None
        self.child = Child(args, self.log_path, stdout=subprocess.PIPE, env=env)
        out = self.child.proc.stdout
        assert out is not None
        line = b""
        deadline = t0 + timeout_s
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or not self.child.alive():
                tail = self.child.log_tail()
                self.child.kill()
                raise RuntimeError(f"broker did not start; log tail:\n{tail}")
            ready, _, _ = select.select([out], [], [], 0.05)
            if ready:
                chunk = os.read(out.fileno(), 4096)
                line += chunk
        m = _LINE.match(line.split(b"\n", 1)[0].decode())
        if not m:
            self.child.kill()
            raise RuntimeError(f"unexpected first line from broker: {line!r}")
        self.grpc_address, self.metrics_address = m.group(1), m.group(2)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.child is not None
        rc = self.child.stop(sig, 30.0)
        self.child = None
        return rc


class Driver(System):
    name = "logstore"

    def __init__(self) -> None:
        super().__init__()
        self.broker: Broker | None = None
        self._channel: Any = None
        self._stub: Any = None

    def start(self, workdir: Path) -> None:
        import grpc

        from logstore.v1 import logstore_pb2_grpc

        self.workdir = workdir
        self.broker = Broker(workdir / "logstore-data", workdir / "logstore-broker.log")
        self.broker.start()
        self.child = self.broker.child
        self._channel = grpc.insecure_channel(self.broker.grpc_address, options=GRPC_OPTIONS)
        self._stub = logstore_pb2_grpc.LogStoreStub(self._channel)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.broker is not None and self.broker.child is not None:
            self.broker.stop()
        self.child = None

    def params(self) -> dict[str, Any]:
        assert self.broker is not None
        return {"grpc": self.broker.grpc_address}

    def create(self, topic: str, partitions: int = 1) -> None:
        from logstore.v1 import logstore_pb2 as pb

        self._stub.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=partitions), timeout=60)

    def delete(self, topic: str, partitions: int = 1) -> None:
        from logstore.v1 import logstore_pb2 as pb

        self._stub.DeleteTopic(pb.DeleteTopicRequest(name=topic), timeout=60)

    def label(self, durable: bool) -> str:
        return "acks=all (fsync)" if durable else "acks=1"

    def create_group(self, topic: str, group: str, partitions: int = 1) -> None:
        pass  # a group comes into being when its first member joins

    def group_outstanding(self, topic: str, group: str, partitions: int = 1) -> int:
        """End offsets minus the group's committed offsets (OffsetFetch), summed."""
        from logstore.v1 import groups_pb2 as gpb
        from logstore.v1 import groups_pb2_grpc

        stub = groups_pb2_grpc.GroupsStub(self._channel)
        want = [gpb.TopicPartitions(topic=topic, partitions=list(range(partitions)))]
        reply = stub.OffsetFetch(
            gpb.OffsetFetchRequest(group_id=group, partitions=want), timeout=30
        )
        committed = {o.partition: max(0, o.offset) for o in reply.offsets}
        ends = self.end_offsets(topic)
        return sum(end - committed.get(p, 0) for p, end in enumerate(ends))

    def wait_group_settled(
        self, group: str, members: int, partitions: set[tuple[str, int]], timeout_s: float = 120.0
    ) -> float:
        """Wait until ``group`` has settled (:func:`unsettled` is None); seconds waited."""
        from logstore.client import Admin

        with Admin(self.params()["grpc"]) as admin:
            return wait_settled(admin, group, members, partitions, timeout_s)

    def create_share_group(
        self, topic: str, group: str, visibility_ms: int, max_inflight_records: int = 0
    ) -> None:
        """A share group reading ``topic`` from its first record, records locked for
        ``visibility_ms`` (W8, W8R); ``max_inflight_records`` 0: the broker's default."""
        from logstore.client import Admin

        assert self.broker is not None
        extra = {"max_inflight_records": max_inflight_records} if max_inflight_records else {}
        with Admin(self.broker.grpc_address) as admin:
            admin.create_share_group(
                group, visibility_timeout_ms=visibility_ms, auto_offset_reset="earliest", **extra
            )

    def share_outstanding(self, topic: str, group: str) -> int:
        """Records of a share group not acknowledged yet (available + acquired + delayed)."""
        from logstore.client import Admin

        assert self.broker is not None
        with Admin(self.broker.grpc_address) as admin:
            d = admin.describe_share_group(group)
        return sum(p.available + p.acquired + p.delayed for p in d.partitions)

    def end_offsets(self, topic: str) -> list[int]:
        from logstore.v1 import logstore_pb2 as pb

        resp = self._stub.ListOffsets(
            pb.ListOffsetsRequest(topic=topic, position=pb.OFFSET_SPEC_LATEST), timeout=30
        )
        return [o.offset for o in sorted(resp.offsets, key=lambda o: o.partition)]


# ---- consumer groups: "settled" ----------------------------------------------------------------

#: How often the settle check asks DescribeGroup (ms): fine enough for the
#: rebalance figures (quoted in units of a 3 s heartbeat interval), cheap for the broker.
SETTLE_POLL_S = 0.02


def unsettled(desc: Any, members: int, partitions: set[tuple[str, int]]) -> str | None:
    """Why the group in ``desc`` (an ``Admin.describe_group`` answer) has not settled,
    or None when it has: exactly ``members`` members, none with partitions revoked
    and not yet released, each owning exactly its target, and every one of
    ``partitions`` owned by one member."""
    if len(desc.members) != members:
        return f"{len(desc.members)} of {members} members"
    owned: set[tuple[str, int]] = set()
    for m in desc.members:
        if m.revoking:
            return f"member {m.member_id} has {len(m.revoking)} partitions revoking"
        if set(m.assigned) != set(m.target):
            return f"member {m.member_id} owns {len(m.assigned)} of its {len(m.target)} targets"
        owned |= {(t, p) for t, p in m.assigned}
    if owned != partitions:
        return f"{len(partitions - owned)} partitions unowned"
    return None


def wait_settled(
    admin: Any, group: str, members: int, partitions: set[tuple[str, int]], timeout_s: float
) -> float:
    """Poll ``admin.describe_group`` every SETTLE_POLL_S until :func:`unsettled` is
    None; return the monotonic time of the first settled answer's request."""
    from logstore import errors

    deadline = time.monotonic() + timeout_s
    why = "no group yet"
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            why = unsettled(admin.describe_group(group), members, partitions) or ""
        except errors.GroupIdNotFoundError:
            why = "no group yet"
        if not why:
            return t
        time.sleep(SETTLE_POLL_S)
    raise TimeoutError(f"group {group} did not settle in {timeout_s} s: {why}")


# ---- worker side ------------------------------------------------------------------------------


def _channel(args: dict[str, Any]) -> Any:
    import grpc

    return grpc.insecure_channel(args["params"]["grpc"], options=GRPC_OPTIONS)


def _acks(durable: bool) -> int:
    from logstore.v1 import logstore_pb2 as pb

    return int(pb.ACKS_ALL if durable else pb.ACKS_LEADER)


def _records_per_batch(size: int, batch_bytes: int) -> int:
    # record on the wire: tag + len varint + (tag + len varint + value)
    per = size + 6
    return max(1, (batch_bytes - 256) // per)


def produce(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Send ``n`` records as fast as possible; per-request latency when raw."""
    if _impl(args) == "client":
        return _produce_client(args, ready)
    from logstore.v1 import logstore_pb2 as pb
    from logstore.wire import encode_values

    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    parts = list(args.get("partitions_list") or [0])
    per = _records_per_batch(size, int(args.get("batch_bytes", MiB)))
    inflight_max = int(args.get("inflight", 4))
    values = payloads(size, n)
    heads = [
        pb.ProduceRequest(
            topic=topic, partition=p, acks=_acks(bool(args["durable"]))
        ).SerializeToString()
        for p in parts
    ]
    ch = _channel(args)
    call = ch.unary_unary(
        SERVICE + "Produce",
        request_serializer=None,
        response_deserializer=pb.ProduceResponse.FromString,
    )
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    lat: list[int] = []
    inflight: list[tuple[Any, int, int]] = []
    ready()
    start = time.monotonic()
    sent = done = 0
    b = 0
    while sent < n and time.monotonic() < deadline:
        k = min(per, n - sent)
        req = heads[b % len(heads)] + encode_values(values[sent : sent + k])
        b += 1
        inflight.append((call.future(req, timeout=60), time.monotonic_ns(), k))
        sent += k
        if len(inflight) >= inflight_max:
            f, t, kk = inflight.pop(0)
            f.result()
            lat.append(time.monotonic_ns() - t)
            done += kk
    for f, t, kk in inflight:
        f.result()
        lat.append(time.monotonic_ns() - t)
        done += kk
    end = time.monotonic()
    ch.close()
    return {
        "start": start,
        "end": end,
        "count": done,
        "bytes": done * size,
        "lat_ns": lat,
        "impl": "raw",
    }


def _produce_client(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    from logstore.client import Producer

    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    parts = list(args.get("partitions_list") or [0])
    values = payloads(size, n)
    method = str(args.get("method", "send_many"))
    # round-robin in chunks of n / partitions records (at most 10,000), so every
    # partition gets records (W5 at 1,000 partitions: 200 records a chunk)
    chunk = max(1, min(10_000, n // len(parts)))
    acks = "all" if args["durable"] else "1"
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    producer = Producer(
        args["params"]["grpc"],
        acks=acks,
        linger_ms=int(args.get("linger_ms", 5)),
        batch_bytes=int(args.get("batch_bytes", MiB)),
    )
    try:
        ready()
        start = time.monotonic()
        sent = 0
        b = 0
        while sent < n and time.monotonic() < deadline:
            k = min(chunk, n - sent)
            p = parts[b % len(parts)]
            b += 1
            if method == "send":
                send = producer.send
                for v in values[sent : sent + k]:
                    send(topic, v, partition=p)
            else:
                producer.send_many(topic, values[sent : sent + k], partition=p)
            sent += k
        producer.flush()
        end = time.monotonic()
    finally:
        producer.close()
    return {"start": start, "end": end, "count": sent, "bytes": sent * size, "impl": "client"}


def replay(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Read ``n`` records of partition 0 from offset 0. mode: objects | columns | frames."""
    mode = str(args.get("mode", "objects"))
    if _impl(args) == "client" and mode != "frames":
        return _replay_client(args, ready)
    from logstore.v1 import logstore_pb2 as pb
    from logstore.wire import decode_header, decode_records

    n, topic = int(args["n"]), str(args["topic"])
    ch = _channel(args)
    fetch = ch.unary_unary(
        SERVICE + "Fetch",
        request_serializer=pb.FetchRequest.SerializeToString,
        response_deserializer=None,
    )
    max_bytes = int(args.get("max_bytes", 4 * MiB))
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = time.monotonic()
    offset = count = nbytes = 0
    while count < n and time.monotonic() < deadline:
        raw = fetch(
            pb.FetchRequest(topic=topic, partition=0, offset=offset, max_bytes=max_bytes),
            timeout=60,
        )
        resp = pb.FetchResponse.FromString(raw) if mode == "objects" else None
        nbytes += len(raw)
        if mode == "frames":
            # walk the frame heads: O(1) Python per batch, the bytes are never copied
            mv = memoryview(raw)
            pos = 0
            while pos < len(mv) and mv[pos] == 0x0A:
                h = decode_header(mv, pos)
                skip = max(0, offset - h.base_offset)
                count += h.record_count - skip
                offset = h.next_offset
                pos += h.frame_size
        else:
            assert resp is not None
            if not resp.batches:
                break
            for batch in resp.batches:
                recs = decode_records(
                    batch.SerializeToString(), batch.base_offset, batch.base_timestamp_ms, offset
                )
                count += len(recs)
                offset = batch.base_offset + batch.record_count
        if raw == b"" or (mode == "frames" and pos == 0):
            break
    end = time.monotonic()
    ch.close()
    return {"start": start, "end": end, "count": count, "bytes": nbytes, "impl": "raw"}


def _replay_client(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    from logstore.client import Consumer

    n, topic = int(args["n"]), str(args["topic"])
    mode = str(args.get("mode", "objects"))
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    max_records = int(args.get("max_records", 100_000))
    consumer = Consumer(args["params"]["grpc"], fetch_max_bytes=int(args.get("max_bytes", 4 * MiB)))
    try:
        consumer.assign([(topic, 0)])
        consumer.seek((topic, 0), 0)
        ready()
        start = time.monotonic()
        count = 0
        while count < n and time.monotonic() < deadline:
            if mode == "columns":
                batches = consumer.poll_columns(timeout_ms=1000, max_records=max_records)
                got = sum(len(b.offsets) for b in batches.values())
            else:
                polled = consumer.poll(timeout_ms=1000, max_records=max_records)
                got = sum(len(v) for v in polled.values())
            count += got
        end = time.monotonic()
    finally:
        consumer.close()
    return {"start": start, "end": end, "count": count, "bytes": 0, "impl": "client"}


def replay_parts(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W5 consumer side: one ``Consumer`` assigned every partition of ``topic``
    (``partitions``), from offset 0, polling columns until ``n`` records.

    ``fetch`` = "multi" (the Consumer as shipped: one MultiFetch for all its
    ready partitions) or "unary" (its fallback for brokers without MultiFetch:
    one Fetch per partition, which is what the Consumer did before issue 12).
    """
    from logstore.client import Consumer

    n, topic, parts = int(args["n"]), str(args["topic"]), int(args["partitions"])
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    consumer = Consumer(args["params"]["grpc"], fetch_max_wait_ms=100)
    if args.get("fetch") == "unary":
        consumer._multi = False  # the per-partition Fetch path (benchmark comparison only)
    try:
        consumer.assign([(topic, p) for p in range(parts)])
        for p in range(parts):
            consumer.seek((topic, p), 0)
        ready()
        start = time.monotonic()
        count = 0
        while count < n and time.monotonic() < deadline:
            batches = consumer.poll_columns(timeout_ms=1000)
            count += sum(len(b.offsets) for b in batches.values())
        end = time.monotonic()
        requests = consumer._fetch_seq  # fetch requests sent (MultiFetch or Fetch)
    finally:
        consumer.close()
    return {
        "start": start,
        "end": end,
        "count": count,
        "bytes": 0,
        "impl": "client",
        "requests": requests,
    }


def tail(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """Subscribe from offset 0 of a fresh topic; latency = receive - stamp in payload."""
    import grpc
    import numpy as np

    from logstore.v1 import logstore_pb2 as pb

    n, topic = int(args["n"]), str(args["topic"])
    deadline_s = float(args.get("deadline_s", 60))
    ch = _channel(args)
    sub = ch.unary_stream(
        SERVICE + "Subscribe",
        request_serializer=pb.SubscribeRequest.SerializeToString,
        response_deserializer=None,
    )
    lat = np.zeros(n, dtype=np.int64)
    count = 0
    stream = sub(pb.SubscribeRequest(topic=topic, partition=0, offset=0), timeout=deadline_s)
    ready()
    start = time.monotonic()
    from_bytes = int.from_bytes
    try:
        for raw in stream:
            now = time.monotonic_ns()
            msg = pb.SubscribeResponse.FromString(raw)
            for batch in msg.batches:
                for r in batch.records:
                    if count < n:
                        lat[count] = now - from_bytes(r.value[:8], "little")
                    count += 1
            if count >= n:
                break
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        stream.cancel()
        ch.close()
    end = time.monotonic()
    return {"start": start, "end": end, "count": count, "lat_ns": lat[: min(count, n)]}


def paced(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """ProduceStream at ``rate`` records/s for ``seconds``; the records due within
    ``linger_ms`` (default 1) go as one batch, and with at most ``max_in_flight``
    (default 5, the Producer's) messages unanswered: records that come due while
    that many are in flight go together in the next message once one is answered
    (as the ``Producer`` batches whatever arrives while its requests are in
    flight; without it linger 0 is one message per record, which fell seconds
    behind at 2,000/s)."""
    import queue

    from benchmarks.systems import paced_steps
    from logstore.v1 import logstore_pb2 as pb
    from logstore.wire import encode_values

    rate, seconds, size, topic = (
        float(args["rate"]),
        float(args["seconds"]),
        int(args["size"]),
        args["topic"],
    )
    total = int(rate * seconds)
    max_in_flight = int(args.get("max_in_flight", 5))
    acks = _acks(bool(args["durable"]))
    ch = _channel(args)
    call = ch.stream_stream(
        SERVICE + "ProduceStream",
        request_serializer=None,
        response_deserializer=pb.ProduceResponse.FromString,
    )
    q: queue.Queue[bytes | None] = queue.Queue(maxsize=1024)

    def requests() -> Iterator[bytes]:
        while (item := q.get()) is not None:
            yield item

    replies = call(requests(), timeout=seconds + 60)
    errors: list[str] = []
    answered = threading.Condition()
    acked = [0]

    def drain() -> None:
        try:
            for r in replies:
                if r.status.code != 0:
                    errors.append(r.status.message)
                with answered:
                    acked[0] += 1
                    answered.notify()
        except Exception as exc:
            errors.append(str(exc))
        with answered:
            acked[0] = 1 << 62  # nothing more will be answered: stop holding records
            answered.notify()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    ready()
    start = time.monotonic()
    count = 0
    sent = 0  # messages
    pending: list[bytes] = []

    def send_pending() -> None:
        nonlocal sent, count
        head = pb.ProduceRequest(
            topic=topic, partition=0, acks=acks, request_id=sent + 1
        ).SerializeToString()
        q.put(head + encode_values(pending))
        sent += 1
        count += len(pending)
        pending.clear()

    for wait_s, vals in paced_steps(rate, total, size, float(args.get("linger_ms", 1))):
        pending += vals
        with answered:
            if pending and sent - acked[0] >= max_in_flight:
                # hold them until a message is answered (or the next is due)
                answered.wait(wait_s if wait_s > 0 else None)
            free = sent - acked[0] < max_in_flight
        if pending and free:
            send_pending()
        elif wait_s > 0 and not pending:
            time.sleep(wait_s)
    while pending:
        with answered:
            while sent - acked[0] >= max_in_flight:
                answered.wait()
        send_pending()
    end = time.monotonic()
    q.put(None)
    t.join(timeout=60)
    ch.close()
    if errors:
        raise RuntimeError(f"produce errors: {errors[:3]}")
    return {"start": start, "end": end, "count": count}


def group_drain(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W7 member: a ``logstore.client.GroupConsumer`` of ``args["group"]``
    (``auto_offset_reset="earliest"``, ``poll_columns()``, then a synchronous
    ``commit()`` of what was returned, one OffsetCommit per poll).

    Before timing: join and poll (the topic is still empty) until the parent
    sets ``args["settled"]`` (it saw every member own its target in
    DescribeGroup), then count itself in ``args["parked"]`` and wait at the
    start barrier while the parent fills the topic. Stops when a poll finds
    nothing and the group's shared counter of committed records
    (``args["acked"]``) has reached ``n``.
    """
    from logstore import client

    n, topic, group = int(args["n"]), str(args["topic"]), str(args["group"])
    acked, settled, parked = args["acked"], args["settled"], args["parked"]
    member = client.GroupConsumer(
        args["params"]["grpc"], group, topics=[topic], auto_offset_reset="earliest"
    )
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    count = 0
    try:
        while not settled.is_set():
            # reconciles the assignment; the topic is empty, so nothing is consumed
            count += sum(len(b) for b in member.poll_columns(50).values())
            if time.monotonic() > deadline:
                raise TimeoutError("the group did not settle")
        assert count == 0, f"consumed {count} records before the topic was filled"
        owned = [f"{t}-{p}" for t, p in member.assignment()]
        with parked.get_lock():
            parked.value += 1
        ready()
        start = last_ack = time.monotonic()
        while time.monotonic() < deadline:
            got = sum(len(b) for b in member.poll_columns(200).values())
            if not got:
                if acked.value >= n:
                    break
                continue
            member.commit()
            last_ack = time.monotonic()
            count += got
            with acked.get_lock():
                acked.value += got
    finally:
        member.close()
    end = time.monotonic()
    return {"start": start, "end": end, "last_ack": last_ack, "count": count, "owned": owned}


# ---- share groups (W8, W8R) --------------------------------------------------------------------

#: Records one share fetch may acquire for a W8 worker: the client's default.
#: Not RabbitMQ's prefetch of 100: each ShareFetch that acquires appends an
#: fsynced share-state record before it replies, so the drain rate is about
#: fetches/s x records per fetch (8 workers here: ~4,000/s at 100; ~47,000/s
#: at 500 in the 05:39 UTC run, docs/benchmarks.md "Work queues").
SHARE_MAX_RECORDS = 500


def _share_consumer(args: dict[str, Any]) -> Any:
    from logstore.client import ShareConsumer

    return ShareConsumer(
        args["params"]["grpc"],
        str(args["group"]),
        [str(args["topic"])],
        max_records=int(args.get("max_records", SHARE_MAX_RECORDS)),
        fetch_max_wait_ms=50,
    )


def work(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W8 worker: ``ShareConsumer.poll`` (at most SHARE_MAX_RECORDS), then
    ``msg.ack()`` for each message. Without ``stamped`` (drain) the acks ride on
    the next fetch (or the client's 50 ms flush timer); the worker that acks the
    last task calls ``commit()`` (sends what is queued and waits for the broker's
    answer) before stamping ``last_ack``. With ``stamped`` (latency) every poll's
    acks are ``commit()``ed and the latency taken once it returned, so the figure
    is "ack applied (fsynced) at the broker". Stops once ``args["acked"]`` reaches ``n``."""
    import numpy as np

    n = int(args["n"])
    stamped = bool(args.get("stamped"))
    acked = args["acked"]
    consumer = _share_consumer(args)
    lat = np.zeros(n if stamped else 0, dtype=np.int64)
    got_ns = np.zeros(n if stamped else 0, dtype=np.int64)  # produce -> poll returned it
    from_bytes = int.from_bytes
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    count = 0
    try:
        ready()
        start = last_ack = time.monotonic()
        cpu0 = _cpu_s()
        while time.monotonic() < deadline:
            msgs = consumer.poll(timeout_ms=50)
            if not msgs:
                if acked.value >= n:
                    break
                continue
            for m in msgs:
                m.ack()
            with acked.get_lock():
                acked.value += len(msgs)
                total = acked.value
            if stamped:
                polled = time.monotonic_ns()
                consumer.commit()
                now = time.monotonic_ns()
                for m in msgs:
                    if count < n:
                        sent = from_bytes(m.value[:8], "little")
                        lat[count] = now - sent
                        got_ns[count] = polled - sent
                    count += 1
                last_ack = time.monotonic()
            else:
                count += len(msgs)
                if total >= n:
                    consumer.commit()
                last_ack = time.monotonic()
        consumer.commit()
    finally:
        consumer.close()
    end = time.monotonic()
    return {
        "start": start,
        "end": end,
        "last_ack": last_ack,
        "count": count,
        "lat_ns": lat[: min(count, n)],
        "got_ns": got_ns[: min(count, n)],
        "cpu_s": _cpu_s() - cpu0,  # this worker's CPU for the drain (w8_profile)
    }


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def hold(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R victim: acquire ``k`` records and never acknowledge them; report their
    ids (first 8 bytes) on ``args["held"]`` and wait to be killed."""
    k = int(args["k"])
    consumer = _share_consumer({**args, "max_records": k})
    got: list[bytes] = []
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    while len(got) < k and time.monotonic() < deadline:
        got += [bytes(m.value[:8]) for m in consumer.poll(timeout_ms=100)]
    args["held"].put((time.monotonic(), got))
    time.sleep(float(args.get("deadline_s", 60)))  # killed with SIGKILL long before
    return {}


def claim(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R survivor: a share consumer of the same group that polls (and acks)
    until ``k`` records arrived; each one's receipt time keyed by its first 8
    bytes. The victim's records come back when their lock (the group's
    ``visibility_timeout_ms``) expires."""
    k = int(args["k"])
    consumer = _share_consumer({**args, "max_records": k})
    seen: dict[bytes, float] = {}
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    try:
        ready()
        while len(seen) < k and time.monotonic() < deadline:
            msgs = consumer.poll(timeout_ms=50)
            now = time.monotonic()
            for m in msgs:
                seen.setdefault(bytes(m.value[:8]), now)
                m.ack()
    finally:
        consumer.close()
    return {"seen": seen}


# ---- W4C: the Producer and Consumer that users call -------------------------------------------


def client_paced(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """``Producer.send()`` of each record when it is due, at ``rate`` records/s for
    ``seconds`` (W4C): the producer's own ``linger_ms`` (arg, default 0) decides the
    batching, not the pacer. Payloads carry their intended send time (see
    ``paced_steps``), so a producer that falls behind shows up as latency."""
    from logstore.client import Producer

    rate, seconds, size, topic = (
        float(args["rate"]),
        float(args["seconds"]),
        int(args["size"]),
        str(args["topic"]),
    )
    total = int(rate * seconds)
    producer = Producer(
        args["params"]["grpc"],
        acks="all" if args["durable"] else "1",
        linger_ms=int(args.get("linger_ms", 0)),
    )
    try:
        ready()
        start = time.monotonic()
        count = 0
        send = producer.send
        for _index, vals in paced_values(rate, total, size):
            for v in vals:
                send(topic, v, partition=0)
            count += len(vals)
        end = time.monotonic()
        producer.flush(float(args.get("deadline_s", 60)))
    finally:
        producer.close()
    return {"start": start, "end": end, "count": count}


def client_tail(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """A ``Consumer`` polling partition 0 from offset 0 (W4C); latency = the time
    ``poll()`` returned the record - the intended send time in its payload. Stops at
    ``n`` records or ``deadline_s``."""
    import numpy as np

    from logstore.client import Consumer

    n, topic = int(args["n"]), str(args["topic"])
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    consumer = Consumer(args["params"]["grpc"])
    lat = np.zeros(n, dtype=np.int64)
    count = 0
    from_bytes = int.from_bytes
    try:
        consumer.assign([(topic, 0)])
        consumer.seek((topic, 0), 0)
        ready()
        start = time.monotonic()
        while count < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            polled = consumer.poll(timeout_ms=int(min(left, 0.5) * 1000) + 1)
            now = time.monotonic_ns()
            for recs in polled.values():
                for r in recs:
                    if count < n and r.value is not None:
                        lat[count] = now - from_bytes(r.value[:8], "little")
                    count += 1
    finally:
        consumer.close()
    end = time.monotonic()
    return {"start": start, "end": end, "count": count, "lat_ns": lat[: min(count, n)]}
