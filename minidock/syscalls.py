"""The raw system calls a container needs that Python 3.11 lacks, and how a failing step is named.

`os` has no unshare(2), setns(2), mount(2), umount2(2), prctl(2), pivot_root(2) or a clone(2)
with flags (3.12 adds only the first two), so they are called through ctypes on the C library, loaded with
`use_errno=True` so that a -1 return becomes `OSError(errno, strerror, call)` naming the call
and, for mount(2), its `MS_*` flags by name:

    mount('proc', '/r/proc', 'proc', MS_NOSUID|MS_NODEV|MS_NOEXEC, None): [Errno 1] ...

pivot_root(2) and capset(2) have no glibc wrapper and go through syscall(2) by number (x86_64).
syncfs(2) and renameat2(2) (its RENAME_EXCHANGE, `exchange`) are missing from `os` as well;
the layer store uses them to make extracted layers durable in batches (diffsync.py).
And one that Python has but gets wrong: 3.11's `socket.recv_fds` drops its `flags`, so a
descriptor received with it is never close-on-exec and a MSG_DONTWAIT read blocks;
`recv_fds` here calls recvmsg(2) with them.

clone(2) as fork
----------------
`clone_process(flags)` is the raw system call with no new stack: like fork(2), the child goes on
from the same point on a copy of the caller's memory, so it returns into Python a second time,
with 0. Unlike os.fork(), nothing of CPython's or glibc's fork handling runs around it: no
at-fork hooks, no re-initialised locks or thread state, and glibc's cached thread id in the
child still says the parent's. That is sound only in a *single-threaded* process that holds no
lock but the GIL -- the spawner, between two events -- and for a child that soon execs or
_exits. The call goes through `ctypes.PyDLL`, which keeps the GIL held across it: neither side
has to take it back. Flags used here:

    CLONE_PARENT   the child's parent is our parent (the daemon), not us: its exit goes to the
                   daemon, it is the daemon's to reap, and its death signal (PR_SET_PDEATHSIG)
                   watches the daemon's thread that started us.
    CLONE_NEW*     the namespaces of unshare(2), made for the child only: with CLONE_NEWPID
                   the child is PID 1 of its new pid namespace at once.

Set-up steps and their errors
-----------------------------
Between fork and execve a container's init runs a few dozen steps (ns.py, mounts.py,
userns.py). Each is decorated with `Step("mount /proc")`: any exception inside becomes a
`StartError` carrying the step's name and errno. `report_failure()` sends it to the spawner as
one record on a close-on-exec pipe (b"E" + JSON + newline, shorter than PIPE_BUF so the write is
atomic); a successful execve closes the pipe, so EOF without a word means "started" --
runc's error-pipe pattern (a run's init also writes `R` just before its execve: spawnerloop.py).
`exit_code` follows Docker: 127 command not found, 126 not executable, 125 any other set-up
failure.

Where an init's time goes: with MINIDOCK_PROFILE_TRACE naming a file in the daemon's
environment (scripts/profile-start sets it; the spawner and every init inherit it), each step a
container's init runs appends `B <ns> init <name>` to it as it begins and `E ...` as it ends,
one write(2) each, on CLOCK_MONOTONIC: the clock and the format of profile-start's records of
the daemon, so a start's waterfall goes on inside the init. Unset, a step costs one test more.

Man pages: unshare(2), setns(2), mount(2), umount2(2), prctl(2), pivot_root(2), capset(2),
close_range(2), syscall(2).
"""

import array
import ctypes
import json
import os
import socket
import time

from . import errors

# --- the raw syscalls ----------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
libc.syscall.restype = ctypes.c_long
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2           # <linux/fs.h>: start write-out of the range's dirty pages
libc.syncfs.argtypes = [ctypes.c_int]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
RENAME_EXCHANGE = 2                 # <linux/fs.h>: swap the two paths
# The same C library called *without* releasing the GIL (clone_process).
_gil_syscall = ctypes.PyDLL(None, use_errno=True).syscall
_gil_syscall.restype = ctypes.c_long
_gil_syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_ulong]

CLONE_PARENT = 0x00008000

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
_MS_NAMES = {MS_RDONLY: "MS_RDONLY", MS_NOSUID: "MS_NOSUID", MS_NODEV: "MS_NODEV",
             MS_NOEXEC: "MS_NOEXEC", MS_REMOUNT: "MS_REMOUNT", MS_NOATIME: "MS_NOATIME",
             MS_NODIRATIME: "MS_NODIRATIME", MS_BIND: "MS_BIND", MS_REC: "MS_REC",
             MS_PRIVATE: "MS_PRIVATE", MS_RELATIME: "MS_RELATIME",
             MS_STRICTATIME: "MS_STRICTATIME"}

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_SYS_PIVOT_ROOT = 155          # x86_64 numbers; glibc has no pivot_root() wrapper
SYS_CAPSET = 126
SYS_CLOSE_RANGE = 436
_SYS_CLONE = 56
_SYS_OPEN_TREE = 428           # the same number on every architecture (Linux 5.2)
_SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_SIGCHLD = 17
CLOSE_RANGE_CLOEXEC = 4


def check(ret, call):
    """Turn a libc -1 return into OSError(errno, strerror, call)."""
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), call)
    return ret


def _flag_names(flags):
    names = [n for bit, n in _MS_NAMES.items() if flags & bit]
    return "|".join(names) or "0"


def _fail(call):
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e), call)

# Each wrapper below names its call only when it failed: a container init makes some sixty of
# these calls, and building every message up front was a measurable part of its start.


def unshare(flags):
    if libc.unshare(flags) == -1:
        _fail(f"unshare({flags:#x})")


def clone_process(flags):
    """clone(2) as fork: 0 in the child, the child's pid in the caller (see the docstring above).
    SIGCHLD is the exit signal (with CLONE_PARENT the kernel takes ours instead: the same)."""
    ret = _gil_syscall(_SYS_CLONE, flags | _SIGCHLD, None, None, None, 0)
    if ret == -1:
        _fail(f"clone({flags:#x})")
    return ret


def start_writeback(fd, start=0, length=0):
    """sync_file_range(fd, start, length, SYNC_FILE_RANGE_WRITE): start writing the range's
    dirty pages to disk and return at once (length 0: to the end of the file). Only a hint:
    it makes nothing durable (no metadata, no wait; fsync(2) still does that) and a failure
    just leaves the pages to the next fsync or the kernel's own writeback, so the return
    value is the caller's to ignore. Used by large writers -- a layer's tar, a container's
    log -- so that a later fsync or sync finds little left to write."""
    return libc.sync_file_range(fd, start, length, SYNC_FILE_RANGE_WRITE)


def syncfs(fd):
    """syncfs(2): write out everything dirty on the file system that holds `fd`, and wait."""
    if libc.syncfs(fd) == -1:
        _fail("syncfs")


def exchange(a, b):
    """renameat2(a, b, RENAME_EXCHANGE): swap two existing paths in one step (Linux 3.15)."""
    if libc.renameat2(_AT_FDCWD, _enc(a), _AT_FDCWD, _enc(b), RENAME_EXCHANGE) == -1:
        _fail(f"renameat2({a}, {b}, RENAME_EXCHANGE)")


def setns(fd, nstype, what=""):
    if libc.setns(fd, nstype) == -1:
        _fail(f"setns({what or fd}, {nstype:#x})")


def _enc(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags, data=None):
    if libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) == -1:
        _fail(f"mount({source!r}, {target!r}, {fstype!r}, {_flag_names(flags)}, {data!r})")


def umount2(target, flags):
    if libc.umount2(os.fsencode(target), flags) == -1:
        _fail(f"umount2({target!r}, {flags})")


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    ret = libc.prctl(option, arg2, arg3, arg4, arg5)
    if ret == -1:
        _fail(f"prctl({option}, {arg2})")
    return ret


def drain(fd):
    """Read a non-blocking wake-up pipe empty: its bytes only say "look again" (the self-pipe
    a thread or a signal handler writes to wake a select loop)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def recv_fds(sock, bufsize, maxfds, flags=0):
    """(data, descriptors) of one datagram, with up to `maxfds` descriptors (SCM_RIGHTS):
    socket.recv_fds, whose `flags` Python 3.11 never passes on to recvmsg(2) -- so neither
    MSG_CMSG_CLOEXEC nor MSG_DONTWAIT applied through it."""
    data, ancdata, _, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * 4), flags)
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", payload[:len(payload) - len(payload) % 4])
    return data, fds


def open_tree(path, flags=OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE):
    """open_tree(2): with OPEN_TREE_CLONE, a *detached* copy of the mount tree at `path` (a
    bind mount, AT_RECURSIVE: with its submounts), held by the returned fd; it can be sent to
    another process and attached in its mount namespace with move_mount(). Closing the last fd
    of a tree never attached dissolves it."""
    fd = libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(path), ctypes.c_uint(flags))
    if fd == -1:
        _fail(f"open_tree({path!r})")
    return fd


def move_mount(tree_fd, target):
    """move_mount(2) the detached tree `tree_fd` (open_tree) onto `target`, in our namespace."""
    if libc.syscall(_SYS_MOVE_MOUNT, tree_fd, b"", _AT_FDCWD, os.fsencode(target),
                    ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)) == -1:
        _fail(f"move_mount({tree_fd}, {target!r})")


def pivot_root(new_root, put_old):
    if libc.syscall(_SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old)) == -1:
        _fail(f"pivot_root({new_root!r}, {put_old!r})")



# --- container set-up: errors reported before exec ----------------------------------------

class StartError(errors.System):
    """A container or exec could not start. `exit_code` follows Docker: 127 command not found,
    126 not executable, 125 any other set-up failure; `step` names the step that failed.
    The message keeps the phrases the docker CLI matches ("executable file not found",
    "no such file or directory", "permission denied") to pick its own exit code."""

    def __init__(self, message, step="", errno_=0, exit_code=125):
        super().__init__(message)
        self.step, self.errno, self.exit_code = step, errno_, exit_code

    def to_record(self):
        return {"message": self.message, "step": self.step, "errno": self.errno,
                "exit_code": self.exit_code}

    @classmethod
    def from_record(cls, r):
        return cls(r["message"], r.get("step", ""), r.get("errno", 0), r.get("exit_code", 125))


class Step:
    """Decorator naming a set-up step: any failure inside becomes a StartError saying which."""

    def __init__(self, name):
        self.name = name

    def __call__(self, fn):
        name = self.name

        def wrapper(*args, **kwargs):
            traced = TRACE_PATH is not None and trace_step(b"B", name)
            try:
                return fn(*args, **kwargs)
            except StartError:
                raise
            except OSError as e:
                raise StartError(f"{name}: {e}", name, e.errno or 0) from e
            except Exception as e:
                raise StartError(f"{name}: {type(e).__name__}: {e}", name) from e
            finally:
                if traced:
                    trace_step(b"E", name)
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper


TRACE_PATH = os.environ.get("MINIDOCK_PROFILE_TRACE")
# A high number: an init that closes the descriptors it inherited frees it, and nothing of ours
# takes it meanwhile (a reopened trace cannot end up writing into another file).
_TRACE_FD = 1000


def trace_step(kind, name):
    """Append a step's record to the trace (module docstring) -> whether it was traced: only in
    a container's init (PID 1 of its namespace), where the daemon's own tracing cannot reach."""
    if os.getpid() != 1:
        return False
    record = b"%s %d init %s\n" % (kind, time.monotonic_ns(), name.encode())
    try:
        os.write(_TRACE_FD, record)
    except OSError:
        try:               # not open in this process yet (or closed): open it, while it is in sight
            fd = os.open(TRACE_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.dup2(fd, _TRACE_FD, inheritable=False)
            os.close(fd)
            os.write(_TRACE_FD, record)
        except OSError:
            return False   # after pivot_root, or past the container's own descriptor limit
    return True


def report_failure(status_fd, exc):
    """Send a set-up failure to the spawner as one atomic pipe record: b"E" + JSON + newline."""
    if not isinstance(exc, StartError):
        exc = StartError(f"{type(exc).__name__}: {exc}")
    os.write(status_fd, b"E" + json.dumps(exc.to_record()).encode()[:3000] + b"\n")
