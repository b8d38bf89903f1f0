"""The engine: the daemon's backend root, holding every subsystem and answering system questions.

`Engine` is plain Python: API handlers call its subsystems (`engine.images`, `engine.containers`,
...), tests can drive it without HTTP, and `daemon.py` builds one at start-up. The engine builds
its subsystems in one place, `__init__`, in the order they depend on each other; the three
things that must exist before it (the spawner, forked while the daemon is single-threaded, the
exit registry it reports into, and the prepared cgroup tree) are handed in. This module also
knows how to describe the engine and the machine honestly for `GET /version` and `GET /info`:
every figure comes from the kernel or our own state, never from a constant that looks plausible.
"""

import datetime
import os
import random
import sys
import threading

from minidock import (API_VERSION, MIN_API_VERSION, __version__, cgroup, errors, imagedescribe, ipam,
                      jsonfile, platforms, stats, store)
from minidock.container.archive import Archive
from minidock.container.exits import ExitRegistry
from minidock.containers import Containers
from minidock.events import Events
from minidock.execs import Execs
from minidock.images import ImageStore
from minidock.layers import LayerStore
from minidock.networks import Networks
from minidock.registryservice import RegistryService
from minidock.volumes import Volumes

class Config:
    """Everything the daemon was told on its command line, with defaults filled in."""

    def __init__(self, data_root, exec_root, hosts=(), debug=False, cors_origin=None,
                 insecure_registries=(), registry_mirrors=(), labels=(), bip=None,
                 address_pools=(), log_driver="json-file", log_opts=None, userns_mode="",
                 allow_host_loopback=False):
        self.data_root = os.path.abspath(data_root)
        self.exec_root = os.path.abspath(exec_root)
        self.hosts = list(hosts)
        self.debug = debug
        self.cors_origin = cors_origin
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.labels = list(labels)
        self.bip = bip                                  # --bip: the default bridge's gateway/subnet
        self.address_pools = [ipam.parse_pool_flag(p) for p in address_pools] or None
        # dockerd's --log-driver/--log-opt: what a container with an empty LogConfig.Type gets
        # (checked like a container's; InvalidParameter in moby's words)
        self.log_config = jsonfile.check_log_config({"Type": log_driver or "json-file",
                                                     "Config": dict(log_opts or {})})
        self.userns_mode = userns_mode        # --userns: "" or "keep-id" for new containers
        self.allow_host_loopback = bool(allow_host_loopback)


class NoSpawner:
    """The spawner of a daemon started with --no-userns: it refuses to run anything."""

    REASON = "started with --no-userns: containers cannot run"

    def run(self, spec, stdin, stdout, stderr):
        raise errors.Unavailable(self.REASON)

    def exec(self, init_pid, spec, stdin, stdout, stderr):
        raise errors.Unavailable(self.REASON)

    def close(self):
        pass


class Engine:
    """Every subsystem, built once. Without a spawner containers cannot run (NoSpawner); without
    a prepared cgroup tree, limits are discarded and pause uses SIGSTOP (what `Hierarchy.discover`
    alone gives: read-only discovery, nothing usable)."""

    def __init__(self, config, spawner=None, exits=None, cgroups=None, userns=None, warnings=()):
        self.config = config
        os.makedirs(config.data_root, mode=0o700, exist_ok=True)
        os.makedirs(config.exec_root, mode=0o700, exist_ok=True)
        self.id = self._engine_id()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.userns = userns             # the daemon's user namespace (uid_map, ...) or None
        self.warnings = list(warnings)   # start-up findings shown in /info (e.g. a missing feature)
        self.spawner = spawner or NoSpawner()
        self.exits = exits or ExitRegistry()
        self.cgroups = cgroups or cgroup.Hierarchy.discover()
        # Ground first, then each subsystem after those it uses.
        self.events = Events()
        image_root = os.path.join(config.data_root, "image")
        self.layers = LayerStore(os.path.join(image_root, "layers"))
        self.images = ImageStore(image_root, self.layers, self.events)
        self.volumes = Volumes(config.data_root, self.events)
        # Networks before containers (endpoints are allocated at create); it learns the
        # containers right after, for membership, names and links.
        self.networks = Networks(config.data_root, self.events, bip=config.bip, pools=config.address_pools,
                                 allow_host_loopback=config.allow_host_loopback)
        daemon_user = {"uid": userns["host_uid"], "gid": userns["host_gid"]} if userns else None
        self.containers = Containers(config.data_root, self.events, self.images, self.layers, self.volumes,
                                     self.cgroups, self.spawner, self.exits, self.networks,
                                     log_defaults=config.log_config, userns_default=config.userns_mode,
                                     daemon_user=daemon_user)
        self.networks.attach(self.containers)
        self.execs = Execs(config.data_root, self.containers, self.layers, self.spawner, self.exits)
        self.archive = Archive(self.containers, self.layers)
        self.registry = RegistryService(self)

    def shutdown(self):
        """Stop containers cleanly, then the spawner (which takes any straggler with it); last,
        the layers' pending sync (diffsync.py)."""
        self.containers.shutdown()
        self.networks.close()
        self.spawner.close()
        self.layers.durability.close()

    def _netns_text(self):
        if self.networks.netns is None:
            return "none (containers on bridge networks cannot start)"
        bridges = ", ".join(f"{self.networks.bridge_of(r)} {r['IPAM']['Config'][0]['Subnet']}"
                            for r in self.networks.collection.objects.values())
        loopback = "allowed" if self.networks.allow_host_loopback else "refused"
        return (f"daemon-owned, held by pid {self.networks.netns.pid}; bridges: {bridges}; "
                f"outbound: user-mode TCP/IP, host loopback at 10.0.2.2 {loopback}")

    def _engine_id(self):
        """A stable engine ID (Docker's is 12 base32 groups); persisted so it survives restarts."""
        path = os.path.join(self.config.data_root, "engine-id")
        try:
            with open(path) as f:
                value = f.read().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        pick = random.SystemRandom().choice     # os.urandom, as secrets.choice
        value = ":".join("".join(pick(alphabet) for _ in range(4)) for _ in range(12))
        store.write_atomic(path, value.encode() + b"\n")
        return value

    # -- GET /version ----------------------------------------------------------------------------
    def version(self):
        uname = os.uname()
        python = "python%d.%d.%d" % sys.version_info[:3]     # platform.python_version() without the 1 ms import
        details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Arch": self.arch(),
                   "KernelVersion": uname.release, "Os": "linux", "GitCommit": "", "GoVersion": python,
                   "BuildTime": ""}
        return {
            "Platform": {"Name": "minidock"},
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
            "Version": __version__,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": python,          # honest: there is no Go here, this is the runtime we use
            "Os": "linux",
            "Arch": self.arch(),
            "KernelVersion": uname.release,
            "BuildTime": "",
            "Experimental": False,
        }

    @staticmethod
    def arch():
        return platforms.goarch()

    # -- GET /info -------------------------------------------------------------------------------
    def info(self):
        uname = os.uname()
        counts = self.containers.counts()
        n_images = self.images.count()
        limits = self.cgroups.capabilities()
        driver = self.images.driver_name()
        driver_status = self.images.driver_status()
        stats_source = stats.source_for(self.cgroups)
        security = ["name=rootless"] if os.getuid() != 0 or self.userns else []
        if self.userns:
            security.append("name=userns")
        security.append("name=no-new-privileges")
        return {
            "ID": self.id,
            "Containers": sum(counts.values()),
            "ContainersRunning": counts["running"],
            "ContainersPaused": counts["paused"],
            "ContainersStopped": counts["stopped"],
            "Images": n_images,
            "Driver": driver,
            "DriverStatus": driver_status,
            "SystemStatus": [["Pause method", limits.get("PauseMethod", "SIGSTOP")],
                             ["User namespace", " / ".join((self.userns or {}).get("uid_map", [])) or "none"],
                             ["Network namespace", self._netns_text()],
                             ["Stats source", stats_source]],
            "DefaultAddressPools": [{"Base": str(base), "Size": size} for base, size in
                                    (self.config.address_pools or ipam.default_pools())],
            "PauseMethod": limits.get("PauseMethod", "SIGSTOP"),
            "StatsSource": stats_source,      # cgroup2 files, or procfs per-process accounting
            "UsernsMapping": self.userns,
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Authorization": None,
                        "Log": list(jsonfile.DRIVERS)},
            "MemoryLimit": limits.get("MemoryLimit", False),
            "SwapLimit": limits.get("SwapLimit", False),
            "KernelMemory": False,
            "KernelMemoryTCP": False,
            "CpuCfsPeriod": limits.get("CpuCfsPeriod", False),
            "CpuCfsQuota": limits.get("CpuCfsQuota", False),
            "CPUShares": limits.get("CPUShares", False),
            "CPUSet": limits.get("CPUSet", False),
            "PidsLimit": limits.get("PidsLimit", False),
            "OomKillDisable": limits.get("OomKillDisable", False),
            "IPv4Forwarding": _read_int("/proc/sys/net/ipv4/ip_forward") == 1,
            "BridgeNfIptables": False,
            "BridgeNfIp6tables": False,
            "Debug": self.config.debug,
            "NFd": _count_fds(),
            "NGoroutines": threading.active_count(),   # our closest equivalent: live threads
            "SystemTime": datetime.datetime.now().astimezone().isoformat(),
            "LoggingDriver": self.config.log_config["Type"],
            "CgroupDriver": limits.get("CgroupDriver", "none"),
            "CgroupVersion": limits.get("CgroupVersion", "2"),
            "NEventsListener": self.events.listeners,
            "KernelVersion": uname.release,
            "OperatingSystem": _os_release(),
            "OSVersion": _os_release("VERSION_ID"),
            "OSType": "linux",
            "Architecture": uname.machine,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": self._registry_config(),
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _mem_total(),
            "GenericResources": None,
            "DockerRootDir": self.config.data_root,
            "HttpProxy": os.environ.get("HTTP_PROXY", os.environ.get("http_proxy", "")),
            "HttpsProxy": os.environ.get("HTTPS_PROXY", os.environ.get("https_proxy", "")),
            "NoProxy": os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")),
            "Name": uname.nodename,
            "Labels": self.config.labels,
            "ExperimentalBuild": False,
            "ServerVersion": __version__,
            "Runtimes": {"minidock": {"path": "minidock.ns"}},
            "DefaultRuntime": "minidock",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": False,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""},
            "RuncCommit": {"ID": "", "Expected": ""},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": security,
            "ExecutionDriver": "minidock-" + __version__,
            "InitPath": sys.executable,
            "InitSha1": "",
            "Warnings": list(self.warnings),
        }

    # -- GET /system/df --------------------------------------------------------------------------
    def disk_usage(self, types=("image", "container", "volume", "build-cache")):
        """What the images, containers, volumes and build cache take on disk (`docker system
        df`). An image's `SharedSize` is what its layers share with other images (a layer counts
        once in `LayersSize`); `Containers` is how many containers use it. A container's
        `SizeRw` is its writable layer; a volume's `UsageData` its bytes and users."""
        out = {}
        if "image" in types:
            rows = imagedescribe.list_rows(self.images, all=True)
            chains = {row["Id"]: self.images.chains(row["Id"]) for row in rows}
            users = {}
            for chain_list in chains.values():
                for chain in set(chain_list):
                    users[chain] = users.get(chain, 0) + 1
            per_image = {}
            for c in self.containers.all():
                per_image[c.record["Image"]] = per_image.get(c.record["Image"], 0) + 1
            for row in rows:
                row["SharedSize"] = sum(self.layers.size(ch) for ch in chains[row["Id"]] if users[ch] > 1)
                row["Containers"] = per_image.get(row["Id"], 0)
            out["LayersSize"] = sum(self.layers.size(ch) for ch in users)
            out["Images"] = rows
        if "container" in types:
            out["Containers"] = self.containers.summaries(all_=True, size=True)
        if "volume" in types:
            out["Volumes"] = [dict(v, UsageData=self.volumes.usage(v["Name"])) for v in self.volumes.list()]
        if "build-cache" in types:
            out["BuildCache"] = []        # the classic builder's cache is its images, counted above
        return out

    def _registry_config(self):
        insecure = ["127.0.0.0/8", "::1/128"] + self.config.insecure_registries
        return {"AllowNondistributableArtifactsCIDRs": None, "AllowNondistributableArtifactsHostnames": None,
                "InsecureRegistryCIDRs": insecure,
                "IndexConfigs": {"docker.io": {"Name": "docker.io", "Mirrors": self.config.registry_mirrors,
                                               "Secure": True, "Official": True}},
                "Mirrors": self.config.registry_mirrors}


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _count_fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _os_release(key="PRETTY_NAME"):
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.strip().partition("=")
                    if name == key:
                        return value.strip('"')
        except OSError:
            continue
    return "Linux" if key == "PRETTY_NAME" else ""
