"""layers: content-addressed store, rw layers (overlay as uid 65534 in a userns, and vfs), changes."""

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap

import pytest

from minidock import errors, layers, tarsafe
from tests.rootfs_helpers import busybox_rootfs_tar, names_in, tar_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ids_follow_the_oci_spec(tmp_path):
    store = layers.LayerStore(str(tmp_path))
    data = tar_bytes([("a", "file", "1")])
    meta = store.register(io.BytesIO(data))
    import hashlib
    assert meta["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert meta["chain_id"] == meta["diff_id"]
    top = store.register(io.BytesIO(tar_bytes([("b", "file", "2")])), parent=meta["chain_id"])
    expected = "sha256:" + hashlib.sha256(f"{meta['chain_id']} {top['diff_id']}".encode()).hexdigest()
    assert top["chain_id"] == expected
    assert store.lowers(top["chain_id"]) == [meta["chain_id"], top["chain_id"]]
    with open(store.tar_path(top["chain_id"]), "rb") as f:       # exact bytes kept
        assert hashlib.sha256(f.read()).hexdigest() == top["diff_id"].split(":")[1]


def test_same_layer_stored_once_and_pruned_when_unused(tmp_path):
    store = layers.LayerStore(str(tmp_path))
    data = tar_bytes([("a", "file", "1")])
    a = store.register(io.BytesIO(data))
    b = store.register(io.BytesIO(data))
    assert a["chain_id"] == b["chain_id"] and len(store.all_layers()) == 1
    top = store.register(io.BytesIO(tar_bytes([("b", "file", "2")])), parent=a["chain_id"])
    assert store.prune({top["chain_id"]}) == []                  # the base is needed by the top
    assert store.prune(set()) != [] and store.all_layers() == []
    assert os.listdir(tmp_path / "l") == []


def test_corrupt_layer_leaves_nothing(tmp_path):
    store = layers.LayerStore(str(tmp_path))
    bad = busybox_rootfs_tar()[:20000]
    with pytest.raises(errors.InvalidParameter):
        store.register(io.BytesIO(bad))
    assert store.all_layers() == [] and os.listdir(tmp_path / "tmp") == []


def _make_rw(store, cid):
    base = store.register(io.BytesIO(busybox_rootfs_tar()))
    top = store.register(io.BytesIO(tar_bytes([("etc/motd", "file", "hi"), ("etc/.wh.passwd", "file", "")])),
                         parent=base["chain_id"])
    store.create_rw(cid, top["chain_id"])
    return top


def _mutate(merged):
    with open(os.path.join(merged, "etc", "new"), "w") as f:        # added
        f.write("new")
    with open(os.path.join(merged, "etc", "motd"), "a") as f:       # modified
        f.write("more")
    os.unlink(os.path.join(merged, "bin", "ls"))                   # deleted


EXPECTED_CHANGES = [{"Path": "/bin", "Kind": 0}, {"Path": "/bin/ls", "Kind": 2}, {"Path": "/etc", "Kind": 0},
                    {"Path": "/etc/motd", "Kind": 0}, {"Path": "/etc/new", "Kind": 1}]


def test_vfs_driver_changes_diff_export(tmp_path):
    store = layers.LayerStore(str(tmp_path), driver=layers.VFS)
    _make_rw(store, "c1")
    merged = store.mount("c1")
    assert not os.path.exists(os.path.join(merged, "etc", "passwd"))   # whiteout applied
    assert os.readlink(os.path.join(merged, "bin", "sh")) == "busybox"
    _mutate(merged)
    assert store.changes("c1") == EXPECTED_CHANGES
    out = io.BytesIO()
    store.diff_tar("c1", out)
    assert sorted(names_in(out.getvalue())) == ["bin", "bin/.wh.ls", "etc", "etc/motd", "etc/new"]
    out = io.BytesIO()
    store.export("c1", out)
    assert "bin/busybox" in names_in(out.getvalue())
    store.remove_rw("c1")
    assert not os.path.exists(tmp_path / "containers" / "c1")


DRIVER_SCRIPT = textwrap.dedent("""
    import io, json, os, stat, sys
    sys.path.insert(0, sys.argv[1])
    from minidock import layers
    from tests.rootfs_helpers import busybox_rootfs_tar, tar_bytes, names_in
    from tests.test_layers import _make_rw, _mutate
    result = {"uid_map": open("/proc/self/uid_map").read().split()}
    store = layers.LayerStore(sys.argv[2])
    result["driver"] = store.driver_name()
    result["driver_error"] = store.driver_error
    top = _make_rw(store, "c1")
    lower = store.diff_dir(top["chain_id"])
    st = os.lstat(os.path.join(lower, "etc", "passwd"))
    result["lower_whiteout"] = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    merged = store.mount("c1")
    result["mounted"] = any(l.split()[4] == merged for l in open("/proc/self/mountinfo"))
    result["passwd_hidden"] = not os.path.exists(os.path.join(merged, "etc", "passwd"))
    _mutate(merged)
    st = os.lstat(os.path.join(store.root, "containers", "c1", "upper", "bin", "ls"))
    result["upper_whiteout"] = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    result["changes"] = store.changes("c1")
    out = io.BytesIO(); store.diff_tar("c1", out)
    result["diff"] = sorted(names_in(out.getvalue()))
    out = io.BytesIO(); store.export("c1", out)
    result["export_has_busybox"] = "bin/busybox" in names_in(out.getvalue())
    store.unmount("c1")
    result["unmounted"] = not os.path.ismount(merged)
    # AutoRemove's rootfs: `volatile` (no syncs of upper/), which the kernel shows in mountinfo
    # ("volatile", or "fsync=volatile" since 6.x) and marks in the work dir; a later mount must
    # still succeed (the marker is dropped first).
    def options(path):
        line = next(l for l in open("/proc/self/mountinfo") if l.split()[4] == path)
        return [o.replace("fsync=", "") for o in line.split(" - ")[1].split()[2].split(",")]
    merged = store.mount("c1", volatile=True)
    result["volatile_shown"] = "volatile" in options(merged)
    store.unmount("c1")
    merged = store.mount("c1")
    result["remounted_plain"] = "volatile" not in options(merged)
    store.unmount("c1")
    # an unmount decided earlier (at an exit) keeps a mount asked for since (a restart)
    store.mount("c1")
    seen = store.mount_generation("c1")
    store.mount("c1")
    store.unmount("c1", generation=seen)
    result["kept_for_a_later_mount"] = os.path.ismount(merged)
    store.unmount("c1", generation=store.mount_generation("c1"))
    result["unmounted_at_its_generation"] = not os.path.ismount(merged)
    # the detach is at once; the file system is freed when `later` runs its release, and a
    # mount meanwhile waits for that (two overlays must not share an upper or work dir)
    store.mount("c1")
    releases = []
    store.unmount("c1", later=releases.append)
    result["detached_before_release"] = not os.path.ismount(merged) and len(releases) == 1
    import threading
    released = []
    threading.Timer(0.2, lambda: (released.append(1), releases[0]())).start()
    store.mount("c1")
    result["remounted_after_release"] = os.path.ismount(merged) and released == [1]
    store.unmount("c1")
    result["shared_init"] = (store.rw_info("c1")["init"] == "shared"
                             and not os.path.exists(os.path.join(store.root, "containers", "c1", "init")))
    pending = []
    store.remove_rw("c1", later=pending.append)
    result["gone_at_once"] = not os.path.exists(os.path.join(store.root, "containers", "c1"))
    result["trash_until_later"] = len(os.listdir(os.path.join(store.root, "tmp"))) == 1
    pending[0]()
    result["trash_emptied"] = os.listdir(os.path.join(store.root, "tmp")) == []
    print(json.dumps(result))
""")


def test_overlay_rw_layer_as_uid_65534_in_a_user_namespace(tmp_path):
    """The daemon's real situation: an unprivileged uid, root only inside its own userns."""
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.skip("setpriv/unshare not installed")
    sandbox = tempfile.mkdtemp(prefix="minidock-layers-")
    try:
        os.chmod(sandbox, 0o755)
        code = os.path.join(sandbox, "code")
        shutil.copytree(os.path.join(REPO, "minidock"), os.path.join(code, "minidock"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        os.makedirs(os.path.join(code, "tests"))
        for name in ("rootfs_helpers.py", "test_layers.py"):
            shutil.copy(os.path.join(REPO, "tests", name), os.path.join(code, "tests", name))
        open(os.path.join(code, "tests", "__init__.py"), "w").close()
        with open(os.path.join(sandbox, "script.py"), "w") as f:
            f.write(DRIVER_SCRIPT)
        data = os.path.join(sandbox, "data")
        os.mkdir(data, 0o700)
        os.chown(data, 65534, 65534)
        stub = os.path.join(code, "pytest.py")      # test_layers imports pytest; nobody's python lacks it
        with open(stub, "w") as f:
            f.write("def fixture(f): return f\nclass mark: pass\n")
        proc = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "unshare", "-Urm",
             "/usr/bin/python3", "-S", os.path.join(sandbox, "script.py"), code, data],
            capture_output=True, text=True, timeout=60, cwd=sandbox)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["rm", "-rf", sandbox])
    assert result["uid_map"][:3] == ["0", "65534", "1"]
    if result["driver"] != layers.OVERLAY:
        pytest.skip(f"overlay refused in a user namespace here: {result['driver_error']}")
    assert result["lower_whiteout"] and result["mounted"] and result["passwd_hidden"]
    assert result["upper_whiteout"]
    assert result["changes"] == EXPECTED_CHANGES
    assert result["diff"] == ["bin", "bin/.wh.ls", "etc", "etc/motd", "etc/new"]
    assert result["export_has_busybox"] and result["unmounted"]
    assert result["volatile_shown"] and result["remounted_plain"]
    assert result["kept_for_a_later_mount"] and result["unmounted_at_its_generation"]
    assert result["detached_before_release"] and result["remounted_after_release"]
    assert result["shared_init"]
    assert result["gone_at_once"] and result["trash_until_later"] and result["trash_emptied"]


def test_deep_images_are_flattened(tmp_path):
    store = layers.LayerStore(str(tmp_path))
    if store.driver_name() != layers.OVERLAY:
        pytest.skip("overlay not available")
    parent = None
    for i in range(layers.MAX_LOWERS + 2):
        parent = store.register(io.BytesIO(tar_bytes([(f"f{i}", "file", str(i))])), parent=parent)["chain_id"]
    store.create_rw("deep", parent)
    assert store.rw_info("deep")["flat"]
    merged = store.mount("deep")
    try:
        assert open(os.path.join(merged, f"f{layers.MAX_LOWERS + 1}")).read() == str(layers.MAX_LOWERS + 1)
    finally:
        store.remove_rw("deep")


def test_init_layer_mount_points_are_not_container_changes_vfs(tmp_path):
    """The generated /etc files' mount points exist in the container's root, but neither
    changes() nor the commit tar report them (Docker's -init layer)."""
    import io
    import tarfile
    from minidock.layers import LayerStore
    store = LayerStore(str(tmp_path / "store"), driver="vfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    buf.seek(0)
    layer = store.register(buf)
    store.create_rw("c1", layer["chain_id"])
    merged = store.mount("c1")
    for name in ("hosts", "hostname", "resolv.conf"):
        assert os.path.isfile(os.path.join(merged, "etc", name))
    assert store.changes("c1") == []
    with open(os.path.join(merged, "etc", "motd"), "w") as f:
        f.write("hi\n")
    assert store.changes("c1") == [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/motd", "Kind": 1}]
    out = io.BytesIO()
    store.diff_tar("c1", out)
    out.seek(0)
    names = tarfile.open(fileobj=out).getnames()
    assert "etc/motd" in names and not any(n.startswith("etc/host") or "resolv" in n for n in names)
