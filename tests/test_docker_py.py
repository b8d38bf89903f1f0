"""docker-py 7.1 (which refuses daemons older than API 1.24) as a second real client."""

import pytest

from rootfs import make_rootfs_tar  # noqa: F401  (the fixture uses it)

docker = pytest.importorskip("docker", reason="docker-py is not installed on this machine")

pytestmark = pytest.mark.e2e


def test_docker_py_round_trip(rootless):
    client = docker.DockerClient(base_url=rootless.host, version="1.24")
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.24"
    assert client.containers.run("busybox", ["echo", "from docker-py"], remove=True) == b"from docker-py\n"
    ct = client.containers.run("busybox", ["sh", "-c", "echo hi; sleep 30"], detach=True)
    try:
        result = ct.exec_run(["sh", "-c", "echo exec; exit 3"])
        assert (result.exit_code, result.output) == (3, b"exec\n")
        assert ct.logs() == b"hi\n"
        ct.stop(timeout=1)
        assert ct.wait()["StatusCode"] == 137
    finally:
        ct.remove(force=True)
    assert ["busybox:latest"] in [image.tags for image in client.images.list()]
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("no-such-image")


def test_docker_py_networks(rootless):
    client = docker.DockerClient(base_url=rootless.host, version="1.24")
    net = client.networks.create("pynet", driver="bridge", labels={"from": "docker-py"},
                                 ipam=docker.types.IPAMConfig(pool_configs=[
                                     docker.types.IPAMPool(subnet="10.66.0.0/24")]))
    try:
        assert net.attrs["IPAM"]["Config"][0]["Subnet"] == "10.66.0.0/24"
        assert [n.name for n in client.networks.list(filters={"label": "from=docker-py"})] == ["pynet"]
        srv = client.containers.run("busybox", ["sleep", "60"], detach=True, network="pynet", name="pysrv")
        side = client.networks.create("pyside")
        try:
            other = client.containers.run("busybox", ["sleep", "60"], detach=True, network="pyside")
            try:
                net.connect(other, aliases=["buddy"], ipv4_address="10.66.0.77")
                out = other.exec_run(["sh", "-c", "ping -c 1 -W 3 pysrv >/dev/null && echo ok"]).output
                assert out == b"ok\n"
                # started on the default bridge (host resolvers), connected: the embedded DNS
                plain = client.containers.run("busybox", ["sleep", "60"], detach=True)
                try:
                    net.connect(plain)
                    out = plain.exec_run(["sh", "-c", "ping -c 1 -W 3 buddy >/dev/null && echo ok"]).output
                    assert out == b"ok\n"
                finally:
                    plain.remove(force=True)
                net.reload()
                assert other.id in net.attrs["Containers"]
                assert net.attrs["Containers"][other.id]["IPv4Address"] == "10.66.0.77/24"
                srv_view = srv.exec_run(["nslookup", "buddy"]).output.decode()
                assert "10.66.0.77" in srv_view
                net.disconnect(other)
            finally:
                other.remove(force=True)
        finally:
            srv.remove(force=True)
            side.remove()
    finally:
        net.remove()
