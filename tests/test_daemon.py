"""The daemon as a user meets it: started unprivileged, driven by the real docker CLI."""

import json
import os
import signal
import stat
import subprocess
import time

import pytest

from support import NOBODY, Daemon, as_user_argv, unprivileged_python

pytestmark = pytest.mark.e2e


def test_real_cli_version_info_events_as_unprivileged_user(daemon_factory):
    d = daemon_factory()
    # the daemon really runs as uid 65534
    with open(f"/proc/{d.proc.pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    # setpriv execs the interpreter in place, so the pid we started is the daemon itself
    assert uid_line.split()[1:3] == [str(NOBODY), str(NOBODY)]
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o600 and st.st_uid == NOBODY

    out = d.docker("version").stdout.decode()
    assert "Server: minidock" in out and "API version:      1.47" in out

    info = json.loads(d.docker("info", "--format", "{{json .}}").stdout)
    assert info["DockerRootDir"] == d.data_root
    assert info["NCPU"] == os.cpu_count() and info["OSType"] == "linux"
    assert info["KernelVersion"] == os.uname().release

    result = d.docker("events", "--since", "1", "--until", "2", timeout=20)
    assert result.returncode == 0 and result.stdout == b""


def test_default_paths_without_flags(tmp_path):
    base = Daemon()            # only used for its package copy and user dir
    try:
        runtime = os.path.join(base.base, "run")
        data_home = os.path.join(base.base, "share")
        for p in (runtime, data_home):
            os.mkdir(p, 0o700)
            os.chown(p, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": base.pythonpath, "HOME": base.base,
               "XDG_RUNTIME_DIR": runtime, "XDG_DATA_HOME": data_home}
        proc = subprocess.Popen(as_user_argv(NOBODY) + [unprivileged_python(), "-S", "-m", "minidock"]
                                + ([] if base.userns else ["--no-userns"]),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=base.base)
        sock = os.path.join(runtime, "minidock.sock")
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        try:
            assert os.path.exists(sock), proc.stdout.read1(10000) if proc.poll() is not None else "no socket"
            assert os.path.isdir(os.path.join(data_home, "minidock"))
            assert os.stat(sock).st_mode & 0o777 == 0o600
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        assert not os.path.exists(sock), "a clean shutdown removes the socket"
    finally:
        base.cleanup()


def test_second_daemon_on_same_data_root_is_refused(daemon_factory):
    d = daemon_factory()
    twin = Daemon()
    twin.data_root = d.data_root
    try:
        with pytest.raises(RuntimeError) as err:
            twin.start(timeout=10)
        assert "already using data root" in str(err.value)
    finally:
        twin.cleanup()
    assert d.ping()


def test_sigkill_then_restart_is_clean(daemon_factory):
    d = daemon_factory()
    engine_id = json.loads(d.docker("info", "--format", "{{json .ID}}").stdout)
    d.kill()
    assert os.path.exists(d.socket), "SIGKILL leaves the socket file behind"
    # what a crash in the middle of a build step leaves: a writable layer nobody owns
    orphan = os.path.join(d.data_root, "image", "layers", "containers", "build-cut-short")
    os.makedirs(os.path.join(orphan, "upper"))
    for path in (orphan, os.path.join(orphan, "upper")):
        os.chown(path, d.uid, d.uid)
    d.start()
    assert not os.path.exists(orphan)
    assert json.loads(d.docker("info", "--format", "{{json .ID}}").stdout) == engine_id
    assert not [n for n in os.listdir(d.data_root) if n.startswith(".tmp-")]
    assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_sigterm_stops_containers_and_restart_policy_brings_them_back(daemon_factory):
    from rootfs import make_rootfs_tar
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "bb.tar")), "busybox")
    d.docker("run", "-d", "--name", "plain", "busybox", "sh", "-c", 'trap "exit 7" TERM; sleep 300 & wait')
    d.docker("run", "-d", "--name", "always", "--restart", "always", "busybox", "sh", "-c",
             'trap "exit 0" TERM; sleep 300 & wait')
    assert d.stop() == 0
    d.start()
    state = lambda name: d.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name).stdout  # noqa: E731
    assert state("plain") == b"exited 7\n"          # stopped with SIGTERM by the clean shutdown
    assert state("always").startswith(b"running")
    d.kill()                                         # SIGKILL: containers die with the daemon
    d.start()
    assert state("always").startswith(b"running")
    assert state("plain") == b"exited 7\n"
    d.docker("rm", "-f", "plain", "always")


def test_refused_user_namespaces_are_explained(tmp_path):
    """A real refusal: in a user namespace of our own, user.max_user_namespaces can be set to 0
    (the limits are per namespace), and the kernel then refuses unshare(CLONE_NEWUSER)."""
    base = Daemon()
    try:
        script = ("echo 0 > /proc/sys/user/max_user_namespaces; exec " + unprivileged_python() +
                  f" -S -m minidock -H unix://{base.socket} --data-root {base.data_root} --exec-root {base.exec_root}")
        result = subprocess.run(as_user_argv(NOBODY) + ["unshare", "-Urm", "sh", "-c", script],
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": base.pythonpath, "HOME": base.base},
                                capture_output=True, timeout=30, cwd=base.base)
        assert result.returncode == 1
        message = result.stderr.decode()
        assert "Traceback" not in message
        assert "refuses unprivileged user namespaces" in message and "sysctl -w user.max_user_namespaces" in message
        assert not os.path.exists(base.socket)
    finally:
        base.cleanup()


def test_unix_and_tcp_listeners_together(daemon_factory):
    import socket as socket_mod
    probe = socket_mod.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    d = daemon_factory(extra_args=["-H", f"tcp://127.0.0.1:{port}"])
    assert b"minidock" in d.docker("version", "--format", "{{.Server.Platform.Name}}").stdout
    over_tcp = d.docker("version", "--format", "{{.Server.APIVersion}}", env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}"})
    assert over_tcp.stdout == b"1.47\n"
