"""Network routes (v1.21+). minidock has exactly two networks, the modes it can really provide
without root or a user-space network stack: `host` (the container shares the host's network
namespace; also what `default`/`bridge` mean here) and `none` (a private namespace with only a
loopback interface). Both are predefined, as in Docker, so they cannot be created or removed;
creating any other network is refused with the reason instead of pretending."""

import hashlib

from minidock import errors, http

PREDEFINED = {"host": "host", "none": "null"}


def _network(name, containers):
    members = {}
    for c in containers.all():
        mode = c.host_config.get("NetworkMode") or "default"
        effective = "host" if mode in ("default", "bridge", "host") else mode
        if effective == name and c.running:
            members[c.id] = {"Name": c.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "",
                             "IPv6Address": ""}
    return {"Name": name, "Id": hashlib.sha256(f"minidock-network-{name}".encode()).hexdigest(),
            "Created": "0001-01-01T00:00:00Z", "Scope": "local", "Driver": PREDEFINED[name],
            "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": []},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": members, "Options": {}, "Labels": {}}


def _find(req, ref):
    for name in PREDEFINED:
        net = _network(name, req.daemon.containers)
        if ref in (name, net["Id"]) or (len(ref) >= 3 and net["Id"].startswith(ref)):
            return net
    raise errors.NotFound(f"network {ref} not found")


def get_networks(req):
    filters = req.filters()
    nets = [_network(name, req.daemon.containers) for name in PREDEFINED]
    for key, values in filters.items():
        if key == "name":
            nets = [n for n in nets if any(v in n["Name"] for v in values)]
        elif key == "id":
            nets = [n for n in nets if any(n["Id"].startswith(v) for v in values)]
        elif key == "driver":
            nets = [n for n in nets if n["Driver"] in values]
        elif key == "type":
            nets = [n for n in nets if "builtin" in values]
        elif key not in ("label", "scope", "dangling"):
            raise errors.InvalidParameter(f"Invalid filter '{key}'")
        elif key == "label":
            nets = []
    return http.Response.json(nets)


def get_networks_inspect(req):
    return http.Response.json(_find(req, req.params["id"]))


def post_networks_create(req):
    body = req.json(required=True) or {}
    name = body.get("Name") if isinstance(body, dict) else None
    if name in PREDEFINED:
        raise errors.Conflict(f"network with name {name} already exists")
    raise errors.NotImplementedKind(
        "minidock runs rootless without a user-space network stack: only the predefined 'host' "
        "and 'none' networks exist, and user-defined networks cannot be created")


def delete_networks(req):
    net = _find(req, req.params["id"])
    raise errors.Forbidden(f"{net['Name']} is a pre-defined network and cannot be removed")


def post_networks_connect(req):
    net = _find(req, req.params["id"])
    raise errors.Forbidden(f"container cannot be connected to network {net['Name']}: a container's "
                           f"network mode is fixed when it is created in minidock")


ROUTES = [
    ("GET", "/networks", get_networks),
    ("POST", "/networks/create", post_networks_create),
    ("GET", "/networks/{id}", get_networks_inspect),
    ("DELETE", "/networks/{id}", delete_networks),
    ("POST", "/networks/{id}/connect", post_networks_connect),
    ("POST", "/networks/{id}/disconnect", post_networks_connect),
]
