"""cgroup v2: where a container's resource limits, pause and stats live.

A *control group* is a directory in the cgroup2 file system. Every process belongs to exactly one
cgroup of the v2 hierarchy, and the kernel accounts (and can limit) the CPU, memory, PIDs and I/O of
all processes in a cgroup together. There is no syscall API: everything is files (see
Documentation/admin-guide/cgroup-v2.rst, cgroups(7)).

    mount -t cgroup2 none /sys/fs/cgroup          a pure v2 host (Debian 11+, Fedora 31+)
    /sys/fs/cgroup/unified                         a "hybrid" host: v1 controllers elsewhere, an
                                                   empty v2 tree here (this is what our CI has)

Finding it. `/proc/self/mountinfo` lists mounts; the one with file-system type `cgroup2` is the
tree. `/proc/self/cgroup` says where we are in it: the v2 line is `0::/some/path` (v1 lines have a
controller name between the colons). `<mountpoint>/<path>` is our own cgroup directory.

The files of one cgroup directory:

    cgroup.procs             PIDs in this cgroup; writing a PID moves that whole process here
    cgroup.controllers       controllers the parent lets us use (e.g. "cpu io memory pids")
    cgroup.subtree_control   controllers we hand down to our children ("+memory -io" to change)
    cgroup.events            "populated 0|1" and "frozen 0|1"; poll(2) wakes when they change
    cgroup.freeze            write 1 to freeze every process below (kernel 5.2+), 0 to thaw
    cgroup.kill              write 1 to SIGKILL every process below (kernel 5.14+)
    memory.max memory.low memory.swap.max memory.current memory.stat     (memory controller)
    cpu.weight cpu.max                                                    (cpu controller)
    cpu.stat                 usage_usec user_usec system_usec; always there, throttling with "cpu"
    cpuset.cpus cpuset.mems cpuset.cpus.effective                         (cpuset controller)
    io.weight (or io.bfq.weight) io.stat                                  (io controller)
    pids.max pids.current                                                 (pids controller)

A controller's files appear in a child only after the parent lists it in cgroup.subtree_control,
and it can only be listed there if the parent's own cgroup.controllers has it. Two rules shape
everything below:

  * Delegation. An unprivileged user can only write where the files belong to them. systemd hands a
    user a subtree (`user@1000.service`, or a unit with `Delegate=yes`); anywhere else mkdir fails
    with EACCES and we run without cgroups, as rootless Docker does on a non-systemd host.
  * No internal processes. A cgroup other than the root may not both contain processes and enable
    domain controllers for its children (writing cgroup.subtree_control fails with EBUSY). A daemon
    started in a leaf cgroup therefore first moves itself (and everything else there, like its
    spawner) into a child `minidock-daemon`; then the leaf is an inner node and can hand
    controllers to the container cgroups that sit next to `minidock-daemon`.

Observe it yourself:

    cat /proc/self/cgroup                               # 0::/user.slice/.../minidock.service
    cat <tree>/<base>/<container-id>/cgroup.procs       # the container's PIDs, as the host sees them
    cat <tree>/<base>/<container-id>/memory.max         # 67108864 after `docker run -m 64m`
    cat <tree>/<base>/<container-id>/cgroup.events      # "frozen 1" after `docker pause`

What this module does and does not do. It discovers the tree (`Hierarchy.discover`), prepares it
once at daemon start (`Hierarchy.prepare`), checks Docker's HostConfig limits and translates them
to v2 files (`Hierarchy.check`; the field-by-field translation is cgrouplimits.py), and manages one container's cgroup (`Cgroup`): join,
freeze/thaw, kill, remove, stats. A limit whose controller is not available is never written and
never pretended: it becomes Docker's own warning text, which the API returns in `Warnings`.
"""

import errno
import os
import re
import select
import signal
import time

from minidock import pidlimit
from minidock.cgrouplimits import (FIELDS, MIN_MEMORY, W_BLKIO, W_CPUSET, W_KERNEL_MEMORY, W_MEMORY,
                                   W_NANO_CPUS, W_OOM_KILL_DISABLE, W_PERIOD, W_PIDS, W_QUOTA,
                                   W_RESERVATION, W_SHARES, W_SWAP, W_SWAPPINESS, normalise,
                                   parse_cpuset, translate)
from minidock.errors import InvalidParameter

# How `docker pause` is carried out; the daemon reports one of these in /info.
PAUSE_FREEZE = "cgroup.freeze"
PAUSE_SIGSTOP = "SIGSTOP"

# The child of a leaf cgroup that the daemon moves itself into (the "no internal processes" rule).
DAEMON_CGROUP = "minidock-daemon"
# Where container cgroups go when the daemon sits in the root of the tree (real root, no systemd):
# we do not litter the host's root cgroup with container IDs, as Docker uses /docker.
ROOT_BASE = "minidock"
# Controllers a container may be limited by; others (hugetlb, rdma, misc) are left alone.
WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# -- small file helpers: one write(2) per value, errors that say what was written where -----------

def _read(path):
    with open(path) as f:
        return f.read()


def _read_or_none(path):
    try:
        return _read(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write(path, value):
    """Write `value` with a single write(2): cgroupfs parses each write as one complete value.

    O_TRUNC matters only for the fake trees of the tests (regular files); the kernel ignores it.
    There is no O_CREAT: writing a file the kernel did not create is a bug we want to hear about.
    """
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"open for write: {e.strerror}", path) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise OSError(e.errno, f"write {str(value)!r}: {e.strerror}", path) from None
    finally:
        os.close(fd)


def _keyed(text):
    """Parse the flat-keyed format of cgroup.events, memory.stat, cpu.stat: `key value` lines."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# -- discovery -------------------------------------------------------------------------------------

def find_cgroup2_mount(mountinfo="/proc/self/mountinfo"):
    """(mountpoint, root-within-hierarchy) of the cgroup2 mount, or None when there is none.

    A mountinfo line is `id parent maj:min root mountpoint options [optional...] - fstype source
    super-options` (proc(5)); the fields after the lone `-` give the file-system type.
    """
    found = []
    for line in _read(mountinfo).splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or not right.split() or right.split()[0] != "cgroup2":
            continue
        fields = left.split()
        found.append((_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3])))
    if not found:
        return None
    # Prefer a mount of the whole hierarchy over a bind mount of a subtree.
    found.sort(key=lambda m: (m[1] != "/", len(m[0])))
    return found[0]


def own_cgroup(proc_cgroup="/proc/self/cgroup"):
    """Our cgroup v2 path (`0::/path` line of /proc/self/cgroup), e.g. '/user.slice/...', or None."""
    for line in _read(proc_cgroup).splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


class Hierarchy:
    """The cgroup2 tree as this daemon can use it: where it is, what we may do, where containers go.

    Attributes after `discover()`: `mount` (mountpoint or None), `own` (our path in the tree),
    `own_dir`, `base_dir` (parent of container cgroups), `controllers` (our cgroup.controllers).
    After `prepare()` also: `usable` (we created a cgroup), `enabled` (controllers container
    cgroups get), `freeze`/`kill`/`swap` (whether cgroup.freeze, cgroup.kill and memory.swap.max
    exist in a container cgroup), and `reason` (why something is missing, for logs and /info).
    """

    def __init__(self, mount, own, base=None, mount_root="/"):
        self.mount = mount
        self.own = own
        self.own_dir = None
        self.base_dir = None
        self.controllers = set()
        self.usable = False
        self.enabled = set()
        self.freeze = False
        self.kill = False
        self.swap = False
        self.evacuated = False
        self.reason = ""
        if mount is None:
            self.reason = "no cgroup2 file system is mounted"
            return
        if own is None:
            self.reason = "/proc/self/cgroup has no cgroup v2 line (0::/path)"
            return
        # Inside a cgroup namespace or under a bind mount of a subtree the mount's root is not '/':
        # our path is relative to the same root, so strip it before joining.
        rel = own
        if mount_root != "/" and (own == mount_root or own.startswith(mount_root + "/")):
            rel = own[len(mount_root):] or "/"
        self.own_dir = os.path.normpath(os.path.join(mount, rel.lstrip("/")))
        if base is None:
            base = ROOT_BASE if rel == "/" else ""
        self.base_dir = os.path.normpath(os.path.join(self.own_dir, base))
        self.controllers = set((_read_or_none(os.path.join(self.own_dir, "cgroup.controllers")) or "").split())

    @classmethod
    def discover(cls, mountinfo="/proc/self/mountinfo", proc_cgroup="/proc/self/cgroup", base=None):
        """Read-only discovery from /proc; nothing is created. `base` is relative to our cgroup."""
        found = find_cgroup2_mount(mountinfo)
        own = own_cgroup(proc_cgroup)
        if found is None:
            return cls(None, own)
        return cls(found[0], own, base=base, mount_root=found[1])

    # -- one-time set-up at daemon start ------------------------------------------------------------
    def prepare(self, wanted=WANTED_CONTROLLERS):
        """Create the base, hand controllers down to it, and probe what a container cgroup offers.

        Never raises for a missing or read-only tree: the daemon then runs without cgroups and
        `reason` says why. Call it once, before containers start (it may move the daemon's own
        processes, so the spawner should already exist or be started into the new cgroup).
        `wanted` are the controllers to hand down (tests pass others to exercise the EBUSY path).
        """
        if self.base_dir is None:
            return self
        # Step 1: the base directory. EACCES/EPERM/EROFS here means "not delegated to us".
        try:
            os.makedirs(self.base_dir, exist_ok=True)
        except OSError as e:
            self.reason = (f"cannot create {self.base_dir}: {e.strerror}; the cgroup v2 tree is not delegated "
                           f"to uid {os.getuid()} (run the daemon in a systemd unit with Delegate=yes)")
            return self
        # Step 2: hand every wanted controller down each level from our cgroup to the base.
        wanted = [c for c in wanted if c in self.controllers]
        chain = [self.own_dir]
        if self.base_dir != self.own_dir:
            rel = os.path.relpath(self.base_dir, self.own_dir).split(os.sep)
            for i in range(len(rel)):
                chain.append(os.path.join(self.own_dir, *rel[:i + 1]))
        missing = []
        for directory in chain:
            present = (_read_or_none(os.path.join(directory, "cgroup.subtree_control")) or "").split()
            for controller in (c for c in wanted if c not in present):
                if not self._enable(directory, controller):
                    missing.append(f"{controller} (in {directory})")
        self.enabled = set((_read_or_none(os.path.join(self.base_dir, "cgroup.subtree_control")) or "").split())
        if missing:
            self.reason = "could not enable controllers: " + ", ".join(missing)
        # Step 3: a probe child shows exactly what a container cgroup will contain.
        probe = os.path.join(self.base_dir, f"probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except FileExistsError:
            pass
        except OSError as e:
            self.reason = f"cannot create a cgroup under {self.base_dir}: {e.strerror}"
            return self
        try:
            self.usable = True
            self.freeze = os.path.exists(os.path.join(probe, "cgroup.freeze"))
            self.kill = os.path.exists(os.path.join(probe, "cgroup.kill"))
            self.swap = os.path.exists(os.path.join(probe, "memory.swap.max"))
        finally:
            os.rmdir(probe)
        return self

    def _enable(self, directory, controller):
        """Write `+controller` to directory/cgroup.subtree_control; evacuate on EBUSY (see below)."""
        path = os.path.join(directory, "cgroup.subtree_control")
        try:
            _write(path, f"+{controller}")
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or directory != self.own_dir or self.evacuated:
                return False
        # EBUSY: "no internal processes". Our cgroup holds processes (the daemon, its spawner,
        # maybe the shell that started it), so it may not also give controllers to children. Move
        # every one of them into a child, as rootlesskit's --evacuate-cgroup2 does, then retry.
        self.evacuate()
        try:
            _write(path, f"+{controller}")
            return True
        except OSError:
            return False

    def evacuate(self):
        """Move every process of our own cgroup into its child DAEMON_CGROUP; returns that path."""
        target = os.path.join(self.own_dir, DAEMON_CGROUP)
        os.makedirs(target, exist_ok=True)
        procs = os.path.join(self.own_dir, "cgroup.procs")
        # Processes may fork while we move them, so go round until the list stays empty.
        for _ in range(100):
            pids = [int(p) for p in _read(procs).split()]
            if not pids:
                break
            for pid in pids:
                try:
                    _write(os.path.join(target, "cgroup.procs"), pid)
                except ProcessLookupError:
                    pass            # it exited meanwhile
        self.evacuated = True
        return target

    @property
    def pids_by_rlimit(self):
        """--pids-limit enforced without the pids controller (pidlimit.py): RLIMIT_NPROC in a user
        namespace of the container's own, counted apart since Linux 5.14."""
        return not (self.usable and "pids" in self.enabled) and pidlimit.kernel_counts_per_userns()

    def pids_rlimit(self, host_config):
        """The RLIMIT_NPROC a container's processes (its init and every exec) get for its
        --pids-limit where no pids.max can hold it (pids_by_rlimit), else None."""
        limit = host_config.get("PidsLimit") or 0
        return limit if limit > 0 and self.pids_by_rlimit else None

    # -- what the daemon says in /info ---------------------------------------------------------------
    @property
    def pause_method(self):
        return PAUSE_FREEZE if self.usable and self.freeze else PAUSE_SIGSTOP

    def capabilities(self):
        """The /info booleans Docker derives from its cgroup probe, plus how pause works here."""
        memory = self.usable and "memory" in self.enabled
        cpu = self.usable and "cpu" in self.enabled
        return {
            "MemoryLimit": memory,
            "SwapLimit": memory and self.swap,
            "KernelMemory": False,              # cgroup v2 has no separate kernel memory limit
            "KernelMemoryTCP": False,
            "OomKillDisable": False,            # v2 has no memory.oom_control; Docker says false too
            "CpuCfsPeriod": cpu,
            "CpuCfsQuota": cpu,
            "CPUShares": cpu,
            "CPUSet": self.usable and "cpuset" in self.enabled,
            "PidsLimit": self.usable and "pids" in self.enabled,
            "BlkioWeight": self.usable and "io" in self.enabled,
            "CgroupDriver": "cgroupfs" if self.usable else "none",
            "CgroupVersion": "2" if self.mount else "",
            "PauseMethod": self.pause_method,
            "CgroupReason": self.reason,
        }

    def info_warnings(self):
        """Docker's /info `Warnings` lines for each missing feature."""
        caps = self.capabilities()
        lines = []
        if not self.usable:
            lines.append(f"WARNING: cgroups unavailable ({self.reason}); resource limits are discarded")
        for key, text in (("MemoryLimit", "No memory limit support"), ("SwapLimit", "No swap limit support"),
                          ("CpuCfsQuota", "No cpu cfs quota support"), ("CpuCfsPeriod", "No cpu cfs period support"),
                          ("CPUShares", "No cpu shares support"), ("CPUSet", "No cpuset support"),
                          ("PidsLimit", "No pids limit support"), ("BlkioWeight", "No io.weight support")):
            if not caps[key] and not (key == "PidsLimit" and self.pids_by_rlimit):
                lines.append(f"WARNING: {text}")
        return lines

    # -- HostConfig limits: validate, adapt, translate ----------------------------------------------
    def check(self, resources, update=False):
        """Validate Docker limit fields and drop those this machine cannot enforce.

        Returns (adapted, warnings): `adapted` holds every field of FIELDS with unsupported limits
        reset to "unset" (store it as the container's HostConfig, as Docker does); `warnings` are
        Docker's texts. Raises InvalidParameter, before anything is written, for bad input.
        """
        r = normalise(resources)
        caps = self.capabilities()
        warnings = []
        # Docker's adaptContainerSettings: a memory limit without a swap figure means "as much swap
        # as memory", i.e. memory+swap = 2 x memory.
        if not update and r["Memory"] > 0 and r["MemorySwap"] == 0:
            r["MemorySwap"] = 2 * r["Memory"]

        # memory
        if r["Memory"] != 0 and r["Memory"] < MIN_MEMORY:
            raise InvalidParameter("Minimum memory limit allowed is 4MB")
        if r["Memory"] > 0 and not caps["MemoryLimit"]:
            warnings.append(W_MEMORY)
            r["Memory"], r["MemorySwap"] = 0, -1
        if r["Memory"] > 0 and r["MemorySwap"] != -1 and not caps["SwapLimit"]:
            warnings.append(W_SWAP)
            r["MemorySwap"] = -1
        if r["Memory"] > 0 and r["MemorySwap"] > 0 and r["MemorySwap"] < r["Memory"]:
            raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, see usage")
        if r["Memory"] == 0 and r["MemorySwap"] > 0 and not update:
            raise InvalidParameter("You should always set the Memory limit when using Memoryswap limit, see usage")
        if r["MemorySwappiness"] is not None and r["MemorySwappiness"] != -1:
            if not 0 <= r["MemorySwappiness"] <= 100:
                raise InvalidParameter(f"Invalid value: {r['MemorySwappiness']}, "
                                       "valid memory swappiness range is 0-100")
            warnings.append(W_SWAPPINESS)       # v2 has no per-cgroup swappiness
        r["MemorySwappiness"] = None
        if r["MemoryReservation"] > 0 and not caps["MemoryLimit"]:
            warnings.append(W_RESERVATION)
            r["MemoryReservation"] = 0
        if r["MemoryReservation"] > 0 and r["MemoryReservation"] < MIN_MEMORY:
            raise InvalidParameter("Minimum memory reservation allowed is 4MB")
        if r["Memory"] > 0 and r["MemoryReservation"] > 0 and r["Memory"] < r["MemoryReservation"]:
            raise InvalidParameter("Minimum memory limit can not be less than memory reservation limit, see usage")
        if r["KernelMemory"] > 0:
            warnings.append(W_KERNEL_MEMORY)
            r["KernelMemory"] = 0
        if r["OomKillDisable"]:
            warnings.append(W_OOM_KILL_DISABLE)
        r["OomKillDisable"] = False
        if r["PidsLimit"] is not None and r["PidsLimit"] > 0 and not caps["PidsLimit"] \
                and not self.pids_by_rlimit:
            warnings.append(W_PIDS)
            r["PidsLimit"] = None

        # cpu
        if r["NanoCpus"] > 0 and r["CpuPeriod"] > 0:
            raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
        if r["NanoCpus"] > 0 and r["CpuQuota"] > 0:
            raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
        if r["NanoCpus"] > 0:
            ncpu = os.cpu_count() or 1      # (glibc reads /sys for it: only when asked)
            if r["NanoCpus"] > ncpu * 10**9:
                raise InvalidParameter(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available")
        if r["NanoCpus"] > 0 and not caps["CpuCfsQuota"]:
            warnings.append(W_NANO_CPUS)
            r["NanoCpus"] = 0
        if r["CpuShares"] > 0 and not caps["CPUShares"]:
            warnings.append(W_SHARES)
            r["CpuShares"] = 0
        if r["CpuPeriod"] > 0 and not caps["CpuCfsPeriod"]:
            warnings.append(W_PERIOD)
            r["CpuPeriod"] = 0
        if r["CpuQuota"] > 0 and not caps["CpuCfsQuota"]:
            warnings.append(W_QUOTA)
            r["CpuQuota"] = 0
        if r["CpuPeriod"] != 0 and not 1000 <= r["CpuPeriod"] <= 1000000:
            raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) "
                                   "or larger than 1s (i.e. 1000000)")
        if r["CpuQuota"] > 0 and r["CpuQuota"] < 1000:
            raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")

        # cpuset: the syntax is checked even when it will be discarded, then against what we have
        for field, what in (("CpusetCpus", "cpus"), ("CpusetMems", "mems")):
            if r[field]:
                try:
                    parse_cpuset(r[field])
                except ValueError:
                    raise InvalidParameter(f"Invalid value {r[field]} for cpuset {what}") from None
        if (r["CpusetCpus"] or r["CpusetMems"]) and not caps["CPUSet"]:
            warnings.append(W_CPUSET)
            r["CpusetCpus"], r["CpusetMems"] = "", ""
        for field, what, label in (("CpusetCpus", "cpus", "CPUs"), ("CpusetMems", "mems", "memory nodes")):
            if r[field]:
                available = self._effective(f"cpuset.{what}.effective")
                if available is not None and not parse_cpuset(r[field]) <= parse_cpuset(available):
                    raise InvalidParameter(f"Requested {label} are not available - requested {r[field]}, "
                                           f"available: {available}")

        # block I/O
        if r["BlkioWeight"] > 0 and not caps["BlkioWeight"]:
            warnings.append(W_BLKIO)
            r["BlkioWeight"] = 0
        if r["BlkioWeight"] > 0 and not 10 <= r["BlkioWeight"] <= 1000:
            raise InvalidParameter("Range of blkio weight is from 10 to 1000")
        return r, warnings

    def check_update(self, current, update):
        """`POST /containers/{id}/update`: merge the non-zero fields of `update` over `current`.

        Returns (merged, warnings) like `check`. Zero or absent fields leave the current value.
        """
        cur = normalise(current)
        upd = normalise(update)
        if upd["Memory"] != 0 and cur["MemorySwap"] > 0 and upd["Memory"] > cur["MemorySwap"] \
                and upd["MemorySwap"] == 0:
            raise InvalidParameter("Memory limit should be smaller than already set memoryswap limit, "
                                   "update the memoryswap at the same time")
        merged = dict(cur)
        for field in FIELDS:
            value = upd[field]
            if field in ("PidsLimit", "MemorySwappiness"):
                if value is not None:
                    merged[field] = value
            elif field == "OomKillDisable":
                continue            # not updatable in Docker either
            elif value:
                merged[field] = value
        _, warnings = self.check(upd, update=True)    # warnings are about what this update asked for
        merged, _ = self.check(merged, update=True)
        return merged, warnings

    def _effective(self, name):
        text = _read_or_none(os.path.join(self.base_dir, name)) if self.base_dir else None
        return text.strip() if text and text.strip() else None

    # -- per-container cgroups ----------------------------------------------------------------------
    def path_for(self, container_id):
        if not _NAME_RE.match(container_id or "") or container_id == DAEMON_CGROUP:
            raise InvalidParameter(f"invalid cgroup name {container_id!r}")
        return os.path.join(self.base_dir, container_id)

    def create(self, container_id, resources):
        """mkdir <base>/<id> and write its limits; None when this daemon has no usable cgroups.

        `resources` should come from `check()`. An existing directory (a restart) is reused.
        """
        if not self.usable:
            return None
        group = Cgroup(self.path_for(container_id))
        try:
            os.mkdir(group.path)
        except FileExistsError:
            pass
        except OSError as e:
            raise OSError(e.errno, f"mkdir: {e.strerror}", group.path) from None
        try:
            group.apply(translate(resources, self.enabled, group.path))
        except OSError:
            group.remove(timeout=1.0)
            raise
        return group

    def get(self, container_id):
        """The Cgroup of a container if its directory exists, else None."""
        if not self.usable:
            return None
        path = self.path_for(container_id)
        return Cgroup(path) if os.path.isdir(path) else None

    def children(self):
        """Names of container cgroups under the base (for clean-up after a daemon restart)."""
        if not self.usable:
            return []
        return sorted(name for name in os.listdir(self.base_dir)
                      if name != DAEMON_CGROUP and not name.startswith("probe-")
                      and os.path.isdir(os.path.join(self.base_dir, name)))


class Cgroup:
    """One container's cgroup directory: membership, freezing, killing, limits and statistics."""

    def __init__(self, path):
        self.path = path

    def _file(self, name):
        return os.path.join(self.path, name)

    def apply(self, writes):
        """Write each (file, value) of `translate()`: on create and again on update."""
        for name, value in writes:
            _write(self._file(name), value)

    def add_pid(self, pid):
        """Move process `pid` (all its threads) into this cgroup. 0 means the calling process."""
        _write(self._file("cgroup.procs"), pid)

    @property
    def procs_path(self):
        """For a child that joins itself before exec: write '0' here (the spawner's job)."""
        return self._file("cgroup.procs")

    def pids(self):
        try:
            return [int(p) for p in _read(self._file("cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def events(self):
        """cgroup.events as a dict: {'populated': 0|1, 'frozen': 0|1}."""
        return _keyed(_read_or_none(self._file("cgroup.events")))

    # -- freeze / thaw ------------------------------------------------------------------------------
    def freeze(self, timeout=5.0):
        """Freeze every process (docker pause) and wait until cgroup.events says `frozen 1`.

        A task in uninterruptible sleep (D state) may delay freezing; on timeout we thaw again and
        raise TimeoutError, so a half-frozen container is never reported as paused.
        """
        _write(self._file("cgroup.freeze"), 1)
        if not self._wait("frozen", 1, timeout):
            _write(self._file("cgroup.freeze"), 0)
            raise TimeoutError(errno.ETIMEDOUT, f"cgroup did not report frozen within {timeout}s",
                               self._file("cgroup.events"))

    def thaw(self, timeout=5.0):
        _write(self._file("cgroup.freeze"), 0)
        if not self._wait("frozen", 0, timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"cgroup did not report thawed within {timeout}s",
                               self._file("cgroup.events"))

    def frozen(self):
        return self.events().get("frozen") == 1

    def _wait(self, key, want, timeout):
        """Wait for `key want` in cgroup.events. The kernel wakes poll(2) with POLLPRI on change;
        we still re-read at least every 50 ms, which also makes this work on a plain file."""
        path = self._file("cgroup.events")
        deadline = time.monotonic() + timeout
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                if _keyed(os.pread(fd, 4096, 0).decode()).get(key) == want:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(min(left, 0.05) * 1000)
        finally:
            os.close(fd)

    # -- kill / remove ------------------------------------------------------------------------------
    def kill(self):
        """SIGKILL every process in the cgroup: cgroup.kill where the kernel has it (5.14+, atomic
        against forks), else freeze-free best effort: SIGKILL each PID until none is left."""
        if os.path.exists(self._file("cgroup.kill")):
            _write(self._file("cgroup.kill"), 1)
            return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self, timeout=5.0):
        """Kill what is left and rmdir. rmdir fails with EBUSY until the cgroup is unpopulated
        (dying processes leave only when reaped), so retry up to `timeout` seconds."""
        if not os.path.isdir(self.path):
            return
        if self.pids():
            self.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise OSError(e.errno, f"rmdir: {e.strerror}", self.path) from None
            time.sleep(0.01)

    # -- statistics (GET /containers/{id}/stats, v1.23 shapes) ---------------------------------------
    def stats(self):
        """memory_stats, cpu_stats, pids_stats and blkio_stats from whatever files exist.

        Fields whose file does not exist are left out rather than invented. memory_stats.stats
        carries memory.stat's own v2 keys (anon, file, inactive_file, ...), as Docker does on v2.
        """
        return {"memory_stats": self.memory_stats(), "cpu_stats": self.cpu_stats(),
                "pids_stats": self.pids_stats(), "blkio_stats": self.blkio_stats()}

    def memory_stats(self):
        current = _read_or_none(self._file("memory.current"))
        if current is None:
            return {}
        out = {"usage": int(current), "stats": _keyed(_read_or_none(self._file("memory.stat")))}
        peak = _read_or_none(self._file("memory.peak"))
        if peak is not None:
            out["max_usage"] = int(peak)
        events = _keyed(_read_or_none(self._file("memory.events")))
        if "max" in events:
            out["failcnt"] = events["max"]      # times usage hit memory.max: v1's failcnt
        limit = (_read_or_none(self._file("memory.max")) or "max").strip()
        total = _mem_total()
        # Docker reports the machine's memory when there is no (smaller) limit.
        out["limit"] = total if limit == "max" or (total and int(limit) > total) else int(limit)
        return out

    def cpu_stats(self):
        stat = _keyed(_read_or_none(self._file("cpu.stat")))
        out = {"system_cpu_usage": system_cpu_usage(), "online_cpus": os.cpu_count() or 1}
        if "usage_usec" in stat:
            out["cpu_usage"] = {"total_usage": stat["usage_usec"] * 1000,
                                "usage_in_usermode": stat.get("user_usec", 0) * 1000,
                                "usage_in_kernelmode": stat.get("system_usec", 0) * 1000}
        if "nr_periods" in stat:
            out["throttling_data"] = {"periods": stat["nr_periods"], "throttled_periods": stat["nr_throttled"],
                                      "throttled_time": stat.get("throttled_usec", 0) * 1000}
        return out

    def pids_stats(self):
        current = _read_or_none(self._file("pids.current"))
        if current is not None:
            out = {"current": int(current)}
            limit = (_read_or_none(self._file("pids.max")) or "max").strip()
            if limit != "max":
                out["limit"] = int(limit)
            return out
        # Without the pids controller, cgroup.threads lists the same tasks pids.current would count
        # (a container cgroup has no children).
        threads = _read_or_none(self._file("cgroup.threads"))
        return {} if threads is None else {"current": len(threads.split())}

    def blkio_stats(self):
        text = _read_or_none(self._file("io.stat"))
        if text is None:
            return {}
        service_bytes, serviced = [], []
        for line in text.splitlines():
            device, *pairs = line.split()
            major, minor = (int(x) for x in device.split(":"))
            kv = dict(p.split("=", 1) for p in pairs if "=" in p)
            for key, op, into in (("rbytes", "read", service_bytes), ("wbytes", "write", service_bytes),
                                  ("rios", "read", serviced), ("wios", "write", serviced)):
                if key in kv:
                    into.append({"major": major, "minor": minor, "op": op, "value": int(kv[key])})
        return {"io_service_bytes_recursive": service_bytes, "io_serviced_recursive": serviced}


def system_cpu_usage(proc_stat="/proc/stat"):
    """Host CPU time in nanoseconds, as Docker computes it: the first seven fields of /proc/stat's
    `cpu` line (user nice system idle iowait irq softirq), in clock ticks, times 1e9/CLK_TCK."""
    for line in _read(proc_stat).splitlines():
        if line.startswith("cpu "):
            ticks = sum(int(x) for x in line.split()[1:8])
            return ticks * 10**9 // os.sysconf("SC_CLK_TCK")
    return 0


def _mem_total():
    for line in (_read_or_none("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0
