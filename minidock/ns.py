"""Namespaces, mounts, pivot_root, capabilities and exec: how a process becomes a container.

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

The daemon's user namespace (the RootlessKit model)
---------------------------------------------------
`enter_daemon_userns()` runs once, in the single-threaded daemon at start-up. It unshares a user
and a mount namespace and gets the id maps written:

    real root                    `0 0 65536`, written by a helper outside the namespace
    /etc/subuid range + uidmap   `0 UID 1` and `1 SUBUID min(count, 65535)`, written by
                                 newuidmap(1)/newgidmap(1) run from a helper outside
    neither                      `0 UID 1`, written by the process itself after writing
                                 "deny" to /proc/self/setgroups (the kernel insists on that
                                 order for an unprivileged gid_map, see user_namespaces(7))

A process can only write a one-line map of its own id for itself; anything richer needs
CAP_SETUID in the *parent* namespace, which is why the helper is forked *before* unshare and
stays outside. From then on the daemon is "root" with every capability over what its user
namespace owns: its mount namespace, and every namespace its children create.

Containers
----------
`spawn_container()` is the whole container set-up as one linear sequence. It runs in a fresh
fork of the spawner (the "shim", see spawner.py): it unshares mount, pid, uts, ipc (and net)
namespaces, forks so the command will be PID 1, and the child runs `_container_init()`:
mounts, pivot_root(2), hostname, rlimits, capabilities, user, execve(2). Every step is named;
when one fails, the step, errno and message go back to the spawner over a close-on-exec pipe
(the pipe reaches EOF without a word when execve succeeds) -- runc's error-pipe pattern.

A container user that is not mapped (the no-subordinate-ids case)
-----------------------------------------------------------------
With no /etc/subuid range the daemon's namespace maps exactly one id, 0. `docker run -u 1000`
must still run as 1000. After all mounts are done, the container init unshares a *nested*
user namespace and maps `1000 0 1` / `GID 0 1` into it: container uid 1000 *is* the daemon's
uid on the host. Trade-offs, stated plainly:
  - the container uid and the daemon's uid are the same host uid, so files the user creates in
    a bind mount belong to the daemon's user (that is what rootless users expect anyway), and
    nothing separates "root" and "1000" inside the container at the file level: files owned
    by container root appear as `nobody` (unmapped) to the user, and the user cannot chown.
  - supplementary groups cannot be set (setgroups is "deny" in both namespaces), so
    `--group-add` is ignored in this mode, and only one uid exists: `su` to another user fails.
  - capabilities: the nested namespace grants the init full capabilities over *itself* only;
    execve as a non-zero uid clears them, as for any non-root user.
A daemon with a subordinate range (or root) maps 65536 ids and never needs the nested namespace.

keep-id: the daemon's user is the container's user
----------------------------------------------------
With a subordinate range, container uid 1000 is host uid SUBUID+999, so `-u 1000 -v $PWD:/w`
cannot write the user's own directory. `keep_id` in the spec (Podman's `--userns=keep-id`,
`HostConfig.UsernsMode: "keep-id"`) gives the container a nested user namespace in which the
daemon's host uid U keeps its number: container U is daemon-namespace 0, i.e. U on the host.
The other ids are shifted around it, so all N ids of the daemon's namespace stay mapped:

    container 0 .. U-1    ->  daemon 1 .. U          (subordinate ids)
    container U           ->  daemon 0               (the user, on the host)
    container U+1 .. N-1  ->  daemon U+1 .. N-1

(`keep_id_map()` computes it; /proc/self/uid_map inside shows the three lines.) Writing a
multi-line map needs CAP_SETUID in the *parent* namespace, which the process loses the moment it
unshares, so the init forks a helper first; the helper stays in the daemon's namespace and writes
the init's maps (the same reason enter_daemon_userns() forks one). The price, plainly: the image's
files are stored as daemon ids, so inside the container a root-owned file (daemon 0) shows as
owned by U, and a file of U shows as 0 -- Podman chowns a copy of the image to avoid that; we do
not. Without a subordinate range the daemon has one id and keep-id is what `-u U` already does.

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

import ctypes
import errno
import json
import os
import pwd
import resource
import shutil
import signal
import stat

from . import errors

# --- the raw syscalls ----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long

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
_SYS_CAPSET = 126
_SYS_CLOSE_RANGE = 436
_CLOSE_RANGE_CLOEXEC = 4
_TIOCSCTTY = 0x540E


def _check(ret, call):
    """Turn a libc -1 return into OSError(errno, strerror, call)."""
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), call)
    return ret


def _flag_names(flags):
    names = [n for bit, n in _MS_NAMES.items() if flags & bit]
    return "|".join(names) or "0"


def unshare(flags):
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd, nstype, what=""):
    _check(_libc.setns(fd, nstype), f"setns({what or fd}, {nstype:#x})")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    ret = _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data))
    _check(ret, f"mount({source!r}, {target!r}, {fstype!r}, {_flag_names(flags)}, {data!r})")


def umount2(target, flags):
    _check(_libc.umount2(os.fsencode(target), flags), f"umount2({target!r}, {flags})")


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option}, {arg2})")


def pivot_root(new_root, put_old):
    ret = _libc.syscall(_SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old))
    _check(ret, f"pivot_root({new_root!r}, {put_old!r})")


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

MASKED_PATHS = [  # hidden: a file gets /dev/null bound over it, a directory an empty ro tmpfs
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

HOST_DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024

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


# --- user namespaces: support check and the daemon's namespace --------------------------

def _read_sysctl(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_userns_support():
    """Say why the kernel refuses unprivileged user namespaces, and how to fix it.

    Reads the knobs distributions use to switch them off, then proves the answer by forking a
    child that tries unshare(CLONE_NEWUSER). Returns None when it works; raises
    errors.Unavailable naming the knob and the command that flips it otherwise.
    """
    fixes = []
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        fixes.append("kernel.unprivileged_userns_clone=0 (Debian/Arch knob): run "
                     "`sudo sysctl -w kernel.unprivileged_userns_clone=1`")
    if _read_sysctl("/proc/sys/user/max_user_namespaces") == "0":
        fixes.append("user.max_user_namespaces=0: run "
                     "`sudo sysctl -w user.max_user_namespaces=28633`")
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        fixes.append("kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10+ AppArmor): run "
                     "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or give "
                     "the python interpreter an AppArmor profile with the `userns,` rule")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            unshare(CLONE_NEWUSER)
        except OSError as e:
            code = e.errno or 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    why = "; ".join(fixes) or "no known sysctl is set; check seccomp filters and LSMs"
    raise errors.Unavailable(
        f"the kernel refuses unprivileged user namespaces "
        f"(unshare(CLONE_NEWUSER): {os.strerror(code)}): {why}")


def _subordinate_range(path, uid):
    """The first `name_or_uid:start:count` line of /etc/subuid or /etc/subgid for `uid`."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(uid)) and int(parts[2]) > 0:
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        pass
    return None


class DaemonUserns:
    """What enter_daemon_userns() did, for /info and for the spawner's decisions."""

    def __init__(self, method, host_uid, host_gid, uid_map, gid_map):
        self.method = method            # "root", "newuidmap" or "self"
        self.host_uid = host_uid        # the daemon's uid/gid outside its namespace
        self.host_gid = host_gid
        self.uid_map = uid_map          # the map lines, as /proc/self/uid_map shows them
        self.gid_map = gid_map
        self.full_range = len(uid_map) > 1 or method == "root"   # 65536 ids, -u 1000 is plain

    def as_dict(self):
        return {"method": self.method, "host_uid": self.host_uid, "host_gid": self.host_gid,
                "uid_map": self.uid_map, "gid_map": self.gid_map, "full_range": self.full_range}


def _map_helper(go_r, err_w, target_pid, method, uid_map, gid_map):
    """Forked *before* unshare, so it is still outside: write the target's maps, then exit."""
    try:
        os.read(go_r, 1)               # wait until the parent has unshared
        if method == "root":           # real root may write any map directly
            for name, lines in (("uid_map", uid_map), ("gid_map", gid_map)):
                with open(f"/proc/{target_pid}/{name}", "w") as f:
                    f.write("\n".join(lines) + "\n")
        else:                          # setuid helpers check /etc/subuid for us
            for tool, lines in (("newuidmap", uid_map), ("newgidmap", gid_map)):
                args = [tool, str(target_pid)] + " ".join(lines).split()
                pid = os.posix_spawnp(tool, args, os.environ)
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise OSError(errno.EPERM, f"{' '.join(args)} failed "
                                  f"(exit {os.waitstatus_to_exitcode(status)})")
        os._exit(0)
    except BaseException as e:
        os.write(err_w, str(e).encode()[:4000])
        os._exit(1)


def enter_daemon_userns():
    """Move the calling (single-threaded) process into its own user + mount namespace.

    Returns a DaemonUserns. Call once, before any thread exists: unshare(CLONE_NEWUSER) is
    refused (EINVAL) to multi-threaded processes. Raises errors.Unavailable with a fix when
    the kernel refuses user namespaces, OSError for other failures.
    """
    uid, gid = os.getuid(), os.getgid()
    # Step 1: choose the mapping policy (see the module docstring).
    subuid = _subordinate_range("/etc/subuid", uid)
    subgid = _subordinate_range("/etc/subgid", uid)
    if uid == 0:
        method, uid_map, gid_map = "root", ["0 0 65536"], ["0 0 65536"]
    elif subuid and subgid and shutil.which("newuidmap") and shutil.which("newgidmap"):
        method = "newuidmap"
        uid_map = [f"0 {uid} 1", f"1 {subuid[0]} {min(subuid[1], 65535)}"]
        gid_map = [f"0 {gid} 1", f"1 {subgid[0]} {min(subgid[1], 65535)}"]
    else:
        method, uid_map, gid_map = "self", [f"0 {uid} 1"], [f"0 {gid} 1"]

    # Step 2: a helper that stays outside must exist *before* we unshare, because only a
    # process with CAP_SETUID in the parent namespace may write a multi-line map.
    helper = go_w = err_r = None
    if method != "self":
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        me = os.getpid()
        helper = os.fork()
        if helper == 0:
            os.close(go_w)
            os.close(err_r)
            _map_helper(go_r, err_w, me, method, uid_map, gid_map)
        os.close(go_r)
        os.close(err_w)

    # Step 3: the new user namespace, and a mount namespace it owns (both in one call, so the
    # mount namespace belongs to the new user namespace and we may mount in it).
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
    except OSError as e:
        if helper:
            os.close(go_w)             # the helper reads EOF and fails harmlessly
            os.waitpid(helper, 0)
        if e.errno in (errno.EPERM, errno.ENOSPC, errno.EACCES):
            check_userns_support()
        raise

    # Step 4: the id maps. Unprivileged self-mapping must deny setgroups before gid_map.
    if method == "self":
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(uid_map[0] + "\n")
        with open("/proc/self/gid_map", "w") as f:
            f.write(gid_map[0] + "\n")
    else:
        os.write(go_w, b"g")
        os.close(go_w)
        _, status = os.waitpid(helper, 0)
        msg = os.read(err_r, 4096).decode(errors="replace")
        os.close(err_r)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(errno.EPERM, f"writing id maps with {method}: {msg}")

    # Step 5: mounts made from now on must not propagate back to the host (our copy of the
    # mount table still shares peer groups with the host's shared mounts).
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    return DaemonUserns(method, uid, gid, uid_map, gid_map)


def read_id_map(path="/proc/self/uid_map"):
    """[(inside, outside, count), ...] from a uid_map/gid_map file."""
    with open(path) as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


def id_mapped(id_, id_map):
    return any(inside <= id_ < inside + count for inside, _, count in id_map)


# --- users, from the container's own /etc/passwd and /etc/group ---------------------------

def in_root(root, path):
    """`path` resolved inside `root` as if root were "/": symlinks cannot escape it.

    Like chroot path resolution (and Go's securejoin): ".." stops at root, absolute symlink
    targets restart from root. The result may not exist yet.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), candidate)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


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
        if group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((e for e in groups if e[0] == group_part), None)
            if g is None:
                raise errors.InvalidParameter(
                    f"unable to find group {group_part}: no matching entries in group file")
            gid = int(g[2])
    extra = []
    if username is not None and not group_part:
        extra = [int(e[2]) for e in groups if username in e[3].split(",")]
    for g in group_add or ():
        g = str(g)
        if g.isdigit():
            extra.append(int(g))
        else:
            e = next((e for e in groups if e[0] == g), None)
            if e is None:
                raise errors.InvalidParameter(
                    f"unable to find group {g}: no matching entries in group file")
            extra.append(int(e[2]))
    return uid, gid, sorted(set(extra))


def user_home(rootfs, uid):
    """The home directory of `uid` in the container's /etc/passwd, or "/" (Docker's HOME)."""
    for e in _read_db(rootfs, "/etc/passwd"):
        if len(e) >= 7 and e[2] == str(uid):
            return e[5] or "/"
    return "/"


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


class _Step:
    """Decorator naming a set-up step: any failure inside becomes a StartError saying which."""

    def __init__(self, name):
        self.name = name

    def __call__(self, fn):
        name = self.name

        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StartError:
                raise
            except OSError as e:
                raise StartError(f"{name}: {e}", name, e.errno or 0) from e
            except Exception as e:
                raise StartError(f"{name}: {type(e).__name__}: {e}", name) from e
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper


def report_failure(status_fd, exc):
    """Send a set-up failure to the spawner as one atomic pipe record: b"E" + JSON + newline."""
    if not isinstance(exc, StartError):
        exc = StartError(f"{type(exc).__name__}: {exc}")
    os.write(status_fd, b"E" + json.dumps(exc.to_record()).encode()[:3000] + b"\n")


# --- the steps, in the order spawn_container() and _container_init() call them ----------

@_Step("join the net namespace of the other container")
def join_netns(pid):
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET, f"/proc/{pid}/ns/net")
    finally:
        os.close(fd)


@_Step("create namespaces")
def unshare_namespaces(network):
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if network == "none" or (isinstance(network, dict) and "netns_pid" in network):
        flags |= CLONE_NEWNET          # a fresh stack: loopback only (then maybe veths)
    unshare(flags)


@_Step("make mounts private")
def make_mounts_private():
    # The daemon made / private already; repeat it so nothing set up later can ever
    # propagate into the daemon's view, whatever happened to the tree since.
    mount(None, "/", None, MS_REC | MS_PRIVATE)


@_Step("join cgroup")
def join_cgroup(cgroup_dir):
    with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
        f.write("0")                   # "0" means the writing process


@_Step("bind the rootfs onto itself")
def bind_rootfs(rootfs):
    # pivot_root(2) wants new_root to be a mount point; an assembled directory may not be.
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)


@_Step("mount /proc")
def mount_proc(rootfs):
    # Must run in the new pid namespace: proc shows the pid namespace of whoever mounts it.
    target = in_root(rootfs, "/proc")
    os.makedirs(target, exist_ok=True)
    mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _touch(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


@_Step("mount /dev")
def mount_dev(rootfs, shm_size, console):
    dev = in_root(rootfs, "/dev")
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    # mknod is refused in a user namespace, so device nodes are the host's, bound onto
    # empty files.
    for name in HOST_DEVICES:
        _touch(f"{dev}/{name}")
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    # A private devpts instance: the container sees only its own ptys.
    os.mkdir(f"{dev}/pts", 0o755)
    flags = MS_NOSUID | MS_NOEXEC
    try:
        mount("devpts", f"{dev}/pts", "devpts", flags, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    except OSError as e:
        if e.errno != errno.EINVAL:     # gid 5 (tty) is not mapped in our namespace
            raise
        mount("devpts", f"{dev}/pts", "devpts", flags, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"mode=1777,size={int(shm_size)}")
    os.mkdir(f"{dev}/mqueue", 0o755)
    try:   # allowed because the ipc namespace we created belongs to our user namespace
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        os.rmdir(f"{dev}/mqueue")
    if console:                         # the TTY's slave, as /dev/console
        _touch(f"{dev}/console")
        mount(console, f"{dev}/console", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, f"{dev}/{name}")


TIOCGPTN = 0x80045430       # _IOR('T', 0x30, unsigned int): the slave's number
TIOCSPTLCK = 0x40045431     # _IOW('T', 0x31, int): lock/unlock the slave


@_Step("create the console in the container's devpts")
def open_console(rootfs, console_socket):
    """The container's terminal, made in its own devpts and handed over (runc's console socket).

    A pty made by the daemon lives in the daemon's devpts: it works as a terminal, but inside
    the container `tty` can only call it /dev/console. Opened here, from the fresh devpts
    instance, the slave is /dev/pts/0 as on Docker. The master goes back over the unix socket
    the daemon passed as stdin (one SCM_RIGHTS message, b"M"); the slave becomes 0, 1 and 2
    and is bound as /dev/console. Returns the slave's fd.
    """
    import fcntl
    import socket
    import struct
    pts = in_root(rootfs, "/dev/pts")
    master = os.open(f"{pts}/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))       # unlock before the open below
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"{pts}/{number}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    console = in_root(rootfs, "/dev/console")
    _touch(console)
    mount(f"{pts}/{number}", console, None, MS_BIND)
    sock = socket.socket(fileno=os.dup(console_socket))
    try:
        socket.send_fds(sock, [b"M"], [master])
    finally:
        sock.close()
        os.close(master)
    return slave


def receive_console(sock, timeout=5.0):
    """The daemon's side of open_console(): the pty master, or None if none came."""
    import socket as _socket
    sock.settimeout(timeout)
    try:
        msg, fds, _, _ = _socket.recv_fds(sock, 16, 1)
    except OSError:
        return None
    if msg != b"M" or not fds:
        for fd in fds:
            os.close(fd)
        return None
    return fds[0]


def _locked_flags(path):
    """The flags of the mount at `path` that a remount in a user namespace must keep.

    Flags set by a more privileged namespace (nosuid, nodev, noexec, atime) are locked: a
    remount that would clear them fails with EPERM, so we read them back with statvfs and
    repeat them."""
    f = os.statvfs(path).f_flag
    flags = 0
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                   (os.ST_RELATIME, MS_RELATIME)):
        if f & st:
            flags |= ms
    return flags


def remount_readonly(path):
    """Make one bind mount read-only (mount(2): MS_REMOUNT|MS_BIND|MS_RDONLY)."""
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(path))


@_Step("mount /sys read-only")
def mount_sys(rootfs):
    target = in_root(rootfs, "/sys")
    os.makedirs(target, exist_ok=True)
    try:
        # Allowed only when our user namespace owns the net namespace (network "none").
        mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as e:
        if e.errno != errno.EPERM:
            raise
        # Host or joined network: the host's /sys, bound and made read-only (its submounts
        # keep their own flags).
        mount("/sys", target, None, MS_BIND | MS_REC)
        remount_readonly(target)


@_Step("mask /proc and /sys paths")
def mask_paths(rootfs, paths):
    for p in paths:
        target = in_root(rootfs, p)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", target, "tmpfs", MS_RDONLY, "size=0")
        else:
            mount("/dev/null", target, None, MS_BIND)


@_Step("make /proc paths read-only")
def readonly_paths(rootfs, paths):
    for p in paths:
        target = in_root(rootfs, p)
        if not os.path.exists(target):
            continue
        mount(target, target, None, MS_BIND | MS_REC)
        remount_readonly(target)


@_Step("bind mounts")
def bind_mounts(rootfs, mounts):
    for m in mounts:
        source, target = m["source"], in_root(rootfs, m["target"])
        if not os.path.lexists(target):  # create the mount point, shaped like the source
            if os.path.isdir(source):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _touch(target)
        mount(source, target, None, MS_BIND | MS_REC)
        if m.get("readonly"):
            remount_readonly(target)


@_Step("pivot_root")
def enter_rootfs(rootfs):
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # only the container's tree. No put_old directory is needed inside the image.
    os.chdir(rootfs)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


@_Step("create the working directory")
def create_workdir(cwd, uid, gid):
    if not os.path.isdir(cwd):
        os.makedirs(cwd, 0o755, exist_ok=True)
        try:                            # unmapped ids (nested-userns mode) cannot be chowned to
            os.chown(cwd, uid, gid)
        except OSError:
            pass


@_Step("remount the rootfs read-only")
def readonly_rootfs():
    remount_readonly("/")


@_Step("set the hostname")
def set_hostname(name):
    import socket
    socket.sethostname(name)


@_Step("set rlimits")
def set_rlimits(ulimits):
    for u in ulimits:
        resource.setrlimit(RLIMITS[u["name"]], (int(u["soft"]), int(u["hard"])))


@_Step("enter a nested user namespace for the container user")
def enter_user_userns(uid, gid):
    # The daemon's namespace maps only uid 0. Here the init (uid 0 there) becomes `uid`.
    # A process may write a one-line map of its own id for itself; setgroups must be
    # "deny" before gid_map is written.
    outer_uid, outer_gid = os.geteuid(), os.getegid()   # 0 for a container init
    unshare(CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {outer_uid} 1\n")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {outer_gid} 1\n")


def keep_id_map(host_id, daemon_map):
    """The nested map lines of keep-id for `host_id` (see the module docstring), given the
    daemon namespace's own map [(inside, outside, count)] as /proc/self/uid_map shows it."""
    total = sum(count for _, _, count in daemon_map)
    lines = []
    if host_id > 0 and total > 1:
        lines.append(f"0 1 {min(host_id, total - 1)}")
    lines.append(f"{host_id} 0 1")
    if host_id + 1 < total:
        lines.append(f"{host_id + 1} {host_id + 1} {total - host_id - 1}")
    return lines


@_Step("enter the keep-id user namespace")
def enter_keep_id_userns(uid_lines, gid_lines):
    # A helper forked *before* unshare stays in the daemon's namespace, where we hold
    # CAP_SETUID/CAP_SETGID, and writes our maps: we could only write a one-line map of our
    # own id after unsharing. /proc here is the container's: our pid is its number there.
    me = os.getpid()
    go_r, go_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        code = 1
        try:
            os.close(go_w)
            os.read(go_r, 1)            # wait until the init has unshared
            for name, lines in (("uid_map", uid_lines), ("gid_map", gid_lines)):
                with open(f"/proc/{me}/{name}", "w") as f:
                    f.write("\n".join(lines) + "\n")
            code = 0
        finally:
            os._exit(code)
    os.close(go_r)
    try:
        unshare(CLONE_NEWUSER)
    finally:
        os.write(go_w, b"g")            # on failure the helper writes to our old namespace
        os.close(go_w)                  # and fails harmlessly: that map is already set
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(errno.EPERM, "the keep-id helper could not write the id maps",
                      f"/proc/{me}/uid_map")


@_Step("drop capabilities from the bounding set")
def drop_bounding_set(keep, last_cap):
    for cap in range(last_cap + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


@_Step("set no_new_privs")
def set_no_new_privs():
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def _setgroups_allowed():
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True


@_Step("switch user")
def switch_user(uid, gid, groups):
    # Groups first, then gid, then uid: after setuid to non-root we could do neither.
    if _setgroups_allowed():
        os.setgroups(groups)
    elif groups and groups != [gid]:
        pass                            # denied in this namespace: documented trade-off
    os.setgid(gid)
    os.setuid(uid)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@_Step("set capabilities")
def set_capabilities(keep):
    # For uid 0 execve gives permitted = inheritable | bounding; we narrowed the bounding set,
    # and now make the current sets match too. For other uids setuid already cleared them.
    if os.geteuid() != 0:
        return
    header = _CapHeader(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    for cap in keep:
        word, bit = divmod(cap, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
        data[word].inheritable |= 1 << bit
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


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


def _exec(argv, env):
    path = find_executable(argv[0], env)
    environ = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    try:
        os.execve(path, argv, environ)
    except OSError as e:
        code = 127 if e.errno == errno.ENOENT else 126 if e.errno in (
            errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR) else 125
        what = "no such file or directory" if code == 127 else (
            "permission denied" if code == 126 else e.strerror)
        raise StartError(f'exec: "{path}": {what}', "exec", e.errno, code) from e


def _prepare_process(stdio, tty):
    """Last steps common to run and exec: stdio, session, signals, death signal, fds."""
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)            # dup2 clears close-on-exec on 0, 1, 2
    os.setsid()                         # its own session, away from the spawner's
    if tty:
        import fcntl
        fcntl.ioctl(0, _TIOCSCTTY, 0)   # the pty slave becomes our controlling terminal
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Credential changes (setuid) clear the parent-death signal: arm it again. The parent
    # (the shim) is outside our pid namespace, so getppid() is 0 while it lives; an exec'd
    # process whose shim died has been re-parented to the container's init (1).
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != 0:
        os._exit(137)
    # Whatever descriptors the daemon inherited must not reach the container.
    _libc.syscall(_SYS_CLOSE_RANGE, 3, ctypes.c_uint(0xFFFFFFFF), _CLOSE_RANGE_CLOEXEC)


def _needs_nested_userns(spec):
    uid, gid = spec.get("uid", 0), spec.get("gid", 0)
    return not (id_mapped(uid, read_id_map("/proc/self/uid_map"))
                and id_mapped(gid, read_id_map("/proc/self/gid_map")))


# --- run: the linear sequence ------------------------------------------------------------

def spawn_container(spec, stdio, status_fd):
    """Create the container's namespaces and fork its init. Runs in the shim process.

    Returns the init's pid (host pid namespace) in the shim; the init never returns from
    here: it execs the command or reports a StartError on `status_fd` and exits 125/126/127.
    """
    network = spec.get("network", "none")
    # Joining another container's net namespace happens before unsharing the rest, so that
    # CLONE_NEWNET is not in our flags and the joined stack is what the children inherit.
    if isinstance(network, dict) and "join_pid" in network:
        join_netns(network["join_pid"])
    # Mount, pid, uts, ipc (and net) at once; all owned by the daemon's user namespace,
    # where we hold every capability, so the init can mount and set the hostname.
    unshare_namespaces(network)
    # Bridge endpoints: veths into the fresh network namespace, before the init exists, so
    # it starts with its network up (network.py; it needs the daemon's namespace, so it is
    # done here in the shim and not in the init, which may be in a nested user namespace).
    if isinstance(network, dict) and "netns_pid" in network:
        from . import network as _network      # network.py imports ns
        _network.attach_container(network)
    # CLONE_NEWPID applies to children only: the next fork is PID 1 of the new namespace.
    pid = os.fork()
    if pid:
        return pid
    try:
        # If the shim dies, so does the init -- and with it, the whole pid namespace.
        # (Our parent lives outside our pid namespace, so getppid() reads 0 and cannot tell
        # whether the shim died before this prctl; the shim only dies by being killed.)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _container_init(spec, stdio, status_fd)
    except BaseException as e:
        try:
            report_failure(status_fd, e)
        finally:
            code = e.exit_code if isinstance(e, StartError) else 125
            os._exit(code)
    os._exit(125)


def _container_init(spec, stdio, status_fd):
    """PID 1 of the container, from a fresh mount namespace to execve. Never returns."""
    rootfs = os.path.realpath(spec["rootfs"])
    uid, gid, groups = spec.get("uid", 0), spec.get("gid", 0), list(spec.get("groups", []))
    privileged = bool(spec.get("privileged"))
    caps = capability_set(spec.get("cap_add"), spec.get("cap_drop"), privileged)
    nested = _needs_nested_userns(spec)
    # Read while /proc is still the host's view of us (either works: it is our own map).
    daemon_uid_map = read_id_map("/proc/self/uid_map")
    daemon_gid_map = read_id_map("/proc/self/gid_map")
    single_id = sum(c for _, _, c in daemon_uid_map) <= 1
    tty = bool(spec.get("tty"))
    # The pty slave's path in the daemon's /dev/pts, to bind as /dev/console; asked before
    # pivot_root, while the host /dev/pts is still visible.
    # With `console_socket`, stdin is a unix socket and the init makes the pty itself, in the
    # container's own devpts (open_console), so `tty` names it /dev/pts/0.
    console_socket = tty and spec.get("console_socket")
    console = os.ttyname(stdio[0]) if tty and not console_socket and os.isatty(stdio[0]) else None
    last_cap = spec.get("_last_cap", 40)

    make_mounts_private()
    if spec.get("cgroup"):              # before anything else runs, so limits apply to it all
        join_cgroup(spec["cgroup"])
    bind_rootfs(rootfs)                 # before mounts inside it: they must land on the bind
    mount_proc(rootfs)                  # we are PID 1 of the new pid namespace now
    mount_dev(rootfs, spec.get("shm_size") or DEFAULT_SHM_SIZE, console)
    if console_socket:                  # after mount_dev: the new devpts instance exists
        slave = open_console(rootfs, stdio[0])
        stdio = (slave, slave, slave)
    mount_sys(rootfs)
    if not privileged:                  # after /proc and /sys exist: the paths are inside them
        mask_paths(rootfs, spec.get("masked_paths", MASKED_PATHS))
        readonly_paths(rootfs, spec.get("readonly_paths", READONLY_PATHS))
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
    # The nested user namespace comes after everything that needs our capabilities over the
    # daemon's namespaces (mounts, hostname, rlimits): inside it we have none of those.
    keep_id = spec.get("keep_id")
    if keep_id and not single_id:
        enter_keep_id_userns(keep_id_map(keep_id["uid"], daemon_uid_map),
                             keep_id_map(keep_id["gid"], daemon_gid_map))
    elif nested:
        enter_user_userns(uid, gid)
    drop_bounding_set(caps, last_cap)    # needs CAP_SETPCAP: before we give up root
    if spec.get("no_new_privileges"):
        set_no_new_privs()
    switch_user(uid, gid, groups)
    set_capabilities(caps)
    _step_chdir(spec.get("cwd") or "/")
    _prepare_process(stdio, tty)   # last: it rewires 0/1/2 and the death signal
    _exec(spec["argv"], spec.get("env") or [])


@_Step("change to the working directory")
def _step_chdir(cwd):
    os.chdir(cwd)


# --- exec: entering a running container ----------------------------------------------------

_NS_ORDER = [("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET),
             ("pid", CLONE_NEWPID), ("mnt", CLONE_NEWNS)]


@_Step("enter the container's namespaces")
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


def enter_container(init_pid, spec, stdio, status_fd):
    """Join a running container and fork the exec'd process. Runs in the shim process.

    Returns the new process's pid (host pid namespace) in the shim; the child execs or
    reports a StartError on `status_fd`.
    """
    join_namespaces(init_pid)
    # setns(CLONE_NEWPID) only decides where our *children* live.
    pid = os.fork()
    if pid:
        return pid
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != 0:           # the shim, outside our pid namespace, reads as 0
            os._exit(137)
        _exec_init(spec, stdio)
    except BaseException as e:
        try:
            report_failure(status_fd, e)
        finally:
            os._exit(e.exit_code if isinstance(e, StartError) else 125)
    os._exit(125)


def _exec_init(spec, stdio):
    uid, gid, groups = spec.get("uid", 0), spec.get("gid", 0), list(spec.get("groups", []))
    caps = capability_set(spec.get("cap_add"), spec.get("cap_drop"), spec.get("privileged"))
    if spec.get("cgroup"):
        join_cgroup(spec["cgroup"])
    # A user the joined namespaces cannot represent (e.g. `exec -u 1000` into a container
    # running as root under a single-id daemon map) gets its own nested namespace, as in run.
    if _needs_nested_userns(spec):
        enter_user_userns(uid, gid)
    drop_bounding_set(caps, spec.get("_last_cap", 40))
    if spec.get("no_new_privileges"):
        set_no_new_privs()
    switch_user(uid, gid, groups)
    set_capabilities(caps)
    _step_chdir(spec.get("cwd") or "/")
    _prepare_process(stdio, bool(spec.get("tty")))
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
