"""Who is told when a process ends: a registry from pid to exit callback.

The spawner (minidock/spawner.py) is every container's and exec's parent; it reaps them with
waitpid(2) and reports `{"exit": pid, "code": n}` (the exit status, or 128+signal), which its
reader thread passes to `ExitRegistry.deliver`. Whoever started the process (the container
backend for an init, the exec backend for an exec) registers a callback for its pid.

A fast process can end before the thread that started it has registered: the spawner's reader
may deliver the exit between the spawner's reply and our bookkeeping. Such exits wait in
`early` until `register` claims them, and `register` then hands the code back to the caller.
"""

import threading


class ExitRegistry:
    def __init__(self):
        self.lock = threading.Lock()
        self.callbacks = {}          # pid -> callback(code)
        self.early = {}              # pid -> exit code, for exits reported before registration

    def register(self, pid, callback):
        """Call `callback(code)` when `pid` ends. Returns the code instead (and registers
        nothing) if it has already ended; else None."""
        with self.lock:
            early = self.early.pop(pid, None)
            if early is None:
                self.callbacks[pid] = callback
            return early

    def deliver(self, pid, code):
        """The spawner's report that `pid` ended with `code` (called from its reader thread)."""
        with self.lock:
            callback = self.callbacks.pop(pid, None)
            if callback is None:
                self.early[pid] = code
                return
        callback(code)
