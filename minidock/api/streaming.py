"""Responses produced by a worker thread: pull/push progress, build output, tar streams.

Some answers take a long time to produce and are sent while they are produced. The handler
returns at once with a `StreamResponse`; a worker thread does the work and feeds a `Pipe`, and the
server's thread forwards what arrives to the client. The pipe is bounded, so a slow client slows
the worker down instead of the daemon buffering a whole image in memory. When the client goes
away the pipe notices and `cancelled()` turns true for the worker to check between steps;
further progress lines are dropped, and a raw `put`/`write` (a tar being written) raises
BrokenPipeError, which ends the worker quietly.

`progress_response` is the form every JSON-lines operation (pull, push, insert, build) takes:
a failure after the `200` becomes the error line of `minidock/progress.py`, which the CLI prints.
"""

import json
import logging
import queue
import threading

from minidock import errors, http, progress

log = logging.getLogger("minidock.api")

CHUNK = 1 << 16
_END = None


class Pipe:
    """The worker's end of a streamed response: bytes, JSON lines, or a file-like writer."""

    def __init__(self, maxsize):
        self._q = queue.Queue(maxsize)
        self.gone = threading.Event()
        self._buf = bytearray()

    def cancelled(self):
        return self.gone.is_set()

    def put(self, item):
        while True:
            if self.gone.is_set():
                raise BrokenPipeError("client went away")
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def json_line(self, obj):
        """Send one progress message. Once the client has left, messages are dropped rather than
        raised: the work stops where it checks `cancelled()`, which lets it clean up first (a
        build kills its RUN container, a pull removes staged files)."""
        try:
            self.put(json.dumps(obj).encode() + b"\r\n")
        except BrokenPipeError:
            pass

    # file-like, for tar writers
    def write(self, data):
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self):
        if self._buf:
            self.put(bytes(self._buf))
            self._buf.clear()


def worker_response(req, work, maxsize=64, name="stream", **response_kwargs):
    """Run `work(pipe)` in a thread and stream what it puts; see the module docstring."""
    pipe = Pipe(maxsize)

    def run():
        try:
            work(pipe)
            pipe.flush()
        except BrokenPipeError:
            pass
        except Exception:          # noqa: BLE001 - the 200 is gone: log it, the client sees the stream end
            log.exception("%s %s: streaming worker failed", req.method, req.path)
        finally:
            try:
                pipe.put(_END)
            except BrokenPipeError:
                pass

    threading.Thread(target=run, daemon=True, name=name).start()

    def chunks():
        try:
            while True:
                try:
                    item = pipe._q.get(timeout=0.5)
                except queue.Empty:
                    if req.disconnected():
                        return
                    continue
                if item is _END:
                    return
                yield item
        finally:
            pipe.gone.set()

    return http.StreamResponse(chunks(), **response_kwargs)


def progress_response(req, work, name="progress"):
    """Stream `work(pipe)`'s JSON lines. Cancellation (the client left) ends it quietly; any
    failure becomes the final error line (unexpected ones are logged with their traceback)."""
    def run(pipe):
        try:
            work(pipe)
        except progress.Cancelled:
            pass
        except BrokenPipeError:
            raise
        except Exception as exc:          # noqa: BLE001 - reported to the client, not swallowed
            if not isinstance(exc, errors.MinidockError):
                log.exception("%s %s: %s failed", req.method, req.path, name)
            pipe.json_line(progress.error_line(exc))
    return worker_response(req, run, name=name)
