"""Per-version response shapes: the one place that knows how old API versions looked.

Handlers build the newest (v1.24) form of a response and pass it through `shape(kind, obj,
version)`. For most kinds an old version simply saw fewer fields; those are declared as data in
`FIELDS` — for each kind, a list of (last version of that shape, the fields it had), oldest first.
Kinds whose old form is a different *structure* (not a subset) have a function in `RESHAPERS`.

The differences recorded here come from the seed pages in shared/seeds (v1.0, v1.2, v1.4, v1.12,
v1.23); see that README for the notable ones.
"""

from minidock import errors

V = lambda text: tuple(int(x) for x in text.split("."))   # noqa: E731  '1.12' -> (1, 12)

FIELDS = {
    # GET /info
    "info": [
        (V("1.3"), ["Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit"]),
        (V("1.11"), ["Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit",
                     "IPv4Forwarding"]),
        (V("1.22"), ["Containers", "Images", "Driver", "DriverStatus", "ExecutionDriver", "KernelVersion",
                     "Debug", "NFd", "NGoroutines", "NEventsListener", "InitPath", "InitSha1",
                     "IndexServerAddress", "MemoryLimit", "SwapLimit", "IPv4Forwarding", "ID", "Name",
                     "Labels", "NCPU", "MemTotal", "DockerRootDir", "OperatingSystem", "CpuCfsPeriod",
                     "CpuCfsQuota", "OomKillDisable", "ExperimentalBuild", "HttpProxy", "HttpsProxy",
                     "NoProxy", "RegistryConfig", "SystemTime", "LoggingDriver"]),
    ],
    # GET /version
    "version": [
        (V("1.11"), ["Version", "GitCommit", "GoVersion"]),
        (V("1.22"), ["ApiVersion", "Version", "GitCommit", "GoVersion", "Os", "Arch", "KernelVersion"]),
    ],
    # One event of GET /events: before v1.22 only the status/id/from/time form existed.
    "event": [
        (V("1.21"), ["status", "id", "from", "time"]),
    ],
}

RESHAPERS = {}


def reshaper(kind):
    def register(fn):
        RESHAPERS[kind] = fn
        return fn
    return register


def shape(kind, obj, version):
    """Return `obj` (the newest form) as API `version` presents it."""
    if kind in RESHAPERS:
        obj = RESHAPERS[kind](obj, version)
    for last, fields in FIELDS.get(kind, ()):
        if version <= last:
            return {k: obj[k] for k in fields if k in obj}
    return obj


def shape_list(kind, items, version):
    return [shape(kind, item, version) for item in items]


@reshaper("event")
def _event(event, version):
    event = {k: v for k, v in event.items() if not k.startswith("_")}
    if version < V("1.22") and "status" not in event:
        # Non-container events had no old form; show them the way old daemons showed image events.
        event["status"] = event["Action"]
        event["id"] = event["Actor"]["ID"]
    return event


def require(version, minimum, what):
    """Raise NotFound the way an older daemon would for a route it did not have yet."""
    if version < V(minimum):
        raise errors.NotFound(f"{what} requires API version {minimum}")
