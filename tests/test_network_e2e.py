"""Container networking as users drive it: the real docker CLI and docker-compose 1.29 against
a daemon running as uid 65534.

Traffic goes only to 127.0.0.1 and to addresses inside the namespaces the daemon created.
"""

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

import proctree
from rootfs import make_rootfs_tar
from support import Daemon, wait_for

pytestmark = pytest.mark.e2e

COMPOSE = shutil.which("docker-compose")
HTTPD = "mkdir -p /www && echo page-$NAME > /www/index.html && exec httpd -f -p 80 -h /www"
GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 80"


@pytest.fixture(scope="module")
def d():
    daemon = Daemon()
    daemon.start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        yield daemon
    finally:
        daemon.cleanup()


def out(result):
    return result.stdout.decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, timeout=10):
    """GET / from 127.0.0.1:port, retried while the server inside starts (bounded)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    return data.decode(errors="replace")
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"no answer on 127.0.0.1:{port}: {last}")


def run_httpd(d, *args, name):
    return out(d.docker("run", "-d", "--name", name, "-e", f"NAME={name}", *args,
                        "busybox", "sh", "-c", HTTPD)).strip()


def test_published_port_answers_on_the_host(d):
    port = free_port()
    cid = run_httpd(d, "-p", f"127.0.0.1:{port}:80", name="pub")
    try:
        assert "page-pub" in http_get(port)
        inspect = json.loads(out(d.docker("inspect", cid)))[0]
        ns = inspect["NetworkSettings"]
        assert ns["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        assert ns["IPAddress"].startswith("172.17.") and ns["Gateway"] == "172.17.0.1"
        assert ns["MacAddress"] == "02:42:" + ":".join(f"{int(x):02x}" for x in ns["IPAddress"].split("."))
        assert ns["Networks"]["bridge"]["IPAddress"] == ns["IPAddress"]
        assert f"127.0.0.1:{port}->80/tcp" in out(d.docker("ps", "--format", "{{.Ports}}"))
        published = lambda f: out(d.docker("ps", "-q", "--no-trunc", "--filter", f)).split()   # noqa: E731
        assert cid in published("publish=80") and cid in published("publish=79-81/tcp")
        assert cid not in published("publish=80/udp") and cid not in published(f"publish={port}")
        # The same host port for a second container: Docker's message, nothing started.
        busy = d.docker("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "sleep", "5", check=False)
        assert busy.returncode != 0 and b"port is already allocated" in busy.stderr
        # restart binds again
        d.docker("restart", "-t", "1", cid)
        assert "page-pub" in http_get(port)
        d.docker("stop", "-t", "1", cid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        d.docker("rm", "-f", cid, check=False)
        d.docker("container", "prune", "-f", check=False)


def test_publish_all_and_docker_port(d):
    cid = run_httpd(d, "-P", "--expose", "80", name="puball")
    try:
        mapping = out(d.docker("port", cid, "80")).split()
        host_port = int(mapping[0].rsplit(":", 1)[1])
        assert "page-puball" in http_get(host_port)
    finally:
        d.docker("rm", "-f", cid, check=False)


def test_privileged_host_port_names_the_sysctl(d):
    res = d.docker("run", "--rm", "-p", "127.0.0.1:81:80", "busybox", "true", check=False)
    assert res.returncode != 0 and b"net.ipv4.ip_unprivileged_port_start" in res.stderr


def test_user_networks_names_aliases_isolation_connect(d):
    d.docker("network", "create", "--label", "proj=x", "app")
    d.docker("network", "create", "other")
    srv = run_httpd(d, "--network", "app", "--network-alias", "svc", name="srv")
    try:
        by_name = d.docker("run", "--rm", "--network", "app", "busybox", "sh", "-c", GET.format("srv"))
        assert "page-srv" in out(by_name)
        by_alias = d.docker("run", "--rm", "--network", "app", "busybox", "sh", "-c", GET.format("svc"))
        assert "page-srv" in out(by_alias)
        by_link = d.docker("run", "--rm", "--network", "app", "--link", "srv:linked", "busybox", "sh", "-c",
                           GET.format("linked"))
        assert "page-srv" in out(by_link)
        # --dns on a user network: resolv.conf still names the embedded DNS (which forwards
        # to that server), so names keep resolving
        resolv = out(d.docker("run", "--rm", "--network", "app", "--dns", "127.0.0.1", "busybox",
                              "sh", "-c", "cat /etc/resolv.conf; " + GET.format("srv")))
        assert "page-srv" in resolv
        gw = json.loads(out(d.docker("network", "inspect", "app")))[0]["IPAM"]["Config"][0]["Gateway"]
        assert f"nameserver {gw}" in resolv
        ip = json.loads(out(d.docker("inspect", srv)))[0]["NetworkSettings"]["Networks"]["app"]["IPAddress"]
        # another network: neither the name nor the address
        cut = d.docker("run", "--rm", "--network", "other", "busybox", "sh", "-c",
                       GET.format("srv") + "; " + GET.format(ip) + "; echo done", check=False)
        assert "page-srv" not in out(cut)
        # connect a running container, then disconnect it
        c = out(d.docker("run", "-d", "--network", "other", "busybox", "sleep", "60")).strip()
        try:
            d.docker("network", "connect", "app", c)
            assert "page-srv" in out(d.docker("exec", c, "sh", "-c", GET.format("srv")))
            # leave the first network (eth0): eth1 stays and keeps its name for a later disconnect
            d.docker("network", "disconnect", "other", c)
            assert "page-srv" in out(d.docker("exec", c, "sh", "-c", GET.format("srv")))
            d.docker("network", "connect", "other", c)
            d.docker("network", "disconnect", "app", c)
            after = d.docker("exec", c, "sh", "-c", GET.format(ip) + "; echo done", check=False)
            assert "page-srv" not in out(after)
            inspect = json.loads(out(d.docker("network", "inspect", "app")))[0]
            assert list(inspect["Containers"]) == [srv]
            assert d.docker("network", "rm", "app", check=False).returncode != 0   # in use
        finally:
            d.docker("rm", "-f", c, check=False)
        # internal: reachable inside, no default route
        d.docker("network", "create", "--internal", "closed")
        routes = out(d.docker("run", "--rm", "--network", "closed", "busybox", "ip", "route"))
        assert "default" not in routes and "dev eth0" in routes
        names = out(d.docker("network", "ls", "--filter", "label=proj=x", "--format", "{{.Name}}"))
        assert names.split() == ["app"]
    finally:
        d.docker("rm", "-f", srv, check=False)
    d.docker("network", "rm", "app")
    # prune is API 1.25: through the CLI once the daemon speaks it, else the networks go by hand
    from minidock import API_VERSION
    if tuple(map(int, API_VERSION.split("."))) >= (1, 25):
        pruned = out(d.docker("network", "prune", "-f"))
        assert "closed" in pruned and "other" in pruned
    else:
        d.docker("network", "rm", "closed", "other")
    assert sorted(out(d.docker("network", "ls", "--format", "{{.Name}}")).split()) == ["bridge", "host", "none"]


def test_default_bridge_cannot_reach_host_loopback(d):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    accepted = []

    def watch():
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                c, _ = srv.accept()
                accepted.append(c)
            except OSError:
                continue
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        res = d.docker("run", "--rm", "busybox", "sh", "-c",
                       f"nc -w 2 127.0.0.1 {port} </dev/null; echo rc=$?; "
                       f"nc -w 2 172.17.0.1 {port} </dev/null; echo rc=$?; ip route", check=False)
        text = out(res)
        assert text.count("rc=1") == 2, text
        assert "default via 172.17.0.1" in text
        t.join()
        assert accepted == []
    finally:
        srv.close()


def test_links_env_and_hosts(d):
    db = out(d.docker("run", "-d", "--name", "db", "--expose", "5432", "-e", "SECRET=s1",
                      "busybox", "sleep", "60")).strip()
    try:
        text = out(d.docker("run", "--rm", "--link", "db:pg", "busybox", "sh", "-c", "env; cat /etc/hosts"))
        ip = json.loads(out(d.docker("inspect", db)))[0]["NetworkSettings"]["IPAddress"]
        assert f"PG_PORT_5432_TCP=tcp://{ip}:5432" in text
        assert f"PG_PORT_5432_TCP_ADDR={ip}" in text and "PG_ENV_SECRET=s1" in text
        assert any(line.startswith(ip) and "pg" in line.split() for line in text.splitlines())
        d.docker("create", "--name", "web", "--link", "db:pg", "busybox", "true")
        links = json.loads(out(d.docker("inspect", "web")))[0]["HostConfig"]["Links"]
        assert links == ["/db:/web/pg"]
        d.docker("rm", "--link", "/web/pg")
        assert json.loads(out(d.docker("inspect", "web")))[0]["HostConfig"]["Links"] is None
        missing = d.docker("run", "--rm", "--link", "nosuch:x", "busybox", "true", check=False)
        assert missing.returncode != 0
    finally:
        d.docker("rm", "-f", db, "web", check=False)


def test_the_containers_names_resolve_to_its_address(d):
    # As on Docker: the container's own line names its address, FQDN first (`hostname -i`).
    text = out(d.docker("run", "--rm", "--hostname", "box", "--domainname", "example.org", "busybox",
                        "sh", "-c", "hostname -i; ip -o -4 addr show dev eth0; cat /etc/hosts"))
    resolved, addr_line, hosts = text.split("\n", 2)
    ip = addr_line.split()[3].split("/")[0]
    assert resolved == ip
    assert f"{ip}\tbox.example.org box" in hosts.splitlines()
    assert "127.0.1.1" not in hosts
    # Without an address of its own, the name still resolves, to a loopback address.
    none = out(d.docker("run", "--rm", "--network", "none", "--hostname", "box", "busybox",
                        "hostname", "-i"))
    assert none == "127.0.1.1\n"


COMPOSE_FILE = """version: "2.4"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo page-web > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["127.0.0.1:{port}:80"]
    volumes: ["data:/www"]
  client:
    image: busybox
    command: ["sh", "-c", "echo client-up; exec sleep 300"]
volumes:
  data: {{}}
"""


@pytest.mark.skipif(not COMPOSE, reason="docker-compose not installed")
def test_docker_compose_project(d, tmp_path):
    port = free_port()
    project = tmp_path / "proj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(COMPOSE_FILE.format(port=port))
    env = d.cli_env({"COMPOSE_PROJECT_NAME": "proj"})

    def compose(*args, check=True):
        r = subprocess.run([COMPOSE, *args], cwd=project, env=env, capture_output=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"docker-compose {args}: {r.returncode}\n{r.stdout.decode()}\n"
                                 f"{r.stderr.decode()}\n{d.read_log()}")
        return r.stdout.decode() + r.stderr.decode()

    compose("up", "-d")
    try:
        assert "page-web" in http_get(port)
        ps = compose("ps")
        assert "proj_web_1" in ps and "proj_client_1" in ps and "Up" in ps
        assert "page-web" in compose("exec", "-T", "client", "sh", "-c", GET.format("web"))
        assert "client-up" in compose("logs", "client")
        compose("restart", "web")
        try:
            page = http_get(port)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{compose('ps', check=False)}\n{d.read_log()}")
        assert "page-web" in page
        assert "page-web" in compose("exec", "-T", "client", "sh", "-c", GET.format("web"))
    finally:
        compose("down", "-v")
    assert "proj" not in out(d.docker("network", "ls", "--format", "{{.Name}}"))
    assert "proj_data" not in out(d.docker("volume", "ls", "--format", "{{.Name}}"))


def test_fixed_ip_container_mode_and_daemon_restart(d):
    d.docker("network", "create", "--subnet", "10.77.0.0/24", "fixed")
    try:
        # (--mac-address needs API 1.44 in this CLI; the MAC is Docker's 02:42:<ip>)
        cid = out(d.docker("run", "-d", "--name", "pinned", "--network", "fixed", "--ip", "10.77.0.50",
                           "busybox", "sleep", "300")).strip()
        seen = out(d.docker("exec", cid, "sh", "-c", "ip -4 addr show eth0; cat /sys/class/net/eth0/address"))
        assert "10.77.0.50/24" in seen and "02:42:0a:4d:00:32" in seen
        # --network container:X shares the namespace, address included
        joined = out(d.docker("run", "--rm", "--network", f"container:{cid}", "busybox", "ip", "-4", "addr"))
        assert "10.77.0.50" in joined
        bad = d.docker("run", "--rm", "--network", "fixed", "--ip", "10.78.0.5", "busybox", "true", check=False)
        assert bad.returncode != 0 and b"no configured subnet" in bad.stderr
        overlap = d.docker("network", "create", "--subnet", "10.77.0.128/25", "clash", check=False)
        assert overlap.returncode != 0 and b"overlaps" in overlap.stderr
        # a daemon restart rebuilds the bridge; the address stays with the container
        d.stop()
        d.start()
        # connected while stopped: plugged in at the next start, as eth1
        d.docker("network", "create", "--subnet", "10.79.0.0/24", "second")
        d.docker("network", "connect", "second", cid)
        d.docker("start", cid)
        assert "10.77.0.50/24" in out(d.docker("exec", cid, "ip", "-4", "addr", "show", "eth0"))
        assert "10.79.0.2/24" in out(d.docker("exec", cid, "ip", "-4", "addr", "show", "eth1"))
        peer = out(d.docker("run", "--rm", "--network", "fixed", "busybox", "sh", "-c",
                            "ping -c 1 -W 3 pinned >/dev/null && echo reached"))
        assert "reached" in peer
    finally:
        d.docker("rm", "-f", "pinned", check=False)
        d.docker("network", "rm", "fixed", "second", check=False)


UDP_ECHO = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 9999))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(65535)\n"
            "    s.sendto(b'echo:' + data, peer)\n")


def test_udp_echo_through_a_published_port(d):
    # busybox has no UDP server: the host's python3 serves inside the container, its /usr bound
    # read-only over the image's (Debian's merged /usr: /lib and /lib64 live under it).
    port = free_port()
    cid = out(d.docker("run", "-d", "-p", f"127.0.0.1:{port}:9999/udp",
                       "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro",
                       "busybox", "/usr/bin/python3", "-c", UDP_ECHO)).strip()
    try:
        assert f"127.0.0.1:{port}" in out(d.docker("port", cid, "9999/udp"))
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for i, c in enumerate(clients):
                c.settimeout(0.5)
                answer = None
                for _ in range(40):     # until the server inside is up (bounded)
                    c.sendto(f"ping{i}".encode(), ("127.0.0.1", port))
                    try:
                        answer = c.recv(100)
                        break
                    except socket.timeout:
                        continue
                assert answer == f"echo:ping{i}".encode()
        finally:
            for c in clients:
                c.close()
    finally:
        d.docker("rm", "-f", cid, check=False)


def test_default_bridge_cannot_reach_host_abstract_sockets(d):
    name = f"minidock-test-{os.getpid()}-{time.monotonic_ns()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)               # abstract: scoped by network namespace
    srv.listen(1)
    try:
        probe = ("import socket\n"
                 "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                 "try:\n"
                 f"    s.connect('\\0{name}')\n"
                 "    print('reached')\n"
                 "except OSError as e:\n"
                 "    print('refused', e.errno)\n")
        res = out(d.docker("run", "--rm", "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro",
                           "-v", "/usr/lib64:/lib64:ro", "busybox", "/usr/bin/python3", "-c", probe))
        assert res.startswith("refused"), res
        # the same probe with --network host does reach it: the test can tell the difference
        res = out(d.docker("run", "--rm", "--network", "host", "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro",
                           "-v", "/usr/lib64:/lib64:ro", "busybox", "/usr/bin/python3", "-c", probe))
        assert res.startswith("reached"), res
    finally:
        srv.close()


def test_embedded_dns_forwards_to_a_loopback_resolver(d):
    # A fake resolver on the host's 127.0.0.1:53 (the test runs as root), which no container can
    # reach itself; the container names it with --dns and the embedded DNS forwards to it from
    # the daemon's (host) namespace. Container names are still answered by the embedded DNS.
    from minidock import dns
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        upstream.bind(("127.0.0.1", 53))
    except OSError as e:
        upstream.close()
        pytest.skip(f"cannot serve a fake resolver on 127.0.0.1:53: {e}")
    upstream.settimeout(0.5)
    asked = []

    def serve():
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                data, peer = upstream.recvfrom(65535)
            except OSError:
                continue
            q = dns.parse_query(data)
            if q is not None:
                asked.append(q.name)
                upstream.sendto(dns.build_answer(q, ["10.11.12.13"]), peer)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    d.docker("network", "create", "dnsnet")
    try:
        srv = out(d.docker("run", "-d", "--network", "dnsnet", "--name", "named", "busybox",
                           "sleep", "60")).strip()
        text = out(d.docker("run", "--rm", "--network", "dnsnet", "--dns", "127.0.0.1", "busybox",
                            "sh", "-c", "nslookup outside.test; nslookup named"))
        assert "10.11.12.13" in text and "outside.test" in asked
        ip = json.loads(out(d.docker("inspect", srv)))[0]["NetworkSettings"]["Networks"]["dnsnet"]["IPAddress"]
        assert ip in text and "named" not in asked
    finally:
        d.docker("rm", "-f", "named", check=False)
        d.docker("network", "rm", "dnsnet", check=False)
        upstream.close()


def test_info_tells_the_network_layout(d):
    info = d.client().get("/info")
    assert info["Plugins"]["Network"] == ["bridge", "host", "null"]
    layout = dict((k, v) for k, v in info["SystemStatus"])["Network namespace"]
    assert layout.startswith("daemon-owned, held by pid") and "docker0 172.17.0.0/16" in layout
    assert info["DefaultAddressPools"][0] == {"Base": "172.17.0.0/16", "Size": 16}


def test_bip_and_default_address_pool_flags():
    daemon = Daemon(extra_args=["--bip", "10.123.0.1/24",
                                "--default-address-pool", "base=10.124.0.0/16,size=24"])
    daemon.start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        bridge = json.loads(out(daemon.docker("network", "inspect", "bridge")))[0]
        assert bridge["IPAM"]["Config"] == [{"Subnet": "10.123.0.0/24", "Gateway": "10.123.0.1"}]
        daemon.docker("network", "create", "pooled")
        pooled = json.loads(out(daemon.docker("network", "inspect", "pooled")))[0]
        assert pooled["IPAM"]["Config"][0]["Subnet"] == "10.124.0.0/24"
        seen = out(daemon.docker("run", "--rm", "busybox", "ip", "-4", "addr", "show", "eth0"))
        assert "10.123.0.2/24" in seen
    finally:
        daemon.cleanup()


def _links(pid):
    """{name: (flags, peer ifindex or None, master or None, ifindex)} of the network namespace
    of process or thread `pid`, as `ip -o link` (run there with nsenter) shows them."""
    text = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link"], check=True,
                          capture_output=True, text=True).stdout
    links = {}
    for line in text.splitlines():
        index, name, rest = line.split(": ", 2)
        name, _, peer = name.partition("@if")
        words = rest.split()
        master = words[words.index("master") + 1] if "master" in words else None
        links[name] = (words[0].strip("<>").split(","), int(peer) if peer else None, master,
                       int(index))
    return links


def _keeper(daemon_pid):
    """The TID of the daemon's thread that holds its network namespace (network.py)."""
    own = os.readlink(f"/proc/{daemon_pid}/ns/net")
    for tid in os.listdir(f"/proc/{daemon_pid}/task"):
        if os.readlink(f"/proc/{daemon_pid}/task/{tid}/ns/net") != own:
            return int(tid)
    raise AssertionError("no keeper thread")


def _pooled_with_veth(daemon_pid, timeout=10):
    """(pid, eth0 as _links tells it) of the daemon's idle pooled init once its veth is made
    and up (the init brings eth0 up a moment after the veth appears in its namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in proctree.children(daemon_pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "minidock-pool":
                        continue
                eth0 = _links(pid).get("eth0")
            except (OSError, subprocess.CalledProcessError):
                continue                # gone meanwhile
            if eth0 and "UP" in eth0[0]:
                return pid, eth0
        time.sleep(0.05)
    raise AssertionError("no pooled init with a veth that is up")


def test_a_containers_interfaces_have_ipv6_off_as_on_docker(d):
    # Docker (26 and later) disables IPv6 on a container's interface on an IPv4-only network;
    # lo keeps ::1. Each path that makes an interface: at the start (after a `none` run, so
    # not made ahead), made ahead by a pooled init (after a bridge run), and hot-plugged.
    probe = ("cat /proc/sys/net/ipv6/conf/{0}/disable_ipv6; ip -6 -o addr show dev {0} | wc -l; "
             "ip -6 -o addr show dev lo | grep -c '::1/128'")
    for before in ("none", "bridge"):
        d.docker("run", "--rm", "--network", before, "busybox", "true")
        assert out(d.docker("run", "--rm", "busybox", "sh", "-c", probe.format("eth0"))).split() == ["1", "0", "1"]
    c = out(d.docker("run", "-d", "busybox", "sleep", "60")).strip()
    d.docker("network", "create", "plugged")
    try:
        d.docker("network", "connect", "plugged", c)
        assert out(d.docker("exec", c, "sh", "-c", probe.format("eth1"))).split() == ["1", "0", "1"]
    finally:
        d.docker("rm", "-f", c)
        d.docker("network", "rm", "plugged")


def test_a_bridge_start_takes_the_veth_its_pooled_init_made_ahead(d):
    # After a run on a network, the spawner's next pooled init makes the veth of that network
    # ahead, while idle (network.VethAhead): eth0 up but silent in its namespace, the daemon
    # end on the bridge. The next run on that network is that very veth, given its MAC and
    # address.
    daemon, keeper = d.proc.pid, _keeper(d.proc.pid)
    probe = ("cat /sys/class/net/eth0/iflink /sys/class/net/eth0/address; "
             "ip -o -4 addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; ls /sys/class/net")
    d.docker("run", "--rm", "busybox", "true")
    pooled, (flags, peer, _, _) = _pooled_with_veth(daemon)
    assert "UP" in flags                                      # up, so its bridge port is too,
    idle_addrs = subprocess.run(["nsenter", "-t", str(pooled), "-n", "ip", "-o", "addr", "show", "dev", "eth0"],
                                check=True, capture_output=True, text=True).stdout
    assert idle_addrs == ""                                   # but silent: no address, no IPv6
    daemon_end = next(link for link in _links(keeper).values() if link[3] == peer)
    assert daemon_end[2] == "docker0"
    iflink, mac, ip, *names = out(d.docker("run", "--rm", "busybox", "sh", "-c", probe)).split()
    assert int(iflink) == peer                                # the same pair
    assert mac == "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
    assert sorted(names) == ["eth0", "lo"]
    # A run it does not fit -- no network, another network -- is not given it (removing a veth
    # costs a grace period): that init is given up, and the run gets what it asked for.
    def given_up(pid):
        wait_for(lambda: proctree.stat(pid) is None, what="the pooled init exited and reaped")

    pooled, (_, peer, _, _) = _pooled_with_veth(daemon)
    assert out(d.docker("run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net")).split() == ["lo"]
    given_up(pooled)
    d.docker("run", "--rm", "busybox", "true")
    pooled, (_, peer, _, _) = _pooled_with_veth(daemon)
    d.docker("network", "create", "ahead")
    try:
        bridge = "br-" + out(d.docker("network", "inspect", "-f", "{{.Id}}", "ahead")).strip()[:12]
        iflink, names = out(d.docker("run", "--rm", "--network", "ahead", "busybox", "sh", "-c",
                                     "cat /sys/class/net/eth0/iflink; ls /sys/class/net")).split(None, 1)
        assert int(iflink) != peer and sorted(names.split()) == ["eth0", "lo"]
        # ... and the pool follows: once the init made for docker0 is given up (it exits a
        # moment after the run), the next veth made ahead is on the new network's bridge.
        given_up(pooled)
        _, (_, peer, _, _) = _pooled_with_veth(daemon)
        assert next(link for link in _links(keeper).values() if link[3] == peer)[2] == bridge
    finally:
        d.docker("network", "rm", "ahead")


def test_a_second_network_is_plugged_beside_the_veth_made_ahead(d):
    # The veth made ahead is the first endpoint's; a second network's is made at the start,
    # through the daemon's namespace, in the same init step (network.attach_container).
    d.docker("network", "create", "first")
    d.docker("network", "create", "second")
    try:
        d.docker("run", "--rm", "--network", "first", "busybox", "true")
        _, (_, peer, _, _) = _pooled_with_veth(d.proc.pid)
        text = out(d.docker("run", "--rm", "--network", "first", "--network", "second", "busybox", "sh", "-c",
                            "cat /sys/class/net/eth0/iflink /proc/sys/net/ipv6/conf/eth1/disable_ipv6; "
                            "ip -o -4 addr | awk '{print $2, $4}'; ip route | grep default"))
        iflink, disabled, *rest = text.splitlines()
        subnets = {json.loads(out(d.docker("network", "inspect", name)))[0]["IPAM"]["Config"][0]["Gateway"]: name
                   for name in ("first", "second")}
        assert int(iflink) == peer and disabled == "1"
        addrs = dict(line.split() for line in rest if line.startswith("eth"))
        assert set(addrs) == {"eth0", "eth1"}
        for eth, name in (("eth0", "first"), ("eth1", "second")):
            gateway = next(gw for gw, n in subnets.items() if n == name)
            assert ipaddress.ip_address(gateway) in ipaddress.ip_interface(addrs[eth]).network
        default = next(line for line in rest if line.startswith("default")).split()[2]
        assert subnets[default] == "first"                  # eth0, the first network's gateway
    finally:
        d.docker("network", "rm", "first", "second")
