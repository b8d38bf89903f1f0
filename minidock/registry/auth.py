"""Registry credentials: the X-Registry-Auth header, lookup by host, challenges, tokens.

Credentials reach the daemon in the `X-Registry-Auth` header: base64url of a JSON auth config
(`username`, `password`, `email`, `serveraddress`, or `identitytoken`, or a ready
`registrytoken`). Stored auth is looked up by registry *host* however the key was written:
`localhost:5000`, `https://localhost:5000/v1/` and `http://localhost:5000` are one key, and
`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com` all mean docker.io.

A registry that wants credentials answers `401` with a `WWW-Authenticate` *challenge*:
`Basic realm="..."` (send `Authorization: Basic base64(user:pass)` on every request) or
`Bearer realm="https://auth/token",service="registry"` (ask the realm for a token, see
session.py). Bearer tokens are cached per (registry, credentials, scopes) until they expire.
"""

import base64
import hashlib
import json
import re
import threading
import time

from minidock import errors, reference

# Hosts that are all spellings of docker.io (auth keys, `docker login` arguments).
_DOCKER_IO_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


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


def server_host(server):
    """`https://localhost:5000/v1/` -> `localhost:5000`: the host[:port] a server address names."""
    s = server.strip()
    if "://" in s:
        s = s.split("://", 1)[1]
    return s.split("/", 1)[0]


def auth_key(server):
    """Normalize however a server was written to the registry host it means.

    `localhost:5000`, `https://localhost:5000/v1/`, `http://localhost:5000` -> `localhost:5000`;
    `""`, `https://index.docker.io/v1/`, `registry-1.docker.io` -> `docker.io`."""
    if not server:
        return reference.DEFAULT_DOMAIN
    host = server_host(server).lower()
    return reference.DEFAULT_DOMAIN if host in _DOCKER_IO_ALIASES else host


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
