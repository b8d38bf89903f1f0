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


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False):
    """`docker logs [-f]` of container `c`: (stream, bytes, time) for the wanted `streams`,
    the file's first, then (with `follow`, while it runs) live output as it comes, until the
    container stops, its output ends, or `stop()` (the client left) says so."""
    q = c.io.subscribe() if follow and c.running else None
    try:
        for stream, data, stamp in read(c.record["LogPath"], since=since, until=until, tail=tail):
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
