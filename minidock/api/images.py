"""Image routes: import and pull, list, inspect, history, tag, remove, save/load, push, search, commit."""

import json

from minidock import errors, http, imagearchive, imagecreate, reference
from minidock.api import streaming
from minidock.api.versions import route


def post_images_create(req):
    images = req.daemon.images
    if req.has("fromSrc"):
        src = req.q("fromSrc")
        repo, tag = req.q("repo") or None, req.q("tag") or None
        changes, message = req.qlist("changes"), req.q("message") or ""
        if src == "-":
            image_id = imagecreate.import_image(images, req.body, repo, tag, changes, message, source="-")
        else:
            image_id = imagecreate.import_url(images, src, repo, tag, changes, message)
        return req.render("image_import", {"status": image_id}, stream=True)
    name = req.q("fromImage")
    if not name:
        raise errors.InvalidParameter("fromImage or fromSrc is required")
    tag = req.q("tag") or None
    name = f"{name}@{tag}" if tag and tag.startswith("sha256:") else f"{name}:{tag}" if tag else name
    auth = req.daemon.registry.auth_from_header(req.head.header("x-registry-auth"))
    reference.parse(name)          # a bad name is a 400 before streaming starts

    def work(pipe):
        req.daemon.registry.pull(name, auth, pipe.json_line, pipe.cancelled)
    return streaming.progress_response(req, work, name="pull")


def get_images_json(req):
    rows = req.daemon.images.list(all=req.qbool("all"), filters=req.filters(), name_filter=req.q("filter"),
                                  digests=req.qbool("digests"))
    return req.render("image_list", rows)


def get_images_viz(req):
    """v1.2-v1.11 `GET /images/viz`: the image graph in Graphviz dot (`docker images --viz`).

    One edge per parent -> child, a hidden `base` node above every image without a parent, and a
    box labelled with its names for each tagged image; IDs are the 12-hex short form.
    """
    rows = req.daemon.images.list(all=True)
    short = lambda image_id: image_id.split(":", 1)[-1][:12]      # noqa: E731
    lines = ["digraph docker {"]
    for row in sorted(rows, key=lambda r: r["Id"]):
        if row["ParentId"]:
            lines.append(f'"{short(row["ParentId"])}" -> "{short(row["Id"])}"')
        else:
            lines.append(f'base -> "{short(row["Id"])}" [style=invis]')
    for row in sorted(rows, key=lambda r: r["Id"]):
        tags = [t for t in row["RepoTags"] if t != "<none>:<none>"]
        if tags:
            label = "\\n".join([short(row["Id"])] + tags)
            lines.append(f'"{short(row["Id"])}" [label="{label}",shape=box,fillcolor="paleturquoise",'
                         f'style="filled,rounded"];')
    lines.append("base [style=invisible]")
    lines.append("}")
    return http.Response(200, ("\n".join(lines) + "\n").encode(), content_type="text/plain")


def post_images_insert(req):
    """v1.2-v1.12 `POST /images/(name)/insert?url=&path=`: fetch `url` and add it as the file
    `path` in a new layer on top of image `name`, streaming progress; the last line carries the
    new (untagged) image's ID."""
    images = req.daemon.images
    name, url, path = req.params["name"], req.q("url") or "", req.q("path") or ""
    images.resolve(name)                        # 404 before the stream starts

    def work(pipe):
        image_id = imagecreate.insert_url(images, name, path, url, pipe.json_line, pipe.cancelled)
        if image_id:
            pipe.json_line({"status": image_id.split(":", 1)[-1]})
    return streaming.progress_response(req, work, name="insert")


def get_images_inspect(req):
    return req.render("image", req.daemon.images.inspect(req.params["name"]))


def get_images_history(req):
    return req.render("history", req.daemon.images.history(req.params["name"]))


def post_images_tag(req):
    args = req.adapt("image_tag", {"force": True})       # today's Docker moves a tag silently
    req.daemon.images.tag(req.params["name"], req.q("repo"), req.q("tag") or None, force=args["force"])
    return req.render("image_tag", None, status=201)


def delete_images(req):
    containers = req.daemon.containers

    def users(image_id):
        return [(c.id, c.running) for c in containers.all() if c.record["Image"] == image_id]
    records = req.daemon.images.delete(req.params["name"], force=req.qbool("force"),
                                       noprune=req.qbool("noprune"), users=users)
    return http.Response.json(records)


def get_images_get(req):
    names = req.qlist("names") if "name" not in req.params else [req.params["name"]]
    if not names:
        raise errors.InvalidParameter("no image names given")
    spool = imagearchive.save_spooled(req.daemon.images, names)

    def chunks():
        try:
            while True:
                data = spool.read(1 << 20)
                if not data:
                    return
                yield data
        finally:
            spool.close()
    return http.StreamResponse(chunks(), content_type="application/x-tar")


def post_images_load(req):
    loaded = imagearchive.load(req.daemon.images, req.body)
    lines = []
    for item in loaded:
        if item["tags"]:
            lines += [{"stream": f"Loaded image: {t}\n"} for t in item["tags"]]
        else:
            lines.append({"stream": f"Loaded image ID: {item['id']}\n"})
    # `quiet` only silences progress bars (we send none): Docker still says what it loaded,
    # and the CLI asks for quiet whenever its output is not a terminal.
    req.qbool("quiet")
    return http.StreamResponse(iter([json.dumps(line).encode() + b"\n" for line in lines]))


def post_images_push(req):
    name = req.params["name"]
    tag = req.q("tag") or None
    auth = req.daemon.registry.auth_from_header(req.head.header("x-registry-auth"))
    auth = req.adapt("image_push", {"auth": auth})["auth"]
    try:
        req.daemon.images.resolve(f"{name}:{tag}" if tag else name)      # 404 before the stream starts
    except errors.NotFound:
        raise errors.NotFound(f"An image does not exist locally with the tag: {name}") from None

    def work(pipe):
        req.daemon.registry.push(name, tag, auth, pipe.json_line, pipe.cancelled)
    return streaming.progress_response(req, work, name="push")


def get_images_search(req):
    term = req.q("term")
    if not term:
        raise errors.InvalidParameter("term is required")
    auth = req.daemon.registry.auth_from_header(req.head.header("x-registry-auth"))
    results = req.daemon.registry.search(term, auth, limit=req.qint("limit", 25))
    return req.render("search", results)


def post_commit(req):
    overrides = req.json()
    if overrides is not None and not isinstance(overrides, dict):
        raise errors.InvalidParameter("commit config must be a JSON object")
    image_id = req.daemon.containers.commit(
        req.q("container") or "", pause=req.qbool("pause", default=True), repo=req.q("repo") or None,
        tag=req.q("tag") or None, comment=req.q("comment") or req.q("m") or "", author=req.q("author") or "",
        changes=req.qlist("changes"), overrides=overrides)
    return http.Response.json({"Id": image_id}, status=201)


ROUTES = [
    ("GET", "/images/json", get_images_json),
    ("GET", "/images/search", get_images_search),
    ("GET", "/images/get", get_images_get),
    route("GET", "/images/viz", get_images_viz, until="1.11"),
    ("POST", "/images/create", post_images_create),
    ("POST", "/images/load", post_images_load),
    ("POST", "/commit", post_commit),
    ("GET", "/images/{name:path}/json", get_images_inspect),
    ("GET", "/images/{name:path}/history", get_images_history),
    ("GET", "/images/{name:path}/get", get_images_get),
    ("POST", "/images/{name:path}/tag", post_images_tag),
    route("POST", "/images/{name:path}/insert", post_images_insert, until="1.12"),
    ("POST", "/images/{name:path}/push", post_images_push),
    ("DELETE", "/images/{name:path}", delete_images),
]
