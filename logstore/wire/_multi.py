"""Multi-partition requests on the wire: split a MultiProduceRequest into its
batches' bytes, and build or split a MultiFetchResponse, never touching the
records or the stored frames in Python.

``MultiProduceRequest { Acks acks = 1; uint64 request_id = 2; repeated
ProduceRequest batches = 15; }`` is parsed as a private *view* (as
:mod:`logstore.wire._record_views` does for records) that declares field 15
``repeated bytes``: upb hands back each nested ProduceRequest as the bytes
that were sent, so each is split by :func:`split_produce_request` exactly as
a unary Produce is and its records are stored as they arrived (the view
copies each batch once, in C; nothing is re-serialized).

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

from typing import Any, Final, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from logstore.errors import InvalidRequestError
from logstore.v1 import logstore_pb2

from ._records import varint

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
    batches: list[bytes]


def split_multi_produce(raw: bytes) -> MultiProduceSplit:
    """The request's acks, request_id and batches (each the bytes sent).

    InvalidRequestError when ``raw`` is not protobuf or a field has the wrong
    wire type. A batch's own bytes are not looked at here: each is split (and
    may fail) on its own.
    """
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
