"""The read cache beside a json-file log (minidock/logcache.py): what `docker logs` shows through it
is byte for byte what decoding the log shows -- on every shape of output, and after each kind of
damage the module docstring names -- and it does cover the log where it should."""

import os
import threading

import pytest

from minidock import jsonfile, logcache


def _clock():
    """Distinct times, as the daemon's clock gives: each write's entries end differently."""
    n = [0]

    def clock():
        n[0] += 1
        return "2026-12-03T02:%02d:%02d.%09dZ" % (n[0] // 3600 % 60, n[0] // 60 % 60, n[0])
    return clock


class Inline:
    """The writeback thread's part done at once, in the caller (jsonfile.Writeback's interface):
    the records are on disk when a write returns, so what the cache covers is known."""

    def run(self, fd, job, held=0):
        job(fd)
        return True

    def submit(self, fd, start, length):
        pass


def _writer(path, **kw):
    return jsonfile.Writer(path, clock=_clock(), writeback=Inline(), **kw)


def _shown(path, **view):
    """{stream: bytes shown} through read_shown, as `docker logs` demuxes it."""
    out = {"stdout": b"", "stderr": b""}
    for stream, data in jsonfile.read_shown(path, 1, jsonfile.View(**view)):
        out[stream] += bytes(data)
    return out


def _decoded(path, **view):
    """The same, decoding the log alone (the cache moved away for the read)."""
    cache = logcache.path_for(path)
    os.rename(cache, cache + ".away")
    try:
        return _shown(path, **view)
    finally:
        os.rename(cache + ".away", cache)


def _covered(path):
    """Bytes of the log the cache's usable records stand for."""
    with open(path, "rb") as log, open(logcache.path_for(path), "rb") as cache:
        limit = os.fstat(log.fileno()).st_size
        return sum(end - start for start, end, _, _ in
                   logcache.records(cache.fileno(), log.fileno(), limit))


MIXED = [
    ("stdout", b"plain line\n" * 8000),
    ("stdout", "caf\u00e9 \u65e5\u672c \U0001F600\n".encode() * 3000),    # valid UTF-8
    ("stderr", b"bad \xff\xfe utf-8 \xc3\n" * 4000),                     # invalid: U+FFFD
    ("stdout", b"tabs\tand\rreturns\x1b[0m \"quoted\" back\\slash\n" * 2000),
    ("stdout", b"x" * 40000),                                             # no newline: flushed
    ("stdout", b"y" * 100 + b"\n"),
    ("stderr", b"one small line\n"),                                      # under MIN_RECORD
    ("stdout", b"z" * 99 + b"\n"),
]


def test_every_shape_of_output_shows_as_the_decoded_log_shows_it(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    for stream, data in MIXED * 3:
        w.write(stream, data)
    w.write("stderr", b"unfinished at the close")
    w.close()
    assert _shown(path) == _decoded(path)
    assert _shown(path, streams=("stderr",)) == _decoded(path, streams=("stderr",))
    assert _shown(path)["stderr"].endswith(b"unfinished at the close")
    assert "\ufffd".encode() in _shown(path)["stderr"]
    # most of the log is covered by records (the small writes are not)
    assert _covered(path) > 0.9 * os.path.getsize(path)


def test_a_line_at_a_time_keeps_no_records(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    for i in range(3000):
        w.write("stdout" if i % 2 else "stderr", b"line %d\n" % i)
    w.close()
    assert not os.path.exists(logcache.path_for(path))       # not even made
    assert _shown(path)["stdout"].count(b"\n") == 1500


def test_a_log_with_rotation_has_no_cache(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = _writer(path, max_size=1 << 20, max_file=2)
    w.write("stdout", b"a" * 99 + b"\n")
    w.close()
    assert not os.path.exists(logcache.path_for(path))


def test_a_log_emptied_in_place_then_written_again_never_shows_old_records(tmp_path):
    """`truncate -s 0` of a running container's log: the writer goes on appending (O_APPEND)
    with offsets of the old log, and the old records' ranges fill up with new entries."""
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    w.write("stdout", b"old old old\n" * 20000)
    os.truncate(path, 0)
    w.write("stdout", b"new\n" * 80000)
    w.close()
    shown = _shown(path)
    assert shown == _decoded(path)
    assert b"old" not in shown["stdout"] and shown["stdout"] == b"new\n" * 80000


def test_a_record_cut_by_a_crash_is_not_used_and_the_next_writer_starts_over(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    w.write("stdout", b"first run\n" * 20000)
    w.close()
    cache = logcache.path_for(path)
    os.truncate(cache, os.path.getsize(cache) - 100)          # the last record cut short
    assert _shown(path) == _decoded(path)
    w = _writer(path)                                          # the container's next start
    w.write("stdout", b"second run\n" * 20000)
    w.close()
    assert _shown(path) == _decoded(path)
    assert _shown(path)["stdout"] == b"first run\n" * 20000 + b"second run\n" * 20000
    # the new records are reached: the cut one was dropped, not appended after
    assert _covered(path) >= len(b"second run\n" * 20000)


def test_entries_written_after_the_last_record_are_decoded(tmp_path):
    """A crash between the log's write and the record's: the log holds more than the cache
    says. So does a log written by a writer without a cache."""
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    w.write("stdout", b"kept\n" * 20000)
    w.close()
    w = _writer(path, cache=False)
    w.write("stderr", b"after\n" * 20000)
    w.close()
    shown = _shown(path)
    assert shown == _decoded(path) and shown["stderr"] == b"after\n" * 20000


def test_a_reader_stops_where_it_was_told_and_at_the_logs_end(tmp_path):
    """`logs -f` reads the stored log up to where it stood at the subscription (`upto`); the
    records past that point are left to the follower's queue."""
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    w.write("stdout", b"before\n" * 20000)
    st = os.stat(path)
    w.write("stdout", b"after\n" * 20000)
    w.close()
    upto = (st.st_dev, st.st_ino, st.st_size)
    shown = b"".join(bytes(d) for _, d in jsonfile.read_shown(path, 1, upto=upto))
    assert shown == b"before\n" * 20000


@pytest.mark.parametrize("damage", ["tag", "length"])
def test_a_damaged_record_ends_the_caches_use_and_the_rest_is_decoded(tmp_path, damage):
    """The second record's tag overwritten, or its length made longer (its payload would run
    into the next record: its trailer is not where the length says)."""
    path = str(tmp_path / "c-json.log")
    w = _writer(path)
    for i in range(12):                             # three records and more
        w.write("stdout", (b"run %d\n" % i) * 20000)
    w.close()
    cache = logcache.path_for(path)
    with open(cache, "r+b") as f:
        f.seek(len(logcache.MAGIC))
        first = logcache.RECORD.unpack(f.read(logcache.RECORD.size))
        second = len(logcache.MAGIC) + logcache.RECORD.size + first[2] + logcache.TRAILER.size
        f.seek(second)
        head = bytearray(f.read(logcache.RECORD.size))
        if damage == "tag":
            head[0:1] = b"X"
        else:
            length = int.from_bytes(head[8:12], "little")
            head[8:12] = (length + logcache.TRAILER.size + 8).to_bytes(4, "little")
        f.seek(second)
        f.write(head)
    assert _shown(path) == _decoded(path)
    assert _covered(path) == first[4] - first[3]         # the first record's range, and no more


def test_records_are_written_by_the_writeback_thread_in_order(tmp_path):
    """With the daemon's writeback thread (jsonfile.Writeback), not inline: the records reach
    the cache once the thread has run, in the log's order, and cover the log."""
    path = str(tmp_path / "c-json.log")
    thread = jsonfile.Writeback()
    w = jsonfile.Writer(path, clock=_clock(), writeback=thread)
    for i in range(40):
        w.write("stdout" if i % 8 else "stderr", (b"line %d\n" % i) * 3000)
    w.close()
    done = threading.Event()
    fd = os.open(os.devnull, os.O_RDONLY)
    thread.run(fd, lambda dup: done.set())                                # after every record
    os.close(fd)                                                          # (the job has a dup)
    assert done.wait(10)
    assert _shown(path) == _decoded(path)
    assert _covered(path) == os.path.getsize(path)


def test_a_thread_too_far_behind_ends_the_records_and_the_log_still_reads(tmp_path):
    """The writeback thread refuses work (MAX_PENDING waiting: a stuck disk): the log goes on,
    the records stop -- the one open then is never sealed -- and what they do not cover is
    decoded."""
    class Refusing(Inline):
        calls = 0

        def run(self, fd, job, held=0):   # six records, then no more
            self.calls += 1
            return self.calls <= 6 and super().run(fd, job)
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, clock=_clock(), writeback=Refusing())
    for i in range(20):
        w.write("stdout", (b"line %d\n" % i) * 10000)
    w.close()
    assert _shown(path) == _decoded(path)
    assert 0 < _covered(path) < os.path.getsize(path) / 2
