"""A container's log: which driver stores it, and what `docker logs` reads back.

`HostConfig.LogConfig` names the driver (jsonfile.check_log_config decided it at create, with
the daemon's `--log-driver`/`--log-opt` defaults):

    json-file   every line of output in `<data-root>/containers/<id>/<id>-json.log`, rotated by
                `max-size`/`max-file` (minidock/jsonfile.py has the format and the rules)
    none        nothing is stored: `docker logs` answers 501 "configured logging driver does
                not support reading", as Docker does; attach and `logs -f` still see live output

Reading filters by time (`since`, `until`, epoch seconds) and keeps the last `tail` entries
across the rotated files; without timestamps, since or until it reads in bulk (4 MiB blocks,
runs of entries merged into large frames). Following then continues with live output from the
container's output loop (minidock/container/stdio.py) until the container stops or the reader
leaves.
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


def read(c, since=0, until=None, tail=None, upto=None):
    """Stored entries (stream, bytes, time string), oldest first, across rotated files;
    `upto`: where to stop (ContainerIO.subscribe(mark=True))."""
    if not stored(c):
        return []
    _, max_file = jsonfile.rotation(_config(c).get("Config") or {})
    return jsonfile.read(c.record["LogPath"], max_file, since=since, until=until, tail=tail, upto=upto)


def read_blocks(c, tail=None, upto=None):
    """The stored payload as (stream, bytes) blocks of merged entries (jsonfile.read_blocks)."""
    if not stored(c):
        return
    _, max_file = jsonfile.rotation(_config(c).get("Config") or {})
    yield from jsonfile.read_blocks(c.record["LogPath"], max_file, tail=tail, upto=upto)


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False,
            timestamps=True):
    """`docker logs [-f]` of container `c`: (stream, bytes, time) for the wanted `streams`,
    the file's first, then (with `follow`, while it runs) live output as it comes, until the
    container stops, its output ends, or `stop()` (the client left) says so. When nobody needs
    an entry's own time (no timestamps, since or until), the stored part comes as large blocks
    of merged entries (time None), decoded in bulk."""
    # The stored part ends where the log stood at the subscription: what follows is in the
    # queue (read to the end instead, output written meanwhile would come twice).
    q, upto = c.io.subscribe(mark=True) if follow and c.running else (None, None)
    try:
        if timestamps or since or until:
            stored_part = read(c, since=since, until=until, tail=tail, upto=upto)
        else:
            stored_part = ((stream, data, None) for stream, data in read_blocks(c, tail=tail, upto=upto))
        for stream, data, stamp in stored_part:
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
            name, data = item
            if name in streams:
                yield name, data, now_rfc3339()
    finally:
        if q is not None:
            c.io.unsubscribe(q)
