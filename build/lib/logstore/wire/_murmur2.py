"""Kafka's murmur2 partitioner, shared by the broker (``partition_key``) and the
Python producer so that both choose the same partition for a key.

``partition_for_key(key, n) = (murmur2(key) & 0x7fffffff) % n`` exactly as
Kafka's ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``; ``murmur2``
returns a signed 32-bit int as Java does. Test vectors (Kafka's own
``UtilsTest.testMurmur2``; checked in tests/test_wire.py)::

    murmur2(b"21")                         = -973932308
    murmur2(b"foobar")                     = -790332482
    murmur2(b"a-little-bit-long-string")   = -985981536
    murmur2(b"a-little-bit-longer-string") = -1486304829
    murmur2(b"abc")                        = 479470107
"""

from __future__ import annotations

from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as a signed 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length // 4
    for i in range(n4):
        j = 4 * i
        k = data[j] | data[j + 1] << 8 | data[j + 2] << 16 | data[j + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    tail = n4 * 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    assert partition_count > 0
    return (murmur2(key) & 0x7FFFFFFF) % partition_count
