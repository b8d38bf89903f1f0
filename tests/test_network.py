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
    assert "eth1" not in seen["unplug"] and "eth0" in seen["unplug"]


def test_packet_socket_on_a_bridge_sees_the_containers_frames(seen):
    # ARP (0806) and IPv4 (0800) frames of the containers' conversation, read by the daemon
    # through an AF_PACKET socket the keeper made inside the daemon's namespace.
    assert {"0800", "0806"} <= set(seen["tap_ethertypes"])


def test_a_plugged_container_announces_itself_with_a_gratuitous_arp(seen):
    # what makes a restarted container (same address and MAC) reachable at once
    assert {"10.88.0.3", "10.88.0.4"} <= set(seen["garps"])


def test_gratuitous_arp_bytes():
    from minidock import network
    frame = network.gratuitous_arp("172.17.0.2", "02:42:ac:11:00:02")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes([2, 0x42, 0xac, 0x11, 0, 2])
    assert frame[12:14] == b"\x08\x06"
    assert frame[14:22] == bytes([0, 1, 8, 0, 6, 4, 0, 1])            # Ethernet/IPv4, request
    assert frame[28:32] == frame[38:42] == bytes([172, 17, 0, 2])
