"""A container's log: which driver stores it, and what `docker logs` reads back.

`HostConfig.LogConfig` names the driver (jsonfile.check_log_config decided it at create, with
the daemon's `--log-driver`/`--log-opt` defaults):

    json-file   every line of output in `<data-root>/containers/<id>/<id>-json.log`, rotated by
                `max-size`/`max-file` (minidock/jsonfile.py has the format and the rules)
    none        nothing is stored: `docker logs` answers 501 "configured logging driver does
                not support reading", as Docker does; attach and `logs -f` still see live output

Reading filters by stream and time (`since`, `until`, epoch seconds), keeps the last `tail`
entries across the rotated files and adds the `--timestamps`/`--details` prefixes; the stored
part is decoded in bulk (jsonfile.render_lines: 256 KiB reads, runs of entries merged into large
blocks), or copied from the log's read cache where it covers it (logcache.py). Following then
continues with live output from the container's output loop (minidock/container/stdio.py)
until the container stops or the reader leaves.
"""

import os
import queue
import threading

from minidock import jsonfile
from minidock.times import now_rfc3339

EXIT_GRACE = 5.0      # seconds `logs -f` waits, after the output ended, for the exit to be recorded
READ_AHEAD_FROM = 8 << 20     # a stored log this large is decoded on a thread of its own
READ_AHEAD = 4                # items (up to MERGED bytes each) decoded ahead of the socket
MERGED = 256 << 10            # a large log's blocks of one stream go out joined up to this size


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
    """Stored entries (stream, bytes, time string), oldest first, across rotated files, decoded
    line by line (attach replays them); `upto`: where to stop (ContainerIO.subscribe(mark=True))."""
    if not stored(c):
        return []
    _, max_file = jsonfile.rotation(_config(c).get("Config") or {})
    return jsonfile.read(c.record["LogPath"], max_file, since=since, until=until, tail=tail, upto=upto)


def entries(c, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False,
            timestamps=False, details=False):
    """`docker logs [-f]` of container `c`: (stream, bytes shown) blocks of the wanted `streams`
    within since/until, each entry after its --timestamps/--details prefix; the file's first --
    decoded in bulk, entries of one stream merged into large blocks -- then (with `follow`,
    while it runs) live output as it comes, until the container stops, its output ends, or
    `stop()` (the client left) says so."""
    view = jsonfile.View(streams, since, until, timestamps, details)
    # The stored part ends where the log stood at the subscription: what follows is in the
    # queue (read to the end instead, output written meanwhile would come twice).
    q, upto = c.io.subscribe(mark=True) if follow and c.running else (None, None)
    try:
        if stored(c):
            _, max_file = jsonfile.rotation(_config(c).get("Config") or {})
            path = c.record["LogPath"]
            blocks = jsonfile.read_shown(path, max_file, view, tail=tail, upto=upto)
            if (tail is None or tail < 0) and _size(path, max_file) >= READ_AHEAD_FROM:
                blocks = ahead(merged(blocks, MERGED), READ_AHEAD)
            yield from blocks
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
            stamp = now_rfc3339()
            if view.wants(name, stamp):
                yield name, view.prefix(stamp) + data
    finally:
        if q is not None:
            c.io.unsubscribe(q)


def _size(path, max_file):
    total = 0
    for name in jsonfile.files(path, max_file):
        try:
            total += os.stat(name).st_size
        except FileNotFoundError:
            pass
    return total


def merged(blocks, size):
    """Consecutive (stream, bytes) blocks of one stream joined until they hold `size` bytes.

    Handing a block from the decoding thread to the one that sends it costs a wake-up and a
    hand-over of the GIL, and each of its two sends (frame header, bytes) returns into a thread
    that must win the GIL back from the decoder: a 256 KiB read holds ~150 KB of 100-byte
    lines' payload, so ~7 hand-overs and ~14 sends per MiB, against ~4 and ~8 at MERGED. The
    join is one copy (~0.1 ms per MiB); the client's demuxed bytes are the same. Joined up to
    1 MiB instead, each block was a fresh allocation whose pages faulted in: ~2,900 minor faults
    per 67 MB of log, against a handful at 256 KiB (docs/performance.md, session of 19:01)."""
    stream, parts, held = None, [], 0
    for name, data in blocks:
        if name != stream or held >= size:
            if parts:
                yield stream, parts[0] if len(parts) == 1 else b"".join(parts)
            stream, parts, held = name, [], 0
        parts.append(data)
        held += len(data)
    if parts:
        yield stream, parts[0] if len(parts) == 1 else b"".join(parts)


_END = object()


class _Failed:
    def __init__(self, exc):
        self.exc = exc


def ahead(blocks, depth):
    """Iterate the generator `blocks` on a thread of its own, at most `depth` items ahead.

    Decoding a log holds the GIL; sending a block to the client does not (sendall waits in the
    kernel for the client to read). With the decoding on its own thread, the next blocks are
    decoded while one is on its way, instead of one after the other. The thread ends with the
    log, with an error (raised here, in the reader), or when the reader goes away (close() of
    this generator): it never waits more than a moment on a full queue nobody empties."""
    q = queue.Queue(depth)
    gone = threading.Event()

    def put(item):
        while not gone.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in blocks:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:          # handed to the reader, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(blocks, "close", None)   # a generator: its finally closes the files
            if close:
                close()

    threading.Thread(target=produce, name="logs-ahead", daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        gone.set()
