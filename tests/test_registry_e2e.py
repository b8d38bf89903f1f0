"""Registries end to end: the real docker CLI, a rootless minidock, and a real docker-registry.

The registry is Debian's `docker-registry` (distribution 2.8) with htpasswd Basic auth, started by
tests/registry_fixtures.py on 127.0.0.1 and a random port. 127.0.0.0/8 is an insecure registry by
default (as in dockerd), so the daemon speaks plain HTTP to it after its HTTPS attempt fails.
Two daemons share the registry: `rootless` (conftest: has a `busybox` image) pushes, `fresh`
starts empty and pulls, so a pull really downloads. Each CLI keeps its credentials in its own
$DOCKER_CONFIG/config.json, keyed by the registry host exactly as typed.

What the CLI shows is asserted as the user sees it (exit codes, progress lines, the error line);
the API-level tests use minidock.client for what the CLI cannot send (a v1.4 push with the auth
config in the body, hand-encoded X-Registry-Auth headers, a client that hangs up mid-pull).
"""

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import tarfile
import threading
import time

import pytest

import registry_fixtures as F
from minidock import platforms
from minidock.client import APIError
from support import Daemon

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not F.have_registry(), reason="docker-registry is not installed"),
              pytest.mark.skipif(not F.have_htpasswd(), reason="htpasswd (apache2-utils) is not installed")]

USER, PASSWORD = "alice", "s3cret"
ARCH = platforms.goarch()


def out(result):
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


def b64url(obj, pad=True, alphabet="url"):
    raw = json.dumps(obj).encode()
    enc = base64.urlsafe_b64encode(raw) if alphabet == "url" else base64.b64encode(raw)
    return (enc if pad else enc.rstrip(b"=")).decode()


def layer_tar(files):
    """An uncompressed layer tar holding {name: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_parts(files):
    """(layer blob, config bytes, layer digest, diff id) of a one-layer image."""
    tar = layer_tar(files)
    blob = gzip.compress(tar, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    config = json.dumps({"architecture": ARCH, "os": "linux", "config": {"Cmd": ["/x"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test"}]}).encode()
    return blob, config, "sha256:" + hashlib.sha256(blob).hexdigest(), diff_id


def manifest_for(blob, config, layer_digest):
    return {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(blob),
                        "digest": layer_digest}]}


def auth_header(**extra):
    return {"X-Registry-Auth": b64url({"username": USER, "password": PASSWORD, **extra})}


# ------------------------------------------------------------------------------------------------
# Fixtures: one registry, two daemons, one pushed image (module scope)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    r = F.Registry(str(tmp_path_factory.mktemp("reg")), auth="htpasswd", users={USER: PASSWORD}).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def fresh():
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def logged_in(rootless, fresh, reg):
    for d in (rootless, fresh):
        d.docker("login", "-u", USER, "--password-stdin", reg.address, input=PASSWORD.encode())
    return reg.address


@pytest.fixture(scope="module")
def pushed(rootless, logged_in):
    """busybox pushed as <reg>/e2e/bb:1 -> (name, manifest digest, push output)."""
    name = f"{logged_in}/e2e/bb:1"
    rootless.docker("tag", "busybox", name)
    result = rootless.docker("push", name)
    text = out(result)
    line = [ln for ln in text.splitlines() if ln.startswith("1: digest: sha256:")]
    assert line, text
    return name, line[0].split()[2], text


# ------------------------------------------------------------------------------------------------
# Login and push
# ------------------------------------------------------------------------------------------------

def test_push_without_login_is_refused(rootless, reg, tmp_path):
    rootless.docker("tag", "busybox", f"{reg.address}/e2e/nologin:1")
    r = rootless.docker("push", f"{reg.address}/e2e/nologin:1", check=False,
                        env={"DOCKER_CONFIG": str(tmp_path / "empty-config")})
    assert r.returncode != 0
    assert "unauthorized" in out(r) and "authentication required" in out(r), out(r)


def test_login_wrong_password_fails_with_registrys_reason(rootless, reg, tmp_path):
    r = rootless.docker("login", "-u", USER, "--password-stdin", reg.address, input=b"wrong", check=False,
                        env={"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert r.returncode != 0
    assert "unauthorized: authentication required" in out(r), out(r)
    assert not os.path.exists(tmp_path / "cfg" / "config.json") or \
        reg.address not in (tmp_path / "cfg" / "config.json").read_text()
    # The API status is 401, whichever way the server address is written.
    for server in (reg.address, f"http://{reg.address}", f"https://{reg.address}/v1/"):
        with pytest.raises(APIError) as e:
            rootless.client().call("POST", "/auth", body={"username": USER, "password": "wrong",
                                                          "serveraddress": server})
        assert e.value.status == 401 and "authentication required" in str(e.value)


def test_login_succeeds_and_cli_stores_credentials_by_host(rootless, logged_in):
    with open(os.path.join(rootless.base, ".docker-cli", "config.json")) as f:
        auths = json.load(f)["auths"]
    assert logged_in in auths
    assert base64.b64decode(auths[logged_in]["auth"]).decode() == f"{USER}:{PASSWORD}"
    status, _, body = rootless.client().call("POST", "/auth", body={"username": USER, "password": PASSWORD,
                                                                    "serveraddress": f"https://{logged_in}"})
    assert status == 200 and body["Status"] == "Login Succeeded"


def test_push_streams_progress_and_records_repo_digest(rootless, pushed):
    name, digest, text = pushed
    assert f"The push refers to repository [{name.rsplit(':', 1)[0]}]" in text
    assert "Pushed" in text or "Layer already exists" in text
    repo = name.rsplit(":", 1)[0]
    r = rootless.docker("inspect", "-f", "{{json .RepoDigests}}", name)
    assert f"{repo}@{digest}" in json.loads(r.stdout)
    # Pushing again finds every blob in place.
    again = out(rootless.docker("push", name))
    assert "Layer already exists" in again and f"1: digest: {digest}" in again


# ------------------------------------------------------------------------------------------------
# Pull
# ------------------------------------------------------------------------------------------------

def test_pull_into_an_empty_daemon_then_run_it(fresh, pushed):
    name, digest, _ = pushed
    text = out(fresh.docker("pull", name))
    assert "1: Pulling from e2e/bb" in text
    assert "Pull complete" in text and f"Digest: {digest}" in text, text
    assert f"Status: Downloaded newer image for {name}" in text
    repo = name.rsplit(":", 1)[0]
    rows = fresh.docker("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}").stdout.decode()
    assert f"{repo} 1 {digest}" in rows.splitlines(), rows
    inspected = json.loads(fresh.docker("inspect", name).stdout)[0]
    assert inspected["RepoDigests"] == [f"{repo}@{digest}"] and inspected["RepoTags"] == [name]
    r = fresh.docker("run", "--rm", name, "sh", "-c", "echo pulled-$(cat /etc/hostname | wc -c)", timeout=60)
    assert r.stdout.decode().startswith("pulled-")
    # The same pull again is a no-op.
    assert f"Status: Image is up to date for {name}" in out(fresh.docker("pull", name))


def test_rmi_then_pull_by_digest(fresh, pushed):
    name, digest, _ = pushed
    repo = name.rsplit(":", 1)[0]
    fresh.docker("pull", name)
    image_id = fresh.docker("inspect", "-f", "{{.Id}}", name).stdout.decode().strip()
    fresh.docker("rmi", "-f", image_id)
    assert fresh.docker("inspect", name, check=False).returncode != 0
    text = out(fresh.docker("pull", f"{repo}@{digest}"))
    assert f"Digest: {digest}" in text and f"Status: Downloaded newer image for {repo}@{digest}" in text, text
    rows = fresh.docker("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}").stdout.decode()
    assert f"{repo} <none> {digest}" in rows.splitlines(), rows
    assert fresh.docker("inspect", "-f", "{{.Id}}", f"{repo}@{digest}").stdout.decode().strip() == image_id


def test_rmi_and_pull_where_layers_already_exist(rootless, fresh, pushed, logged_in):
    """A child of busybox: pushing mounts/reuses busybox's blob, pulling it where busybox's layer is
    already stored reports "Already exists" for it and downloads only the new layer."""
    name, _, _ = pushed
    child = f"{logged_in}/e2e/child:1"
    rootless.docker("rm", "-f", "mkchild", check=False)
    rootless.docker("run", "--name", "mkchild", "busybox", "sh", "-c", "echo child > /child.txt", timeout=60)
    rootless.docker("commit", "mkchild", child)
    rootless.docker("rm", "mkchild")
    text = out(rootless.docker("push", child))
    assert "Mounted from e2e/bb" in text and text.count("Pushed") == 1, text
    fresh.docker("pull", name)
    text = out(fresh.docker("pull", child))
    assert "Already exists" in text and "Pull complete" in text, text
    assert fresh.docker("run", "--rm", child, "cat", "/child.txt", timeout=60).stdout == b"child\n"
    # rmi in the pushing daemon removes the tag *and* its repo@digest reference (Docker's rule),
    # so the image and its own layer go; pulling back reuses busybox's layer only.
    removed = out(rootless.docker("rmi", child))
    assert "Untagged: " + child in removed and "@sha256:" in removed and "Deleted: sha256:" in removed
    text = out(rootless.docker("pull", child))
    assert text.count("Already exists") == 1 and text.count("Pull complete") == 1, text
    assert rootless.docker("run", "--rm", child, "cat", "/child.txt", timeout=60).stdout == b"child\n"


def test_broken_download_gives_the_error_line_and_no_image(fresh, reg, logged_in):
    blob, config, layer_digest, _ = image_parts({"broken.txt": os.urandom(50_000)})
    auth = (USER, PASSWORD)
    reg.put_blob("e2e/broken", blob, auth=auth)
    reg.put_blob("e2e/broken", config, auth=auth)
    reg.put_manifest("e2e/broken", "1", manifest_for(blob, config, layer_digest),
                     "application/vnd.docker.distribution.manifest.v2+json", auth=auth)
    path = reg.blob_data_path(layer_digest)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    name = f"{logged_in}/e2e/broken:1"
    r = fresh.docker("pull", name, check=False)
    assert r.returncode != 0 and f"verification failed for digest {layer_digest}" in out(r), out(r)
    assert fresh.docker("inspect", name, check=False).returncode != 0
    # At the API level the stream ends with the error line.
    lines = list(fresh.client().stream("POST", "/images/create", {"fromImage": f"{logged_in}/e2e/broken", "tag": "1"},
                                       headers=auth_header()))
    assert lines[-1]["error"] == lines[-1]["errorDetail"]["message"]
    assert "verification failed" in lines[-1]["error"]


# ------------------------------------------------------------------------------------------------
# API level: old push form, header encodings, search
# ------------------------------------------------------------------------------------------------

def test_v1_4_push_takes_the_auth_config_from_the_body(rootless, pushed, logged_in):
    repo = f"{logged_in}/e2e/oldapi"
    rootless.docker("tag", "busybox", f"{repo}:v14")
    c = rootless.client(version="1.4")
    lines = list(c.stream("POST", f"/images/{repo}/push", {"tag": "v14"},
                          body={"username": USER, "password": PASSWORD, "serveraddress": logged_in}))
    assert not any("error" in ln for ln in lines), lines
    assert any(ln.get("status", "").startswith("v14: digest: sha256:") for ln in lines), lines
    # Without it (and no header) the registry's 401 is the error line.
    lines = list(c.stream("POST", f"/images/{repo}/push", {"tag": "v14"}, body={}))
    assert "unauthorized" in lines[-1]["error"], lines


@pytest.mark.parametrize("pad,alphabet", [(True, "url"), (False, "url"), (True, "std"), (False, "std")])
def test_x_registry_auth_encodings(fresh, pushed, pad, alphabet):
    name, digest, _ = pushed
    repo = name.rsplit(":", 1)[0]
    # A server address with characters that differ between the two base64 alphabets.
    header = b64url({"username": USER, "password": PASSWORD, "serveraddress": "http://" + repo.split("/")[0],
                     "email": "a??>>@x~~.example"}, pad=pad, alphabet=alphabet)
    lines = list(fresh.client().stream("POST", "/images/create", {"fromImage": repo, "tag": "1"},
                                       headers={"X-Registry-Auth": header}))
    assert not any("error" in ln for ln in lines), lines
    assert {"status": f"Digest: {digest}"} in lines


def test_pull_with_wrong_credentials_reports_access_denied(fresh, pushed):
    repo = pushed[0].rsplit(":", 1)[0]
    header = {"X-Registry-Auth": b64url({"username": USER, "password": "nope"})}
    lines = list(fresh.client().stream("POST", "/images/create", {"fromImage": repo, "tag": "1"}, headers=header))
    assert "error" in lines[-1] and "authentication required" in lines[-1]["error"], lines


def test_search_through_the_daemon(rootless, pushed, logged_in):
    r = rootless.docker("search", f"{logged_in}/e2e")
    assert f"{logged_in}/e2e/bb" in r.stdout.decode(), out(r)
    results = rootless.client().get("/images/search", {"term": f"{logged_in}/bb"}, headers=auth_header())
    assert {"name": f"{logged_in}/e2e/bb", "description": "", "star_count": 0, "is_official": False,
            "is_automated": False} in results
    old = rootless.client(version="1.2").get("/images/search", {"term": f"{logged_in}/bb"}, headers=auth_header())
    assert any(x.get("Name", x.get("name")) == f"{logged_in}/e2e/bb" for x in old), old


# ------------------------------------------------------------------------------------------------
# Transport: an HTTP-only registry that is not marked insecure
# ------------------------------------------------------------------------------------------------

def non_loopback_ipv4():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))         # no packet is sent; this only picks a source address
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_http_registry_not_marked_insecure_is_refused(rootless, daemon_factory, tmp_path):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address (loopback registries are insecure by default)")
    plain = F.Registry(str(tmp_path), host=addr).start()
    try:
        name = f"{plain.address}/e2e/plain:1"
        r = rootless.docker("pull", name, check=False)
        assert r.returncode != 0
        assert "server gave HTTP response to HTTPS client" in out(r)
        assert f"--insecure-registry {plain.address}" in out(r), out(r)
        # With the flag, the same registry works both ways.
        d = daemon_factory(extra_args=["--insecure-registry", plain.address])
        blob, config, layer_digest, _ = image_parts({"x": b"plain"})
        plain.put_blob("e2e/plain", blob)
        plain.put_blob("e2e/plain", config)
        plain.put_manifest("e2e/plain", "1", manifest_for(blob, config, layer_digest),
                           "application/vnd.docker.distribution.manifest.v2+json")
        assert "Pull complete" in out(d.docker("pull", name))
        d.docker("tag", name, f"{plain.address}/e2e/plain:2")
        assert "2: digest: sha256:" in out(d.docker("push", f"{plain.address}/e2e/plain:2"))
    finally:
        plain.stop()


# ------------------------------------------------------------------------------------------------
# Cancel: a client that hangs up stops the download
# ------------------------------------------------------------------------------------------------

class TrickleRegistry:
    """An open v2 registry double (stdlib) serving one image whose layer blob trickles out slowly,
    so a test can hang up mid-download and see when the daemon stops reading."""

    def __init__(self, size=4 << 20, seconds=8.0):
        self.blob, self.config, self.layer_digest, _ = image_parts({"big": os.urandom(size)})
        self.manifest = json.dumps(manifest_for(self.blob, self.config, self.layer_digest)).encode()
        self.seconds = seconds
        self.blob_closed = threading.Event()
        self.sent = 0
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _headers(self, code, length, ctype="application/octet-stream", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(length))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()

            def do_GET(self):
                p = self.path.split("?")[0]
                cfg_digest = "sha256:" + hashlib.sha256(double.config).hexdigest()
                if p == "/v2/":
                    self._headers(200, 2, "application/json")
                    self.wfile.write(b"{}")
                elif p.endswith("/manifests/1"):
                    self._headers(200, len(double.manifest), "application/vnd.docker.distribution.manifest.v2+json",
                                  [("Docker-Content-Digest", "sha256:" + hashlib.sha256(double.manifest).hexdigest())])
                    self.wfile.write(double.manifest)
                elif p.endswith("/blobs/" + cfg_digest):
                    self._headers(200, len(double.config))
                    self.wfile.write(double.config)
                elif p.endswith("/blobs/" + double.layer_digest):
                    self._headers(200, len(double.blob))
                    step = max(1, len(double.blob) // int(double.seconds / 0.02))
                    try:
                        for i in range(0, len(double.blob), step):
                            self.wfile.write(double.blob[i:i + step])
                            self.wfile.flush()
                            double.sent = i + step
                            time.sleep(0.02)
                    except OSError:
                        pass
                    finally:
                        double.blob_closed.set()
                else:
                    self._headers(404, 0)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_client_disconnect_cancels_the_pull(fresh):
    double = TrickleRegistry()
    try:
        name = f"{double.address}/e2e/slow"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(fresh.socket)
            s.sendall(f"POST /v1.24/images/create?fromImage={name}&tag=1 HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: 0\r\n\r\n".encode())
            got = b""
            while b"Downloading" not in got:
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
        hung_up = time.monotonic()
        # The daemon notices and stops reading the blob long before the trickle would have ended.
        assert double.blob_closed.wait(6), f"daemon kept downloading ({double.sent} of {len(double.blob)} bytes)"
        assert time.monotonic() - hung_up < 6
        assert double.sent < len(double.blob)
        assert fresh.docker("inspect", f"{name}:1", check=False).returncode != 0
    finally:
        double.stop()


def test_push_of_an_unknown_image_is_404(rootless, logged_in):
    r = rootless.docker("push", f"{logged_in}/e2e/never:1", check=False)
    assert r.returncode != 0
    assert f"An image does not exist locally with the tag: {logged_in}/e2e/never" in out(r), out(r)
    with pytest.raises(APIError) as e:
        list(rootless.client().stream("POST", f"/images/{logged_in}/e2e/never/push", {"tag": "1"},
                                      headers=auth_header()))
    assert e.value.status == 404


def test_localhost_spelling_login_push_pull(fresh, reg, tmp_path):
    """The CLI keys credentials by the host as typed (`localhost:PORT`, not 127.0.0.1:PORT) and
    sends them for that name; the daemon resolves `localhost` itself (an insecure name by default)."""
    host = f"localhost:{reg.port}"
    env = {"DOCKER_CONFIG": str(tmp_path / "cfg")}
    fresh.docker("login", "-u", USER, "--password-stdin", host, input=PASSWORD.encode(), env=env)
    assert host in json.loads((tmp_path / "cfg" / "config.json").read_text())["auths"]
    fresh.docker("import", "-", f"{host}/e2e/local:1", input=layer_tar({"hello": b"local\n"}), env=env)
    text = out(fresh.docker("push", f"{host}/e2e/local:1", env=env))
    digest = [ln.split()[2] for ln in text.splitlines() if ln.startswith("1: digest:")][0]
    fresh.docker("rmi", "-f", fresh.docker("inspect", "-f", "{{.Id}}", f"{host}/e2e/local:1").stdout.decode().strip())
    text = out(fresh.docker("pull", f"{host}/e2e/local:1", env=env))
    assert f"Digest: {digest}" in text and "Pull complete" in text, text
    assert json.loads(fresh.docker("inspect", f"{host}/e2e/local:1").stdout)[0]["RepoDigests"] == \
        [f"{host}/e2e/local@{digest}"]


def test_distribution_inspect_asks_the_registry(rootless, pushed):
    """GET /distribution/{name}/json (API 1.30): the registry's descriptor and platforms of a
    name, without pulling it; not a route before 1.30."""
    name, digest, _ = pushed
    doc = rootless.client("1.47").get(f"/distribution/{name}/json", headers=auth_header())
    assert doc["Descriptor"]["digest"] == digest and doc["Descriptor"]["size"] > 0
    assert doc["Platforms"] == [{"architecture": platforms.goarch(), "os": "linux"}]
    with pytest.raises(APIError) as info:
        rootless.client("1.29").get(f"/distribution/{name}/json", headers=auth_header())
    assert info.value.status == 404
