"""Container filesystem routes: changes, export, copy and archive (`docker diff/export/cp`).

Everything here reads or writes a container's root filesystem from the daemon's side, never
from inside the container: `layers.mount(cid)` makes sure the overlay (or the vfs copy) is
mounted at <data-root>/layers-store/containers/<id>/merged in the daemon's mount namespace, the
same mount a running container pivot_root'ed into, so a write here is seen by the container at
once and a file the container wrote is readable here. A stopped container's rootfs is simply
mounted again (idempotent).

    GET  /containers/(id)/changes   [{"Path", "Kind"}]: 0 modified, 1 added, 2 deleted
    GET  /containers/(id)/export    the whole filesystem as one flat tar
    POST /containers/(id)/copy      {"Resource": path} -> tar of it (deprecated; gone in v1.24)
    HEAD /containers/(id)/archive   ?path=  -> only the X-Docker-Container-Path-Stat header
    GET  /containers/(id)/archive   ?path=  -> that header plus a tar of the path
    PUT  /containers/(id)/archive   ?path=DIR[&noOverwriteDirNonDir=1], body: a tar to unpack

X-Docker-Container-Path-Stat is base64(JSON {"name", "size", "mode", "mtime", "linkTarget"}),
`mode` in Go's os.FileMode encoding (tarsafe.go_file_mode). The CLI's `docker cp` HEADs the
destination first to decide between "copy into this directory" and "copy as this name".

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

import base64
import json
import os
import posixpath
import shutil

from minidock import errors, http, tarsafe
from minidock.api import streaming
from minidock.api.versions import route


STAT_HEADER = "X-Docker-Container-Path-Stat"


def _container(req):
    return req.daemon.containers.get(req.params["id"])


def _label(c):
    return c.name


def _emit(req, c, action, extra=None):
    req.daemon.containers.emit(c, action, extra)


# -- streaming a tar produced by a writer function ---------------------------------------------

def _tar_response(req, write, headers=()):
    """StreamResponse whose body is what `write(out)` writes, produced in a worker thread. An
    error after the headers went out can only show as a short tar (and in our log)."""
    return streaming.worker_response(req, write, maxsize=16, name="tar-stream", headers=list(headers),
                                     content_type="application/x-tar")


# -- where a container path lives: the rootfs or a mount's source ------------------------------

def _suffix(path):
    """The part of a request path that carries meaning beyond the name: "/." or "/" or ""."""
    if path == "." or path.endswith("/."):
        return "/."
    if path.endswith("/"):
        return "/"
    return ""


def _mounts(c):
    """The container's mounts, plus the daemon-managed /etc files bind-mounted over the rootfs's."""
    out = list(c.record.get("Mounts") or [])
    for dest, key in (("/etc/hosts", "HostsPath"), ("/etc/hostname", "HostnamePath"),
                      ("/etc/resolv.conf", "ResolvConfPath")):
        if c.record.get(key) and os.path.isfile(c.record[key]):
            out.append({"Type": "file", "Source": c.record[key], "Destination": dest, "RW": True})
    return out


def _mount_for(c, absolute):
    """The mount whose destination is `absolute` or holds it (longest match), else None."""
    best = None
    for m in _mounts(c):
        dest = posixpath.normpath("/" + m["Destination"])
        if absolute == dest or (m["Type"] != "file" and absolute.startswith(dest.rstrip("/") + "/")):
            if best is None or len(dest) > len(best[1]):
                best = (m, dest)
    return best


def locate(req, c, path):
    """-> (root, path inside root, mount record or None, display name) for request `path`.

    The display name is what the stat header and the tar call the resource: the last component
    of the path the client asked for, even when that path is a mount's root.
    """
    if not path:
        raise errors.InvalidParameter("Path cannot be empty")
    suffix = _suffix(path)
    absolute = posixpath.normpath("/" + path)
    rootfs = req.daemon.layers.mount(c.id)
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


def _stat(req, c, path):
    root, inner, mount, name = locate(req, c, path)
    info = tarsafe.stat_path(root, inner, _label(c))
    if mount is not None:
        if inner.rstrip("/.") == "":
            info["name"] = name
        if info["linkTarget"]:
            # the resolver answered inside the mount source; say it the way the container sees it
            dest = posixpath.normpath("/" + mount["Destination"])
            info["linkTarget"] = posixpath.normpath(dest + "/" + info["linkTarget"])
    return root, inner, mount, name, info


def _stat_header(info):
    return (STAT_HEADER, base64.b64encode(json.dumps(info).encode()).decode())


# -- handlers -----------------------------------------------------------------------------------

def get_containers_changes(req):
    # The generated /etc files' mount points live in the init layer (layers.INIT_FILES), below
    # the container's own changes, so a fresh container's diff is empty, as with Docker.
    return http.Response.json(req.daemon.layers.changes(_container(req).id))


def get_containers_export(req):
    c = _container(req)
    layers = req.daemon.layers
    layers.mount(c.id)                    # a missing rw layer is a 404/500 before the 200 goes out
    _emit(req, c, "export")
    return _tar_response(req, lambda out: layers.export(c.id, out))


def head_containers_archive(req):
    c = _container(req)
    info = _stat(req, c, req.q("path") or "")[4]
    return http.Response.empty(200, headers=[_stat_header(info)])


def get_containers_archive(req):
    c = _container(req)
    root, inner, mount, name, info = _stat(req, c, req.q("path") or "")
    _emit(req, c, "archive-path", {"path": req.q("path")})

    def write(out):
        if mount is not None and inner.rstrip("/.") == "" and not inner.endswith("/."):
            # the mount's root itself: name the entries after the container path, not the source
            w = tarsafe.TarWriter(out)
            w.add_tree(root, name)
            w.close()
        else:
            tarsafe.archive_path(root, inner, out, _label(c))
    return _tar_response(req, write, headers=[_stat_header(info)])


def put_containers_archive(req):
    c = _container(req)
    path = req.q("path") or ""
    root, inner, mount, _ = locate(req, c, path)
    if mount is not None and not mount.get("RW", True):
        raise errors.Forbidden("mounted volume is marked read-only")
    if mount is None and c.host_config.get("ReadonlyRootfs"):
        raise errors.Forbidden("container rootfs is marked read-only")
    spool = req.daemon.layers.tmpdir()
    try:
        tarsafe.extract_archive(root, inner, req.body, no_overwrite_dir_nondir=req.qbool("noOverwriteDirNonDir"),
                                label=_label(c), spool_dir=spool)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    _emit(req, c, "extract-to-dir", {"path": path})
    return http.Response.empty(200)


def post_containers_copy(req):
    c = _container(req)
    body = req.json(required=True)
    if not isinstance(body, dict):
        raise errors.InvalidParameter("copy config must be a JSON object")
    resource = body.get("Resource") or ""
    # The old endpoint had no "/." or trailing-"/" rules: the resource is archived by its name.
    resource = posixpath.normpath("/" + resource) if resource else ""
    root, inner, mount, name, info = _stat(req, c, resource)
    _emit(req, c, "copy", {"path": resource})

    def write(out):
        if mount is not None and inner.rstrip("/.") == "":
            w = tarsafe.TarWriter(out)
            w.add_tree(root, name)
            w.close()
        else:
            tarsafe.archive_path(root, inner, out, _label(c))
    return _tar_response(req, write)


ROUTES = [
    ("GET", "/containers/{id}/changes", get_containers_changes),
    ("GET", "/containers/{id}/export", get_containers_export),
    route("POST", "/containers/{id}/copy", post_containers_copy, until="1.23"),
    ("HEAD", "/containers/{id}/archive", head_containers_archive),
    ("GET", "/containers/{id}/archive", get_containers_archive),
    ("PUT", "/containers/{id}/archive", put_containers_archive),
]
