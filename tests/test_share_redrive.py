"""The redrive position of a share group's dead letters: records, replay, rules."""

from __future__ import annotations

import pytest

from logstore.errors import GroupIdNotFoundError, InvalidGroupRequestError
from logstore.share import (
    ShareCoordinator,
    ShareGroupConfig,
    ShareRedriveKey,
    ShareRedriveValue,
    decode,
    encode,
)


def coordinator() -> ShareCoordinator:
    c = ShareCoordinator(topics={"t": 2})
    c.apply(c.configure_group("g", ShareGroupConfig()))
    return c


def test_redrive_records_round_trip_through_bytes() -> None:
    """Intent and done values decode to what was encoded (targets kept, sorted)."""
    c = coordinator()
    (rec,) = c.redrive_intent("g", 10, "", [("t", 1, 7), ("t", 0, 3)]).records
    key, value = encode(rec)
    back = decode(key, value)
    assert back == rec
    assert back.value == ShareRedriveValue(0, 10, "", (("t", 0, 3), ("t", 1, 7)))
    tomb = decode(key, None)
    assert tomb.key == ShareRedriveKey("g") and tomb.value is None


def test_position_moves_forward_only_and_survives_replay() -> None:
    """intent then done moves the position; a load of the records gives it back; done never
    moves it back, and a second intent while one is under way is refused."""
    c = coordinator()
    log = list(c.configure_group("g", ShareGroupConfig()).records)
    r = c.redrive_intent("g", 5, "other", [("other", 0, 0)])
    log += r.records
    c.apply(r)
    assert c.redrive_state("g").intent_end == 5
    with pytest.raises(InvalidGroupRequestError):
        c.redrive_intent("g", 9, "", [])
    # the intent is durable: a restart sees it, so the broker can finish it
    assert ShareCoordinator.load(log).redrive_state("g").intent_end == 5
    r2 = c.redrive_done("g", 5)
    log += r2.records
    c.apply(r2)
    assert c.redrive_state("g") == ShareRedriveValue(5)
    assert c.redrive_done("g", 2).records == ()  # never back
    with pytest.raises(InvalidGroupRequestError):
        c.redrive_intent("g", 5, "", [])  # nothing past the position
    assert ShareCoordinator.load(log).redrive_state("g") == ShareRedriveValue(5)


def test_delete_group_tombstones_the_redrive_position() -> None:
    """A deleted and re-created group starts redriving from 0 again (its DLQ is new)."""
    c = coordinator()
    c.apply(c.redrive_intent("g", 3, "", []))
    c.apply(c.redrive_done("g", 3))
    result = c.delete_group("g", now_ms=0)
    assert any(isinstance(r.key, ShareRedriveKey) and r.value is None for r in result.records)
    c.apply(result)
    with pytest.raises(GroupIdNotFoundError):
        c.redrive_state("g")
    c.apply(c.configure_group("g", ShareGroupConfig()))
    assert c.redrive_state("g") == ShareRedriveValue(0)
