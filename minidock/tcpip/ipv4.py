"""IPv4 headers, the Internet checksum, and the ICMP messages the gateway sends or relays.

The IPv4 header (RFC 791) is 20 bytes plus options (IHL counts 32-bit words, 5..15):

    0  version 4 | IHL      1  DSCP/ECN     2  total length (header + payload)
    4  identification       6  flags (DF 0x4000, MF 0x2000) | fragment offset (8-byte units)
    8  TTL   9 protocol (1 ICMP, 6 TCP, 17 UDP)   10 header checksum
    12 source address       16 destination address

The Internet checksum (RFC 1071) is the ones' complement of the ones' complement sum of the
16-bit big-endian words. Because 2**16 == 1 (mod 0xffff), that sum is simply the whole buffer
read as one big integer, modulo 0xffff -- which CPython computes in C, so checksumming a 64 KiB
segment costs tens of microseconds, not a Python loop per word. A header is valid when the sum
over it (checksum field included) is 0xffff.

TCP and UDP checksums also cover a 12-byte *pseudo-header*: source, destination, a zero byte,
the protocol and the L4 length. With checksum offload (virtio_net_hdr's NEEDS_CSUM, see
packet.py) the field carries only the folded pseudo-header sum and the kernel finishes the job.

Fragments are refused: the stack is one end of a veth whose MTU both sides share, so no correct
container sends one; a fragment is counted, logged once, and dropped (reassembly buffers would be
the unbounded memory this stack promises not to hold).

ICMP (RFC 792) is 8 bytes of header -- type, code, checksum, then 4 bytes that are the identifier
and sequence number of an echo, or unused in an error -- followed by the echo data, or for an error
the IP header and first 8 bytes of the packet that caused it, which is how the sender's kernel
matches the error to a socket (a connect() then fails with EHOSTUNREACH, ENETUNREACH...).
"""

import struct

from .ethernet import Malformed

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

IP_HLEN = 20
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
DEFAULT_TTL = 64

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
# codes of destination unreachable
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PORT = 3
UNREACH_ADMIN = 13      # "communication administratively prohibited"

_IP = struct.Struct("!BBHHHBBH4s4s")
_PSEUDO = struct.Struct("!4s4sBBH")
_ICMP = struct.Struct("!BBH")


def ones_sum(data, start=0):
    """Ones' complement sum (folded to 16 bits) of `data`, added to the partial sum `start`."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF          # ones' complement "negative zero": the sum of non-zero words
    s += start
    return (s & 0xFFFF) + (s >> 16)


def checksum(data, start=0):
    """The Internet checksum of `data` (with an optional partial sum folded in)."""
    return ~ones_sum(data, start) & 0xFFFF


def pseudo_sum(src, dst, proto, length):
    """Folded sum of the TCP/UDP pseudo-header (not complemented)."""
    return ones_sum(_PSEUDO.pack(src, dst, 0, proto, length))


class IPv4:
    """A parsed IPv4 header. `payload` is a memoryview of the L4 bytes (total length honoured)."""
    __slots__ = ("src", "dst", "proto", "ttl", "ident", "hlen", "total", "payload", "header")

    def __repr__(self):
        return f"IPv4({addr_str(self.src)} -> {addr_str(self.dst)} proto {self.proto} len {self.total})"


class Fragment(Malformed):
    """An IPv4 fragment: refused, see the module docstring."""


def parse_ipv4(packet, verify=True):
    """Parse and validate an IPv4 packet (a memoryview or bytes); raises Malformed/Fragment."""
    n = len(packet)
    if n < IP_HLEN:
        raise Malformed(f"IPv4 packet of {n} bytes is shorter than a header")
    vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(packet, 0)
    if vihl >> 4 != 4:
        raise Malformed(f"IP version {vihl >> 4}")
    hlen = (vihl & 0xF) * 4
    if hlen < IP_HLEN:
        raise Malformed(f"IHL {hlen} bytes")
    if total < hlen or total > n:
        # A frame may carry Ethernet padding after the packet (total < n); never less.
        raise Malformed(f"IPv4 total length {total} with header {hlen} in {n} bytes")
    if verify and ones_sum(packet[:hlen]) != 0xFFFF:
        raise Malformed("bad IPv4 header checksum")
    if frag & (IP_MF | IP_OFFMASK):
        raise Fragment(f"IPv4 fragment (flags/offset {frag:#06x}) from {addr_str(src)}")
    ip = IPv4()
    ip.src, ip.dst, ip.proto, ip.ttl, ip.ident = src, dst, proto, ttl, ident
    ip.hlen, ip.total = hlen, total
    mv = packet if isinstance(packet, memoryview) else memoryview(packet)
    ip.header = mv[:hlen]
    ip.payload = mv[hlen:total]
    return ip


def pack_ipv4(buf, offset, src, dst, proto, payload_len, ident=0, ttl=DEFAULT_TTL):
    """Write a 20-byte header (DF set, checksum computed) into `buf` at `offset`."""
    _IP.pack_into(buf, offset, 0x45, 0, IP_HLEN + payload_len, ident, IP_DF, ttl, proto, 0,
                  src, dst)
    csum = checksum(memoryview(buf)[offset:offset + IP_HLEN])
    struct.pack_into("!H", buf, offset + 10, csum)


def ipv4_packet(src, dst, proto, payload, ident=0, ttl=DEFAULT_TTL):
    buf = bytearray(IP_HLEN)
    pack_ipv4(buf, 0, src, dst, proto, len(payload), ident, ttl)
    return bytes(buf) + bytes(payload)


# --- ICMP ------------------------------------------------------------------------------------

def parse_icmp(payload, verify=True):
    """(type, code, rest-of-header 4 bytes, data) of an ICMP message; raises Malformed."""
    if len(payload) < 8:
        raise Malformed(f"ICMP message of {len(payload)} bytes")
    if verify and checksum(payload) != 0:
        raise Malformed("bad ICMP checksum")
    itype, code, _ = _ICMP.unpack_from(payload, 0)
    return itype, code, bytes(payload[4:8]), payload[8:]


def icmp_message(itype, code, rest, data):
    body = _ICMP.pack(itype, code, 0) + bytes(rest) + bytes(data)
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def icmp_unreachable(code, offending):
    """A destination-unreachable message quoting the offending packet's header + 8 bytes."""
    vihl = offending[0]
    quote = bytes(offending[:(vihl & 0xF) * 4 + 8])
    return icmp_message(ICMP_DEST_UNREACH, code, b"\0\0\0\0", quote)


# --- addresses -------------------------------------------------------------------------------

def addr_bytes(text):
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {text!r}")
    out = bytes(int(p) for p in parts)
    return out


def addr_str(addr):
    return ".".join(str(b) for b in addr)


def parse_cidr(text):
    """'10.0.2.0/24' -> (network int, prefix length)."""
    addr, _, plen = text.partition("/")
    plen = int(plen) if plen else 32
    if not 0 <= plen <= 32:
        raise ValueError(f"bad prefix length in {text!r}")
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return int.from_bytes(addr_bytes(addr), "big") & mask, plen


def in_cidr(addr, network, plen):
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return int.from_bytes(addr, "big") & mask == network
