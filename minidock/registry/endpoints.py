"""Which URL a registry is spoken to at: HTTPS or plain HTTP, and docker.io's mirrors.

HTTPS first. Plain HTTP only for *insecure* registries: 127.0.0.0/8, ::1 and `localhost` by
default (as dockerd does), plus `--insecure-registry` CIDRs or host[:port]s. For those we try HTTPS
without certificate checks, then fall back to HTTP. A registry that speaks only HTTP but is not
insecure is refused with a message naming the flag (see session.py). Pulls of docker.io names try
each `--registry-mirror` before docker.io itself, whose v2 API answers at `registry-1.docker.io`.
"""

import ipaddress
import socket

from minidock import reference
from minidock.registry.auth import TokenCache, server_host

DEFAULT_API_HOST = "registry-1.docker.io"  # where docker.io's v2 API really answers
DEFAULT_INDEX_HOST = "index.docker.io"     # docker.io's v1 search lives here


class RegistryConfig:
    """The daemon's registry settings (--insecure-registry, --registry-mirror) and shared state.

    insecure: CIDRs ("10.0.0.0/8") and host[:port] names that may use plain HTTP / unchecked TLS.
    mirrors:  base URLs tried before docker.io for pulls of docker.io images.
    """

    DEFAULT_INSECURE_CIDRS = ("127.0.0.0/8", "::1/128")

    def __init__(self, insecure=(), mirrors=(), timeout=60.0, certs_dir="/etc/docker/certs.d"):
        self.insecure_cidrs = [ipaddress.ip_network(c) for c in self.DEFAULT_INSECURE_CIDRS]
        self.insecure_hosts = {"localhost"}
        for item in insecure:
            try:
                self.insecure_cidrs.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.insecure_hosts.add(server_host(item).lower())
        self.mirrors = [m.rstrip("/") for m in mirrors]
        self.timeout = timeout
        self.certs_dir = certs_dir
        self.tokens = TokenCache()

    def is_insecure(self, host):
        """True if `host[:port]` may be spoken to over plain HTTP: by name, or by any IP it resolves to
        (dockerd resolves the name and checks each address against the insecure CIDRs)."""
        host = host.lower()
        bare = _host_only(host)
        if host in self.insecure_hosts or bare in self.insecure_hosts:
            return True
        try:
            addrs = [ipaddress.ip_address(bare)]
        except ValueError:
            try:
                addrs = {ipaddress.ip_address(ai[4][0].split("%")[0])
                         for ai in socket.getaddrinfo(bare, None, proto=socket.IPPROTO_TCP)}
            except (socket.gaierror, UnicodeError, ValueError):
                return False
        return any(any(a in net for net in self.insecure_cidrs) for a in addrs)

    def endpoints(self, registry, for_push=False):
        """Base URLs to try, in order. Each is (url, verify_tls)."""
        if registry == reference.DEFAULT_DOMAIN:
            out = [] if for_push else [(m, not self.is_insecure(server_host(m))) for m in self.mirrors]
            return out + [(f"https://{DEFAULT_API_HOST}", True)]
        if self.is_insecure(registry):
            return [(f"https://{registry}", False), (f"http://{registry}", False)]
        return [(f"https://{registry}", True)]


def _host_only(hostport):
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    if hostport.count(":") == 1:
        return hostport.split(":", 1)[0]
    return hostport
