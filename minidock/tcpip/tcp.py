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
the kernel's socket buffers do: fixed at 4 MiB each way, see SNDBUF/RCVBUF). The one exception
is the gateway's reorder stash (demux.py): at most 8 segments for all flows together, held
for one batch of frames, because veths reorder frames when the sender hops between CPUs.

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
"""

import errno
import os
import select
import socket
import struct
import time

from .ipv4 import PROTO_ICMP, UNREACH_ADMIN, UNREACH_HOST, UNREACH_NET, icmp_unreachable
from .tcpwire import ACK, FIN, PSH, RST, SYN, MASK, seq_diff, syn_options

CONNECTING, SYN_RCVD, ESTABLISHED, TIME_WAIT, CLOSED = (
    "CONNECTING", "SYN_RCVD", "ESTABLISHED", "TIME_WAIT", "CLOSED")

SO_PEEK_OFF = 42
# At most this much in flight from one container connection: the packet socket's receive
# buffer (2 x net.core.rmem_max, 8 MiB by default) must absorb a whole window while the loop is
# busy, or frames are dropped before we see them.
MAX_WINDOW = 4 << 20
SO_MEMINFO = 55             # u32[9]: rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc, wmem_queued...
OUR_WSCALE = 7              # windows up to 8 MiB
DEFAULT_MSS = 536           # RFC 9293 when the SYN carries none
RTO_MIN = 0.2
RTO_MAX = 30.0
MAX_RETRIES = 10
SYNACK_RETRIES = 5
WINDOW_LOW = 256 << 10      # below this, the window we advertised is re-checked on a timer
WINDOW_RECHECK = 0.01       # first delay to re-read the send buffer after advertising a small window
# Host sockets are watched edge-triggered: their data stays queued after we have sent it on,
# so a level-triggered "readable" would fire forever. EPOLLRDHUP tells EOF from "no news".
EPOLL_FLAGS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET

_ERRNO_TO_ICMP = {errno.ENETUNREACH: UNREACH_NET, errno.EHOSTUNREACH: UNREACH_HOST,
                  errno.ETIMEDOUT: UNREACH_HOST, errno.EACCES: UNREACH_ADMIN,
                  errno.EPERM: UNREACH_ADMIN, errno.EADDRNOTAVAIL: UNREACH_HOST}

# The host socket's send buffer is fixed (SO_SNDBUF; the kernel doubles it and caps it at
# net.core.wmem_max). The window we advertise mirrors its free space, and an autotuned buffer
# starts at 16 KiB: uploads measured 0.7 Gbit/s that way, 4 Gbit/s with 4 MiB. The memory is
# the kernel's, used only while the host reader is slower than the container.
SNDBUF = 4 << 20
# Same for the receive side. Data leaves it only when the container acknowledges it, and the
# kernel autotunes a receive buffer by what the application *reads* -- which MSG_PEEK is not:
# downloads measured 2.5 Gbit/s autotuned, 6.7 Gbit/s fixed at 4 MiB. (Autotuning could grow
# it to tcp_rmem's maximum, 32 MiB here; fixed, it is smaller.)
RCVBUF = 4 << 20
_DISCARD = None             # the shared buffer recv(MSG_TRUNC) and the peek fallback write into


def _discard_buffer():
    global _DISCARD
    if _DISCARD is None:
        _DISCARD = bytearray(8 << 20)
    return _DISCARD


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


class TcpFlow:
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

    # --- container side: segments ----------------------------------------------------------

    def on_segment(self, seg):
        now = self.gw.now
        self.last_seen = now
        self.probes = 0
        f = seg.flags
        if f & RST:
            # Accept a RST only inside what we expect (RFC 5961's spirit, loosely): blind
            # resets from nowhere do not kill flows.
            if self.state in (CONNECTING, SYN_RCVD) or abs(seq_diff(seg.seq, self.rcv_nxt)) <= (
                    65535 << self.our_wscale):
                self.gw.stats["tcp_rst_from_container"] += 1
                self.close_host(abort=True)
                self.gw.forget_tcp(self)
            return
        if self.state == CONNECTING:
            return                      # a retransmitted SYN: the host has not answered yet
        if self.state == TIME_WAIT:
            if f & FIN:
                self._out(ACK, self.snd_nxt, 0)
            return
        if self.state == SYN_RCVD:
            if f & SYN and not f & ACK:
                self._send_synack()
                return
            if not (f & ACK) or seg.ack != (self.iss + 1) & MASK:
                return
            self.state = ESTABLISHED
            self.snd_una = seg.ack
            self.rto_at = None
            self.retries = 0
            self.rto = RTO_MIN
            self.snd_wnd = seg.window << self.c_wscale
            self._arm_idle()
            self.host_pending = True    # data may have arrived before the handshake ended
        elif f & SYN:
            self.send_ack(force=True)   # a SYN on an established flow: tell it where we are
            return
        if not f & ACK:
            return
        self._on_ack(seg)
        if self.state != ESTABLISHED:
            return
        if seg.data or f & FIN:
            self._on_data(seg.seq, seg.flags, seg.data)
        if self.state == ESTABLISHED and self.host_pending:
            self.push()

    def _on_ack(self, seg):
        ack = seg.ack
        win = seg.window << self.c_wscale
        advanced = seq_diff(ack, self.snd_una)
        # Up to snd_max, not snd_nxt: after a rewind, an ACK for the first transmission may
        # still arrive, and it is as good as any.
        if advanced > 0 and seq_diff(ack, self.snd_max) <= 0:
            data = advanced
            if self.fin_seq is not None and ack == (self.fin_seq + 1) & MASK:
                data -= 1
                self.fin_acked = self.fin_sent = True
            if data > 0:
                # Dropped from the host socket once per batch of frames (apply_drops), not
                # once per ACK: a syscall saved for nearly every frame of a download.
                self.drop_pending += data
                self.gw.want_drop(self)
            self.snd_una = ack
            if seq_diff(ack, self.snd_nxt) > 0:
                # Past what we have (re)sent since a rewind: the peek position must jump there
                # too, which dropping now does (SO_PEEK_OFF clamps at the new head).
                self.snd_nxt = ack
                self.apply_drops()
            self.dupacks = 0
            self.retries = 0
            self.rto = RTO_MIN
            self.rto_at = None
            if self.snd_nxt != self.snd_una:
                self._arm_rto()
            if win > self.snd_wnd or advanced:
                self.host_pending = self.host_pending or self.sock is not None
            self.snd_wnd = win
            if self.fin_acked and self.fin_rcvd:
                self._finish()
            return
        if (advanced == 0 and not seg.data and not seg.flags & FIN
                and self.snd_nxt != self.snd_una and win == self.snd_wnd):
            self.dupacks += 1
            if self.dupacks == 3:       # fast retransmit: the container is missing a segment
                self.gw.stats["tcp_fast_retransmit"] += 1
                self._rewind()
        if win > self.snd_wnd:
            self.host_pending = self.host_pending or self.sock is not None
        self.snd_wnd = win

    def _on_data(self, seq, flags, data):
        d = seq_diff(seq, self.rcv_nxt)
        if d > 0:
            # Out of order. A segment a few positions early is usually just reordered (two
            # CPUs of the container transmitting for one socket): the gateway's small shared
            # stash may hold it until the end of this batch of frames. Otherwise we keep
            # nothing: the container will resend; a duplicate ACK tells it where we are.
            if not self.gw.stash(self, d, seq, flags, data):
                self.gw.stats["tcp_out_of_order"] += 1
                self.send_ack(force=True)
            return
        if d < 0:
            skip = -d
            if skip >= len(data) + (1 if flags & FIN else 0):
                self.send_ack(force=True)       # entirely old: a retransmission we already have
                return
            data = data[skip:]
        if data and not self.fin_rcvd:
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self._host_reset()
                return
            self.rcv_nxt = (self.rcv_nxt + n) & MASK
            if n < len(data):
                # The host socket is full: acknowledge what it took, advertise what is left
                # (nothing), and reopen the window on EPOLLOUT.
                self.host_blocked = True
                self.gw.stats["tcp_host_blocked"] += 1
                self.send_ack(force=True)
                return
        if flags & FIN and not self.fin_rcvd:
            self.rcv_nxt = (self.rcv_nxt + 1) & MASK
            self.fin_rcvd = True
            try:
                self.sock.shutdown(socket.SHUT_WR)      # half-close: the host reads EOF
            except OSError:
                pass
            self.send_ack(force=True)
            if self.fin_acked:
                self._finish()
            return
        self.gw.want_ack(self)
        if self.gw.stashed:
            self.gw.unstash(self)

    # --- host -> container -----------------------------------------------------------------

    def push(self):
        """Send as much queued host data as the container's window allows."""
        if self.state != ESTABLISHED or self.fin_sent or self.sock is None:
            self.host_pending = False
            return
        link = self.link
        view = link.payload_view()
        win = None
        while True:
            inflight = seq_diff(self.snd_nxt, self.snd_una)
            room = self.snd_wnd - inflight
            if room <= 0:
                if self.snd_wnd == 0 and inflight == 0:
                    self._arm_rto()     # persist: probe the zero window on expiry
                self.host_pending = True
                return
            # Without the virtio header a segment must fit the container's MSS; with it, the
            # kernel cuts bigger ones to gso_size = MSS.
            n = min(room, link.max_payload if link.vnet else self.mss)
            try:
                got = self._peek(view, n, inflight)
            except BlockingIOError:
                got = 0
            except OSError:
                self._host_reset()
                return
            if got == 0:
                self.host_pending = False
                if self.host_err:
                    self._host_reset()
                elif self.rdhup:
                    self._send_fin()
                return
            if win is None:             # once per push: rcv_nxt does not move in here
                win = self._window_field()
            link.send_tcp(self.mac, self.key[2], self.key[0], self.key[3], self.key[1],
                          self.snd_nxt, self.rcv_nxt, ACK | PSH if got < n else ACK, win, got,
                          gso_size=self.mss)
            self.ack_sent = self.rcv_nxt
            self.snd_nxt = (self.snd_nxt + got) & MASK
            if seq_diff(self.snd_nxt, self.snd_max) > 0:
                self.snd_max = self.snd_nxt
            if self.rto_at is None:
                self._arm_rto()
            if got < n and not self.rdhup:
                self.host_pending = False
                return

    def _peek(self, view, n, inflight):
        """Copy up to n not-yet-sent bytes from the host socket into view; 0 at EOF/no news."""
        flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
        if self.peekoff:
            got = self.sock.recv_into(view, n, flags)
            if got == 0:
                self.rdhup = True       # recv returns 0 only at the end of the stream
            return got
        # No SO_PEEK_OFF: peek the already-sent prefix (and the acknowledged bytes not dropped
        # yet) into a scratch buffer in front.
        skip = inflight + self.drop_pending
        discard = _discard_buffer()
        if skip > len(discard):
            return 0
        nbytes, *_ = self.sock.recvmsg_into([memoryview(discard)[:skip], view[:n]], 0, flags)
        if nbytes == 0:
            self.rdhup = True
        return max(0, nbytes - skip)

    def apply_drops(self):
        if self.drop_pending and self.sock is not None:
            # SO_PEEK_OFF moves back by what is dropped (never below 0): peeking goes on
            # from the same byte.
            self._drop_acked(self.drop_pending)
        self.drop_pending = 0

    def _drop_acked(self, count):
        """The container has these bytes: remove them from the host socket without copying."""
        discard = _discard_buffer()
        while count > 0:
            chunk = min(count, len(discard))
            try:
                got = self.sock.recv_into(discard, chunk, socket.MSG_TRUNC | socket.MSG_DONTWAIT)
            except OSError:
                return
            if got <= 0:
                return
            count -= got

    def _send_fin(self):
        self.fin_seq = self.snd_nxt
        self.fin_sent = True
        if not self.fin_rcvd:
            self.first_fin_ours = True
        self._out(FIN | ACK, self.snd_nxt, self._window_field())
        self.snd_nxt = (self.snd_nxt + 1) & MASK
        if seq_diff(self.snd_nxt, self.snd_max) > 0:
            self.snd_max = self.snd_nxt
        self._arm_rto()

    def _rewind(self):
        """Go back to the oldest unacknowledged byte (retransmission)."""
        self.apply_drops()              # the socket must start at snd_una before SO_PEEK_OFF 0
        self.snd_nxt = self.snd_una
        if self.fin_sent and not self.fin_acked:
            self.fin_sent = False
        if self.peekoff and self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        self.gw.stats["tcp_retransmit"] += 1
        self.host_pending = True
        self.push()

    # --- acknowledgments and windows -------------------------------------------------------

    def _free_space(self):
        if self.sock is None:
            return 0
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)
        except OSError:
            return 0
        sndbuf, _fwd, queued = struct.unpack_from("III", info, 12)  # SK_MEMINFO_SNDBUF..QUEUED
        # Queued memory counts skb overhead (~2% on loopback) and send() refuses data by that
        # measure, so the payload that still fits is a little less than the difference.
        free = sndbuf - queued
        return min(free - (free >> 4), MAX_WINDOW) if free > 0 else 0

    def _window_field(self):
        """The window we advertise: the host socket's free send space, scaled."""
        if self.host_blocked:
            # Closed until EPOLLOUT: this shrinks the window we offered, which RFC 9293
            # discourages but every sender must survive -- better than accepting data we drop.
            self.adv_right = self.rcv_nxt
            return 0
        free = 65535 << self.our_wscale if self.fin_rcvd else self._free_space()
        field = min(free >> self.our_wscale, 65535)
        right = (self.rcv_nxt + (field << self.our_wscale)) & MASK
        # Never shrink the right edge we advertised (RFC 9293 3.8.6): keep it where it was.
        if seq_diff(right, self.adv_right) < 0:
            field = min(max(seq_diff(self.adv_right, self.rcv_nxt), 0) >> self.our_wscale, 65535)
            right = (self.rcv_nxt + (field << self.our_wscale)) & MASK
        self.adv_right = right
        if not self.fin_rcvd and (field << self.our_wscale) < max(2 * self.mss, WINDOW_LOW):
            # A small window closes only on our word: re-read the socket shortly (the kernel
            # raises no EPOLLOUT unless a send() failed).
            if self.win_at is None:
                self.win_at = self.gw.now + self.win_delay
                self.win_delay = min(self.win_delay * 2, 0.5)
                self._schedule()
        else:
            self.win_delay = WINDOW_RECHECK
        return field

    def send_ack(self, force=False):
        if self.state not in (ESTABLISHED, TIME_WAIT) or (not force and self.ack_sent == self.rcv_nxt):
            return
        self._out(ACK, self.snd_nxt, self._window_field() if self.state == ESTABLISHED else 0)
        self.ack_sent = self.rcv_nxt

    def _out(self, flags, seq, window, options=b""):
        self.link.send_tcp(self.mac, self.key[2], self.key[0], self.key[3], self.key[1],
                              seq, self.rcv_nxt, flags, window, 0, options)

    def _reset_container(self, ack, synack=False):
        if synack:
            self.link.send_tcp(self.mac, self.key[2], self.key[0], self.key[3], self.key[1],
                                  0, ack, RST | ACK, 0)
        else:
            self._out(RST | ACK, self.snd_nxt, 0)

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

