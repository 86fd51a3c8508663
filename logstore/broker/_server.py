"""Server assembly: the handler table, startup, serving, and shutdown.

``create_server(config)`` opens the store and returns a started
:class:`Broker` and its bound :class:`Ports`; ``serve(config)`` adds the
first stdout line, signals, periodic maintenance and the drain;
``serve_main(...)`` is the CLI entry point (``python -m logstore.broker`` and
``logctl serve``).

Handler table: the generated ``add_LogStoreServicer_to_server`` serializes
replies with ``SerializeToString``; instead the service builds its handlers
from the declarative RPC table (``_rpc_table.py``: requests arrive as bytes,
Fetch and Subscribe reply with stored bytes), registered with both
``add_generic_rpc_handlers`` and ``add_registered_method_handlers`` (as
generated code does), so server reflection still describes the service. The
same is done for every service of ``_rpc_table.SERVICES`` (LogStore and
Groups); health reports each of them, and the coordinator's log is replayed
before the port opens.

TLS (``tls_cert``/``tls_key``, optional ``tls_client_ca`` = mutual TLS) is
on both listeners. gRPC gets *dynamic* server credentials whose fetcher
:class:`TlsReloader` answers: SIGHUP re-reads the files, checks the pair
(``ssl.SSLContext.load_cert_chain``), and new handshakes get the new
material while open connections keep theirs; the metrics listener's
``SSLContext`` reloads its chain the same way. A bad file on SIGHUP keeps the
old material (logged). Remote listeners need TLS and authentication (or
``insecure``): :func:`check_addresses`.

Shutdown (SIGTERM/SIGINT): health goes NOT_SERVING, new requests are refused
(UNAVAILABLE), long polls are answered and Subscribe streams ended at once,
other in-flight requests get ``shutdown_grace_ms``; then queued acks=NONE
appends finish, the store is flushed and closed (clean-shutdown marker), and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from logstore.errors import InvalidConfigError, LogStoreError
from logstore.security import TlsFiles, TlsMaterial
from logstore.storage import RateLimitedLog, Store

from ._config import REQUEST_HEADROOM_BYTES, BrokerConfig, is_loopback, split_address
from ._grpc_wakeups import coalesce_grpc_wakeups
from ._logging import setup_logging
from ._malloc import keep_freed_memory, limit_arenas
from ._metrics import BrokerMetrics
from ._reflection import enable_reflection
from ._rpc_table import SERVICES
from ._service import LogStoreService

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("logstore.broker")

#: gRPC's own concurrency cap, a backstop well above the broker's limits: it
#: refuses with no retry hint, so the broker's limiter must trip first.
_BACKSTOP_FACTOR: Final = 2


@dataclass(frozen=True)
class Ports:
    grpc: int
    metrics: int


def check_addresses(config: BrokerConfig) -> None:
    """Refuse non-loopback addresses unless allow_remote, and then unless TLS and
    authentication are on or ``insecure`` is given (then warn, every start)."""
    secure = config.tls_enabled and config.auth != "none"
    for key in ("listen", "metrics_listen"):
        address = getattr(config, key)
        host, _ = split_address(address, key)
        if is_loopback(host):
            continue
        if not config.allow_remote:
            raise InvalidConfigError(
                f"{key} {address} is not a loopback address; pass --allow-remote (with "
                "--tls-cert/--tls-key and --auth token|mtls) to listen on it"
            )
        if secure:
            continue
        if not config.insecure:
            raise InvalidConfigError(
                f"{key} {address} is remote but TLS and authentication are not both on; give "
                "--tls-cert/--tls-key and --auth token|mtls, or --insecure to listen anyway"
            )
        log.warning(
            "listening on a non-loopback address without TLS and authentication (--insecure)",
            extra={"fields": {"key": key, "address": address}},
        )


class TlsReloader:
    """The TLS material of both listeners and its SIGHUP rotation (module docstring)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()
        self.contexts: list[ssl.SSLContext] = []  # the metrics listener's
        self.material = self._load()

    def _load(self) -> TlsMaterial:
        material = self.files.load()
        try:  # the key must match the certificate: checked here, not at a handshake
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.files.cert, self.files.key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidConfigError(
                f"TLS certificate {self.files.cert} and key {self.files.key} do not load "
                f"together: {exc}"
            ) from None
        return material

    @staticmethod
    def _config(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.cert_chain)],
            root_certificates=material.client_ca,
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(self.material),
            self._fetch,  # type: ignore[arg-type]  # None = unchanged (gRPC's contract)
            require_client_authentication=bool(self.files.client_ca),
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC core before each handshake; None = keep the current one.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Re-read the files (SIGHUP); False (old material kept, logged) if unusable."""
        try:
            material = self._load()
        except InvalidConfigError as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        config = self._config(material)
        with self._lock:
            self._pending = config
            self.material = material
        for ctx in self.contexts:
            ctx.load_cert_chain(self.files.cert, self.files.key)
        log.info("TLS certificate reloaded", extra={"fields": {"cert": self.files.cert}})
        return True


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (many partitions, many clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Broker:
    """A running broker: gRPC server, store, service, health and metrics endpoint."""

    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        server: grpc.aio.Server,
        service: LogStoreService,
        health_servicer: Any,  # grpc_health's aio HealthServicer (untyped)
        metrics: BrokerMetrics,
        metrics_server: WSGIServer,
        tls: TlsReloader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.server = server
        self.service = service
        self.health = health_servicer
        self.metrics = metrics
        self._metrics_server = metrics_server
        self.tls = tls
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def start_periodic(self) -> None:
        """Background maintain() and flush() on their intervals."""
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._every(self.config.maintain_interval_ms, self.store.maintain))
        )
        if self.config.flush_interval_ms > 0:
            self._tasks.append(
                loop.create_task(self._every(self.config.flush_interval_ms, self.store.flush))
            )

    async def _every(self, interval_ms: int, fn: Any) -> None:
        name = getattr(fn, "__name__", "task")
        # An environment error (a full disk, a failed partition) repeats every
        # interval (1 s for flush): one line a minute with the repeat count, no
        # traceback. So does any other domain error (a topic deleted under the
        # task); only an unexpected exception gets a traceback.
        errors = RateLimitedLog(log)
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await self.service.run_io(fn)
            except LogStoreError as exc:
                errors.log(f"periodic {name} failed: {exc}")
            except Exception as exc:
                log.error("periodic %s failed: %s", name, exc, exc_info=exc)

    async def stop(self) -> None:
        """Drain and close (idempotent). See the module docstring for the order."""
        if self._stopped:
            return
        self._stopped = True
        log.info("shutting down", extra={"fields": {"grace_ms": self.config.shutdown_grace_ms}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self.health.enter_graceful_shutdown()
        self.service.begin_shutdown()
        await self.server.stop(self.config.shutdown_grace_ms / 1000)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.drain_background()
        t1 = loop.time()
        await loop.run_in_executor(None, self.store.flush)
        t2 = loop.time()
        await loop.run_in_executor(None, self.store.close)
        self._metrics_server.shutdown()
        self._metrics_server.server_close()
        log.info(
            "stopped cleanly",
            extra={
                "fields": {
                    "drain_ms": round((t1 - t0) * 1000),
                    "flush_ms": round((t2 - t1) * 1000),
                    "close_ms": round((loop.time() - t2) * 1000),
                }
            },
        )


def _check_existing_topics(store: Store, config: BrokerConfig) -> None:
    limit = config.max_batch_bytes_limit
    for topic in store.topics():
        if topic.config.max_batch_bytes > limit:
            raise InvalidConfigError(
                f"max_request_bytes {config.max_request_bytes} is too small for topic "
                f"{topic.name!r} (max_batch_bytes {topic.config.max_batch_bytes}); it must be at "
                f"least {topic.config.max_batch_bytes + REQUEST_HEADROOM_BYTES}"
            )


async def create_server(config: BrokerConfig) -> tuple[Broker, Ports]:
    """Open the store, bind both ports and start serving; return the broker and its ports."""
    check_addresses(config)
    tls = (
        TlsReloader(TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca))
        if config.tls_enabled
        else None
    )
    loop = asyncio.get_running_loop()
    data_dir = os.path.abspath(config.data_dir)
    store = await loop.run_in_executor(None, Store.open, data_dir, config.store_config())
    try:
        _check_existing_topics(store, config)
        store.start_flusher()
        # One cleaner thread for compacted topics, on the maintenance interval
        # (a long clean then never delays retention or flushes).
        store.start_cleaner(config.maintain_interval_ms)
        metrics = BrokerMetrics()
        metrics.attach_store(store)
        service = LogStoreService(store, config, metrics)
        service.start(loop)
        # Groups and offsets come back before the port opens (a replay of
        # __consumer_offsets), so no client sees a broker without its groups.
        await service.groups.start()
        metrics.attach_groups(service.groups, loop)
        # Share groups likewise (a replay of __share_group_state).
        await service.share.start()
        metrics.attach_share(service.share, loop)
        backstop = _BACKSTOP_FACTOR * (
            config.max_concurrent_requests + config.max_long_poll_waiters + config.max_subscriptions
        )
        server = grpc.aio.server(
            maximum_concurrent_rpcs=backstop,
            options=[
                ("grpc.max_receive_message_length", config.max_request_bytes),
                # Replies carry at least one whole batch, which may exceed
                # fetch_max_bytes; a batch is < max_request_bytes.
                (
                    "grpc.max_send_message_length",
                    config.fetch_max_bytes + config.max_request_bytes,
                ),
                ("grpc.so_reuseport", 0),
            ],
        )
        coalesce_grpc_wakeups(loop)
        for name, rpcs in SERVICES.items():
            handlers = service.method_handlers(rpcs)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
            server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]
        health_servicer: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(
            server, (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        )
        try:
            if tls is None:
                grpc_port = server.add_insecure_port(config.listen)
            else:
                grpc_port = server.add_secure_port(config.listen, tls.credentials())
        except RuntimeError as exc:
            raise InvalidConfigError(f"cannot listen on {config.listen}: {exc}") from exc
        mhost, mport = split_address(config.metrics_listen, "metrics_listen")
        try:
            if tls is None:
                metrics_server, _ = start_http_server(mport, mhost, registry=metrics.registry)
            else:
                metrics_server, _ = start_http_server(
                    mport,
                    mhost,
                    registry=metrics.registry,
                    certfile=config.tls_cert,
                    keyfile=config.tls_key,
                )
                tls.contexts.append(metrics_server.socket.context)  # type: ignore[attr-defined]
        except OSError as exc:
            raise InvalidConfigError(
                f"cannot listen on metrics_listen {config.metrics_listen}: {exc.strerror}"
            ) from exc
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICES:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        await loop.run_in_executor(None, store.close)
        raise
    broker = Broker(config, store, server, service, health_servicer, metrics, metrics_server, tls)
    return broker, Ports(grpc=grpc_port, metrics=int(metrics_server.server_port))


async def serve(config: BrokerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain; 0 on a clean stop."""
    broker, ports = await create_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = broker.tls
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
    try:
        broker.start_periodic()
        ghost, _ = split_address(config.listen)
        mhost, _ = split_address(config.metrics_listen, "metrics_listen")
        line = (
            f"logstore listening grpc={_format_address(ghost, ports.grpc)} "
            f"metrics={_format_address(mhost, ports.metrics)} "
            f"data_dir={os.path.abspath(config.data_dir)}\n"
        )
        sys.stdout.write(line)
        sys.stdout.flush()
        log.info(
            "listening",
            extra={
                "fields": {
                    "grpc": _format_address(ghost, ports.grpc),
                    "metrics": _format_address(mhost, ports.metrics),
                    "data_dir": os.path.abspath(config.data_dir),
                    "pid": os.getpid(),
                    "tls": config.tls_enabled,
                    "auth": config.auth,
                    # the descriptor budget: the store's cap and the process's limit
                    "max_open_segments": broker.store.handles.max_open,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                }
            },
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await broker.stop()
    return 0


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the broker runs on (``event_loop``); None: asyncio's."""
    return uvloop.new_event_loop if name == "uvloop" else None


def serve_main(
    data_dir: str | None = None,
    listen: str | None = None,
    metrics_listen: str | None = None,
    config_file: str | None = None,
    log_format: str | None = None,
    allow_remote: bool | None = None,
    **security: Any,
) -> int:
    """Resolve the configuration (flag > env > file > default), serve; the exit code.

    ``None`` means "flag not given"; ``security`` holds the TLS, auth and
    quota flags (tls_cert, tls_key, tls_client_ca, auth, super_users,
    insecure, quota_*), by config key. Returns 0 after a clean shutdown, 2 for a
    bad configuration, 1 for any other failure (each reported as one line on
    stderr).
    """
    flags = {
        "data_dir": data_dir,
        "listen": listen,
        "metrics_listen": metrics_listen,
        "log_format": log_format,
        "allow_remote": allow_remote,
        **security,
    }
    try:
        config = BrokerConfig.resolve(flags, config_file=config_file)
    except InvalidConfigError as exc:
        sys.stderr.write(f"logstore: error: {exc}\n")
        return 2
    setup_logging(config.log_format, config.log_level)
    raise_nofile_limit()
    keep_freed_memory()  # _malloc.py: batch-sized buffers are reused, not faulted in again
    limit_arenas()  # _malloc.py: the resident size does not grow with the CPU count
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            return runner.run(serve(config))
    except InvalidConfigError as exc:
        log.error("%s", exc)
        return 2
    except LogStoreError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        log.error("broker failed: %s", exc, exc_info=exc)
        return 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
