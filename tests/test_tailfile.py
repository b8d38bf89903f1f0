"""Reading a file from its end: every split of lines across blocks, on real files."""

import os
import tempfile

import pytest

from minidock import tailfile


@pytest.mark.parametrize("content", [
    b"", b"\n", b"a", b"a\n", b"a\nb\n", b"a\nb", b"\n\n", b"one\n\nthree\n",
    b"x" * 10 + b"\n" + b"y" * 3 + b"\n" + b"z" * 25 + b"\n",
    b"".join(b"line %d %s\n" % (i, b"q" * (i % 13)) for i in range(200)),
])
@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 65536])
def test_reverse_lines_is_the_file_reversed(content, block):
    with tempfile.NamedTemporaryFile() as f:
        f.write(content)
        f.flush()
        expected = content.split(b"\n")
        if content.endswith(b"\n"):
            expected.pop()
        if content == b"":
            expected = []
        assert list(tailfile.reverse_lines(f.name, block)) == expected[::-1]
        assert list(tailfile.forward_lines(f.name)) == expected


def test_tail_of_a_large_file_reads_only_its_end():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log")
        with open(path, "wb") as f:
            f.write(b"x" * 50_000_000 + b"\nlast\n")
        reads = []
        real = os.pread

        def counting(fd, n, offset):
            reads.append(n)
            return real(fd, n, offset)

        os.pread = counting
        try:
            it = tailfile.reverse_lines(path)
            assert next(it) == b"last"
        finally:
            os.pread = real
        assert sum(reads) <= tailfile.BLOCK


def test_missing_file_yields_nothing():
    assert list(tailfile.reverse_lines("/nonexistent/log")) == []


def test_logs_tail_reads_the_end_of_a_big_json_log(tmp_path):
    import json
    from minidock.container import logs
    path = tmp_path / "c-json.log"
    line = json.dumps({"log": "x" * 1000 + "\n", "stream": "stdout", "time": "2026-12-01T00:00:00Z"})
    with open(path, "w") as f:
        for _ in range(20_000):                       # ~20 MB
            f.write(line + "\n")
        f.write(json.dumps({"log": "last\n", "stream": "stderr", "time": "2026-12-01T00:00:01Z"}) + "\n")
    reads = []
    real = os.pread

    def counting(fd, n, offset):
        reads.append(n)
        return real(fd, n, offset)

    os.pread = counting
    try:
        assert logs.read(str(path), tail=1) == [("stderr", b"last\n", "2026-12-01T00:00:01Z")]
        assert [e[1] for e in logs.read(str(path), tail=3)][-1] == b"last\n"
    finally:
        os.pread = real
    assert sum(reads) <= 2 * tailfile.BLOCK
