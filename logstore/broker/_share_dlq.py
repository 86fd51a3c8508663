"""Dead letters exactly once: what a crash left in a dead-letter topic.

The broker dead-letters a range of source records in three steps:

1. the records become ``DEAD_LETTER`` in a share-state record, fsynced before
   anyone is answered -- the durable **intent** (a restart lists it again with
   ``ShareCoordinator.pending_dead_letters``);
2. their copies, with the ``logstore-dlq-*`` headers, are appended to the
   group's dead-letter topic and fsynced;
3. ``dead_lettered`` makes them ``ARCHIVED`` (another state record).

A crash (or a failed step 3, retried) between 2 and 3 leaves records whose
copies may already be in the dead-letter topic: all, some (a crash inside a
multi-append range) or none. So before the broker appends a dead letter it
is *retrying* (listed at start, or queued again after a failure), it calls
:func:`already_dead_lettered`: the tail of the dead-letter topic is read and
every copy whose ``logstore-dlq-group``, ``-source-topic``,
``-source-partition`` and ``-source-offset`` headers name this range is
skipped -- the same check RedriveDeadLetters makes with its
``logstore-redrive-from`` header. A first attempt (a dead letter from a live
reply or tick) needs no check and costs nothing.

Bound: a retry in the same process (the append or the confirmation failed)
scans from the offset where its first attempt started appending (kept in
memory): exact. After a restart that offset is gone; the broker produces
dead letters one range at a time, each appended after the previous one was
confirmed, so the copies a crash left unconfirmed are among the last records
of the topic: at most the pending ranges' records (``tail_records``, the
caller's sum over the ranges it retries for that topic) plus
:data:`RECOVERY_SLACK_RECORDS` (records other writers appended meanwhile).
The one case this misses is a double fault: a range whose confirmation
failed, followed by more than that many other dead letters, then a crash
before its retry -- it may be dead-lettered twice (at-least-once, as before).
The scan reads at most that many records (``Store.read``, 1 MiB a read),
once per retried range: a cost only after a crash or a failure, never on
the normal path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from logstore.errors import LogStoreError

if TYPE_CHECKING:
    from logstore.share import DeadLetter
    from logstore.storage import Store

#: Records past the pending ranges' own that the tail scan also reads.
RECOVERY_SLACK_RECORDS: Final = 1_000
_READ_BYTES: Final = 1 << 20

H_GROUP: Final = "logstore-dlq-group"
H_TOPIC: Final = "logstore-dlq-source-topic"
H_PARTITION: Final = "logstore-dlq-source-partition"
H_OFFSET: Final = "logstore-dlq-source-offset"


def already_dead_lettered(
    store: Store,
    dl: DeadLetter,
    tail_records: int,
    partition: int = 0,
    since: int | None = None,
) -> set[int]:
    """Source offsets of ``dl`` (``first_offset..last_offset`` of
    ``dl.topic``/``dl.partition``, group ``dl.group_id``) whose copies are in
    ``dl.dead_letter_topic`` (partition ``partition``) from offset ``since``
    (exact: where this process's earlier attempt started appending), or,
    without it, in its last ``tail_records + RECOVERY_SLACK_RECORDS`` records
    (after a restart). Empty when the topic does not exist yet."""
    topic = dl.dead_letter_topic
    try:
        log_start, _ = store.offsets(topic, partition)
        hw = store.high_watermark(topic, partition)
    except LogStoreError:
        return set()
    if since is not None:
        pos = max(log_start, since)
    else:
        pos = max(log_start, hw - max(0, tail_records) - RECOVERY_SLACK_RECORDS)
    group, source = dl.group_id.encode(), dl.topic.encode()
    part = str(dl.partition).encode()
    found: set[int] = set()
    while pos < hw:
        try:
            batch = store.read(topic, partition, pos, _READ_BYTES)
        except LogStoreError:
            break
        if not batch:
            break
        for r in batch:
            h = dict(r.headers)
            if h.get(H_GROUP) != group or h.get(H_TOPIC) != source or h.get(H_PARTITION) != part:
                continue
            raw = h.get(H_OFFSET, b"")
            if raw.isdigit():
                off = int(raw)
                if dl.first_offset <= off <= dl.last_offset:
                    found.add(off)
        pos = batch[-1].offset + 1
    return found
