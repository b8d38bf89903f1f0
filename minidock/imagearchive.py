"""The image tarball: what `docker save` writes and `docker load` reads.

The tarball is written in both layouts at once, so every client loads it:

    manifest.json                   [{"Config": "<id-hex>.json", "RepoTags": [...], "Layers": [...]}]
    <id-hex>.json                   the config bytes, exactly as stored (their sha256 is the image ID)
    <v1-id>/VERSION, json, layer.tar    one directory per layer (the legacy v1 layout)
    repositories                    {"busybox": {"latest": "<v1-id of the top layer>"}}

A *v1 id* is made up per layer (the sha256 of its chain ID, and of the image ID for the top one),
as Docker does; the legacy `json` of the top layer carries the image config's fields.

`load` takes the manifest.json layout (also today's OCI-flavoured `docker save`, whose Layers point
into blobs/sha256/) and, when there is none, the legacy layout, rebuilding a config from the
per-layer `json` files. The archive is unpacked (safely, tarsafe.py) to a temporary directory
first, since manifest.json may come after the layers; each layer's diff ID is checked against the
config's. What you can observe: `docker save busybox | tar t`.

Both work on an images.ImageStore (`store`).
"""

import io
import json
import os
import re
import shutil
import tarfile
import tempfile

from minidock import compression, errors, imagecreate, layers as layers_mod, reference, tarsafe, times

HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


def save(store, names, out):
    """Write the image tarball of `names` to `out`.

    A name with a tag saves that tag; a bare repository name saves every tag of it; an ID
    saves the image without a name.
    """
    with store.lock:
        wanted = {}                  # image id -> [familiar repo:tag]
        for name in names:
            image_id = store.resolve(name)
            tags = wanted.setdefault(image_id, [])
            if not store.by_reference(name, image_id):
                continue
            ref = reference.parse(name, default_tag=False)
            if ref.tag:
                tags.append(ref.key())
            elif ref.digest:
                continue
            else:
                tags.extend(t for t in store.tags_of(image_id) if t.rsplit(":", 1)[0] == ref.name)
                for t, i in store.refs.items():
                    if "@" not in t and t.rsplit(":", 1)[0] == ref.name and i != image_id:
                        wanted.setdefault(i, []).append(t)
        _write(store, wanted, out)


def save_spooled(store, names):
    """The tarball of `names` in an anonymous temporary file, rewound (GET /images/get sends
    it once it is complete, so a failure is still an HTTP error and not a cut stream)."""
    work = store.layers.tmpdir()
    try:
        spool = tempfile.TemporaryFile(dir=work)       # already unlinked: only the fd holds it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        save(store, names, spool)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def load(store, stream):
    """POST /images/load: load an image tarball (either layout, any compression) and announce
    each image it held. Returns [{"id": image id, "tags": [...]}] in archive order."""
    loaded = _read(store, stream)
    for item in loaded:
        store.events.emit("image", "load", item["id"], {"name": ",".join(item["tags"])})
    return loaded


def _write(store, wanted, out):
    """Write the images of `wanted` ({image id: [familiar repo:tag]}) to `out`."""
    w = tarsafe.TarWriter(out)
    manifest, repositories, written = [], {}, set()
    import hashlib                      # when needed: it loads OpenSSL (docs/performance.md, "Start-up")
    for image_id, tags in wanted.items():
        c = store.configs[image_id]
        mtime = times.unix_seconds(c.get("created"))
        chains = layers_mod.chain_ids(c.get("rootfs", {}).get("diff_ids") or [])
        layer_paths, parent_v1 = [], ""
        for i, chain in enumerate(chains):
            top = i == len(chains) - 1
            v1 = hashlib.sha256(f"{chain} {image_id if top else ''}".encode()).hexdigest()
            if v1 not in written:
                written.add(v1)
                v1_json = {"id": v1, "created": c.get("created", "")}
                if parent_v1:
                    v1_json["parent"] = parent_v1
                if top:
                    for k, v in c.items():
                        if k not in ("history", "rootfs"):
                            v1_json[k] = v
                else:
                    v1_json["container_config"] = {"Cmd": [""]}
                _add_dir(w, v1, mtime)
                _add_bytes(w, f"{v1}/VERSION", b"1.0", mtime)
                _add_bytes(w, f"{v1}/json", json.dumps(v1_json, sort_keys=True).encode(), mtime)
                tar = store.layers.tar_path(chain)
                info = tarfile.TarInfo(f"{v1}/layer.tar")
                info.size, info.mode, info.mtime = os.path.getsize(tar), 0o644, mtime
                with open(tar, "rb") as f:
                    w.add(info, f)
            layer_paths.append(f"{v1}/layer.tar")
            parent_v1 = v1
        with open(store.config_path(image_id), "rb") as f:
            _add_bytes(w, f"{_hex(image_id)}.json", f.read(), mtime)
        manifest.append({"Config": f"{_hex(image_id)}.json", "RepoTags": sorted(set(tags)) or None,
                         "Layers": layer_paths})
        for t in tags:
            repo, tg = t.rsplit(":", 1)
            if parent_v1:
                repositories.setdefault(repo, {})[tg] = parent_v1
    _add_bytes(w, "manifest.json", json.dumps(manifest).encode(), 0)
    if repositories:
        _add_bytes(w, "repositories", json.dumps(repositories).encode(), 0)
    w.close()


def _read(store, stream):
    """Load an image tarball (either layout, any compression) from `stream` into `store`.
    Returns [{"id": image id, "tags": [...]}] in archive order."""
    work = store.layers.tmpdir()
    try:
        plain, _ = compression.decompressed(stream)
        tarsafe.extract(plain, work, whiteouts=tarsafe.KEEP, chown=False)
        if os.path.lexists(os.path.join(work, "manifest.json")):
            return _load_manifest(store, work)
        if os.path.lexists(os.path.join(work, "repositories")) or _legacy_dirs(work):
            return _load_legacy(store, work)
        raise errors.InvalidParameter("invalid image archive: no manifest.json and no legacy image directories")
    finally:
        shutil.rmtree(work, ignore_errors=True)

def _archive_file(work, name):
    with tarsafe.Resolver(work) as res:
        try:
            path = res.host_path(name)
        except OSError:
            raise errors.InvalidParameter(f"invalid image archive: missing {name}") from None
    if not os.path.isfile(path):
        raise errors.InvalidParameter(f"invalid image archive: missing {name}")
    return path

def _load_manifest(store, work):
    with open(_archive_file(work, "manifest.json"), "rb") as f:
        try:
            manifest = json.loads(f.read())
        except ValueError as exc:
            raise errors.InvalidParameter(f"invalid manifest.json: {exc}") from None
    if not isinstance(manifest, list):
        raise errors.InvalidParameter("invalid manifest.json: not a list")
    loaded = []
    for entry in manifest:
        with open(_archive_file(work, entry.get("Config", "")), "rb") as f:
            raw = f.read()
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise errors.InvalidParameter(f"invalid image config: {exc}") from None
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        layer_files = entry.get("Layers") or []
        if len(diff_ids) != len(layer_files):
            raise errors.InvalidParameter(
                f"invalid manifest, layers length mismatch: expected {len(diff_ids)}, got {len(layer_files)}")
        parent = None
        for expected, name in zip(diff_ids, layer_files):
            parent = _load_layer(store, work, name, parent, expected)
        tags = [reference.parse(t).key() for t in entry.get("RepoTags") or []]
        image_id = store.add_config(raw, parent=entry.get("Parent") or None, ref_keys=tags)
        loaded.append({"id": image_id, "tags": tags})
    return loaded

def _load_layer(store, work, name, parent, expected_diff_id=None):
    expected_chain = layers_mod.chain_id(parent, expected_diff_id) if expected_diff_id else None
    if expected_chain and store.layers.exists(expected_chain):
        return expected_chain
    with open(_archive_file(work, name), "rb") as f:
        meta = store.layers.register(f, parent=parent)
    if expected_diff_id and meta["diff_id"] != expected_diff_id:
        store.prune_layers()
        raise errors.InvalidParameter(
            f"invalid diffID for layer {name}: expected {expected_diff_id!r}, got {meta['diff_id']!r}")
    return meta["chain_id"]

def _load_legacy(store, work):
    jsons = {}
    for d in _legacy_dirs(work):
        with open(_archive_file(work, f"{d}/json"), "rb") as f:
            try:
                jsons[d] = json.loads(f.read())
            except ValueError as exc:
                raise errors.InvalidParameter(f"invalid image json in {d}: {exc}") from None
    tops = {}                          # v1 id -> [refs]
    repos_path = os.path.join(work, "repositories")
    if os.path.lexists(repos_path):
        with open(_archive_file(work, "repositories"), "rb") as f:
            for repo, tag_map in json.loads(f.read()).items():
                for tg, v1 in tag_map.items():
                    tops.setdefault(v1, []).append(reference.parse(f"{repo}:{tg}").key())
    parents = {j.get("parent") for j in jsons.values()}
    for d in jsons:
        if d not in parents and d not in tops:
            tops[d] = []
    loaded = []
    for top, refs in tops.items():
        if top not in jsons:
            raise errors.InvalidParameter(f"invalid image archive: no json for {top}")
        chain_v1, walk = [], top
        while walk:
            if walk not in jsons:
                raise errors.InvalidParameter(f"invalid image archive: missing parent layer {walk}")
            chain_v1.append(walk)
            walk = jsons[walk].get("parent")
            if len(chain_v1) > 1000:
                raise errors.InvalidParameter("invalid image archive: parent loop")
        chain_v1.reverse()
        parent, diff_ids, history = None, [], []
        for v1 in chain_v1:
            parent = _load_layer(store, work, f"{v1}/layer.tar", parent)
            diff_ids.append(store.layers.meta(parent)["diff_id"])
            j = jsons[v1]
            entry = {"created": j.get("created", "")}
            cmd = (j.get("container_config") or {}).get("Cmd") or []
            if " ".join(cmd):
                entry["created_by"] = " ".join(cmd)
            for k in ("author", "comment"):
                if j.get(k):
                    entry[k] = j[k]
            history.append(entry)
        t = jsons[top]
        extra = {k: t[k] for k in ("author", "comment", "container", "container_config", "docker_version")
                 if t.get(k)}
        raw = imagecreate.config_bytes(diff_ids, t.get("config"), history, created=t.get("created"),
                               architecture=t.get("architecture"), **extra)
        image_id = store.add_config(raw, ref_keys=refs)
        loaded.append({"id": image_id, "tags": refs})
    return loaded


def _hex(image_id):
    return image_id.split(":", 1)[-1]



def _legacy_dirs(work):
    return sorted(d for d in os.listdir(work)
                  if HEX64_RE.match(d) and os.path.isfile(os.path.join(work, d, "json")))


def _add_dir(w, name, mtime):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
    w.add(info)


def _add_bytes(w, name, data, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, mtime
    w.add(info, io.BytesIO(data))
