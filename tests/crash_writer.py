"""Crash-test writer: appends and flushes in a loop, printing each acknowledgement.

Run as ``python -m tests.crash_writer DATA_DIR SEED``. Opens the store (which
recovers it after the previous kill -9), creates topic ``crash`` with two
partitions if needed, then loops forever: picks a partition, appends a batch
whose values are a pure function of their offsets (:func:`value_for`), makes it
durable (``append(sync=True)`` or ``flush()``), and only then prints
``ack <partition> <end offset>`` (flushed per line). Now and then it runs
retention (``maintain()``) or ``delete_records``, so records below the log
start offset may legitimately be gone. The test kills it with
SIGKILL at a random moment and checks every acknowledged offset.
"""

from __future__ import annotations

import hashlib
import random
import sys

TOPIC = "crash"
PARTITIONS = 2
#: Small segments so kills also land during rolls, and size retention (run by
#: ``maintain()``) plus ``delete_records`` so they land during deletions too.
TOPIC_CONFIG = {
    "segment_bytes": 32 * 1024,
    "index_interval_bytes": 1024,
    "retention_bytes": 256 * 1024,
}


def value_for(partition: int, offset: int) -> bytes:
    """The value stored at ``offset`` (size 8..300 bytes, derived from the offset)."""
    digest = hashlib.blake2b(f"{partition}:{offset}".encode(), digest_size=16).digest()
    size = 8 + digest[0] + digest[1] % 45
    head = f"{partition}:{offset}:".encode()
    return (head + digest * (size // 16 + 1))[:size]


def main() -> None:
    from logstore.errors import TopicExistsError
    from logstore.storage import Store

    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = Store.open(data_dir)
    try:
        store.create_topic(TOPIC, partitions=PARTITIONS, config=TOPIC_CONFIG)
    except TopicExistsError:
        pass
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:
        part = rng.randrange(PARTITIONS)
        start, end = store.offsets(TOPIC, part)
        batches = rng.randint(1, 3)
        for _ in range(batches):
            n = rng.randint(1, 40)
            values = [value_for(part, end + i) for i in range(n)]
            base = store.append(TOPIC, part, values, sync=batches == 1)
            assert base == end, (base, end)
            end += n
        if batches > 1:
            store.flush()
        out.write(f"ack {part} {end}\n")
        out.flush()
        roll = rng.random()
        if roll < 0.05:
            store.maintain()
        elif roll < 0.08:
            store.delete_records(TOPIC, part, max(start, end - rng.randint(0, 3000)))


if __name__ == "__main__":
    main()
