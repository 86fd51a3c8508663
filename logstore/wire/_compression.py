"""Batch compression: the codecs of a frame's attributes bits 0-2, bounded.

A compressed batch (``records.proto``, "Compressed batches") has the same
header as an uncompressed one, with the codec in ``attributes`` bits 0-2
(Kafka's numbering), and ends with one field instead of the records::

    0x72                    tag: RecordBatch.compressed_records (field 14, length-delimited)
    varint                  payload length P (minimal or overlong; it must reach
                            exactly the end of the batch)
    P bytes                 payload = codec(the serialized records field)

The *serialized records field* is exactly what an uncompressed batch holds
after its header: each Record as tag 0x7a, a varint length, the Record. So a
decompressed payload is read by the same code as uncompressed records, and
in any language by parsing it as a ``RecordBatch`` (only field 15 present).

Codecs (:data:`CODEC_NAMES`): 1 gzip (one or more RFC 1952 members, what
``gzip``/zlib with wbits 31 and Node's ``zlib.gunzipSync`` read), 3 lz4 (one
or more LZ4 *frames*, the lz4.org frame format, not raw blocks), 4 zstd
(exactly one RFC 8878 frame; its content size, when declared, is checked
against the bound before decompressing). 2 (snappy) is reserved and refused, as are 5-7.
gzip comes from the standard library; lz4 and zstd from the ``lz4`` and
``zstandard`` packages (dependencies of logstore), imported on first use: if
one is missing, :func:`require_codec` raises one ImportError naming it.

Bound: a payload never inflates past :data:`MAX_DECOMPRESSED_BYTES` (64 MiB).
Decompression asks each codec for at most that many bytes plus one, so a
small payload that would inflate without end (a decompression bomb) costs at
most 64 MiB of memory and the time to produce it before it is refused; the
broker refuses such a batch at produce (INVALID_ARGUMENT) and readers treat
one as corrupt (DATA_LOSS), so what the broker stored is always readable.
64 MiB: a 4 MiB request (the broker's default ``max_request_bytes``) of
log lines compressing 10x inflates to 40 MiB, within it.

The CRC32C of a frame covers the stored (compressed) bytes, as for any
frame; :func:`decompress` errors are :class:`~logstore.errors.CorruptRecordError`
(the broker's produce path turns them into InvalidBatchError).

Thread-safe: gzip and lz4 take a (de)compressor object per call; zstd
reuses one compressor per level and one decompressor per thread (a
one-shot ``compress``/``decompress`` resets the context, so no state leaks
from one batch into the next).
"""

from __future__ import annotations

import importlib
import threading
import zlib
from typing import Any, Final

from logstore.errors import CorruptRecordError, InvalidArgumentError

from ._frame import ATTR_CODEC_MASK, FrameHeader, head_for_records
from ._records import VARINT_BITS, VARINT_MORE, VARINT_SHIFT, varint

CODEC_NONE: Final = 0
CODEC_GZIP: Final = 1
CODEC_SNAPPY: Final = 2  # reserved (Kafka's); refused
CODEC_LZ4: Final = 3
CODEC_ZSTD: Final = 4
CODEC_NAMES: Final = {
    CODEC_NONE: "none",
    CODEC_GZIP: "gzip",
    CODEC_SNAPPY: "snappy",
    CODEC_LZ4: "lz4",
    CODEC_ZSTD: "zstd",
}
#: The codecs this version writes and reads.
SUPPORTED_CODECS: Final = frozenset({CODEC_NONE, CODEC_GZIP, CODEC_LZ4, CODEC_ZSTD})
#: Where each optional codec comes from (named in the error when missing).
_PACKAGES: Final = {CODEC_LZ4: ("lz4.frame", "lz4"), CODEC_ZSTD: ("zstandard", "zstandard")}
#: (lowest, highest, default) compression level of each codec. Defaults: zstd
#: 1, not zstd's and Kafka's 3: on the records a log store carries, level 1
#: compresses as well at 0.5-0.6x the CPU. Measured on 7 MB batches (one
#: core, CPU ms per MB in, level 3 vs 1): the benchmark's JSON log lines ratio
#: 6.85 vs 7.10, 1.91 vs 1.19 ms; JSON click events 4.07 vs 4.27, 3.16 vs 1.53
#: ms; where level 3 wins, Python source 3.92 vs 3.46 (2.37 vs 3.69 ms) and
#: prose 6.54 vs 5.18, pass ``compression_level=3`` (Kafka's) or higher. A
#: producer's compression is the largest CPU cost of a compressed produce
#: (docs/benchmarks.md, "Compression"). zstd's "fast" negative levels were
#: measured and not made the default: on the benchmark's W2 log lines (7.2 MB
#: batch, one core, CPU ms per MB in, the join included) level 1 is 1.36 ms at
#: ratio 0.148, -1 1.22 ms at 0.208, -3 1.01 ms at 0.225, -5 1.01 ms at 0.251,
#: -7 0.96 ms at 0.266: -3 saves ~0.35-0.4 ms of producer CPU per MB (~10 % of a
#: zstd produce's CPU over both processes) for 1.5x the bytes on disk and on
#: the wire, where the bytes are what compression is for; pass
#: ``compression_level=-3`` on a CPU-bound host. gzip 6 (zlib's and Kafka's), lz4 0
#: (the fast mode; Kafka's 9 is LZ4-HC, ~10x slower to compress for ~10%
#: smaller output).
LEVELS: Final = {
    CODEC_GZIP: (1, 9, 6),
    CODEC_LZ4: (0, 16, 0),
    CODEC_ZSTD: (-7, 22, 1),
}
MAX_DECOMPRESSED_BYTES: Final = 64 << 20
#: RecordBatch.compressed_records = 14, wire type 2 (records.proto).
COMPRESSED_TAG: Final = 14 << 3 | 2


def codec_of(name: str | int) -> int:
    """The codec number of a name (``"zstd"``, ``"lz4"``, ``"gzip"``, ``"none"``)
    or number. InvalidArgumentError for snappy and anything unknown."""
    if isinstance(name, int) and not isinstance(name, bool):
        codec = name
    else:
        text = str(name).strip().lower()
        codec = next((c for c, n in CODEC_NAMES.items() if n == text), -1)
    if codec not in SUPPORTED_CODECS:
        raise InvalidArgumentError(
            f"compression must be one of none, gzip, lz4, zstd, not {name!r}"
            + (" (snappy is not supported)" if codec == CODEC_SNAPPY else "")
        )
    return codec


#: The codec modules once imported. ``__import__(name, fromlist=...)`` of a
#: module already imported still searches the path for the fromlist entry on
#: every call: ~40 us (file-system stats), measured, on each (de)compression.
_modules: Final[dict[int, Any]] = {}


def _module(codec: int) -> Any:
    mod = _modules.get(codec)
    if mod is None:
        mod = _modules[codec] = _import(codec)
    return mod


def _import(codec: int) -> Any:
    module, package = _PACKAGES[codec]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{CODEC_NAMES[codec]} compression needs the {package!r} package, which is not "
            f"installed: pip install {package}"
        ) from exc


def require_codec(codec: int) -> None:
    """Raise ImportError naming the package when ``codec`` cannot be used here."""
    if codec in _PACKAGES:
        _import(codec)  # not the cache: once per producer, and a test can hide the package


def check_level(codec: int, level: int | None) -> int:
    """The level to use (the codec's default for None); InvalidArgumentError
    naming the range when out of it."""
    if codec == CODEC_NONE:
        if level is not None:
            raise InvalidArgumentError("compression_level needs a compression codec")
        return 0
    lo, hi, default = LEVELS[codec]
    if level is None:
        return default
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise InvalidArgumentError(
            f"{CODEC_NAMES[codec]} compression_level must be an integer in {lo}..{hi}, "
            f"not {level!r}"
        )
    return level


#: Per thread: zstd contexts, reused (``ZstdCompressor``/``ZstdDecompressor``
#: objects may not be shared by threads at once). A fresh level-3 compressor
#: allocates its tables for every batch: measured on a 6 MB batch of log
#: lines, 15.8 ms to compress with a new one, 11.6 ms with a reused one.
_local: Final = threading.local()


#: zstd level 1's match table, 2**12 entries instead of the 2**14 that level 1
#: picks for a batch past 256 KiB. A 16 KiB table (4-byte entries) stays in
#: the L1 cache, so each lookup of the fast strategy is cheaper; log lines
#: repeat over short distances, so the smaller table finds nearly the same
#: matches. Measured on 7 MB batches (one core, CPU ms per MB in, 15
#: interleaved rounds, load ~9): the benchmark's W2 log lines 2.19 -> 1.84 ms
#: (0.84x) at ratio 0.1484 -> 0.1510, W1 2.17 -> 1.84 ms (0.85x) at 0.1501 ->
#: 0.1541; JSON click events 0.77x at 0.158 -> 0.147; Python source 0.94x at
#: 0.171 -> 0.185 and prose 0.91x at 0.402 -> 0.434 (pass
#: ``compression_level=2`` or more for those); random bytes the same. Only the
#: compressor's search changes: the frame, its window (2**19) and what any
#: zstd decoder needs to read it are level 1's. Levels other than 1 are
#: zstd's own.
ZSTD_LEVEL1_HASH_LOG: Final = 12


def _zstd_compressor(level: int) -> Any:
    cache: dict[int, Any] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        zstd = _module(CODEC_ZSTD)
        if level == 1:
            # Explicit parameters override level 1's hash_log only; zstd still
            # picks the rest for each input's size (and shrinks the table for
            # small batches), and writes the content size as level 1 does.
            params = zstd.ZstdCompressionParameters(
                compression_level=1, hash_log=ZSTD_LEVEL1_HASH_LOG, write_content_size=True
            )
            c = zstd.ZstdCompressor(compression_params=params)
        else:
            c = zstd.ZstdCompressor(level=level)
        cache[level] = c
    return c


def _zstd_decompressor() -> Any:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = _module(CODEC_ZSTD).ZstdDecompressor()
    return d


def compress(records: bytes | memoryview, codec: int, level: int | None = None) -> bytes:
    """The payload of ``records`` (a serialized records field) under ``codec``."""
    lvl = check_level(codec, level)
    if codec == CODEC_GZIP:
        # mtime=0: the same records give the same bytes (no time in the header).
        c = zlib.compressobj(lvl, zlib.DEFLATED, 31)
        return c.compress(records) + c.flush()
    if codec == CODEC_LZ4:
        out: bytes = _module(codec).compress(
            bytes(records), compression_level=lvl, content_checksum=False, store_size=True
        )
        return out
    if codec == CODEC_ZSTD:
        out = _zstd_compressor(lvl).compress(records)
        return out
    raise InvalidArgumentError(f"cannot compress with codec {codec}")  # pragma: no cover


def compressed_field(payload: bytes) -> bytes:
    """The batch's tail for ``payload``: tag 0x72, minimal varint length, payload."""
    return bytes((COMPRESSED_TAG,)) + varint(len(payload)) + payload


def compressed_payload(tail: bytes | bytearray | memoryview, where: str) -> memoryview:
    """The payload of a batch tail that must be exactly one ``compressed_records``
    field; CorruptRecordError (naming ``where``) otherwise."""
    mv = memoryview(tail)
    n = len(mv)
    if n < 2 or mv[0] != COMPRESSED_TAG:
        raise CorruptRecordError(f"{where}: compressed batch does not hold compressed_records")
    length = 0
    shift = 0
    pos = 1
    while True:
        if pos >= n or shift > 4 * VARINT_SHIFT:
            raise CorruptRecordError(f"{where}: bad compressed_records length")
        b = mv[pos]
        pos += 1
        length |= (b & VARINT_BITS) << shift
        if not b & VARINT_MORE:
            break
        shift += VARINT_SHIFT
    if pos + length != n:
        raise CorruptRecordError(
            f"{where}: compressed_records of {length} bytes does not end the batch "
            f"({n - pos} bytes follow its length)"
        )
    return mv[pos:]


def _bomb(codec: int, where: str, bound: int) -> CorruptRecordError:
    return CorruptRecordError(
        f"{where}: {CODEC_NAMES[codec]} payload inflates past {bound} bytes (the bound on a "
        "decompressed batch); refused as a decompression bomb"
    )


def _members(codec: int, payload: memoryview, where: str, bound: int) -> list[bytes]:
    """gzip members or lz4 frames, back to back: each decompressor stops at the
    end of its member and leaves the rest in ``unused_data``."""
    out: list[bytes] = []
    total = 0
    data: bytes | memoryview = payload
    while True:
        if codec == CODEC_GZIP:
            d: Any = zlib.decompressobj(31)
            piece = d.decompress(data, bound + 1 - total)
            if d.unconsumed_tail:  # the output limit stopped it
                raise _bomb(codec, where, bound)
        else:
            d = _module(codec).LZ4FrameDecompressor()
            piece = d.decompress(bytes(data), max_length=bound + 1 - total)
        total += len(piece)
        if total > bound:
            raise _bomb(codec, where, bound)
        out.append(piece)
        if not d.eof:
            if codec == CODEC_LZ4 and not d.needs_input:  # stopped by max_length
                raise _bomb(codec, where, bound)
            raise CorruptRecordError(f"{where}: {CODEC_NAMES[codec]} payload is cut short")
        rest = d.unused_data
        if not rest:
            return out
        if len(rest) >= len(data):  # pragma: no cover - every member consumes bytes
            raise CorruptRecordError(f"{where}: {CODEC_NAMES[codec]} payload does not advance")
        data = rest


def zstd_content_size(payload: bytes | bytearray | memoryview) -> int:
    """The content size a zstd frame declares; -1 when it declares none or the
    bytes do not start a zstd frame (or zstandard is missing)."""
    try:
        zstd = _module(CODEC_ZSTD)
    except ImportError:
        return -1
    try:
        return int(zstd.frame_content_size(payload))
    except zstd.ZstdError:
        return -1


def _zstd(payload: memoryview, where: str, bound: int) -> bytes:
    """Exactly one zstd frame. A frame that declares its size (every writer of
    logstore's does) is refused before any work when the size is past
    ``bound``; one that does not is decompressed into at most ``bound`` bytes."""
    zstd = _module(CODEC_ZSTD)
    try:
        size = zstd.frame_content_size(payload)
        if size > bound:
            raise _bomb(CODEC_ZSTD, where, bound)
        out: bytes = _zstd_decompressor().decompress(
            payload, max_output_size=bound, allow_extra_data=False
        )
    except zstd.ZstdError as exc:
        raise CorruptRecordError(
            f"{where}: zstd payload does not decompress to at most {bound} bytes (cut short, "
            f"not one zstd frame, or a decompression bomb): {exc}"
        ) from exc
    return out


def decompress(
    payload: bytes | bytearray | memoryview,
    codec: int,
    where: str,
    bound: int = MAX_DECOMPRESSED_BYTES,
) -> bytes:
    """The serialized records field of a compressed payload, at most ``bound``
    bytes. CorruptRecordError naming ``where`` for a payload that does not
    decompress, is cut short, or inflates past ``bound``."""
    mv = memoryview(payload)
    if codec not in SUPPORTED_CODECS or codec == CODEC_NONE:
        raise CorruptRecordError(f"{where}: codec {codec} is not supported")
    if not mv:
        raise CorruptRecordError(f"{where}: empty {CODEC_NAMES[codec]} payload")
    try:
        if codec == CODEC_ZSTD:
            data = _zstd(mv, where, bound)
        else:
            data = b"".join(_members(codec, mv, where, bound))
    except (zlib.error, RuntimeError) as exc:  # lz4.frame raises RuntimeError
        raise CorruptRecordError(
            f"{where}: {CODEC_NAMES[codec]} payload does not decompress: {exc}"
        ) from exc
    return data


def decompress_frame(
    frame: bytes | bytearray | memoryview, h: FrameHeader, bound: int = MAX_DECOMPRESSED_BYTES
) -> bytes:
    """The uncompressed equivalent of compressed frame ``frame`` (header ``h``,
    CRC already checked): the same header fields with codec 0 and the
    decompressed records, lengths and CRC recomputed, so every reader of
    uncompressed frames reads it. CorruptRecordError as :func:`decompress`."""
    head, records = decompress_frame_parts(frame, h, bound)
    return head + records


def decompress_frame_parts(
    frame: bytes | bytearray | memoryview, h: FrameHeader, bound: int = MAX_DECOMPRESSED_BYTES
) -> tuple[bytes, bytes]:
    """:func:`decompress_frame` as (its head, its records), not yet joined."""
    where = f"batch at offset {h.base_offset}"
    mv = memoryview(frame)
    payload = compressed_payload(mv[h.records_start : h.frame_size], where)
    records = decompress(payload, h.codec, where, bound)
    return head_for_records(mv, h, records, h.attributes & ~ATTR_CODEC_MASK), records
