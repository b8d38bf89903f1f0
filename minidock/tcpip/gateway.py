"""The gateway: one event loop between the containers' wire and the host's sockets.

A `Gateway` owns an AF_PACKET socket (packet.py) on the veth that stands for the containers'
default gateway, and answers everything that arrives on it:

    ARP "who has <gateway>?"        -> "<gateway> is at <our MAC>"
    ICMP echo to the gateway         -> an echo reply (the gateway is us)
    ICMP echo elsewhere              -> an IcmpFlow (icmpflow.py): an unprivileged ICMP
                                        socket (SOCK_DGRAM, IPPROTO_ICMP) when
                                        net.ipv4.ping_group_range admits our group; if
                                        not, one log line says so and the packet is dropped
                                        (never a faked reply)
    TCP                              -> a TcpFlow (tcp.py): a host socket per connection
    UDP                              -> a UdpFlow (udpflow.py): a host socket per container
                                        address/port
    anything else (IPv6, fragments, broken packets)  -> counted in `stats` and dropped

Destinations (`route()`, policy.py): the host sees every connection as coming from the
daemon's own address -- the host sockets are ordinary unbound sockets of the daemon's process,
like slirp4netns. A container reaching the *gateway* address reaches the host's 127.0.0.1 only when
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
import heapq
import logging
import os
import resource
import select
import struct
import threading
import time

from . import ethernet, packet, tcp
from .demux import FrameDemux
from .ipv4 import addr_bytes, addr_str
from .policy import DROP, HOST, HOST_LOOPBACK, REFUSE, Network, route  # noqa: F401 (re-exported)

DEFAULT_MAC = ethernet.mac_bytes("02:42:ac:11:ff:fe")   # locally administered, not a real NIC's
UDP_TIMEOUT = 60.0
ICMP_TIMEOUT = 20.0
TCP_IDLE_TIMEOUT = 7200.0
TCP_TIME_WAIT = 60.0
MAX_TCP_FLOWS = 16384
BATCH = 256                 # frames read per wake-up before the host sockets get a turn
ACK_EVERY = 16              # acknowledgments go out at least this often within a batch

log = logging.getLogger("minidock.tcpip")


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


class Gateway(FrameDemux):
    """The event loop, its ports, timers and flow tables. Taking frames apart (and the reorder
    stash) is the FrameDemux half, demux.py; the flows are tcp.py, udpflow.py, icmpflow.py."""

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

    def forget_tcp(self, flow):
        flow.state = tcp.CLOSED
        if flow.sock is not None:
            flow.close_host(abort=True)
        if self.tcp.get(flow.key) is flow:
            del self.tcp[flow.key]

    def _route(self, dst, port):
        """route() (policy.py) for a packet that came in on `port`."""
        return route(dst, self.networks, self.allow_host_loopback, self.host_alias,
                     port.kernel_gateway)

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
        """Reset every flow of a container address (the container left the network).

        Most containers that stop never had a flow: a glance at the tables' keys first spares
        them the round trip to the loop's thread (a wake-up and a wait, ~0.1 ms, milliseconds
        when the CPUs are busy) on their exit and their removal. `list(dict)` copies the keys
        in C without releasing the GIL, so the glance is safe against the loop changing the
        tables meanwhile; a flow the loop makes after it is a new one, not the container's."""
        raw = addr_bytes(addr) if isinstance(addr, str) else addr
        if not any(key[0] == raw for table in (self.tcp, self.udp, self.icmp) for key in list(table)):
            return None
        return self.call(self._drop_address, raw)

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
