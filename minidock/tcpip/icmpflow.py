"""ICMP echo flows: a container's pings through the kernel's unprivileged ping socket.

A raw socket needs CAP_NET_RAW; icmp(7)'s "ping socket" (SOCK_DGRAM, IPPROTO_ICMP) does not, but
the kernel admits only the groups in net.ipv4.ping_group_range. One socket per container
(address, echo identifier): the echo request goes out with sendto(); the kernel rewrites the
identifier to the socket's port and delivers only the matching replies, to which we give back
the container's identifier. When the socket cannot be opened, `ping_unavailable_message()` is
the one log line that says why and how to widen the range (the packet is dropped, never a
faked reply).

Uses of the gateway (`gw`): `now`, `stats`, `log_once`, `unregister`.
"""

import os
import socket

from . import ipv4
from .ipv4 import ICMP_ECHO_REPLY, PROTO_ICMP, addr_bytes


class IcmpFlow:
    """Echo requests of one container (address, identifier) through a ping socket."""
    __slots__ = ("gw", "link", "key", "mac", "sock", "fd", "last", "deadline")

    def __init__(self, gw, link, key, mac):
        self.gw, self.link, self.key, self.mac = gw, link, key, mac
        # icmp(7): SOCK_DGRAM + IPPROTO_ICMP is the unprivileged "ping socket"; the kernel
        # rewrites the echo identifier to the socket's port and filters replies by it.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMP)
        self.fd = self.sock.fileno()
        self.last = gw.now
        self.deadline = None

    def send(self, host, message):
        self.last = self.gw.now
        try:
            self.sock.sendto(message, (host, 0))
        except OSError as e:
            self.gw.stats["icmp_send_error"] += 1
            self.gw.log_once(f"icmp-send-{e.errno}", f"ping to {host}: {e}")

    def on_host_event(self, ev):
        for _ in range(16):
            try:
                data, (src, _) = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            self.last = self.gw.now
            if len(data) < 8 or data[0] != ICMP_ECHO_REPLY:
                continue
            # Put the container's identifier back (the kernel used the socket's port).
            msg = ipv4.icmp_message(ICMP_ECHO_REPLY, 0, self.key[1].to_bytes(2, "big") + data[6:8],
                                    data[8:])
            self.link.send_ip(self.mac, addr_bytes(src), self.key[0], PROTO_ICMP, msg)

    def close(self):
        self.gw.unregister(self)
        self.sock.close()


def ping_unavailable_message(err):
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            rng = f.read().split()
    except OSError:
        rng = ["?", "?"]
    return (f"ICMP echo from containers is dropped: no unprivileged ICMP socket ({err}); "
            f"net.ipv4.ping_group_range is '{' '.join(rng)}' and the daemon's group is "
            f"{os.getgid()}. Widen it (sysctl -w net.ipv4.ping_group_range='0 2147483647') to "
            f"let containers ping.")
