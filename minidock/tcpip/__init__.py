"""A user-mode TCP/IP stack: container networks reach the host's network without root.

Rootless containers live in network namespaces that an unprivileged user cannot connect to
the host with a veth (that needs CAP_NET_ADMIN in the host's namespace). slirp4netns and
pasta solve it with a TAP device and a TCP/IP stack in C; `/dev/net/tun` is root-only on many
machines, so this package does the same with an AF_PACKET socket on a veth *inside* the
namespace, and a stack written in Python: every connection a container opens is terminated
here and re-opened as an ordinary socket of the daemon in the host's namespace.

    ethernet.py  Ethernet II and ARP           ipv4.py   IPv4, the checksum, ICMP
    udp.py       UDP datagrams                 tcpwire.py  TCP headers, options, seq arithmetic
    tcp.py       TcpFlow: one container connection <-> one host socket (the passt model)
    tcpin.py     SegmentsIn: container -> host, what a flow does with each segment
    tcpout.py    HostDataOut: host -> container, data peeked from the socket, windows, ACKs
    tcpstate.py  the flow's states and tuning numbers
    packet.py    the AF_PACKET socket, virtio_net_hdr offload, the frame writer
    gateway.py   Gateway: the event loop, its ports, timers and flow tables
    demux.py     FrameDemux: frames in (ARP, TCP, UDP, ICMP) and the reorder stash
    policy.py    route(): where a container's packet may go
    udpflow.py   UdpFlow: a container's UDP port <-> one host socket
    icmpflow.py  IcmpFlow: a container's pings <-> an unprivileged ping socket

The protocol modules are functions over bytes; gateway.py and the flows (tcp*.py, udpflow.py,
icmpflow.py) are the ones that touch sockets. See gateway.py for the daemon-facing contract.
"""

from .gateway import Gateway, route  # noqa: F401
