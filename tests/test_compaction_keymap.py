"""The cleaner's key map (open addressing, 24 bytes a key) against a dict model,
and its keyed vectorized digests (equal keys equal, distinct keys distinct)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from logstore import Store
from logstore.config import StoreConfig
from logstore.storage._keymap import (
    BYTES_PER_KEY,
    LONG_KEY,
    MAX_DELTA,
    PRIME,
    KeyHasher,
    KeyMap,
)
from logstore.wire import Record
from tests.test_storage_compaction import (
    COMPACT,
    ROOT,
    T0,
    _check_compacted,
    _fresh_disk,
    _read_all,
)


def _reference(key: bytes, bases: list[int]) -> tuple[int, int]:
    """The digest by its definition (_keymap's docstring), one key in pure Python."""
    h = []
    for r in bases:
        acc = 0
        for j, b in enumerate(key):
            acc = (acc + (b + 1) * pow(r, j, PRIME)) % PRIME
        h.append(acc)
    return ((h[0] + 1) << 31) | h[1], (h[2] << 31) | h[3]


def test_digests_match_the_definition() -> None:
    """The vectorized digests (short keys, longer keys, both mixed) equal the
    polynomial definition computed per key."""
    hasher = KeyHasher(seed=1)
    rng = random.Random(1)
    keys = [b"", b"\x00", b"a", b"a\x00"] + [
        rng.randbytes(rng.randrange(0, 40)) for _ in range(200)
    ]
    medium = [rng.randbytes(rng.randrange(65, 300)) for _ in range(20)]
    for batch in (keys, medium, keys + medium + [b"x" * 70, b"", b"y"]):
        got = hasher.digests_of(batch).tolist()
        assert got == [list(_reference(k, hasher.bases)) for k in batch]


def test_equal_keys_equal_digests_anywhere_in_the_buffer() -> None:
    """A key's digest does not depend on where it sits in the buffer or its neighbours."""
    hasher = KeyHasher(seed=2)
    rng = random.Random(2)
    keys = [rng.randbytes(rng.randrange(1, 30)) for _ in range(500)]
    d = hasher.digests_of(keys)
    shuffled = list(range(len(keys)))
    rng.shuffle(shuffled)
    padded = [rng.randbytes(7)] + [keys[i] for i in shuffled]
    d2 = hasher.digests_of(padded)[1:]
    assert (d2 == d[shuffled]).all()
    assert (d[:, 0] != 0).all()  # 0 marks an empty slot


def test_distinct_keys_distinct_digests_large_random_set() -> None:
    """300,000 distinct keys (random, zero-padded variants, prefixes, long) get distinct digests."""
    hasher = KeyHasher(seed=3)
    rng = random.Random(3)
    keys = {rng.randbytes(rng.randrange(0, 24)) for _ in range(200_000)}
    keys |= {b"k%015d" % i for i in range(80_000)}
    base = rng.randbytes(12)
    keys |= {base + b"\x00" * n for n in range(64)} | {base[:n] for n in range(12)}
    long = rng.randbytes(LONG_KEY + 10)
    keys |= {long, long + b"\x00", long[:-1] + b"x"}  # BLAKE2b path
    klist = sorted(keys)
    d = hasher.digests_of(klist)
    assert len(np.unique(d, axis=0)) == len(klist)
    # and the same key hashed again (alone) agrees
    assert (hasher.digests_of([long]) == d[klist.index(long)]).all()


def test_digests_are_keyed_per_hasher() -> None:
    """Two hashers (two clean runs) draw different bases: digests differ."""
    a, b = KeyHasher(), KeyHasher()
    assert a.bases != b.bases
    assert (a.digests_of([b"key"]) != b.digests_of([b"key"])).any()


def test_key_map_matches_a_dict_model_until_full() -> None:
    """Random batches (with repeats inside a batch) give the dict model's latest
    offsets; a batch past capacity is refused and changes nothing; reset empties."""
    hasher = KeyHasher(seed=4)
    rng = random.Random(4)
    m = KeyMap(BYTES_PER_KEY * 1000)
    assert m.capacity == 1000
    for round_ in range(2):
        base = 10 + round_ * 1_000_000
        m.reset(base)
        model: dict[bytes, int] = {}
        off = base
        refused = 0
        for _ in range(400):
            batch = [b"k%d" % rng.randrange(2500) for _ in range(rng.randrange(0, 40))]
            offs = np.arange(off, off + len(batch), dtype=np.int64)
            off += len(batch)
            after = {**model, **dict(zip(batch, offs.tolist(), strict=True))}
            ok = m.add(hasher.digests_of(batch), offs)
            assert ok == (len(after) <= m.capacity)
            if ok:
                model = after
            else:
                refused += 1
            assert len(m) == len(model)
            probe = [*model, *(b"absent%d" % i for i in range(30))]
            got = m.latest(hasher.digests_of(probe)).tolist()
            assert got == [model.get(k, -1) for k in probe]
        assert refused and len(m) > 0.95 * m.capacity  # it filled up
    m.release()
    m.reset(0)
    assert len(m) == 0 and m.latest(hasher.digests_of([b"k1"])).tolist() == [-1]
    m.reset(0, max_keys=10)  # a 10-offset dirty section: a table for 10 keys
    assert m.slots < 20
    ten = hasher.digests_of([b"t%d" % i for i in range(10)])
    assert m.add(ten, np.arange(10, dtype=np.int64))
    assert m.latest(ten).tolist() == list(range(10))


def test_key_map_refuses_offsets_past_its_delta_range() -> None:
    """An offset more than 2**32 - 2 past the pass's base is refused (the pass ends there)."""
    hasher = KeyHasher(seed=5)
    m = KeyMap(1 << 16)
    m.reset(100)
    assert m.add(hasher.digests_of([b"a"]), np.array([100 + MAX_DELTA], np.int64))
    assert not m.add(hasher.digests_of([b"b"]), np.array([101 + MAX_DELTA], np.int64))
    assert m.latest(hasher.digests_of([b"a", b"b"])).tolist() == [100 + MAX_DELTA, -1]


@pytest.mark.parametrize("buffer_keys", [1200])
def test_buffer_of_n_keys_cleans_n_keys_in_one_pass(buffer_keys: int) -> None:
    """A buffer of 24 B x 1,200 maps 1,000 distinct keys in one pass (at 48 B a
    key it took two), the map is released after the clean, and the log is right."""
    disk = _fresh_disk()
    store = Store.open(ROOT, StoreConfig(cleaner_buffer_bytes=BYTES_PER_KEY * buffer_keys), fs=disk)
    store.create_topic("c", 1, {**COMPACT, "segment_bytes": 4096})
    appended: dict[int, tuple[bytes, bytes | None]] = {}
    for rnd in range(2):
        for lo in range(0, 1000, 50):
            recs = [Record(b"v%d" % rnd, key=b"key%04d" % i) for i in range(lo, lo + 50)]
            off = store.append("c", 0, recs, timestamp_ms=T0)
            for j, r in enumerate(recs):
                assert r.key is not None
                appended[off + j] = (r.key, r.value)
    assert store.clean(T0 + 1000, force=True) == 1
    assert store.cleaner.stats.passes == 1
    assert store.cleaner.keymap._digests is None  # memory held only while cleaning
    _check_compacted(_read_all(store), appended, store.partition("c", 0).segments[-1].base_offset)
    store.close()


def test_last_of_each_digest_also_when_second_words_collide() -> None:
    """Within a batch the latest of equal digests wins, also for distinct digests
    sharing their second word (the exact fallback path)."""
    from logstore.storage._keymap import _last_of_each

    assert _last_of_each(np.array([[1, 5], [2, 6]], np.uint64)) is None
    same = np.array([[1, 5], [3, 7], [1, 5], [3, 7], [1, 5]], np.uint64)
    sel = _last_of_each(same)
    assert sel is not None and sorted(sel.tolist()) == [3, 4]
    mixed = np.array([[1, 5], [2, 5], [1, 5], [4, 9]], np.uint64)
    sel = _last_of_each(mixed)
    assert sel is not None and sorted(sel.tolist()) == [1, 2, 3]


def test_upb_fallback_cleans_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks the numpy locator refuses (non-canonical records) are read with upb
    and cleaned to the same log, over several passes and with format-2 frames."""
    from logstore.storage import _cleaner
    from logstore.wire._columns import _Fallback

    def clean_once() -> list[tuple[int, bytes | None, bytes | None]]:
        disk = _fresh_disk()
        store = Store.open(ROOT, StoreConfig(cleaner_buffer_bytes=1024), fs=disk)
        store.create_topic("c", 1, {**COMPACT, "delete_retention_ms": 10**12})
        for i in range(300):
            k = f"key{(i * 37) % 90}".encode()
            v = None if i % 11 == 0 else f"v{i}".encode()
            store.append("c", 0, [Record(v, key=k), Record(b"x", key=b"k%d" % i)], timestamp_ms=T0)
        store.clean(T0 + 10_000, force=True)
        assert store.cleaner.stats.passes > 1
        got = _read_all(store)
        store.close()
        return got

    fast = clean_once()

    def refuse(*_a: object, **_k: object) -> None:
        raise _Fallback

    monkeypatch.setattr(_cleaner, "locate_fast", refuse)
    assert clean_once() == fast
