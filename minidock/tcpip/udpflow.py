"""UDP flows: a container's UDP port mapped onto one unconnected host socket.

UDP has no connection to terminate, so the gateway keeps one flow per container (address,
port): the first datagram opens an ordinary SOCK_DGRAM socket of the daemon and sendto()s the
payload to the destination `route()` chose; whatever arrives on that socket (recvfrom: any
source, like a NAT with endpoint-independent mapping) goes back to the container as a UDP
datagram from that source. A reply from the host's 127.0.0.1 wears the address the container
asked for (the gateway address or the host alias), and is passed on only if the container
itself sent to the host's loopback. Replies bigger than the MTU are dropped (we send no
fragments). The gateway forgets a flow after `udp_timeout` seconds without traffic.

Uses of the gateway (`gw`): `now`, `stats`, `log_once`, `udp_buf` (the shared receive buffer),
`unregister`.
"""

import socket

from . import udp
from .ipv4 import PROTO_UDP, addr_bytes
from .policy import HOST_LOOPBACK


class UdpFlow:
    """A container's UDP port: one unconnected host socket, forgotten when idle."""
    __slots__ = ("gw", "link", "key", "mac", "gw_ip", "sock", "fd", "last", "loop_mapped",
                 "alias", "deadline")

    def __init__(self, gw, link, key, mac, gw_ip):
        self.gw, self.link, self.key, self.mac, self.gw_ip = gw, link, key, mac, gw_ip
        self.alias = gw_ip              # the address replies from the host's loopback wear
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC)
        self.fd = self.sock.fileno()
        self.last = gw.now
        self.loop_mapped = False
        self.deadline = None

    def send(self, host, port, data, dst):
        self.last = self.gw.now
        if host == HOST_LOOPBACK:
            self.loop_mapped = True
            self.alias = dst
        try:
            self.sock.sendto(data, (host, port))
        except BlockingIOError:
            self.gw.stats["udp_dropped_host_full"] += 1
        except OSError as e:
            self.gw.stats["udp_send_error"] += 1
            self.gw.log_once(f"udp-send-{e.errno}", f"udp to {host}:{port}: {e}")

    def on_host_event(self, ev):
        buf = self.gw.udp_buf
        for _ in range(64):
            try:
                n, (src, sport) = self.sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            except OSError:
                continue            # an ICMP error queued on the socket: reported once, go on
            self.last = self.gw.now
            if src == HOST_LOOPBACK:
                if not self.loop_mapped:
                    continue
                src_addr = self.alias
            else:
                src_addr = addr_bytes(src)
            if n + 28 > self.link.mtu:
                self.gw.stats["udp_too_big"] += 1
                self.gw.log_once("udp-too-big", f"a {n}-byte UDP reply from {src}:{sport} "
                                 f"exceeds the MTU and fragments are not sent: dropped")
                continue
            l4 = udp.udp_datagram(src_addr, self.key[0], sport, self.key[1], memoryview(buf)[:n])
            self.link.send_ip(self.mac, src_addr, self.key[0], PROTO_UDP, l4)
            self.gw.stats["udp_in"] += 1

    def close(self):
        self.gw.unregister(self)
        self.sock.close()
