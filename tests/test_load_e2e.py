"""The daemon under load, with the real docker CLI: many clients at once, many containers at once.

The daemon runs as uid 65534 (the `rootless` fixture). What is asserted is what users saw:
every CLI call answered, no "Cannot connect to the Docker daemon".
"""

import concurrent.futures
import socket

import pytest

from support import DOCKER


def test_rm_f_of_40_running_containers_has_no_connection_error(rootless):
    ids = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = pool.map(lambda i: rootless.docker("run", "-d", "--name", f"load{i}", "busybox",
                                                     "sleep", "600"), range(40))
        ids = [r.stdout.decode().strip() for r in results]
    assert len(set(ids)) == 40
    running = rootless.docker("ps", "-q", "--filter", "name=load").stdout.decode().split()
    assert len(running) == 40
    # The CLI removes them all at once: 40 connections opened non-blocking in the same instant.
    result = rootless.docker("rm", "-f", *ids, check=False, timeout=120)
    err = result.stderr.decode()
    assert "Cannot connect" not in err and result.returncode == 0, err
    left = rootless.docker("ps", "-aq", "--filter", "name=load").stdout.decode().split()
    assert left == []


def test_200_clients_connecting_at_once_to_the_daemon(rootless):
    socks = []
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect(rootless.socket)     # BlockingIOError here is the bug: a full backlog
        socks.append(s)
    try:
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET /containers/json HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        answered = 0
        for s in socks:
            data = b""
            while True:
                more = s.recv(65536)
                if not more:
                    break
                data += more
            answered += data.startswith(b"HTTP/1.1 200 ")
        assert answered == 200
    finally:
        for s in socks:
            s.close()
