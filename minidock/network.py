"""The daemon's network namespace: bridges, veth pairs, and sockets born inside it.

Without root, a process cannot put a veth into the host's network namespace: the host's
namespace belongs to the initial user namespace, where the daemon has no CAP_NET_ADMIN. So,
like RootlessKit and Podman ("the rootless netns"), minidock builds its container networks
in a network namespace of its own:

    host network namespace          daemon network namespace (owned by the daemon's userns)
    ----------------------          -------------------------------------------------------
    daemon: API socket,             lo, and per network a bridge holding the gateway address
      published ports (listen),       docker0  172.17.0.1/16 ---- vethN ==== eth0 (container A)
      DNS forwarding to the host      br-<id>  172.18.0.1/16 ---- vethM ==== eth0 (container B)

The namespace is created at start-up by the *keeper*: a thread of the daemon, in the daemon's
user namespace, that calls `unshare(CLONE_NEWNET)`, brings `lo` up, and then serves one
request forever over a unix socket from the rest of the daemon: "give me a socket of this
family/type (bound to ADDRESS, listening)". A network namespace belongs to a *thread*, not to
a process (unlike a user or mount namespace, unshare(CLONE_NEWNET) does not need a
single-threaded caller), so only the keeper thread moves; `/proc/TID/ns/net` names its
namespace, and the keeper's TID is what the daemon hands around as its "pid". (It used to be
a process forked from the spawner: ~1.5 MB more of the engine's idle memory, the pages that
Python in two processes copies on write.) The socket is created *inside* the namespace and
handed back over SCM_RIGHTS; a socket keeps the namespace it was born in, so the daemon's
other threads -- which never leave the host's namespace, where they listen and dial -- can use
it:

    AF_NETLINK/NETLINK_ROUTE   the daemon creates and deletes bridges with netlink.py
    AF_INET/SOCK_STREAM        the port proxy's connection to a container (172.18.0.2:80)
    AF_INET/SOCK_DGRAM + bind  the embedded DNS server on each gateway address, port 53
    AF_PACKET + bind(bridge)   every frame on a bridge, for a user-mode TCP/IP stack
    ... with netns_pid=P       the same, born in container P's namespace instead (the
                               keeper setns()es there and back): a netlink socket there is
                               how a *running* container gets another interface (hot-plug)

When the daemon stops, the keeper thread ends with it, and with the last of its containers
the namespace and every bridge in it vanish; a restarted daemon rebuilds the bridges from its
network state. Nothing is left on the host to clean up.

IP forwarding is switched off in the daemon's namespace (net.ipv4.ip_forward=0): a packet from one bridge is never routed to another, which is what
isolates networks from one another without iptables. A container can address the gateway of
another network (it is a local address of the namespace), and nothing else there.

Attaching a container (`attach_container`, a named step of the container start sequence)
------------------------------------------------------------------------------------------
It is the container init's first step (ns.setup_network), right after its clone(2) with
CLONE_NEWNET, before anything in the container can run and before any nested user namespace
(the init still holds every capability over the daemon's namespaces):

    1. open /proc/self/ns/net, /proc/KEEPER/ns/net  while /proc is still the daemon's view
                                                     (the pivot_root comes later)
    2. setns(KEEPER's) -> netlink socket           a socket *in the daemon namespace*
    3. setns(back to the container namespace)      the init's own namespace again
    4. one batch there: RTM_NEWLINK veth per endpoint, the daemon end (kernel-named vethN) up
       with IFLA_MASTER = the bridge (the index the daemon got when it made the bridge), the
       peer named eth0 with the MAC 02:42:<ip> created straight in the container's namespace
       (IFLA_NET_NS_FD of step 1); NLM_F_ECHO returns the new ends, whose IFLA_LINK is the
       peer's ifindex in the container's namespace
    5. IPv6 off on each ethN (disable_ipv6: Docker's for an IPv4-only network), then
       one batch in the container's namespace: lo up; per endpoint its address,
       arp_notify=1 (the kernel announces the address with a gratuitous ARP as the link comes
       up), the link up, arp_notify=0 again (as Docker's containers have it), the default
       route via the gateway (eth0 only, not for --internal networks)

Two sendmsg(2) calls, each answered by one ack (netlink.Rtnl.apply), whatever the number of
endpoints. Measured with `scripts/profile-start --network bridge`, the step took 2.0 ms of the
start: 0.23 the sockets and setns calls, 1.17 the kernel making the veth pair, 0.44 the
second batch.

Made ahead (`VethAhead`): steps 1-4 need nothing of the request but the bridge and the MTU,
so a pooled init (ns.spawn_pooled_init) whose last run had an endpoint makes that veth while
it waits, and brings eth0 up, with no address and IPv6 off: silent, but its bridge port is
forwarding by the time a request comes. A request on the same bridge takes it: step 5 gives
eth0 its address, then its MAC, which announces it (configure_calls: more reliably than the
announcement at `up`), and the step takes ~0.6 ms. A request it does not fit is never handed
to it (deleting a veth costs an RCU grace period: 10-20 ms here); the daemon gives that
init up instead (spawner.Spawner._claim_pooled; spawnerloop, "The pool"). What you can
observe: an idle pooled init's namespace (`nsenter -t POOLED -n ip link`) shows `eth0@ifN`
up, and the keeper's shows ifN, a vethM with `master docker0`.

Step 2 works because the keeper's namespace is owned by the daemon's user namespace, where
the init holds CAP_SYS_ADMIN; the init is single-threaded, which setns(2) requires. The
container end dies with the container's namespace, and the kernel deletes both ends of a
veth together: nothing to clean up when the container stops.

Observe it: `nsenter -t KEEPER -U -n ip -d link` (as the daemon's user) shows the bridges
and vethN with `master docker0`; `cat /sys/class/net/eth0/address` inside a container shows
02:42:ac:11:00:02 for 172.17.0.2.
"""

import errno
import json
import os
import socket
import time

from . import errors, netlink, ns, syscalls

DEFAULT_MTU = 1500


# --- the keeper: the thread holding the daemon's network namespace -----------------------------

def _keeper_main(sock, started):
    """The keeper thread: unshare the network namespace (this thread's alone), set it up, report
    `started(tid, None)` (or `started(None, error)`), then serve `sock` until EOF."""
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        # A new namespace inherits the host's IPv4 settings (net.core.devconf_inherit_init_net
        # = 0), ip_forward=1 included on many hosts: switch routing between bridges off, it is
        # what keeps networks apart. /proc/sys/net shows the writer's (thread's) namespace.
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("0")
        # No IPv6 here (minidock's networks are IPv4; a container keeps it on lo, and its
        # ethN have it disabled, as Docker's do: disable_ipv6): the daemon end of every veth
        # would otherwise get a link-local address, DAD and
        # MLD reports at each start and their undoing at each exit, ~0.1-0.3 ms of CPU per
        # container. Before any bridge exists, so "default" covers every link made later.
        for conf in ("all", "default"):
            try:
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")
            except OSError:
                pass                    # a kernel without IPv6 (or refusing): only a cost
        rtnl = netlink.Rtnl()
        rtnl.request(netlink.pack_set_link, rtnl.link("lo")["index"], up=True)
        rtnl.close()
    except BaseException as e:
        sock.close()
        started(None, e)
        return
    import threading                    # (loaded by the daemon already; not in the spawner)
    started(threading.get_native_id(), None)
    try:
        _serve(sock)
    finally:
        sock.close()                    # and the thread ends: its namespace lives on in
                                        # the containers still in it, if any


def _serve(sock):
    """Answer socket requests until the daemon closes its end (one request, one reply)."""
    while True:
        try:
            data = sock.recv(65536)
        except InterruptedError:
            continue
        if not data:
            return
        req = json.loads(data)
        try:
            fd = _make_descriptor(req)
        except OSError as e:
            sock.send(json.dumps({"errno": e.errno or 0, "message": str(e)}).encode())
            continue
        try:
            socket.send_fds(sock, [b'{"ok": true}'], [fd])
        finally:
            os.close(fd)


def _make_descriptor(req):
    """A descriptor made in the keeper's namespace, or with "netns_pid" in that process's: a
    socket, or with "path" a /proc/sys/net file opened for writing (which, like a socket,
    stays with the namespace it was opened in)."""
    if req.get("netns_pid"):
        # A descriptor in a container's namespace: in and straight back out. Both namespaces are
        # owned by the daemon's user namespace, where we are root, so setns(2) allows both.
        # thread-self, not self: /proc/self/ns/net is the main thread's, the host's.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns.join_netns(req["netns_pid"])
            try:
                return _make_descriptor(dict(req, netns_pid=None))
            finally:
                syscalls.setns(home, syscalls.CLONE_NEWNET, "the daemon's network namespace")
        finally:
            os.close(home)
    if req.get("path"):
        return os.open(req["path"], os.O_WRONLY | os.O_CLOEXEC)
    s = socket.socket(req["family"], req["type"] | socket.SOCK_CLOEXEC, req.get("proto", 0))
    try:
        if req.get("reuse"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if req.get("device"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, req["device"].encode())
        if req.get("bind") is not None:
            s.bind(tuple(req["bind"]))
        if req.get("listen"):
            s.listen(req["listen"])
    except BaseException:
        s.close()
        raise
    return s.detach()


class DaemonNetns:
    """The daemon's handle on its network namespace (thread-safe)."""

    def __init__(self):
        """Start the keeper thread and wait until its namespace is up (~7 ms, the kernel's
        work, with the GIL released); raises what set-up raised."""
        import threading        # the daemon's side only: the spawner loads this module without it
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        ready = threading.Event()
        outcome = []

        def started(tid, error):
            outcome.append((tid, error))
            ready.set()

        threading.Thread(target=_keeper_main, args=(theirs, started), name="netns-keeper",
                         daemon=True).start()
        ready.wait()
        tid, error = outcome[0]
        if error is not None:
            mine.close()
            raise error
        self.pid = tid                  # /proc/TID/ns/net: the namespace, for inits to join
        self._sock = mine
        self._lock = threading.Lock()
        self._rtnl = netlink.Rtnl(self.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                              netlink.NETLINK_ROUTE, bind=(0, 0)))
        self._rtnl_lock = threading.Lock()

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0, bind=None,
               listen=0, reuse=False, device=None, netns_pid=None):
        """A socket created inside the daemon's network namespace (or, with `netns_pid`, in
        the network namespace of that process: a running container's)."""
        return socket.socket(fileno=self._descriptor(
            {"family": int(family), "type": int(type), "proto": proto, "bind": bind,
             "listen": listen, "reuse": reuse, "device": device, "netns_pid": netns_pid}))

    def open_in(self, path, netns_pid):
        """A descriptor of the /proc/sys/net file `path` of process `netns_pid`'s network
        namespace, open for writing (see disable_ipv6)."""
        return self._descriptor({"path": path, "netns_pid": netns_pid})

    def _descriptor(self, req):
        with self._lock:
            self._sock.send(json.dumps(req).encode())
            data, fds = syscalls.recv_fds(self._sock, 65536, 1, socket.MSG_CMSG_CLOEXEC)
        if not data:
            raise errors.Unavailable("the daemon's network namespace is gone")
        reply = json.loads(data)
        if "errno" in reply:
            raise OSError(reply["errno"], reply["message"])
        return fds[0]

    def rtnl(self, fn, *args, **kw):
        """Run `fn(rtnl, ...)` with the namespace's netlink socket, one caller at a time."""
        with self._rtnl_lock:
            return fn(self._rtnl, *args, **kw)

    def close(self):
        self._sock.close()
        self._rtnl.close()


# --- bridges -------------------------------------------------------------------------------------

def create_bridge(rtnl, name, gateway, prefixlen, mtu=DEFAULT_MTU):
    """A bridge holding the gateway address, up (`ip link add NAME address MAC type bridge;
    ip addr add GW/P dev NAME; ip link set NAME up`). A half-made bridge is deleted before
    raising.

    The MAC is the bridge's own, random in 02:42:xx:xx:xx:xx as Docker's are: a bridge made
    without one takes the lowest MAC of its ports, and takes another whenever a port comes or
    goes -- each container start and exit, each veth a pooled init makes ahead. The gateway's
    MAC would then change under every running container, whose ARP entry for it keeps the old
    one until it goes stale: its frames to the gateway (DNS, the way out) are lost meanwhile.
    A MAC given at creation is fixed (the kernel's NET_ADDR_SET)."""
    mac = "02:42:" + ":".join(f"{b:02x}" for b in os.urandom(4))
    rtnl.request(netlink.pack_new_bridge, name, mtu=mtu, mac=mac)
    try:
        index = rtnl.link(name)["index"]
        rtnl.request(netlink.pack_new_addr, index, gateway, prefixlen)
        rtnl.request(netlink.pack_set_link, index, up=True)
    except BaseException:
        delete_link(rtnl, name)
        raise
    return index


def delete_link(rtnl, name):
    """`ip link del NAME`; a link that is already gone is fine."""
    link = rtnl.link(name)
    if link is not None:
        rtnl.request(netlink.pack_del_link, link["index"])


def bridge_name(network_id, name):
    return "docker0" if name == "bridge" else f"br-{network_id[:12]}"


def valid_mac(text):
    """A MAC address as Docker accepts one: six hex octets separated by colons."""
    parts = str(text).split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in p)
                                   for p in parts)


def mac_for(ip):
    """Docker's MAC for an IPv4 address: 02:42 and the four address bytes."""
    # inet_pton, not ipaddress: this module is loaded in the spawner, and ipaddress is ~0.3 MB
    return "02:42:" + ":".join(f"{b:02x}" for b in socket.inet_pton(socket.AF_INET, str(ip)))


# --- attaching a container: the init's first step ---------------------------------------------

@syscalls.Step("open the network namespaces")
def open_namespaces(keeper):
    """(own, daemon's): O_CLOEXEC descriptors of the calling process's network namespace and
    of the keeper's (`keeper`: its TID). Opened by path while /proc is still the daemon's
    view, before the init's pivot_root replaces its root with the container's."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return own, os.open(f"/proc/{int(keeper)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(own)
        raise


@syscalls.Step("connect the container to its networks")
def attach_container(network, ahead=None):
    """Give the calling process's (fresh) network namespace lo up and one ethN per endpoint.
    The first of the init's steps: it opens the namespaces by path (open_namespaces).

    `network` = {"netns_pid": the keeper thread's TID, "endpoints": [{"bridge", "bridge_index", "address",
    "prefixlen", "gateway", "mac", "mtu", "default_route"}...]}. Two netlink batches in all,
    whatever the number of endpoints: every veth from the daemon's side, then lo, every
    address, setting, link and route from the container's side.

    `ahead`: the veth a pooled init made for the first endpoint while it waited (VethAhead,
    one that fits the request), its eth0 up already: it needs its address and MAC (which
    announces it: configure_calls), and with no other endpoint, the first batch and the trip
    through the daemon's namespace are skipped.

    Returns a LateAnnouncement for the interfaces that came up here (their announcement at
    `up` is best effort, see configure_calls), or None when there are none."""
    endpoints = network.get("endpoints") or []
    named = [(f"eth{i}", ep) for i, ep in enumerate(endpoints)]
    inside, indexes = (ahead.rtnl, [ahead.index]) if ahead else (None, [])
    late = []                           # (ifindex, daemon end's, MAC) of those that come up here
    outside = None
    try:
        if len(named) > len(indexes):
            # The veths first: the container's side configures the ends they put there.
            inside, ends, outside = veths_from_the_daemon(
                network["netns_pid"], named[len(indexes):], inside, keep_outside=True)
            late = [(index, port, ep["mac"])
                    for (index, port), ep in zip(ends, endpoints[len(indexes):]) if ep.get("mac")]
            indexes = indexes + [index for index, _ in ends]
        elif inside is None:            # no endpoint at all: lo only
            inside = netlink.Rtnl()
        calls = [(netlink.pack_set_link, (netlink.LOOPBACK_IFINDEX,), {"up": True})]
        for i, (index, ep) in enumerate(zip(indexes, endpoints)):
            calls += configure_calls(index, ep, up_ahead=ahead is not None and i == 0)
        inside.apply(calls)
    except BaseException:
        for sock in (inside, outside):
            if sock is not None:
                sock.close()
        raise
    if not late:
        inside.close()
        if outside is not None:
            outside.close()
        return None
    return LateAnnouncement(inside, outside, late)


class LateAnnouncement:
    """The announcement, again, of interfaces brought up by the start itself (not made ahead):
    the one the kernel sends at `up` often meets a bridge port that is not forwarding yet
    (configure_calls). Setting an interface's MAC -- even to the one it has -- with
    arp_notify=1 announces it again (NETDEV_CHANGEADDR). The init does it a few steps later
    (`announce`), while it still holds CAP_NET_ADMIN over its namespace, and only once the
    daemon end's bridge port is forwarding (wait_forwarding): a few steps are usually time
    enough for the kernel's linkwatch work, but not always on a busy machine. Both netlink
    sockets stay open until then: `rtnl` in the container's namespace, `outside` in the
    daemon's."""

    def __init__(self, rtnl, outside, links):
        self.rtnl, self.outside, self.links = rtnl, outside, links   # [(ifindex, port, MAC)]

    @syscalls.Step("announce the container's addresses again")
    def announce(self):
        try:
            wait_forwarding(self.outside, [port for _, port, _ in self.links])
            calls = []
            for index, _, mac in self.links:
                calls += announce_calls(index, {"mac": mac})
            self.rtnl.apply(calls)
        finally:
            self.rtnl.close()
            self.outside.close()


FORWARDING_WAIT = 0.25                  # seconds: then announce anyway (best effort)


def wait_forwarding(outside, ports, clock=time.monotonic, sleep=time.sleep):
    """Return once each of `ports` (daemon ends of veths, asked through `outside`, a netlink
    socket in the daemon's namespace) is a bridge port in the forwarding state -- or is gone
    -- or after FORWARDING_WAIT seconds, or at once when a port cannot be asked about: the
    announcement that follows is best effort, and never fails a start or a connect. Returns
    whether they all were.

    Why: a frame that arrives at a port not forwarding yet is dropped. A veth end comes up
    with its peer, and its port goes from disabled to forwarding (no STP) only when the
    kernel's linkwatch work handles the carrier, after the request that set `up` returned. In
    a scratch namespace, announcing right after `up` lost 35 of 100 announcements; asking
    the daemon end's state first lost none. Its first answer was "forwarding" every time,
    where reading /sys/class/net/V/brport/state at that moment showed "disabled" 32 times in
    100: the request seems to wait for the kernel's pending carrier work. Asking the
    container's end instead lost 21 of 100: the two ends are two links."""
    deadline = clock() + FORWARDING_WAIT
    waiting = [p for p in ports if p]
    while True:
        left = []
        for port in waiting:
            try:
                [reply] = outside.request(netlink.pack_get_link, index=port)
            except OSError as e:
                if e.errno == errno.ENODEV:
                    continue            # deleted meanwhile: nothing to wait for
                return False
            if netlink.parse_link(reply)["port_state"] != netlink.BR_STATE_FORWARDING:
                left.append(port)
        if not left:
            return True
        if clock() >= deadline:
            return False
        waiting = left
        sleep(0.001)


def veths_from_the_daemon(keeper, named_endpoints, inside=None, keep_outside=False):
    """Make a veth per (ifname, endpoint) with a netlink socket in the keeper's namespace,
    each container end straight into the calling process's namespace (make_veths). Returns
    (`inside` or a new netlink socket in the caller's namespace, [(container end's ifindex,
    daemon end's ifindex)], and with `keep_outside` the socket in the daemon's namespace,
    left open: else None).

    A netlink socket stays in the namespace it was made in; the caller must not: setns(2)
    there, make the socket, and straight back. Setns needs CAP_SYS_ADMIN over the keeper's
    namespace (an init holds it: the daemon's user namespace owns that namespace) and a
    single-threaded caller."""
    own, daemons = open_namespaces(keeper)
    made = None
    try:
        syscalls.setns(daemons, syscalls.CLONE_NEWNET, "the daemon's network namespace")
        outside = netlink.Rtnl()
        try:
            syscalls.setns(own, syscalls.CLONE_NEWNET, "the container's network namespace")
            if inside is None:
                inside = made = netlink.Rtnl()
            names = [name for name, _ in named_endpoints]
            ends = veth_ends(inside, names, make_veths(outside, own, named_endpoints))
            for name in names:
                disable_ipv6(name)      # (we are back in our namespace: /proc/sys/net is its)
            kept, outside = (outside, None) if keep_outside else (None, outside)
            return inside, ends, kept
        except BaseException:
            if made is not None:
                made.close()
            raise
        finally:
            if outside is not None:
                outside.close()
    finally:
        os.close(own)
        os.close(daemons)


class VethAhead:
    """A veth a pooled init (ns.spawn_pooled_init) made while it waited for its request, for the
    first endpoint of the last run's network: the daemon end up on that network's bridge, the
    other end `eth0` in the init's namespace, up, with no address and IPv6 disabled. A request
    whose first endpoint is on the same bridge, with the same MTU, takes it: its address, MAC
    (the announcement) and route are all the start has left (attach_container). The kernel
    makes a veth in ~1 ms; deleting one costs an RCU grace period (synchronize_net in
    unregister_netdevice: 10-20 ms here), so a request it does not fit (`none`, another
    network) is never handed to this init: the daemon gives the init up and the spawner
    clones another (spawner.Spawner._claim_pooled; spawnerloop: the pool), whose namespace
    the kernel tears down, veth and all, off everyone's path."""

    def __init__(self, key, rtnl, index):
        self.key, self.rtnl, self.index = key, rtnl, index

    @staticmethod
    def key(network):
        """What a veth made ahead for `network` is made for, and what a request's network must
        match to take it: (keeper TID, bridge index, MTU) of its first endpoint; None for no
        endpoint, or one whose bridge has no index yet (asked by name at the start) or without
        a MAC (setting it announces the endpoint: configure_calls)."""
        if not (isinstance(network, dict) and network.get("endpoints")):
            return None
        first = network["endpoints"][0]
        if not first.get("bridge_index") or not first.get("mac"):
            return None
        return (network["netns_pid"], first["bridge_index"], first.get("mtu") or DEFAULT_MTU)

    @classmethod
    @syscalls.Step("make the veth ahead")
    def make(cls, key):
        """In a pooled init, before its request: the veth for `key` (VethAhead.key). Any
        failure (the bridge gone meanwhile, say) ends the idle init: the spawner logs it and
        clones another (see spawnerloop, "The pool")."""
        keeper, bridge_index, mtu = key
        inside, [(index, _)], _ = veths_from_the_daemon(
            keeper, [("eth0", {"bridge_index": bridge_index, "mtu": mtu})])
        try:
            # Up now, without an address (and IPv6 disabled: silent on the bridge), so that
            # the kernel has its bridge port forwarding long before the request announces it.
            inside.request(netlink.pack_set_link, index, up=True)
        except BaseException:
            inside.close()
            raise
        return cls(key, inside, index)

    def fits(self, network):
        return VethAhead.key(network) == self.key

    @syscalls.Step("remove the veth made ahead")
    def remove(self):
        """Delete the pair (from our end: the kernel deletes both), for a request it does not
        fit. The daemon hands none such (see the class): this costs a grace period."""
        try:
            self.rtnl.request(netlink.pack_del_link, self.index)
        finally:
            self.rtnl.close()


def make_veths(outside, peer_netns_fd, named_endpoints):
    """One veth per (ifname, endpoint), in one batch on `outside` (a netlink socket in the
    daemon's namespace): the daemon end up on the endpoint's bridge, the other end named
    `ifname`, with the endpoint's MAC, created straight in the namespace of `peer_netns_fd`.
    Returns per veth (the container end's ifindex in its namespace, the daemon end's) from
    the kernel's echoes, None for what the kernel did not echo (see veth_ends)."""
    calls = []
    for ifname, ep in named_endpoints:
        # The daemon end gets a kernel-chosen name (vethN): a name derived from the container
        # could still be taken by the previous run's veth, which the kernel deletes lazily.
        calls.append((netlink.pack_new_veth, ("", ifname),
                      {"peer_netns_fd": peer_netns_fd, "mtu": ep.get("mtu") or DEFAULT_MTU,
                       "master": _bridge_index(outside, ep), "peer_mac": ep.get("mac"),
                       "up": True, "echo": True}))
    return [_echoed_ends(ifname, echoes)
            for (ifname, _), echoes in zip(named_endpoints, outside.apply(calls, echo=True))]


def _echoed_ends(ifname, echoes):
    """(container end's ifindex, daemon end's) from what the kernel echoed for one new veth:
    the local end (vethN), whose IFLA_LINK is its peer's index, and -- should a kernel echo
    both ends -- the peer itself, the one named `ifname`. None for what was not echoed."""
    links = [netlink.parse_link(p) for p in echoes]
    peer = next((link for link in links if link["name"] == ifname), None)
    local = next((link for link in links if link["name"] != ifname and link["link"]), None)
    if peer is not None:
        return peer["index"], peer["link"] or (local and local["index"])
    if local is not None:
        return local["link"], local["index"]
    return None, None


def veth_ends(inside, names, echoed):
    """[(ifindex, its peer's ifindex in the daemon's namespace)] of the links `names` in the
    namespace of `inside` (a netlink socket there): `echoed` (make_veths) where the kernel
    echoed both, else asked by name (a veth's IFLA_LINK is its peer's index). Linux honours
    NLM_F_ECHO on RTM_NEWLINK since 6.2; Debian 12's own 6.1 answers with the ack alone."""
    out = []
    for name, (index, port) in zip(names, echoed):
        if not (index and port):
            link = inside.link(name)
            if link is None:
                raise OSError(errno.ENODEV, f"{name} did not appear in the container's namespace")
            index, port = link["index"], link["link"]
        out.append((index, port))
    return out


def _bridge_index(outside, ep):
    """The ifindex of the endpoint's bridge: the daemon's, given when it made the bridge (the
    kernel does not reuse an index before 2^31 others, so a bridge deleted since makes the
    veth fail with ENODEV rather than land elsewhere), else asked by name."""
    if ep.get("bridge_index"):
        return ep["bridge_index"]
    bridge = outside.link(ep["bridge"])
    if bridge is None:
        raise OSError(19, f"bridge {ep['bridge']} does not exist in the daemon's namespace")
    return bridge["index"]


def configure_calls(index, ep, up_ahead=False):
    """The container's side of one endpoint, as netlink calls for one batch, in this order:

        ip addr add ADDRESS/PREFIXLEN dev X
        sysctl net.ipv4.conf.X.arp_notify=1     before `up`: the kernel announces the
                                                address when the link comes up
        ip link set X up
        sysctl net.ipv4.conf.X.arp_notify=0     what Docker's containers show (the
                                                announcement is out: it is sent during `up`)
        ip route add default via GATEWAY        needs the address's subnet route, made by
                                                the first step (not for --internal)

    arp_notify is the announcement: on NETDEV_UP the kernel sends a gratuitous ARP (an ARP
    request for the address, from itself) for every address of the link, before the
    request that set IFF_UP returns. A restarted
    container has the same address and MAC, and its previous veth can linger on the bridge
    until the kernel finishes destroying the old namespace (lazily, seconds under load):
    until the bridge hears from the new port, it sends the container's frames to the dead
    one. The announcement teaches the bridge (and the gateway's neighbour table) where the
    address lives now. (An AF_PACKET socket sending it ourselves costs an RCU grace period
    when closed -- packet_release() calls synchronize_net(), 10-20 ms here -- on the start
    path; the kernel's own announcement costs nothing extra.)

    The announcement at `up` is best effort: the bridge port (the daemon's end) comes up with
    the carrier, which the kernel's linkwatch work turns on *after* the request that set
    IFF_UP, and a frame arriving at a port still disabled is dropped (in a scratch namespace,
    2 announcements of 20 were lost on one kernel; on Linux 6.18 every one of 100 was: the
    same work attaches the container end's transmit queue, which drops until then). Such an
    interface is therefore announced again once its port forwards (wait_forwarding): by the
    init a few steps later (LateAnnouncement), by the daemon after a hot-plug (hotplug). With
    `up_ahead` -- a VethAhead's eth0, up since before the request, its port forwarding -- the
    announcement comes from setting the endpoint's MAC instead, with arp_notify=1 (on
    NETDEV_CHANGEADDR the kernel announces as on NETDEV_UP), and is not lost (20 of 20):

        ip addr add ADDRESS/PREFIXLEN dev X
        sysctl net.ipv4.conf.X.arp_notify=1
        ip link set X address MAC               a veth may change its MAC while up
        sysctl net.ipv4.conf.X.arp_notify=0
        ip route add default via GATEWAY"""
    calls = [(netlink.pack_new_addr, (index, ep["address"], ep["prefixlen"]), {})]
    calls += announce_calls(index, {"mac": ep["mac"]} if up_ahead else {"up": True})
    if ep.get("default_route"):
        # EEXIST: an earlier network gave the default route, it stays
        calls.append((netlink.pack_new_route, (), {"gateway": ep["gateway"]}, (errno.EEXIST,)))
    return calls


def announce_calls(index, change):
    """`change` to link `index` (pack_set_link's keywords: up, or a MAC) with arp_notify=1 around
    it, so that the kernel announces the link's addresses as it applies the change, then 0 again
    (what Docker's containers show)."""
    return [(netlink.pack_set_inet_conf, (index, {netlink.IPV4_DEVCONF_ARP_NOTIFY: 1}), {}),
            (netlink.pack_set_link, (index,), change),
            (netlink.pack_set_inet_conf, (index, {netlink.IPV4_DEVCONF_ARP_NOTIFY: 0}), {})]


def disable_ipv6(ifname, opener=None):
    """`sysctl net.ipv6.conf.IFNAME.disable_ipv6=1` in the caller's network namespace (or in
    the one `opener(path)` opens the file in, returning a descriptor: DaemonNetns.open_in):
    what Docker (26 and later) does to a container's interface on an IPv4-only network --
    and minidock's networks are IPv4 only. Before the link comes up, so it never gets a
    link-local address, nor sends the DAD, router solicitation and MLD frames that go with
    one. /proc/sys/net is the namespace of whoever opens it. A kernel without IPv6 has no
    such file, and nothing to disable; a daemon whose /proc/sys is read-only (inside another
    container) leaves the link-local address be (Docker 27 refuses to start the container)."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    try:
        fd = opener(path) if opener else os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EROFS, errno.EACCES, errno.EPERM):
            return
        raise
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def hotplug(netns, init_pid, ifname, ep):
    """Connect a *running* container: the same veth, made from the daemon with a netlink
    socket the keeper opened inside the container's namespace (`docker network connect`),
    announced at `up` and again once the daemon end's port forwards, as at a start."""
    inside = netlink.Rtnl(netns.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE,
                                       bind=(0, 0), netns_pid=init_pid))
    fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        [(index, port)] = veth_ends(inside, [ifname], netns.rtnl(make_veths, fd, [(ifname, ep)]))
        disable_ipv6(ifname, lambda path: netns.open_in(path, init_pid))
        inside.apply(configure_calls(index, ep))
        if ep.get("mac"):               # again, once its port forwards (LateAnnouncement)
            netns.rtnl(wait_forwarding, [port])
            inside.apply(announce_calls(index, {"mac": ep["mac"]}))
    finally:
        os.close(fd)
        inside.close()


def unplug(netns, init_pid, ifname):
    """Remove `ifname` from a running container; its veth peer on the bridge goes with it."""
    inside = netlink.Rtnl(netns.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE,
                                       bind=(0, 0), netns_pid=init_pid))
    try:
        # by name, in one request; ENODEV: it is gone already, which is what was asked
        inside.apply([(netlink.pack_del_link, (), {"name": ifname}, (errno.ENODEV,))])
    finally:
        inside.close()
