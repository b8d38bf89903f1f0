"""API versions as data: the one place that knows how each Docker API version looked.

The Docker API is versioned by its clients: a request to `/v1.12/images/json` must be answered
exactly as a v1.12 daemon did, while `/v1.24/images/json` gets today's form. Three things change
between versions, and each is declared here rather than tested in handlers:

**Routes** come and go. A route carries the range of versions it exists in (`since`, `until`, both
inclusive) in its module's route table, and the router answers 404 outside it, as an old daemon
that never had it (or a new one that dropped it) does. See `route()`.

**Response shapes.** The backend returns one version-neutral *model* per kind (an image, a
container, an event), and `render(kind, model, version)` shapes it for the client:

    1. `NEWEST[kind]` turns the model into the newest shape (usually the model itself);
    2. then the kind's *migration steps* run from the newest version down. A step registered at
       version N turns the shape of N into the shape of the version before N, and runs for every
       request older than N. So the v1.12 form of an image is: newest -> step 1.23 -> step 1.12.

   A step receives the shape so far and the model, so a version may *remove* a field and an older
   one still show it (the model keeps it; the older step puts it back). Steps that only narrow a
   shape to the fields an older version had are written as data with `fields_before()`. Kinds whose
   model is a list have steps over the whole list, or per item (`items=True`).

   Some replies differ in more than their body: a status code (tag answered 200 before v1.12 and
   201 since) or a form (an import was one JSON object before v1.12, then a JSON-lines stream).
   Those are `REPLY_STEPS`, data in the same "from N down" sense.

**Request forms.** Old clients send what newer ones do not: a HostConfig in the start body, the
push credentials as a JSON body, `force` on tag. A *request step* at version N turns the request
arguments of a client older than N into the version-neutral arguments handlers work with
(`adapt(kind, args, req)`).

Handlers never see a version: they call `req.render(kind, model)` (or `req.adapt`), and the router
supplies the version. Adding API version N is adding routes with `since` N and steps at N.

The differences recorded here come from the seed pages in shared/seeds (v1.0, v1.2, v1.4, v1.12,
v1.23), see that README, and moby's API changelog (`docs/api/version-history.md`).
"""

from minidock import API_VERSION, MIN_API_VERSION, errors, registry


def parse(text):
    """'1.24' -> (1, 24). Raises InvalidParameter for anything else."""
    major, _, minor = str(text).partition(".")
    try:
        return (int(major), int(minor or 0))
    except ValueError:
        raise errors.InvalidParameter(f"invalid API version {text!r}")


def format(version):
    return f"{version[0]}.{version[1]}"


MAX = parse(API_VERSION)
MIN = parse(MIN_API_VERSION)


def check(text):
    """The version named by a `/vX.Y` prefix, refused with moby's messages when out of range."""
    version = parse(text)
    if version > MAX:
        raise errors.InvalidParameter(f"client version {text} is too new. "
                                      f"Maximum supported API version is {API_VERSION}")
    if version < MIN:
        raise errors.InvalidParameter(f"client version {text} is too old. "
                                      f"Minimum supported API version is {MIN_API_VERSION}, "
                                      f"please upgrade your client to a newer version")
    return version


# -- routes ------------------------------------------------------------------------------------------

def route(method, pattern, handler, since=None, until=None):
    """A route-table entry that exists only from API `since` to `until` (inclusive, "1.24")."""
    return (method, pattern, handler, (parse(since) if since else MIN, parse(until) if until else MAX))


def exists(span, version):
    return span[0] <= version <= span[1]


# -- response shapes ---------------------------------------------------------------------------------

NEWEST = {}          # kind -> fn(model) -> the newest shape
STEPS = {}           # kind -> [(version N, items?, fn(shape, model) -> shape before N)], newest first
REPLY_STEPS = {}     # kind -> [(version N, {"status": ..., "stream": ...})], newest first


def _register(kind, at, items, fn):
    steps = STEPS.setdefault(kind, [])
    steps.append((parse(at), items, fn))
    steps.sort(key=lambda s: s[0], reverse=True)


def step(kind, at, items=False):
    """Decorator: `fn(shape, model)` turns the `kind` shape of version `at` into the one before."""
    def register(fn):
        _register(kind, at, items, fn)
        return fn
    return register


def newest(kind):
    def register(fn):
        NEWEST[kind] = fn
        return fn
    return register


def fields_before(kind, at, fields, items=False):
    """Before version `at`, `kind` had only `fields` (in this order)."""
    def keep(shape, model):
        return {k: shape[k] for k in fields if k in shape}
    keep.__doc__ = f"before {at}: only {', '.join(fields)}"
    _register(kind, at, items, keep)


def reply_before(kind, at, **changes):
    """Before version `at`, the `kind` reply differed in status or form (`stream=False`)."""
    replies = REPLY_STEPS.setdefault(kind, [])
    replies.append((parse(at), changes))
    replies.sort(key=lambda s: s[0], reverse=True)


def render(kind, model, version):
    """`model` as API `version` presents it."""
    shape = NEWEST[kind](model) if kind in NEWEST else model
    for at, items, fn in STEPS.get(kind, ()):
        if version >= at:
            break
        if items:
            shape = [fn(dict(item), source) for item, source in zip(shape, model)]
        else:
            shape = fn(dict(shape) if isinstance(shape, dict) else shape, model)
    return shape


def reply(kind, version, status=200, stream=False):
    """The status and form of a `kind` reply at `version`: {"status": ..., "stream": ...}."""
    found = {"status": status, "stream": stream}
    for at, changes in REPLY_STEPS.get(kind, ()):
        if version >= at:
            break
        found.update(changes)
    return found


# -- request forms -----------------------------------------------------------------------------------

REQUEST_STEPS = {}   # kind -> [(version N, fn(args, req) -> args)], newest first


def request_step(kind, at):
    """Decorator: `fn(args, req)` reads a request from a client older than `at` in its old form."""
    def register(fn):
        steps = REQUEST_STEPS.setdefault(kind, [])
        steps.append((parse(at), fn))
        steps.sort(key=lambda s: s[0], reverse=True)
        return fn
    return register


def adapt(kind, args, req):
    """The version-neutral arguments of a `kind` request, `args` being the newest form's."""
    for at, fn in REQUEST_STEPS.get(kind, ()):
        if req.version >= at:
            break
        args = fn(dict(args), req)
    return args


# ====================================================================================================
# The kinds
# ====================================================================================================

# -- system ------------------------------------------------------------------------------------------

fields_before("info", "1.23", [
    "Containers", "Images", "Driver", "DriverStatus", "ExecutionDriver", "KernelVersion", "Debug", "NFd",
    "NGoroutines", "NEventsListener", "InitPath", "InitSha1", "IndexServerAddress", "MemoryLimit", "SwapLimit",
    "IPv4Forwarding", "ID", "Name", "Labels", "NCPU", "MemTotal", "DockerRootDir", "OperatingSystem",
    "CpuCfsPeriod", "CpuCfsQuota", "OomKillDisable", "ExperimentalBuild", "HttpProxy", "HttpsProxy", "NoProxy",
    "RegistryConfig", "SystemTime", "LoggingDriver"])
fields_before("info", "1.12", ["Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit",
                               "IPv4Forwarding"])
fields_before("info", "1.4", ["Containers", "Images", "Debug", "NFd", "NGoroutines", "MemoryLimit", "SwapLimit"])

fields_before("version", "1.23", ["ApiVersion", "Version", "GitCommit", "GoVersion", "Os", "Arch", "KernelVersion"])
fields_before("version", "1.12", ["Version", "GitCommit", "GoVersion"])


@newest("event")
def _event_newest(event):
    """Events carry private bookkeeping keys (`_...`) that no client sees."""
    return {k: v for k, v in event.items() if not k.startswith("_")}


@step("event", "1.22")
def _event_before_1_22(event, model):
    """Before v1.22 an event was only {status, id, from, time}. Non-container events had no old
    form; they are shown the way old daemons showed image events."""
    if "status" not in event:
        event["status"] = event["Action"]
        event["id"] = event["Actor"]["ID"]
    return {k: event[k] for k in ("status", "id", "from", "time") if k in event}


# -- images ------------------------------------------------------------------------------------------

fields_before("image", "1.23", ["Id", "Parent", "Comment", "Created", "Container", "ContainerConfig",
                                "DockerVersion", "Author", "Config", "Architecture", "Os", "Size", "VirtualSize",
                                "RepoTags", "GraphDriver"])


@step("image", "1.12")
def _image_before_1_12(doc, model):
    """Up to v1.11 image inspect showed the legacy v1 image JSON's lower-case keys (the v1.2 and
    v1.4 pages), with `Size` added by v1.4."""
    return {"id": doc["Id"].split(":", 1)[-1], "parent": doc["Parent"].split(":", 1)[-1],
            "created": doc["Created"], "container": doc["Container"],
            "container_config": doc["ContainerConfig"], "Size": doc["Size"]}


fields_before("image", "1.4", ["id", "parent", "created", "container", "container_config"])

# GET /images/json: a list of image summaries.
fields_before("image_list", "1.25", ["Id", "ParentId", "RepoTags", "RepoDigests", "Created", "Size", "VirtualSize",
                                     "Labels"], items=True)
fields_before("image_list", "1.13", ["Id", "ParentId", "RepoTags", "Created", "Size", "VirtualSize"], items=True)


@step("image_list", "1.7")
def _image_list_before_1_7(rows, model):
    """v1.0-v1.6 list images one row per Repository/Tag, not one per image with RepoTags."""
    out = []
    for row in rows:
        for tag in row["RepoTags"]:
            repo, _, name = tag.rpartition(":")
            out.append({"Repository": repo, "Tag": name, "Id": row["Id"].split(":", 1)[-1][:12],
                        "Created": row["Created"], "Size": row["Size"], "VirtualSize": row["VirtualSize"]})
    return out


@step("image_list", "1.4")
def _image_list_before_1_4(rows, model):
    """v1.4 added the sizes to each row."""
    return [{k: v for k, v in row.items() if k not in ("Size", "VirtualSize")} for row in rows]


fields_before("history", "1.12", ["Id", "Created", "CreatedBy", "Tags", "Size"], items=True)


@step("search", "1.4", items=True)
def _search_before_1_4(row, model):
    """v1.2 search rows are {Name, Description}; later ones the registry's lower-case keys."""
    return {"Name": row.get("name", ""), "Description": row.get("description", "")}


# POST /images/{name}/tag: 200 until v1.11, 201 Created since.
reply_before("image_tag", "1.12", status=200)
# POST /images/create?fromSrc: one JSON object until v1.11, a JSON-lines stream since.
reply_before("image_import", "1.12", stream=False)


@request_step("image_tag", "1.24")
def _tag_before_1_24(args, req):
    """Since v1.24 an existing tag is moved silently; before, only with ?force=1 (else 409)."""
    args["force"] = req.qbool("force")
    return args


@request_step("image_push", "1.5")
def _push_before_1_5(args, req):
    """v1.2-v1.4 clients sent the push credentials as the JSON body, not X-Registry-Auth."""
    if args["auth"] is None:
        body = req.json()
        if isinstance(body, dict):
            args["auth"] = registry.AuthConfig.from_dict(body)
    return args


# -- containers --------------------------------------------------------------------------------------

fields_before("container_list", "1.17", ["Id", "Names", "Image", "Command", "Created", "Status", "Ports", "SizeRw",
                                         "SizeRootFs"], items=True)


@step("container_list", "1.12", items=True)
def _container_row_before_1_12(row, model):
    """Before v1.12 a row showed the short ID, the image always with its tag, and `Ports` as a
    string ("" without published ports) instead of a list; no `Names`."""
    row["Id"] = row["Id"][:12]
    row["Image"] = row["Image"] if ":" in row["Image"] else row["Image"] + ":latest"
    row["Ports"] = ""
    return {k: row[k] for k in ("Id", "Image", "Command", "Created", "Status", "Ports", "SizeRw", "SizeRootFs")
            if k in row}


fields_before("container_list", "1.4", ["Id", "Image", "Command", "Created", "Status", "SizeRw", "SizeRootFs"],
              items=True)


@step("container", "1.20")
def _container_before_1_20(doc, model):
    """Before v1.20 the mounts were `Volumes` (destination -> source) and `VolumesRW` maps."""
    mounts = doc.pop("Mounts", None) or []
    doc["Volumes"] = {m["Destination"]: m.get("Source", "") for m in mounts}
    doc["VolumesRW"] = {m["Destination"]: m.get("RW", True) for m in mounts}
    return doc


@step("container", "1.4")
def _container_before_1_4(doc, model):
    """v1.2/v1.3 inspect had no HostConfig."""
    doc.pop("HostConfig", None)
    return doc


@request_step("container_attach", "1.4")
def _attach_before_1_4(args, req):
    """Before v1.4, attaching to a container that is not running (without logs) was refused."""
    args["refuse_stopped"] = True
    return args
