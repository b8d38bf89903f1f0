"""syscalls.py's wrappers, against the kernel: here, recv_fds' flags."""

import fcntl
import os
import socket

import pytest

from minidock import syscalls


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_recv_fds_applies_msg_cmsg_cloexec(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)
        socket.send_fds(a, [b"x"], [r])
        data, fds = syscalls.recv_fds(b, 16, 1, socket.MSG_CMSG_CLOEXEC)
        assert data == b"x" and len(fds) == 1
        # the kernel made the received descriptor close-on-exec (socket.recv_fds never asks)
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.fstat(fds[0]).st_ino == os.fstat(r).st_ino
        os.close(fds[0])
        socket.send_fds(a, [b"y"], [r])
        data, fds = syscalls.recv_fds(b, 16, 1)
        assert data == b"y" and not fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_recv_fds_applies_msg_dontwait(pair):
    _, b = pair
    with pytest.raises(BlockingIOError):
        syscalls.recv_fds(b, 16, 1, socket.MSG_DONTWAIT)
    assert b.getblocking()                  # the socket itself stays blocking


def test_recv_fds_without_descriptors(pair):
    a, b = pair
    a.send(b"plain")
    assert syscalls.recv_fds(b, 16, 4) == (b"plain", [])


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").write_text("1")
    (b / "from-b").write_text("2")
    syscalls.exchange(str(a), str(b))
    assert os.listdir(a) == ["from-b"] and os.listdir(b) == ["from-a"]
    with pytest.raises(FileNotFoundError):
        syscalls.exchange(str(a), str(tmp_path / "missing"))


def test_syncfs_accepts_a_directory_and_refuses_a_bad_descriptor(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    syscalls.syncfs(fd)
    os.close(fd)
    with pytest.raises(OSError):            # EBADF: the descriptor is closed
        syscalls.syncfs(fd)
