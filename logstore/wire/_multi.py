"""Multi-partition requests on the wire: split a MultiProduceRequest into its
batches' bytes, and build or split a MultiFetchResponse, never touching the
records or the stored frames in Python.

``MultiProduceRequest { Acks acks = 1; uint64 request_id = 2; repeated
ProduceRequest batches = 15; }`` is split by a walk over its top-level fields
(one tag and one varint per batch, O(batches) Python steps, never a look
inside a batch) into ``memoryview`` slices of the request: each batch is the
serialized ProduceRequest as sent, not copied, split by
:func:`split_produce_request` exactly as a unary Produce is, and its records
are stored as they arrived. A request the walk does not take as it is (a
field other than those three, a wire type or varint it does not expect, a
truncated field) is parsed instead as a private *view* (as
:mod:`logstore.wire._record_views` does for records) that declares field 15
``repeated bytes``, which accepts and refuses exactly what a
``MultiProduceRequest`` parse does and copies each batch. The copies were the
cost: a ~4 MiB request of 190 batches of 20 KiB took 25-46 us a batch to
split that way on this machine (fresh bytes objects of 20 KiB each), the walk
~0.4 us.

A ``MultiFetchResponse`` is ``repeated PartitionData partitions = 1``; a
``PartitionData`` keeps ``FetchResponse``'s field numbers for its batches (1)
and offsets (2-4) and adds topic (5), partition (6) and status (7), so the
broker builds each entry as ``stored frames + small fields`` (what the unary
Fetch sends) behind one tag and length (:func:`partition_data`), and the
client splits the reply with one view parse (:func:`split_multi_fetch`) and
reads each entry with :func:`~logstore.wire.parse_fetch`.

Pure functions, thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from logstore.errors import InvalidRequestError
from logstore.v1 import logstore_pb2

from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT, varint

_PACKAGE: Final = "logstore.internal.multi"
#: MultiFetchResponse.partitions: field 1, wire type 2.
PARTITION_DATA_TAG: Final = 0x0A


def _build_views() -> tuple[Any, Any]:
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="logstore/internal/multi.proto", package=_PACKAGE, syntax="proto3"
    )
    produce = file.message_type.add(name="MultiProduceView")
    # acks as a plain int32: the generated enum type would accept any value
    # too (proto3 open enums); the handler checks it against Acks.
    produce.field.add(name="acks", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    produce.field.add(name="request_id", number=2, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    produce.field.add(name="batches", number=15, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    fetch = file.message_type.add(name="MultiFetchView")
    fetch.field.add(name="partitions", number=1, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.MultiProduceView")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.MultiFetchView")),
    )


_MultiProduceView, _MultiFetchView = _build_views()


class MultiProduceSplit(NamedTuple):
    """A MultiProduceRequest's own fields and each batch's serialized ProduceRequest."""

    acks: int
    request_id: int
    #: Slices of the request (the walk) or copies (the view's parse): hold a
    #: slice only as long as the request itself may be held.
    batches: Sequence[bytes | memoryview]


# The walk's field keys (field number << 3 | wire type).
_ACKS_KEY: Final = 1 << 3 | 0
_REQUEST_ID_KEY: Final = 2 << 3 | 0
_BATCHES_KEY: Final = 15 << 3 | 2
#: Varint bytes the walk reads before it leaves a value to upb: 9 hold 63
#: bits, so whatever it decodes is a valid uint64 (and acks, an int32, is
#: taken only below 2**31: a negative one is a 10-byte varint).
_MAX_WALK_VARINT: Final = 9
_INT32_LIMIT: Final = 1 << 31


def _walk(raw: bytes | memoryview) -> MultiProduceSplit | None:
    """The split by a walk over the top-level fields, or None when the request
    holds anything the walk does not take (upb then decides)."""
    buf = memoryview(raw)
    end = len(buf)
    acks = request_id = 0
    batches: list[memoryview] = []
    pos = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        # The value: every field the walk takes is a varint or a varint length.
        value = shift = 0
        for _ in range(_MAX_WALK_VARINT):
            if pos >= end:
                return None
            b = buf[pos]
            pos += 1
            value |= (b & VARINT_BITS) << shift
            if b < VARINT_MORE:
                break
            shift += VARINT_SHIFT
        else:
            return None
        if key == _BATCHES_KEY:
            if pos + value > end:
                return None
            batches.append(buf[pos : pos + value])
            pos += value
        elif key == _ACKS_KEY and value < _INT32_LIMIT:
            acks = value  # the last occurrence wins, as in a parse
        elif key == _REQUEST_ID_KEY:
            request_id = value
        else:
            return None
    return MultiProduceSplit(acks, request_id, batches)


def split_multi_produce(raw: bytes | memoryview) -> MultiProduceSplit:
    """The request's acks, request_id and batches (each the bytes sent:
    slices of ``raw`` when the walk takes it, see the module docstring).

    InvalidRequestError when ``raw`` is not protobuf or a field has the wrong
    wire type. A batch's own bytes are not looked at here: each is split (and
    may fail) on its own.
    """
    walked = _walk(raw)
    return walked if walked is not None else _split_by_view(raw)


def _split_by_view(raw: bytes | memoryview) -> MultiProduceSplit:
    """The split by one upb parse of the view (what the walk leaves to it)."""
    try:
        view = _MultiProduceView.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(
            f"the request could not be parsed as a logstore.v1.MultiProduceRequest "
            f"({len(raw)} bytes): {exc}"
        ) from None
    return MultiProduceSplit(int(view.acks), int(view.request_id), list(view.batches))


def partition_data(frames: bytes, small: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """One serialized ``MultiFetchResponse.partitions`` entry, as the pieces to
    join (so a reply of many entries copies the frames once): its tag and
    length, then the stored ``frames`` unchanged, then ``small`` (a
    serialized PartitionData with only its small fields set)."""
    return _TAG, varint(len(frames) + len(small)), frames, small


_TAG: Final = bytes((PARTITION_DATA_TAG,))


def split_multi_fetch(raw: bytes) -> list[bytes]:
    """Each serialized PartitionData of a MultiFetchResponse, in order.

    Each is readable by :func:`~logstore.wire.parse_fetch` (same field
    numbers for the batches and offsets) and, when it carries no batches,
    cheaply as a ``logstore.v1.PartitionData`` for its status.
    InvalidRequestError if ``raw`` is not protobuf.
    """
    try:
        view = _MultiFetchView.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequestError(f"malformed MultiFetchResponse: {exc}") from None
    return list(view.partitions)


def partition_meta(entry: bytes) -> logstore_pb2.PartitionData:
    """An entry's small fields (topic, partition, status, offsets), parsed
    fully: call it on entries without batches (an error status has none),
    or pay for parsing the batches as messages."""
    return logstore_pb2.PartitionData.FromString(entry)
