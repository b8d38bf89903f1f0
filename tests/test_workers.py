"""Threads made in advance (workers.py) and exits that must not be lost (container/exits.py)."""

import threading
import time

from minidock import workers
from minidock.container.exits import ExitRegistry


def test_pool_runs_work_without_creating_threads():
    pool = workers.WorkerPool(2, "t")
    before = threading.active_count()
    done = []
    event = threading.Event()
    for i in range(20):
        pool.submit(done.append, i)
    pool.submit(event.set)
    assert event.wait(10)
    assert sorted(done) == list(range(20))
    assert threading.active_count() == before


def test_pool_survives_a_failing_job():
    pool = workers.WorkerPool(1, "t")
    event = threading.Event()
    pool.submit(lambda: 1 / 0)
    pool.submit(event.set)
    assert event.wait(10)


def test_scheduler_runs_in_time_order_and_cancels():
    sched = workers.Scheduler("t")
    got = []
    event = threading.Event()
    sched.call_later(0.2, got.append, "late")
    handle = sched.call_later(0.1, got.append, "cancelled")
    sched.call_later(0.05, got.append, "early")
    sched.call_later(0.3, event.set)
    handle.cancel()
    assert event.wait(10)
    assert got == ["early", "late"]


def test_an_exit_whose_callback_fails_is_delivered_again():
    registry = ExitRegistry()
    calls = []

    def callback(code):
        calls.append(code)
        if len(calls) == 1:
            raise RuntimeError("can't start new thread")

    assert registry.register(42, callback) is None
    try:
        registry.deliver(42, 137)
    except RuntimeError:
        pass
    registry.deliver(42, 137)          # the spawner handle's retry
    assert calls == [137, 137]
    assert 42 not in registry.early
