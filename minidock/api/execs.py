"""Exec routes: create, start (hijacked or detached), resize, inspect."""

from minidock import errors, http


def post_containers_exec(req):
    eid = req.daemon.execs.create(req.params["id"], req.json(required=True))
    return http.Response.json({"Id": eid}, status=201)


def post_exec_start(req):
    body = req.json() or {}
    if not isinstance(body, dict):
        raise errors.InvalidParameter("exec start body must be a JSON object")
    execs = req.daemon.execs
    e = execs.get(req.params["id"])                  # 404 before any upgrade
    if e.record["Running"] or e.record["ExitCode"] is not None:
        raise errors.Conflict(f"Error: Exec command {e.id} has already run")
    if body.get("Detach"):
        execs.start(e.id, detach=True, tty=body.get("Tty"))
        return http.Response.empty(200)
    return http.Hijack(lambda conn: execs.start(e.id, tty=body.get("Tty"), conn=conn))


def post_exec_resize(req):
    req.daemon.execs.resize(req.params["id"], req.qint("h", 0), req.qint("w", 0))
    return http.Response(201, b"", content_type="text/plain")


def get_exec_json(req):
    return req.render("exec", req.daemon.execs.inspect(req.params["id"]))


ROUTES = [
    ("POST", "/containers/{id}/exec", post_containers_exec),
    ("POST", "/exec/{id}/start", post_exec_start),
    ("POST", "/exec/{id}/resize", post_exec_resize),
    ("GET", "/exec/{id}/json", get_exec_json),
]
