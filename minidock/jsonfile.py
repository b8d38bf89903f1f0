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
        """Output bytes of `stream` ("stdout"/"stderr"): complete lines become entries."""
        with self.lock:
            buffer = self.partial[stream] + data
            lines = buffer.split(b"\n")
            rest = lines.pop()
            out = [self._entry(stream, line + b"\n") for line in lines]
            if len(rest) > PARTIAL_FLUSH:
                out.append(self._entry(stream, rest))
                rest = b""
            self.partial[stream] = rest
            for entry in out:
                self._append(entry)

    def _entry(self, stream, data):
        return json.dumps({"log": data.decode("utf-8", errors="replace"), "stream": stream,
                           "time": self.clock()}).encode() + b"\n"

    def _append(self, entry):
        # moby checks before the write: the file may pass max-size by this one entry.
        if self.max_size > 0 and self.size >= self.max_size:
            self._rotate()
        self.file.write(entry)
        self.size += len(entry)

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


def read(path, max_file=1, since=0, until=None, tail=None):
    """Entries (stream, bytes, time string) across the rotated files, in order.

    `tail` counts the newest lines over all files (None or negative: all); then `since` and
    `until` (epoch seconds) drop entries outside the window, as moby does.
    """
    handles = open_all(path, max_file)
    try:
        if tail is not None and tail >= 0:
            raw = []
            for f in reversed(handles):            # newest file first
                if len(raw) >= tail:
                    break
                raw = last_lines(f, tail - len(raw)) + raw
        else:
            raw = []
            for f in handles:
                raw.extend(f.read().splitlines())
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
