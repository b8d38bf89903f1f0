"""Container routes: create, start, stop, kill, wait, attach, logs, list, inspect, ...

The backend is minidock/containers.py; attach sessions live in minidock/container/attach.py."""

import json
import time

from minidock import errors, http, times, websocket
from minidock.api import versions
from minidock.api.versions import route
from minidock.container import attach


def _backend(req):
    return req.daemon.containers


# -- create / inspect / list -------------------------------------------------------------------

def post_containers_create(req):
    body = req.json(required=True)
    if not isinstance(body, dict):
        raise errors.InvalidParameter("container config must be a JSON object")
    args = req.adapt("container_create", {"platform": req.q("platform") or None, "body": body})
    body = args["body"]
    cid, warnings = _backend(req).create(body, req.q("name"), platform=args["platform"])
    return http.Response.json({"Id": cid, "Warnings": warnings or None}, status=201)


def get_containers_json(req):
    args = {"all_": req.qbool("all"), "limit": req.qint("limit", -1), "since": req.q("since"),
            "before": req.q("before"), "filters": req.filters(), "size": req.qbool("size")}
    shaper = versions.item_shaper("container_list", req.version)
    if shaper is None:                  # a version whose shape is not row by row
        return req.render("container_list", _backend(req).summaries(**args))
    # Rows cached as JSON while their containers do not change: `docker ps -a` with 1,000
    # containers in a few ms (docs/performance.md, "Listing"). Exactly the bytes of the line above.
    body = _backend(req).summaries_json(shaper, **args)
    return http.Response(200, body + b"\n", None, "application/json")


def get_containers_inspect(req):
    record = _backend(req).inspect(req.params["id"], size=req.qbool("size"))
    return req.render("container", record)


# -- lifecycle ---------------------------------------------------------------------------------

def post_containers_start(req):
    host_config = req.json()
    if host_config is not None and not isinstance(host_config, dict):
        raise errors.InvalidParameter("start body must be a HostConfig JSON object")
    _backend(req).start(req.params["id"], host_config or None)
    return http.Response.empty(204)


def _stop_args(req):
    return req.adapt("container_stop", {"timeout": req.qint("t"), "signal": req.q("signal") or None})


def post_containers_stop(req):
    args = _stop_args(req)
    _backend(req).stop(req.params["id"], args["timeout"], args["signal"])
    return http.Response.empty(204)


def post_containers_restart(req):
    args = _stop_args(req)
    _backend(req).restart(req.params["id"], args["timeout"], args["signal"])
    return http.Response.empty(204)


def post_containers_kill(req):
    _backend(req).kill(req.params["id"], req.q("signal") or "KILL")
    return http.Response.empty(204)


def post_containers_pause(req):
    _backend(req).pause(req.params["id"])
    return http.Response.empty(204)


def post_containers_unpause(req):
    _backend(req).unpause(req.params["id"])
    return http.Response.empty(204)


def post_containers_wait(req):
    args = req.adapt("container_wait", {"condition": req.q("condition") or "not-running"})
    result = _backend(req).waiter(req.params["id"], args["condition"])

    def answer():
        code, error = result(req.disconnected)
        return {"StatusCode": code, "Error": {"Message": error} if error else None}
    return req.render("container_wait", answer, stream=True)


def delete_containers(req):
    if req.qbool("link"):               # `docker rm --link /web/alias`: only the link goes
        ref = req.params.get("id") or f"/{req.params['link_parent']}/{req.params['link_alias']}"
        parent = req.daemon.networks.remove_link(ref)
        _backend(req).save(parent)
        return http.Response.empty(204)
    _backend(req).remove(req.params["id"], force=req.qbool("force"), volumes=req.qbool("v"))
    return http.Response.empty(204)


def post_containers_prune(req):
    deleted, reclaimed = _backend(req).prune(req.filters())
    return http.Response.json({"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed})


def post_containers_rename(req):
    _backend(req).rename(req.params["id"], req.q("name"))
    return http.Response.empty(204)


def post_containers_update(req):
    warnings = _backend(req).update(req.params["id"], req.json(required=True))
    return http.Response.json({"Warnings": warnings or None})


def post_containers_resize(req):
    _backend(req).resize(req.params["id"], req.qint("h", 0), req.qint("w", 0))
    return http.Response(200, b"", content_type="text/plain")


def get_containers_top(req):
    result = _backend(req).top(req.params["id"], req.q("ps_args"))
    return http.Response.json(result)


# -- stats -------------------------------------------------------------------------------------

STATS_INTERVAL = 1.0        # moby's collector samples once a second


def get_containers_stats(req):
    """`docker stats`: one JSON object a second (stream), or one primed object (stream=0: the
    first sample only fills precpu_stats, moby discards it), or one at once (one-shot)."""
    stream = req.qbool("stream", True)
    one_shot = req.adapt("container_stats", {"one_shot": req.qbool("one-shot")})["one_shot"]
    if stream and one_shot:
        raise errors.InvalidParameter("cannot have stream=true and one-shot=true")
    samples, running = _backend(req).stats(req.params["id"])
    if not stream:
        if one_shot or not running:
            return req.render("stats", samples.next())
        samples.next()
        _sleep(req, STATS_INTERVAL)
        return req.render("stats", samples.next())

    shape = req.shaper("stats")

    def produce():
        while True:
            yield json.dumps(shape(samples.next())).encode() + b"\n"
            if not _sleep(req, STATS_INTERVAL):
                return
    return http.StreamResponse(produce(), content_type="application/json")


def _sleep(req, seconds):
    """Sleep in small steps; False as soon as the client has gone."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if req.disconnected():
            return False
        time.sleep(min(0.1, left))
    return not req.disconnected()


# -- logs --------------------------------------------------------------------------------------

def get_containers_logs(req):
    stdout, stderr = req.qbool("stdout"), req.qbool("stderr")
    follow, timestamps, details = req.qbool("follow"), req.qbool("timestamps"), req.qbool("details")
    tail_text = req.q("tail", "all")
    tail = None if tail_text in ("all", "") else _int(tail_text, "tail")
    args = req.adapt("container_logs", {"since": times.parse_timestamp(req.q("since")),
                                         "until": times.parse_timestamp(req.q("until"))})
    since = (args["since"] or 0) / times.NS
    until = args["until"] / times.NS if args["until"] else None
    wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    tty, blocks = _backend(req).logs(req.params["id"], wanted, follow=follow, since=since, until=until,
                                     tail=tail, stop=req.disconnected, timestamps=timestamps,
                                     details=details)

    def render():
        # Blocks hold many entries (up to a 256 KiB read's worth): a large one goes out as its
        # frame header and then itself, two writes rather than a copy.
        for stream, data in blocks:
            if tty:
                yield data
            elif len(data) < LARGE:
                yield http.frame(http.STDOUT if stream == "stdout" else http.STDERR, data)
            else:
                yield http.FRAME_HEADER.pack(http.STDOUT if stream == "stdout" else http.STDERR, len(data))
                yield data

    return http.StreamResponse(render(), content_type=req.stdio_type(tty))


LARGE = 65536


def _int(text, name):
    try:
        return int(text)
    except ValueError:
        raise errors.InvalidParameter(f"invalid value for {name}: {text!r}")


# -- attach ------------------------------------------------------------------------------------

def _attach_options(req):
    return attach.Options(stdin=req.qbool("stdin"), stdout=req.qbool("stdout"), stderr=req.qbool("stderr"),
                          logs=req.qbool("logs"), stream=req.qbool("stream"),
                          detach_keys=req.q("detachKeys"))


def post_containers_attach(req):
    opts = _attach_options(req)
    tty, run = _backend(req).attach(req.params["id"], opts,
                                    must_run=req.adapt("container_attach", {"refuse_stopped": False})["refuse_stopped"]
                                    and not opts.logs)
    return http.Hijack(run, headers=[("Content-Type", req.stdio_type(tty))])


def get_containers_attach_ws(req):
    """The same attach over a WebSocket (minidock/websocket.py): output goes out as data frames
    of raw bytes (never multiplexed, as Docker does; binary since v1.28, text before), data
    frames from the client are the container's stdin."""
    try:
        key = websocket.check_handshake(req.head.header)
    except websocket.ProtocolError as exc:
        raise errors.InvalidParameter(str(exc))
    opts = _attach_options(req)
    # Which streams: the query's since v1.42, all three before (api/versions.py).
    streams = req.adapt("attach_ws", {"stdin": opts.stdin, "stdout": opts.stdout, "stderr": opts.stderr})
    opts.stdin, opts.stdout, opts.stderr = streams["stdin"], streams["stdout"], streams["stderr"]
    opts.binary = req.form("attach_ws", binary=True)["binary"]
    _, run = _backend(req).attach(req.params["id"], opts, websocket=True)
    return http.Hijack(run, switch_headers=websocket.handshake_headers(key))


ROUTES = [
    ("GET", "/containers/json", get_containers_json),
    ("GET", "/containers/ps", get_containers_json),          # v1.0's name for the list
    ("POST", "/containers/create", post_containers_create),
    route("POST", "/containers/prune", post_containers_prune, since="1.25"),
    ("GET", "/containers/{id}/json", get_containers_inspect),
    ("GET", "/containers/{id}/top", get_containers_top),
    ("GET", "/containers/{id}/logs", get_containers_logs),
    ("GET", "/containers/{id}/stats", get_containers_stats),
    ("POST", "/containers/{id}/start", post_containers_start),
    ("POST", "/containers/{id}/stop", post_containers_stop),
    ("POST", "/containers/{id}/restart", post_containers_restart),
    ("POST", "/containers/{id}/kill", post_containers_kill),
    ("POST", "/containers/{id}/pause", post_containers_pause),
    ("POST", "/containers/{id}/unpause", post_containers_unpause),
    ("POST", "/containers/{id}/wait", post_containers_wait),
    ("POST", "/containers/{id}/rename", post_containers_rename),
    ("POST", "/containers/{id}/update", post_containers_update),
    ("POST", "/containers/{id}/resize", post_containers_resize),
    ("POST", "/containers/{id}/attach", post_containers_attach),
    ("GET", "/containers/{id}/attach/ws", get_containers_attach_ws),
    ("DELETE", "/containers/{id}", delete_containers),
    ("DELETE", "/containers/{link_parent}/{link_alias}", delete_containers),  # rm --link /web/pg
]
