"""Typed field tables for JSON request bodies: Docker's decoding rules, checked up front.

dockerd decodes a request body into Go structs with encoding/json, and that decoding is the
type check: `"Privileged": "false"` fails with

    json: cannot unmarshal string into Go struct field HostConfig.Privileged of type bool

and the request is answered 400 before anything exists. Python's json.loads gives us dicts of
anything, so the same rules are written down as tables and checked before a handler acts on a
body. What Go's decoder does, and so what a table entry means:

    BOOL      true / false only (not "false", not 0)
    STR       a string
    INT       an integer literal in int64 range (1.5 and 1.0 are refused: ParseInt fails)
    UINT, UINT16, UINT32   non-negative integers in range
    STRS      an array of strings
    STRSLICE  a string or an array of strings (Docker's strslice.StrSlice: Cmd, Entrypoint, ...)
    STRMAP    an object of string values (Labels, Sysctls, ...)
    SET       an object whose values are objects (Volumes, ExposedPorts: map[string]struct{})
    ANY       anything (a field the daemon does not interpret)
    {...}     a nested object with its own table;  [{...}] / [TYPE]: an array of those
    MapOf(t)  an object whose values all have type t

`null` is accepted everywhere (Go leaves the zero value), and so are unknown fields (Go ignores
them), exactly as dockerd does.
"""

from minidock import errors

BOOL, STR, INT, UINT, UINT16, UINT32 = "bool", "string", "int64", "uint64", "uint16", "uint32"
STRS, STRSLICE, STRMAP, SET, ANY = "[]string", "strslice", "map[string]string", "map[string]struct{}", "any"

_RANGES = {INT: (-(1 << 63), (1 << 63) - 1), UINT: (0, (1 << 64) - 1),
           UINT16: (0, (1 << 16) - 1), UINT32: (0, (1 << 32) - 1)}


class MapOf:
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"map[string]{_type_name(self.value)}"


def _json_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_name(t):
    if isinstance(t, dict):
        return "struct"
    if isinstance(t, list):
        return "[]" + _type_name(t[0])
    return str(t)


def _fail(value, where, t):
    shown = _json_kind(value)
    if shown == "number":
        shown = f"number {value}"
    raise errors.InvalidParameter(
        f"json: cannot unmarshal {shown} into Go struct field {where} of type {_type_name(t)}")


def check(value, table, where):
    """Raise InvalidParameter (Docker's wording) where `value` does not fit `table`."""
    if value is None:
        return
    if isinstance(table, dict):
        if not isinstance(value, dict):
            _fail(value, where, table)
        for key, sub in table.items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
        return
    if isinstance(table, list):
        if not isinstance(value, list):
            _fail(value, where, table)
        for item in value:
            check(item, table[0], where)
        return
    if isinstance(table, MapOf):
        if not isinstance(value, dict):
            _fail(value, where, table)
        for item in value.values():
            check(item, table.value, where)
        return
    if table == ANY:
        return
    if table == BOOL:
        if not isinstance(value, bool):
            _fail(value, where, table)
    elif table == STR:
        if not isinstance(value, str):
            _fail(value, where, table)
    elif table in _RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(value, where, table)
        low, high = _RANGES[table]
        if not low <= value <= high:
            raise errors.InvalidParameter(
                f"json: cannot unmarshal number {value} into Go struct field {where} of type {table}")
    elif table == STRS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            _fail(value, where, table)
    elif table == STRSLICE:
        if isinstance(value, str):
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            _fail(value, where, table)
    elif table == STRMAP:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            _fail(value, where, table)
    elif table == SET:
        if not isinstance(value, dict) or not all(v is None or isinstance(v, dict) for v in value.values()):
            _fail(value, where, table)
    else:
        raise AssertionError(f"unknown type {table!r} in a field table")


# --- POST /containers/create (moby's container.Config, HostConfig, NetworkingConfig) ---------

HEALTHCHECK = {"Test": STRS, "Interval": INT, "Timeout": INT, "StartPeriod": INT,
               "StartInterval": INT, "Retries": INT}

CONFIG = {
    "Hostname": STR, "Domainname": STR, "User": STR,
    "AttachStdin": BOOL, "AttachStdout": BOOL, "AttachStderr": BOOL,
    "ExposedPorts": SET, "Tty": BOOL, "OpenStdin": BOOL, "StdinOnce": BOOL,
    "Env": STRS, "Cmd": STRSLICE, "Healthcheck": HEALTHCHECK, "ArgsEscaped": BOOL,
    "Image": STR, "Volumes": SET, "WorkingDir": STR, "Entrypoint": STRSLICE,
    "NetworkDisabled": BOOL, "MacAddress": STR, "OnBuild": STRS, "Labels": STRMAP,
    "StopSignal": STR, "StopTimeout": INT, "Shell": STRSLICE,
}

_THROTTLE = [{"Path": STR, "Rate": UINT}]

RESOURCES = {
    "CpuShares": INT, "Memory": INT, "NanoCpus": INT, "CgroupParent": STR,
    "BlkioWeight": UINT16, "BlkioWeightDevice": [{"Path": STR, "Weight": UINT16}],
    "BlkioDeviceReadBps": _THROTTLE, "BlkioDeviceWriteBps": _THROTTLE,
    "BlkioDeviceReadIOps": _THROTTLE, "BlkioDeviceWriteIOps": _THROTTLE,
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

MOUNT = {
    "Type": STR, "Source": STR, "Target": STR, "ReadOnly": BOOL, "Consistency": STR,
    "BindOptions": {"Propagation": STR, "NonRecursive": BOOL, "CreateMountpoint": BOOL,
                    "ReadOnlyNonRecursive": BOOL, "ReadOnlyForceRecursive": BOOL},
    "VolumeOptions": {"NoCopy": BOOL, "Labels": STRMAP, "Subpath": STR,
                      "DriverConfig": {"Name": STR, "Options": STRMAP}},
    "ImageOptions": {"Subpath": STR},
    "TmpfsOptions": {"SizeBytes": INT, "Mode": UINT32, "Options": [STRS]},
}

HOST_CONFIG = dict(RESOURCES, **{
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
    "Mounts": [MOUNT], "MaskedPaths": STRS, "ReadonlyPaths": STRS, "Init": BOOL,
})

ENDPOINT = {
    "IPAMConfig": {"IPv4Address": STR, "IPv6Address": STR, "LinkLocalIPs": STRS},
    "Links": STRS, "Aliases": STRS, "MacAddress": STR, "DriverOpts": STRMAP,
    "NetworkID": STR, "EndpointID": STR, "Gateway": STR, "IPAddress": STR, "IPPrefixLen": INT,
    "IPv6Gateway": STR, "GlobalIPv6Address": STR, "GlobalIPv6PrefixLen": INT, "DNSNames": STRS,
}

NETWORKING_CONFIG = {"EndpointsConfig": MapOf(ENDPOINT)}

# The create body is Config with HostConfig and NetworkingConfig beside its fields.
CONTAINER_CREATE = dict(CONFIG, HostConfig=HOST_CONFIG, NetworkingConfig=NETWORKING_CONFIG)


def check_container_create(body):
    """The type check of a create body, before anything is created (400 on the first misfit)."""
    if not isinstance(body, dict):
        _fail(body, "ContainerConfigWrapper", CONTAINER_CREATE)
    for key, table in CONFIG.items():
        if key in body:
            check(body[key], table, f"ContainerConfigWrapper.Config.{key}")
    if "HostConfig" in body:
        check(body["HostConfig"], HOST_CONFIG, "ContainerConfigWrapper.HostConfig")
    if "NetworkingConfig" in body:
        check(body["NetworkingConfig"], NETWORKING_CONFIG, "ContainerConfigWrapper.NetworkingConfig")


# --- the other JSON bodies ------------------------------------------------------------------------

EXEC_CREATE = {"User": STR, "Privileged": BOOL, "Tty": BOOL, "ConsoleSize": [UINT],
               "AttachStdin": BOOL, "AttachStdout": BOOL, "AttachStderr": BOOL, "Detach": BOOL,
               "DetachKeys": STR, "Env": STRS, "WorkingDir": STR, "Cmd": STRSLICE}
EXEC_START = {"Detach": BOOL, "Tty": BOOL, "ConsoleSize": [UINT]}
VOLUME_CREATE = {"Name": STR, "Driver": STR, "DriverOpts": STRMAP, "Labels": STRMAP,
                 "ClusterVolumeSpec": ANY}
CONTAINER_UPDATE = dict(RESOURCES, RestartPolicy={"Name": STR, "MaximumRetryCount": INT})

BODIES = {"ExecConfig": EXEC_CREATE, "ExecStartCheck": EXEC_START,
          "VolumeCreateOptions": VOLUME_CREATE, "UpdateConfig": CONTAINER_UPDATE,
          "HostConfig": HOST_CONFIG}


def check_body(body, kind):
    """The type check of another JSON body (`kind` names its Go struct, a key of BODIES)."""
    table = BODIES[kind]
    if not isinstance(body, dict):
        _fail(body, kind, table)
    check(body, table, kind)
