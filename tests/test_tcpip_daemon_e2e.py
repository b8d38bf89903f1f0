"""Outbound traffic of containers through the daemon's user-mode TCP/IP stack, with the real
docker CLI against a daemon run as uid 65534.

Servers run on the host's 127.0.0.1 only; containers reach them at 10.0.2.2, the host's
alias, which the daemon maps to 127.0.0.1 only with --allow-host-loopback. No other address is
ever dialled.
"""

import hashlib
import http.server
import os
import socket
import socketserver
import struct
import threading

import pytest

from rootfs import make_rootfs_tar
from support import Daemon

pytestmark = pytest.mark.e2e

MIB = 1 << 20
HOST = "10.0.2.2"
BIG = os.urandom(4 * MIB) * 25          # 100 MiB
BIG_SHA = hashlib.sha256(BIG).hexdigest()


def _daemon(*args):
    d = Daemon(extra_args=args)
    d.start()
    d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
    return d


@pytest.fixture(scope="module")
def d():
    daemon = _daemon("--allow-host-loopback")
    try:
        yield daemon
    finally:
        daemon.cleanup()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = BIG if self.path == "/big" else b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def sh(d, script, *args, check=True, timeout=300):
    r = d.docker("run", "--rm", *args, "busybox", "sh", "-c", script, check=check,
                 timeout=timeout)
    return r.stdout.decode()


GET = "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc {host} {port}"


def test_http_download_of_100_mib_byte_for_byte(d, web):
    out = sh(d, GET.format(path="/big", host=HOST, port=web) +
             f" | tail -c {len(BIG)} | sha256sum")
    assert out.split()[0] == BIG_SHA


def test_100_concurrent_connections_from_one_container(d):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)

    def serve():
        conns = []
        for _ in range(100):
            c, _ = srv.accept()
            conns.append(c)
        for c in conns:                 # all 100 are open at once before anyone answers
            c.sendall(b"ok\n")
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = srv.getsockname()[1]
    out = sh(d, f"for i in $(seq 100); do (nc {HOST} {port} </dev/null >/tmp/o$i) & done; wait; "
                f"cat /tmp/o* | grep -c ok")
    t.join(60)
    srv.close()
    assert out.strip() == "100"


def test_udp_request_and_response(d):
    """busybox's nc has no UDP; its tftp client does a UDP exchange: read request, data
    block, acknowledgment (RFC 1350), answered here by a few lines of TFTP on 127.0.0.1."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(60)
    seen = {}

    def serve():
        req, peer = srv.recvfrom(600)
        seen["request"] = req
        name = req[2:].split(b"\0")[0]
        srv.sendto(b"\0\3\0\1" + b"answer to " + name + b"\n", peer)   # DATA, block 1, last
        seen["ack"], _ = srv.recvfrom(100)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    out = sh(d, f"tftp -g -r question -l /tmp/got {HOST} {srv.getsockname()[1]} && cat /tmp/got")
    t.join(30)
    srv.close()
    assert out.strip() == "answer to question"
    assert seen["request"][:2] == b"\0\1" and seen["ack"] == b"\0\4\0\1"


def test_container_closes_mid_transfer(d):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)
    outcome = {}

    def serve():
        c, _ = srv.accept()
        try:
            for _ in range(1000):
                c.sendall(b"z" * MIB)
            outcome["result"] = "finished"
        except OSError as e:
            outcome["result"] = type(e).__name__
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    out = sh(d, f"nc {HOST} {srv.getsockname()[1]} | head -c 1000000 | wc -c")
    t.join(60)
    srv.close()
    assert out.strip() == "1000000"
    assert outcome["result"] in ("ConnectionResetError", "BrokenPipeError")


def test_host_server_closes_mid_transfer(d):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)

    def serve():
        c, _ = srv.accept()
        c.sendall(b"y" * MIB)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                       # a reset after one MiB
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    out = sh(d, f"nc {HOST} {srv.getsockname()[1]} | wc -c")
    t.join(30)
    srv.close()
    assert 0 < int(out.strip()) <= MIB


def test_docker_build_run_fetches_from_the_host(d, web, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        f"RUN {GET.format(path='/hello', host=HOST, port=web)} > /fetched && "
        "grep -q 'hello from the host' /fetched\n")
    d.docker("build", "-t", "fetched", str(tmp_path), timeout=300)
    out = d.docker("run", "--rm", "fetched", "cat", "/fetched").stdout.decode()
    assert "hello from the host" in out


def _layout(d):
    import json
    status = json.loads(d.docker("info", "--format", "{{json .SystemStatus}}").stdout)
    return dict(status)["Network namespace"]


def test_without_the_flag_the_host_loopback_is_refused(d, web):
    assert "host loopback at 10.0.2.2 allowed" in _layout(d)
    d2 = _daemon()
    try:
        assert "host loopback at 10.0.2.2 refused" in _layout(d2)
        out = sh(d2, GET.format(path="/hello", host=HOST, port=web) + "; echo rc=$?",
                 check=False)
        assert "hello from the host" not in out and "rc=1" in out
    finally:
        d2.cleanup()
