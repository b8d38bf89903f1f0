"""The HTTP server: a socket listener that moves bytes between clients and the application.

http.py holds the protocol as functions over bytes; this module is the socket side of it, built
on `socketserver` (one thread per connection). `ConnectionHandler` reads a request head with
`http.read_head()`, hands the application callable a `Request` (the head, a body reader and the
socket), and writes what comes back: a `Response` with a Content-Length, a `StreamResponse` as
chunks, or a `Hijack`, after which the socket is the application's raw byte pipe
(`HijackedConnection`). The connection then waits for the next request (keep-alive) or closes.

Limits protect the daemon from its clients, careless or hostile (the byte-level ones are checked
by http.py's parsers; this module enforces them on the socket):

- a request head over `MAX_HEAD_BYTES` or with more than `MAX_HEADERS` headers is refused with
  431, a malformed one with 400 (Content-Length and chunk sizes are ASCII digits only; NUL bytes
  are refused in the target and in headers);
- the whole head must arrive within `HEAD_TIMEOUT` (a deadline, not a per-read timeout, so a
  client dribbling one byte a minute is cut off too), an idle keep-alive connection is closed
  after `IDLE_TIMEOUT`, and a body that stalls for `READ_TIMEOUT` ends with 408;
- JSON bodies must say `Content-Type: application/json` (moby's rule, `check_json_content_type`),
  and may nest `MAX_JSON_DEPTH` deep at most, without NUL characters in strings;
- the listener asks for the kernel's full backlog, serves at most `MAX_CONNECTIONS` at once (one
  more gets a 503 from the accept loop), and survives running out of descriptors or threads
  (see `_ServerMixin`);
- TCP listeners may be TLS (a context made by the daemon from its --tls* flags): the handshake
  runs in the connection's thread under the head deadline.
"""

import errno
import io
import json
import logging
import os
import select
import socket
import socketserver
import ssl
import stat
import sys
import threading
import time

from minidock import errors, http
from minidock.http import (LAST_CHUNK, Hijack, StreamResponse, body_reader, chunk,
                           error_response, read_head, render_head, upgrade_head)

HEAD_TIMEOUT = 60.0              # seconds for a whole request head (and a TLS handshake)
IDLE_TIMEOUT = 300.0             # seconds a keep-alive connection may wait for its next request
MAX_CONNECTIONS = 1000           # connections served at once; more get a 503


class HijackedConnection:
    """The raw byte pipe after a hijack: input includes anything the client already pipelined."""

    def __init__(self, sock, rfile):
        self.sock = sock
        self.rfile = rfile

    def recv(self, n=65536):
        """Read what is available (buffered bytes first); b'' at end of input."""
        peeked = self.rfile.peek(1) if hasattr(self.rfile, "peek") else b""
        if peeked:
            return self.rfile.read1(n)
        try:
            return self.sock.recv(n)
        except OSError:
            return b""

    def send(self, data):
        self.sock.sendall(data)

    def close_write(self):
        """Half-close: tell the client there is no more output (it sees EOF on its read side)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def fileno(self):
        return self.sock.fileno()


def peer_gone(sock):
    """True when the client has closed its side (a readable socket with nothing to read).

    Streaming handlers that may sit silently for a long time (events, logs -f, wait) use this to
    notice a client that went away without waiting for a write to fail.
    """
    try:
        # poll, not select: select() cannot take descriptors above 1023, and a busy daemon
        # with a raised RLIMIT_NOFILE has them.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        if isinstance(sock, ssl.SSLSocket):
            # TLS cannot peek at plain text; look at the raw bytes instead. End of stream, or a
            # TLS alert record (content type 21: close_notify, which Go clients send on
            # Close), both mean the client is done.
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            try:
                first = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            finally:
                raw.close()
            return first in (b"", b"\x15")
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True



# ---------------------------------------------------------------------------------------------
# The server: moves bytes between a socket and the application callable
# ---------------------------------------------------------------------------------------------

class Request:
    """What the application callable receives: the head, a body reader, and the connection."""

    def __init__(self, head, body, sock):
        self.head = head
        self.body = body
        self.sock = sock

    def disconnected(self):
        return peer_gone(self.sock)


_reply = threading.local()


def after_reply(fn):
    """Run `fn()` once the reply to the request this thread is serving has been written, or
    now when this thread serves no request (or its reply is a stream or a hijack, which have
    begun by then). For an effect a client may watch for *while its request is in flight*:
    it must not see the effect before it has the reply."""
    hooks = getattr(_reply, "hooks", None)
    if hooks is None:
        fn()
    else:
        hooks.append(fn)


def _run_reply_hooks():
    hooks, _reply.hooks = getattr(_reply, "hooks", None), None
    for fn in hooks or ():
        try:
            fn()
        except Exception:
            logging.getLogger("minidock.http").exception("after-reply hook failed")


class _TimedReader(io.RawIOBase):
    """The socket as a raw stream whose reads obey the connection's current time limit.

    A socket timeout bounds each recv(), not a whole request head: a client dribbling one byte
    every 59 seconds would keep a thread forever. So the limit is one of three modes, set by
    the handler as the connection moves along:

        ("deadline", t)   every read fails once monotonic time t has passed (a request head)
        ("idle", s)       each read may wait at most s seconds (a body: large uploads are fine,
                          a stalled one is not)
        None              no limit (the handler is working, streaming, or the connection is
                          hijacked and belongs to the application)

    settimeout() is only called when the value changes, so a hijacked connection, whose
    reader and writer threads share the socket, never has its timeout changed under it.
    """

    def __init__(self, sock):
        self.sock = sock
        self.limit = None
        self._current = sock.gettimeout()

    def readable(self):
        return True

    def set_limit(self, limit):
        self.limit = limit
        if limit is None:
            self._apply(None)

    def _apply(self, timeout):
        if timeout != self._current:
            self.sock.settimeout(timeout)
            self._current = timeout

    def readinto(self, buffer):
        if self.limit is None:
            self._apply(None)
        elif self.limit[0] == "idle":
            self._apply(self.limit[1])
        else:
            left = self.limit[1] - time.monotonic()
            if left <= 0:
                raise socket.timeout("request head not received in time")
            self._apply(left)
        return self.sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writes with sendall (a raw socket file may write only part of a buffer)."""

    def __init__(self, sock):
        self.sock = sock

    def writable(self):
        return True

    def write(self, data):
        self.sock.sendall(data)
        return len(data)


class ConnectionHandler(socketserver.StreamRequestHandler):
    """Serves one connection: requests in sequence (keep-alive, pipelining) until close or hijack."""

    rbufsize = 65536

    def setup(self):
        # The server may hand us a TLS socket whose handshake is still to do: do it here, in
        # this connection's thread and under a deadline, never in the accept loop.
        if hasattr(self.request, "do_handshake"):
            self.request.settimeout(HEAD_TIMEOUT)
            self.request.do_handshake()
            self.request.settimeout(None)
        self.raw = _TimedReader(self.request)
        self.connection = self.request
        self.rfile = io.BufferedReader(self.raw, self.rbufsize)
        self.wfile = _SocketWriter(self.request)

    def handle(self):
        app = self.server.app
        first = True
        while True:
            # The head must arrive whole within its deadline; an idle keep-alive connection
            # gets longer to send the first byte of its next request.
            if first:
                self.raw.set_limit(("deadline", time.monotonic() + HEAD_TIMEOUT))
            else:
                self.raw.set_limit(("deadline", time.monotonic() + IDLE_TIMEOUT))
                try:
                    if not self.rfile.peek(1):
                        return
                except (OSError, socket.timeout):
                    return
                self.raw.set_limit(("deadline", time.monotonic() + HEAD_TIMEOUT))
            first = False
            try:
                head = read_head(self.rfile)
            except (errors.MinidockError) as exc:
                self._send_error(exc, keep_alive=False)
                return
            except (OSError, socket.timeout):
                return
            if head is None:
                return
            if "100-continue" in head.tokens("expect"):
                self.wfile.write(render_head(100, []))
            body = body_reader(head, self.rfile)
            request = Request(head, body, self.request)
            # The handler reads the body itself: each read of it may stall http.READ_TIMEOUT at most.
            # Everything else the handler does may legitimately take long (wait, pull).
            self.raw.set_limit(("idle", http.READ_TIMEOUT))
            _reply.hooks = []
            try:
                response = app(request)
            except Exception as exc:              # the app renders its own errors; this is a last net
                self.server.log_exception(head, exc)
                response = error_response(exc)
            if isinstance(response, (Hijack, StreamResponse)):
                _run_reply_hooks()                 # its head is about to go out; no waiting for the end
            try:
                keep = self._send(head, response, body)
                if keep:
                    self.raw.set_limit(("idle", http.READ_TIMEOUT))
                    body.drain()                   # unread body bytes must not be read as a request
            except (OSError, errors.MinidockError):
                return
            finally:
                _run_reply_hooks()
            if not keep:
                return

    def _send(self, head, response, body):
        """Write a response; returns whether the connection can carry another request."""
        keep = head.keep_alive
        base = list(self.server.base_headers())
        if isinstance(response, Hijack):
            self.raw.set_limit(None)
            if response.switch_headers is not None:
                self.wfile.write(render_head(101, base + response.switch_headers))
            else:
                self.wfile.write(upgrade_head(base + response.headers, upgrade=head.wants_upgrade))
            self.wfile.flush()
            try:
                response.run(HijackedConnection(self.request, self.rfile))
            finally:
                try:
                    self.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return False
        if isinstance(response, StreamResponse):
            # Whatever of the request body the handler left unread (a tar's trailing padding, say)
            # is read now: leftover bytes would make the client's socket look busy forever, and
            # a stream notices a client that left by seeing end-of-file there (peer_gone).
            body.drain()
            self.raw.set_limit(None)              # a stream may wait on a slow reader for ever
            chunked = head.version == "HTTP/1.1"
            headers = base + response.headers
            headers.append(("Transfer-Encoding", "chunked") if chunked else ("Connection", "close"))
            self.wfile.write(render_head(response.status, headers, head.version))
            self.wfile.flush()
            chunks = iter(response.chunks)
            try:
                for data in chunks:
                    if data:
                        self.wfile.write(chunk(data) if chunked else data)
                        self.wfile.flush()
                if chunked:
                    self.wfile.write(LAST_CHUNK)
                    self.wfile.flush()
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
            return keep and chunked
        self.raw.set_limit(None)
        headers = base + response.headers
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        if not no_body:
            headers.append(("Content-Length", str(len(response.body))))
        if not keep:
            headers.append(("Connection", "close"))
        data = render_head(response.status, headers, head.version)
        if head.method != "HEAD" and not no_body:
            data += response.body
        self.wfile.write(data)
        self.wfile.flush()
        return keep

    def _send_error(self, exc, keep_alive):
        response = error_response(exc)
        headers = list(self.server.base_headers()) + response.headers
        headers += [("Content-Length", str(len(response.body))), ("Connection", "close")]
        try:
            self.wfile.write(render_head(response.status, headers) + response.body)
            self.wfile.flush()
        except OSError:
            pass



def busy_response(message):
    """A complete 503 answer for a connection we will not serve (sent from the accept loop)."""
    body = json.dumps({"message": message}).encode() + b"\n"
    return render_head(503, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(body))), ("Connection", "close")]) + body


class _ServerMixin:
    """What every listener adds to socketserver: a deep backlog, a connection cap, and an
    accept loop that survives running out of descriptors or threads.

    - `listen(SOMAXCONN)`: the docker CLI connects non-blocking, and on a unix socket a full
      backlog refuses at once (EAGAIN) instead of queueing; dockerd also asks the kernel's max.
    - At most `max_connections` connections are served at once; one more gets a 503 written
      from the accept loop, without a thread.
    - accept() failing with EMFILE/ENFILE would leave the connection pending, the listener
      readable, and the loop spinning. We keep one spare descriptor: close it, accept the
      connection, answer 503, close it, take the spare back, and pause a little, doubling
      the pause while it lasts.
    """
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = socket.SOMAXCONN
    max_connections = MAX_CONNECTIONS

    def _init_limits(self):
        self._active = 0
        self._active_lock = threading.Lock()
        self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self._pause = 0.0

    def base_headers(self):
        return self.headers_fn() if self.headers_fn else []

    def log_exception(self, head, exc):
        if self.logger:
            self.logger.exception("unhandled error serving %s %s", head.method, head.target)

    def handle_error(self, request, client_address):
        # socketserver prints tracebacks to stderr with the client address, which is '' on
        # AF_UNIX; route them to our logger instead. A client that went away or stalled is
        # not an error of ours.
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, socket.timeout, ssl.SSLError)):
            if self.logger:
                self.logger.debug("connection dropped: %s", exc)
            return
        if self.logger:
            self.logger.exception("connection error")

    @property
    def active_connections(self):
        return self._active

    def get_request(self):
        try:
            conn, addr = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._out_of_descriptors(exc)
            raise
        self._pause = 0.0
        return self.wrap(conn), addr

    def wrap(self, conn):
        # TLS: wrap now, shake hands later in the connection's own thread (ConnectionHandler).
        if getattr(self, "tls_context", None) is not None:
            return self.tls_context.wrap_socket(conn, server_side=True,
                                                do_handshake_on_connect=False)
        return conn

    def _out_of_descriptors(self, exc):
        if self.logger:
            self.logger.warning("accept: %s; answering 503 and pausing %.2fs", exc.strerror,
                                self._pause or 0.05)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                conn, _ = self.socket.accept()
                self._refuse(conn, "the daemon is out of file descriptors; try again")
            except OSError:
                pass
            try:
                self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        self._pause = min(max(self._pause * 2, 0.05), 1.0)
        time.sleep(self._pause)

    def _refuse(self, conn, message):
        if isinstance(conn, ssl.SSLSocket):      # no plain-text answer on a TLS connection
            conn.close()
            return
        try:
            conn.setblocking(False)
            conn.send(busy_response(message))
        except OSError:
            pass
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.close()

    def process_request(self, request, client_address):
        with self._active_lock:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if full:
            self._refuse(request, f"too many connections (limit {self.max_connections}); try again")
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:            # "can't start new thread": out of processes or memory
            with self._active_lock:
                self._active -= 1
            if self.logger:
                self.logger.warning("cannot start a thread for a connection; answering 503")
            self._refuse(request, "the daemon cannot start a thread now; try again")

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def server_close(self):
        super().server_close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


class UnixServer(_ServerMixin, socketserver.ThreadingUnixStreamServer):
    pass


class TCPServer(_ServerMixin, socketserver.ThreadingTCPServer):
    pass


def make_server(address, app, headers_fn=None, logger=None, max_connections=None, tls_context=None):
    """Bind a threading HTTP server to `unix:///path` or `tcp://host:port`.

    A unix socket is created mode 0600 (umask around bind, so it is never briefly wider), and a
    stale socket file left by a killed daemon is removed first — but only when nothing answers on it.
    """
    scheme, _, rest = address.partition("://")
    if scheme == "unix":
        path = rest
        remove_stale_socket(path)
        old = os.umask(0o177)
        try:
            server = UnixServer(path, ConnectionHandler, bind_and_activate=True)
        finally:
            os.umask(old)
    elif scheme == "tcp":
        host, _, port = rest.rpartition(":")
        server = TCPServer((host.strip("[]") or "127.0.0.1", int(port)), ConnectionHandler)
    else:
        raise errors.InvalidParameter(f"unsupported listen address {address!r} (want unix:// or tcp://)")
    server._init_limits()
    server.tls_context = tls_context
    if max_connections:
        server.max_connections = max_connections
    server.app = app
    server.headers_fn = headers_fn
    server.logger = logger
    return server


def remove_stale_socket(path):
    """Unlink a socket file nobody listens on; refuse to touch a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.Conflict(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise errors.Conflict(f"another daemon is listening on {path}")
