"""Frames in: how the gateway takes apart what the containers send, and the reorder stash.

`FrameDemux` is the half of `Gateway` (gateway.py) that reads the containers' wire; Gateway
inherits it. One Ethernet frame at a time (`handle_frame`):

    Ethernet II  -> IPv4 (ipv4.py; fragments and broken headers are counted and dropped)
                 -> TCP   an existing TcpFlow gets the segment; a SYN opens one (tcp.py) if
                          `route()` says HOST; anything else gets RFC 9293's reset (`_rst_for`)
                 -> UDP   a UdpFlow per container (address, port) (udpflow.py)
                 -> ICMP  echo to the gateway is answered here; elsewhere an IcmpFlow
                          (icmpflow.py)
             -> ARP  "who has <gateway>?" is answered with our MAC (unless the kernel owns the
                     gateway address: `Port.kernel_gateway`)

The reorder stash is here too: the one exception to "no buffer of our own" (tcp.py), bounded
for the whole gateway (STASH_SLOTS segments, so at most STASH_SLOTS x 64 KiB) and held for one
batch of frames only. Measured without it: a single reordering on the veth cost the container a
window of retransmissions, and some 1 GiB uploads ran at 0.6 Gbit/s instead of 8.

Attributes of the Gateway this part uses: `ports`, `networks`, `host_alias`, `max_tcp_flows`,
the flow tables `tcp`, `udp`, `icmp`, `stats`, `log`, `log_once`, `register`, `forget_tcp`,
`_route` (the policy with the port's wiring), `_ping_error` (set once ping sockets are refused),
and its own `_stash` and `stashed` (created in Gateway.__init__).
"""

import select

from . import ethernet, ipv4, tcp, tcpwire, udp
from .ethernet import ETH_HLEN, ETH_P_ARP, ETH_P_IP, Malformed
from .icmpflow import IcmpFlow, ping_unavailable_message
from .ipv4 import (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
                   UNREACH_PORT, addr_str)
from .policy import DROP, HOST, REFUSE
from .tcpwire import ACK, RST, SYN, MASK
from .udpflow import UdpFlow

MAX_UDP_FLOWS = 4096
STASH_SLOTS = 8             # reordered segments held per batch, for all flows together
STASH_REACH = 8 * 65536     # how far ahead of the expected byte a segment may be to be held


class FrameDemux:
    """The frames-in half of Gateway (see the module docstring for what it uses)."""

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

    # --- the reorder stash ----------------------------------------------------------------

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
