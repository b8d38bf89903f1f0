"""Names: how containers find each other -- embedded DNS, /etc/hosts, resolv.conf, links.

On user-defined networks the embedded resolver (dns.py, listening on each network's gateway)
answers, for a container on that network only: the container's name, its network aliases
(docker-compose puts the service name there), its short id (12 hex digits) and its hostname,
on every network the asker shares with the target. Other names go upstream: the asker's own
--dns servers, else the host's resolvers (`upstreams_for`).

The default bridge has no DNS, as in Docker: containers there find each other through legacy
links (`--link db:alias`), which add an /etc/hosts line and Docker's environment variables
(ALIAS_PORT_80_TCP=tcp://ip:80, ..._ADDR/_PORT/_PROTO, ALIAS_NAME, ALIAS_ENV_*). Links are
stored in HostConfig.Links as Docker stores them: "/db:/web/alias".

resolv.conf: the embedded DNS's address (with `ndots:0`) once the container is on a
user-defined network; else the host's nameservers minus loopback ones, which a container's
own network namespace cannot reach. A running container's resolv.conf is bind-mounted, so it
is rewritten in place (a rename would leave the container the old inode).
"""

import logging

from minidock import errors
from minidock.network_records import BRIDGE

log = logging.getLogger(__name__)


class ContainerNames:
    """DNS lookups, /etc/hosts, resolv.conf and links (a part of networks.Networks)."""

    # -- links ------------------------------------------------------------------------------

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

    def _links(self, c):
        """(alias, linked container, its address) for each of `c`'s legacy links whose target
        exists and has an address."""
        for link in c.host_config.get("Links") or []:
            target, alias = parse_link(link)
            try:
                other = self.containers.get(target)
            except errors.NotFound:
                continue
            ip = self.primary_ip(other)
            if ip:
                yield alias, other, ip

    def link_env(self, c):
        """Docker's legacy link variables (ALIAS_PORT_80_TCP=tcp://ip:80 ...)."""
        env = []
        for alias, other, ip in self._links(c):
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

    # -- /etc/hosts and resolv.conf ---------------------------------------------------------

    def etc_hosts(self, c, names):
        """Extra /etc/hosts lines: the container's own address and `names` ("FQDN HOSTNAME", or
        HOSTNAME), and its links. With an address of its own, its names are that address
        (`hostname -i`), as on Docker; without one (network none, host, another container's),
        127.0.1.1, as Debian writes for a machine's name (Docker writes no line then)."""
        lines = [f"{self.primary_ip(c) or '127.0.1.1'}\t{names}"]
        for alias, other, oip in self._links(c):
            names = [alias, other.config.get("Hostname") or other.id[:12], other.name]
            lines.append(f"{oip}\t" + " ".join(dict.fromkeys(names)))
        return lines

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

    # -- the embedded DNS -------------------------------------------------------------------

    def lookup(self, network_id, asker_ip, name):
        """Addresses for `name` among the running containers that share a network with the
        asker -- the container with address `asker_ip` on network `network_id`, where the
        query arrived -- or None. Like Docker's per-sandbox resolver, a container connected
        to several networks finds names on all of them, whichever gateway it asks."""
        rec = self.collection.objects.get(network_id)
        if rec is None or not self.containers:
            return None
        asker = None
        for c, ep in self.endpoints_on(rec):
            # Not `running`: the asker may query before the daemon has marked it started.
            if ep.get("IPAddress") == asker_ip:
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
            for c, ep in self.endpoints_on(net):
                if not c.running:
                    continue
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

    def upstreams_for(self, network_id, asker_ip):
        """The asker's own --dns servers, which its resolv.conf cannot name (the embedded DNS
        takes that place): Docker forwards to them instead of the host's."""
        rec = self.collection.objects.get(network_id)
        if rec is None or not self.containers:
            return None
        for c, ep in self.endpoints_on(rec):
            if ep.get("IPAddress") == asker_ip:
                servers = c.host_config.get("Dns") or []
                return [(s, 53) for s in servers if ":" not in s] or None
        return None


def parse_link(link):
    """"/db:/web/alias" (stored) or "db:alias" (CLI) -> (target, alias)."""
    target, _, alias = link.partition(":")
    target = target.lstrip("/")
    alias = alias.rsplit("/", 1)[-1] if alias else target
    return target, alias
