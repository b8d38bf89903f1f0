"""The runtime as users drive it: the real docker CLI against a daemon that is not root.

Every test runs twice: once with the daemon as uid 65534 with no /etc/subuid entry (one id mapped,
the nested-namespace trick for `-u 1000`), and once as `minidock-sub`, a user with a subordinate id
range, so the daemon maps 65536 ids through newuidmap.
"""

import json
import os
import pwd
import subprocess
import time

import pytest

from rootfs import make_rootfs_tar
from support import NOBODY, Daemon, make_user_dir

pytestmark = pytest.mark.e2e

SUB_USER = "minidock-sub"


def ensure_sub_user():
    """The user with a subordinate range; .ci/run creates it, this makes a local run work too."""
    try:
        pwd.getpwnam(SUB_USER)
    except KeyError:
        if os.getuid() != 0:
            pytest.skip(f"user {SUB_USER} missing and we are not root to create it")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SUB_USER],
                       check=True)
    for path, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        try:
            with open(path) as f:
                present = any(line.startswith(SUB_USER + ":") for line in f)
        except FileNotFoundError:
            present = False
        if not present:
            subprocess.run(["usermod", flag, "300000-365535", SUB_USER], check=True)
    return pwd.getpwnam(SUB_USER).pw_uid


@pytest.fixture(scope="module", params=["nobody", "subuid"])
def d(request):
    uid = NOBODY if request.param == "nobody" else ensure_sub_user()
    daemon = Daemon(uid=uid)
    daemon.mode = request.param
    daemon.start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        yield daemon
    finally:
        daemon.cleanup()


def out(result):
    return result.stdout.decode()


def test_daemon_user_namespace_matches_mode(d):
    info = d.client().get("/info")
    assert info["DockerRootDir"] == d.data_root
    uid_map = open(f"/proc/{d.proc.pid}/uid_map").read().split()
    if d.mode == "nobody":
        assert uid_map == ["0", str(NOBODY), "1"]
    else:
        assert uid_map[:3] == ["0", str(d.uid), "1"] and uid_map[3:] == ["1", "300000", "65535"]


def test_run_echo_and_exit_codes(d):
    assert out(d.docker("run", "--rm", "busybox", "echo", "hello")) == "hello\n"
    assert d.docker("run", "--rm", "busybox", "sh", "-c", "exit 3", check=False).returncode == 3
    missing = d.docker("run", "--rm", "busybox", "no-such-command", check=False)
    assert missing.returncode == 127 and b"executable file not found" in missing.stderr
    notexec = d.docker("run", "--rm", "busybox", "/etc/passwd", check=False)
    assert notexec.returncode == 126


def test_pooled_starts_get_the_kernel_mounts_their_options_ask_for(d):
    # Starts in a row are the spawner's pooled inits', which make /proc, /dev and /sys with
    # Docker's masks ahead of the request (mounts.stage_kernel_mounts): a privileged container
    # or one with a /dev/shm size of its own must get its own instead.
    # (The sysfs made ahead shows the eth0 moved into the namespace after it: the bridge.)
    probe = ("grep -c ' /proc/timer_list ' /proc/mounts; grep -c ' /proc/sys ' /proc/mounts; "
             "df -k /dev/shm | tail -1 | awk '{print $2}'; cat /sys/class/net/eth0/operstate")

    def mounts(*options):
        return out(d.docker("run", "--rm", *options, "busybox", "sh", "-c", probe)).split()

    for _ in range(3):
        assert mounts() == ["1", "1", "65536", "up"]      # masked, read-only, 64 MiB
    assert mounts("--privileged") == ["0", "0", "65536", "up"]
    assert mounts("--shm-size", "8m") == ["1", "1", "8192", "up"]
    assert mounts() == ["1", "1", "65536", "up"]


def test_a_command_only_execve_refuses_fails_inside_the_started_container(d, tmp_path):
    # Executable, but no program the kernel can run: the lookup passes, the start succeeds
    # (answered before the init's execve, ns._exec), and the container reports the failure
    # on its stderr with the shell's code, as a container started by runc does.
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a program\n")
    junk.chmod(0o755)
    cid = out(d.docker("create", "busybox", "/junk")).strip()
    d.docker("cp", str(junk), f"{cid}:/junk")
    started = d.docker("start", "-a", cid, check=False)
    assert started.returncode == 126
    assert b'minidock: exec: "/junk": exec format error' in started.stderr
    state = out(d.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid))
    assert state == "exited 126\n"
    d.docker("rm", cid)


def test_env_workdir_hostname_user(d):
    result = d.docker("run", "--rm", "-e", "FOO=bar", "-w", "/work/here", "--hostname", "box1", "busybox",
                      "sh", "-c", 'echo "$FOO $(pwd) $(hostname)"')
    assert out(result) == "bar /work/here box1\n"
    assert out(d.docker("run", "--rm", "-u", "1000:1000", "busybox", "id", "-u")) == "1000\n"
    assert out(d.docker("run", "--rm", "-u", "1000:1000", "busybox", "id", "-g")) == "1000\n"


def test_pid_namespace_and_proc(d):
    assert out(d.docker("run", "--rm", "busybox", "sh", "-c", "echo $$")) == "1\n"
    ps = out(d.docker("run", "--rm", "busybox", "ps", "-o", "pid,comm"))
    rows = [line.split() for line in ps.splitlines()[1:]]
    assert rows == [["1", "ps"]], ps
    pids = out(d.docker("run", "--rm", "busybox", "sh", "-c", "ls /proc | grep -E '^[0-9]+$'")).split()
    assert "1" in pids and len(pids) <= 3      # sh, ls, grep: nothing of the host


def test_network_none_shows_only_loopback(d):
    dev = out(d.docker("run", "--rm", "--network", "none", "busybox", "cat", "/proc/net/dev"))
    interfaces = [line.split(":")[0].strip() for line in dev.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_stdin_and_tty(d):
    assert out(d.docker("run", "--rm", "-i", "busybox", "cat", input=b"piped data\n")) == "piped data\n"
    result = subprocess.run(["script", "-qec", f"{d.docker_cmdline()} run --rm -t busybox sh -c 'test -t 0 && tty'",
                             "/dev/null"], capture_output=True, timeout=60, env=d.cli_env())
    assert result.returncode == 0, result
    assert b"/dev/pts/0" in result.stdout           # the container's own devpts, as on Docker


def test_read_only_rootfs_and_binds(d):
    ro = d.docker("run", "--rm", "--read-only", "busybox", "touch", "/x", check=False)
    assert ro.returncode == 1 and b"Read-only file system" in ro.stderr
    host_dir = make_user_dir(d.uid)
    d.docker("run", "--rm", "-v", f"{host_dir}:/data", "busybox", "sh", "-c", "echo hi > /data/f")
    st = os.stat(os.path.join(host_dir, "f"))
    assert open(os.path.join(host_dir, "f")).read() == "hi\n" and st.st_uid == d.uid
    robind = d.docker("run", "--rm", "-v", f"{host_dir}:/data:ro", "busybox", "sh", "-c", "echo x > /data/g",
                      check=False)
    assert robind.returncode != 0 and not os.path.exists(os.path.join(host_dir, "g"))
    d.docker("run", "--rm", "-v", "named:/v", "busybox", "sh", "-c", "echo kept > /v/file")
    assert out(d.docker("run", "--rm", "-v", "named:/v", "busybox", "cat", "/v/file")) == "kept\n"
    assert "named" in out(d.docker("volume", "ls", "-q")).split()


def test_chown_needs_a_subordinate_range(d):
    host_dir = make_user_dir(d.uid)
    if d.mode == "nobody":
        # The documented trade-off of a single mapped id: there is no other id to give a file.
        refused = d.docker("run", "--rm", "-v", f"{host_dir}:/data", "busybox", "sh", "-c",
                           "touch /data/owned && chown 1000:1000 /data/owned", check=False)
        assert refused.returncode != 0 and b"chown" in refused.stderr
        assert os.stat(os.path.join(host_dir, "owned")).st_uid == d.uid
        return
    d.docker("run", "--rm", "-v", f"{host_dir}:/data", "busybox", "sh", "-c",
             "touch /data/owned && chown 1000:1000 /data/owned")
    assert os.stat(os.path.join(host_dir, "owned")).st_uid == 300000 + 1000 - 1


def test_detached_lifecycle(d):
    script = 'trap "echo got TERM; exit 0" TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done'
    cid = out(d.docker("run", "-d", "--name", "web", "busybox", "sh", "-c", script)).strip()
    try:
        assert len(cid) == 64
        assert "web" in out(d.docker("ps", "--format", "{{.Names}}")).split()
        # exec: same namespaces, stdin, exit codes
        assert out(d.docker("exec", "web", "hostname")) == cid[:12] + "\n"
        assert out(d.docker("exec", "-i", "web", "cat", input=b"to exec\n")) == "to exec\n"
        assert d.docker("exec", "web", "sh", "-c", "exit 4", check=False).returncode == 4
        exec_ps = out(d.docker("exec", "web", "ps", "-o", "pid,comm"))
        assert "1 sh" in " ".join(exec_ps.split())
        time.sleep(0.5)
        tail = out(d.docker("logs", "--tail", "2", "web")).splitlines()
        assert len(tail) == 2 and all(line.startswith("line ") for line in tail)
        stamped = out(d.docker("logs", "-t", "--tail", "1", "web"))
        assert stamped[:4].isdigit() and "T" in stamped.split()[0] and "line" in stamped
        top = out(d.docker("top", "web"))
        assert top.splitlines()[0].split()[:3] == ["UID", "PID", "PPID"] and "sleep" in top
        d.docker("pause", "web")
        assert "(Paused)" in out(d.docker("ps", "--format", "{{.Status}}", "--filter", "name=web"))
        paused_exec = d.docker("exec", "web", "true", check=False)
        assert paused_exec.returncode != 0 and b"paused" in paused_exec.stderr
        d.docker("unpause", "web")
        d.docker("rename", "web", "web2")
        assert "web2" in out(d.docker("ps", "--format", "{{.Names}}")).split()
        d.docker("stop", "web2")                      # the trap turns TERM into exit 0
        assert out(d.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "web2")) == "exited 0\n"
        assert "got TERM" in out(d.docker("logs", "web2"))
        d.docker("restart", "-t", "1", "web2")
        assert out(d.docker("inspect", "-f", "{{.State.Running}}", "web2")) == "true\n"
        d.docker("kill", "-s", "KILL", "web2")
        assert out(d.docker("wait", "web2")) == "137\n"
        d.docker("start", "web2")
        follower = subprocess.Popen([*d.docker_argv(), "logs", "-f", "web2"], stdout=subprocess.PIPE,
                                    env=d.cli_env())
        time.sleep(0.5)
        d.docker("kill", "web2")
        assert follower.wait(20) == 0
        assert b"line" in follower.stdout.read()
    finally:
        d.docker("rm", "-f", "web2", check=False)
        d.docker("rm", "-f", "web", check=False)
    assert "web2" not in out(d.docker("ps", "-a", "--format", "{{.Names}}"))


def test_restart_on_failure_and_rm_on_crash(d):
    d.docker("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo try; exit 1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = out(d.docker("inspect", "-f", "{{.RestartCount}} {{.State.Status}}", "flaky"))
        if state == "2 exited\n":
            break
        time.sleep(0.2)
    assert state == "2 exited\n"
    assert out(d.docker("logs", "flaky")) == "try\ntry\ntry\n"
    d.docker("rm", "flaky")
    crash = d.docker("run", "--rm", "--name", "crasher", "busybox", "sh", "-c", "exit 42", check=False)
    assert crash.returncode == 42
    assert "crasher" not in out(d.docker("ps", "-a", "--format", "{{.Names}}"))


def test_predefined_networks_and_none(d):
    assert sorted(out(d.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}")).splitlines()) == \
        ["bridge bridge", "host host", "none null"]
    cid = out(d.docker("run", "-d", "--network", "none", "busybox", "sleep", "30")).strip()
    try:
        members = out(d.docker("network", "inspect", "-f", "{{range $k, $v := .Containers}}{{$k}}{{end}}", "none"))
        assert members.strip() == cid
    finally:
        d.docker("rm", "-f", cid)
    assert b"pre-defined" in d.docker("network", "rm", "host", check=False).stderr
    assert b"pre-defined" in d.docker("network", "rm", "bridge", check=False).stderr


def test_project_client_streams_and_hijack(d):
    """minidock.client without the docker CLI: create/start/wait, exec over a hijacked stream."""
    from minidock.client import demux
    c = d.client()
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["sleep", "30"]})["Id"]
    try:
        c.post(f"/containers/{cid}/start")
        eid = c.post(f"/containers/{cid}/exec", body={"Cmd": ["sh", "-c", "cat; echo err >&2; exit 5"],
                                                       "AttachStdin": True, "AttachStdout": True,
                                                       "AttachStderr": True})["Id"]
        pipe = c.hijack(f"/exec/{eid}/start", body={"Detach": False, "Tty": False})
        assert pipe.status == 101
        pipe.send(b"through the pipe\n")
        pipe.close_write()
        stdout, stderr = demux(pipe.read_all())
        pipe.close()
        assert (stdout, stderr) == (b"through the pipe\n", b"err\n")
        deadline = time.monotonic() + 10
        while c.get(f"/exec/{eid}/json")["Running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get(f"/exec/{eid}/json")["ExitCode"] == 5
        events = list(c.stream("GET", "/events", {"since": "0", "until": f"{time.time():.3f}",
                                                  "filters": {"container": [cid]}}))
        assert "start" in [e["Action"] for e in events]
    finally:
        c.delete(f"/containers/{cid}", {"force": True})


def test_isolation_options(d):
    resolv = out(d.docker("run", "--rm", "--dns", "9.9.9.9", "--dns-search", "example.org", "--add-host",
                          "db:10.0.0.5", "busybox", "sh", "-c", "cat /etc/resolv.conf /etc/hosts"))
    assert "nameserver 9.9.9.9" in resolv and "search example.org" in resolv and "10.0.0.5\tdb" in resolv
    assert out(d.docker("run", "--rm", "--ulimit", "nofile=123:456", "busybox", "sh", "-c",
                        "ulimit -n; ulimit -Hn")) == "123\n456\n"
    caps = lambda *flags: out(d.docker("run", "--rm", *flags, "busybox", "grep", "CapEff",  # noqa: E731
                                       "/proc/self/status")).split()[1]
    assert caps() == "00000000a80425fb"                     # Docker's default set
    assert caps("--cap-drop", "ALL") == "0000000000000000"
    assert caps("--cap-add", "NET_ADMIN") == "00000000a80435fb"
    assert out(d.docker("run", "--rm", "--security-opt", "no-new-privileges", "busybox", "grep", "NoNewPrivs",
                        "/proc/self/status")).split()[1] == "1"
    assert out(d.docker("run", "--rm", "--entrypoint", "", "busybox", "echo", "plain")) == "plain\n"
    shm = out(d.docker("run", "--rm", "--shm-size", "8m", "busybox", "df", "-k", "/dev/shm")).splitlines()[-1]
    assert shm.split()[1] == "8192"
    d.docker("run", "-d", "--name", "vsrc", "-v", "/shared", "busybox", "sh", "-c",
             "echo from-src > /shared/x; sleep 30")
    try:
        time.sleep(0.3)
        assert out(d.docker("run", "--rm", "--volumes-from", "vsrc", "busybox", "cat", "/shared/x")) == "from-src\n"
        d.docker("run", "--rm", "--network", "container:vsrc", "busybox", "true")
        d.docker("update", "--restart", "always", "vsrc")
        assert out(d.docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", "vsrc")) == "always\n"
    finally:
        d.docker("rm", "-f", "-v", "vsrc")
    d.docker("run", "-d", "--name", "nonet", "--network", "none", "busybox", "sleep", "30")
    try:
        dev = out(d.docker("run", "--rm", "--network", "container:nonet", "busybox", "cat", "/proc/net/dev"))
        assert [line.split(":")[0].strip() for line in dev.splitlines()[2:]] == ["lo"]
    finally:
        d.docker("rm", "-f", "nonet")
    limited = d.docker("run", "--rm", "-m", "64m", "busybox", "true")
    if d.client().get("/info")["MemoryLimit"]:
        assert b"Limitation discarded" not in limited.stderr
    else:                                       # never a fake limit: Docker's warning instead
        assert b"memory limit capabilities" in limited.stderr and b"Limitation discarded" in limited.stderr


def test_cli_events_follow_a_run(d):
    since = int(time.time())
    d.docker("run", "--rm", "--name", "evt", "busybox", "true")
    time.sleep(1.1)                      # the CLI sends whole seconds
    actions = out(d.docker("events", "--since", str(since), "--until", str(int(time.time())),
                           "--filter", "container=evt", "--format", "{{.Action}}")).split()
    assert actions == ["create", "attach", "start", "die", "destroy"]
    died = out(d.docker("events", "--since", str(since), "--until", str(int(time.time())),
                        "--filter", "event=die", "--filter", "container=evt",
                        "--format", "{{.Actor.Attributes.exitCode}}"))
    assert died == "0\n"


def test_generated_etc_files_stay_out_of_diff_and_commit(d):
    import io
    import tarfile
    d.docker("run", "--name", "fresh", "busybox", "sh", "-c", "cat /etc/hostname > /dev/null; echo x > /made")
    try:
        assert out(d.docker("diff", "fresh")).split() == ["A", "/made"]
        image = out(d.docker("commit", "fresh", "committed:1")).strip()
        saved = tarfile.open(fileobj=io.BytesIO(d.docker("save", image).stdout))
        manifest = json.loads(saved.extractfile("manifest.json").read())
        top = tarfile.open(fileobj=saved.extractfile(manifest[0]["Layers"][-1]))
        assert top.getnames() == ["made"]
    finally:
        d.docker("rm", "-f", "fresh")
        d.docker("rmi", "committed:1", check=False)


def test_put_archive_copy_uid_gid_from_1_30(d):
    """PUT /containers/{id}/archive?copyUIDGID=1 (v1.30+): the files take the container user's
    ids instead of the archive's. With one id mapped (mode nobody) no other owner can exist at
    all: every file is the one mapped id, which the nested namespace shows the user as its
    own; with a subordinate range both ids are real, and the difference shows."""
    import io
    import tarfile

    def archive(name):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = 2, 1234, 1234, 0o644
            tf.addfile(info, io.BytesIO(b"x\n"))
        return buf.getvalue()

    c = d.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "User": "4321:4321",
                                             "Cmd": ["stat", "-c", "%n %u:%g", "/tmp/kept", "/tmp/copied",
                                                     "/tmp/old"]})["Id"]
    try:
        c.call("PUT", f"/containers/{cid}/archive", params={"path": "/tmp"}, body=archive("kept"))
        c.call("PUT", f"/containers/{cid}/archive", params={"path": "/tmp", "copyUIDGID": 1}, body=archive("copied"))
        d.client("1.29").call("PUT", f"/containers/{cid}/archive", params={"path": "/tmp", "copyUIDGID": 1},
                              body=archive("old"))       # before 1.30 the parameter means nothing
        c.post(f"/containers/{cid}/start")
        assert c.post(f"/containers/{cid}/wait")["StatusCode"] == 0
        owners = dict(line.split() for line in out(d.docker("logs", cid)).splitlines())
        if d.mode == "nobody":
            assert set(owners.values()) == {"4321:4321"}
        else:
            assert owners == {"/tmp/kept": "1234:1234", "/tmp/copied": "4321:4321", "/tmp/old": "1234:1234"}
    finally:
        c.delete(f"/containers/{cid}", params={"force": 1})
