"""The port proxy over real sockets on 127.0.0.1 (the dial here makes host sockets; in the
daemon it asks the keeper for sockets in the daemon's network namespace), and IPAM rules."""

import hashlib
import ipaddress
import os
import socket
import threading

import pytest

from minidock import errors, ipam, portproxy


def dial(kind):
    return socket.socket(socket.AF_INET, kind)


@pytest.fixture
def tcp_server():
    """Echo server that uppercases, reads until EOF first (so half-close matters)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            data = b""
            while True:
                chunk = c.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            c.sendall(hashlib.sha256(data).hexdigest().encode() + b" " + str(len(data)).encode())
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def test_tcp_relay_with_half_close(tcp_server):
    pub = portproxy.Published("127.0.0.1", [("tcp", tcp_server, "127.0.0.1", [0])], dial)
    try:
        [(proto, cport, hip, hport)] = pub.ports
        assert (proto, cport, hip) == ("tcp", tcp_server, "127.0.0.1") and hport > 0
        payload = os.urandom(8 << 20)
        c = socket.create_connection(("127.0.0.1", hport), timeout=10)
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)      # the server answers only after our EOF
        reply = b""
        while True:
            chunk = c.recv(1024)
            if not chunk:
                break
            reply += chunk
        assert reply.decode() == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}"
        c.close()
    finally:
        pub.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", hport), timeout=2)


def test_port_already_allocated(tcp_server):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(errors.MinidockError) as exc:
            portproxy.Published("127.0.0.1", [("tcp", 80, "127.0.0.1", [port])], dial)
        assert f"Bind for 127.0.0.1:{port} failed: port is already allocated" in exc.value.message
    finally:
        holder.close()


def test_privileged_port_message_names_the_sysctl():
    e = portproxy._bind_error(PermissionError(13, "Permission denied"), "", 80, "tcp")
    assert "net.ipv4.ip_unprivileged_port_start=80" in e.message


def test_udp_per_client_flows():
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                data, addr = echo.recvfrom(65535)
                echo.sendto(b"echo:" + data, addr)
            except OSError:             # closed at the end of the test, maybe between the two
                return
    threading.Thread(target=serve, daemon=True).start()
    pub = portproxy.Published("127.0.0.1", [("udp", echo.getsockname()[1], "127.0.0.1", [0])], dial)
    try:
        port = pub.ports[0][3]
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for i, c in enumerate(clients):
            c.settimeout(5)
            c.sendto(f"hi{i}".encode(), ("127.0.0.1", port))
        assert [c.recv(100) for c in clients] == [b"echo:hi0", b"echo:hi1"]
        for c in clients:
            c.close()
    finally:
        pub.close()
        echo.close()


def test_expand_bindings():
    got = portproxy.expand_bindings({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                     "53/udp": [{"HostPort": ""}]},
                                    {"80/tcp": {}, "443/tcp": {}}, publish_all=True)
    assert ("tcp", 80, "127.0.0.1", [8080]) in got
    assert ("udp", 53, "", [0]) in got
    assert ("tcp", 443, "", [0]) in got
    with pytest.raises(errors.InvalidParameter):
        portproxy.expand_bindings({"80/sctp": [{}]})


def test_ipam_pools_and_addresses():
    used = [ipaddress.IPv4Network("172.17.0.0/16")]
    routes = [ipaddress.IPv4Network("172.18.5.0/24")]      # a host route inside 172.18/16
    assert ipam.next_subnet(used, routes) == ipaddress.IPv4Network("172.19.0.0/16")
    all16 = [ipaddress.IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)]
    assert ipam.next_subnet(all16, []) == ipaddress.IPv4Network("192.168.0.0/20")
    assert ipam.next_subnet(all16 + [ipaddress.IPv4Network("192.168.0.0/20")], []) == \
        ipaddress.IPv4Network("192.168.16.0/20")
    pools = [ipam.parse_pool_flag("base=10.10.0.0/16,size=24")]
    assert ipam.next_subnet([], [], pools) == ipaddress.IPv4Network("10.10.0.0/24")
    subnet = ipaddress.IPv4Network("172.18.0.0/16")
    gw = ipam.first_host(subnet)
    assert str(gw) == "172.18.0.1"
    assert str(ipam.allocate(subnet, gw, [])) == "172.18.0.2"
    assert str(ipam.allocate(subnet, gw, [ipaddress.IPv4Address("172.18.0.2")])) == "172.18.0.3"
    assert str(ipam.allocate(subnet, gw, [], ipaddress.IPv4Network("172.18.5.0/24"))) == "172.18.5.1"
    with pytest.raises(errors.InvalidParameter):
        ipam.check_requested(subnet, gw, [], "10.0.0.1")
    with pytest.raises(errors.InvalidParameter):
        ipam.parse_subnet("172.18.0.1/16")
    assert ipam.parse_bip("10.5.0.1/24") == (ipaddress.IPv4Network("10.5.0.0/24"),
                                             ipaddress.IPv4Address("10.5.0.1"))


def test_host_routes_are_read(tmp_path):
    p = tmp_path / "route"
    p.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                 "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n"
                 "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert ipam.host_routes(str(p)) == [ipaddress.IPv4Network("192.168.1.0/24")]
