"""Published ports: `-p [ip:][hostPort:]containerPort[/proto]` and `-P`, as the container starts.

The proxy (portproxy.py) listens in the host's network namespace, where the daemon lives, and
for each connection dials the container's primary address with a socket made inside the
daemon's network namespace. `publish` binds every listener before the container's process
exists, so "port is already allocated" fails the start cleanly; `stopped` closes them.
NetworkSettings.Ports and the `Ports` of `docker ps` rows are built from what was bound.
"""

import socket

from minidock import portproxy


class PublishedPorts:
    """The published ports of running containers (a part of networks.Networks)."""

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

    def unpublish(self, c):
        """The container's process ended: close its listeners."""
        pub = self.published.pop(c.id, None)
        if pub is not None:
            pub.close()

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
