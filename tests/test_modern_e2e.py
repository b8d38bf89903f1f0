"""The docker CLI 28 at API 1.47 (it negotiates our newest version): what it shows only to a daemon
of 1.25 and later. Prunes and disk usage, --init, --mount, --platform, stop signals, exec -e/-w,
logs --until, wait conditions, version and info."""

import json
import os
import time

import pytest

from rootfs import make_rootfs_tar
from support import wait_for
from minidock import platforms

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(daemon_factory):
    """A daemon of its own (prunes remove everything that is not running)."""
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
    return d


def test_cli_negotiates_1_47_and_shows_components(rootless):
    v = json.loads(rootless.docker("version", "--format", "{{json .}}").stdout)
    assert v["Client"]["ApiVersion"] == "1.47" and v["Server"]["ApiVersion"] == "1.47"
    assert v["Server"]["MinAPIVersion"] == "1.0"
    engine = [c for c in v["Server"]["Components"] if c["Name"] == "Engine"][0]
    assert engine["Details"]["ApiVersion"] == "1.47"


def test_info_warnings_and_security_options(rootless):
    info = json.loads(rootless.docker("info", "--format", "{{json .}}").stdout)
    assert "name=rootless" in info["SecurityOptions"]
    # cgroups are not delegated on this machine: the honest warnings say so
    assert any("limit" in w or "cgroup" in w for w in info["Warnings"])


def test_system_df_and_verbose(fresh):
    d = fresh
    d.docker("volume", "create", "dfvol")
    d.docker("run", "--name", "dfc", "-v", "dfvol:/data", "busybox", "sh", "-c", "head -c 5000 /dev/zero > /data/f")
    rows = [json.loads(line) for line in d.docker("system", "df", "--format", "{{json .}}").stdout.splitlines()]
    by_type = {r["Type"]: r for r in rows}
    assert by_type["Images"]["TotalCount"] == "1" and by_type["Images"]["Active"] == "1"
    assert by_type["Containers"]["TotalCount"] == "1"
    assert by_type["Local Volumes"]["TotalCount"] == "1"
    verbose = d.docker("system", "df", "-v").stdout.decode()
    assert "dfvol" in verbose and "5kB" in verbose and "dfc" in verbose


def test_each_prune_with_filters(fresh):
    d = fresh
    d.docker("run", "--name", "keepme", "--label", "keep=yes", "busybox", "true")
    d.docker("run", "--name", "dropme", "busybox", "true")
    d.docker("run", "-d", "--name", "running", "busybox", "sleep", "30")
    out = d.docker("container", "prune", "-f", "--filter", "label!=keep=yes").stdout.decode()
    names = d.docker("ps", "-a", "--format", "{{.Names}}").stdout.decode().split()
    assert sorted(names) == ["keepme", "running"] and "Total reclaimed space" in out
    d.docker("container", "prune", "-f", "--filter", "until=2000-01-01T00:00:00Z")     # none that old
    assert len(d.docker("ps", "-aq").stdout.split()) == 2

    d.docker("volume", "create", "named")
    d.docker("run", "--name", "anon", "-v", "/anon", "busybox", "true")
    d.docker("rm", "anon")
    d.docker("volume", "prune", "-f")                        # API 1.42: anonymous volumes only
    assert d.docker("volume", "ls", "-q").stdout.split() == [b"named"]
    d.docker("volume", "prune", "-af")
    assert d.docker("volume", "ls", "-q").stdout == b""

    d.docker("tag", "busybox", "extra:tag")
    d.docker("commit", "keepme", "committed:one")
    d.docker("rm", "keepme")
    d.docker("image", "prune", "-af", "--filter", "label=nothing-has-this")
    assert b"committed:one" in d.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    out = d.docker("image", "prune", "-af").stdout.decode()
    tags = d.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
    assert sorted(tags) == ["busybox:latest", "extra:tag"], tags     # in use by `running`: all its names stay
    assert "untagged: committed:one" in out.lower() and "extra:tag" not in out

    d.docker("network", "prune", "-f")                     # only predefined networks: nothing to do
    events = d.docker("events", "--since", "0", "--until", str(time.time() + 1), "--filter", "event=prune",
                      "--format", "{{.Type}} {{.Actor.Attributes.reclaimed}}").stdout.decode().splitlines()
    assert {line.split()[0] for line in events} >= {"container", "volume", "image"}


def test_system_prune_all_with_volumes(fresh):
    d = fresh
    d.docker("run", "--name", "gone", "-v", "/anon", "busybox", "true")
    d.docker("volume", "create", "stays")
    d.docker("tag", "busybox", "spare:1")
    out = d.docker("system", "prune", "-af", "--volumes").stdout.decode()
    assert "Total reclaimed space" in out
    # Since API 1.42 a volume prune (and so this one) takes anonymous volumes only.
    assert d.docker("ps", "-aq").stdout == b"" and d.docker("volume", "ls", "-q").stdout == b"stays\n"
    assert d.docker("images", "-q").stdout == b""


def test_run_init_reaps_zombies_and_forwards_signals(rootless):
    d = rootless
    # The subshell leaves `sleep 0.1` an orphan: re-parented to PID 1, which must reap it. Without
    # --init PID 1 is `sleep 30` (the shell exec'd it), which never waits: a zombie stays.
    zombies = {}
    for init in (False, True):
        name = f"orphans-{init}"
        d.docker("run", "-d", "--name", name, *(["--init"] if init else []), "busybox", "sh", "-c",
                 "(sleep 0.1 &); exec sleep 30")
        time.sleep(0.8)
        ps = d.docker("exec", name, "ps", "-o", "stat,comm").stdout.decode().splitlines()
        zombies[init] = [line for line in ps if line.startswith("Z")]
        d.docker("rm", "-f", name)
    assert len(zombies[False]) == 1 and zombies[True] == []
    d.docker("run", "-d", "--init", "--name", "trapper", "busybox", "sh", "-c",
             "trap 'echo got-usr1; exit 7' USR1; while true; do sleep 0.1; done")
    wait_for(lambda: b"sh" in d.docker("top", "trapper").stdout, what="the command to run")
    d.docker("kill", "-s", "USR1", "trapper")
    assert d.docker("wait", "trapper").stdout == b"7\n"
    assert d.docker("logs", "trapper").stdout == b"got-usr1\n"
    d.docker("rm", "trapper")


def test_stop_signal_and_stop_timeout(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "stopsig", "--stop-timeout", "1", "busybox", "sh", "-c",
             "trap 'echo got-usr2; exit 5' USR2; while true; do sleep 0.1; done")
    wait_for(lambda: b"sh" in d.docker("top", "stopsig").stdout, what="the command to run")
    d.docker("stop", "-s", "USR2", "stopsig")
    assert d.docker("inspect", "-f", "{{.State.ExitCode}} {{.Config.StopTimeout}}", "stopsig").stdout == b"5 1\n"
    d.docker("rm", "stopsig")


def test_mounts_bind_volume_tmpfs(rootless):
    d = rootless
    src = os.path.join(d.base, "bindsrc")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "hello"), "w") as f:
        f.write("from the host\n")
    os.chmod(d.base, 0o755)
    r = d.docker("run", "--rm", "--mount", f"type=bind,source={src},target=/b,readonly", "busybox", "sh", "-c",
                 "cat /b/hello; touch /b/x 2>&1 || true", check=False)
    assert b"from the host" in r.stdout and b"Read-only file system" in r.stdout
    d.docker("volume", "create", "mvol")
    d.docker("run", "--rm", "--mount", "source=mvol,target=/v", "busybox", "sh", "-c",
             "mkdir -p /v/deep && echo inside > /v/deep/file")
    assert d.docker("run", "--rm", "--mount", "type=volume,source=mvol,target=/s,volume-subpath=deep", "busybox",
                    "cat", "/s/file").stdout == b"inside\n"
    tmpfs = d.docker("run", "--rm", "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770", "busybox",
                     "sh", "-c", "grep ' /t ' /proc/mounts; stat -c %a /t").stdout.decode()
    assert "tmpfs /t tmpfs" in tmpfs and "size=1024k" in tmpfs and tmpfs.endswith("1770\n")
    bad = d.docker("run", "--rm", "--mount", "type=bind,source=/no/such/dir,target=/n", "busybox", "true",
                   check=False)
    assert bad.returncode == 125 and b"bind source path does not exist" in bad.stderr
    clash = d.docker("run", "--rm", "-v", "mvol:/x", "--mount", "type=tmpfs,target=/x", "busybox", "true",
                     check=False)
    assert b"Duplicate mount point: /x" in clash.stderr


def test_cpus_and_pids_limit_are_accepted(rootless):
    d = rootless
    r = d.docker("run", "--rm", "--cpus", "0.5", "--pids-limit", "50", "busybox", "echo", "ok")
    assert r.stdout == b"ok\n"
    # Without a delegated cgroup --cpus comes with Docker's warning; --pids-limit is enforced
    # (RLIMIT_NPROC in the container's own user namespace, pidlimit.py), so it has none.
    assert b"CPU" in r.stderr and b"PIDs limit" not in r.stderr


def test_platform_this_one_or_refused(rootless):
    d = rootless
    mine = f"linux/{platforms.goarch()}"
    assert d.docker("run", "--rm", "--platform", mine, "busybox", "echo", "mine").stdout == b"mine\n"
    other = "linux/s390x" if platforms.goarch() != "s390x" else "linux/amd64"
    r = d.docker("create", "--pull", "never", "--platform", other, "busybox", "true", check=False)
    assert r.returncode != 0 and b"does not match the specified platform" in r.stderr


def test_exec_env_and_workdir(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "execenv", "busybox", "sleep", "30")
    r = d.docker("exec", "-e", "GREETING=hello", "-w", "/tmp", "execenv", "sh", "-c", "echo $GREETING; pwd")
    assert r.stdout == b"hello\n/tmp\n"
    d.docker("rm", "-f", "execenv")


def test_logs_until(rootless):
    d = rootless
    d.docker("run", "--name", "until", "busybox", "sh", "-c", "echo early; sleep 1.5; echo late")
    stamps = d.docker("logs", "-t", "until").stdout.decode().splitlines()
    early = stamps[0].split()[0]
    assert d.docker("logs", "--until", early, "until").stdout == b"early\n"
    d.docker("rm", "until")


def test_wait_next_exit_and_removed_through_the_api(rootless):
    d = rootless
    c = d.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["sh", "-c", "exit 3"],
                                             "HostConfig": {"AutoRemove": True}})["Id"]
    import threading
    got = {}

    def wait(condition):
        got[condition] = c.post(f"/containers/{cid}/wait", params={"condition": condition})
    threads = [threading.Thread(target=wait, args=(cond,)) for cond in ("next-exit", "removed")]
    for t in threads:
        t.start()
    time.sleep(0.3)                   # both waits registered (their headers came back)
    c.post(f"/containers/{cid}/start")
    for t in threads:
        t.join(10)
    assert got == {"next-exit": {"StatusCode": 3}, "removed": {"StatusCode": 3}}
    gone = d.docker("container", "inspect", cid, check=False)
    assert gone.returncode != 0 and b"No such container" in gone.stderr


def test_ps_filters_expose_publish_is_task(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "exposer", "--expose", "8080", "busybox", "sleep", "30")
    names = lambda *f: d.docker("ps", "--format", "{{.Names}}", *f).stdout.decode().split()   # noqa: E731
    assert "exposer" in names("--filter", "expose=8080") and "exposer" in names("--filter", "expose=8080/tcp")
    assert "exposer" not in names("--filter", "expose=9090")
    assert names("--filter", "publish=8080") == []          # nothing is ever published here
    assert names("--filter", "is-task=true") == [] and "exposer" in names("--filter", "is-task=false")
    d.docker("rm", "-f", "exposer")
