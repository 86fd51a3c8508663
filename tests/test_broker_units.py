"""In-process unit tests of the broker's small pure parts: status table, limits, addresses."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import error_details_pb2

from logstore import errors
from logstore.broker._admission import Gauge
from logstore.broker._config import is_loopback, split_address
from logstore.broker._status import STATUS_CODES, rich_status
from logstore.errors import InvalidConfigError


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidBatchError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidTopicNameError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnknownTopicError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.UnknownPartitionError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.TopicExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.OffsetOutOfRangeError("x", 0, 1), grpc.StatusCode.OUT_OF_RANGE),
        (errors.OutOfOrderSequenceError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.InvalidProducerEpochError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.CorruptRecordError("x"), grpc.StatusCode.DATA_LOSS),
        (errors.StorageError("x"), grpc.StatusCode.INTERNAL),
        (errors.DiskFullError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.StoreClosedError("x"), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_table(exc: BaseException, code: grpc.StatusCode) -> None:
    """Each domain error maps to its documented gRPC code; unexpected errors to INTERNAL."""
    status = rich_status(exc)
    assert status.code == code.value[0]
    # no retry hint: not a broker limit
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    if not isinstance(exc, errors.LogStoreError):
        assert "secret" not in status.message


def test_every_error_status_name_is_in_the_table() -> None:
    """Every status name used by logstore.errors has an entry in the one table."""
    for reason, cls in errors.BY_REASON.items():
        assert cls.status in STATUS_CODES, reason


def test_limit_errors_carry_retry_info() -> None:
    """RESOURCE_EXHAUSTED from a broker limit carries RetryInfo with the configured delay."""
    status = rich_status(errors.ResourceExhaustedError("busy", retry_after_ms=1500))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (1, 500_000_000)


def test_gauge_bounds_and_admits_one_oversized() -> None:
    """A gauge refuses past its limit (counting the reason) but admits one oversized item alone."""
    rejected: list[str] = []
    g = Gauge("max_things", 10, 100, rejected.append)
    g.acquire(6)
    with pytest.raises(errors.ResourceExhaustedError) as err:
        g.acquire(6)
    assert err.value.retry_after_ms == 100 and "max_things" in str(err.value)
    g.release(6)
    g.acquire(25)  # alone: admitted, so it can never starve
    with pytest.raises(errors.ResourceExhaustedError):
        g.acquire(1)
    g.release(25)
    assert g.value == 0 and rejected == ["max_things", "max_things"]
    zero = Gauge("max_none", 0, 100, rejected.append)
    with pytest.raises(errors.ResourceExhaustedError):
        zero.acquire()


def test_addresses() -> None:
    """HOST:PORT parsing (IPv6 too) and the loopback check behind --allow-remote."""
    assert split_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_address("[::1]:7070") == ("::1", 7070)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com") and not is_loopback("")
    for bad in ("7070", "host:", "host:99999", "host:x"):
        with pytest.raises(InvalidConfigError):
            split_address(bad)


def test_remote_listen_needs_allow_remote(caplog: pytest.LogCaptureFixture) -> None:
    """A non-loopback address is refused without allow_remote and warned about with it."""
    from logstore.broker import BrokerConfig
    from logstore.broker._server import check_addresses

    with pytest.raises(InvalidConfigError, match="--allow-remote"):
        check_addresses(BrokerConfig(listen="0.0.0.0:7070"))
    check_addresses(BrokerConfig())  # loopback: fine, silent
    logger = logging.getLogger("logstore")
    logger.addHandler(caplog.handler)
    try:
        # Without TLS and auth a remote listener now also needs --insecure (issue 13).
        check_addresses(
            BrokerConfig(metrics_listen="10.0.0.1:9464", allow_remote=True, insecure=True)
        )
    finally:
        logger.removeHandler(caplog.handler)
    assert any("non-loopback" in r.getMessage() for r in caplog.records)


def test_event_loop_and_inline_bounds_are_validated_config() -> None:
    """event_loop names a loop (uvloop or asyncio) and the inline bounds are
    ranged ints: a wrong value is refused with a message naming the key."""
    from logstore.broker import BrokerConfig
    from logstore.errors import InvalidConfigError

    assert BrokerConfig.resolve({}, {"LOGSTORE_EVENT_LOOP": "uvloop"}, None).event_loop == "uvloop"
    assert BrokerConfig().inline_append_max_bytes == 64 * 1024
    with pytest.raises(InvalidConfigError, match="event_loop must be one of uvloop, asyncio"):
        BrokerConfig(event_loop="tokio")
    for key in ("inline_append_max_bytes", "inline_read_max_bytes"):
        with pytest.raises(InvalidConfigError, match=key):
            BrokerConfig(**{key: -1})
        with pytest.raises(InvalidConfigError, match=key):
            BrokerConfig.resolve({}, {"LOGSTORE_" + key.upper(): "lots"}, None)


def test_share_parked_bounds_are_broker_settings() -> None:
    """share_max_delayed_records(_total) reach the share coordinator's config; 0 and a
    non-number are refused naming the key."""
    from logstore.broker import BrokerConfig

    c = BrokerConfig.resolve(env={"LOGSTORE_SHARE_MAX_DELAYED_RECORDS_TOTAL": "7"})
    assert c.share_config().max_delayed_records_total == 7
    assert BrokerConfig().share_config().max_delayed_records_total == 1_000_000
    with pytest.raises(InvalidConfigError, match="share_max_delayed_records_total"):
        BrokerConfig(share_max_delayed_records_total=0)
    with pytest.raises(InvalidConfigError, match="share_max_delayed_records"):
        BrokerConfig.resolve(env={"LOGSTORE_SHARE_MAX_DELAYED_RECORDS": "many"})


def test_run_eagerly_runs_to_the_first_wait_and_a_task_takes_over() -> None:
    """run_eagerly (MultiProduce's chains): a coroutine that never waits
    finishes in the caller with no task; one that waits goes on as a task
    that sees every later wake-up, result and exception, and a cancellation
    reaches the coroutine where it waits."""
    import asyncio

    from logstore.broker._runtime import run_eagerly

    log: list[str] = []

    async def no_wait() -> None:
        log.append("no_wait ran")

    async def waits(fut: asyncio.Future[int], gate: asyncio.Event) -> None:
        log.append("before")
        log.append(f"got {await fut}")
        await asyncio.sleep(0)  # a bare yield is passed through too
        await gate.wait()
        try:
            await asyncio.Future()  # never done: cancelled below
        except asyncio.CancelledError:
            log.append("cancelled where it waited")
            raise

    async def fails(fut: asyncio.Future[int]) -> None:
        try:
            await fut
        except ValueError as exc:
            log.append(f"caught {exc}")
        raise KeyError("after")

    async def main() -> None:
        assert run_eagerly(no_wait()) is None
        assert log == ["no_wait ran"]  # ran before run_eagerly returned
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        gate = asyncio.Event()
        task = run_eagerly(waits(fut, gate))
        assert task is not None and log[-1] == "before"
        fut.set_result(7)
        await asyncio.sleep(0.01)
        assert log[-1] == "got 7" and not task.done()
        gate.set()
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log[-1] == "cancelled where it waited"
        bad: asyncio.Future[int] = loop.create_future()
        failing = run_eagerly(fails(bad))
        assert failing is not None
        bad.set_exception(ValueError("thrown in"))
        with pytest.raises(KeyError):
            await failing
        assert log[-1] == "caught thrown in"

    asyncio.run(main())
