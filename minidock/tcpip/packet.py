"""The wire end: an AF_PACKET socket on a veth, and the frame writer that feeds it.

packet(7): `socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL))` bound with `sockaddr_ll` to one
interface index reads every frame that interface receives and sends whole Ethernet frames out
of it. Opened inside a network namespace, the socket stays tied to that namespace's interface
wherever its descriptor travels (SCM_RIGHTS): this is how a daemon living in the host's network
namespace talks Ethernet with containers whose veths it could never reach itself, without TAP
(`/dev/net/tun` is root-only on many hosts) and without root.

Options set here, each one measurable:
  PACKET_IGNORE_OUTGOING (23)  do not read back frames the namespace's own kernel sends out of
                               the interface (IPv6 router solicitations and the like).
  PACKET_VNET_HDR (15)         every frame, read or written, is preceded by a 10-byte
                               `struct virtio_net_hdr` (little-endian on x86):
                                   u8 flags   1 NEEDS_CSUM, 2 DATA_VALID
                                   u8 gso_type  0 none, 1 TCPv4, 3 UDP, 0x80 ECN
                                   u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset
                               Reading, it tells us whether the checksum is already trusted
                               (a frame produced by the container's own kernel arrives with the
                               checksum only *partially* computed -- NEEDS_CSUM -- which no
                               software can verify, so the flag is the honest answer). Writing,
                               NEEDS_CSUM + csum_start/csum_offset lets the kernel skip the
                               checksum entirely on the way into the container (CHECKSUM_PARTIAL
                               skbs are accepted by the local stack), so Python never sums the
                               payload of a 64 KiB segment. And gso_type TCPv4 + gso_size
                               let one frame carry more than the MTU: the kernel segments it.
Interfaces run with MTU 65520 (the largest a veth takes with room for headers): Python's cost
is per frame, so big frames are where its throughput comes from.

What you can observe: `ip -s link show` inside the namespace counts the frames both ways; `cat
/proc/net/packet` in the namespace lists the socket with its interface index.
"""

import socket
import struct

from .ethernet import ETH_HLEN, ETH_P_IP, pack_ethernet
from .ipv4 import IP_HLEN, PROTO_TCP, checksum, pack_ipv4, pseudo_sum
from .tcpwire import TCP_HLEN, pack_tcp

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23

VNET_HLEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_TCPV4 = 1
_VNET = struct.Struct("<BBHHHH")

MTU = 65520
MAX_FRAME = ETH_HLEN + 65535


def open_packet_socket(ifname, vnet_hdr=True):
    """Open, configure and bind the AF_PACKET socket for `ifname` (in the caller's network
    namespace). Returns (socket, vnet_hdr actually enabled)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.htons(ETH_P_ALL))
    try:
        # Options before bind: no frame may be queued without the header once we expect one.
        enabled = configure_packet_socket(sock, vnet_hdr)
        sock.bind((ifname, ETH_P_ALL))
        return sock, enabled
    except BaseException:
        sock.close()
        raise


def configure_packet_socket(sock, vnet_hdr=True):
    """Set the options of the module docstring on a packet socket; returns whether the virtio
    header is on. For a socket made and bound elsewhere (the daemon's namespace keeper makes
    plain sockets), frames queued before the header was switched on would be misread: they
    are drained and dropped here."""
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass            # kernels before 4.20: outgoing frames carry the wrong MAC and are ignored
    enabled = False
    if vnet_hdr:
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            enabled = True
        except OSError:
            enabled = False
    # Big buffers: a burst of 64 KiB frames must not be dropped by the socket while the loop
    # is busy elsewhere (drops are recovered by TCP, but cost a retransmission timeout).
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    while True:
        try:
            sock.recv(MAX_FRAME, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    return enabled


def vnet_enabled(sock):
    """Whether PACKET_VNET_HDR is on for a socket received from elsewhere."""
    try:
        return bool(sock.getsockopt(SOL_PACKET, PACKET_VNET_HDR))
    except OSError:
        return False


def vnet_checksum_trusted(frame_with_hdr):
    """From a received virtio_net_hdr: may the L4 checksum be skipped?"""
    return bool(frame_with_hdr[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))


class Link:
    """Writes frames toward the containers through one preallocated buffer.

    Layout of the buffer: [virtio_net_hdr 10][Ethernet 14][IPv4 20][L4 ...]. Data segments are
    built in place: the TCP code peeks host data straight into `payload_view()` and then calls
    `send_tcp()`, so a payload is copied once from the host socket and once into the kernel.
    `sink` is called with a memoryview of each finished frame (socket.send, or a list's append
    of bytes() in tests); it must not keep the view.
    """

    OFF_ETH = VNET_HLEN
    OFF_IP = VNET_HLEN + ETH_HLEN
    OFF_L4 = VNET_HLEN + ETH_HLEN + IP_HLEN
    OFF_TCP_DATA = OFF_L4 + TCP_HLEN

    def __init__(self, sink, mac, vnet_hdr=False, mtu=MTU):
        self.sink = sink
        self.mac = mac
        self.vnet = vnet_hdr
        self.mtu = mtu
        self.buf = bytearray(VNET_HLEN + MAX_FRAME)
        self.view = memoryview(self.buf)
        self.start = 0 if vnet_hdr else VNET_HLEN
        self.frames_out = 0
        # With the virtio header a segment may exceed the MTU: the kernel cuts it into
        # gso_size pieces (or hands the container's stack one big skb, as GRO would). So on a
        # 1500-byte network a 64 KiB peek still costs Python one frame, not 45.
        self.max_payload = (65535 - IP_HLEN - TCP_HLEN) if vnet_hdr else mtu - IP_HLEN - TCP_HLEN

    def payload_view(self):
        """Where a TCP payload goes (no options on data segments): up to `max_payload`."""
        return self.view[self.OFF_TCP_DATA:self.OFF_TCP_DATA + self.max_payload]

    def _emit(self, end):
        self.frames_out += 1
        self.sink(self.view[self.start:end])

    def send_tcp(self, dst_mac, src, dst, sport, dport, seq, ack, flags, window, payload_len=0,
                 options=b"", gso_size=0):
        """One TCP segment. With the virtio header and `gso_size` below the payload length,
        the kernel segments it (VIRTIO_NET_HDR_GSO_TCPV4) into gso_size-byte segments."""
        buf = self.buf
        if options and payload_len:
            raise ValueError("options are only sent on segments without data")
        hlen = pack_tcp(buf, self.OFF_L4, sport, dport, seq, ack, flags, window, options)
        l4len = hlen + payload_len
        pack_ipv4(buf, self.OFF_IP, src, dst, PROTO_TCP, l4len)
        pack_ethernet(buf, self.OFF_ETH, dst_mac, self.mac, ETH_P_IP)
        psum = pseudo_sum(src, dst, PROTO_TCP, l4len)
        if self.vnet:
            # Checksum offload: the field holds the pseudo-header sum, the kernel adds the rest.
            if gso_size and payload_len > gso_size:
                _VNET.pack_into(buf, 0, VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4,
                                ETH_HLEN + IP_HLEN + hlen, gso_size, ETH_HLEN + IP_HLEN, 16)
            else:
                _VNET.pack_into(buf, 0, VNET_F_NEEDS_CSUM, 0, 0, 0, ETH_HLEN + IP_HLEN, 16)
            struct.pack_into("!H", buf, self.OFF_L4 + 16, psum)
        else:
            csum = checksum(self.view[self.OFF_L4:self.OFF_L4 + l4len], psum)
            struct.pack_into("!H", buf, self.OFF_L4 + 16, csum)
        self._emit(self.OFF_L4 + l4len)

    def send_ip(self, dst_mac, src, dst, proto, l4):
        """An IPv4 packet whose L4 bytes (checksum included) are already complete."""
        buf = self.buf
        n = len(l4)
        pack_ipv4(buf, self.OFF_IP, src, dst, proto, n)
        pack_ethernet(buf, self.OFF_ETH, dst_mac, self.mac, ETH_P_IP)
        buf[self.OFF_L4:self.OFF_L4 + n] = l4
        if self.vnet:
            _VNET.pack_into(buf, 0, 0, 0, 0, 0, 0, 0)
        self._emit(self.OFF_L4 + n)

    def send_frame(self, frame):
        """A whole Ethernet frame (ARP)."""
        n = len(frame)
        self.buf[self.OFF_ETH:self.OFF_ETH + n] = frame
        if self.vnet:
            _VNET.pack_into(self.buf, 0, 0, 0, 0, 0, 0, 0)
        self._emit(self.OFF_ETH + n)
