"""A container's configuration: what the user asked for, merged with what the image says.

`POST /containers/create` carries a `Config` (the process: command, environment, user, ...) and
a `HostConfig` (how the host runs it: mounts, restart policy, network mode, limits). Docker's
rules, each applied below:

- Entrypoint/Cmd: with no user entrypoint, an empty user Cmd takes the image's Cmd and a null
  user entrypoint the image's; `--entrypoint ""` resets it (moby daemon/commit.go `merge`).
- Env: the user's variables override the image's by name; PATH is always set.
- Names: unique, shown with a leading `/`, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`; a container created
  without one gets `adjective_surname`.
- HostConfig: every field present (defaults filled in), restart policies checked
  (`no`, `always`, `unless-stopped`, `on-failure[:N]`; AutoRemove excludes a policy).
- LogConfig: an empty Type takes the daemon's `--log-driver`/`--log-opt`; unknown drivers and
  options are refused in moby's words (jsonfile.check_log_config).
- UsernsMode: "" or "host" (the daemon's namespace), or "keep-id" (userns.py: the daemon's uid keeps
  its number in the container); an empty one takes the daemon's `--userns`.
- Healthcheck: checked and merged with the image's field by field (health.validate, merge).
- Network mode: `default`, `bridge`, `host`, `none` or `container:<ref>`. Rootless minidock
  has no bridge, so default and bridge *are* the host's network: `network_mode` decides that
  in one place for everyone (spawner spec, inspect, list filters, the networks backend).
"""

import random
import re
import signal

from minidock import errors, health, jsonfile, schema
from minidock.schema import (ANY, BOOL, INT, SET, STR, STRMAP, STRS, STRSLICE, UINT, UINT16,  # noqa: F401
                             UINT32, MapOf)
from minidock.mounts import DEFAULT_SHM_SIZE  # noqa: F401  (what a container gets without its own)
from minidock.ns import DEFAULT_PATH  # noqa: F401

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_STOP_TIMEOUT = 10
IPC_MODES = ("private", "shareable", "none")

SIGNALS = {name[3:]: int(value) for name, value in signal.__dict__.items()
           if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(value, signal.Signals)}

ADJECTIVES = ["admiring", "brave", "clever", "dazzling", "eager", "focused", "gallant", "happy",
              "jolly", "keen", "lucid", "modest", "nifty", "optimistic", "quirky", "relaxed",
              "sharp", "tender", "upbeat", "vibrant", "wizardly", "youthful", "zealous"]
SURNAMES = ["babbage", "curie", "dijkstra", "euler", "feynman", "goldberg", "hopper", "hypatia",
            "kepler", "lamport", "lovelace", "mccarthy", "noether", "pike", "ritchie", "shannon",
            "thompson", "turing", "wozniak", "yonath"]

CONFIG_KEYS = ["Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
               "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck",
               "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled",
               "MacAddress", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell"]

HOST_CONFIG_DEFAULTS = {
    "Binds": None, "ContainerIDFile": "", "LogConfig": None,
    "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "AutoRemove": False, "VolumeDriver": "", "VolumesFrom": None, "CapAdd": None, "CapDrop": None,
    "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None, "IpcMode": "",
    "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "Privileged": False,
    "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "",
    "UsernsMode": "", "ShmSize": DEFAULT_SHM_SIZE, "Runtime": "minidock", "ConsoleSize": [0, 0],
    "Isolation": "", "CpuShares": 0, "Memory": 0, "CgroupParent": "", "BlkioWeight": 0, "CpuPeriod": 0,
    "CpuQuota": 0, "CpusetCpus": "", "CpusetMems": "", "KernelMemory": 0, "MemoryReservation": 0,
    "MemorySwap": 0, "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": 0, "Ulimits": None,
}

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
USERNS_MODES = ("", "host", "keep-id")


def parse_signal(value, default=signal.SIGKILL):
    """A signal by number or name ("9", "KILL", "SIGKILL")."""
    if value in (None, ""):
        return int(default)
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if number <= 0 or number > 64:
            raise errors.InvalidParameter(f"Invalid signal: {value}")
        return number
    name = text[3:] if text.startswith("SIG") else text
    if name not in SIGNALS:
        raise errors.InvalidParameter(f"Invalid signal: {value}")
    return SIGNALS[name]


def strslice(value):
    """Docker's StrSlice: a JSON string means a one-element list; null stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise errors.InvalidParameter(f"expected a string or a list of strings, got {value!r}")


def merge_env(image_env, user_env):
    """User variables override image ones by name; order: image's first, then new ones."""
    merged = {}
    for item in (image_env or []) + (user_env or []):
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


# -- names ----------------------------------------------------------------------------------------

def check_name(name):
    """A user-given name without its leading "/"; InvalidParameter for one Docker refuses."""
    if not name or not NAME_RE.match(name):
        raise errors.InvalidParameter(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


def generate_name(taken, container_id):
    """A name for a container created without one, never one for which `taken(name)` is true:
    Docker's `adjective_surname`, then with a number appended (there are only
    len(ADJECTIVES) x len(SURNAMES) = 460 plain ones), and should those keep meeting taken
    names, the container's short id, as Docker's last resort is."""
    for attempt in range(200):
        name = f"{random.choice(ADJECTIVES)}_{random.choice(SURNAMES)}"
        if attempt >= 50:
            name += str(random.randint(1, 9999))
        if not taken(name):
            return name
    for name in (container_id[:12], container_id):
        if not taken(name):
            return name
    raise errors.Conflict("no free name could be generated for the container: give it one")


# -- Config ---------------------------------------------------------------------------------------

def check_name_free(name, owner_id):
    """Conflict, in Docker's words, when `name` is taken: by the container `owner_id`, if any."""
    if owner_id:
        raise errors.Conflict(
            f'Conflict. The container name "/{name}" is already in use by container '
            f'"{owner_id}". You have to remove (or rename) that container to be able to reuse that name.')


def merge_config(body, image_cfg, image_ref):
    """The container's Config: the user's, with the image's defaults where the user gave none."""
    config = {k: body.get(k) for k in CONFIG_KEYS}
    for key in ("Hostname", "Domainname", "User", "WorkingDir", "MacAddress", "StopSignal"):
        if config[key] is None:
            config[key] = ""
    for key in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        config[key] = bool(config[key])
    config["Image"] = image_ref
    config["Cmd"] = strslice(body.get("Cmd"))
    config["Entrypoint"] = strslice(body.get("Entrypoint"))
    if config["Env"] is not None and not isinstance(config["Env"], list):
        raise errors.InvalidParameter("Env must be a list of KEY=value strings")
    # Docker's merge rule (daemon/commit.go merge): with no user entrypoint, an empty user
    # Cmd takes the image's Cmd; a null user entrypoint takes the image's entrypoint.
    if not config["Entrypoint"]:
        if not config["Cmd"]:
            config["Cmd"] = image_cfg.get("Cmd")
        if config["Entrypoint"] is None:
            config["Entrypoint"] = image_cfg.get("Entrypoint")
    if config["Entrypoint"] == [""]:          # `--entrypoint ""` resets the image's
        config["Entrypoint"] = None
    config["Env"] = merge_env(image_cfg.get("Env") or [], config["Env"] or [])
    if not any(e.startswith("PATH=") for e in config["Env"]):
        config["Env"].insert(0, "PATH=" + DEFAULT_PATH)
    for key in ("WorkingDir", "User", "StopSignal"):
        if not config[key]:
            config[key] = image_cfg.get(key) or ""
    for key in ("ExposedPorts", "Volumes"):
        merged = dict(image_cfg.get(key) or {})
        merged.update(config[key] or {})
        config[key] = merged or None
    labels = dict(image_cfg.get("Labels") or {})
    labels.update(config["Labels"] or {})
    config["Labels"] = labels
    health.validate(config["Healthcheck"])
    config["Healthcheck"] = health.merge(image_cfg.get("Healthcheck"), config["Healthcheck"])
    return config


def command(config):
    """(Path, Args): the process a Config runs, Entrypoint then Cmd; ("", []) when there is none."""
    argv = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    if not argv:
        return "", []
    return argv[0], argv[1:]


# -- HostConfig -----------------------------------------------------------------------------------

def normalise_host_config(hc, log_defaults=None, userns_default=""):
    """A HostConfig with every field present and its rules checked (a new dict). `log_defaults`
    and `userns_default` are the daemon's (`--log-driver`/`--log-opt`, `--userns`)."""
    hc = dict(hc)
    for key, value in HOST_CONFIG_DEFAULTS.items():
        if hc.get(key) is None and value is not None:
            hc[key] = value
        hc.setdefault(key, value)
    if not hc.get("ShmSize"):
        hc["ShmSize"] = DEFAULT_SHM_SIZE
    if hc["ShmSize"] < 0:
        raise errors.InvalidParameter("SHM size can not be less than 0")
    policy = hc.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name not in RESTART_POLICIES:
        raise errors.InvalidParameter(f"invalid restart policy '{name}'")
    retries = int(policy.get("MaximumRetryCount") or 0)
    if retries and name != "on-failure":
        raise errors.InvalidParameter(f"maximum retry count cannot be used with restart policy '{name}'")
    if retries < 0:
        raise errors.InvalidParameter("maximum retry count cannot be negative")
    hc["RestartPolicy"] = {"Name": name, "MaximumRetryCount": retries}
    if hc.get("AutoRemove") and name != "no":
        raise errors.InvalidParameter("can't create 'AutoRemove' container with restart policy")
    hc["LogConfig"] = jsonfile.check_log_config(hc.get("LogConfig"), log_defaults)
    mode = hc.get("UsernsMode") or userns_default or ""
    if mode not in USERNS_MODES:
        raise errors.InvalidParameter(f"invalid UsernsMode: {mode}")
    hc["UsernsMode"] = mode
    # Every container gets an IPC namespace of its own (ns.py); API 1.40 made "private" the
    # default name for that, and older clients are given "shareable" (api/versions.py).
    ipc = hc.get("IpcMode") or "private"
    if ipc not in IPC_MODES:
        raise errors.NotImplementedKind(f"IpcMode {ipc!r} is not supported: every minidock container "
                                        "has a private IPC namespace ('private', 'shareable' or 'none')")
    hc["IpcMode"] = ipc
    # API 1.41: no container gets a cgroup namespace of its own (ns.py does not unshare one), so
    # each shares the daemon's: "host", and "private" is refused rather than pretended.
    cgroupns = hc.get("CgroupnsMode") or "host"
    if cgroupns != "host":
        raise errors.NotImplementedKind(f"CgroupnsMode {cgroupns!r} is not supported: minidock containers "
                                        "share the daemon's cgroup namespace ('host')")
    hc["CgroupnsMode"] = cgroupns
    return hc


def network_mode(hc):
    """The network a container really has: "host", "none", "container:<ref>", or the name (or
    id) of the bridge network it joins first -- "bridge" for `default`.

    The one place that decides it. Whether a named network exists is the networks backend's
    question (Networks.check_mode, at create)."""
    mode = hc.get("NetworkMode") or "default"
    return "bridge" if mode == "default" else mode


# --- the types of every create field (moby's container.Config, HostConfig, NetworkingConfig) --
#
# Checked by check_types() before anything is created: Docker answers `"Privileged": "false"`
# with 400, and so do we (schema.py has the rules: what BOOL, STRSLICE, MapOf(...) accept).

HEALTHCHECK_TYPES = {"Test": STRS, "Interval": INT, "Timeout": INT, "StartPeriod": INT,
                     "StartInterval": INT, "Retries": INT}

CONFIG_TYPES = {
    "Hostname": STR, "Domainname": STR, "User": STR,
    "AttachStdin": BOOL, "AttachStdout": BOOL, "AttachStderr": BOOL,
    "ExposedPorts": SET, "Tty": BOOL, "OpenStdin": BOOL, "StdinOnce": BOOL,
    "Env": STRS, "Cmd": STRSLICE, "Healthcheck": HEALTHCHECK_TYPES, "ArgsEscaped": BOOL,
    "Image": STR, "Volumes": SET, "WorkingDir": STR, "Entrypoint": STRSLICE,
    "NetworkDisabled": BOOL, "MacAddress": STR, "OnBuild": STRS, "Labels": STRMAP,
    "StopSignal": STR, "StopTimeout": INT, "Shell": STRSLICE,
}

_THROTTLE_TYPES = [{"Path": STR, "Rate": UINT}]

RESOURCES_TYPES = {
    "CpuShares": INT, "Memory": INT, "NanoCpus": INT, "CgroupParent": STR,
    "BlkioWeight": UINT16, "BlkioWeightDevice": [{"Path": STR, "Weight": UINT16}],
    "BlkioDeviceReadBps": _THROTTLE_TYPES, "BlkioDeviceWriteBps": _THROTTLE_TYPES,
    "BlkioDeviceReadIOps": _THROTTLE_TYPES, "BlkioDeviceWriteIOps": _THROTTLE_TYPES,
    "CpuPeriod": INT, "CpuQuota": INT, "CpuRealtimePeriod": INT, "CpuRealtimeRuntime": INT,
    "CpusetCpus": STR, "CpusetMems": STR,
    "Devices": [{"PathOnHost": STR, "PathInContainer": STR, "CgroupPermissions": STR}],
    "DeviceCgroupRules": STRS,
    "DeviceRequests": [{"Driver": STR, "Count": INT, "DeviceIDs": STRS, "Capabilities": [STRS],
                        "Options": STRMAP}],
    "KernelMemory": INT, "KernelMemoryTCP": INT, "MemoryReservation": INT, "MemorySwap": INT,
    "MemorySwappiness": INT, "OomKillDisable": BOOL, "PidsLimit": INT,
    "Ulimits": [{"Name": STR, "Hard": INT, "Soft": INT}],
    "CpuCount": INT, "CpuPercent": INT, "IOMaximumIOps": UINT, "IOMaximumBandwidth": UINT,
}

MOUNT_TYPES = {
    "Type": STR, "Source": STR, "Target": STR, "ReadOnly": BOOL, "Consistency": STR,
    "BindOptions": {"Propagation": STR, "NonRecursive": BOOL, "CreateMountpoint": BOOL,
                    "ReadOnlyNonRecursive": BOOL, "ReadOnlyForceRecursive": BOOL},
    "VolumeOptions": {"NoCopy": BOOL, "Labels": STRMAP, "Subpath": STR,
                      "DriverConfig": {"Name": STR, "Options": STRMAP}},
    "ImageOptions": {"Subpath": STR},
    "TmpfsOptions": {"SizeBytes": INT, "Mode": UINT32, "Options": [STRS]},
}

HOST_CONFIG_TYPES = dict(RESOURCES_TYPES, **{
    "Binds": STRS, "ContainerIDFile": STR,
    "LogConfig": {"Type": STR, "Config": STRMAP},
    "NetworkMode": STR,
    "PortBindings": MapOf([{"HostIp": STR, "HostPort": STR}]),
    "RestartPolicy": {"Name": STR, "MaximumRetryCount": INT},
    "AutoRemove": BOOL, "VolumeDriver": STR, "VolumesFrom": STRS,
    "ConsoleSize": [UINT], "Annotations": STRMAP,
    "CapAdd": STRSLICE, "CapDrop": STRSLICE, "CgroupnsMode": STR,
    "Dns": STRS, "DnsOptions": STRS, "DnsSearch": STRS, "ExtraHosts": STRS, "GroupAdd": STRS,
    "IpcMode": STR, "Cgroup": STR, "Links": STRS, "OomScoreAdj": INT, "PidMode": STR,
    "Privileged": BOOL, "PublishAllPorts": BOOL, "ReadonlyRootfs": BOOL, "SecurityOpt": STRS,
    "StorageOpt": STRMAP, "Tmpfs": STRMAP, "UTSMode": STR, "UsernsMode": STR, "ShmSize": INT,
    "Sysctls": STRMAP, "Runtime": STR, "Isolation": STR,
    "Mounts": [MOUNT_TYPES], "MaskedPaths": STRS, "ReadonlyPaths": STRS, "Init": BOOL,
})

ENDPOINT_TYPES = {
    "IPAMConfig": {"IPv4Address": STR, "IPv6Address": STR, "LinkLocalIPs": STRS},
    "Links": STRS, "Aliases": STRS, "MacAddress": STR, "DriverOpts": STRMAP,
    "NetworkID": STR, "EndpointID": STR, "Gateway": STR, "IPAddress": STR, "IPPrefixLen": INT,
    "IPv6Gateway": STR, "GlobalIPv6Address": STR, "GlobalIPv6PrefixLen": INT, "DNSNames": STRS,
}

NETWORKING_CONFIG_TYPES = {"EndpointsConfig": MapOf(ENDPOINT_TYPES)}

# The create body is Config with HostConfig and NetworkingConfig beside its fields.
CREATE_TYPES = dict(CONFIG_TYPES, HostConfig=HOST_CONFIG_TYPES, NetworkingConfig=NETWORKING_CONFIG_TYPES)


def check_types(body):
    """The type check of a create body, before anything is created (400 on the first misfit)."""
    if not isinstance(body, dict):
        schema.check_body(body, CREATE_TYPES, "ContainerConfigWrapper")
    for key, table in CONFIG_TYPES.items():
        if key in body:
            schema.check(body[key], table, f"ContainerConfigWrapper.Config.{key}")
    if "HostConfig" in body:
        schema.check(body["HostConfig"], HOST_CONFIG_TYPES, "ContainerConfigWrapper.HostConfig")
    if "NetworkingConfig" in body:
        schema.check(body["NetworkingConfig"], NETWORKING_CONFIG_TYPES, "ContainerConfigWrapper.NetworkingConfig")


# `POST /containers/{id}/update`: the resources and the restart policy.
UPDATE_TYPES = dict(RESOURCES_TYPES, RestartPolicy={"Name": STR, "MaximumRetryCount": INT})
