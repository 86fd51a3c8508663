"""Batch-level facts about a records field, found by upb in C with no Python
work per record: how many records there are, and their largest timestamp.

Both come from parsing the serialized records (``repeated Record records =
15``, see :mod:`logstore.wire._records`) as private *view* messages that
protobuf's wire format makes possible. Neither is ever serialized or sent:

* ``CountView { repeated bytes records = 15; }`` keeps each record as an
  opaque string, so ``len(view.records)`` is the record count, and anything in
  the bytes that is not field 15 with wire type 2 is an unknown field.
* ``TimestampView { TimestampRecord records = 15; }`` declares field 15 as a
  *singular* message. Protobuf merges repeated occurrences of a singular
  message field into one message, and merging concatenates repeated fields, so
  with ``TimestampRecord { repeated sint64 timestamp_ms = 3; ... }`` one
  parse collects every record's timestamp into one repeated scalar field, in
  record order. Records that carry no timestamp (proto3 omits 0, which means
  "the batch's timestamp") add nothing to it: when no record carries one, the
  field is empty and the answer costs O(1). Key, value and headers are declared
  as in ``Record`` (headers with a UTF-8 ``string`` name), so parsing the
  bodies validates them as a ``RecordBatch`` parse does.

Measured on the project's machine, a 1 MiB produce request of ~10,000 100-B
records (min of 7 x 50): ``split_produce_request`` took 151-171 us on main
with a ``RecordBatch`` parse, 153-174 us with one ``TimestampView`` parse (it
validates as much and keeps no message per record) and the ~20 us numpy count
of same-size records; ``CountView`` adds ~50 us when sizes differ (~200 vs
~230 us). When every record carries a timestamp, collecting them and taking
``max()`` in C adds ~330 us (~33 ns a record), work main skipped by trusting
the client.

Pure functions, thread-safe (the view classes are immutable descriptors).
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from logstore.errors import InvalidBatchError

from ._columns import record_shape, same_record_bytes, uniform_record_count
from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT

#: Smaller than every timestamp: the maximum of no timestamps. Passing it as a
#: batch's max timestamp leaves the batch's base timestamp as its maximum.
NO_TIMESTAMP_MS: Final = -(1 << 63)

_PACKAGE: Final = "logstore.internal.views"
_RECORDS_FIELD: Final = 15  # RecordBatch.records / ProduceRequest.records


def _build_views() -> tuple[Any, Any, Any]:
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="logstore/internal/views.proto", package=_PACKAGE, syntax="proto3"
    )
    header = file.message_type.add(name="Header")
    header.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    header.field.add(name="value", number=2, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    rec = file.message_type.add(name="TimestampRecord")
    rec.field.add(name="key", number=1, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    rec.field.add(name="value", number=2, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    rec.field.add(name="timestamp_ms", number=3, type=f.TYPE_SINT64, label=f.LABEL_REPEATED)
    rec.field.add(
        name="headers",
        number=4,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=f".{_PACKAGE}.Header",
    )
    view = file.message_type.add(name="TimestampView")
    view.field.add(
        name="records",
        number=_RECORDS_FIELD,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_OPTIONAL,
        type_name=f".{_PACKAGE}.TimestampRecord",
    )
    count = file.message_type.add(name="CountView")
    count.field.add(
        name="records", number=_RECORDS_FIELD, type=f.TYPE_BYTES, label=f.LABEL_REPEATED
    )
    # KeyView: field 15 singular, so every record's ``key`` (declared
    # repeated here) is concatenated into one list: its length is the number
    # of records that carry a key (an empty key included, proto3 ``optional``
    # writes it), whatever else they hold (unknown fields, left unparsed).
    krec = file.message_type.add(name="KeyRecord")
    krec.field.add(name="key", number=1, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    kview = file.message_type.add(name="KeyView")
    kview.field.add(
        name="records",
        number=_RECORDS_FIELD,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_OPTIONAL,
        type_name=f".{_PACKAGE}.KeyRecord",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.CountView")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.TimestampView")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.KeyView")),
    )


_CountView, _TimestampView, _KeyView = _build_views()


def keyed_record_count(records: bytes | memoryview) -> int:
    """How many records of a serialized records field carry a key (an empty
    key counts; a null key does not). One ``KeyView`` parse in C, O(1)
    Python: compacted topics compare it with the record count to refuse null
    keys. Raises InvalidBatchError if the bytes are not protobuf."""
    try:
        view = _KeyView.FromString(records)
    except DecodeError as exc:
        raise InvalidBatchError(f"malformed records: {exc}") from exc
    return len(view.records.key)


def _timestamps(records: bytes | memoryview) -> tuple[Any, bool]:
    """(every carried timestamp, whether anything but records is in the bytes)."""
    try:
        view = _TimestampView.FromString(records)
    except DecodeError as exc:
        raise InvalidBatchError(f"malformed records: {exc}") from exc
    return view.records.timestamp_ms, bool(len(UnknownFieldSet(view)))


def _max(timestamps: Any) -> int:
    return int(max(timestamps)) if timestamps else NO_TIMESTAMP_MS


def count_records(records: bytes | memoryview) -> int | None:
    """The number of records in a serialized records field, or None when the
    bytes hold anything but records (another field, or field 15 with another
    wire type). Raises InvalidBatchError if they are not protobuf at all."""
    try:
        view = _CountView.FromString(records)
    except DecodeError as exc:
        raise InvalidBatchError(f"malformed records: {exc}") from exc
    if len(UnknownFieldSet(view)):
        return None
    return len(view.records)


def max_record_timestamp(records: bytes | memoryview) -> int:
    """The largest ``timestamp_ms`` a record of the serialized records field
    carries, or :data:`NO_TIMESTAMP_MS` when none carries one.

    Also validates every record body as a ``Record`` (wire types, UTF-8
    header names): raises InvalidBatchError when one does not parse.
    """
    return _max(_timestamps(records)[0])


def every_record_timestamped(records: bytes | memoryview, record_count: int) -> bool:
    """Whether each of the ``record_count`` records carries its own nonzero
    ``timestamp_ms`` (then the batch's base timestamp is nobody's, and the
    effective maximum is the records' maximum alone). One ``TimestampView``
    parse in C; O(1) Python work. Raises InvalidBatchError if the bytes are
    not records."""
    timestamps = _timestamps(records)[0]
    return len(timestamps) == record_count and 0 not in timestamps


#: Record fields whose payload may differ between same-shape records: key
#: (1) and value (2), both ``bytes``, so a parse accepts whatever they hold.
_OPAQUE_FIELDS: Final = frozenset({1 << 3 | 2, 2 << 3 | 2})
#: Fields of the first record walked before giving the fast path up.
_MAX_SHAPE_FIELDS: Final = 16
#: Bytes of a record outside its opaque payload compared across the records,
#: at most (each is a strided compare); more and the records are parsed.
_MAX_COMPARED_BYTES: Final = 48
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _field(buf: memoryview, pos: int, end: int) -> tuple[int, int, int] | None:
    """(key, where its payload starts, where the field ends) of the field at
    ``pos``, or None when the walk does not take it (a group, a varint that
    runs past ``end`` or 10 bytes): the records are then left to upb."""
    key = 0
    for i in range(2):  # the key, then a varint value or a length
        value = shift = 0
        while True:
            if pos >= end or shift > 9 * VARINT_SHIFT:
                return None
            b = buf[pos]
            pos += 1
            value |= (b & VARINT_BITS) << shift
            if b < VARINT_MORE:
                break
            shift += VARINT_SHIFT
        if i == 0:
            key = value
            wire_type = key & 7
            if wire_type == _WIRE_I64:
                return key, pos, pos + 8
            if wire_type == _WIRE_I32:
                return key, pos, pos + 4
            if wire_type not in (_WIRE_VARINT, _WIRE_LEN):
                return None
            start = pos
    if key & 7 == _WIRE_VARINT:
        return key, start, pos
    return key, pos, pos + value


def _same_shape_records(records: bytes | memoryview) -> tuple[int, int] | None:
    """:func:`inspect_records`'s answer when every record is the first one's
    bytes but for the payload of its largest key or value field (see there);
    None when not (the caller parses them all). Raises InvalidBatchError when
    the first record does not parse (then none would)."""
    shape = record_shape(records)
    if shape is None:
        return None
    size, head = shape
    buf = memoryview(records)
    pos = head
    opaque = (0, 0)  # the payload that may differ, [start, end) in a record
    for _ in range(_MAX_SHAPE_FIELDS):
        if pos >= size:
            break
        field = _field(buf, pos, size)
        if field is None:
            return None
        key, start, pos = field
        if key in _OPAQUE_FIELDS and pos - start > opaque[1] - opaque[0]:
            opaque = (start, pos)
    if pos != size or size - (opaque[1] - opaque[0]) > _MAX_COMPARED_BYTES:
        return None
    columns = [*range(opaque[0]), *range(opaque[1], size)]
    if not same_record_bytes(buf, 0, len(buf), size, columns):
        return None
    timestamps, _ = _timestamps(buf[:size])  # the one record shape, validated
    return len(buf) // size, _max(timestamps)


def inspect_records(records: bytes | memoryview) -> tuple[int, int] | None:
    """``(record count, max_record_timestamp)`` of a serialized records field,
    every record validated; None when the bytes hold anything but records.

    When every record is the first one's bytes but for the payload of one key
    or value field (fixed-size values with the same key, timestamp and
    headers, or none: W5's and most benchmarks' records), the first record
    alone is parsed and the others are proven to be the same record but for
    that payload by one strided compare per other byte
    (:func:`_same_shape_records`; at most _MAX_COMPARED_BYTES of them): a
    key's or a value's bytes are not looked at by a parse either (``bytes``
    fields), so every record is valid exactly when the first is, and carries
    its timestamp. Otherwise one
    ``TimestampView`` parse validates and collects the timestamps; the count
    costs no second parse when every record has the same encoded size (a
    numpy check of the record heads, see
    :func:`logstore.wire.uniform_record_count`); otherwise ``CountView``
    counts them (~75 us a MiB).
    """
    fast = _same_shape_records(records)
    if fast is not None:
        return fast
    timestamps, other_fields = _timestamps(records)
    if other_fields:
        return None
    count = uniform_record_count(records)
    if count is None:
        count = count_records(records)
        if count is None:  # pragma: no cover - the view saw only field 15
            return None
    return count, _max(timestamps)
