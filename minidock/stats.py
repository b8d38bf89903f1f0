"""Container statistics (`docker stats`): what the kernel accounts for a container's processes.

`GET /containers/{id}/stats` answers one JSON object per sample. The docker CLI computes its
columns from a few fields of it (cli/command/container/stats_helpers.go):

    CPU %      (cpu_stats.cpu_usage.total_usage - precpu_stats.cpu_usage.total_usage)
               / (cpu_stats.system_cpu_usage - precpu_stats.system_cpu_usage)
               * online_cpus * 100
    MEM        memory_stats.usage - memory_stats.stats["inactive_file"]   (v2 name)
    LIMIT      memory_stats.limit
    NET I/O    sum of networks.<if>.rx_bytes / tx_bytes
    BLOCK I/O  sum of blkio_stats.io_service_bytes_recursive[] by op "read" / "write"
    PIDS       pids_stats.current

Two sources, decided per container:

* **cgroup v2** (Docker's way): where the daemon has a delegated tree (cgroup.py), the container's
  own directory holds `cpu.stat`, `memory.current`, `memory.stat`, `pids.current`, `io.stat`. Those
  count everything the container ever did, including processes that have exited.
* **procfs** (where there is no delegated tree: this machine, most rootless hosts). Rootless
  Docker and Podman show nothing then; the kernel still accounts every *process*, so we add up
  the container's processes ourselves. The processes are those whose `/proc/PID/ns/pid` names the
  same pid namespace as the container's init (`ns.container_pids`), exec'd ones included.

      CPU     /proc/PID/stat fields 14-17: utime, stime, cutime, cstime in clock ticks
              (proc(5)). cutime/cstime hold the time of children the process has waited for,
              so a short-lived child reaped by a shell inside the container stays counted
              after it is gone. Ticks * 1e9 / CLK_TCK = nanoseconds; user = utime + cutime,
              kernel = stime + cstime. A child reaped by a process *outside* the container
              (the daemon, which reaps exec'd processes) takes its time with it: the total can
              shrink, which the CLI tolerates (it ignores negative deltas).
      memory  the sum of `Pss` from /proc/PID/smaps_rollup. Pss (proportional set size)
              divides every resident page by the number of processes mapping it, so ten
              shells sharing one busybox text segment count it once, not ten times -- the
              sum of Rss would double count. Pages shared with processes outside the
              container are split the same way. The page cache a container causes (files it
              wrote but does not map) is not attributable to a process and is not counted;
              so `stats` has no `inactive_file`, and the CLI then shows the full usage.
              `stats` carries the split: pss, rss, anon (Pss_Anon), file (Pss_File),
              shmem (Pss_Shmem), swap (SwapPss).
      pids    the sum of `Threads:` in /proc/PID/status (pids.current counts tasks too).
      I/O     /proc/PID/io `read_bytes` / `write_bytes`: bytes that went to (or were dirtied
              for) storage. Like CPU time, a reaped child's I/O is added to its parent's. No
              device is known per process, so the entries carry major 0, minor 0.

Network counters come from `/proc/<init>/net/dev`, which shows the *network namespace* of that
process: one line per interface with 8 receive and 8 transmit counters. `lo` is left out, as
Docker reports only the container's endpoints; a container in the daemon's own network
namespace (`--network host`) has no networks of its own, and gets none.

`system_cpu_usage` is the host's CPU time in ns as moby computes it (the first seven fields of
/proc/stat's `cpu` line); `online_cpus` is sysconf(_SC_NPROCESSORS_ONLN).

Observe it yourself:

    docker run -d --name busy busybox sh -c 'while :; do :; done'
    cat /proc/$(docker inspect -f '{{.State.Pid}}' busy)/stat | cut -d' ' -f14-17
    docker stats --no-stream busy                              # CPU % near 100
"""

import os
import time

from . import cgroup as cgroups
from . import ns
from .times import ZERO_TIME, now_rfc3339

SOURCE_CGROUP = "cgroup2"
SOURCE_PROCFS = "procfs"


_NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
               None, None, None, None,                      # fifo frame compressed multicast
               "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def _read(path):
    with open(path) as f:
        return f.read()


def _ticks_to_ns(ticks):
    return ticks * 10**9 // os.sysconf("SC_CLK_TCK")


def online_cpus():
    return os.sysconf("SC_NPROCESSORS_ONLN") or 1


# -- parsers of the proc files (text in, numbers out) ------------------------------------------

def parse_proc_stat(text):
    """(utime, stime, cutime, cstime) in ticks from a /proc/PID/stat line.

    The second field is `(comm)` and comm may contain spaces and parentheses, so the fields are
    counted from the *last* ')': after it come field 3 (state) onwards; utime is field 14.
    """
    rest = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return utime, stime, cutime, cstime


def parse_kb_fields(text):
    """`Key:   123 kB` lines (smaps_rollup, status) -> {key: bytes}; other lines are skipped."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out


def parse_status_threads(text):
    for line in text.splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def parse_io(text):
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def parse_net_dev(text, skip=("lo",)):
    """/proc/net/dev -> {interface: {rx_bytes, rx_packets, ..., tx_dropped}} (Docker's names)."""
    out = {}
    for line in text.splitlines()[2:]:              # two header lines
        name, sep, counters = line.partition(":")
        name = name.strip()
        if not sep or name in skip:
            continue
        values = [int(x) for x in counters.split()]
        out[name] = {field: values[i] for i, field in enumerate(_NET_FIELDS) if field}
    return out


# -- the samples -----------------------------------------------------------------------------

def _proc_files(pid):
    """The four files of one process, or None if it exited meanwhile (or is not ours to read)."""
    try:
        return (_read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/smaps_rollup"),
                _read(f"/proc/{pid}/status"), _read(f"/proc/{pid}/io"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:                    # ESRCH from a file of a process that just died
        return None


def proc_sample(pids):
    """cpu_stats, memory_stats, pids_stats, blkio_stats summed over the processes `pids`."""
    user = kernel = threads = read_bytes = write_bytes = 0
    memory = {"pss": 0, "rss": 0, "anon": 0, "file": 0, "shmem": 0, "swap": 0}
    counted = 0
    for pid in pids:
        files = _proc_files(pid)
        if files is None:
            continue
        stat, rollup, status, io = files
        utime, stime, cutime, cstime = parse_proc_stat(stat)
        user += utime + cutime
        kernel += stime + cstime
        kb = parse_kb_fields(rollup)
        for key, field in (("pss", "Pss"), ("rss", "Rss"), ("anon", "Pss_Anon"),
                           ("file", "Pss_File"), ("shmem", "Pss_Shmem"), ("swap", "SwapPss")):
            memory[key] += kb.get(field, 0)
        threads += parse_status_threads(status)
        counters = parse_io(io)
        read_bytes += counters.get("read_bytes", 0)
        write_bytes += counters.get("write_bytes", 0)
        counted += 1
    user_ns, kernel_ns = _ticks_to_ns(user), _ticks_to_ns(kernel)
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": user_ns + kernel_ns,
                                    "usage_in_usermode": user_ns,
                                    "usage_in_kernelmode": kernel_ns},
                      "system_cpu_usage": cgroups.system_cpu_usage(),
                      "online_cpus": online_cpus(),
                      "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "memory_stats": {"usage": memory["pss"], "stats": memory,
                         "limit": cgroups._mem_total()},
        "pids_stats": {"current": threads},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": read_bytes},
            {"major": 0, "minor": 0, "op": "write", "value": write_bytes}]},
        "num_procs": counted,
    }


def networks(init_pid):
    """Counters of the container's own network namespace, or None when it shares the daemon's."""
    try:
        theirs = os.stat(f"/proc/{init_pid}/ns/net").st_ino
        text = _read(f"/proc/{init_pid}/net/dev")
    except OSError:
        return None
    if theirs == os.stat("/proc/self/ns/net").st_ino:
        return None
    return parse_net_dev(text)


def sample(init_pid, group=None):
    """One raw sample of a running container: the stats fields, without name/id/precpu.

    `group` is the container's cgroup.Cgroup when it has one. Its files win where they exist
    (they also count exited processes); what a cgroup lacks (a controller not delegated) comes
    from the per-process accounting. Returns (source, fields).
    """
    read = now_rfc3339()
    fields = proc_sample(ns.container_pids(init_pid))
    source = SOURCE_PROCFS
    if group is not None:
        from_cgroup = group.stats()
        for key in ("memory_stats", "pids_stats", "blkio_stats"):
            if from_cgroup.get(key):
                fields[key] = from_cgroup[key]
                source = SOURCE_CGROUP
        cpu = from_cgroup.get("cpu_stats") or {}
        if "cpu_usage" in cpu:
            fields["cpu_stats"] = dict(cpu, throttling_data=cpu.get(
                "throttling_data", fields["cpu_stats"]["throttling_data"]))
            source = SOURCE_CGROUP
    nets = networks(init_pid)
    if nets:
        fields["networks"] = nets
    fields["read"] = read
    return source, fields


def empty_cpu():
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def empty(name, id_):
    """The object moby sends for a container that is not running: zero values, name and id."""
    return {"read": ZERO_TIME, "preread": ZERO_TIME, "pids_stats": {},
            "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None,
                            "io_queue_recursive": None, "io_service_time_recursive": None,
                            "io_wait_time_recursive": None, "io_merged_recursive": None,
                            "io_time_recursive": None, "sectors_recursive": None},
            "num_procs": 0, "storage_stats": {}, "cpu_stats": empty_cpu(),
            "precpu_stats": empty_cpu(), "memory_stats": {}, "name": name, "id": id_}


def document(fields, name, id_, previous=None):
    """The full Docker stats object from a sample and the one before it (precpu/preread)."""
    doc = empty(name, id_)
    doc.update({k: v for k, v in fields.items()})
    doc.setdefault("networks", None)
    if doc.get("networks") is None:
        doc.pop("networks")             # moby omits it (omitempty) when there are none
    if previous:
        doc["precpu_stats"] = previous["cpu_stats"]
        doc["preread"] = previous["read"]
    return doc


class Stream:
    """Successive documents of one container, each carrying the previous sample as precpu.

    `next()` takes a new sample (or the not-running object when `init_pid()` returns 0). The
    API layer decides the pacing (one a second) and Docker's modes:
      stream          every document
      stream=0        discard the first document, answer the second (precpu filled)
      one-shot        the first document, precpu empty
    """

    def __init__(self, name, id_, init_pid, group=lambda: None):
        self.name, self.id = name, id_
        self.init_pid, self.group = init_pid, group
        self.previous = None
        self.source = None

    def next(self):
        pid = self.init_pid()
        if not pid:
            self.previous = None
            return empty(self.name, self.id)
        self.source, fields = sample(pid, self.group())
        if fields["num_procs"] == 0 and os.path.exists(f"/proc/{pid}"):
            # Alive but unreadable for a moment: a process in the middle of execve(2) has its
            # /proc files refused while its memory map is swapped. Once more, after it.
            time.sleep(0.005)
            self.source, fields = sample(pid, self.group())
        if fields["num_procs"] == 0:     # it died between init_pid() and the walk
            self.previous = None
            return empty(self.name, self.id)
        doc = document(fields, self.name, self.id, self.previous)
        self.previous = fields
        return doc


def source_for(hierarchy):
    """What /info reports: whole-container cgroup files where containers get a cgroup with the
    memory controller, else per-process accounting."""
    if hierarchy is not None and "memory" in (getattr(hierarchy, "enabled", None) or ()):
        return SOURCE_CGROUP
    return SOURCE_PROCFS
