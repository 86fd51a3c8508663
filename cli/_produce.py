"""``logctl produce``: one record per input line, a summary on stderr.

Lines end with ``\\n`` or ``\\r\\n``; a last line without a newline counts; an
empty line is a record with an empty value. Input is read in chunks of up to
1 MiB as they arrive (``read1``), so a pipe fed slowly is sent line by line
(within the producer's linger) and a large file goes out in full batches via
``send_many``. With ``--key-separator``, a line without it stops the command:
what was sent before it is flushed, the summary says what was stored, and the
error names the line (exit 1). With the default ``acks=all`` an exit status 0
means every line is durable on the broker.

``--delay`` (each record's deliver-at is the time it is sent plus the
delay) and ``--deliver-at`` (one time for all) add the
``logstore-deliver-at-ms`` header to every record; they are checked before
anything is sent, and lines then go out one ``send`` each (the header is
per record; ``send_many`` sends values only).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from logstore import errors
from logstore.client import DEFAULT_COMPRESSION_THREADS, Producer, SendResult

from ._format import human_bytes, write_json
from ._options import credentials

CHUNK_BYTES: Final = 1 << 20


class _Progress:
    """A Rich progress bar on a terminal (records/s, bytes, ETA when the size is known)."""

    def __init__(self, total_bytes: int | None) -> None:
        self._progress = Progress(
            TextColumn("producing"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[records]} records"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("produce", total=total_bytes, records=0)
        self._progress.start()

    def update(self, nbytes: int, records: int) -> None:
        self._progress.update(self._task, completed=nbytes, records=records)

    def stop(self) -> None:
        self._progress.stop()


def _lines(src: IO[bytes]) -> Any:
    """Yield lists of lines (without their line ends) as input arrives."""
    tail = b""
    read = getattr(src, "read1", src.read)
    while True:
        chunk = read(CHUNK_BYTES)
        if not chunk:
            break
        data = tail + chunk if tail else chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if b"\r" in data:
                lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
            yield lines
    if tail:
        yield [tail[:-1] if tail.endswith(b"\r") else tail]


def run(
    topic: str,
    *,
    partition: int | None,
    key_separator: str | None,
    path: str | None,
    acks: str,
    bootstrap: str,
    json_output: bool,
    connect_timeout_ms: int,
    delay_ms: int | None = None,
    deliver_at_ms: int | None = None,
    compression: str = "none",
    compression_level: int | None = None,
    compression_threads: int | None = None,
) -> None:
    sep = key_separator.encode() if key_separator is not None else None
    delayed = delay_ms is not None or deliver_at_ms is not None
    total = os.path.getsize(path) if path is not None else None
    progress = _Progress(total) if sys.stderr.isatty() else None
    started = time.monotonic()
    sent = SendResult()
    results: list[SendResult] = [sent]
    records = 0
    nbytes = 0
    bad_line: int | None = None
    producer = Producer(
        bootstrap,
        acks=acks,
        connect_timeout_ms=connect_timeout_ms,
        credentials=credentials(),
        compression=compression,
        compression_level=compression_level,
        compression_threads=(
            DEFAULT_COMPRESSION_THREADS if compression_threads is None else compression_threads
        ),
    )
    src: IO[bytes] = open(path, "rb") if path is not None else sys.stdin.buffer  # noqa: SIM115
    failure: BaseException | None = None
    try:
        for lines in _lines(src):
            if sep is None and not delayed:
                results.append(producer.send_many(topic, lines, partition=partition))
                records += len(lines)
                nbytes += sum(map(len, lines)) + len(lines)
            else:
                for line in lines:
                    if sep is None:
                        key: bytes | None = None
                        value = line
                    else:
                        key, found, value = line.partition(sep)
                        if not found:
                            bad_line = records + 1
                            break
                    sent.add(
                        producer.send(
                            topic,
                            value,
                            key=key,
                            partition=partition,
                            delay_ms=delay_ms,
                            deliver_at_ms=deliver_at_ms,
                        )
                    )
                    records += 1
                    nbytes += len(line) + 1
                if bad_line is not None:
                    break
            if progress is not None:
                progress.update(nbytes, records)
        producer.flush()
    except BaseException as exc:
        failure = exc
    finally:
        if progress is not None:
            progress.stop()
        if path is not None:
            src.close()
        try:
            producer.close()
        except errors.LogStoreError:
            pass
    elapsed = time.monotonic() - started
    if failure is not None and records == 0:
        raise failure
    stored, first_error = _stored(results)
    _summary(topic, stored, nbytes if first_error is None else None, elapsed, json_output)
    if failure is not None:
        raise failure
    if first_error is not None:
        raise first_error
    if bad_line is not None:
        raise errors.InvalidArgumentError(
            f"line {bad_line} has no key separator {key_separator!r}; "
            f"nothing from line {bad_line} on was sent"
        )


def _stored(
    results: list[Any],
) -> tuple[dict[int, tuple[int, int, int]], Exception | None]:
    """{partition: (first offset, last offset, records)} of what was stored, first error."""
    stored: dict[int, tuple[int, int, int]] = {}
    first_error: Exception | None = None
    for res in results:
        for partition, first, count, err in res.segments():
            if err is not None:
                first_error = first_error or err
                continue
            lo, hi, n = stored.get(partition, (first, first + count - 1, 0))
            if first >= 0:
                lo, hi = min(lo, first), max(hi, first + count - 1)
            stored[partition] = (lo, hi, n + count)
    return stored, first_error


def _summary(
    topic: str,
    stored: dict[int, tuple[int, int, int]],
    nbytes: int | None,
    elapsed: float,
    json_output: bool,
) -> None:
    total = sum(n for _, _, n in stored.values())
    rate = total / elapsed if elapsed > 0 else 0.0
    ranges = ", ".join(
        f"{p}: {lo}..{hi}" if lo >= 0 else f"{p}: offsets unknown (acks=0)"
        for p, (lo, hi, _) in sorted(stored.items())
    )
    size = f" ({human_bytes(nbytes)})" if nbytes is not None else ""
    where = f"; partition {ranges}" if ranges else ""
    sys.stderr.write(
        f"produced {total} records{size} to {topic}{where} in {elapsed:.2f} s "
        f"({rate:,.0f} records/s)\n"
    )
    sys.stderr.flush()
    if json_output:
        write_json(
            {
                "topic": topic,
                "records": total,
                "bytes": nbytes,
                "seconds": round(elapsed, 3),
                "partitions": [
                    {"partition": p, "first_offset": lo, "last_offset": hi, "records": n}
                    for p, (lo, hi, n) in sorted(stored.items())
                ],
            }
        )
