"""Real containers, run by an unprivileged "daemon" through the spawner; asserts what they saw.

Each daemon flavour is one run of tests/spawner_driver.py under setpriv (a fresh process that
enters its own user namespace and starts a spawner), from a 0755 temp dir holding a copy of
the minidock package and a busybox rootfs owned by the daemon's uid. The driver prints one
JSON document; the tests below read it. Flavours:

    nobody   uid 65534, no /etc/subuid entry: single-id map, nested userns for -u 1000
    sub      system user minidock-sub with subordinate ids 300000-365535 (newuidmap)
    root     real root: `0 0 65536`
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs as rootfs_helper  # noqa: E402

from minidock import userns  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "minidock")
PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to test users"),
    pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) missing"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing"),
    pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} missing"),
]


def _ensure_sub_user():
    """Idempotently: system user minidock-sub with subordinate ids 300000-365535."""
    try:
        pwd.getpwnam("minidock-sub")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "minidock-sub"], check=True)
    for path in ("/etc/subuid", "/etc/subgid"):
        text = open(path).read() if os.path.exists(path) else ""
        if not any(line.startswith("minidock-sub:") for line in text.splitlines()):
            subprocess.run(["usermod", "--add-subuids", "300000-365535",
                            "--add-subgids", "300000-365535", "minidock-sub"], check=True)
            break
    pw = pwd.getpwnam("minidock-sub")
    return pw.pw_uid, pw.pw_gid


class Daemon:
    """A prepared temp dir for one daemon user: package copy, rootfs, data dir."""

    def __init__(self, uid, gid):
        self.uid, self.gid = uid, gid
        self.dir = tempfile.mkdtemp(prefix="minidock-spawner-")
        os.chmod(self.dir, 0o755)
        shutil.copytree(PACKAGE, os.path.join(self.dir, "minidock"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(HERE, "spawner_driver.py"), self.dir)
        shutil.copy(os.path.join(HERE, "proctree.py"), self.dir)
        self.rootfs = rootfs_helper.make_rootfs(os.path.join(self.dir, "rootfs"), uid, gid)
        self.data = os.path.join(self.dir, "data")
        os.mkdir(self.data)
        os.chown(self.data, uid, gid)

    def driver(self, mode, **kw):
        cmd = [PYTHON, "-S", os.path.join(self.dir, "spawner_driver.py"), mode, self.rootfs,
               self.data]
        if self.uid != 0:
            cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"] + cmd
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.dir, **kw)

    def run_full(self):
        p = self.driver("full")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        return json.loads(out)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def nobody_daemon():
    d = Daemon(65534, 65534)
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def nobody(nobody_daemon):
    return nobody_daemon.run_full()


@pytest.fixture(scope="module")
def sub():
    d = Daemon(*_ensure_sub_user())
    try:
        yield d, d.run_full()
    finally:
        d.cleanup()


# --- unprivileged, no subordinate ids ------------------------------------------------------

def test_daemon_maps_only_itself(nobody):
    assert nobody["userns"]["method"] == "self"
    assert nobody["userns"]["uid_map"] == ["0 65534 1"]
    assert nobody["uid_map"]["out"].split() == ["0", "65534", "1"]


def test_command_is_pid_1_and_sees_only_its_processes(nobody):
    assert nobody["pid1"]["out"] == "1\n"
    lines = nobody["ps"]["out"].splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["1"]     # ps itself, exec'd by sh


def test_hostname(nobody):
    assert nobody["hostname"]["out"] == "hello-box\n"


def test_network_none_has_only_lo(nobody):
    out = nobody["netdev"]["out"]
    ifaces = [line.split(":")[0].strip() for line in out.splitlines()[2:] if ":" in line
              and not line[0].isdigit() and "link/" not in line]
    assert ifaces == ["lo"]
    assert [line.split(":")[1].strip() for line in out.splitlines() if line[:1].isdigit()] == ["lo"]


def test_default_capabilities_are_dockers(nobody):
    caps = dict(line.split(":\t") for line in nobody["caps"]["out"].splitlines())
    assert caps["CapEff"] == caps["CapBnd"] == "00000000a80425fb"   # docker run's value


def test_dev_proc_sys_mounts(nobody):
    out = nobody["mounts"]["out"]
    assert "proc /proc proc rw,nosuid,nodev,noexec" in out
    assert "sysfs /sys sysfs ro," in out
    assert "proc /proc/sys proc ro," in out
    assert "devpts /dev/pts devpts" in out and "ptmxmode=666" in out
    assert "/dev/shm tmpfs" in out and "size=65536k" in out
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "fd", "stdin"):
        assert f"\n{dev}\n" in out


def test_masked_and_readonly_proc_paths(nobody):
    out = nobody["masked"]["out"]
    assert out.startswith("0\n")                    # /proc/timer_list is /dev/null
    assert "Read-only file system" in out


def test_user_1000_without_subuids(nobody, nobody_daemon):
    out = nobody["user"]["out"]
    assert "uid=1000(user) gid=1000(user)" in out
    assert "hello" in out                            # read through the ro bind
    assert "/ro/nope: Read-only file system" in out
    # Created by container uid 1000, owned on the host by the daemon's uid.
    assert os.stat(os.path.join(nobody_daemon.data, "rw", "by-user")).st_uid == 65534


def _keep_id_owned(daemon, res):
    for key in ("keep_id", "keep_id_exec"):
        assert res[key]["code"] == 0, res[key]
    assert res["keep_id"]["out"].split()[-2:] == [str(daemon.uid), str(daemon.gid)]
    assert res["keep_id_exec"]["out"] == f"{daemon.uid}\n"
    for name in ("by-keep-id", "by-keep-id-exec"):
        st = os.stat(os.path.join(daemon.data, "rw", name))
        assert (st.st_uid, st.st_gid) == (daemon.uid, daemon.gid)


def test_keep_id_without_subuids(nobody, nobody_daemon):
    _keep_id_owned(nobody_daemon, nobody)
    # One id only: the container's view is the one-line map of the plain nested namespace.
    assert nobody["keep_id"]["out"].split()[:3] == ["65534", "0", "1"]


def test_user_by_name_and_workdir_created(nobody):
    assert nobody["user_name"]["out"] == "1000\n1000\n/home/user/new\n"


def test_readonly_rootfs(nobody):
    assert nobody["readonly"]["code"] != 0
    assert "Read-only file system" in nobody["readonly"]["out"]


def test_etc_files_bound(nobody):
    assert nobody["etc"]["out"] == "hello\n"


def test_exit_codes(nobody):
    assert nobody["exit3"]["code"] == 3
    assert nobody["missing"]["exit_code"] == 127
    assert "executable file not found in $PATH" in nobody["missing"]["error"]
    assert nobody["noexec"]["exit_code"] == 126
    assert "permission denied" in nobody["noexec"]["error"]
    # Found and executable, but the kernel refuses it: the start succeeded (the init said `R`
    # before its execve), the failure is the container's output and exit code.
    assert nobody["exec_format"] == {
        "code": 126, "out": 'minidock: exec: "/ro/garbage": exec format error\n'}
    assert nobody["exec_interpreter"] == {
        "code": 127, "out": 'minidock: exec: "/ro/no-interpreter": no such file or directory\n'}
    assert nobody["killed"]["code"] == 137


def test_setup_failure_names_the_step(nobody):
    assert nobody["bad_mount"]["exit_code"] == 125
    assert nobody["bad_mount"]["step"] == "bind mounts"
    assert "No such file or directory" in nobody["bad_mount"]["error"]


def test_host_network_and_sys_fallback(nobody):
    out = nobody["host_net"]["out"]
    assert nobody["host_net"]["code"] == 0
    ifaces = [line.split(":")[0].strip() for line in out.splitlines()[2:] if ":" in line
              and "/sys" not in line]
    assert len(ifaces) > 1                          # the host's interfaces, not just lo
    assert " /sys sysfs ro," in out                 # bound from the host, made read-only


def test_join_another_containers_network(nobody):
    j = nobody["join_net"]
    assert j["joined"] == j["target"] != j["own"]


def test_ulimit(nobody):
    assert nobody["ulimit"]["out"] == "512\n"


def test_stdin_piped(nobody):
    assert nobody["stdin"]["out"] == "piped through\n"


def test_tty(nobody):
    assert "is-a-tty" in nobody["tty"]["out"]
    assert nobody["tty"]["code"] == 0


def test_console_from_the_containers_devpts(nobody):
    res = nobody["console_tty"]
    assert res["code"] == 0
    lines = res["out"].split("\r\n")            # output passed the line discipline
    assert lines[0] == "/dev/pts/0"
    assert lines[-3:] == ["a", "b", ""]


def test_exec_joins_the_container(nobody):
    hostname, pid, cmdline, uid = nobody["exec"]["out"].split("\n")[:4]
    assert hostname == "exec-box"
    assert int(pid) > 1                              # same pid namespace, after init's pids
    assert cmdline.split("\0")[0] == "sleep"         # /proc/1 is the container's init
    assert uid == "1000"
    assert nobody["exec_stdin"]["out"] == "into exec\n"
    assert nobody["exec_exit"]["code"] == 5
    assert nobody["exec_missing"]["exit_code"] == 127


def test_top_and_pause(nobody):
    top = nobody["top"]
    assert top["init"] in top["pids"] and len(top["pids"]) == 2
    assert set(nobody["paused"].values()) == {"T"}
    assert top["code"] == 137


def test_back_to_back_runs_all_exit_cleanly(nobody):
    assert nobody["back_to_back"] == [0] * 30


@pytest.mark.parametrize("mode", ["orphan", "orphan-restarted"])
def test_containers_die_with_the_daemon(nobody_daemon, mode):
    # "orphan-restarted": started by a spawner that replaced a killed one. A container init
    # is cloned with CLONE_PARENT, so its death signal watches the daemon thread that started
    # that spawner -- the supervisor thread there, the main thread for the first one.
    p = nobody_daemon.driver(mode)
    line = p.stdout.readline()
    p.wait(30)
    res = json.loads(line)
    assert res["ppids"] == [res["daemon"]] * 4
    pids = res["pids"] + [res["spawner"]]
    deadline = time.time() + 5
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        time.sleep(0.02)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_an_init_is_the_daemons_child_from_birth_and_no_starter_runs(nobody_daemon):
    # Caught in its first blocking set-up step (joining a "cgroup" whose cgroup.procs is a
    # FIFO): the init is already the daemon's child, PID 1 of its own pid namespace, and the
    # spawner has no child at all -- one clone(2), no starter process, nothing re-parented.
    p = nobody_daemon.driver("birth")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    res = json.loads(out)
    assert res["new_children"] == 1
    assert res["ppid"] == res["daemon"]
    assert res["nspid"][-1] == "1" and len(res["nspid"]) >= 2
    assert res["spawner_children"] == []
    # The 20 mounts the daemon made after starting its spawner are in the daemon's table
    # only: the spawner's own mount namespace, copied by the init, never has them (the init
    # gets its rootfs as a detached tree), so a start does not grow with running containers.
    assert res["extra_in"] == {"daemon": 20, "spawner": 0, "init": 0}
    assert res["mounts"]["init"] <= res["mounts"]["spawner"] + 1
    assert res["written"] == "0"        # join_cgroup wrote "0" (itself) once let through
    assert res["same_pid"] and res["code"] == 0
    # 21 runs, and the spawner reaped no child in all of them: no CPU time of any child of its.
    assert res["spawner_children_ticks"] == 0


def test_no_engine_process_per_container_and_the_spawner_may_die(nobody_daemon):
    p = nobody_daemon.driver("tree")
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    res = json.loads(out)
    # Every container init and exec'd process is the daemon's own child (an init cloned so,
    # an exec'd process re-parented from its starter): the daemon's children are the spawner
    # and those, nothing in between.
    assert res["ppids"] == [res["daemon"]] * 5
    assert res["daemon_children"] == res["expected_children"]
    assert res["spawner_children"] == []
    assert res["failed_run"] == 127
    # kill -9 of the spawner: containers keep running; exits of an init and of an exec'd
    # process started by the dead spawner still arrive, with their codes; the next run works.
    assert res["restarted"] and res["running_after_kill"] == [True] * 4
    assert res["init_code_after_kill"] == 7 and res["exec_code_after_kill"] == 9
    assert res["next_run"] == 0
    assert res["codes"][:4] == [137] * 4
    assert res["codes"][4] == 137       # the exec'd sleep died with its container's pid namespace
    assert res["zombies_left"] == []


# --- with subordinate ids, through newuidmap --------------------------------------------------

def test_subuid_daemon_maps_a_range(sub):
    daemon, res = sub
    assert res["userns"]["method"] == "newuidmap"
    assert res["userns"]["uid_map"][1] == "1 300000 65535"
    assert res["uid_map"]["out"].split() == ["0", str(daemon.uid), "1", "1", "300000", "65535"]


def test_subuid_user_and_chown(sub):
    daemon, res = sub
    assert "uid=1000(user) gid=1000(user)" in res["user"]["out"]
    assert res["chown"]["out"] == "1000:1000\n"
    st = os.stat(os.path.join(daemon.data, "rw", "by-1000"))
    assert st.st_uid == 300000 + 999


def test_keep_id_with_subuids(sub):
    daemon, res = sub
    _keep_id_owned(daemon, res)
    u = daemon.uid
    lines = res["keep_id"]["out"].split()[:9]
    assert lines == ["0", "1", str(u), str(u), "0", "1", str(u + 1), str(u + 1), str(65535 - u)]
    # Container root is a subordinate id there and still owns the rest of the range.
    assert res["keep_id_root"]["out"] == "0\n1000:1000\n"


def test_keep_id_map_layout():
    full = [(0, 1000, 1), (1, 300000, 65535)]
    assert userns.keep_id_map(1000, full) == ["0 1 1000", "1000 0 1", "1001 1001 64535"]
    assert userns.keep_id_map(0, full) == ["0 0 1", "1 1 65535"]
    assert userns.keep_id_map(65535, full) == ["0 1 65535", "65535 0 1"]
    assert userns.keep_id_map(70000, full) == ["0 1 65535", "70000 0 1"]
    assert userns.keep_id_map(65534, [(0, 65534, 1)]) == ["65534 0 1"]


def test_subuid_exec(sub):
    _, res = sub
    assert res["exec"]["out"].startswith("exec-box\n")


# --- real root -----------------------------------------------------------------------------

def test_root_daemon_full_range():
    d = Daemon(0, 0)
    try:
        res = d.run_full()
    finally:
        d.cleanup()
    assert res["userns"]["uid_map"] == ["0 0 65536"]
    assert res["pid1"]["out"] == "1\n"
    assert res["chown"]["out"] == "1000:1000\n"
