"""The json-file log's bulk paths on bytes and files.

Writing: encode_parts (as the writer uses it, `encode_lines` below) must write exactly what the
per-entry encoder writes. Reading: what `docker logs` shows through the bulk reader
(jsonfile.read_shown / render_lines) must be, byte for byte and in the same order, what
decoding every line on its own shows -- for logs with both streams interleaved, every escape,
non-ASCII, partial lines, lines of other writers and damaged ones, across rotated files and
block edges, under every view (streams, since/until, tail, timestamps, details). The reference
here is written independently of jsonfile's own per-line code (json.loads of each line, the
prefixes spelled out by hand)."""

import json
import random
import re
from urllib.parse import quote_plus

import pytest

from minidock import jsonfile
from minidock.jsonfile import View, all_plain, encode_parts, entry_bytes
from minidock.times import rfc3339_seconds

TS = "2026-12-01T14:00:00.123456Z"


def encode_lines(stream, data, stamp):
    """The entries jsonfile.Writer.write makes of `data`'s complete lines, in one bytes object,
    and the rest (an unfinished line): its cut at the last newline and its encode_parts call."""
    end = data.rfind(b"\n") + 1
    if not end:
        return b"", data
    lines = data[:end]
    return b"".join(encode_parts(stream, lines, stamp, all_plain(lines))), data[end:]

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
    b"{\"log\":\"a line that looks like an entry\\n\",\"stream\":\"stderr\"}\n",
    b"carriage\r return and \x1b[1mescape\x1b[0m\n",
]


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


def test_encode_lines_every_byte_value():
    """The fast path's "nothing to escape" test (jsonfile.all_plain) against the per-entry
    encoder for each of the 256 byte values inside a line: alone, among plain lines, and at the
    first, a middle and the last byte of a pipe read's worth (memchr works a vector at a time
    on long buffers, with separate code for the unaligned head and tail)."""
    long = b"0123456789abcde\n" * 4096                     # 64 KiB of plain lines
    for b in range(256):
        for chunk in (b"x%cy\n" % b, b"plain\n" * 3 + b"x%cy\n" % b + b"plain\n",
                      bytes([b]) + long, long[:30001] + bytes([b]) + long[30001:],
                      long[:-1] + bytes([b]) + b"\n"):
            out, rest = encode_lines("stderr", chunk, TS)
            lines = chunk.decode("utf-8", errors="replace").split("\n")[:-1]
            assert out == b"".join(entry_bytes("stderr", line + "\n", TS) for line in lines), b


# -- the reference: every line decoded on its own -------------------------------------------

def fixed(stamp):
    """RFC3339NanoFixed by hand: the fraction padded to nine digits."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", stamp)
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}Z" if m else stamp


def shown_by_line(raw_lines, view, tail=None):
    """[(stream, bytes)] as per-line decoding shows it, consecutive entries of a stream merged."""
    if tail is not None:
        raw_lines = raw_lines[len(raw_lines) - tail:] if tail else []
    out = []
    for line in raw_lines:
        try:
            entry = json.loads(line, strict=False)
            stream, log, stamp = entry["stream"], entry["log"], entry["time"]
            if not all(isinstance(v, str) for v in (stream, log, stamp)):
                continue
            data = re.sub("[\ud800-\udfff]", "\ufffd", log).encode()
        except (ValueError, KeyError, TypeError):
            continue
        if stream not in view.streams:
            continue
        seconds = rfc3339_seconds(stamp)
        if view.since and seconds < view.since or view.until and seconds > view.until:
            continue
        if view.details:
            attrs = entry.get("attrs") if isinstance(entry.get("attrs"), dict) else {}
            data = ",".join(f"{quote_plus(k, safe='')}={quote_plus(str(v), safe='')}"
                            for k, v in sorted(attrs.items())).encode() + b" " + data
        if view.timestamps:
            data = fixed(stamp).encode() + b" " + data
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        else:
            out.append((stream, data))
    return out


def merged(blocks):
    out = []
    for stream, data in blocks:
        assert data, "an empty block"
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        else:
            out.append((stream, data))
    return out


def log_lines(path, max_file):
    out = []
    for name in jsonfile.files(path, max_file):
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        out += data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]
    return out


def render(log, view):
    lines = [line + b"\n" for line in log.split(b"\n")[:-1]]     # each with its newline
    return merged(jsonfile.render_lines(log, lines, view))


def stamp(i):
    # trailing zeros in some fractions: the file trims them, --timestamps shows nine digits
    return "2026-12-01T14:%02d:%02d.%sZ" % (i // 3600, i // 60 % 60, ("%09d" % (i * 1000)).rstrip("0") or "0")


def random_log(seed, runs=400):
    """A writer's log: runs of each stream, partial entries, every chunk shape."""
    rng = random.Random(seed)
    log = b""
    for i in range(runs):
        stream = rng.choice(["stdout", "stdout", "stderr"])
        if rng.random() < 0.1:
            log += entry_bytes(stream, "partial %d" % i, stamp(i))      # a line cut at 16 KiB
        else:
            log += encode_lines(stream, b"".join(rng.choice(CHUNKS) for _ in range(rng.randint(1, 40))),
                                stamp(i))[0]
    return log


VIEWS = [
    View(),
    View(streams=["stdout"]),
    View(streams=["stderr"]),
    View(timestamps=True),
    View(details=True),
    View(streams=["stderr"], timestamps=True, details=True),
    View(since=rfc3339_seconds(stamp(100))),
    View(until=rfc3339_seconds(stamp(300))),
    View(since=rfc3339_seconds(stamp(150)), until=rfc3339_seconds(stamp(151)), timestamps=True),
]


@pytest.mark.parametrize("view", VIEWS, ids=range(len(VIEWS)))
def test_a_writers_log_shows_what_line_by_line_decoding_shows(view):
    log = random_log(15)
    expected = shown_by_line(log.split(b"\n")[:-1], view)
    assert expected                                        # the view selects something
    assert render(log, view) == expected


@pytest.mark.parametrize("chunk", [c for c in CHUNKS if b"\n" in c])
def test_each_shape_of_chunk_alone(chunk):
    log = encode_lines("stderr", chunk, TS)[0] + encode_lines("stdout", chunk * 3, stamp(7))[0]
    for view in VIEWS[:6]:
        assert render(log, view) == shown_by_line(log.split(b"\n")[:-1], view)


FOREIGN = [
    json.dumps({"log": "spaced\n", "stream": "stdout", "time": TS}).encode(),          # other writer
    b'{"stream":"stdout","log":"order\\n","time":"' + TS.encode() + b'"}',           # key order
    b'{"log":"with attrs\\n","stream":"stdout","attrs":{"b":"2 &","a":"x=y"},"time":"' + TS.encode() + b'"}',
    b'{"log":"docker writes UTF-8 raw: caf\xc3\xa9\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"raw invalid UTF-8 \xff\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"a raw\ttab\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"a raw\rcarriage return, which ends no line\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"lone surrogate \\ud800 and a pair \\ud83d\\udc33\\n","stream":"stderr","time":"' + TS.encode() + b'"}',
    b'{"log":"two\\nlines in one entry\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"a literal backslash-n, no newline \\\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"bad escape \\q\\n","stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":123,"stream":"stdout","time":"' + TS.encode() + b'"}',
    b'{"log":"other stream name\\n","stream":"stdin","time":"' + TS.encode() + b'"}',
    b'{"log":"bad time\\n","stream":"stdout","time":"yesterday"}',
    b"garbage",
    b"",
    b'{"log":"cut short by a cra',
]


@pytest.mark.parametrize("foreign", FOREIGN, ids=range(len(FOREIGN)))
def test_lines_of_other_shapes_inside_runs(foreign):
    """A foreign line between, inside and at the edges of runs never changes what is shown
    around it, nor is it misread as part of a run."""
    run = encode_lines("stdout", b"".join(b"line %d\n" % i for i in range(20)), TS)[0]
    lines = run.split(b"\n")[:-1]
    for cut in (0, 1, 10, 19, 20):
        log = b"\n".join(lines[:cut] + [foreign] + lines[cut:]) + b"\n"
        for view in (View(), View(timestamps=True, details=True), View(streams=["stderr"])):
            assert render(log, view) == shown_by_line(log.split(b"\n")[:-1], view), (cut, view.__dict__)


def test_the_same_framing_again_after_another_run():
    """Bisection assumes a run is contiguous: a run whose stream and time come back after
    another run must still come out in order."""
    a = encode_lines("stdout", b"a\n" * 50, TS)[0]
    b = encode_lines("stderr", b"b\n" * 3, TS)[0]
    log = a + b + a + a[:100 * 0] + encode_lines("stdout", b"c\n", TS)[0]
    assert render(log, View()) == shown_by_line(log.split(b"\n")[:-1], View())
    assert render(log, View()) == [("stdout", b"a\n" * 50), ("stderr", b"b\n" * 3), ("stdout", b"a\n" * 50 + b"c\n")]


def test_the_bulk_path_is_taken_for_a_writers_log(monkeypatch):
    """The equivalence above would hold as well if everything went line by line: here the
    per-line path is made to fail, and a writer's log (escapes, non-ASCII, both streams,
    timestamps) still reads back."""
    log = b""
    for i in range(30):
        log += encode_lines("stdout" if i % 3 else "stderr",
                            b"".join(CHUNKS[k % 8] for k in range(i, i + 20)), stamp(i))[0]
    expected = shown_by_line(log.split(b"\n")[:-1], View(timestamps=True))

    def refuse(*args):
        raise AssertionError("decoded line by line")
    monkeypatch.setattr(jsonfile, "render_entry", refuse)
    assert render(log, View(timestamps=True)) == expected
    assert render(log, View()) == shown_by_line(log.split(b"\n")[:-1], View())
    assert len(render(log, View())) == 20                  # merged: one block per change of stream


def write_rotated(path, seed, count=3000):
    w = jsonfile.Writer(path, max_size=40_000, max_file=3, clock=Clock())
    rng = random.Random(seed)
    for i in range(count):
        stream = "stderr" if i % 7 == 0 else "stdout"
        w.write(stream, b"".join(rng.choice(CHUNKS) for _ in range(rng.randint(1, 4))))
    w.write("stdout", b"unfinished")
    w.close()


class Clock:
    def __init__(self):
        self.i = 0

    def __call__(self):
        self.i += 1
        return stamp(self.i)


@pytest.mark.parametrize("block", [jsonfile.READ_BLOCK, 4096, 97])
def test_files_rotated_block_edges_and_tail(tmp_path, monkeypatch, block):
    """read_shown over real rotated files: reads cut inside lines (97 bytes is shorter than
    most lines: the read doubles), tail across files, tail batches, a crash mid-entry."""
    monkeypatch.setattr(jsonfile, "READ_BLOCK", block)
    monkeypatch.setattr(jsonfile, "TAIL_BATCH", 7)
    path = str(tmp_path / "c-json.log")
    write_rotated(path, block)
    raw = log_lines(path, 3)
    assert len(raw) > 500 and jsonfile.files(path, 3)[0].endswith(".2")
    for view in (View(), View(streams=["stderr"], timestamps=True), View(details=True),
                 View(since=rfc3339_seconds(stamp(2500)))):
        got = merged(jsonfile.read_shown(path, 3, view))
        assert got == shown_by_line(raw, view)
        assert b"unfinished" in b"".join(d for s, d in got if s == "stdout") or "stdout" not in view.streams
        for tail in (0, 1, 5, 40, len(raw) - 3, 10**6):
            got = merged(jsonfile.read_shown(path, 3, view, tail=tail))
            assert got == shown_by_line(raw, view, tail=min(tail, len(raw))), tail
    with open(path, "ab") as f:
        f.write(b'{"log":"cut short by a cra')              # a crash mid-entry: not shown
    assert merged(jsonfile.read_shown(path, 3)) == shown_by_line(raw, View())


def test_files_lines_end_only_at_newlines(tmp_path, monkeypatch):
    """The reader cuts a file at b"\\n" alone: a raw carriage return (bytes.splitlines would
    end a line there) inside a foreign writer's entry stays in it."""
    monkeypatch.setattr(jsonfile, "READ_BLOCK", 150)
    path = str(tmp_path / "c-json.log")
    lines = [b'{"log":"raw\r inside %d\\n","stream":"stdout","time":"%s"}'
             % (i, stamp(i).encode()) for i in range(20)]
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    got = merged(jsonfile.read_shown(path, 1))
    assert got == shown_by_line(lines, View())
    assert got[0][1].count(b"\r") == 20


def test_read_is_the_per_line_entries(tmp_path):
    """read() (attach's replay) decodes the same entries, with their times."""
    path = str(tmp_path / "c-json.log")
    write_rotated(path, 3, count=500)
    entries = jsonfile.read(path, 3)
    assert merged((s, d) for s, d, _ in entries if d) == shown_by_line(log_lines(path, 3), View())
    assert all(re.fullmatch(r"2026-12-01T14:\d\d:\d\d\.\d+Z", t) for _, _, t in entries)
