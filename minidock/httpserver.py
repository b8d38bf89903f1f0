"""The HTTP server: one event loop holds every connection; threads only for work that takes time.

http.py holds the protocol as functions over bytes; this module is the socket side of it. A
daemon has many clients that mostly sit idle on keep-alive connections (each docker CLI call,
each docker-py client, compose's pool) and a few that stream for minutes (attach, logs -f,
events, pull). Giving each connection a blocked thread, as `socketserver` does, costs a thread
per idle client, and under load 200 runnable threads take turns at the GIL: the last in line
waits for all the others, which is what a p99 latency measures. So the work is split by what it
waits for:

- **The event loop** (one thread per listener) owns every connection that is between requests.
  It waits in `epoll_wait(2)` on the listening socket and on all those connections at once
  (`select.epoll`, non-blocking sockets, level-triggered), accepts, reads what arrives into the
  connection's buffer and cuts request heads off it with `http.take_head()`. A small body (a
  `Content-Length` up to `MAX_LOOP_BODY`) is read there too. Idle connections cost a few
  hundred bytes and no thread.
- **How a request runs** is the application's choice, per route (`app.serving_mode(head)`, see
  api/router.py): `INLINE` requests (`/_ping`) are answered in the loop the moment
  they are read; `QUICK` ones (lists and inspects answered from memory) go in arrival order to a
  fixed pool of `WORKERS` threads, so 200 clients are served first come, first served by a few
  threads instead of 200 threads at once; every other request (`THREAD`: it may wait on a
  container, the spawner, the network or the client: attach, logs, events, wait, build, pull,
  exec start, uploads) gets a thread of its own, with the socket in blocking mode, exactly as a
  thread-per-connection server would run it. Request threads are reused while there is work and
  end after `THREAD_IDLE` seconds without. A quick handler that returns a stream or a hijack
  hands the connection to such a thread too, so a worker is never held by a slow reader.
- **Ownership.** At any moment exactly one thread owns a connection: the loop while it is in
  the epoll set ("armed"), else the worker or request thread serving it, and it is never in
  the set then. The loop hands a connection over by taking it out (`EPOLL_CTL_DEL`, before the
  worker can see it); the owner gives it back by putting it in again (`EPOLL_CTL_ADD`, its last
  touch of it), which is thread-safe and needs no wake-up of the loop. Before giving it back,
  the owner serves anything already buffered: a pipelined request is in the buffer, not in the
  socket, and epoll would never report it. While the loop owns a connection, it stays in the
  set level-triggered for what the loop waits for (`EPOLLIN`, or `EPOLLOUT` while an answer
  waits for room), so a request the loop answers itself costs no `epoll_ctl` at all.
- **The fast path.** A client that sends the same bytes again and again (every docker command
  pings first; a health probe pings; a benchmark pings back to back) is answered by the loop
  with one `recv` and one `send`: when the application marked an answer as one it would give
  again to the same bytes (`http.Response.same_while`, /_ping while the daemon is not
  degraded), the server remembers it under the request's exact bytes for the second its
  `Date` header names (`Server._remember`), and the next recv() holding exactly those bytes
  gets it again without parsing or routing. Everything else takes the general path.
- **Writes** are tried at once without blocking; what the socket does not take is written by
  the loop when `EPOLLOUT` says there is room, and the connection reads no further request until
  its answer is out (a client that pipelines without reading stalls only itself).

Limits protect the daemon from its clients, careless or hostile (the byte-level ones are checked
by http.py's parsers; this module enforces them on the socket):

- a request head over `MAX_HEAD_BYTES` or with more than `MAX_HEADERS` headers is refused with
  431, a malformed one with 400 (Content-Length and chunk sizes are ASCII digits only; NUL bytes
  are refused in the target and in headers);
- the whole head must arrive within `HEAD_TIMEOUT` (a deadline, not a per-read timeout, so a
  client dribbling one byte a minute is cut off too), an idle keep-alive connection is closed
  after `IDLE_TIMEOUT`, and a body that stalls for `READ_TIMEOUT` ends with 408; the loop checks
  the deadlines of the connections it holds each `poll_interval`;
- JSON bodies must say `Content-Type: application/json` (moby's rule, `check_json_content_type`),
  and may nest `MAX_JSON_DEPTH` deep at most, without NUL characters in strings;
- the listener asks for the kernel's full backlog (`listen(SOMAXCONN)`: the docker CLI connects
  non-blocking, and a full unix-socket backlog refuses at once with EAGAIN instead of queueing),
  serves at most `MAX_CONNECTIONS` at once (one more gets a 503 from the loop), and survives
  running out of descriptors or threads (see `Server._out_of_descriptors`);
- TCP listeners may be TLS (a context made by the daemon from its --tls* flags): the handshake
  runs in the loop, non-blocking, under the head deadline (`do_handshake()` raises
  SSLWantReadError or SSLWantWriteError until it is done; the loop waits for that readiness and
  tries again). A TLS socket may hold decrypted bytes that epoll cannot see (`pending()`), so
  they are read before the connection is re-armed.

What you can observe: `ls /proc/<daemon>/task | wc -l` stays at a handful of threads however
many keep-alive clients are connected, and `/proc/<daemon>/fd` holds one descriptor per client
plus the epoll instance (`anon_inode:[eventpoll]`) and the loop's wake-up pipe. The epoll
instance's `/proc/<daemon>/fdinfo/<fd>` lists one `tfd:` line per connection the loop owns
(`events: 19` is EPOLLIN|EPOLLERR|EPOLLHUP, `1c` EPOLLOUT|EPOLLERR|EPOLLHUP), none for one a
thread is serving; `strace -c -p <loop thread>` under a stream of pings shows one `recvfrom`
and one `sendto` per request and no `epoll_ctl`.
"""

import errno
import io
import json
import logging
import os
import queue
import select
import socket
import stat
import threading
import time

from minidock import errors, http, workers
from minidock.http import (LAST_CHUNK, Hijack, StreamResponse, body_reader, chunk,
                           error_response, render_head, render_response, take_head, upgrade_head)

# ssl is imported only by a daemon with a TLS listener (Server with a tls_context; the daemon's
# tls_settings made that context): with libssl it is ~1 MB of every idle daemon's memory, and
# without TLS no socket here is ever an SSLSocket. _use_tls() widens these two then.
_WOULD_BLOCK = (BlockingIOError, InterruptedError)     # + ssl.SSLWantReadError/WriteError
_TLS_SOCKETS = ()                                       # (ssl.SSLSocket,)


def _use_tls():
    global _WOULD_BLOCK, _TLS_SOCKETS
    import ssl
    _WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    _TLS_SOCKETS = (ssl.SSLSocket,)


HEAD_TIMEOUT = 60.0              # seconds for a whole request head (and a TLS handshake)
IDLE_TIMEOUT = 300.0             # seconds a keep-alive connection may wait for its next request
                                 # (and an answer may wait for a client that does not read it)
MAX_CONNECTIONS = 1000           # connections served at once; more get a 503
WORKERS = 4                      # the pool that answers QUICK requests in arrival order
MAX_LOOP_BODY = 1024 * 1024      # a QUICK/INLINE request body read by the loop; larger: own thread
THREAD_IDLE = 30.0               # seconds an idle request thread waits for more work, then ends
ACCEPTS_PER_WAKEUP = 64          # new connections taken per wake-up, so readers get a turn too
RECV_BYTES = 65536
MAX_RECV = 4 << 20                      # one recv() of a large body read asks for at most this
MEMO_ENTRIES = 64                # distinct request byte strings whose answers the loop remembers
MEMO_KEY_BYTES = 1024            # longer requests are never remembered

# How a request is run (the application says, per route: app.serving_mode(head)).
INLINE = "inline"                # answered in the event loop itself: only for microsecond handlers
QUICK = "quick"                  # the worker pool, first come first served: handlers that never wait
THREAD = "thread"                # a thread of its own: anything that may wait or stream

_log = logging.getLogger("minidock.http")


class HijackedConnection:
    """The raw byte pipe after a hijack: input includes anything the client already pipelined."""

    def __init__(self, sock, reader):
        self.sock = sock
        self.reader = reader

    def recv(self, n=65536):
        """Read what is available (buffered bytes first); b'' at end of input."""
        buffered = self.reader.take(n)
        if buffered:
            return buffered
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
        if isinstance(sock, _TLS_SOCKETS):
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


DISCARD_READS = 64                      # recv()s of unread input dropped before a close, at most


def discard_unread(sock):
    """Read and drop what the client sent that nobody read, before the socket is closed.

    A socket closed with unread input does not end quietly: TCP answers with a reset, and a
    unix socket marks its peer ECONNRESET, which the peer's next read returns *instead of*
    end-of-file once it has read what was sent to it. `docker exec -it` of a command that
    never reads its stdin ended that way 6 times in 120 here ("read: connection reset by
    peer", exit status 1) when the CLI had sent input the command never took. After
    shutdown(SHUT_RDWR) a unix peer cannot send more (EPIPE), so what is queued is all there
    is; a TCP peer may keep sending, hence the bound."""
    try:
        sock.setblocking(False)
        for _ in range(DISCARD_READS):
            if not sock.recv(RECV_BYTES):
                return
    except OSError:                     # BlockingIOError: nothing (more) to drop; or gone
        pass


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


def _take_reply_hooks():
    hooks, _reply.hooks = getattr(_reply, "hooks", None), None
    return hooks


def _run_hooks(hooks):
    for fn in hooks or ():
        try:
            fn()
        except Exception:
            _log.exception("after-reply hook failed")


def busy_response(message):
    """A complete 503 answer for a connection we will not serve (sent from the loop)."""
    body = json.dumps({"message": message}).encode() + b"\n"
    return render_head(503, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(body))), ("Connection", "close")]) + body


# ---------------------------------------------------------------------------------------------
# A connection, and the blocking side of it that request threads use
# ---------------------------------------------------------------------------------------------

class _Connection:
    """One client connection: its socket and buffers, and where its current request stands.

    Only the thread that owns the connection (see the module docstring) touches these fields;
    the loop reads `armed` and `deadline` only of connections armed in its epoll set."""

    __slots__ = ("sock", "fd", "tls", "inbuf", "outbuf", "after", "pending", "armed", "events",
                 "deadline", "head_deadline", "handshaking", "eof", "ready", "key")

    def __init__(self, sock, tls):
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.inbuf = bytearray()    # bytes received and not yet consumed by a request
        self.outbuf = None          # a memoryview of an answer still being written
        self.after = None           # (keep the connection?, after-reply hooks) once it is written
        self.pending = None         # (head, mode, body length, memo key) of a request waiting for its body
        self.armed = False          # in the epoll set: the loop owns it
        self.events = 0             # while armed: what the loop waits for (EPOLLIN or EPOLLOUT)
        self.deadline = None        # while armed: when the loop gives up waiting
        self.head_deadline = None   # when the head being received must be complete
        self.handshaking = tls      # a TLS handshake still to finish
        self.eof = False            # the client shut down its sending side
        self.ready = False          # armed for a new request, nothing buffered: the fast path may read it
        self.key = None             # the bytes of one recv() that began a request (Server._remember)


class _ConnReader:
    """Blocking reads of a connection for a request's own thread: the bytes the loop already
    buffered first, then the socket, each read under the connection's current time limit.

    A socket timeout bounds each recv(), not a whole request head: a client dribbling one byte
    every 59 seconds would keep a thread forever. So the limit is one of three modes:

        ("deadline", t)   every read fails once monotonic time t has passed (a request head)
        ("idle", s)       each read may wait at most s seconds (a body: large uploads are fine,
                          a stalled one is not)
        None              no limit (the handler is working, streaming, or the connection is
                          hijacked and belongs to the application)

    settimeout() is only called when the value changes, so a hijacked connection, whose reader
    and writer threads share the socket, never has its timeout changed under it. What is read
    and not consumed stays in the connection's buffer for the next request.
    """

    def __init__(self, conn):
        self.conn = conn
        self.sock = conn.sock
        self.limit = None
        self.sock.settimeout(None)           # blocking: this thread owns the connection now
        self._current = None

    def set_limit(self, limit):
        self.limit = limit
        if limit is None:
            self._apply(None)

    def _apply(self, timeout):
        if timeout != self._current:
            self.sock.settimeout(timeout)
            self._current = timeout

    def _recv(self, size):
        """One recv() of at most `size` bytes under the current limit."""
        self._arm()
        return self.sock.recv(size)

    def _arm(self):
        """The socket timeout the next read may wait, from the limit mode."""
        if self.limit is None:
            self._apply(None)
        elif self.limit[0] == "idle":
            self._apply(self.limit[1])
        else:
            left = self.limit[1] - time.monotonic()
            if left <= 0:
                raise socket.timeout("request head not received in time")
            self._apply(left)

    def _fill(self):
        """One recv() into the buffer; False at end of stream."""
        data = self._recv(RECV_BYTES)
        if not data:
            return False
        self.conn.inbuf += data
        return True

    def read(self, n=-1):
        buf = self.conn.inbuf
        if n is None or n < 0:
            while self._fill():
                pass
            n = len(buf)
        if len(buf) >= n:
            data = bytes(buf[:n])
            del buf[:n]                      # a bytearray drops its front in O(1)
            return data
        # A read larger than what is buffered (an upload read a MiB at a time): the buffered
        # bytes, then recv()s of what is still missing, joined once. Going through the buffer
        # instead copied each byte three more times (append, slice, bytes()): a 64 MiB import
        # ran at 165 instead of 215 MiB/s.
        parts = [bytes(buf)] if buf else []
        got = len(buf)
        buf.clear()
        while got < n:
            data = self._recv(min(n - got, MAX_RECV))
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def readinto(self, b):
        """Fill `b` (a writable buffer) from the buffered bytes, then straight from the socket:
        no copy on the way; fewer bytes only at end of stream."""
        view, buf = memoryview(b).cast("B"), self.conn.inbuf
        got = min(len(buf), len(view))
        if got:
            view[:got] = buf[:got]
            del buf[:got]
        while got < len(view):
            self._arm()
            k = self.sock.recv_into(view[got:])
            if not k:
                break
            got += k
        return got

    def readline(self, limit=-1):
        buf = self.conn.inbuf
        searched = 0
        while True:
            i = buf.find(b"\n", searched)
            if i >= 0:
                end = i + 1
                break
            searched = len(buf)
            if 0 <= limit <= len(buf) or not self._fill():
                end = len(buf)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def take(self, n):
        """Up to n buffered bytes, without reading the socket (b'' when none are buffered)."""
        buf = self.conn.inbuf
        data = bytes(buf[:n])
        del buf[:n]
        return data


class _SocketWriter:
    """Unbuffered writes with sendall (a raw socket file may write only part of a buffer)."""

    def __init__(self, sock):
        self.sock = sock

    def write(self, data):
        self.sock.sendall(data)
        return len(data)

    def flush(self):
        pass


class _ThreadCache:
    """Threads for requests that take time: a new one when none is idle, reused while work
    comes, gone after `THREAD_IDLE` seconds without (so 200 idle connections hold none).

    `_idle` counts threads waiting for a job that nobody has promised a job to yet; submit()
    promises one (decrements it) before queueing, so a thread that times out leaves only if
    its place was not promised, and the promised job always finds a thread."""

    def __init__(self):
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, fn, *args):
        """Run fn(*args) on a request thread; RuntimeError when no thread can be started."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put((fn, args))
                return
        threading.Thread(target=self._run, args=(fn, args), name="http-request",
                         daemon=True).start()

    def _run(self, fn, args):
        while fn is not None:
            try:
                fn(*args)
            except Exception:
                _log.exception("request thread failed")
            fn = args = None
            with self._lock:
                self._idle += 1
            try:
                fn, args = self._jobs.get(timeout=THREAD_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle:           # nobody was promised this thread: end it
                        self._idle -= 1
                        return
                fn, args = self._jobs.get()  # a job is on its way to an idle thread: take it

    def close(self):
        """Let the idle threads end now."""
        with self._lock:
            n, self._idle = self._idle, 0
        for _ in range(n):
            self._jobs.put((None, None))


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

_NO_HEAD = http.Head("GET", "/", "HTTP/1.1", [])     # how an answer to an unparsable head is framed
# Level-triggered: while the loop owns a connection it stays in the epoll set with one of these,
# and epoll reports it for as long as it is readable (writable), so nothing needs re-arming.
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class Server:
    """A listening socket, its event loop, its worker pool and its request threads."""

    request_queue_size = socket.SOMAXCONN
    max_connections = MAX_CONNECTIONS
    wall_clock = staticmethod(time.time)       # what the Date header says (a test may fix it)

    def __init__(self, listener, app, headers_fn=None, logger=None, tls_context=None):
        self.socket = listener
        self.server_address = listener.getsockname()
        self.app = app
        self.headers_fn = headers_fn
        self.logger = logger
        self.tls_context = tls_context
        if tls_context is not None:
            _use_tls()
        self._mode_fn = getattr(app, "serving_mode", None)
        self._conns = {}                       # fd -> _Connection, every open connection
        self._memo = {}                        # request bytes -> (second, same_while, answer)
        self._date = (None, None)              # (second, ("Date", its IMF-fixdate))
        self._lock = threading.Lock()          # guards _conns (opened by the loop, closed by owners)
        self._quick = queue.SimpleQueue()      # (conn, head, body) for the worker pool, FIFO
        self._threads = _ThreadCache()
        self._workers = []              # their names (started by workers.start_thread)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        listener.setblocking(False)
        self._epoll.register(listener.fileno(), select.EPOLLIN)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        # One spare descriptor for the EMFILE case (see _out_of_descriptors).
        self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self._pause = 0.0
        self._resume_at = None
        self._stop = False
        self._closed = False
        self._stopped = threading.Event()
        self._stopped.set()
        # The workers start with the server, not with serve_forever() in its own thread: the
        # threads a server has are all there once make_server() has returned.
        self._start_workers()

    # -- what the daemon and the tests look at -------------------------------------------------
    @property
    def active_connections(self):
        return len(self._conns)

    def base_headers(self, second=None):
        """The headers every answer carries: the application's (headers_fn), then `Date` (RFC
        9110 6.6.1: a server with a clock sends it), for the wall-clock `second` (default now)."""
        if second is None:
            second = int(self.wall_clock())
        date = self._date
        if date[0] != second:                  # formatted once a second, not once per answer
            date = self._date = (second, ("Date", http.imf_date(second)))
        headers = self.headers_fn() if self.headers_fn else []
        return headers + [date[1]]

    def log_exception(self, head, exc):
        (self.logger or _log).exception("unhandled error serving %s %s", head.method, head.target)

    # -- the loop ------------------------------------------------------------------------------
    def serve_forever(self, poll_interval=0.5):
        """Run the event loop until shutdown(); deadlines are checked every `poll_interval`."""
        self._stopped.clear()
        # The loop runs once per request on a busy keep-alive connection: what it uses is
        # looked up once, here, not per event.
        poll = self._epoll.poll
        conns_get = self._conns.get
        memo_get = self._memo.get
        monotonic, wall = time.monotonic, self.wall_clock
        try:
            next_sweep = monotonic() + poll_interval
            while not self._stop:
                timeout = poll_interval
                if self._resume_at is not None:
                    timeout = max(0.0, min(timeout, self._resume_at - monotonic()))
                try:
                    events = poll(timeout)
                except InterruptedError:
                    continue
                idle_deadline = monotonic() + IDLE_TIMEOUT
                second = int(wall())
                for fd, mask in events:
                    conn = conns_get(fd)
                    if conn is None:
                        self._on_own_fd(fd)
                    elif not conn.ready or mask != _IN:
                        conn.ready = False
                        self._on_event(conn, mask)
                    else:
                        # The fast path: a new request on a plain connection with nothing
                        # buffered. One recv(); if exactly those bytes were answered this second
                        # by the general path with an answer it may repeat (see _remember), one
                        # send() of that answer, and the connection stays as it is: armed for
                        # reading, no epoll_ctl, no parsing, no allocation but the recv's.
                        sock = conn.sock
                        try:
                            data = sock.recv(RECV_BYTES)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            self._close(conn)
                            continue
                        known = memo_get(data)
                        try:
                            fresh = known is not None and known[0] == second and known[1]()
                        except Exception:          # the application's same_while() failed
                            (self.logger or _log).exception("checking a remembered answer")
                            fresh = False
                        if not fresh:
                            conn.ready = False
                            self._on_event(conn, mask, received=data)
                            continue
                        answer = known[2]
                        try:
                            sent = sock.send(answer)
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError:
                            self._close(conn)
                            continue
                        conn.head_deadline = None
                        conn.deadline = idle_deadline
                        if sent != len(answer):
                            conn.ready = False
                            self._on_event(conn, mask, unsent=answer[sent:])
                now = monotonic()
                if self._resume_at is not None and now >= self._resume_at:
                    self._resume_at = None
                    self._epoll.modify(self.socket.fileno(), select.EPOLLIN)
                if now >= next_sweep:
                    try:
                        self._sweep(now)
                    except Exception:           # the loop must outlive any one connection
                        (self.logger or _log).exception("checking connection deadlines")
                    next_sweep = now + poll_interval
        finally:
            self._stop = False
            self._stopped.set()

    def shutdown(self):
        """Stop serve_forever() (running in another thread) and wait until it has returned."""
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._stopped.wait()

    def server_close(self):
        """Close the listener, the connections the loop holds, and the worker pool. Requests
        being served finish on their own threads and then close their connections."""
        if self._closed:
            return
        self._closed = True
        try:
            self._epoll.unregister(self.socket.fileno())
        except (OSError, ValueError):
            pass
        self.socket.close()
        for conn in list(self._conns.values()):
            if conn.armed:
                self._close(conn)
        for _ in self._workers:
            self._quick.put(None)
        self._threads.close()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    def _start_workers(self):
        while len(self._workers) < WORKERS:
            name = f"http-worker-{len(self._workers)}"
            workers.start_thread(self._work, name)      # not waited for (workers.start_thread)
            self._workers.append(name)

    def _on_own_fd(self, fd):
        """An event on the listener or on the wake-up pipe."""
        if fd == self.socket.fileno():
            self._accept()
        elif fd == self._wake_r:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    def _on_event(self, conn, mask, received=None, unsent=None):
        """An event on a connection the loop owns (the general path). `received`: what the
        fast path has read already; `unsent`: the rest of an answer it could not send whole."""
        try:
            if unsent is not None:
                if self._write(conn, unsent, True, None):
                    self._drive(conn)
                return
            if conn.outbuf is not None:
                if self._write_some(conn):
                    self._drive(conn)
                return
            if conn.handshaking and not self._handshake(conn):
                return
            if received is not None:
                if not received:
                    conn.eof = True
                else:
                    conn.inbuf += received
                    if len(received) <= MEMO_KEY_BYTES and len(conn.inbuf) == len(received):
                        conn.key = received      # this recv() begins a request: a memo key, maybe
                self._drive(conn)
            elif self._read(conn):
                self._drive(conn)
        except Exception:
            (self.logger or _log).exception("connection error")
            self._close(conn)

    def _sweep(self, now):
        """Give up on connections the loop holds whose deadline has passed."""
        for conn in list(self._conns.values()):
            if conn.armed and conn.deadline is not None and conn.deadline <= now:
                conn.ready = False
                if conn.pending is not None and conn.outbuf is None:
                    # Its head was read: the client is owed an answer, and a stalled body gets 408.
                    timeout = errors.RequestTimeout(f"request body stalled for {http.READ_TIMEOUT:g}s")
                    self._fail(conn, timeout)
                else:
                    self._close(conn)      # a head not sent in time, an idle or unread connection

    # -- accepting -----------------------------------------------------------------------------
    def _accept(self):
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue                   # that client is gone; the next one may be fine
                # Out of descriptors (EMFILE, ENFILE) or kernel memory, or anything else that
                # would fail again at once: answer what we can and pause instead of spinning.
                self._out_of_descriptors(exc)
                return
            self._pause = 0.0
            try:
                self._admit(sock)
            except Exception:
                (self.logger or _log).exception("accepting a connection")
                sock.close()

    def _admit(self, sock):
        if len(self._conns) >= self.max_connections:
            self._refuse(sock, f"too many connections (limit {self.max_connections}); try again")
            return
        try:
            sock.setblocking(False)
            if self.tls_context is not None:
                # Wrapped now, handshake later in the loop (_handshake), never blocking here.
                sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            sock.close()
            return
        conn = _Connection(sock, self.tls_context is not None)
        conn.head_deadline = conn.deadline = time.monotonic() + HEAD_TIMEOUT
        conn.armed, conn.events, conn.ready = True, _IN, not conn.tls
        self._epoll.register(conn.fd, _IN)     # may fail (ENOSPC: max_user_watches): not yet listed
        with self._lock:
            self._conns[conn.fd] = conn

    def _refuse(self, sock, message):
        if self.tls_context is not None:       # no plain-text answer on a TLS connection
            sock.close()
            return
        try:
            sock.setblocking(False)
            sock.send(busy_response(message))
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _out_of_descriptors(self, exc):
        """accept() failing with EMFILE/ENFILE leaves the connection pending and the listener
        readable: a loop would spin. We keep one spare descriptor: close it, accept the
        connection, answer 503, close it, take the spare back, and stop listening for a
        moment, doubling the pause while it lasts (never sleeping: other clients are served)."""
        pause = self._pause or 0.05
        (self.logger or _log).warning("accept: %s; answering 503 and pausing %.2fs", exc.strerror, pause)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                sock, _ = self.socket.accept()
                self._refuse(sock, "the daemon is out of file descriptors; try again")
            except OSError:
                pass
            try:
                self._spare = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        self._pause = min(max(self._pause * 2, 0.05), 1.0)
        self._epoll.modify(self.socket.fileno(), 0)
        self._resume_at = time.monotonic() + self._pause

    # -- reading and dispatching (by whichever thread owns the connection) ---------------------
    def _handshake(self, conn):
        """One step of a non-blocking TLS handshake; True once it is done."""
        import ssl                              # loaded by _use_tls() already: a dict look-up
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._arm(conn, _IN)
            return False
        except ssl.SSLWantWriteError:
            self._arm(conn, _OUT)
            return False
        except (ssl.SSLError, OSError) as exc:
            (self.logger or _log).debug("TLS handshake failed: %s", exc)
            self._close(conn)
            return False
        conn.handshaking = False
        return True

    def _read(self, conn):
        """Move what the socket has into the buffer; False when the connection is gone."""
        sock = conn.sock
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except _WOULD_BLOCK:
                return True
            except OSError:
                self._close(conn)
                return False
            if not data:
                conn.eof = True                # serve what was sent before the end first
                return True
            conn.inbuf += data
            if conn.tls and sock.pending():
                continue                       # decrypted bytes epoll cannot see
            if len(data) < RECV_BYTES or len(conn.inbuf) > http.MAX_HEAD_BYTES + MAX_LOOP_BODY:
                return True

    def _mode(self, head):
        if self._mode_fn is None:
            return QUICK
        try:
            return self._mode_fn(head)
        except Exception:
            return THREAD

    def _drive(self, conn):
        """Serve the requests in the connection's buffer until one has to wait: for more bytes
        (the connection is re-armed), for a worker or a thread (handed over), or for its answer
        to be written. Called by whichever thread owns the connection."""
        while True:
            if self._closed:
                self._close(conn)
                return
            if conn.pending is None:
                if not conn.inbuf:                 # the common case after an answer
                    if self._wait_for_bytes(conn, body=False):
                        continue
                    return
                key, conn.key = conn.key, None  # a key only for the request these bytes begin
                try:
                    head = take_head(conn.inbuf)
                except errors.MinidockError as exc:
                    self._fail(conn, exc)
                    return
                if head is None:
                    if self._wait_for_bytes(conn, body=False):
                        continue
                    return
                conn.head_deadline = None
                if conn.inbuf or head.framing:
                    key = None                 # the bytes held more than this request's head
                mode = self._mode(head)
                length = 0
                if mode != THREAD and head.framing:
                    # Bodies the loop reads: a known length, small. A chunked body or a client
                    # waiting for `100 Continue` is read by a thread, like any large upload.
                    if "chunked" in head.tokens("transfer-encoding") or "100-continue" in head.tokens("expect"):
                        mode = THREAD
                    else:
                        length = int(head.header("content-length", "0"))
                        if length > MAX_LOOP_BODY:
                            mode = THREAD
                if mode == THREAD:
                    self._hand_over(conn, self._serve_in_thread, head)
                    return
                conn.pending = (head, mode, length, key)
            head, mode, length, key = conn.pending
            if len(conn.inbuf) < length:
                if self._wait_for_bytes(conn, body=True):
                    continue
                return
            conn.pending = None
            body = bytes(conn.inbuf[:length])
            del conn.inbuf[:length]
            if mode == QUICK:
                self._release(conn)            # before the put: from then on a worker owns it
                self._quick.put((conn, head, body))
                return
            if not self._answer(conn, head, body, key):
                return

    def _wait_for_bytes(self, conn, body):
        """Re-arm the connection for reading with the right deadline; True instead when more
        bytes were already available (decrypted TLS data that epoll cannot see)."""
        if conn.tls and not conn.eof and conn.sock.pending():
            return self._read(conn)
        if conn.eof:
            self._at_eof(conn)
            return False
        now = time.monotonic()
        if body:
            conn.deadline = now + http.READ_TIMEOUT          # per read, as for a thread's body
        elif conn.head_deadline is not None:
            conn.deadline = conn.head_deadline
        elif conn.inbuf:
            conn.head_deadline = conn.deadline = now + HEAD_TIMEOUT   # a head has begun
        else:
            conn.deadline = now + IDLE_TIMEOUT                # between requests
            conn.ready = not conn.tls          # the next event may take the loop's fast path
        self._arm(conn, _IN)                   # the last step: the loop may own it from here on
        return False

    def _at_eof(self, conn):
        """The client stopped sending, and what it sent is not a whole request."""
        if conn.pending is not None:
            self._fail(conn, errors.InvalidParameter("request body ended before Content-Length bytes arrived"))
        elif conn.inbuf.strip(b"\r\n"):
            self._fail(conn, errors.InvalidParameter("incomplete request head: connection closed"))
        else:
            self._close(conn)

    def _arm(self, conn, events):
        """Have the loop wait for `events` on the connection. The loop, owning it already,
        changes what it waits for only when that differs (an answer waiting for room to be
        written, then the next request); a worker or request thread gives the connection
        back to the loop: from the EPOLL_CTL_ADD on, the loop owns it and the thread must not
        touch it any more."""
        try:
            if conn.armed:
                if conn.events != events:
                    self._epoll.modify(conn.fd, events)
                    conn.events = events
                return
            conn.armed, conn.events = True, events   # before the ADD: the loop may see it at once
            self._epoll.register(conn.fd, events)
        except (OSError, ValueError):          # the server was closed under us
            conn.armed = False
            self._close(conn)

    def _release(self, conn):
        """The loop hands the connection over to a worker or a request thread: out of the
        epoll set (EPOLL_CTL_DEL), so no event of it reaches the loop until it is given back.
        (An EPOLL_CTL_MOD to no events would not do: epoll reports EPOLLHUP and EPOLLERR
        whatever the mask says.) A no-op when a thread, not the loop, owns it."""
        conn.ready = False
        if conn.armed:
            conn.armed = False
            try:
                self._epoll.unregister(conn.fd)
            except (OSError, ValueError):      # the server was closed under us
                pass

    def _hand_over(self, conn, fn, *args):
        self._release(conn)
        try:
            self._threads.submit(fn, conn, *args)
        except RuntimeError:                   # "can't start new thread": out of processes or memory
            (self.logger or _log).warning("cannot start a thread for a request; answering 503")
            self._write(conn, busy_response("the daemon cannot start a thread now; try again"), False, None)

    # -- answering quick requests (the loop or a worker) ---------------------------------------
    def _work(self):
        while True:
            item = self._quick.get()
            if item is None:
                return
            conn, head, body = item
            try:
                if self._answer(conn, head, body):
                    self._drive(conn)
            except Exception:
                (self.logger or _log).exception("connection error")
                self._close(conn)

    def _answer(self, conn, head, body, key=None):
        """Run the application for a request whose body is in memory and start writing its
        answer; True when it is written and the connection can carry another request. `key`:
        the request's exact bytes when one recv() held it and nothing else (see _remember)."""
        request = Request(head, http.LengthReader(io.BytesIO(body) if body else None, len(body)), conn.sock)
        _reply.hooks = []
        try:
            response = self.app(request)
        except Exception as exc:              # the app renders its own errors; this is a last net
            self.log_exception(head, exc)
            response = error_response(exc)
        hooks = _take_reply_hooks()
        if isinstance(response, (Hijack, StreamResponse)):
            _run_hooks(hooks)                  # its head is about to go out; no waiting for the end
            self._hand_over(conn, self._finish_in_thread, head, request, response)
            return False
        keep = head.keep_alive
        second = int(self.wall_clock())
        data = render_response(response, head, keep, self.base_headers(second))
        if key is not None and keep and not hooks and response.same_while is not None:
            self._remember(key, second, response.same_while, data)
        return self._write(conn, data, keep, hooks)

    def _remember(self, key, second, same_while, answer):
        """Remember the answer to a request, for the loop's fast path (serve_forever).

        Most requests on a busy connection are the same few dozen bytes, again and again: the
        docker CLI and docker-py ping before they talk, health probes ping every few seconds,
        a benchmark pings back to back. When the application marks its response as one it
        would give again to the same bytes (`Response.same_while`, a function that stays true
        while that holds: /_ping while the daemon is not degraded), the complete answer is
        kept under the exact bytes of the request, with the wall-clock second its Date header
        names. The loop then answers the same bytes in the same second, while same_while()
        holds, with a dict lookup and one send(). Anything else -- another second, one byte
        different, a pipelined request or a body in the same read, a TLS connection -- takes
        the general path, which renders the answer afresh (and remembers it again). So the
        fast answer is, byte for byte, what the general path sent to those bytes that second.
        Only keep-alive answers without after-reply hooks are kept; at most MEMO_ENTRIES of
        them (then the memo starts over: a client varying its bytes only costs itself time)."""
        memo = self._memo
        if len(memo) >= MEMO_ENTRIES and key not in memo:
            memo.clear()
        memo[key] = (second, same_while, answer)

    def _fail(self, conn, exc):
        """Answer an error and close: the connection's byte stream can no longer be trusted."""
        conn.pending = None
        self._write(conn, render_response(error_response(exc), _NO_HEAD, False, self.base_headers()),
                    False, None)

    def _write(self, conn, data, keep, hooks):
        """Start writing an answer; True when it is all written and the connection goes on."""
        conn.outbuf = memoryview(data)
        conn.after = (keep, hooks)
        return self._write_some(conn)

    def _write_some(self, conn):
        """Write what the socket takes; when done, run the hooks and keep or close the
        connection (True: it carries on); else the loop finishes the write on EPOLLOUT."""
        try:
            while conn.outbuf:
                try:
                    n = conn.sock.send(conn.outbuf)
                except _WOULD_BLOCK:
                    conn.deadline = time.monotonic() + IDLE_TIMEOUT
                    self._arm(conn, _OUT)
                    return False
                conn.outbuf = conn.outbuf[n:]
        except OSError:
            self._close(conn)
            return False
        keep, hooks = conn.after
        conn.outbuf = conn.after = None
        _run_hooks(hooks)
        if not keep:
            self._close(conn)
        return keep

    def _close(self, conn):
        """Close a connection (any owner may); runs the hooks of an answer it could not write."""
        with self._lock:
            if self._conns.pop(conn.fd, None) is not conn:
                return
        conn.armed = conn.ready = False
        if conn.after is not None:
            hooks, conn.after = conn.after[1], None
            _run_hooks(hooks)
        try:
            self._epoll.unregister(conn.fd)    # before close(): a dup of the fd would keep it armed
        except (OSError, ValueError):
            pass
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # the client reads an orderly end of the answer
        except OSError:
            pass
        conn.sock.close()

    # -- requests on their own thread ----------------------------------------------------------
    def _serve_in_thread(self, conn, head):
        """A request that may take long, its body still unread: run as a blocking server would."""
        reader = _ConnReader(conn)
        writer = _SocketWriter(conn.sock)
        try:
            if "100-continue" in head.tokens("expect"):
                writer.write(render_head(100, []))
        except OSError:
            self._close(conn)
            return
        body = body_reader(head, reader)
        request = Request(head, body, conn.sock)
        # The handler reads the body itself: each read of it may stall http.READ_TIMEOUT at most.
        # Everything else the handler does may legitimately take long (wait, pull).
        reader.set_limit(("idle", http.READ_TIMEOUT))
        _reply.hooks = []
        try:
            response = self.app(request)
        except Exception as exc:
            self.log_exception(head, exc)
            response = error_response(exc)
        self._finish(conn, head, body, response, reader, writer)

    def _finish_in_thread(self, conn, head, request, response):
        """A quick request's stream or hijack, written on a thread of its own."""
        _reply.hooks = None
        self._finish(conn, head, request.body, response, _ConnReader(conn), _SocketWriter(conn.sock))

    def _finish(self, conn, head, body, response, reader, writer):
        if isinstance(response, (Hijack, StreamResponse)):
            _run_hooks(_take_reply_hooks())    # its head is about to go out; no waiting for the end
        keep = False
        try:
            keep = self._send(conn, head, response, body, reader, writer)
            if keep:
                reader.set_limit(("idle", http.READ_TIMEOUT))
                body.drain()                   # unread body bytes must not be read as a request
        except (OSError, errors.MinidockError):
            keep = False
        finally:
            _run_hooks(_take_reply_hooks())
        if not keep:
            self._close(conn)
            return
        try:
            reader.set_limit(None)
            conn.sock.setblocking(False)       # back to the loop's way
        except OSError:
            self._close(conn)
            return
        self._drive(conn)

    def _send(self, conn, head, response, body, reader, writer):
        """Write a response (blocking); returns whether the connection can carry another request."""
        keep = head.keep_alive
        base = list(self.base_headers())
        if isinstance(response, Hijack):
            reader.set_limit(None)
            if response.switch_headers is not None:
                writer.write(render_head(101, base + response.switch_headers))
            else:
                writer.write(upgrade_head(base + response.headers, upgrade=head.wants_upgrade))
            try:
                response.run(HijackedConnection(conn.sock, reader))
            finally:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                discard_unread(conn.sock)
            return False
        if isinstance(response, StreamResponse):
            # Whatever of the request body the handler left unread (a tar's trailing padding, say)
            # is read now: leftover bytes would make the client's socket look busy forever, and
            # a stream notices a client that left by seeing end-of-file there (peer_gone).
            body.drain()
            reader.set_limit(None)             # a stream may wait on a slow reader for ever
            chunked = head.version == "HTTP/1.1"
            headers = base + response.headers
            headers.append(("Transfer-Encoding", "chunked") if chunked else ("Connection", "close"))
            writer.write(render_head(response.status, headers, head.version))
            chunks = iter(response.chunks)
            try:
                for data in chunks:
                    if data:
                        writer.write(chunk(data) if chunked else data)
                if chunked:
                    writer.write(LAST_CHUNK)
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
            return keep and chunked
        reader.set_limit(None)
        writer.write(render_response(response, head, keep, base))
        return keep


def make_server(address, app, headers_fn=None, logger=None, max_connections=None, tls_context=None):
    """Bind an HTTP server to `unix:///path` or `tcp://host:port`; serve_forever() runs it.

    A unix socket is created mode 0600 (umask around bind, so it is never briefly wider), and a
    stale socket file left by a killed daemon is removed first — but only when nothing answers on it.
    It is bound under a temporary name beside `path` and renamed to `path` once it listens: the
    file appears already accepting, so a client that connects the moment it sees it (a
    supervisor, a test) is queued, not refused (between bind(2) and listen(2) a connect(2)
    gets ECONNREFUSED).
    """
    scheme, _, rest = address.partition("://")
    final = None
    if scheme == "unix":
        remove_stale_socket(rest)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = os.path.join(os.path.dirname(rest), f".{os.urandom(3).hex()}")
        old = os.umask(0o177)
        try:
            try:
                sock.bind(tmp)
                final = rest
            except OSError:                # the temporary name too long for sun_path, say
                sock.bind(rest)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
    elif scheme == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        except BaseException:
            sock.close()
            raise
    else:
        raise errors.InvalidParameter(f"unsupported listen address {address!r} (want unix:// or tcp://)")
    try:
        sock.listen(Server.request_queue_size)
        if final is not None:
            os.rename(tmp, final)
        server = Server(sock, app, headers_fn, logger, tls_context)
    except BaseException:
        sock.close()
        if final is not None:
            try:
                os.unlink(tmp)             # not renamed yet
            except FileNotFoundError:
                pass
        raise
    if final is not None:
        server.server_address = final      # getsockname() still names the temporary path
    if max_connections:
        server.max_connections = max_connections
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
