"""System routes through the real router and server: version prefixes, shapes, errors, events."""

import json
import os
import socket
import threading
import time

import pytest

from minidock import daemon, http, httpserver
from minidock.api.router import Router
from minidock.client import APIError, Client
from minidock.engine import Config, Engine
from support import scratch_dir


@pytest.fixture
def api():
    base = scratch_dir()
    engine = Engine(Config(os.path.join(base, "data"), os.path.join(base, "exec")))
    sock = os.path.join(base, "api.sock")
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(engine, ["unix://" + sock]),
                              kwargs={"stop": stop, "ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield engine, sock
    stop.set()
    thread.join(5)


def raw(sock, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(request)
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            return out
        out += data


def get(sock, path):
    data = raw(sock, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    return status, headers, (json.loads(body) if body.startswith((b"{", b"[")) else body)


VERSION_KEYS = {
    "/v1.0": {"Version", "GitCommit", "GoVersion"},
    "/v1.2": {"Version", "GitCommit", "GoVersion"},
    "/v1.4": {"Version", "GitCommit", "GoVersion"},
    "/v1.12": {"ApiVersion", "Version", "GitCommit", "GoVersion", "Os", "Arch", "KernelVersion"},
    "/v1.23": None, "/v1.24": None, "": None,
}


@pytest.mark.parametrize("prefix", list(VERSION_KEYS))
def test_version_shape_per_api_version(api, prefix):
    status, headers, body = get(api[1], prefix + "/version")
    assert status == 200
    assert headers["Api-Version"] == "1.47" and headers["Ostype"] == "linux"
    assert headers["Server"].startswith("minidock/")
    expected = VERSION_KEYS[prefix]
    if expected is None:
        assert body["ApiVersion"] == "1.47" and body["MinAPIVersion"] == "1.0"
        assert body["KernelVersion"] == os.uname().release
        assert body["GoVersion"].startswith("python3.")
    else:
        assert set(body) == expected


INFO_KEYS = {
    "/v1.0": {"Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit"},
    "/v1.2": {"Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit"},
    "/v1.4": {"Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit",
              "IPv4Forwarding"},
}


@pytest.mark.parametrize("prefix", ["/v1.0", "/v1.2", "/v1.4", "/v1.12", "/v1.23", "/v1.24", ""])
def test_info_shape_per_api_version(api, prefix):
    status, _, body = get(api[1], prefix + "/info")
    assert status == 200
    if prefix in INFO_KEYS:
        assert set(body) == INFO_KEYS[prefix]
    elif prefix == "/v1.12":
        assert "Driver" in body and "ContainersRunning" not in body and "IndexServerAddress" in body
    else:
        assert body["NCPU"] == os.cpu_count()
        assert body["DockerRootDir"] == api[0].config.data_root
        assert body["ContainersRunning"] == 0 and body["OSType"] == "linux"
        with open("/proc/meminfo") as f:
            assert body["MemTotal"] == int(f.readline().split()[1]) * 1024


def test_too_new_version_is_400(api):
    status, _, body = get(api[1], "/v1.99/version")
    assert status == 400
    assert body["message"] == "client version 1.99 is too new. Maximum supported API version is 1.47"


def test_ping_get_and_head(api):
    assert get(api[1], "/_ping")[2] == b"OK"
    data = raw(api[1], b"HEAD /v1.24/_ping HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")


def test_unknown_route_404_wrong_method_405(api):
    status, _, body = get(api[1], "/v1.24/nothing/here")
    assert status == 404 and "nothing/here" in body["message"]
    data = raw(api[1], b"DELETE /version HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 405") and b'"message"' in data


def test_malformed_json_body_is_400(api):
    data = raw(api[1], b"POST /auth HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope")
    assert data.startswith(b"HTTP/1.1 400")
    assert b"invalid JSON" in data


def test_events_polling_and_filters_and_old_shape(api):
    engine, sock = api
    start = time.time()
    engine.events.emit("container", "create", "a" * 64, {"name": "web", "image": "busybox", "tier": "x"})
    engine.events.emit("image", "tag", "sha256:" + "b" * 64, {"name": "busybox:latest"})
    engine.events.emit("container", "start", "c" * 64, {"name": "db", "image": "redis:7"})
    until = time.time() + 0.001
    c = Client("unix://" + sock)
    window = {"since": f"{start - 1:.9f}", "until": f"{until:.9f}"}
    everything = list(c.stream("GET", "/events", window))
    assert [e["Action"] for e in everything] == ["create", "tag", "start"]
    assert everything[0]["Actor"]["Attributes"]["name"] == "web"
    only = list(c.stream("GET", "/events", dict(window, filters=json.dumps({"container": ["db"]}))))
    assert [e["id"] for e in only] == ["c" * 64]
    images = list(c.stream("GET", "/events", dict(window, filters=json.dumps({"type": ["image"]}))))
    assert [e["Action"] for e in images] == ["tag"]
    labelled = list(c.stream("GET", "/events", dict(window, filters=json.dumps({"label": ["tier=x"]}))))
    assert len(labelled) == 1
    by_image = list(c.stream("GET", "/events", dict(window, filters=json.dumps({"image": ["redis"]}))))
    assert [e["Actor"]["Attributes"]["name"] for e in by_image] == ["db"]
    old = list(Client("unix://" + sock, version="1.12").stream("GET", "/events", window))
    assert set(old[0]) == {"status", "id", "from", "time"} and old[0]["from"] == "busybox"
    with pytest.raises(APIError) as err:
        list(c.stream("GET", "/events", dict(window, filters=json.dumps({"bogus": ["1"]}))))
    assert err.value.status == 400


def test_events_stream_live_until_deadline(api):
    engine, sock = api
    c = Client("unix://" + sock)
    until = time.time() + 1.0
    got = []
    t = threading.Thread(target=lambda: got.extend(c.stream("GET", "/events", {"until": f"{until:.3f}"})))
    t.start()
    time.sleep(0.3)
    engine.events.emit("volume", "create", "vol1", {"driver": "local"})
    t.join(5)
    assert not t.is_alive()
    assert [e["Actor"]["ID"] for e in got] == ["vol1"]


def test_auth_answers_clear_error_when_the_registry_is_unreachable(api):
    # Every engine has its registry service now; a registry nobody listens at (on 127.0.0.1,
    # so nothing leaves the machine) is a clear error with a message, never a 500 or a hang.
    body = b'{"serveraddress": "127.0.0.1:1", "username": "u", "password": "p"}'
    data = raw(api[1], b'POST /auth HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n'
               b'Connection: close\r\n\r\n%s' % (len(body), body))
    status = int(data.split(b" ")[1])
    assert status in (400, 401, 501, 503)
    assert b'"message"' in data and b"127.0.0.1:1" in data


def test_boolean_query_words():
    from minidock.api.router import ApiRequest
    head = http.parse_head(b"GET /x?a=1&b=True&c=true&d=0&e=False&f=false&g=maybe HTTP/1.1\r\n")
    req = ApiRequest(httpserver.Request(head, None, None), (1, 24), {}, None)
    assert [req.qbool(k) for k in "abcdef"] == [True, True, True, False, False, False]
    assert req.qbool("missing", default=True) is True
    with pytest.raises(Exception):
        req.qbool("g")


def test_cors_header_when_configured(tmp_path):
    engine = Engine(Config(str(tmp_path / "data"), str(tmp_path / "exec")))
    sock = str(tmp_path / "cors.sock")
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=daemon.serve, args=(engine, ["unix://" + sock]),
                         kwargs={"cors_origin": "https://ui.example", "stop": stop, "ready": ready.set}, daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        status, headers, _ = get(sock, "/v1.24/version")
        assert headers["Access-Control-Allow-Origin"] == "https://ui.example"
        preflight = raw(sock, b"OPTIONS /v1.24/containers/json HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert preflight.startswith(b"HTTP/1.1 200") and b"Access-Control-Allow-Methods" in preflight
    finally:
        stop.set()
        t.join(5)


def test_info_says_pause_method_and_userns(api):
    status, _, body = get(api[1], "/info")
    assert body["PauseMethod"] in ("cgroup.freeze", "SIGSTOP")
    assert ["Pause method", body["PauseMethod"]] in body["SystemStatus"]


def test_ping_tells_the_builder_and_swarm_state(api):
    status, headers, body = get(api[1], "/v1.47/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["Builder-Version"] == "1" and headers["Swarm"] == "inactive"
    assert headers["Api-Version"] == "1.47" and headers["Cache-Control"].startswith("no-cache")


def post(sock, path, body=b""):
    data = raw(sock, f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
               + body)
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(rest) if rest.startswith(b"{") else rest


@pytest.mark.parametrize("method,path,status,words", [
    ("GET", "/v1.47/swarm", 503, "This node is not a swarm manager."),
    ("GET", "/v1.47/nodes", 503, "This node is not a swarm manager."),
    ("GET", "/v1.47/services", 503, "docker swarm init"),
    ("GET", "/v1.47/tasks", 503, "not a swarm manager"),
    ("GET", "/v1.47/secrets", 503, "not a swarm manager"),
    ("GET", "/v1.47/configs", 503, "not a swarm manager"),
    ("POST", "/v1.47/swarm/leave", 503, "This node is not part of a swarm"),
    ("POST", "/v1.47/swarm/init", 501, "single-host"),
    ("POST", "/v1.47/session", 501, "DOCKER_BUILDKIT=0"),
    ("GET", "/v1.29/configs", 404, "page not found"),          # configs came with 1.30
])
def test_not_a_swarm_node(api, method, path, status, words):
    if method == "GET":
        got, _, body = get(api[1], path)
    else:
        got, body = post(api[1], path)
    assert got == status and words in body["message"]


def test_plugins_is_an_empty_list(api):
    assert get(api[1], "/v1.47/plugins")[2] == []
    status, _, body = get(api[1], "/v1.47/plugins/vieux/sshfs:latest/json")
    assert status == 404 and "plugin" in body["message"]
