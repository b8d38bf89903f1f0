"""Image routes: import and pull, list, inspect, history, tag, remove, save/load, push, search, commit."""

import json
import shutil
import tempfile
import urllib.request

from minidock import errors, http, registry
from minidock.api import streaming
from minidock.api.versions import shape, shape_list


def _progress_stream(req, work):
    """Stream `work(say, cancelled)`'s JSON lines; failures become the error line the CLI prints."""
    def run(pipe):
        try:
            work(pipe.json_line, pipe.cancelled)
        except registry.Cancelled:
            pass
        except errors.MinidockError as exc:
            pipe.error_line(exc.message)
        except BrokenPipeError:
            raise
        except Exception as exc:          # noqa: BLE001 - reported to the client, not swallowed
            pipe.error_line(f"{type(exc).__name__}: {exc}")
    return streaming.worker_response(req, run, name="progress")


def post_images_create(req):
    images = req.daemon.images
    if req.has("fromSrc"):
        src = req.q("fromSrc")
        repo, tag = req.q("repo") or None, req.q("tag") or None
        changes = req.qlist("changes")
        message = req.q("message") or ""
        if src == "-":
            image_id = images.import_image(req.body, repo, tag, changes, message, source="-")
        else:
            if not src.startswith(("http://", "https://")):
                raise errors.InvalidParameter(f"fromSrc must be '-' or an http(s) URL, got {src!r}")
            try:
                with urllib.request.urlopen(src, timeout=60) as response:
                    image_id = images.import_image(response, repo, tag, changes, message, source=src)
            except OSError as exc:
                raise errors.InvalidParameter(f"could not fetch {src}: {exc}")
        req.daemon.events.emit("image", "import", image_id, {"name": f"{repo}:{tag or 'latest'}" if repo else ""})
        if req.version < (1, 12):
            return http.Response.json({"status": image_id})
        return http.StreamResponse(iter([json.dumps({"status": image_id}).encode() + b"\r\n"]))
    name = req.q("fromImage")
    if not name:
        raise errors.InvalidParameter("fromImage or fromSrc is required")
    tag = req.q("tag") or None
    reference = f"{name}@{tag}" if tag and tag.startswith("sha256:") else f"{name}:{tag}" if tag else name
    auth = req.daemon.registry.auth_from_header(req.head.header("x-registry-auth"))
    registry.parse_reference(reference)          # a bad name is a 400 before streaming starts

    def work(say, cancel):
        req.daemon.registry.pull(reference, auth, say, cancel)
    return _progress_stream(req, work)


def get_images_json(req):
    images = req.daemon.images
    filters = req.filters()
    rows = images.list(all=req.qbool("all"), filters=filters, name_filter=req.q("filter"),
                       digests=req.qbool("digests"))
    return http.Response.json(shape_list("image_summary", rows, req.version)
                              if req.version >= (1, 7) else shape("image_rows_legacy", rows, req.version))


def get_images_viz(req):
    """v1.2-v1.11 `GET /images/viz`: the image graph in Graphviz dot (`docker images --viz`).

    One edge per parent -> child, a hidden `base` node above every image without a parent, and a
    box labelled with its names for each tagged image; IDs are the 12-hex short form.
    """
    if req.version >= (1, 12):
        raise errors.NotFound(f"page not found: {req.path}")
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
    if req.version >= (1, 13):
        raise errors.NotFound(f"page not found: {req.path}")
    images = req.daemon.images
    name, url, path = req.params["name"], req.q("url") or "", req.q("path") or ""
    if not url.startswith(("http://", "https://")):
        raise errors.InvalidParameter(f"url must be an http(s) URL, got {url!r}")
    if not path:
        raise errors.InvalidParameter("path is required")
    images.resolve(name)                        # 404 before the stream starts

    def work(say, cancel):
        say({"status": "Inserting..."})
        spool_dir = req.daemon.layers.tmpdir()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, \
                    tempfile.TemporaryFile(dir=spool_dir) as spool:
                total, current = response.length, 0
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    if cancel():
                        return
                    spool.write(chunk)
                    current += len(chunk)
                    detail = {"current": current, **({"total": total} if total else {})}
                    say({"status": "Inserting", "progress": f"{current}/{total or '?'}", "progressDetail": detail})
                spool.seek(0)
                image_id = images.insert_file(name, path, spool, current)
        except OSError as exc:
            raise errors.InvalidParameter(f"could not fetch {url}: {exc}")
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)
        req.daemon.events.emit("image", "insert", image_id, {"name": image_id})
        say({"status": image_id.split(":", 1)[-1]})
    return _progress_stream(req, work)


def get_images_inspect(req):
    return http.Response.json(shape("image", req.daemon.images.inspect(req.params["name"]), req.version))


def get_images_history(req):
    return http.Response.json(shape_list("history", req.daemon.images.history(req.params["name"]), req.version))


def post_images_tag(req):
    images = req.daemon.images
    repo = req.q("repo")
    key = images.tag(req.params["name"], repo, req.q("tag") or None,
                     force=req.qbool("force") or req.version >= (1, 24))
    req.daemon.events.emit("image", "tag", images.resolve(key), {"name": key})
    return http.Response.empty(201 if req.version >= (1, 12) else 200)


def delete_images(req):
    containers = req.daemon.containers

    def users(image_id):
        return [(c.id, c.running) for c in containers.all() if c.record["Image"] == image_id]
    records = req.daemon.images.delete(req.params["name"], force=req.qbool("force"),
                                       noprune=req.qbool("noprune"), users=users)
    for record in records:
        for action, ident in record.items():
            if action == "Untagged":
                req.daemon.events.emit("image", "untag", ident, {"name": ident})
            elif ident.startswith("sha256:") and ident in (r.get("Deleted") for r in records[:1] + records):
                req.daemon.events.emit("image", "delete", ident, {"name": ident})
    return http.Response.json(records)


def get_images_get(req):
    names = req.qlist("names") if "name" not in req.params else [req.params["name"]]
    if not names:
        raise errors.InvalidParameter("no image names given")
    images = req.daemon.images
    for name in names:
        images.resolve(name)                    # 404 before the stream starts
    spool = tempfile.TemporaryFile(dir=req.daemon.layers.tmpdir())
    images.save(names, spool)
    spool.seek(0)

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
    loaded = req.daemon.images.load(req.body)
    lines = []
    for item in loaded:
        req.daemon.events.emit("image", "load", item["id"], {"name": ",".join(item["tags"])})
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
    header = req.head.header("x-registry-auth")
    auth = req.daemon.registry.auth_from_header(header)
    if auth is None and req.version < (1, 5):
        body = req.json()                       # v1.2/v1.4 send the auth config as the body
        if isinstance(body, dict):
            auth = registry.AuthConfig.from_dict(body)
    try:
        req.daemon.images.resolve(f"{name}:{tag}" if tag else name)      # 404 before the stream starts
    except errors.NotFound:
        raise errors.NotFound(f"An image does not exist locally with the tag: {name}") from None

    def work(say, cancel):
        req.daemon.registry.push(name, tag, auth, say, cancel)
    return _progress_stream(req, work)


def get_images_search(req):
    term = req.q("term")
    if not term:
        raise errors.InvalidParameter("term is required")
    auth = req.daemon.registry.auth_from_header(req.head.header("x-registry-auth"))
    results = req.daemon.registry.search(term, auth, limit=req.qint("limit", 25))
    return http.Response.json(shape_list("search_result", results, req.version))


def post_commit(req):
    backend = req.daemon.containers
    c = backend.get(req.q("container") or "")
    overrides = req.json()
    if overrides is not None and not isinstance(overrides, dict):
        raise errors.InvalidParameter("commit config must be a JSON object")
    pause = req.qbool("pause", default=True) and c.status == "running"
    if pause:
        backend.pause(c.id)
    try:
        image_id = req.daemon.images.commit(c.id, c.record["Image"], c.config, repo=req.q("repo") or None,
                                            tag=req.q("tag") or None, comment=req.q("comment") or req.q("m") or "",
                                            author=req.q("author") or "", changes=req.qlist("changes"),
                                            overrides=overrides)
    finally:
        if pause:
            backend.unpause(c.id)
    backend.emit(c, "commit", {"comment": req.q("comment") or req.q("m") or ""})
    return http.Response.json({"Id": image_id}, status=201)


ROUTES = [
    ("GET", "/images/json", get_images_json),
    ("GET", "/images/search", get_images_search),
    ("GET", "/images/get", get_images_get),
    ("GET", "/images/viz", get_images_viz),
    ("POST", "/images/create", post_images_create),
    ("POST", "/images/load", post_images_load),
    ("POST", "/commit", post_commit),
    ("GET", "/images/{name:path}/json", get_images_inspect),
    ("GET", "/images/{name:path}/history", get_images_history),
    ("GET", "/images/{name:path}/get", get_images_get),
    ("POST", "/images/{name:path}/tag", post_images_tag),
    ("POST", "/images/{name:path}/insert", post_images_insert),
    ("POST", "/images/{name:path}/push", post_images_push),
    ("DELETE", "/images/{name:path}", delete_images),
]
