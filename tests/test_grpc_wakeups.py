"""gRPC's completion socket drained per wake-up (``broker/_grpc_wakeups.py``): k
completions that arrived together cost one loop wake-up, none is lost, and a
loop where gRPC's reader is not found is left alone."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from logstore.broker._grpc_wakeups import coalesce_grpc_wakeups


class _FakeQueue:
    """What ``PollerCompletionQueue`` does: a poller pushes an event, then writes
    one byte; ``_handle_events`` reads one byte and runs every queued event."""

    def __init__(self) -> None:
        self.read_sock, self.write_sock = socket.socketpair()
        self.read_sock.setblocking(False)
        self.events: list[int] = []
        self.lock = threading.Lock()
        self.calls = 0
        self.ran: list[int] = []

    def push(self, event: int) -> None:
        with self.lock:
            self.events.append(event)
        self.write_sock.send(b"1")

    def _handle_events(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls += 1
        self.read_sock.recv(1)  # raises BlockingIOError if nothing is left
        with self.lock:
            self.ran += self.events
            self.events.clear()


def _run_fake(coalesce: bool) -> tuple[int, list[int], int]:
    async def main() -> tuple[int, list[int], int]:
        loop = asyncio.get_running_loop()
        q = _FakeQueue()
        loop.add_reader(q.read_sock, functools.partial(q._handle_events, loop))
        if coalesce:
            assert coalesce_grpc_wakeups(loop)
        for i in range(5):  # five completions while the loop is busy
            q.push(i)
        for _ in range(20):
            await asyncio.sleep(0)
        after_burst = q.calls
        q.push(5)  # one more, after the burst was handled
        for _ in range(20):
            await asyncio.sleep(0)
        loop.remove_reader(q.read_sock)
        q.read_sock.close()
        q.write_sock.close()
        return after_burst, q.ran, q.calls

    return asyncio.run(main())


def test_a_burst_of_completions_is_one_wake_up_and_none_is_lost() -> None:
    after_burst, ran, calls = _run_fake(coalesce=True)
    assert after_burst == 1
    assert ran == [0, 1, 2, 3, 4, 5]
    assert calls == 2


def test_without_it_each_byte_wakes_the_loop() -> None:
    """gRPC's own reader: the burst's first wake-up runs every event, the four
    bytes left behind wake the loop four more times for nothing."""
    after_burst, ran, _ = _run_fake(coalesce=False)
    assert after_burst == 5
    assert ran == [0, 1, 2, 3, 4, 5]


def test_a_loop_without_grpc_is_left_alone() -> None:
    async def main() -> bool:
        return coalesce_grpc_wakeups(asyncio.get_running_loop())

    assert asyncio.run(main()) is False


def test_a_real_grpc_aio_server_streams_through_the_wrapped_reader() -> None:
    """Installed on gRPC's own completion queue (this gRPC version's reader is
    found), and a stream of messages with several in flight is answered whole
    and in order."""
    n = 300

    async def main() -> tuple[bool, list[bytes]]:
        loop = asyncio.get_running_loop()

        async def echo(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> None:
            async for r in requests:
                await context.write(r)

        server = grpc.aio.server()
        installed = coalesce_grpc_wakeups(loop)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "t.T", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.stream_stream("/t.T/Echo", None, None)(
                    iter([b"%d" % i for i in range(n)])
                )
                got = [r async for r in call]
        finally:
            await server.stop(None)
        return installed, got

    installed, got = asyncio.run(main())
    assert installed
    assert got == [b"%d" % i for i in range(n)]
