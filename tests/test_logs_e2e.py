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
