"""Making images: from a rootfs tar (import), a container's changes (commit), one file (insert),
or one `docker build` step, and the image config each gets.

Every new image is the same three moves: store the new layer with `LayerStore.register` on top of
the parent's layers (its diff ID is the sha256 of the uncompressed tar), write a config naming the
parent's diff IDs plus the new one and one more `history` entry, and hand the config bytes to
`ImageStore.add_config`, which names the image by their sha256. A step that changes no files (a
build's ENV or CMD) adds no layer, only a history entry marked `"empty_layer": true`.

The config's `config` part is a container config (`full_config` fills every key Docker always
shows). `docker import --change` and `docker commit --change` edit it with Dockerfile-style lines
(`apply_changes`); only the instructions that change the config are allowed (no RUN, ADD, COPY).

What you can observe: `docker history` of a committed image shows the new entry on top of the
parent's; `docker inspect -f '{{.RootFS.Layers}}'` lists one more diff ID than the parent's.
"""

import json
import os
import shlex
import shutil
import tarfile
import tempfile
import time

from minidock import errors, platforms, tarsafe, times

FETCH_TIMEOUT = 60          # seconds for a URL given to import or insert
# urllib.request (with http.client, email, ssl: ~20 ms of imports) is imported by the two
# functions that fetch a URL, on first use, not by every daemon at start-up.

CONFIG_DEFAULTS = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
    "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
    "OnBuild": None, "Labels": None,
}

CHANGE_COMMANDS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR",
                   "ONBUILD", "STOPSIGNAL")


def full_config(partial=None):
    """A container config with every key Docker always shows, `partial` laid over the defaults."""
    config = json.loads(json.dumps(CONFIG_DEFAULTS))
    config.update(partial or {})
    return config


def _json_or_shell(rest):
    rest = rest.strip()
    if rest.startswith("["):
        try:
            value = json.loads(rest)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value, True
        except ValueError:
            pass
    return rest, False


def _pairs(rest, instruction):
    """ENV/LABEL arguments: `k=v k2="v 2"` or the legacy `k v...` form."""
    rest = rest.strip()
    first = rest.split(None, 1)[0] if rest else ""
    if "=" not in first:
        parts = rest.split(None, 1)
        if len(parts) != 2:
            raise errors.InvalidParameter(f"{instruction} requires two arguments")
        return [(parts[0], parts[1])]
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise errors.InvalidParameter(f"{instruction}: {exc}") from None
    out = []
    for word in words:
        if "=" not in word:
            raise errors.InvalidParameter(f"{instruction} names can not be blank: {word!r}")
        k, v = word.split("=", 1)
        out.append((k, v))
    return out


def apply_changes(config, changes):
    """Apply Dockerfile-style `changes` ("CMD [\\"sh\\"]", "ENV A=b", ...) to a container config.

    Only the instructions Docker allows for import and commit are accepted.
    """
    for change in changes or ():
        change = change.strip()
        if not change:
            continue
        instruction, _, rest = change.partition(" ")
        instruction = instruction.upper()
        if instruction not in CHANGE_COMMANDS:
            raise errors.InvalidParameter(f"{instruction} is not a valid change command")
        if instruction in ("CMD", "ENTRYPOINT"):
            value, is_json = _json_or_shell(rest)
            config["Cmd" if instruction == "CMD" else "Entrypoint"] = value if is_json else ["/bin/sh", "-c", value]
        elif instruction == "ENV":
            env = list(config.get("Env") or [])
            for k, v in _pairs(rest, "ENV"):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            config["Env"] = env
        elif instruction == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(_pairs(rest, "LABEL"))
            config["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in rest.split():
                ports[port if "/" in port else port + "/tcp"] = {}
            config["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            value, is_json = _json_or_shell(rest)
            volumes = dict(config.get("Volumes") or {})
            for v in (value if is_json else value.split()):
                volumes[v] = {}
            config["Volumes"] = volumes
        elif instruction == "ONBUILD":
            config["OnBuild"] = list(config.get("OnBuild") or []) + [rest.strip()]
        else:
            key = {"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[instruction]
            config[key] = rest.strip()
    return config



def config_bytes(diff_ids, run_config, history, **top):
    """A new image config, serialised as it will be hashed: sorted keys, no spaces."""
    config = {
        "architecture": platforms.goarch(),
        "os": "linux",
        "created": top.pop("created", None) or times.now_rfc3339(),
        "config": full_config(run_config),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history,
    }
    for k, v in top.items():
        if v not in (None, ""):
            config[k] = v
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def import_image(store, stream, repo=None, tag=None, changes=(), message="", source="-"):
    """POST /images/create?fromSrc: a rootfs tar (plain/gzip/bzip2/xz) becomes a one-layer
    image, tagged repo[:tag] if given. Returns the image ID."""
    ref_keys = [store.parse_new_tag(repo, tag).key()] if repo else []
    config = apply_changes(full_config(), changes)
    layer = store.layers.register(stream)
    created = times.now_rfc3339()
    comment = message or f"Imported from {source}"
    raw = config_bytes([layer["diff_id"]], config,
                           [{"created": created, "comment": comment}], created=created, comment=comment)
    image_id = store.add_config(raw, ref_keys=ref_keys)
    store.events.emit("image", "import", image_id, {"name": ref_keys[0] if ref_keys else ""})
    return image_id

def import_url(store, url, repo=None, tag=None, changes=(), message=""):
    """POST /images/create?fromSrc=<url>: fetch a rootfs tar over HTTP(S) and import it."""
    if not url.startswith(("http://", "https://")):
        raise errors.InvalidParameter(f"fromSrc must be '-' or an http(s) URL, got {url!r}")
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            return import_image(store, response, repo, tag, changes, message, source=url)
    except OSError as exc:
        raise errors.InvalidParameter(f"could not fetch {url}: {exc}")

def commit(store, container_id, image_id, container_config, repo=None, tag=None, comment="",
           author="", changes=(), overrides=None):
    """POST /commit: the container's rw layer becomes a new layer on top of its image.

    `container_config` is the container's Config (recorded as container_config and the base
    of the new config), `overrides` the request body's config, `changes` Dockerfile lines.
    The caller pauses the container if asked. Returns the new image ID.
    """
    ref_keys = [store.parse_new_tag(repo, tag).key()] if repo else []
    if image_id not in store.configs:
        raise errors.NotFound(f"No such image: {image_id}")
    parent_config = store.configs[image_id]
    config = full_config(container_config)
    for k, v in (overrides or {}).items():
        if v not in (None, "", [], {}):
            config[k] = v
    config = apply_changes(config, changes)
    config["Image"] = image_id
    work = store.layers.tmpdir()
    try:
        with open(os.path.join(work, "diff.tar"), "w+b") as f:
            store.layers.diff_tar(container_id, f)
            f.seek(0)
            layer = store.layers.register(f, parent=store.top_chain(image_id))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    created = times.now_rfc3339()
    history = list(parent_config.get("history") or [])
    history.append({"created": created, "created_by": " ".join((container_config or {}).get("Cmd") or []),
                    **({"author": author} if author else {}), **({"comment": comment} if comment else {})})
    raw = config_bytes(list(parent_config.get("rootfs", {}).get("diff_ids") or []) + [layer["diff_id"]],
                           config, history, created=created, author=author, comment=comment,
                           container=container_id, container_config=full_config(container_config),
                           architecture=parent_config.get("architecture"))
    return store.add_config(raw, parent=image_id, ref_keys=ref_keys)

def insert_url(store, name, path, url, say, cancelled):
    """POST /images/(name)/insert (v1.2-v1.12): fetch `url` into a spool file, reporting
    progress lines through `say`, and add it as the file `path` on top of image `name`.
    Returns the new image ID, or None when `cancelled()` turned true on the way."""
    if not url.startswith(("http://", "https://")):
        raise errors.InvalidParameter(f"url must be an http(s) URL, got {url!r}")
    if not path:
        raise errors.InvalidParameter("path is required")
    store.resolve(name)
    say({"status": "Inserting..."})
    import urllib.request
    work = store.layers.tmpdir()
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response, \
                tempfile.TemporaryFile(dir=work) as spool:
            total, current = response.length, 0
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                if cancelled():
                    return None
                spool.write(chunk)
                current += len(chunk)
                detail = {"current": current, **({"total": total} if total else {})}
                say({"status": "Inserting", "progress": f"{current}/{total or '?'}", "progressDetail": detail})
            spool.seek(0)
            image_id = insert_file(store, name, path, spool, current)
    except OSError as exc:
        raise errors.InvalidParameter(f"could not fetch {url}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.events.emit("image", "insert", image_id, {"name": image_id})
    return image_id

def insert_file(store, name, path, data, size, mode=0o644):
    """POST /images/(name)/insert (v1.2-v1.4): `size` bytes from `data` at `path`, as a new
    layer on top of image `name`. Returns the new image ID."""
    image_id = store.resolve(name)
    target = tarsafe.clean_name(path)
    if not target:
        raise errors.InvalidParameter(f"invalid path: {path!r}")
    work = store.layers.tmpdir()
    with tempfile.TemporaryFile(dir=work) as buf:
        w = tarsafe.TarWriter(buf)
        info = tarfile.TarInfo(target)
        info.size, info.mode, info.mtime = size, mode, int(time.time())
        w.add(info, data)
        w.close()
        buf.seek(0)
        layer = store.layers.register(buf, parent=store.top_chain(image_id))
    shutil.rmtree(work, ignore_errors=True)
    parent_config = store.configs[image_id]
    created = times.now_rfc3339()
    history = list(parent_config.get("history") or [])
    history.append({"created": created, "created_by": f"/bin/sh -c #(nop) ADD file in {path}"})
    raw = config_bytes(list(parent_config["rootfs"]["diff_ids"]) + [layer["diff_id"]],
                           parent_config.get("config"), history, created=created,
                           architecture=parent_config.get("architecture"))
    return store.add_config(raw, parent=image_id)


def add_build_step(store, parent, run_config, created_by, diff_id=None, cache_key=None,
                   author="", container="", container_config=None):
    """One `docker build` step as an image: `parent`'s layers and history (nothing for
    `FROM scratch`, parent None) plus one history entry, with the stored layer `diff_id` on
    top when the step changed files. A metadata-only step (ENV, CMD, ...) adds no layer; its
    history entry says `"empty_layer": true`, as Docker's do. `cache_key` is kept in
    meta.json so the builder's cache survives restarts (see build_cache_lookup). -> image ID.
    """
    base = store.configs[parent] if parent else {}
    diff_ids = list(base.get("rootfs", {}).get("diff_ids") or [])
    created = times.now_rfc3339()
    entry = {"created": created, "created_by": created_by}
    if author:
        entry["author"] = author
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        diff_ids.append(diff_id)
    raw = config_bytes(diff_ids, run_config, list(base.get("history") or []) + [entry],
                           created=created, author=author, container=container,
                           container_config=full_config(container_config) if container_config else None,
                           architecture=base.get("architecture"))
    image_id = store.add_config(raw, parent=parent)
    if cache_key:
        store.set_build_cache(image_id, cache_key)
    return image_id
