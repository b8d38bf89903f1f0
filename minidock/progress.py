"""The JSON-lines progress stream: what `docker pull`, `push`, `load` and `build` read and render.

Long operations answer `200` at once and then write one JSON object per line while they work.
Docker's `jsonmessage` format, which the CLI turns into progress bars:

    {"status": "Pulling fs layer", "id": "a3ed95caeb02", "progressDetail": {}}
    {"status": "Downloading", "id": "a3ed95caeb02", "progressDetail": {"current": 1048576,
     "total": 2097152}, "progress": "[=========================>      ]  1.049MB/2.097MB"}
    {"stream": "Step 1/3 : FROM busybox\n"}                     build output
    {"aux": {"ID": "sha256:..."}}                               a result for programs
    {"error": "msg", "errorDetail": {"message": "msg", "code": 1}}

The last form is how a failure is reported once the `200` is gone: the CLI prints the message and
exits non-zero (with `code` as its status, for a failed build step). `error_line` is the one place
that form is written.
"""

import json
import threading

from minidock import errors


class Cancelled(Exception):
    """The client went away and the work stopped where it checked; nothing half-done was kept."""


def human_size(n):
    """docker/go-units HumanSize: decimal units, 4 significant digits ("1.049MB")."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    n, i = float(n), 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000.0, i + 1
    return f"{n:.4g}{units[i]}"


def progress_bar(current, total, width=50):
    """The `progress` string of a JSON progress line: `[=====>     ]  1.2MB/3.4MB`."""
    if not total or total <= 0:
        return f"{human_size(current):>8}"
    pct = min(current / total, 1.0)
    filled = int(width * pct)
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    return f"[{bar}] {human_size(current):>8}/{human_size(total)}"


def status_line(status, id=None, current=None, total=None):
    """A progress line dict: {"status", "id", "progressDetail", "progress"} as dockerd writes it."""
    line = {"status": status}
    if current is not None:
        line["progressDetail"] = {"current": current, "total": total} if total else {"current": current}
        line["progress"] = progress_bar(current, total)
    elif id is not None:
        line["progressDetail"] = {}
    if id is not None:
        line["id"] = id
    return line


def error_message(exc):
    """What a failure says to the user: an error kind's own message, else the exception's type
    and text (an unexpected failure is still reported, not swallowed)."""
    if isinstance(exc, errors.MinidockError):
        return exc.message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_line(failure, code=None):
    """The final line of a failed stream, from an exception or a message; `code` defaults to the
    exception's own `code` attribute (a failed RUN step's exit status)."""
    message = failure if isinstance(failure, str) else error_message(failure)
    if code is None and not isinstance(failure, str):
        code = getattr(failure, "code", None)
    detail = {"message": message}
    if code is not None:
        detail["code"] = code
    return {"errorDetail": detail, "error": message}


def json_line(obj):
    """One progress object as the bytes of a JSON-lines stream."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\r\n"


def short_id(digest):
    """The 12 hex digits a progress line's `id` shows for a blob or layer."""
    return digest.split(":", 1)[-1][:12]


class Reporter:
    """Thread-safe funnel for progress lines (downloads report from worker threads):
    `say(status, id, current, total)` for a status line, `say.raw(dict)` for any other."""

    def __init__(self, emit):
        self._emit = emit or (lambda line: None)
        self._lock = threading.Lock()

    def __call__(self, status, id=None, current=None, total=None):
        self.raw(status_line(status, id, current, total))

    def raw(self, line):
        with self._lock:
            self._emit(line)
