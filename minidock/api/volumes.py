"""Volume routes (v1.21+): list, create, inspect, remove, prune."""

from minidock import errors, http, schema, volumes
from minidock.api.versions import route


def get_volumes(req):
    return http.Response.json({"Volumes": req.daemon.volumes.list(req.filters()), "Warnings": None})


def post_volumes_create(req):
    body = req.json() or {}
    schema.check_body(body, volumes.CREATE_TYPES, "VolumeCreateOptions")
    v = req.daemon.volumes.create(body.get("Name") or None, body.get("Driver") or "local",
                                  body.get("DriverOpts"), body.get("Labels"))
    return http.Response.json(v, status=201)


def get_volumes_inspect(req):
    return http.Response.json(req.daemon.volumes.describe(req.params["name"]))


def delete_volumes(req):
    req.daemon.volumes.remove(req.params["name"], force=req.qbool("force"))
    return http.Response.empty(204)


def post_volumes_prune(req):
    deleted, space = req.daemon.volumes.prune(req.adapt("volume_prune", req.filters()))
    return http.Response.json({"VolumesDeleted": deleted or None, "SpaceReclaimed": space})


ROUTES = [
    ("GET", "/volumes", get_volumes),
    ("POST", "/volumes/create", post_volumes_create),
    route("POST", "/volumes/prune", post_volumes_prune, since="1.25"),
    ("GET", "/volumes/{name}", get_volumes_inspect),
    ("DELETE", "/volumes/{name}", delete_volumes),
]
