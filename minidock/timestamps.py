"""Timestamps as the Docker API writes and reads them.

Docker prints times in RFC 3339 (`2026-12-01T14:05:09.123456Z`, always UTC, `Z` suffix) and uses
Go's zero time, `0001-01-01T00:00:00Z`, for "never" (a container that never started has that
`StartedAt`). `docker ps` turns ages into Go's `units.HumanDuration` ("Up 3 minutes").
"""

import datetime

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_rfc3339():
    """The current UTC time, to the microsecond, in RFC 3339 with a `Z`."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 string; 0.0 for what is not one."""
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def since(stamp):
    """Seconds elapsed since an RFC 3339 time (0 for an unreadable one, never negative)."""
    try:
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())


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
