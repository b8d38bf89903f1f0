"""Networks: the backend of the /networks routes.

minidock has exactly two networks today, the modes it can really provide without root or a
user-space network stack: `host` (the container shares the daemon's network namespace; also
what `default` and `bridge` mean here, see container/config.py `network_mode`) and `none` (a
private namespace with only a loopback interface). Both are predefined, as in Docker, so they
cannot be created or removed; creating any other network is refused with the reason instead of
pretending. A network's ID is stable: sha256 of its name.
"""

import hashlib

from minidock import errors
from minidock.times import ZERO_TIME

PREDEFINED = {"host": "host", "none": "null"}          # name -> driver
FILTERS = ("name", "id", "driver", "type", "label", "scope", "dangling")


def network_id(name):
    return hashlib.sha256(f"minidock-network-{name}".encode()).hexdigest()


class Networks:
    def __init__(self, containers):
        self.containers = containers

    def _describe(self, name):
        members = {}
        for c in self.containers.all():
            if c.network_mode == name and c.running:
                members[c.id] = {"Name": c.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "",
                                 "IPv6Address": ""}
        return {"Name": name, "Id": network_id(name), "Created": ZERO_TIME, "Scope": "local",
                "Driver": PREDEFINED[name], "EnableIPv6": False,
                "IPAM": {"Driver": "default", "Options": None, "Config": []},
                "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
                "ConfigOnly": False, "Containers": members, "Options": {}, "Labels": {}}

    def list(self, filters=None):
        nets = [self._describe(name) for name in PREDEFINED]
        for key, values in (filters or {}).items():
            if key not in FILTERS:
                raise errors.InvalidParameter(f"Invalid filter '{key}'")
            if key == "name":
                nets = [n for n in nets if any(v in n["Name"] for v in values)]
            elif key == "id":
                nets = [n for n in nets if any(n["Id"].startswith(v) for v in values)]
            elif key == "driver":
                nets = [n for n in nets if n["Driver"] in values]
            elif key == "type":
                nets = [n for n in nets if "builtin" in values]
            elif key == "label":
                nets = []                  # the predefined networks have no labels
        return nets

    def inspect(self, ref):
        for name in PREDEFINED:
            net = self._describe(name)
            if ref in (name, net["Id"]) or (len(ref) >= 3 and net["Id"].startswith(ref)):
                return net
        raise errors.NotFound(f"network {ref} not found")

    def create(self, body):
        name = body.get("Name") if isinstance(body, dict) else None
        if name in PREDEFINED:
            raise errors.Conflict(f"network with name {name} already exists")
        raise errors.NotImplementedKind(
            "minidock runs rootless without a user-space network stack: only the predefined 'host' "
            "and 'none' networks exist, and user-defined networks cannot be created")

    def remove(self, ref):
        net = self.inspect(ref)
        raise errors.Forbidden(f"{net['Name']} is a pre-defined network and cannot be removed")

    def connect(self, ref):
        net = self.inspect(ref)
        raise errors.Forbidden(f"container cannot be connected to network {net['Name']}: a container's "
                               f"network mode is fixed when it is created in minidock")
