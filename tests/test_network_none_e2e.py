"""`--network none`: a private network stack whose loopback is up, as in Docker."""


def test_network_none_has_lo_up(rootless):
    r = rootless.docker("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                        "ip link show lo; ping -c 1 -W 2 127.0.0.1")
    out = r.stdout.decode()
    assert "<LOOPBACK,UP,LOWER_UP>" in out, out
    assert "1 packets received" in out, out
