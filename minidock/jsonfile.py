"""The json-file log driver: Docker's default container log, with size-based rotation.

A container's output is stored one JSON object per line in `<data-root>/containers/<id>/<id>-json.log`:

    {"log":"hello\\n","stream":"stdout","time":"2026-12-01T14:00:00.123456789Z"}

A line of output becomes one entry, its newline kept in `log`. Output without a newline is held
until the newline comes, or flushed as an entry of its own once 16 KiB pile up (Docker cuts
partial messages likewise), and at close.

Rotation (`--log-opt max-size=10m --log-opt max-file=3`). Before each write, if the current file
holds `max-size` bytes or more, the files shift: `x.log.1` -> `x.log.2`, `x.log` -> `x.log.1`
(the oldest beyond max-file-1 is overwritten by the rename), and a new empty `x.log` opens. With
max-file=1 the one file is truncated instead. A file exceeds max-size by at most one entry, so
the logs of a container never take more than about max-file * max-size. Sizes are decimal, as
in moby (units.FromHumanSize): `1m` is 1,000,000 bytes, `1k` 1,000.

Reading (`docker logs`). The files are read oldest first: x.log.(N-1), ..., x.log.1, x.log.
Every file is *opened* under a short per-path lock that rotation also takes, so the set of file
descriptors is consistent (rename(2) never disturbs an open descriptor); the reading itself
happens without any lock. That is also why a slow reader -- a `docker logs` client that stops
reading its socket -- never slows the container: the writer only ever waits for another
writer's rename or a reader's open(2) calls, never for a read.

`tail=N` (moby's order: take the last N lines, then apply since/until) reads each file backwards
in 64 KiB blocks from its end and stops as soon as N lines are found, so a `--tail 10` on a huge
log reads a few KiB, not the whole file.

Speed. A container writing 100-byte lines produces ~650 of them per 64 KiB read; one
json.dumps or json.loads per line costs a microsecond or two in Python, which caps a log at
~50 MB/s. Both directions therefore work a chunk at a time with bytes operations that run at C
speed (`encode_lines`, `bulk_payload`, `read_blocks`), falling back to the per-line code for any
chunk whose shape they do not handle; the bytes they write and accept are exactly the per-line
ones.

Observe it yourself:

    docker run -d --log-opt max-size=1k --log-opt max-file=3 --name r busybox \\
        sh -c 'while :; do echo line; done'
    ls -l "$(docker inspect -f '{{.LogPath}}' r)"*          # x.log x.log.1 x.log.2, ~1 kB each
"""

import json
import os
import re
import threading

from .errors import InvalidParameter, NotImplementedKind
from .times import now_rfc3339, rfc3339_seconds

PARTIAL_FLUSH = 16384
BLOCK = 65536

DRIVERS = ("json-file", "none")
JSON_FILE_OPTS = ("max-size", "max-file", "compress", "labels", "labels-regex", "env",
                  "env-regex", "tag")

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


# -- LogConfig: which driver, which options -------------------------------------------------

def from_human_size(text):
    """go-units FromHumanSize: decimal units, "10m" -> 10_000_000; raises InvalidParameter."""
    m = _SIZE_RE.match(str(text).strip())
    if not m:
        raise InvalidParameter(f"invalid size: '{text}'")
    return int(float(m.group(1)) * _DECIMAL[(m.group(2) or "").lower()])


def check_log_config(config, defaults=None):
    """The effective HostConfig.LogConfig of a new container, or InvalidParameter in moby's words.

    An empty Type takes the daemon's default driver and options (`--log-driver`, `--log-opt`);
    an explicit Type keeps only its own options, as dockerd does.
    """
    defaults = defaults or {"Type": "json-file", "Config": {}}
    config = config or {}
    kind = config.get("Type") or ""
    opts = config.get("Config") or {}
    if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
        raise InvalidParameter("LogConfig.Config must be an object of strings")
    if not kind:
        kind = defaults.get("Type") or "json-file"
        opts = dict(defaults.get("Config") or {}, **opts)
    if kind not in DRIVERS:
        raise InvalidParameter(f"logger: no log driver named '{kind}' is registered")
    if kind == "none":
        if opts:
            raise InvalidParameter(f"unknown log opt '{sorted(opts)[0]}' for none log driver")
        return {"Type": kind, "Config": {}}
    for key in opts:
        if key not in JSON_FILE_OPTS:
            raise InvalidParameter(f"unknown log opt '{key}' for json-file log driver")
    rotation(opts)                       # refuse bad sizes at create, not at start
    return {"Type": kind, "Config": dict(opts)}


def rotation(opts):
    """(max_size, max_file) from json-file options; max_size -1 means no rotation."""
    max_size = -1
    if "max-size" in opts:
        max_size = from_human_size(opts["max-size"])
        if max_size <= 0:
            raise InvalidParameter("max-size must be a positive number")
    max_file = 1
    if "max-file" in opts:
        try:
            max_file = int(opts["max-file"])
        except ValueError:
            raise InvalidParameter(f"strconv.Atoi: parsing \"{opts['max-file']}\": invalid syntax")
        if max_file < 1:
            raise InvalidParameter("max-file cannot be less than 1")
    return max_size, max_file


def cannot_read(log_config):
    """Docker's answer to `docker logs` for a driver that stores nothing (501)."""
    return NotImplementedKind("configured logging driver does not support reading")


# -- the shared rotation lock -----------------------------------------------------------------

_locks = {}
_locks_guard = threading.Lock()


def _lock_for(path):
    with _locks_guard:
        return _locks.setdefault(os.path.abspath(path), threading.Lock())


def files(path, max_file):
    """The log's files, oldest first."""
    return [f"{path}.{i}" for i in range(max_file - 1, 0, -1)] + [path]


# -- writing --------------------------------------------------------------------------------

class Writer:
    """Appends entries to a json-file log, rotating by size. Thread-safe."""

    def __init__(self, path, max_size=-1, max_file=1, clock=now_rfc3339):
        self.path, self.max_size, self.max_file, self.clock = path, max_size, max_file, clock
        self.lock = _lock_for(path)
        self.partial = {"stdout": b"", "stderr": b""}
        self.file = open(path, "ab", buffering=0)
        self.size = os.fstat(self.file.fileno()).st_size

    @classmethod
    def for_config(cls, path, log_config):
        max_size, max_file = rotation((log_config or {}).get("Config") or {})
        return cls(path, max_size, max_file)

    def write(self, stream, data):
        """Output bytes of `stream` ("stdout"/"stderr"): complete lines become entries, all
        the lines of one call stamped with one time (when the daemon read them) and encoded
        together (`encode_lines`)."""
        with self.lock:
            stamp = self.clock()
            out, rest = encode_lines(stream, self.partial[stream] + data, stamp)
            if len(rest) > PARTIAL_FLUSH:
                out += entry_bytes(stream, rest.decode("utf-8", errors="replace"), stamp)
                rest = b""
            self.partial[stream] = rest
            if out:
                self._append(out)

    def _entry(self, stream, data):
        return entry_bytes(stream, data.decode("utf-8", errors="replace"), self.clock())

    def _append(self, entries):
        """Append whole entries (one or many), rotating where moby would: it checks before
        each entry, so a file passes max-size by at most the one entry that crossed it."""
        if self.max_size <= 0:
            self.file.write(entries)
            self.size += len(entries)
            return
        while entries:
            if self.size >= self.max_size:
                self._rotate()
            # the entries that start before the file is full: up to the first newline at or
            # past `room - 1`, i.e. including the entry that crosses max-size
            room = self.max_size - self.size
            cut = entries.find(b"\n", max(room - 1, 0)) + 1 or len(entries)
            self.file.write(entries[:cut])
            self.size += cut
            entries = entries[cut:]

    def _rotate(self):
        self.file.close()
        if self.max_file > 1:
            # Oldest first, so that every rename lands on a name already moved away (or on the
            # one file that falls off the end and is replaced).
            names = files(self.path, self.max_file)
            for older, newer in zip(names, names[1:]):
                try:
                    os.rename(newer, older)
                except FileNotFoundError:
                    pass
            self.file = open(self.path, "ab", buffering=0)
        else:
            self.file = open(self.path, "wb", buffering=0)       # truncate in place
        self.size = 0

    def close(self):
        with self.lock:
            for stream, rest in self.partial.items():
                if rest:
                    self._append(self._entry(stream, rest))
                    self.partial[stream] = b""
            self.file.close()


# -- bulk encoding and decoding --------------------------------------------------------------
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


# -- reading --------------------------------------------------------------------------------

def open_all(path, max_file):
    """Open every existing file of the log, oldest first, as one consistent set."""
    handles = []
    with _lock_for(path):
        for name in files(path, max_file):
            try:
                handles.append(open(name, "rb"))
            except FileNotFoundError:
                continue
    return handles


def _decode(line):
    try:
        entry = json.loads(line)
        return entry["stream"], entry["log"].encode(), entry["time"]
    except (ValueError, KeyError, TypeError):
        return None                     # a line cut short by a crash


def last_lines(f, n):
    """The last `n` complete lines of an open file, reading backwards block by block."""
    end = f.seek(0, os.SEEK_END)
    if n <= 0 or end == 0:
        return []
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(BLOCK, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()                      # the file ends with a newline
    if pos > 0:
        lines = lines[1:]                # the first piece may be the tail of a longer line
    return lines[-n:]


def _tail_lines(handles, tail):
    """The last `tail` lines over the rotated files (oldest first in `handles`), read backwards."""
    raw = []
    for f in reversed(handles):            # newest file first
        if len(raw) >= tail:
            break
        raw = last_lines(f, tail - len(raw)) + raw
    return raw


def _upto(handles, upto):
    """[(handle, bytes to read or -1 for all)]: with `upto` = (st_dev, st_ino, size) of one of
    the files, that file is read to `size` and the newer ones not at all (a follower's queue
    has what was written after; see ContainerIO.subscribe)."""
    if upto is None:
        return [(f, -1) for f in handles]
    out = []
    for f in handles:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) == tuple(upto[:2]):
            return out + [(f, upto[2])]
        out.append((f, -1))
    return out


def read(path, max_file=1, since=0, until=None, tail=None, upto=None):
    """Entries (stream, bytes, time string) across the rotated files, in order.

    `tail` counts the newest lines over all files (None or negative: all); then `since` and
    `until` (epoch seconds) drop entries outside the window, as moby does. `upto`: see _upto.
    """
    handles = open_all(path, max_file)
    try:
        if tail is not None and tail >= 0:
            raw = _tail_lines(handles, tail)
        else:
            raw = []
            for f, limit in _upto(handles, upto):
                raw.extend(f.read(limit).splitlines())
    finally:
        for f in handles:
            f.close()
    entries = []
    for line in raw:
        entry = _decode(line)
        if entry is None:
            continue
        stamp = rfc3339_seconds(entry[2])
        if since and stamp < since:
            continue
        if until and stamp > until:
            continue
        entries.append(entry)
    return entries


READ_BLOCK = 4 << 20


def read_blocks(path, max_file=1, tail=None, upto=None):
    """The log's payload as (stream, bytes) blocks, oldest first: what `docker logs` without
    timestamps, since or until sends. The files are read 4 MiB at a time and each block decoded
    in bulk (`bulk_payload`), line by line only where a block has another shape. `tail` as in
    read() (the last lines, read backwards from the end)."""
    handles = open_all(path, max_file)
    try:
        if tail is not None and tail >= 0:
            raw = _tail_lines(handles, tail)
            if raw:
                yield from _payload_blocks(b"\n".join(raw) + b"\n")
            return
        for f, limit in _upto(handles, upto):
            carry = b""
            while True:
                chunk = f.read(READ_BLOCK if limit < 0 else min(READ_BLOCK, limit))
                if not chunk:
                    break                       # a last line without newline: cut by a crash
                if limit >= 0:
                    limit -= len(chunk)
                data = carry + chunk if carry else chunk
                end = data.rfind(b"\n") + 1
                carry = data[end:]
                if end:
                    yield from _payload_blocks(data, end)
    finally:
        for f in handles:
            f.close()


def _payload_blocks(lines, end=None):
    runs = bulk_payload(lines, end)
    if runs is not None:
        yield from runs
        return
    for line in lines[:end].split(b"\n"):
        entry = _decode(line) if line else None
        if entry is not None:
            yield entry[0], entry[1]
