"""The spawner: a single-threaded process that clones containers for a threaded daemon.

Why a separate process
----------------------
fork(2) in a multi-threaded Python process copies only the calling thread; locks held by the
others stay locked forever in the child, so running Python after such a fork can deadlock
(and `preexec_fn` is documented as unsafe with threads). setns(2) into a user namespace is
refused outright to a multi-threaded process. So *one* single-threaded helper process does
every fork: forking an already-running interpreter costs well under a millisecond; a fresh
`python -m ...` per container would cost 15-65 ms.

Which interpreter forks matters too: a fork costs with what the forking process has mapped
(page tables copied, pages copied on write as the child's Python touches them, all torn down by
the init's execve). So the spawner is not a fork of the daemon but a fresh `python3 -S -E -m
minidock.spawnerloop` (the daemon's own interpreter, started right after
`userns.enter_daemon_userns()`, in the daemon's user and mount namespaces, which execve keeps)
that imports only what starting a process needs: ~6 MB of anonymous memory where the daemon,
having imported the whole API, has ~13 MB (RssAnon in /proc/PID/status). Measured here: ~2 ms
less CPU and ~3 ms less latency per container start. It boots in ~25-40 ms beside the daemon's
own start-up; requests sent meanwhile wait in its socket. `ps` shows it as `python3 -S -E -m
minidock.spawnerloop SOCKET_FD LIFELINE_FD DAEMON_PID`.

The process tree
----------------

    daemon (threads)     subreaper, parent   in the daemon's user + mount namespace
      |- spawner         select() loop       PR_SET_PDEATHSIG(SIGKILL) on the daemon;
      |    |                                 a mount namespace of its own (spawnerloop.py)
      |    `- starter    one per exec        a fork of the spawner, gone within milliseconds
      |- init            PID 1 of a container: cloned by the spawner, the daemon's child from birth
      |- pooled init     an init cloned ahead of the next run request, idle (`ps`: minidock-pool)
      `- exec'd process  forked by a starter, re-parented to the daemon when the starter exits

A container's init is made by *one* clone(2) in the spawner (ns.spawn_container): CLONE_PARENT,
so its parent is the spawner's parent, the daemon, and the namespace flags, so it is born PID 1
of a new pid namespace, in new mount, uts, ipc (and net) namespaces. Nothing stands between the
daemon and its containers, and nothing has to be re-parented: no process of the engine stays
behind per running container (Docker keeps a containerd-shim for each; this project used to
keep a forked Python shim, ~1.4 MB of private pages, and then a short-lived starter per start).
After the first run request the spawner keeps one init cloned *ahead* (the pool,
spawnerloop.py), idle in fresh namespaces and blocked on a socketpair with the spawner: the next
run that wants a network namespace of its own is sent to it, so the clone is off its critical
path. It is the daemon's child from birth like any init, and becomes that container's init.
An exec'd process still needs a starter: joining a pid namespace only places the *children* of
the process that joins it, and the spawner cannot join one and come back (setns(2) back to its
own pid namespace -- the host's, owned by the initial user namespace -- is EPERM rootless). So
the starter joins the container's namespaces, forks the process, reports its pid and exits;
the kernel re-parents the orphan to the nearest subreaper above it, the daemon
(PR_SET_CHILD_SUBREAPER; the spawner is deliberately not one).

Who dies with whom. The spawner holds PR_SET_PDEATHSIG(SIGKILL) on the daemon. A container
init or exec'd process holds one too, on the daemon (ns.DaemonTie): armed as the last step
before execve (a credential change clears it) -- for an exec'd process once its starter is
gone (re-parenting fires an armed death signal) -- and re-checked against the lifeline -- a
pipe whose only write end the daemon holds, at EOF exactly when the daemon is gone -- so a
daemon that died before the prctl is seen too. The kernel sends the signal when the parent
*thread* exits: an init's is the daemon thread that started its spawner (the main thread for
the first spawner, the supervisor thread for a restarted one: both live as long as the daemon),
a re-parented process's is the daemon's first live thread, the main thread. The death of a pid
namespace's init kills every process in it. So SIGKILL of the daemon leaves no container
running; SIGKILL of the spawner touches no container at all (they are not its children, and
hold no signal on it).

Who reaps. The daemon: the spawner's reply `{"id", "pid"}` is sent only once the process is
surely the daemon's child -- an init from its clone, an exec'd process once its starter is
reaped -- and its exec under way (the status pipe at EOF); the supervisor thread then opens a
pidfd for it, waits in its one selector for it to become readable, and waitpid()s that one
pid, reporting `on_exit(pid, code)` (code: the exit status, or 128+signal, Docker's
convention). The daemon never calls waitpid(-1), which would steal the children of
`subprocess`. An exec'd process must be reaped by the daemon too, or its container's init,
dying, would wait for ever for it (zap_pid_ns_processes). A start that failed may leave a dead
init behind: its pid comes with the error, and it is reaped without a report. A pooled init
is the daemon's child too, and not a container until a run's answer names it: the spawner tells
us each one it clones (`{"pooled": P}` with a descriptor of its end of P's socketpair, kept in
`_pool`, `pooled_inits()`). A run it fits is sent to P from here (`_run_pooled`), P's status pipe
read here, and P watched once its start is decided; one the spawner gives up -- it died while
idle, or we dropped it -- it names in `{"reap": P}`, and we reap it without a report, as one
that could not take our request. When the spawner dies, its pooled inits read EOF on their
socketpair once our descriptors of it are closed too, and exit: we watch and reap them the same
way; close() kills and reaps any left.

Supervision. The supervisor thread sees the spawner's socket reach EOF, reaps the spawner and
logs how it ended (the spawner itself writes its traceback to stderr, the daemon's log, before
exiting 1), fails the requests in flight with 503, and starts a new spawner -- not with fork(),
unsafe in a threaded process, but the same way as the first one: a fresh `python -S -E -m
minidock.spawnerloop` given the socket and lifeline descriptors, and a descriptor of the first
spawner's mount namespace, kept since its first answer, to join (spawnerloop.main). Running containers need
nothing: they were never the spawner's. A starter caught in flight is re-parented to us and
reaped as a stray (it is in the dead spawner's session), as is an init that died in set-up
unreported. The restarted spawner's death signal, and that of every init it clones, is tied to
the supervisor thread, which lives as long as the daemon. While it is down, `health()` says why (/_ping answers 503
"degraded", /info warns), and new requests wait a little for it.

The spawner process's own side -- its select() loop, the clones and starters, the wire both sides
speak -- is spawnerloop.py; this module is the daemon's: the `Spawner` handle, requests and
their answers, exits, and supervision.

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
                      | {"netns_pid": keeper TID, "endpoints": [...]} (network.attach_container)
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
    masked_paths, readonly_paths  [str] override Docker's lists (mounts.MASKED_PATHS, ...)
    staging           str   run, optional: an empty directory of the daemon's, where the
                      spawner's pooled inits make /proc, /dev and /sys ahead of a request (in
                      their own mount namespaces: it stays empty to everyone else)
    security_opt      [str] Docker's SecurityOpt: `seccomp=unconfined`, `seccomp=<JSON profile>`,
                      `no-new-privileges`; without a seccomp entry the built-in profile applies
                      (seccomp.py), compiled by Spawner.run/exec into `seccomp` (hex of the
                      BPF program, or None for unconfined) for ns.install_seccomp

For exec, the daemon passes the container's own cap_add/cap_drop/privileged/no_new_privileges
(Docker applies the container's settings to exec'd processes), the exec's user (default: the
container's), env (container env + exec env) and cwd; `rootfs` only if `user` needs resolving.

Failures: run/exec raise syscalls.StartError with `exit_code` 127 (command not found), 126 (not
executable / permission denied) or 125 (a named set-up step failed: `step`, `errno`). The
message keeps the words the docker CLI greps for to choose its own exit code.
"""
import errno
import itertools
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

from . import errors, network, ns, seccomp, syscalls
from .spawnerloop import (MAX_PART, POOL_SEND_TIMEOUT, POOL_SHAPE, MessageReader, exit_code,
                          reported_error, send_message)

log = logging.getLogger("minidock.spawner")

_RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)   # after deaths in quick succession
UNKNOWN_EXIT = 255                      # a process whose end we could not observe


def process_bound():
    """The RLIMIT_NPROC a container gets unless it sets its own (--ulimit nproc), or None.

    Without a pids cgroup this is the bound that keeps a fork bomb from starving the daemon.
    Since Linux 5.14 RLIMIT_NPROC is counted per user *per user namespace* (ucounts) and checked
    at every level up to the host, against the limit each namespace's creator had. Containers
    run in the daemon's user namespace as its uids, so their processes share one count with the
    daemon's own threads (uid 0 there): each container may take the count up to the daemon's
    limit minus a reserve, and the daemon, checked against its full limit, keeps the reserve
    for its threads, its spawner and the `docker stop` that ends the bomb. A container in its
    own nested user namespace (a user the daemon's map lacks) is counted apart: a bound of its
    own. Measured on this 6.x kernel: two nested namespaces with RLIMIT_NPROC 100 each got 99
    processes each, and the parent, limited to 300, could still fork."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return None
    reserve = max(64, soft // 8)
    return max(soft - reserve, 1)


def reap_stray_zombies(sessions, watched=()):
    """Reap dead children of ours that no one else will: returns their pids.

    After a spawner died, we (a subreaper) inherit the starters it had in flight, and the
    inits it had cloned (ours from birth) are still in set-up; their requests failed, nobody
    waits for them, and they would stay zombies for ever. They are in the dead spawner's
    session (it called setsid(), so the session id is its pid), as is an init that failed
    before its own setsid(). Everything else stays untouched: the processes
    we watch are mostly in sessions of their own, and the children `subprocess` makes and
    waits for itself are in ours (reaping one would make its wait fail and report code 0).
    So: zombie children whose session is one of `sessions`, but none of `watched` -- the
    pids reaped by pidfd with their exit reported: a container's init under --init (pid1.py)
    stays in the spawner's session, and taking its status here would lose its exit code."""
    me = os.getpid()
    children = set()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                children.update(int(p) for p in f.read().split())
        except OSError:
            continue
    reaped = []
    for pid in sorted(children):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])     # after "(comm)": state ppid pgrp session
        if state != "Z" or session not in sessions or pid in watched:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except ChildProcessError:
            pass
    return reaped


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"



class _Pending:
    """A run/exec request waiting for the spawner's answer (set by the supervisor thread)."""

    def __init__(self):
        self._done = threading.Event()
        self.reply = None

    def answer(self, reply):
        self.reply = reply
        self._done.set()

    def wait(self):
        self._done.wait()
        return self.reply


class _PoolEntry:
    """A pooled init the spawner told us of: its pid, our descriptor of the spawner's end of
    its socketpair, and the network.VethAhead.key of the veth it made (None for none)."""

    def __init__(self, pid, sock, veth):
        self.pid, self.sock, self.veth = pid, sock, veth


def _read_status(fd):
    """What a run's init writes on its status pipe (spawnerloop.py), up to its `R` or the
    pipe's end; closes `fd`."""
    buf = b""
    try:
        while not buf.endswith(b"R\n"):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    return buf


class Spawner:
    """The daemon's handle on the spawner process: requests, exits, and supervision. Thread-safe."""

    @classmethod
    def start(cls, on_exit=None):
        """Start the spawner. Call while the daemon is single-threaded (after enter_daemon_userns):
        its death signal is tied to the thread that starts it, which must live as long as the
        daemon, and this one, the main thread, does.

        `on_exit(pid, code)` is called from the supervisor thread whenever a process started by
        run or exec ends (keep it short: it delays every later message). Without a callback,
        codes are kept until `wait(pid)` takes them; use one style or the other.
        """
        # Every process a starter forks is re-parented to us when the starter exits, and a
        # container init is cloned as our child: we are the parent of every container init
        # and exec'd process, and reap them.
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        # The lifeline: only this process holds the write end, so its read end reaches EOF
        # exactly when the daemon is gone, however it died. A started process checks it
        # right after arming its death signal (ns.DaemonTie).
        lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
        # Not forked from us but a fresh interpreter, as a restarted one is (see _exec_spawner):
        # it starts while we build the engine; a request sent meanwhile waits in its socket.
        pid, mine = _exec_spawner(lifeline_r)
        log.info("spawner started (pid %d)", pid)
        return cls(pid, mine, (lifeline_r, lifeline_w), on_exit)

    def __init__(self, pid, sock, lifeline, on_exit=None):
        self.pid = pid                  # the spawner's pid (changes when it is restarted)
        self._sock = sock
        self._lifeline_r, self._lifeline_w = lifeline
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending = {}              # request id -> _Pending
        self._codes = {}                # pid -> exit code, until wait() takes it
        self._live = set()              # pids started, ours to reap, not yet ended
        self._watched = {}              # pidfd -> (pid, report its exit?)
        self._pidfds = {}               # pid -> its pidfd in _watched
        self._polled = {}               # pid -> report? (no pidfd to be had: polled each second)
        self._pool = []                 # _PoolEntry: the spawner's idle pooled inits (our children)
        self._to_watch = []             # (pid, report) for the supervisor thread to watch
        self._dead_spawners = set()     # their pids = their session ids: strays' sessions
        self._undelivered = []          # (pid, code) whose on_exit callback failed
        self._reader = MessageReader()
        self._closing = threading.Event()
        self.state = "running"          # running | restarting | closed
        self.down_reason = ""
        self.restarts = 0
        self._started_at = time.monotonic()
        self._quick_deaths = 0
        # The first spawner's own mount namespace, for a restarted spawner to join
        # (spawnerloop.main): None until known, False where it has none (old kernel).
        self._mntns = None
        self._last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        # Wakes the supervisor thread for a pid another thread wants watched (_watch_later).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        # The supervisor thread reads the spawner's messages, reaps started processes and restarts
        # the spawner. It lives as long as this handle: a restarted spawner's death signal is
        # tied to the thread that started it.
        self._thread = threading.Thread(target=self._supervise, name="spawner-supervisor",
                                        daemon=True)
        self._thread.start()

    # -- requests --

    def run(self, spec, stdin, stdout, stderr):
        """Start a container; returns the host pid of its init once only its execve is left
        (spawnerloop.py: the init's `R`).

        Raises syscalls.StartError (exit_code 125/126/127) if set-up failed or the command is
        missing or not executable (what only execve finds is the container's: ns._exec),
        errors.InvalidParameter for a bad spec, errors.Unavailable if the spawner is down."""
        if not spec.get("rootfs") or not spec.get("argv"):
            raise errors.InvalidParameter("run needs rootfs and argv")
        spec = self._prepare(spec)
        # The rootfs travels as a detached copy of its mount tree (the spawner's mount
        # namespace does not see the daemon's overlays: spawnerloop.own_mount_namespace).
        try:
            tree = syscalls.open_tree(spec["rootfs"])
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM):    # too old a kernel: the path only
                return self._request({"op": "run", "spec": spec}, [stdin, stdout, stderr])
            raise syscalls.StartError(f"attach the rootfs: {exc}", "attach the rootfs",
                                      exc.errno or 0) from exc
        fds = [stdin, stdout, stderr, tree]
        try:
            entry = self._claim_pooled(spec.get("network", "none"))
            if entry is not None:
                pid = self._run_pooled(entry, spec, fds)
                if pid is not None:
                    return pid
            return self._request({"op": "run", "spec": spec}, fds)
        finally:
            os.close(tree)

    def exec(self, init_pid, spec, stdin, stdout, stderr):
        """Run a process inside the running container whose init is `init_pid`; its host pid."""
        if not spec.get("argv"):
            raise errors.InvalidParameter("exec needs argv")
        return self._request({"op": "exec", "init_pid": int(init_pid),
                              "spec": self._prepare(spec)}, [stdin, stdout, stderr])

    def wait(self, pid, timeout=None):
        """The exit code of `pid` (its own, or 128+signal); None on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._codes, timeout):
                return None
            return self._codes.pop(pid)

    def pooled_inits(self):
        """The pids of the spawner's idle pooled inits, as it last told us (spawnerloop.py,
        "The pool"): our children, not containers (yet)."""
        with self._lock:
            return sorted(entry.pid for entry in self._pool)

    def health(self):
        """None while the spawner runs, else why it does not (for /_ping and /info)."""
        with self._lock:
            return self.health_locked()

    def health_locked(self):
        return None if self.state == "running" else (self.down_reason or self.state)

    def close(self, timeout=5.0):
        """Stop the spawner and SIGKILL every process it started that still runs (their death
        signal would only fire when this process exits); reap them."""
        self._closing.set()
        with self._lock:
            self.state = "closed"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(10)
        with self._lock:
            live = set(self._live)
        # And the processes reaped without a report: the spawner's pooled inits (exiting at
        # their socket's EOF) and failed starts.
        live |= {pid for pid, report in self._watched.values() if not report}
        live |= {pid for pid, report in self._polled.items() if not report}
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Reap in any order: a container's init finishes dying only once its exec'd processes,
        # our children too, are reaped.
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            for pid in list(live):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    live.discard(pid)
                    continue
                if done:                # not reported: the engine is shutting down
                    live.discard(pid)
                    self._ended(pid, exit_code(status), False)
            if live:
                time.sleep(0.01)
        for fd in list(self._watched):
            os.close(fd)
        self._watched.clear()
        self._pidfds.clear()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)  # a process still arming its death signal sees EOF
            self._lifeline_w = None
        if self._mntns:
            os.close(self._mntns)
            self._mntns = False

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
        caps = ns.capability_set(spec.get("cap_add"), spec.get("cap_drop"),
                                 spec.get("privileged"))                # validates names
        spec["_caps"] = caps            # the child need not work it out again
        if spec.get("rootfs"):          # nor resolve the path (the init binds and pivots there)
            spec["rootfs"] = os.path.realpath(spec["rootfs"])
        # Docker's SecurityOpt: the seccomp profile (compiled here, in the daemon, so a bad
        # profile is a 400 before anything forks) and no-new-privileges.
        choice, nnp = seccomp.parse_security_opt(spec.get("security_opt"))
        if nnp:
            spec["no_new_privileges"] = True
        program = seccomp.filter_for(spec.get("security_opt"),
                                     {"CAP_" + ns.CAPABILITIES[c] for c in caps},
                                     bool(spec.get("privileged")))
        spec["seccomp"] = program.hex() if program else None
        for u in spec.get("ulimits") or []:
            if u.get("name") not in ns.RLIMITS:
                raise errors.InvalidParameter(f"invalid ulimit type: {u.get('name')}")
        bound = process_bound()
        if bound is not None and not any(u.get("name") == "nproc" for u in spec.get("ulimits") or []):
            spec["ulimits"] = list(spec.get("ulimits") or []) + [
                {"name": "nproc", "soft": bound, "hard": bound}]
        spec["_last_cap"] = self._last_cap
        return spec

    def _claim_pooled(self, net):
        """The pooled init a run with network `net` goes to, out of the pool now; None when
        there is none, or the run keeps or joins a network namespace. One that made a veth for
        another network (or for none) is given up instead: removing its veth would cost the
        start a grace period (network.VethAhead), and the spawner's next refill follows this
        run."""
        if not ns.own_netns(net):
            return None
        with self._lock:
            if not self._pool or self.state != "running":
                return None
            entry = self._pool.pop(0)
        if entry.veth is not None and network.VethAhead.key(net) != entry.veth:
            entry.sock.close()
            self._tell({"op": "drop", "pid": entry.pid})
            return None
        return entry

    def _run_pooled(self, entry, spec, fds):
        """Hand a run to a pooled init ourselves (spawnerloop.py, "The pool"): the spec, and as
        SCM_RIGHTS its stdio, the status pipe's write end and the rootfs tree; then read the
        status pipe here, up to the init's `R`. Returns the init's pid; None when it could not
        take the run (it died, or is stopped: given up), for the caller to have one cloned.

        The spawner hears of it first (`took`): the init closes its end of the socketpair once
        it has read the request, and that end-of-file must not look like a death to the
        spawner, which still watches its own end (spawnerloop._Server.on_pooled_gone)."""
        pid = entry.pid
        shape = {k: spec[k] for k in POOL_SHAPE if k in spec}
        told = self._tell({"op": "took", "pid": pid, "spec": shape})
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            if not told:
                raise OSError(errno.EPIPE, "the spawner is down")
            entry.sock.settimeout(POOL_SEND_TIMEOUT)
            send_message(entry.sock, {"spec": spec}, list(fds[:3]) + [status_w] + list(fds[3:4]))
        except Exception as exc:        # EPIPE: it died; a timeout: it is stopped
            os.close(status_r)
            log.warning("the pooled init (pid %d) could not take a request (%s); replacing it",
                        pid, exc)
            self._give_up(pid)
            if told:
                self._tell({"op": "done", "pid": pid})
            return None
        finally:
            os.close(status_w)
            entry.sock.close()
        status = _read_status(status_r)
        self._tell({"op": "done", "pid": pid})      # the spawner may refill its pool now
        if b"A" not in status.splitlines():
            # Killed a moment before, it still accepted the message until its exit closed its
            # socket, and with it the status pipe's write end, unread.
            log.warning("the pooled init (pid %d) died before it took a request; cloning one "
                        "for it", pid)
            self._give_up(pid)
            return None
        error = reported_error(status)
        if error is None and not status.endswith(b"R\n"):
            error = {"message": "the container process died during set-up", "exit_code": 125}
        # Ours to reap either way; its exit is a container's only if it started.
        self._watch_later(pid, report=error is None)
        if error is not None:
            raise syscalls.StartError.from_record(error)
        return pid

    def _give_up(self, pid):
        """A pooled init that will not run anything: make sure it ends, and reap it."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._watch_later(pid, report=False)

    def _tell(self, msg):
        """Send the spawner a message that has no answer; False when it is down."""
        with self._lock:
            sock = self._sock if self.state == "running" else None
        if sock is None:
            return False
        try:
            with self._send_lock:
                send_message(sock, msg)
        except OSError:
            return False
        return True

    def _watch_later(self, pid, report):
        """_watch() for another thread than the supervisor, which owns the selector: it opens
        the pidfd when it next wakes (a process that ended meanwhile waits for it, a zombie)."""
        with self._lock:
            if report:
                self._live.add(pid)
            self._to_watch.append((pid, report))
        try:
            os.write(self._wake_w, b"w")
        except OSError:                 # BlockingIOError: a wake-up is pending already; EBADF:
            pass                        # closed (nothing is watched any more)

    def _watch_queued(self):
        syscalls.drain(self._wake_r)
        with self._lock:
            todo, self._to_watch = self._to_watch, []
        for pid, report in todo:
            self._watch(pid, report)

    def _request(self, msg, fds):
        pending = _Pending()
        with self._cond:
            # A spawner being restarted is back within moments: wait a little for it rather
            # than fail the request.
            self._cond.wait_for(lambda: self.state != "restarting", timeout=15)
            if self.state != "running":
                raise errors.Unavailable(f"the spawner process is down: {self.health_locked()}")
            msg["id"] = rid = next(self._ids)
            self._pending[rid] = pending
            sock = self._sock
        # Sending has its own lock: the supervisor thread never waits for a sender, so it
        # keeps reading replies while a large message goes out part by part.
        try:
            with self._send_lock:
                send_message(sock, msg, fds)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(rid, None)
            if isinstance(exc, OSError):
                raise errors.Unavailable(f"the spawner process is down: {exc}")
            raise
        reply = pending.wait()
        if "error" in reply:
            if reply["error"].get("unavailable"):
                raise errors.Unavailable(reply["error"]["message"])
            raise syscalls.StartError.from_record(reply["error"])
        return reply["pid"]

    def _supervise(self):
        while True:
            if self._undelivered:
                self._retry_undelivered()
            if self._dead_spawners:     # a spawner died: strays of it may need reaping
                watched = {pid for pid, _ in self._watched.values()} | set(self._polled)
                for pid in reap_stray_zombies(self._dead_spawners, watched):
                    log.info("reaped stray process %d left by a dead spawner", pid)
            if self._polled:
                self._poll_unwatched()
            timeout = (1.0 if self._undelivered or self._polled else
                       5.0 if self._dead_spawners else None)
            try:
                events = self._sel.select(timeout)
            except OSError as exc:      # nothing sane to do but log and go on
                log.error("spawner supervisor: select failed: %s", exc)
                time.sleep(0.5)
                continue
            for key, _ in events:
                if key.data is None:
                    if key.fileobj is not self._sock:
                        continue        # a socket replaced earlier in this batch
                    if self._on_readable():
                        continue
                    self._spawner_gone()
                    if self._closing.is_set():
                        return
                    self._restart()
                    if self._closing.is_set():
                        return
                elif key.data == "wake":
                    self._watch_queued()
                else:
                    self._reap_watched(key.fd)

    def _on_readable(self):
        """Read one datagram; False when the spawner is gone."""
        try:
            data, fds = syscalls.recv_fds(self._sock, MAX_PART + 1, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        done = self._reader.feed(data, fds)
        if done is not None:
            msg, fds = done
            try:
                self._dispatch(msg, fds)
            except Exception:           # one bad message must not end the supervisor
                log.exception("spawner supervisor: bad message %.200r", msg)
            finally:
                for fd in fds:          # what _dispatch kept, it took out of the list
                    os.close(fd)
        return True

    def _keep_mount_namespace(self):
        """After the spawner's first answer (it made its mount namespace before serving), hold
        a descriptor of that namespace: it stays as clean as it was made for a successor."""
        try:
            fd = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            os.close(fd)                # it stayed in ours
            self._mntns = False
        else:
            self._mntns = fd

    def _dispatch(self, msg, fds):
        if self._mntns is None:
            self._keep_mount_namespace()
        if "id" not in msg:             # news of the spawner's pool, answering no request
            self._pool_news(msg, fds)
            return
        # The process is our child by now (cloned as ours, or its starter reaped before the
        # answer): watch it before anyone can be told its pid. A failed start's process is reaped too.
        if msg.get("pid"):
            self._watch(msg["pid"], report="error" not in msg)
        with self._lock:
            pending = self._pending.pop(msg.get("id"), None)
        if pending is None:
            log.error("spawner supervisor: a reply nobody waits for: %.200r", msg)
            return
        pending.answer(msg)

    def _pool_news(self, msg, fds):
        """`{"pooled": P, "veth": key}` with a descriptor of the spawner's end of P's
        socketpair: the spawner cloned P ahead of a run request (and made a veth for `key`);
        `{"reap": P}`: it gave P up (it died while idle, or we dropped it), reap it, report
        nothing."""
        if "pooled" in msg:
            pid = int(msg["pooled"])
            if not fds:                 # (our descriptors ran out): no use to us
                log.warning("the pooled init (pid %d) came without its socket; dropping it", pid)
                self._tell({"op": "drop", "pid": pid})
                return
            veth = msg.get("veth")
            entry = _PoolEntry(pid, socket.socket(fileno=fds.pop(0)), tuple(veth) if veth else None)
            with self._lock:
                self._pool.append(entry)
        elif "reap" in msg:
            pid = int(msg["reap"])
            with self._lock:
                gone = [e for e in self._pool if e.pid == pid]
                self._pool = [e for e in self._pool if e.pid != pid]
            for entry in gone:
                entry.sock.close()
            self._watch(pid, report=False)
        else:
            log.error("spawner supervisor: an unknown message %.200r", msg)

    def _exited(self, pid, code):
        with self._cond:
            if self._on_exit is None:   # with a callback nobody wait()s: keep nothing
                self._codes[pid] = code
            self._cond.notify_all()
        if self._on_exit:
            self._deliver(pid, code)

    def _deliver(self, pid, code):
        # An exit must never be lost: if the callback fails (say, it cannot start a thread
        # while a fork bomb holds every process slot), keep the report and retry each second.
        try:
            self._on_exit(pid, code)
        except Exception:
            log.exception("delivering the exit of process %d failed; retrying", pid)
            self._undelivered.append((pid, code))

    def _retry_undelivered(self):
        pending, self._undelivered = self._undelivered, []
        for pid, code in pending:
            self._deliver(pid, code)

    def _spawner_gone(self):
        """The spawner died (or was closed): log why, fail its pending requests."""
        self._sel.unregister(self._sock)
        self._sock.close()
        try:
            _, status = os.waitpid(self.pid, 0)
            how = _describe_status(status)
        except ChildProcessError:
            how = "is gone"
        closing = self._closing.is_set()
        with self._cond:
            self.state = "closed" if closing else "restarting"
            self.down_reason = f"the spawner (pid {self.pid}) {how}"
            pending = list(self._pending.values())
            self._pending.clear()
            running = len(self._live)
            self._reader = MessageReader()
            self._cond.notify_all()
        self._dead_spawners.add(self.pid)
        # Its idle pooled inits see EOF on their socketpair once our descriptors of it are
        # closed too, and exit: reap them as they do.
        with self._lock:
            pool, self._pool = self._pool, []
        for entry in pool:
            entry.sock.close()
            self._watch(entry.pid, report=False)
        if not closing:
            log.error("%s; restarting it. %d running processes keep running; %d requests "
                      "in flight failed", self.down_reason, running, len(pending))
        for p in pending:
            p.answer({"error": {"message": f"{self.down_reason} during this request",
                                "unavailable": True}})

    def _watch(self, pid, report):
        """Reap `pid`, our child, when it ends: by its pidfd, or polled if none can be had.
        Once: a pooled init that died as a start took it is given up by that start and
        reported by the spawner too; a second watch only adds the report."""
        if report:
            with self._lock:
                self._live.add(pid)
        if pid in self._pidfds:
            fd = self._pidfds[pid]
            self._watched[fd] = (pid, report or self._watched[fd][1])
            return
        if pid in self._polled:
            self._polled[pid] = report or self._polled[pid]
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:      # reaped already: a second watch, after the first one's
            with self._lock:
                self._live.discard(pid)
            return
        except OSError as exc:          # EMFILE, say: poll it each second instead
            log.warning("no pidfd for process %d (%s); polling it", pid, exc)
            self._polled[pid] = report
            return
        self._watched[fd] = (pid, report)
        self._pidfds[pid] = fd
        self._sel.register(fd, selectors.EVENT_READ, "child")

    def _reap_watched(self, fd):
        pid, report = self._watched[fd]
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            code = exit_code(status) if done else None
        except ChildProcessError:       # not ours after all: its end cannot be observed
            done, code = pid, UNKNOWN_EXIT
        del self._watched[fd]
        self._pidfds.pop(pid, None)
        self._sel.unregister(fd)
        os.close(fd)
        if not done:                    # readable yet not a zombie: should not happen, but
            self._polled[pid] = report  # never spin on it
            return
        self._ended(pid, code, report)

    def _poll_unwatched(self):
        for pid, report in list(self._polled.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                code = exit_code(status) if done else None
            except ChildProcessError:
                done, code = pid, UNKNOWN_EXIT
            if done:
                del self._polled[pid]
                self._ended(pid, code, report)

    def _ended(self, pid, code, report):
        with self._cond:
            self._live.discard(pid)
        if report:
            self._exited(pid, code)

    def _restart(self):
        """Start a new spawner, with a growing pause when they keep dying."""
        if time.monotonic() - self._started_at < 60:
            self._quick_deaths += 1
        else:
            self._quick_deaths = 0
        delay = _RESTART_DELAYS[min(self._quick_deaths, len(_RESTART_DELAYS) - 1)]
        while not self._closing.wait(delay):
            try:
                self._start_exec()
                return
            except OSError as exc:
                log.error("could not restart the spawner: %s", exc)
                delay = min(max(delay * 2, 1.0), 30.0)

    def _start_exec(self):
        """A fresh interpreter: fork() without exec in our threaded process would be unsafe."""
        pid, mine = _exec_spawner(self._lifeline_r, self._mntns or None)
        with self._cond:
            if self._closing.is_set():  # close() came while we were starting it
                mine.close()            # it reads EOF and exits; reap it
                os.waitpid(pid, 0)
                return
            self.pid = pid
            self._sock = mine
            self._sel.register(mine, selectors.EVENT_READ, None)
            self.state = "running"
            self.down_reason = ""
            self.restarts += 1
            self._started_at = time.monotonic()
            self._cond.notify_all()
        log.warning("spawner restarted (pid %d, restart %d)", pid, self.restarts)


def _exec_spawner(lifeline_r, mntns=None):
    """Start `python -S -E -m minidock.spawnerloop SOCKET_FD LIFELINE_FD DAEMON_PID [MNTNS_FD]`;
    returns (its pid, our end of its socket). `mntns`: the first spawner's mount namespace.

    A fresh interpreter rather than a fork of the daemon, for the first spawner as for a
    restarted one: smaller, so cheaper to fork (the module docstring), and the only safe way
    to start a process that runs Python from a threaded daemon.

    The same interpreter as ours (`sys.executable`), in our user and mount namespaces and with
    our credentials, which execve keeps (we are uid 0 of our namespace, so it keeps every
    capability too). `-S`: no site-packages scan; `-E`: no PYTHON* variable changes it. So the
    package is found through the working directory, which `-m` puts first on sys.path: its
    parent directory; the spawner then moves to our working directory (spawnerloop.main)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-E", "-m", "minidock.spawnerloop", str(theirs.fileno()),
             str(lifeline_r), str(os.getpid())] + ([str(mntns)] if mntns is not None else []),
            pass_fds=(theirs.fileno(), lifeline_r) + ((mntns,) if mntns is not None else ()),
            cwd=package_parent, stdin=subprocess.DEVNULL)
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    # We reap it ourselves with waitpid (subprocess would only reap it if polled).
    proc.returncode = 0                 # keeps Popen.__del__ from touching the pid later
    return proc.pid, mine
