"""Mounts: the container's root filesystem, /proc, /dev, /sys, its console and its volumes.

A container's view of files is a private mount namespace (mount_namespaces(7)) in which the init
builds a tree and then makes it "/". In order, as ns.py's `_container_init()` calls them:

    mount(NULL, "/", NULL, MS_REC|MS_PRIVATE)          nothing we do propagates back to the daemon
    move_mount(tree, "", AT_FDCWD, rootfs, ...)       pivot_root(2) wants a mount point: the rootfs
                                                       as a detached tree from the daemon
                                                       (or mount(rootfs, rootfs, MS_BIND|MS_REC))
    mount("proc", rootfs/proc, "proc", ...)            proc shows the pid namespace of its mounter
    tmpfs on /dev, host devices bound onto empty files (mknod is refused in a user namespace),
    a fresh devpts instance (`newinstance`: the container sees only its own ptys), /dev/shm,
    /dev/mqueue, the /dev/fd and /dev/std* symlinks
    sysfs on /sys read-only (or the host's /sys bound, when the net namespace is not ours)
    masked paths (/dev/null or an empty read-only tmpfs over /proc/kcore, ...) and read-only
    /proc paths, then /etc files and the user's binds and tmpfs mounts
    pivot_root(".", ".") then umount2(".", MNT_DETACH)  the old root is gone; no put_old needed

Every path inside the image is resolved with `in_root()`, which treats the rootfs as "/" so a
symlink in the image cannot point a mount outside it. Remounting read-only in a user namespace
must repeat the flags a more privileged namespace set (nosuid, nodev, noexec, atime): those are
*locked*, and a remount that would clear them fails with EPERM (`_locked_flags()`).

The console
-----------
With a TTY, the init opens the pty itself in the container's new devpts (`open_console()`), so
`tty` inside prints /dev/pts/0 as on Docker, binds the slave as /dev/console, and sends the
master back to the daemon over a unix socket with SCM_RIGHTS (runc's console socket;
`receive_console()` is the daemon's side).

Afterwards, `cat /proc/self/mountinfo` inside the container lists exactly these mounts, and
`ls /dev/pts` shows only the container's own ptys.

Man pages: mount(2), mount_namespaces(7), pivot_root(2), umount2(2), proc(5), pts(4),
statvfs(3), unix(7) (SCM_RIGHTS).
"""

import errno
import fcntl
import os
import socket
import stat
import struct
import termios

from .syscalls import (MNT_DETACH, MS_BIND, MS_MOVE, MS_NOATIME, MS_NODEV, MS_NODIRATIME,
                       MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT,
                       MS_STRICTATIME, Step, mount, move_mount, pivot_root, umount2)

MASKED_PATHS = [  # hidden: a file gets /dev/null bound over it, a directory an empty ro tmpfs
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

HOST_DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]

DEFAULT_SHM_SIZE = 64 * 1024 * 1024


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


@Step("make mounts private")
def make_mounts_private():
    # The daemon made / private already; repeat it so nothing set up later can ever
    # propagate into the daemon's view, whatever happened to the tree since.
    mount(None, "/", None, MS_REC | MS_PRIVATE)


@Step("bind the rootfs onto itself")
def bind_rootfs(rootfs):
    # pivot_root(2) wants new_root to be a mount point; an assembled directory may not be.
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)


@Step("attach the rootfs")
def attach_rootfs(tree_fd, rootfs):
    """The container's root as the daemon sees it, handed over as a detached mount tree
    (open_tree(2) in the daemon, spawner.Spawner.run): attached at `rootfs` in our namespace,
    a mount point for pivot_root(2) as the bind above would be. The spawner's mount namespace,
    which ours copies, never holds the daemon's per-container mounts (spawnerloop.py)."""
    move_mount(tree_fd, rootfs)


@Step("mount /proc")
def mount_proc(rootfs):
    # Must run in the new pid namespace: proc shows the pid namespace of whoever mounts it.
    target = in_root(rootfs, "/proc")
    _ensure_dir(target)
    mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return target


def _ensure_dir(path):
    """The mount point exists (it almost always does): a stat, not os.makedirs(), whose
    mkdir-then-catch-EEXIST costs a freshly forked init an exception's worth of work."""
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)


def _touch(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


@Step("mount /dev")
def mount_dev(rootfs, shm_size, console, tty_gid=True):
    """`tty_gid`: whether gid 5 (tty) is mapped in our user namespace (False: the devpts goes
    without gid=5, which the kernel would refuse with EINVAL -- after ~0.8 ms spent making and
    dropping a superblock, measured here, so the caller says beforehand when it knows)."""
    dev = in_root(rootfs, "/dev")
    _ensure_dir(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    # mknod is refused in a user namespace, so device nodes are the host's, bound onto
    # empty files.
    for name in HOST_DEVICES:
        _touch(f"{dev}/{name}")
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    # A private devpts instance: the container sees only its own ptys.
    os.mkdir(f"{dev}/pts", 0o755)
    flags, options = MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
    if tty_gid:
        try:
            mount("devpts", f"{dev}/pts", "devpts", flags, options + ",gid=5")
        except OSError as e:
            if e.errno != errno.EINVAL:     # gid 5 (tty) is not mapped in our namespace
                raise
            tty_gid = False
    if not tty_gid:
        mount("devpts", f"{dev}/pts", "devpts", flags, options)
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"mode=1777,size={int(shm_size)}")
    os.mkdir(f"{dev}/mqueue", 0o755)
    try:   # allowed because the ipc namespace we created belongs to our user namespace
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        os.rmdir(f"{dev}/mqueue")
    bind_console(rootfs, console)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, f"{dev}/{name}")


def bind_console(rootfs, console):
    """The TTY's slave (a path in the daemon's devpts), if any, bound as /dev/console."""
    if console:
        target = in_root(rootfs, "/dev/console")
        _touch(target)
        mount(console, target, None, MS_BIND)


# The kernel's file systems a container sees -- /proc, /dev and /sys with Docker's masked and
# read-only paths inside them -- need nothing of the container but the namespaces they show:
# proc its pid namespace, sysfs its network namespace, mqueue its ipc namespace. An init cloned
# ahead of its request (the spawner's pool) makes them in advance on a tmpfs of its own, as
# if that tmpfs were the rootfs, and moves the three trees into the real rootfs once it comes:
# three mount(MS_MOVE) calls instead of ~35 mounts on the start's critical path. What is left
# behind (the empty tmpfs) goes with the old root at pivot_root.
STAGED = ("/proc", "/dev", "/sys")


def mount_kernel_filesystems(rootfs, shm_size, console, tty_gid, masked=MASKED_PATHS,
                             readonly=READONLY_PATHS):
    """/proc, /dev (with `console`, if any) and /sys in `rootfs`, then the `masked` paths
    hidden and the `readonly` ones made read-only inside them (a privileged container: none).
    Run by PID 1 of the container's pid namespace, in its network namespace (mount_proc,
    mount_sys)."""
    fresh = {"/proc": mount_proc(rootfs)}
    mount_dev(rootfs, shm_size, console, tty_gid)
    fresh["/sys"] = mount_sys(rootfs)
    mask_paths(rootfs, masked, fresh)          # after /proc and /sys: the paths are inside them
    readonly_paths(rootfs, readonly, fresh)


@Step("make /proc, /dev and /sys ahead")
def stage_kernel_mounts(directory, shm_size, tty_gid):
    """In a pooled init, before its request: the default kernel mounts under `directory` (an
    empty directory of the host's, mounted over with a tmpfs here, in our own namespace)."""
    mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=700,size=64k")
    mount_kernel_filesystems(directory, shm_size, None, tty_gid)


@Step("move /proc, /dev and /sys into the rootfs")
def move_kernel_mounts(directory, rootfs):
    """The trees stage_kernel_mounts made, each with the mounts on it, into `rootfs`."""
    for path in STAGED:
        target = in_root(rootfs, path)
        _ensure_dir(target)
        mount(directory + path, target, None, MS_MOVE)


TIOCGPTN = 0x80045430       # _IOR('T', 0x30, unsigned int): the slave's number


TIOCSPTLCK = 0x40045431     # _IOW('T', 0x31, int): lock/unlock the slave


@Step("create the console in the container's devpts")
def open_console(rootfs, console_socket, size=None):
    """The container's terminal, made in its own devpts and handed over (runc's console socket).

    A pty made by the daemon lives in the daemon's devpts: it works as a terminal, but inside
    the container `tty` can only call it /dev/console. Opened here, from the fresh devpts
    instance, the slave is /dev/pts/0 as on Docker. The master goes back over the unix socket
    the daemon passed as stdin (one SCM_RIGHTS message, b"M"); the slave becomes 0, 1 and 2
    and is bound as /dev/console. `size` ([rows, columns], API 1.42's ConsoleSize) is set on it
    here, so the command finds it before it runs. Returns the slave's fd.
    """
    pts = in_root(rootfs, "/dev/pts")
    master = os.open(f"{pts}/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))       # unlock before the open below
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"{pts}/{number}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    if size and size[0] and size[1]:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
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
    sock.settimeout(timeout)
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
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


@Step("mount /sys read-only")
def mount_sys(rootfs):
    target = in_root(rootfs, "/sys")
    _ensure_dir(target)
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
    return target


# Docker's own lists name entries of procfs and sysfs whose every component is a directory or
# a file there, never a symlink (unlike /proc/self or /proc/net): inside the instance we just
# mounted, their paths need no in_root() walk, which costs a few system calls per component.
_KERNEL_PATHS = frozenset(MASKED_PATHS) | frozenset(READONLY_PATHS)


def _kernel_path(rootfs, path, fresh):
    """`path` inside the container: under the /proc or /sys just mounted (`fresh`: "/proc" ->
    where it is mounted) directly when it is one of Docker's, else resolved by in_root()."""
    if fresh and path in _KERNEL_PATHS:
        top, rest = path[1:].split("/", 1)
        base = fresh.get("/" + top)
        if base is not None:
            return f"{base}/{rest}"
    return in_root(rootfs, path)


@Step("mask /proc and /sys paths")
def mask_paths(rootfs, paths, fresh=None):
    for p in paths:
        target = _kernel_path(rootfs, p, fresh)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", target, "tmpfs", MS_RDONLY, "size=0")
        else:
            mount("/dev/null", target, None, MS_BIND)


@Step("make /proc paths read-only")
def readonly_paths(rootfs, paths, fresh=None):
    for p in paths:
        target = _kernel_path(rootfs, p, fresh)
        if not os.path.exists(target):
            continue
        mount(target, target, None, MS_BIND | MS_REC)
        remount_readonly(target)


TMPFS_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME}


@Step("bind mounts")
def bind_mounts(rootfs, mounts):
    for m in mounts:
        if m.get("type") == "tmpfs":    # --mount type=tmpfs: a fresh tmpfs, no source
            target = in_root(rootfs, m["target"])
            os.makedirs(target, exist_ok=True)
            flags = MS_NOSUID | MS_NODEV
            for word in m.get("flags") or []:
                flags |= TMPFS_FLAGS[word]
            mount("tmpfs", target, "tmpfs", flags, m.get("data") or None)
            continue
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


@Step("pivot_root")
def enter_rootfs(rootfs):
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # only the container's tree. No put_old directory is needed inside the image.
    os.chdir(rootfs)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


@Step("remount the rootfs read-only")
def readonly_rootfs():
    remount_readonly("/")
