"""GroupConfig: defaults as documented, every bound validated with a message naming it."""

from __future__ import annotations

import dataclasses

import pytest

from logstore.coordinator import ASSIGNORS, GroupConfig
from logstore.coordinator._config import ASSIGNORS as CONFIG_ASSIGNORS
from logstore.errors import InvalidConfigError


def test_defaults_match_the_documented_values() -> None:
    """Heartbeat 3 s, session 45 s within Kafka's 45..60 s, offsets kept 7 days."""
    c = GroupConfig()
    assert c.heartbeat_interval_ms == 3_000
    assert c.session_timeout_ms == 45_000
    assert (c.min_session_timeout_ms, c.max_session_timeout_ms) == (45_000, 60_000)
    assert c.offsets_retention_ms == 7 * 24 * 3600 * 1000
    assert c.max_commit_metadata_bytes == 4096
    assert c.default_assignor == "uniform"


def test_config_assignor_names_match_the_assignor_table() -> None:
    """The names GroupConfig accepts are exactly the assignors that exist."""
    assert tuple(ASSIGNORS) == CONFIG_ASSIGNORS


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(GroupConfig)])
def test_every_field_rejects_a_bad_value_naming_itself(field: str) -> None:
    """Each field refuses a value outside its range and the error names the field."""
    with pytest.raises(InvalidConfigError, match=field):
        GroupConfig(**{field: -5 if field != "default_assignor" else "sticky"})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"session_timeout_ms": 30_000}, "min/max_session_timeout_ms"),
        ({"session_timeout_ms": 61_000}, "min/max_session_timeout_ms"),
        ({"heartbeat_interval_ms": 45_000}, "must be below session_timeout_ms"),
        ({"min_session_timeout_ms": 70_000}, "must not exceed max_session_timeout_ms"),
        ({"rebalance_timeout_ms": 2_000_000}, "max_rebalance_timeout_ms"),
    ],
)
def test_cross_field_rules(kwargs: dict[str, int], words: str) -> None:
    """Session inside its bounds, heartbeat below session, rebalance below its max."""
    with pytest.raises(InvalidConfigError, match=words):
        GroupConfig(**kwargs)


def test_config_is_frozen() -> None:
    """A GroupConfig cannot be changed after validation."""
    c = GroupConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_groups = 1  # type: ignore[misc]
