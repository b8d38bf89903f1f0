"""Host -> container: a TcpFlow's data, windows and acknowledgments towards the container.

`HostDataOut` is the half of `TcpFlow` (tcp.py) that writes segments; TcpFlow inherits it.
There is no send buffer of our own: the host socket's receive queue is it.

  push()         while the container's window has room: MSG_PEEK the next bytes straight into
                 the outgoing frame (`_peek`; SO_PEEK_OFF on Linux >= 6.9 keeps our place, older
                 kernels peek the already-sent prefix into a discard buffer in front), send
                 them, advance snd_nxt. At the end of the stream: our FIN (`_send_fin`); after
                 a host reset: the container's RST once the data before it is passed on.
  apply_drops()  what the container acknowledged leaves the host socket with recv(MSG_TRUNC),
                 which copies nothing; once per batch of frames.
  _rewind()      a retransmission: back to snd_una, SO_PEEK_OFF 0, push again (go-back-N).
  _window_field  the window we advertise: the free space of the host socket's send buffer
                 (SO_MEMINFO), never shrinking the right edge already offered; a small window is
                 re-read on a timer (the kernel raises EPOLLOUT only after a failed send()).
  send_ack, _out, _reset_container   the segments without data.

Attributes of the flow this part uses: `link`, `mac`, `key`, `mss`, `state`, `sock`,
`peekoff`, the sequence numbers (`snd_una`, `snd_nxt`, `snd_max`, `snd_wnd`, `rcv_nxt`,
`adv_right`, `ack_sent`, `fin_seq`), the window scale `our_wscale`, the flags `fin_sent`,
`fin_rcvd`, `fin_acked`, `first_fin_ours`, `rdhup`, `host_err`, `host_pending`,
`host_blocked`, `drop_pending`, the window timer `win_at`, `win_delay`; and the methods
`_arm_rto`, `_schedule`, `_host_reset` of tcp.py. The gateway (`gw`) gives `now`, `stats`.
"""

import socket
import struct

from .tcpstate import (ESTABLISHED, MAX_WINDOW, SO_MEMINFO, SO_PEEK_OFF, TIME_WAIT,
                       WINDOW_LOW, WINDOW_RECHECK)
from .tcpwire import ACK, FIN, PSH, RST, MASK, seq_diff

_DISCARD = None             # the shared buffer recv(MSG_TRUNC) and the peek fallback write into


def _discard_buffer():
    global _DISCARD
    if _DISCARD is None:
        _DISCARD = bytearray(8 << 20)
    return _DISCARD


class HostDataOut:
    """The host -> container half of TcpFlow (see the module docstring for what it uses)."""
    __slots__ = ()

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
