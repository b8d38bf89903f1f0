"""The spawner: a single-threaded process that forks containers for a threaded daemon.

Why a separate process
----------------------
fork(2) in a multi-threaded Python process copies only the calling thread; locks held by the
others stay locked forever in the child, so running Python after such a fork can deadlock
(and `preexec_fn` is documented as unsafe with threads). setns(2) into a user namespace is
refused outright to a multi-threaded process. So the daemon forks *one* helper right after
`ns.enter_daemon_userns()`, while it is still single-threaded, and that helper does every
fork afterwards. Forking an already-running interpreter costs well under a millisecond; a
fresh `python -m ...` per container would cost 15-65 ms.

The process tree
----------------

    daemon (threads)                       in the daemon's user + mount namespace
      `- spawner        select() loop      PR_SET_PDEATHSIG(SIGKILL), child subreaper
           `- shim      one per run/exec   a fork of the spawner; waits for its one child
                `- init PID 1 of the container (or the exec'd process), execs the command

Each link holds PR_SET_PDEATHSIG(SIGKILL) on its parent, so SIGKILL of the daemon kills the
spawner, which kills every shim, which kills every container init -- and the death of a pid
namespace's init kills every process in it. A restarted daemon finds no orphans. (The death
signal is tied to the parent *thread*: the daemon must start the spawner from the thread that
lives as long as the daemon, normally its main thread.)

Who reaps: each shim waits for its one child and exits with the child's code (or 128+signal,
Docker's convention, since an exit status cannot carry both). The spawner reaps shims on
SIGCHLD and sends `{"exit": pid, "code": n}` to the daemon. The daemon never calls waitpid(-1).

The wire
--------
One SOCK_SEQPACKET unix socketpair, so every message is one datagram of JSON:

    daemon -> spawner   {"op": "run",  "id": N, "spec": {...}}               + 3 fds (SCM_RIGHTS)
                        {"op": "exec", "id": N, "init_pid": P, "spec": {...}} + 3 fds
                        {"op": "netns", "id": N}  + 1 fd: start network.py's keeper on it
    spawner -> daemon   {"id": N, "pid": P}           the command is being exec'd
                        {"id": N, "error": {...}}     ns.StartError.to_record()
                        {"exit": P, "code": C}        a process started by run/exec ended

Start status travels from the container init to the spawner over a close-on-exec pipe: the
shim writes `P<pid>`, the init writes `E<json>` if a step fails, and EOF without an `E` means
execve succeeded.

The run/exec spec (a JSON-able dict; only `argv` and, for run, `rootfs` are required)
-----------------------------------------------------------------------------------------
    rootfs            str   run: the assembled root directory (e.g. .../containers/ID/merged)
    argv              [str] the command, argv[0] looked up in the env's PATH (Docker's rules)
    env               [str] "KEY=value" list, exactly the environment execve gets
    cwd               str   working directory, created (owned by the user) if missing; "/"
    uid, gid, groups  int, int, [int]  the user; or instead:
    user, group_add   str, [str]  Docker's User/GroupAdd, resolved by Spawner.run/exec in the
                      container's /etc/passwd and /etc/group (ns.resolve_user); needs rootfs
    tty               bool  the three fds are a pty slave: setsid + TIOCSCTTY, /dev/console
    hostname          str   run: the UTS hostname; "localhost" if empty
    network           run: "none" (new net ns, lo only; default) | "host" | {"join_pid": P}
                      | {"netns_pid": keeper, "endpoints": [...]} (network.attach_container)
    shm_size          int   run: bytes of the /dev/shm tmpfs; 64 MiB if 0/absent
    readonly_rootfs   bool  run: remount / read-only after set-up
    mounts            [{"source": host path, "target": container path, "readonly": bool}]
    etc_files         {"/etc/hosts": host file, "/etc/hostname": ..., "/etc/resolv.conf": ...}
                      run: files the daemon generated, bound before `mounts`
    ulimits           [{"name": "nofile", "soft": N, "hard": N}]  (names: ns.RLIMITS)
    cap_add, cap_drop [str] capability names ("NET_ADMIN", "CAP_SYS_TIME", "ALL")
    privileged        bool  all capabilities, no masked or read-only /proc paths
    no_new_privileges bool  prctl(PR_SET_NO_NEW_PRIVS); Docker's default is off
    cgroup            str   optional cgroup directory; the init writes itself to cgroup.procs
    masked_paths, readonly_paths  [str] override Docker's lists (ns.MASKED_PATHS, ...)

For exec, the daemon passes the container's own cap_add/cap_drop/privileged/no_new_privileges
(Docker applies the container's settings to exec'd processes), the exec's user (default: the
container's), env (container env + exec env) and cwd; `rootfs` only if `user` needs resolving.

Failures: run/exec raise ns.StartError with `exit_code` 127 (command not found), 126 (not
executable / permission denied) or 125 (a named set-up step failed: `step`, `errno`). The
message keeps the words the docker CLI greps for to choose its own exit code.
"""

import itertools
import json
import os
import selectors
import signal
import socket
import threading

from . import errors, network, ns   # network: loaded once here, not in every shim

_MAX_MSG = 1 << 20


class Spawner:
    """The daemon's handle on the spawner process. Thread-safe."""

    @classmethod
    def start(cls, on_exit=None):
        """Fork the spawner. Call while the daemon is single-threaded (after enter_daemon_userns).

        `on_exit(pid, code)` is called from a reader thread whenever a process started by run
        or exec ends (keep it short: it delays every later message). Without a callback, codes
        are kept until `wait(pid)` takes them; use one style or the other.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (mine, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MAX_MSG)
        daemon = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                mine.close()
                _Server(theirs, daemon).serve()
            except BaseException:
                code = 1
            os._exit(code)
        theirs.close()
        return cls(pid, mine, on_exit)

    def __init__(self, pid, sock, on_exit=None):
        self.pid = pid                  # the spawner's pid
        self._sock = sock
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._replies = {}              # request id -> [Event, reply]
        self._codes = {}                # pid -> exit code, until wait() takes it
        self._live = set()              # pids started and not yet ended
        self._cond = threading.Condition(self._lock)
        self._dead = False
        self._last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
        self._reader = threading.Thread(target=self._read_loop, name="spawner-reader",
                                        daemon=True)
        self._reader.start()

    # -- requests --

    def run(self, spec, stdin, stdout, stderr):
        """Start a container; returns the host pid of its init once execve is under way.

        Raises ns.StartError (exit_code 125/126/127) if set-up or exec failed,
        errors.InvalidParameter for a bad spec, errors.Unavailable if the spawner is gone."""
        if not spec.get("rootfs") or not spec.get("argv"):
            raise errors.InvalidParameter("run needs rootfs and argv")
        return self._request({"op": "run", "spec": self._prepare(spec)}, [stdin, stdout, stderr])

    def exec(self, init_pid, spec, stdin, stdout, stderr):
        """Run a process inside the running container whose init is `init_pid`; its host pid."""
        if not spec.get("argv"):
            raise errors.InvalidParameter("exec needs argv")
        return self._request({"op": "exec", "init_pid": int(init_pid),
                              "spec": self._prepare(spec)}, [stdin, stdout, stderr])

    def netns(self, sock_fd):
        """Start the keeper of the daemon's network namespace (network.py), serving `sock_fd`;
        its pid. It lives, like a container, until the spawner dies."""
        return self._request({"op": "netns"}, [sock_fd])

    def wait(self, pid, timeout=None):
        """The exit code of `pid` (its own, or 128+signal); None on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._codes, timeout):
                return None
            return self._codes.pop(pid)

    def close(self):
        """Stop the spawner; every container it started is killed with it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(5)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self._sock.close()

    # -- internals --

    def _prepare(self, spec):
        spec = dict(spec)
        if "uid" not in spec:
            if spec.get("user") and not spec.get("rootfs"):
                raise errors.InvalidParameter("a user name needs the container's rootfs")
            uid, gid, groups = ns.resolve_user(spec.get("rootfs") or "/nonexistent",
                                               spec.pop("user", "") or "",
                                               spec.pop("group_add", None))
            spec.update(uid=uid, gid=gid, groups=groups)
        ns.capability_set(spec.get("cap_add"), spec.get("cap_drop"))   # validates names
        for u in spec.get("ulimits") or []:
            if u.get("name") not in ns.RLIMITS:
                raise errors.InvalidParameter(f"invalid ulimit type: {u.get('name')}")
        spec["_last_cap"] = self._last_cap
        return spec

    def _request(self, msg, fds):
        waiter = [threading.Event(), None]
        with self._lock:
            if self._dead:
                raise errors.Unavailable("the spawner process is gone")
            msg["id"] = rid = next(self._ids)
            self._replies[rid] = waiter
            socket.send_fds(self._sock, [json.dumps(msg).encode()], fds)
        waiter[0].wait()
        reply = waiter[1]
        if "error" in reply:
            if reply["error"].get("unavailable"):
                raise errors.Unavailable(reply["error"]["message"])
            raise ns.StartError.from_record(reply["error"])
        return reply["pid"]

    def _read_loop(self):
        while True:
            try:
                data = self._sock.recv(_MAX_MSG)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            if "exit" in msg:
                pid, code = msg["exit"], msg["code"]
                with self._cond:
                    if self._on_exit is None:   # with a callback nobody wait()s: keep nothing
                        self._codes[pid] = code
                    self._live.discard(pid)
                    self._cond.notify_all()
                if self._on_exit:
                    self._on_exit(pid, code)
            else:
                with self._lock:
                    waiter = self._replies.pop(msg["id"])
                    if "pid" in msg:
                        self._live.add(msg["pid"])
                waiter[1] = msg
                waiter[0].set()
        # The spawner is gone: so are its containers (death signals). Say so to everyone.
        with self._cond:
            self._dead = True
            gone = list(self._live)
            self._live.clear()
            for pid in gone:
                self._codes[pid] = 128 + signal.SIGKILL
            for waiter in self._replies.values():
                waiter[1] = {"error": {"message": "the spawner process is gone",
                                       "unavailable": True}}
                waiter[0].set()
            self._replies.clear()
            self._cond.notify_all()
        if self._on_exit:
            for pid in gone:
                self._on_exit(pid, 128 + signal.SIGKILL)


class _Shim:
    def __init__(self, req_id, status_fd):
        self.req_id = req_id
        self.status_fd = status_fd      # None once the start is decided
        self.buf = b""
        self.pid = None                 # the container init / exec'd process, once started
        self.code = None                # the shim's exit code, once reaped


class _Server:
    """The spawner's single-threaded loop: requests in, forks, pipes and SIGCHLD."""

    def __init__(self, sock, daemon_pid):
        self.sock = sock
        self.daemon_pid = daemon_pid
        self.shims = {}                 # shim pid -> _Shim
        self.by_fd = {}                 # status pipe fd -> shim pid

    def serve(self):
        # Die with the daemon; the check closes the race of it dying before the prctl.
        ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.daemon_pid:
            os._exit(0)
        self.me = os.getpid()
        os.setsid()                     # no terminal signals (^C goes to the daemon only)
        # Orphans (a shim killed before its child) are re-parented to us, not to host init.
        ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
        keep = {self.sock.fileno(), 0, 1, 2}
        for fd in os.listdir("/proc/self/fd"):   # the daemon's other descriptors
            if int(fd) not in keep:
                try:
                    os.close(int(fd))
                except OSError:
                    pass
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd fires
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, "request")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        while True:
            for key, _ in self.sel.select():
                if key.data == "request":
                    if not self.on_request():
                        return          # the daemon closed us: our death kills the shims
                elif key.data == "sigchld":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                else:
                    self.on_status(key.fd)

    def send(self, msg):
        try:
            self.sock.send(json.dumps(msg).encode())
        except OSError:
            os._exit(0)

    def on_request(self):
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _MAX_MSG, 3, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return False
        if not data:
            return False
        msg = json.loads(data)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        shim = os.fork()
        if shim == 0:
            self.shim_main(msg, fds, status_r, status_w)   # never returns
        os.close(status_w)
        for fd in fds:
            os.close(fd)
        self.shims[shim] = _Shim(msg["id"], status_r)
        self.by_fd[status_r] = shim
        self.sel.register(status_r, selectors.EVENT_READ, "status")
        return True

    def shim_main(self, msg, fds, status_r, status_w):
        """The shim: start the process, report its pid, wait, exit with its code."""
        code = 125
        try:
            ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.me:
                os._exit(137)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sock.close()
            os.close(status_r)
            os.close(self.wake_r)
            os.close(self.wake_w)
            if msg["op"] == "run":
                pid = ns.spawn_container(msg["spec"], fds, status_w)
            elif msg["op"] == "netns":
                pid = network.start_keeper(fds[0], status_w)
            else:
                pid = ns.enter_container(msg["init_pid"], msg["spec"], fds, status_w)
            os.write(status_w, b"P%d\n" % pid)
            os.close(status_w)
            for fd in fds:              # only the child needs them; EOF must not wait for us
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        except BaseException as e:
            try:
                ns.report_failure(status_w, e)
            except OSError:
                pass
        os._exit(code)

    def on_status(self, fd):
        chunk = os.read(fd, 65536)
        shim = self.shims[self.by_fd[fd]]
        if chunk:
            shim.buf += chunk
            return
        self.decide(self.by_fd[fd])

    def decide(self, shim_pid):
        """The status pipe is at EOF (or every writer died): answer the run/exec request."""
        shim = self.shims[shim_pid]
        fd = shim.status_fd
        os.set_blocking(fd, False)
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                shim.buf += chunk
        except BlockingIOError:
            pass
        self.sel.unregister(fd)
        os.close(fd)
        del self.by_fd[fd]
        shim.status_fd = None
        error = None
        for line in shim.buf.splitlines():
            if line.startswith(b"P"):
                shim.pid = int(line[1:])
            elif line.startswith(b"E") and error is None:
                error = json.loads(line[1:])
        if error is not None or shim.pid is None:
            shim.pid = None
            self.send({"id": shim.req_id, "error": error or {
                "message": "the container process died during set-up", "exit_code": 125}})
        else:
            self.send({"id": shim.req_id, "pid": shim.pid})
        if shim.code is not None:
            self.finish(shim_pid)

    def finish(self, shim_pid):
        shim = self.shims.pop(shim_pid)
        if shim.pid is not None:
            self.send({"exit": shim.pid, "code": shim.code})

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.shims:
                continue                # an adopted orphan
            code = os.waitstatus_to_exitcode(status)
            self.shims[pid].code = 128 - code if code < 0 else code
            if self.shims[pid].status_fd is not None:
                self.decide(pid)        # it also finishes
            else:
                self.finish(pid)
