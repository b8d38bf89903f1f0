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


# -- images ------------------------------------------------------------------------------------

@reshaper("image_rows_legacy")
def _image_rows_legacy(rows, version):
    """v1.0-v1.6 list images one row per Repository/Tag, not one per image with RepoTags."""
    out = []
    for row in rows:
        for tag in row["RepoTags"]:
            repo, _, name = tag.rpartition(":")
            item = {"Repository": repo, "Tag": name, "Id": row["Id"].split(":", 1)[-1][:12],
                    "Created": row["Created"]}
            if version >= V("1.4"):
                item["Size"] = row["Size"]
                item["VirtualSize"] = row["VirtualSize"]
            out.append(item)
    return out


@reshaper("image")
def _image(doc, version):
    """Image inspect: up to v1.11 the keys were the legacy v1 image JSON's, lower-case (the v1.2
    and v1.4 pages), with `Size` added by v1.4; v1.12 shows the capitalised form."""
    if version < V("1.12"):
        old = {"id": doc["Id"].split(":", 1)[-1], "parent": doc["Parent"].split(":", 1)[-1],
               "created": doc["Created"], "container": doc["Container"],
               "container_config": doc["ContainerConfig"]}
        if version >= V("1.4"):
            old["Size"] = doc["Size"]
        return old
    return doc


FIELDS["image"] = [
    (V("1.11"), ["id", "parent", "created", "container", "container_config", "Size"]),
    (V("1.22"), ["Id", "Parent", "Comment", "Created", "Container", "ContainerConfig", "DockerVersion",
                 "Author", "Config", "Architecture", "Os", "Size", "VirtualSize", "RepoTags", "GraphDriver"]),
]

FIELDS["image_summary"] = [
    (V("1.12"), ["Id", "ParentId", "RepoTags", "Created", "Size", "VirtualSize"]),
    (V("1.22"), ["Id", "ParentId", "RepoTags", "RepoDigests", "Created", "Size", "VirtualSize", "Labels"]),
    (V("1.24"), ["Id", "ParentId", "RepoTags", "RepoDigests", "Created", "Size", "VirtualSize", "Labels"]),
]

FIELDS["history"] = [
    (V("1.11"), ["Id", "Created", "CreatedBy", "Tags", "Size"]),
]


@reshaper("search_result")
def _search_result(row, version):
    """v1.2 search rows are {Name, Description}; later ones the registry's lower-case keys."""
    if version < V("1.4"):
        return {"Name": row.get("name", ""), "Description": row.get("description", "")}
    return row


# -- containers --------------------------------------------------------------------------------

@reshaper("container_summary")
def _container_summary(row, version):
    if version < V("1.12"):
        row = dict(row)
        row["Id"] = row["Id"][:12]
        row["Image"] = row["Image"] if ":" in row["Image"] else row["Image"] + ":latest"
        row["Status"] = row["Status"]
        if version >= V("1.4"):
            row["Ports"] = ""               # a string in v1.4 ("" without published ports)
    return row


FIELDS["container_summary"] = [
    (V("1.3"), ["Id", "Image", "Command", "Created", "Status", "SizeRw", "SizeRootFs"]),
    (V("1.11"), ["Id", "Image", "Command", "Created", "Status", "Ports", "SizeRw", "SizeRootFs"]),
    (V("1.16"), ["Id", "Names", "Image", "Command", "Created", "Status", "Ports", "SizeRw", "SizeRootFs"]),
]


@reshaper("container")
def _container(doc, version):
    """Container inspect: before v1.20 the mounts were `Volumes`/`VolumesRW` maps; v1.2 had
    lower-case ID/State layout close to today's but no HostConfig."""
    if version < V("1.20"):
        doc = dict(doc)
        doc["Volumes"] = {m["Destination"]: m.get("Source", "") for m in doc.get("Mounts") or []}
        doc["VolumesRW"] = {m["Destination"]: m.get("RW", True) for m in doc.get("Mounts") or []}
        doc.pop("Mounts", None)
    if version < V("1.12"):
        doc.pop("HostConfig", None) if version < V("1.4") else None
    return doc
