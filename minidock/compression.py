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
digest of exactly the bytes it stores: `HashingReader` passes a stream through, counting and
sha256-hashing it (and copying it to a sink), so a layer is hashed while it is unpacked, in one
read. What you can observe: `file layer.tar.gz`, `xxd -l 6`, `sha256sum` agree with them.
"""

import bz2
import gzip
import hashlib
import io
import lzma
import zlib

from minidock import errors

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


class HashingReader(io.RawIOBase):
    """Pass bytes through, hashing them (sha256) and optionally copying them to `sink`."""

    def __init__(self, raw, sink=None):
        self.raw, self.sink = raw, sink
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.raw.read(len(buf))
        if data:
            self.sha.update(data)
            self.count += len(data)
            if self.sink is not None:
                self.sink.write(data)
            buf[:len(data)] = data
        return len(data)

    def drain(self):
        """Read to the end: a tar's trailing zero blocks belong to its digest too."""
        while self.read(CHUNK):
            pass

    def digest(self):
        return "sha256:" + self.sha.hexdigest()



# What the decompressors raise on corrupt input (bz2 raises a plain OSError, caught by callers).
DECODE_ERRORS = (zlib.error, lzma.LZMAError, gzip.BadGzipFile)
