"""TCP segments on the wire (RFC 9293): the header, its options, sequence-number arithmetic.

    0  source port   2  destination port   4  sequence number   8  acknowledgment number
    12 data offset (header length in 32-bit words, high nibble) | flags
       FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80
    14 window   16 checksum   18 urgent pointer   20 options, up to 40 bytes

Options are (kind, length, value) triples, except kind 0 (end) and 1 (no-op) which are one byte.
Only two matter to this stack, both allowed on a SYN only: MSS (kind 2, length 4: the largest
segment the sender wants to receive) and window scale (kind 3, length 3: the window field is
shifted left by this count, RFC 7323, so windows beyond 64 KiB can be advertised). Everything
else (SACK-permitted, timestamps) is parsed past and not offered back, so the container's kernel
does not use them with us.

Sequence numbers wrap at 2**32: "a before b" means the signed 32-bit difference is negative.
"""

import struct

from .ethernet import Malformed
from .ipv4 import PROTO_TCP, checksum, pseudo_sum

TCP_HLEN = 20
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE = 0, 1, 2, 3
MAX_WSCALE = 14

_TCP = struct.Struct("!HHIIBBHHH")
MASK = 0xFFFFFFFF


def seq_diff(a, b):
    """a - b as a signed 32-bit quantity (positive: a is after b)."""
    return ((a - b + 0x80000000) & MASK) - 0x80000000


class Segment:
    __slots__ = ("sport", "dport", "seq", "ack", "flags", "window", "mss", "wscale", "data")

    def __repr__(self):
        names = "".join(n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"),
                                         (ACK, ".")) if self.flags & bit)
        return (f"Segment({self.sport}->{self.dport} [{names}] seq {self.seq} ack {self.ack} "
                f"win {self.window} len {len(self.data)})")


def parse_options(opts):
    """(mss, wscale) found in an option block; raises Malformed on a broken length."""
    mss = wscale = None
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_END:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            raise Malformed(f"TCP option {kind} with a broken length at offset {i}")
        length = opts[i + 1]
        if kind == OPT_MSS:
            if length != 4:
                raise Malformed(f"TCP MSS option of length {length}")
            mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise Malformed(f"TCP window scale option of length {length}")
            wscale = min(opts[i + 2], MAX_WSCALE)   # RFC 7323: values above 14 are 14
        i += length
    return mss, wscale


def parse_tcp(payload, src=None, dst=None, verify=False):
    """Parse a TCP segment (memoryview of the IP payload). `verify` checks the checksum, which
    needs the addresses; the loop skips it for frames the kernel marked as locally produced."""
    n = len(payload)
    if n < TCP_HLEN:
        raise Malformed(f"TCP segment of {n} bytes")
    sport, dport, seq, ack, off, flags, window, _csum, _urg = _TCP.unpack_from(payload, 0)
    hlen = (off >> 4) * 4
    if hlen < TCP_HLEN or hlen > n:
        raise Malformed(f"TCP data offset {hlen} in {n} bytes")
    if verify and checksum(payload, pseudo_sum(src, dst, PROTO_TCP, n)):
        raise Malformed("bad TCP checksum")
    seg = Segment()
    seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window = sport, dport, seq, ack, flags, window
    if hlen > TCP_HLEN:
        seg.mss, seg.wscale = parse_options(payload[TCP_HLEN:hlen])
    else:
        seg.mss = seg.wscale = None
    mv = payload if isinstance(payload, memoryview) else memoryview(payload)
    seg.data = mv[hlen:]
    return seg


def syn_options(mss, wscale):
    """MSS, then NOP + window scale: 8 bytes, a multiple of 4 as the data offset requires."""
    return struct.pack("!BBH", OPT_MSS, 4, mss) + struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, wscale)


def pack_tcp(buf, offset, sport, dport, seq, ack, flags, window, options=b""):
    """Write the header (checksum 0) and options into `buf`; returns the header length."""
    hlen = TCP_HLEN + len(options)
    _TCP.pack_into(buf, offset, sport, dport, seq & MASK, ack & MASK, (hlen // 4) << 4, flags,
                   window, 0, 0)
    if options:
        buf[offset + TCP_HLEN:offset + hlen] = options
    return hlen


def tcp_segment(src, dst, sport, dport, seq, ack, flags, window, data=b"", options=b""):
    """A whole segment with its checksum (for tests and control segments)."""
    buf = bytearray(TCP_HLEN + len(options))
    pack_tcp(buf, 0, sport, dport, seq, ack, flags, window, options)
    buf += data
    struct.pack_into("!H", buf, 16, checksum(buf, pseudo_sum(src, dst, PROTO_TCP, len(buf))))
    return bytes(buf)
