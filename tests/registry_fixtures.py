"""Real registry peers for tests: Debian's docker-registry (distribution 2.8) and a stdlib token realm.

`Registry` starts `/usr/bin/docker-registry serve <config.yml>` on 127.0.0.1 (or another local
address) with a random port and its own storage dir, in one of three modes:

    auth=None         open registry
    auth="htpasswd"   Basic auth from an htpasswd file (bcrypt lines made by `htpasswd -Bbn`)
    auth="token"      Bearer tokens: the registry trusts JWTs signed by `TokenRealm`'s key

`TokenRealm` is the auth server of the distribution token spec in ~150 lines of stdlib: GET
/token?service=&scope=&account= with Basic credentials (or none) answers a JWT granting the
requested actions; `offline_token=true` adds a refresh token; POST grant_type=refresh_token trades
one for an access token. JWTs are RS256: the signature comes from `openssl dgst -sha256 -sign`,
and the certificate in the JWT header's `x5c` is the one in the registry's rootcertbundle.
"""

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid

REGISTRY_BIN = "/usr/bin/docker-registry"
HTPASSWD_BIN = shutil.which("htpasswd") or "/usr/bin/htpasswd"
OPENSSL_BIN = shutil.which("openssl") or "/usr/bin/openssl"


def have_registry():
    return os.access(REGISTRY_BIN, os.X_OK)


def have_htpasswd():
    return os.access(HTPASSWD_BIN, os.X_OK)


def have_openssl():
    return os.access(OPENSSL_BIN, os.X_OK)


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenRealm:
    """A Bearer token server (docs/spec/auth/token.md) for tests. `fetches` counts tokens issued."""

    SERVICE = "minidock-test-registry"
    ISSUER = "minidock-test-issuer"

    def __init__(self, workdir, users):
        self.workdir = workdir
        self.users = dict(users)
        self.refresh = {}             # refresh token -> username
        self.fetches = 0
        self.requests = []            # (method, query dict) for assertions
        os.makedirs(workdir, exist_ok=True)
        self.key = os.path.join(workdir, "realm.key")
        self.cert = os.path.join(workdir, "realm.crt")
        subprocess.run([OPENSSL_BIN, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=minidock-test-token-issuer", "-keyout", self.key, "-out", self.cert],
                       check=True, capture_output=True)
        der = subprocess.run([OPENSSL_BIN, "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        realm = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                realm.requests.append(("GET", q))
                user = None
                h = self.headers.get("Authorization", "")
                if h.startswith("Basic "):
                    name, _, pw = base64.b64decode(h[6:]).decode().partition(":")
                    if realm.users.get(name) != pw:
                        return self._send(401, {"details": "incorrect username or password"})
                    user = name
                out = {"token": realm.issue(user, q.get("scope", []), q.get("service", [""])[0]),
                       "expires_in": 300}
                if user and q.get("offline_token") == ["true"]:
                    rt = uuid.uuid4().hex
                    realm.refresh[rt] = user
                    out["refresh_token"] = rt
                self._send(200, out)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                q = urllib.parse.parse_qs(self.rfile.read(n).decode())
                realm.requests.append(("POST", q))
                if q.get("grant_type") != ["refresh_token"] or q.get("refresh_token", [""])[0] not in realm.refresh:
                    return self._send(401, {"error": "invalid_grant"})
                user = realm.refresh[q["refresh_token"][0]]
                self._send(200, {"access_token": realm.issue(user, q.get("scope", []), q.get("service", [""])[0]),
                                 "expires_in": 300, "refresh_token": q["refresh_token"][0]})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def issue(self, user, scopes, service):
        """A signed JWT granting `user` everything asked (anonymous: nothing)."""
        self.fetches += 1
        access = []
        for sc in scopes:
            for one in sc.split(" "):
                typ, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if user:
                    access.append({"type": typ, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.ISSUER, "sub": user or "", "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())).encode()
        sig = subprocess.run([OPENSSL_BIN, "dgst", "-sha256", "-sign", self.key], input=signing_input,
                             check=True, capture_output=True).stdout
        return signing_input.decode() + "." + _b64url(sig)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Registry:
    """One docker-registry process; `address` is "host:port" for references."""

    def __init__(self, workdir, auth=None, users=None, realm=None, host="127.0.0.1"):
        self.workdir, self.auth, self.users, self.realm, self.host = workdir, auth, users or {}, realm, host
        self.storage = os.path.join(workdir, "storage")
        self.port = free_port(host)
        self.address = f"{host}:{self.port}"
        self.proc = None

    def _config(self):
        lines = ["version: 0.1",
                 "log:", "  level: error", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.address}", "  secret: minidock-test"]
        if self.auth == "htpasswd":
            path = os.path.join(self.workdir, "htpasswd")
            with open(path, "w") as f:
                for user, pw in self.users.items():
                    out = subprocess.run([HTPASSWD_BIN, "-Bbn", user, pw], check=True, capture_output=True, text=True)
                    f.write(out.stdout.strip() + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: minidock-test", f"    path: {path}"]
        elif self.auth == "token":
            lines += ["auth:", "  token:", f"    realm: {self.realm.url}", f"    service: {TokenRealm.SERVICE}",
                      f"    issuer: {TokenRealm.ISSUER}", f"    rootcertbundle: {self.realm.cert}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout=15.0):
        os.makedirs(self.storage, exist_ok=True)
        cfg = os.path.join(self.workdir, "config.yml")
        with open(cfg, "w") as f:
            f.write(self._config())
        self.log = open(os.path.join(self.workdir, "registry.log"), "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", cfg], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {open(self.log.name).read()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"docker-registry did not listen on {self.address} within {timeout}s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    # -- raw access, for tests that need to build odd content -------------------------------------

    def blob_data_path(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")

    def _open(self, method, path, body=None, headers=None, auth=None):
        req = urllib.request.Request(f"http://{self.address}{path}", data=body, method=method,
                                     headers=dict(headers or {}))
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        return urllib.request.urlopen(req, timeout=10)

    def put_blob(self, repo, data, auth=None):
        """Upload raw bytes as a blob (open or htpasswd registries). Returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._open("POST", f"/v2/{repo}/blobs/uploads/", b"", auth=auth) as r:
            loc = r.headers["Location"]
        u = urllib.parse.urlsplit(loc)
        path = u.path + "?" + (u.query + "&" if u.query else "") + "digest=" + digest
        with self._open("PUT", path, data, {"Content-Type": "application/octet-stream"}, auth=auth):
            pass
        return digest

    def put_manifest(self, repo, ref, doc, media_type, auth=None):
        body = json.dumps(doc).encode()
        with self._open("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type}, auth=auth) as r:
            return r.headers.get("Docker-Content-Digest"), body
