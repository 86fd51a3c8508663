"""RabbitMQ: Debian's ``rabbitmq-server`` as a child process on loopback, ``pika``
and ``aio-pika`` on the client side. Used by W8 (work queue) and W8R (redelivery).

The node: its own ``epmd`` started first as a child (``-address 127.0.0.1`` on a
free port, so it is ours to stop by PID and no other node's), then
``/usr/lib/rabbitmq/bin/rabbitmq-server`` with every listener on 127.0.0.1 (AMQP
on a free port, Erlang distribution on another, ``inet_dist_use_interface``),
its data, logs and cookie (``HOME``) under the run's work directory and no
plugins. The script stays in the foreground and turns our SIGTERM into a clean
stop of its ``beam.smp`` child; :meth:`Driver.stop` also kills that beam by PID
if the script was killed before passing the stop on.

A "topic" is one **durable classic queue** (RabbitMQ 3.10's default, version-1
index; a quorum queue needs a node ready for a cluster and is not used here),
reached through the default exchange. Messages are persistent
(``delivery_mode=2``) and every publish is confirmed (publisher confirms): a
persistent message is confirmed once it is written to the message store and
fsynced (the store syncs in groups, so confirms come in batches), which is the
peer of logstore's acks=all. Consumers use manual acks with ``basic_qos``
prefetch 100, one ``basic_ack`` per message. Publishers:

* ``pika`` ``BlockingConnection`` with ``confirm_delivery()``: ``basic_publish``
  returns once the broker confirmed that message (one confirm awaited at a time);
* ``aio-pika`` on a confirm channel: up to ``CONFIRM_WINDOW`` publishes in flight,
  their confirms awaited asynchronously (what a fast RabbitMQ producer does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._proc import HOST, Child, free_port, wait_port
from benchmarks.systems import paced_steps, payloads
from benchmarks.systems._base import System

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
#: Unacknowledged messages the broker pushes to one consumer (the issue's setting).
PREFETCH = 100
#: aio-pika publishes awaiting their confirm at once: 1,000 x 100 B is ~100 KiB in
#: flight, past which the ~7,000 confirms/s this machine gets stop growing.
CONFIRM_WINDOW = 1000
#: A node boots in ~10 s on a quiet machine (mnesia, the message store); 4x that.
START_TIMEOUT_S = 90.0
#: One ``process_data_events`` wait of a consumer: the bound on how late it sees
#: the "all done" counter once the queue is empty.
POLL_S = 0.05


def _children(pid: int) -> list[int]:
    try:
        out: list[int] = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Driver(System):
    name = "rabbitmq"
    #: Always durable: durable queue, persistent messages, publisher confirms.
    durability_modes = (True,)

    def __init__(self) -> None:
        super().__init__()
        self.epmd: Child | None = None
        self.beam_pid: int | None = None
        self._conn: Any = None

    @classmethod
    def unavailable(cls) -> str | None:
        if not SERVER.exists():
            return "rabbitmq-server is not installed (make bench-compare installs it)"
        try:
            import aio_pika  # noqa: F401
            import pika  # noqa: F401
        except ImportError:
            return "the pika / aio-pika clients are not installed (pip install -e '.[bench]')"
        return None

    def start(self, workdir: Path) -> None:
        from benchmarks.systems import find_exe

        self.workdir = workdir
        d = workdir / "rabbitmq"
        d.mkdir(parents=True, exist_ok=True)
        self.port, dist_port, epmd_port = free_port(), free_port(), free_port()
        (d / "rabbit.conf").write_text(
            f"listeners.tcp.default = {HOST}:{self.port}\n"
            # the default 50 MB free-disk alarm would block publishers on a full /tmp
            "disk_free_limit.absolute = 50MB\n"
        )
        (d / "plugins").write_text("[].\n")
        epmd = find_exe("epmd")
        if epmd is None:
            raise RuntimeError("epmd (erlang-base) not found")
        self.epmd = Child([epmd, "-address", HOST, "-port", str(epmd_port)], d / "epmd.log")
        wait_port(epmd_port, 10, self.epmd.proc)
        env = dict(
            os.environ,
            HOME=str(d),
            RABBITMQ_NODENAME=f"bench{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist_port),
            ERL_EPMD_ADDRESS=HOST,
            ERL_EPMD_PORT=str(epmd_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbit"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        self.child = Child([str(SERVER)], d / "rabbitmq.log", env=env, stdin=subprocess.DEVNULL)
        try:
            wait_port(self.port, START_TIMEOUT_S, self.child.proc)
            kids = _children(self.child.pid)
            self.beam_pid = kids[0] if kids else None
            self._conn = self._connect()
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> Any:
        import pika

        params = pika.ConnectionParameters(HOST, self.port, connection_attempts=20, retry_delay=0.5)
        return pika.BlockingConnection(params)

    def _channel(self) -> Any:
        """A channel on the control connection, reconnecting when the broker
        dropped it. Why: this BlockingConnection sits idle in the parent while
        the workers fill and drain a queue (a minute or more under load); pika
        answers heartbeats only inside its own calls, so RabbitMQ (heartbeat 60 s)
        closes it as dead, and the next control call (the W8 emptiness check)
        died with ``StreamLostError: ConnectionResetError 104`` -- the failure
        of W8 in two runs, not the workers'. ``is_closed`` does not see a reset
        that no I/O has hit yet, so first let pika process what is pending."""
        import pika

        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.process_data_events(time_limit=0)
                return self._conn.channel()
            except pika.exceptions.AMQPError:
                with contextlib.suppress(Exception):
                    self._conn.close()
        self._conn = self._connect()
        return self._conn.channel()

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        super().stop()  # SIGTERM to the script: it stops beam cleanly and waits for it
        if self.beam_pid is not None:
            if _alive(self.beam_pid):  # the script was killed before it passed the stop on
                os.kill(self.beam_pid, signal.SIGKILL)
            self.beam_pid = None
        if self.epmd is not None:
            self.epmd.stop()
            self.epmd = None

    @property
    def pid(self) -> int:
        # the server's resources (RSS, CPU) are beam's, not the shell script's
        assert self.child is not None
        return self.beam_pid or self.child.pid

    def params(self) -> dict[str, Any]:
        return {"host": HOST, "port": self.port}

    def server_version(self) -> str | None:
        props = self._conn._impl.server_properties if self._conn is not None else {}
        v = props.get("version")
        return v.decode() if isinstance(v, bytes) else (str(v) if v else None)

    def create(self, topic: str, partitions: int = 1) -> None:
        ch = self._channel()
        ch.queue_declare(topic, durable=True, arguments={"x-queue-type": "classic"})
        ch.close()

    def delete(self, topic: str, partitions: int = 1) -> None:
        ch = self._channel()
        ch.queue_delete(topic)
        ch.close()

    def create_group(self, topic: str, group: str, partitions: int = 1) -> None:
        pass  # the queue is the group: every consumer of it competes for its messages

    def create_share_group(self, topic: str, group: str, visibility_ms: int) -> None:
        pass  # no lock timeout: unacked messages return when their consumer's channel closes

    def group_outstanding(self, topic: str, group: str, partitions: int = 1) -> int:
        """Messages still in the queue (ready, or unacked ones requeued when their
        consumer's connection closed)."""
        ch = self._channel()
        n = int(ch.queue_declare(topic, durable=True, passive=True).method.message_count)
        ch.close()
        return n

    def label(self, durable: bool) -> str:
        return "durable classic queue, persistent, confirms"


# ---- worker side ------------------------------------------------------------------------------


def _blocking(args: dict[str, Any]) -> Any:
    import pika

    p = args["params"]
    return pika.BlockingConnection(pika.ConnectionParameters(p["host"], p["port"]))


def _url(args: dict[str, Any]) -> str:
    p = args["params"]
    return f"amqp://guest:guest@{p['host']}:{p['port']}/"


def produce_pika(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """pika BlockingConnection, confirm_delivery(): each publish waits for its confirm."""
    import pika

    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    values = payloads(size, n)
    conn = _blocking(args)
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = time.monotonic()
    sent = 0
    for v in values:
        ch.basic_publish("", topic, v, props)
        sent += 1
        if not sent % 1000 and time.monotonic() > deadline:
            break
    end = time.monotonic()
    conn.close()
    return {"start": start, "end": end, "count": sent, "bytes": sent * size}


def produce(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """aio-pika on a confirm channel, up to CONFIRM_WINDOW confirms in flight."""
    return asyncio.run(_produce_async(args, ready))


async def _produce_async(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    import aio_pika

    n, size, topic = int(args["n"]), int(args["size"]), str(args["topic"])
    values = payloads(size, n)
    conn = await aio_pika.connect(_url(args))
    try:
        ex = (await conn.channel(publisher_confirms=True)).default_exchange
        persistent = aio_pika.DeliveryMode.PERSISTENT
        deadline = time.monotonic() + float(args.get("deadline_s", 120))
        ready()
        start = time.monotonic()
        sent = 0
        while sent < n and time.monotonic() < deadline:
            chunk = values[sent : sent + CONFIRM_WINDOW]
            await asyncio.gather(
                *(
                    ex.publish(aio_pika.Message(v, delivery_mode=persistent), routing_key=topic)
                    for v in chunk
                )
            )
            sent += len(chunk)
        end = time.monotonic()
    finally:
        await conn.close()
    return {"start": start, "end": end, "count": sent, "bytes": sent * size}


def paced(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """aio-pika at ``rate``: each due message published at once, its confirm awaited
    in the background (at most CONFIRM_WINDOW x 5 unconfirmed, then it waits)."""
    return asyncio.run(_paced_async(args, ready))


async def _paced_async(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    import aio_pika

    rate, seconds, size = float(args["rate"]), float(args["seconds"]), int(args["size"])
    topic = str(args["topic"])
    conn = await aio_pika.connect(_url(args))
    pending: set[asyncio.Future[Any]] = set()
    try:
        ex = (await conn.channel(publisher_confirms=True)).default_exchange
        persistent = aio_pika.DeliveryMode.PERSISTENT
        ready()
        start = time.monotonic()
        count = 0
        for wait_s, vals in paced_steps(rate, int(rate * seconds), size):
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            for v in vals:
                msg = aio_pika.Message(v, delivery_mode=persistent)
                pending.add(asyncio.ensure_future(ex.publish(msg, routing_key=topic)))
            count += len(vals)
            if len(pending) > 5 * CONFIRM_WINDOW:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for f in done:
                    f.result()
            else:
                await asyncio.sleep(0)  # let the confirms already in be read
        for f in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(f, BaseException):
                raise f
        end = time.monotonic()
    finally:
        await conn.close()
    return {"start": start, "end": end, "count": count}


def work(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """One W8 worker: pika consumer, prefetch PREFETCH, ``basic_ack`` per message.

    With ``stamped`` the first 8 bytes of each message are its intended send time
    (``time.monotonic_ns``); the latency is taken right after its ``basic_ack`` was
    written. Stops once the shared counter ``args["acked"]`` reaches ``n`` (or at
    the deadline).
    """
    import numpy as np

    n, topic = int(args["n"]), str(args["topic"])
    stamped = bool(args.get("stamped"))
    acked = args["acked"]
    conn = _blocking(args)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    lat = np.zeros(n if stamped else 0, dtype=np.int64)
    state = {"count": 0, "last_ack": 0.0}
    from_bytes = int.from_bytes
    now_ns = time.monotonic_ns

    def on_message(chan: Any, method: Any, _props: Any, body: bytes) -> None:
        chan.basic_ack(method.delivery_tag)
        c = state["count"]
        if stamped and c < n:
            lat[c] = now_ns() - from_bytes(body[:8], "little")
        state["count"] = c + 1
        with acked.get_lock():
            acked.value += 1

    deadline = time.monotonic() + float(args.get("deadline_s", 120))
    ready()
    start = time.monotonic()
    ch.basic_consume(topic, on_message, auto_ack=False)
    while time.monotonic() < deadline:
        before = state["count"]
        conn.process_data_events(time_limit=POLL_S)
        if state["count"] != before:
            state["last_ack"] = time.monotonic()
        elif acked.value >= n:
            break
    end = time.monotonic()
    conn.close()
    c = int(state["count"])
    return {
        "start": start,
        "end": end,
        "last_ack": state["last_ack"] or end,
        "count": c,
        "lat_ns": lat[: min(c, n)],
    }


def hold(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R victim: take up to PREFETCH messages unacknowledged, report their ids on
    ``args["held"]`` (a queue) and wait to be killed."""
    conn = _blocking(args)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=int(args["k"]))
    got: list[bytes] = []
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    for _method, _props, body in ch.consume(str(args["topic"]), inactivity_timeout=0.2):
        if body is not None:
            got.append(body[:8])
        if len(got) >= int(args["k"]) or time.monotonic() > deadline:
            break
    args["held"].put((time.monotonic(), got))
    time.sleep(float(args.get("deadline_s", 60)))  # killed with SIGKILL long before
    return {}


def claim(args: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """W8R survivor: consume (and ack) until ``k`` messages arrived; each one's
    receipt time, keyed by its first 8 bytes. RabbitMQ requeues a consumer's
    unacked messages when its connection closes (the kernel resets the socket
    of a killed process), so they come as soon as the broker notices."""
    conn = _blocking(args)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    want = int(args["k"])
    seen: dict[bytes, float] = {}
    deadline = time.monotonic() + float(args.get("deadline_s", 60))
    ready()  # the victim holds every task now: start consuming
    ch.basic_consume(str(args["topic"]), lambda c, m, p, b: _claimed(c, m, b, seen), auto_ack=False)
    while len(seen) < want and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.01)
    conn.close()
    return {"seen": seen}


def _claimed(ch: Any, method: Any, body: bytes, seen: dict[bytes, float]) -> None:
    seen.setdefault(body[:8], time.monotonic())
    ch.basic_ack(method.delivery_tag)
