"""logstore: a Kafka-like partitioned, append-only log store in Python.

The package root re-exports lazily (PEP 562), so ``import logstore.client``
does not load the storage engine and ``from logstore import Store`` does not
load gRPC::

    from logstore import Store, Record          # embedded, no server
    from logstore.client import Producer, Consumer, Admin   # over gRPC
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Store": "logstore.storage",
    "StoreConfig": "logstore.config",
    "TopicConfig": "logstore.config",
    "Record": "logstore.wire",
}

if TYPE_CHECKING:
    from logstore.config import StoreConfig, TopicConfig
    from logstore.storage import Store
    from logstore.wire import Record


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["Record", "Store", "StoreConfig", "TopicConfig", "__version__"]
