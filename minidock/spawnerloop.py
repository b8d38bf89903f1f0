"""The spawner process: a single-threaded select() loop that clones containers, and the wire to the daemon.

Why the daemon needs this process, and who dies with whom, is told in spawner.py, the daemon's
side. This module is what runs *inside* the spawner, a fresh interpreter started as
`python -S -E -m minidock.spawnerloop SOCKET_FD LIFELINE_FD DAEMON_PID` (`main()`), first and
after a crash. It imports only what starting a process needs -- keep it so, in this module and
in the modules it imports: every container start clones this process.

The loop
--------
`_Server.serve()` waits, with select(2), on the daemon's socket, on SIGCHLD (a self-pipe), on
every start's status pipe and on the socket of each pooled init (see "The pool"). A run request
that no pooled init can take clones the container's init straight into its namespaces, as the
daemon's child (ns.spawn_container: clone(2) with CLONE_PARENT, through
syscalls.clone_process), and is answered once the init writes `R` on the status pipe: every
step is done, only its execve is left (ns._exec). An exec forks a *starter* (`start()`); the
starter joins the namespaces, forks the exec'd process (ns.enter_container), writes `P<pid>` on
the status pipe and exits. The orphan is re-parented to the daemon, the subreaper above us (we
are not one), and the daemon reaps it; that request is answered once the status pipe is at EOF
*and* the starter is reaped -- only then is the process surely the daemon's child. Either way
the spawner keeps nothing per running container.

The spawner works in a mount namespace of its own (`own_mount_namespace`), a copy of the
daemon's at its start: each init copies it, so it must not grow with the daemon's overlays; a
run request brings the container's rootfs as a fourth descriptor, a detached mount tree.

The pool
--------
Most of what the spawner spends on a start is the clone itself: copying its page tables and
creating the namespaces (a network namespace alone is ~0.5 ms of the kernel's setup_net), ~1.5
ms of CPU on the critical path of `docker start`. None of it depends on the request when the
container gets a network namespace of its own (networks "none" and the bridge form
`{"netns_pid": ...}`), so the spawner does it ahead: after the first run request (an engine
that never ran a container has no pool: its idle memory and start-up do not change), whenever
its loop has nothing else to do -- no start in flight, no event for a moment (REFILL_IDLE) --
it clones POOL_SIZE inits ahead (ns.spawn_pooled_init), each with its own SOCK_SEQPACKET
socketpair, and gives the daemon a descriptor of its end: the daemon sends the run to the
pooled init itself, and reads its status pipe itself, so a pooled start never waits for this
loop (two process hops and a decoding of the spec fewer: `docker start` ~0.7 ms sooner):

    spawner                        daemon (spawner.py)            pooled init (the daemon's child)
      socketpair(mine, theirs)
      clone(CLONE_PARENT|NEWNS|NEWPID|NEWUTS|NEWIPC|NEWNET) -> P
                                                                    closes every descriptor but
                                                                    0-2, the lifeline and
                                                                    `theirs`; prctl(PR_SET_NAME,
                                                                    minidock-pool); death signal
                                                                    armed on the daemon; lo up;
                                                                    /proc, /dev, /sys made under
                                                                    the last spec's "staging"
                                                                    directory (`staging()`); the
                                                                    last run's veth, if any
      {"pooled": P, "veth": key} + mine -> (SCM_RIGHTS)             recv(theirs) ... blocks
    a run request the pooled init fits:
      <- {"op": "took", "pid": P, "spec": {its shape}}
                                     mine <- {"spec": ...} + stdio, status pipe's write end,
                                             rootfs tree (SCM_RIGHTS)
                                                                    recv returns: `A` on the
                                                                    status pipe, then what a
                                                                    directly cloned init does
                                     status pipe -> `R`  <-------- from its first step
      <- {"op": "done", "pid": P}    answers the start with P

`took` comes first, before the request: the init closes `theirs` once it has read the request,
and the spawner, which still watches `mine` (below), must not take that end-of-file for a
death. The daemon's `took` is in the spawner's socket before the init can even read its
request, so `on_pooled_gone` reads the daemon's messages first, and a taken init is not
mourned. `done` lets the pool be refilled once the start is decided (a clone meanwhile would
slow the start down), as after a start of our own.

The kernel's file systems a container sees need nothing of it but the namespaces they show,
so a pooled init mounts them ahead too, with Docker's masked and read-only paths, on a tmpfs
over the directory the daemon names in its run specs (mounts.stage_kernel_mounts: ~35 mounts),
and moves the three trees into the rootfs of a request they fit (ns.StagedMounts; a
privileged container, or a /dev/shm size other than the last run's, mounts its own). When the
last run had a network endpoint, the pooled init also makes its veth ahead, on that bridge
(network.VethAhead); only a run whose first endpoint is on the same bridge is handed to it
(the daemon's `_claim_pooled`): for any other, it is given up, quietly (`{"op": "drop"}`), and
the run is cloned directly.

The spec travels as JSON, so what prepare_in_spawner makes (the seccomp program as the
kernel's struct, a ctypes object) is made by the pooled init itself; the daemon's id maps it
inherited already. A request that does not fit ("host", `{"join_pid": ...}`), one that finds the
pool empty (parallel starts), or one whose pooled init cannot take it comes to us and takes the
direct clone above, transparently: a run that reaches this loop is always cloned. "Cannot take
it": the send fails (it died, or is stopped), or -- a pooled init killed a moment before still
accepts the message until its exit closes its socket -- the status pipe reaches EOF without the
`A` a pooled init writes first thing on taking a request (the daemon keeps the request and its
descriptors until then, and sends it to us).
Nothing of a user's runs in a pooled init before its request: until then it has only its fresh
namespaces, and the spawner's memory (shared copy-on-write).

A pooled init's socket never carries anything back, so readable means EOF: it died while idle.
The spawner logs it on stderr (the daemon's log), closes its end, tells the daemon
`{"reap": P}` (P is the daemon's child: only the daemon may wait for it) and clones a new one
when next idle. When the spawner dies, each pooled init reads EOF and exits 0; the daemon,
which knows their pids from `{"pooled": P}`, reaps them (spawner.py). When the daemon dies,
their death signal kills them, as it kills containers. What you can observe, after a first
`docker run`: `ps -o pid,ppid,comm` shows the idle init as `minidock-pool`, the daemon's child,
asleep in recv; `ls -l /proc/P/ns` shows pid, mnt, net, uts and ipc namespaces of its own;
`NSpid:` in /proc/P/status ends in 1. The next `docker run` has P as its container's init.

Inside the spawner, one bad event fails at most its own request: a fork() or clone() refused
with EAGAIN,
no descriptor for a status pipe, a malformed message. A status pipe closed while handling an
earlier event of the same select() batch (its starter was reaped and answered) is recognised
as stale by the record registered with it, even if a new pipe has reused its number.

The wire
--------
One SOCK_SEQPACKET unix socketpair. A message is JSON sent as parts of at most 48 KiB, each one
datagram: a flag byte (`M` more follows, `L` last) then the bytes. Parts keep any message the
API accepts (16 MiB bodies) under the socket buffer limit an unprivileged process cannot raise.

    daemon -> spawner   {"op": "run",  "id": N, "spec": {...}}               + 3 fds (SCM_RIGHTS),
                                                            and the rootfs tree (open_tree)
                        {"op": "exec", "id": N, "init_pid": P, "spec": {...}} + 3 fds
                        {"op": "took" | "done" | "drop", "pid": P, ...}   a pooled init's fate
                                                            (`pool_news`); no answer
    spawner -> daemon   {"id": N, "pid": P}           the command is being exec'd (a run: it
                                                      is about to be); P is now
                                                      the daemon's child, for it to reap
                        {"id": N, "error": {...}, "pid": P or null}
                                                      syscalls.StartError.to_record(); P: a
                                                      failed init the daemon must still reap
                        {"pooled": P, "veth": key}    a pooled init was cloned (no request),
                                                      with a descriptor of our end of its socket
                        {"reap": P}                   a pooled init was given up: reap it
    daemon -> pooled init    {"spec": {...}}          + stdio, the status pipe, the rootfs tree

Start status travels from the container init to the spawner (to the daemon, for a pooled
init it started: `_run_pooled` in spawner.py reads it the same way) over a close-on-exec pipe: a
starter writes `P<pid>` (a cloned init's pid is clone's result), a pooled init writes `A` as it
takes its request, the init writes `E<json>` if a step fails, and a run's init writes `R` when
only its execve is left. For an exec, EOF without an `E` means execve succeeded; a run is
answered at its `R` (runc's `start` returns at the same point), so the daemon's answer does not
wait for the kernel to tear down the init's copy of our memory and load the command. What
only execve can find wrong is then the started container's to report (ns._exec).

"""

import _signal                          # signal's C core (see ns.reset_signals)
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time

from . import errors, network, ns, syscalls   # noqa: F401  network: loaded once here, for every
                                                # container init that attaches to a bridge (ns.py)

# The wire: every datagram is one byte saying whether more of the message follows, then a part
# of the JSON. Parts stay well under any socket buffer limit (an unprivileged process cannot
# raise SO_SNDBUF past net.core.wmem_max), so a message of any size the API accepts fits.
MAX_PART = 48 * 1024
_MORE, _LAST = b"M", b"L"
MAX_MESSAGE = 64 * 1024 * 1024          # far above the API's 16 MiB body limit: a guard only

# Inits kept cloned ahead of run requests (see "The pool" above). One serves the sequential
# starts that matter for latency; parallel starts beyond it clone directly, as before.
POOL_SIZE = 1
# How long the loop must have had no event before it refills the pool. The refill (the clone,
# then the pooled init's own first steps) is ~3 ms of CPU that whatever runs meanwhile pays for
# on a busy 2-core machine. Right after a start's answer that is the rest of that start in the
# daemon; a moment later, the client's next request. Measured, scripts/bench lifecycle, 200 runs,
# three interleaved rounds, medians in ms (create / start / wait / delete):
#     no pool                 2.25 / 6.80-7.05 / 2.2 / 1.07
#     refill at once          2.12-2.34 / 6.38-6.77 / 2.1 / 1.03
#     refill after 4 ms idle  3.35-3.42 / 5.12-5.43 / 2.2 / 1.02
# The same total either way; the start itself, the step the pool is for, is 1.5 ms faster.
REFILL_IDLE = 0.004
# Pooled inits that may die while idle, between two run requests, before the pool waits for
# the next request to refill.
POOL_IDLE_DEATHS = 3
# How long a pooled init may take to accept a request before it is given up (it should be
# blocked in recv(2) already; one that was stopped would otherwise stall the whole loop).
POOL_SEND_TIMEOUT = 1.0
# The parts of a run's spec that shape the next pooled init (`staging()`): all the spawner needs
# to hear of a run the daemon hands to a pooled init itself (`{"op": "took"}`).
POOL_SHAPE = ("staging", "privileged", "shm_size", "network")
# How long a start the daemon handed to a pooled init may hold the refill back unannounced.
TAKEN_TIMEOUT = 2.0


def send_message(sock, obj, fds=()):
    """Send one JSON message as parts; the fds travel with the first part."""
    data = json.dumps(obj).encode()
    if len(data) > MAX_MESSAGE:
        raise errors.InvalidParameter(f"container settings too large ({len(data)} bytes; "
                                      f"limit {MAX_MESSAGE})")
    parts = [data[i:i + MAX_PART] for i in range(0, len(data), MAX_PART)] or [b""]
    for n, part in enumerate(parts):
        flag = _LAST if n == len(parts) - 1 else _MORE
        if n == 0 and fds:
            socket.send_fds(sock, [flag + part], list(fds))
        else:
            sock.send(flag + part)


class MessageReader:
    """Reassembles messages from parts, one received datagram at a time."""

    def __init__(self):
        self.parts = []
        self.size = 0
        self.fds = []
        self.too_large = False

    def feed(self, datagram, fds=()):
        """Add one datagram; returns (message, fds) when it completes one, else None.

        A message that cannot be parsed or is over MAX_MESSAGE comes back as
        ({"_invalid": reason}, fds) so the caller can fail that request alone."""
        self.fds += list(fds)
        flag, part = datagram[:1], datagram[1:]
        self.size += len(part)
        if self.size > MAX_MESSAGE:
            self.too_large = True
            self.parts = []
        elif not self.too_large:
            self.parts.append(part)
        if flag == _MORE:
            return None
        data, fds = b"".join(self.parts), self.fds
        too_large = self.too_large
        self.parts, self.size, self.fds, self.too_large = [], 0, [], False
        if flag != _LAST:
            return {"_invalid": f"unknown part flag {flag!r}"}, fds
        if too_large:
            return {"_invalid": f"message over {MAX_MESSAGE} bytes"}, fds
        try:
            msg = json.loads(data)
        except ValueError as exc:
            return {"_invalid": f"not JSON: {exc}"}, fds
        if not isinstance(msg, dict):
            return {"_invalid": "not a JSON object"}, fds
        return msg, fds


def reported_error(status):
    """The failure a start's status pipe reports (the record of its first `E` line, see
    "The wire"), or None."""
    for line in status.splitlines():
        if line.startswith(b"E"):
            try:
                return json.loads(line[1:])
            except ValueError:
                return {"message": "set-up failed (unreadable report)", "exit_code": 125}
    return None


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def exit_code(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class _Pooled:
    """An init cloned ahead of its run request (ns.spawn_pooled_init), waiting on a socketpair."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock                # the spawner's end; None once taken or gone


class _Start:
    """What the spawner keeps for one run/exec until its start is decided and answered."""

    def __init__(self, req_id, status_fd, pid=None):
        self.req_id = req_id
        self.status_fd = status_fd      # None once the status pipe reached EOF
        self.buf = b""
        self.pid = pid                  # run: the init's pid, known from clone(2)
        # The starter's exit code, once reaped; a run has no starter to wait for.
        self.starter_code = 0 if pid is not None else None


def spawner_main(sock, lifeline, daemon_pid, own_mntns=True):
    """The spawner process: serve until the daemon closes the socket. Never returns.

    A crash is logged with its traceback on stderr (the daemon's log) before exiting 1, so
    the daemon's "the spawner exited with status 1" has its explanation next to it."""
    code = 0
    try:
        _Server(sock, lifeline, daemon_pid, own_mntns).serve()
    except BaseException:
        code = 1
        try:
            import traceback            # only on these paths: the spawner starts without it
            sys.stderr.write(f"minidock spawner (pid {os.getpid()}) crashed:\n"
                             + traceback.format_exc())
            sys.stderr.flush()
        except BaseException:
            pass
    os._exit(code)


class _Server:
    """The spawner's single-threaded loop: requests in, forks, pipes and SIGCHLD."""

    def __init__(self, sock, lifeline, daemon_pid, own_mntns=True):
        self.own_mntns = own_mntns      # False: joined the first spawner's (main)
        self.sock = sock
        self.lifeline = lifeline
        self.daemon_pid = daemon_pid
        self.starts = {}                # starter pid -> _Start
        self.reader = MessageReader()
        self.pool = []                  # _Pooled inits, idle
        self.pool_wanted = False        # set by the first run request (an idle engine has none)
        self.idle_deaths = 0            # pooled inits dead while idle since the last run request
        self.busy_at = 0.0              # when the loop last had an event (time.monotonic)
        self.comm = None                # our /proc/self/comm, which a pooled init takes back
        self.last_spec = None           # the last run's spec, for a pooled init to rehearse on
        self.taken = {}                 # pid -> when: pooled inits the daemon is starting

    def serve(self):
        # Die with the daemon; the check closes the race of it dying before the prctl.
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.daemon_pid:
            os._exit(0)
        self.me = os.getpid()
        os.setsid()                     # no terminal signals (^C goes to the daemon only)
        if self.own_mntns:
            self.own_mount_namespace()
        # Deliberately *not* a subreaper: the processes our starters fork must be re-parented
        # past us, to the daemon, so that they outlive us.
        keep = {self.sock.fileno(), self.lifeline, 0, 1, 2}
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
            # The pool is refilled only when nothing else is to be done: no start in flight
            # (whose answer a clone here would delay: ours, or one the daemon handed to a
            # pooled init), and no event for REFILL_IDLE.
            if self.taken:
                self.forget_taken()
            refill = (self.pool_wanted and not self.starts and not self.taken
                      and len(self.pool) < POOL_SIZE)
            wait = max(0.0, self.busy_at + REFILL_IDLE - time.monotonic()) if refill else None
            events = self.sel.select(wait)
            if not events and refill:
                self.refill()
                continue
            self.busy_at = time.monotonic()
            for key, _ in events:
                # One event's failure fails its own request at most, never the loop.
                try:
                    if key.data == "request":
                        if not self.on_request():
                            return      # the daemon closed us
                    elif key.data == "sigchld":
                        self.on_sigchld()
                    elif isinstance(key.data, _Pooled):
                        self.on_pooled_gone(key.data)
                    else:
                        self.on_status(key.fd, key.data)
                except Exception:
                    import traceback
                    sys.stderr.write("minidock spawner: error handling an event (carrying on):\n"
                                     + traceback.format_exc())

    def own_mount_namespace(self):
        """A mount namespace of our own, a copy of the daemon's as it is now, which the
        daemon's later mounts -- an overlay per container -- never reach (its / is private).

        Every container init copies our mount table (CLONE_NEWNS), makes it private and
        detaches it again at pivot_root: in the daemon's namespace each of those would cost
        in proportion to the running containers (measured: +0.8 ms of CPU and +1.9 ms per start
        with 500 mounts more). The init gets its own rootfs as a detached mount tree instead
        (mounts.attach_rootfs). Only where open_tree(2) works (Linux 5.2): elsewhere we stay
        in the daemon's namespace and the init binds the rootfs path. The daemon keeps a
        descriptor of this namespace and hands it to a restarted spawner (main)."""
        try:        # recursive: / has mounts locked under it (copied from the host's namespace)
            os.close(syscalls.open_tree("/"))
        except OSError:
            return
        syscalls.unshare(syscalls.CLONE_NEWNS)

    def send(self, msg):
        try:
            send_message(self.sock, msg)
        except OSError:
            os._exit(0)                 # the daemon is gone

    def on_sigchld(self):
        syscalls.drain(self.wake_r)
        self.reap()

    def on_request(self, every=False):
        """Read the daemon's socket: one datagram, or (`every`) every one already there. False
        when the daemon closed it.

        It never waits for a datagram. An event of the batch select() returned can be stale:
        on_pooled_gone, earlier in the same batch, reads every datagram there, the one this
        event saw among them. A blocking read then waited for the daemon's *next* message --
        while the run request it had just read waited for its answer, which this very loop
        gives (its init's status pipe, not read again): the daemon's start hung for good."""
        flags = socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
        while True:
            try:
                data, fds = syscalls.recv_fds(self.sock, MAX_PART + 1, 4, flags)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            done = self.reader.feed(data, fds)
            if done is not None:
                msg, fds = done
                self.start_or_fail(msg, fds)
            if not every:
                return True

    def start_or_fail(self, msg, fds):
        """Start a request, or answer its failure; closes `fds` unless start() took them."""
        if msg.get("op") in ("took", "done", "drop"):
            _close_all(fds)
            self.pool_news(msg)
            return
        try:
            self.start(msg, fds)
        except Exception as exc:
            # fork() or clone() failing with EAGAIN (a process limit), no descriptors left for
            # the pipe, a malformed request: this request fails, the spawner carries on.
            if isinstance(exc, syscalls.StartError) and "id" in msg:
                self.send({"id": msg["id"], "error": exc.to_record()})
                return
            if isinstance(exc, OSError):
                message = f"cannot start the process: {exc.strerror or exc}"
            else:
                message = f"cannot start the process: {type(exc).__name__}: {exc}"
            if "id" in msg:
                self.send({"id": msg["id"], "error": {"message": message, "exit_code": 125,
                                                      "errno": getattr(exc, "errno", 0) or 0}})
            else:
                sys.stderr.write(f"minidock spawner: dropped a request without id: {message}\n")
        finally:
            _close_all(fds)

    def start(self, msg, fds):
        if "_invalid" in msg:
            raise ValueError(msg["_invalid"])
        if msg.get("op") not in ("run", "exec") or "id" not in msg:
            raise ValueError(f"unknown request {msg.get('op')!r}")
        if msg["op"] == "run":
            # A run that reaches us is cloned directly: the daemon hands a pooled init the
            # runs it fits itself ("The pool").
            self.ran(msg["spec"])
        ns.prepare_in_spawner(msg["spec"])
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            if msg["op"] == "run":
                # One clone(2), straight into the namespaces, the init the daemon's child
                # (ns.spawn_container): no starter. The init never returns from this call.
                child = ns.spawn_container(msg["spec"], fds[:3], status_w,
                                           ns.DaemonTie(None, self.lifeline),
                                           lambda: self.leave(status_r),
                                           fds[3] if len(fds) > 3 else None)
                record = _Start(msg["id"], status_r, pid=child)
            else:
                # A raw clone as fork (syscalls.clone_process): we are single-threaded; the
                # starter lives milliseconds, and what it forks itself goes through os.fork().
                child = syscalls.clone_process(0)
                if child == 0:
                    self.starter_main(msg, fds, status_r, status_w)   # never returns
                record = _Start(msg["id"], status_r)
        except BaseException:
            os.close(status_r)
            os.close(status_w)
            raise
        os.close(status_w)
        self.track(child, record)

    def track(self, child, record):
        # Keyed by the starter's pid, or by the init's for a run (never a child of ours: no
        # waitpid of ours returns it).
        self.starts[child] = record
        # The record itself is the key's data: a pipe closed earlier in the same batch of
        # events, whose number a new pipe may even have reused, is then recognised as stale.
        self.sel.register(record.status_fd, selectors.EVENT_READ, (child, record))

    # -- the pool --

    def refill(self):
        """Clone one init ahead of the next run request (ns.spawn_pooled_init) and tell the
        daemon its pid: the daemon's child from birth, which the daemon reaps if it never
        becomes a container."""
        if self.comm is None:
            with open("/proc/self/comm", "rb") as f:
                self.comm = f.read().strip()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            staging = self.staging()
            pid = ns.spawn_pooled_init(ns.DaemonTie(None, self.lifeline),
                                       lambda: self.leave_for_pool(mine, theirs),
                                       lambda: self.receive_run(theirs), self.comm, staging)
        except Exception as exc:        # EAGAIN (a process limit), say: no pool until the next run
            mine.close()
            theirs.close()
            self.pool_wanted = False
            sys.stderr.write(f"minidock spawner: cannot fill the pool: {exc}\n")
            return
        theirs.close()
        mine.settimeout(POOL_SEND_TIMEOUT)
        veth = (staging or {}).get("veth")
        pooled = _Pooled(pid, mine)
        self.pool.append(pooled)
        self.sel.register(mine, selectors.EVENT_READ, pooled)
        # The daemon gets its own descriptor of our end: it sends the run to the init itself.
        try:
            send_message(self.sock, {"pooled": pid, "veth": veth}, [mine.fileno()])
        except OSError:
            os._exit(0)                 # the daemon is gone

    def staging(self):
        """What a pooled init is to make ahead (ns.spawn_pooled_init), from the last run: its
        kernel mounts, in the directory the daemon keeps for them (spec "staging"), unless it
        was privileged; the veth of its first network endpoint (network.VethAhead). None for
        nothing."""
        spec = self.last_spec or {}
        staging = {}
        if spec.get("staging") and not spec.get("privileged"):
            staging.update(dir=spec["staging"],
                           shm_size=spec.get("shm_size") or ns.DEFAULT_SHM_SIZE)
        veth = network.VethAhead.key(spec.get("network"))
        if veth is not None:
            staging["veth"] = veth
        return staging or None

    def ran(self, spec):
        """A run request, ours or one the daemon handed to a pooled init: the pool is wanted
        again, shaped after this run (`staging()`)."""
        self.pool_wanted = True
        self.idle_deaths = 0
        self.last_spec = dict(spec)     # (a copy: prepare_in_spawner adds to the spec)

    def pool_news(self, msg):
        """The daemon's word on a pooled init it holds a descriptor of:

            {"op": "took", "pid": P, "spec": {...}}   it sends P a run request (the parts of the
                                                     spec `staging()` reads); P is no longer ours
            {"op": "done", "pid": P}                 that start is decided (answered)
            {"op": "drop", "pid": P}                 it gives P up (it does not fit a run): we
                                                     close our end, and have it reaped"""
        if msg["op"] == "done":
            self.taken.pop(msg.get("pid"), None)
            return
        pooled = next((p for p in self.pool if p.pid == msg.get("pid")), None)
        if pooled is None:
            return                      # gone already (it died while idle: reported)
        self.pool.remove(pooled)
        if msg["op"] == "took":
            self.close_pooled(pooled)
            self.ran(msg.get("spec") or {})
            self.taken[pooled.pid] = time.monotonic()
        else:
            self.drop_pooled(pooled)

    def on_pooled_gone(self, pooled):
        """A pooled init's socket turned readable while idle: it never writes, so it died (EOF)
        -- or it took a run request from the daemon, which said so first: the daemon's
        `{"op": "took"}` is in our socket before the init can have read its request, so what
        is there is read before the EOF counts as a death."""
        if pooled.sock is not None:
            self.on_request(every=True)
        if pooled.sock is None:
            return                      # taken or dropped (just now, or earlier in this batch)
        self.pool.remove(pooled)
        self.drop_pooled(pooled, "died while idle")
        # Killed now and then, it is replaced; dying as soon as made, it would be re-cloned in
        # a loop: after a few, the pool waits for the next run request.
        self.idle_deaths += 1
        if self.idle_deaths >= POOL_IDLE_DEATHS:
            self.pool_wanted = False
            sys.stderr.write(f"minidock spawner: {self.idle_deaths} pooled inits died while "
                             "idle; no pool until the next run\n")

    def forget_taken(self):
        """A start the daemon never said was decided (it should have) holds the refill back
        for TAKEN_TIMEOUT at most."""
        now = time.monotonic()
        for pid, when in list(self.taken.items()):
            if now - when > TAKEN_TIMEOUT:
                del self.taken[pid]

    def close_pooled(self, pooled):
        """Close our end of a pooled init's socketpair, once."""
        if pooled.sock is not None:
            self.sel.unregister(pooled.sock)
            pooled.sock.close()
            pooled.sock = None

    def drop_pooled(self, pooled, why=None):
        """Give up a pooled init: close our end (it exits at EOF, if alive) and have the daemon,
        its parent, reap it; a new one is cloned when the loop is next idle. A fault (`why`)
        goes to the daemon's log; a pooled init that only does not fit a request does not."""
        self.close_pooled(pooled)
        if why:
            sys.stderr.write(f"minidock spawner: the pooled init (pid {pooled.pid}) {why}; "
                             "replacing it\n")
        self.send({"reap": pooled.pid})

    def receive_run(self, sock):
        """In a pooled init: wait for the run request. Returns (spec, stdio, status_fd,
        rootfs_tree), or None when the spawner closed its end (gave us up, or died)."""
        self.rehearse()
        reader = MessageReader()
        while True:
            try:
                data, fds = syscalls.recv_fds(sock, MAX_PART + 1, 5, socket.MSG_CMSG_CLOEXEC)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not data:
                return None
            done = reader.feed(data, fds)
            if done is not None:
                break
        os.close(sock.detach())
        msg, fds = done
        if "_invalid" in msg or len(fds) < 4:
            raise ValueError(f"a bad request for a pooled init: {msg.get('_invalid')}")
        os.write(fds[3], b"A\n")       # taken (the daemon's _run_pooled): from here on it is ours
        return msg["spec"], fds[:3], fds[3], (fds[4] if len(fds) > 4 else None)

    def rehearse(self):
        """In a pooled init, before it blocks: decode and prepare the last run's spec as if it
        were the request, and drop the result. Python writes to every object it touches (its
        reference count), so this takes the copy-on-write faults of the code a request runs
        first -- the decoder, the seccomp preparation and the objects they use -- and leaves
        freed memory behind on pages already ours, where the real request's objects land."""
        if self.last_spec is None:
            return
        try:
            done = MessageReader().feed(_LAST + json.dumps({"spec": self.last_spec}).encode())
            ns.prepare_in_spawner(done[0]["spec"])
        except Exception:               # a rehearsal only: the request itself will tell
            pass

    def leave_for_pool(self, mine, theirs):
        """In a pooled init: keep stdio, the lifeline and our end of the pool's socketpair;
        close every other descriptor of the spawner's. An idle init lives long: holding the
        daemon's socket or another pooled init's end would keep their EOF from showing."""
        _signal.set_wakeup_fd(-1)
        # Python objects that own the descriptors closed below give them up first, so that
        # none of them can close a reused number later.
        self.sock.detach()
        mine.detach()
        for other in self.pool:
            other.sock.detach()
        low = 3
        for fd in sorted({self.lifeline, theirs.fileno()}):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 1 << 20)

    def leave(self, status_r):
        """In a process cloned or forked from us: drop the spawner's descriptors and its
        wakeup fd (our SIGCHLD handler, a no-op, may stay: the dispositions are reset before
        execve, ns.reset_signals)."""
        _signal.set_wakeup_fd(-1)
        os.close(self.sock.detach())
        os.close(status_r)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for pooled in self.pool:        # a pooled init must see EOF when we die, not later
            os.close(pooled.sock.detach())

    def starter_main(self, msg, fds, status_r, status_w):
        """The starter (exec): join the namespaces, fork the process, report
        its pid, exit.

        Its exit is what hands the process to the daemon: the kernel re-parents the orphan to
        the nearest subreaper, the daemon (we, the spawner, are not one). The process arms its
        death signal on the daemon only once we are gone (ns.DaemonTie.arm, which watches a
        pidfd of ours). Nothing of the starter stays behind: no process per container."""
        code = 125
        try:
            self.leave(status_r)
            ns.reset_signals()
            tie = ns.DaemonTie(os.pidfd_open(os.getpid()), self.lifeline)
            pid = ns.enter_container(msg["init_pid"], msg["spec"], fds, status_w, tie)
            os.write(status_w, b"P%d\n" % pid)
            code = 0
        except BaseException as e:
            try:
                syscalls.report_failure(status_w, e)
            except OSError:
                pass
        os._exit(code)

    def on_status(self, fd, data):
        starter, record = data
        if self.starts.get(starter) is not record or record.status_fd != fd:
            return                      # stale: decided and closed earlier in this batch
        chunk = os.read(fd, 65536)
        if chunk:
            record.buf += chunk
            # A run's init writes `R` when only its execve is left (ns._exec), and nothing after.
            if not (record.pid is not None and record.buf.endswith(b"R\n")):
                return
        self.decide(starter)

    def decide(self, starter):
        """The status pipe is at EOF (every writer closed it or died), or a run's init wrote
        `R`: read what is left."""
        record = self.starts[starter]
        fd = record.status_fd
        os.set_blocking(fd, False)
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                record.buf += chunk
        except BlockingIOError:
            pass
        self.sel.unregister(fd)
        os.close(fd)
        record.status_fd = None
        if record.starter_code is not None:
            self.answer(starter)

    def answer(self, starter):
        """Status at EOF and the starter reaped: answer the run/exec request.

        Only now, after the starter's exit, is the process the daemon's child, so the daemon
        can reap it by pid. A failed start may still have left a process (the init reported
        an error and exited): its pid goes with the error, for the daemon to reap."""
        record = self.starts.pop(starter)
        pid, error = record.pid, reported_error(record.buf)
        for line in record.buf.splitlines():
            if line.startswith(b"P"):
                pid = int(line[1:])
        if error is None and (pid is None or record.starter_code != 0):
            error = {"message": "the container process died during set-up", "exit_code": 125}
        if error is not None:
            self.send({"id": record.req_id, "error": error, "pid": pid})
        else:
            self.send({"id": record.req_id, "pid": pid})

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            record = self.starts.get(pid)
            if record is None:
                continue
            record.starter_code = exit_code(status)
            if record.status_fd is None:
                self.answer(pid)


def main(argv):
    """`python -S -E -m minidock.spawnerloop SOCKET_FD LIFELINE_FD DAEMON_PID [MNTNS_FD]`: the
    spawner, as spawner._exec_spawner starts it (first and after a crash). MNTNS_FD: the mount
    namespace the first spawner made (own_mount_namespace), for a restarted one to join."""
    sock_fd, lifeline, daemon = (int(a) for a in argv[:3])
    mntns = int(argv[3]) if len(argv) > 3 else -1
    if mntns >= 0:
        # Join it rather than copy the daemon's namespace as it is now, with the overlays of
        # the containers running meanwhile: copies of those would stay mounted here, holding
        # their file systems, long after the daemon unmounted them. (setns moves us to its /.)
        syscalls.setns(mntns, syscalls.CLONE_NEWNS, "the spawner's mount namespace")
        os.close(mntns)
        try:
            os.chdir(os.readlink(f"/proc/{daemon}/cwd"))   # the same path, in our namespace
        except OSError:
            pass
    else:
        # Started in the package's parent directory (how `-m` finds the package under -E);
        # work where the daemon works, as a forked spawner did. /proc/PID/cwd is the daemon's
        # very directory, even one no path reaches any more (a namespace of our own, made
        # next, copies it).
        try:
            os.chdir(f"/proc/{daemon}/cwd")
        except OSError:
            os.chdir("/")
    # Read once here, not in every container init (ns.prepare_in_spawner).
    ns.daemon_id_maps()
    # The C heap's free pages back to the kernel: what importing freed stays resident below
    # live allocations otherwise, in us and in the starters and inits forked from us.
    syscalls.libc.malloc_trim(0)
    # Everything imported so far lives as long as we do: move it out of the collector's
    # generations, so that no collection -- here, or in a starter or init forked from us --
    # walks those objects and writes to their pages (which a child would copy on write).
    gc.freeze()
    spawner_main(socket.socket(fileno=sock_fd), lifeline, daemon, own_mntns=mntns < 0)


if __name__ == "__main__":
    main(sys.argv[1:])
