"""Tar streams into and out of a directory tree, never leaving the tree.

A tar archive is a sequence of 512-byte headers (name, mode, uid/gid, size, mtime, type flag,
link name), each followed by the file's data padded to 512 bytes, and ended by two zero blocks.
POSIX.1-2001 "pax" archives add extended headers for long names and big numbers; Python's
`tarfile` reads every dialect and `TarInfo.tobuf()` writes one header. Docker layers, `docker cp`,
`docker export` and `docker save` all speak this format (`man 5 tar`, `man 1 tar`).

Why "safe": a tar header names its own destination, and a hostile archive names places outside
the directory it is unpacked into. There are four ways out, and this module closes each:

  * `../../etc/passwd` or `/etc/passwd` as an entry name: names are cleaned lexically; a leading
    `/` is dropped (the entry lands inside), a name that climbs above the root is refused.
  * a symlink entry `x -> /etc` followed by a regular entry `x/passwd`: the *parent* of every
    entry is resolved by `Resolver`, which walks the path one component at a time with
    `openat(O_PATH|O_NOFOLLOW)` and, when it meets a symlink, reads it and continues *as if the
    root were /* (an absolute target restarts at the root, `..` at the root stays there). This is
    what `openat2(RESOLVE_IN_ROOT)` does in the kernel (`man 2 openat2`, Linux 5.6), done by hand
    so it also works where openat2 is missing. The final component is created with O_EXCL and
    O_NOFOLLOW relative to the resolved parent's file descriptor, so a symlink planted there is
    replaced, never followed.
  * a hardlink entry whose target is `../../etc/shadow`: its target is cleaned and resolved the
    same way, and refused if it climbs out.
  * a symlinked parent directory that a *running* container swaps in between our check and our
    write (CVE-2018-15664, `docker cp`): because every step works on directory file descriptors
    obtained by the walk, not on path strings, a later swap of a path component cannot redirect a
    write that already holds the parent's descriptor.

Device nodes: `mknod(2)` of a real device needs CAP_MKNOD in the *initial* user namespace, which
a rootless daemon never has; such entries are skipped with a warning. The one exception is the
overlay "whiteout", a character device 0/0, which Linux >= 5.8 lets a user-namespace root create.

Whiteouts (how a layer says "this file was deleted"):

    in a layer tar (OCI/AUFS style)      on an overlayfs upper/lower dir (`man 5 overlayfs` docs)
    -----------------------------------  ---------------------------------------------------------
    dir/.wh.name   (empty regular file)  dir/name as a character device 0/0
    dir/.wh..wh..opq                     dir has xattr user.overlay.opaque="y" (we mount with
                                         `userxattr`, so the trusted.* names become user.*)

`extract(..., whiteouts=OVERLAY)` turns the tar form into the overlay form (layer store),
`whiteouts=APPLY` deletes the named files instead (a flat copied tree), `whiteouts=KEEP` treats
them as ordinary files (`docker cp`). `TarWriter.add_tree(..., from_overlay=True)` goes the
other way when a container's upper dir becomes a layer (commit) or a diff.

What you can observe: `ls -l` on an extracted layer shows `c--------- 0, 0` whiteouts;
`getfattr -n user.overlay.opaque DIR` shows opaque dirs; `tar tvf layer.tar` shows `.wh.` names.
"""

import collections
import errno
import io
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time

from minidock import errors, store
from minidock.compression import CHUNK, DECODE_ERRORS, BlockReader, decompressed

log = logging.getLogger("minidock.tarsafe")

OVERLAY, APPLY, KEEP = "overlay", "apply", "keep"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"
WHITEOUT_XATTR = "user.overlay.whiteout"   # xattr whiteouts (Linux >= 6.7), read and written as fallback
MAX_SYMLINKS = 40                          # like the kernel's MAXSYMLINKS


# -- names ---------------------------------------------------------------------------------------

def clean_name(name):
    """A tar entry name as a clean path relative to the root ("" for the root itself).

    A leading "/" is dropped (Docker does the same: absolute names land inside). A name that
    climbs above the root after cleaning is refused: there is no honest place to put it.
    """
    relative = posixpath.normpath(name or ".")
    if relative == ".." or relative.startswith("../"):
        raise errors.InvalidParameter(f"invalid tar entry {name!r}: path escapes the target directory")
    return posixpath.normpath("/" + name).lstrip("/")


def split_components(path):
    return [c for c in path.split("/") if c and c != "."]


# -- resolving paths inside a root ---------------------------------------------------------------

class Resolver:
    """Resolve paths inside `root` as if `root` were "/" (a chroot-like walk on descriptors).

    Holds an O_PATH descriptor of the root. `parent(path)` returns (dirfd, final_name, chain)
    where dirfd is an O_PATH descriptor of the directory that holds the final component, and chain
    is the list of real names from the root to that directory (no symlinks in it). Descriptors
    of parents are cached per logical path; `forget(path)` drops cached entries at or below a
    path whose type changed.
    """

    def __init__(self, root, cache_size=64):
        self.root = root
        self.rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache = collections.OrderedDict()    # logical dir path -> (fd, chain)
        self.cache_size = cache_size

    def close(self):
        for fd, _ in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.rootfd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def forget(self, path):
        prefix = path + "/"
        for key in [k for k in self.cache if k == path or k.startswith(prefix) or not path]:
            os.close(self.cache.pop(key)[0])

    def walk(self, path, follow_last=True, create=False):
        """Walk `path` inside the root -> (dirfd, name or None, chain). Caller closes dirfd.

        name is None when the path is the root (or resolves to it). With `create`, missing
        directories along the way are made (mode 0755). A missing final component is not an
        error: the caller decides. A missing middle component raises FileNotFoundError.
        """
        parts = collections.deque(split_components(path))
        cur = os.dup(self.rootfd)
        stack = []          # (fd, name) of the directories above `cur`
        links = 0
        try:
            while parts:
                name = parts.popleft()
                if name == "..":
                    if stack:
                        os.close(cur)
                        cur, _ = stack.pop()
                    continue
                last = not parts
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except FileNotFoundError:
                    if last and not create:
                        return cur, name, [n for _, n in stack]
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=cur)
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith("/"):
                        for fd, _ in stack:
                            os.close(fd)
                        stack = []
                        os.close(cur)
                        cur = os.dup(self.rootfd)
                    parts.extendleft(reversed(split_components(target)))
                    continue
                if last:
                    chain = [n for _, n in stack]
                    if stat.S_ISDIR(st.st_mode) and follow_last:
                        # a directory: descend so the caller gets the directory itself
                        nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                        stack.append((cur, name))
                        cur = nfd
                        return cur, None, [n for _, n in stack]
                    return cur, name, chain
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                stack.append((cur, name))
                cur = nfd
            return cur, None, [n for _, n in stack]
        except BaseException:
            os.close(cur)
            raise
        finally:
            for fd, _ in stack:
                os.close(fd)

    def dir_fd(self, path, create=True):
        """A cached O_PATH descriptor of directory `path` (followed inside the root). Don't close it."""
        if path in self.cache:
            self.cache.move_to_end(path)
            return self.cache[path][0]
        fd, name, chain = self.walk(path, follow_last=True, create=create)
        if name is not None:         # the final component exists but is not a directory
            os.close(fd)
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        self.cache[path] = (fd, chain)
        if len(self.cache) > self.cache_size:
            os.close(self.cache.popitem(last=False)[1][0])
        return fd

    def host_path(self, path, follow_last=True):
        """The symlink-free host path of `path` inside the root (for read-only use by the daemon)."""
        fd, name, chain = self.walk(path, follow_last=follow_last)
        os.close(fd)
        return os.path.join(self.root, *chain, *([name] if name else []))

    def container_path(self, path, follow_last=True):
        """Like host_path, but as the container sees it ("/usr/lib/x")."""
        fd, name, chain = self.walk(path, follow_last=follow_last)
        os.close(fd)
        return "/" + "/".join(chain + ([name] if name else []))


def _remove_at(dirfd, name):
    """Remove `name` (any type, recursively) relative to `dirfd`, without following symlinks."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for child in os.listdir(fd):
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


# -- extraction ----------------------------------------------------------------------------------

def _chown(name, dirfd, uid, gid, warnings):
    # Inside a user namespace only mapped ids can be used; an unmapped one gives EINVAL. Files
    # then keep the namespace root's ownership, which is what a single-id rootless map allows.
    try:
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise


def make_whiteout(dirfd, name):
    """Create the overlay whiteout for `name`: a 0/0 character device, or an xattr whiteout.

    mknod(S_IFCHR, 0) is allowed to a user-namespace root since Linux 5.8. Where it is refused, a
    zero-size file carrying user.overlay.whiteout is the form overlayfs understands since 6.7.
    """
    try:
        os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dirfd)
    except PermissionError:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o000, dir_fd=dirfd)
        try:
            os.setxattr(fd, WHITEOUT_XATTR, b"")
        finally:
            os.close(fd)


def is_whiteout(st, path_for_xattr=None):
    """Is this stat result an overlay whiteout (0/0 char device, or xattr whiteout file)?"""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if path_for_xattr is not None and stat.S_ISREG(st.st_mode) and st.st_size == 0:
        try:
            os.getxattr(path_for_xattr, WHITEOUT_XATTR, follow_symlinks=False)
            return True
        except OSError:
            return False
    return False


def is_opaque(path):
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def block_reader(fileobj):
    """`fileobj` as a compression.BlockReader: itself if it is one; a regular file by
    descriptor from its current position (copy_file_range for member data); else a stream
    read a block at a time (a socket, a pipe, a decompressor)."""
    if isinstance(fileobj, BlockReader):
        return fileobj
    if isinstance(fileobj, (io.FileIO, io.BufferedReader, io.BufferedRandom)):
        try:
            fd = fileobj.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                if isinstance(fileobj, io.BufferedRandom):
                    fileobj.flush()            # a spool just written: its bytes into the file
                return BlockReader.of_file(fd, fileobj.tell())
        except (OSError, io.UnsupportedOperation):
            pass
    return BlockReader(fileobj)


def open_tar_stream(reader):
    """A TarFile reading the BlockReader `reader` front to back. tarfile's "r:" mode, which
    seeks only forward (to the next header), so it works on sockets and pipes too."""
    try:
        return tarfile.open(fileobj=reader, mode="r:", errorlevel=2)
    except tarfile.TarError as exc:
        raise errors.InvalidParameter(f"invalid tar archive: {exc}") from None


def _members(tf):
    """The members of a stream, ending where Go's archive/tar reader ends.

    A stream that stops right after an entry's data -- its block padding and the two zero
    blocks of the end-of-archive marker missing -- is, for Go, a complete archive: reading the
    padding hits EOF and Next() answers io.EOF. The docker CLI sends exactly such a build
    context when the Dockerfile lives outside it (`-f ../Dockerfile`: its tar rewriter closes
    the pipe before the tar writer's footer). Python's tarfile calls it "unexpected end of
    data" when it steps over the missing padding; here that ends the archive, as in dockerd.
    A member whose *data* is cut short still fails, in _extract_one.
    """
    it = iter(tf)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except tarfile.ReadError as exc:
            if str(exc) == "unexpected end of data" and tf.members:
                return
            raise
        yield member


class ExtractStats:
    def __init__(self):
        self.entries = 0
        self.size = 0             # bytes of regular file data, what Docker reports as a layer's Size
        self.warnings = []


def extract(fileobj, root, whiteouts=KEEP, no_overwrite_dir_nondir=False, chown=True, subdir=""):
    """Unpack the plain tar stream `fileobj` into the existing directory `root`.

    Nothing is written outside `root` (see the module docstring). Raises InvalidParameter for a
    corrupt or truncated stream or a refused entry; what was written before stays written, so
    callers that need all-or-nothing unpack into a fresh temporary directory and rename it.
    `subdir` (a clean path inside root) is where entries go; symlinks still resolve against root,
    the way `docker cp` into a running container sees the container's "/". Returns ExtractStats.
    """
    stats = ExtractStats()
    source = block_reader(fileobj)
    tf = open_tar_stream(source)
    dir_times = []                        # (path, mtime) set last: writing inside a dir bumps it
    created = set()                       # paths this archive made (for APPLY opaque markers)
    with Resolver(root) as res:
        try:
            for member in _members(tf):
                _extract_one(tf, source, member, res, whiteouts, no_overwrite_dir_nondir, chown, stats,
                             dir_times, created, subdir)
                stats.entries += 1
        except (tarfile.TarError, EOFError) + DECODE_ERRORS as exc:
            raise errors.InvalidParameter(f"invalid tar archive: {exc}") from None
        for path, mtime in reversed(dir_times):
            try:
                parent, name = posixpath.split(path)
                os.utime(name, (mtime, mtime), dir_fd=res.dir_fd(parent, create=False),
                         follow_symlinks=False)
            except OSError:
                pass
    return stats



def _extract_one(tf, source, m, res, whiteouts, no_overwrite, chown, stats, dir_times, created, subdir):
    path = clean_name(m.name)
    if not path:                              # the root itself: only its times
        if m.isdir() and not subdir:
            dir_times.append(("", m.mtime))
        return
    path = posixpath.join(subdir, path) if subdir else path
    parent, name = posixpath.split(path)

    if whiteouts != KEEP and name.startswith(WHITEOUT_PREFIX):
        pfd = res.dir_fd(parent)
        if name == OPAQUE_MARKER:
            if whiteouts == OVERLAY:
                os.setxattr(f"/proc/self/fd/{pfd}", OPAQUE_XATTR, b"y")
            else:     # APPLY: drop what lower layers put here, keep what this layer added
                dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    for child in os.listdir(dfd):
                        if posixpath.join(parent, child) not in created:
                            _remove_at(dfd, child)
                finally:
                    os.close(dfd)
            return
        if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return                            # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs)
        target = name[len(WHITEOUT_PREFIX):]
        res.forget(posixpath.join(parent, target))
        _remove_at(pfd, target)
        if whiteouts == OVERLAY:
            make_whiteout(pfd, target)
        return

    pfd = res.dir_fd(parent)
    try:
        existing = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        is_dir = stat.S_ISDIR(existing.st_mode)
        if m.isdir() and is_dir:
            pass
        else:
            if no_overwrite and is_dir != m.isdir():
                which = ("unable to overwrite existing directory with non-directory" if is_dir
                         else "unable to overwrite existing non-directory with directory")
                raise errors.InvalidParameter(f"{which} {'/' + path!r}")
            res.forget(path)
            _remove_at(pfd, name)
            existing = None
    created.add(path)

    mode = m.mode & 0o7777
    if m.isdir():
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
        dir_times.append((path, m.mtime))
    elif m.isreg():
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=pfd)
        try:
            if m.sparse is None:
                # The data follows the header: straight from the reader's block to the file.
                source.seek(m.offset_data)
                written = source.copy_to(fd, m.size)
            else:
                # A GNU sparse file: tarfile knows where its holes go.
                written, src = 0, tf.extractfile(m)
                while written < m.size:
                    chunk = src.read(min(CHUNK, m.size - written))
                    if not chunk:
                        break
                    store.write_all(fd, chunk)
                    written += len(chunk)
            if written < m.size:
                raise errors.InvalidParameter(f"invalid tar archive: unexpected end of data in {m.name!r}")
        finally:
            os.close(fd)
        stats.size += m.size
    elif m.issym():
        os.symlink(m.linkname, name, dir_fd=pfd)
    elif m.islnk():
        target = clean_name(m.linkname)
        target = posixpath.join(subdir, target) if subdir and target else target
        if not target:
            raise errors.InvalidParameter(f"invalid hardlink {m.name!r} -> {m.linkname!r}")
        tparent, tname = posixpath.split(target)
        try:
            tfd, tfinal, _ = res.walk(tparent, follow_last=True)
        except (FileNotFoundError, NotADirectoryError):
            raise errors.InvalidParameter(f"invalid hardlink {m.name!r} -> {m.linkname!r}: no such target") from None
        try:
            if tfinal is not None:
                raise errors.InvalidParameter(f"invalid hardlink {m.name!r} -> {m.linkname!r}")
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise errors.InvalidParameter(f"invalid hardlink {m.name!r} -> {m.linkname!r}: no such target") from None
        finally:
            os.close(tfd)
        return                                # a hardlink shares the target's inode, mode and owner
    elif m.ischr() or m.isblk() or m.isfifo():
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        try:
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0,
                     dir_fd=pfd)
        except PermissionError:
            msg = f"skipped device node {'/' + path} ({m.devmajor},{m.devminor}): mknod not permitted here"
            log.warning("%s", msg)
            stats.warnings.append(msg)
            created.discard(path)
            return
    else:
        msg = f"skipped {'/' + path}: unsupported tar entry type {m.type!r}"
        log.warning("%s", msg)
        stats.warnings.append(msg)
        return

    if m.issym() or not m.isdir():
        res.forget(path)
    if chown:
        uid, gid = chown if isinstance(chown, tuple) else (m.uid, m.gid)    # a tuple: every entry's owner
        _chown(name, pfd, uid, gid, stats.warnings)
    if not m.issym():
        # chmod after chown: chown clears the set-user-ID bits
        _chmod_at(pfd, name, mode)
        if not m.isdir():
            os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    else:
        try:
            os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
        except OSError:
            pass


def _chmod_at(dirfd, name, mode):
    # fchmodat() follows symlinks on Linux; the entry was just created by us as a non-symlink in a
    # directory we hold by descriptor, so following is harmless here.
    os.chmod(name, mode, dir_fd=dirfd)


# -- writing tars --------------------------------------------------------------------------------

class TarWriter:
    """Write a tar stream to `out` one entry at a time, ending with exactly two zero blocks.

    `tarfile.TarFile.close()` pads archives to a 10 KiB record; Docker (Go's archive/tar) does
    not, and an empty layer must hash to the well-known empty-layer diff ID
    (sha256:5f70bf18...: 1024 zero bytes). So headers come from `TarInfo.tobuf()` (pax format:
    plain ustar unless a name or number does not fit) and the framing is ours.
    """

    def __init__(self, out):
        self.out = out
        self.links = {}           # (st_dev, st_ino) -> first arcname, to write later ones as hardlinks
        self.count = 0

    def add(self, info, data=None):
        self.out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if info.isreg() and info.size:
            remaining = info.size
            while remaining:
                chunk = data.read(min(CHUNK, remaining))
                if not chunk:     # the file shrank while we read it: pad with zeros, keep the frame
                    chunk = bytes(min(CHUNK, remaining))
                self.out.write(chunk)
                remaining -= len(chunk)
            pad = -info.size % tarfile.BLOCKSIZE
            if pad:
                self.out.write(bytes(pad))
        self.count += 1

    def add_empty(self, arcname, mtime=0):
        info = tarfile.TarInfo(arcname)
        info.mtime = int(mtime)
        info.mode = 0o644
        self.add(info)

    def add_path(self, host, arcname, st=None, from_overlay=False):
        """Add one filesystem object (not its children). Returns its lstat result."""
        st = st or os.lstat(host)
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = int(st.st_mtime)
        fmt = stat.S_IFMT(st.st_mode)
        if from_overlay and is_whiteout(st, host):
            parent, name = posixpath.split(arcname)
            self.add_empty(posixpath.join(parent, WHITEOUT_PREFIX + name), st.st_mtime)
            return st
        if fmt == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
            self.add(info)
            if from_overlay and is_opaque(host):
                self.add_empty(posixpath.join(arcname, OPAQUE_MARKER), st.st_mtime)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
                self.add(info)
                return st
            if st.st_nlink > 1:
                self.links[key] = arcname
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                info.size = st.st_size
                self.add(info, f)
        elif fmt == stat.S_IFLNK:
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
            self.add(info)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            info.type = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE,
                         stat.S_IFIFO: tarfile.FIFOTYPE}[fmt]
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.add(info)
        # sockets are not archivable (Docker skips them too)
        return st

    def add_tree(self, host, arcname, from_overlay=False, skip=None):
        """Add `host` and everything below it, in sorted order, named under `arcname`.

        Never follows symlinks. With `from_overlay`, overlay whiteouts and opaque dirs become
        `.wh.` entries. `skip(relative_path)` may exclude subtrees.
        """
        st = self.add_path(host, arcname, from_overlay=from_overlay) if arcname not in ("", None) else os.lstat(host)
        if not stat.S_ISDIR(st.st_mode):
            return
        self._add_children(host, arcname or "", from_overlay, skip)

    def _add_children(self, directory, arc, from_overlay, skip):
        # Depth first in name order, like Go's filepath.Walk: stable archives, stable digests.
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return            # removed while we walked (a running container)
        for entry in entries:
            child_arc = posixpath.join(arc, entry.name) if arc else entry.name
            if skip and skip(child_arc):
                continue
            try:
                est = entry.stat(follow_symlinks=False)
                self.add_path(entry.path, child_arc, est, from_overlay)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(est.st_mode):
                self._add_children(entry.path, child_arc, from_overlay, skip)

    def close(self):
        self.out.write(bytes(2 * tarfile.BLOCKSIZE))


def tar_tree(host, out, from_overlay=False):
    """The whole tree under `host` as a tar with names relative to it (export, layer diffs)."""
    w = TarWriter(out)
    w.add_tree(host, "", from_overlay=from_overlay)
    w.close()


# -- archive operations on a container root (docker cp, the archive endpoints) -------------------

# Go's os.FileMode type bits, which Docker puts in X-Docker-Container-Path-Stat's "mode".
GO_MODE_DIR, GO_MODE_SYMLINK, GO_MODE_DEVICE = 1 << 31, 1 << 27, 1 << 26
GO_MODE_NAMED_PIPE, GO_MODE_SOCKET, GO_MODE_SETUID = 1 << 25, 1 << 24, 1 << 23
GO_MODE_SETGID, GO_MODE_CHAR_DEVICE, GO_MODE_STICKY = 1 << 22, 1 << 21, 1 << 20


def go_file_mode(st_mode):
    """The Unix st_mode as Go's os.FileMode (the permission bits plus Go's own type bits)."""
    mode = st_mode & 0o777
    fmt = stat.S_IFMT(st_mode)
    mode |= {stat.S_IFDIR: GO_MODE_DIR, stat.S_IFLNK: GO_MODE_SYMLINK, stat.S_IFBLK: GO_MODE_DEVICE,
             stat.S_IFCHR: GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE, stat.S_IFIFO: GO_MODE_NAMED_PIPE,
             stat.S_IFSOCK: GO_MODE_SOCKET}.get(fmt, 0)
    if st_mode & stat.S_ISUID:
        mode |= GO_MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= GO_MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= GO_MODE_STICKY
    return mode


def _request_path(path):
    """Docker's reading of a cp/archive `path`: absolute, cleaned, keeping a trailing "/" or "/."."""
    if not path:
        raise errors.InvalidParameter("Path cannot be empty")
    absolute = posixpath.normpath("/" + path)
    if path.endswith("/.") or path == ".":
        absolute = absolute.rstrip("/") + "/."
    elif path.endswith("/") and absolute != "/":
        absolute += "/"
    return absolute


def _resolve_request(root, path, label):
    """-> (host path, absolute request path). The directory part is resolved inside `root`; the
    last component is kept as is (a final symlink is the link itself, as in Docker)."""
    absolute = _request_path(path)
    directory, base = posixpath.split(absolute)
    with Resolver(root) as res:
        try:
            host_dir = res.host_path(directory, follow_last=True)
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NotFound(f"Could not find the file {path} in container {label}") from None
    host = os.path.join(host_dir, base) if base and base != "." else host_dir
    if not os.path.lexists(host):
        raise errors.NotFound(f"Could not find the file {path} in container {label}")
    if (absolute.endswith("/") or absolute.endswith("/.")) and not os.path.isdir(host):
        raise errors.InvalidParameter(f"not a directory: {path}")
    return host, absolute


def stat_path(root, path, label=""):
    """What X-Docker-Container-Path-Stat carries for `path` inside `root`, as a dict."""
    host, absolute = _resolve_request(root, path, label)
    st = os.lstat(host)
    link_target = ""
    if stat.S_ISLNK(st.st_mode):
        with Resolver(root) as res:
            try:
                link_target = res.container_path(absolute, follow_last=True)
            except OSError:
                link_target = ""
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime))
    frac = f"{st.st_mtime_ns % 1_000_000_000:09d}".rstrip("0")
    return {"name": posixpath.basename(absolute.rstrip("/")) or "/", "size": st.st_size,
            "mode": go_file_mode(st.st_mode), "mtime": mtime + (f".{frac}" if frac else "") + "Z",
            "linkTarget": link_target}


def archive_path(root, path, out, label=""):
    """Write a tar of `path` inside `root` to `out`; returns the stat dict (for the header).

    Docker's rules: the entries are named after the last component of `path` ("/etc/hosts" ->
    "hosts", "/etc" -> "etc/..."); `path` ending in "/." archives the directory's contents
    ("./a", "./b"); a final symlink is archived as the link unless `path` ends in "/".
    """
    info = stat_path(root, path, label)
    host, absolute = _resolve_request(root, path, label)
    name = "." if absolute.endswith("/.") else (posixpath.basename(absolute.rstrip("/")) or ".")
    w = TarWriter(out)
    w.add_tree(host, name)
    w.close()
    return info


def extract_archive(root, path, fileobj, no_overwrite_dir_nondir=False, label="", spool_dir=None, owner=None):
    """Unpack the tar `fileobj` into directory `path` inside `root` (PUT .../archive, docker cp).

    The stream is spooled to a temporary file and checked in full first -- every name, every
    hardlink, truncation, and the noOverwriteDirNonDir rule -- so a bad archive changes nothing.
    Compressed archives are accepted like Docker does. `owner` (uid, gid) replaces every
    entry's own ids (copyUIDGID).
    """
    absolute = _request_path(path)
    with Resolver(root) as res:
        try:
            fd, name, chain = res.walk(absolute, follow_last=True)
        except (FileNotFoundError, NotADirectoryError):
            raise errors.NotFound(f"Could not find the file {path} in container {label}") from None
        os.close(fd)
        if name is not None:
            try:
                os.stat(os.path.join(root, *chain, name), follow_symlinks=False)
            except FileNotFoundError:
                raise errors.NotFound(f"Could not find the file {path} in container {label}") from None
            raise errors.InvalidParameter(f"extraction point is not a directory: {path}")
        subdir = "/".join(chain)

    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        plain, _ = decompressed(fileobj)
        shutil.copyfileobj(plain, spool, CHUNK)
        size = spool.tell()
        spool.seek(0)
        _check_archive(spool, size, root, subdir, no_overwrite_dir_nondir)
        spool.seek(0)
        extract(spool, root, whiteouts=KEEP, no_overwrite_dir_nondir=no_overwrite_dir_nondir, subdir=subdir,
                chown=owner or True)


def _check_archive(spool, size, root, subdir, no_overwrite):
    """Read every header of a spooled tar; raise InvalidParameter on anything we would refuse."""
    try:
        tf = tarfile.open(fileobj=spool, mode="r:", errorlevel=2)
        members = tf.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise errors.InvalidParameter(f"invalid tar archive: {exc}") from None
    seen_dirs = set()
    with Resolver(root) as res:
        for m in members:
            if m.offset_data + (m.size if m.isreg() else 0) > size:
                raise errors.InvalidParameter(f"invalid tar archive: unexpected end of data in {m.name!r}")
            path = clean_name(m.name)
            if m.islnk() and not clean_name(m.linkname):
                raise errors.InvalidParameter(f"invalid hardlink {m.name!r} -> {m.linkname!r}")
            if not no_overwrite or not path:
                continue
            full = posixpath.join(subdir, path) if subdir else path
            if m.isdir():
                seen_dirs.add(full)
            try:
                fd, name, _ = res.walk(full, follow_last=False)
            except OSError:
                continue          # a parent is missing or not a dir: nothing there to overwrite
            try:
                if name is None:
                    continue
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            if stat.S_ISDIR(st.st_mode) and not m.isdir():
                raise errors.InvalidParameter(
                    f"unable to overwrite existing directory with non-directory {'/' + full!r}")
            if not stat.S_ISDIR(st.st_mode) and m.isdir():
                raise errors.InvalidParameter(
                    f"unable to overwrite existing non-directory with directory {'/' + full!r}")
