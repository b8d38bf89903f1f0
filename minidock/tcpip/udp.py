"""UDP datagrams (RFC 768): 8 bytes of header and the payload.

    0  source port   2  destination port   4  length (header + payload)   6  checksum

The checksum covers the pseudo-header (ipv4.py), the header and the payload; 0 means "not
computed" (allowed in IPv4), so a computed 0 is sent as 0xffff.

UDP has no connection, so the gateway keeps a *flow* per container address and port: one host
socket (unconnected, bound by the kernel to an ephemeral port of the daemon's address), used for
every destination that container port talks to, and forgotten after an idle timeout. Replies
arriving on that socket are sent back to the container with the sender as source -- which is
how a DNS query, an NTP exchange or a `nc -u` conversation gets its answer.
"""

import struct

from .ethernet import Malformed
from .ipv4 import PROTO_UDP, checksum, pseudo_sum

UDP_HLEN = 8
_UDP = struct.Struct("!HHHH")


def parse_udp(payload, src, dst, verify=True):
    """(sport, dport, data memoryview) of a datagram; raises Malformed."""
    n = len(payload)
    if n < UDP_HLEN:
        raise Malformed(f"UDP datagram of {n} bytes")
    sport, dport, length, csum = _UDP.unpack_from(payload, 0)
    if length < UDP_HLEN or length > n:
        raise Malformed(f"UDP length {length} in {n} bytes")
    if verify and csum and checksum(payload[:length], pseudo_sum(src, dst, PROTO_UDP, length)):
        raise Malformed("bad UDP checksum")
    mv = payload if isinstance(payload, memoryview) else memoryview(payload)
    return sport, dport, mv[UDP_HLEN:length]


def udp_datagram(src, dst, sport, dport, data):
    """The UDP header and payload with its checksum computed."""
    length = UDP_HLEN + len(data)
    body = bytearray(_UDP.pack(sport, dport, length, 0))
    body += data
    csum = checksum(body, pseudo_sum(src, dst, PROTO_UDP, length)) or 0xFFFF
    struct.pack_into("!H", body, 6, csum)
    return bytes(body)
