"""Broker logs: stderr, one line per event, text or JSON.

stdout carries only the first ``logstore listening ...`` line (scripts parse
it). Data events pass their fields with ``extra={"fields": {...}}``
(``topic``, ``partition``, ``offset`` ...): text lines show them as
``key=value`` after the message, JSON lines as top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = {"ts", "level", "logger", "msg"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, "fields", None)
    return value if isinstance(value, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.getMessage()]
        parts.extend(f"{k}={v}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            # Keep one event on one line: the traceback's newlines are escaped.
            line += " exc=" + self.formatException(record.exc_info).replace("\n", "\\n")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _fields(record).items():
            out[k if k not in _RESERVED else f"field_{k}"] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(log_format: str, level: str) -> None:
    """Route the ``logstore`` loggers to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("logstore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
