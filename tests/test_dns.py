"""DNS on bytes (parse, build, malformed input) and the resolver over real sockets on 127.0.0.1."""

import socket
import struct
import threading

import pytest

from minidock import dns


def test_query_round_trip():
    q = dns.parse_query(dns.build_query(0x1234, "Web.Example"))
    assert (q.id, q.name, q.qtype, q.qclass) == (0x1234, "web.example", dns.TYPE_A, dns.CLASS_IN)


def test_answer_bytes():
    q = dns.parse_query(dns.build_query(7, "db"))
    ans = dns.build_answer(q, ["172.18.0.3"])
    assert ans[:12] == struct.pack("!HHHHHH", 7, 0x8000 | 0x0400 | 0x0100 | 0x0080, 1, 1, 0, 0)
    assert ans[12:20] == b"\x02db\x00\x00\x01\x00\x01"
    assert ans[20:] == b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x02\x58\x00\x04\xac\x12\x00\x03"
    assert dns.parse_answer(ans) == (0, ["172.18.0.3"])


@pytest.mark.parametrize("rcode", [dns.NXDOMAIN, dns.SERVFAIL])
def test_error_answers(rcode):
    q = dns.parse_query(dns.build_query(9, "nope"))
    assert dns.parse_answer(dns.build_answer(q, (), rcode)) == (rcode, [])


HDR = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)

MALFORMED = {
    "empty": b"",
    "short header": b"\x00\x01\x01",
    "header only": HDR,
    "truncated label": HDR + b"\x05ab",
    "no qtype": HDR + b"\x01a\x00\x00",
    "self pointer": HDR + b"\xc0\x0c\x00\x01\x00\x01",
    "forward pointer": HDR + b"\xc0\x20\x00\x01\x00\x01" + bytes(30),
    "pointer loop": HDR + b"\x01a\xc0\x0e\x00\x01\x00\x01",
    "half pointer": HDR + b"\xc0",
    "huge counts": struct.pack("!HHHHHH", 1, 0x0100, 65535, 65535, 65535, 65535) + b"\x01a\x00\x00\x01\x00\x01",
    "zero questions": struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0),
    "a response": struct.pack("!HHHHHH", 1, 0x8100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01",
    "name too long": HDR + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01",
    "bad label type": HDR + b"\x41a\x00\x00\x01\x00\x01",
    "non-ascii": HDR + b"\x01\xff\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_queries_parse_to_none(name):
    assert dns.parse_query(MALFORMED[name]) is None


def test_pointer_chain_through_earlier_name_is_followed():
    # question name "b" + pointer to an earlier "a" label sequence placed in the header area is
    # impossible, so use a pointer back into the question itself: "x" then ptr to offset 12.
    data = HDR + b"\x01a\x00" + b"\x00\x01\x00\x01"
    assert dns.read_name(data + b"\x01b\xc0\x0c", len(data)) == ("b.a", len(data) + 4)


@pytest.fixture
def upstream():
    """A fake upstream resolver on 127.0.0.1: answers 10.0.0.1 for every A query."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)
    seen = []

    def serve():
        while True:
            try:
                data, addr = s.recvfrom(65535)
            except OSError:
                return
            q = dns.parse_query(data)
            seen.append(q.name)
            s.sendto(dns.build_answer(q, ["10.0.0.1"]), addr)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname(), seen
    s.close()


def _names(network, asker, name):
    table = {("net1", "web"): ["172.18.0.2"], ("net1", "db"): ["172.18.0.3"]}
    if asker != "127.0.0.1":
        return None
    return table.get((network, name))


def _serve(resolver, network):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    addrs = udp.getsockname(), tcp.getsockname()
    resolver.add(network, udp)
    resolver.add(network, tcp)
    return addrs


def _ask_udp(addr, data):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.sendto(data, addr)
    try:
        return c.recv(65535)
    finally:
        c.close()


def test_resolver_names_forwarding_and_tcp(upstream):
    up, seen = upstream
    r = dns.Resolver(_names, [up])
    try:
        udp, tcp = _serve(r, "net1")
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(1, "web"))) == (0, ["172.18.0.2"])
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(2, "web", dns.TYPE_AAAA))) == (0, [])
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(3, "else.test"))) == (0, ["10.0.0.1"])
        assert seen == ["else.test"]
        # malformed input: FORMERR when there is a header, and the server keeps serving
        assert _ask_udp(udp, MALFORMED["pointer loop"])[3] & 0xF == dns.FORMERR
        c = socket.create_connection(tcp, timeout=5)
        q = dns.build_query(4, "db")
        c.sendall(struct.pack("!H", len(q)) + q)
        length = struct.unpack("!H", c.recv(2))[0]
        reply = b""
        while len(reply) < length:
            reply += c.recv(length - len(reply))
        assert dns.parse_answer(reply) == (0, ["172.18.0.3"])
        c.close()
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(5, "db"))) == (0, ["172.18.0.3"])
    finally:
        r.close()


def test_upstream_down_is_servfail_and_none_is_nxdomain():
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))         # bound, never answers
    r = dns.Resolver(_names, [dead.getsockname()])
    r.UPSTREAM_TIMEOUT = 0.5
    r2 = dns.Resolver(_names, [])
    try:
        udp, _ = _serve(r, "net1")
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(1, "x.test")))[0] == dns.SERVFAIL
        udp2, _ = _serve(r2, "net1")
        assert dns.parse_answer(_ask_udp(udp2, dns.build_query(1, "x.test")))[0] == dns.NXDOMAIN
    finally:
        r.close()
        r2.close()
        dead.close()


def test_names_of_other_networks_are_not_answered():
    r = dns.Resolver(_names, [])
    try:
        udp, _ = _serve(r, "net2")
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(1, "web")))[0] == dns.NXDOMAIN
    finally:
        r.close()


def test_host_resolvers_keeps_loopback(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# x\nnameserver 127.0.0.53\nnameserver ::1\nsearch lan\nnameserver 10.1.1.1\n")
    assert dns.host_resolvers(str(p)) == ["127.0.0.53", "10.1.1.1"]


def test_an_askers_own_servers_replace_the_hosts(upstream):
    up, seen = upstream
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))         # the "host" resolver: never answers
    r = dns.Resolver(_names, [dead.getsockname()], lambda net, asker: [up] if net == "net1" else None)
    r.UPSTREAM_TIMEOUT = 0.5
    try:
        udp, _ = _serve(r, "net1")
        assert dns.parse_answer(_ask_udp(udp, dns.build_query(1, "own.test"))) == (0, ["10.0.0.1"])
        assert seen == ["own.test"]
        udp2, _ = _serve(r, "net2")
        assert dns.parse_answer(_ask_udp(udp2, dns.build_query(2, "own.test")))[0] == dns.SERVFAIL
    finally:
        r.close()
        dead.close()
