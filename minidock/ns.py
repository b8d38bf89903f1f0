"""Namespaces, the container start sequence, capabilities and exec: how a process becomes a container.

A container is an ordinary process that the kernel shows a private view of the machine. The
view is made of *namespaces* (namespaces(7)); each one is created with unshare(2) (or clone(2))
and joined with setns(2):

    user    CLONE_NEWUSER  ids are translated through /proc/PID/uid_map and gid_map
                           (user_namespaces(7)); inside, the process may be uid 0 with every
                           capability, but only over objects its user namespace owns.
    mount   CLONE_NEWNS    a private copy of the mount table (mount_namespaces(7)).
    pid     CLONE_NEWPID   the *next child* is PID 1 of a new pid tree (pid_namespaces(7)).
    uts     CLONE_NEWUTS   a private hostname.
    ipc     CLONE_NEWIPC   private SysV IPC and POSIX message queues.
    net     CLONE_NEWNET   a private network stack: just a `lo` that is down.

You can see which namespaces a process is in with `ls -l /proc/PID/ns`: each link reads
`pid:[4026532190]`, and two processes share a namespace when the numbers match.

Containers
----------
`spawn_container()` is the whole container set-up as one linear sequence. It runs in the
spawner, which makes the init with one clone(2) -- CLONE_PARENT plus the namespace flags, so
the init is born PID 1 of a new pid namespace, in new mount, uts, ipc (and net) namespaces,
and a child of the daemon (`DaemonTie`) -- and the child runs `_container_init()`: its
network (lo up, or veths, or another container's stack), mounts, pivot_root(2), hostname,
rlimits, the seccomp filter (seccomp.py; while CAP_SYS_ADMIN is still held, or last with
no_new_privs), capabilities, user, the death signal, execve(2).
Every step is named; when one fails, the step, errno and message go back to the spawner over
a close-on-exec pipe -- runc's error-pipe pattern; when every step is done, the init writes `R`
there and execs (`_exec`).

`spawn_pooled_init()` is the same clone made *ahead* of a run request, for the spawner's pool
(spawnerloop.py, "The pool"): the init does what needs nothing of the request -- it makes its
mounts private, brings lo up, makes /proc, /dev and /sys (`StagedMounts`) and the last run's
veth (network.VethAhead) --, then waits on a socket until the spec and the descriptors come,
and goes on from there exactly as a directly cloned init.

The steps live with their concept: mounts, /dev, /sys, the console and pivot_root in mounts.py,
the daemon's user namespace and the nested ones (a container user the daemon cannot map,
keep-id) in userns.py, the raw system calls and the named-step errors in syscalls.py. This
module keeps the namespaces, the users of the image, capabilities, exec, and the one function
that calls every step in order (`_container_init()`).

Entering a running container (exec)
-----------------------------------
`enter_container()` opens /proc/PID/ns/* of the container's init, setns(2)s into ipc, uts, net,
pid, mnt and -- when the container has a nested one -- user (last: joining it drops the
capabilities needed for the others), forks (a pid namespace join only applies to children) and
execs. `container_pids()` lists a container's processes by comparing /proc/*/ns/pid inodes.

Man pages: namespaces(7), user_namespaces(7), mount_namespaces(7), pid_namespaces(7),
unshare(2), setns(2), mount(2), pivot_root(2), capabilities(7), prctl(2), setrlimit(2),
newuidmap(1), subuid(5).
"""

import _signal                          # signal's C core: no enum conversions (see reset_signals)
import _socket
import ctypes
import errno
import fcntl
import functools
import gc
import os
import resource
import select
import signal
import socket
import struct

from . import errors, pid1, pidlimit, seccomp
from .mounts import (DEFAULT_SHM_SIZE, MASKED_PATHS, READONLY_PATHS, attach_rootfs,
                     bind_console, bind_mounts, bind_rootfs, enter_rootfs, in_root,
                     make_mounts_private, mount_kernel_filesystems, move_kernel_mounts,
                     open_console, readonly_rootfs, stage_kernel_mounts)
from .syscalls import (CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                       CLONE_NEWUTS, CLONE_PARENT,
                       CLOSE_RANGE_CLOEXEC, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS,
                       PR_SET_PDEATHSIG, SYS_CAPSET, SYS_CLOSE_RANGE, StartError, Step, check,
                       clone_process, libc, prctl, report_failure, setns,
                       unshare)  # noqa: F401  (unshare: tests/netns_harness.py)
from .userns import (enter_identity_userns, enter_keep_id_userns, enter_user_userns, id_mapped,
                     keep_id_map,
                     needs_nested_userns, read_id_map)

_TIOCSCTTY = 0x540E


# --- Docker's defaults ---------------------------------------------------------------------

CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # index == capability number, see capabilities(7) and <linux/capability.h>

DEFAULT_CAPABILITIES = [  # moby's oci/caps/defaults.go
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
]


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

RLIMITS = {  # Docker's ulimit names -> RLIMIT_* numbers of <asm-generic/resource.h>
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6,
    "nofile": 7, "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12,
    "nice": 13, "rtprio": 14, "rttime": 15,
}


def capability_set(cap_add=(), cap_drop=(), privileged=False):
    """Docker's rule: start from the default set (all if privileged), add, then drop.

    Names may carry the CAP_ prefix and any case; "ALL" means every capability. Returns a
    sorted list of capability numbers. Unknown names raise InvalidParameter.
    """
    def norm(names):
        out = set()
        for n in names or ():
            n = n.upper()
            n = n[4:] if n.startswith("CAP_") else n
            if n == "ALL":
                out.update(CAPABILITIES)
            elif n in CAPABILITIES:
                out.add(n)
            else:
                raise errors.InvalidParameter(f"unknown capability: {n!r}")
        return out
    caps = set(CAPABILITIES) if privileged else set(DEFAULT_CAPABILITIES)
    caps |= norm(cap_add)
    caps -= norm(cap_drop)
    return sorted(CAPABILITIES.index(c) for c in caps)


# --- users, from the container's own /etc/passwd and /etc/group ---------------------------


def _read_db(root, path):
    try:
        with open(in_root(root, path)) as f:
            return [line.rstrip("\n").split(":") for line in f
                    if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(rootfs, user, group_add=()):
    """Docker's `User` + `GroupAdd` -> (uid, gid, [supplementary gids]).

    Forms: "" (root), "name", "uid", "name:group", "uid:gid", "name:gid", "uid:group"; names
    are looked up in the container's /etc/passwd and /etc/group (never the host's). A user
    found in passwd also gets the groups that list it as a member. Unknown names raise
    errors.InvalidParameter with Docker's wording.
    """
    passwd = [e for e in _read_db(rootfs, "/etc/passwd") if len(e) >= 7]
    groups = [e for e in _read_db(rootfs, "/etc/group") if len(e) >= 4]
    name_part, _, group_part = (user or "").partition(":")
    uid, gid, username = 0, 0, "root"
    entry = None
    if name_part == "" or name_part.isdigit():
        uid = int(name_part or 0)
        entry = next((e for e in passwd if e[2] == str(uid)), None)
    else:
        entry = next((e for e in passwd if e[0] == name_part), None)
        if entry is None:
            raise errors.InvalidParameter(
                f"unable to find user {name_part}: no matching entries in passwd file")
        uid = int(entry[2])
    if entry is not None:
        gid, username = int(entry[3]), entry[0]
    else:
        username = None
    if group_part:
        gid = _group_id(groups, group_part)
    extra = []
    if username is not None and not group_part:
        extra = [int(e[2]) for e in groups if username in e[3].split(",")]
    for g in group_add or ():
        extra.append(_group_id(groups, str(g)))
    return uid, gid, sorted(set(extra))


def _group_id(groups, group):
    """A group given by number, or by name in the container's /etc/group -> its gid."""
    if group.isdigit():
        return int(group)
    entry = next((e for e in groups if e[0] == group), None)
    if entry is None:
        raise errors.InvalidParameter(
            f"unable to find group {group}: no matching entries in group file")
    return int(entry[2])


def user_home(rootfs, uid):
    """The home directory of `uid` in the container's /etc/passwd, or "/" (Docker's HOME)."""
    for e in _read_db(rootfs, "/etc/passwd"):
        if len(e) >= 7 and e[2] == str(uid):
            return e[5] or "/"
    return "/"


# --- the steps of this module, in the order spawn_container() and _container_init() call them

@Step("join the net namespace of the other container")
def join_netns(pid):
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET, f"/proc/{pid}/ns/net")
    finally:
        os.close(fd)


def own_netns(network):
    """Whether the container gets a network namespace of its own (else it keeps or joins one)."""
    return network == "none" or (isinstance(network, dict) and "netns_pid" in network)


@Step("create namespaces")
def clone_init(network):
    """clone(2) the container's init: the daemon's child (CLONE_PARENT), PID 1 of a new pid
    namespace, in new mount, uts, ipc (and net) namespaces. 0 in the init, its pid here."""
    flags = CLONE_PARENT | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if own_netns(network):
        flags |= CLONE_NEWNET          # a fresh stack: loopback only (then maybe veths)
    return clone_process(flags)


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


@Step("bring up the loopback interface")
def bring_up_loopback():
    """A new network namespace has `lo` down; set IFF_UP on it (ioctl SIOCSIFFLAGS on any
    socket of the namespace; we hold CAP_NET_ADMIN over it: our user namespace owns it).
    Afterwards `ip link show lo` says UP and 127.0.0.1 answers."""
    # (_socket's type, not socket.socket: less Python for a freshly cloned init to run.)
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH22x", b"lo", 0)            # struct ifreq: name, then flags
        flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
    finally:
        s.close()


@Step("join cgroup")
def join_cgroup(cgroup_dir):
    with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
        f.write("0")                   # "0" means the writing process


@Step("create the working directory")
def create_workdir(cwd, uid, gid):
    if not os.path.isdir(cwd):
        os.makedirs(cwd, 0o755, exist_ok=True)
        try:                            # unmapped ids (nested-userns mode) cannot be chowned to
            os.chown(cwd, uid, gid)
        except OSError:
            pass


@Step("set the hostname")
def set_hostname(name):
    socket.sethostname(name)


@Step("set rlimits")
def set_rlimits(ulimits):
    for u in ulimits:
        resource.setrlimit(RLIMITS[u["name"]], (int(u["soft"]), int(u["hard"])))


@Step("drop capabilities from the bounding set")
def drop_bounding_set(keep, last_cap):
    for cap in range(last_cap + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


@Step("set no_new_privs")
def set_no_new_privs():
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _setgroups_allowed():
    try:
        fd = os.open("/proc/self/setgroups", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        return os.read(fd, 64).strip() == b"allow"
    finally:
        os.close(fd)


@Step("switch user")
def switch_user(uid, gid, groups):
    # Groups first, then gid, then uid: after setuid to non-root we could do neither.
    if _setgroups_allowed():
        os.setgroups(groups)
    elif groups and groups != [gid]:
        pass                            # denied in this namespace: documented trade-off
    os.setgid(gid)
    os.setuid(uid)


# capset(2)'s arguments: the header {u32 version, int pid} (_LINUX_CAPABILITY_VERSION_3, pid 0:
# ourselves) and two {u32 effective, permitted, inheritable} words, capabilities 0-31 and 32-63.
_CAP_HEADER = struct.pack("Ii", 0x20080522, 0)


def capset_data(keep):
    """capset(2)'s data for the capability numbers `keep`, in all three sets."""
    words = [0, 0]
    for cap in keep:
        words[cap // 32] |= 1 << (cap % 32)
    return struct.pack("6I", words[0], words[0], words[0], words[1], words[1], words[1])


@Step("set capabilities")
def set_capabilities(keep):
    # For uid 0 execve gives permitted = inheritable | bounding; we narrowed the bounding set,
    # and now make the current sets match too. For other uids setuid already cleared them.
    if os.geteuid() != 0:
        return
    check(libc.syscall(SYS_CAPSET, _CAP_HEADER, capset_data(keep)), "capset")


def find_executable(name, env):
    """PATH lookup as the container user would do it; raises StartError 127/126."""
    if "/" in name:
        candidates = [name]
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    denied = None
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return c
            denied = c
    if denied:
        raise StartError(f'exec: "{denied}": permission denied', "exec", errno.EACCES, 126)
    if "/" in name:
        if os.path.isdir(name):
            raise StartError(f'exec: "{name}": is a directory: permission denied', "exec",
                             errno.EACCES, 126)
        raise StartError(f'exec: "{name}": stat {name}: no such file or directory', "exec",
                         errno.ENOENT, 127)
    raise StartError(f'exec: "{name}": executable file not found in $PATH', "exec",
                     errno.ENOENT, 127)


# execve's limits on its strings (fs/exec.c, bprm_stack_limits and copy_strings): together, the
# file name, the arguments and the environment (each with its NUL) and a pointer for each
# argument and variable fit in a quarter of the stack's soft limit, at most 3/4 of 8 MiB and at
# least 32 pages; no single string is longer than 32 pages.
_ARG_MAX = 32 * 4096
_STACK_CAP = 8 * 1024 * 1024 // 4 * 3


def check_arg_limits(path, argv, environ):
    """Raise the StartError execve would cause with E2BIG, before it is too late to report it
    as the start's (`_exec`)."""
    strings = [path, *argv, *(f"{k}={v}" for k, v in environ.items())]
    sizes = [len(os.fsencode(x)) + 1 for x in strings]
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = max(min(_STACK_CAP, stack // 4 if stack != resource.RLIM_INFINITY else _STACK_CAP),
                _ARG_MAX)
    pointers = (max(len(argv), 1) + len(environ)) * 8
    if max(sizes) > _ARG_MAX or pointers + sum(sizes) > limit:
        raise StartError(f'exec: "{path}": argument list too long', "exec", errno.E2BIG, 125)


def _exec(argv, env, ready_fd=None):
    """The last step: execve the command, found on the container's PATH (a StartError if it
    is not there or not executable).

    `ready_fd`: a container init's status pipe. The spawner answers the start when it reads
    `R` there, written once only execve is left -- as runc's init unblocks `runc start`
    through its exec FIFO -- so the daemon answers while the kernel tears down this process
    (its copy of the spawner's memory) and loads the command, not after. Whatever is wrong
    with the command that a lookup can tell (missing, not executable, a directory) fails the
    start before that. What only execve finds (a file the kernel cannot run, a script whose
    interpreter is missing) then belongs to the started container, as on Docker: the error
    goes to its stderr and it exits 126 or 127, as a shell would."""
    path = find_executable(argv[0], env)
    environ = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    if ready_fd is not None:
        check_arg_limits(path, argv, environ)
        _ready(ready_fd)
    try:
        os.execve(path, argv, environ)
    except OSError as e:
        code = 127 if e.errno == errno.ENOENT else 126 if e.errno in (
            errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR) else 125
        what = "no such file or directory" if code == 127 else (
            "permission denied" if code == 126 and e.errno != errno.ENOEXEC else e.strerror.lower())
        error = StartError(f'exec: "{path}": {what}', "exec", e.errno, code)
        if ready_fd is None:
            raise error from e
        # Past `R` nobody reads the status pipe: the failure is the started container's own.
        try:
            os.write(2, f"minidock: {error.message}\n".encode())
        finally:
            os._exit(code)


@Step("tell the spawner only execve is left")
def _ready(ready_fd):
    os.write(ready_fd, b"R\n")


class DaemonTie:
    """How a started process dies with the daemon although no process of ours waits for it.

    PR_SET_PDEATHSIG(SIGKILL) ties a process to its parent: the kernel sends the signal when
    the parent *thread* exits (kernel/exit.c, forget_original_parent), and also on every
    re-parenting. A container's init is cloned with CLONE_PARENT (ns.clone_init): its parent is
    the spawner's parent -- the daemon, and precisely the daemon thread that started this
    spawner: the main thread for the first spawner, the supervisor thread for a restarted one
    (spawner.py), both living as long as the daemon. Nothing re-parents it, so it could arm at
    once; but credential changes (setuid, and the like) clear the death signal, so `arm()` is
    one of the last steps before execve.

    An exec'd process still comes from a short-lived *starter* (a
    pid namespace join applies to children only): the starter forks the process and exits,
    and the kernel re-parents the orphan to the nearest subreaper above it, the daemon
    (PR_SET_CHILD_SUBREAPER; the spawner is not one), its first live thread: the main
    thread. Armed before the starter's exit, the signal would fire at that re-parenting, so
    `arm()` first waits for a pidfd of the starter (opened by the starter, inherited through
    fork) to turn readable: only after its exit has re-parented its children.

    Either way, a death signal armed after the daemon died never fires. The lifeline -- a
    pipe whose only write end the daemon holds -- is at EOF once the daemon is gone, so it is
    checked *after* the prctl: either the signal was armed in time or the lifeline shows EOF.
    What you can observe: `PPid:` in /proc/PID/status of a container's init is the daemon's
    pid from its birth; when the daemon dies the init gets SIGKILL, and with it every process
    of its pid namespace.
    """

    def __init__(self, starter_pidfd, lifeline):
        self.starter_pidfd = starter_pidfd      # None: cloned with CLONE_PARENT, no starter
        self.lifeline = lifeline

    def arm(self):
        if self.starter_pidfd is not None:
            starter = select.poll()
            starter.register(self.starter_pidfd, select.POLLIN)
            while not starter.poll():
                pass                    # readable: the starter has exited, we are re-parented
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        lifeline = select.poll()
        lifeline.register(self.lifeline, select.POLLIN)
        if lifeline.poll(0):            # nobody writes it: readable means EOF, the daemon is gone
            os._exit(137)


def _die_with_reaper():
    """The command under --init dies with the reaper, its parent (PID 1 of its namespace)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != 1:               # the reaper died before the prctl
        os._exit(137)


# Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve; the spawner handles
# SIGCHLD; the interpreter SIGINT (and the daemon may have set SIGTERM).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)


def reset_signals():
    """Default dispositions, no wakeup fd, an empty mask: what a command expects at execve.
    Through `_signal`, the C module: `signal`'s wrappers convert every result into an enum
    member, Python code whose objects a freshly forked child would copy on write."""
    _signal.set_wakeup_fd(-1)
    for sig in _DEFAULT_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def _prepare_process(stdio, tty, arm_deathsig):
    """Last steps common to run and exec: stdio, session, signals, death signal, fds.
    `arm_deathsig` ties us to what we must die with: DaemonTie.arm, or _die_with_reaper for
    the command under --init."""
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)            # dup2 clears close-on-exec on 0, 1, 2
    os.setsid()                         # its own session, away from the spawner's
    if tty:
        fcntl.ioctl(0, _TIOCSCTTY, 0)   # the pty slave becomes our controlling terminal
    reset_signals()
    # After every credential change (setuid, a nested user namespace): they clear it.
    arm_deathsig()
    # Whatever descriptors the daemon inherited must not reach the container.
    libc.syscall(SYS_CLOSE_RANGE, 3, ctypes.c_uint(0xFFFFFFFF), CLOSE_RANGE_CLOEXEC)


# --- run: the linear sequence ------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def daemon_id_maps():
    """The daemon's user namespace maps (uid, gid) as /proc/self/*_map shows them, read once per
    spawner: they never change, and the init then only reads the spawner's copy."""
    return read_id_map("/proc/self/uid_map"), read_id_map("/proc/self/gid_map")


def prepare_in_spawner(spec):
    """What a start can compute in the spawner, before it clones or forks, instead of in the
    child: the results stay cached in the spawner for the next start, and the child reads
    them. (Every object a fresh child touches costs it a copy-on-write page fault; work done
    here is done once.)"""
    daemon_id_maps()
    if spec.get("seccomp"):
        spec["_seccomp"] = seccomp.prepared(spec["seccomp"])



def spawn_container(spec, stdio, status_fd, tie, leave_spawner, rootfs_tree=None):
    """Clone the container's init straight into its namespaces. Runs in the spawner.

    One clone(2) (`clone_init`): no intermediate process, nothing re-parented, the init is the
    daemon's child from its first instruction. Returns the init's pid (the daemon's pid
    namespace) in the spawner. The init calls `leave_spawner()` first (drops the spawner's
    socket and signal handlers), then never returns from here: it execs the command or
    reports a StartError on `status_fd` and exits 125/126/127. `tie` (a DaemonTie) makes it
    die with the daemon. `rootfs_tree`: the rootfs as a detached mount (mounts.attach_rootfs),
    or None to bind the path.
    """
    pid = clone_init(spec.get("network", "none"))
    if pid:
        return pid
    try:
        leave_spawner()
    except BaseException as e:
        _init_failed(status_fd, e)
    _run_init(spec, stdio, status_fd, tie, rootfs_tree)


# What `ps -o pid,ppid,comm` (and /proc/PID/comm) shows for an idle pooled init. Its execve
# names it after the command; one that stays Python (--init's reaper) takes back the spawner's.
POOLED_COMM = b"minidock-pool"


def set_comm(name):
    """Our name, as prctl(PR_SET_NAME) sets it (15 bytes at most), written to /proc/self/comm:
    through ctypes the call would cost a fresh init ~50 copy-on-write faults of its machinery."""
    fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, name[:15])
    finally:
        os.close(fd)


def spawn_pooled_init(tie, leave_spawner, receive, comm, staging=None):
    """Clone an init *ahead* of its run request, for the spawner's pool. Runs in the spawner.

    The same clone(2) as `spawn_container` for a container with a network namespace of its
    own (CLONE_PARENT, new mount, pid, uts, ipc and net namespaces), made while the spawner
    has nothing else to do, so that a later start skips it. Returns the init's pid in the
    spawner. The pooled init calls `leave_spawner()` (drops every descriptor but its end of
    the pool's socketpair and the lifeline), arms its death signal on the daemon at once
    (`tie`: an idle init must die with the daemon as a running one does), and blocks in
    `receive()`, which returns (spec, stdio, status_fd, rootfs_tree) when a run request comes,
    or None when the spawner gave it up or died: it exits 0 then, having run nothing of a
    user's. With a request it goes on exactly as a directly cloned init does from its first
    step (`_container_init`), after making what the spawner would have prepared
    (`prepare_in_spawner`: the seccomp program), which cannot travel over a socket.

    `staging`: what to make ahead, from the last run request (spawnerloop's `staging()`):
    with "dir" and "shm_size", the default /proc, /dev and /sys are made under "dir"
    (mounts.stage_kernel_mounts), and moved into the rootfs of a request they fit
    (`StagedMounts`); one they do not fit mounts its own, as ever. With "veth", the veth of
    the last run's first network endpoint is made (network.VethAhead); the daemon hands
    this init only requests it fits (spawner.Spawner._claim_pooled).
    """
    pid = clone_init("none")
    if pid:
        return pid
    try:
        # No collection while idle or in set-up: it would walk (and copy on write) every
        # object shared with the spawner.
        gc.disable()
        leave_spawner()
        set_comm(POOLED_COMM)
        tie.arm()
        # The two first steps of every init with a network namespace of its own, which need
        # nothing of the request: taken here, their time (and the copy-on-write faults of the
        # Python they run) is off the start's critical path. Nothing of the container runs
        # before its cgroup join still: these are the engine's steps.
        make_mounts_private()
        bring_up_loopback()             # (the bridge form sets it up again, in its batch)
        staged = StagedMounts.make(staging)
        veth = None
        if staging and staging.get("veth"):
            from . import network as _network      # network.py imports ns
            veth = _network.VethAhead.make(staging["veth"])
        request = receive()
    except BaseException:
        os._exit(125)                   # no request yet: nobody to report to
    if request is None:
        os._exit(0)
    spec, stdio, status_fd, rootfs_tree = request
    try:
        if spec.get("init"):
            set_comm(comm)
        prepare_in_spawner(spec)
    except BaseException as e:
        _init_failed(status_fd, e)
    _run_init(spec, stdio, status_fd, tie, rootfs_tree, pooled=True,
              staged=staged if staged is not None and staged.fits(spec) else None, veth=veth)


class StagedMounts:
    """The kernel mounts a pooled init made ahead (mounts.stage_kernel_mounts), and which
    requests they fit: every container but a privileged one (no masked or read-only paths)
    or one with lists or a /dev/shm size of its own. A request they do not fit mounts its own
    as a directly cloned init does; the staged ones go with the old root at pivot_root."""

    def __init__(self, directory, shm_size):
        self.directory, self.shm_size = directory, shm_size

    @classmethod
    def make(cls, staging):
        """Stage the mounts `staging` asks for -> StagedMounts, or None (none asked for, or
        staging failed: the request then mounts its own, and tells what is wrong)."""
        if not staging or not staging.get("dir"):
            return None
        try:
            stage_kernel_mounts(staging["dir"], staging["shm_size"],
                                id_mapped(5, daemon_id_maps()[1]))
        except (OSError, StartError):
            return None
        return cls(staging["dir"], staging["shm_size"])

    def fits(self, spec):
        return (not spec.get("privileged")
                and (spec.get("shm_size") or DEFAULT_SHM_SIZE) == self.shm_size
                and spec.get("masked_paths", MASKED_PATHS) == MASKED_PATHS
                and spec.get("readonly_paths", READONLY_PATHS) == READONLY_PATHS)


def _run_init(spec, stdio, status_fd, tie, rootfs_tree, pooled=False, staged=None, veth=None):
    """A cloned init, from its spec to execve; on failure the StartError goes back on
    `status_fd` and the init exits 125/126/127. Never returns."""
    try:
        _container_init(spec, stdio, status_fd, tie, rootfs_tree, pooled, staged, veth)
    except BaseException as e:
        _init_failed(status_fd, e)
    os._exit(125)


def _init_failed(status_fd, e):
    try:
        report_failure(status_fd, e)
    finally:
        os._exit(e.exit_code if isinstance(e, StartError) else 125)


def setup_network(network, lo_up=False, veth=None):
    """The init's network, first of its steps: while /proc is still the daemon's view (the pids
    named below are pids there) and it holds every capability over the daemon's namespaces.
    `lo_up`: a pooled init brought lo up already; `veth`: the network.VethAhead it made then
    (spawn_pooled_init). Returns what is to be announced later (network.LateAnnouncement), or
    None."""
    if veth is not None and not veth.fits(network):
        veth.remove()                   # (not handed such requests: a grace period's cost)
        veth = None
    if isinstance(network, dict) and "join_pid" in network:
        # Another container's stack: we were cloned without CLONE_NEWNET, and join it now.
        join_netns(network["join_pid"])
    elif isinstance(network, dict) and "netns_pid" in network:
        # Bridge endpoints: veths into our fresh namespace, made through a netlink socket in the
        # daemon's (network.py), before anything in the container can run.
        from . import network as _network      # network.py imports ns
        return _network.attach_container(network, veth)
    elif network == "none" and not lo_up:
        # Docker's "none" network still has a working lo.
        bring_up_loopback()
    return None


def _container_init(spec, stdio, status_fd, tie, rootfs_tree=None, pooled=False, staged=None,
                    veth=None):
    """PID 1 of the container, from a fresh mount namespace to execve. Never returns.
    `pooled`: a pooled init, which made its mounts private and brought lo up before its
    request came (spawn_pooled_init); `staged`: the StagedMounts it made then, which fit this
    request; `veth`: the network.VethAhead it made then. Every other step keeps its order."""
    # A collection here would walk every object inherited from the spawner and copy the pages
    # it writes to (copy-on-write after fork); this process lives a few ms and then execs.
    gc.disable()
    rootfs = spec["rootfs"]             # a real path: Spawner._prepare resolved it
    uid, gid, groups = spec.get("uid", 0), spec.get("gid", 0), list(spec.get("groups", []))
    privileged = bool(spec.get("privileged"))
    caps = spec["_caps"] if "_caps" in spec else capability_set(
        spec.get("cap_add"), spec.get("cap_drop"), privileged)
    # The daemon's maps, read once by the spawner (they never change): whether the user needs
    # a nested namespace and whether /dev/pts can be gid 5 follow.
    daemon_uid_map, daemon_gid_map = daemon_id_maps()
    nested = not (id_mapped(uid, daemon_uid_map) and id_mapped(gid, daemon_gid_map))
    single_id = sum(c for _, _, c in daemon_uid_map) <= 1
    tty = bool(spec.get("tty"))
    # The pty slave's path in the daemon's /dev/pts, to bind as /dev/console; asked before
    # pivot_root, while the host /dev/pts is still visible.
    # With `console_socket`, stdin is a unix socket and the init makes the pty itself, in the
    # container's own devpts (open_console), so `tty` names it /dev/pts/0.
    console_socket = tty and spec.get("console_socket")
    console = os.ttyname(stdio[0]) if tty and not console_socket and os.isatty(stdio[0]) else None
    last_cap = spec.get("_last_cap", 40)

    if not pooled:                      # (a pooled init did, before its request)
        make_mounts_private()
    if spec.get("cgroup"):              # before anything else runs, so limits apply to it all
        join_cgroup(spec["cgroup"])
    # Before mount_sys (sysfs may be mounted only by the owner of the net namespace) and the
    # nested user namespace (no capability left over the daemon's namespaces in there).
    announcement = setup_network(spec.get("network", "none"), lo_up=pooled, veth=veth)
    # The rootfs a mount point, before mounts inside it: they must land on it.
    if rootfs_tree is not None:
        attach_rootfs(rootfs_tree, rootfs)
    else:
        bind_rootfs(rootfs)
    if staged is not None:              # made ahead, with the masked and read-only paths
        move_kernel_mounts(staged.directory, rootfs)
        bind_console(rootfs, console)
    else:                               # we are PID 1 of the new pid namespace now
        mount_kernel_filesystems(rootfs, spec.get("shm_size") or DEFAULT_SHM_SIZE, console,
                                 id_mapped(5, daemon_gid_map),
                                 [] if privileged else spec.get("masked_paths", MASKED_PATHS),
                                 [] if privileged else spec.get("readonly_paths", READONLY_PATHS))
    if console_socket:                  # after /dev: the new devpts instance exists
        slave = open_console(rootfs, stdio[0], spec.get("console_size"))
        stdio = (slave, slave, slave)
    # /etc files first so that an explicit user bind of the same path wins.
    bind_mounts(rootfs, [{"source": src, "target": dst, "readonly": False}
                         for dst, src in (spec.get("etc_files") or {}).items()])
    bind_mounts(rootfs, spec.get("mounts") or [])
    enter_rootfs(rootfs)                # after every mount: paths above were host paths
    create_workdir(spec.get("cwd") or "/", uid, gid)   # while the rootfs is still writable
    if spec.get("readonly_rootfs"):
        readonly_rootfs()
    set_hostname(spec.get("hostname") or "localhost")
    set_rlimits(spec.get("ulimits") or [])
    if announcement is not None:        # a few steps after `up`, still with CAP_NET_ADMIN
        announcement.announce()
    # The nested user namespace comes after everything that needs our capabilities over the
    # daemon's namespaces (mounts, hostname, rlimits): inside it we have none of those.
    keep_id = spec.get("keep_id")
    if keep_id and not single_id:
        enter_keep_id_userns(keep_id_map(keep_id["uid"], daemon_uid_map),
                             keep_id_map(keep_id["gid"], daemon_gid_map))
    elif nested:
        enter_user_userns(uid, gid)
    if spec.get("pids_limit"):
        # --pids-limit without a pids cgroup: a count of its own needs a user namespace of its
        # own (pidlimit.py), entered while RLIMIT_NPROC is still the daemon's default bound
        # (the new namespace's ceiling one level up); the container's limit comes after.
        if not nested and not (keep_id and not single_id):
            enter_identity_userns(daemon_uid_map, daemon_gid_map)
        pidlimit.limit_self(spec["pids_limit"])
    # seccomp comes after the nested user namespace (unshare is among the calls it refuses)
    # and, without no_new_privs, while we still hold CAP_SYS_ADMIN, which installing needs;
    # every call left before execve (capset, setresuid, dup2, ...) is one it allows.
    if not spec.get("no_new_privileges"):
        install_seccomp(spec)
    drop_bounding_set(caps, last_cap)    # needs CAP_SETPCAP: before we give up root
    if spec.get("no_new_privileges"):
        set_no_new_privs()
    switch_user(uid, gid, groups)
    set_capabilities(caps)
    _step_chdir(spec.get("cwd") or "/")
    arm_deathsig = tie.arm
    if spec.get("init"):                # --init: this process stays as PID 1, the reaper (pid1.py)
        gc.enable()                     # (which lives as long as the container)
        pid1.fork_command(tie.arm)      # returns in the command's process only
        arm_deathsig = _die_with_reaper
    _prepare_process(stdio, tty, arm_deathsig)   # last: 0/1/2, death signal
    if spec.get("no_new_privileges"):    # with no_new_privs: the very last step before execve
        install_seccomp(spec)
    _exec(spec["argv"], spec.get("env") or [], ready_fd=status_fd)


@Step("install the seccomp filter")
def install_seccomp(spec):
    """The container's system call filter (seccomp.py compiled it in the daemon; the spawner
    made it the kernel's struct sock_fprog, `prepare_in_spawner`)."""
    prepared = spec.get("_seccomp")
    if prepared is not None:
        seccomp.install_prepared(prepared)
    elif spec.get("seccomp"):
        seccomp.install(bytes.fromhex(spec["seccomp"]))


@Step("change to the working directory")
def _step_chdir(cwd):
    os.chdir(cwd)


# --- exec: entering a running container ----------------------------------------------------

_NS_ORDER = [("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET),
             ("pid", CLONE_NEWPID), ("mnt", CLONE_NEWNS)]


@Step("enter the container's namespaces")
def join_namespaces(init_pid):
    """setns(2) into the namespaces of `init_pid`, the user namespace last if it differs."""
    # Open every fd first: once we are in the container's mount namespace, /proc is the
    # container's and shows none of the host pids.
    fds = {name: os.open(f"/proc/{init_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
           for name in ("ipc", "uts", "net", "pid", "mnt", "user")}
    try:
        # Decide up front which ones differ from ours (setns into the namespace we are
        # already in is refused for user namespaces, and pointless for the rest).
        differ = {name for name in fds
                  if os.fstat(fds[name]).st_ino != os.stat(f"/proc/self/ns/{name}").st_ino}
        for name, flag in _NS_ORDER:
            if name in differ:
                setns(fds[name], flag, f"/proc/{init_pid}/ns/{name}")
        # A nested user namespace is joined last: after it we hold no capability over the
        # daemon-owned namespaces above.
        if "user" in differ:
            setns(fds["user"], CLONE_NEWUSER, f"/proc/{init_pid}/ns/user")
    finally:
        for fd in fds.values():
            os.close(fd)


def enter_container(init_pid, spec, stdio, status_fd, tie):
    """Join a running container and fork the exec'd process. Runs in the starter process.

    Returns the new process's pid (host pid namespace) in the starter, which then exits; the
    child execs or reports a StartError on `status_fd`. Re-parenting follows the *starter's*
    pid namespace, so the orphan goes to the daemon (the subreaper), not to the container's
    init -- and the daemon must reap it, or a dying init waits for ever in
    zap_pid_ns_processes for this last process of its namespace to be released.
    """
    join_namespaces(init_pid)
    # setns(CLONE_NEWPID) only decides where our *children* live. A raw clone, not os.fork():
    # the starter is single-threaded and the child execs within milliseconds, so CPython's
    # after-fork work (re-made locks and thread state, at-fork hooks) would be pure cost.
    pid = clone_process(0)
    if pid:
        return pid
    try:
        _exec_init(spec, stdio, tie)
    except BaseException as e:
        try:
            report_failure(status_fd, e)
        finally:
            os._exit(e.exit_code if isinstance(e, StartError) else 125)
    os._exit(125)


def _exec_init(spec, stdio, tie):
    uid, gid, groups = spec.get("uid", 0), spec.get("gid", 0), list(spec.get("groups", []))
    caps = spec["_caps"] if "_caps" in spec else capability_set(
        spec.get("cap_add"), spec.get("cap_drop"), spec.get("privileged"))
    if spec.get("cgroup"):
        join_cgroup(spec["cgroup"])
    # A user the joined namespaces cannot represent (e.g. `exec -u 1000` into a container
    # running as root under a single-id daemon map) gets its own nested namespace, as in run.
    if needs_nested_userns(spec):
        enter_user_userns(uid, gid)
    if spec.get("pids_limit"):          # the container's own count, joined with its namespace
        pidlimit.limit_self(spec["pids_limit"])
    if not spec.get("no_new_privileges"):   # the same order as in run, for the same reasons
        install_seccomp(spec)
    drop_bounding_set(caps, spec.get("_last_cap", 40))
    if spec.get("no_new_privileges"):
        set_no_new_privs()
    switch_user(uid, gid, groups)
    set_capabilities(caps)
    _step_chdir(spec.get("cwd") or "/")
    _prepare_process(stdio, bool(spec.get("tty")), tie.arm)
    if spec.get("no_new_privileges"):
        install_seccomp(spec)
    _exec(spec["argv"], spec.get("env") or [])


# --- looking at running containers ---------------------------------------------------------

def container_pids(init_pid):
    """Host pids of every process in the pid namespace of `init_pid` (for top)."""
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
            except OSError:
                continue                # exited meanwhile, or not ours to look at
    return sorted(pids)


def signal_all(init_pid, sig):
    """Send `sig` to every process of the container (pause fallback: SIGSTOP / SIGCONT).

    The init goes first for SIGSTOP (so it cannot reap and respawn while we walk) and last
    for SIGCONT. Returns the pids signalled."""
    pids = container_pids(init_pid)
    init_first = sig == signal.SIGSTOP
    order = sorted(pids, key=lambda p: (p != init_pid) if init_first else (p == init_pid))
    done = []
    for p in order:
        try:
            os.kill(p, sig)
            done.append(p)
        except ProcessLookupError:
            pass
    return done
