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

from minidock import errors, http
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
            return json.loads(value)
        except ValueError as exc:
            raise errors.InvalidParameter(f"invalid JSON in query parameter {name!r}: {exc}")

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
        return http.read_json_body(self.body, allow_empty=not required)

    def disconnected(self):
        return self.http.disconnected()

    # -- answers, shaped for the request's API version -----------------------------------------
    def render(self, kind, model, status=200, stream=False, **response_kwargs):
        """The reply for `model` of `kind` as this request's API version shows it: a JSON body
        (None: an empty one), or with `stream` one JSON line of a JSON-lines stream."""
        form = versions.reply(kind, self.version, status, stream)
        if model is None:
            return http.Response.empty(form["status"])
        body = versions.render(kind, model, self.version)
        if form["stream"]:
            return http.StreamResponse(iter([json.dumps(body).encode() + b"\r\n"]), status=form["status"],
                                       **response_kwargs)
        return http.Response.json(body, status=form["status"], **response_kwargs)

    def shaper(self, kind):
        """A function shaping one `kind` model after another for this version (streams of events)."""
        version = self.version
        return lambda model: versions.render(kind, model, version)

    def adapt(self, kind, args):
        """The version-neutral arguments of this request, `args` being the newest form's; older
        clients' forms are read by the request steps in versions.py."""
        return versions.adapt(kind, args, self)


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
        self.routes = [(entry[0], compile_pattern(entry[1]), entry[2],
                        entry[3] if len(entry) > 3 else (versions.MIN, versions.MAX))
                       for entry in routes]

    def match(self, method, path, version=versions.MAX):
        """Find (handler, params) or raise NotFound / MethodNotAllowed.

        A route of this method and path that exists only in other API versions makes the answer
        404, as from a daemon that does not have it, even where a broader pattern of another
        method matches too (`GET /images/viz` at v1.24 is not `DELETE /images/{name}`)."""
        allowed, elsewhere = set(), False
        for route_method, regex, handler, span in self.routes:
            m = regex.match(path)
            if not m:
                continue
            if not versions.exists(span, version):
                elsewhere = elsewhere or route_method == method
                continue
            if route_method == method:
                return handler, m.groupdict()
            allowed.add(route_method)
        if allowed and not elsewhere:
            raise errors.MethodNotAllowed(f"method {method} not allowed for {path}"
                                          f" (allowed: {', '.join(sorted(allowed))})")
        raise errors.NotFound(f"page not found: {path}")

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

    def dispatch(self, request):
        path = request.head.path
        version = versions.MAX
        m = VERSION_PREFIX.match(path)
        if m:
            version = versions.check(m.group(1))
            path = m.group(2)
        if request.head.method == "OPTIONS" and self.cors_origin:
            return http.Response.empty(200)
        handler, params = self.match(request.head.method, path, version)
        return handler(ApiRequest(request, version, params, self.daemon))
