"""The spawner under concurrency and faults, through a real unprivileged daemon.

What must hold: no burst of execs or lifecycles ends the spawner's loop; one oversized request
fails (or runs) alone; a spawner killed with SIGKILL is restarted by the daemon, and the
containers it had started keep running and are still reaped and reported. The engine keeps no
process per container (each init is the daemon's own child), and a daemon killed with SIGKILL
takes every container process with it.
"""

import concurrent.futures
import os
import re
import signal
import time

import pytest

from minidock.client import APIError

import proctree


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1]
    except OSError:
        return []


def spawner_pid(daemon):
    """The current spawner's pid, as the daemon logged it ("spawner started/restarted (pid N")."""
    pids = re.findall(r"spawner (?:started|restarted) \(pid (\d+)", daemon.read_log())
    if not pids:
        raise AssertionError("the daemon logged no spawner pid")
    return int(pids[-1])


def assert_spawner_never_died(daemon):
    log = daemon.read_log()
    for words in ("spawner restarted", "crashed", "error handling an event", "the spawner (pid "):
        assert words not in log, log


def test_ten_parallel_execs_for_twenty_rounds(rootless):
    cid = rootless.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    first = spawner_pid(rootless)
    try:
        def one(n):
            r = rootless.docker("exec", cid, "sh", "-c", f"echo ok-{n}; exit {n % 7}", check=False)
            return r.returncode, r.stdout.decode().strip() or r.stderr.decode().strip()

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            for round_ in range(20):
                results = list(pool.map(one, range(round_ * 10, round_ * 10 + 10)))
                assert results == [(n % 7, f"ok-{n}") for n in range(round_ * 10, round_ * 10 + 10)]
        assert spawner_pid(rootless) == first
        assert_spawner_never_died(rootless)
    finally:
        rootless.docker("rm", "-f", cid, check=False)


def test_eight_threads_of_twenty_lifecycles(rootless):
    client = rootless.client()
    first = spawner_pid(rootless)

    def lifecycles(t):
        codes = []
        for i in range(20):
            cid = client.post("/containers/create", body={
                "Image": "busybox", "Cmd": ["sh", "-c", f"exit {(t + i) % 5}"]})["Id"]
            client.post(f"/containers/{cid}/start")
            codes.append(client.post(f"/containers/{cid}/wait", timeout=60)["StatusCode"])
            client.delete(f"/containers/{cid}")
        return codes

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lifecycles, range(8)))
    assert results == [[(t + i) % 5 for i in range(20)] for t in range(8)]
    assert spawner_pid(rootless) == first
    assert_spawner_never_died(rootless)


def test_a_1_2_mb_environment_runs_alone(rootless):
    client = rootless.client()
    env = [f"BIG{i}=" + chr(ord("a") + i) * 100_000 for i in range(12)]
    cid = client.post("/containers/create", body={
        "Image": "busybox", "Env": env,
        "Cmd": ["sh", "-c", "echo ${#BIG0} ${#BIG11}"]})["Id"]
    try:
        client.post(f"/containers/{cid}/start")
        assert client.post(f"/containers/{cid}/wait", timeout=60)["StatusCode"] == 0
        logs = client.call("GET", f"/containers/{cid}/logs", {"stdout": 1})[2]
        assert logs[8:] == b"100000 100000\n"
    finally:
        client.delete(f"/containers/{cid}", {"force": 1})
    # The spawner is the one it was, and a plain container still runs.
    assert rootless.docker("run", "--rm", "busybox", "echo", "after").stdout == b"after\n"
    assert_spawner_never_died(rootless)


def test_an_environment_too_large_for_execve_fails_alone(rootless):
    client = rootless.client()
    # 30 x 100 KB: each string is allowed (< 128 KiB) but the total is over execve's limit
    # (a quarter of the 8 MiB stack): E2BIG, reported for this container only.
    env = [f"HUGE{i}=" + "x" * 100_000 for i in range(30)]
    cid = client.post("/containers/create", body={"Image": "busybox", "Env": env,
                                                  "Cmd": ["true"]})["Id"]
    try:
        with pytest.raises(APIError) as info:
            client.post(f"/containers/{cid}/start")
        assert info.value.status in (400, 500)
        assert "argument list too long" in info.value.message.lower()
    finally:
        client.delete(f"/containers/{cid}", {"force": 1})
    assert rootless.docker("run", "--rm", "busybox", "echo", "after").stdout == b"after\n"


def test_kill_9_of_the_spawner_keeps_containers_and_the_next_run_works(rootless):
    cid = rootless.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    short = rootless.docker("run", "-d", "busybox", "sh", "-c",
                            "sleep 3; exit 7").stdout.decode().strip()
    pid = int(rootless.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    old = spawner_pid(rootless)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "spawner restarted" not in rootless.read_log():
        time.sleep(0.1)
    assert spawner_pid(rootless) != old
    log = rootless.read_log()
    assert "was killed by SIGKILL; restarting it" in log and "spawner restarted" in log
    # The container did not die with the spawner.
    os.kill(pid, 0)
    assert rootless.docker("inspect", "-f", "{{.State.Running}}", cid).stdout == b"true\n"
    # The next run works, and exec into the old container goes through the new spawner.
    assert rootless.docker("run", "--rm", "busybox", "echo", "next").stdout == b"next\n"
    assert rootless.docker("exec", cid, "echo", "inside").stdout == b"inside\n"
    # Exits of containers started by the dead spawner still reach the daemon (we reap the
    # daemon's own children, reaped by pidfd): its own code, and a stop's 137.
    assert rootless.docker("wait", short, timeout=30).stdout == b"7\n"
    rootless.docker("stop", "-t", "1", cid)
    assert rootless.docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout == b"137\n"
    rootless.docker("rm", cid, short)
    assert rootless.ping()


def wait_for_new_spawner(daemon, old, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = spawner_pid(daemon)
            if pid != old:
                return pid
        except AssertionError:
            pass
        time.sleep(0.05)
    raise AssertionError("the spawner was not restarted")


def test_ping_and_info_report_degraded_while_the_spawner_is_down(rootless):
    # Spawners that die in quick succession are restarted after growing pauses (0.5 s, 1 s,
    # 2 s, ...): kill it until a pause is long enough to look at the daemon meanwhile.
    client = rootless.client()
    seen_ping = seen_info = None
    for _ in range(4):
        old = spawner_pid(rootless)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (seen_ping and seen_info):
            try:
                status, _, body = client.call("GET", "/_ping")
            except APIError as e:
                if e.status == 503:
                    seen_ping = e.message
            warnings = client.get("/info")["Warnings"] or []
            seen_info = seen_info or next((w for w in warnings if "degraded" in w), None)
            time.sleep(0.05)
        wait_for_new_spawner(rootless, old)
        if seen_ping and seen_info:
            break
    assert "degraded" in seen_ping and "was killed by SIGKILL" in seen_ping
    assert "was killed by SIGKILL" in seen_info
    # Back to normal once it is up again.
    assert client.call("GET", "/_ping")[2] == b"OK"
    assert rootless.docker("run", "--rm", "busybox", "echo", "ok").stdout == b"ok\n"


def test_no_process_per_container_and_daemon_death_ends_containers(daemon_factory):
    from rootfs import make_rootfs_tar
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "bb.tar")), "busybox")
    daemon = d.proc.pid
    before = proctree.children(daemon)          # the spawner and the network namespace's keeper
    ids = [d.docker("run", "-d", "busybox", "sleep", "300").stdout.decode().strip()
           for _ in range(3)]
    ids.append(d.docker("run", "-d", "--init", "busybox", "sleep", "300").stdout.decode().strip())
    inits = [int(d.docker("inspect", "-f", "{{.State.Pid}}", c).stdout) for c in ids]
    d.docker("exec", "-d", ids[0], "sleep", "300")
    # The spawner's pooled init, cloned ahead of the next run (spawnerloop.py, "The pool"), is
    # the daemon's child too: idle, named minidock-pool (its comm).
    execd, pooled = None, []
    deadline = time.monotonic() + 10
    while (execd is None or not pooled) and time.monotonic() < deadline:
        pooled = [p for p in proctree.children(daemon) if _comm(p) == "minidock-pool"]
        execd = next((p for p in proctree.children(daemon)
                      if p not in before + inits + pooled and _comm(p) == "sleep"), None)
        time.sleep(0.02)
    # Each container init and the exec'd process is the daemon's own child: the engine keeps
    # no process per container (the daemon's other children are the ones it had idle).
    assert [proctree.stat(p)[1] for p in inits] == [daemon] * 4
    assert execd is not None and proctree.stat(execd)[1] == daemon
    assert len(pooled) == 1
    assert proctree.children(daemon) == sorted(before + inits + [execd] + pooled)
    # kill -9 of the daemon: every container process dies with it (their death signal), and
    # so does the idle pooled init.
    d.kill()
    deadline = time.monotonic() + 10
    gone = lambda p: proctree.stat(p) is None or proctree.stat(p)[0] == "Z"     # noqa: E731
    while time.monotonic() < deadline and not all(gone(p) for p in inits + [execd] + pooled):
        time.sleep(0.05)
    assert [p for p in inits + [execd] + pooled if not gone(p)] == []


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _mapped_extensions(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {os.path.basename(line.split()[-1]) for line in f if line.rstrip().endswith(".so")
                and "cpython" in line}


def _assert_small_fresh_spawner(pid, daemon):
    argv = _cmdline(pid)
    # The same interpreter, started afresh with only the spawner's module: not a fork of the
    # daemon (whose cmdline would be `python3 -S -m minidock ...`).
    assert argv[1:5] == [b"-S", b"-E", b"-m", b"minidock.spawnerloop"], argv
    assert argv[7] == str(daemon).encode()      # (a restarted one: and the mount namespace fd)
    assert os.readlink(f"/proc/{pid}/exe") == os.readlink(f"/proc/{daemon}/exe")
    assert proctree.stat(pid)[1] == daemon
    # execve kept the daemon's user namespace; its mount namespace is its own copy of the
    # daemon's (spawnerloop.own_mount_namespace); it works in the daemon's directory.
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink(f"/proc/{daemon}/ns/user")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(f"/proc/{daemon}/ns/mnt")
    assert os.readlink(f"/proc/{pid}/cwd") == os.readlink(f"/proc/{daemon}/cwd")
    # Smaller: fewer extension modules mapped (no TLS, no hashing...) and far less anonymous
    # memory for each container start's two forks to copy.
    assert _mapped_extensions(pid) < _mapped_extensions(daemon)
    assert _status(pid, "RssAnon") < 0.7 * _status(daemon, "RssAnon")


def test_the_spawner_is_a_small_fresh_interpreter_first_and_after_a_restart(daemon_factory):
    from rootfs import make_rootfs_tar
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "bb.tar")), "busybox")
    daemon = d.proc.pid
    first = spawner_pid(d)
    _assert_small_fresh_spawner(first, daemon)
    first_mnt = os.readlink(f"/proc/{first}/ns/mnt")
    # The keeper of the network namespace is no process but a thread of the daemon (network.py):
    # the spawner is the daemon's only child, and exactly one of the daemon's threads is in
    # another network namespace, the one that holds the default bridge.
    assert proctree.children(daemon) == [first]
    host_net = os.readlink(f"/proc/{daemon}/ns/net")
    moved = [t for t in os.listdir(f"/proc/{daemon}/task")
             if os.readlink(f"/proc/{daemon}/task/{t}/ns/net") != host_net]
    assert len(moved) == 1
    with open(f"/proc/{daemon}/task/{moved[0]}/net/dev") as f:
        assert "docker0:" in f.read()
    assert d.docker("run", "--rm", "busybox", "echo", "ok").stdout == b"ok\n"
    os.kill(first, signal.SIGKILL)
    again = wait_for_new_spawner(d, first)
    # (Logged as soon as it is started: a run is answered once it is up and serving.)
    assert d.docker("run", "--rm", "busybox", "echo", "again").stdout == b"again\n"
    _assert_small_fresh_spawner(again, daemon)
    # It joined the first spawner's mount namespace (which the daemon kept) instead of copying
    # the daemon's as it is now, with the overlays of running containers.
    assert os.readlink(f"/proc/{again}/ns/mnt") == first_mnt
