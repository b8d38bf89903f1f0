"""seccomp in real containers, with the docker CLI, against an unprivileged daemon."""

import json
import os

import pytest

import tiny_elf
from minidock import seccomp

pytestmark = pytest.mark.skipif(seccomp.native_arch() != "x86_64",
                                reason="the built-in profile's syscall table is x86-64's")


@pytest.fixture(scope="module")
def tools(rootless):
    """A directory holding a static keyctl test program, bound into containers at /t."""
    path = os.path.join(rootless.base, "tools")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "keyctl"), "wb") as f:
        f.write(tiny_elf.keyctl_program())
    os.chmod(path, 0o755)
    os.chmod(os.path.join(path, "keyctl"), 0o755)
    return path


def run(d, *args, check=False):
    return d.docker("run", "--rm", *args, check=check)


def test_default_container_is_filtered(rootless):
    out = run(rootless, "busybox", "grep", "Seccomp:", "/proc/self/status", check=True)
    assert out.stdout.split() == [b"Seccomp:", b"2"]


def test_keyctl_is_eperm_by_default_and_works_unconfined(rootless, tools):
    assert run(rootless, "-v", f"{tools}:/t:ro", "busybox", "/t/keyctl").returncode == 1   # EPERM
    unconfined = run(rootless, "--security-opt", "seccomp=unconfined", "-v", f"{tools}:/t:ro",
                     "busybox", "/t/keyctl")
    assert unconfined.returncode == 0, unconfined.stderr


def test_nested_user_namespace_refused_by_default_and_allowed_unconfined(rootless):
    refused = run(rootless, "busybox", "unshare", "-U", "true")
    assert refused.returncode != 0 and b"Operation not permitted" in refused.stderr
    ok = run(rootless, "--security-opt", "seccomp=unconfined", "busybox", "unshare", "-U", "true")
    assert ok.returncode == 0, ok.stderr
    out = run(rootless, "--security-opt", "seccomp=unconfined", "busybox", "grep", "Seccomp:",
              "/proc/self/status", check=True)
    assert out.stdout.split() == [b"Seccomp:", b"0"]


def test_privileged_is_unconfined(rootless):
    out = run(rootless, "--privileged", "busybox", "grep", "Seccomp:", "/proc/self/status", check=True)
    assert out.stdout.split() == [b"Seccomp:", b"0"]


def test_a_docker_profile_file(rootless):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": 13}]}
    path = os.path.join(rootless.base, "profile.json")
    with open(path, "w") as f:
        json.dump(profile, f)
    # The CLI reads the file and sends its JSON in HostConfig.SecurityOpt.
    out = run(rootless, "--security-opt", f"seccomp={path}", "busybox", "mkdir", "/tmp/x")
    assert out.returncode != 0 and b"Permission denied" in out.stderr
    assert run(rootless, "busybox", "mkdir", "/tmp/x").returncode == 0


def test_a_broken_profile_is_a_clean_error(rootless):
    path = os.path.join(rootless.base, "broken.json")
    with open(path, "w") as f:
        json.dump({"defaultAction": "SCMP_ACT_NOTIFY"}, f)
    out = run(rootless, "--security-opt", f"seccomp={path}", "busybox", "true")
    assert out.returncode != 0 and b"unsupported action" in out.stderr
    assert "Traceback" not in rootless.read_log()


def test_exec_gets_the_containers_filter(rootless, tools):
    cid = rootless.docker("run", "-d", "-v", f"{tools}:/t:ro", "busybox", "sleep", "600").stdout.decode().strip()
    try:
        out = rootless.docker("exec", cid, "grep", "Seccomp:", "/proc/self/status")
        assert out.stdout.split() == [b"Seccomp:", b"2"]
        assert rootless.docker("exec", cid, "/t/keyctl", check=False).returncode == 1
    finally:
        rootless.docker("rm", "-f", cid)


def test_info_lists_seccomp(rootless):
    info = rootless.client("1.47").get("/info")
    assert "name=seccomp,profile=builtin" in info["SecurityOptions"]
    assert "seccomp" in rootless.client("1.24").get("/info")["SecurityOptions"]   # bare names before 1.25
