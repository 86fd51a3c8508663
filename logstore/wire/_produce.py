"""Split a raw ``ProduceRequest`` into its small header fields and the records'
bytes, so the broker stores the records exactly as they arrived.

``records`` is field 15, the highest field number of ``ProduceRequest``, and
serializers emit fields in field-number order, so the records are a suffix of
the request. :func:`split_produce_request` walks the few header fields at the
front (a loop over at most a dozen fields, never over records), parses that
prefix with upb, and parses the suffix with upb as a private view
(:mod:`logstore.wire._record_views`) that validates every record in C, proves
the suffix holds nothing else, and collects the records' timestamps, so the
batch's true maximum timestamp is known whatever the client put in
``max_timestamp_ms`` (O(1) Python work per batch when no record carries a
timestamp; a ``max()`` in C otherwise). The record count comes from a numpy
check when the records all have one size, else from a second view. If the
suffix holds anything but records (a serializer that does not emit in order,
unknown fields), it falls back to parsing the whole request and
re-serializing the records: correct, slower.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from google.protobuf.message import DecodeError

from logstore.errors import InvalidBatchError, InvalidRequestError
from logstore.v1 import logstore_pb2, records_pb2

from ._frame import (
    I32_BYTES,
    I64_BYTES,
    MAX_VARINT_SHIFT,
    RECORD_TAG,
    TAG_TYPE_MASK,
    WIRE_I32,
    WIRE_I64,
    WIRE_LEN,
    WIRE_VARINT,
    crc32c,
)
from ._record_views import inspect_records, max_record_timestamp
from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT

#: More header fields than this before the records means the request is not
#: in field order: take the slow path rather than walk further.
_MAX_HEADER_FIELDS: Final = 32


class SplitRequest(NamedTuple):
    """A produce request's header fields and its records' bytes."""

    header: logstore_pb2.ProduceRequest  # every field but records
    records: bytes | memoryview
    record_count: int
    #: The largest timestamp a record carries (NO_TIMESTAMP_MS when none
    #: does), computed from the records: the client's max_timestamp_ms, an
    #: optional field other clients leave unset, is never trusted.
    max_timestamp_ms: int
    #: False when the records had to be re-serialized (slow path).
    zero_copy: bool


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > MAX_VARINT_SHIFT:
            raise InvalidRequestError("malformed produce request: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & VARINT_BITS) << shift
        if not b & VARINT_MORE:
            return result, pos
        shift += VARINT_SHIFT


def _records_start(buf: memoryview) -> int | None:
    """Position of the first records tag, or None if not found quickly."""
    pos = 0
    for _ in range(_MAX_HEADER_FIELDS):
        if pos >= len(buf):
            return len(buf)  # no records at all
        tag, after = _read_varint(buf, pos)
        if tag == RECORD_TAG:
            return pos
        wire_type = tag & TAG_TYPE_MASK
        if wire_type == WIRE_VARINT:
            _, pos = _read_varint(buf, after)
        elif wire_type == WIRE_I64:
            pos = after + I64_BYTES
        elif wire_type == WIRE_LEN:
            n, pos = _read_varint(buf, after)
            pos += n
        elif wire_type == WIRE_I32:
            pos = after + I32_BYTES
        else:
            return None
    return None


def _slow_path(raw: bytes) -> SplitRequest:
    try:
        full = logstore_pb2.ProduceRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(f"malformed produce request: {exc}") from exc
    batch = records_pb2.RecordBatch()
    batch.records.extend(full.records)
    full.ClearField("records")
    records = batch.SerializeToString()
    return SplitRequest(full, records, len(batch.records), max_record_timestamp(records), False)


def split_produce_request(raw: bytes) -> SplitRequest:
    """Split a serialized ProduceRequest.

    Bytes that do not parse as a ProduceRequest raise InvalidRequestError (the
    same reason every other method gives unparseable bytes); an empty batch or a
    records CRC mismatch raises InvalidBatchError.

    Checks ``records_crc32c`` when present (over the records' bytes as sent;
    on the slow path, over the re-serialized records, which equal the bytes
    sent whenever the sender used canonical encoding).
    """
    mv = memoryview(raw)
    start = _records_start(mv)
    if start is None:
        result = _slow_path(raw)
    else:
        try:
            header = logstore_pb2.ProduceRequest.FromString(mv[:start])  # type: ignore[arg-type]
        except DecodeError as exc:
            raise InvalidRequestError(f"malformed produce request: {exc}") from exc
        tail = mv[start:]
        try:
            # None when a field other than records follows them.
            inspected = inspect_records(tail)
        except InvalidBatchError as exc:
            raise InvalidRequestError(f"malformed produce request: {exc}") from exc
        if inspected is None:
            result = _slow_path(raw)
        else:
            count, max_ts = inspected
            result = SplitRequest(header, tail, count, max_ts, True)
    if result.record_count == 0:
        raise InvalidBatchError("empty batch: a produce request needs at least one record")
    if result.header.HasField("records_crc32c"):
        actual = crc32c(result.records)
        if actual != result.header.records_crc32c:
            raise InvalidBatchError(
                f"records CRC32C mismatch: request says 0x{result.header.records_crc32c:08x}, "
                f"records hash to 0x{actual:08x}; the batch was damaged in transit"
            )
    return result
