"""builder.py pieces that need no daemon: context bodies, tar sniffing, --chown lookups."""

import gzip
import io
import os
import tarfile

import pytest

from minidock import buildcopy, builder, errors


def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("wrap", [lambda b: b, gzip.compress], ids=["plain", "gzip"])
def test_context_archive_is_unpacked(tmp_path, wrap):
    body = wrap(tar_bytes({"Dockerfile": b"FROM scratch\n", "dir/file": b"x"}))
    builder.extract_context(io.BytesIO(body), str(tmp_path))
    assert (tmp_path / "Dockerfile").read_bytes() == b"FROM scratch\n"
    assert (tmp_path / "dir" / "file").read_bytes() == b"x"


def test_context_that_is_not_an_archive_is_the_dockerfile(tmp_path):
    builder.extract_context(io.BytesIO(b"FROM busybox\nRUN true\n"), str(tmp_path), "build.df")
    assert os.listdir(tmp_path) == ["build.df"]
    assert (tmp_path / "build.df").read_bytes() == b"FROM busybox\nRUN true\n"


def test_empty_context_is_empty(tmp_path):
    builder.extract_context(io.BytesIO(b""), str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_tar_header_sniffing():
    block = tar_bytes({"a": b"1"})[:512]
    assert buildcopy.is_tar_header(block)
    v7 = bytearray(block)
    v7[257:265] = bytes(8)                       # no ustar magic: the checksum decides
    checksum = sum(v7[:148]) + 8 * 32 + sum(v7[156:])
    v7[148:156] = f"{checksum:06o}\0 ".encode()
    assert buildcopy.is_tar_header(bytes(v7))
    assert not buildcopy.is_tar_header(b"FROM busybox\n".ljust(512, b"\n"))
    assert not buildcopy.is_tar_header(b"short")


def test_add_archive_detection(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(tar_bytes({"x": b"1"})))
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"just text\n" * 100))
    (tmp_path / "plain.txt").write_bytes(b"hello")
    assert buildcopy.is_archive_file(str(tmp_path / "a.tar.gz"))
    assert not buildcopy.is_archive_file(str(tmp_path / "notes.gz"))
    assert not buildcopy.is_archive_file(str(tmp_path / "plain.txt"))


def test_chown_lookup_reads_the_image_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:app\n")
    root = str(tmp_path)
    assert buildcopy.owner(root, None) == (0, 0)
    assert buildcopy.owner(root, "1234") == (1234, 1234)
    assert buildcopy.owner(root, "app") == (1000, 1001)
    assert buildcopy.owner(root, "app:staff") == (1000, 50)
    assert buildcopy.owner(root, "7:8") == (7, 8)
    with pytest.raises(errors.InvalidParameter, match="no such user: ghost"):
        buildcopy.owner(root, "ghost")
    with pytest.raises(errors.InvalidParameter, match="no such group: ghosts"):
        buildcopy.owner(root, "app:ghosts")
