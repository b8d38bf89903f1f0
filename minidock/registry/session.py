"""A conversation with one registry: endpoint choice, the ping, auth challenges, tokens, requests.

1. `GET /v2/` -- the *ping*. 200 means no auth; 401 carries the `WWW-Authenticate` challenge.
2. Bearer: `GET <realm>?service=...&scope=repository:team/app:pull,push` with Basic credentials
   (or none: anonymous) answers `{"token": ..., "expires_in": 300}`; the token goes into
   `Authorization: Bearer <token>` until it expires. `docker login` asks with
   `offline_token=true` and may get a `refresh_token` back, the *identity token*, which later
   buys access tokens with `POST <realm>` form `grant_type=refresh_token&refresh_token=...`.
3. Every later request carries the authorisation; a 401 mid-way (an expired token) is answered by
   asking again once. Errors come back as `{"errors": [{"code", "message", "detail"}]}`, whose
   words are shown to the user.

What you can observe: `curl -i http://127.0.0.1:5000/v2/` shows the challenge of a registry that
wants auth; its access log shows each request this module makes.
"""

import base64
import http.client
import json
import os
import ssl
import urllib.parse

from minidock import errors
from minidock.registry.auth import AuthConfig, auth_key, parse_www_authenticate
from minidock.registry.endpoints import RegistryConfig

CHUNK = 1 << 20                 # bytes per read while streaming blobs
USER_AGENT = "minidock (registry; like docker/28)"


def registry_error_message(body, default):
    """The registry's own words from a v2 error body {"errors":[{"code","message","detail"}]}."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, TypeError):
        text = body.decode("utf-8", "replace").strip() if isinstance(body, bytes) else ""
        return text[:200] or default
    if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
        parts = []
        for e in data["errors"]:
            code = str(e.get("code", "")).lower().replace("_", " ")
            parts.append(f"{code}: {e.get('message', '')}".strip(": "))
        return "; ".join(parts)
    if isinstance(data, dict) and (data.get("details") or data.get("error") or data.get("message")):
        return str(data.get("details") or data.get("error") or data.get("message"))
    return default



# ================================================================================================
# Session: one registry, one set of scopes, HTTP with auth
# ================================================================================================

class Response:
    """An HTTP response still attached to its connection; `close()` frees both."""

    def __init__(self, conn, resp, url):
        self.conn, self.raw, self.url = conn, resp, url
        self.status, self.reason = resp.status, resp.reason
        self.headers = resp.headers

    def read(self, n=-1):
        return self.raw.read() if n is None or n < 0 else self.raw.read(n)

    def close(self):
        try:
            self.raw.close()
        finally:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Session:
    """A conversation with one registry, authorised for `scopes` (e.g. `repository:app:pull,push`).

    `open()` pings the endpoints in order and keeps the first that answers like a v2 registry,
    with its auth challenge. `request()` adds Authorization (Basic, or a Bearer token fetched and
    cached per scope) and retries once on a 401 that names a new scope."""

    def __init__(self, registry, *, config=None, auth=None, scopes=(), for_push=False):
        self.registry = registry
        self.config = config or RegistryConfig()
        self.auth = auth
        self.scopes = list(scopes)
        self.for_push = for_push
        self.base = None            # e.g. "http://127.0.0.1:5000"
        self.verify = True
        self.challenge = None       # ("basic"|"bearer", params) or None when the registry is open
        self.last_refresh_token = None

    # -- transport --------------------------------------------------------------------------------

    def _ssl_context(self, host, verify):
        if not verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx = ssl.create_default_context()
        # dockerd trusts extra CAs per registry from /etc/docker/certs.d/<host:port>/*.crt.
        d = os.path.join(self.config.certs_dir or "", host)
        if self.config.certs_dir and os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".crt"):
                    ctx.load_verify_locations(os.path.join(d, f))
        return ctx

    def _raw(self, method, url, headers, body=None, verify=True):
        """One HTTP exchange, no auth or redirect logic. Returns a Response (caller closes)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.netloc, timeout=self.config.timeout,
                                               context=self._ssl_context(u.netloc, verify), blocksize=CHUNK)
        else:
            conn = http.client.HTTPConnection(u.netloc, timeout=self.config.timeout, blocksize=CHUNK)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        headers = dict(headers or {})
        headers.setdefault("User-Agent", USER_AGENT)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return Response(conn, resp, url)

    def open(self):
        """Find a working endpoint: GET /v2/ on each candidate, HTTPS before HTTP."""
        if self.base:
            return self
        last = None
        for base, verify in self.config.endpoints(self.registry, self.for_push):
            try:
                r = self._raw("GET", base + "/v2/", {}, verify=verify)
            except ssl.SSLCertVerificationError as e:
                last = errors.Unavailable(f'Get "{base}/v2/": tls: {e.verify_message or e}')
                continue
            except ssl.SSLError as e:
                # Not TLS at all on the other end? That is an HTTP-only registry.
                if verify and base.startswith("https://") and self._answers_plain_http(base):
                    host = base[len("https://"):]
                    raise errors.Unavailable(
                        f'Get "{base}/v2/": http: server gave HTTP response to HTTPS client. '
                        f'The registry {host} speaks plain HTTP only; to allow it, start the daemon with '
                        f'--insecure-registry {host}')
                last = errors.Unavailable(f'Get "{base}/v2/": {e}')
                continue
            except OSError as e:
                last = errors.Unavailable(f'Get "{base}/v2/": {e.strerror or e}')
                continue
            with r:
                body = r.read()
                if r.status == 401:
                    self.challenge = self._pick_challenge(r.headers.get_all("WWW-Authenticate") or [])
                elif r.status != 200:
                    last = errors.Unavailable(f'Get "{base}/v2/": unexpected status {r.status} '
                                              f'({registry_error_message(body, r.reason)}); not a v2 registry?')
                    continue
            self.base, self.verify = base, verify
            return self
        raise last or errors.Unavailable(f"no endpoint for registry {self.registry}")

    def _answers_plain_http(self, https_base):
        try:
            with self._raw("GET", "http://" + https_base[len("https://"):] + "/v2/", {}) as r:
                r.read()
                return True
        except (OSError, http.client.HTTPException):
            return False

    @staticmethod
    def _pick_challenge(values):
        found = []
        for v in values:
            found.extend(parse_www_authenticate(v))
        for want in ("bearer", "basic"):
            for scheme, params in found:
                if scheme == want:
                    return scheme, params
        return None

    # -- auth -------------------------------------------------------------------------------------

    def _authorization(self, scopes=None):
        if self.challenge is None:
            return None
        scheme, params = self.challenge
        a = self.auth
        if scheme == "basic":
            if a is None or not a.username:
                return None
            return "Basic " + base64.b64encode(f"{a.username}:{a.password}".encode()).decode()
        if a is not None and a.registrytoken:
            return "Bearer " + a.registrytoken
        return "Bearer " + self.token(params, self.scopes if scopes is None else scopes)

    def token(self, params, scopes, offline=False):
        """A Bearer token from the challenge's realm for `scopes` (cached until expiry).

        With an identity token: POST the OAuth2 refresh_token grant. With a username: GET with Basic
        auth. With nothing: an anonymous GET (public repositories)."""
        realm = params.get("realm")
        if not realm:
            raise errors.Unavailable(f"registry {self.registry} sent a Bearer challenge without a realm")
        service = params.get("service", "")
        a = self.auth
        key = (realm, service, tuple(sorted(scopes)), a.identity() if a else "", offline)
        cached = self.config.tokens.get(key)
        if cached and not offline:
            return cached
        self.config.tokens.fetches += 1
        headers = {"Accept": "application/json"}
        if a is not None and a.identitytoken:
            form = [("grant_type", "refresh_token"), ("refresh_token", a.identitytoken),
                    ("service", service), ("client_id", "minidock")] + [("scope", s) for s in scopes]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            r = self._raw("POST", realm, headers, urllib.parse.urlencode(form).encode(), verify=self.verify)
        else:
            q = [("service", service)] + [("scope", s) for s in scopes]
            if a is not None and a.username:
                q.append(("account", a.username))
                headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{a.username}:{a.password}".encode()).decode()
            if offline:
                q += [("offline_token", "true"), ("client_id", "minidock")]
            sep = "&" if "?" in realm else "?"
            r = self._raw("GET", realm + sep + urllib.parse.urlencode(q), headers, verify=self.verify)
        with r:
            body = r.read()
        if r.status in (401, 403):
            raise errors.Unauthorized(f"unauthorized: {registry_error_message(body, 'incorrect username or password')}")
        if r.status != 200:
            raise errors.Unavailable(f"token realm {realm} answered {r.status}: "
                                     f"{registry_error_message(body, r.reason)}")
        try:
            data = json.loads(body)
        except ValueError:
            raise errors.Unavailable(f"token realm {realm} answered something that is not JSON")
        tok = data.get("token") or data.get("access_token")
        if not tok:
            raise errors.Unavailable(f"token realm {realm} answered without a token")
        self.last_refresh_token = data.get("refresh_token")
        self.config.tokens.put(key, tok, data.get("expires_in"))
        return tok

    # -- requests ---------------------------------------------------------------------------------

    def url(self, path):
        return self.base + path

    def request(self, method, path, *, headers=None, body=None, scopes=None, redirects=5):
        """Send an authorised request to `path` (or an absolute URL, e.g. an upload Location).

        Redirects are followed for GET/HEAD; Authorization is dropped when the host changes (blob
        storage behind a redirect must not see registry credentials). Returns a Response."""
        self.open()
        url = path if "://" in path else self.url(path)
        for attempt in range(2):
            h = dict(headers or {})
            authz = self._authorization(scopes)
            if authz:
                h["Authorization"] = authz
            cur, hops = url, 0
            while True:
                r = self._raw(method, cur, h, body, verify=self.verify)
                if r.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD") and hops < redirects:
                    loc = urllib.parse.urljoin(cur, r.headers.get("Location", ""))
                    r.close()
                    if urllib.parse.urlsplit(loc).netloc != urllib.parse.urlsplit(cur).netloc:
                        h.pop("Authorization", None)
                    cur, hops = loc, hops + 1
                    continue
                break
            if r.status == 401 and attempt == 0 and not _is_stream(body):
                # A registry that said 200 to the ping may still protect this path, or our token
                # may lack a scope the challenge names: learn from the challenge, try once more.
                ch = self._pick_challenge(r.headers.get_all("WWW-Authenticate") or [])
                retry = False
                if ch and (self.challenge is None or ch[0] != self.challenge[0]):
                    retry = True
                elif ch and ch[0] == "bearer":
                    need, have = ch[1].get("scope"), (scopes if scopes is not None else self.scopes)
                    if need and need not in have:
                        scopes, retry = list(have) + [need], True
                if ch:
                    self.challenge = ch
                if retry:
                    r.close()
                    continue
            return r
        return r

    def expect(self, r, ok, what):
        """Raise the right error kind unless `r.status` is in `ok`; reads and closes a bad response."""
        if r.status in ok:
            return r
        with r:
            body = r.read()
        msg = registry_error_message(body, r.reason)
        if r.status == 401:
            raise errors.Unauthorized(f"{what}: unauthorized: {msg}" if "unauthorized" not in msg
                                      else f"{what}: {msg}")
        if r.status == 403:
            raise errors.Forbidden(f"{what}: {msg}")
        if r.status == 404:
            raise errors.NotFound(f"{what}: {msg}")
        raise errors.Unavailable(f"{what}: registry answered {r.status}: {msg}")


def _is_stream(body):
    return body is not None and not isinstance(body, (bytes, bytearray, str))


def repo_scope(repository, actions):
    return f"repository:{repository}:{actions}"



# ================================================================================================
# Login
# ================================================================================================

def login(server, username, password, *, config=None):
    """Check credentials against `server` (as the user typed it). Returns an identity token or None.

    Basic registries are checked with an authorised GET /v2/; Bearer registries by asking the
    realm for an offline token (which becomes the identity token if the realm gives one).
    Wrong credentials raise errors.Unauthorized carrying the registry's reason."""
    registry = auth_key(server)
    auth = AuthConfig(username=username, password=password, serveraddress=server)
    s = Session(registry, config=config, auth=auth).open()
    if s.challenge is None:
        return None
    scheme, params = s.challenge
    if scheme == "basic":
        r = s.request("GET", "/v2/")
        with r:
            body = r.read()
        if r.status == 401:
            raise errors.Unauthorized(
                f'Get "{s.base}/v2/": {registry_error_message(body, "unauthorized: incorrect username or password")}')
        if r.status != 200:
            raise errors.Unavailable(f"login to {registry}: registry answered {r.status}")
        return None
    s.last_refresh_token = None
    s.token(params, [], offline=True)
    return s.last_refresh_token or None
