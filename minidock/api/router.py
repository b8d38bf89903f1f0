"""Routing: version prefixes, path patterns, methods, query parsing, and error rendering.

A request path may carry an API version prefix, `/v1.24/containers/json`; without one the newest
version applies. The prefix is stripped, checked against what we support (`versions.check`), and
the rest is matched against the route table, skipping routes that do not exist in that version.
Patterns use `{name}` for one path segment and `{name:path}` for anything including slashes (image
names such as `localhost:5000/team/app` live in URLs unescaped).

Handlers never see the version: `ApiRequest.render` and `ApiRequest.adapt` hand it to
`versions.py`, which shapes the answer (and reads old request forms) for it.

Errors raised anywhere below a handler become `{"message": ...}` with the status of their kind
(`errors.status_for`); this module is the only place that happens for API requests.
"""

import json
import logging
import re

from minidock import errors, http, httpserver
from minidock.api import versions

log = logging.getLogger("minidock.api")

VERSION_PREFIX = re.compile(r"^/v([0-9]+(?:\.[0-9]+)?)(/.*)$")
TRUE_WORDS = {"1", "true", "True", "yes"}
FALSE_WORDS = {"0", "false", "False", "no", ""}


class ApiRequest:
    """A request as handlers see it: version, path parameters, typed query access, JSON body."""

    def __init__(self, http_request, version, params, daemon):
        self.http = http_request
        self.head = http_request.head
        self.method = self.head.method
        self.path = self.head.path
        self.version = version
        self.params = params
        self.daemon = daemon
        self.body = http_request.body

    # -- query parameters ------------------------------------------------------------------
    def q(self, name, default=None):
        values = self.head.query.get(name)
        return values[-1] if values else default

    def qlist(self, name):
        return list(self.head.query.get(name, []))

    def has(self, name):
        return name in self.head.query

    def qbool(self, name, default=False):
        """Booleans as the API documents them: 1/True/true or 0/False/false."""
        value = self.q(name)
        if value is None:
            return default
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise errors.InvalidParameter(f"invalid boolean value for {name!r}: {value!r}")

    def qint(self, name, default=None):
        value = self.q(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise errors.InvalidParameter(f"invalid integer value for {name!r}: {value!r}")

    def qjson(self, name, default=None):
        value = self.q(name)
        if not value:
            return default
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise errors.InvalidParameter(f"invalid JSON in query parameter {name!r}: {exc}")
        except RecursionError:
            raise errors.InvalidParameter(f"JSON in query parameter {name!r} nested too deeply")
        http.check_json_value(parsed)
        return parsed

    def filters(self, name="filters"):
        """Docker's filters argument: {"key": ["v1", ...]} (or the old {"key": {"v1": true}})."""
        raw = self.qjson(name, {}) or {}
        if not isinstance(raw, dict):
            raise errors.InvalidParameter("filters must be a JSON object")
        result = {}
        for key, values in raw.items():
            if isinstance(values, dict):
                values = [k for k, v in values.items() if v]
            elif isinstance(values, str):
                values = [values]
            elif not isinstance(values, list):
                raise errors.InvalidParameter(f"invalid filter {key!r}")
            result[key] = [str(v) for v in values]
        return result

    # -- body --------------------------------------------------------------------------------
    def json(self, required=False):
        http.check_json_content_type(self.head)
        return http.read_json_body(self.body, allow_empty=not required)

    def disconnected(self):
        return self.http.disconnected()

    # -- answers, shaped for the request's API version -----------------------------------------
    def render(self, kind, model, status=200, stream=False, **response_kwargs):
        """The reply for `model` of `kind` as this request's API version shows it: a JSON body
        (None: an empty one), or with `stream` one JSON line of a JSON-lines stream.

        `model` may be a function that produces it later (a wait): a streamed reply sends its
        headers at once and the body when the function returns; otherwise it is called now."""
        form = versions.reply(kind, self.version, status=status, stream=stream)
        if model is None:
            return http.Response.empty(form["status"])
        version = self.version

        def body():
            return versions.render(kind, model() if callable(model) else model, version)
        if form["stream"]:
            return http.StreamResponse((json.dumps(body()).encode() + b"\r\n" for _ in (1,)), status=form["status"],
                                       **response_kwargs)
        return http.Response.json(body(), status=form["status"], **response_kwargs)

    def form(self, kind, **newest):
        """How a `kind` reply looks at this request's version, `newest` being today's form."""
        return versions.reply(kind, self.version, **newest)

    def stdio_type(self, tty):
        """The Content-Type of an attach, exec or logs stream: raw bytes with a TTY, else frames."""
        return self.form("stdio_stream", content_type=versions.RAW_STREAM if tty
                         else versions.MULTIPLEXED_STREAM)["content_type"]

    def shaper(self, kind):
        """A function shaping one `kind` model after another for this version (streams of events)."""
        version = self.version
        return lambda model: versions.render(kind, model, version)

    def adapt(self, kind, args):
        """The version-neutral arguments of this request, `args` being the newest form's; older
        clients' forms are read by the request steps in versions.py."""
        return versions.adapt(kind, args, self)


# -- how the HTTP server runs each route (httpserver.py: INLINE, QUICK or THREAD) ----------------
# A route is THREAD unless listed here: its request gets a thread of its own, as any request
# that may wait (on a container, the spawner, a registry, the client's body or a stream) needs.
# That default is the safe one: a new route that blocks cannot stall anyone else.
#
# QUICK routes answer from the daemon's memory and return at once; the server's small worker
# pool runs them in arrival order. Each names the query parameters that make it slow (`size`
# walks a container's writable layer): with one of those set, the request gets a thread.
# INLINE routes are answered in the event loop itself, the moment they are read: a few
# microseconds of work that takes no lock at all (`/_ping`, which every docker CLI command
# sends first; `/version`, constants and uname(2), which docker-py and docker-compose ask
# when they start: the hand-over to a worker cost it ~70 us of its ~175 here).
INLINE_ROUTES = {("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/version")}
QUICK_ROUTES = {
    ("GET", "/containers/json"): ("size",),
    ("GET", "/containers/ps"): ("size",),
    ("GET", "/containers/{id}/json"): ("size",),
    ("GET", "/exec/{id}/json"): (),
    ("GET", "/images/json"): (),
    ("GET", "/images/{name:path}/json"): (),
    ("GET", "/images/{name:path}/history"): (),
    ("GET", "/networks"): (),
    ("GET", "/networks/{id}"): (),
    ("GET", "/volumes"): (),
    ("GET", "/volumes/{name}"): (),
}


def serving_mode_of(method, pattern):
    """-> (mode, query parameters that make the request a THREAD one) for a route."""
    if (method, pattern) in INLINE_ROUTES:
        return httpserver.INLINE, ()
    if (method, pattern) in QUICK_ROUTES:
        return httpserver.QUICK, QUICK_ROUTES[(method, pattern)]
    return httpserver.THREAD, ()


def _first_segment(pattern):
    """'/containers/{id}/json' -> 'containers'; None when the first segment is a parameter."""
    segment = pattern.split("/", 2)[1]
    return None if "{" in segment else segment


def compile_pattern(pattern):
    regex = ""
    for part in re.split(r"(\{[a-z_]+(?::path)?\})", pattern):
        if part.startswith("{"):
            name, _, kind = part[1:-1].partition(":")
            regex += f"(?P<{name}>.+)" if kind == "path" else f"(?P<{name}>[^/]+)"
        else:
            regex += re.escape(part)
    return re.compile(f"^{regex}$")


class Router:
    """The application callable given to the HTTP server."""

    def __init__(self, routes, daemon, cors_origin=None):
        self.daemon = daemon
        self.cors_origin = cors_origin
        # First match wins, so a table lists literal paths (`/images/search`) before the
        # `{name:path}` patterns that could also swallow them.
        # A route is (method, pattern, handler) or, made by versions.route(), with a 4th element:
        # the (since, until) span of API versions it exists in.
        self.routes = [(entry[0], entry[1], entry[2],
                        entry[3] if len(entry) > 3 else (versions.MIN, versions.MAX),
                        serving_mode_of(entry[0], entry[1]))
                       for entry in routes]
        # The routes a path can match, by its first segment: every pattern begins with a
        # literal one (`/containers/...`), so a request is matched against a dozen patterns,
        # not all hundred (a linear scan cost up to 12 us a request). Table order is kept
        # within each group, so the first match is the same as in the whole table; a pattern
        # that began with a parameter would be in every group (and in group None, for paths
        # whose first segment no literal pattern names).
        self._groups = {None: [r for r in self.routes if _first_segment(r[1]) is None]}
        for route in self.routes:
            segment = _first_segment(route[1])
            if segment is not None and segment not in self._groups:
                self._groups[segment] = [r for r in self.routes
                                         if _first_segment(r[1]) in (segment, None)]
        # A group's patterns are compiled when the first path of its segment comes: all 109
        # at start-up took 3.5-7 ms of it, and a daemon may never see most segments. Two
        # first requests at once may both compile a group; either list serves.
        self._compiled = {}             # segment -> [(method, regex, handler, span, mode)]

    def _compile(self, segment):
        if segment not in self._groups:
            segment = None              # (not kept under its own name: paths are the client's)
            if None in self._compiled:
                return self._compiled[None]
        group = [(method, compile_pattern(pattern), handler, span, mode)
                 for method, pattern, handler, span, mode in self._groups[segment]]
        self._compiled[segment] = group
        return group

    def match(self, method, path, version=versions.MAX):
        """Find (handler, params) or raise NotFound / MethodNotAllowed.

        A route of this method and path that exists only in other API versions makes the answer
        404, as from a daemon that does not have it, even where a broader pattern of another
        method matches too (`GET /images/viz` at v1.24 is not `DELETE /images/{name}`)."""
        handler, params, _ = self._find(method, path, version)
        return handler, params

    def _find(self, method, path, version):
        allowed, elsewhere = set(), False
        segment = path.split("/", 2)[1] if path[:1] == "/" else None
        for route_method, regex, handler, span, mode in (self._compiled.get(segment)
                                                          or self._compile(segment)):
            m = regex.match(path)
            if not m:
                continue
            if not versions.exists(span, version):
                elsewhere = elsewhere or route_method == method
                continue
            if route_method == method:
                return handler, m.groupdict(), mode
            allowed.add(route_method)
        if allowed and not elsewhere:
            raise errors.MethodNotAllowed(f"method {method} not allowed for {path}"
                                          f" (allowed: {', '.join(sorted(allowed))})")
        raise errors.NotFound(f"page not found: {path}")

    def serving_mode(self, head):
        """How the HTTP server should run this request: INLINE, QUICK or THREAD. The route found
        is kept on the head for dispatch(); a request that matches no route is answered with
        its error quickly."""
        try:
            path, version = self._split_version(head.path)
            handler, params, (mode, slow_params) = self._find(head.method, path, version)
        except errors.MinidockError:
            return httpserver.QUICK
        head.route = (handler, params, version)
        if any(head.query.get(name, ["0"])[-1] not in FALSE_WORDS for name in slow_params):
            return httpserver.THREAD
        return mode

    def __call__(self, request):
        try:
            response = self.dispatch(request)
        except Exception as exc:
            if not isinstance(exc, errors.MinidockError):
                log.exception("%s %s failed", request.head.method, request.head.target)
            elif exc.status >= 500:
                log.error("%s %s: %s", request.head.method, request.head.target, exc.message)
            response = http.error_response(exc)
        if self.cors_origin and not isinstance(response, http.Hijack):
            response.headers += self.cors_headers()
        return response

    def cors_headers(self):
        return [("Access-Control-Allow-Origin", self.cors_origin),
                ("Access-Control-Allow-Headers",
                 "Origin, X-Requested-With, Content-Type, Accept, X-Registry-Auth"),
                ("Access-Control-Allow-Methods", "HEAD, GET, POST, DELETE, PUT, OPTIONS")]

    @staticmethod
    def _split_version(path):
        """-> (the path without its /vX.Y prefix, the API version it asks for)."""
        m = VERSION_PREFIX.match(path)
        if m:
            return m.group(2), versions.check(m.group(1))
        return path, versions.MAX

    def dispatch(self, request):
        head = request.head
        routed = head.route                          # found already by serving_mode()
        if routed is None:
            path, version = self._split_version(head.path)
        if head.method == "OPTIONS" and self.cors_origin:
            return http.Response.empty(200)
        if routed is not None:
            handler, params, version = routed
        else:
            handler, params = self.match(head.method, path, version)
        return handler(ApiRequest(request, version, params, self.daemon))
