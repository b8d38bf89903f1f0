"""A container-like network namespace wired to a user-mode gateway, for tests and benches.

`Netns()` forks a child that becomes an unprivileged user (uid 65534 when we are root), unshares
a user and a network namespace (ctypes, minidock.ns.unshare), writes its one-line id maps, and
inside the namespace:

    ip link add veth0 mtu 65520 type veth peer name gw0 mtu 65520
    ip addr add 10.0.2.100/24 dev veth0; ip link set lo/veth0/gw0 up
    ip route add default via 10.0.2.2

then opens an AF_PACKET socket bound to gw0 and sends it back over SCM_RIGHTS. The child stays
alive (it holds the namespace) until the harness closes. `run()` executes a command inside the
namespace with nsenter(1) -- as the namespace's root, i.e. uid 65534 outside -- so commands must
be readable by that user (/usr/bin/python3, busybox).

The gateway address 10.0.2.2 is the only destination tests use: the gateway maps it to the
host's 127.0.0.1 when allowed.
"""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minidock import ns  # noqa: E402
from minidock.tcpip import packet  # noqa: E402

GATEWAY = "10.0.2.2"
CONTAINER = "10.0.2.100"
NETWORK = "10.0.2.2/24"
NOBODY = 65534
PYTHON = "/usr/bin/python3"     # readable by uid 65534, unlike the pyenv one under /root


def _child(ctl, mtu, vnet, user, bridge):
    try:
        if user is not None and os.getuid() == 0:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
            # A credential change clears the dumpable flag, which makes /proc/self/* root's:
            # set it again or the id maps below cannot be written.
            ns.prctl(4, 1)          # PR_SET_DUMPABLE
        uid, gid = os.getuid(), os.getgid()
        ns.unshare(ns.CLONE_NEWUSER | ns.CLONE_NEWNET)
        # An unprivileged process may map only its own ids, and must deny setgroups first.
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1\n")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1\n")
        if bridge:
            _bridge_layout(ctl, mtu, vnet)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "veth0", "mtu", str(mtu), "numtxqueues", "1",
                     "numrxqueues", "1", "type", "veth", "peer", "name", "gw0", "mtu", str(mtu),
                     "numtxqueues", "1", "numrxqueues", "1"],
                    ["ip", "addr", "add", f"{CONTAINER}/24", "dev", "veth0"],
                    ["ip", "link", "set", "veth0", "up"],
                    ["ip", "link", "set", "gw0", "up"],
                    ["ip", "route", "add", "default", "via", GATEWAY]):
            subprocess.run(cmd, check=True, capture_output=True)
        for path in ("/proc/sys/net/ipv6/conf/all/disable_ipv6",
                     "/proc/sys/net/ipv6/conf/default/disable_ipv6"):
            try:
                with open(path, "w") as f:
                    f.write("1")
            except OSError:
                pass
        psock, enabled = packet.open_packet_socket("gw0", vnet_hdr=vnet)
        socket.send_fds(ctl, [b"1" if enabled else b"0"], [psock.fileno()])
        psock.close()
        ctl.recv(1)             # until the harness closes its end
        os._exit(0)
    except BaseException as e:
        try:
            ctl.send(b"E" + repr(e).encode()[:1000])
        finally:
            os._exit(1)


BRIDGE_GATEWAY = "172.30.0.1"
BRIDGE_CONTAINER = "172.30.0.2"
BRIDGE_NETWORK = "172.30.0.1/24"


def _bridge_layout(ctl, mtu, vnet):
    """The daemon-namespace layout of minidock/network.py, in small: we are the daemon's
    namespace (a bridge holding the gateway address, ip_forward=0); a grandchild holds the
    container's namespace with eth0 on the bridge. The packet socket taps the bridge."""
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("0")
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                        # the container: its own network namespace
        try:
            ns.unshare(ns.CLONE_NEWNET)
            os.write(ready_w, b"1")
            os.read(go_r, 1)            # eth0 has arrived
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{BRIDGE_CONTAINER}/24", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"],
                        ["ip", "route", "add", "default", "via", BRIDGE_GATEWAY]):
                subprocess.run(cmd, check=True, capture_output=True)
            os.write(ready_w, b"2")
            os.read(go_r, 1)            # until the harness ends
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", "br0", "mtu", str(mtu), "type", "bridge"],
                ["ip", "addr", "add", BRIDGE_NETWORK, "dev", "br0"],
                ["ip", "link", "add", "vethc", "mtu", str(mtu), "type", "veth", "peer", "name",
                 "eth0", "mtu", str(mtu), "netns", str(pid)],
                ["ip", "link", "set", "vethc", "master", "br0", "up"],
                ["ip", "link", "set", "br0", "up"]):
        subprocess.run(cmd, check=True, capture_output=True)
    os.write(go_w, b"1")
    os.read(ready_r, 1)
    psock, enabled = packet.open_packet_socket("br0", vnet_hdr=vnet)
    socket.send_fds(ctl, [(b"1" if enabled else b"0") + str(pid).encode()], [psock.fileno()])
    psock.close()
    ctl.recv(1)
    os.write(go_w, b"1")
    os.waitpid(pid, 0)
    os._exit(0)


class Netns:
    def __init__(self, mtu=packet.MTU, vnet=True, user=NOBODY, bridge=False):
        """`bridge`: the bridge layout (see _bridge_layout); commands then run in the
        container's namespace, and the packet socket taps the bridge."""
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent.close()
            _child(child, mtu, vnet, user, bridge)
        child.close()
        self.pid = pid
        self.daemon_pid = pid
        self.ctl = parent
        msg, fds, _, _ = socket.recv_fds(parent, 1100, 1)
        if not fds:
            self.close()
            raise RuntimeError(f"netns set-up failed: {msg[1:].decode(errors='replace')}")
        self.vnet = msg[:1] == b"1"
        if bridge:
            self.pid = int(msg[1:])     # where commands run: the container's namespace
        self.packet_sock = socket.socket(fileno=fds[0])

    def popen(self, argv, **kw):
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-U", "-n", "--"] + argv, **kw)

    def run(self, argv, timeout=120, **kw):
        return subprocess.run(["nsenter", "-t", str(self.pid), "-U", "-n", "--"] + argv,
                              timeout=timeout, capture_output=True, **kw)

    def python(self, code, *args, timeout=120, **kw):
        """Run a Python snippet inside the namespace; returns CompletedProcess (text)."""
        return self.run([PYTHON, "-c", code, *map(str, args)], timeout=timeout, text=True, **kw)

    def close(self):
        try:
            self.ctl.close()
        finally:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            sock = getattr(self, "packet_sock", None)
            if sock is not None:
                sock.close()
