"""The middle test layer: the container, exec and volume backends driven through their own
methods, without HTTP, against a real spawner in a real user namespace.

tests/backend_driver.py builds the engine the way the daemon does (as uid 65534, like the
end-to-end daemons), runs its scenarios once per module and prints what it saw; each test
below judges one scenario.
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
NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the test user"),
    pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) missing"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox missing"),
    pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} missing"),
]


@pytest.fixture(scope="module")
def seen():
    base = tempfile.mkdtemp(prefix="minidock-backends-")
    try:
        os.chmod(base, 0o755)
        shutil.copytree(PACKAGE, os.path.join(base, "minidock"), ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(HERE, "backend_driver.py"), base)
        tar = rootfs_helper.make_rootfs_tar(os.path.join(base, "busybox.tar"))
        os.chmod(tar, 0o644)
        state = os.path.join(base, "state")
        os.mkdir(state, 0o700)
        os.chown(state, NOBODY, NOBODY)
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               PYTHON, "-S", os.path.join(base, "backend_driver.py"), state, tar]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=base, timeout=180)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scenario(seen, name):
    result = seen[name]
    assert "exception" not in result, result["exception"]
    return result


def test_create_start_wait_logs(seen):
    r = _scenario(seen, "run_to_exit")
    assert r["created"] == "created"
    assert r["code"] == 3
    assert r["state"] == {"Status": "exited", "ExitCode": 3, "Running": False, "Pid": 0}
    assert sorted(r["logs"]) == [["stderr", "err\n"], ["stdout", "out\n"]]
    assert r["name_again"][0] == "Conflict" and '"/exit3" is already in use' in r["name_again"][1]


def test_stop_then_remove(seen):
    r = _scenario(seen, "stop_and_remove")
    assert r["alive"] and r["counts_running"] == {"running": 1, "paused": 0, "stopped": 0}
    assert r["remove_running"][0] == "Conflict" and "Stop the container" in r["remove_running"][1]
    assert r["start_again"] == ["NotModified", "container already started"]
    # `sleep` as a pid namespace's init ignores SIGTERM: the grace period ends in SIGKILL
    assert (r["status"], r["code"], r["gone"]) == ("exited", 137, True)
    assert r["stop_again"] == ["NotModified", "container already stopped"]
    assert r["pause_exited"][0] == "Conflict"
    assert r["dirs_before"] == [True, True] and r["dirs_after"] == [False, False]
    assert r["status_after"] == "dead" and r["lookup"][0] == "NotFound"


def test_force_remove_of_a_container_that_exits_before_its_kill(seen):
    r = _scenario(seen, "force_remove_as_it_exits")
    assert r["removal"] is None, r        # was: Conflict "Container ... is not running"
    assert r["status"] == "dead" and r["lookup"][0] == "NotFound"


def test_restart_of_a_container_that_exits_before_its_stop(seen):
    r = _scenario(seen, "restart_as_it_exits")
    assert r["restart"] is None, r        # was: NotModified "container already stopped" (a 304)
    assert r["status"] == "running" and r["new_pid"]


def test_pause_unpause_kill(seen):
    r = _scenario(seen, "pause_and_kill")
    assert r["paused"] == ["paused", True]
    assert r["twice"][0] == "Conflict" and "already paused" in r["twice"][1]
    assert r["unpaused"] == "running" and r["code"] == 137


def test_on_failure_restarts_then_gives_up(seen):
    r = _scenario(seen, "restart_policy")
    assert r["done"], r
    assert (r["status"], r["restarts"], r["code"]) == ("exited", 2, 1)
    assert r["backoff"] == 0.2          # 100 ms, then doubled after a quick exit


def test_exec_output_code_and_cleanup(seen):
    r = _scenario(seen, "execs")
    assert (r["stdout"], r["stderr"]) == ("in-box\n", "e\n")
    assert (r["code"], r["running"], r["detached_code"]) == (5, False, 4)
    assert r["exec_ids"] == r["ids"]
    assert r["again"][0] == "Conflict" and "has already run" in r["again"][1]
    assert r["after_remove"][0] == "NotFound"


def test_volumes_named_anonymous_in_use(seen):
    r = _scenario(seen, "volumes")
    assert r["code"] == 0
    assert (r["data"], r["anon"]) == ("hello\n", "anon\n")
    assert r["users"] and r["in_use"][0] == "Conflict" and "volume is in use" in r["in_use"][1]
    assert r["mount_types"] == ["volume", "volume"]
    assert (r["anon_after"], r["data_after"], r["users_after"]) == (False, True, [])
    assert r["data_dir_after"] is False


def test_ctrl_p_ctrl_p_ctrl_q_detaches_both_session_kinds(seen):
    r = _scenario(seen, "attach_detach")
    for kind in ("http", "ws"):
        assert r[kind] == {"echoed": True, "ended": True, "status": "running"}, (kind, r)


def test_list_rows_follow_every_change(seen):
    """The cached `docker ps` rows (describe.RowCache) against the straightforward ones, after
    a create with labels, a rename, a start, a network connect and a stop."""
    r = _scenario(seen, "list_rows")
    assert r["agree"] and all(r["agree"])
    assert r["rows"] == [
        {"Names": ["/lister"], "State": "created", "Status": "Created", "Labels": {"made": "at-create"},
         "Networks": ["bridge"]},
        {"Names": ["/lister2"], "State": "created", "Status": "Created", "Labels": {"made": "at-create"},
         "Networks": ["bridge"]},
        {"Names": ["/lister2"], "State": "running", "Status": "Up", "Labels": {"made": "at-create"},
         "Networks": ["bridge"]},
        {"Names": ["/lister2"], "State": "running", "Status": "Up", "Labels": {"made": "at-create"},
         "Networks": ["bridge", "listnet"]},
        {"Names": ["/lister2"], "State": "exited", "Status": "Exited", "Labels": {"made": "at-create"},
         "Networks": ["bridge", "listnet"]},
    ]
    assert r["gone"]


def test_names_are_found_renamed_freed_and_win_over_id_prefixes(seen):
    r = _scenario(seen, "names")
    assert r["by_name"] == [True, True, True, True]
    kind, message = r["clash"]
    assert kind == "Conflict" and '"/alpha" is already in use by container' in message
    assert r["renamed"][0][0] == "NotFound" and r["renamed"][1] is True
    assert r["name_over_prefix"] is True
    assert r["removed"][0] == "NotFound"
    assert r["reused"] is True
    assert r["left"] == []


def test_a_failed_create_keeps_neither_its_name_nor_its_address(seen):
    r = _scenario(seen, "failed_create")
    assert r["failed"] == "No space left on device"
    first, second = r["addresses"]
    # the address the failed create held for a moment is the next one given
    assert (first.rsplit(".", 1)[0], int(second.rsplit(".", 1)[1])) == \
        (second.rsplit(".", 1)[0], int(first.rsplit(".", 1)[1]) + 1)
