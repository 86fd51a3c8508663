"""The logstore gRPC broker (``logstore.v1.LogStore`` over ``logstore.storage``).

Entry points: ``python -m logstore.broker`` and ``logctl serve`` both call
:func:`serve_main`; tests and embedders use :func:`create_server`, which
returns a started :class:`Broker` and its bound :class:`Ports`.
"""

from ._config import BrokerConfig
from ._server import Broker, Ports, create_server, serve, serve_main

__all__ = ["Broker", "BrokerConfig", "Ports", "create_server", "serve", "serve_main"]
