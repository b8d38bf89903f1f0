"""Swarm, services, nodes, tasks, secrets, configs, plugins and BuildKit sessions: the answers of a
daemon that is not part of a swarm and has neither plugins nor BuildKit.

minidock is a single-host engine. Clients still ask: `docker info` reads `Swarm.LocalNodeState`,
`docker node ls` calls `GET /nodes`, compose and Testcontainers probe `/plugins`, and a CLI that
believes in BuildKit opens `POST /session`. A Docker daemon outside a swarm answers every swarm
endpoint with `503` and "This node is not a swarm manager..." (leaving: "This node is not part of
a swarm"), which clients print as is; `GET /plugins` is an empty list. minidock answers the same,
and refuses what it cannot become (a swarm manager, a plugin host, a BuildKit server) with `501`
and the reason, so the user learns what to do instead.
"""

from minidock import errors, http
from minidock.api.versions import route

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
                 'connect this node to swarm and try again.')
NOT_IN_A_SWARM = "This node is not part of a swarm"
NO_SWARM_MODE = "minidock is a single-host engine: it cannot init or join a swarm"
NO_BUILDKIT = ("minidock has no BuildKit; use the classic builder: set DOCKER_BUILDKIT=0 "
               "(or pass --builder with a buildx builder of your own)")


def not_a_manager(req):
    raise errors.Unavailable(NOT_A_MANAGER)


def post_swarm_leave(req):
    raise errors.Unavailable(NOT_IN_A_SWARM)


def no_swarm_mode(req):
    raise errors.NotImplementedKind(NO_SWARM_MODE)


def get_plugins(req):
    return http.Response.json([])


def get_plugin(req):
    raise errors.NotFound(f'plugin "{req.params["name"]}" not found')


def no_plugins(req):
    raise errors.NotImplementedKind("minidock does not run Docker plugins")


def no_buildkit(req):
    raise errors.NotImplementedKind(NO_BUILDKIT)


_SWARM_PATHS = ["/swarm", "/swarm/update", "/swarm/unlockkey", "/swarm/unlock",
                "/services", "/services/create", "/services/{id}", "/services/{id}/update",
                "/services/{id}/logs", "/nodes", "/nodes/{id}", "/nodes/{id}/update",
                "/tasks", "/tasks/{id}", "/tasks/{id}/logs",
                "/secrets", "/secrets/create", "/secrets/{id}", "/secrets/{id}/update",
                "/configs", "/configs/create", "/configs/{id}", "/configs/{id}/update"]
_METHODS = {"/swarm/update": "POST", "/swarm/unlock": "POST", "/services/create": "POST",
            "/services/{id}/update": "POST", "/nodes/{id}/update": "POST", "/secrets/create": "POST",
            "/secrets/{id}/update": "POST", "/configs/create": "POST", "/configs/{id}/update": "POST"}
# Secrets came with API 1.25, configs with 1.30; the rest of swarm mode with 1.24.
_SINCE = {"/secrets": "1.25", "/configs": "1.30"}


def _swarm_routes():
    routes = []
    for path in _SWARM_PATHS:
        since = next((v for prefix, v in _SINCE.items() if path.startswith(prefix)), "1.24")
        routes.append(route(_METHODS.get(path, "GET"), path, not_a_manager, since=since))
        if path.count("/") == 2 and path.endswith("{id}") and not path.startswith("/tasks"):
            routes.append(route("DELETE", path, not_a_manager, since=since))
    return routes


ROUTES = [
    route("POST", "/swarm/init", no_swarm_mode, since="1.24"),
    route("POST", "/swarm/join", no_swarm_mode, since="1.24"),
    route("POST", "/swarm/leave", post_swarm_leave, since="1.24"),
    *_swarm_routes(),
    route("GET", "/plugins", get_plugins, since="1.24"),
    route("GET", "/plugins/privileges", no_plugins, since="1.25"),
    route("POST", "/plugins/pull", no_plugins, since="1.25"),
    route("POST", "/plugins/create", no_plugins, since="1.25"),
    route("GET", "/plugins/{name:path}/json", get_plugin, since="1.24"),
    route("DELETE", "/plugins/{name:path}", get_plugin, since="1.24"),
    route("POST", "/plugins/{name:path}/enable", get_plugin, since="1.24"),
    route("POST", "/plugins/{name:path}/disable", get_plugin, since="1.24"),
    route("POST", "/session", no_buildkit, since="1.31"),
    route("POST", "/grpc", no_buildkit, since="1.40"),
]
