"""HTTP/1.1 as the Docker Remote API uses it: requests, responses, chunks, hijacks and stream frames.

The Docker API is plain HTTP/1.1 (RFC 9112) with three twists this module handles:

1. **Streamed responses.** Pull progress, build output, events and stats are JSON documents sent one
   after another in a `Transfer-Encoding: chunked` body, for as long as the operation lasts. A chunk is
   `<size in hex>\\r\\n<bytes>\\r\\n`; a zero-size chunk ends the body.

2. **Hijacking.** `attach`, `exec start` and friends turn the connection into a raw, bidirectional
   byte pipe. The client asks with `Connection: Upgrade` + `Upgrade: tcp`; the server answers
   `HTTP/1.1 101 UPGRADED` and from then on both sides just write bytes (stdin one way, output the
   other). Old clients that do not ask for an upgrade get `200 OK` and the same raw bytes.

3. **Stream frames.** Without a TTY, stdout and stderr share the one pipe, so each piece of output
   is framed with an 8-byte header: `[stream, 0, 0, 0, size (4 bytes, big-endian)]` where stream is
   0 stdin, 1 stdout, 2 stderr. With a TTY the bytes go raw.

The request side accepts bodies with `Content-Length` or `Transfer-Encoding: chunked` (the docker CLI
chunks build contexts, image loads and `docker cp` uploads).

Everything protocol-shaped here is a function over bytes or over a buffered reader, so it is tested
on bytes (tests/test_http.py). The socketserver classes at the bottom only move bytes between the
socket and those functions and the application callable; they know nothing about containers.

Limits protect the daemon from its clients, careless or hostile:

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
import os
import re
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse

from minidock import errors

MAX_LINE_BYTES = 8 * 1024        # one request line or header line
MAX_HEAD_BYTES = 64 * 1024       # the whole head, request line and headers
MAX_HEADERS = 100
MAX_JSON_BODY = 16 * 1024 * 1024  # handlers that parse JSON refuse larger bodies with 413
MAX_JSON_DEPTH = 64              # nesting of arrays/objects in a JSON body
READ_TIMEOUT = 60.0              # seconds a client may stall while sending a request body
HEAD_TIMEOUT = 60.0              # seconds for a whole request head (and a TLS handshake)
IDLE_TIMEOUT = 300.0             # seconds a keep-alive connection may wait for its next request
MAX_CONNECTIONS = 1000           # connections served at once; more get a 503

REASONS = {
    100: "Continue", 101: "UPGRADED", 200: "OK", 201: "Created", 204: "No Content",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout",
    409: "Conflict",
    411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}

STDIN, STDOUT, STDERR = 0, 1, 2
FRAME_HEADER = struct.Struct(">BxxxL")


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

class Head:
    """A parsed request line and headers. Header names are kept lower-case."""

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version              # "HTTP/1.1" or "HTTP/1.0"
        self.headers = headers              # list of (lower-case name, value), in order
        split = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(split.path)
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)

    def header(self, name, default=None):
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def tokens(self, name):
        """The comma-separated, lower-cased tokens of a header such as Connection."""
        values = [v for k, v in self.headers if k == name.lower()]
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}

    @property
    def keep_alive(self):
        if self.version == "HTTP/1.0":
            return "keep-alive" in self.tokens("connection")
        return "close" not in self.tokens("connection")

    @property
    def wants_upgrade(self):
        return "upgrade" in self.tokens("connection") and bool(self.header("upgrade"))

    def __repr__(self):
        return f"<Head {self.method} {self.target}>"


def read_head(rfile):
    """Read one request head from a buffered binary reader.

    Returns None on a clean end of stream before the first byte (the client closed an idle
    keep-alive connection). Blank lines before the request line are skipped (RFC 9112 2.2).
    """
    lines = []
    total = 0
    while True:
        line = rfile.readline(MAX_LINE_BYTES + 1)
        if not line:
            if not lines:
                return None
            raise errors.InvalidParameter("incomplete request head: connection closed")
        if len(line) > MAX_LINE_BYTES:
            status_kind = errors.InvalidParameter if not lines else errors.HeadersTooLarge
            raise status_kind("request line or header line too long")
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise errors.HeadersTooLarge("request headers too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue            # tolerated leading empty line
            break
        lines.append(line)
        if len(lines) > MAX_HEADERS + 1:
            raise errors.HeadersTooLarge(f"too many request headers (limit {MAX_HEADERS})")
    return parse_head(b"".join(lines))


def parse_head(raw):
    """Parse request line + header lines (without the final blank line) into a Head."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:      # latin-1 decodes any byte; kept for clarity
        raise errors.InvalidParameter("request head is not text")
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise errors.InvalidParameter("empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise errors.InvalidParameter(f"malformed request line: {lines[0][:100]!r}")
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        raise errors.InvalidParameter(f"malformed method: {method[:20]!r}")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise errors.InvalidParameter(f"unsupported HTTP version: {version[:20]!r}")
    if not target.startswith("/"):
        # Absolute-form targets (http://host/path) are only for proxies; the docker CLI never sends them.
        split = urllib.parse.urlsplit(target)
        if split.scheme in ("http", "https") and split.path.startswith("/"):
            target = split.path + ("?" + split.query if split.query else "")
        else:
            raise errors.InvalidParameter(f"malformed request target: {target[:100]!r}")
    if "\x00" in target or "%00" in target:
        raise errors.InvalidParameter("NUL byte in request target")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise errors.InvalidParameter("obsolete header line folding is not accepted")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t\"(),/;<=>?@[\\]{}"):
            raise errors.InvalidParameter(f"malformed header line: {line[:100]!r}")
        if "\x00" in value:
            raise errors.InvalidParameter(f"NUL byte in header {name[:40]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    if len(headers) > MAX_HEADERS:
        raise errors.HeadersTooLarge(f"too many request headers (limit {MAX_HEADERS})")
    head = Head(method, target, version, headers)
    _check_framing(head)
    return head


_ASCII_DIGITS = re.compile(r"[0-9]+")
_HEX_DIGITS = re.compile(rb"[0-9a-fA-F]+")


def _check_framing(head):
    """Reject bodies whose length cannot be known (request smuggling, RFC 9112 6.3)."""
    te = head.tokens("transfer-encoding")
    lengths = {v for k, v in head.headers if k == "content-length"}
    if te and lengths:
        raise errors.InvalidParameter("both Transfer-Encoding and Content-Length given")
    if te and te != {"chunked"}:
        raise errors.NotImplementedKind(f"unsupported Transfer-Encoding: {', '.join(sorted(te))}")
    if len(lengths) > 1:
        raise errors.InvalidParameter("conflicting Content-Length headers")
    if lengths:
        value = lengths.pop()
        # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses
        # or reads as another number than the client meant.
        if not _ASCII_DIGITS.fullmatch(value) or len(value) > 18:
            raise errors.InvalidParameter(f"invalid Content-Length: {value[:30]!r}")


def body_reader(head, rfile):
    """A file-like reader over the request body, whatever its framing (empty when none)."""
    if "chunked" in head.tokens("transfer-encoding"):
        return ChunkedReader(rfile)
    return LengthReader(rfile, int(head.header("content-length", "0")))


def _read_body(rfile, n):
    try:
        return rfile.read(n)
    except socket.timeout:
        raise errors.RequestTimeout(f"request body stalled for {READ_TIMEOUT:g}s")


class LengthReader:
    """Reads exactly `length` bytes; a connection that ends early is an error, not a short body."""

    def __init__(self, rfile, length):
        self.rfile = rfile
        self.remaining = length
        self.length = length

    def read(self, n=-1):
        if self.remaining <= 0:
            return b""
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        data = _read_body(self.rfile, n)   # a buffered reader returns short only at end of stream
        if len(data) < n:
            self.remaining = 0
            raise errors.InvalidParameter("request body ended before Content-Length bytes arrived")
        self.remaining -= len(data)
        return data

    def drain(self):
        while self.read(65536):
            pass


class ChunkedReader:
    """Decodes a `Transfer-Encoding: chunked` body, chunk by chunk, into a plain byte stream."""

    def __init__(self, rfile):
        self.rfile = rfile
        self.left = 0          # bytes left in the current chunk
        self.done = False
        self.length = None
        self.broken = None     # the framing error once one was found: the stream is lost

    def _next_chunk(self):
        line = self.rfile.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise errors.InvalidParameter("chunked body ended before its last chunk")
        size_text = line.split(b";", 1)[0].strip()     # chunk extensions are ignored
        # Hex digits only: int(x, 16) would also take "0x10", "+5" or "1_0".
        if not _HEX_DIGITS.fullmatch(size_text) or len(size_text) > 16:
            raise errors.InvalidParameter(f"malformed chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            # Trailer fields, then the empty line that ends the body.
            for _ in range(MAX_HEADERS + 1):
                trailer = self.rfile.readline(MAX_LINE_BYTES + 1)
                if trailer in (b"\r\n", b"\n", b""):
                    break
            else:
                raise errors.HeadersTooLarge("too many chunk trailer lines")
            self.done = True
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(65536), b""))
        if self.broken is not None:
            # After a framing error we no longer know where chunks start: reading on would
            # take body bytes for a chunk size (and wait for thousands of bytes that never come).
            raise self.broken
        try:
            return self._read(n)
        except socket.timeout:
            self.broken = errors.RequestTimeout(f"request body stalled for {READ_TIMEOUT:g}s")
            raise self.broken
        except errors.MinidockError as exc:
            self.broken = exc
            raise

    def _read(self, n):
        out = []
        while n > 0 and not self.done:
            if self.left == 0:
                self._next_chunk()
                continue
            data = self.rfile.read(min(n, self.left))
            if not data:
                raise errors.InvalidParameter("chunked body ended inside a chunk")
            out.append(data)
            self.left -= len(data)
            n -= len(data)
            if self.left == 0:
                if self.rfile.read(2) not in (b"\r\n",):
                    raise errors.InvalidParameter("chunk not followed by CRLF")
            if out:
                break              # return what we have rather than wait for more chunks
        return b"".join(out)

    def drain(self):
        while self.read(65536):
            pass


def check_json_content_type(head):
    """moby's rule for endpoints that take JSON: the body must say `application/json`
    (parameters such as charset allowed); without a Content-Type only an empty body passes.
    A chunked body has no known length, so it needs the header (as in Go's net/http).
    This is what keeps a web page's form post from reaching a TCP daemon."""
    ct = head.header("content-type", "")
    if not ct:
        if "chunked" not in head.tokens("transfer-encoding") and \
                head.header("content-length", "0") in ("0", ""):
            return
    elif ct.split(";", 1)[0].strip().lower() == "application/json":
        return
    raise errors.InvalidParameter(f"Content-Type specified ({ct}) must be 'application/json'")


def read_json_body(reader, limit=MAX_JSON_BODY, allow_empty=True):
    """Read and parse a JSON request body, with the size limit JSON endpoints use.

    Nesting deeper than MAX_JSON_DEPTH and NUL characters in any string (a path, an argv
    entry, an environment variable: none can carry one to the kernel) are refused with 400."""
    data = b""
    while reader is not None and len(data) <= limit:
        more = reader.read(limit + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > limit:
        raise errors.PayloadTooLarge(f"request body larger than {limit} bytes")
    if not data.strip():
        if allow_empty:
            return None
        raise errors.InvalidParameter("a JSON request body is required")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidParameter(f"invalid JSON in request body: {exc}")
    except RecursionError:
        raise errors.InvalidParameter(f"JSON in request body nested deeper than {MAX_JSON_DEPTH}")
    check_json_value(value)
    return value


def check_json_value(value, max_depth=None):
    """Raise InvalidParameter for nesting deeper than max_depth or a NUL in any string."""
    max_depth = max_depth or MAX_JSON_DEPTH
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise errors.InvalidParameter("NUL character in a JSON string of the request body")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise errors.InvalidParameter(f"JSON in request body nested deeper than {max_depth}")
            if isinstance(item, dict):
                for key, child in item.items():
                    if "\x00" in key:
                        raise errors.InvalidParameter("NUL character in a JSON key of the request body")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

def render_head(status, headers, version="HTTP/1.1"):
    """The status line and headers of a response, as bytes, ending with the blank line."""
    reason = REASONS.get(status, "Status")
    lines = [f"{version} {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data):
    """One chunk of a chunked body. An empty `data` would end the body, so it is never sent."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def frame(stream, data):
    """An 8-byte-header stream frame (the multiplexed stdout/stderr format of attach and logs)."""
    return FRAME_HEADER.pack(stream, len(data)) + data


def parse_frames(buffer):
    """Split complete frames off `buffer`: returns ([(stream, data), ...], rest)."""
    frames = []
    while len(buffer) >= FRAME_HEADER.size:
        stream, size = FRAME_HEADER.unpack_from(buffer)
        if stream not in (STDIN, STDOUT, STDERR):
            raise ValueError(f"not a stream frame header: {bytes(buffer[:8])!r}")
        end = FRAME_HEADER.size + size
        if len(buffer) < end:
            break
        frames.append((stream, bytes(buffer[FRAME_HEADER.size:end])))
        buffer = buffer[end:]
    return frames, bytes(buffer)


def upgrade_head(extra_headers=(), upgrade=True):
    """The reply that turns an HTTP connection into a raw stream (`docker attach` and exec).
    Its Content-Type is raw-stream unless `extra_headers` name one (API v1.42 says
    multiplexed-stream when the stream carries stdout/stderr frames)."""
    extra_headers = list(extra_headers)
    headers = [] if any(k.lower() == "content-type" for k, _ in extra_headers) else \
        [("Content-Type", "application/vnd.docker.raw-stream")]
    if upgrade:
        return render_head(101, extra_headers + headers + [("Connection", "Upgrade"), ("Upgrade", "tcp")])
    return render_head(200, extra_headers + headers)


class Response:
    """A complete response: status, headers and a body of bytes."""

    def __init__(self, status=200, body=b"", headers=None, content_type=None):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type:
            self.headers.append(("Content-Type", content_type))

    @classmethod
    def json(cls, obj, status=200, headers=None):
        return cls(status, json.dumps(obj).encode() + b"\n", headers, "application/json")

    @classmethod
    def empty(cls, status=204, headers=None):
        return cls(status, b"", headers)


class StreamResponse:
    """A response whose body is produced over time by an iterator of byte strings.

    Sent with chunked encoding to HTTP/1.1 clients (to HTTP/1.0 ones raw, closing the connection).
    The iterator's `close()` runs when the client goes away, so a generator can clean up (cancel a
    pull, drop an event subscription) in a `finally:` block.
    """

    def __init__(self, chunks, status=200, headers=None, content_type="application/json"):
        self.status = status
        self.chunks = chunks
        self.headers = list(headers or [])
        if content_type:
            self.headers.append(("Content-Type", content_type))


class Hijack:
    """A response that takes over the connection: `run(conn)` gets a HijackedConnection.

    The server writes `101 UPGRADED` (or 200 for clients that did not ask to upgrade) and then
    hands over the socket. The connection is closed when `run` returns.
    """

    def __init__(self, run, headers=None, switch_headers=None):
        self.run = run
        self.headers = list(headers or [])
        # Another protocol's upgrade (a WebSocket): `101 Switching Protocols` with exactly these
        # headers instead of Docker's raw-stream ones.
        self.switch_headers = switch_headers


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
            import logging
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
            # The handler reads the body itself: each read of it may stall READ_TIMEOUT at most.
            # Everything else the handler does may legitimately take long (wait, pull).
            self.raw.set_limit(("idle", READ_TIMEOUT))
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
                    self.raw.set_limit(("idle", READ_TIMEOUT))
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


def error_response(exc):
    """The one rendering of any exception as an HTTP error: status from its kind, JSON message."""
    return Response.json(errors.body_for(exc), status=errors.status_for(exc))


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
    import stat
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
