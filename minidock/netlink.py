"""rtnetlink: how a program creates bridges, veth pairs, addresses and routes (what `ip` does).

The kernel's network configuration is a message protocol over a socket, netlink(7):
`socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)` speaks *rtnetlink* (rtnetlink(7)). Every
message is a 16-byte header followed by a fixed struct and a list of attributes:

    struct nlmsghdr   u32 len (whole message) | u16 type | u16 flags | u32 seq | u32 pid
    payload           RTM_*LINK: struct ifinfomsg  u8 family, u8 pad, u16 type, i32 index,
                                                   u32 flags (IFF_UP...), u32 change
                      RTM_*ADDR: struct ifaddrmsg  u8 family, u8 prefixlen, u8 flags,
                                                   u8 scope, u32 index
                      RTM_*ROUTE: struct rtmsg     8 x u8: family, dst_len, src_len, tos,
                                                   table, protocol, scope, type; u32 flags
    attributes        struct nlattr  u16 len | u16 type | value, padded to 4 bytes;
                      a *nested* attribute's value is itself a list of attributes

Everything is host byte order (little-endian here) except addresses, which are network
order as in `socket.inet_aton`. A request carries NLM_F_REQUEST and, to get an answer for a
change, NLM_F_ACK: the kernel replies NLMSG_ERROR whose first field is 0 (the ack) or a
negative errno, followed by a copy of the request's header. Dumps (NLM_F_DUMP) reply with
several messages flagged NLM_F_MULTI and end with NLMSG_DONE.

Batches. One send() may carry several messages back to back: the kernel handles them in
order, each to completion, inside that one sendmsg(2), and queues their answers before the
call returns. A failing message does not stop the ones after it. A request without NLM_F_ACK
is answered only when it fails, so a batch whose *last* message alone asks for an ack is
answered by at most one error per failed message plus that final ack: when the ack arrives,
every error of the batch is already in the socket, ahead of it (`batch`, `Rtnl.apply`). With
NLM_F_ECHO the kernel also sends the requester the object it made, as a notification would
show it -- for a new veth, the local end, whose IFLA_LINK is the peer's ifindex in the
peer's namespace: what the next batch, over there, needs (`Rtnl.apply(echo=True)`).

What minidock sends (the equivalents in `ip` words):

    new_bridge("br-x")                   ip link add br-x type bridge
    new_veth("vethA", "eth0", netns_fd)  ip link add vethA type veth peer name eth0 netns FD
    set_link(idx, up=True, master=br)    ip link set dev X master br-x up
    new_addr(idx, "10.0.0.1", 24)        ip addr add 10.0.0.1/24 dev X
    set_inet_conf(idx, {ARP_NOTIFY: 1})  sysctl -w net.ipv4.conf.X.arp_notify=1
    new_route(gateway="10.0.0.1")        ip route add default via 10.0.0.1
    del_link(idx)                        ip link del X

The kernel checks CAP_NET_ADMIN in the user namespace that owns the socket's network
namespace -- so a process that is root in its own user namespace configures a network
namespace that namespace owns, which is the whole trick of rootless networking. A netlink
socket stays bound to the namespace it was created in, wherever it is used from later.

This module is functions over bytes (`pack_*`, `parse_*`), tested on bytes, and a small
`Rtnl` class that sends them over a real socket. You can watch the results with
`ip -d link`, `ip addr` and `/sys/class/net/*` inside the namespace.
"""

import errno
import os
import socket
import struct

# --- constants from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h> -------------

NETLINK_ROUTE = 0

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_NET_NS_PID = 19
IFLA_AF_SPEC = 26
IFLA_NET_NS_FD = 28
IFLA_INET_CONF = 1                      # inside IFLA_AF_SPEC / AF_INET
IPV4_DEVCONF_ARP_NOTIFY = 22            # <linux/ip.h>: net.ipv4.conf.X.arp_notify
LOOPBACK_IFINDEX = 1                    # lo is index 1 in every network namespace
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_DATA = 5                # a port's settings as its master sees them
IFLA_BRPORT_STATE = 1                   # inside IFLA_INFO_SLAVE_DATA of a bridge port: u8
BR_STATE_FORWARDING = 3                 # <linux/if_bridge.h>: 0 disabled ... 3 forwarding
VETH_INFO_PEER = 1

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTN_UNICAST = 1

NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")          # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")      # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")       # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg
_ATTR = struct.Struct("=HH")            # nlattr


def _align(n):
    return (n + 3) & ~3


# --- attributes ------------------------------------------------------------------------------

def attr(kind, value):
    """One nlattr: header + value + padding. `value` is bytes, str (NUL added), int (u32) or
    a list of already-packed attributes (then the attribute is nested)."""
    if isinstance(value, list):
        value = b"".join(value)
        kind |= NLA_F_NESTED
    elif isinstance(value, str):
        value = value.encode() + b"\0"
    elif isinstance(value, int):
        value = struct.pack("=I", value)
    data = _ATTR.pack(_ATTR.size + len(value), kind) + value
    return data + b"\0" * (_align(len(data)) - len(data))


def parse_attrs(data):
    """{type: value bytes} of a list of attributes (the nested flag stripped; later wins).

    Stops quietly at a malformed length instead of raising: the kernel is trusted, but a
    parser should never loop or index past the end whatever it is given."""
    out = {}
    pos = 0
    while pos + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, pos)
        if length < _ATTR.size or pos + length > len(data):
            break
        out[kind & ~NLA_F_NESTED & 0x7FFF] = data[pos + _ATTR.size:pos + length]
        pos += _align(length)
    return out


def attr_str(value):
    return value.split(b"\0", 1)[0].decode(errors="replace")


def attr_u32(value):
    return struct.unpack_from("=I", value)[0]


# --- messages ----------------------------------------------------------------------------------

def message(kind, flags, seq, payload):
    """A whole netlink message: header (length filled in) + payload."""
    return _HDR.pack(_HDR.size + len(payload), kind, flags, seq, 0) + payload


def split_messages(data):
    """[(type, flags, seq, payload)] of a buffer of one or more messages (a recv()'s worth)."""
    out = []
    pos = 0
    while pos + _HDR.size <= len(data):
        length, kind, flags, seq, _pid = _HDR.unpack_from(data, pos)
        if length < _HDR.size or pos + length > len(data):
            break
        out.append((kind, flags, seq, data[pos + _HDR.size:pos + length]))
        pos += _align(length)
    return out


def batch(messages):
    """One buffer for several change requests, sent with one send(): NLM_F_ACK is kept on the
    last message only (errors are reported whatever the flag; see the module docstring)."""
    out = []
    for i, msg in enumerate(messages):
        length, kind, flags, seq, pid = _HDR.unpack_from(msg)
        if i < len(messages) - 1:
            flags &= ~NLM_F_ACK
        out.append(_HDR.pack(length, kind, flags, seq, pid) + msg[_HDR.size:])
    return b"".join(out)


def parse_error(payload):
    """The errno of an NLMSG_ERROR payload: 0 for an ack, else positive errno."""
    return -struct.unpack_from("=i", payload)[0]


def _mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def _ifinfo(index=0, flags=0, change=0, family=socket.AF_UNSPEC):
    return _IFINFO.pack(family, 0, index, flags, change)


def pack_new_bridge(seq, name, mtu=None, mac=None):
    """RTM_NEWLINK: create a bridge (`ip link add NAME [address MAC] type bridge`)."""
    attrs = [attr(IFLA_IFNAME, name), attr(IFLA_LINKINFO, [attr(IFLA_INFO_KIND, "bridge")])]
    if mtu:
        attrs.append(attr(IFLA_MTU, mtu))
    if mac:
        attrs.append(attr(IFLA_ADDRESS, _mac_bytes(mac)))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq,
                   _ifinfo() + b"".join(attrs))


def pack_new_veth(seq, name, peer, peer_netns_fd=None, mtu=None, master=None,
                  peer_mac=None, up=False, echo=False):
    """RTM_NEWLINK: a veth pair. `peer` goes into the netns of `peer_netns_fd` if given; the
    local end `name` is attached to bridge index `master` and brought up if asked. With
    `echo` (NLM_F_ECHO) the kernel answers with the local end, which names the peer's
    ifindex in IFLA_LINK (`parse_link(...)["link"]`).

    The peer is described inside IFLA_LINKINFO / IFLA_INFO_DATA / VETH_INFO_PEER as a whole
    ifinfomsg followed by its own attributes (that is how `ip` asks for both ends at once).
    An index in the peer's ifinfomsg is no request the kernel honoured here (6.18: the peer got
    the next free index of its namespace all the same), so the peer's index comes back by the
    echo."""
    peer_attrs = [attr(IFLA_IFNAME, peer)]
    if peer_netns_fd is not None:
        peer_attrs.append(attr(IFLA_NET_NS_FD, peer_netns_fd))
    if mtu:
        peer_attrs.append(attr(IFLA_MTU, mtu))
    if peer_mac:
        peer_attrs.append(attr(IFLA_ADDRESS, _mac_bytes(peer_mac)))
    peer_info = attr(VETH_INFO_PEER, _ifinfo() + b"".join(peer_attrs))
    attrs = [attr(IFLA_IFNAME, name)] if name else []    # none: the kernel picks vethN
    attrs.append(attr(IFLA_LINKINFO, [attr(IFLA_INFO_KIND, "veth"),
                                      attr(IFLA_INFO_DATA, [peer_info])]))
    if mtu:
        attrs.append(attr(IFLA_MTU, mtu))
    if master is not None:
        attrs.append(attr(IFLA_MASTER, master))
    flags = IFF_UP if up else 0
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
                   | (NLM_F_ECHO if echo else 0), seq,
                   _ifinfo(flags=flags, change=IFF_UP if up else 0) + b"".join(attrs))


def pack_set_link(seq, index, up=None, master=None, mtu=None, mac=None, name=None,
                  netns_fd=None):
    """RTM_NEWLINK on an existing index (no NLM_F_CREATE): change what is given."""
    flags = change = 0
    if up is not None:
        change = IFF_UP
        flags = IFF_UP if up else 0
    attrs = []
    if master is not None:
        attrs.append(attr(IFLA_MASTER, master))
    if mtu:
        attrs.append(attr(IFLA_MTU, mtu))
    if mac:
        attrs.append(attr(IFLA_ADDRESS, _mac_bytes(mac)))
    if name:
        attrs.append(attr(IFLA_IFNAME, name))
    if netns_fd is not None:
        attrs.append(attr(IFLA_NET_NS_FD, netns_fd))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq,
                   _ifinfo(index, flags, change) + b"".join(attrs))


def pack_set_inet_conf(seq, index, conf):
    """RTM_NEWLINK with IFLA_AF_SPEC / AF_INET / IFLA_INET_CONF: per-device IPv4 settings,
    {IPV4_DEVCONF_* number: u32 value}, the same values /proc/sys/net/ipv4/conf/DEV/ shows.

    The kernel applies IFLA_AF_SPEC after the flags of the same message, so a setting that
    must be in place when the link comes up (arp_notify) goes in a message of its own, before
    the one that sets IFF_UP."""
    inet = attr(socket.AF_INET, [attr(IFLA_INET_CONF, [attr(k, v) for k, v in sorted(conf.items())])])
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq,
                   _ifinfo(index) + attr(IFLA_AF_SPEC, [inet]))


def pack_del_link(seq, index=0, name=None):
    """RTM_DELLINK by index or by name (`ip link del`). Deleting one veth end deletes both."""
    attrs = attr(IFLA_IFNAME, name) if name else b""
    return message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, _ifinfo(index) + attrs)


def pack_get_link(seq, index=0, name=None):
    """RTM_GETLINK: one link by index or name, or (neither) a dump of every link."""
    if index or name:
        attrs = attr(IFLA_IFNAME, name) if name else b""
        return message(RTM_GETLINK, NLM_F_REQUEST, seq, _ifinfo(index) + attrs)
    return message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, _ifinfo())


def parse_link(payload):
    """An RTM_NEWLINK payload (a GETLINK reply) as a dict: index, flags, name, mtu, master,
    link (a veth's peer index, in the peer's namespace), mac, kind, up, and port_state (a
    bridge port's STP state, `ip -d link`'s "bridge_slave state forwarding"; else None)."""
    family, kind, index, flags, _change = _IFINFO.unpack_from(payload)
    attrs = parse_attrs(payload[_IFINFO.size:])
    info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
    link = {"index": index, "flags": flags, "up": bool(flags & IFF_UP),
            "name": attr_str(attrs.get(IFLA_IFNAME, b"")),
            "mtu": attr_u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else None,
            "master": attr_u32(attrs[IFLA_MASTER]) if IFLA_MASTER in attrs else None,
            "link": attr_u32(attrs[IFLA_LINK]) if IFLA_LINK in attrs else None,
            "mac": ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
            "kind": attr_str(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None,
            "port_state": None}
    if IFLA_INFO_SLAVE_DATA in info:
        state = parse_attrs(info[IFLA_INFO_SLAVE_DATA]).get(IFLA_BRPORT_STATE)
        link["port_state"] = state[0] if state else None
    return link


def pack_new_addr(seq, index, address, prefixlen):
    """RTM_NEWADDR: an IPv4 address with its prefix and broadcast (`ip addr add A/P dev X`).

    The broadcast address is the address with every host bit set, computed on the integer
    (this runs in the freshly cloned init, where every object made costs copied pages)."""
    raw = socket.inet_aton(str(address))
    attrs = [attr(IFA_LOCAL, raw), attr(IFA_ADDRESS, raw)]
    if prefixlen < 31:
        host_bits = (1 << (32 - prefixlen)) - 1
        attrs.append(attr(IFA_BROADCAST, (int.from_bytes(raw, "big") | host_bits).to_bytes(4, "big")))
    return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq,
                   _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                   + b"".join(attrs))


def pack_get_addrs(seq, family=socket.AF_INET):
    """RTM_GETADDR dump of the addresses of `family` (IPv4 unless told)."""
    return message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq,
                   _IFADDR.pack(family, 0, 0, 0, 0))


def parse_addr(payload):
    family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(payload)
    attrs = parse_attrs(payload[_IFADDR.size:])
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS) or b""
    address = socket.inet_ntoa(raw) if family == socket.AF_INET and len(raw) == 4 else None
    return {"index": index, "family": family, "prefixlen": prefixlen, "address": address}


def pack_new_route(seq, dst=None, dst_len=0, gateway=None, oif=None):
    """RTM_NEWROUTE in the main table: `ip route add DST/LEN [via GW] [dev OIF]`; no dst is
    the default route."""
    attrs = []
    if dst:
        attrs.append(attr(RTA_DST, socket.inet_aton(dst)))
    if gateway:
        attrs.append(attr(RTA_GATEWAY, socket.inet_aton(gateway)))
    if oif is not None:
        attrs.append(attr(RTA_OIF, oif))
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq,
                   _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                               scope, RTN_UNICAST, 0) + b"".join(attrs))


def pack_get_routes(seq):
    return message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq,
                   _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))


def parse_route(payload):
    family, dst_len, _src, _tos, table, _proto, scope, kind, _fl = _RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_RTMSG.size:])
    if RTA_TABLE in attrs:
        table = attr_u32(attrs[RTA_TABLE])
    ip = lambda k: socket.inet_ntoa(attrs[k]) if len(attrs.get(k, b"")) == 4 else None
    return {"dst": ip(RTA_DST) or "0.0.0.0", "dst_len": dst_len, "gateway": ip(RTA_GATEWAY),
            "oif": attr_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None, "table": table,
            "type": kind, "scope": scope}


# --- the socket side ---------------------------------------------------------------------------

class Rtnl:
    """A NETLINK_ROUTE socket in the network namespace it was created in. Not thread-safe:
    one request at a time (callers hold their own lock)."""

    def __init__(self, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 NETLINK_ROUTE)
            sock.bind((0, 0))
        self.sock = sock
        self.seq = 0

    def close(self):
        self.sock.close()

    def _next(self):
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def request(self, build, *args, **kw):
        """Send `build(seq, ...)`; return the replies (for a GET) or [] after a zero ack.
        A negative ack raises OSError(errno) naming the request."""
        seq = self._next()
        self.sock.send(build(seq, *args, **kw))
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            for kind, flags, rseq, payload in split_messages(data):
                if rseq != seq:
                    continue            # a late reply to something earlier
                if kind == NLMSG_ERROR:
                    err = parse_error(payload)
                    if err:
                        what = f"rtnetlink {build.__name__.replace('pack_', '')}{args}"
                        raise OSError(err, os.strerror(err), what)
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(payload)
                if not flags & NLM_F_MULTI:
                    return replies

    def apply(self, calls, echo=False):
        """Send several change requests in one batch (see `batch`); return once the last is
        acked. `calls` are (build, args, kwargs[, errnos]) tuples, `build(seq, *args,
        **kwargs)` making each message; an errno in `errnos` is no failure for that request.
        The first failure raises OSError(errno) naming its request (the kernel has still
        handled the messages after it). With `echo`, returns for each of `calls`, in order,
        the list of payloads the kernel echoed for it (requests built with NLM_F_ECHO)."""
        if not calls:
            return []
        names = {}
        messages = []
        for build, args, kw, *ok in calls:
            seq = self._next()
            names[seq] = (build, args, ok[0] if ok else ())
            messages.append(build(seq, *args, **kw))
        self.sock.send(batch(messages))
        last = seq
        echoed = {}
        failed = None
        while True:
            data = self.sock.recv(1 << 16)
            for kind, _flags, rseq, payload in split_messages(data):
                if rseq not in names:
                    continue            # a late reply to something earlier
                if kind != NLMSG_ERROR:
                    echoed.setdefault(rseq, []).append(payload)
                    continue
                err = parse_error(payload)
                build, args, ok = names[rseq]
                if err and err not in ok and failed is None:
                    failed = OSError(err, os.strerror(err),
                                     f"rtnetlink {build.__name__.replace('pack_', '')}{args}")
                if rseq == last:
                    if failed is not None:
                        raise failed
                    return [echoed.get(s, []) for s in names] if echo else []

    def links(self):
        return [parse_link(p) for p in self.request(pack_get_link)]

    def link(self, name):
        """The link called `name`, or None."""
        try:
            got = self.request(pack_get_link, name=name)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return parse_link(got[0]) if got else None

    def addrs(self, family=socket.AF_INET):
        return [parse_addr(p) for p in self.request(pack_get_addrs, family=family)]

    def routes(self):
        return [parse_route(p) for p in self.request(pack_get_routes)]
