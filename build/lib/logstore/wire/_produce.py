"""Split a raw ``ProduceRequest`` into its small header fields and the records'
bytes, so the broker stores the records exactly as they arrived.

``records`` is field 15, the highest field number of ``ProduceRequest``, and
serializers emit fields in field-number order, so the records are a suffix of
the request. :func:`split_produce_request` walks the few header fields at the
front (a loop over at most a dozen fields, never over records), parses that
prefix with upb, and parses the suffix with upb as a ``RecordBatch`` to
validate every record in C. If the suffix holds anything but records (a
serializer that does not emit in order, unknown fields), it falls back to
parsing the whole request and re-serializing the records: correct, slower.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from logstore.errors import InvalidBatchError
from logstore.v1 import logstore_pb2, records_pb2

from ._frame import crc32c

_RECORDS_TAG: Final = 0x7A
#: More header fields than this before the records means the request is not
#: in field order: take the slow path rather than walk further.
_MAX_HEADER_FIELDS: Final = 32


class SplitRequest(NamedTuple):
    """A produce request's header fields and its records' bytes."""

    header: logstore_pb2.ProduceRequest  # every field but records
    records: bytes | memoryview
    record_count: int
    #: False when the records had to be re-serialized (slow path).
    zero_copy: bool


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidBatchError("malformed produce request: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _records_start(buf: memoryview) -> int | None:
    """Position of the first records tag, or None if not found quickly."""
    pos = 0
    for _ in range(_MAX_HEADER_FIELDS):
        if pos >= len(buf):
            return len(buf)  # no records at all
        tag, after = _read_varint(buf, pos)
        if tag == _RECORDS_TAG:
            return pos
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = _read_varint(buf, after)
        elif wire_type == 1:
            pos = after + 8
        elif wire_type == 2:
            n, pos = _read_varint(buf, after)
            pos += n
        elif wire_type == 5:
            pos = after + 4
        else:
            return None
    return None


def _slow_path(raw: bytes) -> SplitRequest:
    try:
        full = logstore_pb2.ProduceRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidBatchError(f"malformed produce request: {exc}") from exc
    batch = records_pb2.RecordBatch()
    batch.records.extend(full.records)
    full.ClearField("records")
    return SplitRequest(full, batch.SerializeToString(), len(batch.records), False)


def split_produce_request(raw: bytes) -> SplitRequest:
    """Split a serialized ProduceRequest; raise InvalidBatchError if malformed.

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
            tail = mv[start:]
            batch = records_pb2.RecordBatch.FromString(tail)  # type: ignore[arg-type]
        except DecodeError as exc:
            raise InvalidBatchError(f"malformed produce request: {exc}") from exc
        # Every ProduceRequest field other than records lands in a RecordBatch
        # either as a known field (numbers 1-10) or, with its different wire
        # type, as an unknown one: both checks are O(1), unlike ByteSize(),
        # which walks every record and costs as much as the parse.
        if len(batch.ListFields()) <= 1 and not len(UnknownFieldSet(batch)):
            result = SplitRequest(header, tail, len(batch.records), True)
        else:
            result = _slow_path(raw)
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
