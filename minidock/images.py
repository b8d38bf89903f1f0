"""Images: names, configs, the tag index, and the image tarball formats (docker save / load).

An image is two things (OCI image-spec, config.md and manifest.md):

  * a **config**: a JSON document with the runtime defaults (`config`: Cmd, Env, WorkingDir, ...),
    provenance (`created`, `author`, `history`: one entry per build step) and `rootfs.diff_ids`,
    the list of layer diff IDs bottom-up. The image ID is `"sha256:" + sha256(config bytes)`, so
    the exact bytes are kept: re-serialising the JSON would change the ID.
  * its **layers**, held by layers.LayerStore and found from the diff_ids through chain IDs.

Names are image references (`minidock/reference.py`): `busybox`, `busybox:latest` and
`docker.io/library/busybox:latest` are one name, kept in the tag index in its familiar form
`busybox:latest` (`Reference.key()`).

On disk, under `root`:

    images/<id-hex>/config.json     the config bytes exactly as hashed
    images/<id-hex>/meta.json       {"parent": image id or null, "last_tag_time": ...} (local only)
    repositories.json               the tag index {"Repositories": {repo: {ref: image id}}}

An image directory is written in a temporary directory and renamed into place, after its
layers are stored: a crash mid-import leaves no half image visible (unused layers are pruned).

The image tarball (`docker save` / `docker load`) is imagearchive.py's.
"""

import fnmatch
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.request

from minidock import errors, imagearchive, layers as layers_mod, platforms, reference, store, tarsafe, times

FETCH_TIMEOUT = 60          # seconds for a URL given to import or insert
ID_PREFIX_RE = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


def short_id(image_id):
    return image_id.split(":", 1)[-1][:12]


def _hex(image_id):
    return image_id.split(":", 1)[-1]


# -- container config and Dockerfile-style changes ------------------------------------------------

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


# -- the image store -------------------------------------------------------------------------------

class ImageStore:
    """Image configs + the tag index over a LayerStore. The backend of every /images endpoint.

    All public methods take user-facing names ("busybox", "busybox:1", an ID or ID prefix) and
    raise NotFound / InvalidParameter / Conflict with Docker's messages.
    """

    def __init__(self, root, layer_store, events):
        self.root = os.path.abspath(root)
        self.layers = layer_store
        self.events = events     # every change to names and images is announced (events.Events)
        os.makedirs(self._p("images"), mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self.configs = {}        # image id -> parsed config
        self.meta = {}           # image id -> local metadata (parent, ...)
        self.refs = {}           # "repo:tag" / "repo@digest" -> image id
        self._load()

    def _p(self, *parts):
        return os.path.join(self.root, *parts)

    def _load(self):
        for entry in os.listdir(self._p("images")):
            directory = self._p("images", entry)
            config_path = os.path.join(directory, "config.json")
            if entry.startswith(".tmp") or not os.path.isfile(config_path):
                shutil.rmtree(directory, ignore_errors=True)      # debris of an interrupted write
                continue
            with open(config_path, "rb") as f:
                raw = f.read()
            image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            self.configs[image_id] = json.loads(raw)
            try:
                self.meta[image_id] = store.read_json(os.path.join(directory, "meta.json"))
            except (FileNotFoundError, ValueError):
                self.meta[image_id] = {"parent": None}
        try:
            index = store.read_json(self._p("repositories.json"))
        except FileNotFoundError:
            index = {"Repositories": {}}
        for refs in index.get("Repositories", {}).values():
            for ref, image_id in refs.items():
                if image_id in self.configs:
                    self.refs[ref] = image_id

    def _save_refs(self):
        repos = {}
        for ref, image_id in sorted(self.refs.items()):
            repo = ref.split("@", 1)[0] if "@" in ref else ref.rsplit(":", 1)[0]
            repos.setdefault(repo, {})[ref] = image_id
        store.write_json(self._p("repositories.json"), {"Repositories": repos})

    # -- for /info and the daemon -------------------------------------------------------------------
    def count(self):
        return len(self.configs)

    def driver_name(self):
        return self.layers.driver_name()

    def driver_status(self):
        return self.layers.driver_status()

    # -- lookup --------------------------------------------------------------------------------------
    def resolve(self, name):
        """A name, ref or (short) ID -> full image ID "sha256:...". NotFound otherwise."""
        with self._lock:
            if name in self.configs:
                return name
            try:
                ref = reference.parse(name)
            except errors.InvalidParameter:
                ref = None
            if ref is not None and ref.key() in self.refs:
                return self.refs[ref.key()]
            m = ID_PREFIX_RE.match(name)
            if m:
                matches = [i for i in self.configs if _hex(i).startswith(m.group(1))]
                if len(matches) == 1:
                    return matches[0]
                if len(matches) > 1 and not (ref and len(m.group(1)) < 12):
                    raise errors.InvalidParameter(f"multiple IDs found with provided prefix: {name}")
            if ref is None and not m:
                reference.parse(name)            # raise the reference error
            raise errors.NotFound(f"No such image: {name}")

    def _by_reference(self, name, image_id):
        """Did `name` find `image_id` through the tag index (rather than as an ID or ID prefix)?"""
        if name.startswith("sha256:"):
            return False
        try:
            return self.refs.get(reference.parse(name).key()) == image_id
        except errors.InvalidParameter:
            return False

    def config(self, image_id):
        return self.configs[image_id]

    def top_chain(self, image_id):
        """The chain ID of the image's top layer (what a container rw layer stands on), or None."""
        diff_ids = self.configs[image_id].get("rootfs", {}).get("diff_ids") or []
        return layers_mod.chain_ids(diff_ids)[-1] if diff_ids else None

    def tags_of(self, image_id):
        return sorted(r for r, i in self.refs.items() if i == image_id and "@" not in r)

    def digests_of(self, image_id):
        return sorted(r for r, i in self.refs.items() if i == image_id and "@" in r)

    def children(self, image_id):
        return [i for i, m in self.meta.items() if m.get("parent") == image_id]

    def size(self, image_id):
        diff_ids = self.configs[image_id].get("rootfs", {}).get("diff_ids") or []
        total = 0
        for chain in layers_mod.chain_ids(diff_ids):
            try:
                total += self.layers.size(chain)
            except errors.NotFound:
                pass
        return total

    # -- list, inspect, history ----------------------------------------------------------------------
    def list(self, all=False, filters=None, name_filter=None, digests=False):
        """Rows for GET /images/json, newest first.

        `filters` is Docker's map of lists: dangling=true|false, label=k or k=v, reference=glob,
        before=/since=<image>, until=<timestamp or duration>. `name_filter` is the old `filter`
        parameter (a repo glob). An untagged image has empty RepoTags (API versions before 1.43
        show placeholders, see api/versions.py).
        """
        filters = filters or {}
        with self._lock:
            rows = []
            parents = {m.get("parent") for m in self.meta.values()}
            before = since = None
            if filters.get("before"):
                before = times.unix_seconds(self.configs[self.resolve(filters["before"][0])].get("created"))
            if filters.get("since"):
                since = times.unix_seconds(self.configs[self.resolve(filters["since"][0])].get("created"))
            until = times.parse_filter_time(filters["until"][0]) if filters.get("until") else None
            for image_id, config in self.configs.items():
                tags, digs = self.tags_of(image_id), self.digests_of(image_id)
                created = times.unix_seconds(config.get("created"))
                labels = (config.get("config") or {}).get("Labels") or {}
                dangling = not tags and not digs
                if not all and dangling and image_id in parents and not filters.get("dangling"):
                    continue                     # an intermediate image
                if "dangling" in filters:
                    want = filters["dangling"][0].lower() in ("true", "1")
                    if dangling != want:
                        continue
                if "label" in filters and not all_labels_match(labels, filters["label"]):
                    continue
                patterns = list(filters.get("reference") or []) + ([name_filter] if name_filter else [])
                if patterns and not any(_ref_matches(t, p) for t in tags for p in patterns):
                    continue
                if before is not None and created >= before:
                    continue
                if since is not None and created <= since:
                    continue
                if until is not None and times.rfc3339_ns(config.get("created") or "1970-01-01T00:00:00Z") > until:
                    continue
                size = self.size(image_id)
                rows.append({
                    "Id": image_id,
                    "ParentId": self.meta[image_id].get("parent") or "",
                    "RepoTags": tags,
                    "RepoDigests": digs,
                    "Created": created,
                    "Size": size,
                    "VirtualSize": size,
                    "SharedSize": -1,
                    "Containers": -1,
                    "Labels": labels or {},
                })
            rows.sort(key=lambda r: r["Created"], reverse=True)
            return rows

    def inspect(self, name):
        """The GET /images/(name)/json document (newest shape; older versions drop keys)."""
        image_id = self.resolve(name)
        with self._lock:
            c = self.configs[image_id]
            size = self.size(image_id)
            chains = layers_mod.chain_ids(c.get("rootfs", {}).get("diff_ids") or [])
            graph = {"Name": self.layers.driver_name(), "Data": None}
            if chains:
                graph["Data"] = {"MergedDir": "", "UpperDir": self.layers.diff_dir(chains[-1]),
                                 "LowerDir": ":".join(self.layers.diff_dir(x) for x in reversed(chains[:-1])),
                                 "WorkDir": ""}
            return {
                "Id": image_id,
                "RepoTags": self.tags_of(image_id),
                "RepoDigests": self.digests_of(image_id),
                "Parent": self.meta[image_id].get("parent") or "",
                "Comment": c.get("comment", ""),
                "Created": c.get("created", ""),
                "Container": c.get("container", ""),
                "ContainerConfig": full_config(c.get("container_config")),
                "DockerVersion": c.get("docker_version", ""),
                "Author": c.get("author", ""),
                "Config": full_config(c.get("config")),
                "Architecture": c.get("architecture", ""),
                "Os": c.get("os", "linux"),
                "Size": size,
                "VirtualSize": size,
                "GraphDriver": graph,
                "RootFS": {"Type": "layers", "Layers": list(c.get("rootfs", {}).get("diff_ids") or [])},
                "Metadata": {"LastTagTime": self.meta[image_id].get("last_tag_time", "0001-01-01T00:00:00Z")},
            }

    def history(self, name):
        """Rows for GET /images/(name)/history, newest first (Docker's shape).

        Entries map onto layers in order, skipping `empty_layer` ones. An entry gets an image ID
        when it is the top of this image or of a stored ancestor, "<missing>" otherwise.
        """
        image_id = self.resolve(name)
        with self._lock:
            c = self.configs[image_id]
            history = c.get("history") or [{"created": c.get("created"), "comment": c.get("comment", "")}]
            chains = layers_mod.chain_ids(c.get("rootfs", {}).get("diff_ids") or [])
            # ancestors by how many history entries they have
            tops = {}
            walk = image_id
            while walk and walk in self.configs:
                tops.setdefault(len(self.configs[walk].get("history") or [1]), walk)
                walk = self.meta.get(walk, {}).get("parent")
            rows, layer_index = [], 0
            for i, h in enumerate(history):
                size = 0
                if not h.get("empty_layer"):
                    if layer_index < len(chains):
                        try:
                            size = self.layers.size(chains[layer_index])
                        except errors.NotFound:
                            pass
                    layer_index += 1
                owner = tops.get(i + 1)
                rows.append({"Id": owner or "<missing>", "Created": times.unix_seconds(h.get("created")),
                             "CreatedBy": h.get("created_by", ""),
                             "Tags": (self.tags_of(owner) or None) if owner else None,
                             "Size": size, "Comment": h.get("comment", "")})
            return rows[::-1]

    # -- tags ----------------------------------------------------------------------------------------
    def tag(self, name, repo, tag=None, force=True):
        """Point `repo:tag` at image `name`; returns the familiar "repo:tag".

        Docker >= 1.10 moves an existing tag silently; older API versions answered 409 unless
        `force` -- the handler passes force=False only for those versions.
        """
        image_id = self.resolve(name)
        ref = self._parse_new_tag(repo, tag)
        with self._lock:
            key = ref.key()
            if not force and self.refs.get(key) not in (None, image_id):
                raise errors.Conflict(
                    f"Conflict: Tag {ref.tag} is already set to image {_hex(self.refs[key])}, "
                    "if you want to replace it, please use -f option")
            self._set_ref(key, image_id)
        self.events.emit("image", "tag", image_id, {"name": key})
        return key

    def _parse_new_tag(self, repo, tag):
        if not repo:
            raise errors.InvalidParameter("repository name must have at least one component")
        if tag:
            if not reference.TAG_RE.match(tag):
                raise errors.InvalidParameter(f"invalid tag format: {tag!r}")
            ref = reference.parse(f"{repo}:{tag}")
        else:
            ref = reference.parse(repo)
        if ref.digest:
            raise errors.InvalidParameter("refusing to create a tag with a digest reference")
        return ref

    def _set_ref(self, key, image_id):
        self.refs[key] = image_id
        self.meta[image_id]["last_tag_time"] = times.now_rfc3339()
        self._write_meta(image_id)
        self._save_refs()

    # -- delete --------------------------------------------------------------------------------------
    def delete(self, name, force=False, noprune=False, users=lambda image_id: []):
        """DELETE /images/(name) -> [{"Untagged": ref}, {"Deleted": id}, ...] in Docker's order.

        `users(image_id)` returns [(container_id, running)] for containers created from it: a
        running one blocks deletion even with force; a stopped one blocks it without force.
        Deleting by reference untags it, and deletes the image only once no reference is left.
        Unless `noprune`, untagged parents left without children go too. Freed layers are
        removed and reported as Deleted chain IDs, as Docker does.
        """
        records = self._delete(name, force, noprune, users)
        for record in records:
            for action, ident in record.items():
                self.events.emit("image", "untag" if action == "Untagged" else "delete", ident, {"name": ident})
        return records

    def prune(self, filters=None, users=lambda image_id: []):
        """POST /images/prune: remove dangling images (no tag, no digest), or with the filter
        `dangling=false` every image no container uses; `until` and `label`/`label!` narrow the
        choice. Children go before their parents. Returns (records as delete() gives them, bytes
        of layers freed) and announces a `prune` event carrying `reclaimed`."""
        filters = filters or {}
        only_dangling = (filters.get("dangling") or ["true"])[0].lower() not in ("false", "0")
        until = times.parse_filter_time(filters["until"][0]) if filters.get("until") else None
        records = []
        with self._lock:
            before = self._layers_size()
            by_age = sorted(self.configs, key=lambda i: times.rfc3339_seconds(self.configs[i].get("created")),
                            reverse=True)
            for image_id in by_age:
                config = self.configs.get(image_id)
                if config is None or users(image_id) or self.children(image_id):
                    continue                 # gone with a child already, in use, or a parent
                if only_dangling and (self.tags_of(image_id) or self.digests_of(image_id)):
                    continue
                labels = (config.get("config") or {}).get("Labels") or {}
                if not labels_filter_match(labels, filters):
                    continue
                if until is not None and times.rfc3339_ns(config.get("created") or "1970-01-01T00:00:00Z") > until:
                    continue
                records += self.delete(image_id, force=True, users=users)
            reclaimed = before - self._layers_size()
        self.events.emit("image", "prune", "", {"reclaimed": str(reclaimed)})
        return records, reclaimed

    def _layers_size(self):
        return sum(self.layers.size(chain) for chain in self.layers.all_layers())

    def _delete(self, name, force, noprune, users):
        with self._lock:
            image_id = self.resolve(name)
            records = []
            by_reference = self._by_reference(name, image_id)
            refs = [r for r, i in self.refs.items() if i == image_id]
            if by_reference:
                key = reference.parse(name).key()
                remaining = [r for r in refs if r != key]
                # Docker's rule: removing the last *tag* of a repository also removes that
                # repository's digest references (`repo@sha256:...` recorded by pull or push).
                repo = _repo_of(key)
                same_repo_digests = []
                if "@" not in key and not any("@" not in r and _repo_of(r) == repo for r in remaining):
                    same_repo_digests = sorted(r for r in remaining if "@" in r and _repo_of(r) == repo)
                    remaining = [r for r in remaining if r not in same_repo_digests]
                if not remaining:
                    self._check_conflicts(image_id, force, users, by_reference=True, name=name)
                for ref_key in [key] + same_repo_digests:
                    self._drop_ref(ref_key)
                    records.append({"Untagged": ref_key})
                if remaining:
                    return records
            else:
                if len(refs) > 1 and not force:
                    raise errors.Conflict(
                        f"conflict: unable to delete {short_id(image_id)} (must be forced) - "
                        "image is referenced in multiple repositories")
                self._check_conflicts(image_id, force, users, by_reference=False, name=name)
                for r in sorted(refs):
                    self._drop_ref(r)
                    records.append({"Untagged": r})
            if self.children(image_id):
                if by_reference:
                    return records
                raise errors.Conflict(f"conflict: unable to delete {short_id(image_id)} (cannot be forced) - "
                                      "image has dependent child images")
            self._delete_image(image_id, records, noprune, users)
            return records

    def _check_conflicts(self, image_id, force, users, by_reference, name):
        for container_id, running in users(image_id) or []:
            if running:
                if by_reference:
                    raise errors.Conflict(
                        f"conflict: unable to remove repository reference \"{name}\" (must force) - "
                        f"container {short_id(container_id)} is using its referenced image {short_id(image_id)}")
                raise errors.Conflict(
                    f"conflict: unable to delete {short_id(image_id)} (cannot be forced) - "
                    f"image is being used by running container {short_id(container_id)}")
            if not force:
                if by_reference:
                    raise errors.Conflict(
                        f"conflict: unable to remove repository reference \"{name}\" (must force) - "
                        f"container {short_id(container_id)} is using its referenced image {short_id(image_id)}")
                raise errors.Conflict(
                    f"conflict: unable to delete {short_id(image_id)} (must be forced) - "
                    f"image is being used by stopped container {short_id(container_id)}")

    def _drop_ref(self, key):
        self.refs.pop(key, None)
        self._save_refs()

    def _delete_image(self, image_id, records, noprune, users):
        parent = self.meta[image_id].get("parent")
        trash = self._p("images", ".tmp-rm-" + secrets.token_hex(6))
        os.rename(self._p("images", _hex(image_id)), trash)
        del self.configs[image_id]
        del self.meta[image_id]
        shutil.rmtree(trash, ignore_errors=True)
        records.append({"Deleted": image_id})
        for chain in self.prune_layers():
            records.append({"Deleted": chain})
        if (not noprune and parent and parent in self.configs and not self.children(parent)
                and not [r for r, i in self.refs.items() if i == parent] and not users(parent)):
            self._delete_image(parent, records, noprune, users)

    def prune_layers(self):
        """Remove layers no image and no container rw layer stands on; returns their chain IDs."""
        keep = {self.top_chain(i) for i in self.configs} | self.layers.rw_chains() | set(+self.layers.pinned)
        return self.layers.prune(keep)

    # -- creating images -----------------------------------------------------------------------------
    def _write_meta(self, image_id):
        store.write_json(self._p("images", _hex(image_id), "meta.json"), self.meta[image_id])

    def add_config(self, raw, parent=None, ref_keys=()):
        """Store config bytes `raw` (its layers must already be stored) and tag it. -> image ID."""
        config = json.loads(raw)
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        for chain in layers_mod.chain_ids(diff_ids):
            if not self.layers.exists(chain):
                raise errors.InvalidParameter(f"layer {chain} of image {image_id} is not stored")
        with self._lock:
            final = self._p("images", _hex(image_id))
            if image_id not in self.configs:
                tmp = self._p("images", ".tmp-" + secrets.token_hex(6))
                os.mkdir(tmp, 0o700)
                store.write_atomic(os.path.join(tmp, "config.json"), raw, 0o644)
                meta = {"parent": parent}
                store.write_json(os.path.join(tmp, "meta.json"), meta)
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
                store.fsync_dir(self._p("images"))
                self.configs[image_id] = config
                self.meta[image_id] = meta
            for key in ref_keys:
                self._set_ref(key, image_id)
            return image_id

    def new_config(self, diff_ids, run_config, history, **top):
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

    def add_build_step(self, parent, run_config, created_by, diff_id=None, cache_key=None,
                       author="", container="", container_config=None):
        """One `docker build` step as an image: `parent`'s layers and history (nothing for
        `FROM scratch`, parent None) plus one history entry, with the stored layer `diff_id` on
        top when the step changed files. A metadata-only step (ENV, CMD, ...) adds no layer; its
        history entry says `"empty_layer": true`, as Docker's do. `cache_key` is kept in
        meta.json so the builder's cache survives restarts (see build_cache_lookup). -> image ID.
        """
        base = self.configs[parent] if parent else {}
        diff_ids = list(base.get("rootfs", {}).get("diff_ids") or [])
        created = times.now_rfc3339()
        entry = {"created": created, "created_by": created_by}
        if author:
            entry["author"] = author
        if diff_id is None:
            entry["empty_layer"] = True
        else:
            diff_ids.append(diff_id)
        raw = self.new_config(diff_ids, run_config, list(base.get("history") or []) + [entry],
                               created=created, author=author, container=container,
                               container_config=full_config(container_config) if container_config else None,
                               architecture=base.get("architecture"))
        image_id = self.add_config(raw, parent=parent)
        if cache_key:
            with self._lock:
                self.meta[image_id]["build_cache"] = cache_key
                self._write_meta(image_id)
        return image_id

    def build_cache_lookup(self, parent, cache_key):
        """The image an earlier build step made from `parent` (None: scratch) with `cache_key`."""
        with self._lock:
            for image_id, meta in self.meta.items():
                if meta.get("parent") == parent and meta.get("build_cache") == cache_key:
                    return image_id
        return None

    def import_image(self, stream, repo=None, tag=None, changes=(), message="", source="-"):
        """POST /images/create?fromSrc: a rootfs tar (plain/gzip/bzip2/xz) becomes a one-layer
        image, tagged repo[:tag] if given. Returns the image ID."""
        ref_keys = [self._parse_new_tag(repo, tag).key()] if repo else []
        config = apply_changes(full_config(), changes)
        layer = self.layers.register(stream)
        created = times.now_rfc3339()
        comment = message or f"Imported from {source}"
        raw = self.new_config([layer["diff_id"]], config,
                               [{"created": created, "comment": comment}], created=created, comment=comment)
        image_id = self.add_config(raw, ref_keys=ref_keys)
        self.events.emit("image", "import", image_id, {"name": ref_keys[0] if ref_keys else ""})
        return image_id

    def import_url(self, url, repo=None, tag=None, changes=(), message=""):
        """POST /images/create?fromSrc=<url>: fetch a rootfs tar over HTTP(S) and import it."""
        if not url.startswith(("http://", "https://")):
            raise errors.InvalidParameter(f"fromSrc must be '-' or an http(s) URL, got {url!r}")
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
                return self.import_image(response, repo, tag, changes, message, source=url)
        except OSError as exc:
            raise errors.InvalidParameter(f"could not fetch {url}: {exc}")

    def commit(self, container_id, image_id, container_config, repo=None, tag=None, comment="",
               author="", changes=(), overrides=None):
        """POST /commit: the container's rw layer becomes a new layer on top of its image.

        `container_config` is the container's Config (recorded as container_config and the base
        of the new config), `overrides` the request body's config, `changes` Dockerfile lines.
        The caller pauses the container if asked. Returns the new image ID.
        """
        ref_keys = [self._parse_new_tag(repo, tag).key()] if repo else []
        if image_id not in self.configs:
            raise errors.NotFound(f"No such image: {image_id}")
        parent_config = self.configs[image_id]
        config = full_config(container_config)
        for k, v in (overrides or {}).items():
            if v not in (None, "", [], {}):
                config[k] = v
        config = apply_changes(config, changes)
        config["Image"] = image_id
        work = self.layers.tmpdir()
        try:
            with open(os.path.join(work, "diff.tar"), "w+b") as f:
                self.layers.diff_tar(container_id, f)
                f.seek(0)
                layer = self.layers.register(f, parent=self.top_chain(image_id))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        created = times.now_rfc3339()
        history = list(parent_config.get("history") or [])
        history.append({"created": created, "created_by": " ".join((container_config or {}).get("Cmd") or []),
                        **({"author": author} if author else {}), **({"comment": comment} if comment else {})})
        raw = self.new_config(list(parent_config.get("rootfs", {}).get("diff_ids") or []) + [layer["diff_id"]],
                               config, history, created=created, author=author, comment=comment,
                               container=container_id, container_config=full_config(container_config),
                               architecture=parent_config.get("architecture"))
        return self.add_config(raw, parent=image_id, ref_keys=ref_keys)

    def insert_url(self, name, path, url, say, cancelled):
        """POST /images/(name)/insert (v1.2-v1.12): fetch `url` into a spool file, reporting
        progress lines through `say`, and add it as the file `path` on top of image `name`.
        Returns the new image ID, or None when `cancelled()` turned true on the way."""
        if not url.startswith(("http://", "https://")):
            raise errors.InvalidParameter(f"url must be an http(s) URL, got {url!r}")
        if not path:
            raise errors.InvalidParameter("path is required")
        self.resolve(name)
        say({"status": "Inserting..."})
        work = self.layers.tmpdir()
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
                image_id = self.insert_file(name, path, spool, current)
        except OSError as exc:
            raise errors.InvalidParameter(f"could not fetch {url}: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.events.emit("image", "insert", image_id, {"name": image_id})
        return image_id

    def insert_file(self, name, path, data, size, mode=0o644):
        """POST /images/(name)/insert (v1.2-v1.4): `size` bytes from `data` at `path`, as a new
        layer on top of image `name`. Returns the new image ID."""
        image_id = self.resolve(name)
        target = tarsafe.clean_name(path)
        if not target:
            raise errors.InvalidParameter(f"invalid path: {path!r}")
        work = self.layers.tmpdir()
        with tempfile.TemporaryFile(dir=work) as buf:
            w = tarsafe.TarWriter(buf)
            info = tarfile.TarInfo(target)
            info.size, info.mode, info.mtime = size, mode, int(time.time())
            w.add(info, data)
            w.close()
            buf.seek(0)
            layer = self.layers.register(buf, parent=self.top_chain(image_id))
        shutil.rmtree(work, ignore_errors=True)
        parent_config = self.configs[image_id]
        created = times.now_rfc3339()
        history = list(parent_config.get("history") or [])
        history.append({"created": created, "created_by": f"/bin/sh -c #(nop) ADD file in {path}"})
        raw = self.new_config(list(parent_config["rootfs"]["diff_ids"]) + [layer["diff_id"]],
                               parent_config.get("config"), history, created=created,
                               architecture=parent_config.get("architecture"))
        return self.add_config(raw, parent=image_id)

    # -- save and load: the image tarball (imagearchive.py) ---------------------------------------
    def save(self, names, out):
        """Write the image tarball of `names` to `out`.

        A name with a tag saves that tag; a bare repository name saves every tag of it; an ID
        saves the image without a name.
        """
        with self._lock:
            wanted = {}                  # image id -> [familiar repo:tag]
            for name in names:
                image_id = self.resolve(name)
                tags = wanted.setdefault(image_id, [])
                if not self._by_reference(name, image_id):
                    continue
                ref = reference.parse(name, default_tag=False)
                if ref.tag:
                    tags.append(ref.key())
                elif ref.digest:
                    continue
                else:
                    tags.extend(t for t in self.tags_of(image_id) if t.rsplit(":", 1)[0] == ref.name)
                    for t, i in self.refs.items():
                        if "@" not in t and t.rsplit(":", 1)[0] == ref.name and i != image_id:
                            wanted.setdefault(i, []).append(t)
            imagearchive.write(self, wanted, out)

    def save_spooled(self, names):
        """The tarball of `names` in an anonymous temporary file, rewound (GET /images/get sends
        it once it is complete, so a failure is still an HTTP error and not a cut stream)."""
        work = self.layers.tmpdir()
        try:
            spool = tempfile.TemporaryFile(dir=work)       # already unlinked: only the fd holds it
        finally:
            shutil.rmtree(work, ignore_errors=True)
        try:
            self.save(names, spool)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def config_path(self, image_id):
        """The config bytes of an image exactly as hashed (its ID is their sha256)."""
        return self._p("images", _hex(image_id), "config.json")

    def load(self, stream):
        """POST /images/load: load an image tarball (either layout, any compression) and announce
        each image it held. Returns [{"id": image id, "tags": [...]}] in archive order."""
        loaded = imagearchive.read(self, stream)
        for item in loaded:
            self.events.emit("image", "load", item["id"], {"name": ",".join(item["tags"])})
        return loaded

# -- helpers -------------------------------------------------------------------------------------------

def _repo_of(key):
    """The repository part of an index key: "repo:tag" or "repo@sha256:..." -> "repo"."""
    return key.split("@", 1)[0] if "@" in key else key.rsplit(":", 1)[0]


def labels_filter_match(labels, filters):
    """The prune filters `label=k[=v]` (all must match) and `label!=k[=v]` (none may)."""
    if "label" in filters and not all_labels_match(labels, filters["label"]):
        return False
    return not any(all_labels_match(labels, [item]) for item in filters.get("label!") or [])


def all_labels_match(labels, wanted):
    for item in wanted:
        k, eq, v = item.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


def _ref_matches(tag, pattern):
    repo = tag.rsplit(":", 1)[0]
    if ":" in pattern.rsplit("/", 1)[-1]:
        return fnmatch.fnmatchcase(tag, pattern)
    return fnmatch.fnmatchcase(repo, pattern)
