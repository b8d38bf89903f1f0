"""Exec routes: create, start (hijacked or detached), resize, inspect."""

from minidock import errors, http


def post_containers_exec(req):
    eid = req.daemon.execs.create(req.params["id"], req.json(required=True))
    return http.Response.json({"Id": eid}, status=201)


def post_exec_start(req):
    body = req.json() or {}
    if not isinstance(body, dict):
        raise errors.InvalidParameter("exec start body must be a JSON object")
    if body.get("Detach"):
        req.daemon.execs.start(req.params["id"], detach=True, tty=body.get("Tty"))
        return http.Response.empty(200)
    # 404 and 409 come before any upgrade
    return http.Hijack(req.daemon.execs.start_session(req.params["id"], tty=body.get("Tty")))


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
