"""A lot of output, end to end: what `scripts/bench logs` drives, asserted for exactness (no
test here asserts a time)."""


def test_logs_of_a_large_output_read_back_exactly(rootless):
    """Megabytes of output with quotes, backslashes, tabs, UTF-8 and both streams come back from
    `docker logs` byte for byte (the bulk read path), as do --tail and --timestamps (line by line)."""
    d = rootless
    script = ("seq 1 60000 | sed 's/.*/line & \"q\" \\\\ \\t caf\u00e9/'; seq 1 3000 >&2; "
              "printf 'no newline at the end'")
    d.docker("run", "--name", "big-logs", "busybox", "sh", "-c", script)
    out = b"".join(b'line %d "q" \\ \t caf\xc3\xa9\n' % i for i in range(1, 60001)) + b"no newline at the end"
    err = b"".join(b"%d\n" % i for i in range(1, 3001))
    r = d.docker("logs", "big-logs")
    assert r.stdout == out
    assert r.stderr == err
    r = d.docker("logs", "--tail", "1", "big-logs")        # the unfinished line, flushed last
    assert (r.stdout, r.stderr) == (b"no newline at the end", b"")
    r = d.docker("logs", "--tail", "0", "big-logs")
    assert (r.stdout, r.stderr) == (b"", b"")
    lines = d.docker("logs", "--timestamps", "big-logs").stdout.splitlines()
    assert len(lines) == 60001
    assert lines[-1].split(b" ", 1)[1] == b"no newline at the end"
    d.docker("rm", "big-logs")


def test_logs_timestamps_details_since_until_through_the_cli(rootless):
    """--timestamps shows nine fraction digits (moby's RFC3339NanoFixed, whatever the file
    trimmed), --details a space before each line (no attrs), --since/--until select by the
    shown times, inclusive at both ends; both streams keep their order."""
    import re
    d = rootless
    d.docker("run", "--name", "opts", "busybox", "sh", "-c",
             "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three")
    r = d.docker("logs", "--timestamps", "opts")
    stamped = r.stdout.splitlines() + r.stderr.splitlines()
    assert len(stamped) == 3
    for line in stamped:
        assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (one|two|three)", line), line
    when = {line.split(b" ")[1]: line.split(b" ")[0].decode() for line in stamped}
    r = d.docker("logs", "--details", "opts")
    assert (r.stdout, r.stderr) == (b" one\n three\n", b" two\n")
    r = d.docker("logs", "--since", when[b"two"], "opts")
    assert (r.stdout, r.stderr) == (b"three\n", b"two\n")
    r = d.docker("logs", "--until", when[b"two"], "opts")
    assert (r.stdout, r.stderr) == (b"one\n", b"two\n")
    r = d.docker("logs", "--since", when[b"two"], "--until", when[b"two"], "--timestamps", "opts")
    assert (r.stdout, r.stderr) == (b"", when[b"two"].encode() + b" two\n")
    d.docker("rm", "opts")


def test_a_large_log_decoded_ahead_and_a_reader_that_leaves(rootless):
    """A log above container/logs.READ_AHEAD_FROM (8 MiB of json-file) is decoded on a thread of
    its own: it still arrives whole and in order, and a reader that goes away after the first
    bytes leaves no thread behind in the daemon."""
    import socket
    from support import wait_for

    d = rootless
    line = b"0123456789012345678901234567890123456789\n"
    d.docker("run", "--name", "huge", "busybox", "sh", "-c", f"yes {line.decode().strip()} | head -c 9000000")
    r = d.docker("logs", "huge")
    assert r.stdout == (line * (9000000 // len(line) + 1))[:9000000] and r.stderr == b""

    def threads():
        with open(f"/proc/{d.proc.pid}/status") as f:
            return int(next(x for x in f if x.startswith("Threads:")).split()[1])

    def leave_early():
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket)
        s.sendall(b"GET /containers/huge/logs?stdout=1 HTTP/1.0\r\n\r\n")
        first = s.recv(65536)
        s.close()                                   # with megabytes still to come
        return first

    assert read_until_close_ok(d)                   # the daemon answers; baseline taken after
    before = threads()
    assert b" 200 " in leave_early()
    wait_for(lambda: threads() <= before, timeout=20, what="the reader's threads to end")
    d.docker("rm", "huge")


def read_until_close_ok(d):
    import socket
    from support import read_until_close
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket)
    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
    return read_until_close(s).endswith(b"OK")


def test_the_read_cache_beside_a_log_and_a_log_emptied_in_place(rootless):
    """A default log keeps its read cache beside it (minidock/logcache.py), and `docker logs`
    shows the same bytes through it; a log with max-size keeps none. Emptying a running
    container's log in place (`truncate -s 0 <LogPath>`, the usual way to clear a Docker log)
    then shows only what came after, though the cache still holds the old output."""
    import json
    import os

    from minidock import logcache
    from support import wait_for

    d = rootless

    def log_path(name):
        return json.loads(d.docker("inspect", name).stdout)[0]["LogPath"]

    d.docker("run", "--name", "cached", "busybox", "sh", "-c", "yes cached-line | head -c 3000000")
    # (the records are written by the daemon's writeback thread: a moment after the exit)
    wait_for(lambda: os.path.getsize(logcache.path_for(log_path("cached"))) > 3000000,
             what="the read cache's records")
    assert d.docker("logs", "cached").stdout == b"cached-line\n" * 250000
    d.docker("run", "--name", "rotated", "--log-opt", "max-size=10m", "busybox", "sh", "-c",
             "yes r | head -c 300000")
    assert os.path.getsize(log_path("rotated")) > 300000
    assert not os.path.exists(logcache.path_for(log_path("rotated")))

    d.docker("run", "-d", "--name", "emptied", "busybox", "sh", "-c",
             "yes old | head -c 400000; while [ ! -e /go ]; do sleep 0.05; done; "
             "yes new | head -c 400000; sleep 1000")
    path = log_path("emptied")
    wait_for(lambda: d.docker("logs", "emptied").stdout == b"old\n" * 100000, what="the old output")
    os.truncate(path, 0)
    d.docker("exec", "emptied", "touch", "/go")
    wait_for(lambda: len(d.docker("logs", "emptied").stdout) >= 400000, what="the new output")
    assert d.docker("logs", "emptied").stdout == b"new\n" * 100000
    wait_for(lambda: os.path.getsize(logcache.path_for(path)) > 400000,
             what="the old records and new ones in the cache")
    d.docker("rm", "-f", "cached", "rotated", "emptied")


def test_a_container_printing_fast_writes_into_a_grown_pipe_and_its_log_is_whole(rootless):
    """A container that keeps its stdout pipe full gets it grown (pumps.py): the kernel reports
    GROWN_SIZE on the container's own end of it, and every byte still reaches the log."""
    import fcntl
    import os
    import pytest
    from minidock.pumps import GROWN_SIZE
    from support import wait_for

    if os.geteuid() != 0:
        pytest.skip("opening another user's pipe through /proc needs root")
    d = rootless
    d.docker("run", "-d", "--name", "fast", "busybox", "sh", "-c",
             "head -c 8000000 /dev/zero | tr '\\0' x > /big; cat /big; exec sleep 60")
    wait_for(lambda: len(d.docker("logs", "fast").stdout) == 8_000_000, timeout=30,
             what="8 MB in the log")
    assert d.docker("logs", "fast").stdout == b"x" * 8_000_000
    pid = int(d.docker("inspect", "-f", "{{.State.Pid}}", "fast").stdout)
    fd = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY | os.O_NONBLOCK)   # sleep's stdout: that pipe
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == GROWN_SIZE
    finally:
        os.close(fd)
    d.docker("rm", "-f", "fast")
