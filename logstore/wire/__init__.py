"""The wire layer: stored frame format, record encoding and decoding, partitioner.

Everything that defines bytes shared by disk and network lives here (with the
generated ``logstore.v1`` protobuf code), and so does the decoding of stored
frames into records or columns (:class:`ColumnBatch`), shared by the embedded
store's reads and the client's fetches. It depends on nothing else in
logstore but :mod:`logstore.errors`.
"""

from ._columns import (
    ColumnBatch,
    FetchedFrames,
    columns_to_records,
    decode_columns,
    decode_objects,
    empty_columns,
    parse_fetch,
    stored_frames,
    uniform_record_count,
)
from ._frame import (
    ATTR_OFFSET_DELTAS,
    BASE_OFFSET_POS,
    CRC_START,
    FRAME_OVERHEAD,
    FRAME_OVERHEAD_V2,
    FRAME_TAG,
    HEADER_SIZE,
    MAX_BATCH_LENGTH,
    MAX_FRAME_OVERHEAD,
    MIN_RECORD_BYTES,
    PREFIX_SIZE,
    RECORD_TAG,
    FrameHeader,
    batch_view,
    build_head,
    build_offset_frame,
    check_crc,
    crc32c,
    decode_header,
    encode_frame,
    patch_base_offset,
)
from ._murmur2 import murmur2, partition_for_key
from ._produce import SplitRequest, split_produce_request
from ._record_views import (
    NO_TIMESTAMP_MS,
    count_records,
    every_record_timestamped,
    keyed_record_count,
    max_record_timestamp,
)
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
    "ATTR_OFFSET_DELTAS",
    "VALUE_PREFIX",
    "BASE_OFFSET_POS",
    "CRC_START",
    "FRAME_OVERHEAD",
    "FRAME_OVERHEAD_V2",
    "FRAME_TAG",
    "HEADER_SIZE",
    "MAX_BATCH_LENGTH",
    "MAX_FRAME_OVERHEAD",
    "MIN_RECORD_BYTES",
    "NO_TIMESTAMP_MS",
    "PREFIX_SIZE",
    "RECORD_TAG",
    "ColumnBatch",
    "FetchedFrames",
    "FrameHeader",
    "Record",
    "SplitRequest",
    "batch_view",
    "build_head",
    "build_offset_frame",
    "check_crc",
    "columns_to_records",
    "count_records",
    "crc32c",
    "decode_columns",
    "decode_header",
    "decode_objects",
    "decode_records",
    "empty_columns",
    "encode_frame",
    "encode_record",
    "encode_records",
    "encode_values",
    "every_record_timestamped",
    "keyed_record_count",
    "max_record_timestamp",
    "murmur2",
    "parse_fetch",
    "partition_for_key",
    "patch_base_offset",
    "split_produce_request",
    "stored_frames",
    "uniform_record_count",
    "varint",
]
