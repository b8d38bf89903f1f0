"""A container's filesystem from the daemon's side: changes, export, copy and archive (`docker diff/export/cp`).

Everything here reads or writes a container's root filesystem from the daemon's side, never
from inside the container: `layers.mount(cid)` makes sure the overlay (or the vfs copy) is
mounted at <data-root>/layers-store/containers/<id>/merged in the daemon's mount namespace, the
same mount a running container pivot_root'ed into, so a write here is seen by the container at
once and a file the container wrote is readable here. A stopped container's rootfs is simply
mounted again (idempotent).

The routes are listed in minidock/api/archive.py: `changes` (docker diff), `export` (one flat
tar), `stat` (the X-Docker-Container-Path-Stat document {"name", "size", "mode", "mtime",
"linkTarget"}, `mode` in Go's os.FileMode encoding), `get` and `copy` (a tar of one path) and
`put` (unpack a tar into a directory).

Volumes and bind mounts: inside a running container they are mounts in *its* mount namespace,
not ours; in the rootfs we hold, their destinations are empty directories. So, like Docker, a
path at or under a mount's destination is served from the mount's source directory instead.
Paths are resolved inside whichever root serves them (tarsafe.Resolver: symlinks are followed as
if that root were "/"), so neither a hostile tar nor a symlink planted by the container can make
us read or write outside it -- a symlink inside a volume that points at "/etc" means the
volume's own etc, not the rootfs's, which is stricter than Docker but never less safe.
Not handled: a directory archive that *contains* a mount point (`docker cp c:/ -`) shows the
mount point as the empty rootfs directory, without the volume's files.
"""

import os
import posixpath
import shutil

from minidock import errors, ns, tarsafe

ETC_FILES = (("/etc/hosts", "HostsPath"), ("/etc/hostname", "HostnamePath"), ("/etc/resolv.conf", "ResolvConfPath"))


def _suffix(path):
    """The part of a request path that carries meaning beyond the name: "/." or "/" or ""."""
    if path == "." or path.endswith("/."):
        return "/."
    if path.endswith("/"):
        return "/"
    return ""


def mounts(c):
    """The container's mounts, plus the daemon-managed /etc files bind-mounted over the rootfs's.
    A tmpfs has no source on our side: its path shows the rootfs's (empty) directory."""
    out = [m for m in c.record.get("Mounts") or [] if m.get("Type") != "tmpfs"]
    for dest, key in ETC_FILES:
        if c.record.get(key) and os.path.isfile(c.record[key]):
            out.append({"Type": "file", "Source": c.record[key], "Destination": dest, "RW": True})
    return out


def _mount_for(c, absolute):
    """The mount whose destination is `absolute` or holds it (longest match), else None."""
    best = None
    for m in mounts(c):
        dest = posixpath.normpath("/" + m["Destination"])
        if absolute == dest or (m["Type"] != "file" and absolute.startswith(dest.rstrip("/") + "/")):
            if best is None or len(dest) > len(best[1]):
                best = (m, dest)
    return best


def locate(rootfs, c, path):
    """-> (root, path inside root, mount record or None, display name) for request `path`.

    The display name is what the stat header and the tar call the resource: the last component
    of the path the client asked for, even when that path is a mount's root.
    """
    if not path:
        raise errors.InvalidParameter("Path cannot be empty")
    suffix = _suffix(path)
    absolute = posixpath.normpath("/" + path)
    found = _mount_for(c, absolute)
    if found is None:
        # A symlink in the rootfs may lead into a mount ("/link -> /data"): resolve the path
        # inside the rootfs and look again. A missing component just means "not via a link".
        try:
            with tarsafe.Resolver(rootfs) as res:
                resolved = res.container_path(absolute, follow_last=bool(suffix))
        except OSError:
            resolved = absolute
        found = _mount_for(c, resolved)
        if found is not None:
            absolute = resolved
    name = posixpath.basename(absolute) or "/"
    if found is None:
        return rootfs, path, None, name
    mount, dest = found
    if mount["Type"] == "file":
        # a single file: serve it from its own directory, by its own name
        return os.path.dirname(mount["Source"]), "/" + os.path.basename(mount["Source"]) + suffix, mount, name
    rest = absolute[len(dest):].strip("/")
    inner = "/" + rest
    if suffix == "/.":
        inner = inner.rstrip("/") + "/."
    elif suffix == "/" and rest:
        inner += "/"
    return mount["Source"], inner, mount, name


class Archive:
    """The backend of the filesystem routes: every method takes a container reference."""

    def __init__(self, containers, layers):
        self.containers = containers
        self.layers = layers

    def _locate(self, c, path):
        if not path:
            raise errors.InvalidParameter("Path cannot be empty")
        return locate(self.layers.mount(c.id), c, path)

    def _stat(self, c, path):
        root, inner, mount, name = self._locate(c, path)
        info = tarsafe.stat_path(root, inner, c.name)
        if mount is not None:
            if inner.rstrip("/.") == "":
                info["name"] = name
            if info["linkTarget"]:
                # the resolver answered inside the mount source; say it the way the container sees it
                dest = posixpath.normpath("/" + mount["Destination"])
                info["linkTarget"] = posixpath.normpath(dest + "/" + info["linkTarget"])
        return root, inner, mount, name, info

    def _writer(self, c, root, inner, mount, name, whole_mount):
        def write(out):
            if whole_mount:
                # the mount's root itself: name the entries after the container path, not the source
                w = tarsafe.TarWriter(out)
                w.add_tree(root, name)
                w.close()
            else:
                tarsafe.archive_path(root, inner, out, c.name)
        return write

    def changes(self, ref):
        """`docker diff`. The generated /etc files' mount points live in the init layer
        (layers.INIT_FILES), below the container's own changes, so a fresh container's diff is
        empty, as with Docker."""
        return self.layers.changes(self.containers.get(ref).id)

    def export(self, ref):
        """-> write(out): the whole filesystem as one flat tar."""
        c = self.containers.get(ref)
        self.layers.mount(c.id)           # a missing rw layer is a 404/500 before the 200 goes out
        self.containers.emit(c, "export")
        return lambda out: self.layers.export(c.id, out)

    def stat(self, ref, path):
        """The X-Docker-Container-Path-Stat document of `path`."""
        return self._stat(self.containers.get(ref), path)[4]

    def get(self, ref, path):
        """-> (stat document, write(out) producing the tar of `path`)."""
        c = self.containers.get(ref)
        root, inner, mount, name, info = self._stat(c, path)
        self.containers.emit(c, "archive-path", {"path": path})
        whole = mount is not None and inner.rstrip("/.") == "" and not inner.endswith("/.")
        return info, self._writer(c, root, inner, mount, name, whole)

    def copy(self, ref, resource):
        """The deprecated `POST /containers/(id)/copy`: -> write(out). The old endpoint had no
        "/." or trailing-"/" rules: the resource is archived by its name."""
        c = self.containers.get(ref)
        resource = posixpath.normpath("/" + resource) if resource else ""
        root, inner, mount, name, info = self._stat(c, resource)
        self.containers.emit(c, "copy", {"path": resource})
        whole = mount is not None and inner.rstrip("/.") == ""
        return self._writer(c, root, inner, mount, name, whole)

    def put(self, ref, path, body, no_overwrite_dir_nondir=False, copy_uid_gid=False):
        """Unpack the tar `body` (a file-like object) into directory `path`. With `copy_uid_gid`
        every file gets the container user's uid and gid (Config.User, names looked up in the
        container's own /etc/passwd and /etc/group), not the ids the archive carries."""
        c = self.containers.get(ref)
        root, inner, mount, _ = self._locate(c, path)
        owner = None
        if copy_uid_gid:
            uid, gid, _ = ns.resolve_user(self.layers.mount(c.id), c.config.get("User") or "")
            owner = (uid, gid)
        if mount is not None and not mount.get("RW", True):
            raise errors.Forbidden("mounted volume is marked read-only")
        if mount is None and c.host_config.get("ReadonlyRootfs"):
            raise errors.Forbidden("container rootfs is marked read-only")
        spool = self.layers.tmpdir()
        try:
            tarsafe.extract_archive(root, inner, body, no_overwrite_dir_nondir=no_overwrite_dir_nondir,
                                    label=c.name, spool_dir=spool, owner=owner)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        self.containers.emit(c, "extract-to-dir", {"path": path})
