"""System routes: ping, version, info, events, auth."""

import json
import time

from minidock import errors, http
from minidock.events import FILTER_KEYS
from minidock.times import parse_timestamp


def get_ping(req):
    return http.Response(200, b"OK", [("Cache-Control", "no-cache, no-store, must-revalidate"),
                                      ("Pragma", "no-cache")], "text/plain; charset=utf-8")


def get_version(req):
    return req.render("version", req.daemon.version())


def get_info(req):
    return req.render("info", req.daemon.info())


def get_events(req):
    """Past events in [since, until], then (unless until has passed) live ones, as JSON lines."""
    filters = req.filters()
    unknown = set(filters) - FILTER_KEYS
    if unknown:
        raise errors.InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
    since = parse_timestamp(req.q("since"))
    until = parse_timestamp(req.q("until"))
    if since is not None and until is not None and since > until:
        raise errors.InvalidParameter("`since` time is after `until` time")
    events = req.daemon.events
    shape = req.shaper("event")

    def lines():
        if until is not None and until <= time.time_ns():
            stream = events.history(since, until, filters)
        else:
            stream = events.follow(since, until, filters, stop=req.disconnected)
        try:
            for event in stream:
                yield json.dumps(shape(event)).encode() + b"\n"
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()

    return http.StreamResponse(lines())


def post_auth(req):
    body = req.json(required=True)
    if not isinstance(body, dict):
        raise errors.InvalidParameter("auth config must be a JSON object")
    registry = getattr(req.daemon, "registry", None)
    if registry is None:
        raise errors.NotImplementedKind("registry login is not available in this build of minidock yet")
    return http.Response.json(registry.login(body))


ROUTES = [
    ("GET", "/_ping", get_ping),
    ("HEAD", "/_ping", get_ping),
    ("GET", "/version", get_version),
    ("GET", "/info", get_info),
    ("GET", "/events", get_events),
    ("POST", "/auth", post_auth),
]
