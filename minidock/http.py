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
on bytes (tests/test_http.py). Limits a request must keep (checked here, on bytes): a head of at
most `MAX_HEAD_BYTES` and `MAX_HEADERS` headers (431 beyond), lines of `MAX_LINE_BYTES`,
Content-Length and chunk sizes in ASCII digits, no NUL bytes in the target or headers (400), JSON
bodies with `Content-Type: application/json`, at most `MAX_JSON_BODY` bytes and `MAX_JSON_DEPTH`
deep.

The socket side -- limits, timeouts, TLS, the accept loop, the connection handler that calls
the application -- is httpserver.py; it only moves bytes between a socket and these functions.
"""

import io
import json
import re
import struct
import time
import urllib.parse

from minidock import errors

MAX_LINE_BYTES = 8 * 1024        # one request line or header line
MAX_HEAD_BYTES = 64 * 1024       # the whole head, request line and headers
MAX_HEADERS = 100
MAX_JSON_BODY = 16 * 1024 * 1024  # handlers that parse JSON refuse larger bodies with 413
MAX_JSON_DEPTH = 64              # nesting of arrays/objects in a JSON body
READ_TIMEOUT = 60.0              # seconds a client may stall while sending a request body

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

    route = None        # what the application found for it while choosing how to serve it
    framing = True      # it has Content-Length, Transfer-Encoding or Expect (False: no body)

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version              # "HTTP/1.1" or "HTTP/1.0"
        self.headers = headers              # list of (lower-case name, value), in order
        if _PLAIN_TARGET.match(target):     # the common case, and what urlsplit would make of it
            self.path, self.query = target, {}
        else:
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


def take_head(buf):
    """Split one request head off the front of `buf`, a bytearray of what a connection has sent.

    The event loop's form of read_head(): it never waits. Returns the Head and deletes its bytes
    (and any blank lines before it) from `buf`, leaving the body and pipelined requests; returns
    None while the head is still incomplete. Raises exactly what read_head() raises for the same
    bytes, and raises as soon as a partial head is over the limits (a client cannot make the
    server buffer more than MAX_HEAD_BYTES of head).
    """
    start = 0
    while True:                     # blank lines before the request line (RFC 9112 2.2)
        if buf.startswith(b"\r\n", start):
            start += 2
        elif buf.startswith(b"\n", start):
            start += 1
        else:
            break
    if start:
        del buf[:start]             # consumed: they never count against the next head's limits
    # The head ends with an empty line right after a line end: CRLF CRLF, or LF LF from
    # lenient clients (and the mixed forms); the first such place is the end.
    crlf = buf.find(b"\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf < 0 and lf < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise errors.HeadersTooLarge("request headers too large")
        line_start = buf.rfind(b"\n") + 1
        if len(buf) - line_start > MAX_LINE_BYTES:
            kind = errors.InvalidParameter if line_start == 0 else errors.HeadersTooLarge
            raise kind("request line or header line too long")
        return None
    if lf < 0 or 0 <= crlf < lf:
        end, blank = crlf + 1, 2
    else:
        end, blank = lf + 1, 1
    raw = bytes(buf[:end])
    del buf[:end + blank]
    if len(raw) + blank <= MAX_LINE_BYTES:
        return parse_head(raw)      # too short to break a line or size limit
    # A long head: let read_head() apply every limit, in its order, with its messages.
    return read_head(io.BytesIO(raw + (b"\r\n" if blank == 2 else b"\n")))


def parse_head(raw):
    """Parse request line + header lines (without the final blank line) into a Head."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:      # latin-1 decodes any byte; kept for clarity
        raise errors.InvalidParameter("request head is not text")
    if text.count("\r\n") == text.count("\n"):
        lines = text.split("\r\n")         # every line ends with CRLF: the usual head
    else:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
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
    framed = False
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise errors.InvalidParameter("obsolete header line folding is not accepted")
        name, sep, value = line.partition(":")
        if not sep or not name or _BAD_NAME.search(name):
            raise errors.InvalidParameter(f"malformed header line: {line[:100]!r}")
        if "\x00" in value:
            raise errors.InvalidParameter(f"NUL byte in header {name[:40]!r}")
        name = name.lower()
        framed = framed or name in ("content-length", "transfer-encoding", "expect")
        headers.append((name, value.strip(" \t")))
    if len(headers) > MAX_HEADERS:
        raise errors.HeadersTooLarge(f"too many request headers (limit {MAX_HEADERS})")
    head = Head(method, target, version, headers)
    head.framing = framed
    if framed:
        _check_framing(head)
    return head


# Characters a header name may not hold (RFC 9110 5.6.2 delimiters and whitespace; a name
# with whitespace around it, "Host : x", is refused too, as request smuggling has used it).
_BAD_NAME = re.compile(r'[\s"(),/;<=>?@\[\\\]{}]')
# A target that urlsplit/unquote would return unchanged: no query, fragment, escapes, or
# a leading "//" (which urlsplit reads as a host).
_PLAIN_TARGET = re.compile(r"/(?!/)[A-Za-z0-9._~!$&'()*+,;=:@/-]*\Z")


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
    except TimeoutError:           # socket.timeout is TimeoutError
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

    def readinto(self, b):
        """Up to len(b) body bytes into `b`, straight from the connection when it can do that
        (an upload then crosses no intermediate buffer); the same errors as read()."""
        if self.remaining <= 0:
            return 0
        view = memoryview(b).cast("B")[:self.remaining]
        if not hasattr(self.rfile, "readinto"):
            data = self.read(len(view))
            view[:len(data)] = data
            return len(data)
        try:
            n = self.rfile.readinto(view)
        except TimeoutError:
            raise errors.RequestTimeout(f"request body stalled for {READ_TIMEOUT:g}s")
        if n < len(view):
            self.remaining = 0
            raise errors.InvalidParameter("request body ended before Content-Length bytes arrived")
        self.remaining -= n
        return n

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
        return self._remembering_failure(self._read, n)

    def readinto(self, b):
        """Up to len(b) bytes of the current chunk into `b`, straight from the connection when it
        can (an upload of 64 KiB chunks, as the docker CLI sends `docker import`, then crosses
        no intermediate bytes objects); 0 at the end of the body. The errors of read()."""
        if self.broken is not None:
            raise self.broken
        return self._remembering_failure(self._readinto, memoryview(b).cast("B"))

    def _remembering_failure(self, step, arg):
        """step(arg); a stall or a framing error is kept in `broken` and raised again by every
        later read."""
        try:
            return step(arg)
        except TimeoutError:           # socket.timeout is TimeoutError
            self.broken = errors.RequestTimeout(f"request body stalled for {READ_TIMEOUT:g}s")
            raise self.broken
        except errors.MinidockError as exc:
            self.broken = exc
            raise

    def _readinto(self, view):
        while not self.done:
            if self.left == 0:
                self._next_chunk()
                continue
            want = view[:min(len(view), self.left)]
            if hasattr(self.rfile, "readinto"):
                n = self.rfile.readinto(want)
            else:
                data = self.rfile.read(len(want))
                n = len(data)
                want[:n] = data
            if n < len(want):
                raise errors.InvalidParameter("chunked body ended inside a chunk")
            self.left -= n
            if self.left == 0 and self.rfile.read(2) != b"\r\n":
                raise errors.InvalidParameter("chunk not followed by CRLF")
            return n
        return 0

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
    """moby's rule for endpoints that take JSON: a body must say `application/json`
    (parameters such as charset allowed). An empty body passes whatever its Content-Type: moby's
    handlers look at the header only when there is a body, and Go's API client labels every
    body-less POST `text/plain` (the docker CLI 20.10 starts containers that way). A chunked
    body has no known length, so it needs the header (as in Go's net/http). This is what keeps
    a web page's form post from reaching a TCP daemon."""
    ct = head.header("content-type", "")
    if "chunked" not in head.tokens("transfer-encoding") and \
            head.header("content-length", "0") in ("0", ""):
        return
    if ct.split(";", 1)[0].strip().lower() == "application/json":
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

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_date(seconds):
    """The `Date` header's form of a Unix time (RFC 9110 5.6.7 IMF-fixdate, always GMT and
    English names, whatever the locale): 0 -> 'Thu, 01 Jan 1970 00:00:00 GMT'."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def render_head(status, headers, version="HTTP/1.1"):
    """The status line and headers of a response, as bytes, ending with the blank line."""
    reason = REASONS.get(status, "Status")
    lines = [f"{version} {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def render_response(response, head, keep, base_headers=()):
    """A complete Response as bytes for the request `head`: Content-Length framing (none for
    1xx, 204 and 304, which have no body), `Connection: close` when the connection ends after
    it, and no body bytes for HEAD (its Content-Length still says what GET would send)."""
    headers = list(base_headers) + response.headers
    no_body = response.status in (204, 304) or 100 <= response.status < 200
    if not no_body:
        headers.append(("Content-Length", str(len(response.body))))
    if not keep:
        headers.append(("Connection", "close"))
    data = render_head(response.status, headers, head.version)
    if head.method != "HEAD" and not no_body:
        data += response.body
    return data


def chunk(data):
    """One chunk of a chunked body. An empty `data` would end the body, so it is never sent.

    A join, one copy of `data`: bytes %-formatting with a large `%s` argument took ~10 times as
    long for the 1 MiB blocks of a large `docker logs` (568-651 against 54-63 us; the same
    for 64 KiB pieces, 2.2-2.3 us)."""
    if not data:
        return b""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


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
    """A complete response: status, headers and a body of bytes.

    `same_while`, when a handler sets it, is a function that stays true for as long as the very
    same request bytes would get this very same response: the server may then answer those
    bytes again without asking the handler (httpserver.Server._remember). Only for answers
    that depend on nothing but the request's bytes and that function (/_ping)."""

    same_while = None

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



def error_response(exc):
    """The one rendering of any exception as an HTTP error: status from its kind, JSON message."""
    return Response.json(errors.body_for(exc), status=errors.status_for(exc))

