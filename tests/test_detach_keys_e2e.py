"""Detach keys end to end: ctrl-p ctrl-p ctrl-q typed into a TTY session ends the attach and
leaves the container running, over both attach routes of a real rootless daemon: the hijacked
`POST /containers/(id)/attach` and the WebSocket `GET /containers/(id)/attach/ws`. Both use
the one scanner in minidock/container/attach.py (before it, the HTTP path did not detach on
this sequence)."""

import socket
import time

import pytest

from minidock import websocket as ws
from test_attach_ws import WSClient, _socket_path

CTRL_P_CTRL_P_CTRL_Q = b"\x10\x10\x11"


def _running(d, name):
    return d.client().get(f"/containers/{name}/json")["State"]["Running"]


def _recv_until(sock, needle):
    out = b""
    while needle not in out:
        data = sock.recv(65536)
        if not data:
            break
        out += data
    return out


@pytest.mark.e2e
def test_http_attach_detaches_on_ctrl_p_ctrl_p_ctrl_q(rootless):
    d = rootless
    d.docker("run", "-dit", "--name", "httpdetach", "busybox", "sh")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(15)
            s.connect(_socket_path(d))
            s.sendall(b"POST /v1.24/containers/httpdetach/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                      b"Host: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
            head = _recv_until(s, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            s.sendall(b"echo HTTP$((40+2))\r")
            assert b"HTTP42" in _recv_until(s, b"HTTP42")
            s.sendall(CTRL_P_CTRL_P_CTRL_Q)
            rest = _recv_until(s, b"never printed")         # returns when the daemon closes
            assert b"never printed" not in rest
        assert _running(d, "httpdetach")
    finally:
        d.docker("rm", "-f", "httpdetach")


@pytest.mark.e2e
def test_ws_attach_detaches_on_ctrl_p_ctrl_p_ctrl_q(rootless):
    d = rootless
    d.docker("run", "-dit", "--name", "wsdetach", "busybox", "sh")
    try:
        client = WSClient(_socket_path(d), "/containers/wsdetach/attach/ws?stream=1&stdin=1&stdout=1")
        assert client.status == 101
        client.send(b"echo WS$((40+2))\r")
        assert b"WS42" in client.read_until(b"WS42")
        client.send(CTRL_P_CTRL_P_CTRL_Q)
        _, code = client.read_until_close()
        client.close()
        assert code == ws.NORMAL_CLOSURE
        time.sleep(0.2)
        assert _running(d, "wsdetach")
    finally:
        d.docker("rm", "-f", "wsdetach")
