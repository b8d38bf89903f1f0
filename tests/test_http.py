"""The HTTP layer on bytes: a corpus of raw requests, then the same code behind a real socket."""

import io
import json
import os
import socket
import stat
import threading
import time

import pytest

from minidock import errors, http, httpserver
from support import read_until_close, scratch_dir

# (name, raw request bytes, expected) where expected is either an error kind, or a dict of
# method / path / query / headers / body the parse must produce.
CORPUS = [
    ("simple get", b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n",
     {"method": "GET", "path": "/_ping", "body": b""}),
    ("versioned with query", b"GET /v1.24/containers/json?all=1&filters=%7B%22a%22%3A1%7D HTTP/1.1\r\n\r\n",
     {"path": "/v1.24/containers/json", "query": {"all": ["1"], "filters": ['{"a":1}']}}),
    ("bare LF line endings", b"GET /info HTTP/1.1\nHost: x\n\n", {"path": "/info"}),
    ("leading blank line tolerated", b"\r\nGET /info HTTP/1.1\r\n\r\n", {"path": "/info"}),
    ("content-length body", b"POST /auth HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
     {"body": b'{"a":1}'}),
    ("chunked body", b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", {"body": b"hello world"}),
    ("chunked body with trailer", b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", {"body": b"abc"}),
    ("header case folded", b"GET / HTTP/1.1\r\nX-Registry-AUTH: abc\r\n\r\n",
     {"headers": {"x-registry-auth": "abc"}}),
    ("absolute-form target", b"GET http://localhost/v1.24/info HTTP/1.1\r\n\r\n", {"path": "/v1.24/info"}),
    ("percent-encoded path", b"GET /images/localhost%3A5000%2Fapp/json HTTP/1.1\r\n\r\n",
     {"path": "/images/localhost:5000/app/json"}),
    ("http/1.0", b"GET /_ping HTTP/1.0\r\n\r\n", {"version": "HTTP/1.0", "keep_alive": False}),
    # -- refused ------------------------------------------------------------------------------
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", errors.InvalidParameter),
    ("no version", b"GET /\r\n\r\n", errors.InvalidParameter),
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", errors.InvalidParameter),
    ("lower-case method", b"get / HTTP/1.1\r\n\r\n", errors.InvalidParameter),
    ("header without colon", b"GET / HTTP/1.1\r\nBroken header\r\n\r\n", errors.InvalidParameter),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", errors.InvalidParameter),
    ("folded header", b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", errors.InvalidParameter),
    ("both length and chunked", b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     errors.InvalidParameter),
    ("negative length", b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", errors.InvalidParameter),
    ("two lengths", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", errors.InvalidParameter),
    ("unknown transfer coding", b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", errors.NotImplementedKind),
    ("too many headers", b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     errors.HeadersTooLarge),
    ("huge header line", b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", errors.HeadersTooLarge),
    ("huge head overall", b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 7000) for i in range(12))
     + b"\r\n", errors.HeadersTooLarge),
    ("truncated head", b"GET / HTTP/1.1\r\nHost: x\r\n", errors.InvalidParameter),
    ("bad chunk size", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
     errors.InvalidParameter),
    ("chunk missing CRLF", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
     errors.InvalidParameter),
    ("chunked ends early", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", errors.InvalidParameter),
    ("short content-length body", b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", errors.InvalidParameter),
    ("superscript digit length", b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nab", errors.InvalidParameter),
    ("signed length", b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nab", errors.InvalidParameter),
    ("0x chunk size", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
     errors.InvalidParameter),
    ("signed chunk size", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n",
     errors.InvalidParameter),
    ("NUL in target", b"GET /a%00b HTTP/1.1\r\n\r\n", errors.InvalidParameter),
    ("NUL in header value", b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", errors.InvalidParameter),
]


def parse_all(raw):
    rfile = io.BufferedReader(io.BytesIO(raw))
    head = http.read_head(rfile)
    body = http.body_reader(head, rfile).read()
    return head, body


def parse_all_readinto(raw, size):
    """As parse_all, the body read with readinto() into a `size`-byte buffer (uploads read so)."""
    rfile = io.BufferedReader(io.BytesIO(raw))
    head = http.read_head(rfile)
    reader, buf, parts = http.body_reader(head, rfile), bytearray(size), []
    while True:
        n = reader.readinto(buf)
        if not n:
            return head, b"".join(parts)
        parts.append(bytes(buf[:n]))


@pytest.mark.parametrize("size", [1, 3, 4096])
@pytest.mark.parametrize("name,raw,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_request_corpus_read_into_a_buffer(name, raw, expected, size):
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_all_readinto(raw, size)
        return
    assert parse_all_readinto(raw, size)[1] == parse_all(raw)[1]


@pytest.mark.parametrize("name,raw,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_request_corpus(name, raw, expected):
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_all(raw)
        return
    head, body = parse_all(raw)
    for key, value in expected.items():
        if key == "body":
            assert body == value
        elif key == "headers":
            for hname, hvalue in value.items():
                assert head.header(hname) == hvalue
        else:
            assert getattr(head, key) == value


def test_pipelined_requests_parse_in_sequence():
    raw = (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
           b"GET /b HTTP/1.1\r\n\r\n"
           b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nq\r\n0\r\n\r\n")
    rfile = io.BufferedReader(io.BytesIO(raw))
    seen = []
    while True:
        head = http.read_head(rfile)
        if head is None:
            break
        seen.append((head.path, http.body_reader(head, rfile).read()))
    assert seen == [("/a", b"xyz"), ("/b", b""), ("/c", b"q")]


def test_clean_eof_is_not_an_error():
    assert http.read_head(io.BufferedReader(io.BytesIO(b""))) is None


def test_frames_round_trip():
    data = http.frame(1, b"out") + http.frame(2, b"err!") + http.frame(1, b"")
    frames, rest = http.parse_frames(data + b"\x01\x00\x00")
    assert frames == [(1, b"out"), (2, b"err!"), (1, b"")]
    assert rest == b"\x01\x00\x00"
    assert data[:8] == b"\x01\x00\x00\x00\x00\x00\x00\x03"
    with pytest.raises(ValueError):
        http.parse_frames(b"\x07\x00\x00\x00\x00\x00\x00\x01x")


def test_chunk_rendering():
    assert http.chunk(b"hello") == b"5\r\nhello\r\n"
    assert http.chunk(b"") == b""          # an empty chunk would end the body
    assert http.LAST_CHUNK == b"0\r\n\r\n"
    big = bytes(range(256)) * 4096          # 1 MiB, every byte value: a log block's size
    assert http.chunk(big) == b"100000\r\n" + big + b"\r\n"
    assert http.chunk(bytearray(b"ab")) == http.chunk(memoryview(b"ab")) == b"2\r\nab\r\n"


def test_upgrade_head():
    head = http.upgrade_head()
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    assert b"Upgrade: tcp\r\n" in head and head.endswith(b"\r\n\r\n")
    assert http.upgrade_head(upgrade=False).startswith(b"HTTP/1.1 200 OK\r\n")


def test_json_body_limit():
    body = http.LengthReader(io.BufferedReader(io.BytesIO(b"[" + b"1," * 100 + b"1]")), 203)
    with pytest.raises(errors.PayloadTooLarge):
        http.read_json_body(body, limit=50)
    with pytest.raises(errors.InvalidParameter):
        http.read_json_body(http.LengthReader(io.BufferedReader(io.BytesIO(b"{nope")), 5))


# -- the same code behind a real socket -----------------------------------------------------------

def echo_app(request):
    """A tiny application: echoes the body, streams, hijacks, or fails, by path."""
    path = request.head.path
    if path == "/echo":
        return http.Response(200, request.body.read(), content_type="application/octet-stream")
    if path == "/stream":
        return http.StreamResponse(iter([b'{"n":1}\n', b'{"n":2}\n']))
    if path == "/hijack":
        def run(conn):
            conn.send(b"hello ")
            while True:
                data = conn.recv()
                if not data:
                    break
                conn.send(data.upper())
        return http.Hijack(run)
    if path == "/hijack-done":
        def run(conn):                  # a process that ends without reading its stdin
            conn.send(b"bye")
            time.sleep(0.2)             # meanwhile the client types on
        return http.Hijack(run)
    if path == "/boom":
        raise ValueError("boom")
    return http.Response.json({"path": path})


@pytest.fixture
def server():
    directory = scratch_dir()
    sock_path = os.path.join(directory, "s.sock")
    srv = httpserver.make_server("unix://" + sock_path, echo_app, lambda: [("Api-Version", "1.24")])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield sock_path, srv
    srv.shutdown()
    srv.server_close()


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def test_socket_mode_is_0600(server):
    assert os.stat(server[0]).st_mode & 0o777 == 0o600


def test_keep_alive_pipelining_over_socket(server):
    s = connect(server[0])
    s.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
              b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
              b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
    data = read_until_close(s)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.count(b"Api-Version: 1.24") == 3
    assert b"\r\n\r\nabc" in data and b"\r\n\r\nde" in data and b'{"path": "/x"}' in data


def test_garbage_gets_400_and_close(server):
    s = connect(server[0])
    s.sendall(b"\x00\x01\x02 garbage\r\n\r\n")
    data = read_until_close(s)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["message"]


def test_oversized_headers_get_431(server):
    s = connect(server[0])
    s.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n")
    assert read_until_close(s).startswith(b"HTTP/1.1 431 ")


def test_streamed_response_is_chunked(server):
    s = connect(server[0])
    s.sendall(b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
    data = read_until_close(s)
    assert b"Transfer-Encoding: chunked" in data
    assert data.endswith(b'8\r\n{"n":1}\n\r\n8\r\n{"n":2}\n\r\n0\r\n\r\n')


def test_upgrade_then_raw_bytes_both_ways(server):
    s = connect(server[0])
    s.sendall(b"POST /hijack HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nearly ")
    head = b""
    while b"hello " not in head:
        head += s.recv(1024)
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    s.sendall(b"late")
    s.shutdown(socket.SHUT_WR)
    rest = read_until_close(s)
    assert (head.split(b"\r\n\r\n", 1)[1] + rest) == b"hello EARLY LATE"


def test_a_hijack_that_ends_unread_input_closes_cleanly(server):
    # `docker exec -it` of a command that never reads stdin: the CLI has sent keystrokes the
    # daemon never read. Closing a unix socket with unread input makes the peer's next read
    # fail with ECONNRESET instead of end-of-file (the CLI then exits 1: "read: connection
    # reset by peer"), so the server drops that input first.
    for _ in range(3):
        s = connect(server[0])
        s.sendall(b"POST /hijack-done HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        data = b""
        while not data.endswith(b"bye"):
            data += s.recv(1024)
        s.sendall(b"typed while it ran" * 100)
        time.sleep(0.4)                 # the server is done and has closed by now
        data += read_until_close(s)
        assert data.startswith(b"HTTP/1.1 101 UPGRADED\r\n") and data.endswith(b"\r\n\r\nbye")
        s.close()


def test_hijack_without_upgrade_gets_200(server):
    s = connect(server[0])
    s.sendall(b"POST /hijack HTTP/1.1\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    data = read_until_close(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nhello ")


def test_unhandled_error_is_500_json(server):
    s = connect(server[0])
    s.sendall(b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
    data = read_until_close(s)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert "boom" in json.loads(data.split(b"\r\n\r\n", 1)[1])["message"]


def test_client_disconnect_mid_body_frees_the_thread(server):
    def threads():
        return len(os.listdir("/proc/self/task"))     # the kernel's count, pool threads included
    before = threads()
    for _ in range(5):
        s = connect(server[0])
        s.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 1000000\r\n\r\npartial")
        s.close()
    deadline = time.monotonic() + 5
    while threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads() <= before
    # and the server still answers
    s = connect(server[0])
    s.sendall(b"GET /alive HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert read_until_close(s).startswith(b"HTTP/1.1 200")


def test_stale_socket_replaced_live_socket_refused(server):
    with pytest.raises(errors.Conflict):
        httpserver.make_server("unix://" + server[0], echo_app)
    stale = os.path.join(scratch_dir(), "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)
    dead.close()                       # a socket file nobody listens on: what SIGKILL leaves
    srv = httpserver.make_server("unix://" + stale, echo_app)
    srv.server_close()


def test_unix_socket_appears_already_listening(monkeypatch, tmp_path):
    # A connect() between bind() and listen() is refused: the path must not exist before listen.
    path = str(tmp_path / "d.sock")
    seen_at_listen = []

    class Watched(socket.socket):
        def listen(self, *args):
            seen_at_listen.append(os.path.exists(path))
            return super().listen(*args)
    monkeypatch.setattr(httpserver.socket, "socket", Watched)
    srv = httpserver.make_server("unix://" + path, echo_app)
    try:
        assert seen_at_listen == [False]
        assert os.listdir(tmp_path) == ["d.sock"] and srv.server_address == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)                     # queued in the backlog: not refused
    finally:
        srv.server_close()


@pytest.mark.parametrize("body,ok", [
    (b'{"a": [1, {"b": "c"}]}', True),
    (b"[" * 64 + b"]" * 64, True),
    (b"[" * 65 + b"]" * 65, False),
    (b"[" * 100000 + b"]" * 100000, False),        # json.loads alone: RecursionError
    (b'{"Cmd": ["a\\u0000b"]}', False),
    (b'{"a\\u0000": 1}', False),
])
def test_json_body_depth_and_nul(body, ok):
    reader = http.LengthReader(io.BufferedReader(io.BytesIO(body)), len(body))
    if ok:
        assert http.read_json_body(reader) is not None
    else:
        with pytest.raises(errors.InvalidParameter):
            http.read_json_body(reader)


@pytest.mark.parametrize("headers,ok", [
    ([("content-type", "application/json")], True),
    ([("content-type", "application/json; charset=utf-8")], True),
    ([], True),                                                  # no body, no header: fine
    ([("content-length", "0")], True),
    ([("content-length", "2")], False),                          # a body needs the header
    ([("transfer-encoding", "chunked")], False),
    ([("content-type", "text/plain"), ("content-length", "2")], False),
    ([("content-type", "application/x-www-form-urlencoded"), ("content-length", "3")], False),
    ([("content-type", "text/plain"), ("content-length", "0")], True),   # CLI 20.10's start
    ([("content-type", "text/plain"), ("transfer-encoding", "chunked")], False),
])
def test_json_content_type_rule(headers, ok):
    head = http.Head("POST", "/containers/create", "HTTP/1.1", headers)
    if ok:
        http.check_json_content_type(head)
    else:
        with pytest.raises(errors.InvalidParameter):
            http.check_json_content_type(head)


def test_a_length_body_read_into_a_buffer_gives_the_bytes_and_refuses_a_short_one():
    body = bytes(range(256)) * 1000
    r = http.LengthReader(io.BytesIO(body + b"next request"), len(body))
    out = bytearray()
    buf = bytearray(70000)
    while True:
        n = r.readinto(buf)
        if not n:
            break
        out += buf[:n]
    assert bytes(out) == body and r.remaining == 0   # not a byte of what follows the body
    short = http.LengthReader(io.BytesIO(body[:100]), len(body))
    with pytest.raises(errors.InvalidParameter, match="ended before Content-Length"):
        short.readinto(bytearray(1000))
