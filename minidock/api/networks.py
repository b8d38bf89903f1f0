"""Network routes (v1.21+): list, inspect, create, remove, prune, connect, disconnect.

Thin handlers over the networks backend (minidock/networks.py), which owns the records, the
bridges in the daemon's network namespace and the containers' endpoints."""

from minidock import errors, http
from minidock.api.versions import route


def _body(req):
    body = req.json(required=True) or {}
    if not isinstance(body, dict):
        raise errors.InvalidParameter("request body must be a JSON object")
    return body


def get_networks(req):
    return http.Response.json(req.daemon.networks.list(req.filters()))


def get_networks_inspect(req):
    return http.Response.json(req.daemon.networks.inspect(req.params["id"]))


def post_networks_create(req):
    created = req.daemon.networks.create(_body(req))
    req.daemon.events.emit("network", "create", created["Id"],
                           {"name": req.daemon.networks.find(created["Id"])["Name"], "type": "bridge"})
    return http.Response.json(created, status=201)


def delete_networks(req):
    rec = req.daemon.networks.remove(req.params["id"])
    req.daemon.events.emit("network", "destroy", rec["Id"], {"name": rec["Name"], "type": "bridge"})
    return http.Response.empty(204)


def post_networks_prune(req):
    removed = req.daemon.networks.prune(req.filters())
    return http.Response.json({"NetworksDeleted": removed or None})


def post_networks_connect(req):
    body = _body(req)
    c = req.daemon.containers.get(body.get("Container") or "")
    with c.lock:
        req.daemon.networks.connect(req.params["id"], c, body.get("EndpointConfig"))
    _event(req, "connect", c)
    return http.Response.empty(200)


def _event(req, action, c):
    rec = req.daemon.networks.find(req.params["id"])
    req.daemon.events.emit("network", action, rec["Id"],
                           {"container": c.id, "name": rec["Name"], "type": "bridge"})


def post_networks_disconnect(req):
    body = _body(req)
    c = req.daemon.containers.get(body.get("Container") or "")
    with c.lock:
        req.daemon.networks.disconnect(req.params["id"], c, bool(body.get("Force")))
    _event(req, "disconnect", c)
    return http.Response.empty(200)


ROUTES = [
    ("GET", "/networks", get_networks),
    ("POST", "/networks/create", post_networks_create),
    route("POST", "/networks/prune", post_networks_prune, since="1.25"),
    ("GET", "/networks/{id}", get_networks_inspect),
    ("DELETE", "/networks/{id}", delete_networks),
    ("POST", "/networks/{id}/connect", post_networks_connect),
    ("POST", "/networks/{id}/disconnect", post_networks_disconnect),
]
