"""Container endpoints: a container's place on a network, allocated, stored, plugged in.

An endpoint is stored in the container's own record, under NetworkSettings.Networks.<name>,
exactly in the shape `docker inspect` shows: IPAddress, IPPrefixLen, Gateway, MacAddress
(02:42 and the address's four bytes unless one was asked for), NetworkID, EndpointID,
Aliases, IPAMConfig, DNSNames. The address is allocated when the container joins (at create
or connect) and kept until it leaves (disconnect or remove), so it survives stops and daemon
restarts.

The addresses taken on a network are counted from its members' records by the first join
after the daemon starts (one pass over every container), and from then on kept beside them,
as a set of integers per network: join adds the address it gives out, and an endpoint that
goes takes its address out (`release`). Only join gives out an address, and it does so with
the networks' lock held, as it reads the set; so a path that drops an endpoint without saying
so leaves its address counted as taken until the next start -- an address not given out --
and never the other way round. (Counting from the records at every create cost ~1-1.5 us per
container on the network: ~3 ms a create at 1,000 on this machine.)

Joining checks everything first (a requested address inside the subnet and free, no address
or alias on the default bridge, a valid MAC) and reports every problem at once; only then is
anything stored. A running container gets the interface at once (network.hotplug in the
daemon's namespace: a veth whose container end moves into the container's namespace as ethN);
a starting one gets all of them from the spawner (`spawn_network`, plugged by the init's first
step, network.attach_container, eth0 first, with the default route).

Events (`connect`, `disconnect`) are emitted here, in the backend.
"""

import ipaddress
import logging

from minidock import errors, ipam, network, store
from minidock.network_records import BRIDGE, PREDEFINED_MODES, predefined_id

log = logging.getLogger(__name__)


class ContainerEndpoints:
    """Endpoint allocation, connect/disconnect and NetworkSettings (a part of networks.Networks)."""

    def _ep_name(self, c, rec):
        for name, ep in (c.record.get("NetworkSettings") or {}).get("Networks", {}).items():
            if ep.get("NetworkID") == rec["Id"]:
                return name
        return rec["Name"]

    def _taken(self, rec):
        """The addresses taken on `rec` as integers (ipam.address_int): its reserved auxiliary
        addresses and its containers'. Counted from the records the first time, then kept
        (module docstring). Called with self.lock held; the set is changed only under it."""
        taken = self.taken_addresses.get(rec["Id"])
        if taken is None:
            taken = {ipam.address_int(a) for a in
                     (rec["IPAM"]["Config"][0].get("AuxiliaryAddresses") or {}).values()}
            taken.update(ipam.address_int(ep["IPAddress"]) for _, ep in self.endpoints_on(rec)
                         if ep.get("IPAddress"))
            self.taken_addresses[rec["Id"]] = taken
        return taken

    def release(self, endpoints):
        """The addresses of `endpoints`, dropped from a container's record, are free again."""
        with self.lock:
            for ep in endpoints:
                taken = self.taken_addresses.get(ep.get("NetworkID"))
                if taken is not None and ep.get("IPAddress"):
                    taken.discard(ipam.address_int(ep["IPAddress"]))

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

    # -- joining and leaving ----------------------------------------------------------------

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
            used = self._taken(rec)
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
            used.add(int(ip))
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
            self.release(c.record["NetworkSettings"]["Networks"].values())
            c.record["NetworkSettings"]["Networks"] = {}
            if len(problems) == 1:
                raise problems[0][1]
            raise _all_of([errors.InvalidParameter(f"invalid config for network {key}: {e.message}")
                           for key, e in problems])

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
        self.release([gone])
        if self.gateway is not None and gone.get("IPAddress"):
            self.gateway.drop_address(gone["IPAddress"])     # its flows through the stack end
        if c.running:
            self._repoint_resolver(c, gone.get("Gateway"))

    def leave_all(self, c):
        """Forget every endpoint of a removed container (its addresses are free again)."""
        self.stopped(c)
        ns_ = c.record.get("NetworkSettings") or {}
        self.release((ns_.get("Networks") or {}).values())
        ns_["Networks"] = {}

    # -- connect and disconnect (the API) ---------------------------------------------------

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
                self.release([settings.pop(rec["Name"])])
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
        return {"bridge": self.bridge_of(rec), "bridge_index": self.bridge_indexes.get(rec["Id"]),
                "address": ep["IPAddress"],
                "prefixlen": ep["IPPrefixLen"], "gateway": ep["Gateway"],
                "mac": ep["MacAddress"], "mtu": self._mtu(rec),
                "default_route": default_route and not rec.get("Internal")}

    # -- around a container's start; what inspect shows -------------------------------------

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

    def settings(self, c):
        """NetworkSettings for inspect, from the container's stored endpoints."""
        stored = c.record.get("NetworkSettings") or {}
        mode = c.host_config.get("NetworkMode") or "default"
        nets = {k: {f: x for f, x in v.items() if not f.startswith("_")}
                for k, v in (stored.get("Networks") or {}).items()}
        if mode in PREDEFINED_MODES:
            nets = {mode: {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
                           "DriverOpts": None, "NetworkID": predefined_id(mode), "EndpointID": "",
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


def _all_of(problems):
    """One error for a list of them: the error itself when alone, else InvalidParameter whose
    message lists each on its own line, as moby's joined errors read."""
    if len(problems) == 1:
        return problems[0]
    return errors.InvalidParameter("\n".join(f"* {p.message}" for p in problems))
