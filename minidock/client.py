"""A small Docker API client over the standard library, for tests and for people with no docker CLI.

    from minidock.client import Client
    c = Client("unix:///run/user/1000/minidock.sock")
    c.get("/version")                          # -> parsed JSON, raises APIError on 4xx/5xx
    for line in c.stream("POST", "/images/create", params={"fromImage": "busybox"}): ...
    sock = c.hijack("/containers/ID/attach", params={"stream": 1, "stdout": 1})

Requests use `http.client` over a unix or TCP socket. Streamed responses are read as JSON lines.
`hijack()` speaks the upgrade handshake itself (http.client cannot hand over its socket) and
returns a `Hijacked` pipe; `demux()` splits the 8-byte stream frames into (stream, bytes).

Also runnable: `python3 -m minidock.client [-H unix:///path] GET /info`.
"""

import http.client
import json
import os
import socket
import sys
import urllib.parse

from minidock import API_VERSION
from minidock import http as proto


class APIError(Exception):
    def __init__(self, status, message, body=None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def default_host():
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    from minidock.daemon import default_host as daemon_default
    return daemon_default()


class Client:
    def __init__(self, host=None, version=API_VERSION, timeout=60):
        self.host = host or default_host()
        self.version = version          # None: send unversioned paths
        self.timeout = timeout

    # -- plumbing ------------------------------------------------------------------------------
    def _connection(self, timeout="default"):
        timeout = self.timeout if timeout == "default" else timeout
        scheme, _, rest = self.host.partition("://")
        if scheme == "unix":
            return UnixHTTPConnection(rest, timeout=timeout)
        if scheme in ("tcp", "http"):
            host, _, port = rest.rstrip("/").rpartition(":")
            return http.client.HTTPConnection(host, int(port), timeout=timeout)
        raise ValueError(f"unsupported host {self.host!r}")

    def url(self, path, params=None):
        prefix = f"/v{self.version}" if self.version else ""
        query = ""
        if params:
            pairs = []
            for key, value in params.items():
                if value is None:
                    continue
                if isinstance(value, bool):
                    value = "1" if value else "0"
                elif isinstance(value, (dict, list)) and key in ("filters", "buildargs", "labels"):
                    value = json.dumps(value)
                if isinstance(value, (list, tuple)):
                    pairs += [(key, str(v)) for v in value]
                else:
                    pairs.append((key, str(value)))
            query = "?" + urllib.parse.urlencode(pairs)
        return prefix + urllib.parse.quote(path, safe="/:@") + query

    def request(self, method, path, params=None, body=None, headers=None, timeout="default"):
        """Send a request; returns the open http.client response (caller reads it)."""
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = self._connection(timeout)
        encode_chunked = body is not None and not isinstance(body, (bytes, str)) and "Content-Length" not in headers
        conn.request(method, self.url(path, params), body=body, headers=headers, encode_chunked=encode_chunked)
        response = conn.getresponse()
        response.connection_ = conn
        return response

    def call(self, method, path, params=None, body=None, headers=None, timeout="default"):
        """Request -> (status, headers, parsed JSON or bytes); raises APIError on >= 400."""
        response = self.request(method, path, params, body, headers, timeout)
        data = response.read()
        response.connection_.close()
        parsed = data
        if "json" in (response.getheader("Content-Type") or "") and data:
            try:
                parsed = json.loads(data)
            except ValueError:
                pass
        if response.status >= 400:
            message = parsed.get("message") if isinstance(parsed, dict) else data.decode(errors="replace")
            raise APIError(response.status, message, parsed)
        return response.status, response.headers, parsed

    def get(self, path, params=None, **kw):
        return self.call("GET", path, params, **kw)[2]

    def post(self, path, params=None, body=None, **kw):
        return self.call("POST", path, params, body, **kw)[2]

    def delete(self, path, params=None, **kw):
        return self.call("DELETE", path, params, **kw)[2]

    def stream(self, method, path, params=None, body=None, headers=None, timeout=None):
        """Yield each JSON document of a streamed response (progress, events, stats)."""
        response = self.request(method, path, params, body, headers, timeout=timeout)
        try:
            if response.status >= 400:
                data = response.read()
                try:
                    message = json.loads(data).get("message")
                except ValueError:
                    message = data.decode(errors="replace")
                raise APIError(response.status, message)
            decoder = json.JSONDecoder()
            buffer = ""
            while True:
                data = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not data:
                    break
                buffer += data.decode()
                while True:
                    buffer = buffer.lstrip()
                    if not buffer:
                        break
                    try:
                        obj, end = decoder.raw_decode(buffer)
                    except ValueError:
                        break
                    yield obj
                    buffer = buffer[end:]
        finally:
            response.connection_.close()

    def hijack(self, path, params=None, body=None, method="POST", headers=None):
        """Open a hijacked connection (attach, exec start); returns a Hijacked pipe."""
        scheme, _, rest = self.host.partition("://")
        if scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(rest)
        else:
            host, _, port = rest.rstrip("/").rpartition(":")
            sock = socket.create_connection((host, int(port)))
        payload = b""
        lines = [f"{method} {self.url(path, params)} HTTP/1.1", "Host: localhost",
                 "Connection: Upgrade", "Upgrade: tcp"]
        if body is not None:
            payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise APIError(0, "connection closed during hijack handshake")
            head += data
        head, _, rest_bytes = head.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status >= 400:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest_bytes) < length:
                data = sock.recv(65536)
                if not data:
                    break
                rest_bytes += data
            sock.close()
            try:
                message = json.loads(rest_bytes).get("message")
            except ValueError:
                message = rest_bytes.decode(errors="replace")
            raise APIError(status, message)
        return Hijacked(sock, rest_bytes, status)


class Hijacked:
    """The raw pipe of a hijacked connection."""

    def __init__(self, sock, pending, status):
        self.sock = sock
        self.pending = pending
        self.status = status

    def recv(self, n=65536):
        if self.pending:
            data, self.pending = self.pending[:n], self.pending[n:]
            return data
        return self.sock.recv(n)

    def send(self, data):
        self.sock.sendall(data)

    def close_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def read_all(self):
        chunks = []
        while True:
            data = self.recv()
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def close(self):
        self.sock.close()


def demux(data):
    """Split multiplexed output into (stdout bytes, stderr bytes)."""
    frames, rest = proto.parse_frames(data)
    out = b"".join(d for s, d in frames if s == proto.STDOUT)
    err = b"".join(d for s, d in frames if s == proto.STDERR)
    return out, err


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python3 -m minidock.client")
    p.add_argument("-H", "--host", default=None)
    p.add_argument("method")
    p.add_argument("path")
    p.add_argument("body", nargs="?", help="JSON body")
    args = p.parse_args(argv)
    client = Client(args.host, version=None)
    body = json.loads(args.body) if args.body else None
    try:
        status, _, data = client.call(args.method.upper(), args.path, body=body)
    except APIError as exc:
        print(f"error {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    if isinstance(data, bytes):
        sys.stdout.write(data.decode(errors="replace"))
    else:
        print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
