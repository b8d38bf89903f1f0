"""System routes: ping, version, info, events, auth."""

import json
import time

from minidock import errors, http, seccomp, spawner
from minidock.api.versions import route
from minidock.events import FILTER_KEYS
from minidock.times import parse_timestamp


def _degraded(daemon):
    """Why the daemon cannot start containers right now (its spawner is down), or None."""
    spawner = getattr(daemon, "spawner", None)
    return spawner.health() if spawner is not None and hasattr(spawner, "health") else None


def get_ping(req):
    """`OK`, and headers a client reads before choosing how to talk to us (the API version comes
    with every response): the builder to use (1, the classic one: minidock has no BuildKit) and
    the swarm state, both unversioned since moby 1.42; never cached (1.40). While the spawner is
    down (it is restarted) the answer is 503 "degraded": running containers are fine, new ones
    cannot start."""
    headers = [("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache"),
               ("Builder-Version", "1"), ("Swarm", "inactive")]
    daemon = req.daemon
    degraded = _degraded(daemon)
    if degraded:
        return http.Response(503, f"degraded: {degraded}".encode(), headers,
                             "text/plain; charset=utf-8")
    response = http.Response(200, b"OK", headers, "text/plain; charset=utf-8")
    # Nothing here depends on the request but its bytes (the version prefix, HEAD or GET): the
    # server may send this answer again to the same bytes until the daemon is degraded. (The
    # check runs before each repeat: _degraded() with its look-ups done once, here.)
    health = getattr(getattr(daemon, "spawner", None), "health", None)
    response.same_while = (lambda: health() is None) if health is not None else (lambda: True)
    return response


def get_version(req):
    return req.render("version", req.daemon.version())


def get_info(req):
    info = req.daemon.info()
    if seccomp.native_arch() and "name=seccomp,profile=builtin" not in info["SecurityOptions"]:
        info["SecurityOptions"] = ["name=seccomp,profile=builtin"] + list(info["SecurityOptions"])
    bound = spawner.process_bound()
    pids_rlimit = req.daemon.cgroups.pids_by_rlimit
    info["SystemStatus"] = list(info.get("SystemStatus") or []) + [
        ["Process bound", f"RLIMIT_NPROC {bound} per container (shared with the daemon's user "
                          f"namespace; --ulimit nproc overrides)" if bound else
                          "none (the daemon's RLIMIT_NPROC is unlimited)"],
        ["PIDs limit", "pids.max of the container's cgroup" if info.get("PidsLimit") else
                       "RLIMIT_NPROC in a user namespace of the container's own (per user "
                       "in the container)" if pids_rlimit else "not enforced (no pids cgroup)"]]
    if pids_rlimit:
        info["PidsLimit"] = True        # enforced, though not by the pids controller
    degraded = _degraded(req.daemon)
    if degraded:
        info["Warnings"] = list(info.get("Warnings") or []) + [
            f"WARNING: degraded: {degraded}; containers cannot be started until it is back"]
    return req.render("info", info)


DF_TYPES = ("container", "image", "volume", "build-cache")


def get_system_df(req):
    types = req.qlist("type") or DF_TYPES
    unknown = [t for t in types if t not in DF_TYPES]
    if unknown:
        raise errors.InvalidParameter(f"unknown object type: {unknown[0]}")
    return req.render("system_df", req.daemon.disk_usage(types))


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
    route("GET", "/system/df", get_system_df, since="1.25"),
    ("POST", "/auth", post_auth),
]
