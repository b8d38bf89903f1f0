"""Network routes (v1.21+): list, inspect, create, remove, connect, disconnect.
The backend is minidock/networks.py."""

from minidock import http


def get_networks(req):
    return http.Response.json(req.daemon.networks.list(req.filters()))


def get_networks_inspect(req):
    return http.Response.json(req.daemon.networks.inspect(req.params["id"]))


def post_networks_create(req):
    created = req.daemon.networks.create(req.json(required=True) or {})
    return http.Response.json(created, status=201)


def delete_networks(req):
    req.daemon.networks.remove(req.params["id"])
    return http.Response.empty(204)


def post_networks_connect(req):
    req.daemon.networks.connect(req.params["id"])
    return http.Response.empty(200)


ROUTES = [
    ("GET", "/networks", get_networks),
    ("POST", "/networks/create", post_networks_create),
    ("GET", "/networks/{id}", get_networks_inspect),
    ("DELETE", "/networks/{id}", delete_networks),
    ("POST", "/networks/{id}/connect", post_networks_connect),
    ("POST", "/networks/{id}/disconnect", post_networks_connect),
]
