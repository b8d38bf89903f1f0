"""How a layer's bytes move: compression.BlockReader (every byte read once, hashed and teed in
order whatever the tar parser does), extraction through it from a socket and from a file
(copy_file_range), and LayerStore.register keeping exactly the bytes it hashed."""

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import threading

import pytest

from minidock import compression, errors, layers, tarsafe
from tests.rootfs_helpers import tar_bytes

SOURCE = bytes(range(256)) * 97 + b"tail"       # 24,836 bytes, no period of a block size

# (block size, moves): ("read", n) | ("seek", absolute offset) | ("copy", n)
MOVES = [
    (7, [("read", 3), ("read", 10), ("seek", 40), ("copy", 100), ("read", 1)]),
    (512, [("read", 512), ("copy", 5000), ("seek", 9000), ("read", 700), ("copy", 1)]),
    (4096, [("seek", 4095), ("read", 2), ("copy", 20000)]),
    (1 << 20, [("read", 0), ("copy", 24836), ("read", 5)]),
    (100, [("copy", 30000)]),                   # past the end: short, not an error
]


def _run_moves(reader, moves, tmp_path, whole=SOURCE):
    """Apply the moves; returns what the consumer got, by offset in `whole` (the stream)."""
    got = []
    out = tmp_path / "copied"
    with open(out, "wb") as f:
        for kind, n in moves:
            at = reader.tell()
            if kind == "read":
                got.append((at, reader.read(n)))
            elif kind == "seek":
                assert reader.seek(n) == n
            else:
                size_before = f.tell()
                k = reader.copy_to(f.fileno(), n)
                assert k == max(0, min(n, len(whole) - at))
                f.seek(size_before + k)
                got.append((at, out.read_bytes()[size_before:size_before + k]))
    return got


@pytest.mark.parametrize("block,moves", MOVES)
def test_block_reader_hashes_and_tees_every_byte_once(tmp_path, block, moves):
    teed = []
    reader = compression.BlockReader(io.BytesIO(SOURCE), block=block, sha256=True,
                                     sink=lambda view: teed.append(bytes(view)))
    for at, data in _run_moves(reader, moves, tmp_path):
        assert data == SOURCE[at:at + len(data)]
    reader.drain()
    assert b"".join(teed) == SOURCE and reader.count == len(SOURCE)
    assert reader.digest() == "sha256:" + hashlib.sha256(SOURCE).hexdigest()


@pytest.mark.parametrize("block,moves", MOVES)
def test_block_reader_of_a_file_copies_in_the_kernel(tmp_path, block, moves):
    path = tmp_path / "src"
    path.write_bytes(b"junk" + SOURCE)
    with open(path, "rb") as f:
        reader = compression.BlockReader.of_file(f.fileno(), 4, block=block)
        got = _run_moves(reader, [(k, n + 4 if k == "seek" else n) for k, n in moves], tmp_path, b"junk" + SOURCE)
        assert f.tell() == 0                    # pread and copy_file_range at offsets: untouched
    for at, data in got:
        assert data == (b"junk" + SOURCE)[at:at + len(data)]


def test_block_reader_of_a_reader_without_readinto():
    class ReadOnly:
        def __init__(self):
            self.f = io.BytesIO(SOURCE)

        def read(self, n):
            return self.f.read(min(n, 1000))  # short reads, as a pipe gives
    reader = compression.BlockReader(ReadOnly(), block=4096, sha256=True)
    assert reader.read(5000) == SOURCE[:5000]
    reader.drain()
    assert reader.digest() == "sha256:" + hashlib.sha256(SOURCE).hexdigest()


def test_block_reader_refuses_to_seek_backwards():
    reader = compression.BlockReader(io.BytesIO(SOURCE), block=64)
    reader.read(100)
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(99)
    assert reader.tell() == 100 and reader.read(3) == SOURCE[100:103]


def _random_tar(sizes):
    """A tar of files f0, f1, ... of random bytes, the given sizes; -> (tar bytes, {name: data})."""
    files = {f"d/f{i}": os.urandom(n) for i, n in enumerate(sizes)}
    return tar_bytes([("d", "dir", None)] + [(k, "file", v) for k, v in files.items()]), files


def test_extract_from_a_socket_fed_in_small_pieces(tmp_path):
    data, files = _random_tar([0, 1, 511, 512, 513, (1 << 20) + 7, 3 << 20, 100])
    a, b = socket.socketpair()

    def feed():
        with a:
            for i in range(0, len(data), 8192):
                a.sendall(data[i:i + 8192])
    t = threading.Thread(target=feed)
    t.start()
    with b, b.makefile("rb", buffering=0) as rfile:
        stats = tarsafe.extract(rfile, str(tmp_path))
    t.join()
    assert stats.entries == len(files) + 1
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content


def test_extract_from_a_file_and_its_position_after(tmp_path):
    data, files = _random_tar([5, 2 << 20, 77])
    (tmp_path / "layer.tar").write_bytes(data)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "layer.tar", "rb") as f:
        tarsafe.extract(f, str(tmp_path / "out"))
    for name, content in files.items():
        assert (tmp_path / "out" / name).read_bytes() == content


def test_truncated_file_data_fails_from_a_file_too(tmp_path):
    data, _ = _random_tar([3 << 20])
    (tmp_path / "cut.tar").write_bytes(data[:2 << 20])
    (tmp_path / "out").mkdir()
    with open(tmp_path / "cut.tar", "rb") as f, pytest.raises(errors.InvalidParameter, match="unexpected end of data"):
        tarsafe.extract(f, str(tmp_path / "out"))


def test_gnu_sparse_member_is_expanded(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"middle")
        f.truncate(5 << 20)
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(tmp_path / "s.tar"), "-C", str(src), "sparse"],
                   check=True)
    with tarfile.open(tmp_path / "s.tar") as tf:
        assert tf.getmember("sparse").sparse         # really a sparse entry
    out = tmp_path / "out"
    out.mkdir()
    with open(tmp_path / "s.tar", "rb") as f:
        tarsafe.extract(io.BytesIO(f.read()), str(out))
    assert (out / "sparse").read_bytes() == (src / "sparse").read_bytes()


def test_register_keeps_exactly_the_bytes_it_hashed(tmp_path):
    data, files = _random_tar([1 << 20, 9 << 20, 3])
    data += bytes(4096)                      # trailing zero blocks belong to the digest too
    store = layers.LayerStore(str(tmp_path / "store"))
    meta = store.register(io.BytesIO(data))
    assert meta["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    with open(store.tar_path(meta["chain_id"]), "rb") as f:
        assert f.read() == data
    for name, content in files.items():
        with open(os.path.join(store.diff_dir(meta["chain_id"]), name), "rb") as f:
            assert f.read() == content


class _Breaks(io.RawIOBase):
    """A body that delivers `good` bytes and then fails as a dropped client does."""

    def __init__(self, data, good, exc):
        self.data, self.good, self.exc, self.pos = data, good, exc, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.pos >= self.good:
            raise self.exc
        n = min(len(b), self.good - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("exc", [errors.InvalidParameter("request body ended before Content-Length bytes arrived"),
                                 errors.RequestTimeout("request body stalled")])
def test_register_of_a_body_that_breaks_leaves_nothing(tmp_path, exc):
    data, _ = _random_tar([6 << 20])
    store = layers.LayerStore(str(tmp_path / "store"))
    with pytest.raises(type(exc)):
        store.register(_Breaks(data, 3 << 20, exc))
    assert store.all_layers() == [] and os.listdir(tmp_path / "store" / "tmp") == []


def test_durable_file_writes_everything_and_syncs(tmp_path):
    f = layers._DurableFile(str(tmp_path / "x"))
    blocks = [os.urandom(n) for n in (1, layers.WRITEBACK_BYTES, 3, layers.WRITEBACK_BYTES + 5)]
    for block in blocks:
        f.write(memoryview(block))
    f.sync()
    f.close()
    assert (tmp_path / "x").read_bytes() == b"".join(blocks)
    with pytest.raises(FileExistsError):          # O_EXCL: never writes into an existing file
        layers._DurableFile(str(tmp_path / "x"))


def test_register_file_keeps_the_verified_file_itself(tmp_path):
    data, files = _random_tar([2 << 20, 10])
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    store = layers.LayerStore(str(tmp_path / "store"))
    staged = os.path.join(store.tmpdir(), "pull-1.tar")
    with open(staged, "wb") as f:
        f.write(data)
    inode = os.stat(staged).st_ino
    base = store.register(io.BytesIO(tar_bytes([("b", "file", "base")])))
    meta = store.register_file(staged, diff_id, parent=base["chain_id"])
    assert meta["diff_id"] == diff_id and meta["chain_id"] == layers.chain_id(base["chain_id"], diff_id)
    assert meta["tar_size"] == len(data) and meta["size"] == sum(len(v) for v in files.values())
    assert not os.path.exists(staged)
    assert os.stat(store.tar_path(meta["chain_id"])).st_ino == inode      # renamed, not copied
    for name, content in files.items():
        with open(os.path.join(store.diff_dir(meta["chain_id"]), name), "rb") as f:
            assert f.read() == content
    # The same layer again: nothing unpacked, the staged file removed, the stored meta returned.
    again = os.path.join(store.tmpdir(), "pull-2.tar")
    with open(again, "wb") as f:
        f.write(data)
    assert store.register_file(again, diff_id, parent=base["chain_id"]) == meta
    assert not os.path.exists(again)


def test_register_file_of_a_broken_tar_leaves_nothing(tmp_path):
    data, _ = _random_tar([3 << 20])
    store = layers.LayerStore(str(tmp_path / "store"))
    staged = os.path.join(store.tmpdir(), "pull-1.tar")
    with open(staged, "wb") as f:
        f.write(data[:1 << 20])
    with pytest.raises(errors.InvalidParameter, match="unexpected end of data"):
        store.register_file(staged, "sha256:" + hashlib.sha256(data).hexdigest())
    assert store.all_layers() == []
    assert [os.listdir(os.path.join(tmp_path, "store", "tmp", d)) for d in os.listdir(tmp_path / "store" / "tmp")] == [[]]


def test_extract_from_a_spool_at_its_position(tmp_path):
    # tempfile's spools (BufferedRandom) are read by descriptor from where they stand.
    import tempfile
    data, files = _random_tar([100, 3 << 20])
    out = tmp_path / "out"
    out.mkdir()
    with tempfile.TemporaryFile(dir=tmp_path) as spool:
        spool.write(b"junk" + data)
        spool.seek(4)
        tarsafe.extract(spool, str(out))
    for name, content in files.items():
        assert (out / name).read_bytes() == content


@pytest.mark.parametrize("refusal", [18, 95])       # EXDEV (another file system), EOPNOTSUPP
def test_copy_falls_back_when_the_kernel_refuses(tmp_path, monkeypatch, refusal):
    # copy_file_range(2) into an overlay mount fails with EXDEV: the data then goes through
    # the buffer. (Simulated: the overlay case needs the daemon's mount namespace.)
    def refuse(*args):
        raise OSError(refusal, os.strerror(refusal))
    monkeypatch.setattr(os, "copy_file_range", refuse)
    (tmp_path / "src").write_bytes(b"junk" + SOURCE)
    out = tmp_path / "out"
    with open(tmp_path / "src", "rb") as f, open(out, "wb") as o:
        reader = compression.BlockReader.of_file(f.fileno(), 4, block=1000)
        reader.read(10)
        assert reader.copy_to(o.fileno(), 20000) == 20000 and not reader.kernel_copy
        assert reader.read(4) == SOURCE[20010:20014]
    assert out.read_bytes() == SOURCE[10:20010]
