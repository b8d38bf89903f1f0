"""The networks backend: Docker's network objects and container endpoints, without HTTP.

What a network is here
----------------------
`host` and `none` are predefined modes (the container keeps the daemon's network namespace,
or gets one with only `lo`). `bridge` (the default network) and every user-defined network
are Linux bridges in the daemon's network namespace (network.py), each with a subnet from
IPAM (ipam.py) whose first address, the gateway, sits on the bridge. Records are JSON files
under DATA/networks/, written atomically; the bridges themselves are rebuilt from them at
every start (the namespace dies with the daemon).

Endpoints
---------
A container's endpoint on a network is stored in the container's own record, under
NetworkSettings.Networks.<name>, exactly in the shape `docker inspect` shows: IPAddress,
IPPrefixLen, Gateway, MacAddress, NetworkID, EndpointID, Aliases, IPAMConfig, DNSNames. The
address is allocated when the container joins the network (at create or connect) and kept
until it leaves (disconnect or remove), so it survives stops and daemon restarts; the set of
used addresses of a network is computed from the containers at any time, there is no
second copy to get out of step.

The pieces that run around a container's start, in order:

    publish(c)            bind its published ports on the host (fails the start cleanly,
                          before any process exists, with Docker's "port is already
                          allocated")
    spawn_network(c)      the spawner spec's "network": {"netns_pid", "endpoints"}; the
                          shim plugs the veths in (network.attach_container)
    etc_hosts(c), resolv_conf(c)
                          the /etc files: own address and name, links; the embedded DNS on
                          the gateway for user-defined networks, the host's non-loopback
                          resolvers on the default bridge (as Docker)
    stopped(c)            listeners closed; the veths died with the namespace

Names
-----
On user-defined networks the embedded resolver (dns.py) answers, for a container on that
network only: the container's name, its network aliases (docker-compose puts the service
name there), its short id (12 hex digits) and its hostname. The default bridge has no DNS,
as in Docker: containers there find each other through `--link`.
"""

import hashlib
import ipaddress
import logging
import os
import socket
import threading
import time

from minidock import dns, errors, filters as filters_mod, ipam, network, portproxy, store, times

log = logging.getLogger(__name__)

PREDEFINED_MODES = ("host", "none")
BRIDGE = "bridge"


def _predefined_id(name):
    return hashlib.sha256(f"minidock-network-{name}".encode()).hexdigest()


class Networks:
    """Network records, endpoint allocation, the bridges, DNS and published ports."""

    def __init__(self, data_root, events, containers=None, bip=None, pools=None, dns_upstreams=None):
        """`events` announces prunes (minidock.events.Events); `containers` is anything with all() / get(ref) returning objects with .id, .name,
        .record, .config, .host_config, .pid, .running (set later with attach())."""
        self.containers, self.events = containers, events
        self.collection = store.Collection(os.path.join(data_root, "networks"), "network")
        for problem in self.collection.load():
            log.warning("skipping unreadable network state: %s", problem)
        self.lock = threading.RLock()
        self.pools = pools
        self.netns = None               # network.DaemonNetns once started
        self.resolver = None
        self.published = {}             # container id -> portproxy.Published
        self.dns_upstreams = dns_upstreams
        subnet, gateway = ipam.parse_bip(bip) if bip else (
            ipaddress.IPv4Network(ipam.DEFAULT_BRIDGE_SUBNET), None)
        gateway = gateway or ipam.first_host(subnet)
        bridge = self._by_name(BRIDGE)
        config = [{"Subnet": str(subnet), "Gateway": str(gateway)}]
        if bridge is None:
            nid = _predefined_id(BRIDGE)
            self.collection.objects[nid] = self._record(nid, BRIDGE, config, {}, {}, False,
                                                        {"com.docker.network.bridge.default_bridge": "true",
                                                         "com.docker.network.bridge.name": "docker0"})
            self.collection.save(nid)
        elif bridge["IPAM"]["Config"] != config:
            bridge["IPAM"]["Config"] = config       # --bip changed since the last start
            self.collection.save(bridge["Id"])

    def attach(self, containers):
        self.containers = containers

    # -- the daemon side: bring-up --------------------------------------------------------------

    def start(self, spawner):
        """Create the daemon's network namespace and every bridge; serve DNS. Call once the
        spawner runs; failures are logged per network and leave that network unusable."""
        self.netns = network.DaemonNetns(spawner)
        upstreams = self.dns_upstreams
        if upstreams is None:
            upstreams = [(ip, 53) for ip in dns.host_resolvers()]
        self.resolver = dns.Resolver(self.lookup, upstreams, self.upstreams_for)
        for rec in list(self.collection.objects.values()):
            try:
                self._bring_up(rec)
            except OSError as e:
                log.warning("network %s: cannot create its bridge: %s", rec["Name"], e)

    def close(self):
        for pub in self.published.values():
            pub.close()
        self.published.clear()
        if self.resolver:
            self.resolver.close()
        if self.netns:
            self.netns.close()

    def _bring_up(self, rec):
        cfg = rec["IPAM"]["Config"][0]
        subnet = ipaddress.IPv4Network(cfg["Subnet"])
        name = self.bridge_of(rec)
        self.netns.rtnl(network.delete_link, name)          # a leftover of a failed attempt
        self.netns.rtnl(network.create_bridge, name, cfg["Gateway"], subnet.prefixlen,
                        self._mtu(rec))
        if rec["Name"] != BRIDGE:
            # The embedded DNS listens on the gateway, inside the daemon's namespace.
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = self.netns.socket(socket.AF_INET, kind, bind=(cfg["Gateway"], 53),
                                      listen=64 if kind == socket.SOCK_STREAM else 0,
                                      reuse=kind == socket.SOCK_STREAM)
                self.resolver.add(rec["Id"], s)

    def _bring_down(self, rec):
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

    # -- records --------------------------------------------------------------------------------

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
        return {"Name": name, "Id": _predefined_id(name), "Created": times.ZERO_TIME,
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

    def is_bridge(self, rec):
        return rec["Name"] not in PREDEFINED_MODES

    # -- the API: create, list, inspect, remove, prune -----------------------------------------

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
        out = []
        for c in self.containers.all() if self.containers else []:
            for ep in (c.record.get("NetworkSettings") or {}).get("Networks", {}).values():
                if ep.get("NetworkID") == rec["Id"]:
                    out.append(c)
                    break
        return out

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
        for c in self.members(rec):
            if not c.running:
                continue
            ep = self._endpoint(c, rec)
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

    # -- endpoints ------------------------------------------------------------------------------

    def _ep_name(self, c, rec):
        for name, ep in (c.record.get("NetworkSettings") or {}).get("Networks", {}).items():
            if ep.get("NetworkID") == rec["Id"]:
                return name
        return rec["Name"]

    def _endpoint(self, c, rec):
        return c.record["NetworkSettings"]["Networks"].get(self._ep_name(c, rec)) or {}

    def _used(self, rec, except_id=None):
        """Addresses taken on `rec`: its containers' and its reserved auxiliary addresses."""
        used = [ipaddress.IPv4Address(a) for a in
                (rec["IPAM"]["Config"][0].get("AuxiliaryAddresses") or {}).values()]
        for c in self.members(rec):
            if c.id != except_id:
                ip = self._endpoint(c, rec).get("IPAddress")
                if ip:
                    used.append(ipaddress.IPv4Address(ip))
        return used

    def mode_network(self, host_config):
        """The network record a container's NetworkMode names, or None for host/none/
        container:X."""
        mode = host_config.get("NetworkMode") or "default"
        if mode in PREDEFINED_MODES or mode.startswith("container:"):
            return None
        return self.find(mode)

    def check_mode(self, host_config):
        """Validate NetworkMode at create (NotFound for an unknown network)."""
        mode = host_config.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            return
        self.find(mode)

    def join(self, c, rec, config=None):
        """Allocate `c`'s endpoint on `rec` (no kernel work); returns the endpoint dict.
        `config` is an EndpointSettings: Aliases, IPAMConfig.IPv4Address, Links, MacAddress.
        Every problem with `config` is found before anything is stored, and reported at once
        (as moby does since v1.44): one error of its own kind, or InvalidParameter listing all."""
        config = config or {}
        if rec["Name"] in PREDEFINED_MODES:
            raise errors.Forbidden(f"container cannot be disconnected from host network or "
                                   f"connected to host network" if rec["Name"] == "host" else
                                   f"container cannot be connected to network {rec['Name']}")
        settings = c.record.setdefault("NetworkSettings", {}).setdefault("Networks", {})
        for ep in settings.values():
            if ep.get("NetworkID") == rec["Id"]:
                raise errors.Forbidden(f"endpoint with name {c.name} already exists in network "
                                       f"{rec['Name']}")
        cfg = rec["IPAM"]["Config"][0]
        subnet = ipaddress.IPv4Network(cfg["Subnet"])
        gateway = ipaddress.IPv4Address(cfg["Gateway"])
        ipam_cfg = config.get("IPAMConfig") or {}
        aliases = list(config.get("Aliases") or [])
        problems = []
        with self.lock:
            used = self._used(rec, except_id=c.id)
            ip = None
            if ipam_cfg.get("IPv4Address"):
                if rec["Name"] == BRIDGE:
                    problems.append(errors.InvalidParameter("user specified IP address is supported on "
                                                            "user defined networks only"))
                else:
                    try:
                        ip = ipam.check_requested(subnet, gateway, used, ipam_cfg["IPv4Address"])
                    except errors.MinidockError as e:
                        problems.append(e)
            if rec["Name"] == BRIDGE and aliases:
                problems.append(errors.InvalidParameter("network-scoped alias is supported only for "
                                                        "containers in user defined networks"))
            mac = config.get("MacAddress") or c.config.get("MacAddress")
            if mac and not network.valid_mac(mac):
                problems.append(errors.InvalidParameter(f"invalid MAC address {mac}"))
            if problems:
                raise _all_of(problems)
            if ip is None:
                ip_range = ipaddress.IPv4Network(cfg["IPRange"]) if cfg.get("IPRange") else None
                ip = ipam.allocate(subnet, gateway, used, ip_range)
            ep = {"IPAMConfig": ({"IPv4Address": ipam_cfg["IPv4Address"]}
                                 if ipam_cfg.get("IPv4Address") else None),
                  "Links": config.get("Links") or None,
                  "Aliases": aliases or None,
                  "MacAddress": mac or network.mac_for(ip), "DriverOpts": None, "NetworkID": rec["Id"],
                  "EndpointID": store.new_id(), "Gateway": str(gateway), "IPAddress": str(ip),
                  "IPPrefixLen": subnet.prefixlen, "IPv6Gateway": "", "GlobalIPv6Address": "",
                  "GlobalIPv6PrefixLen": 0,
                  "DNSNames": ([c.name] + aliases + [c.id[:12]]) if rec["Name"] != BRIDGE else None}
            settings[rec["Name"]] = ep
        return ep

    def join_at_create(self, c, networking_config=None):
        """Endpoints for a new container: its NetworkMode's network, plus any other network in
        NetworkingConfig.EndpointsConfig (API >= 1.44 allows several). Every endpoint is tried
        and every problem reported together; on any, the container has no endpoint at all."""
        rec = self.mode_network(c.host_config)
        c.record.setdefault("NetworkSettings", {}).setdefault("Networks", {})
        self.normalise_links(c)
        if rec is None:
            return
        eps = dict((networking_config or {}).get("EndpointsConfig") or {})
        mine = None
        for key in list(eps):
            try:
                if self.find(key)["Id"] == rec["Id"]:
                    mine = eps.pop(key)
            except errors.NotFound:
                pass
        if mine is None and rec["Name"] == BRIDGE and c.host_config.get("Links"):
            mine = {}
        problems = []
        for key, config in [(rec["Name"], mine)] + list(eps.items()):
            try:
                self.join(c, rec if key == rec["Name"] else self.find(key), config)
            except errors.MinidockError as e:
                problems.append((key, e))
        if problems:
            c.record["NetworkSettings"]["Networks"] = {}
            if len(problems) == 1:
                raise problems[0][1]
            raise _all_of([errors.InvalidParameter(f"invalid config for network {key}: {e.message}")
                           for key, e in problems])

    def normalise_links(self, c):
        """HostConfig.Links as Docker stores them ("/db:/web/alias"); the targets must exist."""
        links = []
        for link in c.host_config.get("Links") or []:
            target, alias = parse_link(link)
            other = self.containers.get(target)      # NotFound: Docker refuses the create too
            links.append(f"/{other.name}:/{c.name}/{alias}")
        c.host_config["Links"] = links or None

    def remove_link(self, ref):
        """DELETE /containers/{/parent/alias}?link=1: drop one legacy link; returns the parent."""
        parent_name, _, alias = ref.strip("/").rpartition("/")
        if not parent_name:
            raise errors.InvalidParameter(f"Conflict, cannot remove the default link name "
                                          f"of the container")
        parent = self.containers.get(parent_name)
        links = parent.host_config.get("Links") or []
        kept = [l for l in links if parse_link(l)[1] != alias]
        if len(kept) == len(links):
            raise errors.NotFound(f"Could not find link {ref}")
        parent.host_config["Links"] = kept or None
        return parent

    def leave(self, c, rec, force=False):
        """Disconnect `c` from `rec`; a running container loses its interface now."""
        name = self._ep_name(c, rec)
        settings = (c.record.get("NetworkSettings") or {}).get("Networks", {})
        if name not in settings:
            if force:
                return
            raise errors.Forbidden(f"container {c.id} is not connected to network {rec['Name']}")
        if c.running and self.netns is not None:
            try:
                network.unplug(self.netns, c.pid, settings[name].get("_ifname") or "eth0")
            except OSError as e:
                if not force:
                    raise errors.System(f"cannot disconnect: {e}")
        gone = settings.pop(name)
        if c.running:
            self._repoint_resolver(c, gone.get("Gateway"))

    def _use_embedded_dns(self, c, gateway):
        """A running container's first user-defined network: its resolv.conf (bound into the
        container, so rewritten in place) names the embedded DNS from now on."""
        path = c.record.get("ResolvConfPath")
        if not path:
            return
        try:
            with open(path, "r+") as f:
                lines = [l for l in f.read().splitlines() if not l.startswith("nameserver")]
                if not any(l.startswith("options") and "ndots:" in l for l in lines):
                    lines.append("options ndots:0")
                f.seek(0)
                f.truncate()
                f.write("\n".join([f"nameserver {gateway}"] + lines) + "\n")
        except OSError as e:
            log.warning("cannot update resolv.conf of %s: %s", c.name, e)

    def _repoint_resolver(self, c, old_gateway):
        """A running container left the network whose gateway its resolv.conf names: name the
        gateway of a network it still has (the file is bound into the container: rewrite it in
        place, a rename would leave the container the old inode)."""
        path = c.record.get("ResolvConfPath")
        new = next((ep["Gateway"] for ep in c.record["NetworkSettings"]["Networks"].values()
                    if ep.get("Gateway") and (self.collection.objects.get(ep.get("NetworkID")) or
                                              {}).get("Name") not in (None, BRIDGE)), None)
        if not path or not old_gateway or not new:
            return
        try:
            with open(path, "r+") as f:
                text = f.read()
                lines = [f"nameserver {new}" if line.split() == ["nameserver", old_gateway]
                         else line for line in text.splitlines()]
                f.seek(0)
                f.truncate()
                f.write("\n".join(lines) + "\n")
        except OSError as e:
            log.warning("cannot update resolv.conf of %s: %s", c.name, e)

    def leave_all(self, c):
        """Forget every endpoint of a removed container (its addresses are free again)."""
        self.stopped(c)
        ns_ = c.record.get("NetworkSettings") or {}
        ns_["Networks"] = {}

    def connect(self, ref, c, config=None):
        """POST /networks/{id}/connect for a running or stopped container."""
        rec = self.find(ref)
        mode = c.host_config.get("NetworkMode") or "default"
        if mode in PREDEFINED_MODES or mode.startswith("container:"):
            raise errors.Forbidden(f"container sharing network namespace with another container "
                                   f"or host cannot be connected to any other network"
                                   if mode != "none" else
                                   f"container cannot be connected to network {rec['Name']}: "
                                   f"it runs with --network none")
        ep = self.join(c, rec, config)
        if c.running and self.netns is not None:
            settings = c.record["NetworkSettings"]["Networks"]
            taken = {e.get("_ifname") for e in settings.values()}
            ep["_ifname"] = next(f"eth{i}" for i in range(len(settings) + 1)
                                 if f"eth{i}" not in taken)
            try:
                network.hotplug(self.netns, c.pid, ep["_ifname"], self._wire(rec, ep, False))
            except OSError as e:
                del settings[rec["Name"]]
                raise errors.System(f"cannot connect container to network {rec['Name']}: {e}")
            if rec["Name"] != BRIDGE and self._dns_gateway(c) == ep["Gateway"]:
                self._use_embedded_dns(c, ep["Gateway"])
        self.containers.save(c)
        return ep

    def disconnect(self, ref, c, force=False):
        rec = self.find(ref)
        self.leave(c, rec, force)
        self.containers.save(c)

    def connect_container(self, ref, container_ref, config=None):
        """POST /networks/{id}/connect: the container by id or name, running or stopped."""
        c = self.containers.get(container_ref or "")
        with c.lock:
            self.connect(ref, c, config)
        self._announce("connect", ref, c)

    def disconnect_container(self, ref, container_ref, force=False):
        """POST /networks/{id}/disconnect."""
        c = self.containers.get(container_ref or "")
        with c.lock:
            self.disconnect(ref, c, force)
        self._announce("disconnect", ref, c)

    def _announce(self, action, ref, c):
        rec = self.find(ref)
        self.events.emit("network", action, rec["Id"], {"container": c.id, "name": rec["Name"], "type": "bridge"})

    def _wire(self, rec, ep, default_route):
        return {"bridge": self.bridge_of(rec), "address": ep["IPAddress"],
                "prefixlen": ep["IPPrefixLen"], "gateway": ep["Gateway"],
                "mac": ep["MacAddress"], "mtu": self._mtu(rec),
                "default_route": default_route and not rec.get("Internal")}

    # -- around a container's start ------------------------------------------------------------

    def spawn_network(self, c):
        """The spawner spec's "network" for a bridge-mode container, or None."""
        rec = self.mode_network(c.host_config)    # NotFound if its network was removed
        if rec is None:
            return None
        if self.netns is None:
            raise errors.Unavailable("the daemon's network namespace is not running")
        settings = c.record.setdefault("NetworkSettings", {}).setdefault("Networks", {})
        if not any(ep.get("NetworkID") == rec["Id"] for ep in settings.values()):
            # A container from before networks existed (or whose endpoint went with a removed
            # and re-created network of the same name): it joins now.
            self.join(c, rec)
        endpoints = []
        for i, (name, ep) in enumerate(settings.items()):
            rec = self.collection.objects.get(ep.get("NetworkID"))
            if rec is None:
                raise errors.NotFound(f"network {name} not found")
            endpoints.append(self._wire(rec, ep, i == 0))
            ep["_ifname"] = f"eth{i}"          # attach_container names them in this order
        return {"netns_pid": self.netns.pid, "endpoints": endpoints}

    def primary_ip(self, c):
        for ep in (c.record.get("NetworkSettings") or {}).get("Networks", {}).values():
            if ep.get("IPAddress"):
                return ep["IPAddress"]
        return None

    def publish(self, c):
        """Bind the container's published ports (before its process exists). Returns the
        NetworkSettings.Ports mapping."""
        hc = c.host_config
        bindings = portproxy.expand_bindings(hc.get("PortBindings"), c.config.get("ExposedPorts"),
                                             hc.get("PublishAllPorts"))
        ports = {key: None for key in (c.config.get("ExposedPorts") or {})}
        ip = self.primary_ip(c)
        if not bindings or ip is None or self.netns is None:
            return ports
        dial = lambda kind: self.netns.socket(socket.AF_INET, kind)
        pub = portproxy.Published(ip, bindings, dial)
        self.published[c.id] = pub
        for proto, cport, host_ip, host_port in pub.ports:
            ports.setdefault(f"{cport}/{proto}", None)
            ports[f"{cport}/{proto}"] = (ports[f"{cport}/{proto}"] or []) + [
                {"HostIp": host_ip, "HostPort": str(host_port)}]
        return ports

    def stopped(self, c):
        """The container's process ended: close its listeners."""
        pub = self.published.pop(c.id, None)
        if pub is not None:
            pub.close()

    def etc_hosts(self, c, hostname):
        """Extra /etc/hosts lines: the container's own address and names, and its links."""
        lines = []
        ip = self.primary_ip(c)
        if ip:
            lines.append(f"{ip}\t{hostname}")
        for link in c.host_config.get("Links") or []:
            target, alias = parse_link(link)
            try:
                other = self.containers.get(target)
            except errors.NotFound:
                continue
            oip = self.primary_ip(other)
            if oip:
                names = [alias, other.config.get("Hostname") or other.id[:12], other.name]
                lines.append(f"{oip}\t" + " ".join(dict.fromkeys(names)))
        return lines

    def upstreams_for(self, network_id, asker_ip):
        """The asker's own --dns servers, which its resolv.conf cannot name (the embedded DNS
        takes that place): Docker forwards to them instead of the host's."""
        rec = self.collection.objects.get(network_id)
        if rec is None or not self.containers:
            return None
        for c in self.members(rec):
            if self._endpoint(c, rec).get("IPAddress") == asker_ip:
                servers = c.host_config.get("Dns") or []
                return [(s, 53) for s in servers if ":" not in s] or None
        return None

    def _dns_gateway(self, c):
        """The gateway of the first user-defined network `c` is on (its embedded DNS), or None."""
        for ep in (c.record.get("NetworkSettings") or {}).get("Networks", {}).values():
            rec = self.collection.objects.get(ep.get("NetworkID"))
            if rec is not None and rec["Name"] != BRIDGE and ep.get("Gateway"):
                return ep["Gateway"]
        return None

    def uses_embedded_dns(self, c):
        return self.mode_network(c.host_config) is not None and self._dns_gateway(c) is not None

    def resolv_conf(self, c, nameservers, search, options):
        """The nameservers a container gets: the embedded DNS once it is on a user-defined
        network (like Docker's sandbox resolver, even when it started on the default bridge);
        else the host's minus loopback ones (a container cannot reach the host's 127.0.0.53)."""
        if self.mode_network(c.host_config) is None:
            return nameservers, search, options
        gateway = self._dns_gateway(c)
        if gateway is not None:
            # Docker's ndots:0: a bare "db" goes to the embedded DNS as is, before any search
            # domain of the host's is tried.
            if not any(o.startswith("ndots:") for o in options):
                options = options + ["ndots:0"]
            return [gateway], search, options
        return [n for n in nameservers if not n.startswith("127.") and n != "::1"], search, options

    def link_env(self, c):
        """Docker's legacy link variables (ALIAS_PORT_80_TCP=tcp://ip:80 ...)."""
        env = []
        for link in c.host_config.get("Links") or []:
            target, alias = parse_link(link)
            try:
                other = self.containers.get(target)
            except errors.NotFound:
                continue
            ip = self.primary_ip(other)
            if not ip:
                continue
            prefix = alias.upper().replace("-", "_").replace(".", "_")
            env.append(f"{prefix}_NAME=/{c.name}/{alias}")
            ports = sorted((other.config.get("ExposedPorts") or {}),
                           key=lambda k: (int(k.split("/")[0]), k))
            for i, key in enumerate(ports):
                port, _, proto = key.partition("/")
                proto = proto or "tcp"
                base = f"{prefix}_PORT_{port}_{proto.upper()}"
                if i == 0:
                    env.append(f"{prefix}_PORT={proto}://{ip}:{port}")
                env += [f"{base}={proto}://{ip}:{port}", f"{base}_ADDR={ip}",
                        f"{base}_PORT={port}", f"{base}_PROTO={proto}"]
            for e in other.config.get("Env") or []:
                key, _, value = e.partition("=")
                if key not in ("HOME", "PATH", "HOSTNAME"):
                    env.append(f"{prefix}_ENV_{key}={value}")
        return env

    # -- what inspect and list show --------------------------------------------------------------

    def settings(self, c):
        """NetworkSettings for inspect, from the container's stored endpoints."""
        stored = c.record.get("NetworkSettings") or {}
        mode = c.host_config.get("NetworkMode") or "default"
        nets = {k: {f: x for f, x in v.items() if not f.startswith("_")}
                for k, v in (stored.get("Networks") or {}).items()}
        if mode in PREDEFINED_MODES:
            nets = {mode: {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
                           "DriverOpts": None, "NetworkID": _predefined_id(mode), "EndpointID": "",
                           "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
                           "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": None}}
        # The top-level fields describe the default bridge only (Docker keeps them for it).
        top = nets.get(BRIDGE) or {}
        return {"Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0,
                "Ports": (stored.get("Ports") or {}) if c.running else {},
                "SandboxKey": f"/proc/{c.pid}/ns/net" if c.pid else "",
                "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
                "EndpointID": top.get("EndpointID", ""), "Gateway": top.get("Gateway", ""),
                "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "IPAddress": top.get("IPAddress", ""), "IPPrefixLen": top.get("IPPrefixLen", 0),
                "IPv6Gateway": "", "MacAddress": top.get("MacAddress", ""), "Networks": nets}

    def summary_ports(self, c):
        """The `Ports` list of GET /containers/json (the PORTS column of docker ps)."""
        out = []
        ports = (c.record.get("NetworkSettings") or {}).get("Ports") or {}
        if not c.running:
            ports = {}
        for key in sorted(set(ports) | set(c.config.get("ExposedPorts") or {})):
            port, _, proto = key.partition("/")
            binds = ports.get(key)
            if binds:
                for b in binds:
                    out.append({"IP": b["HostIp"], "PrivatePort": int(port),
                                "PublicPort": int(b["HostPort"]), "Type": proto or "tcp"})
            else:
                out.append({"PrivatePort": int(port), "Type": proto or "tcp"})
        return out

    # -- DNS ------------------------------------------------------------------------------------

    def lookup(self, network_id, asker_ip, name):
        """Addresses for `name` among the running containers that share a network with the
        asker -- the container with address `asker_ip` on network `network_id`, where the
        query arrived -- or None. Like Docker's per-sandbox resolver, a container connected
        to several networks finds names on all of them, whichever gateway it asks."""
        rec = self.collection.objects.get(network_id)
        if rec is None or not self.containers:
            return None
        asker = None
        for c in self.members(rec):
            # Not `running`: the asker may query before the daemon has marked it started.
            if self._endpoint(c, rec).get("IPAddress") == asker_ip:
                asker = c
                break
        if asker is None:
            return None
        name = name.rstrip(".").lower()
        found = []
        for ep_net in (asker.record.get("NetworkSettings") or {}).get("Networks", {}).values():
            net = self.collection.objects.get(ep_net.get("NetworkID"))
            if net is None or net["Name"] == BRIDGE:
                continue                # the default bridge has no names (links only)
            for c in self.members(net):
                if not c.running:
                    continue
                ep = self._endpoint(c, net)
                names = {c.name.lower(), c.id[:12]}
                names.update(a.lower() for a in ep.get("Aliases") or [])
                hostname = (c.config.get("Hostname") or "").lower()
                if hostname:
                    names.add(hostname)
                if (name in names or (len(name) >= 12 and c.id.startswith(name))) \
                        and ep["IPAddress"] not in found:
                    found.append(ep["IPAddress"])
        return found or self._link_alias(asker, name)

    def _link_alias(self, asker, name):
        """On user-defined networks a link is a name only its owner resolves: `--link db:pg`
        (HostConfig.Links, or an endpoint's Links) makes "pg" mean db, for the asker alone."""
        links = list(asker.host_config.get("Links") or [])
        for ep in (asker.record.get("NetworkSettings") or {}).get("Networks", {}).values():
            links += ep.get("Links") or []
        for link in links:
            target, alias = parse_link(link)
            if alias.lower() != name:
                continue
            try:
                other = self.containers.get(target)
            except errors.NotFound:
                continue
            if not other.running:
                continue
            mine = {ep.get("NetworkID") for ep in asker.record["NetworkSettings"]["Networks"].values()}
            for ep in (other.record.get("NetworkSettings") or {}).get("Networks", {}).values():
                if ep.get("NetworkID") in mine and ep.get("IPAddress"):
                    return [ep["IPAddress"]]
        return None


def _all_of(problems):
    """One error for a list of them: the error itself when alone, else InvalidParameter whose
    message lists each on its own line, as moby's joined errors read."""
    if len(problems) == 1:
        return problems[0]
    return errors.InvalidParameter("\n".join(f"* {p.message}" for p in problems))


def parse_link(link):
    """"/db:/web/alias" (stored) or "db:alias" (CLI) -> (target, alias)."""
    target, _, alias = link.partition(":")
    target = target.lstrip("/")
    alias = alias.rsplit("/", 1)[-1] if alias else target
    return target, alias
