"""The producer: records are encoded at ``send()`` into per-partition batches that
a background sender thread ships as raw ``Produce`` requests.

- :mod:`._accumulator`: encoding (``logstore.wire``'s encoder), batching, the
  sticky and key partitioners, the buffer bound;
- :mod:`._sender`: the thread, request bytes, delivery order, retries
  (the client's one backoff policy, :mod:`logstore.client._backoff`), the
  compression pool (``DEFAULT_COMPRESSION_THREADS`` and
  ``MAX_COMPRESSION_THREADS``: a Producer's default and most
  ``compression_threads``);
- :mod:`._idempotence`: producer id, epoch and sequence numbers;
- :mod:`._delay`: delayed delivery (``delay_ms``/``deliver_at_ms`` become the
  ``DELIVER_AT_HEADER`` header; :func:`resolve_deliver_at` checks the bounds,
  ``MAX_DELAY_MS`` the longest delay);
- :mod:`._handles`: what ``send`` and ``send_many`` return;
- :mod:`._producer`: the :class:`Producer` that wires them together.
"""

from logstore.wire import DELIVER_AT_HEADER, MAX_DELAY_MS

from ._delay import resolve_deliver_at
from ._handles import RecordHandle, SendResult
from ._producer import Producer, parse_acks
from ._sender import (
    DEFAULT_COMPRESSION_THREADS,
    MAX_COMPRESSION_THREADS,
    GrpcTransport,
    Transport,
)

__all__ = [
    "DELIVER_AT_HEADER",
    "DEFAULT_COMPRESSION_THREADS",
    "MAX_COMPRESSION_THREADS",
    "MAX_DELAY_MS",
    "GrpcTransport",
    "Producer",
    "RecordHandle",
    "SendResult",
    "Transport",
    "parse_acks",
    "resolve_deliver_at",
]
