"""Test driver: a rootless "daemon" builds the daemon network namespace and real container
networks, and prints what the kernel and the containers showed, as JSON.

Run by tests/test_network.py under `setpriv --reuid U ... python3 -S network_driver.py ROOTFS`
from a 0755 directory holding a copy of the minidock package.
"""

import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minidock import netlink, network, spawner, userns  # noqa: E402

ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]


def collect(fd):
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    os.close(fd)
    return out.decode(errors="replace")


def main():
    rootfs = sys.argv[1]
    userns.enter_daemon_userns()
    sp = spawner.Spawner.start()
    dn = network.DaemonNetns()
    res = {"keeper_netns_differs": os.readlink(f"/proc/{dn.pid}/ns/net")
           != os.readlink("/proc/self/ns/net")}
    br_a = dn.rtnl(network.create_bridge, "br-a", "10.88.0.1", 24)
    dn.rtnl(network.create_bridge, "br-b", "10.89.0.1", 24)
    res["links"] = dn.rtnl(lambda r: r.links())
    res["addrs"] = dn.rtnl(lambda r: r.addrs())

    def ep(bridge, ip, gw, default_route=True):
        # br-a's endpoints carry its ifindex, as the daemon's do; br-b's are found by name
        return {"bridge": bridge, "bridge_index": br_a if bridge == "br-a" else None,
                "address": ip, "prefixlen": 24, "gateway": gw,
                "mac": network.mac_for(ip), "default_route": default_route}

    def net(*eps):
        return {"netns_pid": dn.pid, "endpoints": list(eps)}

    def start(script, network_):
        r, w = os.pipe()
        try:
            pid = sp.run({"rootfs": rootfs, "env": ENV, "argv": ["sh", "-c", script],
                          "network": network_}, w, w, w)
        finally:
            os.close(w)
        return pid, r

    def run(script, network_):
        pid, r = start(script, network_)
        out = collect(r)
        return {"code": sp.wait(pid, 20), "out": out}

    # The wire for a user-mode stack: an AF_PACKET socket born in the daemon namespace, on br-a.
    tap = dn.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003),
                    bind=("br-a", 0x0003))   # bind() applies htons itself
    tap.setblocking(False)
    # A server on br-a; the daemon reaches it with a socket born in the daemon namespace.
    server, server_r = start("echo ready; nc -ll -p 8080 -e echo from-a", net(ep("br-a", "10.88.0.2", "10.88.0.1")))
    assert os.read(server_r, 6) == b"ready\n"
    time.sleep(0.3)                     # nc gets to listen()
    res["host_net"] = os.readlink(f"/proc/{server}/ns/net") != os.readlink("/proc/self/ns/net")
    res["seen"] = run("cat /sys/class/net/eth0/address; ip -4 addr show eth0; ip route; "
                      "cat /sys/class/net/lo/operstate", net(ep("br-a", "10.88.0.3", "10.88.0.1")))
    # Two endpoints in one start (both batches carry two of everything): eth0 on br-a with the
    # default route, eth1 on br-b (found by name) without one.
    res["two"] = run("ip -4 -o addr; ip route; cat /sys/class/net/eth1/operstate "
                     "/proc/sys/net/ipv4/conf/eth0/arp_notify /proc/sys/net/ipv4/conf/eth1/arp_notify",
                     net(ep("br-a", "10.88.0.6", "10.88.0.1"),
                         ep("br-b", "10.89.0.6", "10.89.0.1", default_route=False)))
    # A bridge that does not exist: the start fails with the kernel's reason, and nothing runs.
    try:
        res["missing"] = run("echo ran", net(ep("br-a", "10.88.0.7", "10.88.0.1"),
                                             ep("br-gone", "10.90.0.7", "10.90.0.1")))
    except Exception as e:          # syscalls.StartError from the spawner
        res["missing"] = {"error": str(e), "type": type(e).__name__}
    # ...and then the gateway's own port 9, closed: the SYN is addressed to the bridge's MAC, so
    # the bridge passes it up and the tap sees it, and the daemon namespace's RST goes out on br-a.
    # (Frames between two ports are forwarded by the bridge and never reach its own device.)
    res["same_net"] = run("nc -w 2 10.88.0.2 8080 </dev/null; nc -w 1 10.88.0.1 9 </dev/null 2>/dev/null",
                          net(ep("br-a", "10.88.0.4", "10.88.0.1")))
    res["other_net"] = run("nc -w 2 10.88.0.2 8080 </dev/null; echo rc=$?",
                           net(ep("br-b", "10.89.0.2", "10.89.0.1")))
    frames = []
    try:
        while len(frames) < 1000:
            frames.append(tap.recv(65536))
    except BlockingIOError:
        pass
    tap.close()
    res["tap_ethertypes"] = sorted({f[12:14].hex() for f in frames if len(f) >= 14})
    # IPv4 frames as (source, destination, protocol)
    res["tap_ipv4"] = sorted({(".".join(map(str, f[26:30])), ".".join(map(str, f[30:34])), f[23])
                              for f in frames if f[12:14] == b"\x08\x00" and len(f) >= 34})
    # gratuitous ARPs (sender address == target address) the containers announced themselves with
    res["garps"] = sorted({".".join(map(str, f[28:32])) for f in frames
                           if f[12:14] == b"\x08\x06" and len(f) >= 42 and f[28:32] == f[38:42]})
    os.kill(server, signal.SIGKILL)
    sp.wait(server, 10)
    os.close(server_r)

    # The port proxy's dial: a socket from the keeper, connect()ed by the daemon.
    server, server_r = start("echo ready; nc -ll -p 8081 -e echo via-keeper", net(ep("br-a", "10.88.0.5", "10.88.0.1")))
    os.read(server_r, 6)
    time.sleep(0.3)
    s = dn.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(("10.88.0.5", 8081))
    res["dial"] = s.recv(100).decode()
    s.close()
    # What the kernel shows of the batched set-up, by netlink from both sides: the
    # container's eth0 is the peer of a veth on br-a (IFLA_LINK both ways), up, addressed, with
    # its default route, and lo is up.
    inside = netlink.Rtnl(dn.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0, bind=(0, 0), netns_pid=server))
    res["kernel"] = {"inside": {"links": inside.links(), "addrs": inside.addrs(),
                                "routes": inside.routes()},
                     "outside": dn.rtnl(lambda r: r.links()), "br_a": br_a,
                     # IPv6: none in the daemon's namespace, none on eth0 (Docker 26+)
                     "inside6": [a["index"] for a in inside.addrs(socket.AF_INET6)],
                     "outside6": dn.rtnl(lambda r: r.addrs(socket.AF_INET6))}
    # The indexes of eth0's ends without an echo (Linux < 6.2): asked by name; echoed ones kept.
    res["fallback"] = network.veth_ends(inside, ["eth0", "eth5"], [(None, None), (7, 12)])
    try:
        network.veth_ends(inside, ["eth9"], [(None, None)])
    except OSError as e:
        res["fallback_missing"] = e.errno
    inside.close()
    # Hot-plug a second interface into the running server, then take it away again; br-b
    # hears its announcement (hotplug repeats it once the port forwards).
    tap_b = dn.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806), bind=("br-b", 0x0806))
    network.hotplug(dn, server, "eth1", ep("br-b", "10.89.0.9", "10.89.0.1"))
    tap_b.settimeout(2)
    res["hotplug_garps"] = []
    try:
        while "10.89.0.9" not in res["hotplug_garps"]:
            f = tap_b.recv(100)
            if f[28:32] == f[38:42]:
                res["hotplug_garps"].append(".".join(map(str, f[28:32])))
    except socket.timeout:
        pass
    tap_b.close()
    inside = netlink.Rtnl(dn.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0, bind=(0, 0), netns_pid=server))
    res["hotplug"] = {"links": [l["name"] for l in inside.links()], "addrs": [a["address"] for a in inside.addrs()]}
    network.unplug(dn, server, "eth1")
    res["unplug"] = [l["name"] for l in inside.links()]
    inside.close()
    os.kill(server, signal.SIGKILL)
    sp.wait(server, 10)
    os.close(server_r)
    dn.rtnl(network.delete_link, "br-b")
    res["after_delete"] = [l["name"] for l in dn.rtnl(lambda r: r.links())]
    res["br_a_mac_after"] = dn.rtnl(lambda r: r.link("br-a"))["mac"]
    print(json.dumps(res), flush=True)
    dn.close()
    sp.close()


if __name__ == "__main__":
    main()
