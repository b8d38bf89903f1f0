"""Docker's resource limits as cgroup v2 files: the fields, their rules, the warnings, the writes.

Docker's HostConfig speaks cgroup v1 (`CpuShares` 2..262144, `BlkioWeight` 10..1000,
`MemorySwap` as memory+swap); the files of a v2 cgroup (cgroup.py) speak v2. This module is the
translation, as pure functions over dicts, tested on values:

    Memory              memory.max              bytes
    MemoryReservation   memory.low              bytes
    MemorySwap          memory.swap.max         MemorySwap - Memory (v2 counts swap alone); -1: max
    CpuShares           cpu.weight              1 + (shares - 2) * 9999 / 262142 (runc's mapping)
    NanoCpus            cpu.max                 "<NanoCpus * period / 1e9> 100000"
    CpuQuota, CpuPeriod cpu.max                 "<quota or max> <period>", one write
    CpusetCpus/Mems     cpuset.cpus/.mems       a list like "0-3,5" (cpuset(7) "List format")
    BlkioWeight         io.bfq.weight           as is, under BFQ; else io.weight 1..10000
    PidsLimit           pids.max                0 or negative: unlimited

`normalise()` checks types and signs (a bad value is a 400 before anything is written);
`translate()` gives the (file, value) writes for the controllers a cgroup has. Unset fields give
no write, so the kernel's defaults stay. A limit this machine cannot enforce is dropped by
`Hierarchy.check()` (cgroup.py) with Docker's own warning text, word for word, from the `W_*`
constants here, so users and scripts recognise them.
"""

import os
import re

from minidock.errors import InvalidParameter

MIN_MEMORY = 4 * 1024 * 1024          # Docker's linuxMinMemory in the v1.23 era
CPU_PERIOD_DEFAULT = 100000           # microseconds; the kernel's default cpu.max period

# Docker's warnings, word for word, so users and scripts recognise them.
_NM = "or the cgroup is not mounted."
W_MEMORY = "Your kernel does not support memory limit capabilities or the cgroup is not mounted. Limitation discarded."
W_SWAP = f"Your kernel does not support swap limit capabilities {_NM} Memory limited without swap."
W_RESERVATION = f"Your kernel does not support memory soft limit capabilities {_NM} Limitation discarded."
W_KERNEL_MEMORY = f"Your kernel does not support kernel memory limit capabilities {_NM} Limitation discarded."
W_SWAPPINESS = f"Your kernel does not support memory swappiness capabilities {_NM} Memory swappiness discarded."
W_OOM_KILL_DISABLE = "Your kernel does not support OomKillDisable. OomKillDisable discarded."
W_OOM_NO_MEMORY = ("OOM killer is disabled for the container, but no memory limit is set, this can result in "
                   "the system running out of resources.")
W_PIDS = "Your kernel does not support PIDs limit capabilities or the cgroup is not mounted. PIDs limit discarded."
W_SHARES = "Your kernel does not support CPU shares or the cgroup is not mounted. Shares discarded."
W_PERIOD = "Your kernel does not support CPU cfs period or the cgroup is not mounted. Period discarded."
W_QUOTA = "Your kernel does not support CPU cfs quota or the cgroup is not mounted. Quota discarded."
W_NANO_CPUS = "Your kernel does not support CPU CFS scheduler. NanoCPUs discarded."
W_CPUSET = "Your kernel does not support cpuset or the cgroup is not mounted. Cpuset discarded."
W_BLKIO = "Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded."

# The HostConfig fields this module owns, with the value that means "not set".
INT_FIELDS = ("Memory", "MemorySwap", "MemoryReservation", "KernelMemory", "CpuShares", "CpuPeriod",
              "CpuQuota", "NanoCpus", "BlkioWeight")
FIELDS = INT_FIELDS + ("CpusetCpus", "CpusetMems", "PidsLimit", "MemorySwappiness", "OomKillDisable")

_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_cpuset(text):
    """The CPU or memory-node numbers of a cpuset list like '0-3,5' (cpuset(7) "List format")."""
    if not _CPUSET_RE.match(text):
        raise ValueError(text)
    numbers = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise ValueError(text)
        numbers.update(range(lo, hi + 1))
    return numbers


def shares_to_weight(shares):
    """cgroup v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], the conversion runc documents.

    weight = 1 + ((shares - 2) * 9999) / 262142, so the v1 default 1024 becomes 39 and not the v2
    default 100; that is what Docker and runc write. Shares are clamped to the v1 range first, as
    the v1 kernel did with cpu.shares.
    """
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight):
    """BlkioWeight [10, 1000] -> io.weight [1, 10000], runc's linear mapping."""
    return 1 + ((weight - 10) * 9999) // 990


def normalise(resources):
    """Every FIELD present with a checked type; Docker's `Cpuset` alias folded into CpusetCpus."""
    resources = resources or {}
    r = {}
    for field in INT_FIELDS:
        value = resources.get(field)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter(f"{field} must be an integer, not {value!r}")
        r[field] = value
    for field in ("PidsLimit", "MemorySwappiness"):
        value = resources.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidParameter(f"{field} must be an integer, not {value!r}")
        r[field] = value
    for field in ("CpusetCpus", "CpusetMems"):
        value = resources.get(field) or ""
        if field == "CpusetCpus" and not value:
            value = resources.get("Cpuset") or ""
        if not isinstance(value, str):
            raise InvalidParameter(f"{field} must be a string, not {value!r}")
        r[field] = value.strip()
    r["OomKillDisable"] = bool(resources.get("OomKillDisable"))
    # Negative values: -1 means "unlimited" for swap and quota; anything else negative is wrong.
    for field in ("Memory", "MemoryReservation", "KernelMemory", "CpuShares", "CpuPeriod", "NanoCpus",
                  "BlkioWeight"):
        if r[field] < 0:
            raise InvalidParameter(f"Invalid value {r[field]} for {field}: it must not be negative")
    for field in ("MemorySwap", "CpuQuota"):
        if r[field] < -1:
            raise InvalidParameter(f"Invalid value {r[field]} for {field}: use -1 for unlimited")
    if r["PidsLimit"] is not None and r["PidsLimit"] < 0:
        r["PidsLimit"] = -1             # Docker: zero or negative means unlimited
    return r


def translate(resources, enabled, directory=None):
    """The (file, value) writes that enforce checked `resources` in a cgroup with `enabled` controllers.

    Pure except that `directory`, when given, decides between io.bfq.weight and io.weight.
    Unset fields produce no write, so the kernel defaults (max, 100, ...) stay.
    """
    r = normalise(resources)
    writes = []
    if "cpuset" in enabled:
        if r["CpusetCpus"]:
            writes.append(("cpuset.cpus", r["CpusetCpus"]))
        if r["CpusetMems"]:
            writes.append(("cpuset.mems", r["CpusetMems"]))
    if "memory" in enabled:
        if r["Memory"] > 0:
            writes.append(("memory.max", r["Memory"]))
        if r["MemoryReservation"] > 0:
            writes.append(("memory.low", r["MemoryReservation"]))
        # v1's memsw counted memory+swap; v2's memory.swap.max counts swap alone.
        if r["MemorySwap"] == -1 and r["Memory"] > 0:
            writes.append(("memory.swap.max", "max"))
        elif r["MemorySwap"] > 0 and r["Memory"] > 0:
            writes.append(("memory.swap.max", r["MemorySwap"] - r["Memory"]))
    if "cpu" in enabled:
        if r["CpuShares"] > 0:
            writes.append(("cpu.weight", shares_to_weight(r["CpuShares"])))
        # cpu.max is "$QUOTA $PERIOD" in one write; "max" is no quota.
        if r["NanoCpus"] > 0:
            writes.append(("cpu.max", f"{r['NanoCpus'] * CPU_PERIOD_DEFAULT // 10**9} {CPU_PERIOD_DEFAULT}"))
        elif r["CpuQuota"] != 0 or r["CpuPeriod"] != 0:
            quota = str(r["CpuQuota"]) if r["CpuQuota"] > 0 else "max"
            writes.append(("cpu.max", f"{quota} {r['CpuPeriod'] or CPU_PERIOD_DEFAULT}"))
    if "io" in enabled and r["BlkioWeight"] > 0:
        # BFQ has its own file taking the v1 range directly; otherwise io.weight's 1..10000.
        if directory and os.path.exists(os.path.join(directory, "io.bfq.weight")):
            writes.append(("io.bfq.weight", r["BlkioWeight"]))
        else:
            writes.append(("io.weight", blkio_to_io_weight(r["BlkioWeight"])))
    if "pids" in enabled and r["PidsLimit"] is not None and r["PidsLimit"] != 0:
        writes.append(("pids.max", "max" if r["PidsLimit"] < 0 else r["PidsLimit"]))
    return writes
