"""The loop's fast path and its level-triggered epoll set.

The fast path answers a request whose exact bytes were answered before, in the same second,
with an answer the application said it would give again (http.Response.same_while: /_ping).
What must hold is that a client cannot tell: for a corpus of ping requests each answer is
byte for byte what the general path (parse, route, handler, render) sent, and requests the
fast path must not take (a body header, a pipelined pair, Connection: close, a too-new
/vX.Y) still reach the application every time. Whether the fast path answered is what the
application sees: it is not called.

The ownership rule is checked where the kernel shows it: the epoll instance's fdinfo lists
each connection the loop owns, and none a request thread is serving.
"""

import os
import socket
import threading

import pytest

from minidock import API_VERSION, daemon, http, httpserver
from minidock.api.router import Router
from support import scratch_dir, wait_for

NOW = 1764609708.25                     # Mon, 01 Dec 2025 17:21:48 GMT (the server's clock here)


class Spawner:
    """The part of the spawner /_ping looks at: why it is down, or None."""

    def __init__(self):
        self.down = None

    def health(self):
        return self.down


class Engine:
    def __init__(self):
        self.spawner = Spawner()


class Counting:
    """The daemon's router, counting the requests that reach it."""

    def __init__(self, app):
        self.app = app
        self.calls = 0

    def serving_mode(self, head):
        return self.app.serving_mode(head)

    def __call__(self, request):
        self.calls += 1
        return self.app(request)


def base_headers():
    return [("Api-Version", API_VERSION), ("Server", "minidock/test (linux)"), ("Ostype", "linux"),
            ("Docker-Experimental", "false")]


@pytest.fixture
def ping_server():
    path = os.path.join(scratch_dir(), "s.sock")
    engine = Engine()
    app = Counting(Router(daemon.routes(), engine))
    srv = httpserver.make_server("unix://" + path, app, base_headers)
    clock = [NOW]
    srv.wall_clock = lambda: clock[0]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield path, app, engine, clock
    srv.shutdown()
    srv.server_close()


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def read_answer(s, buf, method):
    """One response, exactly its bytes (no body after a HEAD): (bytes, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, f"connection closed before a response: {buf!r}"
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = buf[:end]
    length = 0
    if method != b"HEAD":
        length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")][0])
    while len(buf) < end + length:
        data = s.recv(65536)
        assert data, "connection closed inside a body"
        buf += data
    return buf[:end + length], buf[end + length:]


def exchange(s, raw, methods):
    """Send `raw` and read one answer per request in it; the connection must then be idle
    (keep-alive) or closed (an answer with Connection: close)."""
    s.sendall(raw)
    answers, rest = [], b""
    for method in methods:
        answer, rest = read_answer(s, rest, method)
        answers.append(answer)
    assert rest == b""
    if b"Connection: close\r\n" in answers[-1]:
        assert s.recv(65536) == b""
    return answers


CLI_PING = (b"HEAD /v1.47/_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n"
            b"User-Agent: Docker-Client/28.0.1 (linux)\r\n\r\n")

# (name, request bytes, the method of each request in them, fast path?)
PINGS = [
    ("get", b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n", [b"GET"], True),
    ("head", b"HEAD /_ping HTTP/1.1\r\nHost: x\r\n\r\n", [b"HEAD"], True),
    ("versioned", b"GET /v1.24/_ping HTTP/1.1\r\nHost: bench\r\n\r\n", [b"GET"], True),
    ("docker cli", CLI_PING, [b"HEAD"], True),
    ("query", b"GET /_ping?x=1 HTTP/1.1\r\n\r\n", [b"GET"], True),
    ("lf only", b"GET /_ping HTTP/1.1\nHost: x\n\n", [b"GET"], True),
    ("blank line first", b"\r\nGET /_ping HTTP/1.1\r\n\r\n", [b"GET"], True),
    ("1.0 keep-alive", b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [b"GET"], True),
    ("1.0", b"GET /v1.24/_ping HTTP/1.0\r\n\r\n", [b"GET"], False),
    ("head 1.0", b"HEAD /_ping HTTP/1.0\r\n\r\n", [b"HEAD"], False),
    ("connection close", b"GET /_ping HTTP/1.1\r\nConnection: close\r\n\r\n", [b"GET"], False),
    ("too new", b"GET /v9.99/_ping HTTP/1.1\r\nHost: x\r\n\r\n", [b"GET"], False),
    ("too old", b"GET /v0.9/_ping HTTP/1.1\r\n\r\n", [b"GET"], False),
    ("pipelined", b"GET /_ping HTTP/1.1\r\n\r\nHEAD /v1.41/_ping HTTP/1.1\r\n\r\n", [b"GET", b"HEAD"], False),
    ("content-length 0", b"GET /_ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n", [b"GET"], False),
    ("with a body", b"GET /_ping HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", [b"GET"], False),
    ("chunked", b"GET /_ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [b"GET"], False),
    ("malformed header", b"GET /_ping HTTP/1.1\r\nBad header\r\n\r\n", [b"GET"], False),
    ("post", b"POST /_ping HTTP/1.1\r\nContent-Type: application/json\r\n\r\n", [b"POST"], False),
]


@pytest.mark.parametrize("name,raw,methods,fast", PINGS, ids=[p[0] for p in PINGS])
def test_the_fast_path_answers_what_the_general_path_answers(ping_server, name, raw, methods, fast):
    path, app, engine, clock = ping_server
    first = exchange(connect(path), raw, methods)          # the general path: parsed and routed
    routed = app.calls                                      # 0 for a head refused by the parser
    assert routed == (0 if name == "malformed header" else len(methods))
    # The same bytes again: on a new connection, and twice on one that stays open.
    again = [exchange(connect(path), raw, methods)]
    s = connect(path)
    again.append(exchange(s, raw, methods))
    if b"Connection: close\r\n" not in first[-1]:
        again.append(exchange(s, raw, methods))
    for answers in again:
        assert answers == first
    assert app.calls == routed * (1 if fast else 1 + len(again))


def test_a_ping_answer_carries_what_docker_sends():
    """The general path's answer itself (what the fast path repeats): status, Docker's
    headers, a Date for the server's clock, no body after HEAD, and moby's version errors."""
    path = os.path.join(scratch_dir(), "s.sock")
    srv = httpserver.make_server("unix://" + path, Router(daemon.routes(), Engine()), base_headers)
    srv.wall_clock = lambda: NOW
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        for _ in range(2):                                  # general, then fast: the same
            get, = exchange(connect(path), b"GET /v1.24/_ping HTTP/1.1\r\n\r\n", [b"GET"])
            head, = exchange(connect(path), CLI_PING, [b"HEAD"])
            too_new, = exchange(connect(path), b"GET /v9.99/_ping HTTP/1.1\r\n\r\n", [b"GET"])
            for answer in (get, head):
                lines = answer.split(b"\r\n")
                assert lines[0] == b"HTTP/1.1 200 OK"
                for header in (b"Api-Version: " + API_VERSION.encode(), b"Docker-Experimental: false",
                               b"Ostype: linux", b"Server: minidock/test (linux)", b"Builder-Version: 1",
                               b"Cache-Control: no-cache, no-store, must-revalidate", b"Pragma: no-cache",
                               b"Date: Mon, 01 Dec 2025 17:21:48 GMT", b"Content-Length: 2",
                               b"Content-Type: text/plain; charset=utf-8"):
                    assert header in lines
            assert get.endswith(b"\r\n\r\nOK") and head.endswith(b"\r\n\r\n")
            assert too_new.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert too_new.endswith(b'{"message": "client version 9.99 is too new. Maximum supported API '
                                    b'version is ' + API_VERSION.encode() + b'"}\n')
            assert b"Date: Mon, 01 Dec 2025 17:21:48 GMT\r\n" in too_new
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_remembered_answer_ends_with_its_second_and_with_same_while(ping_server):
    path, app, engine, clock = ping_server
    raw = b"GET /_ping HTTP/1.1\r\n\r\n"
    s = connect(path)
    first, = exchange(s, raw, [b"GET"])
    assert exchange(s, raw, [b"GET"]) == [first] and app.calls == 1
    # The next second: a new Date, so the general path answers (and is remembered again).
    clock[0] = NOW + 1
    later, = exchange(s, raw, [b"GET"])
    assert app.calls == 2 and b"Date: Mon, 01 Dec 2025 17:21:49 GMT\r\n" in later
    assert later.replace(b"17:21:49", b"17:21:48") == first
    assert exchange(s, raw, [b"GET"]) == [later] and app.calls == 2
    # The spawner goes down: the very next ping says so (the remembered answer no longer holds).
    engine.spawner.down = "spawner exited"
    down, = exchange(s, raw, [b"GET"])
    assert down.startswith(b"HTTP/1.1 503 ") and down.endswith(b"degraded: spawner exited")
    assert exchange(s, raw, [b"GET"]) == [down] and app.calls == 4    # a 503 is not remembered
    engine.spawner.down = None                          # back: the remembered answer holds again
    assert exchange(s, raw, [b"GET"]) == [later] and app.calls == 4


# -- ownership, as the kernel shows it ----------------------------------------------------------

EPOLLIN, EPOLLERR, EPOLLHUP, EPOLLONESHOT = 0x1, 0x8, 0x10, 1 << 30


def epoll_set(epoll_fd):
    """{fd: events} of an epoll instance of this process, from /proc/self/fdinfo."""
    watched = {}
    with open(f"/proc/self/fdinfo/{epoll_fd}") as f:
        for line in f:
            if line.startswith("tfd:"):
                fields = line.split()
                watched[int(fields[1])] = int(fields[3], 16)
    return watched


class HoldApp:
    def __init__(self):
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def serving_mode(self, head):
        return httpserver.INLINE if head.path == "/ping" else httpserver.THREAD

    def __call__(self, request):
        if request.head.path == "/hold":
            self.started.release()
            self.release.wait(30)
        return http.Response(200, b"OK")


def test_the_loop_owns_idle_connections_level_triggered_and_a_thread_owns_one_alone():
    path = os.path.join(scratch_dir(), "s.sock")
    app = HoldApp()
    srv = httpserver.make_server("unix://" + path, app)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        epfd = srv._epoll.fileno()
        own = set(epoll_set(epfd))                        # the listener and the wake-up pipe
        idle = connect(path)
        exchange(idle, b"GET /ping HTTP/1.1\r\n\r\n", [b"GET"])
        busy = connect(path)
        exchange(busy, b"GET /ping HTTP/1.1\r\n\r\n", [b"GET"])
        conns = {fd: ev for fd, ev in epoll_set(epfd).items() if fd not in own}
        # Both, between requests, are the loop's: in the set for reading, level-triggered
        # (no EPOLLONESHOT: answering a request in the loop needs no epoll_ctl to re-arm).
        assert len(conns) == 2 and set(conns.values()) == {EPOLLIN | EPOLLERR | EPOLLHUP}
        busy.sendall(b"GET /hold HTTP/1.1\r\n\r\n")
        assert app.started.acquire(timeout=10)            # a request thread serves it now
        held = {fd: ev for fd, ev in epoll_set(epfd).items() if fd not in own}
        assert len(held) == 1 and set(held) < set(conns)  # out of the set: the loop cannot touch it
        # The loop still answers the other one, again and again, with it left as it was.
        for _ in range(3):
            assert exchange(idle, b"GET /ping HTTP/1.1\r\n\r\n", [b"GET"])[0].startswith(b"HTTP/1.1 200")
        assert {fd: ev for fd, ev in epoll_set(epfd).items() if fd not in own} == held
        app.release.set()
        assert read_answer(busy, b"", b"GET")[0].startswith(b"HTTP/1.1 200")
        # The thread gave it back: in the set again, for reading.
        # (The give-back follows the answer's send: wait for it.)
        wait_for(lambda: {fd: ev for fd, ev in epoll_set(epfd).items() if fd not in own} == conns,
                 what="the connection back in the loop's epoll set")
        assert exchange(busy, b"GET /ping HTTP/1.1\r\n\r\n", [b"GET"])[0].startswith(b"HTTP/1.1 200")
    finally:
        app.release.set()
        srv.shutdown()
        srv.server_close()
