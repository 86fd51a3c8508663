"""The driver interface shared by the three systems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._proc import Child, cpu_seconds, open_fds, rss_bytes


class System:
    """A system under test, running as one child process."""

    name = "?"
    #: Durability settings this system is run with (False = page cache, True = fsync).
    durability_modes: tuple[bool, ...] = (False, True)

    def __init__(self) -> None:
        self.child: Child | None = None
        self.workdir: Path | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run here (None when it can)."""
        return None

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def params(self) -> dict[str, Any]:
        """How a worker process connects (picklable)."""
        raise NotImplementedError

    def server_version(self) -> str | None:
        return None

    # -- data -----------------------------------------------------------------------------------
    def create(self, topic: str, partitions: int = 1) -> None:
        raise NotImplementedError

    def delete(self, topic: str, partitions: int = 1) -> None:
        raise NotImplementedError

    def create_group(self, topic: str, group: str, partitions: int = 1) -> None:
        """Create consumer group ``group`` on ``topic`` reading from the start (W7)."""
        raise NotImplementedError

    def group_outstanding(self, topic: str, group: str, partitions: int = 1) -> int:
        """Records of ``topic`` that ``group`` has not acknowledged/committed (W7)."""
        raise NotImplementedError

    def create_share_group(self, topic: str, group: str, visibility_ms: int) -> None:
        """Make ``group`` a work queue over ``topic`` (W8, W8R): every consumer competes
        for records, each acknowledged one by one; an unacknowledged one goes to
        another consumer after ``visibility_ms`` (where the system has such a lock)."""
        raise NotImplementedError

    def share_outstanding(self, topic: str, group: str) -> int:
        """Records of ``topic`` not acknowledged by share group ``group`` (W8)."""
        return self.group_outstanding(topic, group)

    def set_durable(self, durable: bool) -> None:
        """Server-side durability switch (Redis appendfsync); no-op elsewhere."""

    def label(self, durable: bool) -> str:
        raise NotImplementedError

    # -- resources ------------------------------------------------------------------------------
    def rss(self) -> int:
        return rss_bytes(self.pid)

    def fds(self) -> int:
        return open_fds(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)
