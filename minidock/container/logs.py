"""A container's log: which driver stores it, and what `docker logs` reads back.

`HostConfig.LogConfig` names the driver (jsonfile.check_log_config decided it at create, with
the daemon's `--log-driver`/`--log-opt` defaults):

    json-file   every line of output in `<data-root>/containers/<id>/<id>-json.log`, rotated by
                `max-size`/`max-file` (minidock/jsonfile.py has the format and the rules)
    none        nothing is stored: `docker logs` answers 501 "configured logging driver does
                not support reading", as Docker does; attach and `logs -f` still see live output

Reading filters by time (`since`, `until`, epoch seconds) and keeps the last `tail` entries
across the rotated files; following then continues with live output from the container's pumps
(minidock/container/stdio.py) until the container stops or the reader leaves.
"""

import queue

from minidock import jsonfile
from minidock.times import now_rfc3339

EXIT_GRACE = 5.0      # seconds `logs -f` waits, after the output ended, for the exit to be recorded


class Discard:
    """The `none` driver's writer."""

    def write(self, stream, data):
        pass

    def close(self):
        pass


def _config(c):
    return c.host_config.get("LogConfig") or {"Type": "json-file", "Config": {}}


def stored(c):
    return _config(c).get("Type", "json-file") == "json-file"


def writer(c):
    """The writer one run of `c` feeds its output to (the pumps call write/close)."""
    if not stored(c):
        return Discard()
    return jsonfile.Writer.for_config(c.record["LogPath"], _config(c))


def check_readable(c):
    """501 for `docker logs` of a container whose driver stores nothing."""
    if not stored(c):
        raise jsonfile.cannot_read(_config(c))


def read(c, since=0, until=None, tail=None):
    """Stored entries (stream, bytes, time string), oldest first, across rotated files."""
    if not stored(c):
        return []
    _, max_file = jsonfile.rotation(_config(c).get("Config") or {})
    return jsonfile.read(c.record["LogPath"], max_file, since=since, until=until, tail=tail)


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False):
    """`docker logs [-f]` of container `c`: (stream, bytes, time) for the wanted `streams`,
    the file's first, then (with `follow`, while it runs) live output as it comes, until the
    container stops, its output ends, or `stop()` (the client left) says so."""
    q = c.io.subscribe() if follow and c.running else None
    try:
        for stream, data, stamp in read(c, since=since, until=until, tail=tail):
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
