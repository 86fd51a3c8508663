"""A producer batch's completion (``ProducerBatch.done``): Event semantics,
with no Event made for a batch nobody waits on before it completes."""

from __future__ import annotations

import threading
import time

from logstore.client.producer._batch import Done, ProducerBatch


def test_a_batch_completed_before_anyone_waits_makes_no_event() -> None:
    batch = ProducerBatch("t", 0, 30.0)
    assert not batch.done.is_set()
    batch.done.set()
    assert batch.done.is_set() and batch.done.wait(0) and batch.done.wait()
    assert isinstance(batch.done, Done) and batch.done._event is None


def test_a_waiter_before_the_set_is_woken() -> None:
    done = Done()
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(done.wait(10)))
    t.start()
    time.sleep(0.05)
    assert not woke
    done.set()
    t.join(5)
    assert woke == [True] and done.is_set()


def test_a_wait_times_out_when_never_set() -> None:
    done = Done()
    t0 = time.monotonic()
    assert done.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.04 and not done.is_set()


def test_sets_and_waits_racing_never_lose_a_wake_up() -> None:
    for _ in range(300):
        done = Done()
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda d=done, w=woke: w.append(d.wait(5)))
        setter = threading.Thread(target=done.set)
        waiter.start()
        setter.start()
        setter.join()
        waiter.join(5)
        assert woke == [True]
