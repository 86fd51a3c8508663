"""A do-nothing gRPC server for the gRPC ceiling in Python (benchmarks.limits).

Run as ``python -m benchmarks._grpc_ceiling_server PORT``; serves on 127.0.0.1
with ``grpc.aio`` and generic handlers with identity serializers (as the
logstore broker does on its data path), so what is measured is gRPC's own cost:

* ``/bench.Ceiling/Echo``   unary, returns the request bytes (tiny calls/s)
* ``/bench.Ceiling/Sink``   unary, takes any payload, returns b"" (1 MiB MB/s)
* ``/bench.Ceiling/Source`` server stream: request = 8-byte little-endian count,
  replies with that many 1 MiB messages (streaming MB/s)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

PAYLOAD = b"\x00" * (1 << 20)
MAX_MESSAGE = 16 << 20


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _sink(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def _source(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    n = int.from_bytes(request[:8], "little")
    for _ in range(min(n, 100_000)):
        yield PAYLOAD


async def main(port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Sink": grpc.unary_unary_rpc_method_handler(_sink),
        "Source": grpc.unary_stream_rpc_method_handler(_source),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Ceiling", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
