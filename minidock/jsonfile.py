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

What `docker logs` shows of an entry is its `log` value, after `--details` (the entry's attrs,
`k=v,...`, and a space) and `--timestamps` (its time as RFC3339NanoFixed -- nine fraction digits,
unlike the file -- and a space) prefixes, for the wanted streams inside since/until: moby's
WriteLogStream. Consecutive entries of one stream may share a stream frame; the client's
demuxed bytes are the same.

Speed. A container writing 100-byte lines produces ~650 of them per 64 KiB read; one
json.dumps or json.loads per line costs a microsecond or two in Python, which caps a log at
~50 MB/s. Both directions therefore work a chunk at a time with bytes operations that run at C
speed (`encode_parts` writing; `render_lines` reading: cut at newlines, one map() slicing the
bodies out of a run of entries, one join, one memcmp checking the run against the file), falling
back to the per-line code for any line whose shape they do not handle; the bytes they write and
show are exactly the per-line ones. Reading 64 MiB of 100-byte lines (671k lines, a 114 MB file)
costs ~120-190 ms of CPU here (the machine's speed varies that much), ~180-280 ns a line: two
small bytes objects made and freed per line (the line and its body) are most of it, then the
page-cache copy (pread) and the joins. The cut is io.BytesIO.readlines(), which finds each
newline with memchr: bytes.split(b"\n") compares byte by byte and costs ~4 times as much
(~60 against ~240 us per 256 KiB read). That decode is the read-back's floor in CPython, so a log
without rotation also keeps a read cache beside it (logcache.py: the shown bytes, written once
more in large records): `docker logs` without --timestamps, --details, --since, --until or
--tail copies what the cache covers and decodes only the rest.

Observe it yourself:

    docker run -d --log-opt max-size=1k --log-opt max-file=3 --name r busybox \\
        sh -c 'while :; do echo line; done'
    ls -l "$(docker inspect -f '{{.LogPath}}' r)"*          # x.log x.log.1 x.log.2, ~1 kB each
"""

import io
import json
import logging
import operator
import os
import queue
import re
import threading
import time
from urllib.parse import quote_plus

from . import logcache, syscalls
from .errors import InvalidParameter, NotImplementedKind
from .times import NS, now_rfc3339, rfc3339_ns, rfc3339_seconds

log = logging.getLogger("minidock.jsonfile")

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
    """Appends entries to a json-file log, rotating by size. Thread-safe.

    Every WRITEBACK_STEP bytes the kernel is asked to start writing the finished part of the
    file to disk (`writeback`), so that a container's log never piles up as dirty pages. A log
    without rotation keeps its read cache beside it (logcache.py; `cache=False`: none)."""

    def __init__(self, path, max_size=-1, max_file=1, clock=now_rfc3339, writeback=None,
                 cache=True):
        self.path, self.max_size, self.max_file, self.clock = path, max_size, max_file, clock
        self.lock = _lock_for(path)
        self.partial = {"stdout": b"", "stderr": b""}
        self.file = open(path, "ab", buffering=0)
        self.size = os.fstat(self.file.fileno()).st_size
        self.writeback = WRITEBACK if writeback is None else writeback
        self.out = WriteOut(self.writeback, self.size)
        self.cache = None
        if cache and max_size <= 0:
            self.cache = logcache.Writer(path, self.writeback, WriteOut)

    @classmethod
    def for_config(cls, path, log_config):
        max_size, max_file = rotation((log_config or {}).get("Config") or {})
        return cls(path, max_size, max_file)

    def write(self, stream, data):
        """Output bytes of `stream` ("stdout"/"stderr"): complete lines become entries, all
        the lines of one call stamped with one time (when the daemon read them) and encoded
        together (`encode_parts`)."""
        with self.lock:
            stamp = self.clock()
            data = self.partial[stream] + data
            end = data.rfind(b"\n") + 1
            lines, rest = data[:end], data[end:]        # (the first is `data` itself when whole)
            plain = all_plain(lines)
            parts = encode_parts(stream, lines, stamp, plain) if lines else ()
            if len(rest) > PARTIAL_FLUSH:
                parts += (entry_bytes(stream, rest.decode("utf-8", errors="replace"), stamp),)
                lines, rest, plain = data, b"", False
            self.partial[stream] = rest
            if parts:
                self._append(parts, stream, lines, plain)

    def _entry(self, stream, data):
        return entry_bytes(stream, data.decode("utf-8", errors="replace"), self.clock())

    def _append(self, parts, stream, raw, plain):
        """Append whole entries (one or many, in the buffers `parts`) of `stream`, made from the
        raw output `raw` (`plain`: all_plain(raw)), rotating where moby would: it checks before
        each entry, so a file passes max-size by at most the one entry that crossed it."""
        if self.max_size <= 0:
            start = self.size
            self.size += os.writev(self.file.fileno(), parts)
            self.out.grew(self.file.fileno(), self.size)
            if self.cache is not None:
                # After the entries are in the log, never before (logcache.py)
                self.cache.add(stream, raw, plain, start, self.size, parts[-1])
            return
        entries = b"".join(parts)
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
            self.out.grew(self.file.fileno(), self.size)

    def _rotate(self):
        self.file.close()
        self.out = WriteOut(self.writeback, 0)
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
                    self._append((self._entry(stream, rest),), stream, rest, False)
                    self.partial[stream] = b""
            self.out.last(self.file.fileno(), self.size)
            self.file.close()
            if self.cache is not None:
                self.cache.close()


# -- write-out: the log reaches the disk as it is written ---------------------------------------
#
# A write(2) only fills the page cache; the kernel writes dirty pages back when they are ~30 s
# old or when something syncs. One thing that syncs here is the unmount of a container's overlay
# rootfs: its last unmount runs sync_filesystem() on the file system holding the upper directory
# (layers.py) -- the one that also holds the logs. A container that printed 64 MiB (a 114 MB log)
# and exits therefore waited ~80 ms in its exit for its own log to reach the disk, before `wait`
# heard of the exit; every other container's fresh log output was flushed in that same exit, too.
#
# So the writer asks for write-out as it goes: every WRITEBACK_STEP bytes,
#
#     sync_file_range(fd, start, length, SYNC_FILE_RANGE_WRITE)       (sync_file_range(2))
#
# which starts writing those pages and returns without waiting for the disk. It makes nothing
# durable by itself (no metadata, no wait: Docker's json-file never fsyncs either); it moves the
# disk writes a sync or the kernel's 30-second writeback would do into the time the container
# runs, so that at most a few MiB of a log are dirty at any moment. (The one extra cost: a big
# log deleted within 30 s of being written now reaches the disk once; logs under 4 MiB are left
# alone, and a `--rm` container's exit has no sync to wait for anyway: its rootfs is volatile.)
# The calls run on one thread of their own (`Writeback`): the output loop hands over a range
# and goes back to reading pipes, and a slow disk can delay the write-out but never a
# container's output. Observe it: `grep -E 'Dirty|Writeback:' /proc/meminfo` while a
# container prints stays at a few MiB instead of growing with the log.

WRITEBACK_STEP = 4 << 20
PAGE = 4096


class WriteOut:
    """The write-out requests of one growing file: whole pages, every WRITEBACK_STEP bytes."""

    def __init__(self, writeback, start):
        self.writeback = writeback
        self.done = start & ~(PAGE - 1)   # where the last write-out request ended

    def grew(self, fd, size):
        """The file now holds `size` bytes: ask for the whole pages not asked for yet, once
        there are WRITEBACK_STEP bytes of them (a page still being filled would go to disk
        twice)."""
        if size - self.done >= WRITEBACK_STEP:
            self._ask(fd, size & ~(PAGE - 1))

    def last(self, fd, size):
        """At the close, before `fd` closes: all of it, if a fair part is left."""
        if size - self.done >= WRITEBACK_STEP // 4:
            self._ask(fd, size)

    def _ask(self, fd, end):
        if end > self.done:
            self.writeback.submit(fd, self.done, end - self.done)
            self.done = end


def _sync_file_range():
    """The C library's sync_file_range, called as (fd, start, length, flags)."""
    return syscalls.libc.sync_file_range


class Writeback:
    """One daemon thread that starts the write-out of log ranges (see above), in order -- and
    writes the records of the logs' read caches (logcache.py), off the output loop's thread."""

    MAX_PENDING = 64                  # jobs waiting past which a write-out request is dropped
    MAX_HELD = 32 << 20               # bytes of records waiting past which a record is refused

    def __init__(self, call=None):
        self._call = call or _sync_file_range()
        self._q = queue.SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()
        self.pending = 0
        self.held = 0

    def submit(self, fd, start, length):
        """Start writing `length` bytes of `fd` from `start`, later, on the thread. The thread
        gets its own duplicate of `fd`: the writer may close or rotate its file meanwhile. On a
        disk so slow that MAX_PENDING jobs wait, the request is dropped: the kernel writes
        those pages back on its own, and no descriptors pile up."""
        with self._lock:
            if self.pending >= self.MAX_PENDING:
                return
        # ctypes lets go of the GIL for the call; EIO and the like are not ours to report
        # here: the writer's own write(2) reports a failing disk
        self.run(fd, lambda dup: self._call(dup, start, length, syscalls.SYNC_FILE_RANGE_WRITE))

    def run(self, fd, job, held=0):
        """Call job(a duplicate of `fd`) on the thread, after everything handed over before.
        `held`: the bytes the job keeps alive until it runs (a record's payload); False when
        MAX_HELD such bytes wait already (the job is dropped). Other jobs are never dropped."""
        with self._lock:
            if held and self.held + held > self.MAX_HELD:
                return False
            self.pending += 1
            self.held += held
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-writeback", daemon=True)
                self._thread.start()
        self._q.put((os.dup(fd), job, held))
        return True

    def _run(self):
        while True:
            fd, job, held = self._q.get()
            try:
                job(fd)
            except Exception:         # a job's own failure, never the thread's end
                log.exception("log writeback job failed")
            finally:
                os.close(fd)
                with self._lock:
                    self.pending -= 1
                    self.held -= held


WRITEBACK = Writeback()


# -- bulk encoding and decoding --------------------------------------------------------------
# Bytes that stand for themselves inside a JSON string (json.dumps leaves them alone): printable
# ASCII without '"' and '\', plus the newline we turn into "\n" ourselves.
_PLAIN = bytes(range(0x20, 0x7f)).replace(b'"', b"").replace(b"\\", b"") + b"\n"
# The 34 ASCII bytes that are not: every control character but the newline, DEL, '"' and '\',
# those most often seen in program output first (a mixed chunk stops at the first it holds).
_ESCAPED = tuple(sorted(set(range(0x80)) - set(_PLAIN),
                        key=lambda b: (b not in b"\t\r\x1b\"\\", b)))


def all_plain(data):
    """Whether every byte of `data` stands for itself in a JSON string (or is a newline).

    isascii() runs a word at a time; `int in bytes` is one memchr(3), vectorised by libc. The 34
    memchr passes over a 64 KiB read (in L2 by then) cost less together than one pass of any
    byte-at-a-time check: translate() with a table, a `re` character class, str.isprintable()
    (measured in docs/performance.md)."""
    return data.isascii() and not any(map(data.__contains__, _ESCAPED))


_ENTRY_HEAD = b'{"log":"'


def encode_parts(stream, lines, stamp, plain):
    """The entries of `lines`, which ends with a newline, as buffers to write one after the
    other (os.writev); `plain`: all_plain(lines)."""
    tail = b'","stream":"%s","time":"%s"}\n' % (stream.encode(), stamp.encode())
    if plain:
        # Nothing to escape but the newlines: the entries are the lines with the framing
        # between them -- every newline becomes `\n` + tail + the next entry's head; the first
        # head goes first, and the head after the last newline is cut off again by a view
        # (one copy of the bytes in all).
        body = lines.replace(b"\n", b"\\n" + tail + _ENTRY_HEAD)
        return _ENTRY_HEAD, memoryview(body)[:-len(_ENTRY_HEAD)]
    text = lines.decode("utf-8", errors="replace")
    if "\\" not in text:
        # One escape of the whole text; with no backslash in it, every "\n" in the escaped text
        # is one of our newlines.
        parts = json.encoder.encode_basestring_ascii(text)[1:-1].split("\\n")
        parts.pop()
        sep = "\\n" + tail.decode() + '{"log":"'
        return (('{"log":"' + sep.join(parts) + "\\n" + tail.decode()).encode("ascii"),)
    pieces = text.split("\n")
    pieces.pop()
    return (b"".join(entry_bytes(stream, piece + "\n", stamp) for piece in pieces),)


def entry_bytes(stream, text, stamp):
    """One json-file entry, Docker's key order, non-ASCII escaped as json.dumps does."""
    return ('{"log":%s,"stream":"%s","time":"%s"}\n'
            % (json.encoder.encode_basestring_ascii(text), stream, stamp)).encode("ascii")


# -- reading: what `docker logs` shows ---------------------------------------------------------
#
# `docker logs` turns each entry into the bytes the client sees: its `log` value, after a
# `--details` prefix (the entry's attrs as `k=v,...` and a space) and a `--timestamps` prefix
# (its time with all nine fraction digits and a space), as moby's WriteLogStream does. Which
# entries: those of the wanted streams, inside since/until. Consecutive entries of one stream may
# travel in one stream frame: the client's demuxed bytes are the same.
#
# `render_entry` does this for one decoded entry: the reference. `render_lines` does it a whole
# batch of lines at a time and must give exactly the same bytes (tests/test_logs_bulk.py holds
# it to that).

class View:
    """Which entries `docker logs` wants, and how each is shown."""

    def __init__(self, streams=("stdout", "stderr"), since=0, until=None, timestamps=False,
                 details=False):
        self.streams = frozenset(streams)
        self.since, self.until = since, until
        self.timestamps, self.details = timestamps, details

    @property
    def bare(self):
        """Whether entries show as their `log` value alone, with no time window: what a read
        cache holds (logcache.py)."""
        return not (self.timestamps or self.details or self.since or self.until)

    def wants(self, stream, stamp):
        return stream in self.streams and self.in_window(stamp)

    def in_window(self, stamp):
        if not (self.since or self.until):
            return True
        seconds = rfc3339_seconds(stamp)
        return not (self.since and seconds < self.since or self.until and seconds > self.until)

    def prefix(self, stamp, attrs=None):
        """The bytes shown before an entry's own (b"" without --timestamps and --details)."""
        out = b""
        if self.timestamps:
            out += fixed_time(stamp).encode() + b" "
        if self.details:
            out += details_text(attrs).encode() + b" "
        return out


def fixed_time(stamp):
    """A stored time as `docker logs -t` shows it: Go's RFC3339NanoFixed, all nine fraction
    digits (the file keeps RFC3339Nano, whose trailing zeros are trimmed). A time that does not
    parse is shown as stored."""
    try:
        ns = rfc3339_ns(stamp)
    except ValueError:
        return stamp
    seconds, fraction = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%09dZ" % fraction


def details_text(attrs):
    """An entry's attrs as `docker logs --details` shows them: sorted by key, query-escaped,
    `k=v` joined by commas (empty without attrs)."""
    if not isinstance(attrs, dict):
        return ""
    return ",".join(f"{quote_plus(str(k), safe='')}={quote_plus(str(v), safe='')}"
                    for k, v in sorted(attrs.items()))


def utf8(text):
    """A decoded `log` value as bytes. JSON can spell a lone UTF-16 surrogate (\\ud800), which
    UTF-8 cannot; Go's decoder turns each into U+FFFD, and so does this."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(line):
    """(stream, log bytes, time, attrs) of one line, or None for a line that is not an entry
    (cut short by a crash, damaged). Raw control characters inside strings are accepted
    (strict=False), which the bulk path relies on: it passes them through too."""
    try:
        entry = json.loads(line, strict=False)
        stream, log, stamp = entry["stream"], entry["log"], entry["time"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(stream, str) and isinstance(log, str) and isinstance(stamp, str)):
        return None
    return stream, utf8(log), stamp, entry.get("attrs")


def render_entry(line, view):
    """(stream, bytes shown) of one line, or None when it is not shown: the reference."""
    entry = decode(line)
    if entry is None or not view.wants(entry[0], entry[2]):
        return None
    return entry[0], view.prefix(entry[2], entry[3]) + entry[1]


# The bulk path. The writer's entries from one read of a pipe share their stream and time
# (Writer.write stamps them together), so a run of consecutive lines looks like
#
#     {"log":"<body 1>\n","stream":"stdout","time":"T"}\n{"log":"<body 2>\n","stream":"stdout",...
#
# HEAD, a body, then one constant TAIL (which ends with the line's newline); only the bodies
# differ. A batch of lines is cut after its newlines (BytesIO.readlines: a memchr per line, each
# line keeps its newline), and each run handled with a few calls whatever its length: its end
# found by bisection on "ends with TAIL", the bodies sliced out by one map(), and the run checked
# exactly -- the bytes HEAD + (TAIL HEAD).join(bodies) + TAIL must be the ones in the batch (one
# join, one memcmp), so a line of another shape (other key order, attrs, no newline, damaged)
# can never be misread: its run goes line by line through render_entry. Bodies without '"', '\'
# or non-ASCII bytes are their own decoding; others are decoded by one json.loads per block.
# Bytes per line of Python-level work: none.

_HEAD = b'{"log":"'
_SUFFIX = re.compile(rb'","stream":"(stdout|stderr)","time":"([^"\\]*)"\}')


def render_lines(chunk, lines, view):
    """[(stream, bytes shown)] for `lines`, the complete lines of `chunk` in order, each with its
    newline (`chunk` is b"".join(lines), or begins so). Consecutive entries of one stream come
    merged."""
    out = _Blocks(view)
    n, i, off, guess = len(lines), 0, 0, 1
    suffix = None                       # the last run's: its stream and time, decided once
    while i < n:
        line = lines[i]
        k = line.rfind(b'","stream":"')
        if k < len(_HEAD) + 2 or not line.startswith(_HEAD) or not line.startswith(b"\\n", k - 2):
            out.add_reference(lines, i, i + 1)      # another shape, or no newline at the end
            i, off = i + 1, off + len(line)
            continue
        if not line.endswith(suffix or b"\0") or len(suffix) != len(line) - k:
            m = _SUFFIX.fullmatch(line, k, len(line) - 1) if line.endswith(b"\n") else None
            if m is None:
                out.add_reference(lines, i, i + 1)
                i, off = i + 1, off + len(line)
                continue
            suffix = line[k:]
            tail = b"\\n" + suffix
            stream, stamp = m.group(1).decode(), m.group(2).decode()
            shown = view.wants(stream, stamp)
            prefix = view.prefix(stamp) if shown else b""
        if i + 1 == n or not lines[i + 1].endswith(tail):
            # A run of one line (a container writing a line at a time): HEAD, body, TAIL
            # were checked just now.
            if shown:
                out.add_body(stream, prefix, line[len(_HEAD):k - 2], lines, i)
            i, off = i + 1, off + len(line)
            continue
        j = _run_end(lines, i, tail, guess)
        getter = operator.itemgetter(slice(len(_HEAD), -len(tail)))
        bodies = list(map(getter, lines[i:j])) if j - i < n else list(map(getter, lines))
        inner = (tail + _HEAD).join(bodies)
        end = off + len(_HEAD) + len(inner)
        if not (chunk.startswith(_HEAD, off) and chunk.startswith(inner, off + len(_HEAD))
                and chunk.startswith(tail, end)):
            out.add_reference(lines, i, j)                  # not one run after all
            i, off = j, off + sum(map(len, lines[i:j]))
            continue
        if shown:
            out.add_run(stream, prefix, bodies, lines, i, j)
        i, off, guess = j, end + len(tail), j - i
    return out.finish()


def _run_end(lines, i, tail, guess):
    """The index after the run of lines from `i` that end with `tail` (lines[i] does): a probe
    where the last run ended, then doubling steps, then bisection -- O(log n) endswith calls.
    It assumes the run is contiguous; render_lines checks every line of it afterwards."""
    n = len(lines)
    lo = i + 1                          # lines[lo - 1] is in the run
    if guess > 1 and i + guess - 1 < n and lines[i + guess - 1].endswith(tail):
        lo = i + guess
    step = 1
    while True:
        probe = lo + step - 1
        if probe >= n:
            hi = n
            break
        if not lines[probe].endswith(tail):
            hi = probe
            break
        lo, step = probe + 1, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if lines[mid].endswith(tail):
            lo = mid + 1
        else:
            hi = mid
    return lo


class _Blocks:
    """The shown bytes of a batch, merged per stream. Runs without a prefix are kept as bodies
    and joined once per block (one copy of the payload), checked then for anything to unescape."""

    def __init__(self, view):
        self.view = view
        self.blocks = []                # [(stream, bytes)]
        self.stream = None
        self.parts = []                 # bytes of the current stream's block
        self.bodies = []                # bodies of prefix-free runs not joined yet
        self.ranges = []                # (lines, i, j) they came from, to redo on a bad escape

    def _to(self, stream):
        if stream != self.stream:
            self._flush_bodies()
            if self.parts:
                self.blocks.append((self.stream, self.parts[0] if len(self.parts) == 1
                                    else b"".join(self.parts)))
            self.stream, self.parts = stream, []

    def add_run(self, stream, prefix, bodies, lines, i, j):
        self._to(stream)
        if not prefix:
            self.bodies += bodies
            self.ranges.append((lines, i, j))
            return
        self._flush_bodies()
        # prefix before every entry: p + b1 \n p + b2 \n ...
        data = prefix + (b"\n" + prefix).join(bodies) + b"\n"
        if not _plain(data):                    # (the prefix itself is plain ASCII)
            try:
                texts = json.loads(b'["' + b'\\n","'.join(bodies) + b'\\n"]', strict=False)
            except ValueError:
                self._reference(lines, i, j)
                return
            text_prefix = prefix.decode()
            data = utf8(text_prefix + text_prefix.join(texts))
        self.parts.append(data)

    def add_body(self, stream, prefix, body, lines, i):
        """add_run for a run of one line, without the lists."""
        if stream != self.stream:
            self._to(stream)
        if prefix:
            self.add_run(stream, prefix, [body], lines, i, i + 1)
        else:
            self.bodies.append(body)
            self.ranges.append((lines, i, i + 1))

    def add_reference(self, lines, i, j):
        self._flush_bodies()
        self._reference(lines, i, j)

    def _reference(self, lines, i, j):
        for line in lines[i:j]:
            shown = render_entry(line, self.view)
            if shown is not None:
                self._to(shown[0])
                self.parts.append(shown[1])

    def _flush_bodies(self):
        if not self.bodies:
            return
        self.bodies.append(b"")
        data = b"\n".join(self.bodies)          # every body gets its newline back
        ranges, self.bodies, self.ranges = self.ranges, [], []
        if not _plain(data):
            try:
                data = utf8(json.loads(b'"' + data.replace(b"\n", b"\\n") + b'"', strict=False))
            except ValueError:
                for lines, i, j in ranges:      # somewhere a body that does not decode
                    self._reference(lines, i, j)
                return
        self.parts.append(data)

    def finish(self):
        self._to(None)
        return self.blocks


def _plain(data):
    """Whether JSON string bodies are their own decoding: ASCII without '"' or '\\'."""
    return data.isascii() and b'"' not in data and b"\\" not in data


# -- reading: the files -------------------------------------------------------------------------

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


def last_lines(f, n, limit=-1):
    """The last `n` lines of an open file (of its first `limit` bytes, when that is not
    negative), each with its newline -- but an unfinished last one, which a crash may leave --
    reading backwards block by block. Each block is read and counted once, and joined once."""
    end = f.seek(0, os.SEEK_END)
    if limit >= 0:
        end = min(end, limit)
    if n <= 0 or end == 0:
        return []
    pos, blocks, newlines = end, [], 0
    while pos > 0 and newlines <= n:
        step = min(BLOCK, pos)
        pos -= step
        f.seek(pos)
        blocks.append(f.read(step))
        newlines += blocks[-1].count(b"\n")
    blocks.reverse()
    lines = io.BytesIO(b"".join(blocks)).readlines()
    if pos > 0:
        lines = lines[1:]                # the first piece may be the tail of a longer line
    return lines[-n:]


def _tail_lines(handles, tail):
    """The last `tail` lines over the rotated files, read backwards; `handles` are (file,
    bytes to read or -1 for all), oldest first (_upto)."""
    raw = []
    for f, limit in reversed(handles):     # newest file first
        if len(raw) >= tail:
            break
        raw = last_lines(f, tail - len(raw), limit) + raw
    return raw


READ_BLOCK = 256 << 10       # bytes per pread: a batch (~1,500 lines of 100 bytes) and its objects stay in L2
TAIL_BATCH = 8192            # lines per batch of a --tail


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


def batches(handles, tail=None, upto=None):
    """(chunk, lines) batches of the log's complete lines, each with its newline, oldest first
    (render_lines' input). Without `tail` each file is read READ_BLOCK at a time with pread, the
    next read starting at the first byte of the line a block cut, so nothing is copied to glue
    lines together; a line longer than a block doubles the read. An unfinished last line (a
    crash mid-write) is left out, as json decoding would. With `tail`, the last lines, read
    backwards (_tail_lines). `upto`: see _upto; with `tail` too, the lines are the last ones
    before that point (`logs -f --tail N` counts back from where the log stood when it
    subscribed)."""
    if tail is not None and tail >= 0:
        raw = _tail_lines(_upto(handles, upto), tail)
        for a in range(0, len(raw), TAIL_BATCH):
            lines = raw[a:a + TAIL_BATCH]
            yield b"".join(lines), lines
        return
    for f, limit in _upto(handles, upto):
        yield from _range_batches(f.fileno(), 0, limit)


def _range_batches(fd, off, limit):
    """batches() of one file's bytes from `off` (where a line begins) to `limit` (-1: its end)."""
    size = READ_BLOCK
    while limit < 0 or off < limit:
        chunk = os.pread(fd, size if limit < 0 else min(size, limit - off), off)
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            if len(chunk) < size:
                break                       # end of file (perhaps inside a line cut by a crash)
            size *= 2
            continue
        lines = io.BytesIO(chunk).readlines()
        if not lines[-1].endswith(b"\n"):
            lines.pop()                     # the piece after the last newline
        yield chunk, lines
        off, size = off + cut, READ_BLOCK


def read_shown(path, max_file=1, view=None, tail=None, upto=None):
    """What `docker logs` shows of the stored log: (stream, bytes) blocks, oldest first, entries
    of one stream merged. `tail` counts the newest lines over all files (None or negative: all);
    the view's since/until apply after it, as in moby."""
    view = view or View()
    handles = open_all(path, max_file)
    cache = logcache.open_for(path) if view.bare and (tail is None or tail < 0) \
        and len(handles) == 1 else None
    try:
        if cache is not None:
            yield from _shown_with_cache(cache, *_upto(handles, upto)[0], view)
            return
        for chunk, lines in batches(handles, tail, upto):
            yield from render_lines(chunk, lines, view)
    finally:
        for f in handles:
            f.close()
        if cache is not None:
            cache.close()


def _shown_with_cache(cache, f, limit, view):
    """read_shown of a log with a read cache (logcache.py): the records it may use, the log's
    parts between and after them decoded."""
    fd = f.fileno()
    if limit < 0:
        limit = os.fstat(fd).st_size
    pos = 0
    for start, end, stream, payload in logcache.records(cache.fileno(), fd, limit):
        if start > pos:
            for chunk, lines in _range_batches(fd, pos, start):
                yield from render_lines(chunk, lines, view)
        if stream in view.streams:
            yield stream, payload
        pos = end
    for chunk, lines in _range_batches(fd, pos, limit):
        yield from render_lines(chunk, lines, view)


def read(path, max_file=1, since=0, until=None, tail=None, upto=None):
    """Entries (stream, bytes, time string) across the rotated files, in order, decoded line by
    line (attach's replay of the log, and the reference the bulk path is tested against).

    `tail` counts the newest lines over all files (None or negative: all); then `since` and
    `until` (epoch seconds) drop entries outside the window, as moby does. `upto`: see _upto.
    """
    view = View(since=since, until=until)
    handles = open_all(path, max_file)
    try:
        entries = []
        for _, lines in batches(handles, tail, upto):
            for line in lines:
                entry = decode(line)
                if entry is not None and view.in_window(entry[2]):
                    entries.append(entry[:3])
        return entries
    finally:
        for f in handles:
            f.close()
