"""The states of a TcpFlow and the numbers that tune it, shared by its parts.

A flow (tcp.py) is put together from three modules: tcp.py (the host socket's life: connect,
events, timers, endings), tcpin.py (segments from the container) and tcpout.py (host data to
the container, windows and acknowledgments). The state names and the tuning constants they
all read live here; tcp.py tells the life of a flow in these states.
"""

import select

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
