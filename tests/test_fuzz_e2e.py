"""Hostile input against a real daemon: every case gets a 4xx with a JSON message, none a 500,
a hang or a traceback in the daemon's log, and the daemon still answers afterwards.

The corpus is raw bytes on the socket (heads, bodies, framing) and request bodies the JSON
endpoints must refuse before anything is created.
"""

import json
import socket

import pytest

DEEP = 100_000


def post(path, body, content_type=b"application/json"):
    if isinstance(body, str):
        body = body.encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def get(target):
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


CORPUS = [
    # -- framing ----------------------------------------------------------------------------
    ("unicode superscript length", b"POST /containers/create HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nab"),
    ("arabic-indic digit length", b"POST /containers/create HTTP/1.1\r\nContent-Length: \xd9\xa3\r\n\r\nabc"),
    ("signed length", b"POST /containers/create HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc"),
    ("hex length", b"POST /containers/create HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc"),
    ("underscore length", b"POST /containers/create HTTP/1.1\r\nContent-Length: 1_0\r\n\r\nabc"),
    ("huge length", b"POST /containers/create HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    ("0x chunk size", b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"),
    ("underscore chunk size", b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\nabc\r\n0\r\n\r\n"),
    ("NUL in target", get(b"/containers/a%00b/json")),
    ("raw NUL in target", get(b"/containers/a\x00b/json")),
    ("NUL in query", get(b"/containers/json?filters=%00")),
    ("NUL in header", b"GET /_ping HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"),
    ("bad method", b"G\xc3\xa9T / HTTP/1.1\r\n\r\n"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    # -- JSON bodies -------------------------------------------------------------------------
    ("deep array", post("/containers/create", "[" * DEEP + "]" * DEEP)),
    ("deep object", post("/containers/create", '{"a":' * DEEP + "1" + "}" * DEEP)),
    ("deep inside a field", post("/containers/create", '{"Image": "busybox", "Labels": '
                                 + '{"a":' * 200 + '"x"' + "}" * 200 + "}")),
    ("deep query filters", get(b"/containers/json?filters=" + b"%5B" * DEEP + b"%5D" * DEEP)),
    ("deep query filters within the line limit", get(b"/containers/json?filters=" + b"[" * 4000 + b"]" * 4000)),
    ("filters not an object", get(b"/containers/json?filters=%5B1%5D")),
    ("NUL in Cmd", post("/containers/create", '{"Image": "busybox", "Cmd": ["a\\u0000b"]}')),
    ("NUL in Env", post("/containers/create", '{"Image": "busybox", "Env": ["A=\\u0000"]}')),
    ("NUL in a key", post("/containers/create", '{"Image": "busybox", "Labels": {"a\\u0000": "b"}}')),
    ("invalid UTF-8", post("/containers/create", b'{"Image": "\xff\xfe"}')),
    ("truncated JSON", post("/containers/create", '{"Image": "busy')),
    ("not JSON", post("/volumes/create", "name=x")),
    ("form post", post("/containers/create", '{"Image": "busybox"}', b"application/x-www-form-urlencoded")),
    ("text/plain", post("/volumes/create", '{"Name": "x"}', b"text/plain")),
    ("lone surrogate", post("/containers/create", '{"Image": "\\ud800"}')),
]


def exchange(path, request):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # the server answered and closed before reading it all
        data = b""
        while True:
            try:
                more = s.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            data += more
    return data


@pytest.mark.parametrize("name,request_bytes", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request_gets_a_4xx_json_answer(rootless, name, request_bytes):
    data = exchange(rootless.socket, request_bytes)
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line[:9] == b"HTTP/1.1 " and status_line[9:10] == b"4", data[:300]
    body = data.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["message"]
    assert rootless.ping()




def test_wrong_typed_create_bodies_are_400_and_create_nothing(rootless):
    """One wrong-typed value for every field of the create body (Config, HostConfig,
    NetworkingConfig, nested ones too), generated from the typed field table."""
    from test_schema import body_with, create_fields, wrong_values
    failures = []
    for path, t in create_fields():
        values = wrong_values(t)
        if not values:
            continue
        body = json.dumps(body_with(path, values[0]))
        data = exchange(rootless.socket, post("/containers/create", body))
        if not data.startswith(b"HTTP/1.1 400 ") or b"cannot unmarshal" not in data:
            failures.append((".".join(path), data[:200]))
    assert failures == []
    assert rootless.docker("ps", "-aq").stdout == b""


@pytest.mark.parametrize("field", ["Privileged", "AutoRemove", "ReadonlyRootfs"])
def test_string_false_is_not_false(rootless, field):
    data = exchange(rootless.socket, post("/containers/create", json.dumps(
        {"Image": "busybox", "Cmd": ["true"], "HostConfig": {field: "false"}})))
    assert data.startswith(b"HTTP/1.1 400 ")
    assert f"HostConfig.{field} of type bool".encode() in data


@pytest.mark.parametrize("query", ["since=xyz", "until=abc", "tail=many", "since=1e9", "since=nan"])
def test_strict_log_query_values(rootless, query):
    cid = rootless.docker("create", "busybox", "true").stdout.decode().strip()
    try:
        data = exchange(rootless.socket, get(f"/containers/{cid}/logs?stdout=1&{query}".encode()))
        assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    finally:
        rootless.docker("rm", cid)


# Last in the module: it looks back at everything the cases above did.
def test_no_traceback_and_nothing_created(rootless):
    log = rootless.read_log()
    assert "Traceback" not in log, log
    assert rootless.docker("ps", "-aq").stdout == b""
