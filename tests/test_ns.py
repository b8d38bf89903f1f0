"""ns.py pieces that need no namespace: users from a rootfs, scoped paths, capabilities,
subordinate id ranges, the user-namespace support check, start errors. (Running containers
is tested in test_spawner.py.)"""

import errno
import os
import resource
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import rootfs as rootfs_helper  # noqa: E402

from minidock import errors, mounts, ns, syscalls, userns  # noqa: E402


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rootfs"))
    rootfs_helper.make_rootfs(root)
    return root


def test_resolve_user_forms(rootfs):
    assert ns.resolve_user(rootfs, "") == (0, 0, [])
    assert ns.resolve_user(rootfs, "root") == (0, 0, [])
    assert ns.resolve_user(rootfs, "user") == (1000, 1000, [50])      # member of staff
    assert ns.resolve_user(rootfs, "1000") == (1000, 1000, [50])
    assert ns.resolve_user(rootfs, "1000:1000") == (1000, 1000, [])
    assert ns.resolve_user(rootfs, "user:staff") == (1000, 50, [])
    assert ns.resolve_user(rootfs, "4242") == (4242, 0, [])           # unknown uid: gid 0
    assert ns.resolve_user(rootfs, "4242:7") == (4242, 7, [])
    assert ns.resolve_user(rootfs, "user", ["nogroup", "12"]) == (1000, 1000, [12, 50, 65534])


def test_resolve_user_unknown_names(rootfs):
    with pytest.raises(errors.InvalidParameter, match="unable to find user bob"):
        ns.resolve_user(rootfs, "bob")
    with pytest.raises(errors.InvalidParameter, match="unable to find group wheel"):
        ns.resolve_user(rootfs, "user:wheel")
    with pytest.raises(errors.InvalidParameter, match="unable to find group wheel"):
        ns.resolve_user(rootfs, "user", ["wheel"])


def test_resolve_user_reads_the_containers_files_not_the_hosts(tmp_path):
    # An absolute symlink must resolve inside the rootfs, not on the host.
    (tmp_path / "etc").mkdir()
    (tmp_path / "real").write_text("alice:x:77:88::/home/alice:/bin/sh\n")
    os.symlink("/real", tmp_path / "etc" / "passwd")
    assert ns.resolve_user(str(tmp_path), "alice") == (77, 88, [])
    assert ns.user_home(str(tmp_path), 77) == "/home/alice"
    assert ns.user_home(str(tmp_path), 5) == "/"


def test_in_root_keeps_symlinks_inside(tmp_path):
    root = str(tmp_path)
    os.makedirs(f"{root}/a/b")
    os.symlink("/a", f"{root}/abs")
    os.symlink("../../../../..", f"{root}/a/up")
    assert mounts.in_root(root, "/abs/b") == f"{root}/a/b"
    assert mounts.in_root(root, "/a/up/etc/passwd") == f"{root}/etc/passwd"
    assert mounts.in_root(root, "/../../x") == f"{root}/x"
    os.symlink("loop", f"{root}/loop")
    with pytest.raises(OSError) as e:
        mounts.in_root(root, "/loop")
    assert e.value.errno == errno.ELOOP


def test_capability_set():
    default = ns.capability_set()
    assert sum(1 << c for c in default) == 0xa80425fb          # Docker's CapEff
    added = ns.capability_set(["NET_ADMIN"], ["cap_chown"])
    assert 12 in added and 0 not in added
    assert ns.capability_set(privileged=True) == list(range(len(ns.CAPABILITIES)))
    assert ns.capability_set(cap_drop=["ALL"]) == []
    assert ns.capability_set(["ALL"], ["SYS_ADMIN"]) == [
        c for c in range(len(ns.CAPABILITIES)) if c != 21]
    with pytest.raises(errors.InvalidParameter):
        ns.capability_set(["FLY"])


def test_subordinate_range(tmp_path):
    f = tmp_path / "subuid"
    f.write_text("other:100000:65536\nroot:200000:1000\n4242:300000:65536\n")
    assert userns._subordinate_range(str(f), 0) == (200000, 1000)     # by name
    assert userns._subordinate_range(str(f), 4242) == (300000, 65536)  # by number
    assert userns._subordinate_range(str(f), 4243) is None
    assert userns._subordinate_range(str(tmp_path / "missing"), 0) is None


def test_userns_support_check_passes_here():
    # This machine allows unprivileged user namespaces; the check must agree.
    assert userns.check_userns_support() is None


def test_start_error_round_trip():
    e = syscalls.StartError('exec: "x": executable file not found in $PATH', "exec", errno.ENOENT, 127)
    back = syscalls.StartError.from_record(e.to_record())
    assert (back.message, back.step, back.errno, back.exit_code) == (
        e.message, "exec", errno.ENOENT, 127)
    assert isinstance(back, errors.MinidockError)


def test_find_executable(rootfs, tmp_path):
    env = [f"PATH={rootfs}/bin"]
    assert ns.find_executable("sh", env) == f"{rootfs}/bin/sh"
    with pytest.raises(syscalls.StartError) as e:
        ns.find_executable("nope", env)
    assert e.value.exit_code == 127
    with pytest.raises(syscalls.StartError) as e:
        ns.find_executable(f"{rootfs}/etc/passwd", env)
    assert e.value.exit_code == 126 and "permission denied" in e.value.message
    with pytest.raises(syscalls.StartError) as e:
        ns.find_executable("/no/such/file", env)
    assert e.value.exit_code == 127 and "no such file or directory" in e.value.message


def test_container_pids_of_a_process_in_our_namespace():
    pids = ns.container_pids(os.getpid())
    assert os.getpid() in pids and len(pids) > 1   # the host pid namespace: many processes
    assert ns.container_pids(2 ** 22 + 1) == []


def test_check_arg_limits_agrees_with_execve():
    # What the init checks before it tells the spawner only execve is left (ns._exec), and
    # what the kernel then does with the same strings, a page on either side of the limit.
    def kernel_accepts(environ):
        pid = os.fork()
        if pid == 0:
            try:
                os.execve("/bin/true", ["true"], environ)
            finally:
                os._exit(7)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

    def ours_accept(environ):
        try:
            ns.check_arg_limits("/bin/true", ["true"], environ)
        except syscalls.StartError as e:
            assert (e.exit_code, e.errno) == (125, errno.E2BIG)
            assert e.message == 'exec: "/bin/true": argument list too long'
            return False
        return True

    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = max(min(6 << 20, stack // 4 if stack != resource.RLIM_INFINITY else 6 << 20), 32 * 4096)
    for total in (limit - 4096, limit + 4096):
        environ = {f"V{i}": "x" * 60_000 for i in range(total // 60_000)}
        environ["REST"] = "x" * (total - sum(len(k) + len(v) + 2 for k, v in environ.items()) - 8)
        assert ours_accept(environ) == kernel_accepts(environ) == (total < limit)
    # One string may not exceed 32 pages, however high the stack limit.
    for length, fits in ((32 * 4096 - 3, True), (32 * 4096, False)):
        environ = {"A": "x" * length}
        assert ours_accept(environ) == kernel_accepts(environ) == fits
