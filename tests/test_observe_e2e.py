"""What users observe with the real docker CLI: `docker stats`, healthchecks, log drivers and
rotation, keep-id bind mounts, and the smaller things clients catch (tty names, exec codes)."""

import datetime
import json
import os
import socket
import subprocess
import time

import pytest

from rootfs import make_rootfs_tar
from support import NOBODY, Daemon, make_user_dir

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def out(result):
    return result.stdout.decode()


def until(predicate, limit=90.0, step=0.1):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(extra_args=["--log-opt", "max-size=1m", "--log-opt", "max-file=3"]).start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        yield daemon
    finally:
        daemon.cleanup()


def api(d, path):
    """GET over the daemon's socket; returns the raw body (chunked decoding for streams)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(d.socket)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- docker stats ---------------------------------------------------------------------------------

def stats_row(d, *names):
    r = d.docker("stats", "--no-stream", "--format", "{{json .}}", *names)
    return {row["Name"]: row for row in map(json.loads, out(r).splitlines())}


def mib(text):
    value, unit = text.split(" / ")[0][:-3], text.split(" / ")[0][-3:]
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit] if unit in ("KiB", "MiB", "GiB") \
        else float(text.split(" / ")[0].rstrip("B")) / MiB


def test_stats_cpu_and_memory_of_real_processes(d):
    d.docker("run", "-d", "--name", "busy", "busybox", "sh", "-c", "while :; do :; done")
    d.docker("run", "-d", "--name", "holder", "busybox", "sh", "-c",
             "x=$(head -c 67108864 /dev/zero | tr '\\000' a); echo held; sleep 1000; echo done")
    try:
        assert until(lambda: "held" in out(d.docker("logs", "holder")), 60)
        rows = stats_row(d, "busy", "holder")
        assert float(rows["busy"]["CPUPerc"].rstrip("%")) > 0
        assert mib(rows["holder"]["MemUsage"]) >= 60, rows["holder"]
        assert rows["holder"]["PIDs"] == "2"                  # sh and its sleep
        # The whole table, without names: both rows.
        table = out(d.docker("stats", "--no-stream"))
        assert "busy" in table and "holder" in table and "CONTAINER ID" in table
    finally:
        d.docker("rm", "-f", "busy", "holder")


def test_stats_api_modes(d):
    cid = out(d.docker("run", "-d", "busybox", "sleep", "1000")).strip()
    try:
        status, body = api(d, f"/containers/{cid}/stats?stream=0")
        primed = json.loads(body)
        assert status == 200 and primed["id"] == cid and primed["name"].startswith("/")
        assert primed["precpu_stats"]["system_cpu_usage"] > 0           # primed: precpu is filled
        assert primed["preread"] != "0001-01-01T00:00:00Z" and primed["read"] > primed["preread"]
        for key in ("cpu_stats", "memory_stats", "pids_stats", "blkio_stats"):
            assert primed[key], key
        assert primed["memory_stats"]["limit"] > 0 and primed["cpu_stats"]["online_cpus"] >= 1
        _, body = api(d, f"/containers/{cid}/stats?stream=0&one-shot=1")
        assert json.loads(body)["preread"] == "0001-01-01T00:00:00Z"
        status, body = api(d, f"/containers/{cid}/stats?stream=1&one-shot=1")
        assert status == 400
        assert "StatsSource" in d.client().get("/info")
    finally:
        d.docker("rm", "-f", cid)
    d.docker("create", "--name", "never", "busybox", "true")
    try:
        _, body = api(d, "/containers/never/stats?stream=0")
        doc = json.loads(body)
        assert doc["read"] == "0001-01-01T00:00:00Z" and doc["memory_stats"] == {}
        assert doc["name"] == "/never"
    finally:
        d.docker("rm", "never")


def test_stats_stream_rows_come_and_go(d):
    d.docker("run", "-d", "--name", "first", "busybox", "sleep", "1000")
    p = subprocess.Popen([d.docker_cmdline(), "stats", "--format", "{{.Name}} {{.CPUPerc}}"],
                         env=d.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        d.docker("run", "-d", "--name", "second", "busybox", "sleep", "1000")
        time.sleep(2.5)
        d.docker("rm", "-f", "first")
        time.sleep(2.5)
    finally:
        p.terminate()
        stream, _ = p.communicate(timeout=10)
        d.docker("rm", "-f", "first", "second", check=False)
    frames = [f for f in stream.decode().replace("\x1b[K", "").replace("\x1b[J", "").split("\x1b[H") if f.strip()]
    names = [{line.split()[0] for line in f.splitlines() if line.strip()} for f in frames]
    assert any(n == {"first"} for n in names)
    assert any(n == {"first", "second"} for n in names)
    assert names[-1] == {"second"}
    assert any("%" in f and "--" not in f for f in frames)          # real figures, not placeholders


# -- healthchecks -------------------------------------------------------------------------------

def health(d, name):
    return json.loads(out(d.docker("inspect", "-f", "{{json .State.Health}}", name)))


def test_health_starting_healthy_unhealthy_with_events(d):
    events = subprocess.Popen([d.docker_cmdline(), "events", "--filter", "event=health_status",
                               "--format", "{{.Status}} {{.Actor.Attributes.name}}"],
                              env=d.cli_env(), stdout=subprocess.PIPE)
    try:
        d.docker("run", "-d", "--name", "good", "--health-cmd", "test -e /tmp/ok && echo fine",
                 "--health-interval", "300ms", "--health-retries", "1000", "busybox", "sleep", "1000")
        d.docker("run", "-d", "--name", "bad", "--health-cmd", "echo nope; exit 1",
                 "--health-interval", "200ms", "--health-retries", "2", "busybox", "sleep", "1000")
        d.docker("run", "-d", "--name", "slow", "--health-cmd", "sleep 30", "--health-interval", "200ms",
                 "--health-timeout", "300ms", "--health-retries", "1", "busybox", "sleep", "1000")
        d.docker("run", "-d", "--name", "plain", "--no-healthcheck", "busybox", "sleep", "1000")
        assert health(d, "good")["Status"] == "starting"
        assert "(health: starting)" in out(d.docker("ps", "--filter", "name=good"))
        d.docker("exec", "good", "touch", "/tmp/ok")
        assert until(lambda: health(d, "good")["Status"] == "healthy")
        assert until(lambda: health(d, "bad")["Status"] == "unhealthy")
        assert until(lambda: health(d, "slow")["Status"] == "unhealthy")
        good, bad, slow = health(d, "good"), health(d, "bad"), health(d, "slow")
        assert good["Log"][-1]["ExitCode"] == 0 and good["Log"][-1]["Output"] == "fine\n"
        assert bad["FailingStreak"] >= 2 and bad["Log"][0]["Output"] == "nope\n"
        assert len(bad["Log"]) <= 5
        assert slow["Log"][0] == dict(slow["Log"][0], ExitCode=-1,
                                      Output="Health check exceeded timeout (300ms)")
        # killed probes are gone: at most the one in flight now, never one per failed probe
        assert out(d.docker("top", "slow")).count("sleep 30") <= 1
        assert "null" == out(d.docker("inspect", "-f", "{{json .State.Health}}", "plain")).strip()
        ps = out(d.docker("ps", "--format", "{{.Names}} {{.Status}}"))
        assert any(line.startswith("good ") and line.endswith("(healthy)") for line in ps.splitlines())
        assert any(line.startswith("bad ") and line.endswith("(unhealthy)") for line in ps.splitlines())
        names = lambda f: sorted(out(d.docker("ps", "--filter", f, "--format", "{{.Names}}")).split())
        assert names("health=healthy") == ["good"]
        assert names("health=unhealthy") == ["bad", "slow"]
        assert "plain" in names("health=none")
        # Paused: probing stops, Docker reports unhealthy; unpaused, the next probe heals it.
        d.docker("pause", "good")
        assert health(d, "good")["Status"] == "unhealthy"
        n = len(health(d, "good")["Log"])
        time.sleep(1)
        assert len(health(d, "good")["Log"]) == n
        d.docker("unpause", "good")
        assert until(lambda: health(d, "good")["Status"] == "healthy")
    finally:
        d.docker("rm", "-f", "good", "bad", "slow", "plain", check=False)
        events.terminate()
        seen = events.communicate(timeout=10)[0].decode().splitlines()
    assert "health_status: healthy good" in seen
    assert "health_status: unhealthy bad" in seen
    assert "health_status: unhealthy slow" in seen


def test_image_healthcheck_and_bad_values(d, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nHEALTHCHECK --interval=200ms --retries=1 CMD echo from-image\n")
    d.docker("build", "-q", "-t", "withcheck", str(tmp_path), timeout=300)
    d.docker("run", "-d", "--name", "inherits", "withcheck", "sleep", "1000")
    d.docker("run", "-d", "--name", "disabled", "--no-healthcheck", "withcheck", "sleep", "1000")
    try:
        assert until(lambda: health(d, "inherits")["Status"] == "healthy")
        assert health(d, "inherits")["Log"][0]["Output"] == "from-image\n"
        assert out(d.docker("inspect", "-f", "{{json .State.Health}}", "disabled")).strip() == "null"
    finally:
        d.docker("rm", "-f", "inherits", "disabled")
    from minidock.client import APIError
    for hc, message in (({"Test": ["CMD", "true"], "Retries": -1}, "Retries in Healthcheck cannot be negative"),
                        ({"Test": ["CMD", "true"], "Interval": 1000}, "Interval in Healthcheck cannot be less than 1ms")):
        with pytest.raises(APIError) as e:
            d.client().post("/containers/create", body={"Image": "busybox", "Cmd": ["true"], "Healthcheck": hc})
        assert e.value.status == 400 and e.value.message == message


# -- log drivers and rotation ---------------------------------------------------------------------

def test_rotation_keeps_three_files_and_logs_reads_them_in_order(d):
    # 700000 numbered lines of ~76 bytes (50.7 MiB) through
    # `--log-opt max-size=1m --log-opt max-file=3`.
    script = ("i=0; while [ $i -lt 700000 ]; do echo \"$i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
              "xxxxxxxxxxxxxxxxxxxx\"; i=$((i+1)); done")
    d.docker("run", "--name", "chatty", "--log-opt", "max-size=1m", "--log-opt", "max-file=3",
             "busybox", "sh", "-c", script, timeout=600)
    try:
        path = out(d.docker("inspect", "-f", "{{.LogPath}}", "chatty")).strip()
        files = [path, path + ".1", path + ".2"]
        assert all(os.path.exists(f) for f in files) and not os.path.exists(path + ".3")
        assert sum(os.path.getsize(f) for f in files) <= 3 * MiB
        lines = out(d.docker("logs", "chatty")).splitlines()
        numbers = [int(line.split()[0]) for line in lines]
        assert numbers == list(range(numbers[0], 700000))        # the newest, in order, no gaps
        tail = out(d.docker("logs", "--tail", "2", "chatty")).split()
        assert tail[::2] == ["699998", "699999"]
        cfg = json.loads(out(d.docker("inspect", "-f", "{{json .HostConfig.LogConfig}}", "chatty")))
        assert cfg == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    finally:
        d.docker("rm", "chatty")


def test_daemon_log_opts_none_and_unknown_drivers(d):
    d.docker("run", "--name", "deflt", "busybox", "echo", "hi")
    d.docker("run", "--name", "quiet", "--log-driver", "none", "busybox", "echo", "hi")
    try:
        cfg = json.loads(out(d.docker("inspect", "-f", "{{json .HostConfig.LogConfig}}", "deflt")))
        assert cfg == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "1m"}}  # daemon's
        assert out(d.docker("logs", "deflt")) == "hi\n"
        refused = d.docker("logs", "quiet", check=False)
        assert refused.returncode == 1
        assert b"configured logging driver does not support reading" in refused.stderr
        path = out(d.docker("inspect", "-f", "{{.LogPath}}", "quiet")).strip()
        assert not path or not os.path.exists(path) or os.path.getsize(path) == 0
    finally:
        d.docker("rm", "deflt", "quiet")
    unknown = d.docker("run", "--rm", "--log-driver", "foo", "busybox", "true", check=False)
    assert unknown.returncode == 125
    assert b"logger: no log driver named 'foo' is registered" in unknown.stderr
    assert out(d.docker("info", "--format", "{{.LoggingDriver}}")).strip() == "json-file"


# -- what clients catch ---------------------------------------------------------------------------

def test_tty_is_dev_pts_0_and_exec_tty_output(d):
    assert out(d.docker("run", "--rm", "-t", "busybox", "tty")) == "/dev/pts/0\r\n"
    d.docker("run", "-d", "--name", "target", "busybox", "sleep", "1000")
    try:
        assert out(d.docker("exec", "-t", "target", "sh", "-c", "printf 'a\\nb\\n'")) == "a\r\nb\r\n"
        missing = d.docker("exec", "target", "no-such-thing", check=False)
        assert missing.returncode == 126
        assert b'exec: "no-such-thing": executable file not found in $PATH' in missing.stdout + missing.stderr
    finally:
        d.docker("rm", "-f", "target")
    run_missing = d.docker("run", "--rm", "busybox", "no-such-thing", check=False)
    assert run_missing.returncode == 127


def test_kill_returns_after_the_container_stopped(d):
    for i in range(3):
        d.docker("run", "-d", "--name", f"victim{i}", "busybox", "sh", "-c", "trap '' TERM; sleep 1000")
        d.docker("kill", f"victim{i}")
        state = out(d.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", f"victim{i}"))
        assert state == "exited 137\n"
        d.docker("rm", f"victim{i}")
    # The API without the CLI's own delays: kill, then inspect at once.
    client = d.client()
    for i in range(10):
        cid = out(d.docker("run", "-d", "busybox", "sleep", "1000")).strip()
        client.post(f"/containers/{cid}/kill")
        state = client.get(f"/containers/{cid}/json")["State"]
        assert (state["Status"], state["ExitCode"], state["Running"]) == ("exited", 137, False)
        assert cid not in [c["Id"] for c in client.get("/containers/json")]
        client.delete(f"/containers/{cid}")
    for i in range(5):
        cid = out(d.docker("run", "-d", "busybox", "sleep", "1000")).strip()
        client.delete(f"/containers/{cid}", params={"force": "1"})
        assert cid not in [c["Id"] for c in client.get("/containers/json", params={"all": "1"})]


# -- keep-id ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nobody", "subuid"])
def test_keep_id_bind_mount_files_belong_to_the_user(mode):
    from test_runtime_e2e import ensure_sub_user
    uid = NOBODY if mode == "nobody" else ensure_sub_user()
    daemon = Daemon(uid=uid, extra_args=["--userns", "keep-id"]).start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        work = make_user_dir(uid)
        # The README's line, with the user's own uid (what `$(id -u)` gives the user).
        daemon.docker("run", "--rm", "-u", str(uid), "-v", f"{work}:/w", "-w", "/w", "busybox",
                      "touch", "made-by-me")
        st = os.stat(os.path.join(work, "made-by-me"))
        assert st.st_uid == uid
        # Without -u, keep-id runs as the user too.
        assert out(daemon.docker("run", "--rm", "-v", f"{work}:/w", "busybox", "id", "-u")) == f"{uid}\n"
        daemon.docker("run", "--rm", "-v", f"{work}:/w", "busybox", "touch", "/w/by-default")
        assert os.stat(os.path.join(work, "by-default")).st_uid == uid
        # `--userns host` opts out of the daemon's default.
        if mode == "subuid":
            refused = daemon.docker("run", "--rm", "--userns", "host", "-u", str(uid), "-v",
                                    f"{work}:/w", "busybox", "touch", "/w/nope", check=False)
            assert refused.returncode == 1 and b"Permission denied" in refused.stderr
    finally:
        daemon.cleanup()


def test_build_with_dockerfile_outside_the_context_streams_run_stderr(d, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data").write_text("in context\n")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY data /data\n"
                                         "RUN echo to-stdout; echo to-stderr >&2; cat /data\n")
    r = subprocess.run([d.docker_cmdline(), "build", "--no-cache", "-t", "outside", "-f", "../Dockerfile", "."],
                       cwd=ctx, env=d.cli_env(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = out(r).splitlines()
    # stdout and stderr are two pipes, as in Docker: each arrives, in the RUN step's output
    running = next(i for i, line in enumerate(lines) if line.startswith(" ---> Running in "))
    removing = next(i for i, line in enumerate(lines) if line.startswith("Removing intermediate"))
    for text in ("to-stdout", "to-stderr", "in context"):
        assert running < lines.index(text) < removing, lines
    # The CLI's renamed Dockerfile stayed out of the image (its .dockerignore entry).
    assert out(d.docker("run", "--rm", "outside", "ls", "-a", "/")).count(".dockerfile") == 0


def test_pull_by_digest_then_inspect_and_run_by_digest(d, tmp_path):
    import registry_fixtures as F
    if not F.have_registry():
        pytest.skip("docker-registry is not installed")
    reg = F.Registry(str(tmp_path)).start()
    try:
        name = f"{reg.address}/obs/bb:1"
        d.docker("tag", "busybox", name)
        pushed = out(d.docker("push", name))
        digest = [ln for ln in pushed.splitlines() if ln.startswith("1: digest:")][0].split()[2]
        d.docker("rmi", name)
        ref = f"{reg.address}/obs/bb@{digest}"
        d.docker("pull", ref)
        assert out(d.docker("inspect", "-f", "{{index .RepoDigests 0}}", ref)).strip() == ref
        assert out(d.docker("run", "--rm", ref, "echo", "by-digest")) == "by-digest\n"
    finally:
        reg.stop()


COMPOSE = """\
version: "2.1"
services:
  db:
    image: busybox
    command: ["sh", "-c", "sleep 2; mkdir -p /www; echo db-page > /www/index.html; exec httpd -f -p 80 -h /www"]
    healthcheck:
      test: ["CMD-SHELL", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 127.0.0.1 80 | grep -q db-page"]
      interval: 500ms
      retries: 60
  app:
    image: busybox
    command: ["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 db 80 | grep -q db-page && echo app-started"]
    depends_on:
      db:
        condition: service_healthy
"""


@pytest.mark.skipif(not __import__("shutil").which("docker-compose"), reason="docker-compose missing")
def test_compose_waits_for_service_healthy(d, tmp_path):
    # The project runs on compose's default network (obs_default): db is healthy once its HTTP
    # server answers, and app reaches it by its service name, which only works once db serves.
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    env = d.cli_env({"COMPOSE_API_VERSION": "1.24"})

    def compose(*args):
        r = subprocess.run(["docker-compose", "-p", "obs", *args], cwd=tmp_path, env=env,
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode() + r.stderr.decode()
    try:
        compose("up", "-d")
        # `up` returned only after db turned healthy, then started app.
        assert health(d, "obs_db_1")["Status"] == "healthy"
        networks = out(d.docker("inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                                "obs_db_1", "obs_app_1"))
        assert networks.split() == ["obs_default", "obs_default"]
        # db can only be healthy 2 s after its start (it sleeps before the file appears).
        started = {name: datetime.datetime.fromisoformat(
            out(d.docker("inspect", "-f", "{{.State.StartedAt}}", name)).strip().replace("Z", "+00:00"))
            for name in ("obs_db_1", "obs_app_1")}
        assert (started["obs_app_1"] - started["obs_db_1"]).total_seconds() >= 2
        assert "app-started" in compose("logs", "app")
    finally:
        compose("down")


def test_docker_py_exec_tty_forms_kill_and_remove(d):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=d.host, version="1.24")
    ct = client.containers.run("busybox", ["sleep", "1000"], detach=True)
    try:
        script = ["sh", "-c", "printf 'a\\nb\\n'"]
        assert ct.exec_run(script, tty=True).output == b"a\r\nb\r\n"              # whole answer
        assert b"".join(ct.exec_run(script, tty=True, stream=True).output) == b"a\r\nb\r\n"
        assert ct.exec_run(script).output == b"a\nb\n"                             # no tty: as is
        missing = ct.exec_run(["no-such-thing"])
        assert missing.exit_code == 126 and b"executable file not found in $PATH" in missing.output
        once = ct.stats(stream=False)
        assert once["id"] == ct.id and once["precpu_stats"]["cpu_usage"]["total_usage"] >= 0
        assert once["pids_stats"]["current"] >= 1 and once["memory_stats"]["usage"] > 0
        first = next(ct.stats(decode=True))
        assert first["name"] == "/" + ct.name and first["read"] != "0001-01-01T00:00:00Z"
        ct.kill()
        ct.reload()
        assert ct.status == "exited" and ct.attrs["State"]["ExitCode"] == 137
    finally:
        ct.remove(force=True)
    assert ct.id not in [c.id for c in client.containers.list(all=True)]
    assert client.containers.run("busybox", ["tty"], tty=True, remove=True) == b"/dev/pts/0\r\n"


def test_stats_net_io_moves_when_containers_talk(d):
    made = d.docker("network", "create", "obsnet", check=False)
    if made.returncode != 0:
        pytest.skip(f"user-defined networks unavailable here: {made.stderr.decode().strip()}")
    try:
        d.docker("run", "-d", "--name", "listener", "--network", "obsnet", "busybox", "sh", "-c",
                 # busybox nc stops reading the socket once its own stdin ends: give it one
                 "sleep 1000 | nc -l -p 8080 > /dev/null")
        ip = out(d.docker("inspect", "-f", "{{.NetworkSettings.Networks.obsnet.IPAddress}}",
                          "listener")).strip()
        before = stats_row(d, "listener")["listener"]["NetIO"]
        # `run -d` returns before nc listens: the sender retries a refused connection (bounded),
        # and holds its stdin open a moment after the data, for the same reason as above.
        d.docker("run", "--rm", "--network", "obsnet", "busybox", "sh", "-c",
                 f"for i in $(seq 50); do (head -c 2000000 /dev/zero; sleep 1) | nc {ip} 8080 && break; "
                 f"sleep 0.2; done")
        after = stats_row(d, "listener")["listener"]["NetIO"]
        received = after.split(" / ")[0]
        assert received != before.split(" / ")[0]
        assert received.endswith("MB") and float(received[:-2]) >= 2.0, after
    finally:
        d.docker("rm", "-f", "listener", check=False)
        d.docker("network", "rm", "obsnet", check=False)


def test_a_log_follower_that_never_reads_does_not_hold_the_container(d):
    d.docker("run", "-d", "--name", "writer", "busybox", "sh", "-c",
             "sleep 1; i=0; while [ $i -lt 200000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx;"
             " i=$((i+1)); done")
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.connect(d.socket)
        stuck.sendall(b"GET /containers/writer/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        # ~12 MB of output while this client reads nothing: the container still finishes.
        code = out(d.docker("wait", "writer", timeout=120)).strip()
        assert code == "0"
        assert out(d.docker("logs", "--tail", "1", "writer")).startswith("line-199999-")
    finally:
        stuck.close()
        d.docker("rm", "-f", "writer")
