"""The gateway: one event loop between the containers' wire and the host's sockets.

A `Gateway` owns an AF_PACKET socket (packet.py) on the veth that stands for the containers'
default gateway, and answers everything that arrives on it:

    ARP "who has <gateway>?"        -> "<gateway> is at <our MAC>"
    ICMP echo to the gateway         -> an echo reply (the gateway is us)
    ICMP echo elsewhere              -> an unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP)
                                        when net.ipv4.ping_group_range admits our group; if
                                        not, one log line says so and the packet is dropped
                                        (never a faked reply)
    TCP                              -> a TcpFlow (tcp.py): a host socket per connection
    UDP                              -> a UdpFlow: a host socket per container address/port
    anything else (IPv6, fragments, broken packets)  -> counted in `stats` and dropped

Destinations (`route()`): the host sees every connection as coming from the daemon's own
address -- the host sockets are ordinary unbound sockets of the daemon's process, like
slirp4netns. A container reaching the *gateway* address reaches the host's 127.0.0.1 only when
the gateway runs with `allow_host_loopback` (the daemon's `--allow-host-loopback`, off by
default as in rootless Docker); without it the connection is refused (TCP RST, ICMP port
unreachable for UDP). Loopback destinations (127.0.0.0/8), this-network/multicast/broadcast
addresses and the container networks' own subnets are never dialled: a packet can therefore
never reach a loopback-only service of the host by accident.

One thread, one epoll: the packet socket level-triggered, host TCP sockets edge-triggered
(tcp.py says why), UDP and ICMP sockets level-triggered. After each batch of frames the loop
sends the acknowledgments the batch earned (one per flow, not one per segment), then runs the
timers that are due. `selectors` offers neither EPOLLET nor EPOLLRDHUP, so this module uses
`select.epoll` directly.

Entry point for the daemon (the contract):

    gw = Gateway(allow_host_loopback=flag, host_alias="10.0.2.2")
    threading.Thread(target=gw.run, daemon=True).start()     # returns after gw.stop()
    port = gw.add_port(packet_sock, networks=["172.17.0.1/16"], kernel_gateway=True)
    ...
    gw.drop_address("172.17.0.2")     # a container left: its flows are reset
    gw.remove_port(port)              # a network was removed: its flows reset, socket closed
    gw.stop()

`packet_sock` is an AF_PACKET socket (SOCK_RAW, ETH_P_ALL) bound to the wire, created inside
the namespace that holds it and passed back over SCM_RIGHTS; configure it with
`packet.configure_packet_socket(sock)` first (virtio header, buffers); the gateway owns it
from then on. Two wirings (see `Port`): a veth end that *is* the gateway (the gateway address
stands for the host, we answer ARP), or a tap on a bridge whose interface holds the gateway
address (`kernel_gateway=True`: the kernel answers ARP and owns the gateway's ports; the host
is reached through `host_alias`, slirp4netns's 10.0.2.2). `networks` lists each gateway
address with its prefix; --internal networks simply get no port. add_port, remove_port,
drop_address, stop, `stats` and `snapshot()` may be called from any thread (call() runs them
on the loop's thread).
"""

import collections
import errno
import heapq
import logging
import os
import resource
import select
import socket
import struct
import threading
import time

from . import ethernet, ipv4, packet, tcp, tcpwire, udp
from .ethernet import ETH_HLEN, ETH_P_ARP, ETH_P_IP, Malformed
from .ipv4 import (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
                   UNREACH_PORT, addr_bytes, addr_str)
from .tcpwire import ACK, RST, SYN, MASK

DEFAULT_MAC = ethernet.mac_bytes("02:42:ac:11:ff:fe")   # locally administered, not a real NIC's
HOST_LOOPBACK = "127.0.0.1"
UDP_TIMEOUT = 60.0
ICMP_TIMEOUT = 20.0
TCP_IDLE_TIMEOUT = 7200.0
TCP_TIME_WAIT = 60.0
MAX_TCP_FLOWS = 16384
MAX_UDP_FLOWS = 4096
BATCH = 256                 # frames read per wake-up before the host sockets get a turn
STASH_SLOTS = 8             # reordered segments held per batch, for all flows together
STASH_REACH = 8 * 65536     # how far ahead of the expected byte a segment may be to be held
ACK_EVERY = 16              # acknowledgments go out at least this often within a batch

log = logging.getLogger("minidock.tcpip")

HOST, REFUSE, DROP = "host", "refuse", "drop"


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


class Port:
    """One wire of the gateway: an AF_PACKET socket (or a test sink), the MAC we use on it,
    and the container networks behind it.

    Two layouts are supported. In the first (`kernel_gateway=False`) the socket reads a veth end
    that *is* the gateway: we answer ARP for the gateway addresses and the gateway address
    itself stands for the host. In the second (`kernel_gateway=True`) the socket is opened on a
    bridge whose kernel interface holds the gateway address (the daemon's network namespace of
    networks.py): the kernel answers ARP and owns the gateway's ports (the embedded DNS), and
    with ip_forward=0 it silently drops what it would have to route; a packet tap on the bridge
    sees those same frames, and we answer them with the bridge's MAC as source."""
    __slots__ = ("link", "psock", "networks", "kernel_gateway", "mac")

    def __init__(self, link, psock, networks, kernel_gateway):
        self.link, self.psock, self.mac = link, psock, link.mac
        self.networks = networks
        self.kernel_gateway = kernel_gateway

    def refresh_mac(self, candidate):
        """Is `candidate` the interface's MAC now? A bridge's MAC follows its ports (the lowest
        port MAC wins unless one was set), so on a kernel-owned gateway the MAC taken at start
        goes stale when containers come and go. getsockname() of the packet socket reads the
        interface's current address; frames addressed elsewhere (the namespace's own traffic
        to a container) must never be taken for ours."""
        if not self.kernel_gateway or self.psock is None or candidate[0] & 1:
            return False
        try:
            current = self.psock.getsockname()[4]
        except OSError:
            return False
        if current != self.mac:
            self.mac = self.link.mac = current
        return candidate == current

    def network_of(self, addr):
        for n in self.networks:
            if n.contains(addr):
                return n
        return None


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


def raise_fd_limit():
    """Every flow holds a host socket: lift RLIMIT_NOFILE's soft limit to the hard one (often
    1024 -> 524288), or "thousands of connections" stops at a thousand. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


class Gateway:
    def __init__(self, packet_sock=None, *, networks=(), allow_host_loopback=False,
                 mac=None, sink=None, vnet_hdr=None, mtu=packet.MTU, kernel_gateway=False,
                 host_alias=None, udp_timeout=UDP_TIMEOUT, tcp_idle_timeout=TCP_IDLE_TIMEOUT,
                 tcp_time_wait=TCP_TIME_WAIT, max_tcp_flows=MAX_TCP_FLOWS, logger=None,
                 peek_offset=None):
        self.allow_host_loopback = bool(allow_host_loopback)
        self.host_alias = addr_bytes(host_alias) if host_alias else None
        self.udp_timeout = udp_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_time_wait = tcp_time_wait
        self.max_tcp_flows = max_tcp_flows
        self.log = logger or log.warning
        self.fd_limit = raise_fd_limit()
        # SO_PEEK_OFF on TCP sockets is Linux 6.9+; `peek_offset=False` forces the fallback
        # (tests run both ways on kernels that have it).
        self.peek_off = tcp.peek_offset_supported() if peek_offset is None else peek_offset
        self.stats = collections.Counter()
        self.ports = []
        self.networks = []          # of every port: no container subnet is ever dialled
        self._port_fds = {}
        self.tcp = {}               # (cip, cport, dip, dport) -> TcpFlow
        self.udp = {}               # (cip, cport) -> UdpFlow
        self.icmp = {}              # (cip, echo id) -> IcmpFlow
        self.now = time.monotonic()
        self._timers = []           # heap of (when, tie-breaker, object)
        self._tie = 0
        self._acks = set()
        self._drops = set()         # flows with acknowledged bytes to drop from their socket
        self._stash = {}            # flow -> [(seq, flags, bytes)]: the reorder stash
        self.stashed = 0
        self._fds = {}
        self._logged = set()
        self._ping_error = None
        self._calls = collections.deque()
        self._thread = None
        self.udp_buf = bytearray(65535)
        self._rx = bytearray(packet.VNET_HLEN + packet.MAX_FRAME)
        self.ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ep.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self._sweep_at = self.now + 1.0
        if packet_sock is not None or sink is not None:
            self.add_port(packet_sock, networks=networks, mac=mac, sink=sink, vnet_hdr=vnet_hdr,
                          mtu=mtu, kernel_gateway=kernel_gateway)

    @property
    def link(self):
        """The first port's frame writer (the single-wire case)."""
        return self.ports[0].link

    # --- ports: may be called from any thread -----------------------------------------------

    def add_port(self, packet_sock=None, *, networks, mac=None, sink=None, vnet_hdr=None,
                 mtu=packet.MTU, kernel_gateway=False):
        """Attach a wire. `packet_sock` (now owned by the gateway) or, for tests, `sink`.

        `mac` defaults to an invented one (DEFAULT_MAC) on a veth we own, and to the
        interface's own address (getsockname() of the packet socket) when the kernel owns the
        gateway: the containers' ARP caches hold the bridge's MAC then."""
        if mac is None:
            mac = packet_sock.getsockname()[4] if kernel_gateway and packet_sock else DEFAULT_MAC
        if (packet_sock is None) == (sink is None):
            raise ValueError("give a packet socket, or a sink for frames (tests)")
        nets = [Network(n) for n in networks]
        if not nets:
            raise ValueError("a port needs at least one network")
        if packet_sock is not None:
            packet_sock.setblocking(False)
            if vnet_hdr is None:
                vnet_hdr = packet.vnet_enabled(packet_sock)
            sink = self._sender(packet_sock)
        port = Port(packet.Link(sink, mac, bool(vnet_hdr), mtu), packet_sock, nets,
                    bool(kernel_gateway))
        return self.call(self._add_port, port)

    def _add_port(self, port):
        self.ports.append(port)
        self.networks = [n for p in self.ports for n in p.networks]
        if port.psock is not None:
            self._port_fds[port.psock.fileno()] = port
            self.ep.register(port.psock.fileno(), select.EPOLLIN)
        return port

    def remove_port(self, port):
        """Detach a wire (a network was removed): its flows are reset, its socket closed."""
        return self.call(self._remove_port, port)

    def _remove_port(self, port):
        for flow in [f for f in self.tcp.values() if f.link is port.link]:
            flow.abort()
        for table in (self.udp, self.icmp):
            for key in [k for k, f in table.items() if f.link is port.link]:
                table.pop(key).close()
        if port in self.ports:
            self.ports.remove(port)
        self.networks = [n for p in self.ports for n in p.networks]
        if port.psock is not None:
            self._port_fds.pop(port.psock.fileno(), None)
            try:
                self.ep.unregister(port.psock.fileno())
            except OSError:
                pass
            port.psock.close()

    def call(self, fn, *args):
        """Run fn(*args) on the loop's thread (now, if the loop is not running or this is it)."""
        if self._thread is None or self._thread is threading.current_thread():
            return fn(*args)
        done, box = threading.Event(), {}

        def run():
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e
            finally:
                done.set()
        self._calls.append(run)
        os.write(self._wake_w, b"c")
        if not done.wait(30):
            raise TimeoutError("the gateway's loop did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # --- plumbing used by the flows --------------------------------------------------------

    def _sender(self, psock):
        send = psock.send

        def send_frame(view):
            try:
                send(view)
            except OSError as e:
                # ENOBUFS and friends: the frame is lost like on any wire; TCP retransmits.
                self.stats["frames_out_lost"] += 1
                self.log_once(f"psend-{e.errno}", f"packet socket send: {e}")
        return send_frame

    def log_once(self, key, message):
        if key not in self._logged:
            self._logged.add(key)
            self.log(message)

    def register(self, obj, events=tcp.EPOLL_FLAGS):
        self.ep.register(obj.fd, events)
        self._fds[obj.fd] = obj

    def unregister(self, obj):
        if self._fds.pop(obj.fd, None) is not None:
            try:
                self.ep.unregister(obj.fd)
            except OSError:
                pass

    def schedule(self, obj, when):
        self._tie += 1
        heapq.heappush(self._timers, (when, self._tie, obj))

    def want_ack(self, flow):
        self._acks.add(flow)

    def want_drop(self, flow):
        self._drops.add(flow)

    # The reorder stash: the one exception to "no buffer of our own", bounded for the whole
    # gateway (STASH_SLOTS segments, so at most STASH_SLOTS x 64 KiB) and for one batch of
    # frames only. Measured without it: a single reordering on the veth cost the container a
    # window of retransmissions, and some 1 GiB uploads ran at 0.6 Gbit/s instead of 8.

    def stash(self, flow, distance, seq, flags, data):
        if self.stashed >= STASH_SLOTS or distance > STASH_REACH or not data:
            return False
        self._stash.setdefault(flow, []).append((seq, flags, bytes(data)))
        self.stashed += 1
        self.stats["tcp_reordered"] += 1
        return True

    def unstash(self, flow):
        """Feed the flow the stashed segments that are now in order."""
        entries = self._stash.get(flow)
        while entries and flow.state == tcp.ESTABLISHED:
            ready = [e for e in entries if tcpwire.seq_diff(e[0], flow.rcv_nxt) <= 0]
            if not ready:
                return
            for e in ready:
                entries.remove(e)
                self.stashed -= 1
            for seq, flags, data in sorted(ready, key=lambda e: tcpwire.seq_diff(e[0], flow.rcv_nxt)):
                flow._on_data(seq, flags, memoryview(data))
        if not entries:
            self._stash.pop(flow, None)

    def _flush_stash(self):
        """End of a batch: what is still stashed was not mere reordering; drop it."""
        stash, self._stash = self._stash, {}
        self.stashed = 0
        for flow, entries in stash.items():
            self.stats["tcp_out_of_order"] += len(entries)
            if flow.state == tcp.ESTABLISHED:
                flow.send_ack(force=True)       # the duplicate ACK we held back

    def forget_tcp(self, flow):
        flow.state = tcp.CLOSED
        if flow.sock is not None:
            flow.close_host(abort=True)
        if self.tcp.get(flow.key) is flow:
            del self.tcp[flow.key]


    # --- frames in -------------------------------------------------------------------------

    def handle_frame(self, frame, trusted=False, port=None):
        """Process one Ethernet frame from the containers' side (of `port`, the first one by
        default). `trusted`: the kernel says the L4 checksum needs no verification
        (virtio_net_hdr flags). Never raises for bad input: malformed frames are counted and
        dropped."""
        self.stats["frames_in"] += 1
        try:
            self._handle_frame(frame if isinstance(frame, memoryview) else memoryview(frame),
                               trusted, port or self.ports[0])
        except ipv4.Fragment as e:
            self.stats["fragments_dropped"] += 1
            self.log_once("fragment", f"IPv4 fragments are refused (MTU {self.link.mtu} on both "
                          f"ends makes them unnecessary): {e}")
        except Malformed as e:
            self.stats["malformed"] += 1
            self.log_once(f"malformed-{type(e).__name__}-{str(e)[:20]}", f"dropped: {e}")

    def _handle_frame(self, frame, trusted, port):
        dst_mac, src_mac, etype = ethernet.parse_ethernet(frame)
        if etype == ETH_P_IP:
            if dst_mac != port.mac and not port.refresh_mac(dst_mac):
                self.stats["not_for_us"] += 1
                return
            ip = ipv4.parse_ipv4(frame[ETH_HLEN:])
            net = port.network_of(ip.src)
            if net is None:
                self.stats["foreign_source"] += 1
                return
            if ip.proto == PROTO_TCP:
                self._tcp_in(ip, src_mac, net, trusted, port)
            elif ip.proto == PROTO_UDP:
                self._udp_in(ip, src_mac, net, trusted, port)
            elif ip.proto == PROTO_ICMP:
                self._icmp_in(ip, src_mac, net, port)
            else:
                self.stats["ip_proto_ignored"] += 1
        elif etype == ETH_P_ARP:
            if not port.kernel_gateway:
                self._arp_in(frame[ETH_HLEN:], port)
        else:
            self.stats["ethertype_ignored"] += 1

    def _route(self, dst, port):
        return route(dst, self.networks, self.allow_host_loopback, self.host_alias,
                     port.kernel_gateway)

    def _arp_in(self, payload, port):
        req = ethernet.parse_arp(payload)
        op, sha, spa, _, tpa = req
        if op != ethernet.ARP_REQUEST:
            return
        if any(tpa == n.gateway for n in port.networks) and port.network_of(spa):
            port.link.send_frame(ethernet.arp_reply_frame(req, port.mac))
            self.stats["arp_replies"] += 1

    def _tcp_in(self, ip, mac, net, trusted, port):
        seg = tcpwire.parse_tcp(ip.payload, ip.src, ip.dst, verify=not trusted)
        key = (ip.src, seg.sport, ip.dst, seg.dport)
        flow = self.tcp.get(key)
        is_syn = seg.flags & (SYN | ACK | RST) == SYN
        if flow is not None and flow.state == tcp.TIME_WAIT and is_syn:
            self.forget_tcp(flow)           # a new connection reusing the ports
            flow = None
        if flow is not None:
            flow.on_segment(seg)
            return
        if not is_syn:
            # A segment of no flow we know: tell it so -- unless it is not ours at all (the
            # namespace's kernel talking with a container over the bridge we tap).
            if not seg.flags & RST and self._route(ip.dst, port)[0] != DROP:
                self.stats["tcp_unknown_flow"] += 1
                self._rst_for(ip, seg, mac, port)
            return
        action, where = self._route(ip.dst, port)
        if action != HOST:
            self.stats[f"tcp_{action}"] += 1
            if action == REFUSE:
                self.log_once(f"refuse-{where}", f"TCP to {addr_str(ip.dst)}:{seg.dport} "
                              f"refused: {where}")
                self._rst_for(ip, seg, mac, port)
            return
        if len(self.tcp) >= self.max_tcp_flows:
            self.log_once("tcp-max", f"{self.max_tcp_flows} TCP flows open: new ones are reset")
            self._rst_for(ip, seg, mac, port)
            return
        quote = bytes(ip.header) + bytes(ip.payload[:8])
        flow = tcp.TcpFlow(self, port.link, key, mac, net.gateway, (where, seg.dport), seg,
                           quote)
        self.tcp[key] = flow
        self.stats["tcp_flows"] += 1
        flow.connect()

    def _rst_for(self, ip, seg, mac, port):
        """RFC 9293's reset for a segment that has no connection."""
        if seg.flags & ACK:
            seq, ack, flags = seg.ack, 0, RST
        else:
            length = len(seg.data) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & 1 else 0)
            seq, ack, flags = 0, (seg.seq + length) & MASK, RST | ACK
        port.link.send_tcp(mac, ip.dst, ip.src, seg.dport, seg.sport, seq, ack, flags, 0)

    def _udp_in(self, ip, mac, net, trusted, port):
        sport, dport, data = udp.parse_udp(ip.payload, ip.src, ip.dst, verify=not trusted)
        action, where = self._route(ip.dst, port)
        if action != HOST:
            self.stats[f"udp_{action}"] += 1
            if action == REFUSE:
                # What a host without a listener says; the container's socket gets ECONNREFUSED.
                quote = bytes(ip.header) + bytes(ip.payload[:8])
                port.link.send_ip(mac, ip.dst, ip.src, PROTO_ICMP,
                                  ipv4.icmp_unreachable(UNREACH_PORT, quote))
            return
        key = (ip.src, sport)
        flow = self.udp.get(key)
        if flow is None:
            if len(self.udp) >= MAX_UDP_FLOWS:
                self.stats["udp_flow_limit"] += 1
                return
            try:
                flow = UdpFlow(self, port.link, key, mac, net.gateway)
            except OSError as e:
                self.log_once(f"udp-socket-{e.errno}", f"cannot open a UDP socket: {e}")
                return
            self.udp[key] = flow
            self.register(flow, select.EPOLLIN)
            self.stats["udp_flows"] += 1
        self.stats["udp_out"] += 1
        flow.send(where, dport, data, ip.dst)

    def _icmp_in(self, ip, mac, net, port):
        itype, code, rest, data = ipv4.parse_icmp(ip.payload)
        if itype != ICMP_ECHO_REQUEST:
            self.stats["icmp_ignored"] += 1
            return
        ours = ip.dst == self.host_alias or (not port.kernel_gateway and any(
            ip.dst == n.gateway for n in self.networks))
        if ours:
            # An address that is us: the reply is ours to give.
            port.link.send_ip(mac, ip.dst, ip.src, PROTO_ICMP,
                              ipv4.icmp_message(ICMP_ECHO_REPLY, 0, rest, data))
            self.stats["icmp_echo_gateway"] += 1
            return
        action, where = self._route(ip.dst, port)
        if action != HOST:
            self.stats[f"icmp_{action}"] += 1
            return
        ident = int.from_bytes(rest[:2], "big")
        key = (ip.src, ident)
        flow = self.icmp.get(key)
        if flow is None:
            if self._ping_error is not None:
                self.stats["icmp_unavailable"] += 1
                return
            try:
                flow = IcmpFlow(self, port.link, key, mac)
            except OSError as e:
                self._ping_error = e
                self.stats["icmp_unavailable"] += 1
                self.log(ping_unavailable_message(e))
                return
            self.icmp[key] = flow
            self.register(flow, select.EPOLLIN)
        flow.send(where, ipv4.icmp_message(ICMP_ECHO_REQUEST, 0, rest, data))

    # --- the loop --------------------------------------------------------------------------

    def _drain_packets(self, port):
        rx = self._rx
        view = memoryview(rx)
        vnet = port.link.vnet
        start = packet.VNET_HLEN if vnet else 0
        recv_into = port.psock.recv_into
        count = 0
        for _ in range(BATCH):
            try:
                n = recv_into(rx)
            except BlockingIOError:
                return
            except OSError as e:
                self.stats["packet_recv_error"] += 1
                self.log_once(f"precv-{e.errno}", f"packet socket recv: {e}")
                return
            # With the virtio header the kernel says whether the checksum is complete; without
            # it we cannot know, and a frame from the container's kernel usually carries a
            # partial one (CHECKSUM_PARTIAL: only the pseudo-header summed), so it is trusted:
            # the other end of a veth is a local kernel, not a wire that flips bits.
            trusted = packet.vnet_checksum_trusted(rx) if vnet else True
            self.handle_frame(view[start:n], trusted, port)
            count += 1
            if count % ACK_EVERY == 0 and self._acks:
                self._send_acks()       # keep the senders' windows moving during a long burst

    def flush(self):
        """Send the acknowledgments earned by the frames handled so far, run due timers."""
        if self.stashed:
            self._flush_stash()
        if self._acks:
            self._send_acks()
        if self._drops:
            drops, self._drops = self._drops, set()
            for flow in drops:
                flow.apply_drops()
        self._run_timers()

    def _send_acks(self):
        acks, self._acks = self._acks, set()
        for flow in acks:
            if flow.state == tcp.ESTABLISHED:
                flow.send_ack()

    def _run_timers(self):
        timers = self._timers
        now = self.now
        while timers and timers[0][0] <= now:
            when, _, obj = heapq.heappop(timers)
            if obj is self:
                self._sweep(now)
            elif obj.state != tcp.CLOSED and obj.deadline == when:
                obj.on_timer(now)
        if now >= self._sweep_at:
            self._sweep(now)

    def _sweep(self, now):
        """Forget idle UDP and ICMP flows."""
        self._sweep_at = now + min(self.udp_timeout / 2, 5.0)
        for table, timeout in ((self.udp, self.udp_timeout), (self.icmp, ICMP_TIMEOUT)):
            for key in [k for k, f in table.items() if now - f.last > timeout]:
                table.pop(key).close()
                self.stats["idle_flows_closed"] += 1

    def step(self, timeout):
        """One round of the loop: wait up to `timeout` seconds for events, handle them.
        Returns False once stop() was called."""
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        timeout = max(0.0, min(timeout, self._sweep_at - time.monotonic()))
        events = self.ep.poll(timeout, 512)
        self.now = time.monotonic()
        for fd, ev in events:
            obj = self._fds.get(fd)
            try:
                if obj is not None:
                    obj.on_host_event(ev)
                elif fd in self._port_fds:
                    self._drain_packets(self._port_fds[fd])
                elif fd == self._wake_r:
                    self._wake()
            except Exception as e:
                self._internal_error(e, obj)
        try:
            self.flush()
        except Exception as e:
            self._internal_error(e, None)
        return not self._stopping

    def _internal_error(self, err, obj):
        """A bug of ours must not take every container's network down with the loop: the
        flow involved is reset, the error counted and logged (with its traceback, once)."""
        import traceback
        self.stats["internal_errors"] += 1
        self.log_once(f"bug-{type(err).__name__}", "tcpip: internal error (flow reset): "
                      + "".join(traceback.format_exception(err)))
        if isinstance(obj, tcp.TcpFlow):
            try:
                obj.abort()
            except Exception:
                self.forget_tcp(obj)

    def _wake(self):
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            data = b""
        if b"x" in data:
            self._stopping = True
        while self._calls:
            self._calls.popleft()()

    def run(self):
        """The loop, until stop() is called (from any thread). Closes every flow on the way out."""
        self._thread = threading.current_thread()
        try:
            while self.step(5.0):
                pass
        finally:
            self.close()
            self._thread = None         # call() runs directly from now on

    def stop(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def drop_address(self, addr):
        """Reset every flow of a container address (the container left the network)."""
        return self.call(self._drop_address, addr_bytes(addr) if isinstance(addr, str) else addr)

    def _drop_address(self, addr):
        for flow in [f for k, f in self.tcp.items() if k[0] == addr]:
            flow.abort()
        for table in (self.udp, self.icmp):
            for key in [k for k in table if k[0] == addr]:
                table.pop(key).close()

    def packet_drops(self):
        """Frames the kernel dropped because a packet socket's queue was full
        (PACKET_STATISTICS; reading it resets the kernel's counters)."""
        for port in self.ports:
            if port.psock is not None:
                try:
                    _, drops = struct.unpack("II", port.psock.getsockopt(
                        packet.SOL_PACKET, packet.PACKET_STATISTICS, 8))
                    self.stats["packet_drops"] += drops
                except OSError:
                    pass
        return self.stats["packet_drops"]

    def snapshot(self):
        """Flows by state, ports and counters (for /info and tests); from any thread."""
        return self.call(self._snapshot)

    def _snapshot(self):
        states = collections.Counter(f.state for f in self.tcp.values())
        self.packet_drops()
        return {"tcp": dict(states), "udp": len(self.udp), "icmp": len(self.icmp),
                "ports": [{"networks": [f"{addr_str(n.gateway)}/{n.plen}" for n in p.networks],
                           "vnet_hdr": p.link.vnet, "kernel_gateway": p.kernel_gateway}
                          for p in self.ports],
                "peek_offset": self.peek_off, "stats": dict(self.stats)}

    def close(self):
        for flow in list(self.tcp.values()):
            flow.abort()
        for table in (self.udp, self.icmp):
            for f in table.values():
                f.close()
            table.clear()
        for port in list(self.ports):
            if port.psock is not None:
                port.psock.close()
        self.ports.clear()
        self._port_fds.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.ep.close()


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
