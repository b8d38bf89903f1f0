"""Streams end to end with the real docker CLI against a rootless daemon: attach (output, stdin,
detach keys on a TTY, StdinOnce, logs replay), start -a -i, run -a, logs (tail, timestamps,
follow, since, stream selection, across a daemon restart), exec -t and resize under a pty.

TTY cases drive the CLI from a pseudo-terminal made with Python's pty module, as a person's
terminal would: the CLI puts it in raw mode, reads the window size from it, and its keystrokes
(ctrl-p ctrl-q) travel to the daemon, which recognises the detach sequence.
"""

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from minidock import http as proto, times
from minidock.client import demux
from support import DOCKER, wait_for

pytestmark = pytest.mark.e2e


def docker_env(d):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": d.host, "HOME": d.base,
            "DOCKER_CONFIG": os.path.join(d.base, ".docker-cli"), "DOCKER_BUILDKIT": "0"}


def run_in_pty(d, args, steps=(), rows=24, cols=80, timeout=15):
    """Run `docker args...` on a fresh pty of rows x cols. `steps` are (wait_for, send) pairs:
    wait until the output contains `wait_for` (bytes, or a number of seconds), then type
    `send`. Returns (output, exit code)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=docker_env(d),
                            start_new_session=True)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    steps = list(steps)

    def pump(wait):
        nonlocal output
        ready, _, _ = select.select([master], [], [], wait)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: the CLI closed its end
                return False
            output += data
            return bool(data)
        return True

    try:
        while time.monotonic() < deadline:
            if steps:
                want, send = steps[0]
                if isinstance(want, (int, float)):
                    time.sleep(want)
                    ok = True
                else:
                    ok = want in output
                if ok:
                    os.write(master, send)
                    steps.pop(0)
                    continue
            if not pump(0.1) and proc.poll() is not None:
                break
            if proc.poll() is not None and not steps:
                while pump(0.1):
                    pass
                break
        else:
            raise AssertionError(f"docker {' '.join(args)} did not finish; output so far: {output!r}\n"
                                 f"daemon log:\n{d.read_log()}")
        return output, proc.wait(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def state(d, name):
    return d.client().get(f"/containers/{name}/json")["State"]


# -- attach ------------------------------------------------------------------------------------

def test_attach_receives_output_and_exit_code(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "att-out", "busybox", "sh", "-c",
             "sleep 1; echo to-out; echo to-err >&2; exit 3")
    r = d.docker("attach", "att-out", check=False, timeout=20)
    assert r.returncode == 3
    assert r.stdout == b"to-out\n" and r.stderr == b"to-err\n"
    d.docker("rm", "att-out")


def test_attach_stdin_reaches_the_container(rootless):
    d = rootless
    d.docker("run", "-d", "-i", "--name", "att-in", "busybox", "sh", "-c", "read x; echo got:$x")
    r = d.docker("attach", "att-in", input=b"hello\n", timeout=20)
    assert r.stdout == b"got:hello\n"
    assert state(d, "att-in")["ExitCode"] == 0
    d.docker("rm", "att-in")


def test_tty_detach_with_default_keys_and_reattach(rootless):
    d = rootless
    d.docker("run", "-dit", "--name", "att-tty", "busybox", "sh")
    # The CLI ends an attach that was detached with "read escape sequence" (and status 1).
    out, code = run_in_pty(d, ["attach", "att-tty"], steps=[
        (0.5, b"echo one$((40+2))\r"), (b"one42", b"\x10\x11")])
    assert b"one42" in out and b"read escape sequence" in out, out
    assert state(d, "att-tty")["Running"]
    # The shell is still there for the next attach, and a custom sequence detaches too.
    out, code = run_in_pty(d, ["attach", "--detach-keys", "ctrl-a,x", "att-tty"], steps=[
        (0.5, b"echo two$((40+3))\r"), (b"two43", b"\x10\x11echo still$((1+1))\r"),
        (b"still2", b"\x01x")])
    assert b"read escape sequence" in out, out
    assert b"still2" in out, out          # ctrl-p ctrl-q is plain input under custom keys
    assert state(d, "att-tty")["Running"]
    d.docker("rm", "-f", "att-tty")


def test_run_it_detach_keeps_container_running(rootless):
    d = rootless
    out, code = run_in_pty(d, ["run", "-it", "--name", "run-tty", "busybox", "sh"], steps=[
        (0.5, b"echo in-$((2*21))\r"), (b"in-42", b"\x10\x11")])
    assert code == 0 and b"in-42" in out, out
    assert state(d, "run-tty")["Running"]
    d.docker("rm", "-f", "run-tty")


def test_start_attach_interactive_twice(rootless):
    d = rootless
    d.docker("create", "-i", "--name", "start-ai", "busybox", "sh", "-c", "cat; echo done")
    for word in (b"first\n", b"second\n"):
        r = d.docker("start", "-a", "-i", "start-ai", input=word, timeout=20)
        assert r.stdout == word + b"done\n"
    d.docker("rm", "start-ai")


def test_run_attach_stdout_only(rootless):
    d = rootless
    r = d.docker("run", "--rm", "-a", "stdout", "busybox", "sh", "-c", "echo o; echo e >&2")
    assert (r.stdout, r.stderr) == (b"o\n", b"")
    r = d.docker("run", "--rm", "-a", "stderr", "busybox", "sh", "-c", "echo o; echo e >&2")
    assert (r.stdout, r.stderr) == (b"", b"e\n")


def test_attach_logs_replay(rootless):
    d = rootless
    d.docker("run", "--name", "att-logs", "busybox", "sh", "-c", "echo a; echo b >&2; echo c")
    pipe = d.client().hijack("/containers/att-logs/attach", params={"logs": 1, "stdout": 1, "stderr": 1})
    out, err = demux(pipe.read_all())
    pipe.close()
    assert (out, err) == (b"a\nc\n", b"b\n")
    pipe = d.client().hijack("/containers/att-logs/attach", params={"logs": 1, "stderr": 1})
    frames, rest = proto.parse_frames(pipe.read_all())
    pipe.close()
    assert frames == [(proto.STDERR, b"b\n")] and rest == b""
    d.docker("rm", "att-logs")


def test_stdin_once_closes_stdin_when_the_client_does(rootless):
    d = rootless
    api = d.client()
    script = "while read l; do echo got:$l; done; echo eof"
    once = api.post("/containers/create", body={"Image": "busybox", "Cmd": ["sh", "-c", script],
                                                "OpenStdin": True, "StdinOnce": True})["Id"]
    pipe = api.hijack(f"/containers/{once}/attach", params={"stream": 1, "stdin": 1, "stdout": 1})
    api.post(f"/containers/{once}/start")
    pipe.send(b"x\n")
    pipe.close_write()                       # end of our input = end of the container's
    out, _ = demux(pipe.read_all())
    pipe.close()
    assert out == b"got:x\neof\n"
    assert api.post(f"/containers/{once}/wait", timeout=15)["StatusCode"] == 0

    # Without StdinOnce the container's stdin outlives one client: a second attach writes on.
    keep = api.post("/containers/create", body={"Image": "busybox", "Cmd": ["sh", "-c", script],
                                                "OpenStdin": True})["Id"]
    api.post(f"/containers/{keep}/start")
    for word in (b"one", b"two"):
        pipe = api.hijack(f"/containers/{keep}/attach", params={"stream": 1, "stdin": 1})
        pipe.send(word + b"\n")
        pipe.close_write()
        pipe.close()
        # one client after the other: wait for this line before the next client writes
        wait_for(lambda: b"got:" + word in d.docker("logs", keep).stdout, what=f"line {word!r}")
    assert state(d, keep)["Running"]
    assert d.docker("logs", keep).stdout == b"got:one\ngot:two\n"
    d.docker("rm", "-f", once, keep)


# -- logs --------------------------------------------------------------------------------------

def test_logs_tail_timestamps_streams_and_since(rootless):
    d = rootless
    # stdout and stderr are two pipes read by two threads: pauses keep their order in the log.
    d.docker("run", "--name", "logs1", "busybox", "sh", "-c",
             "for i in 1 2 3; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done")
    r = d.docker("logs", "logs1")
    assert r.stdout == b"out1\nout2\nout3\n" and r.stderr == b"err1\nerr2\nerr3\n"
    # `docker logs c 2>/dev/null` shows stdout only: stderr arrives on the CLI's stderr.
    shell = subprocess.run(f"{DOCKER} logs logs1 2>/dev/null", shell=True, capture_output=True,
                           env=docker_env(d), timeout=20)
    assert shell.stdout == b"out1\nout2\nout3\n"
    # --tail counts entries of both streams, newest last.
    r = d.docker("logs", "--tail", "2", "logs1")
    assert (r.stdout, r.stderr) == (b"out3\n", b"err3\n")
    assert d.docker("logs", "--tail", "0", "logs1").stdout == b""
    r = d.docker("logs", "-t", "--tail", "1", "logs1")
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z err3\n", r.stderr), r.stderr
    # --since: nothing after a moment in the future, everything since a moment before.
    assert d.docker("logs", "--since", str(int(time.time()) + 5), "logs1").stdout == b""
    assert d.docker("logs", "--since", "10m", "logs1").stdout == b"out1\nout2\nout3\n"
    d.docker("rm", "logs1")


def test_logs_since_splits_output_in_time(rootless):
    d = rootless
    d.docker("run", "--name", "logs2", "busybox", "sh", "-c", "echo early; sleep 2; echo late")
    stamps = d.docker("logs", "-t", "logs2").stdout.decode().splitlines()
    late = stamps[1].split()[0]
    # A time between the two lines: only the late one is newer.
    middle = times.rfc3339_seconds(late) - 1.0
    assert d.docker("logs", "--since", f"{middle:.3f}", "logs2").stdout == b"late\n"
    d.docker("rm", "logs2")


def test_logs_follow_ends_when_the_container_exits(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "logs3", "busybox", "sh", "-c", "echo a; sleep 1.5; echo b")
    started = time.monotonic()
    r = d.docker("logs", "-f", "logs3", timeout=20)
    assert r.stdout == b"a\nb\n"
    assert time.monotonic() - started < 10
    # -f of an exited container returns at once with what there is.
    assert d.docker("logs", "-f", "--tail", "1", "logs3", timeout=10).stdout == b"b\n"
    d.docker("rm", "logs3")


def test_logs_follow_with_tty_container(rootless):
    d = rootless
    d.docker("run", "-dt", "--name", "logs4", "busybox", "sh", "-c", "echo tty-line; sleep 0.5")
    r = d.docker("logs", "-f", "logs4", timeout=20)
    assert r.stdout == b"tty-line\r\n"          # a TTY turns \n into \r\n; one stream, no frames
    d.docker("rm", "logs4")


def test_logs_and_state_survive_a_daemon_restart(daemon_factory):
    from rootfs import make_rootfs_tar
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
    d.docker("run", "--name", "said", "busybox", "sh", "-c", "echo before restart; echo on-err >&2")
    d.docker("run", "-d", "--name", "sleeper", "busybox", "sleep", "1000")
    d.docker("run", "-d", "--name", "always", "--restart", "always", "busybox", "sh", "-c",
             "echo up; sleep 1000")
    wait_for(lambda: d.docker("logs", "always").stdout == b"up\n", what="first output of 'always'")
    old_pid = state(d, "always")["Pid"]
    d.stop()
    d.start()
    r = d.docker("logs", "said")
    assert (r.stdout, r.stderr) == (b"before restart\n", b"on-err\n")
    sleeper = state(d, "sleeper")
    assert sleeper["Status"] == "exited" and not sleeper["Running"]
    ps = d.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout.decode()
    assert re.search(r"^sleeper Exited \(\d+\)", ps, re.M), ps
    wait_for(lambda: state(d, "always")["Running"], what="'always' running again")
    assert state(d, "always")["Pid"] != old_pid
    wait_for(lambda: d.docker("logs", "always").stdout == b"up\nup\n", what="second run's output")
    d.docker("rm", "-f", "said", "sleeper", "always")


# -- exec and resize under a pty ---------------------------------------------------------------

def test_exec_tty_gets_the_terminal_size(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "ex-tty", "busybox", "sleep", "1000")
    # The CLI passes its terminal's size on with an exec resize sent alongside the start, retrying
    # until the exec runs. API 1.24 has no initial console size, so (as with Docker) a command that
    # asks at once can win the race: this one waits a moment. test -t sees a terminal.
    out, code = run_in_pty(d, ["exec", "-t", "ex-tty", "sh", "-c", "sleep 0.5; test -t 1 && stty size"],
                           rows=40, cols=120)
    assert code == 0, out
    assert b"40 120" in out, out
    out, code = run_in_pty(d, ["exec", "-it", "ex-tty", "sh"], steps=[
        (0.5, b"test -t 0 && echo IS$((1))TTY; exit 7\r")])
    assert code == 7 and b"IS1TTY" in out, out
    # the pty comes from the container's own devpts, so its name resolves inside (ttyname works)
    out, code = run_in_pty(d, ["exec", "-t", "ex-tty", "sh", "-c", "tty && ls /dev/pts"], rows=24, cols=80)
    assert code == 0 and b"/dev/pts/0" in out, out
    d.docker("rm", "-f", "ex-tty")


def test_exec_in_paused_container_is_a_conflict(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "ex-paused", "busybox", "sleep", "1000")
    d.docker("pause", "ex-paused")
    r = d.docker("exec", "ex-paused", "true", check=False)
    assert r.returncode != 0 and b"is paused, unpause the container before exec" in r.stderr
    from minidock.client import APIError
    api = d.client()
    with pytest.raises(APIError) as info:
        api.post("/containers/ex-paused/exec", body={"Cmd": ["true"]})
    assert info.value.status == 409 and "is paused" in info.value.message
    d.docker("unpause", "ex-paused")
    assert d.docker("exec", "ex-paused", "echo", "ok").stdout == b"ok\n"
    d.docker("rm", "-f", "ex-paused")


def test_run_tty_resize(rootless):
    d = rootless
    d.docker("run", "-dt", "--name", "rs", "busybox", "sleep", "1000")
    api = d.client()
    api.call("POST", "/containers/rs/resize", params={"h": 33, "w": 111})
    assert d.docker("exec", "rs", "stty", "-F", "/dev/console", "size").stdout == b"33 111\n"
    api.call("POST", "/containers/rs/resize", params={"h": 50, "w": 200})
    assert d.docker("exec", "rs", "stty", "-F", "/proc/1/fd/0", "size").stdout == b"50 200\n"
    d.docker("rm", "-f", "rs")
