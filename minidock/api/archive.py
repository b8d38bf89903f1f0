"""Container filesystem routes: changes, export, copy and archive (`docker diff/export/cp`).

The backend, and how paths inside mounts are served, is minidock/container/archive.py.

    GET  /containers/(id)/changes   [{"Path", "Kind"}]: 0 modified, 1 added, 2 deleted
    GET  /containers/(id)/export    the whole filesystem as one flat tar
    POST /containers/(id)/copy      {"Resource": path} -> tar of it (deprecated; gone in v1.24)
    HEAD /containers/(id)/archive   ?path=  -> only the X-Docker-Container-Path-Stat header
    GET  /containers/(id)/archive   ?path=  -> that header plus a tar of the path
    PUT  /containers/(id)/archive   ?path=DIR[&noOverwriteDirNonDir=1][&copyUIDGID=1] (v1.30+),
                                    body: a tar to unpack

X-Docker-Container-Path-Stat is base64(JSON {"name", "size", "mode", "mtime", "linkTarget"}),
`mode` in Go's os.FileMode encoding (tarsafe.go_file_mode). The CLI's `docker cp` HEADs the
destination first to decide between "copy into this directory" and "copy as this name".
"""

import base64
import json

from minidock import errors, http
from minidock.api import streaming
from minidock.api.versions import route


STAT_HEADER = "X-Docker-Container-Path-Stat"


def _tar_response(req, write, headers=()):
    """StreamResponse whose body is what `write(out)` writes, produced in a worker thread. An
    error after the headers went out can only show as a short tar (and in our log)."""
    return streaming.worker_response(req, write, maxsize=16, name="tar-stream", headers=list(headers),
                                     content_type="application/x-tar")


def _stat_header(info):
    return (STAT_HEADER, base64.b64encode(json.dumps(info).encode()).decode())


# -- handlers -----------------------------------------------------------------------------------

def get_containers_changes(req):
    return http.Response.json(req.daemon.archive.changes(req.params["id"]))


def get_containers_export(req):
    return _tar_response(req, req.daemon.archive.export(req.params["id"]))


def head_containers_archive(req):
    info = req.daemon.archive.stat(req.params["id"], req.q("path") or "")
    return http.Response.empty(200, headers=[_stat_header(info)])


def get_containers_archive(req):
    info, write = req.daemon.archive.get(req.params["id"], req.q("path") or "")
    return _tar_response(req, write, headers=[_stat_header(info)])


def put_containers_archive(req):
    args = req.adapt("archive_put", {"copy_uid_gid": req.qbool("copyUIDGID")})
    req.daemon.archive.put(req.params["id"], req.q("path") or "", req.body,
                           no_overwrite_dir_nondir=req.qbool("noOverwriteDirNonDir"),
                           copy_uid_gid=args["copy_uid_gid"])
    return http.Response.empty(200)


def post_containers_copy(req):
    body = req.json(required=True)
    if not isinstance(body, dict):
        raise errors.InvalidParameter("copy config must be a JSON object")
    return _tar_response(req, req.daemon.archive.copy(req.params["id"], body.get("Resource") or ""))


ROUTES = [
    ("GET", "/containers/{id}/changes", get_containers_changes),
    ("GET", "/containers/{id}/export", get_containers_export),
    route("POST", "/containers/{id}/copy", post_containers_copy, until="1.23"),
    ("HEAD", "/containers/{id}/archive", head_containers_archive),
    ("GET", "/containers/{id}/archive", get_containers_archive),
    ("PUT", "/containers/{id}/archive", put_containers_archive),
]
