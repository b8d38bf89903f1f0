"""The destination policy: where a container's packet may go, as a pure function.

A container's TCP connection, UDP datagram or ping is re-originated by the gateway as a socket
of the daemon in the host's namespace, so the gateway decides, per destination address, one of
three answers (`route()`, tested as a table):

    HOST, address     dial `address` from the host (the gateway address itself, or the
                      `host_alias` such as slirp4netns's 10.0.2.2, stands for the host's
                      127.0.0.1 -- only with --allow-host-loopback)
    REFUSE, why       answer as a host without a listener would (TCP RST, ICMP port unreachable)
    DROP, why         say nothing: the packet is not ours (multicast, broadcast, 0.0.0.0/8, or a
                      gateway address that belongs to the namespace's kernel)

Loopback destinations (127.0.0.0/8) and the container networks' own subnets are never dialled,
so a packet can never reach a loopback-only service of the host by accident. `Network` is one
container network as the gateway sees it (gateway address and subnet).
"""

from . import ipv4
from .ipv4 import addr_bytes, addr_str

HOST, REFUSE, DROP = "host", "refuse", "drop"
HOST_LOOPBACK = "127.0.0.1"     # what the gateway address and the host alias are dialled as


class Network:
    """One container network as the gateway sees it: its gateway address and subnet."""
    __slots__ = ("gateway", "net", "plen")

    def __init__(self, spec):
        addr, _, plen = spec.partition("/")
        self.gateway = addr_bytes(addr)
        self.net, self.plen = ipv4.parse_cidr(f"{addr}/{plen or 24}")

    def contains(self, addr):
        return ipv4.in_cidr(addr, self.net, self.plen)


def route(dst, networks, allow_host_loopback, host_alias=None, kernel_gateway=False):
    """Where a container's packet to `dst` (4 bytes) goes: (HOST, address) / (REFUSE|DROP, why).

    The policy of the module docstring as a pure function (tested as a table). `host_alias` is
    an extra address standing for the host (slirp4netns's 10.0.2.2); `kernel_gateway` says the
    gateway addresses belong to the namespace's kernel (a bridge holds them), so packets to them
    are none of our business."""
    first = dst[0]
    if dst == host_alias:
        if allow_host_loopback:
            return HOST, HOST_LOOPBACK
        return REFUSE, "the host's loopback is reachable only with --allow-host-loopback"
    for n in networks:
        if dst == n.gateway:
            if kernel_gateway:
                return DROP, "the gateway address belongs to the namespace's kernel"
            if allow_host_loopback:
                return HOST, HOST_LOOPBACK
            return REFUSE, "the host's loopback is reachable only with --allow-host-loopback"
    if first == 127:
        return REFUSE, "loopback destinations are never forwarded"
    if first == 0 or first >= 224:
        return DROP, "not a unicast destination"
    for n in networks:
        if n.contains(dst):
            return REFUSE, "an address of the container network itself"
    return HOST, addr_str(dst)
