"""The Docker Registry HTTP API v2: how images travel between a daemon and a registry.

A registry stores two kinds of things per repository, both addressed by the sha256 of their bytes:

    blobs      GET/HEAD /v2/<name>/blobs/<digest>      layer tarballs (usually gzip) and image configs
    manifests  GET/PUT  /v2/<name>/manifests/<ref>     a small JSON document naming the config blob
                                                        and the layer blobs; <ref> is a tag or a digest

A *reference* such as ``busybox``, ``localhost:5000/team/app:1.0`` or ``app@sha256:...`` names a
registry host, a repository path, and a tag or digest. Docker's rules: if the part before the
first ``/`` contains a ``.`` or a ``:`` or is ``localhost`` (or has capitals), it is a host;
otherwise the host is ``docker.io`` (whose API really lives at ``registry-1.docker.io``), and a
one-component name there gets the ``library/`` prefix of the official images. The default tag is
``latest``.

Talking to a registry (see the distribution spec, "docs/spec/api.md" and "docs/spec/auth/token.md"):

 1. ``GET /v2/`` -- the *ping*. 200 means no auth; 401 carries a ``WWW-Authenticate`` header, the
    *challenge*: ``Basic realm="..."`` (send ``Authorization: Basic base64(user:pass)`` on every
    request) or ``Bearer realm="https://auth/token",service="registry"`` (ask the realm for a token).
 2. Bearer: ``GET <realm>?service=...&scope=repository:team/app:pull,push`` with Basic credentials
    (or none: anonymous) answers ``{"token": ..., "expires_in": 300}``; the token goes into
    ``Authorization: Bearer <token>`` until it expires. ``docker login`` asks with
    ``offline_token=true`` and may get a ``refresh_token`` back, the *identity token*, which later
    buys access tokens with ``POST <realm>`` form ``grant_type=refresh_token&refresh_token=...``.
 3. Pull: GET the manifest with an ``Accept`` listing the formats we read. A *manifest list* (or OCI
    *index*) names one manifest per platform; pick ``linux`` + our architecture (``uname -m``
    spelled as Go's GOARCH) and GET that one by digest. Then GET the config blob and each layer
    blob, hashing the bytes as they arrive: a blob whose sha256 is not its digest is refused.
    The config's ``rootfs.diff_ids`` are the sha256 of each layer *uncompressed*; layers are
    stored by diff id, so a layer the store already has is not downloaded ("Already exists").
 4. Push: for each blob, ``HEAD`` it; if missing, ``POST /v2/<name>/blobs/uploads/`` opens an
    upload session (202 + ``Location``), and ``PUT <location>?digest=sha256:...`` with the bytes
    completes it (201). ``POST .../uploads/?mount=<digest>&from=<other repo>`` asks the registry to
    link a blob it already has in another repository instead (201 = mounted). Finally ``PUT`` the
    manifest under the tag; the registry answers its digest in ``Docker-Content-Digest``.

Transport: HTTPS first. Plain HTTP only for *insecure* registries: 127.0.0.0/8, ::1 and
``localhost`` by default (as dockerd does), plus ``--insecure-registry`` CIDRs or host[:port]s.
For those we try HTTPS without certificate checks, then fall back to HTTP. A registry that speaks
only HTTP but is not insecure is refused with a message naming the flag.

Credentials reach the daemon in the ``X-Registry-Auth`` header: base64url of a JSON auth config
(``username``, ``password``, ``email``, ``serveraddress``, or ``identitytoken``, or a ready
``registrytoken``). Stored auth is looked up by registry *host* however the key was written:
``localhost:5000``, ``https://localhost:5000/v1/`` and ``http://localhost:5000`` are one key.

What you can observe: run ``docker-registry`` and watch its log, or ``curl -i
http://127.0.0.1:5000/v2/`` to see the challenge; the progress JSON lines this module produces
are what ``docker pull`` renders as progress bars.

The store side is not known here. Pull writes into a *sink*:

    sink.has_layer(diff_id) -> bool
    sink.add_layer(fileobj, diff_id)       fileobj: the uncompressed tar, already verified
    sink.add_image(config_bytes, reference, manifest_digest) -> bool | None
                                           False = the reference already named this image
    sink.tmp_dir (optional)                where downloads are staged (same filesystem is best)

and push reads from a *source*:

    source.config_bytes                    the image config JSON exactly as stored
    source.layers                          [(diff_id, opener)], opener() -> uncompressed tar file
    source.distribution (optional)         {diff_id: [{"digest","size","repository"}]}: blobs
                                           this layer already is somewhere (for HEAD / mount)
    source.record_distribution(diff_id, digest, size, repository)   (optional) remember one
"""

import base64
import concurrent.futures
import gzip
import hashlib
import http.client
import io
import ipaddress
import json
import os
import platform
import re
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import zlib

from minidock import errors

# --- names --------------------------------------------------------------------------------------

DEFAULT_REGISTRY = "docker.io"             # what the user means by no host at all
DEFAULT_API_HOST = "registry-1.docker.io"  # where docker.io's v2 API really answers
DEFAULT_INDEX_HOST = "index.docker.io"     # docker.io's v1 search lives here
DEFAULT_TAG = "latest"
OFFICIAL_PREFIX = "library/"

# Hosts that are all spellings of docker.io (auth keys, `docker login` arguments).
_DOCKER_IO_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# distribution/reference's grammar, written out.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                      r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")

# --- media types --------------------------------------------------------------------------------

MT_SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
MT_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MT_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_MANIFESTS = ", ".join([MT_SCHEMA2, MT_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX, MT_SCHEMA1_SIGNED, MT_SCHEMA1])

# The gzip of an empty tar: schema 1 uses it for history entries that made no layer.
EMPTY_LAYER_BLOB = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"

CHUNK = 1 << 20                 # bytes per read while streaming blobs
CONCURRENT_DOWNLOADS = 3        # dockerd's default max-concurrent-downloads
USER_AGENT = "minidock (registry.py; like docker/28)"


class Cancelled(Exception):
    """The caller's cancel hook said stop (the client went away). Nothing was added."""


# ================================================================================================
# References
# ================================================================================================

class Reference:
    """A parsed image name: registry host, repository path, and a tag and/or a digest."""

    __slots__ = ("registry", "repository", "tag", "digest")

    def __init__(self, registry, repository, tag=None, digest=None):
        self.registry, self.repository, self.tag, self.digest = registry, repository, tag, digest

    @property
    def name(self):
        """The familiar repository name: `busybox`, `user/app`, `localhost:5000/app`."""
        if self.registry == DEFAULT_REGISTRY:
            return self.repository[len(OFFICIAL_PREFIX):] if self.repository.startswith(OFFICIAL_PREFIX) \
                else self.repository
        return f"{self.registry}/{self.repository}"

    @property
    def ref(self):
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self):
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def __repr__(self):
        return f"Reference({self.registry!r}, {self.repository!r}, tag={self.tag!r}, digest={self.digest!r})"

    def __eq__(self, other):
        return isinstance(other, Reference) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


def split_host(name):
    """Split `host/path` into (host, path) with Docker's rule for what counts as a host."""
    first, sep, rest = name.partition("/")
    if sep and (("." in first or ":" in first) or first == "localhost" or first.lower() != first):
        host = first
        if host in _DOCKER_IO_ALIASES:
            host = DEFAULT_REGISTRY
        return host, rest
    return DEFAULT_REGISTRY, name


def parse_reference(name, tag=None):
    """Parse `[host[:port]/]path[:tag][@sha256:...]`; `tag` (the API's ?tag=) may carry either.

    Raises errors.InvalidParameter with Docker's wording for a malformed name."""
    if not name:
        raise errors.InvalidParameter("invalid reference format: repository name must have at least one component")
    digest = None
    if "@" in name:
        name, digest = name.split("@", 1)
    host, path = split_host(name)
    found_tag = None
    # A ':' after the last '/' is a tag; one before it belongs to host:port.
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, found_tag = path[:colon], path[colon + 1:]
    if tag:
        if _DIGEST_RE.match(tag):
            digest = digest or tag
        else:
            found_tag = tag
    if host == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_PREFIX + path
    if not _PATH_RE.match(path):
        if path.lower() != path:
            raise errors.InvalidParameter(f"invalid reference format: repository name ({path}) must be lowercase")
        raise errors.InvalidParameter(f"invalid reference format: {name!r}")
    if len(host) + 1 + len(path) > 255:
        raise errors.InvalidParameter("invalid reference format: repository name must not be more than 255 characters")
    if host != DEFAULT_REGISTRY and not _HOST_RE.match(host):
        raise errors.InvalidParameter(f"invalid reference format: bad registry host {host!r}")
    if found_tag is not None and not _TAG_RE.match(found_tag):
        raise errors.InvalidParameter(f"invalid reference format: bad tag {found_tag!r}")
    if digest is not None and not _DIGEST_RE.match(digest):
        raise errors.InvalidParameter(f"invalid reference format: bad digest {digest!r}")
    if found_tag is None and digest is None:
        found_tag = DEFAULT_TAG
    return Reference(host, path, found_tag, digest)


# ================================================================================================
# Endpoints: which URL, HTTPS or HTTP, mirrors
# ================================================================================================

class RegistryConfig:
    """The daemon's registry settings (--insecure-registry, --registry-mirror) and shared state.

    insecure: CIDRs ("10.0.0.0/8") and host[:port] names that may use plain HTTP / unchecked TLS.
    mirrors:  base URLs tried before docker.io for pulls of docker.io images.
    """

    DEFAULT_INSECURE_CIDRS = ("127.0.0.0/8", "::1/128")

    def __init__(self, insecure=(), mirrors=(), timeout=60.0, certs_dir="/etc/docker/certs.d"):
        self.insecure_cidrs = [ipaddress.ip_network(c) for c in self.DEFAULT_INSECURE_CIDRS]
        self.insecure_hosts = {"localhost"}
        for item in insecure:
            try:
                self.insecure_cidrs.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.insecure_hosts.add(_strip_scheme(item).lower())
        self.mirrors = [m.rstrip("/") for m in mirrors]
        self.timeout = timeout
        self.certs_dir = certs_dir
        self.tokens = TokenCache()

    def is_insecure(self, host):
        """True if `host[:port]` may be spoken to over plain HTTP: by name, or by any IP it resolves to
        (dockerd resolves the name and checks each address against the insecure CIDRs)."""
        host = host.lower()
        bare = _host_only(host)
        if host in self.insecure_hosts or bare in self.insecure_hosts:
            return True
        try:
            addrs = [ipaddress.ip_address(bare)]
        except ValueError:
            try:
                addrs = {ipaddress.ip_address(ai[4][0].split("%")[0])
                         for ai in socket.getaddrinfo(bare, None, proto=socket.IPPROTO_TCP)}
            except (socket.gaierror, UnicodeError, ValueError):
                return False
        return any(any(a in net for net in self.insecure_cidrs) for a in addrs)

    def endpoints(self, registry, for_push=False):
        """Base URLs to try, in order. Each is (url, verify_tls)."""
        if registry == DEFAULT_REGISTRY:
            out = [] if for_push else [(m, not self.is_insecure(_strip_scheme(m))) for m in self.mirrors]
            return out + [(f"https://{DEFAULT_API_HOST}", True)]
        if self.is_insecure(registry):
            return [(f"https://{registry}", False), (f"http://{registry}", False)]
        return [(f"https://{registry}", True)]


def _strip_scheme(server):
    s = server.strip()
    if "://" in s:
        s = s.split("://", 1)[1]
    return s.split("/", 1)[0]


def _host_only(hostport):
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    if hostport.count(":") == 1:
        return hostport.split(":", 1)[0]
    return hostport


# ================================================================================================
# Auth: X-Registry-Auth, lookup by host, challenges, tokens
# ================================================================================================

class AuthConfig:
    """One set of credentials for one registry, as the docker CLI sends them."""

    FIELDS = ("username", "password", "auth", "email", "serveraddress", "identitytoken", "registrytoken")

    def __init__(self, **kw):
        for f in self.FIELDS:
            setattr(self, f, kw.get(f) or "")
        # The CLI's config.json form: "auth" is base64("user:pass").
        if self.auth and not self.username:
            try:
                user, _, pw = base64.b64decode(self.auth).decode().partition(":")
                self.username, self.password = user, pw
            except (ValueError, UnicodeDecodeError):
                pass

    @classmethod
    def from_dict(cls, d):
        d = {k.lower(): v for k, v in (d or {}).items() if isinstance(v, str)}
        return cls(**{f: d.get(f, "") for f in cls.FIELDS})

    @property
    def empty(self):
        return not (self.username or self.password or self.identitytoken or self.registrytoken)

    def identity(self):
        """A key that tells credentials apart (for the token cache) without storing them in clear."""
        raw = "\0".join([self.username, self.password, self.identitytoken, self.registrytoken])
        return hashlib.sha256(raw.encode()).hexdigest()

    def __repr__(self):
        return f"AuthConfig(username={self.username!r}, serveraddress={self.serveraddress!r})"


def _b64decode_any(value):
    """base64url or standard base64, padding optional (clients disagree on all three)."""
    s = value.strip()
    s += "=" * (-len(s) % 4)
    try:
        return base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_"))
    except (ValueError, base64.binascii.Error) as e:
        raise errors.InvalidParameter(f"invalid X-Registry-Auth header: {e}")


def decode_registry_auth(header):
    """X-Registry-Auth -> AuthConfig, or None for an absent/empty header ("{}" is anonymous too)."""
    if not header or not header.strip():
        return None
    raw = _b64decode_any(header)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.InvalidParameter(f"invalid X-Registry-Auth header: {e}")
    if not isinstance(data, dict):
        raise errors.InvalidParameter("invalid X-Registry-Auth header: not a JSON object")
    auth = AuthConfig.from_dict(data)
    return None if auth.empty else auth


def decode_registry_config(header):
    """X-Registry-Config (build) -> {server: AuthConfig}: a JSON map of many auth configs."""
    if not header or not header.strip():
        return {}
    try:
        data = json.loads(_b64decode_any(header))
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.InvalidParameter(f"invalid X-Registry-Config header: {e}")
    return {k: AuthConfig.from_dict(v) for k, v in (data or {}).items() if isinstance(v, dict)}


def auth_key(server):
    """Normalize however a server was written to the registry host it means.

    `localhost:5000`, `https://localhost:5000/v1/`, `http://localhost:5000` -> `localhost:5000`;
    `""`, `https://index.docker.io/v1/`, `registry-1.docker.io` -> `docker.io`."""
    if not server:
        return DEFAULT_REGISTRY
    host = _strip_scheme(server).lower()
    return DEFAULT_REGISTRY if host in _DOCKER_IO_ALIASES else host


def lookup_auth(configs, registry):
    """Pick the credentials for `registry` from {server-as-written: AuthConfig}; None if none match."""
    want = auth_key(registry)
    for server, auth in (configs or {}).items():
        if auth_key(server) == want:
            return auth
    return None


def parse_www_authenticate(value):
    """`Bearer realm="x",service="y",scope="a b"` -> [("bearer", {"realm": "x", ...})].

    Several challenges may share one header; quoted strings may contain commas and escapes."""
    out = []
    pos, n = 0, len(value)
    token = re.compile(r"\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)")
    while pos < n:
        m = token.match(value, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params = {}
        while pos < n:
            m = re.compile(r"\s*,?\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*").match(value, pos)
            if not m:
                break
            key, pos = m.group(1).lower(), m.end()
            if pos < n and value[pos] == '"':
                pos += 1
                buf = []
                while pos < n and value[pos] != '"':
                    if value[pos] == "\\" and pos + 1 < n:
                        pos += 1
                    buf.append(value[pos])
                    pos += 1
                pos += 1
                params[key] = "".join(buf)
            else:
                m2 = re.compile(r"[^,\s]*").match(value, pos)
                params[key], pos = m2.group(0), m2.end()
            # A following `word=` continues this challenge; a bare word starts the next one.
            m3 = re.compile(r"\s*,\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(=)?").match(value, pos)
            if m3 and not m3.group(2):
                pos = value.index(",", pos) + 1
                break
        out.append((scheme, params))
        while pos < n and value[pos] in ", ":
            pos += 1
    return out


class TokenCache:
    """Bearer tokens by (realm, service, scopes, credentials), kept until shortly before expiry."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = {}
        self.fetches = 0            # how many times a realm was asked (tests look at it)

    def get(self, key):
        with self._lock:
            entry = self._tokens.get(key)
            if entry and entry[1] > time.monotonic():
                return entry[0]
            return None

    def put(self, key, token, expires_in):
        # Docker treats a missing or tiny expires_in as 60 s; keep a 10% margin for clock skew.
        life = max(float(expires_in or 60), 60.0) * 0.9
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + life)


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


def _repo_scope(repository, actions):
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


# ================================================================================================
# Progress: the JSON lines `docker pull`/`push` render
# ================================================================================================

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


def error_line(exc):
    """The final line of a failed stream: {"error": msg, "errorDetail": {"message": msg}}."""
    msg = exc.message if isinstance(exc, errors.MinidockError) else str(exc) or type(exc).__name__
    return {"error": msg, "errorDetail": {"message": msg}}


def json_line(obj):
    """One progress object as the bytes of a JSON-lines stream."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\r\n"


class _Progress:
    """Thread-safe funnel for progress lines (downloads report from worker threads)."""

    def __init__(self, emit):
        self._emit = emit or (lambda line: None)
        self._lock = threading.Lock()

    def __call__(self, status, id=None, current=None, total=None):
        self.raw(status_line(status, id, current, total))

    def raw(self, line):
        with self._lock:
            self._emit(line)


def short_id(digest):
    return digest.split(":", 1)[-1][:12]


# ================================================================================================
# Platform
# ================================================================================================

# `uname -m` -> (GOARCH, variant) as manifest lists spell platforms.
_GOARCH = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    "mips64": ("mips64", None), "loongarch64": ("loong64", None),
}


def host_platform(machine=None):
    """{"os": "linux", "architecture": GOARCH, "variant": ...} for this machine's `uname -m`."""
    m = machine or platform.machine()
    arch, variant = _GOARCH.get(m, (m, None))
    p = {"os": "linux", "architecture": arch}
    if variant:
        p["variant"] = variant
    return p


def select_manifest(index, want=None):
    """From a manifest list / OCI index, the descriptor for linux + our architecture.

    An exact variant match wins; an entry without a variant is accepted for arm64 (v8 is implied)."""
    want = want or host_platform()
    best = None
    for d in index.get("manifests") or []:
        p = d.get("platform") or {}
        if p.get("os") != want["os"] or p.get("architecture") != want["architecture"]:
            continue
        v = p.get("variant")
        if v == want.get("variant"):
            return d
        if best is None and (v is None or want.get("variant") is None):
            best = d
    if best is None:
        spec = "/".join(x for x in (want["os"], want["architecture"], want.get("variant")) if x)
        raise errors.NotFound(f"no matching manifest for {spec} in the manifest list entries")
    return best


# ================================================================================================
# Pull
# ================================================================================================

class _Download:
    """A layer staged on disk: decompressed, with both digests verified."""

    def __init__(self, path, size):
        self.path, self.size = path, size


def _fetch_manifest(s, ref, reference):
    """GET a manifest; verify it against a pinned digest. Returns (bytes, media type, document, digest)."""
    r = s.request("GET", f"/v2/{ref.repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS})
    if r.status == 404:
        with r:
            body = r.read()
        raise errors.NotFound(f"manifest for {ref.name}:{reference} not found: "
                              f"{registry_error_message(body, 'manifest unknown')}"
                              if not reference.startswith("sha256:") else
                              f"manifest for {ref.name}@{reference} not found: "
                              f"{registry_error_message(body, 'manifest unknown')}")
    if r.status in (401, 403):
        with r:
            body = r.read()
        raise errors.Unauthorized(
            f"pull access denied for {ref.name}, repository does not exist or may require 'docker login': "
            f"{registry_error_message(body, 'denied: requested access to the resource is denied')}")
    s.expect(r, (200,), f"manifest for {ref}")
    with r:
        body = r.read()
    mt = (r.headers.get("Content-Type") or "").split(";")[0].strip()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    try:
        doc = json.loads(body)
    except ValueError:
        raise errors.Unavailable(f"manifest for {ref} is not JSON")
    if not mt or mt in ("application/json", "text/plain"):
        mt = doc.get("mediaType") or (MT_SCHEMA1_SIGNED if doc.get("schemaVersion") == 1 else MT_SCHEMA2)
    if doc.get("schemaVersion") == 1:
        # A signed schema 1 manifest's digest is over the payload without its signatures; trust the
        # registry's header for it and only pin-check the non-signed forms.
        digest = r.headers.get("Docker-Content-Digest") or digest
    elif reference.startswith("sha256:") and digest != reference:
        raise errors.Unavailable(f"manifest verification failed for digest {reference}: got {digest}")
    return body, mt, doc, digest


def _stream_blob(s, repository, digest, out, on_bytes, cancel, size_hint=None):
    """GET a blob into `out`, decompressing by its magic bytes and hashing both forms.

    Returns (uncompressed sha256 digest, uncompressed size). Raises on a digest mismatch."""
    r = s.request("GET", f"/v2/{repository}/blobs/{digest}")
    s.expect(r, (200,), f"blob {digest}")
    total = int(r.headers.get("Content-Length") or size_hint or 0)
    h_comp, h_raw = hashlib.sha256(), hashlib.sha256()
    got, raw_size = 0, 0
    decomp = None
    mode = None
    broken = None
    with r:
        while True:
            if cancel and cancel():
                raise Cancelled("pull cancelled")
            chunk = r.read(CHUNK)
            if not chunk:
                break
            h_comp.update(chunk)
            got += len(chunk)
            if mode is None:
                if chunk[:2] == b"\x1f\x8b":
                    mode, decomp = "gzip", zlib.decompressobj(wbits=31)
                elif chunk[:4] == b"\x28\xb5\x2f\xfd":
                    raise errors.NotImplementedKind(
                        f"layer {digest} is zstd-compressed, which is not supported: Python 3.11's "
                        "standard library has no zstd decoder")
                else:
                    mode = "plain"
            if broken:
                data = b""      # keep hashing: a digest mismatch is the better error to report
            elif mode == "gzip":
                try:
                    data = decomp.decompress(chunk)
                    # Concatenated gzip members: start a fresh decoder on what follows the first.
                    while decomp.eof and decomp.unused_data:
                        rest = decomp.unused_data
                        decomp = zlib.decompressobj(wbits=31)
                        data += decomp.decompress(rest)
                except zlib.error as e:
                    broken, data = str(e), b""
            else:
                data = chunk
            h_raw.update(data)
            raw_size += len(data)
            out.write(data)
            on_bytes(got, total)
    actual = "sha256:" + h_comp.hexdigest()
    if actual != digest:
        raise errors.Unavailable(f"filesystem layer verification failed for digest {digest}: "
                                 f"the registry sent content with digest {actual}")
    if mode == "gzip" and not broken:
        if not decomp.eof:
            broken = "unexpected end of gzip stream"
        tail = decomp.flush()
        h_raw.update(tail)
        raw_size += len(tail)
        out.write(tail)
    if broken:
        raise errors.Unavailable(f"layer {digest} is not a valid gzip stream: {broken}")
    return "sha256:" + h_raw.hexdigest(), raw_size


def _get_blob_bytes(s, repository, digest, limit=64 << 20):
    r = s.request("GET", f"/v2/{repository}/blobs/{digest}")
    s.expect(r, (200,), f"blob {digest}")
    with r:
        body = r.read(limit + 1)
    if len(body) > limit:
        raise errors.Unavailable(f"blob {digest} is too large for an image config")
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise errors.Unavailable(f"config verification failed for digest {digest}: got {actual}")
    return body


def schema1_to_config(manifest, diff_ids):
    """Build an image config from a schema 1 manifest (oldest registries) and the layers' diff ids.

    Schema 1 lists layers newest first, each with a `v1Compatibility` JSON of the image it made;
    `diff_ids` are for the non-empty layers, oldest first."""
    history_v1 = [json.loads(h["v1Compatibility"]) for h in manifest.get("history", [])]
    if not history_v1:
        raise errors.Unavailable("schema 1 manifest has no history")
    top = dict(history_v1[0])
    for k in ("id", "parent", "Size", "parent_id", "layer_id", "throwaway"):
        top.pop(k, None)
    history = []
    for h, layer in zip(reversed(history_v1), reversed(manifest.get("fsLayers", []))):
        cmd = (h.get("container_config") or {}).get("Cmd") or []
        entry = {"created": h.get("created", ""), "created_by": " ".join(cmd)}
        if h.get("throwaway") or layer.get("blobSum") == EMPTY_LAYER_BLOB:
            entry["empty_layer"] = True
        history.append(entry)
    top["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    top["history"] = history
    return json.dumps(top, separators=(",", ":")).encode()


def pull(ref, sink, *, auth=None, config=None, progress=None, cancel=None, platform_want=None,
         concurrency=CONCURRENT_DOWNLOADS):
    """Pull `ref` (a Reference or a name string) into `sink`, reporting progress lines to `progress`.

    Layers are downloaded `concurrency` at a time into staging files (verified against their blob
    digest while streaming, and against the config's diff id after decompression), then handed to
    the sink in order. If anything fails, no image is added. Returns the manifest digest."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    config = config or RegistryConfig()
    say = _Progress(progress)
    s = Session(ref.registry, config=config, auth=auth, scopes=[_repo_scope(ref.repository, "pull")])
    s.open()
    say.raw({"status": f"Pulling from {ref.repository}", "id": ref.digest or ref.tag})

    body, mt, doc, digest = _fetch_manifest(s, ref, ref.ref)
    if mt in (MT_LIST, MT_OCI_INDEX) or (doc.get("manifests") and not doc.get("layers")):
        chosen = select_manifest(doc, platform_want)
        body, mt, doc, sub_digest = _fetch_manifest(s, ref, chosen["digest"])
        if sub_digest != chosen["digest"]:
            raise errors.Unavailable(f"manifest verification failed for digest {chosen['digest']}")
        # RepoDigests records the digest the user can pull again: the list's, as dockerd does.

    tmp_dir = getattr(sink, "tmp_dir", None)
    staged = []
    try:
        if doc.get("schemaVersion") == 1:
            config_bytes = _pull_schema1(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency)
        else:
            config_bytes = _pull_schema2(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency)
    finally:
        for st in staged:
            try:
                os.unlink(st.path)
            except OSError:
                pass

    updated = sink.add_image(config_bytes, str(ref), digest)
    say.raw({"status": f"Digest: {digest}"})
    shown = ref.name + (f"@{ref.digest}" if ref.digest else f":{ref.tag}")
    if updated is False:
        say.raw({"status": f"Status: Image is up to date for {shown}"})
    else:
        say.raw({"status": f"Status: Downloaded newer image for {shown}"})
    return digest


def _pull_schema2(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency):
    cfg_desc = doc.get("config") or {}
    config_bytes = _get_blob_bytes(s, ref.repository, cfg_desc["digest"])
    try:
        diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise errors.Unavailable(f"image config {cfg_desc['digest']} has no rootfs.diff_ids")
    layers = [d for d in doc.get("layers") or []]
    if len(layers) != len(diff_ids):
        raise errors.Unavailable(f"manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff ids")
    for d in layers:
        if "zstd" in (d.get("mediaType") or ""):
            raise errors.NotImplementedKind(
                f"layer {d['digest']} is zstd-compressed ({d['mediaType']}), which is not supported: "
                "Python 3.11's standard library has no zstd decoder")
    _download_and_add(s, ref, [(d["digest"], d.get("size"), diff_ids[i]) for i, d in enumerate(layers)],
                      sink, say, cancel, tmp_dir, staged, concurrency)
    return config_bytes


def _pull_schema1(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency):
    # Oldest first; empty layers (throwaway) carry no filesystem change.
    history = [json.loads(h["v1Compatibility"]) for h in doc.get("history", [])]
    blobs = []
    for layer, h in zip(reversed(doc.get("fsLayers", [])), reversed(history)):
        if h.get("throwaway") or layer["blobSum"] == EMPTY_LAYER_BLOB:
            continue
        blobs.append((layer["blobSum"], None, None))      # diff id learnt on download
    diff_ids = _download_and_add(s, ref, blobs, sink, say, cancel, tmp_dir, staged, concurrency)
    return schema1_to_config(doc, diff_ids)


def _download_and_add(s, ref, blobs, sink, say, cancel, tmp_dir, staged, concurrency):
    """blobs: [(blob digest, size or None, diff id or None)] oldest first. Returns the diff ids."""
    stop = threading.Event()

    def cancelled():
        return stop.is_set() or bool(cancel and cancel())

    needed = []
    for blob, size, diff_id in blobs:
        if diff_id and sink.has_layer(diff_id):
            say("Already exists", short_id(blob))
            needed.append(None)
        else:
            say("Pulling fs layer", short_id(blob))
            needed.append((blob, size, diff_id))

    def download(item):
        blob, size, diff_id = item
        sid = short_id(blob)
        fd, path = tempfile.mkstemp(prefix="pull-", suffix=".tar", dir=tmp_dir)
        st = _Download(path, 0)
        staged.append(st)
        last = [0]

        def on_bytes(got, total):
            if got - last[0] >= CHUNK or got == total:
                last[0] = got
                say("Downloading", sid, got, total or size)

        with os.fdopen(fd, "wb") as out:
            got_diff, raw_size = _stream_blob(s, ref.repository, blob, out, on_bytes, cancelled, size)
        say("Verifying Checksum", sid)
        if diff_id and got_diff != diff_id:
            raise errors.Unavailable(f"layer {blob} does not match its diff id {diff_id} (got {got_diff})")
        say("Download complete", sid)
        st.size = raw_size
        return st, got_diff

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pull")
    futures = [pool.submit(download, it) if it else None for it in needed]
    result = []
    try:
        for (blob, _size, diff_id), fut in zip(blobs, futures):
            if fut is None:
                result.append(diff_id)
                continue
            st, got_diff = fut.result()
            if cancel and cancel():
                raise Cancelled("pull cancelled")
            if diff_id is None and sink.has_layer(got_diff):          # schema 1: known only now
                say("Already exists", short_id(blob))
            else:
                sid = short_id(blob)
                with open(st.path, "rb") as f:
                    sink.add_layer(_CountingReader(f, st.size, lambda n, t, sid=sid: say("Extracting", sid, n, t),
                                                   cancel), got_diff)
                say("Pull complete", sid)
            result.append(got_diff)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result


class _CountingReader:
    """A read-only file wrapper reporting progress (the "Extracting" bar) and honouring cancel."""

    def __init__(self, f, total, report, cancel):
        self._f, self._total, self._report, self._cancel = f, total, report, cancel
        self._n, self._last = 0, -1

    def read(self, n=-1):
        if self._cancel and self._cancel():
            raise Cancelled("pull cancelled")
        data = self._f.read(n)
        self._n += len(data)
        if data and (self._n - self._last >= CHUNK or self._n == self._total) or (not data and self._last != self._n):
            self._last = self._n
            self._report(self._n, self._total)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def close(self):
        pass

    @property
    def name(self):
        return self._f.name


# ================================================================================================
# Push
# ================================================================================================

def _gzip_layer(opener, tmp_dir, cancel):
    """Compress a layer tar into a staging file, deterministically (mtime 0, no file name), so the
    same layer always gives the same blob digest. Returns (path, digest, size)."""
    fd, path = tempfile.mkstemp(prefix="push-", suffix=".tar.gz", dir=tmp_dir)
    h = hashlib.sha256()

    class _Hasher:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            h.update(b)
            self.n += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    try:
        with os.fdopen(fd, "wb") as raw:
            out = _Hasher(raw)
            with opener() as src, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
                while True:
                    if cancel and cancel():
                        raise Cancelled("push cancelled")
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    gz.write(chunk)
        return path, "sha256:" + h.hexdigest(), out.n
    except BaseException:
        os.unlink(path)
        raise


def _blob_exists(s, repository, digest):
    r = s.request("HEAD", f"/v2/{repository}/blobs/{digest}")
    with r:
        r.read()
    if r.status == 200:
        return True
    if r.status == 404:
        return False
    s.expect(r, (200, 404), f"HEAD blob {digest}")
    return False


def _upload_location(s, r):
    loc = r.headers.get("Location")
    if not loc:
        raise errors.Unavailable("registry opened an upload without a Location")
    return urllib.parse.urljoin(s.url("/v2/"), loc)


def _upload_blob(s, repository, digest, size, fileobj, on_bytes=None, location=None):
    """POST an upload session (unless one is given), then PUT the whole blob with ?digest=."""
    if location is None:
        r = s.request("POST", f"/v2/{repository}/blobs/uploads/", headers={"Content-Length": "0"}, body=b"")
        s.expect(r, (202,), f"start upload to {repository}")
        with r:
            r.read()
        location = _upload_location(s, r)
    sep = "&" if "?" in location else "?"
    body = _ProgressBody(fileobj, size, on_bytes) if on_bytes else fileobj
    r = s.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, body=body)
    s.expect(r, (201, 204), f"upload blob {digest}")
    with r:
        r.read()


class _ProgressBody:
    def __init__(self, f, total, on_bytes):
        self.f, self.total, self.on_bytes, self.n = f, total, on_bytes, 0

    def read(self, n=-1):
        data = self.f.read(n)
        if data:
            self.n += len(data)
            self.on_bytes(self.n, self.total)
        return data


def push(ref, source, *, auth=None, config=None, progress=None, cancel=None):
    """Push the image `source` to `ref`'s registry under its tag. Returns (manifest digest, size).

    Each layer: reuse a known blob (HEAD, or a cross-repository mount), else gzip and upload it.
    Then the config blob, then a schema 2 manifest PUT under the tag."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    if ref.digest and not ref.tag:
        raise errors.InvalidParameter("cannot push a digest reference; push by tag")
    config = config or RegistryConfig()
    say = _Progress(progress)
    dist = getattr(source, "distribution", None) or {}
    # Ask for pull on the repositories we might mount from, too: the token must cover them.
    from_repos = sorted({d["repository"] for ds in dist.values() for d in ds
                         if d.get("repository") and auth_key(split_host(d["repository"])[0]) == auth_key(ref.registry)
                         and split_host(d["repository"])[1] != ref.repository})
    scopes = [_repo_scope(ref.repository, "pull,push")] + [_repo_scope(split_host(r)[1], "pull") for r in from_repos]
    s = Session(ref.registry, config=config, auth=auth, scopes=scopes, for_push=True)
    say.raw({"status": f"The push refers to repository [{ref.registry}/{ref.repository}]"
             if ref.registry != DEFAULT_REGISTRY else
             f"The push refers to repository [docker.io/{ref.repository}]"})
    s.open()
    # Fail early, before compressing anything, if the registry will not let us push.
    r = s.request("POST", f"/v2/{ref.repository}/blobs/uploads/", headers={"Content-Length": "0"}, body=b"")
    s.expect(r, (202,), f"push to {ref.name}")
    with r:
        r.read()
    spare_location = _upload_location(s, r)        # reused for the config blob below

    layers = list(source.layers)
    for diff_id, _ in reversed(layers):
        say("Preparing", short_id(diff_id))
    descriptors = []
    tmp_dir = getattr(source, "tmp_dir", None)
    for diff_id, opener in layers:
        sid = short_id(diff_id)
        descriptors.append(_push_layer(s, ref, diff_id, opener, dist.get(diff_id) or [], say, sid, tmp_dir,
                                       cancel, source))

    cfg = source.config_bytes
    cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
    if not _blob_exists(s, ref.repository, cfg_digest):
        _upload_blob(s, ref.repository, cfg_digest, len(cfg), io.BytesIO(cfg), location=spare_location)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_SCHEMA2,
        "config": {"mediaType": MT_CONFIG, "size": len(cfg), "digest": cfg_digest},
        "layers": descriptors,
    }
    body = json.dumps(manifest, indent=3).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    tag = ref.tag or DEFAULT_TAG
    r = s.request("PUT", f"/v2/{ref.repository}/manifests/{tag}", headers={"Content-Type": MT_SCHEMA2}, body=body)
    s.expect(r, (201, 200), f"put manifest {ref}")
    with r:
        r.read()
    said = r.headers.get("Docker-Content-Digest")
    if said and said != digest:
        raise errors.Unavailable(f"registry stored the manifest as {said}, expected {digest}")
    say.raw({"status": f"{tag}: digest: {digest} size: {len(body)}"})
    say.raw({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": len(body)}})
    return digest, len(body)


def _push_layer(s, ref, diff_id, opener, known, say, sid, tmp_dir, cancel, source):
    record = getattr(source, "record_distribution", None)
    here = f"{ref.registry}/{ref.repository}"
    # 1. A blob we already pushed (or pulled) somewhere: is it in the target repository already?
    for d in known:
        if d.get("repository") and auth_key(split_host(d["repository"])[0]) != auth_key(ref.registry):
            continue
        if _blob_exists(s, ref.repository, d["digest"]):
            say("Layer already exists", sid)
            return {"mediaType": MT_LAYER_GZIP, "size": d["size"], "digest": d["digest"]}
    # 2. Same registry, another repository: ask for a cross-repository mount.
    for d in known:
        host, path = split_host(d.get("repository") or "")
        if not d.get("repository") or auth_key(host) != auth_key(ref.registry) or path == ref.repository:
            continue
        r = s.request("POST", f"/v2/{ref.repository}/blobs/uploads/?mount={urllib.parse.quote(d['digest'])}"
                      f"&from={urllib.parse.quote(path)}", headers={"Content-Length": "0"}, body=b"")
        with r:
            r.read()
        if r.status == 201:
            say(f"Mounted from {path}", sid)
            if record:
                record(diff_id, d["digest"], d["size"], here)
            return {"mediaType": MT_LAYER_GZIP, "size": d["size"], "digest": d["digest"]}
    # 3. Compress and upload.
    path, digest, size = _gzip_layer(opener, tmp_dir, cancel)
    try:
        if _blob_exists(s, ref.repository, digest):
            say("Layer already exists", sid)
        else:
            last = [0]

            def on_bytes(n, total):
                if cancel and cancel():
                    raise Cancelled("push cancelled")
                if n - last[0] >= CHUNK or n == total:
                    last[0] = n
                    say("Pushing", sid, n, total)
            with open(path, "rb") as f:
                _upload_blob(s, ref.repository, digest, size, f, on_bytes)
            say("Pushed", sid)
    finally:
        os.unlink(path)
    if record:
        record(diff_id, digest, size, here)
    return {"mediaType": MT_LAYER_GZIP, "size": size, "digest": digest}


# ================================================================================================
# Search
# ================================================================================================

def search(term, *, auth=None, config=None, limit=25):
    """Search a registry: `term` may start with a registry host (`localhost:5000/app`).

    Uses the v1 search API where the registry has one (Docker Hub), else lists the v2 catalog and
    keeps repositories whose name contains the term. Results use the v1.12+ keys."""
    config = config or RegistryConfig()
    registry, q = split_host(term) if "/" in term else (DEFAULT_REGISTRY, term)
    if not q:
        raise errors.InvalidParameter("search term must not be empty")
    limit = int(limit or 25)
    if not 1 <= limit <= 100:
        raise errors.InvalidParameter(f"limit {limit} is outside the range of [1, 100]")
    # v1 search first.
    s1 = Session(registry, config=config, auth=auth)
    if registry == DEFAULT_REGISTRY:
        s1.base, s1.verify = f"https://{DEFAULT_INDEX_HOST}", True
    v1_error = None
    try:
        if s1.base is None:
            s1.open()
        r = s1.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": q, "n": limit}))
        with r:
            body = r.read()
        if r.status == 200:
            data = json.loads(body)
            return [_search_result(x) for x in (data.get("results") or [])][:limit]
        v1_error = f"/v1/search answered {r.status}"
    except (errors.MinidockError, OSError, ValueError, http.client.HTTPException) as e:
        v1_error = str(e)
        if isinstance(e, errors.Unavailable) and "--insecure-registry" in str(e):
            raise
    # Then the v2 catalog.
    s2 = Session(registry, config=config, auth=auth, scopes=["registry:catalog:*"])
    try:
        repos, path = [], "/v2/_catalog?n=1000"
        while path and len(repos) < 100000:
            r = s2.request("GET", path)
            s2.expect(r, (200,), "catalog")
            with r:
                data = json.loads(r.read())
            repos.extend(data.get("repositories") or [])
            link = r.headers.get("Link") or ""
            m = re.match(r"\s*<([^>]+)>", link)
            path = m.group(1) if m else None
    except errors.Unauthorized:
        raise
    except (errors.MinidockError, OSError, ValueError, http.client.HTTPException) as e:
        raise errors.Unavailable(f"registry {registry} supports neither search (/v1/search: {v1_error}) "
                                 f"nor catalog listing (/v2/_catalog: {e})")
    prefix = "" if registry == DEFAULT_REGISTRY else registry + "/"
    hits = [_search_result({"name": prefix + name}) for name in repos if q.lower() in name.lower()]
    return hits[:limit]


def _search_result(x):
    return {
        "name": x.get("name", ""),
        "description": x.get("description") or "",
        "star_count": int(x.get("star_count") or 0),
        "is_official": bool(x.get("is_official")),
        "is_automated": bool(x.get("is_automated") or x.get("is_trusted")),
    }


# ================================================================================================
# For scripts/bench
# ================================================================================================

def pull_throughput(reference, sink, *, auth=None, config=None):
    """Pull `reference` into `sink` and measure it: returns {"bytes", "seconds", "mib_per_s", "digest"}.

    `bytes` is the compressed size downloaded (from the Downloading progress lines). scripts/bench
    pushes a 64 MiB image to a local registry first, then calls this with an empty sink."""
    downloaded = {}

    def watch(line):
        if line.get("status") == "Downloading":
            downloaded[line["id"]] = line["progressDetail"]["current"]

    t0 = time.monotonic()
    digest = pull(reference, sink, auth=auth, config=config, progress=watch)
    dt = time.monotonic() - t0
    total = sum(downloaded.values())
    return {"bytes": total, "seconds": dt, "mib_per_s": (total / (1 << 20)) / dt if dt else 0.0,
            "digest": digest}
