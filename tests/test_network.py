"""The daemon network namespace and container endpoints, built by an unprivileged daemon.

tests/network_driver.py plays the daemon as uid 65534 (no subordinate ids): it starts the
spawner and the keeper, makes two bridges over rtnetlink, runs busybox containers on them and
reports what the kernel and the containers showed.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs as rootfs_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "minidock")
PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the test user"),
    pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) missing"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing"),
]


@pytest.fixture(scope="module")
def seen():
    d = tempfile.mkdtemp(prefix="minidock-net-")
    try:
        os.chmod(d, 0o755)
        shutil.copytree(PACKAGE, os.path.join(d, "minidock"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(HERE, "network_driver.py"), d)
        rootfs = rootfs_helper.make_rootfs(os.path.join(d, "rootfs"), 65534, 65534)
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            PYTHON, "-S", os.path.join(d, "network_driver.py"), rootfs],
                           capture_output=True, text=True, timeout=120, cwd=d)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bridges_live_in_the_daemon_namespace(seen):
    assert seen["keeper_netns_differs"]
    kinds = {l["name"]: l["kind"] for l in seen["links"]}
    assert kinds["br-a"] == "bridge" and kinds["br-b"] == "bridge"
    assert {"10.88.0.1", "10.89.0.1"} <= {a["address"] for a in seen["addrs"]}
    assert "br-b" not in seen["after_delete"] and "br-a" in seen["after_delete"]
    # A MAC of its own (network.create_bridge), kept while a dozen ports came and went
    mac = {l["name"]: l["mac"] for l in seen["links"]}["br-a"]
    assert mac.startswith("02:42:") and seen["br_a_mac_after"] == mac


def test_container_eth0_address_mac_route(seen):
    out = seen["seen"]["out"]
    assert seen["seen"]["code"] == 0, out
    assert "02:42:0a:58:00:03" in out
    assert "inet 10.88.0.3/24" in out
    assert "default via 10.88.0.1" in out


def test_same_network_reaches_other_does_not(seen):
    assert seen["same_net"]["out"].strip() == "from-a"
    assert "from-a" not in seen["other_net"]["out"]
    assert "rc=0" not in seen["other_net"]["out"]
    assert seen["host_net"]


def test_daemon_dials_container_with_a_keeper_socket(seen):
    assert seen["dial"].strip() == "via-keeper"


def test_hotplug_and_unplug_of_a_running_container(seen):
    assert "eth1" in seen["hotplug"]["links"] and "10.89.0.9" in seen["hotplug"]["addrs"]
    # announced on br-b: the announcement at `up` alone never got there on Linux 6.18
    assert seen["hotplug_garps"] == ["10.89.0.9"]
    assert "eth1" not in seen["unplug"] and "eth0" in seen["unplug"]


def test_packet_socket_on_a_bridge_sees_the_containers_frames(seen):
    # Read by the daemon through an AF_PACKET socket the keeper made inside the daemon's
    # namespace: ARP (0806), and the TCP (6) of a container with its gateway both ways: a SYN
    # to the bridge's own address and the daemon namespace's RST. A bridge that is not
    # promiscuous passes up only frames for itself (and broadcasts), so the containers'
    # conversation with each other is not among them.
    assert "0806" in seen["tap_ethertypes"]
    ipv4 = {tuple(f) for f in seen["tap_ipv4"]}
    assert {("10.88.0.4", "10.88.0.1", 6), ("10.88.0.1", "10.88.0.4", 6)} <= ipv4, ipv4
    assert not any(src == "10.88.0.4" and dst == "10.88.0.2" for src, dst, _ in ipv4), ipv4


def test_a_plugged_container_announces_itself_with_a_gratuitous_arp(seen):
    # what makes a restarted container (same address and MAC) reachable at once: 10.88.0.2
    # came up at its start (the first run: no pool yet), announced again a few steps later
    # (network.LateAnnouncement); 10.88.0.3 and .4 took veths made ahead, up before their
    # request, announced by setting their MAC
    assert {"10.88.0.2", "10.88.0.3", "10.88.0.4"} <= set(seen["garps"])


def test_the_batched_endpoint_as_netlink_shows_it(seen):
    # the container 10.88.0.5, running, seen from inside its namespace and from the daemon's
    k = seen["kernel"]
    inside = {l["name"]: l for l in k["inside"]["links"]}
    assert set(inside) == {"lo", "eth0"}
    eth0, lo = inside["eth0"], inside["lo"]
    assert eth0["up"] and lo["up"] and eth0["mac"] == "02:42:0a:58:00:05" and eth0["mtu"] == 1500
    peer = {l["index"]: l for l in k["outside"]}[eth0["link"]]      # eth0@ifN: N is the daemon end
    assert peer["kind"] == "veth" and peer["up"] and peer["master"] == k["br_a"]
    assert peer["link"] == eth0["index"]                             # ... whose peer is eth0
    assert peer["name"].startswith("veth")                           # a kernel-chosen name
    assert {(a["index"], a["address"], a["prefixlen"]) for a in k["inside"]["addrs"]} == \
        {(lo["index"], "127.0.0.1", 8), (eth0["index"], "10.88.0.5", 24)}
    main = {(r["dst"], r["dst_len"], r["gateway"], r["oif"])
            for r in k["inside"]["routes"] if r["table"] == 254}
    assert main == {("0.0.0.0", 0, "10.88.0.1", eth0["index"]), ("10.88.0.0", 24, None, eth0["index"])}
    # IPv6 is off in the daemon's namespace (no address on bridges or veth ends), and on the
    # container's eth0 (network.disable_ipv6: no link-local address), which keeps its ::1 on
    # lo, as Docker's containers (26 and later) do
    assert k["outside6"] == []
    assert k["inside6"] == [lo["index"]]


def test_two_endpoints_in_one_start(seen):
    out = seen["two"]["out"]
    assert seen["two"]["code"] == 0, out
    assert "eth0    inet 10.88.0.6/24" in " ".join(out.split("\n")) or "10.88.0.6/24" in out
    assert "eth1" in out and "10.89.0.6/24" in out
    routes = [l for l in out.splitlines() if l.startswith(("default", "10.8"))]
    assert [l.split()[:3] for l in routes if l.startswith("default")] == [["default", "via", "10.88.0.1"]]
    assert any(l.startswith("10.89.0.0/24") and "eth1" in l for l in routes)
    # eth1 up; arp_notify back to Docker's 0 once the announcement is out (the gratuitous ARP
    # test above shows it went out)
    assert out.split()[-3:] == ["up", "0", "0"]


def test_a_missing_bridge_fails_the_start_and_nothing_runs(seen):
    missing = seen["missing"]
    assert "error" in missing, missing
    assert "br-gone" in missing["error"] and "ran" not in missing["error"]


def _link_payload(index, name, link=None):
    import struct
    from minidock import netlink as nl
    attrs = nl.attr(nl.IFLA_IFNAME, name) + (nl.attr(nl.IFLA_LINK, link) if link else b"")
    return struct.pack("=BxHiII", 0, 1, index, 0, 0) + attrs


@pytest.mark.parametrize("echoes, expected", [
    ([("veth7", 12, 2)], (2, 12)),                        # what this kernel echoes: the local end
    ([("veth7", 12, 2), ("eth0", 2, 12)], (2, 12)),       # both ends echoed
    ([("eth0", 3, 12), ("veth7", 12, 3)], (3, 12)),       # ... in the other order
    ([("eth0", 3, 12)], (3, 12)),                         # the peer alone
])
def test_both_ends_index_from_the_echo(echoes, expected):
    from minidock import network
    assert network._echoed_ends("eth0", [_link_payload(i, n, l) for n, i, l in echoes]) == expected


def test_no_echo_gives_no_index():
    # a kernel before 6.2 does not echo RTM_NEWLINK: veth_ends then asks by name
    from minidock import network
    assert network._echoed_ends("eth0", []) == (None, None)


class _Ports:
    """A netlink socket in the daemon's namespace, as wait_forwarding asks it: each port's
    state in turn from `states` (its last one repeated); a port not in it is gone (ENODEV)."""

    def __init__(self, states):
        self.states, self.asked = {p: list(s) for p, s in states.items()}, []

    def request(self, build, index=0, name=None):
        import errno
        from minidock import netlink as nl
        self.asked.append(index)
        if index not in self.states:
            raise OSError(errno.ENODEV, "No such device")
        left = self.states[index]
        state = left.pop(0) if len(left) > 1 else left[0]
        slave = nl.attr(nl.IFLA_INFO_SLAVE_DATA, [nl.attr(nl.IFLA_BRPORT_STATE, bytes([state]))])
        return [_link_payload(index, f"veth{index}") + nl.attr(nl.IFLA_LINKINFO, [slave])]


def test_the_late_announcement_waits_for_forwarding_ports():
    from minidock import network
    # port 12 disabled (0), learning (2), then forwarding; port 13 forwarding at once; 14 gone
    ports = _Ports({12: [0, 2, 3], 13: [3]})
    sleeps = []
    assert network.wait_forwarding(ports, [12, 13, 14, None], clock=lambda: 0.0,
                                   sleep=sleeps.append)
    assert ports.asked == [12, 13, 14, 12, 12] and len(sleeps) == 2
    # a port that never forwards: asked until the deadline, then given up (announce anyway)
    ticks = iter(range(1000))
    ports = _Ports({12: [0]})
    assert not network.wait_forwarding(ports, [12], clock=lambda: next(ticks) * 0.1,
                                       sleep=lambda s: None)
    assert len(ports.asked) == 1 + int(network.FORWARDING_WAIT / 0.1)
    # a port that cannot be asked about (not ENODEV): given up at once, nothing raised

    class Refusing(_Ports):
        def request(self, *a, **kw):
            self.asked.append(kw.get("index"))
            raise PermissionError(1, "Operation not permitted")

    ports, sleeps = Refusing({}), []
    assert not network.wait_forwarding(ports, [12, 13], sleep=sleeps.append)
    assert ports.asked == [12] and sleeps == []


def test_the_late_announcement_sets_each_mac_after_the_wait():
    from minidock import netlink as nl, network
    order = []

    class Inside:
        def apply(self, calls):
            order.append([(build.__name__, args, kw) for build, args, kw in calls])

        def close(self):
            order.append("inside closed")

    class Outside(_Ports):
        def request(self, *a, **kw):
            order.append("asked")
            return super().request(*a, **kw)

        def close(self):
            order.append("outside closed")

    network.LateAnnouncement(Inside(), Outside({12: [3]}),
                             [(2, 12, "02:42:0a:58:00:02")]).announce()
    assert order == ["asked",
                     [("pack_set_inet_conf", (2, {nl.IPV4_DEVCONF_ARP_NOTIFY: 1}), {}),
                      ("pack_set_link", (2,), {"mac": "02:42:0a:58:00:02"}),
                      ("pack_set_inet_conf", (2, {nl.IPV4_DEVCONF_ARP_NOTIFY: 0}), {})],
                     "inside closed", "outside closed"]
    # a port that cannot be asked about is not waited for: the announcement still goes out
    order.clear()

    class Refusing(Outside):
        def request(self, *a, **kw):
            order.append("asked")
            raise PermissionError(1, "Operation not permitted")

    network.LateAnnouncement(Inside(), Refusing({}), [(2, 12, "02:42:0a:58:00:02")]).announce()
    assert order[0] == "asked" and order[1][1][0] == "pack_set_link" and order[2:] == [
        "inside closed", "outside closed"]


def test_without_an_echo_the_index_is_asked_by_name(seen):
    # veth_ends against the running container's namespace, as on Linux < 6.2: eth0's own
    # index and its peer's, the daemon end on br-a
    k = seen["kernel"]
    eth0 = {l["name"]: l for l in k["inside"]["links"]}["eth0"]
    assert seen["fallback"] == [[eth0["index"], eth0["link"]], [7, 12]]
    assert seen["fallback_missing"] == 19               # ENODEV: no such link there
