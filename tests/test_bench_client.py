"""The bench's raw-socket client (scripts/bench, Host.call and _read_reply), which times the API
lifecycle: every framing of an answer it may meet, and `bench lifecycle` end to end against a
rootless minidock of this checkout. No time is asserted: the bench's figures are its business."""

import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "scripts", "bench")


@pytest.fixture(scope="module")
def bench():
    loader = importlib.machinery.SourceFileLoader("bench_under_test", BENCH)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def answered(bench, *pieces, close=False):
    """_read_reply of an answer the peer sends in `pieces` (each its own send)."""
    ours, theirs = socket.socketpair()

    def peer():
        for piece in pieces:
            theirs.sendall(piece)
        if close:
            theirs.close()
    t = threading.Thread(target=peer)
    t.start()
    try:
        return bench._read_reply(ours)
    finally:
        t.join()
        ours.close()
        if not close:
            theirs.close()


def test_a_content_length_body_in_pieces(bench):
    assert answered(bench, b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n", b"\r\n{\"Id\":", b"\"abc\"}") \
        == (201, b'{"Id":"abc"}')


def test_a_chunked_body_is_decoded(bench):
    # dockerd answers /wait so: the head first, the status when the container ends
    assert answered(bench, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"10\r\n{\"StatusCode\":0}\r\n", b"1\r\n\n\r\n0\r\n\r\n") == (200, b'{"StatusCode":0}\n')


def test_a_chunked_logs_stream_is_taken_apart_exactly(bench):
    payload = bytes(range(256)) * 300
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (n, payload[a:a + n]) if a % 2 else b"%x\r\n%s\r\n" % (n, payload[a:a + n])
                    for a, n in ((0, 1), (1, 4095), (4096, 70000), (74096, len(payload) - 74096))) + b"0\r\n\r\n"
    assert bench.dechunk(wire) == payload
    # no last chunk; cut inside a size line; inside a chunk; a size that is not hex
    for bad in (wire[:-5], wire[:10], wire[:4], b"zz\r\nab\r\n0\r\n\r\n"):
        with pytest.raises(bench.APIError):
            bench.dechunk(bad)


def test_no_body_and_a_body_the_close_ends(bench):
    assert answered(bench, b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n") == (204, b"")
    assert answered(bench, b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it", close=True) == (200, b"all of it")


def test_a_refusal_raises_with_the_daemons_message(bench, tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def daemon():
        conn, _ = server.accept()
        request = conn.recv(65536)
        assert request.startswith(b"DELETE /v1.24/containers/x HTTP/1.1\r\n")
        body = json.dumps({"message": "No such container: x"}).encode()
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()
    t = threading.Thread(target=daemon)
    t.start()
    try:
        with pytest.raises(bench.APIError, match="404: .*No such container: x"):
            bench.Host("unix://" + path).call("DELETE", "/containers/x")
    finally:
        t.join()
        server.close()


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing")
def test_its_own_daemon_is_stopped_when_its_set_up_fails(bench, monkeypatch):
    """The minidock the bench starts for itself (OwnMinidock) is stopped and its directory
    removed when the set-up after the start fails -- here the image's import -- and the error
    reaches the caller."""
    made = []

    class Recorded(bench.MinidockProcess):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def refuse(*args):
        raise bench.APIError("no import today")
    monkeypatch.setattr(bench, "MinidockProcess", Recorded)
    monkeypatch.setattr(bench, "import_tar", refuse)
    with pytest.raises(bench.APIError, match="no import today"):
        bench.OwnMinidock()
    daemon = made[0].daemon
    assert daemon.proc.poll() is not None             # the daemon has exited
    assert not os.path.exists(daemon.base)


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing")
def test_bench_lifecycle_measures_every_phase(tmp_path):
    p = subprocess.run([sys.executable, BENCH, "lifecycle", "--runs", "3", "--warmup", "1", "--no-cli",
                        "--network", ""], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line for line in p.stdout.splitlines() if line.lstrip().startswith("API ")]
    assert [row.split("[ms]")[0].strip() for row in rows] == [
        "API create", "API start", "API wait", "API delete", "API create+start+wait+delete"], p.stdout
    cpu = [line for line in p.stdout.splitlines()
           if line.lstrip().startswith("machine CPU per API lifecycle")]
    assert len(cpu) == 1, p.stdout                  # the whole machine's, less the bench's own
    for row in rows + cpu:
        assert "failed" not in row, row
        assert float(row.split("[ms]")[1].split()[1].replace(",", "")) > 0, row
