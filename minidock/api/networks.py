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
    return req.render("network_list", req.daemon.networks.list(req.filters()))


def get_networks_inspect(req):
    return http.Response.json(req.daemon.networks.inspect(req.params["id"]))


def post_networks_create(req):
    return http.Response.json(req.daemon.networks.create(_body(req)), status=201)


def delete_networks(req):
    req.daemon.networks.remove(req.params["id"])
    return http.Response.empty(204)


def post_networks_prune(req):
    removed = req.daemon.networks.prune(req.filters())
    return http.Response.json({"NetworksDeleted": removed or None})


def post_networks_connect(req):
    body = req.adapt("network_connect", _body(req))
    req.daemon.networks.connect_container(req.params["id"], body.get("Container"), body.get("EndpointConfig"))
    return http.Response.empty(200)


def post_networks_disconnect(req):
    body = _body(req)
    req.daemon.networks.disconnect_container(req.params["id"], body.get("Container"), bool(body.get("Force")))
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
