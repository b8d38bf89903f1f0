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


@pytest.mark.parametrize("address, prefixlen, broadcast", [
    ("172.18.0.2", 16, "172.18.255.255"),
    ("10.0.0.5", 24, "10.0.0.255"),
    ("10.0.0.5", 30, "10.0.0.7"),
    ("192.168.7.9", 20, "192.168.15.255"),
    ("1.2.3.4", 1, "127.255.255.255"),
    ("1.2.3.4", 0, "255.255.255.255"),
    ("10.0.0.5", 31, None),                 # point-to-point: no broadcast address
    ("10.0.0.5", 32, None),
])
def test_new_addr_broadcast(address, prefixlen, broadcast):
    attrs = nl.parse_attrs(nl.pack_new_addr(1, 2, address, prefixlen)[24:])
    assert attrs[nl.IFA_LOCAL] == attrs[nl.IFA_ADDRESS] == socket.inet_aton(address)
    assert attrs.get(nl.IFA_BROADCAST) == (socket.inet_aton(broadcast) if broadcast else None)


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
                    "master": None, "link": None, "mac": "02:42:00:00:00:01", "kind": "bridge",
                    "port_state": None}


def test_a_bridge_port_shows_its_state():
    # a veth end on a bridge, as `ip -d link` gets it: IFLA_LINKINFO carries the port's
    # settings (IFLA_INFO_SLAVE_DATA) beside its own kind; the state is a u8 (3: forwarding)
    def port(state_attr):
        return (struct.pack("=BxHiII", 0, 1, 12, nl.IFF_UP, 0) + nl.attr(nl.IFLA_IFNAME, "veth3")
                + nl.attr(nl.IFLA_LINKINFO, [nl.attr(nl.IFLA_INFO_KIND, "veth"),
                                             nl.attr(4, "bridge"),        # IFLA_INFO_SLAVE_KIND
                                             nl.attr(nl.IFLA_INFO_SLAVE_DATA, state_attr)]))
    forwarding = [nl.attr(2, b"\x20\0"),                    # IFLA_BRPORT_PRIORITY first
                  nl.attr(nl.IFLA_BRPORT_STATE, bytes([nl.BR_STATE_FORWARDING]))]
    link = nl.parse_link(port(forwarding))
    assert (link["kind"], link["port_state"]) == ("veth", nl.BR_STATE_FORWARDING)
    assert nl.parse_link(port([nl.attr(nl.IFLA_BRPORT_STATE, b"\0")]))["port_state"] == 0
    assert nl.parse_link(port([]))["port_state"] is None


def test_a_veth_echo_names_its_peer_index():
    # what the kernel echoes for a new veth's local end: IFLA_LINK is the peer's ifindex
    payload = (struct.pack("=BxHiII", 0, 1, 12, nl.IFF_UP, 0) + nl.attr(nl.IFLA_IFNAME, "veth3")
               + nl.attr(nl.IFLA_LINK, 2) + nl.attr(nl.IFLA_MASTER, 4))
    link = nl.parse_link(payload)
    assert (link["index"], link["name"], link["link"], link["master"]) == (12, "veth3", 2, 4)


def test_echo_flag_on_a_new_veth():
    flags = lambda msg: struct.unpack_from("=IHHII", msg)[2]
    assert flags(nl.pack_new_veth(1, "", "eth0", echo=True)) & nl.NLM_F_ECHO
    assert not flags(nl.pack_new_veth(1, "", "eth0")) & nl.NLM_F_ECHO


def test_inet_conf_bytes():
    # `sysctl net.ipv4.conf.X.arp_notify=1` as a link change (the layout inet_set_link_af reads):
    # IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { 22: u32 1 } } }
    msg = nl.pack_set_inet_conf(5, 3, {nl.IPV4_DEVCONF_ARP_NOTIFY: 1})
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), nl.RTM_NEWLINK, 5)
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK             # a change, never a create
    assert struct.unpack_from("=BxHiII", msg, 16) == (0, 0, 3, 0, 0)   # index 3, flags untouched
    assert msg[32:] == (b"\x14\x00\x1a\x80"                    # IFLA_AF_SPEC (26), nested, 20 bytes
                        + b"\x10\x00\x02\x80"                  # AF_INET (2), nested
                        + b"\x0c\x00\x01\x80"                  # IFLA_INET_CONF (1), nested
                        + b"\x08\x00\x16\x00\x01\x00\x00\x00")   # 22 = ARP_NOTIFY: 1


def test_a_batch_asks_for_one_ack_at_its_end():
    msgs = [nl.pack_new_addr(1, 2, "10.0.0.2", 24),
            nl.pack_set_link(2, 2, up=True),
            nl.pack_new_route(3, gateway="10.0.0.1")]
    out = nl.batch(msgs)
    assert len(out) == sum(map(len, msgs))
    split = nl.split_messages(out)
    assert [seq for _, _, seq, _ in split] == [1, 2, 3]
    assert [bool(flags & nl.NLM_F_ACK) for _, flags, _, _ in split] == [False, False, True]
    # nothing else changes: the payloads, and the other flags (create, excl) are kept
    assert [p for *_, p in split] == [m[16:] for m in msgs]
    assert split[0][1] == nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_EXCL
    assert nl.batch([]) == b""


@pytest.mark.parametrize("data", [
    b"", b"\x03", b"\x02\x00\x01\x00", b"\xff\x00\x01\x00abcd", b"\x08\x00\x01\x00ab",
])
def test_malformed_attributes_are_cut_not_raised(data):
    assert isinstance(nl.parse_attrs(data), dict)


class _FakeKernelSocket:
    """A socket that answers a batch the way the kernel does: every message handled in
    order; an error for each failing one (whatever its flags), an echo for each asking for
    one, an ack for the ones that ask. It looks at the bytes it is sent, nothing else."""

    def __init__(self, fail=(), echo_link=None):
        self.fail, self.echo_link, self.queue, self.sent = dict(fail), echo_link, [], []

    def send(self, data):
        self.sent.append(data)
        for kind, flags, seq, payload in nl.split_messages(data):
            err = self.fail.get(seq, 0)
            if flags & nl.NLM_F_ECHO and not err:
                self.queue.append(nl.message(nl.RTM_NEWLINK, 0, seq,
                                             struct.pack("=BxHiII", 0, 1, 9, 0, 0)
                                             + nl.attr(nl.IFLA_LINK, self.echo_link + seq)))
            if err or flags & nl.NLM_F_ACK:
                self.queue.append(nl.message(nl.NLMSG_ERROR, 0, seq,
                                             struct.pack("=i", -err) + bytes(16)))
        return len(data)

    def recv(self, n):
        return self.queue.pop(0)


def test_apply_sends_one_buffer_and_returns_echoes_in_order():
    sock = _FakeKernelSocket(echo_link=100)
    rtnl = nl.Rtnl(sock)
    echoed = rtnl.apply([(nl.pack_new_veth, ("", "eth0"), {"echo": True}),
                         (nl.pack_new_veth, ("", "eth1"), {"echo": True})], echo=True)
    assert len(sock.sent) == 1
    assert [[nl.parse_link(p)["link"] for p in e] for e in echoed] == [[101], [102]]
    assert sock.queue == []


def test_apply_raises_the_first_failure_after_the_last_ack():
    sock = _FakeKernelSocket(fail={2: 17, 3: 19})
    rtnl = nl.Rtnl(sock)
    with pytest.raises(FileExistsError) as e:
        rtnl.apply([(nl.pack_new_addr, (2, "10.0.0.2", 24), {}),
                    (nl.pack_new_addr, (2, "10.0.0.3", 24), {}),
                    (nl.pack_set_link, (2,), {"up": True}),
                    (nl.pack_new_route, (), {"gateway": "10.0.0.1"})])
    assert "new_addr" in str(e.value) and "10.0.0.3" in str(e.value)
    assert sock.queue == []             # everything of the batch was read
    assert rtnl.apply([]) == []
    # an errno the caller expects is no failure (an existing default route)
    sock = _FakeKernelSocket(fail={1: 17})      # a fresh Rtnl: the first seq is 1
    nl.Rtnl(sock).apply([(nl.pack_new_route, (), {"gateway": "10.0.0.1"}, (17,))])
    with pytest.raises(FileExistsError):
        nl.Rtnl(sock).apply([(nl.pack_new_route, (), {"gateway": "10.0.0.1"})])


def test_split_messages_stops_at_a_lying_length():
    good = nl.message(nl.NLMSG_DONE, 0, 1, b"\0\0\0\0")
    bad = struct.pack("=IHHII", 4000, 3, 0, 2, 0)
    assert [m[0] for m in nl.split_messages(good + bad)] == [nl.NLMSG_DONE]
