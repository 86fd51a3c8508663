"""Rate-limited logging of repeated identical errors.

Background work (the flusher's checkpoints, ``maintain()``, the broker's
periodic flush) retries every second or so; on a full disk each retry fails the
same way. :class:`RateLimitedLog` logs a message the first time it is seen and
then at most once per ``interval_s``, with the number of repeats suppressed in
between, so a day of a full disk is ~1,440 lines at 60 s, not 86,400 tracebacks.

Thread-safe (one lock around a small dict, bounded by ``MAX_KEYS``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

#: Seconds between two log lines of the same message.
ERROR_LOG_INTERVAL_S: Final = 60.0
#: Distinct messages remembered (errors name paths, so they are few in
#: practice; the oldest is forgotten past this).
MAX_KEYS: Final = 1024


class RateLimitedLog:
    """See the module docstring."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = ERROR_LOG_INTERVAL_S,
        level: int = logging.ERROR,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (last logged, suppressed)
        self._lock = threading.Lock()

    def log(self, message: str) -> bool:
        """Log ``message`` unless it was logged less than ``interval_s`` ago;
        return whether it was logged."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(message)
            if last is not None and now - last[0] < self._interval_s:
                self._seen[message] = (last[0], last[1] + 1)
                return False
            suppressed = last[1] if last is not None else 0
            self._seen.pop(message, None)
            self._seen[message] = (now, 0)
            if len(self._seen) > MAX_KEYS:
                del self._seen[next(iter(self._seen))]
        if suppressed:
            message += f" (repeated {suppressed} times in the last {self._interval_s:.0f} s)"
        self._logger.log(self._level, "%s", message)
        return True
