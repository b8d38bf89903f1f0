"""The json-file log driver: what `docker logs` reads.

Each container has `<data-root>/containers/<id>/<id>-json.log`, one JSON object per line:

    {"log": "hello\\n", "stream": "stdout", "time": "2026-12-01T14:05:09.123456Z"}

A line of output becomes one entry; output without a newline is kept until one comes, or
flushed as its own entry past 16 KiB and when the stream ends (Docker does the same). The
file survives daemon restarts. Reading filters by time (`since`, `until`, epoch seconds) and
keeps the last `tail` entries; following then continues with live output from the container's
pumps (minidock/container/stdio.py) until the container stops or the reader leaves.
"""

import json
import queue
import threading

from minidock import tailfile
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
        buffer = self.partial[stream] + data
        lines = buffer.split(b"\n")
        self.partial[stream] = lines.pop()
        out = [self._entry(stream, line + b"\n") for line in lines]
        if self.partial[stream] and len(self.partial[stream]) > PARTIAL_FLUSH:
            out.append(self._entry(stream, self.partial[stream]))
            self.partial[stream] = b""
        if out:
            with self.lock:
                self.file.write(b"".join(out))

    @staticmethod
    def _entry(stream, data):
        return json.dumps({"log": data.decode("utf-8", errors="replace"), "stream": stream,
                           "time": now_rfc3339()}).encode() + b"\n"

    def close(self):
        with self.lock:
            for stream, rest in self.partial.items():
                if rest:
                    self.file.write(self._entry(stream, rest))
                    self.partial[stream] = b""
            self.file.close()


def read(path, since=0, until=None, tail=None):
    """Log entries (stream, bytes, time string), oldest first, as a list."""
    return list(stream(path, since, until, tail))


def stream(path, since=0, until=None, tail=None):
    """The same entries, produced lazily: what `docker logs` sends as it reads.

    With `tail` the file is read from its end (tailfile.py), only as far back as the last
    `tail` entries in the time window reach: `logs --tail 1` of a gigabyte log reads a block,
    not the gigabyte. Without it the file is read forward line by line, never whole."""
    if tail is not None and tail >= 0:
        picked = []
        if tail:
            for line in tailfile.reverse_lines(path):
                entry = _entry(line, since, until)
                if entry is not None:
                    picked.append(entry)
                    if len(picked) == tail:
                        break
        return iter(picked[::-1])
    return (e for e in (_entry(line, since, until) for line in tailfile.forward_lines(path))
            if e is not None)


def _entry(line, since, until):
    try:
        entry = json.loads(line)
    except ValueError:
        return None            # a line cut short by a crash
    stamp = rfc3339_seconds(entry["time"])
    if since and stamp < since:
        return None
    if until and stamp > until:
        return None
    return entry["stream"], entry["log"].encode(), entry["time"]


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False):
    """`docker logs [-f]` of container `c`: (stream, bytes, time) for the wanted `streams`,
    the file's first, then (with `follow`, while it runs) live output as it comes, until the
    container stops, its output ends, or `stop()` (the client left) says so."""
    q = c.io.subscribe() if follow and c.running else None
    try:
        for name, data, stamp in stream(c.record["LogPath"], since=since, until=until, tail=tail):
            if name in streams:
                yield name, data, stamp
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
            name, data = item
            if name in streams:
                yield name, data, now_rfc3339()
    finally:
        if q is not None:
            c.io.unsubscribe(q)
