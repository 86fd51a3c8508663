"""Broker configuration: one frozen, validated dataclass and its resolution.

Precedence for every key (DESIGN.md, "Configuration"): command-line flag >
environment variable ``LOGSTORE_<NAME>`` (the key upper-cased) > TOML file >
default. Unknown keys in the TOML file and bad values from any source raise
:class:`~logstore.errors.InvalidConfigError` naming the key, its source and
the allowed range. Environment variables with other ``LOGSTORE_`` names are
ignored: the client and the CLI read their own ``LOGSTORE_<NAME>`` variables
from the same environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from logstore.config import DAY_MS, MiB, StoreConfig, TopicConfig, parse_int
from logstore.coordinator import GroupConfig
from logstore.errors import InvalidConfigError
from logstore.share import ShareCoordinatorConfig

ENV_PREFIX: Final = "LOGSTORE_"
#: The most descriptors ``max_open_segments=0`` gives the store: each index map
#: is also a memory mapping, and vm.max_map_count is 65,530 by default.
AUTO_MAX_OPEN_SEGMENTS: Final = 16_384
#: Headroom above the largest batch for the request's own fields (topic name,
#: key, producer fields): DESIGN.md requires max_request_bytes >= the largest
#: topic max_batch_bytes + 64 KiB.
REQUEST_HEADROOM_BYTES: Final = 64 * 1024
#: Fetch long polls wait at most this long whatever the client asks.
MAX_WAIT_MS_CAP: Final = 30_000
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
AUTH_MODES: Final = ("none", "token", "mtls")
ACQUISITION_DURABILITIES: Final = ("page-cache", "fsync")
#: The broker's event loop: uvloop (libuv) or the standard library's.
EVENT_LOOPS: Final = ("uvloop", "asyncio")


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker process can be configured with."""

    #: gRPC address HOST:PORT; port 0 picks a free port.
    listen: str = "127.0.0.1:7070"
    #: Prometheus metrics address HOST:PORT; port 0 picks a free port.
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: str = "./data"
    log_format: str = "text"
    log_level: str = "info"
    #: ``asyncio`` (the standard library's loop) or ``uvloop`` (libuv; a
    #: dependency): it saved ~5-10 % of the broker's CPU per W4 message,
    #: latency within the noise (docs/benchmarks.md, "W4 after the
    #: write-path rework"), so it is opt-in.
    event_loop: str = "asyncio"
    #: Listening on a non-loopback address needs this, and then TLS and
    #: authentication too (or ``insecure``).
    allow_remote: bool = False
    #: With allow_remote: listen remotely without TLS or authentication
    #: anyway (a WARN line at every start).
    insecure: bool = False

    # Security (logstore.security; README "Security"). All empty / "none" by
    # default: a loopback broker without auth, exactly as before.
    #: PEM certificate chain of the gRPC and metrics listeners ("" = plaintext).
    tls_cert: str = ""
    #: PEM private key of tls_cert.
    tls_key: str = ""
    #: PEM CA bundle client certificates must chain to ("" = none asked for):
    #: mutual TLS.
    tls_client_ca: str = ""
    #: none | token (bearer tokens of ``logctl users create``) | mtls (the
    #: client certificate's common name is the principal).
    auth: str = "none"
    #: Comma-separated principals that pass every ACL check.
    super_users: str = ""
    #: Produce / fetch bytes per second per principal; 0 = unlimited.
    quota_produce_bytes_per_s: int = 0
    quota_fetch_bytes_per_s: int = 0

    #: gRPC max_receive_message_length. Above it gRPC itself answers
    #: RESOURCE_EXHAUSTED without a retry hint.
    max_request_bytes: int = 4 * MiB
    #: Sum of the sizes of produce requests being handled (received, not yet
    #: answered, or queued with acks=NONE). 64 MiB = 16 maximal requests: with
    #: 1 MiB batches that keeps 2 cores busy while bounding broker memory.
    max_inflight_produce_bytes: int = 64 * MiB
    #: Sum of what the compressed produce requests being handled may inflate
    #: to while the broker validates them (each reserves zstd's declared
    #: content size, else the 64 MiB decompression bound, from arrival to its
    #: append). 256 MiB = four worst-case (64 MiB) batches at once, or ~36
    #: of the producer's 7 MB zstd batches; past it RESOURCE_EXHAUSTED with a
    #: retry hint, like every bound here.
    max_inflight_decompress_bytes: int = 256 * MiB
    #: Produce, Fetch, admin calls and ProduceStreams being handled at once.
    max_concurrent_requests: int = 256
    #: Fetch requests parked in a long poll at once.
    max_long_poll_waiters: int = 1024
    #: Subscribe streams open at once.
    max_subscriptions: int = 256
    #: Largest message pushed on one Subscribe stream (the client's max_bytes
    #: is clamped to it; one whole batch is still sent when larger). Together
    #: with awaiting each write, this bounds what the broker holds per stream.
    subscribe_max_bytes: int = 1 * MiB
    #: Largest Fetch reply (the client's max_bytes is clamped to it).
    fetch_max_bytes: int = 16 * MiB
    #: ProduceStream: requests accepted but not yet answered, per stream.
    produce_stream_max_inflight: int = 64
    #: The delay suggested in google.rpc.RetryInfo when a limit is hit.
    retry_after_ms: int = 100
    #: Threads doing storage calls (appends, reads, admin) off the event loop.
    io_threads: int = 8
    #: Uncompressed batches up to this size are appended on the event loop
    #: (a page-cache write; a roll fsyncs nothing), not on an I/O thread: on
    #: the reference machine one append costs ~22 us at 256 B and ~60 us at
    #: 64 KiB (p50), about what the thread-pool round trip alone costs under
    #: load, while 256 KiB takes ~140 us of every other stream's loop time.
    #: Larger ones, and any append whose partition lock is busy (a retention
    #: pass, a cleaner swap), go to the I/O pool. 0: always the pool.
    inline_append_max_bytes: int = 64 * 1024
    #: A Subscribe stream that is caught up (its last push was below this)
    #: reads its next push on the event loop, at most this many bytes (plus
    #: one whole batch); behind, it reads ``subscribe_max_bytes`` on an I/O
    #: thread. Reads of the tail hit the page cache. 0: always the pool.
    inline_read_max_bytes: int = 64 * 1024

    #: SIGTERM/SIGINT: in-flight unary requests get this long to finish.
    shutdown_grace_ms: int = 5000
    #: Background fsync of everything (bounds data lost at a power cut with
    #: acks=LEADER/NONE); acks=ALL never waits for it. 0 disables.
    flush_interval_ms: int = 1000
    #: How often store.maintain() runs (roll by time, retention, idle close).
    maintain_interval_ms: int = 10_000

    # Store limits: the defaults are StoreConfig's own, but for max_open_segments.
    #: Cap on open segment descriptors and index maps (StoreConfig's). 0, the
    #: default: half the process's RLIMIT_NOFILE soft limit (which the broker
    #: raises to the hard limit at start), at most AUTO_MAX_OPEN_SEGMENTS; the
    #: other half is left for connections and the store's short-lived files.
    #: Under the cap, 1,000 partitions appended round robin need no open and
    #: close per append (StoreConfig's 256 made one of each per batch).
    max_open_segments: int = 0
    index_cache_bytes: int = StoreConfig.index_cache_bytes
    recovery_checkpoint_interval_ms: int = StoreConfig.recovery_checkpoint_interval_ms
    idle_close_ms: int = StoreConfig.idle_close_ms
    producer_id_expiration_ms: int = StoreConfig.producer_id_expiration_ms
    producer_snapshot_interval_ms: int = StoreConfig.producer_snapshot_interval_ms
    max_producer_ids: int = StoreConfig.max_producer_ids
    #: The log cleaner (compacted topics): key-map memory and I/O bound.
    cleaner_buffer_bytes: int = StoreConfig.cleaner_buffer_bytes
    cleaner_io_max_bytes_per_s: int = StoreConfig.cleaner_io_max_bytes_per_s

    # Consumer-group coordinator (GroupConfig's fields, prefixed ``group_``;
    # the defaults are GroupConfig's own, Kafka's values).
    group_heartbeat_interval_ms: int = GroupConfig.heartbeat_interval_ms
    group_session_timeout_ms: int = GroupConfig.session_timeout_ms
    group_min_session_timeout_ms: int = GroupConfig.min_session_timeout_ms
    group_max_session_timeout_ms: int = GroupConfig.max_session_timeout_ms
    group_rebalance_timeout_ms: int = GroupConfig.rebalance_timeout_ms
    group_offsets_retention_ms: int = GroupConfig.offsets_retention_ms
    group_max_groups: int = GroupConfig.max_groups
    group_max_members_per_group: int = GroupConfig.max_members_per_group

    #: Share groups: how a ShareFetch's acquisition (the lock and the delivery
    #: count it adds) is written to ``__share_group_state`` before the records
    #: are handed out. ``page-cache`` (default): written, not fsynced (a kill
    #: -9 keeps it; a power cut may lose it, i.e. lower a delivery count or
    #: forget a lock; fsynced by the next acknowledgement or the background
    #: flush). ``fsync``: fsynced first, like acknowledgements, which are
    #: always fsynced before they are answered.
    share_acquisition_durability: str = "page-cache"

    # Share coordinator (work queues; ShareCoordinatorConfig's fields, prefixed
    # ``share_``): parked (delayed) records per share partition and in all of them.
    share_max_delayed_records: int = ShareCoordinatorConfig.max_delayed_records
    share_max_delayed_records_total: int = ShareCoordinatorConfig.max_delayed_records_total

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))
        largest = TopicConfig().max_batch_bytes + REQUEST_HEADROOM_BYTES
        if self.max_request_bytes < largest:
            raise InvalidConfigError(
                f"max_request_bytes ({self.max_request_bytes}) must be at least the default "
                f"topic max_batch_bytes + 64 KiB ({largest})"
            )
        if self.max_inflight_produce_bytes < self.max_request_bytes:
            raise InvalidConfigError(
                f"max_inflight_produce_bytes ({self.max_inflight_produce_bytes}) must be at "
                f"least max_request_bytes ({self.max_request_bytes})"
            )
        _check_security(self)
        # Every produce / fetch / admin call is validated against these.
        self.store_config()
        self.group_config()
        self.share_config()

    @property
    def super_user_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.super_users.split(",") if n.strip())

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    @property
    def max_batch_bytes_limit(self) -> int:
        """The largest topic max_batch_bytes this broker can accept."""
        return self.max_request_bytes - REQUEST_HEADROOM_BYTES

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            max_open_segments=self.max_open_segments or auto_max_open_segments(),
            index_cache_bytes=self.index_cache_bytes,
            recovery_checkpoint_interval_ms=self.recovery_checkpoint_interval_ms,
            idle_close_ms=self.idle_close_ms,
            producer_id_expiration_ms=self.producer_id_expiration_ms,
            producer_snapshot_interval_ms=self.producer_snapshot_interval_ms,
            max_producer_ids=self.max_producer_ids,
            cleaner_buffer_bytes=self.cleaner_buffer_bytes,
            cleaner_io_max_bytes_per_s=self.cleaner_io_max_bytes_per_s,
        )

    def share_config(self) -> ShareCoordinatorConfig:
        """The share coordinator's config from the ``share_*`` keys."""
        return ShareCoordinatorConfig(
            **{name: getattr(self, "share_" + name) for name in _SHARE_KEYS}
        )

    def group_config(self) -> GroupConfig:
        """The coordinator's config from the ``group_*`` keys (InvalidConfigError if
        they contradict each other, e.g. a session timeout outside its bounds)."""
        return GroupConfig(**{name: getattr(self, "group_" + name) for name in _GROUP_KEYS})

    @classmethod
    def resolve(
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> BrokerConfig:
        """Defaults < TOML file < environment < flags (None values in flags are absent)."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_from_toml(Path(config_file)))
        environ = os.environ if env is None else env
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, f"environment {ENV_PREFIX}{f.name.upper()}")
        for key, raw in (flags or {}).items():
            if raw is None:
                continue
            name = _known(key, "flag")
            values[name] = _coerce(name, raw, f"flag --{name.replace('_', '-')}")
        return cls(**values)


def auto_max_open_segments() -> int:
    """What ``max_open_segments=0`` means in this process now: half the
    RLIMIT_NOFILE soft limit, at most AUTO_MAX_OPEN_SEGMENTS, at least 4."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return AUTO_MAX_OPEN_SEGMENTS
    return max(4, min(AUTO_MAX_OPEN_SEGMENTS, soft // 2))


_GROUP_KEYS: Final = (
    "heartbeat_interval_ms",
    "session_timeout_ms",
    "min_session_timeout_ms",
    "max_session_timeout_ms",
    "rebalance_timeout_ms",
    "offsets_retention_ms",
    "max_groups",
    "max_members_per_group",
)
_SHARE_KEYS: Final = ("max_delayed_records", "max_delayed_records_total")
_FIELD_TYPES: Final = {f.name: f.type for f in fields(BrokerConfig)}
_DEFAULTS: Final = BrokerConfig.__dataclass_fields__

#: (minimum, maximum) of each integer key.
_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "max_request_bytes": (64 * 1024, 1 << 30),
    "max_inflight_produce_bytes": (64 * 1024, 1 << 40),
    "max_inflight_decompress_bytes": (1 << 20, 1 << 40),
    "max_concurrent_requests": (1, 1_000_000),
    "max_long_poll_waiters": (0, 1_000_000),
    "max_subscriptions": (0, 1_000_000),
    "subscribe_max_bytes": (1024, 1 << 30),
    "fetch_max_bytes": (1024, 1 << 30),
    "produce_stream_max_inflight": (1, 100_000),
    "retry_after_ms": (1, 3_600_000),
    "io_threads": (1, 256),
    "inline_append_max_bytes": (0, 16 << 20),
    "inline_read_max_bytes": (0, 16 << 20),
    "shutdown_grace_ms": (0, 3_600_000),
    "flush_interval_ms": (0, DAY_MS),
    "maintain_interval_ms": (100, DAY_MS),
    "max_open_segments": (0, 1_000_000),
    "index_cache_bytes": (0, 1 << 40),
    "recovery_checkpoint_interval_ms": (0, DAY_MS),
    "idle_close_ms": (0, 365 * DAY_MS),
    "producer_id_expiration_ms": (1, 365 * DAY_MS),
    "producer_snapshot_interval_ms": (0, 365 * DAY_MS),
    "max_producer_ids": (1, 100_000_000),
    "cleaner_buffer_bytes": (1024, 1 << 40),
    "cleaner_io_max_bytes_per_s": (0, 1 << 40),
    "quota_produce_bytes_per_s": (0, 1 << 40),
    "quota_fetch_bytes_per_s": (0, 1 << 40),
    # wide bounds here; GroupConfig checks the real ones (and their relations)
    **{"group_" + name: (1, 365 * DAY_MS) for name in _GROUP_KEYS},
    "share_max_delayed_records": (1, 10_000_000),
    "share_max_delayed_records_total": (1, 100_000_000),
}


def _known(key: str, source: str) -> str:
    name = key.replace("-", "_").replace(".", "_").lower()
    if name not in _DEFAULTS:
        known = ", ".join(sorted(_DEFAULTS))
        raise InvalidConfigError(f"unknown broker config key {key!r} ({source}); known: {known}")
    return name


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise InvalidConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # A [broker] table is accepted as well as top-level keys.
    broker = data.pop("broker", None)
    if isinstance(broker, dict):
        data.update(broker)
    out: dict[str, Any] = {}
    for key, raw in data.items():
        name = _known(key, f"config file {path}")
        out[name] = _coerce(name, raw, f"config file {path}")
    return out


def _coerce(name: str, raw: Any, source: str) -> Any:
    kind = _FIELD_TYPES[name]
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InvalidConfigError(f"{name} ({source}) must be true or false, not {raw!r}")
    if kind == "int":
        if isinstance(raw, bool):
            raise InvalidConfigError(f"{name} ({source}) must be an integer, not {raw!r}")
        if isinstance(raw, int):
            return raw
        value = parse_int(str(raw))
        if value is None:
            lo, hi = _INT_RANGES[name]
            raise InvalidConfigError(
                f"{name} ({source}) must be an integer in {lo}..{hi}, not {raw!r}"
            )
        return value
    if not isinstance(raw, str | os.PathLike):
        raise InvalidConfigError(f"{name} ({source}) must be a string, not {raw!r}")
    return os.fspath(raw)


def _check(name: str, value: Any) -> None:
    if name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InvalidConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    elif name in ("listen", "metrics_listen"):
        split_address(value, name)
    elif name == "log_format" and value not in LOG_FORMATS:
        raise InvalidConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}: {value!r}")
    elif name == "log_level" and value not in LOG_LEVELS:
        raise InvalidConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}: {value!r}")
    elif name == "share_acquisition_durability" and value not in ACQUISITION_DURABILITIES:
        raise InvalidConfigError(
            "share_acquisition_durability must be one of "
            f"{', '.join(ACQUISITION_DURABILITIES)}: {value!r}"
        )
    elif name == "event_loop" and value not in EVENT_LOOPS:
        raise InvalidConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}: {value!r}")
    elif name == "data_dir" and (not isinstance(value, str) or not value):
        raise InvalidConfigError("data_dir must be a non-empty path")


def _check_security(config: BrokerConfig) -> None:
    """The TLS and auth keys agree with each other (each message names the flags)."""
    if config.auth not in AUTH_MODES:
        raise InvalidConfigError(f"auth must be one of {', '.join(AUTH_MODES)}: {config.auth!r}")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise InvalidConfigError("--tls-cert and --tls-key go together: give both or neither")
    if config.tls_client_ca and not config.tls_cert:
        raise InvalidConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if config.auth == "mtls" and not config.tls_client_ca:
        raise InvalidConfigError(
            "--auth mtls needs --tls-client-ca (the CA client certificates are checked against)"
        )
    for name in config.super_user_names:
        if not re.fullmatch(r"[A-Za-z0-9._@=+-]{1,128}", name):
            raise InvalidConfigError(f"super_users: bad principal name {name[:129]!r}")


def split_address(address: str, key: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); InvalidConfigError if bad."""
    if not isinstance(address, str):
        raise InvalidConfigError(f"{key} must be HOST:PORT, not {address!r}")
    host, sep, port_text = address.rpartition(":")
    # isascii: str.isdigit() is also true of superscripts and other scripts' digits.
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise InvalidConfigError(f"{key} must be HOST:PORT (port 0 = any free port): {address!r}")
    port = int(port_text)
    if port > 65535:
        raise InvalidConfigError(f"{key}: port must be in 0..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals; any other host is remote."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
