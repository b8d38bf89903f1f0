"""Threads made in advance: a worker pool and a timer, for paths that must not create threads.

Creating a thread is a clone(2), counted against RLIMIT_NPROC like a process. When a container
fork-bombs up to the limit, `threading.Thread.start()` fails with "can't start new thread" --
and if handling a container's exit or scheduling its restart needs a new thread, the exit is
lost: `docker ps` shows a dead container as Up, `docker stop` waits for ever, restart policies
never run. So those paths hand their work to threads that exist from the daemon's start:

- `WorkerPool(n)`: n threads taking callables from a queue (`submit` only appends);
- `Scheduler`: one thread running callables at a time (`call_later` returns a handle whose
  `cancel()` works like threading.Timer's).

A callable that raises is logged; the thread carries on.

These threads are started with `start_thread`, which does not wait for them to run (below).
"""

import _thread
import heapq
import itertools
import logging
import queue
import threading
import time

log = logging.getLogger("minidock.workers")


def start_thread(target, name):
    """Run `target()` on a new thread named `name`, without waiting for it to begin.

    threading.Thread.start() returns only once the new thread has run, a hand-over that took
    0.2-4 ms each while the daemon starts up (the spawner's interpreter starts on the other
    CPU meanwhile): the daemon's 14 threads made in advance spent 15-20 ms of its start-up
    there (scripts/profile-startup). `_thread.start_new_thread` returns once the thread
    exists -- which is what counts against RLIMIT_NPROC -- and work handed to it waits in its
    queue until it runs. It names itself then, for threading.current_thread() and tracebacks.
    Such a thread cannot be joined (nothing waits for one to end)."""
    def run():
        threading.current_thread().name = name
        target()
    _thread.start_new_thread(run, ())


class WorkerPool:
    def __init__(self, size, name):
        self.queue = queue.SimpleQueue()
        for i in range(size):
            start_thread(self._run, f"{name}-{i}")

    def submit(self, fn, *args):
        self.queue.put((fn, args))

    def _run(self):
        while True:
            fn, args = self.queue.get()
            try:
                fn(*args)
            except Exception:
                log.exception("%s failed", getattr(fn, "__qualname__", fn))


class _Handle:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Scheduler:
    def __init__(self, name):
        self.heap = []
        self.cond = threading.Condition()
        self.order = itertools.count()      # ties in time keep submission order
        start_thread(self._run, name)

    def call_later(self, delay, fn, *args):
        handle = _Handle()
        with self.cond:
            heapq.heappush(self.heap, (time.monotonic() + delay, next(self.order), handle, fn, args))
            self.cond.notify()
        return handle

    def _run(self):
        while True:
            with self.cond:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    self.cond.wait(self.heap[0][0] - time.monotonic() if self.heap else None)
                _, _, handle, fn, args = heapq.heappop(self.heap)
            if handle.cancelled:
                continue
            try:
                fn(*args)
            except Exception:
                log.exception("%s failed", getattr(fn, "__qualname__", fn))
