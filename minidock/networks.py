"""The networks backend: Docker's network objects and container endpoints, without HTTP.

What a network is here
----------------------
`host` and `none` are predefined modes (the container keeps the daemon's network namespace,
or gets one with only `lo`). `bridge` (the default network) and every user-defined network
are Linux bridges in the daemon's network namespace (network.py), each with a subnet from
IPAM (ipam.py) whose first address, the gateway, sits on the bridge. The bridges are rebuilt
from the records at every start (the namespace dies with the daemon).

Where each part lives
---------------------
`Networks` is one object for the rest of the daemon, made of four parts, one module each:

    network_records.py    the network records (create, list, inspect, remove, prune) and
                          their bridges
    network_endpoints.py  containers' endpoints: join/leave, connect/disconnect, what the
                          spawner plugs in, NetworkSettings
    network_names.py      how containers find each other: embedded DNS lookups, /etc/hosts,
                          resolv.conf, legacy links
    network_ports.py      published ports (the proxy's listeners)

The pieces that run around a container's start, in order:

    publish(c)            bind its published ports on the host (fails the start cleanly,
                          before any process exists, with Docker's "port is already
                          allocated")
    spawn_network(c)      the spawner spec's "network": {"netns_pid", "endpoints"}; the
                          init plugs the veths in, first thing (network.attach_container)
    etc_hosts(c), resolv_conf(c)
                          the /etc files: own address and name, links; the embedded DNS on
                          the gateway for user-defined networks, the host's non-loopback
                          resolvers on the default bridge (as Docker)
    stopped(c)            listeners closed, outbound flows reset; the veths died with the
                          namespace

Outbound traffic
----------------
The daemon's namespace does not route (ip_forward=0). What a container sends beyond its
subnet goes to the bridge's MAC, and the user-mode TCP/IP stack (tcpip/) reads it there: one
`tcpip.Gateway` loop, one port per non-internal bridge (an AF_PACKET socket the keeper makes
on the bridge, network_records._tap), every connection re-originated as an ordinary socket of
the daemon in the host's namespace -- the host sees the daemon's address. 10.0.2.2
(slirp4netns's address for the host) is the host's 127.0.0.1 when the daemon runs with
--allow-host-loopback, refused otherwise; other loopback addresses and the container subnets
are never dialled.
"""

import ipaddress
import logging
import os
import threading

from minidock import dns, ipam, network, store
from minidock.network_endpoints import ContainerEndpoints
from minidock.network_names import ContainerNames, parse_link            # noqa: F401 (the API)
from minidock.network_ports import PublishedPorts
from minidock.network_records import BRIDGE, PREDEFINED_MODES, NetworkRecords, predefined_id  # noqa: F401
from minidock.tcpip import Gateway

log = logging.getLogger(__name__)

HOST_ALIAS = "10.0.2.2"     # the host's loopback, with --allow-host-loopback (slirp4netns's)


class Networks(NetworkRecords, ContainerEndpoints, ContainerNames, PublishedPorts):
    """Network records, endpoint allocation, the bridges, DNS and published ports."""

    def __init__(self, data_root, events, containers=None, bip=None, pools=None, dns_upstreams=None,
                 allow_host_loopback=False):
        """`events` announces prunes (minidock.events.Events); `containers` is anything with
        all() / get(ref) returning objects with .id, .name, .record, .config, .host_config,
        .pid, .running (set later with attach())."""
        self.containers, self.events = containers, events
        self.collection = store.Collection(os.path.join(data_root, "networks"), "network")
        for problem in self.collection.load():
            log.warning("skipping unreadable network state: %s", problem)
        self.lock = threading.RLock()
        self.taken_addresses = {}       # network id -> addresses taken there (network_endpoints)
        self.pools = pools
        self.netns = None               # network.DaemonNetns once started
        self.resolver = None
        self.published = {}             # container id -> portproxy.Published
        self.dns_upstreams = dns_upstreams
        # Outbound traffic: the user-mode TCP/IP stack (tcpip/) taps every non-internal bridge.
        self.allow_host_loopback = allow_host_loopback
        self.gateway = None             # tcpip.Gateway once started
        self.ports = {}                 # network id -> its tcpip port
        self.bridge_indexes = {}        # network id -> its bridge's ifindex (daemon namespace)
        subnet, gateway = ipam.parse_bip(bip) if bip else (
            ipaddress.IPv4Network(ipam.DEFAULT_BRIDGE_SUBNET), None)
        gateway = gateway or ipam.first_host(subnet)
        bridge = self._by_name(BRIDGE)
        config = [{"Subnet": str(subnet), "Gateway": str(gateway)}]
        if bridge is None:
            nid = predefined_id(BRIDGE)
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

    def start(self, spawner, netns=None):
        """Create the daemon's network namespace (or take `netns`, a network.DaemonNetns the
        daemon started earlier) and every bridge; serve DNS. Call once the spawner runs;
        failures are logged per network and leave that network unusable."""
        self.netns = netns or network.DaemonNetns()
        upstreams = self.dns_upstreams
        if upstreams is None:
            upstreams = [(ip, 53) for ip in dns.host_resolvers()]
        self.resolver = dns.Resolver(self.lookup, upstreams, self.upstreams_for)
        # One loop for every network's outbound traffic (tcpip/gateway.py): the containers
        # reach the host's network through it, and the host's 127.0.0.1 at HOST_ALIAS only
        # with --allow-host-loopback.
        self.gateway = Gateway(allow_host_loopback=self.allow_host_loopback, host_alias=HOST_ALIAS)
        threading.Thread(target=self.gateway.run, name="tcpip", daemon=True).start()
        for rec in list(self.collection.objects.values()):
            try:
                self._bring_up(rec)
            except OSError as e:
                log.warning("network %s: cannot create its bridge: %s", rec["Name"], e)

    def close(self):
        for pub in self.published.values():
            pub.close()
        self.published.clear()
        if self.gateway:
            self.gateway.stop()
        if self.resolver:
            self.resolver.close()
        if self.netns:
            self.netns.close()

    def stopped(self, c):
        """The container's process ended: close its listeners, reset its outbound flows
        (its namespace is gone: no FIN or RST will ever come from it)."""
        self.unpublish(c)
        if self.gateway is not None:
            for ep in ((c.record.get("NetworkSettings") or {}).get("Networks") or {}).values():
                if ep.get("IPAddress"):
                    self.gateway.drop_address(ep["IPAddress"])
