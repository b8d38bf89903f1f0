"""rtnetlink messages on bytes: what netlink.py packs, and how it parses replies."""

import socket
import struct

import pytest

from minidock import netlink as nl


@pytest.mark.parametrize("kind, value, expected", [
    (3, "br0", b"\x08\x00\x03\x00br0\x00"),
    (4, 1500, b"\x08\x00\x04\x00\xdc\x05\x00\x00"),
    (3, "eth0", b"\x09\x00\x03\x00eth0\x00\x00\x00\x00"),            # padded to 4
    (1, b"\x0a\x00\x00\x01", b"\x08\x00\x01\x00\x0a\x00\x00\x01"),
    (18, [b"\x09\x00\x01\x00veth\x00\x00\x00\x00"],
     b"\x10\x00\x12\x80\x09\x00\x01\x00veth\x00\x00\x00\x00"),
])
def test_attr_bytes(kind, value, expected):
    assert nl.attr(kind, value) == expected


def test_new_bridge_message_bytes():
    msg = nl.pack_new_bridge(7, "br0")
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq, pid) == (len(msg), nl.RTM_NEWLINK, 7, 0)
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL
    assert msg[16:32] == bytes(16)                          # ifinfomsg: all zero
    assert msg[32:] == (b"\x08\x00\x03\x00br0\x00"
                        + b"\x10\x00\x12\x80" + b"\x0b\x00\x01\x00bridge\x00\x00")


def test_new_veth_nests_the_peer_with_its_netns_fd_and_mac():
    msg = nl.pack_new_veth(1, "vethA", "eth0", peer_netns_fd=9, master=4, up=True,
                           peer_mac="02:42:ac:11:00:02")
    payload = msg[16:]
    family, kind, index, flags, change = struct.unpack_from("=BxHiII", payload)
    assert flags & nl.IFF_UP and change & nl.IFF_UP
    attrs = nl.parse_attrs(payload[16:])
    assert nl.attr_str(attrs[nl.IFLA_IFNAME]) == "vethA"
    assert nl.attr_u32(attrs[nl.IFLA_MASTER]) == 4
    info = nl.parse_attrs(attrs[nl.IFLA_LINKINFO])
    assert nl.attr_str(info[nl.IFLA_INFO_KIND]) == "veth"
    peer = nl.parse_attrs(info[nl.IFLA_INFO_DATA])[nl.VETH_INFO_PEER]
    peer_attrs = nl.parse_attrs(peer[16:])                  # after the peer's ifinfomsg
    assert nl.attr_str(peer_attrs[nl.IFLA_IFNAME]) == "eth0"
    assert nl.attr_u32(peer_attrs[nl.IFLA_NET_NS_FD]) == 9
    assert peer_attrs[nl.IFLA_ADDRESS] == bytes([2, 0x42, 0xac, 0x11, 0, 2])


def test_veth_without_a_name_lets_the_kernel_choose():
    attrs = nl.parse_attrs(nl.pack_new_veth(1, "", "eth0")[32:])
    assert nl.IFLA_IFNAME not in attrs


def test_new_addr_and_route_bytes():
    msg = nl.pack_new_addr(2, 5, "172.18.0.2", 16)
    assert struct.unpack_from("=BBBBI", msg, 16) == (socket.AF_INET, 16, 0, 0, 5)
    attrs = nl.parse_attrs(msg[24:])
    assert attrs[nl.IFA_LOCAL] == bytes([172, 18, 0, 2])
    assert attrs[nl.IFA_BROADCAST] == bytes([172, 18, 255, 255])
    route = nl.pack_new_route(3, gateway="172.18.0.1")
    fields = struct.unpack_from("=BBBBBBBBI", route, 16)
    assert fields[:2] == (socket.AF_INET, 0) and fields[4] == nl.RT_TABLE_MAIN
    assert nl.parse_attrs(route[28:])[nl.RTA_GATEWAY] == bytes([172, 18, 0, 1])
    assert nl.parse_route(route[16:])["gateway"] == "172.18.0.1"


@pytest.mark.parametrize("code", [0, 17, 1, 19])
def test_ack_and_error(code):
    reply = nl.message(nl.NLMSG_ERROR, 0, 4, struct.pack("=i", -code) + bytes(16))
    [(kind, flags, seq, payload)] = nl.split_messages(reply)
    assert (kind, seq) == (nl.NLMSG_ERROR, 4)
    assert nl.parse_error(payload) == code


def test_link_reply_round_trip():
    payload = (struct.pack("=BxHiII", 0, 1, 7, nl.IFF_UP, 0) + nl.attr(nl.IFLA_IFNAME, "br-x")
               + nl.attr(nl.IFLA_MTU, 1500) + nl.attr(nl.IFLA_ADDRESS, bytes([2, 0x42, 0, 0, 0, 1]))
               + nl.attr(nl.IFLA_LINKINFO, [nl.attr(nl.IFLA_INFO_KIND, "bridge")]))
    link = nl.parse_link(payload)
    assert link == {"index": 7, "flags": nl.IFF_UP, "up": True, "name": "br-x", "mtu": 1500,
                    "master": None, "mac": "02:42:00:00:00:01", "kind": "bridge"}


@pytest.mark.parametrize("data", [
    b"", b"\x03", b"\x02\x00\x01\x00", b"\xff\x00\x01\x00abcd", b"\x08\x00\x01\x00ab",
])
def test_malformed_attributes_are_cut_not_raised(data):
    assert isinstance(nl.parse_attrs(data), dict)


def test_split_messages_stops_at_a_lying_length():
    good = nl.message(nl.NLMSG_DONE, 0, 1, b"\0\0\0\0")
    bad = struct.pack("=IHHII", 4000, 3, 0, 2, 0)
    assert [m[0] for m in nl.split_messages(good + bad)] == [nl.NLMSG_DONE]
