"""TCP listeners: mutual TLS with the real docker CLI, and the refusal of plain TCP off loopback.

Certificates are made in the test with openssl: a CA, a server certificate for 127.0.0.1 and
a client certificate (extendedKeyUsage clientAuth), as Docker's "protect the daemon socket"
guide does. Only 127.0.0.1 is ever connected to.
"""

import json
import os
import shutil
import socket
import subprocess

import pytest

from support import Daemon, NOBODY, primary_gid

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl missing")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory):
    """ca.pem, server-{cert,key}.pem and a client dir holding {ca,cert,key}.pem."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=minidock test CA", cwd=directory)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2",
                "-extfile", f"{name}.ext", cwd=directory)
    client = os.path.join(directory, "client")
    os.mkdir(client)
    shutil.copy(os.path.join(directory, "ca.pem"), os.path.join(client, "ca.pem"))
    shutil.copy(os.path.join(directory, "client-cert.pem"), os.path.join(client, "cert.pem"))
    shutil.copy(os.path.join(directory, "client-key.pem"), os.path.join(client, "key.pem"))
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.getuid() == 0:
            os.chown(path, NOBODY, primary_gid(NOBODY))
    return client


@pytest.fixture(scope="module")
def tls_daemon():
    port = free_port()
    d = Daemon()
    certs = os.path.join(d.base, "certs")
    os.mkdir(certs)
    os.chmod(certs, 0o755)
    client = make_certs(certs)
    d.extra_args = ["-H", f"tcp://127.0.0.1:{port}", "--tlsverify",
                    "--tlscacert", os.path.join(certs, "ca.pem"),
                    "--tlscert", os.path.join(certs, "server-cert.pem"),
                    "--tlskey", os.path.join(certs, "server-key.pem")]
    d.start()
    d.tcp = f"tcp://127.0.0.1:{port}"
    d.client_certs = client
    d.port = port
    try:
        from rootfs import make_rootfs_tar
        d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
        yield d
    finally:
        d.cleanup()


def tls_env(d, cert_path):
    return {"DOCKER_HOST": d.tcp, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": cert_path}


def test_cli_with_a_client_certificate(tls_daemon):
    d = tls_daemon
    out = d.docker("version", "--format", "{{.Server.Version}}", env=tls_env(d, d.client_certs))
    assert out.stdout.strip()
    # A whole run over TLS: create, attach (a hijacked TLS connection), start, wait, remove.
    out = d.docker("run", "--rm", "busybox", "echo", "over tls", env=tls_env(d, d.client_certs))
    assert out.stdout == b"over tls\n"


def test_cli_without_a_client_certificate_is_refused(tls_daemon):
    d = tls_daemon
    only_ca = os.path.join(d.base, "only-ca")
    os.makedirs(only_ca, exist_ok=True)
    shutil.copy(os.path.join(d.client_certs, "ca.pem"), only_ca)
    out = d.docker("version", "--format", "{{.Server.Version}}", env=tls_env(d, only_ca), check=False)
    assert out.returncode != 0
    assert out.stdout.strip() == b""


def test_plain_http_on_the_tls_port_gets_nothing(tls_daemon):
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=10) as s:
        s.sendall(b"GET /containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
    assert b"Id" not in data and not data.startswith(b"HTTP/1.1 200")


def test_plain_tcp_on_all_interfaces_is_refused():
    d = Daemon(extra_args=["-H", f"tcp://0.0.0.0:{free_port()}"])
    try:
        with pytest.raises(RuntimeError):
            d.start()
        assert "refusing to listen on tcp://0.0.0.0" in d.read_log()
    finally:
        d.cleanup()


def test_tls_false_allows_it_with_a_warning():
    port = free_port()
    d = Daemon(extra_args=["-H", f"tcp://0.0.0.0:{port}", "--tls=false"])
    try:
        d.start()
        assert "WITHOUT TLS" in d.read_log()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        d.cleanup()


def test_plain_tcp_on_loopback_warns():
    d = Daemon(extra_args=["-H", f"tcp://127.0.0.1:{free_port()}"])
    try:
        d.start()
        assert "WITHOUT TLS" in d.read_log()
    finally:
        d.cleanup()


def raw(d, request):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(d.socket)
        s.sendall(request)
        data = b""
        while True:
            more = s.recv(65536)
            if not more:
                return data
            data += more


@pytest.mark.parametrize("content_type,body,status", [
    ("text/plain", b'{"Image": "busybox"}', 400),
    ("application/x-www-form-urlencoded", b'{"Image": "busybox"}', 400),
    (None, b'{"Image": "busybox"}', 400),                # a body needs the header
    ("application/json; charset=utf-8", b'{"Image": "busybox", "Cmd": ["true"]}', 201),
    ("Application/JSON", b'{"Image": "busybox", "Cmd": ["true"]}', 201),
])
def test_json_endpoints_want_application_json(tls_daemon, content_type, body, status):
    head = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if content_type:
        head += b"Content-Type: " + content_type.encode() + b"\r\n"
    data = raw(tls_daemon, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:300]
    if status == 400:
        assert "must be 'application/json'" in json.loads(data.split(b"\r\n\r\n", 1)[1])["message"]
    else:
        cid = json.loads(data.split(b"\r\n\r\n", 1)[1])["Id"]
        tls_daemon.docker("rm", cid)


def test_an_empty_body_needs_no_content_type(tls_daemon):
    cid = tls_daemon.docker("create", "busybox", "true").stdout.decode().strip()
    data = raw(tls_daemon, f"POST /containers/{cid}/start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                           f"Content-Length: 0\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 204 ")
    tls_daemon.docker("rm", "-f", cid)


def test_an_empty_body_labelled_text_plain_is_fine(tls_daemon):
    """The docker CLI 20.10 (Debian's docker.io) sends its body-less POSTs -- start, wait, kill
    -- as `Content-Type: text/plain` with `Content-Length: 0`; Docker accepts them."""
    cid = tls_daemon.docker("create", "busybox", "true").stdout.decode().strip()
    data = raw(tls_daemon, f"POST /v1.41/containers/{cid}/start HTTP/1.1\r\nHost: docker\r\n"
                           "User-Agent: Docker-Client/20.10.24+dfsg1 (linux)\r\nContent-Length: 0\r\n"
                           "Content-Type: text/plain\r\nConnection: close\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 204 "), data[:300]
    tls_daemon.docker("rm", "-f", cid)


def test_stdin_over_tls(tls_daemon):
    d = tls_daemon
    out = d.docker("run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done",
                   input=b"through tls\n", env=tls_env(d, d.client_certs))
    assert out.stdout == b"through tls\ndone\n"
