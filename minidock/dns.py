"""DNS: the wire format, and the embedded resolver that names containers on user networks.

Docker gives every container on a user-defined network a resolver that knows the other
containers of its networks by name, by network alias (the service names docker-compose sets)
and by short id, and forwards every other question to the host's resolvers. minidock does the
same with this module.

The wire format (RFC 1035 section 4; the same bytes over UDP, and over TCP behind a 2-byte
big-endian length, RFC 1035 4.2.2 / RFC 7766):

    header     u16 id | u16 flags | u16 qdcount | u16 ancount | u16 nscount | u16 arcount
               flags: QR(1) opcode(4) AA TC RD | RA Z(3) rcode(4)
    question   name | u16 qtype (A=1, AAAA=28) | u16 qclass (IN=1)
    answer     name | u16 type | u16 class | u32 ttl | u16 rdlength | rdata (A: 4 bytes)
    name       labels: u8 length + bytes, ending with 0; or a *compression pointer* -- two
               bytes 11xxxxxx xxxxxxxx giving the offset of the rest of the name

A query from a container is untrusted input: it may be truncated, claim 65535 questions, or
hold pointers that loop. `parse_query` returns None for anything that is not one well-formed
question (the server then drops it, or answers FORMERR when there is an id to answer), and
never raises or loops: pointers may only point backwards and at most MAX_JUMPS times, names are
at most 255 bytes.

The resolver (`Resolver`)
-------------------------
It serves sockets the daemon got from its network namespace (network.py): one UDP and one
TCP socket per user network, bound to the network's gateway address, port 53 -- that address
is what the container's resolv.conf names (Docker uses 127.0.0.11 and an iptables DNAT rule
inside the container; without iptables, the gateway is the address a container can reach).
For a question it asks `lookup(network, asker_ip, name)` -- the names of the asker's networks
only -- and answers A records; for a known name and another type, an empty answer (NOERROR).
Everything else is forwarded, as raw bytes, to the host's resolvers from the daemon's own
(host) network namespace, so a loopback resolver such as systemd-resolved's 127.0.0.53 works
even though no container can reach it: UDP with a timeout per upstream, the next one on
failure, SERVFAIL when all fail, NXDOMAIN when there is none. The upstream's answer goes back
unchanged except for the id. Nothing waits forever: every socket has a timeout.
"""

import os
import selectors
import socket
import struct
import threading

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
OPCODE_MASK = 0x7800

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TYPE_A, TYPE_AAAA, TYPE_ANY = 1, 28, 255
CLASS_IN = 1

MAX_JUMPS = 16
MAX_NAME = 255
TTL = 600                   # Docker's embedded DNS answers with 600 s

_HEADER = struct.Struct("!HHHHHH")


class Query:
    """One parsed question: id, flags, name (lower-case, no trailing dot), qtype, qclass,
    and `raw`, the question section's bytes as they were (echoed in answers)."""

    def __init__(self, id, flags, name, qtype, qclass, raw):
        self.id, self.flags, self.name = id, flags, name
        self.qtype, self.qclass, self.raw = qtype, qclass, raw

    def __repr__(self):
        return f"Query({self.id}, {self.name!r}, {self.qtype})"


def read_name(data, pos):
    """(name, position after it) of the name at `pos`, following compression pointers
    backwards only and at most MAX_JUMPS times; None for anything malformed."""
    labels = []
    total = 0
    end = None
    jumps = 0
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                return None
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            jumps += 1
            if target >= pos or jumps > MAX_JUMPS:    # forward or looping pointer
                return None
            pos = target
            continue
        if length & 0xC0:
            return None                 # 01/10 label types: obsolete, refused
        pos += 1
        if length == 0:
            break
        if pos + length > len(data):
            return None
        total += length + 1
        if total > MAX_NAME:
            return None
        labels.append(data[pos:pos + length])
        pos += length
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    return name, (end if end is not None else pos)


def parse_query(data):
    """A Query for a standard query with exactly one question, else None."""
    if len(data) < _HEADER.size:
        return None
    id_, flags, qd, an, ns_, ar = _HEADER.unpack_from(data)
    if flags & QR or qd != 1:
        return None                     # a response, or 0 / many questions
    got = read_name(data, _HEADER.size)
    if got is None:
        return None
    name, pos = got
    if pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Query(id_, flags, name, qtype, qclass, data[_HEADER.size:pos + 4])


def query_id(data):
    """The id of whatever arrived, if it has a header (to answer FORMERR), else None."""
    return struct.unpack_from("!H", data)[0] if len(data) >= 2 else None


def encode_name(name):
    out = b""
    for label in name.strip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(id_, name, qtype=TYPE_A, rd=True):
    """A standard query (used by tests and by anyone asking a resolver)."""
    return (_HEADER.pack(id_, RD if rd else 0, 1, 0, 0, 0) + encode_name(name)
            + struct.pack("!HH", qtype, CLASS_IN))


def build_answer(query, addresses=(), rcode=NOERROR, ttl=TTL):
    """The response to `query`: its question echoed, one A record per address (the name
    written as a pointer to the question at offset 12), authoritative, recursion available."""
    flags = QR | AA | RA | (query.flags & (OPCODE_MASK | RD)) | rcode
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4)
                       + socket.inet_aton(a) for a in addresses)
    return (_HEADER.pack(query.id, flags, 1, len(addresses), 0, 0) + query.raw + answers)


def build_error(id_, rcode, query=None):
    """A bare error response (FORMERR for unparsable input, SERVFAIL, ...)."""
    if query is not None:
        return build_answer(query, (), rcode)
    return _HEADER.pack(id_ or 0, QR | RA | rcode, 0, 0, 0, 0)


def parse_answer(data):
    """(rcode, [IPv4 addresses of A records]) of a response; for tests and clients."""
    id_, flags, qd, an, _ns, _ar = _HEADER.unpack_from(data)
    pos = _HEADER.size
    for _ in range(qd):
        name, pos = read_name(data, pos)
        pos += 4
    out = []
    for _ in range(an):
        name, pos = read_name(data, pos)
        rtype, _cls, _ttl, length = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        if rtype == TYPE_A and length == 4:
            out.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += length
    return flags & 0xF, out


def host_resolvers(path="/etc/resolv.conf"):
    """The `nameserver` addresses of the host's resolv.conf (IPv4, loopback included)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    out.append(parts[1])
    except OSError:
        pass
    return out


# --- the server ----------------------------------------------------------------------------

class Resolver:
    """Answers on the sockets it is given; forwards the rest. Thread-based, bounded waits.

    `lookup(network, asker_ip, name)` -> list of IPv4 strings, or None when the name is not a
    container of that network. `upstreams` is a list of (ip, port); `upstreams_for(network,
    asker_ip)` may name the asker's own instead (a container's --dns)."""

    UPSTREAM_TIMEOUT = 2.0
    TCP_IDLE = 10.0

    def __init__(self, lookup, upstreams, upstreams_for=None):
        self.lookup = lookup
        self.upstreams = list(upstreams)
        self.upstreams_for = upstreams_for      # (network, asker ip) -> [(ip, port)] or None
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="dns", daemon=True)
        self._thread.start()

    def add(self, network, sock):
        """Serve `sock` (UDP, or a listening TCP socket) for `network`."""
        sock.setblocking(False)
        with self._lock:
            self._pending.append(("add", network, sock))
        os.write(self._wake_w, b"x")

    def remove(self, network):
        """Stop serving (and close) every socket of `network`."""
        with self._lock:
            self._pending.append(("remove", network, None))
        os.write(self._wake_w, b"x")

    def close(self):
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)

    def answer(self, network, asker, data):
        """The response bytes for one query from `asker` (ip), or None to drop it."""
        q = parse_query(data)
        if q is None:
            qid = query_id(data)
            if qid is None or len(data) < _HEADER.size:
                return None             # nothing to answer to
            return build_error(qid, FORMERR)
        if q.qclass == CLASS_IN:
            addresses = self.lookup(network, asker, q.name)
            if addresses is not None:
                return build_answer(q, addresses if q.qtype in (TYPE_A, TYPE_ANY) else [])
        own = self.upstreams_for(network, asker) if self.upstreams_for else None
        return self.forward(q, data, own)

    def forward(self, q, data, upstreams=None):
        """Ask the host's resolvers (from the host's namespace), or the asker's own servers;
        SERVFAIL if none answers, NXDOMAIN if there is none."""
        upstreams = upstreams or self.upstreams
        if not upstreams:
            return build_answer(q, (), NXDOMAIN)
        for host, port in upstreams:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                s.settimeout(self.UPSTREAM_TIMEOUT)
                s.connect((host, port))
                s.send(data)
                while True:
                    reply = s.recv(65535)
                    if len(reply) >= _HEADER.size and reply[:2] == data[:2]:
                        return reply
            except OSError:
                continue                # timeout, refused: the next upstream
            finally:
                s.close()
        return build_answer(q, (), SERVFAIL)

    # -- the loop --

    def _loop(self):
        socks = {}                      # network -> [sockets]
        while not self._closed:
            for key, _ in self._sel.select():
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    with self._lock:
                        todo, self._pending = self._pending, []
                    for op, network, sock in todo:
                        if op == "add":
                            socks.setdefault(network, []).append(sock)
                            self._sel.register(sock, selectors.EVENT_READ, (network, sock))
                        else:
                            for s in socks.pop(network, []):
                                self._sel.unregister(s)
                                s.close()
                    continue
                network, sock = key.data
                if sock.type == socket.SOCK_DGRAM:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except OSError:
                        continue
                    threading.Thread(target=self._udp, args=(network, sock, data, addr),
                                     daemon=True, name="dns-udp").start()
                else:
                    try:
                        conn, addr = sock.accept()
                    except OSError:
                        continue
                    threading.Thread(target=self._tcp, args=(network, conn, addr),
                                     daemon=True, name="dns-tcp").start()
        for lst in socks.values():
            for s in lst:
                s.close()

    def _udp(self, network, sock, data, addr):
        try:
            reply = self.answer(network, addr[0], data)
        except Exception:
            reply = None                # never let one query take the server down
        if reply is not None:
            try:
                sock.sendto(reply, addr)
            except OSError:
                pass

    def _tcp(self, network, conn, addr):
        conn.setblocking(True)
        conn.settimeout(self.TCP_IDLE)
        try:
            while True:
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                try:
                    reply = self.answer(network, addr[0], data)
                except Exception:
                    reply = None
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()


def _recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
