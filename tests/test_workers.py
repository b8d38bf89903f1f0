"""Threads made in advance (workers.py) and exits that must not be lost (container/exits.py)."""

import os
import threading
import time

from minidock import workers
from minidock.container.exits import ExitRegistry


def test_pool_runs_work_without_creating_threads():
    pool = workers.WorkerPool(2, "t")
    before = len(os.listdir("/proc/self/task"))      # what the kernel counts
    done = []
    event = threading.Event()
    for i in range(20):
        pool.submit(done.append, i)
    pool.submit(event.set)
    assert event.wait(10)
    assert sorted(done) == list(range(20))
    assert len(os.listdir("/proc/self/task")) == before


def test_pool_threads_exist_once_made_and_carry_their_names():
    """The pool's threads are counted (RLIMIT_NPROC counts them) as soon as the pool is made,
    and each runs under its own name."""
    tasks = len(os.listdir("/proc/self/task"))
    pool = workers.WorkerPool(3, "named")
    assert len(os.listdir("/proc/self/task")) == tasks + 3
    names, barrier = [], threading.Barrier(4)

    def record():
        names.append(threading.current_thread().name)
        barrier.wait(10)                 # each of the three holds its thread until all ran
    for _ in range(3):
        pool.submit(record)
    barrier.wait(10)
    assert sorted(names) == ["named-0", "named-1", "named-2"]


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
