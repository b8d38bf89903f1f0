"""docker-py 7.1 (which refuses daemons older than API 1.24) as a second real client."""

import pytest

from rootfs import make_rootfs_tar  # noqa: F401  (the fixture uses it)

docker = pytest.importorskip("docker", reason="docker-py is not installed on this machine")

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("version", ["1.24", "auto"])
def test_docker_py_round_trip(rootless, version):
    """The same round trip at API 1.24 and negotiated (`auto` asks /version and speaks 1.47)."""
    client = docker.DockerClient(base_url=rootless.host, version=version)
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.47"
    assert client.api.api_version == ("1.47" if version == "auto" else "1.24")
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
