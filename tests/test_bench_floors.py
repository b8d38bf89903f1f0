"""`scripts/bench floors` runs end to end: the real docker CLI completes `docker run --rm` against
the bench's stub engine, and every floor figure gets a value. No time is asserted: what the
figures are worth is the bench's business; this only keeps the tool from rotting (a CLI that
asks the stub for something it does not answer would fail the figure)."""

import os
import shutil
import subprocess
import sys

import pytest

from support import DOCKER

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "scripts", "bench")


@pytest.mark.skipif(not (DOCKER and os.path.exists(DOCKER)), reason="docker CLI missing")
@pytest.mark.skipif(not shutil.which("unshare"), reason="unshare (util-linux) missing")
@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing")
def test_every_floor_figure_is_measured(tmp_path):
    p = subprocess.run([sys.executable, BENCH, "floors", "--runs", "3", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line for line in p.stdout.splitlines() if "] " in line and " this machine " in line]
    assert len(rows) == 8, p.stdout
    for row in rows:
        assert "failed" not in row, row
        median = row.split("this machine")[1].split()[0]
        assert float(median.replace(",", "")) > 0, row
    assert os.listdir(tmp_path) == []            # the fsync figures' files are gone
