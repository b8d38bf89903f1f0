"""TCP flows: a container's connection terminated here and re-originated as a host socket.

The container's kernel believes it talks TCP with the destination; it talks with this module,
which holds, per connection, a host socket connected to the real destination and the handful
of sequence numbers needed to translate between the two. The model is passt's tcp.c, on a
lossless local link: **no buffer of our own**.

  container -> host   A segment's payload goes straight into the host socket with one non-
                      blocking send(); we acknowledge exactly what the socket took. The window we
                      advertise is the free space of the host socket's send buffer (SO_MEMINFO:
                      sndbuf - wmem_queued, less 1/16 for skb overhead), so a well-behaved
                      container never sends more than the socket can take. If it still does,
                      the rest is not acknowledged (the container retransmits it) and we wait
                      for EPOLLOUT to reopen the window; a window that got small is re-read on a
                      timer (the kernel raises EPOLLOUT only after a send() failed).
  host -> container   Data stays in the host socket's receive queue until the container
                      acknowledges it. We MSG_PEEK it into the outgoing frame, advancing the
                      socket's SO_PEEK_OFF (Linux >= 6.9; older kernels: a discard buffer in
                      front of the frame soaks up the already-sent prefix); when an ACK arrives
                      we drop the acknowledged bytes with recv(MSG_TRUNC), which copies nothing.
                      A retransmission is a rewind: SO_PEEK_OFF back to 0, send again from the
                      oldest unacknowledged byte (go-back-N: cheap on a local link).

Per connection that is a socket and a few integers (RSS does not grow with traffic, only
the kernel's socket buffers do: fixed at 4 MiB each way, see SNDBUF/RCVBUF in tcpstate.py).
The one exception is the gateway's reorder stash (demux.py): at most 8 segments for all flows
together, held for one batch of frames, because veths reorder frames when the sender hops
between CPUs.

The life of a flow, in the states below:

  CONNECTING    a SYN arrived; the host connect() is in progress. The container gets its SYN-ACK
                only when the connect succeeds, so what it sees is what the destination said:
                refused -> RST; unreachable or timed out -> ICMP destination unreachable (the
                container's connect() then fails with ECONNREFUSED / EHOSTUNREACH /
                ENETUNREACH as it would behind a real router). Retransmitted SYNs are ignored.
  SYN_RCVD      SYN-ACK sent with our MSS (MTU - 40) and window scale; retransmitted on timeout.
  ESTABLISHED   data both ways. In-order only: a segment starting after the next expected byte
                is dropped (unless the reorder stash takes it) and answered with a duplicate
                ACK; three duplicate ACKs from the
                container, or the retransmission timeout, rewind our side. FIN from the container
                -> shutdown(SHUT_WR) of the host socket (half-close); EOF from the host -> our FIN
                after the last byte. RST either way is passed on (to the host as an abortive
                close: SO_LINGER 0). The flow ends when both FINs are acknowledged.
  TIME_WAIT     we sent the first FIN: the flow (without socket) lingers to re-acknowledge a
                retransmitted FIN, then is forgotten. A new SYN on the same ports replaces it.

Idle flows: an ESTABLISHED flow that sees no segment for `idle_timeout` gets keepalive probes
(an ACK for the byte before snd_una, which the container's kernel must answer); two unanswered
probes and the flow is reset both ways -- this is what frees the host socket of a container that
vanished without a RST.

The flow is one class in three modules: this one (the host socket's life: connect, its epoll
events, timers, endings), tcpin.py (segments from the container) and tcpout.py (host data,
windows and acknowledgments to the container); tcpstate.py holds the names they share.
"""

import errno
import os
import select
import socket
import struct
import time

from .ipv4 import PROTO_ICMP, UNREACH_ADMIN, UNREACH_HOST, UNREACH_NET, icmp_unreachable
from .tcpin import SegmentsIn
from .tcpout import HostDataOut
from .tcpstate import (  # noqa: F401 (the names other modules read as tcp.X)
    CLOSED, CONNECTING, DEFAULT_MSS, EPOLL_FLAGS, ESTABLISHED, MAX_RETRIES, MAX_WINDOW,
    OUR_WSCALE, RCVBUF, RTO_MAX, RTO_MIN, SNDBUF, SO_MEMINFO, SO_PEEK_OFF, SYN_RCVD,
    SYNACK_RETRIES, TIME_WAIT, WINDOW_LOW, WINDOW_RECHECK)
from .tcpwire import ACK, SYN, MASK, seq_diff, syn_options

_ERRNO_TO_ICMP = {errno.ENETUNREACH: UNREACH_NET, errno.EHOSTUNREACH: UNREACH_HOST,
                  errno.ETIMEDOUT: UNREACH_HOST, errno.EACCES: UNREACH_ADMIN,
                  errno.EPERM: UNREACH_ADMIN, errno.EADDRNOTAVAIL: UNREACH_HOST}


def peek_offset_supported():
    """Whether this kernel has SO_PEEK_OFF for TCP sockets (Linux 6.9+)."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        return True
    except OSError:
        return False
    finally:
        s.close()


class TcpFlow(SegmentsIn, HostDataOut):
    """One container connection and its host socket. This module holds the host socket's life
    (connect, events, timers, endings); segments in are SegmentsIn (tcpin.py), data and
    acknowledgments out are HostDataOut (tcpout.py)."""
    __slots__ = ("gw", "link", "key", "mac", "gw_ip", "dest", "state", "sock", "fd",
                 "irs", "rcv_nxt", "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "c_wscale",
                 "our_wscale", "mss", "fin_rcvd", "fin_sent", "fin_seq", "fin_acked",
                 "first_fin_ours", "rdhup", "host_pending", "host_blocked", "dupacks",
                 "rto", "retries", "rto_at", "win_at", "win_delay", "idle_at", "probes",
                 "deadline", "last_seen", "syn_quote", "adv_right", "ack_sent", "peekoff",
                 "host_err", "drop_pending")

    def __init__(self, gw, link, key, mac, gw_ip, dest, syn, syn_quote):
        self.gw = gw
        self.link = link                # the frame writer of the wire the container is on
        self.key = key                  # (container ip, container port, dst ip, dst port)
        self.mac = mac                  # container's MAC
        self.gw_ip = gw_ip              # the gateway address of the container's network
        self.dest = dest                # (host address, port) we connect to
        self.state = CONNECTING
        self.sock = None
        self.fd = -1
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & MASK
        self.iss = int.from_bytes(os.urandom(4), "big")
        self.snd_una = self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.snd_wnd = syn.window       # unscaled in a SYN
        if syn.wscale is not None:      # both sides must offer it, or neither scales
            self.c_wscale, self.our_wscale = syn.wscale, OUR_WSCALE
        else:
            self.c_wscale = self.our_wscale = 0
        self.mss = min(syn.mss or DEFAULT_MSS, link.mtu - 40)
        self.fin_rcvd = self.fin_sent = self.fin_acked = self.first_fin_ours = False
        self.fin_seq = None
        self.rdhup = self.host_pending = self.host_blocked = False
        self.dupacks = 0
        self.rto = RTO_MIN
        self.retries = 0
        self.rto_at = self.win_at = self.idle_at = None
        self.win_delay = WINDOW_RECHECK
        self.probes = 0
        self.deadline = None
        self.last_seen = time.monotonic()
        self.syn_quote = syn_quote      # the SYN's IP header + 8 bytes, for ICMP errors
        self.adv_right = self.rcv_nxt
        self.ack_sent = None
        self.peekoff = gw.peek_off
        self.host_err = 0               # the host side was reset: pass on its data, then RST
        self.drop_pending = 0           # acknowledged bytes still in the host socket

    def __repr__(self):
        return f"TcpFlow({self.key} {self.state})"

    # --- host side: connect ----------------------------------------------------------------

    def connect(self):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
        except OSError as e:            # EMFILE/ENFILE: refuse this connection, keep the rest
            self.gw.log_once(f"tcp-socket-{e.errno}", f"cannot open a host socket: {e}")
            self._reset_container(self.rcv_nxt, synack=True)
            self.gw.forget_tcp(self)
            return
        # Segments arrive already sized by the container's stack: don't delay them again.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        # Before connect(): the window scale the host kernel offers depends on it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock, self.fd = sock, sock.fileno()
        err = sock.connect_ex(self.dest)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        self.gw.register(self)          # EPOLLOUT reports the end of the connect

    def _connect_failed(self, err):
        code = _ERRNO_TO_ICMP.get(err)
        if code is None:                # ECONNREFUSED and anything unexpected: a reset
            self._reset_container(self.rcv_nxt, synack=True)
        else:
            self.link.send_ip(self.mac, self.gw_ip, self.key[0], PROTO_ICMP,
                              icmp_unreachable(code, self.syn_quote))
        self.gw.stats["tcp_connect_failed"] += 1
        self.close_host(abort=False)
        self.gw.forget_tcp(self)

    def _connected(self):
        if self.peekoff:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        self.state = SYN_RCVD
        self._send_synack()
        self._arm_rto()

    def _send_synack(self):
        mss = self.link.mtu - 40    # what we can receive, whatever the container can
        opts = syn_options(mss, self.our_wscale) if self.our_wscale else syn_options(mss, 0)[:4]
        win = min(self._free_space(), 65535)      # the window of a SYN is never scaled
        self.adv_right = (self.rcv_nxt + win) & MASK
        self._out(SYN | ACK, self.iss, win, options=opts)

    # --- host socket events ----------------------------------------------------------------

    def on_host_event(self, ev):
        if self.state == CONNECTING:
            if ev & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err in (errno.ECONNRESET, errno.EPIPE):
                    # Connected, then reset before we looked: the container gets the
                    # connection, whatever data came before the reset, and then the reset.
                    self.host_err = err
                    self._connected()
                elif err:
                    self._connect_failed(err)
                else:
                    self._connected()
            return
        if self.sock is None:
            return
        if ev & select.EPOLLERR:
            # A reset from the host: the data it sent before stays readable in the socket and
            # goes to the container first (push() resets the container when it runs dry).
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.host_err = err
                self.host_pending = True
        if ev & (select.EPOLLRDHUP | select.EPOLLHUP):
            self.rdhup = True
        if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
            self.host_pending = True
            if self.state == ESTABLISHED:
                self.push()
        if ev & select.EPOLLOUT and self.host_blocked and self.sock is not None:
            self.host_blocked = False
            self.send_ack(force=True)   # the window update the container waits for

    # --- timers ----------------------------------------------------------------------------

    def _arm_rto(self):
        self.rto_at = self.gw.now + self.rto
        self._schedule()

    def _arm_idle(self):
        self.idle_at = self.last_seen + self.gw.tcp_idle_timeout
        self._schedule()

    def _schedule(self):
        when = min(t for t in (self.rto_at, self.win_at, self.idle_at) if t is not None) \
            if (self.rto_at or self.win_at or self.idle_at) else None
        if when is not None and when != self.deadline:
            self.deadline = when
            self.gw.schedule(self, when)

    def on_timer(self, now):
        if self.state == TIME_WAIT:
            self.gw.forget_tcp(self)
            return
        if self.rto_at is not None and now >= self.rto_at:
            self.rto_at = None
            self.retries += 1
            limit = SYNACK_RETRIES if self.state == SYN_RCVD else MAX_RETRIES
            if self.retries > limit:
                self.gw.stats["tcp_gave_up"] += 1
                self._reset_container(self.rcv_nxt)
                self.close_host(abort=True)
                self.gw.forget_tcp(self)
                return
            self.rto = min(self.rto * 2, RTO_MAX)
            if self.state == SYN_RCVD:
                self._send_synack()
                self._arm_rto()
            elif self.snd_nxt != self.snd_una:
                self._rewind()
            elif self.snd_wnd == 0 and self.sock is not None:
                self._out(ACK, (self.snd_una - 1) & MASK, self._window_field())  # window probe
                self._arm_rto()
        if self.win_at is not None and now >= self.win_at:
            self.win_at = None
            before = self.adv_right
            self._window_field()
            if seq_diff(self.adv_right, before) > 0:
                self.send_ack(force=True)
        if self.idle_at is not None and now >= self.idle_at:
            self.idle_at = None
            if self.state == ESTABLISHED:
                if now - self.last_seen < self.gw.tcp_idle_timeout:
                    self._arm_idle()
                elif self.probes >= 2:
                    self.gw.stats["tcp_idle_reset"] += 1
                    self._reset_container(self.rcv_nxt)
                    self.close_host(abort=True)
                    self.gw.forget_tcp(self)
                    return
                else:
                    self.probes += 1
                    self._out(ACK, (self.snd_una - 1) & MASK, self._window_field())
                    self.idle_at = now + min(self.gw.tcp_idle_timeout, 10.0)
        self.deadline = None
        self._schedule()

    # --- endings ---------------------------------------------------------------------------

    def _host_reset(self):
        """The host side failed (ECONNRESET, EPIPE...): reset the container's side."""
        self.gw.stats["tcp_rst_from_host"] += 1
        self._reset_container(self.rcv_nxt)
        self.close_host(abort=True)
        self.gw.forget_tcp(self)

    def _finish(self):
        """Both FINs acknowledged."""
        self.close_host(abort=False)
        if self.first_fin_ours:
            self.state = TIME_WAIT
            self.rto_at = self.win_at = self.idle_at = None
            self.deadline = self.gw.now + self.gw.tcp_time_wait
            self.gw.schedule(self, self.deadline)
        else:
            self.gw.forget_tcp(self)

    def close_host(self, abort):
        if self.sock is None:
            return
        self.gw.unregister(self)
        if abort:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.sock.close()
        self.sock = None
        self.fd = -1

    def abort(self):
        """Reset both sides (the daemon forgets a container, or the gateway stops)."""
        if self.state in (ESTABLISHED, SYN_RCVD):
            self._reset_container(self.rcv_nxt)
        self.close_host(abort=True)
        self.gw.forget_tcp(self)
