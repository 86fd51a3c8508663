"""Shared fixtures: a real broker process per test, one per module for the group admin
tests, raw Groups clients, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.brokerproc import BrokerProcess, start_broker
from tests.test_broker_groups import Client

# CI profile: no deadline (the machine is noisy) and a fixed number of
# examples so a run takes a stable time.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker on a fresh data directory, on port 0; stopped after the test."""
    b = start_broker(tmp_path / "data")
    try:
        yield b
    finally:
        b.stop()


# The default 45 s session: members must outlive a few logctl subprocesses on a loaded
# machine (test_broker_groups' 1.5 s would expire them mid-test).
@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker with the default group config for a module's tests (own groups each)."""
    b = start_broker(tmp_path_factory.mktemp("groups") / "data")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def raw(gbroker: BrokerProcess) -> Iterator[Client]:
    """A raw Groups/Broker client of ``gbroker`` (generated stubs)."""
    c = Client(gbroker.grpc_address, gbroker)
    try:
        yield c
    finally:
        c.close()
