"""The wire layer: stored frame format, record encoding, partitioner.

Everything that defines bytes shared by disk and network lives here (with the
generated ``logstore.v1`` protobuf code). It depends on nothing else in
logstore but :mod:`logstore.errors`.
"""

from ._frame import (
    BASE_OFFSET_POS,
    CRC_START,
    FRAME_OVERHEAD,
    FRAME_TAG,
    HEADER_SIZE,
    MAX_BATCH_LENGTH,
    PREFIX_SIZE,
    FrameHeader,
    batch_view,
    build_head,
    check_crc,
    crc32c,
    decode_header,
    encode_frame,
    patch_base_offset,
    records_view,
)
from ._murmur2 import murmur2, partition_for_key
from ._produce import SplitRequest, split_produce_request
from ._records import (
    VALUE_PREFIX,
    Record,
    decode_records,
    encode_record,
    encode_records,
    encode_values,
    varint,
)

__all__ = [
    "VALUE_PREFIX",
    "BASE_OFFSET_POS",
    "CRC_START",
    "FRAME_OVERHEAD",
    "FRAME_TAG",
    "HEADER_SIZE",
    "MAX_BATCH_LENGTH",
    "PREFIX_SIZE",
    "FrameHeader",
    "Record",
    "SplitRequest",
    "batch_view",
    "build_head",
    "check_crc",
    "crc32c",
    "decode_header",
    "decode_records",
    "encode_frame",
    "encode_record",
    "encode_records",
    "encode_values",
    "murmur2",
    "partition_for_key",
    "patch_base_offset",
    "records_view",
    "split_produce_request",
    "varint",
]
