"""The event-loop server: idle connections hold no thread, slow requests stall nobody else.

What each test asserts is what a client sees on the wire and what the kernel shows of the
server process (/proc/<pid>/task); nothing asserts a time. Waits are bounded by socket timeouts
so a server that stalls fails the test instead of hanging it.
"""

import io
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from minidock import daemon, errors, http, httpserver
from minidock.api import router
from support import read_until_close, scratch_dir, wait_for

from test_http import CORPUS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- take_head: the loop's head parser, on bytes ----------------------------------------------

def _heads_by_read_head(raw):
    """What the blocking parser makes of `raw`: [head or error kind, ...] in order."""
    rfile = io.BufferedReader(io.BytesIO(raw))
    out = []
    while True:
        try:
            head = http.read_head(rfile)
        except errors.MinidockError as exc:
            out.append(type(exc))
            return out
        if head is None:
            return out
        out.append(head)
        try:
            http.body_reader(head, rfile).read()
        except errors.MinidockError:
            return out


@pytest.mark.parametrize("name,raw,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_take_head_agrees_with_read_head_at_every_cut(name, raw, expected):
    """Fed the bytes in two parts cut anywhere, take_head() waits (None) until the head is
    whole, then returns the same head as read_head() or raises the same kind of error."""
    want = _heads_by_read_head(raw)
    for cut in range(len(raw) + 1):
        buf = bytearray(raw[:cut])
        try:
            got = http.take_head(buf)
            if got is None:
                buf += raw[cut:]
                got = http.take_head(buf)
        except errors.MinidockError as exc:
            got = type(exc)
        first = want[0] if want else None
        if isinstance(first, type) or first is None:
            # An error, or a head that never completes (a truncated one is an error only
            # once the connection ends: the loop reports it then).
            assert got in (first, None), (cut, got)
            continue
        assert (got.method, got.target, got.version, got.headers) == \
            (first.method, first.target, first.version, first.headers), cut


def test_take_head_leaves_body_and_pipelined_requests():
    buf = bytearray(b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\nGET /c")
    head = http.take_head(buf)
    assert (head.method, head.path) == ("POST", "/a")
    assert bytes(buf) == b"xyzGET /b HTTP/1.1\r\n\r\nGET /c"
    del buf[:3]
    assert http.take_head(buf).path == "/b"
    assert http.take_head(buf) is None and bytes(buf) == b"GET /c"


def test_take_head_refuses_an_endless_head_early():
    with pytest.raises(errors.HeadersTooLarge):
        http.take_head(bytearray(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 9000))
    with pytest.raises(errors.InvalidParameter):      # a request line that never ends
        http.take_head(bytearray(b"GET /" + b"a" * (http.MAX_LINE_BYTES + 10)))


@pytest.mark.parametrize("target", ["/_ping", "/v1.41/containers/json", "//x/y", "/a%2Fb", "/a?b=1",
                                    "/a#frag", "/images/localhost:5000/app/json"])
def test_plain_target_shortcut_matches_urlsplit(target):
    import urllib.parse
    head = http.Head("GET", target, "HTTP/1.1", [])
    split = urllib.parse.urlsplit(target)
    assert head.path == urllib.parse.unquote(split.path)
    assert head.query == urllib.parse.parse_qs(split.query, keep_blank_values=True)


def test_render_response_framing():
    get = http.Head("GET", "/", "HTTP/1.1", [])
    data = http.render_response(http.Response(200, b"hi"), get, True, [("Api-Version", "1.47")])
    assert data == b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nhi"
    head = http.Head("HEAD", "/", "HTTP/1.0", [])
    data = http.render_response(http.Response(200, b"hi"), head, False)
    assert data == b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert b"Content-Length" not in http.render_response(http.Response.empty(204), get, True)


# -- the route table says how each route runs --------------------------------------------------

def test_every_inline_and_quick_route_exists():
    table = {(entry[0], entry[1]) for entry in daemon.routes()}
    assert router.INLINE_ROUTES <= table
    assert set(router.QUICK_ROUTES) <= table


@pytest.mark.parametrize("method,target,mode", [
    ("GET", "/_ping", httpserver.INLINE),
    ("HEAD", "/v1.41/_ping", httpserver.INLINE),
    ("GET", "/v1.47/version", httpserver.INLINE),
    ("GET", "/v1.41/containers/json", httpserver.QUICK),
    ("GET", "/containers/json?all=1", httpserver.QUICK),
    ("GET", "/containers/json?size=1", httpserver.THREAD),     # walks the writable layers
    ("GET", "/containers/json?size=0", httpserver.QUICK),
    ("GET", "/containers/abc/json", httpserver.QUICK),
    ("GET", "/images/localhost:5000/app/json", httpserver.QUICK),
    ("GET", "/events", httpserver.THREAD),
    ("GET", "/containers/abc/logs?follow=1", httpserver.THREAD),
    ("POST", "/containers/abc/wait", httpserver.THREAD),
    ("POST", "/containers/abc/attach", httpserver.THREAD),
    ("POST", "/exec/abc/start", httpserver.THREAD),
    ("POST", "/images/create?fromImage=x", httpserver.THREAD),
    ("POST", "/build", httpserver.THREAD),
    ("POST", "/containers/create", httpserver.THREAD),
    ("GET", "/no/such/route", httpserver.QUICK),              # its 404 is quick
])
def test_serving_mode_by_route(method, target, mode):
    app = router.Router(daemon.routes(), None)
    assert app.serving_mode(http.Head(method, target, "HTTP/1.1", [])) == mode


def _scan_outcome(app, method, path, version):
    """The route table's meaning, by a scan of all of it: the first route of this method whose
    pattern matches and that exists in this version; else 405 when the path matches routes of
    other methods only (and none of this method in another version), else 404."""
    from minidock.api import versions
    allowed, elsewhere = set(), False
    for route_method, pattern, handler, span, mode in app.routes:
        m = router.compile_pattern(pattern).match(path)
        if not m:
            continue
        if not versions.exists(span, version):
            elsewhere = elsewhere or route_method == method
            continue
        if route_method == method:
            return handler, m.groupdict(), mode
        allowed.add(route_method)
    if allowed and not elsewhere:
        return errors.MethodNotAllowed, f"method {method} not allowed for {path} (allowed: {', '.join(sorted(allowed))})"
    return errors.NotFound, f"page not found: {path}"


def test_route_index_finds_what_a_scan_of_the_whole_table_finds():
    """The router looks a path up among the routes of its first segment; the answer (the
    route, its parameters, or the 404/405 with its message) is that of a scan of the table."""
    import re
    from minidock.api import versions
    app = router.Router(daemon.routes(), None)
    paths = {"/", "/nope", "//containers/json", "/containers", "/containers/", "/_ping/x", "/v1.41"}
    for entry in daemon.routes():
        path = re.sub(r"\{[a-z_]+:path\}", "localhost:5000/team/app", entry[1])
        paths.add(re.sub(r"\{[a-z_]+\}", "abc", path))
    compared = 0
    for path in sorted(paths):
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            for version in (versions.MAX, (1, 24)):
                try:
                    found = app._find(method, path, version)
                except errors.MinidockError as exc:
                    found = type(exc), exc.message
                assert found == _scan_outcome(app, method, path, version), (method, path, version)
                compared += 1
    assert compared > 1000


# -- servers in this process -------------------------------------------------------------------

class ModeApp:
    """A test application that says how each path runs, and can hold requests until released."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def serving_mode(self, head):
        if head.path.startswith("/inline"):
            return httpserver.INLINE
        if head.path.startswith("/quick"):
            return httpserver.QUICK
        return httpserver.THREAD

    def __call__(self, request):
        path = request.head.path
        if path.endswith("/hold"):                 # a handler that waits (wrongly, if QUICK)
            self.started.release()
            self.release.wait(30)
            return http.Response.json({"held": path})
        if path == "/stream":
            def chunks():
                yield b'{"first":1}\n'
                self.started.release()
                self.release.wait(30)
                yield b'{"last":1}\n'
            return http.StreamResponse(chunks())
        if path.endswith("/big"):
            return http.Response(200, b"x" * (1 << 20), content_type="application/octet-stream")
        if path.endswith("/echo"):
            return http.Response(200, request.body.read(), content_type="application/octet-stream")
        return http.Response.json({"path": path, "thread": threading.current_thread().name})


@pytest.fixture
def mode_server():
    path = os.path.join(scratch_dir(), "s.sock")
    app = ModeApp()
    srv = httpserver.make_server("unix://" + path, app)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name="test-loop",
                     daemon=True).start()
    yield path, app, srv
    app.release.set()
    srv.shutdown()
    srv.server_close()


def connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_response(s, buf=b""):
    """One Content-Length response off a keep-alive socket: (status, body, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, "connection closed before a response"
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(buf) < length:
        data = s.recv(65536)
        assert data, "connection closed inside a body"
        buf += data
    return int(head.split(b" ")[1]), buf[:length], buf[length:]


def test_each_mode_runs_where_it_should(mode_server):
    path, app, srv = mode_server
    s = connect(path)
    threads = {}
    for p in ("/inline", "/quick", "/thread"):
        s.sendall(b"GET %s HTTP/1.1\r\n\r\n" % p.encode())
        status, body, rest = read_response(s)
        assert status == 200 and rest == b""
        threads[p] = json.loads(body)["thread"]
    assert threads == {"/inline": "test-loop", "/quick": threads["/quick"], "/thread": "http-request"}
    assert threads["/quick"].startswith("http-worker-")


def test_pipelined_requests_of_every_mode_answer_in_order(mode_server):
    path, app, srv = mode_server
    s = connect(path)
    s.sendall(b"POST /thread/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n"
              b"GET /inline HTTP/1.1\r\n\r\n"
              b"POST /quick/echo HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwo"
              b"POST /inline/echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nthree"
              b"GET /thread HTTP/1.1\r\n\r\n"
              b"GET /quick HTTP/1.1\r\nConnection: close\r\n\r\n")
    bodies, rest = [], b""
    for _ in range(6):
        status, body, rest = read_response(s, rest)
        assert status == 200
        bodies.append(body)
    assert read_until_close(s) == b"" and rest == b""       # closed after the last, as asked
    assert bodies[0] == b"one" and bodies[2] == b"two" and bodies[3] == b"three"
    assert b'"path": "/inline"' in bodies[1] and b'"path": "/thread"' in bodies[4]
    assert b'"path": "/quick"' in bodies[5]


def test_http_1_0_closes_unless_asked_to_keep_alive(mode_server):
    path, app, srv = mode_server
    for target in (b"/inline", b"/quick", b"/thread"):
        s = connect(path)
        s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % target)
        data = read_until_close(s)
        assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"Connection: close\r\n" in data
        s = connect(path)
        s.sendall(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % target)
        for _ in range(2):                  # the second request on the same connection
            status, body, rest = read_response(s)
            assert status == 200 and json.loads(body)["path"] == target.decode() and rest == b""
            s.sendall(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % target)
    s = connect(path)                       # a stream to HTTP/1.0: raw bytes, then the close
    app.release.set()
    s.sendall(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = read_until_close(s)
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"chunked" not in data
    assert data.endswith(b'\r\n\r\n{"first":1}\n{"last":1}\n')


def test_a_slow_stream_does_not_delay_a_ping_on_another_connection(mode_server):
    path, app, srv = mode_server
    streamer = connect(path)
    streamer.sendall(b"GET /stream HTTP/1.1\r\n\r\n")
    assert app.started.acquire(timeout=10)        # the stream is out and its handler waits
    other = connect(path)
    for p in (b"/inline", b"/quick", b"/thread"):
        other.sendall(b"GET %s HTTP/1.1\r\n\r\n" % p)
        assert read_response(other)[0] == 200       # answered while the stream is held
    app.release.set()
    streamer.settimeout(10)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = streamer.recv(65536)
        assert chunk
        data += chunk
    assert b'{"first":1}' in data and b'{"last":1}' in data


def test_workers_all_held_still_leave_the_loop_answering(mode_server):
    """Even QUICK handlers that (wrongly) block only hold the worker pool: the loop keeps
    accepting and answers INLINE requests, and queued QUICK requests are answered in turn."""
    path, app, srv = mode_server
    held = []
    for i in range(httpserver.WORKERS):
        s = connect(path)
        s.sendall(b"GET /quick/%d/hold HTTP/1.1\r\n\r\n" % i)
        held.append(s)
    for _ in range(httpserver.WORKERS):
        assert app.started.acquire(timeout=10)       # every worker is now inside a handler
    queued = connect(path)
    queued.sendall(b"GET /quick/queued HTTP/1.1\r\n\r\n")
    fresh = connect(path)
    fresh.sendall(b"GET /inline HTTP/1.1\r\n\r\n")
    assert read_response(fresh)[0] == 200
    app.release.set()
    for s in held + [queued]:
        assert read_response(s)[0] == 200


def test_an_answer_larger_than_the_socket_buffer_is_finished_by_the_loop(mode_server):
    """A client that pipelines requests for big answers and reads nothing for a while: the
    worker writes what fits and the loop writes the rest when the client reads."""
    path, app, srv = mode_server
    s = connect(path)
    s.sendall(b"GET /quick/big HTTP/1.1\r\n\r\n" * 3 + b"GET /inline/big HTTP/1.1\r\n\r\n" * 2)
    rest = b""
    for _ in range(5):
        status, body, rest = read_response(s, rest)
        assert status == 200 and body == b"x" * (1 << 20)
    assert rest == b""


SERVER = r"""
import sys, threading
sys.path.insert(0, sys.argv[2])
from minidock import http, httpserver

def app(request):
    return http.Response.json({"path": request.head.path})
app.serving_mode = lambda head: httpserver.QUICK if head.path == "/quick" else httpserver.THREAD

srv = httpserver.make_server("unix://" + sys.argv[1], app)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_keep_alive_connections_hold_no_threads():
    path = os.path.join(scratch_dir(), "s.sock")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, path, REPO],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(300):
            s = connect(path)
            s.sendall(b"GET /quick HTTP/1.1\r\n\r\n")
            socks.append(s)
        for s in socks:
            assert read_response(s)[:2] == (200, b'{"path": "/quick"}\n')
        # 300 keep-alive connections open: main thread, the loop and its workers, nothing per
        # connection (a thread-per-connection server shows 300 more here).
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds >= 300
        assert threads_of(proc.pid) <= 2 + httpserver.WORKERS
        # Each is still served, also by a request on a thread of its own (which is then
        # reused or ends), and the connection comes back to the loop afterwards.
        for s in socks:
            s.sendall(b"GET /thread HTTP/1.1\r\n\r\n")
        for s in socks:
            assert read_response(s)[:2] == (200, b'{"path": "/thread"}\n')
        for s in socks:
            s.sendall(b"GET /quick HTTP/1.1\r\n\r\n")
        for s in socks:
            assert read_response(s)[:2] == (200, b'{"path": "/quick"}\n')
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait(10)


def test_daemon_holds_200_keep_alive_clients_with_a_handful_of_threads(daemon_factory):
    d = daemon_factory()
    baseline = threads_of(d.proc.pid)
    socks = []
    try:
        for _ in range(200):
            s = connect(d.socket)
            s.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        for s in socks:
            status, body, _ = read_response(s)
            assert status == 200 and json.loads(body) == []
        for s in socks:
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            assert read_response(s)[:2] == (200, b"OK")
        # The worker pool may have started with the first quick request: no more than that.
        assert threads_of(d.proc.pid) <= baseline + httpserver.WORKERS
    finally:
        for s in socks:
            s.close()


# -- TLS in the loop ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_pair():
    import shutil
    import ssl
    if not shutil.which("openssl"):
        pytest.skip("openssl missing")
    directory = scratch_dir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   cwd=directory, check=True, capture_output=True, timeout=60)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(os.path.join(directory, "cert.pem"))
    return server, client


def test_tls_handshakes_and_requests_in_the_loop(tls_pair):
    server_ctx, client_ctx = tls_pair
    app = ModeApp()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = httpserver.make_server(f"tcp://127.0.0.1:{port}", app, tls_context=server_ctx)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        # A client that connects and never says hello does not hold up the others.
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients = []
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        for c in clients:
            # Pipelined, and larger than a TLS record: the loop must read every decrypted byte.
            body = b"b" * 40000
            c.sendall(b"GET /inline HTTP/1.1\r\n\r\n"
                      b"POST /quick/echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                      b"GET /thread HTTP/1.1\r\n\r\n"
                      b"GET /quick/big HTTP/1.1\r\n\r\n" % (len(body), body))
            rest = b""
            status, got, rest = read_response(c, rest)
            assert status == 200 and b"/inline" in got
            status, got, rest = read_response(c, rest)
            assert status == 200 and got == body
            status, got, rest = read_response(c, rest)
            assert status == 200 and b"/thread" in got
            status, got, rest = read_response(c, rest)
            assert status == 200 and len(got) == 1 << 20
        for c in clients:
            c.close()
        # A plain-text request on the TLS port is not answered in plain text.
        silent.sendall(b"GET /inline HTTP/1.1\r\n\r\n")
        assert b"HTTP/1.1 200" not in read_until_close(silent)
        wait_for(lambda: srv.active_connections == 0, what="connections closed")
    finally:
        app.release.set()
        srv.shutdown()
        srv.server_close()


def test_route_patterns_are_compiled_per_segment_when_first_asked():
    """A Router compiles no pattern when it is made (it is on the daemon's start-up path), and
    then only the group of the segment a request names, once."""
    app = router.Router(daemon.routes(), None)
    assert app._compiled == {}
    app.match("GET", "/containers/abc/json")
    group = app._compiled["containers"]
    assert set(app._compiled) == {"containers"}
    assert all(hasattr(regex, "match") for _, regex, *_ in group)
    app.match("POST", "/containers/abc/start")
    assert app._compiled["containers"] is group
    with pytest.raises(errors.NotFound):
        app.match("GET", "/no-such-segment/x")
    assert set(app._compiled) == {"containers", None}
