"""stats.py: the parsers on bytes, then real processes in a pid namespace of their own, as a
container's are, and what the kernel accounted for them."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from minidock import cgroup, stats

MiB = 1024 * 1024

# -- parsers on text -----------------------------------------------------------------------------

STAT_CASES = [
    ("1 (sh) S 0 1 1 0 -1 4194560 100 0 0 0 7 3 11 13 20 0 1 0 5 1 1 2",
     (7, 3, 11, 13)),
    # comm with spaces and a ')' inside: fields are counted from the last ')'
    ("42 (a) b (c)) R 1 42 42 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 9 1 1",
     (250, 50, 0, 0)),
]


@pytest.mark.parametrize("text,want", STAT_CASES)
def test_parse_proc_stat(text, want):
    assert stats.parse_proc_stat(text) == want


def test_parse_kb_fields_and_threads_and_io():
    rollup = ("559848c25000-7ffdc4517000 ---p 00000000 00:00 0   [rollup]\n"
              "Rss:                1748 kB\nPss:                 344 kB\nPss_Anon:   112 kB\n")
    assert stats.parse_kb_fields(rollup) == {"Rss": 1748 * 1024, "Pss": 344 * 1024,
                                             "Pss_Anon": 112 * 1024}
    assert stats.parse_status_threads("Name:\tsh\nThreads:\t3\nVmRSS:\t10 kB\n") == 3
    assert stats.parse_io("rchar: 6976\nwchar: 0\nread_bytes: 4096\nwrite_bytes: 8192\n") == {
        "rchar": 6976, "wchar": 0, "read_bytes": 4096, "write_bytes": 8192}


def test_parse_net_dev_skips_lo_and_names_fields_as_docker():
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
            "errs drop fifo colls carrier compressed\n"
            "    lo:     100       2    0    0    0     0          0         0      100       2 "
            "   0    0    0     0       0          0\n"
            "  eth0: 1500 10 1 2 0 0 0 0 700 5 3 4 0 0 0 0\n")
    assert stats.parse_net_dev(text) == {"eth0": {
        "rx_bytes": 1500, "rx_packets": 10, "rx_errors": 1, "rx_dropped": 2,
        "tx_bytes": 700, "tx_packets": 5, "tx_errors": 3, "tx_dropped": 4}}


def test_not_running_object_is_mobys_zero_value():
    doc = stats.empty("/web", "abc")
    assert doc["read"] == doc["preread"] == "0001-01-01T00:00:00Z"
    assert doc["cpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert doc["memory_stats"] == {} and doc["pids_stats"] == {}
    assert (doc["name"], doc["id"]) == ("/web", "abc")


# -- real processes --------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unshare(CLONE_NEWPID) needs root here")
needs_unshare = pytest.mark.skipif(not shutil.which("unshare"), reason="util-linux unshare missing")


class PidNamespace:
    """`unshare --pid --fork` running `argv` as PID 1 of a new pid namespace, like a container."""

    def __init__(self, argv, extra=()):
        self.outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", *extra, *argv],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.init = self._child()

    def _child(self):
        path = f"/proc/{self.outer.pid}/task/{self.outer.pid}/children"
        for _ in range(500):                     # bounded: 10 s on a loaded machine
            with open(path) as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
            time.sleep(0.02)
        raise AssertionError("unshare did not fork its child")

    def wait_line(self):
        return self.outer.stdout.readline()

    def close(self):
        self.outer.send_signal(signal.SIGKILL)
        self.outer.wait(10)


@pytest.fixture
def spaces():
    made = []

    def make(argv, extra=()):
        made.append(PidNamespace(argv, extra))
        return made[-1]
    yield make
    for s in made:
        s.close()


def take(stream, until, tries=50):
    doc = stream.next()
    for _ in range(tries):
        if until(doc):
            return doc
        time.sleep(0.1)
        doc = stream.next()
    return doc


@needs_root
@needs_unshare
def test_busy_process_shows_cpu_and_the_stream_fills_precpu(spaces):
    ns_ = spaces(["busybox", "sh", "-c", "while :; do :; done"])
    stream = stats.Stream("/busy", "id1", lambda: ns_.init)
    first = stream.next()
    assert first["preread"] == stats.ZERO_TIME            # the first sample has no predecessor
    # On a loaded machine the loop may not have run a whole clock tick yet: wait until it has.
    first = take(stream, lambda d: d["cpu_stats"]["cpu_usage"]["total_usage"] > 0, tries=100)
    time.sleep(0.5)
    second = take(stream, lambda d: d["cpu_stats"]["cpu_usage"]["total_usage"] >
                  d["precpu_stats"]["cpu_usage"]["total_usage"], tries=100)
    first = {"cpu_stats": second["precpu_stats"], "read": second["preread"]}
    cpu, pre = second["cpu_stats"], second["precpu_stats"]
    assert pre == first["cpu_stats"] and second["preread"] == first["read"]
    assert cpu["cpu_usage"]["total_usage"] > pre["cpu_usage"]["total_usage"] > 0
    assert cpu["cpu_usage"]["usage_in_usermode"] > 0
    assert cpu["system_cpu_usage"] > pre["system_cpu_usage"]
    assert cpu["online_cpus"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert second["pids_stats"]["current"] >= 1 and second["num_procs"] >= 1


@needs_root
@needs_unshare
def test_memory_held_is_counted_once_across_sharers(spaces):
    # One process touches 64 MiB of private memory; five more sh processes share busybox's
    # text. The Pss sum must show the 64 MiB and must not multiply the shared pages.
    hold = (f"import sys, time; b = bytes(range(256)) * ({64 * MiB} // 256); "
            "print('ready', flush=True); time.sleep(120)")
    ns_ = spaces(["sh", "-c", f"for i in 1 2 3 4 5; do busybox sleep 120 & done; "
                              f"exec {sys.executable} -c \"{hold}\""])
    assert ns_.wait_line().strip() == b"ready"
    stream = stats.Stream("/mem", "id2", lambda: ns_.init)
    doc = take(stream, lambda d: d["num_procs"] >= 6)
    mem = doc["memory_stats"]
    assert doc["num_procs"] >= 6
    assert mem["usage"] >= 60 * MiB
    assert mem["stats"]["anon"] >= 60 * MiB
    assert mem["usage"] < mem["stats"]["rss"]             # Rss counts shared pages per sharer
    assert mem["limit"] == cgroup._mem_total()


@needs_root
@needs_unshare
def test_io_and_exited_children_stay_counted(spaces):
    # A child writes 8 MiB through the page cache and burns CPU, then is reaped by the init:
    # its I/O and CPU time move into the init's counters.
    ns_ = spaces(["busybox", "sh", "-c",
                  "busybox sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; "
                  "busybox dd if=/dev/zero of=/tmp/minidock-stats-io bs=1M count=8 2>/dev/null'; "
                  "echo done; busybox sleep 120"])
    try:
        assert ns_.wait_line().strip() == b"done"
        doc = stats.Stream("/io", "id3", lambda: ns_.init).next()
        # Only the init is left (busybox sh execs its last command): the writer is gone.
        assert doc["num_procs"] == 1
        written = {e["op"]: e["value"] for e in doc["blkio_stats"]["io_service_bytes_recursive"]}
        assert written["write"] >= 8 * MiB
        assert doc["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    finally:
        if os.path.exists("/tmp/minidock-stats-io"):
            os.unlink("/tmp/minidock-stats-io")


@needs_root
@needs_unshare
@pytest.mark.skipif(not shutil.which("ip"), reason="iproute2 missing")
def test_network_counters_of_the_containers_namespace(spaces):
    # A veth pair inside a fresh net namespace (made by this test), with a static neighbour so
    # that pings leave v0 as IP packets and arrive on v1. The host's interfaces never show up.
    ns_ = spaces(["sh", "-c", "ip link add v0 type veth peer name v1 && ip link set v1 up "
                              "&& ip addr add 10.213.0.1/24 dev v0 && ip link set v0 up "
                              "&& ip neigh add 10.213.0.2 lladdr 02:00:00:00:00:02 dev v0 "
                              "&& echo up && exec busybox sleep 120"],
                 extra=["--net"])
    assert ns_.wait_line().strip() == b"up"
    stream = stats.Stream("/net", "id4", lambda: ns_.init)
    before = stream.next()["networks"]
    assert set(before) == {"v0", "v1"}
    subprocess.run(["nsenter", "-t", str(ns_.init), "-n", "busybox", "ping", "-c", "3", "-W", "1",
                    "10.213.0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
    after = stream.next()["networks"]
    assert after["v0"]["tx_packets"] >= before["v0"]["tx_packets"] + 3
    assert after["v0"]["tx_bytes"] >= before["v0"]["tx_bytes"] + 3 * 84
    assert after["v1"]["rx_packets"] >= before["v1"]["rx_packets"] + 3


@needs_root
@needs_unshare
def test_shared_network_namespace_reports_no_networks(spaces):
    ns_ = spaces(["busybox", "sleep", "120"])
    doc = stats.Stream("/host", "id5", lambda: ns_.init).next()
    assert "networks" not in doc


def test_not_running_answers_the_empty_object():
    stream = stats.Stream("/gone", "id6", lambda: 0)
    assert stream.next() == stats.empty("/gone", "id6")


@needs_root
def test_cgroup_cpu_stat_wins_where_the_tree_has_one(tmp_path, spaces):
    # Any cgroup2 tree has cpu.stat in every cgroup (no controller needed): a process moved into
    # a fresh cgroup is accounted there, and the sample says it came from the cgroup.
    found = cgroup.find_cgroup2_mount()
    if found is None:
        pytest.skip("no cgroup2 tree mounted")
    path = os.path.join(found[0], f"minidock-stats-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as e:
        pytest.skip(f"cannot create a cgroup here: {e}")
    try:
        ns_ = spaces(["busybox", "sh", "-c", "while :; do :; done"])
        group = cgroup.Cgroup(path)
        group.add_pid(ns_.init)
        time.sleep(0.3)
        source, fields = stats.sample(ns_.init, group)
        assert source == stats.SOURCE_CGROUP
        assert fields["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        ns_.close()
    finally:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
