"""Container -> host: what a TcpFlow does with each segment the container sends.

`SegmentsIn` is the half of `TcpFlow` (tcp.py) that reads segments; TcpFlow inherits it.
`on_segment()` walks a segment through, in this order:

  1. RST     accepted only near the byte we expect (blind resets do not kill flows): the host
             socket is closed abortively (SO_LINGER 0) and the flow forgotten.
  2. state   CONNECTING ignores retransmitted SYNs (the host has not answered yet); TIME_WAIT
             re-acknowledges a retransmitted FIN; SYN_RCVD resends the SYN-ACK for a repeated
             SYN and becomes ESTABLISHED on the ACK of our ISS + 1.
  3. ACK     `_on_ack()`: what the container acknowledged is dropped from the host socket
             (once per batch, `apply_drops`), the RTO restarts, the FIN may be done; three
             duplicate ACKs rewind our side (fast retransmit).
  4. data    `_on_data()`: in order -> one non-blocking send() into the host socket, and we
             acknowledge exactly what it took (a full socket closes the window until EPOLLOUT);
             early -> the gateway's reorder stash or a duplicate ACK; already seen -> trimmed.
             FIN -> shutdown(SHUT_WR) of the host socket, the host reads EOF (half-close).

Attributes of the flow this part uses: the sequence numbers (`rcv_nxt`, `snd_una`, `snd_nxt`,
`snd_max`, `snd_wnd`, `iss`, `fin_seq`), the window scales, `state`, `sock`, the flags
`fin_rcvd`, `fin_acked`, `fin_sent`, `host_pending`, `host_blocked`, the counters `dupacks`,
`retries`, `probes`, `drop_pending`, the timers `rto`, `rto_at`; and the methods of the other
parts: `push`, `apply_drops`, `_rewind`, `send_ack`, `_out`, `_send_synack`, `_arm_rto`,
`_arm_idle`, `_host_reset`, `_finish`, `close_host`. The gateway (`gw`) gives `now`, `stats`,
`stash`, `stashed`, `unstash`, `want_ack`, `want_drop`, `forget_tcp`.
"""

import socket

from .tcpstate import CONNECTING, ESTABLISHED, RTO_MIN, SYN_RCVD, TIME_WAIT
from .tcpwire import ACK, FIN, RST, SYN, MASK, seq_diff


class SegmentsIn:
    """The container -> host half of TcpFlow (see the module docstring for what it uses)."""
    __slots__ = ()

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
