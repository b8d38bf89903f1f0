"""Healthcheck probes: a command run in a running container, its output and exit code captured.

A probe is an exec without an exec record: the spawner joins the container's namespaces and
forks it (ns.enter_container, exactly as for `docker exec`), stdin is /dev/null, stdout and
stderr share one pipe whose bytes go to `write` (health.LimitedBuffer keeps the first 4 KiB),
and its exit arrives through the exit registry like any other. It runs as the container's user,
in its working directory, with its environment. The handle is health.Monitor's contract:
`wait(timeout)` -> exit code or None while it runs, `kill()` SIGKILLs it.

Docker also records a probe as an exec instance (it shows up in `ExecIDs` for a moment and as
exec_* events); minidock keeps probes out of both.
"""

import os
import signal
import threading

from minidock import errors
from minidock.container.lifecycle import RUNNING


class Probe:
    """A running probe: its output is pumped to `write` by a thread."""

    def __init__(self, pid, out_fd, write):
        self.pid, self.code = pid, None
        self.done = threading.Event()
        self.pump = threading.Thread(target=self._pump, args=(out_fd, write), daemon=True,
                                     name=f"probe-{pid}")
        self.pump.start()

    @staticmethod
    def _pump(fd, write):
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                write(data)
        except OSError:
            return
        finally:
            os.close(fd)

    def finished(self, code):
        self.code = code
        self.done.set()

    def wait(self, timeout):
        if not self.done.wait(timeout):
            return None
        # The output is complete once every holder of the pipe has gone; a probe that left a
        # background child holding it is not waited for beyond a moment.
        self.pump.join(min(timeout, 1.0))
        return self.code

    def kill(self):
        if not self.done.is_set():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(spawner, exits, c, rootfs, argv, write):
    """Start `argv` in container `c` (running); -> a Probe. Raises what the spawner raises when
    the process cannot start (the monitor counts that as a failed probe)."""
    if c.status != RUNNING or not c.pid:
        raise errors.Conflict(f"Container {c.id} is not running")
    spec = {
        "argv": list(argv),
        "env": list(c.config["Env"] or []),
        "cwd": c.config.get("WorkingDir") or "/",
        "user": c.config.get("User") or "",
        "group_add": c.host_config.get("GroupAdd") or [],
        "rootfs": rootfs,
        "privileged": bool(c.host_config.get("Privileged")),
        "cap_add": c.host_config.get("CapAdd") or [],
        "cap_drop": c.host_config.get("CapDrop") or [],
    }
    r, w = os.pipe()
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawner.exec(c.pid, spec, stdin, w, w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
        os.close(stdin)
    handle = Probe(pid, r, write)
    early = exits.register(pid, handle.finished)
    if early is not None:
        handle.finished(early)
    return handle
