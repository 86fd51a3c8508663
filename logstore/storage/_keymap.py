"""The log cleaner's key -> latest offset map, in bounded memory.

Keys are hashed to 16-byte BLAKE2b digests (a collision between two of 10**9
keys has probability ~10**-21, Kafka's cleaner takes the same risk with MD5)
held as ``S16`` in a sorted numpy array with an ``int64`` offset beside it:
24 bytes a key and no Python object per key. A batch of keys is merged in by
one stable sort (numpy, in C) that keeps the latest offset per digest, so the
cost is O(n log n) in C and O(1) Python per batch.

Bound: the map holds at most ``capacity`` digests, where ``capacity`` is
``buffer_bytes / 48``: the merge makes a second copy of the arrays while it
sorts, so 16 MiB holds ~350,000 keys. ``add`` refuses (returns False and
changes nothing) a batch that would take it past ``capacity``; the cleaner
then stops the pass there and starts another from that offset (Kafka's
LogCleaner does the same when its dedupe buffer is full).

Not thread-safe: one cleaner owns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

#: Bytes a key costs: 16-byte digest + 8-byte offset, twice (the merge copy).
BYTES_PER_KEY: Final = 48


def digests(keys: Sequence[bytes]) -> npt.NDArray[np.bytes_]:
    """The 16-byte digests of ``keys`` as an ``S16`` array."""
    joined = b"".join(hashlib.blake2b(k, digest_size=16).digest() for k in keys)
    return np.frombuffer(joined, dtype="S16") if keys else np.empty(0, dtype="S16")


class KeyMap:
    """See the module docstring."""

    def __init__(self, buffer_bytes: int) -> None:
        self.capacity = max(1, buffer_bytes // BYTES_PER_KEY)
        self._keys: npt.NDArray[np.bytes_] = np.empty(0, dtype="S16")
        self._offsets: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys = np.empty(0, dtype="S16")
        self._offsets = np.empty(0, dtype=np.int64)

    def add(self, keys: npt.NDArray[np.bytes_], offsets: npt.NDArray[np.int64]) -> bool:
        """Record that each digest's latest offset is at least the given one
        (``offsets`` increase and are above every offset already held). False,
        and no change, if the map would then hold more than ``capacity`` keys."""
        if not len(keys):
            return True
        all_keys = np.concatenate([self._keys, keys])
        all_offs = np.concatenate([self._offsets, offsets])
        order = np.argsort(all_keys, kind="stable")  # equal digests keep offset order
        sk = all_keys[order]
        last = np.ones(len(sk), dtype=bool)
        last[:-1] = sk[1:] != sk[:-1]  # the last of each run of equal digests
        if int(last.sum()) > self.capacity:
            return False
        self._keys = sk[last]
        self._offsets = all_offs[order][last]
        return True

    def latest(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The latest offset of each digest, -1 for a digest not in the map."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self._keys) or not len(keys):
            return out
        idx = np.searchsorted(self._keys, keys)
        idx_c = np.minimum(idx, len(self._keys) - 1)
        hit = self._keys[idx_c] == keys
        out[hit] = self._offsets[idx_c[hit]]
        return out
