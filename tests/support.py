"""Shared test support: real daemons on temp sockets, run as an unprivileged user.

CI runs the suite as root, but minidock's point is running without root, so end-to-end tests
start the daemon as uid 65534 (`nobody`) with `setpriv`. That user cannot read a checkout under
/root, so the package is copied into a fresh 0755 directory first, and the daemon is started with
an interpreter that user can run. Every daemon is bounded: a watchdog timeout on start, and
`stop()` (SIGTERM, then SIGKILL) in teardown.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
NOBODY = 65534


def unprivileged_python():
    """An interpreter uid 65534 can execute: the system one, else ours if it is readable."""
    for candidate in ("/usr/bin/python3", sys.executable):
        if os.path.exists(candidate):
            return candidate
    return sys.executable


def _remove_if_ours(path, pid):
    if os.getpid() == pid:              # not in a forked child that happens to exit normally
        shutil.rmtree(path, ignore_errors=True)


def scratch_dir():
    """A fresh directory under /tmp for one test's files (a socket, a data root), removed when
    the test process exits, as make_user_dir's are."""
    path = tempfile.mkdtemp(prefix="minidock-test-", dir="/tmp")
    atexit.register(_remove_if_ours, path, os.getpid())
    return path


def make_user_dir(uid=NOBODY, gid=None, prefix="minidock-test-"):
    """A fresh directory under /tmp owned by `uid`, reachable by it (parents are 0755/1777).
    It is removed when the test process exits (a test's bind-mount directories included)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    atexit.register(_remove_if_ours, path, os.getpid())
    os.chmod(path, 0o755)
    if os.getuid() == 0:
        os.chown(path, uid, gid if gid is not None else primary_gid(uid))
    return path


def copy_package(dest):
    """Copy the minidock package into `dest` (readable by everyone); returns the PYTHONPATH."""
    target = os.path.join(dest, "src")
    shutil.copytree(os.path.join(REPO, "minidock"), os.path.join(target, "minidock"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(target):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return target


def primary_gid(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def as_user_argv(uid, gid=None, groups=()):
    """The argv prefix that runs a command as `uid` (nothing when we are that user already).

    The group defaults to the user's primary group: newuidmap refuses a process whose gid is not
    the passwd entry's.
    """
    if os.getuid() == uid:
        return []
    gid = primary_gid(uid) if gid is None else gid
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
    argv += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return argv


class Daemon:
    """A minidock daemon process on a temp socket, run as `uid`."""

    def __init__(self, uid=NOBODY, extra_args=(), userns=True, env=None):
        self.uid = uid
        self.base = make_user_dir(uid)
        self.pythonpath = copy_package(self.base) if uid != os.getuid() else REPO
        self.socket = os.path.join(self.base, "minidock.sock")
        self.data_root = os.path.join(self.base, "data")
        self.exec_root = os.path.join(self.base, "exec")
        self.log_path = os.path.join(self.base, "daemon.log")
        self.host = "unix://" + self.socket
        self.extra_args = list(extra_args)
        self.userns = userns
        self.env = dict(env or {})
        self.proc = None

    def argv(self):
        python = unprivileged_python() if self.uid != os.getuid() else sys.executable
        argv = as_user_argv(self.uid) + [python, "-S", "-m", "minidock", "-H", self.host,
                                        "--data-root", self.data_root, "--exec-root", self.exec_root,
                                        "--log-level", "debug"]
        if not self.userns:
            argv.append("--no-userns")
        return argv + self.extra_args

    def start(self, timeout=20):
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "PYTHONPATH": self.pythonpath, "HOME": self.base, "LANG": "C.UTF-8"}
        env.update(self.env)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.read_log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.read_log()}")

    def ping(self):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(self.socket)
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(100).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def client(self, version="1.24"):
        from minidock.client import Client
        return Client(self.host, version=version)

    def cli_env(self, env=None):
        """The environment the docker CLI needs to talk to this daemon (and only to it)."""
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": self.host,
                    "HOME": self.base, "DOCKER_CONFIG": os.path.join(self.base, ".docker-cli"),
                    "DOCKER_BUILDKIT": "0", "TERM": "xterm"}
        full_env.update(env or {})
        return full_env

    def docker_argv(self):
        return [DOCKER]

    def docker_cmdline(self):
        return DOCKER

    def docker(self, *args, input=None, timeout=60, check=True, env=None):
        """Run the real docker CLI against this daemon."""
        result = subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout,
                                env=self.cli_env(env))
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n"
                                 f"stdout: {result.stdout.decode(errors='replace')}\n"
                                 f"stderr: {result.stderr.decode(errors='replace')}\n"
                                 f"daemon log:\n{self.read_log()}")
        return result

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def json_lines(data):
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def wait_for(predicate, timeout=10, what="condition"):
    """Poll `predicate` until it is true; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_until_close(s):
    """Everything a socket delivers until the peer closes it."""
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            return out
        out += data
