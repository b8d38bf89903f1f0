"""A container's changes: what `docker diff` lists and what `docker commit` turns into a layer.

A change is `{"Path": "/etc/x", "Kind": 0|1|2}`: modified, added, deleted (moby's
`archive.ChangeType`). How they are found depends on the driver of the writable layer (layers.py):

  * overlay2: the upper dir *is* the changes. Every entry in it is a modification when the path
    exists in the lower dirs, else an addition; a whiteout (a 0/0 character device, or the
    user.overlay.whiteout xattr) is a deletion of a path that exists below. "Exists below" walks
    the lower dirs top first, stopping at whiteouts and opaque directories (`_in_lowers`).
    The layer tar for commit is the upper dir itself, whiteouts written as `.wh.` entries.
  * vfs: the container runs in a full copy, so changes are found by comparing that tree with an
    index of the image built from its layer tars (`image_index`: type, mode, size, mtime, link
    target of every path, whiteouts and opaque markers applied in order). A directory that
    disappeared is one deletion, not one per file beneath it. The layer tar is written from the
    list (`write_vfs_diff`).

What you can observe: `docker diff CONTAINER` prints these as `C /etc`, `A /new`, `D /gone`.
"""

import os
import posixpath
import stat
import tarfile

from minidock import tarsafe

KIND_MODIFIED, KIND_ADDED, KIND_DELETED = 0, 1, 2


def overlay_changes(upper, lowers):
    """The changes an overlay upper dir holds over its lower dirs (top first): a whiteout is a
    deletion when the path exists below, any other entry a modification or an addition."""
    out = []

    def walk(directory, rel):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if tarsafe.is_whiteout(st, entry.path):
                if _in_lowers(lowers, path):
                    out.append({"Path": path, "Kind": KIND_DELETED})
                continue
            out.append({"Path": path, "Kind": KIND_MODIFIED if _in_lowers(lowers, path) else KIND_ADDED})
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path, path)
    walk(upper, "")
    return out


def image_index(layer_tars):
    """path -> (type, perm bits, size, mtime, linkname, chain) of the image, from its layer tars:
    `layer_tars` is [(chain, path of layer.tar)], bottom first."""
    index = {}
    for chain, tar_path in layer_tars:
        with open(tar_path, "rb") as f:
            tf = tarfile.open(fileobj=f, mode="r|")
            for m in tf:
                path = tarsafe.clean_name(m.name)
                if not path:
                    continue
                parent, name = posixpath.split(path)
                if name == tarsafe.OPAQUE_MARKER:
                    prefix = parent + "/" if parent else ""
                    for key in [k for k, v in index.items() if k.startswith(prefix) and v[5] != chain]:
                        del index[key]
                    continue
                if name.startswith(tarsafe.WHITEOUT_PREFIX):
                    gone = posixpath.join(parent, name[len(tarsafe.WHITEOUT_PREFIX):])
                    for key in [k for k in index if k == gone or k.startswith(gone + "/")]:
                        del index[key]
                    continue
                if m.islnk():
                    target = index.get(tarsafe.clean_name(m.linkname))
                    if target:
                        index[path] = target[:5] + (chain,)
                    continue
                kind = (stat.S_IFDIR if m.isdir() else stat.S_IFLNK if m.issym() else
                        stat.S_IFREG if m.isreg() else stat.S_IFCHR if m.ischr() else
                        stat.S_IFBLK if m.isblk() else stat.S_IFIFO)
                if path in index and m.isdir():
                    # a dir entry again: keep it (children stay), refresh its attributes
                    pass
                index[path] = (kind, m.mode & 0o7777, m.size if m.isreg() else 0, int(m.mtime),
                               m.linkname if m.issym() else "", chain)
    return index


def vfs_changes(merged, index, init_paths=()):
    """The changes of a full copy (`merged`) against the image it was copied from (`index`, from
    image_index()), leaving out the init layer's files (`init_paths`)."""
    seen = set()
    out = []

    def walk(directory, rel):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{rel}/{entry.name}".lstrip("/")
            st = entry.stat(follow_symlinks=False)
            seen.add(path)
            old = index.get(path)
            if old is None:
                out.append({"Path": "/" + path, "Kind": KIND_ADDED})
            else:
                link = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else ""
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                now = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode)
                       else old[1], size, int(st.st_mtime), link)
                if now != old[:5]:
                    out.append({"Path": "/" + path, "Kind": KIND_MODIFIED})
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path, path)
    walk(merged, "")
    init_paths = set(init_paths or [])
    out = [c for c in out if c["Path"].lstrip("/") not in init_paths]
    for path in index:
        parent = posixpath.dirname(path)
        if path not in seen and (not parent or parent in seen):
            out.append({"Path": "/" + path, "Kind": KIND_DELETED})
    return out


def write_vfs_diff(merged, changes, out):
    """A layer tar of `changes` in a full copy: deletions as `.wh.` entries, the rest as files."""
    w = tarsafe.TarWriter(out)
    for change in changes:
        rel = change["Path"].lstrip("/")
        if change["Kind"] == KIND_DELETED:
            parent, name = posixpath.split(rel)
            w.add_empty(posixpath.join(parent, tarsafe.WHITEOUT_PREFIX + name))
        else:
            try:
                w.add_path(os.path.join(merged, rel), rel)
            except FileNotFoundError:
                pass
    w.close()


def _in_lowers(lowers, path):
    """Does `path` exist in the stack of lower dirs (top first), honouring whiteouts and opaque dirs?"""
    parts = [p for p in path.split("/") if p]
    for lower in lowers:
        current = lower
        blocked = False          # an opaque dir or whiteout on the way hides the layers below
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                break
            if tarsafe.is_whiteout(st, current):
                return False
            if i == len(parts) - 1:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False     # a non-directory hides anything below this name
            if tarsafe.is_opaque(current):
                blocked = True
        if blocked:
            return False
    return False
