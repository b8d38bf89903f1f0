"""Byte-level tests of the user-mode TCP/IP stack (minidock/tcpip).

Codecs are tested on bytes, table-driven. The gateway is driven with frames built here (as a
container's kernel would send them) and its output frames are captured from the Link sink and
parsed back, checksums included; its host side is real: sockets on 127.0.0.1 only.
"""

import errno
import socket
import struct
import time

import pytest

from minidock.tcpip import ethernet, ipv4, tcp, tcpwire, udp
from minidock.tcpip.gateway import DEFAULT_MAC, DROP, HOST, REFUSE, Gateway, Network, route
from minidock.tcpip.tcpwire import ACK, FIN, PSH, RST, SYN

GW = ipv4.addr_bytes("10.0.2.2")
CT = ipv4.addr_bytes("10.0.2.100")
CT_MAC = ethernet.mac_bytes("02:00:00:00:00:64")


# --- codecs ----------------------------------------------------------------------------------

def test_ipv4_checksum_of_a_known_header():
    # The classic example header (checksum field 0xb861 included): sums to 0xffff.
    hdr = bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7".replace(" ", ""))
    assert ipv4.ones_sum(hdr) == 0xFFFF
    zeroed = hdr[:10] + b"\0\0" + hdr[12:]
    assert ipv4.checksum(zeroed) == 0xB861


@pytest.mark.parametrize("data,expected", [
    (b"", 0xFFFF),
    (b"\x00\x01", 0xFFFE),
    (b"\x00\x01\xf2", 0x0DFE),              # odd length: padded with a zero byte
    (b"\xff\xff", 0x0000),                  # negative zero sums to 0xffff, checksum 0
    (b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7", 0x220D),   # RFC 1071's worked example
])
def test_checksum_table(data, expected):
    assert ipv4.checksum(data) == expected


def _ip(src=CT, dst=GW, proto=ipv4.PROTO_TCP, payload=b"x" * 8, **kw):
    return ipv4.ipv4_packet(src, dst, proto, payload, **kw)


def _patch(packet, offset, fmt, value, fix_checksum=True):
    b = bytearray(packet)
    struct.pack_into(fmt, b, offset, value)
    if fix_checksum:
        struct.pack_into("!H", b, 10, 0)
        struct.pack_into("!H", b, 10, ipv4.checksum(b[:(b[0] & 15) * 4]))
    return bytes(b)


@pytest.mark.parametrize("name,packet,error", [
    ("truncated header", _ip()[:19], ipv4.Malformed),
    ("version 6", _patch(_ip(), 0, "!B", 0x65), ipv4.Malformed),
    ("IHL 4", _patch(_ip(), 0, "!B", 0x44), ipv4.Malformed),
    ("total length beyond the frame", _patch(_ip(), 2, "!H", 100), ipv4.Malformed),
    ("total length below the header", _patch(_ip(), 2, "!H", 12), ipv4.Malformed),
    ("bad header checksum", _patch(_ip(), 10, "!H", 0x1234, fix_checksum=False), ipv4.Malformed),
    ("more fragments", _patch(_ip(), 6, "!H", ipv4.IP_MF), ipv4.Fragment),
    ("a later fragment", _patch(_ip(), 6, "!H", 0x0010), ipv4.Fragment),
])
def test_ipv4_rejects(name, packet, error):
    with pytest.raises(error):
        ipv4.parse_ipv4(packet)


def test_ipv4_parses_and_ignores_ethernet_padding():
    pkt = _ip(payload=b"abcd") + b"\0" * 10
    ip = ipv4.parse_ipv4(pkt)
    assert (ip.src, ip.dst, ip.proto, bytes(ip.payload)) == (CT, GW, ipv4.PROTO_TCP, b"abcd")


@pytest.mark.parametrize("opts,expected", [
    (b"", (None, None)),
    (tcpwire.syn_options(1460, 7), (1460, 7)),
    (b"\x01\x01\x02\x04\x05\xb4\x00\x00", (1460, None)),          # NOPs, then END
    (b"\x04\x02\x08\x0a" + b"\0" * 8 + b"\x03\x03\x0e", (None, 14)),  # SACK-ok, timestamps
    (b"\x03\x03\x20\x00", (None, 14)),                            # scale > 14 is 14
])
def test_tcp_options(opts, expected):
    assert tcpwire.parse_options(opts) == expected


@pytest.mark.parametrize("opts", [
    b"\x02", b"\x02\x04\x05", b"\x02\x00", b"\x02\x03\x05\x00", b"\x03\x04\x07\x00",
    b"\x08\x01\x00\x00", b"\x05\xff",
])
def test_tcp_option_garbage_is_malformed(opts):
    with pytest.raises(ethernet.Malformed):
        tcpwire.parse_options(opts)


def test_tcp_segment_round_trip_and_checksum():
    seg = tcpwire.tcp_segment(CT, GW, 40000, 80, 1000, 0, SYN, 64240,
                              options=tcpwire.syn_options(1460, 7))
    assert ipv4.checksum(seg, ipv4.pseudo_sum(CT, GW, ipv4.PROTO_TCP, len(seg))) == 0
    s = tcpwire.parse_tcp(seg, CT, GW, verify=True)
    assert (s.sport, s.dport, s.seq, s.flags, s.window, s.mss, s.wscale) == (
        40000, 80, 1000, SYN, 64240, 1460, 7)
    bad = seg[:17] + bytes([seg[17] ^ 1]) + seg[18:]
    with pytest.raises(ethernet.Malformed):
        tcpwire.parse_tcp(bad, CT, GW, verify=True)
    with pytest.raises(ethernet.Malformed):
        tcpwire.parse_tcp(seg[:12] + b"\xf0" + seg[13:], CT, GW)   # data offset 60 > length


@pytest.mark.parametrize("a,b,diff", [
    (1, 0, 1), (0, 1, -1), (0, 0xFFFFFFFF, 1), (0xFFFFFFFF, 0, -1), (0x7FFFFFFF, 0, 0x7FFFFFFF),
])
def test_sequence_arithmetic_wraps(a, b, diff):
    assert tcpwire.seq_diff(a, b) == diff


def test_udp_round_trip_zero_checksum_and_garbage():
    d = udp.udp_datagram(CT, GW, 5000, 53, b"hello")
    assert udp.parse_udp(d, CT, GW)[:2] == (5000, 53)
    assert bytes(udp.parse_udp(d, CT, GW)[2]) == b"hello"
    assert bytes(udp.parse_udp(d[:6] + b"\0\0" + d[8:], CT, GW)[2]) == b"hello"  # 0 = unchecked
    for bad in (d[:7], d[:4] + b"\x00\x50" + d[6:], d[:4] + b"\x00\x04" + d[6:],
                d[:-1] + bytes([d[-1] ^ 0xFF])):
        with pytest.raises(ethernet.Malformed):
            udp.parse_udp(bad, CT, GW)


def test_arp_request_gets_a_reply():
    req = ethernet.ethernet_frame(ethernet.BROADCAST, CT_MAC, ethernet.ETH_P_ARP,
                                  ethernet.arp_packet(ethernet.ARP_REQUEST, CT_MAC, CT,
                                                      b"\0" * 6, GW))
    out, gw = _gateway()
    gw.handle_frame(req)
    assert out == [ethernet.ethernet_frame(CT_MAC, DEFAULT_MAC, ethernet.ETH_P_ARP,
                                           ethernet.arp_packet(ethernet.ARP_REPLY, DEFAULT_MAC, GW,
                                                               CT_MAC, CT))]
    # Who-has for another address, and garbage, get nothing.
    other = req[:-4] + ipv4.addr_bytes("10.0.2.3")
    gw.handle_frame(other)
    gw.handle_frame(req[:30])
    assert len(out) == 1 and gw.stats["malformed"] == 1


NETS = [Network("10.0.2.2/24"), Network("172.18.0.1/16")]


@pytest.mark.parametrize("dst,flag,expected", [
    ("10.0.2.2", True, (HOST, "127.0.0.1")),
    ("172.18.0.1", True, (HOST, "127.0.0.1")),
    ("10.0.2.2", False, REFUSE),
    ("127.0.0.1", True, REFUSE),            # never, flag or not
    ("127.1.2.3", True, REFUSE),
    ("10.0.2.7", True, REFUSE),             # another container's address
    ("172.18.5.5", True, REFUSE),
    ("0.0.0.0", True, DROP),
    ("224.0.0.251", True, DROP),
    ("255.255.255.255", True, DROP),
    ("192.0.2.1", False, (HOST, "192.0.2.1")),   # the policy only: never dialled in a test
])
def test_route_table(dst, flag, expected):
    got = route(ipv4.addr_bytes(dst), NETS, flag)
    assert (got if isinstance(expected, tuple) else got[0]) == expected


# --- the gateway on bytes -----------------------------------------------------------------------

@pytest.fixture(params=[None, False], ids=["peek_off", "peek_fallback"])
def peek_mode(request):
    """Run a data test with SO_PEEK_OFF (when the kernel has it) and with the fallback that
    kernels before 6.9 get (the already-sent prefix peeked into a scratch buffer)."""
    if request.param is None and not tcp.peek_offset_supported():
        pytest.skip("this kernel has no SO_PEEK_OFF for TCP")
    return request.param


def _gateway(allow=True, **kw):
    out = []
    gw = Gateway(sink=lambda v: out.append(bytes(v)), networks=["10.0.2.2/24"],
                 allow_host_loopback=allow, logger=lambda m: None, **kw)
    return out, gw


def _frame(proto, l4, dst=GW, src=CT):
    return ethernet.ethernet_frame(DEFAULT_MAC, CT_MAC, ethernet.ETH_P_IP,
                                   ipv4.ipv4_packet(src, dst, proto, l4))


def _parse_out(frame):
    """An output frame as the container's kernel would check it: every checksum verified."""
    dst, src, etype = ethernet.parse_ethernet(frame)
    assert (dst, src, etype) == (CT_MAC, DEFAULT_MAC, ethernet.ETH_P_IP)
    ip = ipv4.parse_ipv4(frame[14:])
    if ip.proto == ipv4.PROTO_TCP:
        return ip, tcpwire.parse_tcp(ip.payload, ip.src, ip.dst, verify=True)
    if ip.proto == ipv4.PROTO_UDP:
        return ip, udp.parse_udp(ip.payload, ip.src, ip.dst, verify=True)
    return ip, ipv4.parse_icmp(ip.payload)


class Container:
    """The container's side of one TCP connection, as frames."""

    def __init__(self, gw, out, port, sport=40000, isn=1000, dst=GW):
        self.gw, self.out, self.port, self.sport, self.dst = gw, out, port, sport, dst
        self.seq = isn
        self.ack = 0

    def send(self, flags, data=b"", seq=None, ack=None, window=1000, options=b""):
        seg = tcpwire.tcp_segment(CT, self.dst, self.sport, self.port,
                                  self.seq if seq is None else seq,
                                  self.ack if ack is None else ack, flags, window, data, options)
        self.gw.handle_frame(_frame(ipv4.PROTO_TCP, seg, dst=self.dst))
        self.gw.flush()
        if seq is None:
            self.seq = (self.seq + len(data) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    def expect(self, pred=lambda s: True, timeout=5.0):
        """Run the loop until a segment matching pred comes out; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.out:
                ip, seg = _parse_out(self.out.pop(0))
                if isinstance(seg, tcpwire.Segment) and pred(seg):
                    return seg
            self.gw.step(0.05)
        raise AssertionError("no such segment from the gateway")

    def handshake(self, window=1000, wscale=None):
        opts = tcpwire.syn_options(1460, wscale) if wscale is not None else \
            tcpwire.syn_options(1460, 0)[:4]
        self.send(SYN, options=opts, window=window)
        synack = self.expect(lambda s: s.flags & SYN)
        assert synack.flags == SYN | ACK and synack.ack == 1001
        self.ack = (synack.seq + 1) & 0xFFFFFFFF
        self.send(ACK, window=window)
        return synack


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(5)
    yield srv
    srv.close()


def test_handshake_only_after_the_host_accepts():
    # A listener whose accept queue is full drops SYNs: our host connect() stays pending,
    # and so must the container's handshake.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    first = socket.create_connection(listener.getsockname())
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.send(SYN, options=tcpwire.syn_options(1460, 7))
    with pytest.raises(AssertionError):
        c.expect(timeout=0.5)
    assert gw.snapshot()["tcp"] == {tcp.CONNECTING: 1}
    listener.accept()[0].close()            # room again: the kernel's SYN retry gets through
    first.close()
    synack = c.expect(lambda s: s.flags & SYN, timeout=10)
    c.ack = (synack.seq + 1) & 0xFFFFFFFF
    c.send(ACK)
    assert synack.mss == 65520 - 40 and synack.wscale == tcp.OUR_WSCALE
    conn, peer = listener.accept()
    assert peer[0] == "127.0.0.1"          # the host sees the daemon's own address
    assert gw.snapshot()["tcp"] == {tcp.ESTABLISHED: 1}
    conn.close()
    listener.close()
    gw.close()


def test_drop_address_resets_that_containers_flows_only(listener):
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    gw.drop_address("10.0.2.101")           # another container: nothing of ours goes
    assert gw.snapshot()["tcp"] == {tcp.ESTABLISHED: 1}
    gw.drop_address("10.0.2.100")
    assert gw.snapshot()["tcp"] == {}
    conn.settimeout(5)
    with pytest.raises(ConnectionResetError):               # the host side was reset too
        conn.recv(10)
    conn.close()
    gw.close()


def test_drop_address_of_an_address_without_flows_never_waits_for_the_loop(listener):
    # The loop's thread is elsewhere and busy (here: never serving calls). An address with no
    # flow is answered at once; one with a flow must wait for the loop, which resets it there.
    import threading
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    stuck = threading.Event()
    gw._thread = threading.Thread(target=stuck.wait)        # "the loop", not serving
    done = []
    t = threading.Thread(target=lambda: done.append(gw.drop_address("10.0.2.7")), daemon=True)
    t.start()
    t.join(5)
    assert done == [None]
    t = threading.Thread(target=lambda: done.append(gw.drop_address("10.0.2.100")), daemon=True)
    t.start()
    t.join(0.3)
    assert t.is_alive() and len(done) == 1                   # queued for the loop
    gw._thread = None
    while gw._calls:                                         # the loop gets to it
        gw._calls.popleft()()
    t.join(5)
    assert gw.snapshot()["tcp"] == {}
    listener.accept()[0].close()
    gw.close()


def test_data_both_ways_with_window_updates(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=4000)                # no window scaling: 4000 bytes at a time
    conn, _ = listener.accept()
    c.send(ACK | PSH, b"hello host", window=4000)
    ack = c.expect(lambda s: s.ack == c.seq)
    assert ack.window > 0
    assert conn.recv(100) == b"hello host"
    # host -> container: 10000 bytes, but the container offers 4000
    conn.sendall(bytes(range(250)) * 40)
    got = b""
    rounds = 0
    while len(got) < 10000:
        burst = b""
        while True:                         # all that the window allows, then silence
            try:
                seg = c.expect(lambda s: s.data, timeout=0.3)
            except AssertionError:
                break
            want = (c.ack + len(got) + len(burst)) & 0xFFFFFFFF
            if seg.seq != want:             # a retransmission timer fired while we waited
                assert tcpwire.seq_diff(seg.seq, want) < 0
                continue
            assert len(seg.data) <= 1460     # the container's MSS
            burst += bytes(seg.data)
        assert 0 < len(burst) <= 4000
        got += burst
        rounds += 1
        c.send(ACK, ack=(c.ack + len(got)) & 0xFFFFFFFF, window=4000)
    assert got == bytes(range(250)) * 40 and rounds >= 3
    conn.close()
    gw.close()


def test_retransmission_after_a_dropped_segment(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=65535)
    conn, _ = listener.accept()
    conn.sendall(b"A" * 3000)
    first = c.expect(lambda s: s.data)      # "lost": the container never acknowledges it
    c.expect(lambda s: s.data)
    last = c.expect(lambda s: s.data)
    assert len(first.data) + 1460 + len(last.data) == 3000
    again = c.expect(lambda s: s.data)      # after the retransmission timeout
    assert (again.seq, bytes(again.data)) == (first.seq, bytes(first.data))
    assert gw.stats["tcp_retransmit"] >= 1
    # Three duplicate ACKs make a fast retransmit without waiting for the timer.
    c.send(ACK, ack=last.seq + len(last.data), window=65535)
    out.clear()
    conn.sendall(b"B" * 1000)
    lost = c.expect(lambda s: s.data)
    for _ in range(3):
        c.send(ACK, ack=lost.seq, window=65535)
    fast = c.expect(lambda s: s.data, timeout=0.15)
    assert (fast.seq, bytes(fast.data)) == (lost.seq, b"B" * 1000)
    assert gw.stats["tcp_fast_retransmit"] == 1
    conn.close()
    gw.close()


def test_out_of_order_segment_is_dropped_with_a_duplicate_ack(listener):
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    c.send(ACK | PSH, b"later", seq=c.seq + 100)
    dup = c.expect()
    assert dup.ack == c.seq and not dup.data
    conn.settimeout(0.3)
    with pytest.raises(socket.timeout):
        conn.recv(10)
    # An old retransmission overlapping new data: only the new part goes to the host.
    c.send(ACK | PSH, b"abc")
    c.send(ACK | PSH, b"abcdef", seq=c.seq - 3)
    conn.settimeout(5)
    time.sleep(0.05)
    assert conn.recv(100) == b"abcdef"
    assert gw.stats["tcp_out_of_order"] == 1
    conn.close()
    gw.close()


def test_reordering_within_one_batch_is_absorbed(listener):
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=65535)
    conn, _ = listener.accept()
    base = c.seq
    second = tcpwire.tcp_segment(CT, GW, c.sport, c.port, base + 5, c.ack, ACK, 1000, b"world")
    first = tcpwire.tcp_segment(CT, GW, c.sport, c.port, base, c.ack, ACK, 1000, b"hello")
    gw.handle_frame(_frame(ipv4.PROTO_TCP, second))     # one batch: the later one first
    gw.handle_frame(_frame(ipv4.PROTO_TCP, first))
    gw.flush()
    c.seq = base + 10
    ack = c.expect()
    assert ack.ack == base + 10 and gw.stats["tcp_reordered"] == 1
    assert gw.stats["tcp_out_of_order"] == 0
    time.sleep(0.05)
    assert conn.recv(100) == b"helloworld"
    conn.close()
    gw.close()


def test_fin_from_container_is_a_half_close(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    c.send(ACK | FIN, b"request")
    assert c.expect(lambda s: s.ack == c.seq)
    assert conn.recv(100) == b"request" and conn.recv(100) == b""   # EOF, writing still open
    conn.sendall(b"response")
    seg = c.expect(lambda s: s.data)
    assert bytes(seg.data) == b"response"
    conn.close()
    fin = c.expect(lambda s: s.flags & FIN)
    assert fin.seq == seg.seq + len(b"response")
    c.send(ACK, ack=fin.seq + 1)
    assert gw.snapshot()["tcp"] == {}       # the container closed first: no TIME_WAIT here
    gw.close()


def test_fin_from_host_then_container_leaves_time_wait(listener):
    out, gw = _gateway(tcp_time_wait=0.3)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    conn.shutdown(socket.SHUT_WR)
    fin = c.expect(lambda s: s.flags & FIN)
    c.ack = fin.seq + 1
    c.send(ACK)
    c.send(ACK | PSH, b"still talking")     # the container may still send: half-close
    assert conn.recv(100) == b"still talking"
    c.send(ACK | FIN)
    assert c.expect(lambda s: s.ack == c.seq)
    assert conn.recv(100) == b""
    assert gw.snapshot()["tcp"] == {tcp.TIME_WAIT: 1}
    c.send(ACK | FIN, seq=c.seq - 1)        # a retransmitted FIN is acknowledged again
    assert c.expect(lambda s: s.ack == c.seq)
    deadline = time.monotonic() + 3
    while gw.tcp and time.monotonic() < deadline:
        gw.step(0.1)
    assert gw.snapshot()["tcp"] == {}
    gw.close()


def test_rst_from_container_resets_the_host(listener):
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    c.send(RST | ACK)
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    assert gw.snapshot()["tcp"] == {}
    gw.close()


def test_rst_from_host_resets_the_container(listener):
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    rst = c.expect(lambda s: s.flags & RST)
    assert rst.seq == (c.ack) & 0xFFFFFFFF
    assert gw.snapshot()["tcp"] == {}
    gw.close()


def test_data_before_a_host_reset_reaches_the_container_first(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=65535)
    conn, _ = listener.accept()
    conn.sendall(b"last words")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    data = c.expect(lambda s: s.data or s.flags & RST)
    assert bytes(data.data) == b"last words"
    rst = c.expect(lambda s: s.flags & RST)
    assert rst.seq == data.seq + len(b"last words")
    assert gw.snapshot()["tcp"] == {}
    gw.close()


def test_refused_connect_is_a_reset(listener):
    port = listener.getsockname()[1]
    listener.close()                        # nobody listens there now
    out, gw = _gateway()
    c = Container(gw, out, port)
    c.send(SYN, options=tcpwire.syn_options(1460, 7))
    rst = c.expect()
    assert rst.flags == RST | ACK and rst.ack == 1001
    assert gw.stats["tcp_connect_failed"] == 1 and gw.snapshot()["tcp"] == {}
    gw.close()


def test_host_loopback_refused_without_the_flag(listener):
    out, gw = _gateway(allow=False)
    c = Container(gw, out, listener.getsockname()[1])
    c.send(SYN)
    rst = c.expect()
    assert rst.flags == RST | ACK
    listener.settimeout(0.2)
    with pytest.raises(socket.timeout):
        listener.accept()
    # Any loopback address written by the container is refused too, with or without the flag.
    out2, gw2 = _gateway(allow=True)
    c2 = Container(gw2, out2, listener.getsockname()[1], dst=ipv4.addr_bytes("127.0.0.1"))
    c2.send(SYN)
    # The frame cannot even leave a real container (127/8 is martian there), but if it did:
    assert c2.expect().flags & RST
    with pytest.raises(socket.timeout):
        listener.accept()
    gw.close()
    gw2.close()


def test_segment_of_an_unknown_flow_gets_a_reset():
    out, gw = _gateway()
    c = Container(gw, out, 9)
    c.send(ACK | PSH, b"x", ack=777)
    rst = c.expect()
    assert rst.flags == RST and rst.seq == 777
    gw.close()


def test_udp_round_trip_and_refusal():
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5)
    port = echo.getsockname()[1]
    out, gw = _gateway()
    gw.handle_frame(_frame(ipv4.PROTO_UDP, udp.udp_datagram(CT, GW, 5353, port, b"ping?")))
    data, peer = echo.recvfrom(100)
    assert data == b"ping?" and peer[0] == "127.0.0.1"
    echo.sendto(b"pong!", peer)
    deadline = time.monotonic() + 5
    while not out and time.monotonic() < deadline:
        gw.step(0.05)
    ip, (sport, dport, payload) = _parse_out(out.pop())
    assert (ip.src, ip.dst, sport, dport, bytes(payload)) == (GW, CT, port, 5353, b"pong!")
    gw.close()
    # Without the flag: ICMP port unreachable quoting our datagram, nothing reaches the host.
    out, gw = _gateway(allow=False)
    dgram = udp.udp_datagram(CT, GW, 5353, port, b"ping?")
    gw.handle_frame(_frame(ipv4.PROTO_UDP, dgram))
    ip, (itype, code, _, quote) = _parse_out(out.pop())
    assert (itype, code) == (ipv4.ICMP_DEST_UNREACH, ipv4.UNREACH_PORT)
    assert bytes(quote)[20:28] == dgram[:8]
    echo.settimeout(0.2)
    with pytest.raises(socket.timeout):
        echo.recvfrom(100)
    echo.close()
    gw.close()


def test_udp_flows_expire_when_idle():
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    out, gw = _gateway(udp_timeout=0.2)
    gw.handle_frame(_frame(ipv4.PROTO_UDP, udp.udp_datagram(CT, GW, 5353, echo.getsockname()[1],
                                                            b"x")))
    assert len(gw.udp) == 1
    deadline = time.monotonic() + 3
    while gw.udp and time.monotonic() < deadline:
        gw.step(0.1)
    assert not gw.udp and gw.stats["idle_flows_closed"] == 1
    echo.close()
    gw.close()


def test_echo_to_the_gateway_is_answered():
    out, gw = _gateway()
    gw.handle_frame(_frame(ipv4.PROTO_ICMP, ipv4.icmp_message(ipv4.ICMP_ECHO_REQUEST, 0,
                                                              b"\x12\x34\x00\x01", b"data")))
    ip, (itype, code, rest, data) = _parse_out(out.pop())
    assert (ip.src, itype, code, rest, bytes(data)) == (GW, 0, 0, b"\x12\x34\x00\x01", b"data")
    gw.close()


def test_echo_elsewhere_without_ping_sockets_is_an_honest_error(monkeypatch):
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        lo, hi = map(int, f.read().split())
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.close()
        pytest.skip(f"ping sockets are allowed here (ping_group_range {lo} {hi})")
    except OSError:
        pass
    logged = []
    gw = Gateway(sink=lambda v: None, networks=["10.0.2.2/24"], logger=logged.append)
    # A documentation address: route() says HOST, the ping socket cannot be opened, so nothing
    # is sent anywhere.
    for _ in range(3):
        gw.handle_frame(_frame(ipv4.PROTO_ICMP, ipv4.icmp_message(
            ipv4.ICMP_ECHO_REQUEST, 0, b"\x00\x01\x00\x01", b""), dst=ipv4.addr_bytes("192.0.2.1")))
    assert len(logged) == 1 and "ping_group_range" in logged[0]
    assert gw.stats["icmp_unavailable"] == 3
    gw.close()


MALFORMED = [
    b"",
    b"\x01" * 13,                                           # shorter than Ethernet
    ethernet.ethernet_frame(DEFAULT_MAC, CT_MAC, ethernet.ETH_P_IP, b"\x45\x00"),
    _frame(ipv4.PROTO_TCP, b"\x00" * 10),                   # truncated TCP header
    _frame(ipv4.PROTO_TCP, tcpwire.tcp_segment(CT, GW, 1, 2, 0, 0, SYN, 0)[:12] + b"\xf0"
           + b"\0" * 7),                                    # data offset beyond the segment
    _frame(ipv4.PROTO_TCP, tcpwire.tcp_segment(CT, GW, 1, 2, 0, 0, SYN, 0, options=b"\x02\x09\x00\x00")),
    _frame(ipv4.PROTO_TCP, tcpwire.tcp_segment(CT, GW, 1, 2, 0, 0, SYN, 0)[:16] + b"\xde\xad"
           + b"\0\0"),                                      # bad checksum
    _frame(ipv4.PROTO_UDP, b"\x00\x01\x00\x02\x00\x03"),   # truncated UDP
    _frame(ipv4.PROTO_UDP, b"\x00\x01\x00\x02\x00\xff\x00\x00"),   # UDP length > packet
    _frame(ipv4.PROTO_ICMP, b"\x08\x00"),
    _frame(ipv4.PROTO_ICMP, b"\x08\x00\x00\x00\x00\x00\x00\x00"),  # bad ICMP checksum
    ethernet.ethernet_frame(DEFAULT_MAC, CT_MAC, ethernet.ETH_P_IP,
                            _patch(_ip(payload=b"\0" * 20), 6, "!H", ipv4.IP_MF)),
    ethernet.ethernet_frame(DEFAULT_MAC, CT_MAC, ethernet.ETH_P_ARP, b"\x00\x01" * 5),
]


@pytest.mark.parametrize("frame", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_frames_are_dropped_not_raised(frame):
    out, gw = _gateway()
    gw.handle_frame(frame)
    gw.flush()
    assert out == []
    assert gw.stats["malformed"] + gw.stats["fragments_dropped"] == 1
    gw.close()


def test_frames_not_for_us_or_from_elsewhere_are_ignored():
    out, gw = _gateway()
    syn = tcpwire.tcp_segment(ipv4.addr_bytes("192.168.9.9"), GW, 1, 2, 0, 0, SYN, 0)
    gw.handle_frame(_frame(ipv4.PROTO_TCP, syn, src=ipv4.addr_bytes("192.168.9.9")))
    other_mac = ethernet.ethernet_frame(b"\x02" * 6, CT_MAC, ethernet.ETH_P_IP,
                                        _ip(payload=tcpwire.tcp_segment(CT, GW, 1, 2, 0, 0, SYN, 0)))
    gw.handle_frame(other_mac)
    gw.handle_frame(ethernet.ethernet_frame(DEFAULT_MAC, CT_MAC, ethernet.ETH_P_IPV6, b"\0" * 40))
    assert out == [] and gw.stats["foreign_source"] == 1 and gw.stats["not_for_us"] == 1
    assert gw.stats["ethertype_ignored"] == 1
    gw.close()


def test_connect_errors_map_to_what_a_router_says():
    # The mapping itself: unreachable/timeout -> ICMP codes, refused (absent) -> RST.
    assert tcp._ERRNO_TO_ICMP[errno.ENETUNREACH] == ipv4.UNREACH_NET
    assert tcp._ERRNO_TO_ICMP[errno.EHOSTUNREACH] == ipv4.UNREACH_HOST
    assert tcp._ERRNO_TO_ICMP[errno.ETIMEDOUT] == ipv4.UNREACH_HOST
    assert errno.ECONNREFUSED not in tcp._ERRNO_TO_ICMP


def test_idle_flow_is_probed_then_reset(listener):
    out, gw = _gateway(tcp_idle_timeout=0.3)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()
    probe = c.expect(lambda s: not s.data, timeout=5)
    assert probe.flags == ACK and probe.seq == (c.ack - 1) & 0xFFFFFFFF   # a keepalive
    c.send(ACK)                                 # answered: the flow lives on
    assert gw.snapshot()["tcp"] == {tcp.ESTABLISHED: 1}
    rst = c.expect(lambda s: s.flags & RST, timeout=30)   # silence: probes, then a reset
    assert rst.flags & RST and gw.stats["tcp_idle_reset"] == 1
    conn.settimeout(5)
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    gw.close()


def test_zero_window_is_probed_and_reopened(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=1000)
    conn, _ = listener.accept()
    c.send(ACK, window=0)                       # the container's buffer is full
    conn.sendall(b"q" * 500)
    probe = c.expect(timeout=5)                 # no data, but a window probe
    assert not probe.data and probe.seq == (c.ack - 1) & 0xFFFFFFFF
    c.send(ACK, window=1000)                    # it read something: the window opens
    seg = c.expect(lambda s: s.data)
    assert bytes(seg.data) == b"q" * 500 and seg.seq == c.ack
    conn.close()
    gw.close()


def test_window_follows_the_host_socket_and_reopens(listener):
    """The window we advertise is the host socket's free send space: a host that does not read
    closes it; when it reads, a window update follows without the container asking."""
    out, gw = _gateway()
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=65535, wscale=7)
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    chunk = b"w" * 60000
    windows = []
    for _ in range(1000):                       # bounded: ~16 MiB at most
        c.send(ACK, chunk, window=65535)
        ack = c.expect(lambda s: not s.data)
        windows.append(ack.window << tcp.OUR_WSCALE)
        assert ack.ack == c.seq                  # every byte offered was taken: never dropped
        if windows[-1] < len(chunk):
            break
    assert windows[-1] < len(chunk) < windows[0]
    total = 0
    conn.settimeout(5)
    while total < 1 << 20:                      # the host reads a MiB
        total += len(conn.recv(1 << 20))
    update = c.expect(lambda s: not s.data and (s.window << tcp.OUR_WSCALE) >= len(chunk),
                      timeout=5)
    assert update.ack == c.seq
    conn.close()
    gw.close()


def test_ack_for_the_first_transmission_after_a_rewind(listener, peek_mode):
    out, gw = _gateway(peek_offset=peek_mode)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake(window=65535)
    conn, _ = listener.accept()
    conn.sendall(b"R" * 2920)
    first = c.expect(lambda s: s.data)
    second = c.expect(lambda s: s.data)
    c.send(ACK, ack=first.seq, window=1460)     # a window update: room for one segment only
    again = c.expect(lambda s: s.data)          # the timer fired: a rewind, from `first`
    assert again.seq == first.seq
    with pytest.raises(AssertionError):         # and `second` was not resent (window)
        c.expect(lambda s: s.data, timeout=0.1)
    # The container's (late) ACK covers both original segments: beyond what we have resent,
    # still accepted, and `second` is not sent a third time.
    c.send(ACK, ack=second.seq + len(second.data), window=65535)
    conn.sendall(b"S" * 100)
    nxt = c.expect(lambda s: s.data)
    assert nxt.seq == second.seq + len(second.data) and bytes(nxt.data) == b"S" * 100
    conn.close()
    gw.close()


def test_fuzzed_frames_never_raise(monkeypatch, listener):
    """5000 mutations (bytes flipped, truncated, extended) of valid frames of every kind: the
    gateway counts and drops what is broken and never raises. A guard on the routing policy
    makes sure a mutated destination can never make the test dial anything but 127.0.0.1."""
    import random
    from minidock.tcpip import gateway as gwmod
    real_route = gwmod.route

    def guarded(dst, *args):
        if dst != GW:
            return gwmod.DROP, "fuzzing: only the gateway address is dialled"
        return real_route(dst, *args)
    monkeypatch.setattr(gwmod, "route", guarded)
    port = listener.getsockname()[1]
    seeds = [
        _frame(ipv4.PROTO_TCP, tcpwire.tcp_segment(CT, GW, 1000, port, 5, 0, SYN, 1000,
                                                   options=tcpwire.syn_options(1460, 7))),
        _frame(ipv4.PROTO_TCP, tcpwire.tcp_segment(CT, GW, 1000, port, 6, 1, ACK, 1000, b"data")),
        _frame(ipv4.PROTO_UDP, udp.udp_datagram(CT, GW, 1000, port, b"x" * 30)),
        _frame(ipv4.PROTO_ICMP, ipv4.icmp_message(8, 0, b"\0\1\0\1", b"abc")),
        ethernet.ethernet_frame(ethernet.BROADCAST, CT_MAC, ethernet.ETH_P_ARP,
                                ethernet.arp_packet(1, CT_MAC, CT, b"\0" * 6, GW)),
    ]
    rng = random.Random(11)
    out, gw = _gateway()
    for i in range(5000):
        f = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and f:
                f[rng.randrange(len(f))] = rng.randrange(256)
            elif op < 0.75:
                f = f[:rng.randrange(len(f) + 1)]
            else:
                f += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        gw.handle_frame(bytes(f), trusted=rng.random() < 0.5)
        if i % 100 == 0:
            gw.step(0)
    assert gw.stats["frames_in"] == 5000 and gw.stats["malformed"] > 1000
    gw.close()


def test_a_bug_in_one_flow_resets_it_and_the_loop_goes_on(listener, monkeypatch):
    logged = []
    out = []
    gw = Gateway(sink=lambda v: out.append(bytes(v)), networks=["10.0.2.2/24"],
                 allow_host_loopback=True, logger=logged.append)
    c = Container(gw, out, listener.getsockname()[1])
    c.handshake()
    conn, _ = listener.accept()

    def broken(self, ev):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(tcp.TcpFlow, "on_host_event", broken)
    conn.sendall(b"x")
    rst = c.expect(lambda s: s.flags & RST)
    assert rst and gw.stats["internal_errors"] == 1 and "ZeroDivisionError" in logged[0]
    monkeypatch.undo()
    c2 = Container(gw, out, listener.getsockname()[1], sport=40001)
    c2.handshake()                              # the loop still serves new flows
    listener.accept()[0].close()
    gw.close()
