"""End-to-end: a container's filesystem from outside -- `docker diff`, `docker export`, `docker cp`
and the archive/copy endpoints -- with the real CLI against a rootless daemon.

The escape tests put a directory on the *host* that the daemon's user (uid 65534) could write to
if it were ever tricked into it, aim container symlinks and hostile tar entries at it, and then
check that nothing appeared there: the only thing standing between the archive and that
directory is tarsafe's in-root resolution, not file permissions.
"""

import base64
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time

import pytest

from minidock.client import APIError

pytestmark = pytest.mark.e2e


def out(result):
    return result.stdout.decode()


def tar_bytes(entries):
    """A tar from (name, kind, data_or_target) tuples; kind in file/dir/symlink/hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tf.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                tf.addfile(info)
            else:
                info.size, info.mode = len(payload), 0o644
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()}


@pytest.fixture(scope="module")
def d(rootless):
    return rootless


@pytest.fixture(scope="module")
def stopped(d):
    """A stopped container that added, changed and deleted files."""
    d.docker("run", "--name", "stopped", "busybox", "sh", "-c",
             "mkdir -p /made/sub && echo one > /made/sub/f && echo top > /made/top"
             " && echo changed >> /etc/passwd && rm /etc/group && ln -s /made/top /made/link", timeout=60)
    return "stopped"


@pytest.fixture(scope="module")
def running(d):
    cid = out(d.docker("run", "-d", "--name", "running", "-v", "rwvol:/data", "-v", "rovol:/ro:ro",
                       "busybox", "sleep", "600")).strip()
    yield cid
    d.docker("rm", "-f", cid, check=False)


@pytest.fixture
def host_dir():
    """A host directory uid 65534 could write into (0777), to catch any escape."""
    path = tempfile.mkdtemp(prefix="minidock-escape-", dir="/tmp")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def path_stat(d, cid, path):
    _, headers, _ = d.client().call("HEAD", f"/containers/{cid}/archive", params={"path": path})
    return json.loads(base64.b64decode(headers["X-Docker-Container-Path-Stat"]))


# -- diff and export ----------------------------------------------------------------------------

def test_diff_kinds(d, stopped):
    lines = out(d.docker("diff", stopped)).splitlines()
    assert "A /made" in lines and "A /made/sub/f" in lines and "A /made/link" in lines
    assert "C /etc" in lines and "C /etc/passwd" in lines and "D /etc/group" in lines
    # the daemon-managed /etc files are not the container's changes (Docker keeps them in -init)
    assert not [x for x in lines if x.endswith(("/etc/hosts", "/etc/hostname", "/etc/resolv.conf"))]
    kinds = {c["Path"]: c["Kind"] for c in d.client().get(f"/containers/{stopped}/changes")}
    assert kinds["/made"] == 1 and kinds["/etc/passwd"] == 0 and kinds["/etc/group"] == 2


def test_diff_of_fresh_container_is_empty(d):
    d.docker("create", "--name", "fresh", "busybox", "true")
    try:
        assert out(d.docker("diff", "fresh")) == ""
    finally:
        d.docker("rm", "fresh")


def test_export(d, stopped):
    path = os.path.join(d.base, "export.tar")
    d.docker("export", "-o", path, stopped)
    with tarfile.open(path) as tf:
        names = set(tf.getnames())
        assert tf.extractfile("made/sub/f").read() == b"one\n"
        assert b"changed" in tf.extractfile("etc/passwd").read()
        assert tf.getmember("made/link").issym() and tf.getmember("made/link").linkname == "/made/top"
    assert {"bin/busybox", "bin/sh", "etc/passwd"} <= names
    assert "etc/group" not in names                         # the deletion shows as absence
    assert not [n for n in names if ".wh." in n]


# -- the archive endpoints -------------------------------------------------------------------------

def test_archive_stat_header(d, stopped):
    st = path_stat(d, stopped, "/made")
    assert st["name"] == "made" and st["mode"] & (1 << 31) and st["mode"] & 0o777 == 0o755
    st = path_stat(d, stopped, "/made/top")
    assert st["name"] == "top" and st["size"] == 4 and st["mode"] == 0o644 and st["linkTarget"] == ""
    st = path_stat(d, stopped, "/made/link")
    assert st["mode"] & (1 << 27) and st["linkTarget"] == "/made/top"
    assert st["mtime"].endswith("Z")


def test_archive_errors(d, stopped):
    client = d.client()
    for path, status in (("/no/such/thing", 404), ("/made/top/", 400), ("/made/top/.", 400), ("", 400)):
        with pytest.raises(APIError) as info:
            client.call("GET", f"/containers/{stopped}/archive", params={"path": path})
        assert info.value.status == status, path
    with pytest.raises(APIError) as info:
        client.call("HEAD", "/containers/no-such-container/archive", params={"path": "/"})
    assert info.value.status == 404
    with pytest.raises(APIError) as info:
        client.call("PUT", f"/containers/{stopped}/archive", params={"path": "/made/top"},
                    body=tar_bytes([("x", "file", b"x")]))
    assert info.value.status == 400
    with pytest.raises(APIError) as info:
        client.call("PUT", f"/containers/{stopped}/archive", params={"path": "/nowhere"},
                    body=tar_bytes([("x", "file", b"x")]))
    assert info.value.status == 404


def test_archive_path_rules(d, stopped):
    client = d.client()
    _, headers, body = client.call("GET", f"/containers/{stopped}/archive", params={"path": "/made"})
    assert headers["Content-Type"] == "application/x-tar"
    assert set(members(body)) == {"made", "made/sub", "made/sub/f", "made/top", "made/link"}
    _, _, body = client.call("GET", f"/containers/{stopped}/archive", params={"path": "/made/."})
    assert set(members(body)) == {".", "./sub", "./sub/f", "./top", "./link"}
    _, _, body = client.call("GET", f"/containers/{stopped}/archive", params={"path": "made/sub/f"})
    assert members(body)["f"][1] == b"one\n"


def test_put_no_overwrite_dir_non_dir(d, stopped):
    client = d.client()
    with pytest.raises(APIError) as info:       # a file where /made/sub (a dir) is
        client.call("PUT", f"/containers/{stopped}/archive",
                    params={"path": "/made", "noOverwriteDirNonDir": "1"}, body=tar_bytes([("sub", "file", b"x")]))
    assert info.value.status == 400 and "non-directory" in info.value.message
    with pytest.raises(APIError) as info:       # a dir where /made/top (a file) is
        client.call("PUT", f"/containers/{stopped}/archive",
                    params={"path": "/made", "noOverwriteDirNonDir": "true"}, body=tar_bytes([("top", "dir", None)]))
    assert info.value.status == 400
    assert path_stat(d, stopped, "/made/sub")["mode"] & (1 << 31)       # nothing was changed


def test_copy_deprecated_endpoint(d, stopped):
    _, headers, body = d.client("1.23").call("POST", f"/containers/{stopped}/copy", body={"Resource": "/made/top"})
    assert members(body)["top"][1] == b"top\n"
    _, _, body = d.client("1.12").call("POST", f"/containers/{stopped}/copy", body={"Resource": "made"})
    assert "made/sub/f" in members(body)
    with pytest.raises(APIError) as info:
        d.client("1.24").call("POST", f"/containers/{stopped}/copy", body={"Resource": "/made/top"})
    assert info.value.status == 404
    with pytest.raises(APIError) as info:
        d.client("1.23").call("POST", f"/containers/{stopped}/copy", body={"Resource": "/nope"})
    assert info.value.status == 404


def test_archive_events(d, stopped):
    d.client().call("GET", f"/containers/{stopped}/archive", params={"path": "/made/top"})
    d.client().call("PUT", f"/containers/{stopped}/archive", params={"path": "/tmp"},
                    body=tar_bytes([("evt", "file", b"e")]))
    # (the CLI's `--until 0s` is whole seconds and would miss this second's events)
    events = list(d.client().stream("GET", "/events", params={
        "since": f"{time.time() - 30:.9f}", "until": f"{time.time():.9f}",
        "filters": {"container": [stopped]}}))
    actions = [e["Action"] for e in events]
    assert "archive-path" in actions and "extract-to-dir" in actions
    assert [e for e in events if e["Action"] == "extract-to-dir"][-1]["Actor"]["Attributes"]["path"] == "/tmp"


# -- docker cp ------------------------------------------------------------------------------------

def test_cp_out_of_stopped_and_running(d, stopped, running, tmp_path):
    d.docker("cp", f"{stopped}:/made/sub/f", str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "one\n"
    d.docker("cp", f"{stopped}:/made", str(tmp_path / "copy"))
    assert (tmp_path / "copy/sub/f").read_text() == "one\n" and (tmp_path / "copy/top").read_text() == "top\n"
    assert os.readlink(tmp_path / "copy/link") == "/made/top"
    d.docker("cp", f"{stopped}:/made/.", str(tmp_path / "contents"))
    assert sorted(os.listdir(tmp_path / "contents")) == ["link", "sub", "top"]
    # a running container: what it wrote a moment ago, read through the same overlay mount
    d.docker("exec", running, "sh", "-c", "mkdir -p /live && echo now > /live/x")
    d.docker("cp", f"{running}:/live", str(tmp_path / "live"))
    assert (tmp_path / "live/x").read_text() == "now\n"
    # /etc/hostname is bind-mounted over the rootfs inside the container; cp reads the real one
    d.docker("cp", f"{running}:/etc/hostname", str(tmp_path / "hostname"))
    assert (tmp_path / "hostname").read_text().strip() == running[:12]
    missing = d.docker("cp", f"{running}:/not-there", str(tmp_path / "nothing"), check=False)
    assert missing.returncode != 0 and b"Could not find the file /not-there" in missing.stderr


def test_cp_into_running_container(d, running, tmp_path):
    (tmp_path / "file.txt").write_text("into running\n")
    (tmp_path / "tree/deeper").mkdir(parents=True)
    (tmp_path / "tree/deeper/leaf").write_text("leaf\n")
    os.symlink("deeper/leaf", tmp_path / "tree/rel-link")
    d.docker("cp", str(tmp_path / "file.txt"), f"{running}:/tmp/")
    d.docker("cp", str(tmp_path / "file.txt"), f"{running}:/tmp/renamed.txt")
    d.docker("cp", str(tmp_path / "tree"), f"{running}:/opt")            # /opt does not exist: becomes it
    d.docker("cp", str(tmp_path / "tree"), f"{running}:/opt")            # now exists: copied into it
    got = out(d.docker("exec", running, "sh", "-c",
                       "cat /tmp/file.txt /tmp/renamed.txt /opt/deeper/leaf /opt/rel-link /opt/tree/deeper/leaf"))
    assert got == "into running\n" * 2 + "leaf\n" * 3
    owner = out(d.docker("exec", running, "stat", "-c", "%u:%g", "/tmp/file.txt")).strip()
    assert owner == "0:0"


def test_cp_into_stopped_container_then_start(d, tmp_path):
    d.docker("create", "--name", "cp-stopped", "busybox", "cat", "/etc/message", "/root/tree/a")
    try:
        (tmp_path / "message").write_text("hello from the host\n")
        (tmp_path / "tree").mkdir()
        (tmp_path / "tree/a").write_text("a\n")
        d.docker("cp", str(tmp_path / "message"), "cp-stopped:/etc/message")
        d.docker("cp", str(tmp_path / "tree"), "cp-stopped:/root/")
        assert out(d.docker("start", "-a", "cp-stopped", timeout=60)) == "hello from the host\na\n"
        assert "A /etc/message" in out(d.docker("diff", "cp-stopped")).splitlines()
    finally:
        d.docker("rm", "-f", "cp-stopped")


def test_cp_volumes(d, running, tmp_path):
    (tmp_path / "v.txt").write_text("in the volume\n")
    d.docker("cp", str(tmp_path / "v.txt"), f"{running}:/data/")
    assert out(d.docker("exec", running, "cat", "/data/v.txt")) == "in the volume\n"
    d.docker("exec", running, "sh", "-c", "echo written-inside > /data/inside")
    d.docker("cp", f"{running}:/data", str(tmp_path / "vol"))
    assert (tmp_path / "vol/inside").read_text() == "written-inside\n"
    assert (tmp_path / "vol/v.txt").read_text() == "in the volume\n"
    assert path_stat(d, running, "/data")["name"] == "data"
    refused = d.docker("cp", str(tmp_path / "v.txt"), f"{running}:/ro/", check=False)
    assert refused.returncode != 0 and b"read-only" in refused.stderr
    with pytest.raises(APIError) as info:
        d.client().call("PUT", f"/containers/{running}/archive", params={"path": "/ro"},
                        body=tar_bytes([("x", "file", b"x")]))
    assert info.value.status == 403


# -- escapes --------------------------------------------------------------------------------------

def rootfs_has(d, cid, path):
    return d.docker("exec", cid, "test", "-e", path, check=False).returncode == 0


def test_cp_through_container_symlink_stays_inside(d, running, host_dir, tmp_path):
    # The container plants symlinks at the host directory, by absolute path and through "/etc/..".
    # The same path exists inside the container, so each copy succeeds -- inside.
    d.docker("exec", running, "sh", "-c",
             f"ln -s {host_dir} /esc-abs && ln -s /etc/../../../../{host_dir.lstrip('/')} /esc-dots"
             f" && mkdir -p {host_dir}")
    (tmp_path / "payload").write_text("payload\n")
    for target in ("/esc-abs/", "/esc-dots/", "/esc-abs/renamed"):
        d.docker("cp", str(tmp_path / "payload"), f"{running}:{target}")
    assert os.listdir(host_dir) == []
    assert rootfs_has(d, running, f"{host_dir}/payload") and rootfs_has(d, running, f"{host_dir}/renamed")
    # A stopped container's rootfs is the same overlay, mounted by the daemon: same answer.
    d.docker("run", "--name", "esc-stopped", "busybox", "sh", "-c",
             f"mkdir -p {host_dir} && ln -s {host_dir} /esc", timeout=60)
    try:
        d.docker("cp", str(tmp_path / "payload"), "esc-stopped:/esc/")
        assert os.listdir(host_dir) == []
        # ... the link was followed *inside* the container root
        d.docker("cp", f"esc-stopped:{host_dir}/payload", str(tmp_path / "back"))
        assert (tmp_path / "back").read_text() == "payload\n"
    finally:
        d.docker("rm", "esc-stopped")


def test_cp_hostile_tar_stays_inside(d, running, host_dir):
    d.docker("exec", running, "mkdir", "-p", "/drop")
    climbing = [("../../../../../../" + host_dir.lstrip("/") + "/dotdot", "file", b"x")]
    bad_hardlink = [("ok", "file", b"x"), ("hl", "hardlink", "../../../../../../etc/passwd")]
    for bad in (climbing, bad_hardlink):
        result = d.docker("cp", "-", f"{running}:/drop", input=tar_bytes(bad), check=False)
        assert result.returncode != 0 and b"invalid" in result.stderr
        assert os.listdir(host_dir) == []
    assert not rootfs_has(d, running, "/drop/ok")            # a refused archive changes nothing
    # symlink-then-write-through-it and absolute names are accepted, and land inside
    d.docker("cp", "-", f"{running}:/drop", input=tar_bytes([
        ("link", "symlink", host_dir), ("link/through-symlink", "file", b"x"),
        (host_dir + "/absolute", "file", b"x")]))
    assert os.listdir(host_dir) == []
    assert rootfs_has(d, running, f"{host_dir}/through-symlink")
    assert rootfs_has(d, running, f"/drop{host_dir}/absolute")


def test_cp_out_through_symlink_does_not_leak_host_files(d, running, host_dir, tmp_path):
    secret = os.path.join(host_dir, "secret")
    with open(secret, "w") as f:
        f.write("host secret\n")
    os.chmod(secret, 0o644)
    d.docker("exec", running, "sh", "-c", f"rm -rf {host_dir} && mkdir -p {host_dir}"
             f" && echo decoy > {host_dir}/decoy && ln -s {host_dir} /leak && ln -s {secret} /leak-file")
    for src in ("/leak/.", "/leak/secret", "/leak-file"):
        dest = tmp_path / src.strip("/").replace("/", "_")
        d.docker("cp", f"{running}:{src}", str(dest), check=False)
        for root, _, files in os.walk(tmp_path):
            for name in files:
                p = os.path.join(root, name)
                if not os.path.islink(p) and stat.S_ISREG(os.lstat(p).st_mode):
                    with open(p, "rb") as f:
                        assert b"host secret" not in f.read(), src
    assert (tmp_path / "leak_." / "decoy").read_text() == "decoy\n"      # the container's own files
    os.unlink(secret)
