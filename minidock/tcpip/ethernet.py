"""Ethernet II frames and ARP: how the gateway is found on the wire.

An Ethernet II frame is 14 bytes of header in front of the payload:

    0   destination MAC   6 bytes   ff:ff:ff:ff:ff:ff is broadcast
    6   source MAC        6 bytes
    12  EtherType         2 bytes   0x0800 IPv4, 0x0806 ARP, 0x86dd IPv6

(no preamble, no FCS: the kernel strips and adds those; an AF_PACKET socket of type SOCK_RAW
sees exactly these 14 bytes first).

A container sends a packet to a destination outside its subnet to its *default gateway*'s MAC.
It learns that MAC with ARP (RFC 826): a broadcast "who has 10.0.2.2? tell 10.0.2.100" and a
unicast answer "10.0.2.2 is at 02:..". ARP for IPv4 over Ethernet is 28 bytes:

    0   htype 1 (Ethernet)   2   ptype 0x0800   4   hlen 6   5   plen 4   6   op 1=request 2=reply
    8   sender MAC   14 sender IP   18 target MAC   24 target IP

The user-mode stack answers requests for its gateway addresses with its own (invented,
locally administered) MAC, so every packet a container routes outside lands in the AF_PACKET
socket addressed to us. You can watch it from inside the container with `ip neigh`.
"""

import struct

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


class Malformed(ValueError):
    """A frame or packet that no correct sender produces: it is dropped and counted."""


def parse_ethernet(frame):
    """(dst MAC, src MAC, EtherType) of a frame; raises Malformed when shorter than a header."""
    if len(frame) < ETH_HLEN:
        raise Malformed(f"frame of {len(frame)} bytes is shorter than an Ethernet header")
    return _ETH.unpack_from(frame, 0)


def pack_ethernet(buf, offset, dst, src, ethertype):
    """Write the 14-byte header into `buf` at `offset`."""
    _ETH.pack_into(buf, offset, dst, src, ethertype)


def ethernet_frame(dst, src, ethertype, payload):
    return _ETH.pack(dst, src, ethertype) + bytes(payload)


def parse_arp(payload):
    """(op, sender MAC, sender IP, target MAC, target IP) of an IPv4-over-Ethernet ARP packet."""
    if len(payload) < ARP_LEN:
        raise Malformed(f"ARP packet of {len(payload)} bytes (needs {ARP_LEN})")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(payload, 0)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        raise Malformed(f"ARP for htype {htype} ptype {ptype:#x} is not IPv4 over Ethernet")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise Malformed(f"ARP op {op}")
    return op, sha, spa, tha, tpa


def arp_packet(op, sha, spa, tha, tpa):
    return _ARP.pack(1, ETH_P_IP, 6, 4, op, sha, spa, tha, tpa)


def arp_reply_frame(request, my_mac):
    """The frame answering an ARP request (already parsed) for one of our addresses."""
    _, sha, spa, _, tpa = request
    return ethernet_frame(sha, my_mac, ETH_P_ARP, arp_packet(ARP_REPLY, my_mac, tpa, sha, spa))


def mac_str(mac):
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(text):
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)
