"""End to end: a real kernel in a network namespace talks through the user-mode gateway.

No daemon: tests/netns_harness.py makes an unprivileged user+network namespace with a veth
pair, hands us an AF_PACKET socket on its gateway end, and runs clients inside the namespace
with nsenter. The gateway loop runs in a thread of this process; servers listen on 127.0.0.1
only, and the only address clients dial is the gateway's, 10.0.2.2.
"""

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from minidock.tcpip import Gateway
from netns_harness import GATEWAY, NETWORK, PYTHON as PYTHON_IN_NS, Netns
from support import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/nsenter"), reason="needs nsenter")

MIB = 1 << 20


@pytest.fixture(scope="module")
def netns():
    n = Netns()
    yield n
    n.close()


class Running:
    def __init__(self, netns, allow):
        self.logs = []
        self.gw = Gateway(netns.packet_sock.dup(), networks=[NETWORK], allow_host_loopback=allow,
                          logger=self.logs.append)
        self.thread = threading.Thread(target=self.gw.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.gw.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def gateway(netns):
    g = Running(netns, allow=True)
    yield g.gw
    g.stop()


@pytest.fixture
def closed_gateway(netns):
    g = Running(netns, allow=False)
    yield g
    g.stop()


def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(256)
    s.settimeout(60)
    return s


def _thread(fn, *args):
    result = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as e:      # reported by the test through result
            result["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def _hashing_sink(srv):
    """Accept one connection and read it to the end: (bytes received, their sha256)."""
    conn, _ = srv.accept()
    h, total = hashlib.sha256(), 0
    while True:
        d = conn.recv(MIB)
        if not d:
            return total, h.hexdigest()
        h.update(d)
        total += len(d)


def test_arp_and_ping_of_the_gateway(netns, gateway):
    r = netns.run(["busybox", "ping", "-c", "2", "-W", "5", GATEWAY], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    neigh = netns.run(["ip", "neigh", "show", GATEWAY]).stdout.decode()
    assert "02:42:ac:11:ff:fe" in neigh


DOWNLOAD = r"""
import hashlib, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
h, n = hashlib.sha256(), 0
while True:
    d = s.recv(1 << 20)
    if not d:
        break
    h.update(d); n += len(d)
print(n, h.hexdigest())
"""


def test_download_100_mib_byte_for_byte(netns, gateway):
    srv = _listener()
    block = os.urandom(4 * MIB)
    expected = hashlib.sha256(block * 25).hexdigest()

    def serve():
        conn, _ = srv.accept()
        with conn:
            for _ in range(25):
                conn.sendall(block)
    t, res = _thread(serve)
    r = netns.python(DOWNLOAD, GATEWAY, srv.getsockname()[1], timeout=300)
    t.join(60)
    srv.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(100 * MIB), expected]
    assert "error" not in res


UPLOAD = r"""
import hashlib, os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
block = os.urandom(4 << 20)
h = hashlib.sha256()
for _ in range(25):
    s.sendall(block); h.update(block)
s.shutdown(socket.SHUT_WR)
assert s.recv(10) == b""
print(h.hexdigest())
"""


def test_upload_100_mib_byte_for_byte(netns, gateway):
    srv = _listener()

    def serve():
        conn, _ = srv.accept()
        h, n = hashlib.sha256(), 0
        with conn:
            while True:
                d = conn.recv(MIB)
                if not d:
                    break
                h.update(d)
                n += len(d)
        return n, h.hexdigest()
    t, res = _thread(serve)
    r = netns.python(UPLOAD, GATEWAY, srv.getsockname()[1], timeout=300)
    t.join(60)
    srv.close()
    assert r.returncode == 0, r.stderr
    assert res["value"] == (100 * MIB, r.stdout.strip())


CONCURRENT = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n = int(sys.argv[3])
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) for _ in range(n)]
for i, s in enumerate(socks):
    s.sendall(b"hello %d\n" % i)
ok = 0
for i, s in enumerate(socks):
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(100)
        if not d:
            break
        buf += d
    ok += buf == b"hello %d\n" % i
for s in socks:
    s.close()
print(ok)
"""


def _echo_server(srv, count):
    """Accept `count` connections, echo one line on each (threads: real concurrency)."""
    def echo(conn):
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                d = conn.recv(100)
                if not d:
                    return
                buf += d
            conn.sendall(buf)
    threads = []
    for _ in range(count):
        conn, _ = srv.accept()
        t = threading.Thread(target=echo, args=(conn,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)


@pytest.mark.parametrize("count", [100, 1000])
def test_concurrent_connections(netns, gateway, count):
    srv = _listener()
    t, res = _thread(_echo_server, srv, count)
    r = netns.python(CONCURRENT, GATEWAY, srv.getsockname()[1], count, timeout=300)
    t.join(60)
    srv.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(count)
    assert gateway.stats["tcp_flows"] >= count


UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
out = []
for i in range(3):
    s.send(b"question %d" % i)
    try:
        out.append(s.recv(100).decode())
    except ConnectionRefusedError:
        out.append("refused")
print(",".join(out))
"""


def test_udp_round_trip(netns, gateway):
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(30)

    def serve():
        peers = set()
        for _ in range(3):
            data, peer = echo.recvfrom(100)
            peers.add(peer[0])
            echo.sendto(data.replace(b"question", b"answer"), peer)
        return peers
    t, res = _thread(serve)
    r = netns.python(UDP_CLIENT, GATEWAY, echo.getsockname()[1], timeout=60)
    t.join(30)
    echo.close()
    assert r.stdout.strip() == "answer 0,answer 1,answer 2", r.stderr
    assert res["value"] == {"127.0.0.1"}


READ_THEN_CLOSE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
n = 0
while n < (1 << 20):
    n += len(s.recv(65536))
s.close()              # with unread data: the kernel sends a RST
print(n)
"""


def test_container_closes_mid_transfer(netns, gateway):
    srv = _listener()

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(60)
        sent = 0
        with conn:
            try:
                for _ in range(1000):           # 1 GiB at most: the reset comes long before
                    conn.sendall(b"z" * MIB)
                    sent += MIB
            except (ConnectionResetError, BrokenPipeError) as e:
                return type(e).__name__, sent
        return "finished", sent
    t, res = _thread(serve)
    r = netns.python(READ_THEN_CLOSE, GATEWAY, srv.getsockname()[1], timeout=60)
    t.join(60)
    srv.close()
    assert r.returncode == 0, r.stderr
    outcome, sent = res["value"]
    assert outcome in ("ConnectionResetError", "BrokenPipeError") and sent < 1000 * MIB


READ_ALL = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
n = 0
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        n += len(d)
    print("eof", n)
except ConnectionResetError:
    print("reset", n)
"""


@pytest.mark.parametrize("abort", [False, True])
def test_host_closes_mid_transfer(netns, gateway, abort):
    srv = _listener()

    def serve():
        conn, _ = srv.accept()
        conn.sendall(b"y" * MIB)
        if abort:                       # SO_LINGER 0: close() sends a RST, not a FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    t, res = _thread(serve)
    r = netns.python(READ_ALL, GATEWAY, srv.getsockname()[1], timeout=60)
    t.join(30)
    srv.close()
    assert len(r.stdout.split()) == 2, r.stderr
    kind, n = r.stdout.split()
    if abort:
        assert kind == "reset" and int(n) <= MIB
    else:
        assert (kind, int(n)) == ("eof", MIB)


HALF_CLOSE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
buf = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(buf.decode())
"""


def test_half_close_from_the_container(netns, gateway):
    srv = _listener()

    def serve():
        conn, _ = srv.accept()
        n = 0
        with conn:
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                n += len(d)
            conn.sendall(b"got %d after EOF" % n)
    t, res = _thread(serve)
    r = netns.python(HALF_CLOSE, GATEWAY, srv.getsockname()[1], timeout=60)
    t.join(30)
    srv.close()
    assert r.stdout.strip() == "got 100000 after EOF", r.stderr


CONNECT = r"""
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    print("connected")
except OSError as e:
    print(type(e).__name__, errno.errorcode.get(e.errno))
"""


def test_refused_connect(netns, gateway):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]           # bound, not listening: connect() is refused
    r = netns.python(CONNECT, GATEWAY, port, timeout=60)
    s.close()
    assert r.stdout.strip() == "ConnectionRefusedError ECONNREFUSED", r.stderr


def test_host_loopback_refused_without_the_flag(netns, closed_gateway):
    srv = _listener()
    r = netns.python(CONNECT, GATEWAY, srv.getsockname()[1], timeout=60)
    assert r.stdout.strip() == "ConnectionRefusedError ECONNREFUSED", r.stderr
    srv.settimeout(0.5)
    with pytest.raises(socket.timeout):
        srv.accept()                    # nothing ever reached the listener
    srv.close()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    r = netns.python(UDP_CLIENT, GATEWAY, echo.getsockname()[1], timeout=60)
    assert r.stdout.strip() == "refused,refused,refused", r.stderr
    echo.settimeout(0.2)
    with pytest.raises(socket.timeout):
        echo.recvfrom(100)
    echo.close()
    assert any("--allow-host-loopback" in m for m in closed_gateway.logs)


HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("connected", flush=True)
try:
    s.recv(10)
    print("eof", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"""


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


IDLE_AND_STALLED = r"""
import socket, sys, time, hashlib
host, port = sys.argv[1], int(sys.argv[2])
idle = [socket.create_connection((host, port), timeout=60) for _ in range(200)]
stalled = socket.create_connection((host, port), timeout=60)
stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
print("open", flush=True)
sys.stdin.readline()                   # the test measures while nobody reads
h, n = hashlib.sha256(), 0
while True:
    d = stalled.recv(1 << 20)
    if not d:
        break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""


def test_idle_connections_and_a_stalled_reader_keep_memory_bounded(netns, gateway):
    import subprocess
    srv = _listener()
    block = os.urandom(MIB)
    conns = []

    def serve():
        for _ in range(201):
            conns.append(srv.accept()[0])
        stalled = conns[-1]
        for _ in range(64):             # 64 MiB toward a reader that does not read
            stalled.sendall(block)
        stalled.close()
    t, res = _thread(serve)
    before = _rss_kib()
    p = netns.popen(["/usr/bin/python3", "-c", IDLE_AND_STALLED, GATEWAY,
                     str(srv.getsockname()[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True)
    try:
        assert p.stdout.readline().strip() == "open"
        samples = []
        for _ in range(6):              # three seconds of a stalled transfer
            time.sleep(0.5)
            samples.append(_rss_kib())
        flows = len(gateway.tcp)
        p.stdin.write("\n")
        p.stdin.flush()
        n, digest = p.stdout.readline().split()
    finally:
        p.kill()
        p.wait()
    t.join(30)
    for c in conns:
        c.close()
    srv.close()
    assert flows == 201
    assert (int(n), digest) == (64 * MIB, hashlib.sha256(block * 64).hexdigest())
    growth = max(samples) - before
    print(f"RSS before {before} KiB, with 200 idle + 1 stalled: max {max(samples)} KiB "
          f"(+{growth} KiB)")
    # 64 MiB were pushed at a reader that did not read: none of it may sit in our memory.
    assert growth < 16 * 1024


# --- the daemon-namespace layout: a tap on a bridge that holds the gateway address ----------

@pytest.mark.parametrize("stale_mac", [False, True])
def test_bridge_layout_with_a_kernel_owned_gateway(stale_mac):
    """networks.py's daemon namespace: the bridge owns 172.30.0.1 (ARP, its own ports),
    ip_forward=0, and the packet socket taps the bridge. The host's loopback is reached
    through the host alias 10.0.2.2; the gateway address stays the kernel's. A bridge's MAC
    changes as ports come and go: a MAC taken before that (`stale_mac`) is corrected from the
    frames themselves."""
    from netns_harness import BRIDGE_GATEWAY, BRIDGE_NETWORK
    n = Netns(bridge=True)
    gw = Gateway(n.packet_sock, networks=[BRIDGE_NETWORK], kernel_gateway=True,
                 mac=b"\x02\x00\x00\x00\x00\x99" if stale_mac else None,
                 host_alias="10.0.2.2", allow_host_loopback=True, logger=lambda m: None)
    t = threading.Thread(target=gw.run, daemon=True)
    t.start()
    srv = _listener()
    try:
        th, res = _thread(lambda: srv.accept()[0].sendall(b"through the bridge") or "sent")
        r = n.python(DOWNLOAD, "10.0.2.2", srv.getsockname()[1], timeout=60)
        th.join(30)
        assert r.stdout.split()[0] == str(len(b"through the bridge")), r.stderr
        # The gateway's own ports are the kernel's (nothing listens there: the kernel's RST),
        # and we stay silent about them.
        r = n.python(CONNECT, BRIDGE_GATEWAY, srv.getsockname()[1], timeout=60)
        assert r.stdout.strip() == "ConnectionRefusedError ECONNREFUSED", r.stderr
        deadline = time.monotonic() + 5     # the kernel answered; our loop may see it later
        while not gw.stats["tcp_drop"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.stats["tcp_drop"] >= 1 and gw.stats["arp_replies"] == 0
        r = n.run(["busybox", "ping", "-c", "1", "-W", "5", "10.0.2.2"], timeout=30)
        assert r.returncode == 0, r.stdout
        assert gw.ports[0].mac != b"\x02\x00\x00\x00\x00\x99"
        # The namespace's own conversations with a container cross the tapped bridge and are
        # none of ours: a service on the gateway address (the embedded DNS, say) and a
        # connection from the namespace into a container (the published-port proxy).
        import subprocess
        in_daemon_ns = ["nsenter", "-t", str(n.daemon_pid), "-U", "-n", "--"]
        serve = ("import socket, sys\ns = socket.socket()\ns.bind((sys.argv[1], 8080))\n"
                 "s.listen()\nprint('up', flush=True)\nfor _ in range(3):\n"
                 "    c, _ = s.accept(); c.sendall(b'x' * 100000); c.close()\n")
        for where, target in (("gateway", BRIDGE_GATEWAY), ("container", "172.30.0.2")):
            if where == "gateway":
                srv_p = subprocess.Popen(in_daemon_ns + [PYTHON_IN_NS, "-c", serve, target],
                                         stdout=subprocess.PIPE, text=True)
            else:
                srv_p = n.popen([PYTHON_IN_NS, "-c", serve, target], stdout=subprocess.PIPE,
                                text=True)
            try:
                assert srv_p.stdout.readline().strip() == "up"
                for _ in range(3):
                    argv = [PYTHON_IN_NS, "-c", DOWNLOAD, target, "8080"]
                    if where == "gateway":
                        r = n.run(argv, timeout=30)
                    else:
                        r = subprocess.run(in_daemon_ns + argv, capture_output=True, timeout=30)
                    assert r.stdout.split()[:1] == [b"100000"], (where, r.stderr)
            finally:
                srv_p.kill()
                srv_p.wait()
        assert gw.stats["tcp_unknown_flow"] == 0 and gw.stats["tcp_refuse"] == 0
    finally:
        srv.close()
        gw.stop()
        t.join(10)
        n.close()


# --- a host side of our own: ICMP echo and unreachable destinations, safely ----------------

HOST_SIDE = r"""
import os, socket, subprocess, sys, threading
sys.path.insert(0, sys.argv[2])
# We are root of a fresh user+network namespace: the "host" this gateway dials into. It has
# one address besides lo, 10.99.0.1 on a veth whose peer has none, and no route elsewhere.
for cmd in (["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            ["ip", "addr", "add", "10.99.0.1/24", "dev", "d0"], ["ip", "link", "set", "d0", "up"],
            ["ip", "link", "set", "d1", "up"]):
    subprocess.run(cmd, check=True)
if sys.argv[3] != "default":            # a new namespace starts with "1 0": nobody
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write(sys.argv[3])
from minidock.tcpip import Gateway
logs = []
gw = Gateway(socket.socket(fileno=int(sys.argv[1])), networks=["10.0.2.2/24"], logger=logs.append)
t = threading.Thread(target=gw.run, daemon=True)
t.start()
print("ready", flush=True)
sys.stdin.readline()
gw.stop()
t.join(10)
print(dict(gw.stats), logs, flush=True)
"""


def _host_side(netns, ping_range):
    import subprocess
    import sys
    fd = netns.packet_sock.dup().detach()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "--", sys.executable,
                          "-c", HOST_SIDE, str(fd), root, ping_range], pass_fds=[fd],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    os.close(fd)
    assert p.stdout.readline().strip() == "ready"
    return p


def _finish(p):
    out, _ = p.communicate("\n", timeout=30)
    return out


def test_echo_through_a_ping_socket_and_unreachable_destinations(netns):
    p = _host_side(netns, "0 0")       # gid 0 (ours there) may open ping sockets
    try:
        ok = netns.run(["busybox", "ping", "-c", "2", "-W", "3", "10.99.0.1"], timeout=30)
        # No such neighbour on that link: the request leaves, no reply comes back, and
        # the gateway does not invent one.
        silent = netns.run(["busybox", "ping", "-c", "1", "-W", "2", "10.99.0.2"], timeout=30)
        # No route at all on the host side: connect() fails with ENETUNREACH there, and the
        # container hears ICMP net unreachable, as from a router.
        unreach = netns.python(CONNECT, "10.98.0.1", 80, timeout=30)
    finally:
        out = _finish(p)
    assert ok.returncode == 0 and b"2 packets received" in ok.stdout, ok.stdout
    assert silent.returncode != 0 and b"0 packets received" in silent.stdout
    assert unreach.stdout.strip() == "OSError ENETUNREACH", unreach.stdout + unreach.stderr


def test_echo_without_ping_sockets_is_refused_honestly_once(netns):
    p = _host_side(netns, "default")    # "1 0": nobody may open a ping socket
    try:
        r = netns.run(["busybox", "ping", "-c", "2", "-W", "2", "10.99.0.1"], timeout=30)
    finally:
        out = _finish(p)
    assert r.returncode != 0 and b"0 packets received" in r.stdout
    assert out.count("ICMP echo from containers is dropped") == 1 and "'icmp_unavailable': 2" in out


@pytest.mark.parametrize("bridge", [False, True])
def test_mtu_1500_with_segmentation_offload(bridge):
    """At Docker's default MTU the stack still moves 64 KiB per frame: the kernel cuts our
    segments (virtio GSO) and hands us the container's unsegmented ones. 32 MiB each way,
    byte for byte (the container's kernel checks every checksum)."""
    from netns_harness import BRIDGE_NETWORK
    n = Netns(mtu=1500, bridge=bridge)
    if bridge:
        gw = Gateway(n.packet_sock, networks=[BRIDGE_NETWORK], kernel_gateway=True, mtu=1500,
                     host_alias="10.0.2.2", allow_host_loopback=True, logger=lambda m: None)
    else:
        gw = Gateway(n.packet_sock, networks=[NETWORK], mtu=1500, allow_host_loopback=True,
                     logger=lambda m: None)
    t = threading.Thread(target=gw.run, daemon=True)
    t.start()
    target = "10.0.2.2"
    block = os.urandom(4 * MIB)
    try:
        srv = _listener()
        th, res = _thread(lambda: [srv.accept()[0].sendall(block * 8)])
        r = n.python(DOWNLOAD, target, srv.getsockname()[1], timeout=120)
        th.join(30)
        assert r.stdout.split() == [str(32 * MIB), hashlib.sha256(block * 8).hexdigest()], r.stderr
        sent = gw.link.frames_out
        assert sent < 32 * MIB / 1500 / 2       # big frames out (1460-byte ones: > 22900)
        srv.close()
        srv = _listener()
        before = gw.stats["frames_in"]

        th, res = _thread(_hashing_sink, srv)
        up = UPLOAD.replace("range(25)", "range(8)")
        r = n.python(up, target, srv.getsockname()[1], timeout=120)
        th.join(30)
        srv.close()
        assert res["value"] == (32 * MIB, r.stdout.strip()), r.stderr
        frames = gw.stats["frames_in"] - before
        assert frames < 32 * MIB / 1500 / 2     # big frames in: the container's GSO
    finally:
        gw.stop()
        t.join(10)
        n.close()


def test_ports_come_and_go_while_the_loop_runs(netns):
    """The daemon's use: the loop runs first, networks (ports) are added and removed from
    other threads; removing a port resets its flows and closes its socket."""
    gw = Gateway(allow_host_loopback=True, logger=lambda m: None)
    t = threading.Thread(target=gw.run, daemon=True)
    t.start()
    psock = netns.packet_sock.dup()
    srv = _listener()
    r = netns.python(CONNECT.replace("timeout=20", "timeout=2"), GATEWAY,
                     srv.getsockname()[1], timeout=60)
    assert r.stdout.split()[0] in ("TimeoutError", "OSError"), r.stdout  # no port: no ARP reply
    port = gw.add_port(psock, networks=[NETWORK])
    p = netns.popen([PYTHON_IN_NS, "-c", HOLD, GATEWAY, str(srv.getsockname()[1])],
                    stdout=__import__("subprocess").PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "connected"
        conn, _ = srv.accept()
        # The client's connect() returns once it has sent its ACK; the loop takes that ACK in
        # on its own thread, a moment later (SYN_RCVD until then).
        wait_for(lambda: gw.snapshot()["tcp"] == {"ESTABLISHED": 1}, what="the flow established")
        gw.remove_port(port)
        assert p.stdout.readline().strip() == "ConnectionResetError"
        conn.settimeout(5)
        with pytest.raises(ConnectionResetError):
            conn.recv(10)
        assert psock.fileno() == -1 and gw.snapshot()["tcp"] == {} and gw.ports == []
    finally:
        p.kill()
        p.wait()
        srv.close()
        gw.stop()
        t.join(10)


UNPRIVILEGED_GATEWAY = r"""
import os, socket, sys, threading
sys.path.insert(0, sys.argv[2])
from minidock.tcpip import Gateway
gw = Gateway(socket.socket(fileno=int(sys.argv[1])), networks=[sys.argv[3]],
             allow_host_loopback=True, logger=lambda m: None)
t = threading.Thread(target=gw.run, daemon=True)
t.start()
print("ready", os.getuid(), gw.fd_limit, flush=True)
sys.stdin.readline()
gw.stop()
t.join(10)
print(gw.snapshot()["stats"]["tcp_flows"], flush=True)
"""


def test_gateway_as_an_unprivileged_user(netns):
    """What the daemon will do: the loop in a process of uid 65534, with the system Python."""
    import subprocess
    import support
    if os.getuid() != 0:
        pytest.skip("needs root to become uid 65534")
    home = support.make_user_dir()
    path = support.copy_package(home)
    fd = netns.packet_sock.dup().detach()
    p = subprocess.Popen(support.as_user_argv(support.NOBODY) + [
        support.unprivileged_python(), "-c", UNPRIVILEGED_GATEWAY, str(fd), path, NETWORK],
        pass_fds=[fd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    os.close(fd)
    srv = _listener()
    try:
        ready, uid, limit = p.stdout.readline().split()
        assert (ready, uid) == ("ready", str(support.NOBODY)) and int(limit) >= 1000
        block = os.urandom(4 * MIB)
        t, res = _thread(lambda: [srv.accept()[0].sendall(block * 4)])
        r = netns.python(DOWNLOAD, GATEWAY, srv.getsockname()[1], timeout=120)
        t.join(30)
        assert r.stdout.split() == [str(16 * MIB), hashlib.sha256(block * 4).hexdigest()]
        t, res = _thread(_echo_server, srv, 200)
        r = netns.python(CONCURRENT, GATEWAY, srv.getsockname()[1], 200, timeout=120)
        t.join(60)
        assert r.stdout.strip() == "200", r.stderr
        out, _ = p.communicate("\n", timeout=30)
        assert int(out.split()[-1]) == 201
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        srv.close()
        import shutil
        shutil.rmtree(home, ignore_errors=True)


def test_transfers_without_so_peek_off(netns):
    """Kernels before 6.9 (Debian 12's 6.1) have no SO_PEEK_OFF for TCP: the fallback peeks
    the already-sent prefix into a scratch buffer. 32 MiB each way, byte for byte."""
    gw = Gateway(netns.packet_sock.dup(), networks=[NETWORK], allow_host_loopback=True,
                 peek_offset=False, logger=lambda m: None)
    t = threading.Thread(target=gw.run, daemon=True)
    t.start()
    block = os.urandom(4 * MIB)
    try:
        srv = _listener()
        th, res = _thread(lambda: [srv.accept()[0].sendall(block * 8)])
        r = netns.python(DOWNLOAD, GATEWAY, srv.getsockname()[1], timeout=120)
        th.join(30)
        srv.close()
        assert r.stdout.split() == [str(32 * MIB), hashlib.sha256(block * 8).hexdigest()], r.stderr
        srv = _listener()

        th, res = _thread(_hashing_sink, srv)
        r = netns.python(UPLOAD.replace("range(25)", "range(8)"), GATEWAY, srv.getsockname()[1],
                         timeout=120)
        th.join(30)
        srv.close()
        assert res["value"] == (32 * MIB, r.stdout.strip()), r.stderr
        assert gw.snapshot()["peek_offset"] is False
    finally:
        gw.stop()
        t.join(10)
