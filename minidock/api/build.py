"""Build route: POST /build, the classic builder's protocol.

The request body is the build context (a tar, maybe gzip/bzip2/xz compressed, sent chunked by
the CLI); the query carries the options. The context is unpacked before the response starts,
so a bad archive or option is a plain 4xx. Then the answer is a stream of JSON lines:
`{"stream": "Step 1/3 : FROM busybox\\n"}`, ..., `{"aux": {"ID": "sha256:..."}}`,
`{"stream": "Successfully built 0123456789ab\\n"}`, or, when a step fails,
`{"error": msg, "errorDetail": {"code": N, "message": msg}}`, which the CLI prints before it
exits non-zero. A client that hangs up cancels the build (a running RUN container is killed).
"""

import shutil

from minidock import errors, filters, http, reference
from minidock.api import streaming
from minidock.api.versions import route


def _json_param(req, name):
    value = req.qjson(name, {}) or {}
    if not isinstance(value, dict):
        raise errors.InvalidParameter(f"{name} must be a JSON object")
    return value


def _options(req):
    # Imported here, not at the top: the builder (and the registry client it pulls with) is
    # ~20 ms of imports and several MB that a daemon which never builds should not pay at start.
    from minidock import builder, registry
    tags = [t for t in req.qlist("t") if t]
    for tag in tags:
        ref = reference.parse(tag)        # Docker refuses a bad tag before building
        if ref.digest:
            raise errors.InvalidParameter(f"invalid reference format: {tag!r} has a digest")
    buildargs = _json_param(req, "buildargs")
    labels = _json_param(req, "labels")
    host_config = {}
    for param, key in builder.LIMITS.items():
        value = req.q(param)
        if value in (None, ""):
            continue
        if key in ("CpusetCpus", "CpusetMems"):
            host_config[key] = value
        else:
            host_config[key] = req.qint(param)
    host_config = {k: v for k, v in host_config.items() if v not in (0, "")}
    # The RUN containers' network (`networkmode`, API 1.25) and extra /etc/hosts lines
    # (`extrahosts`, "name:ip,...", API 1.28), as `docker build --network/--add-host` send them.
    network = req.q("networkmode") or ""
    if network and network != "default":
        host_config["NetworkMode"] = network
    extra = [h for h in (req.q("extrahosts") or "").split(",") if h]
    if extra:
        host_config["ExtraHosts"] = extra
    # Images whose history is a cache for the steps (`cachefrom`, API 1.25: a JSON list).
    cache_from = req.qjson("cachefrom", []) or []
    if not isinstance(cache_from, list) or not all(isinstance(n, str) for n in cache_from):
        raise errors.InvalidParameter("cachefrom must be a JSON list of image names")
    cache_from = req.adapt("build", {"cache_from": cache_from})["cache_from"]
    try:
        configs = registry.decode_registry_config(req.head.header("x-registry-config"))
    except errors.InvalidParameter:
        configs = {}          # as dockerd: a bad X-Registry-Config only means no credentials
    auth = next(iter(configs.values()), None)
    return builder.Options(
        tags=tags,
        dockerfile=req.q("dockerfile") or builder.DEFAULT_DOCKERFILE,
        nocache=req.qbool("nocache"),
        rm=req.qbool("rm", default=True),
        forcerm=req.qbool("forcerm"),
        pull=req.qbool("pull"),
        buildargs={str(k): (None if v is None else str(v)) for k, v in buildargs.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        target=req.q("target") or "",
        cache_from=cache_from,
        host_config=host_config,
        auth=auth,
    )


def post_build(req):
    from minidock import builder         # (see _options)
    options = _options(req)
    engine = req.daemon
    context = engine.layers.tmpdir()
    try:
        remote = req.q("remote")
        if remote:
            builder.fetch_remote(remote, context, options.dockerfile)
        else:
            builder.extract_context(req.body, context)
    except BaseException:
        shutil.rmtree(context, ignore_errors=True)
        raise
    quiet = req.qbool("q")

    def run(pipe):
        def say(obj):
            if not (quiet and "stream" in obj):
                pipe.json_line(obj)
        try:
            image = builder.Builder(engine, context, options, say, pipe.cancelled).run()
            if quiet:
                pipe.json_line({"stream": image + "\n"})
        finally:
            shutil.rmtree(context, ignore_errors=True)

    return streaming.progress_response(req, run, name="build")


def post_build_prune(req):
    """The classic builder keeps no cache apart from images (its steps are images, which
    `docker image prune` removes): there is nothing else to free. The filters are checked."""
    filters.check_keys(req.filters(), ("until", "id", "parent", "type", "description", "inuse", "shared",
                                       "private"))
    return http.Response.json({"CachesDeleted": None, "SpaceReclaimed": 0})


ROUTES = [
    ("POST", "/build", post_build),
    route("POST", "/build/prune", post_build_prune, since="1.31"),
]
