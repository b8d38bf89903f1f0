"""IP address management: which subnet a network gets, which address a container gets.

Docker's rules, which minidock follows so that addresses look the way users expect:

  - the default `bridge` network is 172.17.0.0/16 with gateway 172.17.0.1 (`--bip CIDR`
    changes both: `--bip 10.5.0.1/24` is gateway 10.5.0.1 on 10.5.0.0/24);
  - a user-defined network without a subnet gets the next free one from the default address
    pools: 172.17.0.0/16 ... 172.31.0.0/16 as whole /16s (the first is the bridge's), then
    192.168.0.0/16 cut into /20s. `--default-address-pool base=10.10.0.0/16,size=24` (repeatable)
    replaces that list, as for dockerd;
  - a subnet is "free" when no other network has an overlapping one, and when it overlaps no
    route of the host (read from /proc/net/route of the daemon's own, the host's, namespace):
    picking 192.168.0.0/20 on a host whose LAN is 192.168.1.0/24 would make the LAN
    unreachable to anything that follows those routes;
  - the gateway is the first address of the subnet; containers get the lowest free address
    of the subnet (or of `IPRange`), never the network address, the broadcast address or the
    gateway;
  - a container's MAC address is 02:42 followed by its IPv4 address (network.mac_for).

Everything here is pure computation over `ipaddress` objects (and, where a network has many
containers, their integers); the networks backend keeps the
allocations in its state file so that they survive a daemon restart.
"""

import ipaddress
import socket

from . import errors

DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"


def default_pools():
    """Docker's default address pools, as (base network, prefix length of each slice)."""
    pools = [(ipaddress.IPv4Network(f"172.{n}.0.0/16"), 16) for n in range(17, 32)]
    pools.append((ipaddress.IPv4Network("192.168.0.0/16"), 20))
    return pools


def parse_pool_flag(value):
    """`base=10.10.0.0/16,size=24` (dockerd's --default-address-pool) -> (network, size)."""
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    try:
        base = ipaddress.IPv4Network(fields["base"])
        size = int(fields.get("size", base.prefixlen))
    except (KeyError, ValueError) as e:
        raise errors.InvalidParameter(f"invalid default address pool {value!r}: {e}")
    if size < base.prefixlen or size > 30:
        raise errors.InvalidParameter(f"invalid default address pool {value!r}: size {size}")
    return base, size


def parse_bip(value):
    """`--bip 10.5.0.1/24` -> (subnet, gateway)."""
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as e:
        raise errors.InvalidParameter(f"invalid --bip {value!r}: {e}")
    return iface.network, iface.ip


def host_routes(path="/proc/net/route"):
    """The IPv4 destinations routed by the host (not the default route), as networks."""
    out = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 8:
                    continue
                dest = ipaddress.IPv4Address(int(parts[1], 16).to_bytes(4, "little"))
                mask = ipaddress.IPv4Address(int(parts[7], 16).to_bytes(4, "little"))
                net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
                if net.prefixlen:
                    out.append(net)
    except (OSError, ValueError):
        pass
    return out


def parse_subnet(value):
    try:
        return ipaddress.IPv4Network(value)
    except ValueError:
        try:
            ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            raise errors.InvalidParameter(f"invalid subnet {value}: invalid CIDR address: {value}")
        raise errors.InvalidParameter(f"invalid subnet {value}: it should be {ipaddress.IPv4Network(value, strict=False)}")


def next_subnet(used, routes, pools=None):
    """The first slice of the pools overlapping neither `used` (every network's subnet, the
    default bridge's included) nor `routes` (the host's)."""
    taken = list(used) + list(routes)
    for base, size in default_pools() if pools is None else pools:
        for net in base.subnets(new_prefix=size):
            if not any(net.overlaps(t) for t in taken):
                return net
    raise errors.Forbidden("could not find an available, non-overlapping IPv4 address pool "
                           "among the defaults to assign to the network")


def first_host(subnet):
    return next(subnet.hosts())


def allocate(subnet, gateway, used, ip_range=None):
    """The lowest address of `ip_range` (or `subnet`) that is not the network, broadcast,
    gateway or in `used` (IPv4Address objects or their integers, see `address_int`).

    Counted in integers: with N containers on a network the first free address is about N
    steps in, and an IPv4Address made per step cost ~1 us each (5 ms per create at 1,000)."""
    pool = ip_range or subnet
    reserved = {int(subnet.network_address), int(subnet.broadcast_address), int(gateway)}
    reserved.update(map(int, used))
    first, last = int(pool.network_address), int(pool.broadcast_address)
    if pool.prefixlen < 31:             # hosts(): not the pool's own network and broadcast
        first, last = first + 1, last - 1
    for n in range(first, last + 1):
        if n not in reserved:
            return ipaddress.IPv4Address(n)
    raise errors.Unavailable(f"no available IPv4 addresses on this network's address pools: "
                             f"{subnet}")


def address_int(text):
    """A dotted IPv4 address as the integer ipaddress uses (int(IPv4Address(text))), ~10x
    cheaper than making the object."""
    return int.from_bytes(socket.inet_aton(text), "big")


def check_requested(subnet, gateway, used, address):
    """Validate a user-chosen address (`--ip`): inside the subnet, not taken."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise errors.InvalidParameter(f"invalid IPv4 address: {address}")
    if ip not in subnet:
        raise errors.InvalidParameter(f"no configured subnet or ip-range contain the IP "
                                      f"address {address}")
    if ip in (subnet.network_address, subnet.broadcast_address) or ip == gateway or \
            int(ip) in set(map(int, used)):
        raise errors.Conflict(f"Address already in use")
    return ip
