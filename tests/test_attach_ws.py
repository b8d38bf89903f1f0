"""WebSocket attach: RFC 6455 framing on bytes (the RFC's own examples), then
GET /containers/(id)/attach/ws against a real rootless daemon with a small stdlib client."""

import os
import re
import socket
import time

import pytest

from minidock import websocket as ws


# -- bytes: the examples of RFC 6455 -----------------------------------------------------------

def test_accept_key_of_rfc_example():
    # RFC 6455 section 1.3.
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


RFC_FRAMES = [
    # (description, opcode, payload, fin, mask, bytes) from RFC 6455 section 5.7
    ("unmasked text Hello", ws.TEXT, b"Hello", True, None, bytes.fromhex("810548656c6c6f")),
    ("masked text Hello", ws.TEXT, b"Hello", True, bytes.fromhex("37fa213d"),
     bytes.fromhex("818537fa213d7f9f4d5158")),
    ("first fragment Hel", ws.TEXT, b"Hel", False, None, bytes.fromhex("010348656c")),
    ("last fragment lo", ws.CONTINUATION, b"lo", True, None, bytes.fromhex("80026c6f")),
    ("unmasked ping", ws.PING, b"Hello", True, None, bytes.fromhex("890548656c6c6f")),
    ("masked pong", ws.PONG, b"Hello", True, bytes.fromhex("37fa213d"),
     bytes.fromhex("8a8537fa213d7f9f4d5158")),
]


@pytest.mark.parametrize("what,opcode,payload,fin,mask,wire", RFC_FRAMES, ids=[f[0] for f in RFC_FRAMES])
def test_rfc_frames_both_ways(what, opcode, payload, fin, mask, wire):
    assert ws.encode_frame(opcode, payload, fin=fin, mask=mask) == wire
    frame, rest = ws.decode_frame(wire + b"tail")
    assert (frame.fin, frame.opcode, frame.payload, frame.masked) == (fin, opcode, payload, mask is not None)
    assert rest == b"tail"


def test_extended_lengths():
    # 256 bytes: 126 + 16-bit length; 65536 bytes: 127 + 64-bit length (section 5.7).
    assert ws.encode_frame(ws.BINARY, b"x" * 256)[:4] == bytes.fromhex("827e0100")
    big = ws.encode_frame(ws.BINARY, b"y" * 65536)
    assert big[:10] == bytes.fromhex("827f0000000000010000")
    assert ws.decode_frame(big)[0].payload == b"y" * 65536
    assert ws.encode_frame(ws.BINARY, b"z" * 125)[1] == 125
    masked = ws.encode_frame(ws.BINARY, b"q" * 70000, mask=b"\x01\x02\x03\x04")
    assert masked[1] == 0x80 | 127
    assert ws.decode_frame(masked, require_mask=True)[0].payload == b"q" * 70000


def test_partial_buffers_wait_for_more():
    wire = ws.encode_frame(ws.TEXT, b"a" * 300, mask=b"abcd")
    for cut in range(len(wire)):
        frame, rest = ws.decode_frame(wire[:cut])
        assert frame is None and rest == wire[:cut]
    assert ws.decode_frame(wire)[0].payload == b"a" * 300


def test_protocol_errors():
    with pytest.raises(ws.ProtocolError, match="masked"):
        ws.decode_frame(ws.encode_frame(ws.TEXT, b"hi"), require_mask=True)
    with pytest.raises(ws.ProtocolError, match="must not be masked"):
        ws.decode_frame(ws.encode_frame(ws.TEXT, b"hi", mask=b"abcd"), require_mask=False)
    with pytest.raises(ws.ProtocolError, match="reserved"):
        ws.decode_frame(b"\xc1\x00")
    with pytest.raises(ws.ProtocolError, match="opcode"):
        ws.decode_frame(b"\x83\x00")
    with pytest.raises(ws.ProtocolError, match="control"):
        ws.decode_frame(b"\x09\x00")                    # a fragmented ping
    with pytest.raises(ws.ProtocolError, match="control"):
        ws.decode_frame(b"\x89\x7e\x00\x80" + b"x" * 128)
    with pytest.raises(ws.ProtocolError) as info:
        ws.decode_frame(b"\x82\x7f" + (1 << 40).to_bytes(8, "big"))
    assert info.value.code == ws.MESSAGE_TOO_BIG
    with pytest.raises(ValueError):
        ws.encode_frame(ws.PING, b"p" * 126)


def test_close_frames():
    payload = ws.close_payload(ws.GOING_AWAY, "bye")
    assert payload == b"\x03\xe9bye"
    frame, _ = ws.decode_frame(ws.encode_frame(ws.CLOSE, payload, mask=b"wxyz"))
    assert ws.parse_close_payload(frame.payload) == (1001, "bye")
    assert ws.parse_close_payload(b"") == (None, "")
    with pytest.raises(ws.ProtocolError):
        ws.parse_close_payload(b"\x03")
    with pytest.raises(ws.ProtocolError):
        ws.parse_close_payload(b"\x03\xe8\xff")


def test_assembler_joins_fragments_and_passes_control_frames():
    a = ws.MessageAssembler()
    assert a.feed(ws.Frame(False, ws.BINARY, b"ab", True)) == []
    assert a.feed(ws.Frame(True, ws.PING, b"p", True)) == [("ping", b"p")]   # may interleave
    assert a.feed(ws.Frame(True, ws.CONTINUATION, b"cd", True)) == [("message", ws.BINARY, b"abcd")]
    assert a.feed(ws.Frame(True, ws.CLOSE, b"\x03\xe8", True)) == [("close", 1000, "")]
    with pytest.raises(ws.ProtocolError):
        a.feed(ws.Frame(True, ws.CONTINUATION, b"x", True))
    a.feed(ws.Frame(False, ws.TEXT, b"x", True))
    with pytest.raises(ws.ProtocolError):
        a.feed(ws.Frame(True, ws.TEXT, b"y", True))


def test_handshake_checks():
    key = ws.new_client_key()
    headers = {"connection": "keep-alive, Upgrade", "upgrade": "WebSocket",
               "sec-websocket-version": "13", "sec-websocket-key": key}
    assert ws.check_handshake(headers.get) == key
    assert ("Sec-WebSocket-Accept", ws.accept_key(key)) in ws.handshake_headers(key)
    for name, bad in (("upgrade", "tcp"), ("sec-websocket-version", "8"), ("sec-websocket-key", "short")):
        with pytest.raises(ws.ProtocolError):
            ws.check_handshake(dict(headers, **{name: bad}).get)


# -- end to end: a stdlib WebSocket client against the daemon ---------------------------------

class WSClient:
    """Just enough of a WebSocket client: handshake, masked sends, frame reads."""

    def __init__(self, socket_path, path):
        # Docker sends output in text frames before API v1.28 and in binary frames since.
        version = re.match(r"^/v1\.(\d+)/", path)
        self.data_opcode = ws.TEXT if version and int(version.group(1)) < 28 else ws.BINARY
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(socket_path)
        key = ws.new_client_key()
        self.sock.sendall(ws.client_handshake(path, key))
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(4096)
            assert data, f"connection closed during the handshake: {head!r}"
            head += data
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        if self.status == 101:
            assert self.headers["sec-websocket-accept"] == ws.accept_key(key)
            assert self.headers["upgrade"].lower() == "websocket"

    def send(self, payload, opcode=ws.BINARY):
        self.sock.sendall(ws.encode_frame(opcode, payload, mask=os.urandom(4)))

    def frame(self):
        while True:
            frame, self.buffer = ws.decode_frame(self.buffer, require_mask=False)
            if frame is not None:
                return frame
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def read_until_close(self):
        """Data payloads up to the server's close frame: (bytes, close code)."""
        out = b""
        while True:
            frame = self.frame()
            if frame is None:
                return out, None
            if frame.opcode == ws.CLOSE:
                return out, ws.parse_close_payload(frame.payload)[0]
            assert frame.opcode == self.data_opcode
            out += frame.payload

    def read_until(self, needle):
        out = b""
        while needle not in out:
            frame = self.frame()
            assert frame is not None and frame.opcode == self.data_opcode, (out, frame)
            out += frame.payload
        return out

    def close(self):
        self.sock.close()


def _socket_path(d):
    return d.host[len("unix://"):]


@pytest.mark.e2e
def test_ws_output_of_a_running_container(rootless):
    d = rootless
    d.docker("run", "-d", "--name", "wsout", "busybox", "sh", "-c",
             "sleep 1; echo to-stdout; echo to-stderr >&2; sleep 0.3")
    client = WSClient(_socket_path(d), "/v1.24/containers/wsout/attach/ws?stream=1&stdout=1&stderr=1")
    assert client.status == 101
    out, code = client.read_until_close()
    client.close()
    # Raw bytes, not 8-byte frames: attach/ws never multiplexes.
    assert b"to-stdout\n" in out and b"to-stderr\n" in out and b"\x01\x00\x00\x00" not in out
    assert code == ws.NORMAL_CLOSURE
    d.docker("rm", "-f", "wsout")


@pytest.mark.e2e
def test_ws_stdin_and_stdin_once(rootless):
    d = rootless
    cid = d.client().post("/containers/create", body={
        "Image": "busybox", "Cmd": ["sh", "-c", "while read line; do echo got:$line; done; echo eof"],
        "OpenStdin": True, "StdinOnce": True, "AttachStdin": True})["Id"]
    client = WSClient(_socket_path(d), f"/containers/{cid}/attach/ws?stream=1&stdin=1&stdout=1")
    assert client.status == 101
    d.client().post(f"/containers/{cid}/start")
    client.send(b"one\n")
    assert b"got:one" in client.read_until(b"got:one")
    client.send(b"t", ws.TEXT)
    client.send(b"wo\n", ws.TEXT)
    assert b"got:two" in client.read_until(b"got:two")
    client.send(ws.close_payload(ws.NORMAL_CLOSURE), ws.CLOSE)     # StdinOnce: closes its stdin
    frame = client.frame()
    assert frame.opcode == ws.CLOSE
    client.close()
    assert d.client().post(f"/containers/{cid}/wait", timeout=15)["StatusCode"] == 0
    assert d.docker("logs", cid).stdout == b"got:one\ngot:two\neof\n"
    d.docker("rm", cid)


@pytest.mark.e2e
def test_ws_logs_replay_and_bad_handshake(rootless):
    d = rootless
    d.docker("run", "--name", "wslogs", "busybox", "sh", "-c", "echo first; echo second >&2")
    client = WSClient(_socket_path(d), "/containers/wslogs/attach/ws?logs=1&stdout=1")
    out, code = client.read_until_close()
    assert (out, code) == (b"first\n", ws.NORMAL_CLOSURE)
    client.close()
    # A plain GET (no upgrade) is refused with 400 and a message.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(_socket_path(d))
        s.sendall(b"GET /containers/wslogs/attach/ws?stdout=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            data = s.recv(4096)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 400") and b"websocket" in reply
    missing = WSClient(_socket_path(d), "/containers/nosuch/attach/ws?stdout=1")
    assert missing.status == 404
    missing.close()
    d.docker("rm", "wslogs")


@pytest.mark.e2e
def test_ws_tty_ping_and_detach_keys(rootless):
    d = rootless
    d.docker("run", "-dit", "--name", "wstty", "busybox", "sh")
    client = WSClient(_socket_path(d),
                      "/containers/wstty/attach/ws?stream=1&stdin=1&stdout=1&detachKeys=ctrl-x,y")
    client.send(b"ping!", ws.PING)
    frame = client.frame()
    while frame.opcode == ws.BINARY:        # a prompt may come first (binary frames since v1.28)
        frame = client.frame()
    assert (frame.opcode, frame.payload) == (ws.PONG, b"ping!")
    client.send(b"echo ABC$((6*7))\r")
    assert b"ABC42" in client.read_until(b"ABC42")
    client.send(b"\x18y")                   # ctrl-x y: detach, the container keeps running
    out, code = client.read_until_close()
    client.close()
    assert code == ws.NORMAL_CLOSURE
    time.sleep(0.2)
    state = d.client().get("/containers/wstty/json")["State"]
    assert state["Running"], state
    d.docker("rm", "-f", "wstty")


@pytest.mark.e2e
@pytest.mark.parametrize("prefix,opcode", [("/v1.27", ws.TEXT), ("/v1.28", ws.BINARY), ("/v1.47", ws.BINARY)])
def test_ws_frames_are_text_before_1_28_and_binary_since(rootless, prefix, opcode):
    d = rootless
    d.docker("run", "--name", "wsframes", "busybox", "echo", "framed")
    client = WSClient(_socket_path(d), f"{prefix}/containers/wsframes/attach/ws?logs=1&stdout=1")
    assert client.status == 101 and client.data_opcode == opcode
    out, _ = client.read_until_close()            # asserts every data frame has `opcode`
    client.close()
    assert out == b"framed\n"
    d.docker("rm", "wsframes")


@pytest.mark.e2e
@pytest.mark.parametrize("prefix,expected", [
    ("/v1.24", b"out\nerr\n"), ("/v1.41", b"out\nerr\n"),     # the query's streams ignored: all
    ("/v1.42", b"out\n"), ("/v1.47", b"out\n")])               # only the streams asked for
def test_ws_streams_from_the_query_since_1_42(rootless, prefix, expected):
    d = rootless
    name = "wsstreams" + prefix.replace("/v1.", "")
    d.docker("run", "--name", name, "busybox", "sh", "-c", "echo out; sleep 0.2; echo err >&2")
    client = WSClient(_socket_path(d), f"{prefix}/containers/{name}/attach/ws?logs=1&stdout=1")
    assert client.status == 101
    out, code = client.read_until_close()
    client.close()
    assert (out, code) == (expected, ws.NORMAL_CLOSURE)
    d.docker("rm", name)
