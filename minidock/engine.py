"""The engine: the daemon's backend root, holding every subsystem and answering system questions.

`Engine` is plain Python: API handlers call its subsystems (`engine.images`, `engine.containers`,
...), tests can drive it without HTTP, and `daemon.py` builds one at start-up. This module also
knows how to describe the engine and the machine honestly for `GET /version` and `GET /info`:
every figure comes from the kernel or our own state, never from a constant that looks plausible.
"""

import datetime
import os
import platform
import secrets
import sys
import threading

from minidock import API_VERSION, MIN_API_VERSION, __version__, platforms, store
from minidock.events import Events

class Config:
    """Everything the daemon was told on its command line, with defaults filled in."""

    def __init__(self, data_root, exec_root, hosts=(), debug=False, cors_origin=None,
                 insecure_registries=(), registry_mirrors=(), labels=()):
        self.data_root = os.path.abspath(data_root)
        self.exec_root = os.path.abspath(exec_root)
        self.hosts = list(hosts)
        self.debug = debug
        self.cors_origin = cors_origin
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.labels = list(labels)


class Engine:
    def __init__(self, config):
        self.config = config
        os.makedirs(config.data_root, mode=0o700, exist_ok=True)
        os.makedirs(config.exec_root, mode=0o700, exist_ok=True)
        self.events = Events()
        self.id = self._engine_id()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.userns = None          # set by the daemon after entering its user namespace
        self.warnings = []          # start-up findings shown in /info (e.g. a missing feature)
        # Subsystems are attached by the daemon as it wires them up.
        self.images = None
        self.containers = None
        self.volumes = None
        self.cgroups = None

    def shutdown(self):
        """Stop containers cleanly, then the spawner (which takes any straggler with it)."""
        if self.containers is not None:
            self.containers.shutdown()
        spawner = getattr(self, "spawner", None)
        if spawner is not None:
            spawner.close()

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
        value = ":".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(12))
        store.write_atomic(path, value.encode() + b"\n")
        return value

    # -- GET /version ----------------------------------------------------------------------------
    def version(self):
        uname = os.uname()
        python = f"python{platform.python_version()}"
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
        counts = self.containers.counts() if self.containers else {"running": 0, "paused": 0, "stopped": 0}
        n_images = self.images.count() if self.images else 0
        limits = self.cgroups.capabilities() if self.cgroups else {}
        driver = self.images.driver_name() if self.images else "none"
        driver_status = self.images.driver_status() if self.images else []
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
                             ["User namespace", " / ".join((self.userns or {}).get("uid_map", [])) or "none"]],
            "PauseMethod": limits.get("PauseMethod", "SIGSTOP"),
            "UsernsMapping": self.userns,
            "Plugins": {"Volume": ["local"], "Network": ["host", "none"], "Authorization": None,
                        "Log": ["json-file"]},
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
            "LoggingDriver": "json-file",
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
