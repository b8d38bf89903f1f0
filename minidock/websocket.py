"""WebSocket (RFC 6455): the opening handshake and the frame format, as functions over bytes.

`GET /containers/(id)/attach/ws` carries a container's output and stdin over a WebSocket, so a
browser (which cannot hijack an HTTP connection) can attach. The protocol has two parts:

1. **The opening handshake** (RFC 6455 section 4) is an HTTP/1.1 GET with

       Connection: Upgrade
       Upgrade: websocket
       Sec-WebSocket-Version: 13
       Sec-WebSocket-Key: <base64 of 16 random bytes>

   and the server answers `101 Switching Protocols` with `Upgrade: websocket`,
   `Connection: Upgrade` and `Sec-WebSocket-Accept: base64(SHA-1(key + GUID))`, where GUID is the
   fixed string 258EAFA5-E914-47DA-95CA-C5AB0DC85B11. The accept value proves the server read
   this handshake (a cache or a plain HTTP server would not compute it). From then on the
   connection carries frames both ways.

2. **Frames** (section 5.2). Each message travels as one or more frames:

       byte 0   FIN (1 bit) RSV1-3 (3 bits, 0 here) opcode (4 bits)
       byte 1   MASK (1 bit) payload length (7 bits: 0-125, or 126 / 127)
                126 -> the length follows as 2 bytes, 127 -> as 8 bytes (big-endian)
                MASK set -> a 4-byte masking key follows
       payload  (XOR-ed with the masking key, byte i with key[i % 4], when MASK is set)

   Opcodes: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong. Control frames (8-10)
   carry at most 125 bytes and are never fragmented. A client MUST mask every frame it sends
   and a server MUST NOT mask (masking stops a malicious page from making a proxy see bytes of
   its choosing). A close frame's payload is an optional 2-byte status code (1000 normal, 1001
   going away, 1002 protocol error, ...) followed by a UTF-8 reason; each side answers a close
   with a close and then the TCP connection is shut.

Docker (API < 1.42) sends output as text frames even though it is raw terminal bytes; minidock
does the same, and takes text or binary frames from the client as stdin.

Nothing here touches a socket: `decode_frame` takes a buffer and returns a frame plus the bytes
left over (or None when the buffer holds less than one frame), so tests run on bytes
(tests/test_attach_ws.py) and the attach handler only moves bytes.
"""

import base64
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = "13"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODES = {CONTINUATION: "continuation", TEXT: "text", BINARY: "binary", CLOSE: "close",
           PING: "ping", PONG: "pong"}
CONTROL = {CLOSE, PING, PONG}

# Close status codes (section 7.4.1) used here.
NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, MESSAGE_TOO_BIG = 1000, 1001, 1002, 1009

MAX_PAYLOAD = 16 * 1024 * 1024     # refuse absurd lengths before buffering them


class ProtocolError(ValueError):
    """The peer broke RFC 6455; the right answer is a close frame with PROTOCOL_ERROR."""

    def __init__(self, message, code=PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code


class Frame:
    """One decoded frame: fin, opcode, payload (already unmasked), and whether it was masked."""

    __slots__ = ("fin", "opcode", "payload", "masked")

    def __init__(self, fin, opcode, payload, masked):
        self.fin, self.opcode, self.payload, self.masked = fin, opcode, payload, masked

    def __repr__(self):
        return (f"Frame(fin={self.fin}, opcode={OPCODES.get(self.opcode, self.opcode)}, "
                f"payload={self.payload!r}, masked={self.masked})")


# -- the opening handshake ---------------------------------------------------------------------

def accept_key(client_key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    import hashlib                      # when needed: it loads OpenSSL (docs/performance.md, "Start-up")
    digest = hashlib.sha1(client_key.strip().encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def new_client_key():
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64-encoded."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def check_handshake(header):
    """Validate an upgrade request; `header(name)` returns a header value or None.

    Returns the client's key, or raises ProtocolError saying what is missing (the caller turns
    that into a 400)."""
    connection = {t.strip().lower() for t in (header("connection") or "").split(",")}
    if "upgrade" not in connection or (header("upgrade") or "").strip().lower() != "websocket":
        raise ProtocolError("not a websocket upgrade: want Connection: Upgrade and Upgrade: websocket")
    if (header("sec-websocket-version") or "").strip() != VERSION:
        raise ProtocolError(f"unsupported Sec-WebSocket-Version (want {VERSION})")
    key = (header("sec-websocket-key") or "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise ProtocolError("Sec-WebSocket-Key must be 16 bytes in base64") from None
    return key


def handshake_headers(client_key):
    """The headers of the server's `101 Switching Protocols` answer."""
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(client_key))]


def client_handshake(path, key, host="localhost"):
    """The bytes of a client's opening handshake (for clients and tests)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Upgrade: websocket",
             f"Sec-WebSocket-Version: {VERSION}", f"Sec-WebSocket-Key: {key}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- frames ------------------------------------------------------------------------------------

def apply_mask(key, data):
    """XOR `data` with the 4-byte `key` repeated (masking and unmasking are the same)."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[:len(data)]
    # One big-integer XOR is much faster in Python than a byte loop.
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def encode_frame(opcode, payload=b"", fin=True, mask=None):
    """One frame. `mask` is a 4-byte key (clients must pass one), or None (servers)."""
    if opcode not in OPCODES:
        raise ValueError(f"unknown opcode {opcode}")
    if opcode in CONTROL and (len(payload) > 125 or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    return head + mask + apply_mask(mask, payload)


def decode_frame(buffer, require_mask=None):
    """Split one frame off the front of `buffer`: returns (Frame, rest) or (None, buffer).

    `require_mask`: True on a server (client frames must be masked), False on a client, None
    to accept either. Raises ProtocolError for frames RFC 6455 forbids."""
    if len(buffer) < 2:
        return None, buffer
    b0, b1 = buffer[0], buffer[1]
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    if b0 & 0x70:
        raise ProtocolError("reserved bits set without a negotiated extension")
    if opcode not in OPCODES:
        raise ProtocolError(f"unknown opcode {opcode:#x}")
    masked, size = bool(b1 & 0x80), b1 & 0x7F
    if require_mask is not None and masked != require_mask:
        raise ProtocolError("client frames must be masked" if require_mask
                            else "server frames must not be masked")
    offset = 2
    if size == 126:
        if len(buffer) < 4:
            return None, buffer
        size, offset = struct.unpack_from("!H", buffer, 2)[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None, buffer
        size, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
    if opcode in CONTROL and (size > 125 or not fin):
        raise ProtocolError("control frames carry at most 125 bytes and cannot be fragmented")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {size} bytes is too big", MESSAGE_TOO_BIG)
    key = b""
    if masked:
        if len(buffer) < offset + 4:
            return None, buffer
        key, offset = bytes(buffer[offset:offset + 4]), offset + 4
    if len(buffer) < offset + size:
        return None, buffer
    payload = bytes(buffer[offset:offset + size])
    if masked:
        payload = apply_mask(key, payload)
    return Frame(fin, opcode, payload, masked), bytes(buffer[offset + size:])


def close_payload(code=NORMAL_CLOSURE, reason=""):
    """The payload of a close frame: 2-byte status code, then a UTF-8 reason."""
    data = struct.pack("!H", code) + reason.encode("utf-8")
    if len(data) > 125:
        raise ValueError("close reason too long for a control frame")
    return data


def parse_close_payload(payload):
    """(code, reason) of a close frame; (None, "") when it carries no code."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError("a close payload of one byte is malformed")
    code = struct.unpack_from("!H", payload)[0]
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not UTF-8") from None
    return code, reason


class MessageAssembler:
    """Joins fragmented data frames into messages; answers what the endpoint should do.

    feed(frame) returns a list of events: ("message", opcode, payload), ("ping", payload),
    ("pong", payload) or ("close", code, reason). No I/O: the caller sends pongs and closes."""

    def __init__(self):
        self.opcode = None
        self.parts = []

    def feed(self, frame):
        if frame.opcode == PING:
            return [("ping", frame.payload)]
        if frame.opcode == PONG:
            return [("pong", frame.payload)]
        if frame.opcode == CLOSE:
            return [("close",) + parse_close_payload(frame.payload)]
        if frame.opcode == CONTINUATION:
            if self.opcode is None:
                raise ProtocolError("continuation frame without a message to continue")
        elif self.opcode is not None:
            raise ProtocolError("new data frame inside a fragmented message")
        else:
            self.opcode = frame.opcode
        self.parts.append(frame.payload)
        if not frame.fin:
            return []
        message = ("message", self.opcode, b"".join(self.parts))
        self.opcode, self.parts = None, []
        return [message]
