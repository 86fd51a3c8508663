"""glibc malloc settings for the broker process: keep freed memory for reuse.

Why. Per batch, the broker's data path allocates and frees objects of
megabytes: a compressed batch's decompressed records (a 1 MiB zstd batch of
log lines is 7-10 MB), the upb arena that validates them (it copies every
record's value once), request buffers. With its defaults glibc gives such
memory back to the kernel as soon as it is freed (an allocation past
``M_MMAP_THRESHOLD`` is its own mapping; free space past
``M_TRIM_THRESHOLD`` at the top of a heap is trimmed), so the next batch
faults every page in again, which on a VM costs 2-5 us a page. Measured
(``split_produce_request`` of 7 MB zstd batches of the benchmark's log
lines on two threads, each keeping a few until they are appended, as the
broker does): 1.5-1.65 ms of CPU and ~370 page faults per MB of records with
glibc's defaults; 0.90-1.14 ms and 8-27 faults with these settings. A
per-thread pool of decompression buffers, tried first, reached 1.03-1.28 ms
(~58 faults: upb's arena still faulted) and was not kept.

Settings. ``M_MMAP_THRESHOLD`` 32 MiB (the ceiling glibc's own dynamic
threshold reaches on 64-bit systems) and ``M_TRIM_THRESHOLD`` 64 MiB: up to
64 MiB of free memory per malloc arena stays mapped. The broker's resident
size then stays near its high-water mark, which the broker's own limits
bound (``max_inflight_produce_bytes``, ``max_inflight_decompress_bytes``),
instead of shrinking after every batch.

Arenas. glibc gives each new thread its own arena, up to eight per CPU, and
memory freed in one arena serves only the threads of that arena. The
broker's allocating threads (the event loop, gRPC's threads, the I/O pool)
would each keep their own high-water mark, so the resident size under load
grew with the machine's CPU count: the flood test
(``tests/test_broker_memory.py``, 16 MiB of in-flight produce bytes) peaked
at +130-185 MiB on this project's 2-CPU machine and +242 MiB on a larger CI
machine, against +100-108 MiB with the arenas capped. :func:`limit_arenas`
caps them at :data:`ARENA_MAX` (the main arena, which the event loop uses,
and one shared by the other threads; small allocations are served by
glibc's per-thread cache without taking an arena lock), so at most
``ARENA_MAX * M_TRIM_THRESHOLD`` of freed memory stays mapped, whatever the
machine. The flood's throughput was unchanged (1.2-1.3 GB in 6 s either
way).

Applied once at broker start (:func:`keep_freed_memory`,
:func:`limit_arenas`), only with glibc (no ``mallopt`` elsewhere: nothing
happens), and not when the operator set glibc's own knobs
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``
for the thresholds; ``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES`` for the
arenas): those win.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from typing import Final, cast

log = logging.getLogger("logstore.broker")

#: mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
MMAP_THRESHOLD_BYTES: Final = 32 << 20
TRIM_THRESHOLD_BYTES: Final = 64 << 20
ARENA_MAX: Final = 2
#: Environment variables by which an operator tunes glibc malloc directly.
OPERATOR_SETTINGS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
OPERATOR_ARENA_SETTINGS: Final = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (musl, macOS): no mallopt
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return cast("Callable[[int, int], int]", mallopt)


def keep_freed_memory() -> bool:
    """Apply the settings above; whether they were applied (False: not
    glibc, or the operator's own settings are in the environment)."""
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    applied = bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:  # pragma: no cover - glibc refuses only out-of-range values
        log.warning("mallopt refused the broker's malloc thresholds; glibc defaults stay")
    return applied


def limit_arenas() -> bool:
    """Cap glibc's malloc arenas at :data:`ARENA_MAX` for threads started
    from now on; whether it was applied (False: not glibc, or the operator's
    own setting is in the environment)."""
    if any(name in os.environ for name in OPERATOR_ARENA_SETTINGS):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    applied = bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    if not applied:  # pragma: no cover - glibc refuses only out-of-range values
        log.warning("mallopt refused the broker's arena cap; glibc's default stays")
    return applied
