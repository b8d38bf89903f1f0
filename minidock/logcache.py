"""The read cache of a json-file log: the bytes `docker logs` shows, kept beside the log.

Why. `docker logs` shows each entry's `log` value, so reading a json-file log back means cutting
every line's JSON framing off its body: ~160-250 ns a line in CPython however the cut is made
(docs/performance.md has the measurements), 100-130 ms of one core's time for 64 MiB of
100-byte lines -- on this 2-core machine that decode alone held the read-back under ~500 MB/s.
Yet the shown bytes of an entry are known when it is written: they are the container's output
itself (made valid UTF-8). So the writer keeps them a second time, in large records, and a
read-back copies them instead of decoding. (Docker keeps a cache of the same kind, in its `local`
format, beside the drivers it cannot read back: "dual logging".)

The file, beside the log and hidden from globs such as `*-json.log*` that log shippers tail:

    <data-root>/containers/<id>/.<id>-json.log.cache

    MAGIC                                                               8 bytes, once
    a record:  b"LREC", stream (1 = stdout, 2 = stderr), 3 bytes 0,
               length (u32), start (u64), end (u64), fingerprint (40)   68 bytes, little-endian
               payload                                                  `length` bytes
               end again (u64), b"RDNE"                                 12 bytes

A record says: the log's bytes [start, end) are entries of `stream` only, and what `docker logs`
shows of them is `payload`.

What is trusted. The json-file stays the log; a record stands in for a part of it only when it
can show it matches that part, and whatever no record covers is decoded from the log as before:

- the writer appends a record after its entries are in the log, never before: a record never
  describes bytes the log does not hold yet;
- a record is used only whole: its trailer repeats `end` after the payload, so one cut short by
  a crash or a full disk (or still being written) is seen, and ends the cache's use for that
  read;
- and only while the log's bytes [end - 40, end) are still its `fingerprint`. An entry's last
  bytes are its time to the nanosecond: a log emptied in place (`truncate -s 0`, the usual way
  to clear a Docker log) or replaced, then written again, never matches an old record;
- records go forward through the log: one that starts before the previous one's end, or ends
  past the point the reader reads to, ends the cache's use for that read.

So the bytes shown are the decoded log's, record or not (tests/test_logcache.py compares them on
every shape of output and of damage). Between records there may be gaps -- output written as
small writes is not kept (below), a crash between the log's write and the record's, the writes
of a running container not joined into a record yet -- and the reader decodes those parts.

What is kept. The writes of the log (each what one read of a container's pipe brought: up to
the 64 KiB a pipe holds, or pumps.READ_SIZE from a pipe the loop grew) that follow each other in
one stream go into one record, until it holds RECORD_BYTES or more; a write of less than
MIN_PART keeps nothing and ends the record. So a container printing a line at a time pays no
second write and holds nothing -- it is decoded from the log at ~0.2 us a line, about what
reading a record costs -- and one printing fast fills records of 64 KiB or more (held in memory
until then: less than 64 KiB per log between records, references to the output). Only a log
without rotation (no `max-size`) has a cache: with max-size the user bounded the log's disk use,
which the cache would pass, and such a log is at most max-size * max-file to decode.

Costs. On disk the payload once more: for 100-byte lines 0.56 times the log (64 MiB beside a
114 MB log). Writing: a record's copy into the page cache and its write-out, done by the log's
writeback thread (jsonfile.Writeback) beside the output loop, which only hands the record over.
Reading: four preads a record (its head, payload and trailer, the log's last bytes); the
payload is read into bytes of its own and sent as it is.

Observe it:

    docker run --name big busybox sh -c 'yes hello | head -c 20000000'
    ls -la $(dirname $(docker inspect -f '{{.LogPath}}' big))    # the .cache beside the log
    time docker logs big | wc -c
"""

import os
import struct

MAGIC = b"MDLOGC1\n"
RECORD = struct.Struct("<4sB3xIQQ40s")
TRAILER = struct.Struct("<Q4s")
REC, END = b"LREC", b"RDNE"
FINGERPRINT = 40                  # the log's last bytes a record holds: an entry's time and more
MIN_PART = 1 << 10                # a write of less output keeps nothing, and ends the record
RECORD_BYTES = 64 << 10           # a record goes to the thread once it holds this much

STREAMS = {"stdout": 1, "stderr": 2}
NAMES = {code: name for name, code in STREAMS.items()}


def path_for(log_path):
    """The cache file of the log at `log_path`."""
    head, tail = os.path.split(log_path)
    return os.path.join(head, "." + tail + ".cache")


def shown(raw):
    """What `docker logs` shows of entries made from the raw output `raw` (jsonfile.Writer): the
    bytes themselves when they are valid UTF-8, else what the log stored -- the text decoded
    with U+FFFD for each invalid sequence."""
    if raw.isascii():
        return raw
    try:
        raw.decode()
        return raw
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace").encode()


class Writer:
    """Keeps the records of one log as its jsonfile.Writer appends entries (called under that
    writer's lock, on the output loop's thread).

    Writes that follow each other in one stream are joined in memory (references to the output
    bytes, no copy) until RECORD_BYTES; the record then goes to the writeback thread `thread`
    (jsonfile.Writeback), which appends it with one writev and starts its write-out, beside
    the loop, in order, on a duplicate of our descriptor. What a record waits for is bounded:
    RECORD_BYTES per log, and a write of less than MIN_PART ends it (a container printing a
    line at a time holds nothing). Nothing here fails the log: an error, a short write or the
    thread too far behind ends the records, and the rest of the log is decoded when read.
    `WriteOut` is jsonfile.WriteOut (the write-out requests of a growing file)."""

    def __init__(self, log_path, thread, WriteOut):
        self.path = path_for(log_path)
        self.thread, self.WriteOut = thread, WriteOut
        self.file = None              # opened for the first record: a run that keeps none
        self.broken = False           # (most: `true`, a line at a time) never touches the file
        self.pending = None           # [stream, start, end, [(raw, plain)], bytes, fingerprint]

    def add(self, stream, raw, plain, start, end, last_bytes):
        """The entries just appended to the log at [start, end), of `stream`, made from the
        raw output `raw` (`plain`: printable ASCII, known to show as itself); `last_bytes`: the
        log's bytes that end at `end` (FINGERPRINT of them at least)."""
        p = self.pending
        if p is not None and (len(raw) < MIN_PART or p[0] != stream or p[2] != start):
            self.flush()
            p = None
        if len(raw) < MIN_PART or self.broken:
            return                    # left to the decoder
        if p is None:
            self.pending = p = [stream, start, end, [], 0, b""]
        p[2], p[5] = end, bytes(last_bytes[-FINGERPRINT:])
        p[3].append((raw, plain))
        p[4] += len(raw)
        if p[4] >= RECORD_BYTES:
            self.flush()

    def flush(self):
        """Hand the joined record to the thread."""
        p, self.pending = self.pending, None
        if p is None or self.broken:
            return
        if self.file is None:
            try:
                self._open()
            except OSError:
                self.broken = True    # no cache: the log is decoded when read
                return
        stream, start, end, parts, _, fingerprint = p
        payload = [raw if plain else shown(raw) for raw, plain in parts]
        length = sum(map(len, payload))
        buffers = [RECORD.pack(REC, STREAMS[stream], length, start, end, fingerprint),
                   *payload, TRAILER.pack(end, END)]
        if not self.thread.run(self.file.fileno(), lambda fd: self._write(fd, buffers), length):
            self.broken = True        # the thread is far behind (a stuck disk): no more records

    def close(self):
        """Flush, then (on the thread, after the last record) the last write-out request."""
        self.flush()
        if self.file is None:
            return
        if not self.broken:
            self.thread.run(self.file.fileno(), self._last)
        self.file.close()

    def _open(self):
        # O_APPEND: a record is one writev, never interleaved with another writer's (a
        # previous run's records may still wait on the thread when this run writes its first)
        self.file = open(self.path, "a+b", buffering=0)
        self.size = os.fstat(self.file.fileno()).st_size
        if not _whole(self.file.fileno(), self.size):
            # New, or cut short by a crash: start over (what it covered is decoded instead;
            # records after a cut one would never be reached).
            self.file.truncate(0)
            self.file.write(MAGIC)
            self.size = len(MAGIC)
        self.out = self.WriteOut(self.thread, self.size)   # touched by the thread's jobs only

    # -- on the thread, in order -----------------------------------------------------------

    def _write(self, fd, buffers):
        """Append one record, and ask for the write-out of what is finished."""
        if self.broken:
            return
        try:
            written = os.writev(fd, buffers)
        except OSError:
            written = -1
        if written != sum(map(len, buffers)):
            self.broken = True        # a short record is seen by its trailer; none after it
            return
        self.size += written
        self.out.grew(fd, self.size)

    def _last(self, fd):
        if not self.broken:
            self.out.last(fd, self.size)


def _whole(fd, size):
    """Whether a cache file of `size` bytes has its MAGIC and ends with a record's trailer."""
    if size < len(MAGIC) or os.pread(fd, len(MAGIC), 0) != MAGIC:
        return False
    if size == len(MAGIC):
        return True
    tail = os.pread(fd, TRAILER.size, size - TRAILER.size)
    return len(tail) == TRAILER.size and TRAILER.unpack(tail)[1] == END


def open_for(log_path):
    """The cache file of a log, open for reading, or None where there is none."""
    try:
        return open(path_for(log_path), "rb")
    except OSError:
        return None


def records(cache_fd, log_fd, limit):
    """(start, end, stream, payload) of the cache's records a reader may use, in the log's
    order, for the log's bytes up to `limit`: the module docstring's rules, checked record by
    record; the first that fails one ends the walk. A pread each for a record's head, payload
    and trailer (the payload is read into bytes of its own: nothing is sliced or copied) and
    one of the log's last bytes."""
    if os.pread(cache_fd, len(MAGIC), 0) != MAGIC:
        return
    off, previous_end = len(MAGIC), 0
    while True:
        head = os.pread(cache_fd, RECORD.size, off)
        if len(head) < RECORD.size:
            return
        tag, code, length, start, end, fingerprint = RECORD.unpack(head)
        if tag != REC or code not in NAMES or start < previous_end or end > limit \
                or end - start < FINGERPRINT:
            return
        payload = os.pread(cache_fd, length, off + RECORD.size)
        trailer = os.pread(cache_fd, TRAILER.size, off + RECORD.size + length)
        if len(payload) < length or len(trailer) < TRAILER.size \
                or TRAILER.unpack(trailer) != (end, END):
            return
        if os.pread(log_fd, FINGERPRINT, end - FINGERPRINT) != fingerprint:
            return
        yield start, end, NAMES[code], payload
        previous_end, off = end, off + RECORD.size + length + TRAILER.size
