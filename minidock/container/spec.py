"""The runtime spec: everything the spawner needs to start a container's init, as one dict.

The spawner (minidock/spawner.py, then ns.py in the child) turns this into the linear set-up
sequence: namespaces, id maps, the rootfs mount, volume binds, the generated /etc files bound
over the image's, pivot_root, limits, capabilities, user, exec. Keys:

    rootfs, argv, env, cwd, user, group_add, tty, hostname, network, shm_size,
    readonly_rootfs, mounts [{source, target, readonly}], etc_files {container path: host file},
    ulimits, cap_add, cap_drop, privileged, no_new_privileges, console_socket (with a TTY: the
    init makes its pty and sends the master over stdin, see stdio.py), keep_id ({uid, gid}
    of the daemon's user, for UsernsMode keep-id), and cgroup (a directory whose
    cgroup.procs the init joins before anything else runs) when cgroups are usable.

`network` is "host" (stay in the daemon's network namespace), "none" (a new one with only
loopback), {"join_pid": pid} (share another container's) or, for bridge networks, what
Networks.spawn_network gives: the daemon namespace's keeper and the endpoints to plug in.

The generated /etc files live in the container's directory, not its rootfs, so `docker diff`
does not see them and they can be rewritten for every start: /etc/hostname, /etc/hosts (the
usual localhost lines, the container's own name, `--add-host` entries) and /etc/resolv.conf
(the host's, with `--dns`, `--dns-search`, `--dns-option` applied; no nameserver without a
network).
"""

from minidock import errors, ns, store
from minidock.container.config import DEFAULT_SHM_SIZE, network_mode
from minidock.container.lifecycle import RUNNING

HOST_RESOLV_CONF = "/etc/resolv.conf"
HOSTS_HEADER = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
                "ff02::2\tip6-allrouters"]


def hostname(c):
    return c.config.get("Hostname") or c.id[:12]


def network(c, get_container, networks):
    """The spec's `network` for container `c`; `get_container(ref)` finds the one it joins."""
    mode = c.network_mode
    if mode == "none":
        return "none"
    if mode.startswith("container:"):
        other = get_container(mode.split(":", 1)[1])
        if other.status != RUNNING:
            raise errors.Conflict(f"cannot join network of a non running container: {other.id}")
        if other.network_mode == "host":
            return "host"      # its network *is* the host's, which we join by not leaving it
        return {"join_pid": other.pid}
    if mode == "host":
        return "host"
    return networks.spawn_network(c)      # bridge networks: veths plugged in at start


def runtime_spec(c, rootfs, mounts, net, link_env=(), daemon_user=None):
    """The spawner's spec for container `c` (without stdio and cgroup); `link_env` is the
    legacy links' variables (Networks.link_env); `daemon_user` is who keep-id maps ({uid, gid}
    on the host; None without a user namespace)."""
    cfg, hc = c.config, c.host_config
    name = hostname(c)
    env = list(cfg["Env"]) + list(link_env)
    if not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={name}")
    if cfg["Tty"]:
        env.append("TERM=xterm")
    security = hc.get("SecurityOpt") or []
    run = {
        "rootfs": rootfs,
        "argv": [c.record["Path"]] + c.record["Args"],
        "env": env,
        "cwd": cfg.get("WorkingDir") or "/",
        "user": cfg.get("User") or "",
        "group_add": hc.get("GroupAdd") or [],
        "tty": cfg["Tty"],
        "init": bool(hc.get("Init")),          # --init: the setup process stays as PID 1 (pid1.py)
        "hostname": name,
        "network": net,
        "shm_size": hc.get("ShmSize") or DEFAULT_SHM_SIZE,
        "readonly_rootfs": bool(hc.get("ReadonlyRootfs")),
        "mounts": mounts,
        "etc_files": {"/etc/hosts": c.record["HostsPath"], "/etc/hostname": c.record["HostnamePath"],
                      "/etc/resolv.conf": c.record["ResolvConfPath"]},
        "ulimits": [{"name": u["Name"], "soft": u["Soft"], "hard": u["Hard"]}
                    for u in (hc.get("Ulimits") or [])],
        "cap_add": hc.get("CapAdd") or [],
        "cap_drop": hc.get("CapDrop") or [],
        "privileged": bool(hc.get("Privileged")),
        "no_new_privileges": "no-new-privileges" in security or "no-new-privileges:true" in security,
        "console_socket": bool(cfg["Tty"]),
        "console_size": (hc.get("ConsoleSize") or [0, 0])[:2],   # API 1.42: set before the command runs
        "security_opt": list(security),     # the seccomp profile too (spawner.py, seccomp.py)
    }
    if hc.get("UsernsMode") == "keep-id" and daemon_user:
        run["keep_id"] = dict(daemon_user)
    return run


def write_etc_files(c, networks):
    """(Re)write the container's hostname, hosts and resolv.conf files, atomically; `networks`
    adds the container's own address, its links, and decides the nameservers. Not fsync'd: they
    are derived from the record and rewritten before every start (three files, two fsyncs
    each, were a quarter of the start's time)."""
    cfg, hc = c.config, c.host_config
    name = hostname(c)
    fqdn = f"{name}.{cfg['Domainname']}" if cfg.get("Domainname") else name
    store.write_atomic(c.record["HostnamePath"], (name + "\n").encode(), mode=0o644, durable=False)
    hosts = list(HOSTS_HEADER)
    for entry in hc.get("ExtraHosts") or []:
        host, _, address = entry.partition(":")
        if not address:
            raise errors.InvalidParameter(f"invalid extra host {entry!r}: want host:ip")
        hosts.append(f"{address}\t{host}")
    hosts += networks.etc_hosts(c, fqdn + (f" {name}" if fqdn != name else ""))
    store.write_atomic(c.record["HostsPath"], ("\n".join(hosts) + "\n").encode(), mode=0o644, durable=False)
    store.write_atomic(c.record["ResolvConfPath"], resolv_conf(hc, networks=networks, c=c).encode(),
                       mode=0o644, durable=False)


def resolv_conf(hc, host_file=HOST_RESOLV_CONF, networks=None, c=None):
    """The container's resolv.conf: the host's, with the container's Dns* options applied."""
    nameservers, search, options = [], [], []
    try:
        with open(host_file) as f:
            for line in f:
                words = line.split()
                if not words or words[0].startswith(("#", ";")):
                    continue
                if words[0] == "nameserver" and len(words) > 1:
                    nameservers.append(words[1])
                elif words[0] in ("search", "domain"):
                    search = words[1:]
                elif words[0] == "options":
                    options += words[1:]
    except OSError:
        pass
    if network_mode(hc) == "none":
        nameservers = []
    elif networks is not None:
        nameservers, search, options = networks.resolv_conf(c, nameservers, search, options)
    if hc.get("Dns") and not (networks is not None and networks.uses_embedded_dns(c)):
        nameservers = list(hc["Dns"])       # (on user networks the embedded DNS forwards to them)
    if hc.get("DnsSearch"):
        search = list(hc["DnsSearch"])
    if hc.get("DnsOptions"):
        options = list(hc["DnsOptions"])
    lines = [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


class UserIds:
    """(uid, gid, supplementary gids) of a container's User and GroupAdd, looked up in its own
    /etc/passwd and /etc/group (ns.resolve_user): ~0.2 ms of reading and parsing per start.
    While the container's /etc is still the image's (layers.image_shows_through: nothing of
    its own under upper/etc), the files are those of the image's layers, which never change:
    so the answer is kept per (image layer chain, User, GroupAdd)."""

    KEEP = 256                          # answers kept; forgotten all at once beyond

    def __init__(self, layers):
        self.layers = layers
        self.known = {}

    def of(self, c, rootfs):
        """-> {"uid", "gid", "groups"} for the spawner's spec; InvalidParameter for a name the
        container's files do not have."""
        user, group_add = c.config.get("User") or "", tuple(c.host_config.get("GroupAdd") or ())
        key = None
        if self.layers.image_shows_through(c.id, "etc"):
            key = (self.layers.rw_info(c.id)["chain_id"], user, group_add)
            found = self.known.get(key)
            if found is not None:
                return dict(found, groups=list(found["groups"]))
        uid, gid, groups = ns.resolve_user(rootfs, user, group_add)
        found = {"uid": uid, "gid": gid, "groups": groups}
        if key is not None:
            if len(self.known) >= self.KEEP:
                self.known.clear()
            self.known[key] = dict(found, groups=list(groups))
        return found
