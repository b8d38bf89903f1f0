"""Start-up: what the daemon loads before it answers, and that what it leaves for later works.

The daemon imports the builder, the registry client (http.client, ssl contexts, email) and
urllib.request only when a request needs them, so a daemon that never builds or pulls does not
pay for them at start. Each lazy subsystem must work as the *first* thing a fresh daemon does,
run the way users run it (uid 65534, `python3 -S`, a package directory it cannot write to).

The daemon also binds its API sockets before its network namespace is up (the keeper thread
makes it meanwhile): a client that connects in that window waits in the listen backlog and
must get the answer of a fully started daemon -- containers the last daemon left reconciled and
restarted, networks with their bridges.
"""

import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time

import pytest

from rootfs import make_rootfs_tar
from rootfs_helpers import tar_bytes
from support import Daemon, read_until_close

pytestmark = pytest.mark.e2e

# Modules a daemon must not have imported when it becomes ready (each is a rare route's).
LAZY = ("minidock.builder", "minidock.buildcopy", "minidock.dockerfile", "minidock.registry",
        "minidock.registry.pull", "urllib.request", "http.client", "email.utils", "dataclasses",
        "concurrent.futures", "platform",
        # TLS and hashing: OpenSSL (libssl, libcrypto and their init) is ~3 MB of an idle
        # daemon's memory; only a TLS listener, a digest or a pull loads it
        "ssl", "_ssl", "hashlib", "_hashlib", "hmac", "secrets")

# Run the real daemon; when it logs that it is ready, print the modules it has loaded and stop.
REPORT_MODULES = """
import json, logging, os, signal, sys

class OnReady(logging.Handler):
    def emit(self, record):
        if record.name == "minidock" and " ready (" in record.getMessage():
            print(json.dumps(sorted(sys.modules)), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

logging.getLogger("minidock").addHandler(OnReady())
from minidock import daemon
sys.exit(daemon.main(sys.argv[1:]))
"""


def modules_when_ready(d):
    """The modules the daemon `d` (not running) has loaded when it logs that it is ready."""
    argv = d.argv()
    i = argv.index("-m")
    argv[i:i + 2] = ["-c", REPORT_MODULES]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": d.pythonpath, "HOME": d.base, "LANG": "C.UTF-8"}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, cwd=d.base)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return set(json.loads(done.stdout.decode().splitlines()[0]))


def test_a_ready_daemon_has_not_imported_the_rare_subsystems():
    d = Daemon()
    try:
        loaded = modules_when_ready(d)
        # the daemon really came up: its engine, API and network namespace are there
        assert {"minidock.engine", "minidock.api.build", "minidock.network"} <= loaded
        assert sorted(loaded.intersection(LAZY)) == []
    finally:
        d.cleanup()


def test_a_restart_over_stored_images_loads_no_openssl():
    """Loading the image store recomputes every image's ID (its config's SHA-256) and the
    layers' chain IDs: with CPython's own SHA-256 (minidock/digest.py), not hashlib's OpenSSL."""
    d = Daemon()
    try:
        d.start()
        tar = make_rootfs_tar(os.path.join(d.base, "rootfs.tar"))
        d.docker("import", tar, "stored:1")
        d.docker("run", "--rm", "stored:1", "true")
        d.stop()
        loaded = modules_when_ready(d)
        assert "minidock.images" in loaded
        assert sorted(loaded.intersection(LAZY)) == []
        d.start()                               # and the store it loaded is the one it had
        assert d.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split() == [b"stored:1"]
    finally:
        d.stop()
        d.cleanup()


def test_a_build_is_the_first_thing_a_fresh_daemon_does(daemon_factory):
    d = daemon_factory()
    body = tar_bytes([("Dockerfile", "file", b"FROM scratch\nCOPY hello.txt /hello.txt\nCMD [\"/hello\"]\n"),
                      ("hello.txt", "file", b"built lazily\n")])
    lines = list(d.client().stream("POST", "/build", params={"t": "lazy:1"}, body=body,
                                   headers={"Content-Type": "application/x-tar"}))
    assert not [ln for ln in lines if "error" in ln], lines
    assert any("Successfully built" in ln.get("stream", "") for ln in lines)
    image = d.client().get("/images/lazy:1/json")
    assert image["Config"]["Cmd"] == ["/hello"] and len(image["RootFS"]["Layers"]) == 1
    # the layer holds the file: the image saved as a tar of tars
    _, _, saved = d.client().call("GET", "/images/lazy:1/get")
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        layer = next(m for m in outer.getmembers() if m.name.endswith("layer.tar"))
        with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
            assert inner.extractfile("hello.txt").read() == b"built lazily\n"


def test_a_pull_is_the_first_thing_a_fresh_daemon_does(daemon_factory):
    """The registry client loads on the first pull: against a closed port on 127.0.0.1 the
    answer is the registry client's own error line, not an import failure."""
    d = daemon_factory()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]              # closed again when the pull dials it
    lines = list(d.client().stream("POST", "/images/create",
                                   params={"fromImage": f"127.0.0.1:{port}/lazy/none", "tag": "1"}))
    assert lines == [{"errorDetail": {"message": f'Get "http://127.0.0.1:{port}/v2/": Connection refused'},
                      "error": f'Get "http://127.0.0.1:{port}/v2/": Connection refused'}]
    assert "Traceback" not in d.read_log()


def test_an_import_from_a_url_is_the_first_thing_a_fresh_daemon_does(daemon_factory, tmp_path):
    d = daemon_factory()
    make_rootfs_tar(str(tmp_path / "rootfs.tar"))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rootfs.tar"
        lines = list(d.client().stream("POST", "/images/create",
                                       params={"fromSrc": url, "repo": "fromurl", "tag": "1"}))
    finally:
        server.shutdown()
        server.server_close()
    assert not [ln for ln in lines if "error" in ln], lines
    assert d.docker("run", "--rm", "--network", "none", "fromurl:1", "cat", "/etc/passwd").returncode == 0


def raw_get(path, sock_path, timeout=20):
    """GET path over a fresh connection; returns (status, parsed JSON body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = read_until_close(s)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, json.loads(body)


def test_requests_that_race_the_start_get_a_fully_started_daemon(daemon_factory):
    d = daemon_factory()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
    cid = d.docker("run", "-d", "--restart", "always", "busybox", "sleep", "600").stdout.decode().strip()
    before = d.client().get(f"/containers/{cid}/json")["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert before
    d.stop()
    assert not os.path.exists(d.socket)

    # Start it again and fire requests the moment the socket file exists: they are queued while
    # the daemon brings up its networks and restarts the container, and answered after.
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "PYTHONPATH": d.pythonpath, "HOME": d.base, "LANG": "C.UTF-8"}
    d.log = open(d.log_path, "ab")
    d.proc = subprocess.Popen(d.argv(), env=env, stdout=d.log, stderr=subprocess.STDOUT, cwd=d.base)
    deadline = time.monotonic() + 20
    while not os.path.exists(d.socket):
        assert d.proc.poll() is None and time.monotonic() < deadline, d.read_log()
        time.sleep(0.0005)
    answers = {}

    def ask(name, path):
        answers[name] = raw_get(path, d.socket)
    askers = [threading.Thread(target=ask, args=("container", f"/containers/{cid}/json")),
              threading.Thread(target=ask, args=("info", "/info")),
              threading.Thread(target=ask, args=("network", "/networks/bridge"))]
    for t in askers:
        t.start()
    for t in askers:
        t.join(30)
    status, container = answers["container"]
    assert status == 200 and container["State"]["Running"] is True
    assert container["RestartCount"] == 0 and container["State"]["Pid"] > 0
    assert container["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == before
    status, info = answers["info"]
    netns = dict(info["SystemStatus"])["Network namespace"]
    assert status == 200 and netns.startswith("daemon-owned") and "docker0" in netns
    status, bridge = answers["network"]
    assert status == 200 and cid in bridge["Containers"]
    # and the restarted container really is on its bridge: a new container reaches it
    reached = d.docker("run", "--rm", "busybox", "ping", "-c", "1", "-W", "3", before, check=False)
    assert reached.returncode == 0, reached.stdout + reached.stderr
    d.docker("rm", "-f", cid)
