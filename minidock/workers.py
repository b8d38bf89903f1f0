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
"""

import heapq
import itertools
import logging
import queue
import threading
import time

log = logging.getLogger("minidock.workers")


class WorkerPool:
    def __init__(self, size, name):
        self.queue = queue.SimpleQueue()
        for i in range(size):
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True).start()

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
        threading.Thread(target=self._run, name=name, daemon=True).start()

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
