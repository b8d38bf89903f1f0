"""`--pids-limit` without a pids cgroup: RLIMIT_NPROC counted in a container's own user namespace.

Docker bounds the number of tasks (processes and threads) of a container with the pids cgroup
controller: `pids.max`. A rootless daemon without a delegated cgroup v2 tree (this machine's
hybrid layout) has no such file to write. The kernel offers a second counter that works here.

RLIMIT_NPROC and ucounts
------------------------
setrlimit(2)'s RLIMIT_NPROC bounds "the number of extant processes (threads) for the real user
ID of the calling process". Since Linux 5.14 that count is kept per user *per user namespace*
(`struct ucounts`, keyed by the namespace and the uid) and charged up the chain of namespaces:
a task of uid U in namespace N counts once for (N, U), once for (parent of N, owner of N), and so
on up to the host. fork()/clone() fail with EAGAIN when, at the first level, the count would
pass the task's own RLIMIT_NPROC, or, at each level above, the limit the namespace's creator had
when it called unshare(CLONE_NEWUSER) (kernel/ucount.c, is_rlimit_overlimit). Holding
CAP_SYS_RESOURCE or CAP_SYS_ADMIN exempts a task only when it holds them in the *initial* user
namespace -- never the case for a rootless container's root.

So a container that runs in a user namespace of its own has a count of its own. The container
init, after its mounts (which need the daemon namespace's capabilities), unshares a nested user
namespace that maps every id of the daemon's namespace to itself (userns.enter_identity_userns),
so files,
users and /proc/self/uid_map read the same inside; then it lowers RLIMIT_NPROC to the limit.
Order matters: the namespace is created while the init still has the daemon's default bound
(spawner.process_bound), which becomes the namespace's ceiling one level up and keeps the
daemon's reserve; the container's own limit is set after.

What you can observe: `cat /proc/1/limits` in the container shows `Max processes N N`; a fork
beyond N fails with EAGAIN ("can't fork" in a shell); `docker exec` joins the same namespace and
gets the same limit; `docker update --pids-limit M` rewrites the limit of every process of the
running container with prlimit(2) (the daemon holds CAP_SYS_RESOURCE over the nested namespace:
its creator was the daemon namespace's root).

The difference from pids.max, said plainly: the count is per uid inside the container. A
container whose processes run as two users gets N for each. Docker's default (no limit) and
containers with a pids cgroup are unaffected.

Man pages: setrlimit(2) (RLIMIT_NPROC), prlimit(2), user_namespaces(7).
"""

import os
import resource

MIN_KERNEL = (5, 14)                    # ucounts: RLIMIT_NPROC counted per user namespace


def kernel_counts_per_userns(release=None):
    """True when the running kernel keeps RLIMIT_NPROC counts per user namespace (>= 5.14)."""
    release = release or os.uname().release
    parts = []
    for piece in release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            return False
        parts.append(int(digits))
    return len(parts) == 2 and tuple(parts) >= MIN_KERNEL


def limit_self(limit):
    """Lower this process's RLIMIT_NPROC to `limit` (never above the hard limit it already has:
    raising that needs CAP_SYS_RESOURCE in the initial user namespace)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def in_own_userns(pid):
    """True when process `pid` is in a user namespace other than ours (a nested one)."""
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def limit_running(pids, limit):
    """`docker update --pids-limit`: prlimit(2) RLIMIT_NPROC of each process of `pids`.

    Lowering always works. Raising a hard limit needs CAP_SYS_RESOURCE in the *initial* user
    namespace, so a process keeps at most the hard limit it started with: returns False when
    some process could not get all of `limit` (or "unlimited", `limit` <= 0) -- the new value
    then holds from the container's next start. A process gone meanwhile is skipped."""
    complete = True
    for pid in pids:
        try:
            _, hard = resource.prlimit(pid, resource.RLIMIT_NPROC)
            value = limit
            if hard != resource.RLIM_INFINITY and (limit <= 0 or limit > hard):
                value, complete = hard, False
            elif limit <= 0:
                value = hard
            resource.prlimit(pid, resource.RLIMIT_NPROC, (value, value))
        except ProcessLookupError:
            continue
    return complete
