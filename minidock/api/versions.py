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
   one still show it: the model keeps it, the newest shape drops it, and the older step puts it
   back (`removed_at()` says that as data: image inspect's `Container` at 1.45). Steps that only
   narrow a shape to the fields an older version had are data too, `fields_before()`. Kinds whose
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

from minidock import API_VERSION, MIN_API_VERSION, errors


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
REMOVED = {}         # kind -> (per item?, fields a later version stopped showing)
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


def removed_at(kind, at, fields, items=False):
    """From version `at` on, `kind` no longer shows `fields`; older versions show the model's."""
    REMOVED.setdefault(kind, []).append((items, tuple(fields)))

    def restore(shape, model):
        for field in fields:
            if field in model:
                shape[field] = model[field]
        return shape
    restore.__doc__ = f"before {at}: {', '.join(fields)} still shown"
    _register(kind, at, items, restore)


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
    for items, fields in REMOVED.get(kind, ()):
        drop = lambda obj: {k: v for k, v in obj.items() if k not in fields}     # noqa: E731
        shape = [drop(item) for item in shape] if items else drop(shape)
    for at, items, fn in STEPS.get(kind, ()):
        if version >= at:
            break
        if items:
            shape = [fn(dict(item), source) for item, source in zip(shape, model)]
        else:
            shape = fn(dict(shape) if isinstance(shape, dict) else shape, model)
    return shape


def item_shaper(kind, version):
    """For a list `kind` whose shaping at `version` works item by item (no NEWEST, every
    step and removal per item, no reply step): -> (key, fn(item) -> the item as `version`
    shows it), so one item can be shaped, and cached, alone; else None. Versions that shape
    items alike share the key: the steps that apply (none at all for the newest versions)."""
    if kind in NEWEST or kind in REPLY_STEPS or not all(items for items, _ in REMOVED.get(kind, ())):
        return None
    steps = [(at, fn) for at, items, fn in STEPS.get(kind, ()) if version < at]
    if not all(items for at, items, fn in STEPS.get(kind, ()) if version < at):
        return None
    removed = {field for _, fields in REMOVED.get(kind, ()) for field in fields}

    def shape(item):
        out = {k: v for k, v in item.items() if k not in removed} if removed else dict(item)
        for _, fn in steps:
            out = fn(dict(out), item)          # each step its own copy, as render() gives it
        return out
    return (kind, tuple(at for at, _ in steps)), shape


def reply(kind, version, **form):
    """The form of a `kind` reply at `version` (status, stream, content_type, ...): `form` is
    the newest version's, changed by every REPLY_STEPS entry above `version`."""
    found = dict(form)
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


def argument_since(kind, at, name, before=None):
    """The request argument `name` came with version `at`: older clients' requests have
    `before` there, whatever they send."""
    def older(args, req):
        args[name] = before
        return args
    older.__doc__ = f"`{name}` came with v{at}"
    request_step(kind, at)(older)


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

# Since v1.25 /info has no `ExecutionDriver` (there is none since Docker 1.11).
removed_at("info", "1.25", ["ExecutionDriver"])


@step("info", "1.25")
def _info_before_1_25(info, model):
    """Before v1.25 `SecurityOptions` were bare names (`seccomp`), not `name=seccomp,profile=...`."""
    info["SecurityOptions"] = [dict(kv.split("=", 1) for kv in option.split(",") if "=" in kv).get("name", option)
                               for option in model.get("SecurityOptions") or []]
    return info


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

# Image inspect: since v1.45 no `Container`/`ContainerConfig` (the config of the container a
# commit was made from; `Config` is the image's own); since v1.44 no `VirtualSize` (it had long
# been `Size` again: layers are shared).
removed_at("image", "1.45", ["Container", "ContainerConfig"])
removed_at("image", "1.44", ["VirtualSize"])


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

removed_at("image_list", "1.44", ["VirtualSize"], items=True)


@step("image_list", "1.43", items=True)
def _image_row_before_1_43(row, model):
    """Before v1.43 an untagged image showed `<none>:<none>` (and, with no digest either,
    `<none>@<none>`) instead of empty lists."""
    if not row["RepoTags"]:
        row["RepoDigests"] = row["RepoDigests"] or ["<none>@<none>"]
        row["RepoTags"] = ["<none>:<none>"]
    return row

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


# Attach, exec start and logs: since v1.42 the Content-Type says whether the stream carries the
# 8-byte stdout/stderr frames (multiplexed, no TTY) or the raw bytes of a TTY; before, always raw.
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
reply_before("stdio_stream", "1.42", content_type=RAW_STREAM)

# GET /containers/{id}/attach/ws: output in binary frames since v1.28, text frames before.
reply_before("attach_ws", "1.28", binary=False)
# ... and it honours `stdin`, `stdout`, `stderr` only since v1.42: before, those parameters were
# documented but ignored, and every stream was attached (moby's v1.42 changelog).
for _stream in ("stdin", "stdout", "stderr"):
    argument_since("attach_ws", "1.42", _stream, before=True)

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
            from minidock import registry      # only pushes need it (see registryservice.py)
            args["auth"] = registry.AuthConfig.from_dict(body)
    return args


# GET /system/df: its images are image summaries, shaped as the list is for each version.

@newest("system_df")
def _df_newest(model):
    df = dict(model)
    if "Images" in df:
        df["Images"] = render("image_list", model["Images"], MAX)
    return df


def _df_images_as(at):
    def shape_images(df, model):
        if "Images" in df:
            df["Images"] = render("image_list", model["Images"], parse(at))
        return df
    shape_images.__doc__ = f"df images as the image list of v{at} shows them"
    return shape_images


step("system_df", "1.44")(_df_images_as("1.43"))      # VirtualSize is back
step("system_df", "1.43")(_df_images_as("1.42"))      # and so are the <none> placeholders


# -- networks ----------------------------------------------------------------------------------------

# Since v1.28 the network list leaves out `Containers` (inspect one network for those).
removed_at("network_list", "1.28", ["Containers"], items=True)


# Container endpoints (inspect's and the list's NetworkSettings.Networks): before v1.45 the
# daemon put the container's short id into the Aliases of every user-defined network (the
# resolver answers it either way, DNSNames lists it since v1.44); before v1.44 there was no
# DNSNames.

def _endpoints(doc, fn):
    nets = (doc.get("NetworkSettings") or {}).get("Networks")
    if isinstance(nets, dict):
        doc["NetworkSettings"] = dict(doc["NetworkSettings"],
                                      Networks={name: fn(dict(ep), doc) for name, ep in nets.items()})
    return doc


def _alias_short_id(ep, doc):
    short = doc["Id"][:12]
    if ep.get("DNSNames") is not None and short not in (ep.get("Aliases") or []):   # user-defined
        ep["Aliases"] = list(ep.get("Aliases") or []) + [short]
    return ep


def _without_dns_names(ep, doc):
    ep.pop("DNSNames", None)
    return ep


def _endpoints_before_1_45(doc, model):
    """Before v1.45 a user-defined network's Aliases ended with the container's short id."""
    return _endpoints(doc, _alias_short_id)


def _endpoints_before_1_44(doc, model):
    """Before v1.44 endpoints had no DNSNames."""
    return _endpoints(doc, _without_dns_names)


for _kind, _items in (("container", False), ("container_list", True)):
    step(_kind, "1.45", items=_items)(_endpoints_before_1_45)
    step(_kind, "1.44", items=_items)(_endpoints_before_1_44)


def _without_mac(ep):
    """Before v1.44 an endpoint's `MacAddress` was output only (the container's Config.MacAddress
    set it): what an old client sends there is ignored."""
    return {k: v for k, v in ep.items() if k != "MacAddress"} if isinstance(ep, dict) else ep


@request_step("container_create", "1.44")
def _create_before_1_44(args, req):
    """Before v1.44 a container was created on one network only: several EndpointsConfig
    entries were refused (connect the others afterwards), and endpoint MAC addresses ignored."""
    body = dict(args["body"])
    networking = body.get("NetworkingConfig")
    if not isinstance(networking, dict) or not isinstance(networking.get("EndpointsConfig"), dict):
        return args                      # absent, or refused by the backend as at any version
    endpoints = {name: _without_mac(ep) for name, ep in networking["EndpointsConfig"].items()}
    if len(endpoints) > 1:
        raise errors.InvalidParameter(f"Container cannot be connected to network endpoints: "
                                      f"{', '.join(endpoints)}")
    body["NetworkingConfig"] = dict(networking, EndpointsConfig=endpoints)
    args["body"] = body
    return args


@request_step("network_connect", "1.44")
def _connect_before_1_44(body, req):
    """Before v1.44 connect ignored EndpointConfig.MacAddress too."""
    body["EndpointConfig"] = _without_mac(body.get("EndpointConfig"))
    return body


# -- containers --------------------------------------------------------------------------------------

@step("container_list", "1.46", items=True)
def _container_row_before_1_46(row, model):
    """A row's HostConfig shows the container's `Annotations` (given at create since 1.43) from
    v1.46 on."""
    if "Annotations" in row.get("HostConfig", {}):
        row["HostConfig"] = {k: v for k, v in row["HostConfig"].items() if k != "Annotations"}
    return row


@step("container", "1.44")
def _container_before_1_44(doc, model):
    """`HealthConfig.StartInterval` came with v1.44, `StartPeriod` with v1.29: older clients see a
    healthcheck without them."""
    return _without_health_fields(doc, ("StartInterval",))


@step("container", "1.29")
def _container_before_1_29(doc, model):
    return _without_health_fields(doc, ("StartPeriod",))


def _without_health_fields(doc, fields):
    health = (doc.get("Config") or {}).get("Healthcheck")
    if isinstance(health, dict) and any(f in health for f in fields):
        doc["Config"] = dict(doc["Config"], Healthcheck={k: v for k, v in health.items() if k not in fields})
    return doc


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


# POST /containers/{id}/wait: since v1.30 a `condition` and the headers sent at once (the wait is
# registered by then: the CLI starts the container when it sees them); before, the answer came
# whole when the container stopped, and `condition` did not exist.
reply_before("container_wait", "1.30", stream=False)


argument_since("container_wait", "1.30", "condition", before="not-running")


@newest("container_wait")
def _wait_newest(model):
    """{"StatusCode": n}, with `Error: {"Message": ...}` when a `removed` wait saw the removal
    fail (moby's WaitResponse.Error is omitempty)."""
    return {k: v for k, v in model.items() if k != "Error" or v is not None}


@step("container_wait", "1.34")
def _wait_before_1_34(doc, model):
    """Before v1.34 a failed removal was not reported to waiters: the exit code only."""
    doc.pop("Error", None)
    return doc


@request_step("container_create", "1.40")
def _create_before_1_40(args, req):
    """Before v1.40 a container's IPC namespace was "shareable" unless the client said otherwise
    (the daemon's default became "private")."""
    body = dict(args["body"])
    host_config = body.get("HostConfig") or {}
    if not isinstance(host_config, dict):
        return args                      # refused by the backend, as at any version
    host_config = dict(host_config)
    if not host_config.get("IpcMode"):
        host_config["IpcMode"] = "shareable"
    body["HostConfig"] = host_config
    args["body"] = body
    return args


argument_since("container_create", "1.41", "platform")     # docker run --platform
argument_since("container_stop", "1.42", "signal")          # docker stop -s (and restart)
argument_since("container_logs", "1.35", "until")           # docker logs --until
argument_since("build", "1.25", "cache_from", before=[])    # docker build --cache-from
argument_since("archive_put", "1.30", "copy_uid_gid", before=False)     # docker cp -a (PUT ?copyUIDGID)


@request_step("volume_prune", "1.42")
def _volume_prune_before_1_42(filters, req):
    """Before v1.42 a volume prune took every unused volume, named ones too (`all` is implied)."""
    filters["all"] = ["true"]
    return filters


@step("exec", "1.25")
def _exec_before_1_25(doc, model):
    """Exec inspect shows the process's `Pid` since v1.25."""
    doc.pop("Pid", None)
    return doc


# GET /containers/{id}/stats: `one-shot` (one sample at once, without priming precpu) came with
# v1.41; an older client's `one-shot=1` means nothing, as it did to its daemon.
argument_since("container_stats", "1.41", "one_shot", before=False)


@step("stats", "1.27")
def _stats_before_1_27(doc, model):
    """`online_cpus` (beside `percpu_usage`) came with v1.27 in cpu_stats and precpu_stats."""
    for key in ("cpu_stats", "precpu_stats"):
        if isinstance(doc.get(key), dict) and "online_cpus" in doc[key]:
            doc[key] = {k: v for k, v in doc[key].items() if k != "online_cpus"}
    return doc


@request_step("container_attach", "1.4")
def _attach_before_1_4(args, req):
    """Before v1.4, attaching to a container that is not running (without logs) was refused."""
    args["refuse_stopped"] = True
    return args
