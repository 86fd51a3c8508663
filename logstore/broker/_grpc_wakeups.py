"""One event-loop wake-up per batch of gRPC completions, not one per completion.

``grpc.aio`` hands completions to the event loop through a socket pair: its
poller thread pushes each completed operation (a request read, a reply or
push written) on a queue and writes one byte; the loop's reader callback
(``PollerCompletionQueue._handle_events``, Cython) reads **one** byte and then
runs *every* queued completion. So k completions that arrive while the loop
is busy are all run by the first wake-up, and the k - 1 bytes left behind
wake the loop k - 1 more times for nothing (an ``epoll_wait``, a ``recv`` and
a loop turn each). Under W4 (2,000 records/s) the bytes left unread at a
wake-up reached the hundreds: the loop never slept and spent its turns on
empty wake-ups.

:func:`coalesce_grpc_wakeups` wraps that reader callback: it reads all but
one of the bytes waiting (``FIONREAD``), then calls gRPC's own callback, which
reads the last one and runs the queued completions. No completion is lost:
the poller pushes an event *before* writing its byte, so every byte read here
belongs to an event already on the queue that the call right after runs; a
byte written later stays in the socket and wakes the loop again.

It relies on two internals and checks both, leaving gRPC alone when either
does not match (another gRPC version, or uvloop, whose loop has no
``_selector``): asyncio's selector loop keeps each reader's ``Handle`` in
the selector key, and gRPC registers the socket with a callback named
``_handle_events``.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import functools
import logging
import socket
import termios
from collections.abc import Callable
from typing import Any

log = logging.getLogger("logstore.broker")


def _grpc_reader(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Callable[[], Any]] | None:
    """gRPC's completion socket on ``loop`` and its reader callback, if found."""
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return None
    for key in list(selector.get_map().values()):
        reader = key.data[0] if isinstance(key.data, tuple) else None
        callback = getattr(reader, "_callback", None)
        target = callback.func if isinstance(callback, functools.partial) else callback
        if (
            getattr(target, "__name__", "") == "_handle_events"
            and isinstance(key.fileobj, socket.socket)
            and callback is not None
        ):
            args = tuple(getattr(reader, "_args", ()))
            return key.fileobj, functools.partial(callback, *args)
    return None


def coalesce_grpc_wakeups(loop: asyncio.AbstractEventLoop) -> bool:
    """Make gRPC's completion reader on ``loop`` drain its socket (see the
    module docstring); True if installed. Call after ``grpc.aio.server()``
    (which creates gRPC's completion queue on the running loop)."""
    found = _grpc_reader(loop)
    if found is None:
        log.debug("gRPC completion reader not found; wake-ups left as they are")
        return False
    sock, handle_events = found
    fd = sock.fileno()
    count = array.array("i", [0])

    def drain_then_handle() -> None:
        try:
            fcntl.ioctl(fd, termios.FIONREAD, count)
            extra = count[0] - 1
            if extra > 0:
                # The last byte is gRPC's to read (its callback reads one).
                sock.recv(extra)
        except OSError:  # pragma: no cover - the socket pair is never closed while serving
            pass
        handle_events()

    loop.add_reader(sock, drain_then_handle)
    return True
