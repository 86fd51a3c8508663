"""logstore: a Kafka-like partitioned, append-only log store in Python.

The package root re-exports lazily (PEP 562), so ``import logstore.client``
does not load the storage engine and ``from logstore import Store`` does not
load gRPC::

    from logstore import Store, Record          # embedded, no server
    from logstore.client import Producer, Consumer, Admin   # over gRPC
"""

# Imports are private aliases: every public name of the package is in __all__
# (tests/test_exports.py).
import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

_EXPORTS = {
    "OffsetAndTimestamp": "logstore._types",
    "Store": "logstore.storage",
    "StoreConfig": "logstore.config",
    "TopicConfig": "logstore.config",
    "Record": "logstore.wire",
}

if _typing.TYPE_CHECKING:
    from logstore._types import OffsetAndTimestamp
    from logstore.config import StoreConfig, TopicConfig
    from logstore.storage import Store
    from logstore.wire import Record


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logstore' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["OffsetAndTimestamp", "Record", "Store", "StoreConfig", "TopicConfig", "__version__"]
