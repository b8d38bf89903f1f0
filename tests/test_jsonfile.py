"""jsonfile.py on real files: entries, rotation by size, reading across rotated files in order,
tail from the end, option checks in moby's words, and a reader that never holds the writer up."""

import ctypes
import json
import os
import threading
import time

import pytest

from minidock import jsonfile, logcache
from minidock.errors import InvalidParameter
from minidock.times import rfc3339_seconds


class Clock:
    """Strictly increasing timestamps, one second apart, so since/until are exact."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        self.t += 1
        return f"2026-01-01T00:{self.t // 60:02d}:{self.t % 60:02d}.000000Z"


def lines_of(entries):
    return [data for _, data, _ in entries]


def test_entries_lines_partials_and_streams(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, clock=Clock())
    w.write("stdout", b"one\ntw")
    w.write("stderr", b"err\n")
    w.write("stdout", b"o\nthree")
    w.close()
    raw = [json.loads(line) for line in open(path)]
    assert raw[0] == {"log": "one\n", "stream": "stdout", "time": "2026-01-01T00:00:01.000000Z"}
    assert [(e["stream"], e["log"]) for e in raw] == [
        ("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"), ("stdout", "three")]
    assert lines_of(jsonfile.read(path)) == [b"one\n", b"err\n", b"two\n", b"three"]


def test_long_partial_is_flushed(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path)
    w.write("stdout", b"x" * (jsonfile.PARTIAL_FLUSH + 1))
    assert len(jsonfile.read(path)) == 1
    w.close()


def test_rotation_keeps_max_file_files_of_about_max_size(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, max_size=1000, max_file=3, clock=Clock())
    for i in range(1000):
        w.write("stdout", b"line %04d\n" % i)
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    entry = len(json.dumps({"log": "line 0000\n", "stream": "stdout",
                            "time": "2026-01-01T00:00:01.000000Z"})) + 1
    for name in names[1:]:
        size = os.path.getsize(tmp_path / name)
        assert 1000 <= size < 1000 + entry           # full files pass max-size by < one entry
    got = lines_of(jsonfile.read(path, max_file=3))
    numbers = [int(line.split()[1]) for line in got]
    assert numbers == list(range(numbers[0], 1000))   # in order, contiguous, ending at the newest
    assert numbers[0] > 900


def test_max_file_one_truncates_in_place(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, max_size=500, max_file=1)
    for i in range(200):
        w.write("stdout", b"%d\n" % i)
    w.close()
    assert os.listdir(tmp_path) == ["c-json.log"]
    assert os.path.getsize(path) < 600
    assert lines_of(jsonfile.read(path))[-1] == b"199\n"


def test_tail_across_files_and_since_until(tmp_path):
    path = str(tmp_path / "c-json.log")
    clock = Clock()
    w = jsonfile.Writer(path, max_size=300, max_file=5, clock=clock)
    for i in range(40):
        w.write("stdout", b"%d\n" % i)
    w.close()
    assert len(os.listdir(tmp_path)) == 5
    everything = jsonfile.read(path, max_file=5)
    first_kept = int(everything[0][1])
    assert lines_of(jsonfile.read(path, max_file=5, tail=3)) == [b"37\n", b"38\n", b"39\n"]
    tail = jsonfile.read(path, max_file=5, tail=12)        # spans at least two files
    assert lines_of(tail) == lines_of(everything)[-12:]
    assert jsonfile.read(path, max_file=5, tail=0) == []
    assert len(jsonfile.read(path, max_file=5, tail=10**6)) == 40 - first_kept
    t = rfc3339_seconds(everything[-5][2])
    assert lines_of(jsonfile.read(path, max_file=5, since=t)) == lines_of(everything)[-5:]
    assert lines_of(jsonfile.read(path, max_file=5, until=t, tail=6)) == lines_of(everything)[-6:-4]


def test_tail_reads_from_the_end_not_the_whole_file(tmp_path):
    # A 20 MB log: the last lines come from reading only the final block(s).
    path = str(tmp_path / "big-json.log")
    w = jsonfile.Writer(path)
    chunk = b"".join(b"%07d %s\n" % (i, b"y" * 80) for i in range(1000))
    for _ in range(200):
        w.write("stdout", chunk)
    w.write("stdout", b"the end\n")
    w.close()

    reads = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def seek(self, *a):
            return self.f.seek(*a)

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data
    with open(path, "rb") as f:
        last = jsonfile.last_lines(Counting(f), 2)
    assert json.loads(last[-1])["log"] == "the end\n"
    assert json.loads(last[0])["log"].startswith("0000999 ")
    assert sum(reads) <= jsonfile.BLOCK


def test_slow_reader_never_holds_the_writer(tmp_path):
    # A reader opened the files and reads them slowly; meanwhile the writer rotates through every
    # name many times. The writer goes on, and the reader still sees a consistent old view.
    path = str(tmp_path / "c-json.log")
    w = jsonfile.Writer(path, max_size=200, max_file=2)
    for i in range(20):
        w.write("stdout", b"old %d\n" % i)
    handles = jsonfile.open_all(path, 2)
    before = [h.read(10) for h in handles]           # partway through
    for i in range(2000):
        w.write("stdout", b"new %d\n" % i)
    w.close()
    rest = [b + h.read() for b, h in zip(before, handles)]
    for h in handles:
        h.close()
    seen = [json.loads(line)["log"] for r in rest for line in r.splitlines()[1:]]
    olds = [x for x in seen if x.startswith("old")]
    assert olds and olds[-1] == "old 19\n"            # the old view is whole and in order
    assert len(seen) < 40                              # rotated-away files stopped growing
    assert lines_of(jsonfile.read(path, max_file=2))[-1] == b"new 1999\n"


@pytest.mark.parametrize("text,value", [
    ("1m", 10**6), ("10k", 10**4), ("1.5m", 1500000), ("2g", 2 * 10**9), ("100", 100),
    ("1mb", 10**6), ("1MiB", 10**6), ("3 k", 3000)])
def test_from_human_size_is_decimal(text, value):
    assert jsonfile.from_human_size(text) == value


@pytest.mark.parametrize("config,message", [
    ({"Type": "syslog2"}, "logger: no log driver named 'syslog2' is registered"),
    ({"Type": "json-file", "Config": {"max-size": "lots"}}, "invalid size: 'lots'"),
    ({"Type": "json-file", "Config": {"max-size": "0"}}, "max-size must be a positive number"),
    ({"Type": "json-file", "Config": {"max-file": "0"}}, "max-file cannot be less than 1"),
    ({"Type": "json-file", "Config": {"colour": "red"}}, "unknown log opt 'colour' for json-file log driver"),
    ({"Type": "none", "Config": {"max-size": "1m"}}, "unknown log opt 'max-size' for none log driver"),
])
def test_log_config_refused_in_mobys_words(config, message):
    with pytest.raises(InvalidParameter, match=message):
        jsonfile.check_log_config(config)


def test_log_config_defaults():
    assert jsonfile.check_log_config(None) == {"Type": "json-file", "Config": {}}
    daemon = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    assert jsonfile.check_log_config({}, daemon) == daemon
    assert jsonfile.check_log_config({"Type": "", "Config": {"max-file": "5"}}, daemon)["Config"] == {
        "max-size": "1m", "max-file": "5"}
    assert jsonfile.check_log_config({"Type": "json-file"}, daemon) == {"Type": "json-file", "Config": {}}
    assert jsonfile.check_log_config({"Type": "none"}, daemon) == {"Type": "none", "Config": {}}
    assert jsonfile.rotation({"max-size": "1m", "max-file": "3"}) == (10**6, 3)
    assert jsonfile.cannot_read({}).status == 501


class KernelWriteback(jsonfile.Writeback):
    """The real Writeback (its thread, its duplicate fds, the real sync_file_range), keeping
    what the kernel answered for each range: (inode of the fd it was given, start, length,
    return value, errno)."""

    def __init__(self):
        real = jsonfile._sync_file_range()
        self.answers = []

        def call(fd, start, length, flags):
            rc = real(fd, start, length, flags)
            self.answers.append((os.fstat(fd).st_ino, start, length, rc, ctypes.get_errno()))
            return rc
        super().__init__(call)

    def drain(self):
        """Wait until the thread has handled everything handed to it so far: a job that sets an
        event goes through the same queue, after it -- twice, since a job on the thread (a read
        cache's record, logcache.py) submits its own ranges when it runs."""
        for _ in range(2):
            done = threading.Event()
            fd = os.open(os.devnull, os.O_RDONLY)
            self.run(fd, lambda dup: done.set())
            os.close(fd)
            assert done.wait(10)


def test_writeback_requested_as_the_log_grows_whole_pages_in_order(tmp_path):
    """Every WRITEBACK_STEP bytes the finished pages of the log are handed to the kernel for
    write-out, once each, in order, and the kernel accepts every request (on a duplicate of the
    writer's fd, so the writer may close its file meanwhile); at close the rest goes too."""
    path = str(tmp_path / "c-json.log")
    wb = KernelWriteback()
    w = jsonfile.Writer(path, writeback=wb)
    line = b"y" * 199 + b"\n"
    while w.size < 3 * jsonfile.WRITEBACK_STEP + jsonfile.WRITEBACK_STEP // 2:
        w.write("stdout", line * (64 * 1024 // len(line)))
    ino = os.fstat(w.file.fileno()).st_ino
    cache_ino = os.stat(logcache.path_for(path)).st_ino
    w.close()
    wb.drain()
    assert all(a[3] == 0 for a in wb.answers), wb.answers
    assert {a[0] for a in wb.answers} == {ino, cache_ino}
    # The log's and its read cache's (logcache.py) each from their start, in order, the rest at close.
    for inode, path_of in ((ino, path), (cache_ino, logcache.path_for(path))):
        size = os.path.getsize(path_of)
        answers = [a for a in wb.answers if a[0] == inode]
        # one per 4 MiB, then the rest at close
        assert len(answers) == size // jsonfile.WRITEBACK_STEP + 1, (size, answers)
        assert answers[0][1] == 0
        for (_, start, length, _, _), (_, nxt, _, _, _) in zip(answers, answers[1:]):
            assert start % jsonfile.PAGE == 0 and nxt == start + length     # contiguous, page-aligned
        assert answers[-1][1] + answers[-1][2] == size   # close asked for the rest
    assert [len(a) for a in jsonfile.read_shown(path)]    # the log reads back


def test_writeback_of_a_small_log_is_left_to_the_kernel(tmp_path):
    path = str(tmp_path / "c-json.log")
    wb = KernelWriteback()
    w = jsonfile.Writer(path, writeback=wb)
    w.write("stdout", b"short\n" * 100)
    w.close()
    wb.drain()
    assert wb.answers == []


def test_writeback_on_a_stuck_disk_drops_requests_instead_of_piling_up_descriptors(tmp_path):
    """While the thread is stuck in one call, at most MAX_PENDING requests wait (each holds a
    duplicate fd); the rest are dropped, and once it is free every duplicate is closed."""
    release = threading.Event()
    calls = []

    def stuck(fd, start, length, flags):
        calls.append(start)
        release.wait(10)
        return 0
    wb = jsonfile.Writeback(stuck)
    fds_before = len(os.listdir("/proc/self/fd"))
    with open(tmp_path / "f", "wb") as f:
        for i in range(wb.MAX_PENDING + 50):
            wb.submit(f.fileno(), i * jsonfile.PAGE, jsonfile.PAGE)
        assert len(os.listdir("/proc/self/fd")) - fds_before <= wb.MAX_PENDING + 1   # + f itself
        release.set()
        deadline = time.monotonic() + 10
        while wb.pending and time.monotonic() < deadline:
            time.sleep(0.01)
    assert wb.pending == 0 and len(calls) == wb.MAX_PENDING
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_writeback_holds_records_up_to_max_held_and_never_drops_other_jobs(tmp_path):
    """A read cache's records wait on a stuck thread up to MAX_HELD bytes, then are refused
    (the cache stops there: logcache.py); a job holding nothing (a record's seal) is still
    taken, and all of them run, in order, once the thread is free."""
    release = threading.Event()
    ran = []
    wb = jsonfile.Writeback(lambda *a: 0)
    with open(tmp_path / "f", "wb") as f:
        assert wb.run(f.fileno(), lambda fd: release.wait(10))          # the thread is stuck
        record = wb.MAX_HELD // 4
        answers = [wb.run(f.fileno(), lambda fd, i=i: ran.append(i), record) for i in range(6)]
        assert answers == [True] * 4 + [False] * 2
        assert wb.run(f.fileno(), lambda fd: ran.append("seal"))
        for _ in range(wb.MAX_PENDING + 10):                             # hints beside them
            wb.submit(f.fileno(), 0, jsonfile.PAGE)
        release.set()
        deadline = time.monotonic() + 10
        while wb.pending and time.monotonic() < deadline:
            time.sleep(0.01)
    assert ran == [0, 1, 2, 3, "seal"] and wb.held == 0 and wb.pending == 0
