"""A fork bomb in one container leaves the daemon able to list, stop and remove it.

The daemon runs with a small RLIMIT_NPROC (`prlimit --nproc`) as a uid of its own: the limit
is checked against every process of that uid on the machine, so sharing uid 65534 with other
daemons would make the budget unpredictable.
"""

import os
import time

import pytest

from support import Daemon

UID = 64123
NPROC = 300


class BoundedDaemon(Daemon):
    def argv(self):
        return ["prlimit", f"--nproc={NPROC}:{NPROC}", "--"] + super().argv()


@pytest.fixture
def bounded():
    d = BoundedDaemon(uid=UID)
    try:
        d.start()
        from rootfs import make_rootfs_tar
        d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
        yield d
    finally:
        d.cleanup()


def test_a_fork_bomb_is_contained_and_removed(bounded):
    d = bounded
    info = d.client().get("/info")
    bound = dict(info["SystemStatus"])["Process bound"]
    assert bound.startswith("RLIMIT_NPROC ")
    # A background shell forks sleepers until fork() fails; they keep every slot they got.
    cid = d.docker("run", "-d", "busybox", "sh", "-c",
                   "(while :; do sleep 1000 & done) 2>/dev/null & exec sleep 600").stdout.decode().strip()
    deadline = time.monotonic() + 20
    pid = int(d.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    # Wait until the bomb has hit its bound (the process count stops growing).
    counts = []
    while time.monotonic() < deadline:
        n = sum(1 for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == UID)
        counts.append(n)
        if len(counts) > 5 and counts[-1] == counts[-5]:
            break
        time.sleep(0.3)
    assert counts[-1] < NPROC
    # The daemon still lists, answers, and stops the container.
    assert cid[:12] in d.docker("ps", "-q").stdout.decode()
    d.docker("rm", "-f", cid, timeout=60)
    assert d.docker("ps", "-aq").stdout == b""
    # And the next container runs.
    assert d.docker("run", "--rm", "busybox", "echo", "after").stdout == b"after\n"
    assert "Traceback" not in d.read_log()


def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
