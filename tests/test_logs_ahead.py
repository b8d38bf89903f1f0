"""container/logs.ahead: a large stored log is decoded on a thread of its own, a few blocks ahead
of the socket. Everything arrives in order, an error reaches the reader, and a reader that leaves
ends the thread and closes the log (its files)."""

import threading

import pytest

from minidock.container import logs


def test_every_item_in_order():
    assert list(logs.ahead(iter(range(1000)), 2)) == list(range(1000))
    assert list(logs.ahead(iter([]), 4)) == []


def test_an_error_reaches_the_reader_after_what_came_before():
    def blocks():
        yield "a"
        yield "b"
        raise OSError(5, "Input/output error")

    got = []
    with pytest.raises(OSError) as e:
        for item in logs.ahead(blocks(), 4):
            got.append(item)
    assert got == ["a", "b"] and e.value.errno == 5


def test_a_reader_that_leaves_ends_the_thread_and_closes_the_log():
    closed = threading.Event()
    made = []

    def blocks():
        try:
            for i in range(10**9):
                made.append(i)
                yield i
        finally:
            closed.set()                   # where read_shown closes its files

    reader = logs.ahead(blocks(), 3)
    assert [next(reader) for _ in range(5)] == [0, 1, 2, 3, 4]
    reader.close()
    assert closed.wait(10)
    for t in threading.enumerate():
        if t.name == "logs-ahead":
            t.join(10)
            assert not t.is_alive()
    assert len(made) <= 5 + 3 + 2          # it stopped a few blocks ahead, not at the end


def test_merged_joins_runs_of_one_stream_up_to_the_size_in_order():
    blocks = [("stdout", b"a" * 3), ("stdout", b"b" * 3), ("stdout", b"c"), ("stderr", b"E"),
              ("stderr", b"F" * 10), ("stdout", b"d"), ("stdout", b"e" * 4)]
    got = list(logs.merged(iter(blocks), 5))
    assert got == [("stdout", b"aaabbb"), ("stdout", b"c"), ("stderr", b"E" + b"F" * 10),
                   ("stdout", b"deeee")]
    for name in ("stdout", "stderr"):            # what a client demuxes: the same bytes per stream
        assert b"".join(d for s, d in got if s == name) == b"".join(d for s, d in blocks if s == name)
    assert list(logs.merged(iter([]), 5)) == []
