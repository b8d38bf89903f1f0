"""Reading a line-oriented file from its end, for `docker logs --tail N` on huge logs.

A json-file log grows without bound (Docker's default has no rotation either). Reading the
whole file to keep its last N lines costs time and memory in proportion to the file: 30 s and
gigabytes for a 1 GB log, for `--tail 1`. Instead, read fixed-size blocks backwards from the
end with pread(2) and cut them at newlines:

    file:   ... line k-1\n line k\n line k+1\n          (the last byte is normally \n)
                      <-- block 2 --><-- block 1 -->     read back to front
    A line that straddles two blocks is carried over and completed by the next (earlier) block.

so the work is proportional to the lines actually wanted. A last line without its newline (a
write cut short by a crash, or one still being written) is yielded as it is; the caller's parser
decides what to do with it.
"""

import os

BLOCK = 64 * 1024


def reverse_lines(path, block=BLOCK):
    """Yield the lines of `path` (bytes, without their newline), last line first.

    Reads at most one block beyond what the consumed lines span. A missing file yields nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        end = size = os.fstat(fd).st_size   # a snapshot: lines appended later are not ours
        carry = b""                     # the start of a line whose beginning is in earlier blocks
        first = True
        while end > 0:
            start = max(0, end - block)
            chunk = os.pread(fd, end - start, start)
            if len(chunk) < end - start:   # the file shrank under us (truncated): stop cleanly
                return
            end = start
            data = chunk + carry
            if first:
                first = False
                if data.endswith(b"\n"):
                    data = data[:-1]    # the final newline ends the last line; no empty line after
            parts = data.split(b"\n")
            carry = parts[0]            # may continue in the previous block
            for line in reversed(parts[1:]):
                yield line
        if size:
            yield carry                 # the file's first line
    finally:
        os.close(fd)


def forward_lines(path, block=BLOCK):
    """Yield the lines of `path` first to last, without reading the file into memory at once."""
    try:
        f = open(path, "rb", buffering=block)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            yield line[:-1] if line.endswith(b"\n") else line
