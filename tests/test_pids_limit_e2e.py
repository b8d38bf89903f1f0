"""`--pids-limit` without a pids cgroup: each container's own RLIMIT_NPROC count (pidlimit.py).

This machine has no delegated cgroup v2 tree, so there is no pids.max to write. The daemon runs
a container with a limit in a user namespace of its own and lowers RLIMIT_NPROC there; the
kernel (>= 5.14) counts that namespace's processes apart. What the tests look at is what the
kernel shows: /proc/PID/limits, the processes in each container's pid namespace, the user
namespace inode, and fork failing inside. Run as uid 65534 (one id) and as a user with a
subordinate range (the nested map is then written by a helper).
"""

import os
import time

import pytest

import test_runtime_e2e

pytestmark = pytest.mark.skipif(
    tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 14),
    reason="RLIMIT_NPROC is counted per user namespace from Linux 5.14 on")

BOMB = "(while :; do sleep 1000 & done) 2>/dev/null & exec sleep 600"


# The daemon as uid 65534 and as a user with a subordinate range, as in the runtime tests.
d = test_runtime_e2e.d


def max_processes(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max processes"):
                return line.split()[2:4]
    raise AssertionError("no Max processes line")


def pids_in_container(init_pid):
    target = os.readlink(f"/proc/{init_pid}/ns/pid")
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == target:
                    found.append(int(p))
            except OSError:
                pass
    return found


def settle(init_pid, seconds=20):
    """The number of processes in the container once it stops growing (bounded in time)."""
    deadline, counts = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        counts.append(len(pids_in_container(init_pid)))
        if len(counts) > 5 and counts[-1] == counts[-5]:
            break
        time.sleep(0.3)
    return counts[-1]


def test_each_container_gets_its_own_bound(d):
    info = d.client().get("/info")
    assert info["PidsLimit"] is True
    assert "user namespace of the container's own" in dict(info["SystemStatus"])["PIDs limit"]
    run = d.docker("run", "-d", "--pids-limit", "20", "busybox", "sh", "-c", BOMB)
    assert b"WARNING" not in run.stderr          # enforced, so not discarded with Docker's warning
    first = run.stdout.decode().strip()
    second = d.docker("run", "-d", "--pids-limit", "20", "busybox", "sh", "-c", BOMB).stdout.decode().strip()
    free = d.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    try:
        assert d.docker("inspect", "-f", "{{.HostConfig.PidsLimit}}", first).stdout == b"20\n"
        pids = {c: int(d.docker("inspect", "-f", "{{.State.Pid}}", c).stdout) for c in (first, second, free)}
        for c in (first, second):
            assert max_processes(pids[c]) == ["20", "20"]
            # a namespace of its own (the count is kept per namespace); ids keep their numbers
            assert os.readlink(f"/proc/{pids[c]}/ns/user") != os.readlink(f"/proc/{pids[free]}/ns/user")
            assert d.docker("exec", c, "cat", "/proc/self/uid_map").stdout.split()[:2] == [b"0", b"0"]
        # Each bomb fills its own 20 (not a shared 20): the count is per container.
        for c in (first, second):
            n = settle(pids[c])
            assert 15 <= n <= 20, n
        # The container without a limit is in the daemon's namespace and forks freely.
        assert os.readlink(f"/proc/{pids[free]}/ns/user") == os.readlink(f"/proc/{d.proc.pid}/ns/user")
        out = d.docker("exec", free, "sh", "-c", "for i in $(seq 30); do sleep 60 >/dev/null 2>&1 & done; echo started")
        assert out.stdout == b"started\n"
        # docker update lowers the limit of the running processes (prlimit)
        d.docker("update", "--pids-limit", "10", first)
        assert max_processes(pids[first]) == ["10", "10"]
        # The CLI stops and removes the bombs.
        d.docker("rm", "-f", first, second, free, timeout=60)
    finally:
        d.docker("rm", "-f", first, second, free, check=False, timeout=60)
    assert d.docker("ps", "-aq").stdout == b""
    assert "Traceback" not in d.read_log()


def test_exec_joins_the_bound(d):
    cid = d.docker("run", "-d", "--pids-limit", "12", "busybox", "sleep", "600").stdout.decode().strip()
    try:
        limits = d.docker("exec", cid, "cat", "/proc/self/limits").stdout.decode()
        assert [line.split()[2:4] for line in limits.splitlines()
                if line.startswith("Max processes")] == [["12", "12"]]
        # 12 slots: the exec'd shell forks sleepers until fork() fails (busybox sh then gives up);
        # the container never holds more than 12 processes of its user.
        res = d.docker("exec", cid, "sh", "-c",
                       "for i in $(seq 20); do sleep 60 >/dev/null 2>&1 & done; echo all", check=False)
        assert res.returncode != 0 and b"can't fork" in res.stderr and b"all" not in res.stdout, res
        pid = int(d.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        assert 5 <= len(pids_in_container(pid)) <= 12
    finally:
        d.docker("rm", "-f", cid, timeout=60)
