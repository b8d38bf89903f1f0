"""The json-file log driver: what `docker logs` reads.

Each container has `<data-root>/containers/<id>/<id>-json.log`, one JSON object per line, in
Docker's key order and spacing:

    {"log":"hello\\n","stream":"stdout","time":"2026-12-01T14:05:09.123456Z"}

A line of output becomes one entry; output without a newline is kept until one comes, or
flushed as its own entry past 16 KiB and when the stream ends (Docker does the same). The
file survives daemon restarts. Reading filters by time (`since`, `until`, epoch seconds) and
keeps the last `tail` entries; following then continues with live output from the container's
output loop (minidock/container/stdio.py) until the container stops or the reader leaves.

Speed. A container writing 100-byte lines produces ~650 of them per 64 KiB read; one
json.dumps or json.loads per line costs a microsecond or two in Python, which caps a log at
~50 MB/s. Both directions therefore work a chunk at a time with bytes operations that run at
C speed (`encode_lines`, `bulk_payload`), falling back to the per-line code for any chunk whose
shape they do not handle, and the bytes they produce or accept are exactly the per-line ones.
"""

import json
import queue
import re
import threading

from minidock.times import now_rfc3339, rfc3339_seconds

PARTIAL_FLUSH = 16384
EXIT_GRACE = 5.0      # seconds `logs -f` waits, after the output ended, for the exit to be recorded


class JsonLog:
    """The writer: one per run of a container, fed by its output pumps."""

    def __init__(self, path):
        self.file = open(path, "ab", buffering=0)
        self.lock = threading.Lock()
        self.partial = {"stdout": b"", "stderr": b""}

    def write(self, stream, data):
        # Every line of one read is stamped with its time, and encoded a chunk at a time.
        stamp = now_rfc3339()
        out, rest = encode_lines(stream, self.partial[stream] + data, stamp)
        if len(rest) > PARTIAL_FLUSH:
            out += self._entry(stream, rest, stamp)
            rest = b""
        self.partial[stream] = rest
        if out:
            with self.lock:
                self.file.write(out)

    @staticmethod
    def _entry(stream, data, stamp=None):
        return entry_bytes(stream, data.decode("utf-8", errors="replace"), stamp or now_rfc3339())

    def close(self):
        with self.lock:
            for stream, rest in self.partial.items():
                if rest:
                    self.file.write(self._entry(stream, rest))
                    self.partial[stream] = b""
            self.file.close()


# -- bulk encoding and decoding ---------------------------------------------------------------
# A container writing 100-byte lines produces ~650 lines per 64 KiB read. Encoding or decoding
# them one json.dumps/json.loads at a time costs a microsecond or two each in Python (~50 MB/s).
# The functions below do the same work a whole chunk at a time with C-speed bytes operations
# (translate, replace, one regex substitution, one json.loads of a single string) and fall back
# to the per-line path whenever a chunk is not of the simple shape they handle. Every line of
# one read shares its stream and its timestamp (the time the daemon read it, as in moby).

# Bytes that stand for themselves inside a JSON string (json.dumps leaves them alone): printable
# ASCII without '"' and '\', plus the newline we turn into "\n" ourselves.
_PLAIN = bytes(range(0x20, 0x7f)).replace(b'"', b"").replace(b"\\", b"") + b"\n"


def encode_lines(stream, data, stamp):
    """Complete lines of `data` (up to its last newline) as json-file entries, in one bytes
    object, and the rest (an unfinished line). Each entry keeps its newline in `log`."""
    end = data.rfind(b"\n") + 1
    if not end:
        return b"", data
    lines, rest = data[:end], data[end:]
    tail = b'","stream":"%s","time":"%s"}\n' % (stream.encode(), stamp.encode())
    if not lines.translate(None, _PLAIN):
        # Nothing to escape but the newlines: the entries are the lines with the framing
        # between them.
        return b'{"log":"' + lines[:-1].replace(b"\n", b"\\n" + tail + b'{"log":"') + b"\\n" + tail, rest
    text = lines.decode("utf-8", errors="replace")
    if "\\" not in text:
        # One escape of the whole text; with no backslash in it, every "\n" in the escaped text
        # is one of our newlines.
        parts = json.encoder.encode_basestring_ascii(text)[1:-1].split("\\n")
        parts.pop()
        sep = "\\n" + tail.decode() + '{"log":"'
        return ('{"log":"' + sep.join(parts) + "\\n" + tail.decode()).encode("ascii"), rest
    pieces = text.split("\n")
    pieces.pop()
    return b"".join(entry_bytes(stream, piece + "\n", stamp) for piece in pieces), rest


def entry_bytes(stream, text, stamp):
    """One json-file entry, Docker's key order, non-ASCII escaped as json.dumps does."""
    return ('{"log":%s,"stream":"%s","time":"%s"}\n'
            % (json.encoder.encode_basestring_ascii(text), stream, stamp)).encode("ascii")


_TAIL = re.compile(rb'","stream":"(stdout|stderr)","time":"[^"\\\n]*"\}\n')
_HEAD = b'{"log":"'


def bulk_payload(lines, end=None):
    """[(stream, payload)] of the complete json-file lines in `lines[:end]` -- one item per run
    of entries written together, their `log` values concatenated -- or None when the lines have
    a shape this does not handle (another key order, a damaged line): the caller then decodes
    them line by line.

    It works a *run* at a time: the entries written from one read share their stream and time,
    so the framing between them is one constant string,

        \\n","stream":"stdout","time":"2026-12-01T14:00:00.123456Z"}\n{"log":"

    and bytes.replace() turns every one of them into a newline at C speed. A run ends at the
    last occurrence of its framing near its start (rfind in a window sized by the previous run,
    grown while the entry after it still has the same framing). That nothing but values is left is checked, not assumed: framing
    always holds bare quotes, which an escaped value never does -- so a run with no '"' and no
    backslash left is its payload as it is, and one with some is decoded as one JSON string,
    which also fails if any framing survived.
    """
    out, pos, window = [], 0, 1 << 16
    end = len(lines) if end is None else end
    while pos < end:
        if not lines.startswith(_HEAD, pos):
            return None
        k = lines.find(b'","stream":"', pos, end)
        tail = _TAIL.match(lines, k, end) if k >= 0 else None
        if tail is None:
            return None
        tail = tail.group(0)
        last = lines.rfind(tail, k, min(end, k + window))
        while True:                       # does the run go on past what the window saw?
            after = lines.find(b'","stream":"', last + len(tail), end)
            if after < 0 or not lines.startswith(tail, after):
                break
            window *= 2
            last = lines.rfind(tail, after, min(end, after + window))
        # The run's entries up to and including its last framing, which is followed by the
        # next run's '{"log":"' -- or, at the end, by one we add -- so that every framing in
        # it has the same shape.
        stop = last + len(tail)
        run = lines[pos + len(_HEAD):stop + len(_HEAD)] if stop < end else lines[pos + len(_HEAD):end] + _HEAD
        run = run.replace(b"\\n" + tail + _HEAD, b"\n")
        if tail in run:
            run = run.replace(tail + _HEAD, b"")   # entries without a newline (partial lines)
        if b'"' in run or b"\\" in run:
            try:
                run = json.loads(b'"' + run.replace(b"\n", b"\\n") + b'"').encode("utf-8", errors="replace")
            except ValueError:
                return None
        out.append((tail[12:18].decode(), run))
        window = max(1 << 16, 2 * (stop - pos))
        pos = stop
    return out


READ_BLOCK = 4 << 20


def read_blocks(path):
    """The whole log's payload as (stream, bytes) blocks, oldest first: what `docker logs`
    without timestamps, since, until or tail sends. The file is read 4 MiB at a time and each
    block decoded in bulk (`bulk_payload`), line by line only where a block has another shape."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        carry = b""
        while True:
            chunk = f.read(READ_BLOCK)
            if not chunk:
                break                           # a last line without newline: cut by a crash
            data = carry + chunk if carry else chunk
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if not end:
                continue
            runs = bulk_payload(data, end)
            if runs is None:
                runs = [(stream, log) for stream, log, _ in _decode_lines(data[:end].split(b"\n"))]
            yield from runs


def _decode_lines(lines):
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue           # an empty or damaged line (one cut short by a crash)
        yield entry["stream"], entry["log"].encode("utf-8", errors="replace"), entry["time"]


def read(path, since=0, until=None, tail=None):
    """Log entries (stream, bytes, time string), oldest first."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue           # a line cut short by a crash
        stamp = rfc3339_seconds(entry["time"])
        if since and stamp < since:
            continue
        if until and stamp > until:
            continue
        entries.append((entry["stream"], entry["log"].encode(), entry["time"]))
    if tail is not None and tail >= 0:
        entries = entries[len(entries) - tail:] if tail else []
    return entries


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False,
            timestamps=True):
    """`docker logs [-f]` of container `c`: (stream, bytes, time) for the wanted `streams`,
    the file's first, then (with `follow`, while it runs) live output as it comes, until the
    container stops, its output ends, or `stop()` (the client left) says so. When nobody needs
    an entry's own time or position (no timestamps, since, until or tail), the file comes as
    large blocks of merged entries (time None), decoded in bulk."""
    q = c.io.subscribe() if follow and c.running else None
    try:
        if timestamps or since or until or (tail is not None and tail >= 0):
            stored = read(c.record["LogPath"], since=since, until=until, tail=tail)
        else:
            stored = ((stream, data, None) for stream, data in read_blocks(c.record["LogPath"]))
        for stream, data, stamp in stored:
            if stream in streams:
                yield stream, data, stamp
        if q is None:
            return
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if (not c.running and q.empty()) or stop():
                    return
                continue
            if item is None:
                # The output ends when the process does; its exit is recorded a moment later
                # by the reaper. End after that, as Docker does, so that `docker logs -f c;
                # docker rm c` finds the container stopped (bounded: a restart policy may
                # bring it straight back).
                with c.changed:
                    c.changed.wait_for(lambda: not c.running, EXIT_GRACE)
                return
            stream, data = item
            if stream in streams:
                yield stream, data, now_rfc3339()
    finally:
        if q is not None:
            c.io.unsubscribe(q)
