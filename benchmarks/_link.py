"""A bandwidth-limited link to one TCP port on loopback, for benchmarks only.

``with limited_link(port, mbit):`` shapes the loopback traffic to and from
``port`` with the kernel's HTB queueing discipline (``tc``): the bytes sent to
the port, and the bytes it sends back, each get ``mbit`` megabits a second, as
on a full-duplex link of that speed; every other loopback flow stays unshaped.
Nothing runs in Python per packet (a userspace proxy would spend the benchmark's
CPU moving the bytes, and more of it for the larger uncompressed rows), so the
link is the bound and the processes' CPU is what it was.

It needs root (``CAP_NET_ADMIN``) and ``tc`` (iproute2); without them
:func:`limited_link` raises :class:`LinkError` with one line saying which. The
shaping is removed on exit, and refused if ``lo`` already has a root queueing
discipline of someone else's (this module never deletes one it did not add).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

DEV = "lo"
#: Bytes HTB may send at line rate before the shaper holds a flow back. Loopback
#: hands the qdisc up to 64 KiB segments (GSO), so the bucket must hold a few.
BURST = "256k"


class LinkError(RuntimeError):
    """The link could not be shaped (no ``tc``, not root, ``lo`` already shaped)."""


def _tc(*args: str) -> str:
    """Run ``tc args``; its stdout, or LinkError with its stderr."""
    tc = shutil.which("tc")
    if tc is None:
        raise LinkError("--link-mbit needs tc (Debian: iproute2)")
    done = subprocess.run([tc, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LinkError(f"tc {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@contextmanager
def limited_link(port: int, mbit: float) -> Iterator[None]:
    """Shape loopback traffic to and from ``port`` to ``mbit`` Mbit/s each way."""
    if not 0 < mbit <= 100_000:
        raise LinkError(f"--link-mbit must be in (0, 100000], not {mbit}")
    first = _tc("qdisc", "show", "dev", DEV).split("\n", 1)[0]
    if first and "noqueue" not in first:
        raise LinkError(f"{DEV} is already shaped ({first.strip()}); not touching it")
    rate = f"{mbit:g}mbit"
    _tc("qdisc", "add", "dev", DEV, "root", "handle", "1:", "htb", "default", "30")
    try:
        # 1:30 everything else (far above what loopback carries here), 1:10 to the
        # port, 1:20 from it
        _tc("class", "add", "dev", DEV, "parent", "1:", "classid", "1:30", "htb", "rate",
            "100gbit", "burst", "1m")  # fmt: skip
        for classid, field in (("1:10", "dport"), ("1:20", "sport")):
            _tc("class", "add", "dev", DEV, "parent", "1:", "classid", classid, "htb",
                "rate", rate, "ceil", rate, "burst", BURST, "cburst", BURST)  # fmt: skip
            _tc("filter", "add", "dev", DEV, "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", field, str(port), "0xffff", "flowid", classid)  # fmt: skip
        yield
    finally:
        _tc("qdisc", "del", "dev", DEV, "root")
