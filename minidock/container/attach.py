"""Attaching to a container: its live output to a client, the client's input to its stdin.

Two transports carry the same session:

- `POST /containers/(id)/attach` hijacks the HTTP connection (minidock/http.py). Output goes
  out raw with a TTY, else in 8-byte-header stream frames (stdout 1, stderr 2); whatever the
  client sends is stdin. A client half-closes when its input ends (the CLI does at once when it
  sends none), so only a failed write means it left.
- `GET /containers/(id)/attach/ws` upgrades to a WebSocket (RFC 6455, minidock/websocket.py):
  output as text frames of raw bytes, never framed by stream; data frames are stdin.

Detach keys: with a TTY, the client's input is scanned for a key sequence (default ctrl-p
ctrl-q, `--detach-keys` "ctrl-x,y"); when it completes the session ends and the container keeps
running. `DetachScanner` is the one scanner both transports use; a sequence split across reads
still matches, and a broken-off partial match is passed on to the container as typed.
"""

import threading
import queue

from minidock import errors, http, websocket
from minidock.container.lifecycle import DEAD

DEFAULT_DETACH_KEYS = b"\x10\x11"      # ctrl-p ctrl-q
CTRL_SYMBOLS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text):
    """Docker's detach key syntax: comma-separated `ctrl-<x>` or single characters."""
    if not text:
        return DEFAULT_DETACH_KEYS
    keys = b""
    for part in text.split(","):
        part = part.strip()
        if part.startswith("ctrl-") and len(part) == 6:
            ch = part[5]
            if ch.isalpha():
                keys += bytes([ord(ch.lower()) - ord("a") + 1])
            elif ch in CTRL_SYMBOLS:
                keys += bytes([CTRL_SYMBOLS[ch]])
            else:
                raise errors.InvalidParameter(f"Invalid detach keys ({text}) provided")
        elif len(part) == 1:
            keys += part.encode()
        else:
            raise errors.InvalidParameter(f"Invalid detach keys ({text}) provided")
    return keys


class DetachScanner:
    """Removes a detach sequence from a stream of stdin bytes, across reads.

    `feed(data)` returns (bytes to pass on, whether the sequence completed). Bytes after a
    completed sequence are dropped. A partial match that breaks off is passed on, and the byte
    that broke it may start a new match: ctrl-p ctrl-p ctrl-q passes one ctrl-p and detaches.
    An empty key sequence never detaches.
    """

    def __init__(self, keys):
        self.keys = keys
        self.matched = 0

    def feed(self, data):
        keys = self.keys
        if not keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == keys[self.matched]:
                self.matched += 1
                if self.matched == len(keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            if self.matched:
                out += keys[:self.matched]
                self.matched = 0
            if byte == keys[0]:
                self.matched = 1
                continue
            out.append(byte)
        return bytes(out), False


class Options:
    """What a client asked to attach to (the query parameters of both attach routes)."""

    def __init__(self, stdin=False, stdout=False, stderr=False, logs=False, stream=False, detach_keys=None,
                 binary=True):
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.logs, self.stream = logs, stream
        self.detach_keys = detach_keys        # Docker's syntax ("ctrl-p,ctrl-q"); None: the default
        self.binary = binary                  # WebSocket output in binary frames (API 1.28+), else text

    @property
    def streams(self):
        return {s for s, on in (("stdout", self.stdout), ("stderr", self.stderr)) if on}


def prepare(c, opts, websocket, read_logs, on_detach):
    """An attach session made ready before the hijack: checks the detach keys (a 400 while a
    reply can still be one) and subscribes to the output now, so none of it slips between this
    and the session. -> run(conn), which runs the session on the hijacked connection;
    `read_logs(c)` gives the stored output when `opts.logs` asks for it."""
    parse_detach_keys(opts.detach_keys)
    q = c.io.subscribe() if opts.stream else None
    session = ws_session if websocket else http_session

    def run(conn):
        try:
            session(c, conn, q, opts, read_logs(c) if opts.logs else [], on_detach=on_detach)
        finally:
            if q is not None:
                c.io.unsubscribe(q)
    return run


def stdin_ready(c, generation):
    """Wait until the container has a stdin to write to (`docker run -i` attaches and sends
    input before it starts the container). False when a run ended or it was removed first."""
    with c.changed:
        while c.io.stdin_w is None:
            if c.exit_generation != generation or c.status == DEAD:
                return False
            c.changed.wait(0.5)
    return True


def _scanner(c, opts):
    """The detach scanner for this session: detach keys apply to TTY sessions only."""
    return DetachScanner(parse_detach_keys(opts.detach_keys) if c.config.get("Tty") else b"")


def http_session(c, conn, q, opts, logs, on_detach):
    """The hijacked-HTTP attach session: runs until output ends, the client detaches or leaves.
    `q` is the subscription made before the upgrade; `logs` the stored entries to send first."""
    tty = c.config.get("Tty")
    wanted = opts.streams

    def send(stream, data):
        if stream not in wanted:
            return
        conn.send(data if tty else http.frame(http.STDOUT if stream == "stdout" else http.STDERR, data))

    if opts.logs:
        for stream, data, _ in logs:
            send(stream, data)
    if not opts.stream:
        return
    detached = threading.Event()
    generation = c.exit_generation
    scanner = _scanner(c, opts)

    def pump_stdin():
        while not detached.is_set():
            data = conn.recv(65536)
            if not stdin_ready(c, generation):
                return
            if not data:
                if c.config.get("StdinOnce"):
                    c.io.end_stdin(tty)
                return
            data, done = scanner.feed(data)
            if data:
                c.io.write_stdin(data)
            if done:
                detached.set()
                q.put(None)
                on_detach()
                return

    if opts.stdin and c.config.get("OpenStdin"):
        threading.Thread(target=pump_stdin, daemon=True, name=f"stdin-{c.id[:12]}").start()
    # Output until this run's streams end (the pumps send None), the client detaches, or it
    # goes away. A container that is not running yet (`docker run` attaches before it starts)
    # simply has no output yet. A client half-closes its side when its stdin ends, and the
    # CLI does so at once when it sends no stdin at all, so a readable EOF does not mean it
    # left: only a failed write tells us (as in Docker).
    for stream, data in live_output(c, q):
        try:
            send(stream, data)
        except OSError:
            return


def live_output(c, q):
    """(stream, bytes) from a subscription `q` until this run's output ends (the pumps, or a
    detach, put None) or the container is removed."""
    while True:
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            if c.status == DEAD:
                return
            continue
        if item is None:
            return
        yield item


def ws_session(c, conn, q, opts, logs, on_detach):
    """The WebSocket attach session (after the 101 went out). Output goes out as the raw bytes
    of each read, one data frame each: binary frames, or text frames for clients before API 1.28
    (which is what Docker sent then, UTF-8 or not)."""
    wanted = opts.streams
    tty = c.config.get("Tty")
    output = websocket.BINARY if opts.binary else websocket.TEXT
    send_lock = threading.Lock()
    closed = threading.Event()           # a close frame went out: send nothing more

    def send(opcode, payload=b""):
        with send_lock:
            if closed.is_set():
                return
            if opcode == websocket.CLOSE:
                closed.set()
            conn.send(websocket.encode_frame(opcode, payload))

    def close(code=websocket.NORMAL_CLOSURE, reason=""):
        try:
            send(websocket.CLOSE, websocket.close_payload(code, reason))
        except OSError:
            pass

    if opts.logs:
        for stream, data, _ in logs:
            if stream in wanted:
                send(output, data)
    if not opts.stream:
        close()
        return
    generation = c.exit_generation
    use_stdin = opts.stdin and c.config.get("OpenStdin")
    scanner = _scanner(c, opts)

    def read_client():
        """Frames from the client: stdin, pings, and its close (which ends the session)."""
        buffer, assembler = b"", websocket.MessageAssembler()
        detached = False
        try:
            while not closed.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    frame, buffer = websocket.decode_frame(buffer, require_mask=True)
                    if frame is None:
                        break
                    for event in assembler.feed(frame):
                        if event[0] == "ping":
                            send(websocket.PONG, event[1])
                        elif event[0] == "close":
                            close()
                            return
                        elif event[0] == "message" and use_stdin and event[2]:
                            data, detached = scanner.feed(event[2])
                            if data and stdin_ready(c, generation):
                                c.io.write_stdin(data)
                            if detached:
                                on_detach()
                                close()
                                return
        except websocket.ProtocolError as exc:
            close(exc.code, str(exc)[:100])
        except OSError:
            pass
        finally:
            # StdinOnce: the client's end of input (its close) is the container's; a detach
            # leaves the container's stdin open for the next attach.
            if use_stdin and c.config.get("StdinOnce") and not detached:
                c.io.end_stdin(tty)
            q.put(None)

    threading.Thread(target=read_client, daemon=True, name=f"ws-{c.id[:12]}").start()
    for stream, data in live_output(c, q):
        if stream in wanted:
            try:
                send(output, data)
            except OSError:
                break
    close()
