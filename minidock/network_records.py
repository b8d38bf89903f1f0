"""Network records: what `docker network create/ls/inspect/rm/prune` see, and their bridges.

A network is a JSON record under DATA/networks/<id>.json (store.Collection, written
atomically) in the shape `docker network inspect` shows, plus one Linux bridge in the daemon's
network namespace (network.py), named `com.docker.network.bridge.name` or br-<id[:12]>, whose
address is the network's gateway. `host` and `none` are predefined and have no record (they
are made up on the fly, `Id` a fixed hash of the name); `bridge` is the default network,
recorded like a user-defined one but never removable.

Order that matters: at create the bridge comes first and the record second, and a failure of
either removes the other, so there is never a bridge without state or state without a bridge.
The embedded DNS (dns.py) of a user-defined network listens on its gateway, port 53, UDP and
TCP, sockets opened inside the daemon's namespace once the bridge (and so the address) exists.

Removing a network while a running container has an endpoint on it answers 403 Forbidden,
as moby does (libnetwork's ActiveEndpointsError is a Forbidden error): "network X id Y has
active endpoints". Stopped members lose their endpoint with the network.
"""

import ipaddress
import socket

from minidock import digest, errors, filters as filters_mod, ipam, network, store, times
from minidock.tcpip import packet

PREDEFINED_MODES = ("host", "none")
BRIDGE = "bridge"


def predefined_id(name):
    """The fixed ID of a predefined network: SHA-256 of its name, the same on every daemon."""
    return digest.sha256_hex(f"minidock-network-{name}".encode())



class NetworkRecords:
    """Network records and their bridges (a part of networks.Networks: uses its `collection`,
    `lock`, `netns`, `resolver`, `pools`, `containers`, `events`, and the outbound `gateway`
    with its `ports`)."""

    # -- bridges ----------------------------------------------------------------------------

    def _bring_up(self, rec):
        cfg = rec["IPAM"]["Config"][0]
        subnet = ipaddress.IPv4Network(cfg["Subnet"])
        name = self.bridge_of(rec)
        self.netns.rtnl(network.delete_link, name)          # a leftover of a failed attempt
        # Its ifindex goes into every endpoint's spec: the init attaches veths to it
        # without asking the kernel for the bridge by name first.
        self.bridge_indexes[rec["Id"]] = self.netns.rtnl(
            network.create_bridge, name, cfg["Gateway"], subnet.prefixlen, self._mtu(rec))
        if rec["Name"] != BRIDGE:
            # The embedded DNS listens on the gateway, inside the daemon's namespace.
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = self.netns.socket(socket.AF_INET, kind, bind=(cfg["Gateway"], 53),
                                      listen=64 if kind == socket.SOCK_STREAM else 0,
                                      reuse=kind == socket.SOCK_STREAM)
                self.resolver.add(rec["Id"], s)
        if not rec.get("Internal") and self.gateway is not None:
            self._tap(rec, name, cfg["Gateway"], subnet.prefixlen)

    def _tap(self, rec, bridge, gateway, prefixlen):
        """The bridge's outbound wire: an AF_PACKET socket the keeper makes on the bridge,
        handed to the user-mode stack. The bridge keeps the gateway address (ARP, DNS); what
        the namespace's kernel would have to route (ip_forward=0 drops it) the stack answers."""
        # Protocol 0 at socket(), ETH_P_ALL only at bind(): a packet socket made with a protocol
        # is hooked into every device at once, and bind() must unhook it again, which waits for
        # an RCU grace period (synchronize_net(): 8-20 ms here, on the way to the ready socket
        # at every start). Made with 0 it is hooked once, by bind, to the bridge alone.
        psock = self.netns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0, bind=(bridge, packet.ETH_P_ALL))
        packet.configure_packet_socket(psock)
        self.ports[rec["Id"]] = self.gateway.add_port(
            psock, networks=[f"{gateway}/{prefixlen}"], kernel_gateway=True, mtu=self._mtu(rec))

    def _bring_down(self, rec):
        self.bridge_indexes.pop(rec["Id"], None)
        port = self.ports.pop(rec["Id"], None)
        if port is not None and self.gateway is not None:
            self.gateway.remove_port(port)
        if self.resolver:
            self.resolver.remove(rec["Id"])
        if self.netns:
            self.netns.rtnl(network.delete_link, self.bridge_of(rec))

    def bridge_of(self, rec):
        return (rec.get("Options") or {}).get("com.docker.network.bridge.name") or \
            network.bridge_name(rec["Id"], rec["Name"])

    def _mtu(self, rec):
        try:
            return int((rec.get("Options") or {}).get("com.docker.network.driver.mtu") or
                       network.DEFAULT_MTU)
        except ValueError:
            return network.DEFAULT_MTU

    # -- records ----------------------------------------------------------------------------

    def _record(self, nid, name, ipam_config, labels, ipam_options, internal, options,
                attachable=False):
        return {"Name": name, "Id": nid, "Created": times.now_rfc3339(), "Scope": "local", "Driver": "bridge",
                "EnableIPv6": False,
                "IPAM": {"Driver": "default", "Options": ipam_options or None,
                         "Config": ipam_config},
                "Internal": bool(internal), "Attachable": bool(attachable), "Ingress": False,
                "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Options": options or {},
                "Labels": labels or {}}

    def _by_name(self, name):
        for rec in self.collection.objects.values():
            if rec["Name"] == name:
                return rec
        return None

    def _predefined(self, name):
        return {"Name": name, "Id": predefined_id(name), "Created": times.ZERO_TIME,
                "Scope": "local", "Driver": "host" if name == "host" else "null",
                "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": []},
                "Internal": False, "Attachable": False, "Ingress": False,
                "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Options": {}, "Labels": {}}

    def _all_records(self):
        return [self._predefined(n) for n in PREDEFINED_MODES] + \
            list(self.collection.objects.values())

    def find(self, ref):
        """The record of network `ref`: full id, exact name, then a unique id prefix."""
        if ref == "default":
            ref = BRIDGE
        recs = self._all_records()
        for key in ("Id", "Name"):
            for rec in recs:
                if rec[key] == ref:
                    return rec
        matches = [r for r in recs if ref and r["Id"].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.InvalidParameter(f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)")
        raise errors.NotFound(f"network {ref} not found")

    # -- the API: create, list, inspect, remove, prune --------------------------------------

    def create(self, body):
        """POST /networks/create -> {"Id", "Warning"}."""
        if not isinstance(body, dict):
            raise errors.InvalidParameter("network config must be a JSON object")
        name = body.get("Name")
        if not name or not isinstance(name, str):
            raise errors.InvalidParameter("network name is required")
        driver = body.get("Driver") or "bridge"
        if driver != "bridge":
            if driver in ("host", "null", "none"):
                raise errors.Forbidden(f"only one instance of \"{driver}\" network is allowed")
            raise errors.NotFound(f"plugin \"{driver}\" not found")
        if body.get("EnableIPv6"):
            raise errors.InvalidParameter("IPv6 networks are not supported by minidock "
                                          "(its networks are IPv4 only)")
        if body.get("EnableIPv4") is False:
            raise errors.InvalidParameter("IPv4 cannot be disabled: minidock networks are IPv4 "
                                          "only")
        ipam_in = body.get("IPAM") or {}
        if (ipam_in.get("Driver") or "default") != "default":
            raise errors.NotFound(f"plugin \"{ipam_in['Driver']}\" not found")
        configs = ipam_in.get("Config") or []
        if len(configs) > 1:
            raise errors.InvalidParameter("minidock networks have exactly one IPv4 subnet")
        labels = body.get("Labels") or {}
        options = body.get("Options") or {}
        with self.lock:
            if name in PREDEFINED_MODES or self._by_name(name) is not None:
                raise errors.Conflict(f"network with name {name} already exists")
            used = [ipaddress.IPv4Network(r["IPAM"]["Config"][0]["Subnet"])
                    for r in self.collection.objects.values()]
            cfg = dict(configs[0]) if configs else {}
            if cfg.get("Subnet"):
                subnet = ipam.parse_subnet(cfg["Subnet"])
                for other in self.collection.objects.values():
                    if ipaddress.IPv4Network(other["IPAM"]["Config"][0]["Subnet"]).overlaps(subnet):
                        raise errors.Forbidden(f"Pool overlaps with other one on this address space")
            else:
                subnet = ipam.next_subnet(used, ipam.host_routes(), self.pools)
            out = {"Subnet": str(subnet)}
            if cfg.get("IPRange"):
                ip_range = ipam.parse_subnet(cfg["IPRange"])
                if not ip_range.subnet_of(subnet):
                    raise errors.InvalidParameter(f"invalid ip-range {ip_range}: it must be "
                                                  f"inside the subnet {subnet}")
                out["IPRange"] = str(ip_range)
            if cfg.get("Gateway"):
                try:
                    gw = ipaddress.IPv4Address(cfg["Gateway"])
                except ValueError:
                    raise errors.InvalidParameter(f"invalid gateway address {cfg['Gateway']}")
                if gw not in subnet:
                    raise errors.InvalidParameter(f"no matching subnet for gateway {gw}")
            else:
                gw = ipam.first_host(subnet)
            out["Gateway"] = str(gw)
            aux = cfg.get("AuxiliaryAddresses") or {}
            if not isinstance(aux, dict):
                raise errors.InvalidParameter("AuxiliaryAddresses must be an object of name: address")
            for host, address in aux.items():
                try:
                    if ipaddress.IPv4Address(address) not in subnet:
                        raise ValueError("outside the subnet")
                except ValueError:
                    raise errors.InvalidParameter(f"invalid auxiliary address {host}={address}: "
                                                  f"it must be an address of {subnet}")
            if aux:
                out["AuxiliaryAddresses"] = dict(aux)   # reserved: never given to a container
            nid = store.new_id()
            rec = self._record(nid, name, [out], labels, ipam_in.get("Options"),
                               body.get("Internal"), options, body.get("Attachable"))
            # Bridge first, then state: a failure leaves neither behind.
            if self.netns is not None:
                try:
                    self._bring_up(rec)
                except OSError as e:
                    self._bring_down(rec)
                    raise errors.System(f"cannot create the bridge of network {name}: {e}")
            self.collection.objects[nid] = rec
            try:
                self.collection.save(nid)
            except BaseException:
                del self.collection.objects[nid]
                self._bring_down(rec)
                raise
        self.events.emit("network", "create", nid, {"name": name, "type": "bridge"})
        return {"Id": nid, "Warning": ""}

    def members(self, rec):
        """Containers attached to network `rec` (running or not)."""
        return [c for c, _ in self.endpoints_on(rec)]

    def endpoints_on(self, rec):
        """(container, its endpoint settings) for each container attached to network `rec`,
        running or not: the first of its endpoints on `rec`, the one _ep_name() names. One
        pass over the records with nothing called per container -- each DNS query asks this,
        and the first join on a network after a start (the addresses taken there)."""
        network_id = rec["Id"]
        for c in self.containers.all() if self.containers else ():
            settings = c.record.get("NetworkSettings")
            if not settings:
                continue
            for ep in (settings.get("Networks") or {}).values():
                if ep.get("NetworkID") == network_id:
                    yield c, ep
                    break

    def describe(self, rec):
        """The inspect/list form: the record with Containers (running endpoints) filled in."""
        out = {k: v for k, v in rec.items()}
        out["Containers"] = {}
        if rec["Name"] in PREDEFINED_MODES:
            for c in self.containers.all() if self.containers else []:
                if c.running and (c.host_config.get("NetworkMode") or "") == rec["Name"]:
                    out["Containers"][c.id] = {"Name": c.name, "EndpointID": "", "MacAddress": "",
                                               "IPv4Address": "", "IPv6Address": ""}
            return out
        for c, ep in self.endpoints_on(rec):
            if not c.running:
                continue
            out["Containers"][c.id] = {
                "Name": c.name, "EndpointID": ep.get("EndpointID", ""),
                "MacAddress": ep.get("MacAddress", ""),
                "IPv4Address": f"{ep['IPAddress']}/{ep['IPPrefixLen']}", "IPv6Address": ""}
        return out

    def inspect(self, ref):
        return self.describe(self.find(ref))

    def list(self, filters=None):
        nets = [self.describe(r) for r in self._all_records()]
        for key, values in (filters or {}).items():
            if key == "name":
                nets = [n for n in nets if any(v in n["Name"] for v in values)]
            elif key == "id":
                nets = [n for n in nets if any(n["Id"].startswith(v) for v in values)]
            elif key == "driver":
                nets = [n for n in nets if n["Driver"] in values]
            elif key == "type":
                for v in values:
                    if v not in ("custom", "builtin"):
                        raise errors.InvalidParameter(f"invalid filter: 'type'='{v}'")
                nets = [n for n in nets if ("builtin" if self._builtin(n) else "custom") in values]
            elif key == "label":
                nets = [n for n in nets if filters_mod.labels_match(n["Labels"], {"label": values})]
            elif key == "scope":
                nets = [n for n in nets if n["Scope"] in values]
            elif key == "dangling":
                want = values[0] in ("1", "true")
                nets = [n for n in nets if self._builtin(n) is False and (not n["Containers"]) == want]
            else:
                raise errors.InvalidParameter(f"invalid filter '{key}'")
        return nets

    def _builtin(self, rec):
        return rec["Name"] in PREDEFINED_MODES + (BRIDGE,)

    def remove(self, ref):
        with self.lock:
            rec = self.find(ref)
            if self._builtin(rec):
                raise errors.Forbidden(f"{rec['Name']} is a pre-defined network and cannot be removed")
            running = [c for c in self.members(rec) if c.running]
            if running:
                raise errors.Forbidden(f"error while removing network: network {rec['Name']} id "
                                       f"{rec['Id']} has active endpoints")
            for c in self.members(rec):           # stopped members lose the endpoint
                c.record["NetworkSettings"]["Networks"].pop(self._ep_name(c, rec), None)
                self.containers.save(c)
            self._bring_down(rec)
            self.collection.delete(rec["Id"])
            self.taken_addresses.pop(rec["Id"], None)
        self.events.emit("network", "destroy", rec["Id"], {"name": rec["Name"], "type": "bridge"})
        return rec

    def prune(self, filters=None):
        """POST /networks/prune: user-defined networks no running container uses, filtered by
        `until` and `label`/`label!`; announced with a `prune` event."""
        filters = filters or {}
        filters_mod.check_keys(filters, ("until", "label", "label!"))
        until = filters_mod.until_ns(filters)
        removed = []
        for rec in list(self.collection.objects.values()):
            if self._builtin(rec) or any(c.running for c in self.members(rec)):
                continue
            if not filters_mod.labels_match(rec["Labels"], filters):
                continue
            if until is not None and times.rfc3339_ns(rec["Created"]) >= until:
                continue
            try:
                self.remove(rec["Id"])
                removed.append(rec["Name"])
            except errors.MinidockError:
                pass
        self.events.emit("network", "prune", "", {"reclaimed": "0"})
        return removed
