"""Batch compression (gzip, lz4, zstd): the stored framing, transparent reads, the
bound on decompression, corrupt payloads, mixed codecs, compaction of compressed
batches, the embedded store and a real broker (Producer, raw Produce, logctl)."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import lz4.frame
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli._produce
from cli.main import app
from logstore import Store
from logstore.client import DEFAULT_COMPRESSION_THREADS, Consumer, Producer
from logstore.config import TopicConfig
from logstore.errors import (
    CorruptRecordError,
    InvalidArgumentError,
    InvalidBatchError,
    InvalidConfigError,
)
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import records_pb2
from logstore.wire import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_ZSTD,
    COMPRESSED_TAG,
    MAX_DECOMPRESSED_BYTES,
    Record,
    build_head,
    check_crc,
    compress,
    compressed_field,
    compressed_payload,
    decode_header,
    decompress,
    decompress_reservation,
    encode_record,
    encode_records,
    is_compressed_request,
    parse_fetch,
    patch_base_offset,
    share_metadata,
    split_produce_request,
    stored_frames,
)
from logstore.wire._compression import zstd_content_size
from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_helpers import connect, create_topic, retry_info

ROOT = Path(__file__).resolve().parents[1]
CODECS = {"gzip": CODEC_GZIP, "lz4": CODEC_LZ4, "zstd": CODEC_ZSTD}
_names = itertools.count()


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _view(records: list[Record]) -> list[tuple[object, ...]]:
    return [(r.offset, r.timestamp_ms, r.key, r.value, list(r.headers or [])) for r in records]


def _log_bytes(path: Path, topic: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((path / f"{topic}-0").glob("*.log")))


def _standard_decompress(codec: str, payload: bytes) -> bytes:
    """The payload decompressed by each codec's reference library, not logstore's code."""
    if codec == "gzip":
        return gzip.decompress(payload)
    if codec == "lz4":
        return bytes(lz4.frame.decompress(payload))
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(payload))


# -- the stored framing ------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_stored_frame_layout_is_the_documented_one(tmp_path: Path, codec: str) -> None:
    """A compressed batch on disk: attributes = the codec, then tag 0x72, a varint length
    and a payload that the codec's own library decompresses to exactly the uncompressed
    records field; the CRC32C covers the stored bytes; protobuf reads compressed_records."""
    recs = [Record(b"value %d " % i * 4, b"k%d" % i, [("h", b"x")], 1000 + i) for i in range(50)]
    plain, _, _ = encode_records(recs)
    with Store.open(tmp_path) as store:
        store.create_topic("t", 1)
        store.append("t", 0, recs, compression=codec, timestamp_ms=5)
    data = _log_bytes(tmp_path, "t")
    h = decode_header(data)
    assert h.codec == CODECS[codec] and h.frame_size == len(data) and h.record_count == 50
    check_crc(data, h)
    assert data[h.records_start] == COMPRESSED_TAG == 0x72
    batch = records_pb2.RecordBatch.FromString(data[6:])
    assert batch.attributes == CODECS[codec] and not batch.records
    assert batch.max_timestamp_ms == 1049
    inner = _standard_decompress(codec, batch.compressed_records)
    assert inner == plain
    assert len(records_pb2.RecordBatch.FromString(inner).records) == 50
    assert len(batch.compressed_records) < len(plain) // 2


_records = st.lists(
    st.builds(
        Record,
        st.one_of(st.none(), st.binary(max_size=300)),
        st.one_of(st.none(), st.binary(max_size=20)),
        st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=10)), max_size=3),
        st.sampled_from([0, 1, 1_700_000_000_000, 2**40]),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.tuples(st.sampled_from(["none", *CODECS]), _records), max_size=5))
def test_every_codec_reads_as_the_uncompressed_path(
    tmp_path_factory: pytest.TempPathFactory, batches: list[tuple[str, list[Record]]]
) -> None:
    """Any records (null keys and values, headers, timestamp 0) appended with any mix of
    codecs read back (objects, columns, from every offset, after a reopen) exactly as the
    same records appended uncompressed."""
    path = tmp_path_factory.mktemp("rt")
    with Store.open(path) as store:
        store.create_topic("c", 1)
        store.create_topic("u", 1)
        for codec, recs in batches:
            store.append("c", 0, recs, compression=codec, timestamp_ms=77)
            store.append("u", 0, recs, timestamp_ms=77)
    with Store.open(path) as store:
        end = store.partition("u", 0).log_end_offset
        for offset in sorted({0, end // 2, max(0, end - 1)}):
            if offset >= end:
                continue
            want = _view(store.read("u", 0, offset, max_bytes=1 << 30))
            assert _view(store.read("c", 0, offset, max_bytes=1 << 30)) == want
            cols = store.read_columns("c", 0, offset, max_bytes=1 << 30)
            assert _view(cols.to_records()) == want


def test_mixed_codecs_in_one_partition(tmp_path: Path) -> None:
    """A partition holding none, gzip, lz4 and zstd batches reads in order from any
    offset, as objects, columns and share metadata, and time lookups find records in
    compressed batches."""
    order = ["none", "gzip", "lz4", "zstd", "none", "zstd"]
    with Store.open(tmp_path) as store:
        store.create_topic("m", 1)
        for i, codec in enumerate(order):
            recs = [
                Record(b"%d-%d" % (i, j), b"k%d" % j, None, 10_000 * (i + 1) + j)
                for j in range(200)
            ]
            store.append("m", 0, recs, compression=codec)
        frames = stored_frames(_log_bytes(tmp_path, "m")).frames
        assert {h.codec for _, h in frames} == {0, 1, 3, 4}
        for start in (0, 150, 250, 799, 1000, 1199):
            got = store.read("m", 0, start, max_bytes=1 << 30)
            assert [r.offset for r in got] == list(range(start, 1200))
            assert got[0].value == b"%d-%d" % divmod(start, 200)
            cols = store.read_columns("m", 0, start, max_bytes=1 << 30)
            assert np.array_equal(cols.offsets, np.arange(start, 1200))
        meta = share_metadata(_log_bytes(tmp_path, "m"), 300, want_keys=True, want_delays=True)
        assert np.array_equal(meta.offsets, np.arange(300, 1200))
        assert meta.timestamps[0] == 20_100
        found = store.offset_for_time("m", 0, 40_050)
        assert found is not None and (found.offset, found.timestamp_ms) == (650, 40_050)


# -- corrupt payloads and the bound --------------------------------------------------------


def _frame_with_payload(codec: int, payload: bytes, record_count: int = 1) -> bytes:
    tail = compressed_field(payload)
    head = build_head(len(tail), record_count, 1, 1, records=tail, attributes=codec)
    patch_base_offset(head, 0)
    return bytes(head) + tail


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_corrupt_payload_is_corrupt_record_on_read(tmp_path: Path, codec: str) -> None:
    """A stored compressed batch whose CRC matches but whose payload is not the codec's
    (written so, or cut short) is CorruptRecordError on every read path; the batch before
    it still reads."""
    good = compress(encode_records([b"x" * 100])[0], CODECS[codec])
    for payload in (b"\x00garbage-not-a-stream" * 3, good[: len(good) // 2]):
        path = tmp_path / f"{codec}-{len(payload)}"
        with Store.open(path) as store:
            store.create_topic("t", 1)
            store.append("t", 0, [b"fine"])
            frame = bytearray(_frame_with_payload(CODECS[codec], payload))
            patch_base_offset(frame, 1)
            store.append_frames("t", 0, bytes(frame))
            assert [r.value for r in store.read("t", 0, 0, max_bytes=1)] == [b"fine"]
            with pytest.raises(CorruptRecordError, match="batch at offset 1"):
                store.read("t", 0, 1)
            with pytest.raises(CorruptRecordError, match="batch at offset 1"):
                store.read_columns("t", 0, 1)
            with pytest.raises(CorruptRecordError):
                parse_fetch(bytes(frame))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_decompression_bomb_is_refused_on_read_and_on_produce(tmp_path: Path, codec: str) -> None:
    """A small payload that inflates past MAX_DECOMPRESSED_BYTES is never expanded past
    it: CorruptRecordError naming the bound on read, InvalidBatchError on produce."""
    # zeros, as a single record tag + length would not matter: the bound is on bytes
    bomb = compress(b"\x00" * (MAX_DECOMPRESSED_BYTES + 1024), CODECS[codec])
    assert len(bomb) < 400_000  # small on the wire
    frame = _frame_with_payload(CODECS[codec], bomb)
    with pytest.raises(CorruptRecordError, match="decompression bomb"):
        parse_fetch(frame)
    req = pb.ProduceRequest(topic="t", partition=0, compression=CODECS[codec]).SerializeToString()
    with pytest.raises(InvalidBatchError, match="decompression bomb"):
        split_produce_request(req + compressed_field(bomb))


def test_produce_split_refuses_inconsistent_requests() -> None:
    """The broker's split refuses snappy, an unknown codec, compression without
    compressed_records, compressed_records without compression, a payload that does not
    decompress and one holding something other than records, each as InvalidBatchError;
    a good one is counted with its true max timestamp."""
    plain, _, _ = encode_records([Record(b"v", None, None, 99), Record(b"w", None, None, 7)])
    payload = compress(plain, CODEC_ZSTD)

    def req(codec: int, tail: bytes) -> bytes:
        return (
            pb.ProduceRequest(topic="t", partition=0, compression=codec).SerializeToString() + tail
        )  # type: ignore[arg-type]

    ok = split_produce_request(req(CODEC_ZSTD, compressed_field(payload)))
    assert (ok.record_count, ok.max_timestamp_ms, ok.codec, ok.plain) == (2, 99, 4, plain)
    assert bytes(ok.records) == compressed_field(payload)
    for bad, why in [
        (req(2, compressed_field(payload)), "not snappy"),
        (req(6, compressed_field(payload)), "not 6"),
        (req(CODEC_ZSTD, plain), "not in compressed_records"),
        (req(0, compressed_field(payload)), "not none"),
        (req(CODEC_ZSTD, compressed_field(b"\x28\xb5\x2f\xfd junk")), "does not decompress"),
        (req(CODEC_GZIP, compressed_field(gzip.compress(b"\x08\x01"))), "other than records"),
    ]:
        with pytest.raises(InvalidBatchError, match=why):
            split_produce_request(bad)


def test_codec_names_levels_and_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown codecs and levels are refused naming the choices; a codec whose package
    is missing is one ImportError naming the package, raised when the producer is made."""
    with pytest.raises(InvalidArgumentError, match="none, gzip, lz4, zstd"):
        Producer("127.0.0.1:1", compression="brotli")
    with pytest.raises(InvalidArgumentError, match="snappy is not supported"):
        Producer("127.0.0.1:1", compression="snappy")
    with pytest.raises(InvalidArgumentError, match=r"-7\.\.22"):
        Producer("127.0.0.1:1", compression="zstd", compression_level=23)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    with pytest.raises(ImportError, match="pip install zstandard"):
        Producer("127.0.0.1:1", compression="zstd")


def test_codec_modules_are_imported_once_not_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a codec's first use, compressing, decompressing and reading a zstd frame's
    size import nothing: ``__import__(name, fromlist=...)`` searched the path on every
    call (~40 us of file-system stats holding the import lock, 4.5 % of the broker's busy
    samples in a W2 zstd profile)."""
    import builtins
    import importlib

    records = b"".join(encode_record(None, b"x" * 50) for _ in range(10))
    for codec in (CODEC_ZSTD, CODEC_LZ4):
        decompress(compress(records, codec), codec, "warm-up")
    imported: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def counting_import(name: str, *args: object, **kwargs: object) -> object:
        imported.append(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    def counting_import_module(name: str, package: str | None = None) -> object:
        imported.append(name)
        return real_import_module(name, package)

    monkeypatch.setattr(builtins, "__import__", counting_import)
    monkeypatch.setattr(importlib, "import_module", counting_import_module)
    for codec in (CODEC_ZSTD, CODEC_LZ4):
        payload = compress(records, codec)
        assert decompress(payload, codec, "batch") == records
    assert zstd_content_size(compress(records, CODEC_ZSTD)) == len(records)
    assert [n for n in imported if n.startswith(("zstandard", "lz4"))] == []


def test_zstd_level_1_uses_the_small_match_table_and_stays_a_level_1_frame() -> None:
    """The default level's compressor is zstd level 1 with hash_log 12 (``wire``'s
    ZSTD_LEVEL1_HASH_LOG; 0.84x the compression CPU on the benchmark's log lines): its
    output is byte for byte what zstd makes with those parameters, and the frame is one
    that any zstd decoder reads as it reads level 1's: content size declared, no
    checksum, the same window (so no more decoder memory). Other levels are zstd's own."""
    lines = [
        f'{{"ts": {1733100000000 + 7 * i}, "level": "info", "path": "/api/v1/orders/{i % 97}", '
        f'"trace": "{i * 2654435761 % 2**32:08x}"}}'.encode()
        for i in range(40_000)
    ]
    records = b"".join(encode_record(None, line) for line in lines)  # ~3.5 MB
    out = compress(records, CODEC_ZSTD)
    params = zstandard.ZstdCompressionParameters(compression_level=1, hash_log=12)
    assert out == zstandard.ZstdCompressor(compression_params=params).compress(records)
    assert out != zstandard.ZstdCompressor(level=1).compress(records)
    assert compress(records, CODEC_ZSTD, 1) == out
    frame, stock = (
        zstandard.get_frame_parameters(x)
        for x in (out, zstandard.ZstdCompressor(level=1).compress(records))
    )
    assert frame.content_size == len(records) and not frame.has_checksum
    assert frame.window_size == stock.window_size
    assert zstandard.ZstdDecompressor().decompress(out) == records
    assert compress(records, CODEC_ZSTD, 3) == zstandard.ZstdCompressor(level=3).compress(records)


# -- compaction -----------------------------------------------------------------------------


def test_compaction_keeps_the_latest_record_of_each_key_in_compressed_batches(
    tmp_path: Path,
) -> None:
    """The cleaner reads compressed batches: superseded records in them are removed, the
    latest of each key kept (a batch it keeps whole is copied unchanged, compressed; one
    that lost records is rewritten, format 2, compressed again with its codec: see
    test_compaction_recompresses_rewritten_batches_with_their_codec)."""
    config = {"cleanup_policy": "compact", "segment_bytes": 3000, "delete_retention_ms": 0}
    latest: dict[bytes, tuple[int, bytes]] = {}
    with Store.open(tmp_path) as store:
        store.create_topic("c", 1, config)
        for i in range(60):
            recs = [Record(b"v%d-%d" % (i, j) * 5, b"k%d" % ((i * 7 + j) % 13)) for j in range(5)]
            off = store.append("c", 0, recs, compression=["zstd", "lz4", "gzip"][i % 3])
            for j, r in enumerate(recs):
                assert r.key is not None and r.value is not None
                latest[r.key] = (off + j, r.value)
        store.partition("c", 0).roll()
        assert store.clean(force=True) >= 1
        lg = store.partition("c", 0)
        got: list[Record] = []
        at = lg.log_start_offset
        while at < lg.log_end_offset:
            part = store.read("c", 0, at, max_bytes=1 << 30)
            got += part
            at = part[-1].offset + 1
        by_key = {r.key: (r.offset, r.value) for r in got}
        assert by_key == latest
        assert len(got) < 300


def test_compaction_recompresses_rewritten_batches_with_their_codec(tmp_path: Path) -> None:
    """A compressed batch that loses records to compaction is stored with the codec it
    came with, its kept records (keys, values, headers, timestamps, offsets) exactly the
    latest of each key, readable as records and as columns.

    Fails on the old cleaner, which stored every rewritten batch uncompressed."""
    codecs = ["zstd", "lz4", "gzip"]
    config = {"cleanup_policy": "compact", "segment_bytes": 4000, "delete_retention_ms": 0}
    latest: dict[bytes, Record] = {}
    with Store.open(tmp_path) as store:
        store.create_topic("c", 1, config)
        for i in range(45):
            recs = [
                Record(
                    b"value %d of batch %d " % (j, i) * 4,
                    b"key-%d" % ((i * 5 + j) % 11),
                    headers=[("h", b"%d" % j)] if j % 2 else None,
                    timestamp_ms=1_700_000_000_000 + i if j == 3 else 0,
                )
                for j in range(6)
            ]
            off = store.append("c", 0, recs, compression=codecs[i % 3])
            for j, r in enumerate(recs):
                assert r.key is not None
                latest[r.key] = Record(r.value, r.key, r.headers, r.timestamp_ms)
                latest[r.key].offset = off + j
        store.partition("c", 0).roll()
        assert store.clean(force=True) >= 1
        frames = stored_frames(_log_bytes(tmp_path, "c")).frames
        rewritten = [h for _, h in frames if h.has_offset_deltas and h.record_count]
        assert rewritten  # the clean rewrote batches that kept some records
        for h in rewritten:
            assert h.codec == CODECS[codecs[h.base_offset // 6 % 3]]
        lg = store.partition("c", 0)
        got: list[Record] = []
        at = lg.log_start_offset
        while at < lg.log_end_offset:
            part = store.read("c", 0, at, max_bytes=1 << 30)
            got += part
            at = part[-1].offset + 1
    want = sorted(latest.values(), key=lambda r: r.offset)
    got_view = [(r.offset, r.key, r.value, list(r.headers or []), r.timestamp_ms) for r in got]
    assert [g[:4] for g in got_view] == [
        (r.offset, r.key, r.value, list(r.headers or [])) for r in want
    ]
    # timestamps: the record's own, or (0 stored) the batch's, never another's
    assert all(
        t == r.timestamp_ms for (*_, t), r in zip(got_view, want, strict=True) if r.timestamp_ms
    )


# -- a real broker --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path_factory.mktemp("compress") / "data")
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_producer_compression_round_trip_through_the_broker(
    broker: BrokerProcess, codec: str
) -> None:
    """Records a Producer sends compressed are stored compressed as sent (the Fetch reply
    carries the codec in each batch), and a Consumer reads them as objects and columns
    exactly as they were sent, null keys, headers and timestamp 0 included."""
    topic = _name(f"p-{codec}")
    with connect(broker) as stub:
        create_topic(stub, topic)
        with Producer(broker.grpc_address, compression=codec, linger_ms=50) as p:
            for i in range(3000):
                p.send(topic, b"line %d of a log " % i * 3 if i % 10 else None,
                       key=None if i % 3 else b"k%d" % i,
                       headers=[("n", b"%d" % i)] if i % 7 == 0 else None,
                       timestamp_ms=0 if i % 2 else 1_700_000_000_000 + i)  # fmt: skip
            p.flush()
        resp = stub.Fetch(
            pb.FetchRequest(topic=topic, partition=0, offset=0, max_bytes=64 << 20), timeout=10
        )
        assert resp.batches
        assert all(b.attributes == CODECS[codec] and b.compressed_records for b in resp.batches)
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got: list[Record] = []
        while len(got) < 3000:
            for recs in c.poll(2000).values():
                got.extend(recs)
    assert [r.offset for r in got] == list(range(3000))
    for i, r in enumerate(got):
        assert r.value == (b"line %d of a log " % i * 3 if i % 10 else None)
        assert r.key == (None if i % 3 else b"k%d" % i)
        assert list(r.headers or []) == ([("n", b"%d" % i)] if i % 7 == 0 else [])
        if i % 2 == 0:
            assert r.timestamp_ms == 1_700_000_000_000 + i
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        c.seek((topic, 0), 1234)
        cols = next(iter(c.poll_columns(5000).values()))
        assert int(cols.offsets[0]) == 1234 and cols.value(0) == got[1234].value


def test_broker_refuses_bad_compressed_batches_and_keeps_what_it_has(broker: BrokerProcess) -> None:
    """Raw Produce of a corrupt payload, a bomb, snappy, or compressed_records without a
    codec is INVALID_ARGUMENT with a message naming the problem, and the partition is
    unchanged; max_batch_bytes counts the compressed size."""
    topic = _name("bad")
    with connect(broker) as stub:
        create_topic(stub, topic, max_batch_bytes="4096")
        plain, _, _ = encode_records([b"y" * 1000] * 100)  # 100 KB, compresses to ~100 B
        good = pb.ProduceRequest(topic=topic, partition=0, compression=CODEC_ZSTD,
                                 compressed_records=compress(plain, CODEC_ZSTD))  # fmt: skip
        assert stub.Produce(good, timeout=10).base_offset == 0
        bomb = compress(b"\x00" * (MAX_DECOMPRESSED_BYTES + 1), CODEC_ZSTD)
        for bad, why in [
            (pb.ProduceRequest(topic=topic, partition=0, compression=CODEC_ZSTD,
                               compressed_records=b"\x28\xb5\x2f\xfd\x00garbage"), "decompress"),
            (pb.ProduceRequest(topic=topic, partition=0, compression=CODEC_ZSTD,
                               compressed_records=bomb), "decompression bomb"),
            (pb.ProduceRequest(topic=topic, partition=0, compression=2,  # type: ignore[arg-type]
                               compressed_records=compress(plain, CODEC_ZSTD)), "snappy"),
            (pb.ProduceRequest(topic=topic, partition=0,
                               compressed_records=compress(plain, CODEC_ZSTD)), "not none"),
            (pb.ProduceRequest(topic=topic, partition=0, compression=CODEC_GZIP,
                               compressed_records=os.urandom(3000)), "max_batch_bytes|decompress"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                stub.Produce(bad, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert re.search(why, info.value.details() or ""), info.value.details()
        big = pb.ProduceRequest(topic=topic, partition=0, compression=CODEC_GZIP,
                                compressed_records=gzip.compress(os.urandom(5000)))  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            stub.Produce(big, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        resp = stub.Fetch(pb.FetchRequest(topic=topic, partition=0, offset=0), timeout=10)
        assert resp.log_end_offset == 100 and len(resp.batches) == 1
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got = next(iter(c.poll(5000).values()))
        assert len(got) == 100 and got[99].value == b"y" * 1000


def test_logctl_produce_compression(broker: BrokerProcess, tmp_path: Path) -> None:
    """`logctl produce --compression zstd` stores compressed batches that `logctl consume`
    prints back line for line; an unknown codec is one line on stderr and exit 2."""
    topic = _name("cli")
    logctl = str(Path(sys.executable).parent / "logctl")
    env = {**os.environ, "LOGSTORE_BOOTSTRAP": broker.grpc_address}
    lines = [f'{{"n": {i}, "msg": "request served"}}' for i in range(500)]
    with connect(broker) as stub:
        create_topic(stub, topic)
    run = subprocess.run(
        [logctl, "produce", topic, "--compression", "zstd"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = subprocess.run(
        [logctl, "consume", topic, "--from-beginning", "--max", "500"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == lines
    bad = subprocess.run(
        [logctl, "produce", topic, "--compression", "snappy"],
        input="x\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "snappy is not supported" in bad.stderr


def test_logctl_produce_compression_threads_reach_the_producer(
    broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`logctl produce --compression-threads N` builds its Producer with
    compression_threads=N (and the default, 2, without it); the
    records it sends read back."""
    seen: list[dict[str, object]] = []

    class Recording(Producer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append(kwargs)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli._produce, "Producer", Recording)
    topic = _name("cli-threads")
    with connect(broker) as stub:
        create_topic(stub, topic)
    lines = [f'{{"n": {i}}}' for i in range(300)]
    runner = CliRunner()
    flags = ["--bootstrap", broker.grpc_address, "--compression", "zstd"]
    for extra in (["--compression-threads", "3"], []):
        res = runner.invoke(app, ["produce", topic, *flags, *extra], input="\n".join(lines) + "\n")
        assert res.exit_code == 0, res.output
    assert seen[0]["compression_threads"] == 3
    assert seen[1]["compression_threads"] == DEFAULT_COMPRESSION_THREADS
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got: list[bytes] = []
        while len(got) < 600:
            got += [r.value for r in next(iter(c.poll(5000).values()))]
    assert [v.decode() for v in got] == lines + lines


# -- topic compression_type -----------------------------------------------------------------


def test_topic_compression_type_config() -> None:
    """compression_type accepts producer, none (and Kafka's uncompressed), gzip, lz4,
    zstd, also as compression.type; snappy and anything else are refused naming the
    choices."""
    assert TopicConfig().compression_type == "producer"
    assert TopicConfig.from_mapping({"compression.type": "ZSTD"}).compression_type == "zstd"
    assert TopicConfig.from_mapping({"compression_type": "uncompressed"}).compression_type == "none"
    for bad in ("snappy", "brotli", ""):
        with pytest.raises(InvalidConfigError, match="producer, none"):
            TopicConfig.from_mapping({"compression_type": bad})


@pytest.mark.parametrize(("topic_type", "sent", "stored"), [
    ("producer", "lz4", CODEC_LZ4), ("producer", "none", 0), ("zstd", "none", CODEC_ZSTD),
    ("zstd", "gzip", CODEC_ZSTD), ("none", "zstd", 0), ("gzip", "gzip", CODEC_GZIP),
])  # fmt: skip
def test_topic_compression_type_decides_the_stored_codec(
    broker: BrokerProcess, topic_type: str, sent: str, stored: int
) -> None:
    """With compression_type producer the broker stores each batch with the codec it was
    sent with; with a codec it stores every batch with that one (recompressing), and the
    records read back the same either way."""
    topic = _name(f"ct-{topic_type}-{sent}")
    with connect(broker) as stub:
        create_topic(stub, topic, compression_type=topic_type)
        with Producer(broker.grpc_address, compression=sent, linger_ms=20) as p:
            p.send_many(topic, [b'{"n": %d, "msg": "hello hello hello"}' % i for i in range(2000)])
            p.flush()
        resp = stub.Fetch(
            pb.FetchRequest(topic=topic, partition=0, offset=0, max_bytes=64 << 20), timeout=10
        )
        assert resp.batches and {b.attributes for b in resp.batches} == {stored}
    with Consumer(broker.grpc_address) as c:
        c.assign([(topic, 0)])
        got: list[Record] = []
        while len(got) < 2000:
            for recs in c.poll(2000).values():
                got.extend(recs)
    assert [r.value for r in got] == [
        b'{"n": %d, "msg": "hello hello hello"}' % i for i in range(2000)
    ]


def test_embedded_append_follows_the_topic_compression_type(tmp_path: Path) -> None:
    """Store.append without a compression argument stores batches with the topic's
    compression_type codec (none for producer)."""
    with Store.open(tmp_path) as store:
        store.create_topic("z", 1, {"compression_type": "zstd"})
        store.create_topic("p", 1)
        store.append("z", 0, [b"abc" * 100])
        store.append("p", 0, [b"abc" * 100])
    assert decode_header(_log_bytes(tmp_path, "z")).codec == CODEC_ZSTD
    assert decode_header(_log_bytes(tmp_path, "p")).codec == 0


def test_topic_compression_levels_config() -> None:
    """compression_<codec>_level (Kafka's compression.<codec>.level, KIP-390) default to the
    codecs' defaults, take Kafka's dotted names, and are refused outside the codec's range
    (naming it) or when not an integer."""
    c = TopicConfig()
    assert (c.compression_zstd_level, c.compression_gzip_level, c.compression_lz4_level) == (
        1,
        6,
        0,
    )
    c = TopicConfig.from_mapping(
        {"compression.zstd.level": "19", "compression.gzip.level": 1, "compression.lz4.level": 9}
    )
    assert (c.level_for(CODEC_ZSTD), c.level_for(CODEC_GZIP), c.level_for(CODEC_LZ4)) == (19, 1, 9)
    assert c.level_for(0) is None
    assert TopicConfig.from_mapping({"compression_zstd_level": "-7"}).compression_zstd_level == -7
    for key, bad, why in [
        ("compression.zstd.level", "23", r"-7\.\.22"),
        ("compression.zstd.level", "-8", r"-7\.\.22"),
        ("compression.gzip.level", "0", r"1\.\.9"),
        ("compression.gzip.level", "10", r"1\.\.9"),
        ("compression.lz4.level", "17", r"0\.\.16"),
        ("compression.lz4.level", "fast", "integer"),
        ("compression.zstd.level", True, "integer"),
    ]:
        with pytest.raises(InvalidConfigError, match=why):
            TopicConfig.from_mapping({key: bad})


def test_broker_recompresses_at_the_topic_level(broker: BrokerProcess) -> None:
    """A topic whose compression_type names a codec has batches sent otherwise recompressed
    at its compression.<codec>.level: the stored payload is exactly that codec's output at
    that level (deterministic for gzip and zstd). Fails on the old broker, which always
    used the codec's default level."""
    values = [b'{"n": %d, "msg": "request served in %d ms"}' % (i, i % 97) for i in range(3000)]
    cases = [("zstd", "compression.zstd.level", "19"), ("gzip", "compression.gzip.level", "1")]
    for codec, key, level in cases:
        topic = _name(f"lvl-{codec}")
        with connect(broker) as stub:
            create_topic(stub, topic, compression_type=codec, **{key: level})
            with Producer(broker.grpc_address, compression="none", linger_ms=50) as p:
                p.send_many(topic, values, partition=0)
            resp = stub.Fetch(
                pb.FetchRequest(topic=topic, partition=0, offset=0, max_bytes=64 << 20), timeout=10
            )
        assert resp.batches
        for b in resp.batches:
            assert b.attributes == CODECS[codec]
            plain = _standard_decompress(codec, b.compressed_records)
            assert b.compressed_records == compress(plain, CODECS[codec], int(level))
            assert b.compressed_records != compress(plain, CODECS[codec])  # not the default


def test_bad_compression_levels_are_invalid_argument(broker: BrokerProcess) -> None:
    """CreateTopic and AlterTopicConfig with a level outside the codec's range are
    INVALID_ARGUMENT naming the range; the topic keeps its level."""
    topic = _name("badlvl")
    with connect(broker) as stub:
        with pytest.raises(grpc.RpcError) as info:
            create_topic(stub, topic, **{"compression.zstd.level": "40"})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "-7..22" in (info.value.details() or "")
        create_topic(stub, topic, **{"compression.gzip.level": "2"})
        with pytest.raises(grpc.RpcError) as info:
            stub.AlterTopicConfig(
                pb.AlterTopicConfigRequest(name=topic, set={"compression.gzip.level": "0"}),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1..9" in (info.value.details() or "")
        got = stub.DescribeTopic(pb.DescribeTopicRequest(name=topic), timeout=10)
        assert got.topic.config["compression_gzip_level"] == "2"


def test_logctl_topic_compression_level(broker: BrokerProcess) -> None:
    """`logctl topics alter --config compression.zstd.level=N` sets it (describe shows it);
    an out-of-range level is one line on stderr and a non-zero exit."""
    topic = _name("clilvl")
    logctl = str(Path(sys.executable).parent / "logctl")
    env = {**os.environ, "LOGSTORE_BOOTSTRAP": broker.grpc_address}
    with connect(broker) as stub:
        create_topic(stub, topic)
    ok = subprocess.run(
        [logctl, "topics", "alter", topic, "--config", "compression.zstd.level=12"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    with connect(broker) as stub:
        got = stub.DescribeTopic(pb.DescribeTopicRequest(name=topic), timeout=10)
    assert got.topic.config["compression_zstd_level"] == "12"
    bad = subprocess.run(
        [logctl, "topics", "alter", topic, "--config", "compression.lz4.level=99"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "0..16" in bad.stderr


def test_embedded_append_uses_the_topic_level(tmp_path: Path) -> None:
    """Store.append without a compression argument compresses at the topic's level."""
    with Store.open(tmp_path) as store:
        store.create_topic("z", 1, {"compression_type": "zstd", "compression.zstd.level": 15})
        store.append("z", 0, [b"level %d " % i * 20 for i in range(200)])
    frame = _log_bytes(tmp_path, "z")
    h = decode_header(frame)
    payload = bytes(compressed_payload(frame[h.records_start : h.frame_size], "test"))
    plain = zstandard.ZstdDecompressor().decompress(payload)
    assert payload == compress(plain, CODEC_ZSTD, 15)
    assert payload != compress(plain, CODEC_ZSTD)


@pytest.fixture(scope="module")
def producers(broker: BrokerProcess) -> Iterator[dict[str, Producer]]:
    ps = {c: Producer(broker.grpc_address, compression=c, linger_ms=0) for c in ["none", *CODECS]}
    try:
        yield ps
    finally:
        for p in ps.values():
            p.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(st.sampled_from(["none", *CODECS]), _records), min_size=1, max_size=4
    )
)
def test_broker_round_trip_of_every_codec_matches_uncompressed(
    broker: BrokerProcess, producers: dict[str, Producer], batches: list[tuple[str, list[Record]]]
) -> None:
    """Through a real broker, any records sent in batches of any codecs (null keys and
    values, headers, timestamp 0) are consumed exactly as the same records sent
    uncompressed to another topic, timestamps included."""
    topics = {"c": _name("hc"), "u": _name("hu")}
    with connect(broker) as stub:
        for t in topics.values():
            create_topic(stub, t)
    for codec, recs in batches:
        for which, p in (("c", producers[codec]), ("u", producers["none"])):
            for r in recs:
                ts = r.timestamp_ms or None
                p.send(topics[which], r.value, r.key, 0, r.headers or None, ts)
            p.flush()  # one batch per (codec, recs): the codec mix is in the partition
    total = sum(len(recs) for _, recs in batches)
    got: dict[str, list[Record]] = {}
    for which, t in topics.items():
        with Consumer(broker.grpc_address) as c:
            c.assign([(t, 0)])
            out: list[Record] = []
            while len(out) < total:
                for recs in c.poll(2000).values():
                    out.extend(recs)
            got[which] = out

    def shape(rs: list[Record]) -> list[tuple[object, ...]]:
        return [(r.offset, r.key, r.value, list(r.headers or [])) for r in rs]

    assert shape(got["c"]) == shape(got["u"])
    expected = [r for _, recs in batches for r in recs]
    assert [(r.key, r.value) for r in got["c"]] == [(r.key, r.value) for r in expected]
    explicit = [(i, r.timestamp_ms) for i, r in enumerate(expected) if r.timestamp_ms]
    assert [(i, got["c"][i].timestamp_ms) for i, _ in explicit] == explicit


def test_compressed_records_not_last_take_the_general_path() -> None:
    """A serializer that writes a field after compressed_records still gets its batch
    accepted (parsed whole, the field re-serialized), counted as the records say."""
    plain, _, _ = encode_records([b"a", b"b", b"c"])
    tail = compressed_field(compress(plain, CODEC_LZ4))
    head = pb.ProduceRequest(topic="t", partition=0, compression=CODEC_LZ4).SerializeToString()
    after = pb.ProduceRequest(request_id=9).SerializeToString()
    split = split_produce_request(head + tail + after)
    assert (split.record_count, split.codec, split.zero_copy, split.header.request_id) == (
        3,
        3,
        False,
        9,
    )
    assert bytes(split.records) == tail and split.plain == plain


def test_group_consumer_reads_compressed_batches(broker: BrokerProcess) -> None:
    """A GroupConsumer member reads every record of zstd and gzip batches in order, in
    each partition, and commits what it read."""
    from logstore.client import GroupConsumer

    topic = _name("grp")
    with connect(broker) as stub:
        create_topic(stub, topic, 2)
    for codec in ("zstd", "gzip"):
        with Producer(broker.grpc_address, compression=codec) as p:
            for part in range(2):
                p.send_many(
                    topic, [b"%s-%d" % (codec.encode(), i) for i in range(300)], partition=part
                )
    member = GroupConsumer(
        broker.grpc_address, _name("g"), topics=[topic], auto_offset_reset="earliest"
    )
    try:
        got: dict[int, list[bytes | None]] = {0: [], 1: []}
        for _ in range(200):
            for tp, recs in member.poll(500).items():
                got[tp.partition] += [r.value for r in recs]
            if sum(map(len, got.values())) >= 1200:
                break
        want = [b"zstd-%d" % i for i in range(300)] + [b"gzip-%d" % i for i in range(300)]
        assert got == {0: want, 1: want}
        member.commit()
    finally:
        member.close()


def test_compacted_topic_refuses_a_null_key_inside_a_compressed_batch(tmp_path: Path) -> None:
    """The null-key check of compacted topics reads the decompressed records: a zstd batch
    holding a record without a key is refused and nothing is appended."""
    with Store.open(tmp_path) as store:
        store.create_topic("c", 1, {"cleanup_policy": "compact"})
        store.append("c", 0, [Record(b"v", b"k")], compression="zstd")
        with pytest.raises(InvalidArgumentError, match="null key"):
            store.append("c", 0, [Record(b"v", b"k"), Record(b"w", None)], compression="zstd")
        assert store.partition("c", 0).log_end_offset == 1


def test_is_compressed_request() -> None:
    """The broker's check that sends a request's split to an I/O thread: true exactly for
    requests carrying compressed_records where the records go."""
    head = pb.ProduceRequest(topic="t", partition=0, compression=CODEC_ZSTD).SerializeToString()
    plain, _, _ = encode_records([b"a"])
    assert is_compressed_request(head + compressed_field(compress(plain, CODEC_ZSTD)))
    assert not is_compressed_request(head + plain)
    assert not is_compressed_request(head)
    assert not is_compressed_request(b"\xff")


def test_share_fetch_sees_deliver_at_headers_inside_compressed_batches(tmp_path: Path) -> None:
    """The share broker's candidate read finds a deliver-at header inside a gzip batch
    (its fast path searches the stored bytes, where a compressed header is not), so a
    delayed record in a compressed batch stays delayed; an undelayed one is not."""
    from logstore.broker._share_runtime import _candidates
    from logstore.share import PartitionRead
    from logstore.wire import deliver_at_header, stored_frames

    with Store.open(tmp_path) as store:
        store.create_topic("q", 1)
        later = 4_000_000_000_000
        recs = [Record(b"now"), Record(b"later", None, [deliver_at_header(later)])]
        store.append("q", 0, recs, compression="gzip")
        data = store.partition("q", 0).read_frames(0, 1 << 20).data
    assert b"logstore-deliver-at-ms" not in data  # the name is inside the payload only
    plan = PartitionRead("q", 0, 0, 0, "earliest", 100)
    got = _candidates(stored_frames(data), 0, plan, False)
    assert got.deliver_at is not None and list(got.deliver_at) == [0, later]


# -- the decompression budget -----------------------------------------------------------------


def _compressed_request(topic: str, codec: int, payload: bytes) -> bytes:
    tail = compressed_field(payload)
    head = pb.ProduceRequest(topic=topic, partition=0, compression=codec)  # type: ignore[arg-type]
    return head.SerializeToString() + tail


def test_decompress_reservation_is_the_declared_size_or_the_bound() -> None:
    """What a request reserves of the broker's decompression budget: 0 uncompressed, a zstd
    frame's declared content size, else the 64 MiB bound (gzip, lz4, zstd without a size,
    or a payload that is not what it says)."""
    records = encode_records([b"x" * 100] * 50)[0]
    plain = pb.ProduceRequest(topic="t", partition=0).SerializeToString() + records
    assert decompress_reservation(plain) == 0
    z = _compressed_request("t", CODEC_ZSTD, compress(records, CODEC_ZSTD))
    assert decompress_reservation(z) == len(records)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(records)
    assert decompress_reservation(_compressed_request("t", CODEC_ZSTD, no_size)) == (
        MAX_DECOMPRESSED_BYTES
    )
    for codec in (CODEC_GZIP, CODEC_LZ4):
        req = _compressed_request("t", codec, compress(records, codec))
        assert decompress_reservation(req) == MAX_DECOMPRESSED_BYTES
    junk = _compressed_request("t", CODEC_ZSTD, b"not zstd")
    assert decompress_reservation(junk) == MAX_DECOMPRESSED_BYTES


def test_decompressions_past_the_budget_are_resource_exhausted_with_retry_info(
    tmp_path: Path,
) -> None:
    """With max_inflight_decompress_bytes at its 1 MiB minimum, one 64 MiB-bound (gzip)
    decompression runs at a time: concurrent compressed produces past it are refused at
    once with RESOURCE_EXHAUSTED and a RetryInfo hint, the admitted ones are stored, and a
    refused one succeeds when retried. Fails on the old broker, which admitted them all."""
    b = start_broker(
        tmp_path / "data",
        env={
            "LOGSTORE_MAX_INFLIGHT_DECOMPRESS_BYTES": str(1 << 20),
            "LOGSTORE_RETRY_AFTER_MS": "50",
        },
    )
    try:
        with connect(b) as stub:
            topic = _name("budget")
            create_topic(stub, topic)
            # ~40 MiB of records each: gzip takes tens of ms to inflate them on this
            # machine, while the other requests arrive within a few ms.
            records = encode_records([b"a" * 4000] * 10_000)[0]
            req = pb.ProduceRequest.FromString(
                _compressed_request(topic, CODEC_GZIP, compress(records, CODEC_GZIP, 1))
            )
            futures = [stub.Produce.future(req, timeout=120) for _ in range(6)]
            ok, refused = 0, []
            for f in futures:
                try:
                    f.result()
                    ok += 1
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                    assert "max_inflight_decompress_bytes" in (err.details() or "")
                    info = retry_info(err)
                    assert info is not None and info.retry_delay.ToMilliseconds() == 50
                    refused.append(err)
            assert ok >= 1 and refused, (ok, len(refused))
            stub.Produce(req, timeout=120)  # nothing else in flight now: admitted
            end = stub.Fetch(pb.FetchRequest(topic=topic, partition=0, offset=0), timeout=10)
            assert end.log_end_offset == (ok + 1) * 10_000
    finally:
        assert b.stop() == 0
