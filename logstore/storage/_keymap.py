"""The log cleaner's key -> latest offset map, in bounded memory.

**Digests** (:class:`KeyHasher`). A key is hashed to 124 bits: four
polynomial hashes modulo the prime ``p = 2**31 - 1``, each with its own base
``r_i`` drawn at random (``secrets``) for every hasher, i.e. for every clean
run, so nobody can choose keys that collide. ``h_i(key) = sum_j (key[j] + 1)
* r_i**j mod p``: the ``+ 1`` makes every byte a nonzero coefficient, so two
distinct keys (also of different lengths) differ as polynomials of degree
below ``L`` (the longer key's length) and agree for at most ``L - 1`` of the
``p`` bases (Schwartz-Zippel). The four bases are independent, so **two
distinct keys get equal digests with probability at most ((L - 1) / (2**31 -
1))**4** per pair: for keys up to 256 bytes below 2**-92, so below 2**-48 for
one pass of 5.6 million keys (1.6 * 10**13 pairs). A collision would drop a
live record, so keys longer than :data:`LONG_KEY` (4 KiB, where the bound
would weaken to 2**-76 a pair) are hashed with keyed BLAKE2b instead (one
call each; the digest then is pseudorandom, 2**-124 a pair). Vectorized, a
few numpy calls per block of keys whatever their number: keys up to 64 bytes
as zero-padded rows (coefficient 0 past a key's end) times the (width, 4)
matrix of powers; longer ones by prefix sums over the key buffer (``C[k]``
the sum of ``(b + 1) * r**j`` over its first ``k`` bytes, ``j`` a byte's
position in its own key, key ``[s, e)`` hashing to ``(C[e] - C[s]) mod p``).
The powers up to 4 KiB are computed once per hasher. Kafka's cleaner takes an
unkeyed MD5 risk instead.

**Map** (:class:`KeyMap`): an open-addressing table (linear probing) in two
preallocated numpy arrays, 20 bytes a slot: the digest as two ``uint64``
(``h0 + 1`` in bits 31..61 of the first word, so 0 marks an empty slot) and
the offset as a ``uint32`` delta from the pass's base offset. It holds at
most ``capacity`` = 5/6 of its slots, i.e. **24 bytes a key**: 16 MiB maps
~699,000 keys, 128 MiB ~5.59 million. ``add`` and ``latest`` are vectorized
over a batch of digests: each step probes one slot for every key still
searching (numpy, O(1) Python per step; the number of steps is the batch's
longest probe, a few dozen at that load). ``add`` refuses (returns False and
changes nothing) a batch that would take the map past ``capacity`` or an
offset more than 2**32 - 2 past the base; the cleaner then ends the pass
there and starts another from that offset (Kafka's LogCleaner does the same
when its dedupe buffer is full). The arrays exist only between ``reset`` and
``release`` (the cleaner releases them after each clean), so the memory is
taken only while cleaning.

Not thread-safe: one cleaner owns it.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Final

import numpy as np
import numpy.typing as npt

_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]
_U8 = npt.NDArray[np.uint8]
_B = npt.NDArray[np.bool_]

#: The Mersenne prime 2**31 - 1: products of two residues fit in 62 bits.
PRIME: Final = (1 << 31) - 1
#: Independent polynomial hashes per digest (4 x 31 = 124 bits).
HASHES: Final = 4
#: Keys longer than this are hashed with keyed BLAKE2b (module docstring).
LONG_KEY: Final = 4096
#: Keys up to this long are hashed as padded rows times a matrix of powers.
SHORT_KEY: Final = 64
#: Keys per block of that product (bounds its temporaries: 8192 x 64 x 8 B = 4 MiB).
_BLOCK: Final = 8192
#: Bytes a table slot takes: 16-byte digest + 4-byte offset delta.
SLOT_BYTES: Final = 20
#: Most keys per slot (a higher load lengthens linear probes sharply).
MAX_LOAD: Final = 5 / 6
#: Bytes a key costs at the most: SLOT_BYTES / MAX_LOAD.
BYTES_PER_KEY: Final = 24
#: The largest offset delta from the pass's base a slot holds.
MAX_DELTA: Final = (1 << 32) - 2

_P = np.uint64(PRIME)
_V16 = np.dtype((np.void, 16))
_SHIFT = np.uint64(31)


def _pow_mod(base: int, n: int) -> _U64:
    """base**k mod PRIME for k in [0, n), by doubling (log n numpy steps)."""
    out = np.empty(max(n, 1), np.uint64)
    out[0] = 1
    k = 1
    step = base % PRIME
    while k < n:
        m = min(k, n - k)
        out[k : k + m] = out[:m] * np.uint64(step) % _P
        k += m
        step = step * step % PRIME
    return out[:n]


class KeyHasher:
    """Digests keyed by four random bases (and a BLAKE2b key) drawn at creation."""

    def __init__(self, seed: int | None = None) -> None:
        rng = secrets.SystemRandom() if seed is None else random.Random(seed)
        self.bases = [rng.randrange(2, PRIME - 1) for _ in range(HASHES)]
        self._blake_key = bytes(rng.randrange(256) for _ in range(16))
        #: r_i**j mod p for j <= LONG_KEY, one column per hash.
        self._pow4 = np.stack([_pow_mod(r, LONG_KEY + 1) for r in self.bases], axis=1)

    def digests(self, data: _U8, key_offsets: _I64) -> _U64:
        """The ``(n, 2)`` uint64 digests of the keys ``data[key_offsets[i]:
        key_offsets[i + 1]]``; never 0 in column 0."""
        n = len(key_offsets) - 1
        out = np.empty((max(n, 0), 2), np.uint64)
        if n <= 0:
            return out
        lo, hi = int(key_offsets[0]), int(key_offsets[-1])
        start = key_offsets[:-1] - lo
        stop = key_offsets[1:] - lo
        lens = stop - start
        hs = np.empty((n, HASHES), np.uint64)
        short = lens <= SHORT_KEY
        if short.all():
            self._short(data[lo:hi], start, lens, hs)
        else:
            self._general(data[lo:hi], start, stop, lens, hs)
            idx = np.flatnonzero(short)
            if len(idx):
                sub = np.empty((len(idx), HASHES), np.uint64)
                self._short(data[lo:hi], start[idx], lens[idx], sub)
                hs[idx] = sub
        out[:, 0] = ((hs[:, 0] + np.uint64(1)) << _SHIFT) | hs[:, 1]
        out[:, 1] = (hs[:, 2] << _SHIFT) | hs[:, 3]
        long = np.flatnonzero(lens > LONG_KEY)
        for i in long.tolist():  # rare: one BLAKE2b call per long key
            d = hashlib.blake2b(
                data[lo + int(start[i]) : lo + int(stop[i])].tobytes(),
                key=self._blake_key,
                digest_size=16,
            ).digest()
            a, b = np.frombuffer(d, np.uint64) >> np.uint64(2)
            out[i, 0] = a | np.uint64(1 << 61)  # 62 bits, never 0
            out[i, 1] = b
        return out

    def _short(self, data: _U8, start: _I64, lens: _I64, hs: _U64) -> None:
        """The four hashes of keys of at most SHORT_KEY bytes: each key as a
        zero-padded row of the widest one's width (coefficient 0 past its
        end), times the (width, 4) matrix of powers: one small integer
        matmul per block of keys (~50 ns a 16-byte key, 30x the prefix sums)."""
        width = int(lens.max()) if len(lens) else 0
        if width == 0:
            hs[:] = 0
            return
        padded = np.zeros(len(data) + width, np.uint8)
        padded[: len(data)] = data
        windows = np.lib.stride_tricks.as_strided(
            padded, (len(data) + 1, width), (1, 1), writeable=False
        )
        pw = self._pow4[:width]
        cols = np.arange(width, dtype=np.int64)
        for a in range(0, len(lens), _BLOCK):
            b = min(len(lens), a + _BLOCK)
            coef = windows[start[a:b]].astype(np.uint64) + np.uint64(1)
            coef[cols >= lens[a:b, None]] = 0
            hs[a:b] = (coef @ pw) % _P  # sums below 64 * 2**8 * 2**31 < 2**45

    def _general(self, data: _U8, start: _I64, stop: _I64, lens: _I64, hs: _U64) -> None:
        """The four hashes of every key by prefix sums over the key buffer."""
        # Each byte's position in its own key (capped: longer keys get BLAKE2b).
        local = np.arange(len(data), dtype=np.int64) - np.repeat(start, lens)
        np.minimum(local, LONG_KEY, out=local)
        coef = data.astype(np.uint64) + np.uint64(1)
        c = np.zeros(len(data) + 1, np.uint64)
        for i in range(HASHES):
            # The running sum wraps mod 2**64, but one key's own sum is below
            # 4,097 * 2**8 * 2**31 < 2**52, so its difference is exact.
            np.cumsum(coef * self._pow4[local, i], out=c[1:])
            hs[:, i] = (c[stop] - c[start]) % _P

    def digests_of(self, keys: list[bytes]) -> _U64:
        """:meth:`digests` of a list of keys (tests and small callers)."""
        offs = np.zeros(len(keys) + 1, np.int64)
        np.cumsum([len(k) for k in keys], out=offs[1:])
        return self.digests(np.frombuffer(b"".join(keys), np.uint8), offs)


def _last_of_each(d: _U64) -> _I64 | None:
    """Indices of the last occurrence of each distinct digest in ``d``, in no
    set order, or None when all are distinct (the common case: one sort of
    the second word, ~1 ms for 65,536 digests, where a two-word lexsort
    costs 11 ms)."""
    c1 = d[:, 1]
    order = np.argsort(c1)
    sv = c1[order]
    first = np.ones(len(sv), np.bool_)
    first[1:] = sv[1:] != sv[:-1]
    if first.all():
        return None
    starts = np.flatnonzero(first)
    sel: _I64 = np.maximum.reduceat(order, starts)
    run = np.cumsum(first) - 1
    if (d[order, 0] == d[sel, 0][run]).all():
        return sel
    # Equal second words but different first ones (p ~ 2**-62 a pair): exact path.
    order = np.lexsort((c1, d[:, 0]))
    sd = d[order]
    last = np.ones(len(sd), np.bool_)
    last[:-1] = (sd[1:, 0] != sd[:-1, 0]) | (sd[1:, 1] != sd[:-1, 1])
    out: _I64 = order[last]  # lexsort is stable: the last of a run is the latest
    return out


class KeyMap:
    """See the module docstring."""

    def __init__(self, buffer_bytes: int) -> None:
        #: The most slots and keys ``buffer_bytes`` allows.
        self.max_slots = max(2, buffer_bytes // SLOT_BYTES)
        self.capacity = max(1, int(self.max_slots * MAX_LOAD))
        self.base = 0
        self.slots = 0
        self._limit = 0
        self._n = 0
        self._digests: _U64 | None = None
        self._deltas: npt.NDArray[np.uint32] | None = None

    def __len__(self) -> int:
        return self._n

    def reset(self, base: int, max_keys: int | None = None) -> None:
        """Empty the map; offsets added from now on must be at least ``base``.

        ``max_keys`` (the dirty section's offset span: it cannot hold more
        keys) sizes the table below ``capacity`` when smaller, so cleaning a
        small section takes memory for that section, not the whole buffer.
        The arrays are allocated afresh (zeroed pages come from the OS as
        they are touched)."""
        self.release()
        want = self.max_slots if max_keys is None else int(max_keys / MAX_LOAD) + 1
        self.slots = max(2, min(self.max_slots, want))
        self._limit = min(self.capacity, max(1, int(self.slots * MAX_LOAD)))
        self._digests = np.zeros((self.slots, 2), np.uint64)
        self._deltas = np.zeros(self.slots, np.uint32)
        self.base = base

    def release(self) -> None:
        """Free the arrays (the next ``reset`` allocates them again)."""
        self._digests = self._deltas = None
        self._n = 0

    def _home(self, d: _U64) -> _I64:
        """Each digest's first slot: its last 31-bit hash (uniform below
        2**31 - 1) scaled to the table by a multiply and a shift (a uint64
        ``%`` costs ~45 ns an element, 30x more); a modulo for tables of more
        than 2**31 slots (buffers over 40 GiB)."""
        h3 = d[:, 1] & np.uint64(PRIME)
        if self.slots <= 1 << 31:
            return ((h3 * np.uint64(self.slots)) >> _SHIFT).astype(np.int64)
        return (d[:, 1] % np.uint64(self.slots)).astype(np.int64)

    def _probe(self, d: _U64) -> tuple[_I64, _B]:
        """For each digest: its slot if present (found True), else the first
        empty slot of its probe sequence (found False)."""
        assert self._digests is not None
        table, slots = self._digests, self.slots
        slot = self._home(d)
        # The first probe for every key at once (most stop there), then only
        # the keys still searching, one slot further per step.
        t = np.take(table, slot, axis=0)  # (50x faster than table[slot] on 2-D)
        found = (t[:, 0] == d[:, 0]) & (t[:, 1] == d[:, 1])
        todo = np.flatnonzero(~found & (t[:, 0] != 0))
        while len(todo):
            s = slot[todo] + 1
            s[s == slots] = 0
            slot[todo] = s
            t = np.take(table, s, axis=0)
            dt = np.take(d, todo, axis=0)
            hit = (t[:, 0] == dt[:, 0]) & (t[:, 1] == dt[:, 1])
            found[todo[hit]] = True
            todo = todo[~hit & (t[:, 0] != 0)]
        return slot, found

    def add(self, d: _U64, offsets: _I64) -> bool:
        """Record that each digest's latest offset is at least the given one
        (``offsets`` increase, at least ``base`` and above every offset already
        held). False, and no change, if the map would then hold more than
        ``capacity`` keys or an offset past ``base + MAX_DELTA``."""
        if not len(d):
            return True
        assert self._digests is not None and self._deltas is not None
        if int(offsets[-1]) - self.base > MAX_DELTA:
            return False
        sel = _last_of_each(d)
        if sel is None:
            deltas = (offsets - self.base).astype(np.uint32)
        else:
            d, deltas = np.take(d, sel, axis=0), (offsets[sel] - self.base).astype(np.uint32)
        slot, found = self._probe(d)
        new = np.flatnonzero(~found)
        if self._n + len(new) > self._limit:
            return False
        self._deltas[slot[found]] = deltas[found]
        # Insert the new ones. Keys aiming at one empty slot all write their
        # digest there (as one 16-byte item each, never torn) and the one whose
        # digest stayed has it; the others, like keys at a taken slot, probe on.
        # No sort and no scratch array.
        table, slots = self._digests, self.slots
        items = table.view(_V16).reshape(-1)
        d_items = np.ascontiguousarray(d).view(_V16).reshape(-1)
        todo = new
        s = slot[new]
        while len(todo):
            # (np.take of a strided column would copy the whole column first)
            empty = np.flatnonzero(np.take(table, s, axis=0)[:, 0] == 0)
            cand, cs = todo[empty], s[empty]
            items[cs] = d_items[cand]
            t, dc = np.take(table, cs, axis=0), np.take(d, cand, axis=0)
            won = (t[:, 0] == dc[:, 0]) & (t[:, 1] == dc[:, 1])
            self._deltas[cs[won]] = deltas[cand[won]]
            lose = np.ones(len(todo), np.bool_)
            lose[empty[won]] = False
            todo, s = todo[lose], s[lose] + 1
            s[s == slots] = 0
        self._n += len(new)
        return True

    def latest(self, d: _U64) -> _I64:
        """The latest offset of each digest, -1 for a digest not in the map."""
        out = np.full(len(d), -1, dtype=np.int64)
        if not len(d) or not self._n:
            return out
        assert self._deltas is not None
        slot, found = self._probe(d)
        out[found] = self._deltas[slot[found]].astype(np.int64) + self.base
        return out
