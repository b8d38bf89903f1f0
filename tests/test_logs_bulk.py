"""The json-file log's bulk paths on bytes: encode_lines must write exactly what the per-entry
encoder writes, and bulk_payload must read back exactly what line-by-line decoding reads -- or
refuse (None), never guess. Table-driven, plus a randomized log of many runs, both streams,
partial entries and every escape, and read_blocks over a real file (block edges)."""

import json
import random

import pytest

from minidock import jsonfile
from minidock.jsonfile import bulk_payload, encode_lines, entry_bytes

TS = "2026-12-01T14:00:00.123456Z"

CHUNKS = [
    b"hello\n",
    b"a\nb\n\nc\n",
    b"tab\there\n",
    b'quote " and \\ backslash\n',
    b"caf\xc3\xa9 and a bad byte \xff\n",
    b"\\n is not a newline\n",
    b"ends with a backslash \\\n",
    b"del \x7f and nul \x00\n",
    b"no newline",
    b"two\nparts-and-a-rest",
    b"",
    b"\n",
    b"\xe2\x82\xac\n\xf0\x9f\x90\xb3\n",
]


def per_line(lines):
    """What line-by-line decoding gives, runs of one stream merged."""
    out = []
    for line in lines.split(b"\n"):
        if not line:
            continue
        entry = json.loads(line)
        data = entry["log"].encode("utf-8", errors="replace")
        if out and out[-1][0] == entry["stream"]:
            out[-1] = (entry["stream"], out[-1][1] + data)
        else:
            out.append((entry["stream"], data))
    return out


def merged(runs):
    out = []
    for stream, data in runs:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        else:
            out.append((stream, data))
    return out


@pytest.mark.parametrize("chunk", CHUNKS)
def test_encode_lines_is_the_per_entry_encoding(chunk):
    out, rest = encode_lines("stdout", chunk, TS)
    end = chunk.rfind(b"\n") + 1
    assert rest == chunk[end:]
    lines = chunk[:end].decode("utf-8", errors="replace").split("\n")[:-1]
    assert out == b"".join(entry_bytes("stdout", line + "\n", TS) for line in lines)
    for line in out.splitlines():
        entry = json.loads(line)
        assert list(entry) == ["log", "stream", "time"]          # Docker's key order
        assert entry["stream"] == "stdout" and entry["time"] == TS


@pytest.mark.parametrize("chunk", [c for c in CHUNKS if b"\n" in c])
def test_bulk_payload_reads_back_what_was_written(chunk):
    out, _ = encode_lines("stderr", chunk, TS)
    assert merged(bulk_payload(out)) == per_line(out)


def test_a_log_of_many_runs_both_streams_partials_and_escapes():
    rng = random.Random(15)
    log = b""
    for i in range(400):
        stream = rng.choice(["stdout", "stdout", "stderr"])
        stamp = "2026-12-01T14:%02d:%02d.%06dZ" % (i // 3600, i // 60 % 60, i)
        if rng.random() < 0.1:
            log += entry_bytes(stream, "partial %d" % i, stamp)      # a line cut at 16 KiB
        else:
            log += encode_lines(stream, b"".join(rng.choice(CHUNKS[:8]) for _ in range(rng.randint(1, 40))),
                                stamp)[0]
    runs = bulk_payload(log)
    assert runs is not None
    assert merged(runs) == per_line(log)


@pytest.mark.parametrize("lines", [
    json.dumps({"log": "spaced\n", "stream": "stdout", "time": TS}).encode() + b"\n",   # other writer
    b'{"stream":"stdout","log":"order\\n","time":"' + TS.encode() + b'"}\n',           # key order
    encode_lines("stdout", b"a\nb\n", TS)[0][:-5],                                     # cut short
    encode_lines("stdout", b"a\n", TS)[0] + b"garbage\n",
    # the same framing again after another run: its window would swallow the run between
    encode_lines("stdout", b"a\n", TS)[0] + encode_lines("stderr", b"b\n", TS)[0]
    + encode_lines("stdout", b"c\n", TS)[0],
])
def test_bulk_payload_refuses_what_it_does_not_handle(lines):
    assert bulk_payload(lines) is None


def test_read_blocks_across_block_edges_rotated_files_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonfile, "READ_BLOCK", 4096)     # many block edges inside lines
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, max_size=50_000, max_file=3)
    rng = random.Random(1)
    for i in range(2000):
        stream = "stderr" if i % 7 == 0 else "stdout"
        w.write(stream, b"%05d %s\n" % (i, rng.choice(CHUNKS[:8]).rstrip(b"\n")))
    w.write("stdout", b"unfinished")
    w.close()
    entries = jsonfile.read(path, max_file=3)
    expect = {"stdout": b"", "stderr": b""}
    for stream, data, _ in entries:
        expect[stream] += data
    got = {"stdout": b"", "stderr": b""}
    for stream, data in jsonfile.read_blocks(path, max_file=3):
        got[stream] += data
    assert got == expect
    assert got["stdout"].endswith(b"unfinished") and len(entries) > 500     # spans rotated files
    tail = list(jsonfile.read_blocks(path, max_file=3, tail=5))
    assert b"".join(d for _, d in tail) == b"".join(d for _, d, _ in entries[-5:])
    with open(path, "ab") as f:
        f.write(b'{"log":"cut short by a cra')             # a crash mid-entry: skipped, as read() does
    assert b"".join(d for _, d in jsonfile.read_blocks(path, max_file=3)) == \
        b"".join(d for _, d, _ in jsonfile.read(path, max_file=3))
