"""tarsafe: every unsafe-tar case leaves nothing outside the target; whiteouts; archive ops."""

import io
import os
import stat
import tarfile

import pytest

from minidock import compression, errors, tarsafe
from tests.rootfs_helpers import names_in, tar_bytes, tree


@pytest.fixture
def box(tmp_path):
    """A target dir inside a sandbox dir; `outside` lists what exists next to the target."""
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "secret").write_text("host secret")
    return tmp_path, target


def outside_after(tmp_path):
    return {p for p in tree(tmp_path) if not p.startswith("target")}


def test_dotdot_entry_refused_and_nothing_outside(box):
    sandbox, target = box
    data = tar_bytes([("ok", "file", "fine"), ("../escaped", "file", "evil"), ("a/../../escaped2", "file", "e")])
    with pytest.raises(errors.InvalidParameter, match="escapes"):
        tarsafe.extract(io.BytesIO(data), str(target))
    assert outside_after(sandbox) == {"secret"}


def test_absolute_entry_is_contained(box):
    sandbox, target = box
    secret = sandbox / "secret"
    tarsafe.extract(io.BytesIO(tar_bytes([(str(secret), "file", "overwritten?")])), str(target))
    assert secret.read_text() == "host secret"
    assert (target / str(secret).lstrip("/")).read_text() == "overwritten?"
    assert outside_after(sandbox) == {"secret"}


def test_symlink_escape_is_resolved_inside(box):
    sandbox, target = box
    data = tar_bytes([("link", "symlink", str(sandbox)), ("link/secret", "file", "evil"),
                      ("rel", "symlink", "../../.."), ("rel/secret2", "file", "evil2")])
    tarsafe.extract(io.BytesIO(data), str(target))
    assert (sandbox / "secret").read_text() == "host secret"
    assert outside_after(sandbox) == {"secret"}
    # the writes landed inside, where the links point when target is "/"
    assert (target / str(sandbox).lstrip("/") / "secret").read_text() == "evil"
    assert (target / "secret2").read_text() == "evil2"


def test_hardlink_escape_refused(box):
    sandbox, target = box
    data = tar_bytes([("h", "hardlink", "../secret")])
    with pytest.raises(errors.InvalidParameter, match="escapes|hardlink"):
        tarsafe.extract(io.BytesIO(data), str(target))
    # absolute hardlink target is looked up inside the target, where it does not exist
    with pytest.raises(errors.InvalidParameter, match="hardlink"):
        tarsafe.extract(io.BytesIO(tar_bytes([("h2", "hardlink", str(sandbox / "secret"))])), str(target))
    assert outside_after(sandbox) == {"secret"}
    assert os.stat(sandbox / "secret").st_nlink == 1


def test_hardlink_through_symlinked_dir_stays_inside(box):
    sandbox, target = box
    data = tar_bytes([("d", "symlink", str(sandbox)), ("h", "hardlink", "d/secret")])
    with pytest.raises(errors.InvalidParameter, match="hardlink"):
        tarsafe.extract(io.BytesIO(data), str(target))
    assert os.stat(sandbox / "secret").st_nlink == 1


def test_symlinked_parent_dir_already_on_disk(box):
    sandbox, target = box
    os.symlink(str(sandbox), target / "etc")          # planted by a container, say
    tarsafe.extract(io.BytesIO(tar_bytes([("etc/secret", "file", "evil")])), str(target))
    assert (sandbox / "secret").read_text() == "host secret"
    assert outside_after(sandbox) == {"secret"}
    assert (target / str(sandbox).lstrip("/") / "secret").read_text() == "evil"


def test_final_symlink_is_replaced_not_followed(box):
    sandbox, target = box
    os.symlink(str(sandbox / "secret"), target / "f")
    tarsafe.extract(io.BytesIO(tar_bytes([("f", "file", "new")])), str(target))
    assert (sandbox / "secret").read_text() == "host secret"
    assert not os.path.islink(target / "f") and (target / "f").read_text() == "new"


def test_device_node_skipped_with_warning_or_created(box):
    sandbox, target = box
    stats = tarsafe.extract(io.BytesIO(tar_bytes([("dev/null", "chr", (1, 3)), ("x", "file", "1")])), str(target))
    st = os.lstat(target / "dev" / "null") if os.path.lexists(target / "dev" / "null") else None
    if os.getuid() == 0 and st is not None:    # real root may mknod; the rootless case is tested in test_layers
        assert stat.S_ISCHR(st.st_mode)
    else:
        assert stats.warnings and "mknod" in stats.warnings[0]
    assert outside_after(sandbox) == {"secret"}


def test_truncated_tar_raises_invalid_parameter(box):
    sandbox, target = box
    data = tar_bytes([("big", "file", "x" * 5000)])[:1500]
    with pytest.raises(errors.InvalidParameter, match="invalid tar"):
        tarsafe.extract(io.BytesIO(data), str(target))


def test_whiteouts_to_overlay_and_back(tmp_path):
    data = tar_bytes([("d", "dir", None), ("d/.wh..wh..opq", "file", ""), ("d/keep", "file", "k"),
                      (".wh.gone", "file", "")])
    root = tmp_path / "layer"
    root.mkdir()
    tarsafe.extract(io.BytesIO(data), str(root), whiteouts=tarsafe.OVERLAY)
    st = os.lstat(root / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "d", "user.overlay.opaque") == b"y"
    out = io.BytesIO()
    tarsafe.tar_tree(str(root), out, from_overlay=True)
    assert names_in(out.getvalue()) == ["d", "d/.wh..wh..opq", "d/keep", ".wh.gone"]


def test_apply_mode_deletes(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    tarsafe.extract(io.BytesIO(tar_bytes([("a", "file", "1"), ("d", "dir", None), ("d/old", "file", "o")])), str(root))
    tarsafe.extract(io.BytesIO(tar_bytes([(".wh.a", "file", ""), ("d", "dir", None), ("d/.wh..wh..opq", "file", ""),
                                          ("d/new", "file", "n")])), str(root), whiteouts=tarsafe.APPLY)
    assert sorted(os.listdir(root)) == ["d"] and os.listdir(root / "d") == ["new"]


def test_empty_tar_is_the_empty_layer_digest():
    out = io.BytesIO()
    w = tarsafe.TarWriter(out)
    w.close()
    import hashlib
    assert hashlib.sha256(out.getvalue()).hexdigest() == \
        "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def test_compressed_streams_are_sniffed(tmp_path):
    import bz2, gzip, lzma
    data = tar_bytes([("f", "file", "hello")])
    for i, packed in enumerate((data, gzip.compress(data), bz2.compress(data), lzma.compress(data))):
        plain, _ = compression.decompressed(io.BytesIO(packed))
        root = tmp_path / str(i)
        root.mkdir()
        tarsafe.extract(plain, str(root))
        assert (root / "f").read_text() == "hello"


def test_stat_and_archive_rules(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("h")
    (root / "d").mkdir()
    (root / "d" / "a").write_text("a")
    os.symlink("/etc", root / "link")
    st = tarsafe.stat_path(str(root), "/etc")
    assert st["name"] == "etc" and st["mode"] & (1 << 31) and st["mtime"].endswith("Z")
    st = tarsafe.stat_path(str(root), "/link")
    assert st["linkTarget"] == "/etc" and st["mode"] & (1 << 27)
    out = io.BytesIO()
    tarsafe.archive_path(str(root), "/d", out)
    assert names_in(out.getvalue()) == ["d", "d/a"]
    out = io.BytesIO()
    tarsafe.archive_path(str(root), "/d/.", out)
    assert names_in(out.getvalue()) == [".", "./a"]
    out = io.BytesIO()
    tarsafe.archive_path(str(root), "/link/hosts", out)       # symlinked dir resolved inside root
    assert names_in(out.getvalue()) == ["hosts"]
    with pytest.raises(errors.NotFound):
        tarsafe.stat_path(str(root), "/nope")
    with pytest.raises(errors.InvalidParameter, match="not a directory"):
        tarsafe.stat_path(str(root), "/etc/hosts/")


def test_extract_archive_no_overwrite_and_atomic(tmp_path):
    root = tmp_path / "root"
    (root / "dst" / "sub").mkdir(parents=True)
    with pytest.raises(errors.InvalidParameter, match="overwrite existing directory"):
        tarsafe.extract_archive(str(root), "/dst", io.BytesIO(tar_bytes([("new", "file", "n"), ("sub", "file", "x")])),
                                no_overwrite_dir_nondir=True)
    assert sorted(os.listdir(root / "dst")) == ["sub"]       # the checked-first archive changed nothing
    bad = tar_bytes([("new", "file", "n"), ("big", "file", "x" * 9000)])[:3000]
    with pytest.raises(errors.InvalidParameter):
        tarsafe.extract_archive(str(root), "/dst", io.BytesIO(bad))
    assert sorted(os.listdir(root / "dst")) == ["sub"]
    tarsafe.extract_archive(str(root), "/dst", io.BytesIO(tar_bytes([("new", "file", "n")])))
    assert (root / "dst" / "new").read_text() == "n"
    with pytest.raises(errors.NotFound):
        tarsafe.extract_archive(str(root), "/missing", io.BytesIO(tar_bytes([("x", "file", "n")])))


def _unpadded(files):
    """A tar as the docker CLI sends a build context with an outside Dockerfile: the last
    entry's data, then nothing (no block padding, no end-of-archive blocks)."""
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = whole.getvalue()
    last = list(files.values())[-1]
    end = raw.rindex(last) + len(last)
    return raw[:end]


def test_stream_ending_after_the_last_entrys_data_is_complete(tmp_path):
    # Go's tar reader (dockerd) takes this as the end of the archive; so do we.
    data = _unpadded({"f": b"data\n", ".dockerfile.abc": b"FROM busybox\n", ".dockerignore": b"x\n"})
    assert len(data) % 512 != 0
    stats = tarsafe.extract(io.BytesIO(data), str(tmp_path))
    assert stats.entries == 3
    assert (tmp_path / ".dockerignore").read_bytes() == b"x\n"
    assert (tmp_path / ".dockerfile.abc").read_bytes() == b"FROM busybox\n"


def test_stream_cut_inside_data_still_fails(tmp_path):
    data = _unpadded({"f": b"data\n", "g": b"y" * 1000})[:-10]
    with pytest.raises(errors.InvalidParameter, match="unexpected end of data"):
        tarsafe.extract(io.BytesIO(data), str(tmp_path))
