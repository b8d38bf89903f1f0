"""User namespaces: the daemon's own, its id maps, and the nested ones a container user needs.

A user namespace (user_namespaces(7)) translates ids: /proc/PID/uid_map and gid_map hold lines
`inside outside count`. A process that is uid 0 inside holds every capability, but only over
the objects its user namespace owns (the mount, pid, net ... namespaces created from it). This
is what lets minidock run containers without root: the daemon enters a user namespace of its
own at start-up, and every container is made from there.

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

Man pages: user_namespaces(7), unshare(2), newuidmap(1), newgidmap(1), subuid(5), subgid(5).
"""

import errno
import os
import pwd

from . import errors
from .syscalls import CLONE_NEWNS, CLONE_NEWUSER, MS_PRIVATE, MS_REC, Step, mount, unshare


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
    import shutil                       # here, not at the top: the spawner never needs it
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


def needs_nested_userns(spec):
    uid, gid = spec.get("uid", 0), spec.get("gid", 0)
    return not (id_mapped(uid, read_id_map("/proc/self/uid_map"))
                and id_mapped(gid, read_id_map("/proc/self/gid_map")))


@Step("enter a nested user namespace for the container user")
def enter_user_userns(uid, gid):
    # The daemon's namespace maps only uid 0. Here the init (uid 0 there) becomes `uid`.
    _enter_userns_as(uid, gid)


def _enter_userns_as(uid, gid):
    """unshare a user namespace in which our own ids (the only ones we may map for ourselves)
    read as `uid`/`gid`; setgroups must be "deny" before gid_map is written."""
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


@Step("enter the keep-id user namespace")
def enter_keep_id_userns(uid_lines, gid_lines):
    _enter_userns_mapped_by_helper(uid_lines, gid_lines, "keep-id")


@Step("enter a user namespace of the container's own (--pids-limit)")
def enter_identity_userns(uid_map, gid_map):
    """A nested namespace in which every id of the daemon's keeps its number: only the
    RLIMIT_NPROC count it starts is new (pidlimit.py tells why)."""
    if sum(count for _, _, count in uid_map) <= 1:
        # One id: our own, which we may map for ourselves (setgroups is already "deny" in the
        # daemon's single-id namespace, so nothing is lost by denying it here).
        _enter_userns_as(os.geteuid(), os.getegid())
        return
    _enter_userns_mapped_by_helper([f"{i} {i} {n}" for i, _, n in uid_map],
                                   [f"{i} {i} {n}" for i, _, n in gid_map], "identity")


def _enter_userns_mapped_by_helper(uid_lines, gid_lines, what):
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
        raise OSError(errno.EPERM, f"the {what} helper could not write the id maps",
                      f"/proc/{me}/uid_map")
