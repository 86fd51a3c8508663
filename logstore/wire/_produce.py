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

Compressed batches (``compression`` set, the records in field 14
``compressed_records``, :mod:`logstore.wire._compression`): that field is
then the suffix, stored unchanged (tag, length and payload); the payload is
decompressed once, bounded by ``MAX_DECOMPRESSED_BYTES``, and the
decompressed records are validated, counted and their max timestamp taken
exactly as uncompressed ones are. A payload that does not decompress, inflates
past the bound (a decompression bomb) or holds anything but records is
InvalidBatchError, so nothing stored is unreadable.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from google.protobuf.message import DecodeError

from logstore.errors import CorruptRecordError, InvalidBatchError, InvalidRequestError
from logstore.v1 import logstore_pb2, records_pb2

from ._compression import (
    CODEC_NAMES,
    CODEC_NONE,
    CODEC_ZSTD,
    COMPRESSED_TAG,
    MAX_DECOMPRESSED_BYTES,
    SUPPORTED_CODECS,
    compress,
    compressed_field,
    compressed_payload,
    decompress,
    zstd_content_size,
)
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
from ._record_views import NO_TIMESTAMP_MS, inspect_records, max_record_timestamp
from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT

#: A varint is at most 10 bytes (64 bits, 7 a byte).
MAX_VARINT_BYTES: Final = 10
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
    #: The batch's codec (0: ``records`` is the records field; else it is the
    #: compressed_records field, tag and length included, to store as it is).
    codec: int = CODEC_NONE
    #: The decompressed records field of a compressed batch (None otherwise):
    #: what storage's checks read (keys of compacted topics, timestamps).
    plain: bytes | None = None


class ProduceHead(NamedTuple):
    """A serialized ProduceRequest's header, parsed once (:func:`produce_head`)
    for a caller that needs it before the split (MultiProduce routes each
    batch by it): the split, the decompression reservation and the caller
    then share one walk of the header fields and one header parse."""

    #: Where the records (or compressed_records) field starts; None when the
    #: request is not in field order (the split then parses it whole).
    start: int | None
    #: Every field but the records.
    header: logstore_pb2.ProduceRequest


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
    """Position of the first records tag, or None if not found quickly.

    The common field keys and lengths are one byte and handled inline; a
    longer key, varint value or length goes through :func:`_read_varint`
    (each call ~0.3 us: the all-calls walk took ~5 us of a W5 batch's
    ~130 us on the broker)."""
    end = len(buf)
    pos = 0
    for _ in range(_MAX_HEADER_FIELDS):
        if pos >= end:
            return end  # no records at all
        tag = buf[pos]
        if tag < VARINT_MORE:
            after = pos + 1
        else:
            tag, after = _read_varint(buf, pos)
        if tag in (RECORD_TAG, COMPRESSED_TAG):
            return pos
        wire_type = tag & TAG_TYPE_MASK
        if wire_type == WIRE_VARINT:
            # Skip the value: the varint ends at its first byte below 0x80.
            last = after + MAX_VARINT_BYTES
            pos = after
            while pos < end and pos < last and buf[pos] >= VARINT_MORE:
                pos += 1
            if pos >= end or pos >= last:
                _, pos = _read_varint(buf, after)  # truncated or overlong: its error
            else:
                pos += 1
        elif wire_type == WIRE_I64:
            pos = after + I64_BYTES
        elif wire_type == WIRE_LEN:
            if after < end and buf[after] < VARINT_MORE:
                pos = after + 1 + buf[after]
            else:
                n, pos = _read_varint(buf, after)
                pos += n
        elif wire_type == WIRE_I32:
            pos = after + I32_BYTES
        else:
            return None
    return None


def _slow_path(raw: bytes | memoryview) -> SplitRequest:
    raw = bytes(raw)  # a MultiProduce batch is a slice of its request
    try:
        full = logstore_pb2.ProduceRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(f"malformed produce request: {exc}") from exc
    if full.compressed_records:
        if full.records:
            raise InvalidBatchError("a produce request has both records and compressed_records")
        tail = compressed_field(full.compressed_records)
        full.ClearField("compressed_records")
        return _split_compressed(full, tail, False)
    batch = records_pb2.RecordBatch()
    batch.records.extend(full.records)
    full.ClearField("records")
    records = batch.SerializeToString()
    return SplitRequest(full, records, len(batch.records), max_record_timestamp(records), False)


def _split_compressed(
    header: logstore_pb2.ProduceRequest, tail: bytes | memoryview, zero_copy: bool
) -> SplitRequest:
    """A compressed batch: its codec checked, the payload decompressed once
    (bounded) and the records in it validated and counted."""
    codec = int(header.compression)
    if codec == CODEC_NONE or codec not in SUPPORTED_CODECS:
        name = CODEC_NAMES.get(codec, str(codec))
        raise InvalidBatchError(
            f"compressed_records needs compression gzip, lz4 or zstd, not {name} ({codec})"
        )
    try:
        payload = compressed_payload(tail, "produce request")
        plain = decompress(payload, codec, "produce request")
    except CorruptRecordError as exc:
        raise InvalidBatchError(f"{exc}; the batch is refused") from exc
    try:
        inspected = inspect_records(plain) if plain else (0, NO_TIMESTAMP_MS)
    except InvalidBatchError as exc:
        raise InvalidBatchError(f"decompressed records do not parse: {exc}") from exc
    if inspected is None:
        raise InvalidBatchError(
            f"the decompressed {CODEC_NAMES[codec]} payload holds something other than records "
            "(field 15)"
        )
    count, max_ts = inspected
    return SplitRequest(header, tail, count, max_ts, zero_copy, codec, plain)


def is_compressed_request(raw: bytes | memoryview) -> bool:
    """Whether a ProduceRequest carries compressed_records where its records
    would be (a walk over its few header fields, as the split does), so the
    broker can split it off its event loop: decompression takes up to ~130 ms
    (64 MiB of gzip output at ~500 MB/s) where an uncompressed split takes
    ~0.2 ms a MiB."""
    mv = memoryview(raw)
    try:
        start = _records_start(mv)
    except InvalidRequestError:
        return False
    return start is not None and start < len(mv) and mv[start] == COMPRESSED_TAG


def decompress_reservation(raw: bytes | memoryview, head: ProduceHead | None = None) -> int:
    """Bytes a ProduceRequest may inflate to when :func:`split_produce_request`
    validates it: 0 for uncompressed records; a zstd payload's declared content
    size (the decompressor cannot write more than a frame declares, and a
    declaration past the bound is refused before any work); else
    MAX_DECOMPRESSED_BYTES, the bound every decompression stops at. A walk over
    the few header fields and one frame header: O(1) in the records. The broker
    reserves it from its decompression budget before decompressing. ``head``:
    the request's :func:`produce_head`, if the caller has it (no second walk)."""
    mv = memoryview(raw)
    if head is not None:
        start = head.start
    else:
        try:
            start = _records_start(mv)
        except InvalidRequestError:
            return 0
    if start is None or start >= len(mv) or mv[start] != COMPRESSED_TAG:
        return 0
    try:
        if head is not None:
            header = head.header
        else:
            header = logstore_pb2.ProduceRequest.FromString(mv[:start])  # type: ignore[arg-type]
        if int(header.compression) == CODEC_ZSTD:
            payload = compressed_payload(mv[start:], "produce request")
            size = zstd_content_size(payload)
            if 0 <= size <= MAX_DECOMPRESSED_BYTES:
                return max(size, 1)
    except (DecodeError, CorruptRecordError):
        pass  # the split refuses it; until then, the worst case
    return MAX_DECOMPRESSED_BYTES


def split_produce_request(raw: bytes | memoryview, head: ProduceHead | None = None) -> SplitRequest:
    """Split a serialized ProduceRequest.

    Bytes that do not parse as a ProduceRequest raise InvalidRequestError (the
    same reason every other method gives unparseable bytes); an empty batch or a
    records CRC mismatch raises InvalidBatchError.

    Checks ``records_crc32c`` when present (over the records' bytes as sent;
    on the slow path, over the re-serialized records, which equal the bytes
    sent whenever the sender used canonical encoding).

    ``head``: the request's :func:`produce_head`, if the caller parsed it
    already (the header fields are then neither walked nor parsed again).
    """
    mv = memoryview(raw)
    start = _records_start(mv) if head is None else head.start
    if start is None:
        result = _slow_path(raw)
    else:
        if head is not None:
            header = head.header
        else:
            try:
                header = logstore_pb2.ProduceRequest.FromString(mv[:start])  # type: ignore[arg-type]
            except DecodeError as exc:
                raise InvalidRequestError(f"malformed produce request: {exc}") from exc
        tail = mv[start:]
        if tail and tail[0] == COMPRESSED_TAG:
            try:
                compressed_payload(tail, "produce request")
                ends = True
            except CorruptRecordError:
                ends = False  # something follows the field: the general path decides
            result = _split_compressed(header, tail, True) if ends else _slow_path(raw)
        else:
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
    if result.codec == CODEC_NONE and result.header.compression != CODEC_NONE:
        raise InvalidBatchError(
            f"compression {result.header.compression} is set but the records are not in "
            "compressed_records"
        )
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


def recompress(split: SplitRequest, codec: int, level: int | None = None) -> SplitRequest:
    """``split`` stored with ``codec`` instead (a topic's ``compression_type``):
    itself when it already has it; else its records (decompressed already by
    :func:`split_produce_request`) compressed with ``codec``, or left
    uncompressed for CODEC_NONE. The count and max timestamp stay."""
    if split.codec == codec:
        return split
    plain = split.records if split.plain is None else split.plain
    if codec == CODEC_NONE:
        return split._replace(records=plain, codec=CODEC_NONE, plain=None)
    tail = compressed_field(compress(plain, codec, level))
    return split._replace(records=tail, codec=codec, plain=bytes(plain))


def produce_head(raw: bytes | memoryview) -> ProduceHead:
    """Every field of a serialized ProduceRequest but its records, parsed
    without the records (the walk :func:`split_produce_request` does; a
    request not in field order is parsed whole and its records dropped), and
    where the records start. InvalidRequestError if it does not parse; the
    records are not checked here: the split that stores them does that."""
    mv = memoryview(raw)
    start = _records_start(mv)
    try:
        if start is not None:
            return ProduceHead(
                start,
                logstore_pb2.ProduceRequest.FromString(mv[:start]),  # type: ignore[arg-type]
            )
        full = logstore_pb2.ProduceRequest.FromString(bytes(raw))
    except DecodeError as exc:
        raise InvalidRequestError(f"malformed produce request: {exc}") from exc
    full.ClearField("records")
    full.ClearField("compressed_records")
    return ProduceHead(None, full)


def produce_header(raw: bytes | memoryview) -> logstore_pb2.ProduceRequest:
    """:func:`produce_head`'s header."""
    return produce_head(raw).header
