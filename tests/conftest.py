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
