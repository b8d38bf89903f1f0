"""cgroup v2: discovery, Docker limit checks and their translation to files, freeze/kill/stats.

Two kinds of test. Fake trees: a temp directory laid out like cgroupfs (the files the kernel would
create at mkdir are created by the test), so every write can be asserted byte for byte. Real
kernel: whatever cgroup2 tree this machine mounts, used as root (freeze a busy process and watch
its CPU time stop) and as uid 65534 with and without a delegated subtree, the rootless case.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from minidock import cgroup, cgrouplimits, pidlimit
from minidock.cgroup import Hierarchy
from minidock.cgrouplimits import translate
from minidock.errors import InvalidParameter
from support import NOBODY, as_user_argv, copy_package, make_user_dir, unprivileged_python

ALL = {"cpuset", "cpu", "io", "memory", "pids"}
MB = 1024 * 1024


# -- fake trees ----------------------------------------------------------------------------------

def put(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def read(path):
    with open(path) as f:
        return f.read()


def fake_host(tmp_path, own="/", controllers="cpuset cpu io memory pids", mount_line=None):
    """A fake /proc/self/mountinfo + /proc/self/cgroup + cgroup2 tree; returns (mountinfo, cgroup, tree)."""
    tree = tmp_path / "cgroup2"
    own_dir = tree / own.lstrip("/")
    put(str(own_dir / "cgroup.controllers"), controllers + "\n")
    put(str(own_dir / "cgroup.subtree_control"), "\n")
    put(str(own_dir / "cgroup.procs"), "")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        + (mount_line or f"41 31 0:38 / {tree} rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"))
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text(f"4:memory:/elsewhere\n1:cpu:/\n0::{own}\n")
    return str(mountinfo), str(proc_cgroup), tree


def usable(h, enabled=ALL, swap=True):
    """Mark a fake-tree Hierarchy as prepared (fake trees cannot emulate subtree_control)."""
    h.usable, h.enabled, h.swap, h.freeze, h.kill = True, set(enabled), swap, True, True
    return h


def fake_container_dir(base, cid):
    """What the kernel creates at mkdir <base>/<cid> with all controllers, with default values."""
    d = os.path.join(base, cid)
    for name, value in {"cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0\n",
                        "cgroup.kill": "", "memory.max": "max\n", "memory.low": "0\n", "memory.swap.max": "max\n",
                        "cpu.weight": "100\n", "cpu.max": "max 100000\n", "cpuset.cpus": "\n",
                        "cpuset.mems": "\n", "io.weight": "default 100\n", "pids.max": "max\n"}.items():
        put(os.path.join(d, name), value)
    return d


def test_find_cgroup2_mount_on_hybrid_pure_and_absent(tmp_path):
    mi = tmp_path / "mi"
    mi.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
                  "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                  "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup.find_cgroup2_mount(str(mi)) == ("/sys/fs/cgroup/unified", "/")
    mi.write_text("30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup.find_cgroup2_mount(str(mi)) == ("/sys/fs/cgroup", "/")
    mi.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup.find_cgroup2_mount(str(mi)) is None
    # A bind mount of a subtree is passed over for the whole hierarchy; \040 is a space.
    mi.write_text("50 1 0:26 /sub /mnt/a\\040b rw - cgroup2 cgroup2 rw\n"
                  "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert cgroup.find_cgroup2_mount(str(mi)) == ("/sys/fs/cgroup", "/")
    mi.write_text("50 1 0:26 /sub /mnt/a\\040b rw - cgroup2 cgroup2 rw\n")
    assert cgroup.find_cgroup2_mount(str(mi)) == ("/mnt/a b", "/sub")


def test_own_cgroup_reads_the_v2_line(tmp_path):
    p = tmp_path / "cgroup"
    p.write_text("9:name=systemd:/\n4:memory:/x\n0::/user.slice/user-1000.slice/user@1000.service/app.slice\n")
    assert cgroup.own_cgroup(str(p)) == "/user.slice/user-1000.slice/user@1000.service/app.slice"
    p.write_text("4:memory:/x\n")
    assert cgroup.own_cgroup(str(p)) is None


def test_discovery_in_root_uses_a_minidock_base(tmp_path):
    mi, pc, tree = fake_host(tmp_path, own="/", controllers="hugetlb cpu memory")
    h = Hierarchy.discover(mi, pc)
    assert h.mount == str(tree) and h.own == "/"
    assert h.own_dir == str(tree) and h.base_dir == str(tree / "minidock")
    assert h.controllers == {"hugetlb", "cpu", "memory"}
    assert not h.usable and h.pause_method == "SIGSTOP"      # nothing decided before prepare()


def test_discovery_in_a_delegated_leaf_uses_our_own_cgroup(tmp_path):
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/minidock.service"
    mi, pc, tree = fake_host(tmp_path, own=own)
    h = Hierarchy.discover(mi, pc)
    assert h.own_dir == str(tree) + own and h.base_dir == h.own_dir
    assert h.controllers == ALL


def test_discovery_strips_the_mount_root_of_a_subtree_mount(tmp_path):
    tree = tmp_path / "cg"
    line = f"50 1 0:26 /user.slice {tree} rw - cgroup2 cgroup2 rw\n"
    mi, pc, _ = fake_host(tmp_path, own="/user.slice/app", mount_line=line)
    put(str(tree / "app" / "cgroup.controllers"), "memory\n")
    h = Hierarchy.discover(mi, pc)
    assert h.own_dir == str(tree / "app") and h.controllers == {"memory"}


def test_discovery_without_cgroup2(tmp_path):
    mi = tmp_path / "mi"
    mi.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    pc = tmp_path / "cg"
    pc.write_text("4:memory:/\n")
    h = Hierarchy.discover(str(mi), str(pc)).prepare()
    assert h.mount is None and not h.usable and "no cgroup2" in h.reason
    caps = h.capabilities()
    assert caps["PauseMethod"] == "SIGSTOP" and caps["CgroupDriver"] == "none" and not caps["MemoryLimit"]
    assert h.create("a" * 64, {}) is None


def test_prepare_writes_one_controller_per_write(tmp_path):
    # cgroupfs takes "+memory +pids" too, but one write per controller means one refusal (cpuset
    # in a busy tree, say) does not lose the others. Here only "io" is still missing.
    own = "/svc"
    mi, pc, tree = fake_host(tmp_path, own=own, controllers="cpuset cpu io memory pids hugetlb")
    put(str(tree / "svc" / "cgroup.subtree_control"), "cpuset cpu memory pids\n")
    h = Hierarchy.discover(mi, pc).prepare()
    assert read(str(tree / "svc" / "cgroup.subtree_control")) == "+io"
    # mkdir of the probe made an empty directory (a fake tree has no kernel), so no freeze file.
    assert h.usable and not h.freeze and h.pause_method == "SIGSTOP"
    assert not os.path.exists(tree / "svc" / f"probe-{os.getpid()}")


# -- checking Docker limits ----------------------------------------------------------------------

def prepared(tmp_path, enabled=ALL, swap=True):
    mi, pc, tree = fake_host(tmp_path, own="/svc")
    return usable(Hierarchy.discover(mi, pc), enabled, swap)


def test_check_passes_supported_limits_and_adapts_swap_like_docker(tmp_path):
    h = prepared(tmp_path)
    r, warnings = h.check({"Memory": 64 * MB, "CpuShares": 512, "CpuPeriod": 100000, "CpuQuota": 50000,
                           "CpusetCpus": "0", "BlkioWeight": 300, "PidsLimit": 10, "MemoryReservation": 32 * MB})
    assert warnings == []
    assert r["Memory"] == 64 * MB and r["MemorySwap"] == 128 * MB    # unset swap = as much as memory
    assert r["CpuQuota"] == 50000 and r["PidsLimit"] == 10 and r["CpusetCpus"] == "0"


def test_check_discards_unsupported_limits_with_dockers_warnings(tmp_path, monkeypatch):
    monkeypatch.setattr(pidlimit, "kernel_counts_per_userns", lambda: False)   # a kernel < 5.14
    h = prepared(tmp_path, enabled=set())
    r, warnings = h.check({"Memory": 64 * MB, "MemoryReservation": 8 * MB, "KernelMemory": 8 * MB,
                           "CpuShares": 512, "CpuPeriod": 100000, "CpuQuota": 50000, "CpusetCpus": "0",
                           "BlkioWeight": 300, "PidsLimit": 10, "OomKillDisable": True})
    assert warnings == [cgrouplimits.W_MEMORY, cgrouplimits.W_RESERVATION, cgrouplimits.W_KERNEL_MEMORY, cgrouplimits.W_OOM_KILL_DISABLE,
                        cgrouplimits.W_PIDS, cgrouplimits.W_SHARES, cgrouplimits.W_PERIOD, cgrouplimits.W_QUOTA, cgrouplimits.W_CPUSET,
                        cgrouplimits.W_BLKIO]
    assert "Your kernel does not support memory limit capabilities or the cgroup is not mounted. " \
           "Limitation discarded." in warnings
    assert "Your kernel does not support CPU cfs quota or the cgroup is not mounted. Quota discarded." in warnings
    assert r["Memory"] == 0 and r["MemorySwap"] == -1 and r["CpuQuota"] == 0 and r["PidsLimit"] is None
    assert translate(r, ALL) == []          # nothing left to write: a discarded limit is never faked


def test_pids_limit_without_the_controller_is_kept_where_rlimit_counts_per_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(pidlimit, "kernel_counts_per_userns", lambda: True)
    h = prepared(tmp_path, enabled=set())
    r, warnings = h.check({"PidsLimit": 10})
    assert warnings == [] and r["PidsLimit"] == 10 and h.pids_by_rlimit
    assert translate(r, h.enabled) == []    # no pids.max to write: the init sets RLIMIT_NPROC
    assert not any("pids" in line for line in h.info_warnings())
    assert prepared(tmp_path / "full").pids_by_rlimit is False    # the controller wins where it exists


def test_kernel_release_parsing():
    assert pidlimit.kernel_counts_per_userns("5.14.0-1-amd64")
    assert pidlimit.kernel_counts_per_userns("6.18.44-fc-v669")
    assert not pidlimit.kernel_counts_per_userns("5.13.19")
    assert not pidlimit.kernel_counts_per_userns("4.19.0-25-amd64")
    assert not pidlimit.kernel_counts_per_userns("garbage")


def test_check_without_swap_accounting_limits_memory_only(tmp_path):
    h = prepared(tmp_path, swap=False)
    r, warnings = h.check({"Memory": 64 * MB})
    assert warnings == [cgrouplimits.W_SWAP] and r["MemorySwap"] == -1
    assert translate(r, ALL) == [("memory.max", 64 * MB), ("memory.swap.max", "max")]


@pytest.mark.parametrize("resources, message", [
    ({"Memory": 3 * MB}, "Minimum memory limit allowed is 4MB"),
    ({"Memory": -5}, "must not be negative"),
    ({"CpuShares": -1}, "must not be negative"),
    ({"MemorySwap": -2, "Memory": 64 * MB}, "use -1 for unlimited"),
    ({"Memory": 64 * MB, "MemorySwap": 32 * MB}, "Minimum memoryswap limit should be larger than memory limit"),
    ({"MemorySwap": 64 * MB}, "You should always set the Memory limit when using Memoryswap limit"),
    ({"Memory": 8 * MB, "MemoryReservation": 16 * MB}, "can not be less than memory reservation"),
    ({"MemoryReservation": MB}, "Minimum memory reservation allowed is 4MB"),
    ({"CpuPeriod": 999}, "CPU cfs period can not be less than 1ms"),
    ({"CpuQuota": 999}, "CPU cfs quota can not be less than 1ms"),
    ({"CpusetCpus": "0-"}, "Invalid value 0- for cpuset cpus"),
    ({"CpusetCpus": "3-1"}, "Invalid value 3-1 for cpuset cpus"),
    ({"CpusetMems": "a"}, "Invalid value a for cpuset mems"),
    ({"BlkioWeight": 5}, "Range of blkio weight is from 10 to 1000"),
    ({"MemorySwappiness": 101}, "valid memory swappiness range is 0-100"),
    ({"Memory": "64m"}, "must be an integer"),
    ({"Memory": True}, "must be an integer"),
    ({"NanoCpus": 10**9, "CpuPeriod": 100000}, "Nano CPUs and CPU Period cannot both be set"),
])
def test_check_rejects_bad_input_before_any_write(tmp_path, resources, message):
    h = prepared(tmp_path)
    with pytest.raises(InvalidParameter) as info:
        h.check(resources)
    assert message in info.value.message
    assert info.value.status == 400


def test_check_rejects_cpus_the_base_does_not_have(tmp_path):
    h = prepared(tmp_path)
    put(os.path.join(h.base_dir, "cpuset.cpus.effective"), "0-1\n")
    assert h.check({"CpusetCpus": "1"})[1] == []
    with pytest.raises(InvalidParameter, match="Requested CPUs are not available - requested 0-3, available: 0-1"):
        h.check({"CpusetCpus": "0-3"})


def test_check_ignores_unset_and_minus_one_values(tmp_path):
    h = prepared(tmp_path, enabled=set())
    r, warnings = h.check({"Memory": 0, "MemorySwap": -1, "CpuQuota": -1, "PidsLimit": -1,
                           "MemorySwappiness": -1, "OomKillDisable": False, "Cpuset": ""})
    assert warnings == []


# -- translation to files ------------------------------------------------------------------------

def test_shares_and_blkio_weight_conversions():
    assert cgrouplimits.shares_to_weight(2) == 1
    assert cgrouplimits.shares_to_weight(1024) == 39          # v1 default -> what runc writes
    assert cgrouplimits.shares_to_weight(512) == 20
    assert cgrouplimits.shares_to_weight(262144) == 10000
    assert cgrouplimits.shares_to_weight(1) == 1 and cgrouplimits.shares_to_weight(10**9) == 10000   # clamped
    assert cgrouplimits.blkio_to_io_weight(10) == 1 and cgrouplimits.blkio_to_io_weight(1000) == 10000
    assert cgrouplimits.blkio_to_io_weight(300) == 2930


def test_translate_every_limit():
    r = {"Memory": 300 * MB, "MemorySwap": 500 * MB, "MemoryReservation": 200 * MB, "CpuShares": 512,
         "CpuPeriod": 50000, "CpuQuota": 25000, "CpusetCpus": "0,1", "CpusetMems": "0", "BlkioWeight": 300,
         "PidsLimit": 64}
    assert translate(r, ALL) == [
        ("cpuset.cpus", "0,1"), ("cpuset.mems", "0"),
        ("memory.max", 300 * MB), ("memory.low", 200 * MB), ("memory.swap.max", 200 * MB),
        ("cpu.weight", 20), ("cpu.max", "25000 50000"),
        ("io.weight", 2930), ("pids.max", 64)]
    assert translate({"Memory": 64 * MB, "MemorySwap": -1}, ALL) == [("memory.max", 64 * MB),
                                                                     ("memory.swap.max", "max")]
    assert translate({"CpuQuota": 50000}, ALL) == [("cpu.max", "50000 100000")]     # default period
    assert translate({"CpuPeriod": 20000}, ALL) == [("cpu.max", "max 20000")]
    assert translate({"CpuQuota": -1}, ALL) == [("cpu.max", "max 100000")]
    assert translate({"NanoCpus": 1500000000}, ALL) == [("cpu.max", "150000 100000")]
    assert translate({"PidsLimit": -1}, ALL) == [("pids.max", "max")]
    assert translate({"PidsLimit": 0}, ALL) == []
    assert translate(r, {"memory"}) == [("memory.max", 300 * MB), ("memory.low", 200 * MB),
                                        ("memory.swap.max", 200 * MB)]


def test_translate_prefers_bfq_weight_where_it_exists(tmp_path):
    put(str(tmp_path / "io.bfq.weight"), "default 100\n")
    assert translate({"BlkioWeight": 300}, ALL, str(tmp_path)) == [("io.bfq.weight", 300)]


def test_create_writes_limit_files_and_update_rewrites_them(tmp_path):
    h = prepared(tmp_path)
    cid = "c0ffee" * 10 + "abcd"
    d = fake_container_dir(h.base_dir, cid)
    r, warnings = h.check({"Memory": 64 * MB, "CpuShares": 1024, "CpuQuota": 50000, "PidsLimit": 20,
                           "CpusetCpus": "0", "BlkioWeight": 500})
    group = h.create(cid, r)
    assert group.path == d
    files = {n: read(os.path.join(d, n)) for n in ("memory.max", "memory.swap.max", "memory.low", "cpu.weight",
                                                   "cpu.max", "pids.max", "cpuset.cpus", "io.weight")}
    assert files == {"memory.max": str(64 * MB), "memory.swap.max": str(64 * MB), "memory.low": "0\n",
                     "cpu.weight": "39", "cpu.max": "50000 100000", "pids.max": "20", "cpuset.cpus": "0",
                     "io.weight": str(cgrouplimits.blkio_to_io_weight(500))}
    # docker update --memory 100m --memory-swap 200m --pids-limit -1: merged over the stored limits
    merged, warnings = h.check_update(r, {"Memory": 100 * MB, "MemorySwap": 200 * MB, "PidsLimit": -1})
    assert warnings == [] and merged["CpuQuota"] == 50000 and merged["Memory"] == 100 * MB
    group.apply(translate(merged, h.enabled, group.path))
    assert read(os.path.join(d, "memory.max")) == str(100 * MB)
    assert read(os.path.join(d, "memory.swap.max")) == str(100 * MB)
    assert read(os.path.join(d, "pids.max")) == "max"
    assert read(os.path.join(d, "cpu.max")) == "50000 100000"
    group.add_pid(4242)
    assert read(os.path.join(d, "cgroup.procs")) == "4242"


def test_update_refuses_memory_above_the_stored_swap(tmp_path):
    h = prepared(tmp_path)
    r, _ = h.check({"Memory": 64 * MB})                     # MemorySwap became 128 MB
    with pytest.raises(InvalidParameter, match="update the memoryswap at the same time"):
        h.check_update(r, {"Memory": 256 * MB})
    merged, _ = h.check_update(r, {"Memory": 100 * MB})
    assert merged["Memory"] == 100 * MB and merged["MemorySwap"] == 128 * MB


def test_create_refuses_unsafe_names_and_missing_kernel_files(tmp_path):
    h = prepared(tmp_path)
    for bad in ("../x", "", "a/b", ".hidden", cgroup.DAEMON_CGROUP):
        with pytest.raises(InvalidParameter):
            h.create(bad, {})
    # A file the kernel did not create (the controller is off) is an error, not a silent create.
    with pytest.raises(FileNotFoundError) as info:
        h.create("abc", {"Memory": 64 * MB})
    assert info.value.filename.endswith("abc/memory.max")
    assert not os.path.exists(os.path.join(h.base_dir, "abc"))      # rolled back


def test_stats_from_fake_files(tmp_path):
    h = prepared(tmp_path)
    d = fake_container_dir(h.base_dir, "s1")
    put(os.path.join(d, "memory.current"), "6537216\n")
    put(os.path.join(d, "memory.peak"), "6651904\n")
    put(os.path.join(d, "memory.max"), "67108864\n")
    put(os.path.join(d, "memory.events"), "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")
    put(os.path.join(d, "memory.stat"), "anon 6537216\nfile 0\ninactive_file 4096\n")
    put(os.path.join(d, "cpu.stat"), "usage_usec 100215\nuser_usec 50000\nsystem_usec 30000\n"
                                     "nr_periods 10\nnr_throttled 2\nthrottled_usec 700\n")
    put(os.path.join(d, "pids.current"), "3\n")
    put(os.path.join(d, "pids.max"), "20\n")
    put(os.path.join(d, "io.stat"), "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    s = cgroup.Cgroup(d).stats()
    assert s["memory_stats"] == {"usage": 6537216, "max_usage": 6651904, "failcnt": 3, "limit": 67108864,
                                 "stats": {"anon": 6537216, "file": 0, "inactive_file": 4096}}
    assert s["cpu_stats"]["cpu_usage"] == {"total_usage": 100215000, "usage_in_usermode": 50000000,
                                           "usage_in_kernelmode": 30000000}
    assert s["cpu_stats"]["throttling_data"] == {"periods": 10, "throttled_periods": 2, "throttled_time": 700000}
    assert s["cpu_stats"]["system_cpu_usage"] > 0
    assert s["pids_stats"] == {"current": 3, "limit": 20}
    assert s["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096}, {"major": 8, "minor": 0, "op": "write", "value": 8192}]
    # no memory controller: no memory_stats at all rather than zeros
    os.unlink(os.path.join(d, "memory.current"))
    assert cgroup.Cgroup(d).memory_stats() == {}


def test_freeze_writes_and_times_out_honestly_on_a_fake_tree(tmp_path):
    d = fake_container_dir(str(tmp_path), "f1")
    group = cgroup.Cgroup(d)
    put(os.path.join(d, "cgroup.events"), "populated 1\nfrozen 1\n")      # as if the kernel had frozen it
    group.freeze(timeout=1)
    assert read(os.path.join(d, "cgroup.freeze")) == "1" and group.frozen()
    put(os.path.join(d, "cgroup.events"), "populated 1\nfrozen 0\n")      # a kernel that never freezes
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        group.freeze(timeout=0.2)
    assert time.monotonic() - t0 < 1
    assert read(os.path.join(d, "cgroup.freeze")) == "0"                   # thawed again, not half-paused


# -- the real kernel -----------------------------------------------------------------------------

REAL = cgroup.find_cgroup2_mount()


def real_root_hierarchy(name):
    if REAL is None:
        pytest.skip("this machine mounts no cgroup2 file system")
    if os.getuid() != 0:
        pytest.skip("needs root to create cgroups without a delegated subtree")
    # No controllers wanted: enabling one could make the kernel demand that the test runner's own
    # cgroup be evacuated; freeze, kill, cgroup.procs and cpu.stat need no controller.
    h = Hierarchy.discover(base=f"{name}-{os.getpid()}")
    h.prepare(wanted=())
    if not h.usable:
        pytest.skip(f"cannot create a cgroup here: {h.reason}")
    return h


def cpu_ticks(pid):
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])       # utime + stime (fields 14 and 15 of proc(5))


def test_real_discovery_matches_the_kernel():
    if REAL is None:
        pytest.skip("this machine mounts no cgroup2 file system")
    h = Hierarchy.discover()
    own = cgroup.own_cgroup()
    assert h.mount == REAL[0] and h.own == own
    assert os.path.isdir(h.own_dir)
    assert h.controllers == set(read(os.path.join(h.own_dir, "cgroup.controllers")).split())
    assert str(os.getpid()) in read(os.path.join(h.own_dir, "cgroup.procs")).split()


def test_real_freeze_thaw_kill_remove():
    h = real_root_hierarchy("minidock-test")
    if not h.freeze:
        pytest.skip("the kernel has no cgroup.freeze (needs Linux 5.2)")
    proc = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    group = None
    try:
        group = h.create("busy", {})
        assert group.path == os.path.join(h.base_dir, "busy")
        group.add_pid(proc.pid)
        assert group.pids() == [proc.pid]
        assert f"0::/{os.path.relpath(group.path, h.mount)}" in read(f"/proc/{proc.pid}/cgroup")
        time.sleep(0.05)

        group.freeze(timeout=2)
        assert group.events() == {"populated": 1, "frozen": 1}
        # A frozen task sits in the kernel's freezer trap: it gets no CPU time at all. The cgroup
        # counts a task frozen as it enters the trap, just before its last schedule(); what it
        # ran until then is charged when it leaves the CPU, and can cross a tick (CI once saw
        # 3 -> 4). Its final count is read after it has surely left.
        time.sleep(0.05)
        before = cpu_ticks(proc.pid)
        time.sleep(0.3)
        assert cpu_ticks(proc.pid) == before
        assert read(f"/proc/{proc.pid}/status").split("State:")[1].split()[0] in ("S", "D", "T")
        assert "usage_usec" in read(os.path.join(group.path, "cpu.stat"))

        group.thaw(timeout=2)
        assert group.events()["frozen"] == 0
        time.sleep(0.3)
        assert cpu_ticks(proc.pid) > before            # running again (30 ticks of a 100 Hz clock)

        stats = group.stats()
        assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        assert stats["pids_stats"]["current"] == 1

        group.kill()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        group.remove(timeout=2)
        assert not os.path.exists(group.path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if group is not None and os.path.isdir(group.path):
            group.remove(timeout=2)
        os.rmdir(h.base_dir)


def test_real_remove_kills_what_is_left():
    h = real_root_hierarchy("minidock-test-rm")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        group = h.create("left", {})
        group.add_pid(proc.pid)
        group.remove(timeout=2)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(group.path) and h.children() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.rmdir(h.base_dir)


def run_as_nobody(script, pre="", userns=False):
    """Run `script` with the system python as uid 65534; `pre` is shell run as root first.
    With `userns`, the script runs as root of a new user namespace, as the daemon does."""
    work = make_user_dir()
    try:
        path = copy_package(work)
        with open(os.path.join(work, "t.py"), "w") as f:
            f.write(script)
        os.chmod(os.path.join(work, "t.py"), 0o644)
        argv = as_user_argv(NOBODY) + (["unshare", "-Urm"] if userns else [])
        argv += ["env", f"PYTHONPATH={path}", unprivileged_python(), "-S", os.path.join(work, "t.py")]
        shell = f"{pre}\nexec " + " ".join(argv)
        out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_real_unprivileged_without_delegation_degrades_to_sigstop():
    if REAL is None:
        pytest.skip("this machine mounts no cgroup2 file system")
    if os.getuid() != 0:
        pytest.skip("needs root to become uid 65534")
    result = run_as_nobody(
        "import json\nfrom minidock import cgroup\n"
        "h = cgroup.Hierarchy.discover().prepare()\n"
        "r, w = h.check({'Memory': 64 << 20, 'CpuQuota': 50000})\n"
        "print(json.dumps({'caps': h.capabilities(), 'warnings': w, 'reason': h.reason,"
        " 'group': h.create('x', r) is None}))\n")
    own_dir = Hierarchy.discover().own_dir
    if os.stat(own_dir).st_uid == NOBODY:
        pytest.skip("our cgroup is delegated to uid 65534 here")
    assert result["caps"]["PauseMethod"] == "SIGSTOP" and result["caps"]["CgroupDriver"] == "none"
    assert not result["caps"]["MemoryLimit"] and "Permission denied" in result["reason"]
    assert result["warnings"] == [cgrouplimits.W_MEMORY, cgrouplimits.W_QUOTA] and result["group"]


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "in-daemon-userns"])
def test_real_delegated_subtree_as_unprivileged_user(userns):
    """What systemd does for a rootless user (Delegate=yes), done by hand: a cgroup whose directory,
    cgroup.procs, cgroup.subtree_control and cgroup.threads belong to the user. The daemon (uid
    65534, also as root of its own user namespace) starts inside it, must evacuate itself to enable
    a controller (EBUSY otherwise), then creates, freezes and kills a container cgroup with no
    privilege at all."""
    if REAL is None or os.getuid() != 0:
        pytest.skip("needs a cgroup2 mount and root to delegate a subtree")
    root_h = Hierarchy.discover()
    if root_h.own != "/":
        pytest.skip("the test runner is not in the root cgroup; delegating a sibling would need its parent")
    mount = REAL[0]
    deleg = os.path.join(mount, f"minidock-deleg-{os.getpid()}")
    # A domain controller to hand down makes the "no internal processes" rule bite; hugetlb is the
    # one this CI host's v2 tree offers. Enable it at the root (exempt from the rule) if needed.
    root_controllers = read(os.path.join(mount, "cgroup.controllers")).split()
    candidates = [c for c in ("pids", "memory", "hugetlb") if c in root_controllers]
    controller = candidates[0] if candidates else None
    enabled_here = False
    if controller and controller not in read(os.path.join(mount, "cgroup.subtree_control")).split():
        cgroup._write(os.path.join(mount, "cgroup.subtree_control"), f"+{controller}")
        enabled_here = True
    os.mkdir(deleg)
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(deleg, name), NOBODY, NOBODY)
        wanted = repr((controller,) if controller else ())
        result = run_as_nobody(
            "import json, os, subprocess\nfrom minidock import cgroup\n"
            "h = cgroup.Hierarchy.discover()\n"
            f"h.prepare(wanted={wanted})\n"
            "me = open('/proc/self/cgroup').read().split('0::')[1].strip()\n"
            "out = {'own': h.own, 'usable': h.usable, 'enabled': sorted(h.enabled), 'me': me,"
            " 'evacuated': h.evacuated, 'pause': h.pause_method, 'reason': h.reason}\n"
            "p = subprocess.Popen(['sleep', '30'])\n"
            "g = h.create('a' * 64, {})\n"
            "g.add_pid(p.pid)\n"
            "out['pids'] = g.pids() == [p.pid]\n"
            "if h.freeze:\n"
            "    g.freeze(timeout=2); out['frozen'] = g.frozen(); g.thaw(timeout=2)\n"
            "g.kill(); out['rc'] = p.wait(timeout=5); g.remove(timeout=2)\n"
            "out['children'] = h.children()\n"
            "print(json.dumps(out))\n",
            pre=f"echo $$ > {deleg}/cgroup.procs", userns=userns)
        rel = "/" + os.path.basename(deleg)
        assert result["own"] == rel and result["usable"], result
        assert result["pids"] and result["rc"] == -signal.SIGKILL and result["children"] == []
        if result["pause"] == "cgroup.freeze":
            assert result["frozen"]
        if controller:
            assert result["evacuated"] and result["me"] == f"{rel}/{cgroup.DAEMON_CGROUP}"
            assert result["enabled"] == [controller]
    finally:
        for sub in os.listdir(deleg):
            if os.path.isdir(os.path.join(deleg, sub)):
                # processes left in minidock-daemon have exited with the script
                os.rmdir(os.path.join(deleg, sub))
        os.rmdir(deleg)
        if enabled_here:
            cgroup._write(os.path.join(mount, "cgroup.subtree_control"), f"-{controller}")
