"""The spawner's pool of inits cloned ahead of run requests, as /proc shows it.

One run of tests/spawner_driver.py in mode "pool" (an unprivileged "daemon", uid 65534, as in
tests/test_spawner.py) follows the pooled init from its birth after the first run: idle in its
own namespaces as the daemon's child, taken by the next start (the container's init *is* that
process), killed while idle (logged, reaped, replaced), passed over by the host and joined
networks, orphaned by a kill -9 of the spawner, and reaped by close().
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# the same unprivileged daemon set-up (uid 65534) and the same skips
from test_spawner import nobody_daemon, pytestmark  # noqa: E402,F401


@pytest.fixture(scope="module")
def pool(nobody_daemon):
    p = nobody_daemon.driver("pool")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return json.loads(out), err


def test_no_pool_before_the_first_run(pool):
    res, _ = pool
    assert res["before_first_run"] == []


def test_the_idle_pooled_init_is_the_daemons_child_in_its_own_namespaces(pool):
    res, _ = pool
    assert len(res["pooled"]) == 1
    idle = res["idle"]
    assert idle["ppid"] == res["daemon"]            # CLONE_PARENT: the daemon's child from birth
    assert idle["comm"] == "minidock-pool"          # what `ps -o comm` shows
    assert idle["state"] == "S"                      # blocked in recv(2) on its socketpair
    assert idle["nspid"][-1] == "1" and len(idle["nspid"]) == 2     # PID 1 of its pid namespace
    for name in ("pid", "mnt", "net", "uts", "ipc"):
        assert idle["ns"][name] != res["spawner_ns"][name], name
    assert idle["ns"]["user"] == res["spawner_ns"]["user"]
    # stdio, the lifeline and its end of the socketpair: none of the spawner's other descriptors.
    assert idle["fds"] == 5


def test_the_next_start_is_the_pooled_init(pool):
    res, _ = pool
    taken = res["taken"]
    assert taken["pid"] == res["pooled"][0]
    assert taken["code"] == 0
    pid1, net_lines, comm = taken["out"].split("\n")[:3]
    assert pid1 == "1"                               # still PID 1 of its namespace
    assert net_lines == "3"                          # /proc/net/dev: two header lines and lo
    assert comm == "sh"                              # execve named it after the command


def _mounts(mountinfo, under=""):
    """{mount point: (mount id, fs type)} from mountinfo text, for mount points under `under`
    (relative to it)."""
    mounts = {}
    for line in mountinfo.splitlines():
        fields, fs_type = line.split(" - ")[0].split(), line.split(" - ")[1].split()[0]
        if fields[4].startswith(under + "/"):
            mounts[fields[4][len(under):] or "/"] = (fields[0], fs_type)
    return mounts


def test_the_pooled_init_makes_proc_dev_and_sys_ahead_and_moves_them_in(pool):
    res, _ = pool
    # Idle, it has them under the staging directory, masked and read-only paths included.
    staged = _mounts(res["idle_mountinfo"], res["staging"])
    assert staged["/proc"][1] == "proc" and staged["/sys"][1] == "sysfs"
    assert staged["/dev"][1] == "tmpfs" and staged["/dev/pts"][1] == "devpts"
    assert staged["/proc/sys"][1] == "proc" and staged["/sys/firmware"][1] == "tmpfs"
    # Taken by a start, the container's are those very mounts: a moved mount keeps its id.
    inside = _mounts(res["taken"]["out"].split("\n", 3)[3])
    for path in ("/proc", "/dev", "/sys", "/dev/pts", "/dev/shm", "/proc/sys", "/sys/firmware"):
        assert inside[path] == staged[path], path


def test_the_daemon_hands_the_run_to_the_pooled_init_without_the_spawner(pool):
    res, _ = pool
    stopped = res["spawner_stopped"]
    assert stopped["spawner_state"] == "T"           # stopped all along
    assert stopped["pid"] == stopped["pooled"]       # the pooled init took the run
    assert stopped["out"].strip() == "1" and stopped["code"] == 0


def test_a_pooled_init_killed_while_idle_is_logged_reaped_and_replaced(pool):
    res, err = pool
    killed = res["killed"]
    assert killed["gone"]                            # reaped by the daemon: no zombie left
    assert killed["replacement"] and killed["replacement"] != [killed["victim"]]
    assert killed["zombies"] == []
    assert f"the pooled init (pid {killed['victim']}) died while idle; replacing it" in err
    assert res["after_kill"]["code"] == 0
    assert res["after_kill"]["pid"] == killed["replacement"][0]


def test_a_start_right_after_the_pooled_init_died_clones_directly(pool):
    # Killed, then a start at once: the spawner sees the death first (an empty pool), or its
    # send fails, or the send succeeds into the dying init's socket and no "A" comes back.
    res, err = pool
    for one in res["kill_then_start"]:
        assert one["code"] == 0 and one["pid"] != one["victim"]
        # (Which one depends on when the kernel finished the kill: all are handled alike.)
        assert any(f"the pooled init (pid {one['victim']}) {what}" in err for what in (
            "died while idle", "could not take a request", "died before it took a request"))
    assert res["kill_then_start_zombies"] == []


def test_a_pool_whose_inits_keep_dying_waits_for_the_next_run(pool):
    res, err = pool
    dying = res["dying_pool"]
    assert len(set(dying["victims"])) == 3
    assert dying["pool_after"] == []
    assert "3 pooled inits died while idle; no pool until the next run" in err
    assert dying["next_run"] == 0 and dying["refilled"]


def test_host_and_joined_networks_clone_directly_and_leave_the_pool_alone(pool):
    res, _ = pool
    assert res["host"]["code"] == 0 and int(res["host"]["out"]) > 3    # the host's interfaces
    assert res["join"]["code"] == 0 and res["join"]["out"].strip() == res["join"]["target"]
    kept = res["idle_kept"]
    assert kept["before"] == kept["after"] and len(kept["before"]) == 1
    assert not set(kept["host_pids"]) & set(kept["before"])


def test_a_dead_spawners_pooled_init_exits_and_is_reaped(pool):
    res, _ = pool
    assert res["restarted"]
    assert res["orphaned"]["pids"] and res["orphaned"]["gone"]
    assert res["after_restart"]["code"] == 0
    assert res["zombies"] == []


def test_close_reaps_the_pooled_init(pool):
    res, _ = pool
    closed = res["closed"]
    assert closed["pids"] and closed["gone"]
    assert closed["children"] == []


def test_a_pooled_init_dies_with_the_daemon(nobody_daemon):
    # "orphan": the driver starts containers, reports its pids and its pooled init's, and
    # SIGKILLs itself. The idle init's death signal was armed at its birth (ns.DaemonTie).
    p = nobody_daemon.driver("orphan")
    line = p.stdout.readline()
    p.wait(30)
    res = json.loads(line)
    assert len(res["pooled"]) == 1
    pooled = res["pooled"][0]
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(f"/proc/{pooled}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pooled}")


def test_a_traced_init_records_its_steps_up_to_only_execve_left(nobody_daemon):
    # scripts/profile-start's view inside the init: with MINIDOCK_PROFILE_TRACE in the daemon's
    # environment, each init step appends begin/end records (syscalls.trace_step).
    trace = os.path.join(nobody_daemon.data, "trace")
    p = nobody_daemon.driver("trace", env=dict(os.environ, MINIDOCK_PROFILE_TRACE=trace))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    answered = json.loads(out)["answered"]
    with open(trace) as f:
        records = [line.rstrip("\n").split(" ", 3) for line in f]
    assert records and all(kind in "BE" and who == "init" for kind, _, who, _ in records)
    steps, stack = [], []               # (name, begin, end, depth), nested as they ran
    for kind, t, _, name in records:
        if kind == "B":
            stack.append((name, int(t)))
        else:
            begun, t0 = stack.pop()
            assert begun == name and int(t) >= t0
            steps.append((name, t0, int(t), len(stack)))
    assert stack == []
    ready = [t0 for name, t0, _, _ in steps if name == "tell the spawner only execve is left"]
    assert len(ready) == 2
    # Each start was answered after its init said only execve was left.
    assert ready[0] < answered[0] < ready[1] < answered[1]
    # The pooled init made /proc, /dev and /sys before its request and moved them in after it.
    ahead = [t0 for name, t0, _, _ in steps if name == "make /proc, /dev and /sys ahead"]
    moved = [t0 for name, t0, _, _ in steps if name == "move /proc, /dev and /sys into the rootfs"]
    assert len(moved) == 1 and answered[0] < min(ahead) < moved[0] < ready[1]
    names = {step[0] for step in steps}
    assert {"mount /proc", "pivot_root", "install the seccomp filter"} <= names
