"""Compressed archives: which compression a stream has, the plain bytes inside, and their digest.

Docker accepts a tar plain or compressed wherever one comes in (`docker import`, build
contexts, `docker load`, layers pulled from a registry), and says which it was by nothing but the
stream's first bytes, its *magic number*:

    1f 8b                gzip   (RFC 1952)            -> gzip.GzipFile
    42 5a 68  "BZh"      bzip2                        -> bz2.BZ2File
    fd 37 7a 58 5a 00    xz     (".7zXZ\0")           -> lzma.LZMAFile
    28 b5 2f fd          zstd   (RFC 8878)            refused: no decoder in the standard library
    anything else        a plain tar

`decompressed()` reads those few bytes, puts them back in front of the rest (`Prefixed`), and
returns a reader of plain bytes with the compression's name. A content-addressed store needs the
digest of exactly the bytes it stores: `BlockReader` reads a stream a block at a time,
sha256-hashing each block and copying it to a sink as it arrives, while a tar parser consumes
it, so a layer is hashed, kept and unpacked in one read. What you can observe: `file
layer.tar.gz`, `xxd -l 6`, `sha256sum` of a stored layer.tar agree with them.
"""

import bz2
import errno
import gzip
import io
import lzma
import os
import zlib

from minidock import errors, store

CHUNK = 1 << 20

MAGIC = [(b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]


class Prefixed(io.RawIOBase):
    """A reader that yields `prefix` and then the rest of `raw` (to peek at magic bytes)."""

    def __init__(self, prefix, raw):
        self.prefix, self.raw = prefix, raw

    def readable(self):
        return True

    def readinto(self, buf):
        if self.prefix:
            n = min(len(buf), len(self.prefix))
            buf[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        if hasattr(self.raw, "readinto"):   # an upload's body: straight into our buffer
            return self.raw.readinto(buf)
        data = self.raw.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _read_exact(f, n):
    data = b""
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def decompressed(stream):
    """Sniff the first bytes of `stream` and return (reader of plain tar bytes, compression name).

    Docker accepts plain, gzip, bzip2 and xz tars for import, build contexts and layers; zstd has
    no decoder in the standard library, so it is refused by name rather than misread as tar.
    """
    head = _read_exact(stream, 6)
    raw = io.BufferedReader(Prefixed(head, stream), CHUNK)
    for magic, name in MAGIC:
        if head.startswith(magic):
            if name == "gzip":
                return gzip.GzipFile(fileobj=raw, mode="rb"), name
            if name == "bzip2":
                return bz2.BZ2File(raw, "rb"), name
            if name == "xz":
                return lzma.LZMAFile(raw, "rb"), name
            raise errors.InvalidParameter("zstd-compressed archives are not supported")
    return raw, "none"


class BlockReader:
    """A forward-only reader that sees every byte of `raw` exactly once, a block at a time.

    The tar parser reads a layer as headers (512 bytes, `read`), skips (`seek` forward: padding,
    members it does not keep) and member data (`copy_to(fd, n)`: the next n bytes written to a
    file). Under all three lies one reused buffer of `block` bytes, filled by `raw.readinto`
    (an upload's body: `recv_into` straight into it). Each block, as it arrives, is hashed
    (`sha256=True`) and handed whole to `sink(block)` (which appends it to the layer's exact tar), in
    order, so the digest and the copy are of exactly the bytes read however the consumer
    moves; `drain()` reads on to the end (a tar's trailing zero blocks count too). Member data
    then leaves the same buffer with one os.write per block: no bytes object is made for it,
    and hashlib and os.write release the GIL for buffers this large.

    `BlockReader.of_file(fd)` reads a regular file instead (a verified download, a stored
    layer.tar): headers by pread(2), member data by copy_file_range(2), which copies from page
    cache to page cache inside the kernel. It neither hashes nor tees (the bytes never pass
    through Python).

    Why not tarfile's own stream mode ("r|")? It reads its file object 10 KiB at a time and
    hands member data through two more layers of Python buffering: for a 64 MiB layer that was
    6,554 reads, hashes and 10 KiB writes of the tee and two joins of every byte, most of an
    import's CPU. tarfile still parses every header (ustar, pax, GNU), in its "r:" mode, which
    only ever seeks forward to where the next header starts.
    """

    def __init__(self, raw, block=CHUNK, sha256=False, sink=None):
        self.raw = raw
        self.buf = bytearray(block)
        self.view = memoryview(self.buf)
        self.start = self.end = 0          # unread bytes: buf[start:end]
        self.pos = 0                       # offset of buf[start] in the stream
        self.count = 0                     # bytes read from raw (hashed, teed) so far
        self.eof = False
        if sha256:
            import hashlib              # when needed: it loads OpenSSL (docs/performance.md, "Start-up")
        self.sha = hashlib.sha256() if sha256 else None
        self.sink = sink
        self.file = None                   # of_file(): the descriptor read with pread
        self.kernel_copy = True            # of_file(): member data by copy_file_range

    @classmethod
    def of_file(cls, fd, offset=0, block=CHUNK):
        """A reader of the regular file `fd` from `offset` (which it does not move)."""
        reader = cls(None, block)
        reader.file = fd
        reader.pos = reader.count = offset
        return reader

    # -- filling: the one place bytes come in ---------------------------------------------------
    def _fill(self):
        """Refill the empty buffer; False at end of input."""
        if self.eof:
            return False
        if self.file is not None:
            n = os.preadv(self.file, [self.view], self.count)
        elif hasattr(self.raw, "readinto"):
            n = self.raw.readinto(self.view) or 0
        else:                              # a reader with read() only
            data = self.raw.read(len(self.view))
            n = len(data)
            self.view[:n] = data
        if not n:
            self.eof = True
            return False
        got = self.view[:n]
        if self.sha is not None:
            self.sha.update(got)
        if self.sink is not None:
            self.sink(got)
        self.count += n
        self.start, self.end = 0, n
        return True

    # -- consuming --------------------------------------------------------------------------------
    def read(self, n=-1):
        """Up to `n` bytes (fewer only at the end of input); all of it for n < 0."""
        if n is None or n < 0:
            n = 1 << 62
        if self.end - self.start >= n:
            data = bytes(self.view[self.start:self.start + n])
            self.start += n
            self.pos += n
            return data
        parts = []
        while n > 0 and (self.start < self.end or self._fill()):
            k = min(n, self.end - self.start)
            parts.append(bytes(self.view[self.start:self.start + k]))
            self.start += k
            self.pos += k
            n -= k
        return b"".join(parts)

    def readinto(self, b):
        data = self.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    def tell(self):
        return self.pos

    def seekable(self):
        return False

    def seek(self, offset, whence=io.SEEK_SET):
        """Skip forward to `offset` (tarfile's only kind of seek); past the end stops at it."""
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("BlockReader seeks from the start or the current position")
        skip = offset - self.pos
        if skip < 0:
            raise io.UnsupportedOperation(f"seeking backwards ({self.pos} -> {offset}) in a forward-only stream")
        while skip > 0:
            if self.start == self.end:
                if self.file is not None:   # a file's unbuffered bytes need no reading (no hash)
                    self.count += skip
                    self.pos += skip
                    break
                if not self._fill():
                    break
            k = min(skip, self.end - self.start)
            self.start += k
            self.pos += k
            skip -= k
        return self.pos

    def copy_to(self, fd, n):
        """Write the next `n` bytes to the descriptor `fd`; returns how many (fewer only at the
        end of input)."""
        done = 0
        while done < n:
            if self.start == self.end:
                if self.file is not None and self.kernel_copy:
                    done += self._copy_file(fd, n - done)
                    if self.kernel_copy:
                        break              # copied all, or the file ended
                    continue               # refused here: the rest through the buffer
                if not self._fill():
                    break
            k = min(n - done, self.end - self.start)
            store.write_all(fd, self.view[self.start:self.start + k])
            self.start += k
            self.pos += k
            done += k
        return done

    def _copy_file(self, fd, n):
        """copy_file_range(2) from the file; stops early at its end, or when the kernel refuses
        to copy between these two files (EXDEV: another file system, e.g. an overlay mount),
        after which `kernel_copy` is off and the caller goes through the buffer instead."""
        done = 0
        while done < n:
            try:
                k = os.copy_file_range(self.file, fd, n - done, self.count)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.kernel_copy = False
                break
            if not k:
                break
            self.count += k
            self.pos += k
            done += k
        return done

    def drain(self):
        """Read to the end of input, so that every byte is hashed and teed."""
        if self.file is not None:
            return
        self.start = self.end
        while self._fill():
            self.start = self.end

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


# What the decompressors raise on corrupt input (bz2 raises a plain OSError, caught by callers).
DECODE_ERRORS = (zlib.error, lzma.LZMAError, gzip.BadGzipFile)
