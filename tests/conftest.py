import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support import Daemon  # noqa: E402


@pytest.fixture
def daemon_factory():
    """Start real daemons (unprivileged by default); all are stopped and removed in teardown."""
    started = []

    def start(**kwargs):
        d = Daemon(**kwargs)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.cleanup()


@pytest.fixture(scope="module")
def rootless():
    """One daemon per test module, run as uid 65534 with no subordinate ids, with a `busybox`
    image imported from a rootfs built from the host's static busybox."""
    from rootfs import make_rootfs_tar
    d = Daemon().start()
    try:
        tar = make_rootfs_tar(os.path.join(d.base, "busybox.tar"))
        d.docker("import", tar, "busybox")
        yield d
    finally:
        d.cleanup()
