"""The Producer: the accumulator, the sender thread and idempotence, wired together.

``Producer`` is a :class:`~._accumulator.RecordAccumulator` (``send`` and
``send_many`` are its methods: the hot path pays no extra call) that owns a
transport, an :class:`~._idempotence.Idempotence` and a
:class:`~._sender.Sender`. See those modules for batching, delivery,
retries and sequence numbers.

Thread-safety: ``send``/``send_many``/``flush`` may be called from any thread.
"""

from __future__ import annotations

from typing import Final

from logstore import errors
from logstore.v1 import logstore_pb2
from logstore.wire import CODEC_NONE, check_level, codec_of, require_codec

from .._backoff import Backoff
from .._credentials import Credentials
from ._accumulator import BATCH_HEADER_BYTES, RecordAccumulator
from ._idempotence import MAX_IN_FLIGHT, Idempotence
from ._sender import (
    DEFAULT_COMPRESSION_THREADS,
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_COMPRESSION_THREADS,
    GrpcTransport,
    Sender,
    Transport,
)

_ACKS: Final[dict[str, int]] = {
    "all": logstore_pb2.ACKS_ALL,
    "-1": logstore_pb2.ACKS_ALL,
    "1": logstore_pb2.ACKS_LEADER,
    "leader": logstore_pb2.ACKS_LEADER,
    "0": logstore_pb2.ACKS_NONE,
    "none": logstore_pb2.ACKS_NONE,
}


def parse_acks(acks: str | int) -> int:
    """Kafka's spellings (``0``, ``1``, ``all``/``-1``) to the ``Acks`` enum."""
    value = _ACKS.get(str(acks).strip().lower())
    if value is None:
        raise errors.InvalidArgumentError(f"acks must be 0, 1 or all, not {acks!r}")
    return value


class Producer(RecordAccumulator):
    """Sends records to a broker in batches.

    With work for at most ``STREAM_MAX_PARTITIONS`` (4) partitions, each batch
    is one message on the producer's ordered ``ProduceStream`` (pipelined, no
    per-request call); with more, one request per broker carries every
    partition's ready batch (``MultiProduce``, Kafka's Produce shape; cut at
    ``max_request_bytes``, default just under the broker's 4 MiB
    ``max_request_bytes``), with up to ``max_in_flight`` such requests in
    flight; a broker without MultiProduce gets one ``Produce`` per batch.
    Each batch's result is handled on its own.

    ``send`` returns a :class:`RecordHandle` at once; ``send_many`` a
    :class:`SendResult` for a list of values. Records are batched per
    partition (``linger_ms``, ``batch_bytes``), shipped by a background thread
    with up to ``max_in_flight`` (default 5, at most 5 with idempotence)
    batches per partition unacknowledged, and retried on UNAVAILABLE (or a
    hinted RESOURCE_EXHAUSTED) with full-jitter backoff until
    ``delivery_timeout_ms``, in order. ``idempotent`` (default: unless acks=0)
    makes a retried batch stored once and keeps a partition's batches in
    order across retries. ``flush`` waits for everything sent so far.

    ``linger_ms`` (default 5) is how long a batch waits for more records
    before it may be sent. Records that arrive while requests are in flight
    join the next batch whatever it is, so it trades latency against request
    count only while the producer is not busy: 0 sends each record as soon as
    a request slot is free (lowest latency, one request per record at low
    rates); a few ms make fuller, fewer requests (less CPU per record on both
    sides, more throughput) for up to that much more latency per record.
    ``compression`` (``"none"``, ``"gzip"``, ``"lz4"``, ``"zstd"``) compresses
    each batch (``compression_level``: the codec's level, None for its
    default: zstd 1 (Kafka's is 3; why: ``logstore.wire.LEVELS``), gzip 6,
    lz4 0); the broker stores it as sent. An unknown
    codec or level raises InvalidArgumentError, a codec whose package is
    missing ImportError naming it, both here. ``compression_threads``
    (default 2, at most 16) is how many batches are compressed at once, each
    on its own thread (the codecs release the GIL); 1 compresses on the
    sender thread alone.
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:7070",
        *,
        acks: str | int = "all",
        linger_ms: int = 5,
        batch_bytes: int = 1 << 20,
        idempotent: bool | None = None,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        credentials: Credentials | None = None,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        buffer_bytes: int = 64 << 20,
        max_block_ms: int = 60_000,
        max_in_flight: int = MAX_IN_FLIGHT,
        metadata_max_age_ms: int = 300_000,
        compression: str = "none",
        compression_level: int | None = None,
        compression_threads: int = DEFAULT_COMPRESSION_THREADS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        transport: Transport | None = None,
    ) -> None:
        acks_value = parse_acks(acks)
        codec = codec_of(compression)
        check_level(codec, compression_level)
        require_codec(codec)
        if idempotent is None:
            idempotent = acks_value != logstore_pb2.ACKS_NONE
        elif idempotent and acks_value == logstore_pb2.ACKS_NONE:
            raise errors.InvalidArgumentError("idempotent=True needs acks 1 or all, not 0")
        if not 1 <= compression_threads <= MAX_COMPRESSION_THREADS:
            raise errors.InvalidArgumentError(
                f"compression_threads must be 1-{MAX_COMPRESSION_THREADS}, "
                f"not {compression_threads}"
            )
        if batch_bytes <= BATCH_HEADER_BYTES:
            raise errors.InvalidArgumentError(f"batch_bytes must exceed {BATCH_HEADER_BYTES}")
        if linger_ms < 0 or delivery_timeout_ms <= 0 or max_in_flight < 1:
            raise errors.InvalidArgumentError(
                "linger_ms >= 0, delivery_timeout_ms > 0, max_in_flight >= 1"
            )
        if idempotent and max_in_flight > MAX_IN_FLIGHT:
            raise errors.InvalidArgumentError(
                f"max_in_flight must be at most {MAX_IN_FLIGHT} with idempotence (the "
                f"broker's duplicate check remembers {MAX_IN_FLIGHT} batches per "
                f"producer), not {max_in_flight}"
            )
        backoff = Backoff(retry_backoff_ms, retry_backoff_max_ms)
        self._transport: Transport = transport or GrpcTransport(
            bootstrap, connect_timeout_ms, request_timeout_ms, credentials
        )
        self.address = self._transport.address
        super().__init__(
            topic_metadata=self._transport.topic_metadata,
            on_new_topic=self._first_send_to_a_topic,
            batch_bytes=batch_bytes,
            linger_ms=linger_ms,
            delivery_timeout_ms=delivery_timeout_ms,
            buffer_bytes=buffer_bytes,
            max_block_ms=max_block_ms,
        )
        self._idempotence = Idempotence(idempotent, self._transport.init_producer, self._lock)
        self._sender = Sender(
            self,
            self._transport,
            self._idempotence,
            acks=acks_value,
            request_timeout_ms=request_timeout_ms,
            backoff=backoff,
            max_in_flight=max_in_flight,
            metadata_max_age_ms=metadata_max_age_ms,
            codec=codec,
            compression_level=compression_level,
            max_request_bytes=max_request_bytes,
            compression_threads=compression_threads,
        )
        if codec != CODEC_NONE:
            self._compress_now = self._sender.compress_now
        self._sender.start()

    def _first_send_to_a_topic(self) -> None:
        # Take the first producer id here, in the caller's thread: an
        # InitProducer failure is then raised by send() instead of failing
        # batches later. A later one (after a broken sequence) is the sender's,
        # once no request is in flight.
        if self._idempotence.generation == 0:
            self._idempotence.refresh_if_stale()

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender thread and close the connection. Idempotent."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closed = True
                self._cond.notify_all()
            self._sender.join()
            self._transport.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
