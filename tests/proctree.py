"""What /proc says of a process: its state and parent, and its children (every thread's).

Shared by tests/test_spawner_faults_e2e.py and tests/spawner_driver.py (copied next to the
driver, which runs from a directory of its own: tests/test_spawner.py)."""

import os


def stat(pid):
    """(state, ppid) from /proc/PID/stat, or None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def children(pid):
    """The pids whose parent is `pid`, sorted: /proc/PID/task/*/children, every thread's (a
    child belongs to the thread that made it)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return sorted(out)
