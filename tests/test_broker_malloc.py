"""The broker keeps freed batch-sized memory for reuse (logstore/broker/_malloc.py).

Each check runs in a fresh interpreter: mallopt changes the whole process's
allocator, which the test process must not inherit.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

# Freeing six 4 MiB objects, then allocating six again, on a thread (the
# broker's I/O threads have their own malloc arenas): the page faults of the
# later rounds are what a batch-sized allocation costs each time.
_ROUNDS = """
import json, resource, sys, threading
from logstore.broker._malloc import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
faults = []
def work():
    for _ in range(6):
        f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        keep = [bytes(4 << 20) for _ in range(6)]
        del keep
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0)
t = threading.Thread(target=work)
t.start()
t.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""
_PAGES_PER_ROUND = 6 * (4 << 20) // 4096

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"),
    reason="mallopt is glibc's",
)


def _run(script: str, mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _rounds(mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return _run(_ROUNDS, mode, env)


@glibc
def test_freed_batch_memory_is_reused_without_page_faults() -> None:
    default = _rounds("default")
    tuned = _rounds("tuned")
    assert tuned["applied"] is True
    assert isinstance(default["faults"], list) and isinstance(tuned["faults"], list)
    # Rounds 3-6 (the first two warm the arena up). glibc's defaults hand the
    # memory back and fault most pages in again each round (measured 5,088 of
    # 6,144); kept, they fault none (measured 0). A tenth of the pages is the
    # line between the two, far from both.
    assert min(default["faults"][2:]) > _PAGES_PER_ROUND // 10
    assert max(tuned["faults"][2:]) < _PAGES_PER_ROUND // 10


@glibc
def test_the_operators_own_malloc_settings_win() -> None:
    got = _rounds("tuned", {"MALLOC_TRIM_THRESHOLD_": str(128 << 10)})
    assert got["applied"] is False


# Eight threads, all alive until the end, take turns: each fills and frees
# 16 MiB (in 2 MiB objects, below the mmap threshold, so in its arena). With
# one arena per thread each arena keeps its own 16 MiB; with the arenas
# capped the later threads reuse what the earlier ones freed.
_TURNS = """
import json, sys, threading
from logstore.broker._malloc import keep_freed_memory, limit_arenas
keep_freed_memory()
applied = limit_arenas() if sys.argv[1] == "capped" else False
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
turns = [threading.Event() for _ in range(9)]
done = threading.Event()
def work(i):
    turns[i].wait()
    keep = [b"x" * (2 << 20) for _ in range(8)]
    del keep
    turns[i + 1].set()
    done.wait()
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
before = anon_kib()
turns[0].set()
turns[8].wait()
grown = anon_kib() - before
done.set()
for t in threads:
    t.join()
print(json.dumps({"applied": applied, "grown_kib": grown}))
"""


def _turns(mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return _run(_TURNS, mode, env)


@glibc
def test_capped_arenas_reuse_memory_freed_by_other_threads() -> None:
    default = _turns("default")
    capped = _turns("capped")
    assert capped["applied"] is True
    assert isinstance(default["grown_kib"], int) and isinstance(capped["grown_kib"], int)
    # One arena per thread keeps 8 x 16 MiB (measured 131,076 KiB); capped,
    # the threads share the two arenas' 16 MiB each (measured 32,640 KiB).
    # 64 MiB is the line between the two, far from both.
    assert default["grown_kib"] > 64 << 10
    assert capped["grown_kib"] < 64 << 10


@glibc
def test_the_operators_own_arena_setting_wins() -> None:
    got = _turns("capped", {"MALLOC_ARENA_MAX": "8"})
    assert got["applied"] is False
