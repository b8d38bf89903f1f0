"""The output event loop on real pipes and ptys: bytes arrive whole and in order per stream, end
of file finishes a group exactly once, many groups share one thread, and a process writing more
than a pipe holds is never left blocked."""

import fcntl
import os
import pty
import socket
import subprocess
import threading
import time

import pytest

from minidock.pumps import GROWN_BUDGET, GROWN_SIZE, PIPE_SIZE, OutputLoop, _grow_budget
from support import wait_for


class Sink:
    def __init__(self):
        self.data = {"stdout": bytearray(), "stderr": bytearray()}
        self.done = threading.Event()
        self.done_calls = 0
        self.eofs = []
        self.thread_names = set()

    def on_data(self, stream, data):
        self.thread_names.add(threading.current_thread().name)
        self.data[stream] += data

    def on_done(self):
        self.done_calls += 1
        self.done.set()

    def on_eof(self, fd):
        os.fstat(fd)                        # still open when on_eof runs (raises if not)
        self.eofs.append(fd)


def test_two_pipes_of_a_real_process_until_eof():
    loop = OutputLoop()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # 1 MiB on stdout is 16 times what a pipe holds: the writer finishes only if we keep reading.
    p = subprocess.Popen(["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo oops >&2"],
                         stdout=out_w, stderr=err_w)
    os.close(out_w)
    os.close(err_w)
    sink = Sink()
    loop.add([(out_r, "stdout"), (err_r, "stderr")], sink.on_data, sink.on_done, sink.on_eof)
    assert p.wait(20) == 0
    assert sink.done.wait(10)
    assert bytes(sink.data["stdout"]) == b"x" * 1048576
    assert bytes(sink.data["stderr"]) == b"oops\n"
    assert sink.done_calls == 1
    assert sorted(sink.eofs) == sorted([out_r, err_r])
    assert sink.thread_names == {"output-loop"}
    for fd in (out_r, err_r):               # the loop closed them after on_eof
        with pytest.raises(OSError):
            os.fstat(fd)
    loop.stop()


def test_a_pty_master_reports_eio_as_end_of_file():
    loop = OutputLoop()
    master, slave = pty.openpty()
    p = subprocess.Popen(["sh", "-c", "echo on-a-tty; tty >/dev/null && echo is-a-tty"],
                         stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    sink = Sink()
    loop.add([(master, "stdout")], sink.on_data, sink.on_done)
    assert p.wait(10) == 0
    assert sink.done.wait(10)               # EIO after the last slave closed ends the group
    assert bytes(sink.data["stdout"]).replace(b"\r\n", b"\n") == b"on-a-tty\nis-a-tty\n"
    loop.stop()


def test_many_groups_one_thread_and_no_crosstalk():
    loop = OutputLoop()
    before = threading.active_count()
    sinks, writers = [], []
    for i in range(50):
        r, w = os.pipe()
        sink = Sink()
        loop.add([(r, "stdout")], sink.on_data, sink.on_done)
        sinks.append(sink)
        writers.append(w)
    assert threading.active_count() <= before + 1       # one loop thread, whatever the count
    for i, w in enumerate(writers):
        os.write(w, b"%d\n" % i * 100)
    for w in writers:
        os.close(w)
    for i, sink in enumerate(sinks):
        assert sink.done.wait(10)
        assert bytes(sink.data["stdout"]) == b"%d\n" % i * 100
    loop.stop()


def test_a_failing_callback_does_not_stop_other_groups():
    loop = OutputLoop()
    bad_r, bad_w = os.pipe()
    good_r, good_w = os.pipe()

    def explode(stream, data):
        raise RuntimeError("boom")
    bad_done = threading.Event()
    loop.add([(bad_r, "stdout")], explode, bad_done.set)
    sink = Sink()
    loop.add([(good_r, "stdout")], sink.on_data, sink.on_done)
    os.write(bad_w, b"first\n")
    os.write(good_w, b"second\n")
    os.close(bad_w)
    os.close(good_w)
    assert bad_done.wait(10)                # its EOF is still seen
    assert sink.done.wait(10)
    assert bytes(sink.data["stdout"]) == b"second\n"
    loop.stop()


def _pipe_size(fd):
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def test_a_pipe_found_full_is_grown_within_the_loops_budget():
    """A read that empties a full pipe (its writer is faster than the loop) grows that pipe to
    GROWN_SIZE, as the kernel reports on the writer's end; the grown pipes share a budget, and
    a pipe that filled while it was spent grows once a grown one has closed."""
    loop = OutputLoop(name="output-loop-grow")
    loop.grow_budget = GROWN_SIZE           # room for one grown pipe
    pipes = [os.pipe() for _ in range(2)]
    sinks = [Sink(), Sink()]
    for (r, w), sink in zip(pipes, sinks):
        assert _pipe_size(w) == PIPE_SIZE
        os.write(w, b"x" * PIPE_SIZE)        # full before the loop's first read
        loop.add([(r, "stdout")], sink.on_data, sink.on_done)
    for sink in sinks:
        wait_for(lambda: len(sink.data["stdout"]) == PIPE_SIZE, timeout=10)
    sizes = sorted(_pipe_size(w) for _, w in pipes)
    assert sizes == [PIPE_SIZE, GROWN_SIZE]
    assert loop.grown_total == GROWN_SIZE
    grown = 0 if _pipe_size(pipes[0][1]) == GROWN_SIZE else 1
    other_w, other_sink = pipes[1 - grown][1], sinks[1 - grown]
    os.write(pipes[grown][1], b"y" * 200_000)            # more than a pipe held before
    os.close(pipes[grown][1])
    assert sinks[grown].done.wait(10)
    assert bytes(sinks[grown].data["stdout"]) == b"x" * PIPE_SIZE + b"y" * 200_000
    wait_for(lambda: loop.grown_total == 0, timeout=10)      # its size is given back
    os.write(other_w, b"z" * PIPE_SIZE)                  # full again: now there is room
    wait_for(lambda: len(other_sink.data["stdout"]) == 2 * PIPE_SIZE, timeout=10)
    assert _pipe_size(other_w) == GROWN_SIZE
    os.close(other_w)
    assert other_sink.done.wait(10)
    assert loop.grown_total == 0
    loop.stop()


def test_a_full_read_of_something_else_than_a_pipe_is_not_grown_and_loses_nothing():
    """F_SETPIPE_SZ fails on a socket (as on a pty): the bytes still arrive, nothing is counted,
    and the loop does not ask again."""
    loop = OutputLoop(name="output-loop-socket")
    a, b = socket.socketpair()
    sink = Sink()
    a.sendall(b"s" * PIPE_SIZE)
    loop.add([(os.dup(b.fileno()), "stdout")], sink.on_data, sink.on_done)
    b.close()
    wait_for(lambda: len(sink.data["stdout"]) == PIPE_SIZE, timeout=10)
    assert list(loop._grown.values()) == [0]             # refused once, and remembered
    a.sendall(b"t" * PIPE_SIZE)
    a.close()
    assert sink.done.wait(10)
    assert bytes(sink.data["stdout"]) == b"s" * PIPE_SIZE + b"t" * PIPE_SIZE
    assert loop.grown_total == 0
    loop.stop()


@pytest.mark.parametrize("allowance, budget", [
    ("16384\n", GROWN_BUDGET),            # the default 64 MiB: a quarter is the budget itself
    ("1024\n", 1 << 20),                  # 4 MiB: one grown pipe at most
    ("0\n", GROWN_BUDGET),                # no allowance enforced
    ("", GROWN_BUDGET),                    # unreadable: the budget alone bounds it
    (None, GROWN_BUDGET),                  # no such file: the same
])
def test_the_grow_budget_is_a_quarter_of_the_users_pipe_allowance_at_most(tmp_path, allowance, budget):
    path = tmp_path / "pipe-user-pages-soft"
    if allowance is not None:
        path.write_text(allowance)
    assert _grow_budget(str(path)) == budget


def test_an_empty_group_is_done_at_once():
    loop = OutputLoop()
    done = threading.Event()
    loop.add([], lambda s, d: None, done.set)
    assert done.wait(5)
    loop.stop()


def test_a_pty_whose_master_has_a_dup_is_unregistered_not_spun_on():
    """The daemon keeps a dup of a pty master for stdin. epoll forgets a registration only when
    every descriptor of the open file is closed, so the loop must unregister explicitly: else
    the dead pty reports HUP forever and the loop thread spins. Its CPU time says which."""
    loop = OutputLoop(name="output-loop-dup")
    master, slave = pty.openpty()
    keep = os.dup(master)                   # like ContainerIO.stdin_w
    p = subprocess.Popen(["true"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    sink = Sink()
    loop.add([(master, "stdout")], sink.on_data, sink.on_done)
    assert p.wait(10) == 0
    assert sink.done.wait(10)
    tid = loop._thread.native_id

    def cpu_ticks():
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    before = cpu_ticks()
    time.sleep(0.5)
    assert cpu_ticks() - before <= 2        # a spinning loop burns ~50 ticks in 0.5 s
    os.close(keep)
    loop.stop()


def test_a_follower_gets_each_chunk_once_from_the_log_or_its_queue(tmp_path):
    """`logs -f` subscribes, then reads the stored log: output written in between is in both.
    subscribe(mark=True) says where the log stood, and the stored read stops there."""
    from minidock import jsonfile
    from minidock.container.stdio import ContainerIO
    path = str(tmp_path / "c-json.log")
    r, w = os.pipe()
    io = ContainerIO()
    io._start_pumps([(r, "stdout")], jsonfile.Writer(path), "test")
    stored = lambda upto=None: b"".join(d for _, d in jsonfile.read_shown(path, 1, upto=upto))  # noqa: E731
    try:
        os.write(w, b"one\n")
        wait_for(lambda: stored() == b"one\n", what="the first line in the log")
        q, upto = io.subscribe(mark=True)
        os.write(w, b"two\n")
        assert q.get(timeout=5) == ("stdout", b"two\n")
        wait_for(lambda: stored() == b"one\ntwo\n", what="the second line in the log")
        assert stored(upto) == b"one\n"                  # the queue has the rest
    finally:
        os.close(w)
        io.output_done.wait(5)


def test_a_follower_with_a_tail_gets_each_line_once_too(tmp_path):
    """`logs -f --tail N`: the last N lines *up to the mark*, across rotated files, and the
    rest from the queue -- counted back from where the log stood at the subscription, not from
    its end when the read happens."""
    from minidock import jsonfile
    path = str(tmp_path / "c-json.log")
    writer = jsonfile.Writer(path, max_size=60, max_file=5)       # a file per entry
    for word in (b"one", b"two", b"three"):
        writer.write("stdout", word + b"\n")
    st = os.stat(path)
    upto = (st.st_dev, st.st_ino, st.st_size)
    writer.write("stdout", b"four\n")                  # after the mark: a follower's queue has it
    writer.write("stdout", b"five\n")
    try:
        shown = lambda tail, upto: b"".join(  # noqa: E731
            d for _, d in jsonfile.read_shown(path, 5, tail=tail, upto=upto))
        assert shown(2, upto) == b"two\nthree\n"
        assert shown(10, upto) == b"one\ntwo\nthree\n"
        assert shown(0, upto) == b""
        assert shown(2, None) == b"four\nfive\n"
        assert [e[1] for e in jsonfile.read(path, 5, tail=2, upto=upto)] == [b"two\n", b"three\n"]
    finally:
        writer.close()
