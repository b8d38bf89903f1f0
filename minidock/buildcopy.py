"""COPY and ADD: where the files come from, and how they land in the new layer.

Sources are paths in the build context (matched with `.dockerignore` excluded, dockerignore.py),
in an earlier stage or another image (`--from`), or, for ADD, http(s) URLs. The builder hashes
what they matched into the step's cache key, then writes them into a fresh writable layer on top
of the stage's image and commits it. Docker's rules for where things land are `write_items`'s;
`--chown` names are looked up in the image's own /etc/passwd and /etc/group (`owner`). Everything
is written as a tar stream unpacked by tarsafe.py, so neither a name in the context nor a
symlink in the image can send a write outside the layer.
"""

import email.utils
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import time
import urllib.parse
import urllib.request

from minidock import compression, dockerignore, errors, tarsafe

def gather(cmd, root, ignore, sources, url_dir):
    """The files `sources` name: [(host path, name in the image, fetched from a URL)]. Paths
    match inside `root` (the context, with the `ignore` rules, or another image's root); for an
    ADD of a URL, `url_dir()` gives a directory to fetch it into."""
    items = []
    for source in sources:
        if cmd == "ADD" and source.startswith(("http://", "https://")):
            items.append(download(source, url_dir()))
            continue
        if cmd == "ADD" and source.startswith("git@"):
            raise errors.NotImplementedKind("ADD of a git repository requires BuildKit")
        with tarsafe.Resolver(root) as res:
            for rel in dockerignore.match_sources(root, source, ignore):
                try:
                    host = res.host_path(rel) if rel else root
                except (FileNotFoundError, NotADirectoryError):
                    raise errors.NotFound(f"{cmd} failed: file not found in build context "
                                          f"or excluded by .dockerignore: {rel}") from None
                items.append((host, posixpath.basename(rel) or ".", False))
    return items


def comment(cmd, items, dest):
    """The step's history text, Docker's `COPY file:<sha256> in /dest `: the hash covers the
    content under fixed names (the directory the context was unpacked into differs per build),
    so it is also the step's cache key."""
    digest = hashlib.sha256()
    for host, name, is_url in items:
        digest.update(f"{name}\0{is_url}\0".encode())
        if os.path.isdir(host):
            digest.update(dockerignore.checksum(host, [""]).encode())
        else:
            digest.update(dockerignore.checksum(os.path.dirname(host), [os.path.basename(host)]).encode())
    kind = "dir" if len(items) == 1 and os.path.isdir(items[0][0]) else "file" if len(items) == 1 else "multi"
    return f"{cmd} {kind}:{digest.hexdigest()} in {dest} "


def download(url, work):
    """ADD <url>: fetch into the directory `work`; -> (host path, file name, True). The file
    keeps the server's Last-Modified as its mtime, as Docker does."""
    name = posixpath.basename(urllib.parse.urlparse(url).path) or "index.html"
    path = os.path.join(work, name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
            modified = response.headers.get("Last-Modified")
    except OSError as exc:
        raise errors.InvalidParameter(f"ADD failed to fetch {url}: {exc}") from None
    os.chmod(path, 0o600)
    if modified:
        try:
            stamp = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(path, (stamp, stamp))
        except (TypeError, ValueError):
            pass
    return path, name, True


def write_items(cmd, rootfs, items, dest, dest_is_dir, uid, gid, work):
    """Write the sources into the mounted writable layer `rootfs` at `dest`.

    Docker's rules: a directory source copies its *contents*; a file goes to `dest` itself
    unless dest is a directory (ends with `/`, several sources, or an existing directory),
    where it keeps its name; ADD unpacks a local tar archive into the directory dest
    instead (never one from a URL). Files get uid/gid (0:0 unless --chown), keep their
    permission bits and mtime. The copy is a tar stream (spooled in `work`, which is removed)
    unpacked by tarsafe, so no name or symlink in the image can send a write outside the root.
    """
    dest_rel = tarsafe.clean_name(dest)
    with tarsafe.Resolver(rootfs) as res:
        try:
            fd, name, _ = res.walk(dest_rel)
            os.close(fd)
            existing_dir = name is None     # walk() descends into a directory it ends on
        except (FileNotFoundError, NotADirectoryError):
            existing_dir = False
    as_dir = dest_is_dir or existing_dir
    archives = []
    try:
        with open(os.path.join(work, "copy.tar"), "w+b") as spool:
            w = tarsafe.TarWriter(spool)
            for host, name, is_url in items:
                if os.path.isdir(host):
                    if dest_rel and not existing_dir:
                        _add_dir(w, dest_rel, uid, gid)
                    _add_tree(w, host, dest_rel, uid, gid)
                elif cmd == "ADD" and not is_url and is_archive_file(host):
                    archives.append(host)
                else:
                    target = posixpath.join(dest_rel, name) if as_dir else dest_rel
                    if not target:
                        raise errors.InvalidParameter(f"{cmd}: cannot copy a file onto /")
                    if as_dir and dest_rel and not existing_dir:
                        _add_dir(w, dest_rel, uid, gid)
                    _add_file(w, host, target, uid, gid)
            w.close()
            spool.seek(0)
            tarsafe.extract(spool, rootfs, whiteouts=tarsafe.KEEP, chown=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for host in archives:
        with tarsafe.Resolver(rootfs) as res:
            res.dir_fd(dest_rel, create=True)
        with open(host, "rb") as f:
            plain, _ = compression.decompressed(f)
            tarsafe.extract(plain, rootfs, whiteouts=tarsafe.KEEP, chown=True, subdir=dest_rel)


def is_tar_header(block):
    """Does this 512-byte block look like a tar header (ustar magic, or a valid checksum)?"""
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def is_archive_file(path):
    """ADD's test for "a local tar archive": after any decompression, a tar header."""
    try:
        with open(path, "rb") as f:
            plain, _ = compression.decompressed(f)
            head = plain.read(512)
    except (OSError, EOFError, errors.MinidockError) + compression.DECODE_ERRORS:
        return False                    # not a (readable) compressed tar: copied as a file
    return is_tar_header(head)


def _add_dir(w, arcname, uid, gid):
    """A directory entry Docker would create for a missing destination: 0755, uid:gid."""
    info = tarfile.TarInfo(arcname)
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
    info.mtime = int(time.time())
    w.add(info)


def _add_file(w, host, arcname, uid, gid):
    """A source file (a symlink named as a source is followed, as Docker does) as `arcname`."""
    st = os.stat(host)
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = uid, gid
    info.mtime = int(st.st_mtime)
    info.size = st.st_size
    with open(host, "rb") as f:
        w.add(info, f)


def _add_tree(w, host, arcname, uid, gid):
    for entry in sorted(os.scandir(host), key=lambda e: e.name):
        child = posixpath.join(arcname, entry.name) if arcname else entry.name
        st = entry.stat(follow_symlinks=False)
        info = tarfile.TarInfo(child)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = uid, gid
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            w.add(info)
            _add_tree(w, entry.path, child, uid, gid)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry.path)
            w.add(info)
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            with open(entry.path, "rb") as f:
                w.add(info, f)


def owner(rootfs, chown):
    """--chown=user[:group] -> (uid, gid), names looked up in the image's /etc/passwd and
    /etc/group (read through the root, never outside it). No flag: 0:0."""
    if not chown:
        return 0, 0
    user, _, group = chown.partition(":")

    def table(path):
        try:
            with tarsafe.Resolver(rootfs) as res:
                host = res.host_path(path)
            with open(host, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n").split(":") for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    if user.isdigit():
        uid, primary = int(user), int(user)
    else:
        row = next((r for r in table("etc/passwd") if r[0] == user and len(r) > 3), None)
        if row is None:
            raise errors.InvalidParameter(f"unable to convert uid/gid chown string to host mapping: "
                                          f"can't find uid for user {user}: no such user: {user}")
        uid, primary = int(row[2]), int(row[3])
    if not group:
        return uid, primary
    if group.isdigit():
        return uid, int(group)
    row = next((r for r in table("etc/group") if r[0] == group and len(r) > 2), None)
    if row is None:
        raise errors.InvalidParameter(f"unable to convert uid/gid chown string to host mapping: "
                                      f"can't find gid for group {group}: no such group: {group}")
    return uid, int(row[2])
