"""The coordinator's limits and timeouts: one frozen, validated dataclass.

Every bound the coordinator enforces is a named field here, and every error
that a bound raises names the field and its value, so an operator knows which
knob was hit. Construction validates each field against a hard range
(``_HARD``) and the cross-field rules (heartbeat interval below the session
timeout; session timeout inside ``[min_session_timeout_ms,
max_session_timeout_ms]``, Kafka's ``group.consumer.min/max.session.timeout.ms``,
whose defaults 45 s and 60 s are kept).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from logstore.errors import InvalidConfigError

DAY_MS: Final = 24 * 3600 * 1000
ASSIGNORS: Final = ("uniform", "range")


@dataclass(frozen=True)
class GroupConfig:
    """Timeouts and bounds of the consumer-group coordinator (all times in ms)."""

    #: Told to members in every heartbeat reply. 3 s: a member that misses
    #: 15 heartbeats in a row (45 s session) is removed.
    heartbeat_interval_ms: int = 3_000
    #: A member that sends no heartbeat for this long is removed and its
    #: partitions reassigned (Kafka ``group.consumer.session.timeout.ms``).
    session_timeout_ms: int = 45_000
    #: Lower bound of ``session_timeout_ms`` (Kafka's default 45 s). Lower it
    #: only for tests: a short session turns a GC pause into a rebalance.
    min_session_timeout_ms: int = 45_000
    #: Upper bound of ``session_timeout_ms`` (Kafka's default 60 s).
    max_session_timeout_ms: int = 60_000
    #: Used when a member does not give its own: time to release revoked
    #: partitions before it is fenced (Kafka's max.poll.interval.ms, 5 min).
    rebalance_timeout_ms: int = 300_000
    #: The largest rebalance timeout a member may ask for (30 min).
    max_rebalance_timeout_ms: int = 1_800_000
    #: Committed offsets of a group that has had no members for this long are
    #: deleted, and the group with them (Kafka ``offsets.retention.minutes``).
    offsets_retention_ms: int = 7 * DAY_MS
    #: Groups the coordinator holds; a join creating one more is refused.
    max_groups: int = 10_000
    #: Members of one group, static members that left with epoch -2 included.
    max_members_per_group: int = 1_000
    #: Topic names one member may subscribe to.
    max_subscribed_topics: int = 1_000
    #: Characters of a subscription regex (Python ``re``; a long pattern is
    #: the usual carrier of catastrophic backtracking, so keep it short).
    max_regex_length: int = 1_000
    #: UTF-8 bytes of the metadata string of one committed offset (Kafka
    #: ``offset.metadata.max.bytes`` = 4096).
    max_commit_metadata_bytes: int = 4_096
    #: Partitions in one commit or reset request.
    max_partitions_per_request: int = 10_000
    #: Committed partitions kept per group (bounds memory per group).
    max_committed_partitions_per_group: int = 100_000
    #: Characters of a group id.
    max_group_id_length: int = 255
    #: Characters of a member id (a UUID is 36; room for client-made ids).
    max_member_id_length: int = 64
    #: Characters of a static member's instance id.
    max_instance_id_length: int = 255
    #: Characters of a client id and of a host string kept for describe.
    max_client_id_length: int = 255
    max_host_length: int = 255
    #: Assignor used when no member names one.
    default_assignor: str = "uniform"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "default_assignor":
                if value not in ASSIGNORS:
                    raise InvalidConfigError(
                        f"default_assignor must be one of {', '.join(ASSIGNORS)}; got {value!r}"
                    )
                continue
            lo, hi = _HARD[f.name]
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidConfigError(
                    f"{f.name} must be an integer in {lo}..{hi}, not {value!r}"
                )
        if self.min_session_timeout_ms > self.max_session_timeout_ms:
            raise InvalidConfigError(
                f"min_session_timeout_ms ({self.min_session_timeout_ms}) must not exceed "
                f"max_session_timeout_ms ({self.max_session_timeout_ms})"
            )
        if (
            not self.min_session_timeout_ms
            <= self.session_timeout_ms
            <= self.max_session_timeout_ms
        ):
            raise InvalidConfigError(
                f"session_timeout_ms must be in {self.min_session_timeout_ms}.."
                f"{self.max_session_timeout_ms} (min/max_session_timeout_ms), "
                f"not {self.session_timeout_ms}"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise InvalidConfigError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.rebalance_timeout_ms > self.max_rebalance_timeout_ms:
            raise InvalidConfigError(
                f"rebalance_timeout_ms ({self.rebalance_timeout_ms}) must not exceed "
                f"max_rebalance_timeout_ms ({self.max_rebalance_timeout_ms})"
            )


_HOUR_MS: Final = 3600 * 1000
_HARD: Final[dict[str, tuple[int, int]]] = {
    "heartbeat_interval_ms": (1, _HOUR_MS),
    "session_timeout_ms": (1, _HOUR_MS),
    "min_session_timeout_ms": (1, _HOUR_MS),
    "max_session_timeout_ms": (1, _HOUR_MS),
    "rebalance_timeout_ms": (1, 24 * _HOUR_MS),
    "max_rebalance_timeout_ms": (1, 24 * _HOUR_MS),
    "offsets_retention_ms": (1, 365 * DAY_MS),
    "max_groups": (1, 1_000_000),
    "max_members_per_group": (1, 100_000),
    "max_subscribed_topics": (1, 100_000),
    "max_regex_length": (1, 100_000),
    "max_commit_metadata_bytes": (0, 1 << 20),
    "max_partitions_per_request": (1, 1_000_000),
    "max_committed_partitions_per_group": (1, 10_000_000),
    "max_group_id_length": (1, 4096),
    "max_member_id_length": (1, 4096),
    "max_instance_id_length": (1, 4096),
    "max_client_id_length": (1, 4096),
    "max_host_length": (1, 4096),
}
