"""Time as Docker writes and reads it: RFC 3339 with nanoseconds, API timestamps, durations.

Docker is written in Go, and every time it stores or prints is Go's `time.RFC3339Nano` in UTC:

    2024-05-01T12:34:56.123456789Z      the fraction is trimmed of trailing zeros,
    2024-05-01T12:34:56.1Z              and left out entirely when it is zero:
    2024-05-01T12:34:56Z

Container `Created`/`StartedAt`/`FinishedAt`, image `created`, volume `CreatedAt` and every
json-file log line carry that form. Python's `datetime` stops at microseconds, so the nanosecond
clock (`time.time_ns()`) is formatted here by hand; parsing keeps all nine digits too, which is
what lets `docker logs --since` with a log line's own timestamp select exactly that line.

The API's `since`/`until` query values (events, logs) are another spelling: unix seconds with an
optional fraction, `1700000000.5`, which the docker CLI sends after turning `10m` or a date into
one; RFC 3339 is accepted as well. Values are held as integer nanoseconds.

Durations are written as Go's `time.ParseDuration` reads them: `1m30s`, `1.5h`, `300ms` (units
ns, us/µs, ms, s, m, h), as in `HEALTHCHECK --interval=30s`. `docker ps` shows ages as Go's
`units.HumanDuration` ("Up 5 minutes", "Exited (0) 2 hours ago").
"""

import datetime
import functools
import re
import time

from minidock import errors

NS = 1_000_000_000
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
ZERO_TIME = "0001-01-01T00:00:00Z"     # Go's zero time: Docker's "never" (StartedAt of a new container)

_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                      r"(?:([Zz])|([+-])(\d\d):(\d\d))?$")


def format_rfc3339(ns):
    """Integer unix nanoseconds -> RFC3339Nano in UTC, Go's form."""
    seconds, fraction = divmod(int(ns), NS)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return text + (f".{digits}" if digits else "") + "Z"


def now_rfc3339():
    """The current time as Docker stores it."""
    return format_rfc3339(time.time_ns())


@functools.lru_cache(maxsize=8192)
def rfc3339_ns(text):
    """RFC 3339 (any fraction length, "Z", an offset, or none meaning UTC) -> integer unix
    nanoseconds. Raises ValueError for anything else. Cached: `docker ps` turns every
    container's Created/StartedAt/FinishedAt into numbers on every call, and they rarely change."""
    m = _RFC3339.match(text or "")
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    datetime.datetime(year, month, day, hour, minute, min(second, 59))    # ValueError for 2023-13-45
    # calendar.timegm's arithmetic, without importing calendar (and locale with it) at start-up
    days = datetime.date(year, month, day).toordinal() - _EPOCH_ORDINAL
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = int(((m.group(7) or "") + "000000000")[:9])
    return seconds * NS + fraction


def rfc3339_seconds(text, default=0.0):
    """RFC 3339 -> unix seconds as a float; `default` when the text is empty or malformed
    (records written by older versions may lack a time)."""
    try:
        return rfc3339_ns(text) / NS
    except ValueError:
        return default


def unix_seconds(text):
    """RFC 3339 -> whole unix seconds, as the API shows `Created` of images (0 if missing)."""
    return int(rfc3339_seconds(text))


def seconds_since(text):
    """How long ago an RFC 3339 time was, in seconds (0 for a malformed or future one)."""
    try:
        return max(0.0, (time.time_ns() - rfc3339_ns(text)) / NS)
    except ValueError:
        return 0.0


def parse_timestamp(text):
    """An API `since`/`until` value -> integer unix nanoseconds, or None when absent.

    Unix seconds with an optional fraction ("1700000000", "1700000000.000000001") or RFC 3339.
    Anything else is the client's mistake: InvalidParameter."""
    if text is None or text == "":
        return None
    seconds, dot, fraction = text.partition(".")
    if seconds.lstrip("-").isdigit() and (not dot or fraction.isdigit()):
        return int(seconds) * NS + int((fraction + "000000000")[:9])
    try:
        return rfc3339_ns(text)
    except ValueError:
        raise errors.InvalidParameter(f"invalid timestamp {text!r}") from None


DURATION_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6,
                   "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_duration(text):
    """Go's time.ParseDuration ("1m30s", "1.5h", "300ms") -> integer nanoseconds."""
    s = text
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        if unit == "":
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        total += float(number) * DURATION_UNITS[unit]
        pos = match.end()
    return sign * int(round(total))


def parse_filter_time(text, now_ns=None):
    """A filter's `until` (prune, image list): a timestamp as `parse_timestamp` reads it, or a Go
    duration meaning that long before now (`24h`, `10m`), as moby's `GetTimestamp` does."""
    try:
        ago = parse_duration(text)
    except ValueError:
        return parse_timestamp(text)
    return (time.time_ns() if now_ns is None else now_ns) - ago


def human_duration(seconds):
    """Go's units.HumanDuration, which `docker ps` shows."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days"
    if days < 60:
        return f"{int(days / 7)} weeks"
    if days < 365 * 2:
        return f"{int(days / 30)} months"
    return f"{int(days / 365)} years"
