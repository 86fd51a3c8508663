"""Records: the public record type, and encoding/decoding of the records field.

The records of a batch are serialized as protobuf field 15 of ``RecordBatch``
(``repeated Record records = 15``), so each record is::

    0x7a  varint(len(body))  body

    body = [0x0a varint(len(key)) key]        key present (optional bytes)
           [0x12 varint(len(value)) value]    value present (optional bytes)
           [0x18 zigzag-varint(timestamp_ms)] timestamp_ms != 0 (sint64)
           [0x22 varint(len(h)) h]*           headers: 0x0a name 0x12 value
           [0x28 varint(offset_delta)]        format-2 batches only, != 0

The encoders below build exactly what a protobuf serializer would (so any
protobuf library decodes them) but without a message object per record: the
common shapes (value only; key and value) are encoded by interleaving cached
prefixes with the payloads and joining once, in C. Decoding uses upb.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Final

from logstore.errors import CorruptRecordError, InvalidBatchError
from logstore.v1 import records_pb2

#: RecordBatch attributes bit 3, format 2 (``_frame.ATTR_OFFSET_DELTAS``; it
#: imports this module, so the value is repeated here and asserted there).
_ATTR_OFFSET_DELTAS: Final = 0x08
#: Attribute bits 0-2, the codec (logstore.wire._frame.ATTR_CODEC_MASK).
_ATTR_CODEC_MASK: Final = 0x07

#: Largest payload (key or value) whose prefix is cached; larger ones are
#: encoded directly (the per-record cost is then negligible next to the copy).
_PREFIX_CACHE_MAX: Final = 1 << 16

# Protobuf varints (the one definition; ``_frame`` imports these): 7 payload
# bits a byte, the high bit set on every byte but the last.
VARINT_MORE: Final = 0x80  # continuation bit of a varint byte
VARINT_BITS: Final = 0x7F  # payload bits of a varint byte
VARINT_SHIFT: Final = 7
#: sint64 zigzag encoding: the sign bit's shift and the 64-bit mask.
_SIGN_SHIFT: Final = 63
_U64_MASK: Final = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < VARINT_MORE:
        return bytes((n,))
    out = bytearray()
    while n >= VARINT_MORE:
        out.append((n & VARINT_BITS) | VARINT_MORE)
        n >>= VARINT_SHIFT
    out.append(n)
    return bytes(out)


#: Varints of 0..16383 (every 1- and 2-byte varint), built once: keys, header
#: parts and most records are shorter than 16 KiB, so their lengths are one
#: tuple index instead of a loop (0.6 MB; measured 3x faster per call).
_SMALL_VARINT_LIMIT: Final = 1 << 14
_SMALL_VARINTS: Final[tuple[bytes, ...]] = tuple(map(_varint, range(_SMALL_VARINT_LIMIT)))


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    return _SMALL_VARINTS[n] if n < _SMALL_VARINT_LIMIT else _varint(n)


class ValuePrefixes(dict[int, bytes]):
    """``VALUE_PREFIX[n]``: the bytes of a value-only record before its value.

    ``VALUE_PREFIX[len(value)] + value`` is the record exactly as
    :func:`encode_record` encodes it. Lengths up to 64 KiB are cached (one
    entry per length seen, at most 65,537 entries of about 10 bytes); larger
    ones are computed each time, which is negligible next to copying the
    value. Use ``VALUE_PREFIX.__getitem__`` in ``map`` over many lengths: a C
    method, so no Python frame per record.
    """

    def __missing__(self, n: int) -> bytes:
        body_len = 1 + len(varint(n)) + n
        p = b"\x7a" + varint(body_len) + b"\x12" + varint(n)
        if n <= _PREFIX_CACHE_MAX:
            self[n] = p
        return p


VALUE_PREFIX: Final = ValuePrefixes()


class Record:
    """One record: what ``Store.read`` and ``Consumer.poll`` return and what
    ``Store.append`` / ``Producer.send`` accept.

    ``key`` and ``value`` are ``None`` when absent (a null key differs from an
    empty key; a null value is a tombstone). ``timestamp_ms`` is CreateTime in
    ms; 0 on input means "the batch's timestamp". ``offset`` is -1 until the
    record is stored. ``headers`` is a list of ``(name, value)`` pairs.
    """

    __slots__ = ("_headers", "key", "offset", "timestamp_ms", "value")

    def __init__(
        self,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
        offset: int = -1,
    ) -> None:
        self.value = value
        self.key = key
        # Most records have no headers: their list is made on first access.
        # Reads build ~10,000 Records per MiB, and the empty list each was
        # ~40% of building and dropping one (measured 167 -> 94 ns to build,
        # 44 -> 28 ns to free).
        self._headers: list[tuple[str, bytes]] | None = list(headers) if headers else None
        self.timestamp_ms = timestamp_ms
        self.offset = offset

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """``(name, value)`` pairs, in order; an empty list when there are none."""
        h = self._headers
        if h is None:
            h = self._headers = []
        return h

    @headers.setter
    def headers(self, value: list[tuple[str, bytes]]) -> None:
        self._headers = value

    def __repr__(self) -> str:
        return (
            f"Record(offset={self.offset}, timestamp_ms={self.timestamp_ms}, key={self.key!r}, "
            f"value={self.value!r}, headers={self.headers!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.offset == other.offset
            and self.timestamp_ms == other.timestamp_ms
            and self.key == other.key
            and self.value == other.value
            and self.headers == other.headers
        )

    __hash__ = None  # type: ignore[assignment]


def encode_record(
    value: bytes | None,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    timestamp_ms: int = 0,
    offset_delta: int = 0,
) -> bytes:
    """One record as one entry of the records field (tag 0x7a, length, body).

    ``None`` key or value is absent (not empty); a timestamp of 0 is omitted
    (the batch's applies), and so is an offset delta of 0 (only format-2
    batches carry deltas). Byte-identical to upb serializing the same Record.
    """
    parts: list[bytes] = []
    if key is not None:
        parts += (b"\x0a", varint(len(key)), key)
    if value is not None:
        parts += (b"\x12", varint(len(value)), value)
    if timestamp_ms:
        zigzag = ((timestamp_ms << 1) ^ (timestamp_ms >> _SIGN_SHIFT)) & _U64_MASK  # sint64
        parts += (b"\x18", _varint(zigzag))  # nonzero ms since 1970: 6+ bytes, past the table
    if headers:
        for name, hval in headers:
            # proto3 omits empty strings/bytes; do the same so the bytes are
            # canonical (the broker's zero-copy split and records CRC rely on it).
            nb = name.encode()
            h = b"".join(
                (
                    b"\x0a" + varint(len(nb)) + nb if nb else b"",
                    b"\x12" + varint(len(hval)) + hval if hval else b"",
                )
            )
            parts += (b"\x22", varint(len(h)), h)
    if offset_delta:
        parts += (b"\x28", varint(offset_delta))
    body = b"".join(parts)
    return b"\x7a" + varint(len(body)) + body


def _encode_one(rec: Record) -> bytes:
    return encode_record(rec.value, rec.key, rec.headers, rec.timestamp_ms)


def encode_values(values: Sequence[bytes]) -> bytes:
    """Records with only a value each, serialized as the records field.

    The prefixes come from a cache keyed by length and are interleaved with
    the values in one list, joined once: no per-record Python bytecode beyond
    two ``map`` calls that run in C.
    """
    lengths = set(map(len, values))
    if len(lengths) == 1:
        # All values the same size (common for fixed-size payloads): one
        # prefix, and bytes.join puts it between the values.
        # One join into one new buffer: a second ~1 MiB temporary (prefix +
        # join) measured 10x slower here, from page faults on fresh mappings.
        prefix = VALUE_PREFIX[lengths.pop()]
        return prefix.join([b"", *values])
    n = len(values)
    parts: list[bytes] = [b""] * (2 * n)
    parts[0::2] = map(VALUE_PREFIX.__getitem__, map(len, values))
    parts[1::2] = values
    return b"".join(parts)


def encode_records(records: Iterable[Record | bytes]) -> tuple[bytes, int, int]:
    """Serialize records as the records field.

    Returns ``(bytes, count, max_timestamp_ms)``; max_timestamp_ms is 0 when
    no record carries a timestamp. ``bytes`` items are value-only records.
    """
    items = records if isinstance(records, list) else list(records)
    try:
        # Value-only records (bytes-like) take the fast path; anything else
        # (a Record, None) makes len() or join() raise TypeError at once.
        return encode_values(items), len(items), 0  # type: ignore[arg-type]
    except TypeError:
        pass
    parts: list[bytes] = []
    max_ts = 0
    for r in items:
        if isinstance(r, bytes | bytearray | memoryview):
            v = bytes(r)
            parts.append(VALUE_PREFIX[len(v)])
            parts.append(v)
        elif isinstance(r, Record):
            parts.append(_encode_one(r))
            max_ts = max(max_ts, r.timestamp_ms)
        else:
            raise InvalidBatchError(f"a record must be bytes or Record, not {type(r).__name__}")
    return b"".join(parts), len(items), max_ts


def decode_records(
    batch: bytes | bytearray | memoryview,
    base_offset: int,
    base_timestamp_ms: int,
    start_offset: int = 0,
    record_count: int | None = None,
) -> list[Record]:
    """Decode a serialized RecordBatch into Records, skipping offsets < start_offset.

    A compressed batch (attributes bits 0-2) is decompressed first (bounded,
    see :mod:`logstore.wire._compression`). Records stored with timestamp 0
    get the batch's base timestamp. In a
    format-2 batch (attributes bit 3) each record's offset is base_offset +
    its offset_delta; raises CorruptRecordError if the deltas do not
    strictly increase up to last_offset_delta, or, with ``record_count``
    given, if the batch holds another number of records.
    """
    msg = records_pb2.RecordBatch.FromString(bytes(batch))
    recs = msg.records
    codec = msg.attributes & _ATTR_CODEC_MASK
    if codec:
        # A compressed batch: its records are the decompressed
        # compressed_records field (logstore.wire._compression), which imports
        # this module, hence the late import; O(1) per batch.
        from ._compression import decompress  # noqa: PLC0415

        if len(recs):
            raise CorruptRecordError(f"compressed batch at offset {base_offset} also has records")
        plain = decompress(msg.compressed_records, codec, f"batch at offset {base_offset}")
        recs = records_pb2.RecordBatch.FromString(plain).records
    if record_count is not None and len(recs) != record_count:
        raise CorruptRecordError(
            f"batch at offset {base_offset} holds {len(recs)} records, header says {record_count}"
        )
    if msg.attributes & _ATTR_OFFSET_DELTAS:
        offsets = [base_offset + r.offset_delta for r in recs]
        last = base_offset + msg.last_offset_delta
        if any(a >= b for a, b in pairwise(offsets)) or (offsets and offsets[-1] > last):
            raise CorruptRecordError(
                f"batch at offset {base_offset}: record offset deltas do not increase up to "
                f"its last offset delta {msg.last_offset_delta}"
            )
    else:
        offsets = list(range(base_offset, base_offset + len(recs)))
    out: list[Record] = []
    for offset, r in zip(offsets, recs, strict=True):
        if offset < start_offset:
            continue
        out.append(
            Record(
                r.value if r.HasField("value") else None,
                r.key if r.HasField("key") else None,
                [(h.key, h.value) for h in r.headers] if r.headers else None,
                r.timestamp_ms or base_timestamp_ms,
                offset,
            )
        )
    return out
