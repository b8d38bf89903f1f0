"""Images: names, configs, the tag index, and the image tarball formats (docker save / load).

An image is two things (OCI image-spec, config.md and manifest.md):

  * a **config**: a JSON document with the runtime defaults (`config`: Cmd, Env, WorkingDir, ...),
    provenance (`created`, `author`, `history`: one entry per build step) and `rootfs.diff_ids`,
    the list of layer diff IDs bottom-up. The image ID is `"sha256:" + sha256(config bytes)`, so
    the exact bytes are kept: re-serialising the JSON would change the ID.
  * its **layers**, held by layers.LayerStore and found from the diff_ids through chain IDs.

Names (Docker's reference grammar, distribution/reference): `[domain/]path[:tag][@digest]`. The
first path part is a domain if it has a "." or ":" or is "localhost"; otherwise the domain is
docker.io, and a one-part path there means `library/<path>`. So `busybox`, `busybox:latest` and
`docker.io/library/busybox:latest` all name one thing, shown in its short ("familiar") form.
Path parts are lowercase `[a-z0-9]` runs joined by `.`, `_`, `__` or dashes; a tag is
`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.

On disk, under `root`:

    images/<id-hex>/config.json     the config bytes exactly as hashed
    images/<id-hex>/meta.json       {"parent": image id or null, "last_tag_time": ...} (local only)
    repositories.json               the tag index {"Repositories": {repo: {ref: image id}}}

An image directory is written in a temporary directory and renamed into place, after its
layers are stored: a crash mid-import leaves no half image visible (unused layers are pruned).

The image tarball (`docker save`) is written in both layouts at once, so every client loads it:

    manifest.json                   [{"Config": "<id-hex>.json", "RepoTags": [...], "Layers": [...]}]
    <id-hex>.json                   the config bytes
    <v1-id>/VERSION, json, layer.tar    one directory per layer (the legacy v1 layout)
    repositories                    {"busybox": {"latest": "<v1-id of the top layer>"}}

`load` reads the manifest.json layout (also today's OCI-flavoured `docker save`, whose Layers
point into blobs/sha256/) and, when there is none, the legacy layout.
"""

import datetime
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import tarfile
import tempfile
import threading
import time

from minidock import errors, layers as layers_mod, store, tarsafe

# -- references ----------------------------------------------------------------------------------

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
REFERENCE_RE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
TAG_RE = re.compile(rf"^{_TAG}$")
HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
ID_PREFIX_RE = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


class Reference:
    """A parsed image reference. `repo` is the familiar repository name ("busybox",
    "localhost:5000/a/b"), `tag` and `digest` may be None."""

    def __init__(self, domain, path, tag=None, digest=None):
        self.domain, self.path, self.tag, self.digest = domain, path, tag, digest

    @property
    def repo(self):
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX):]:
                return self.path[len(OFFICIAL_PREFIX):]
            return self.path
        return f"{self.domain}/{self.path}"

    @property
    def full_repo(self):
        return f"{self.domain}/{self.path}"

    def key(self):
        """The tag index key: "repo:tag" or "repo@digest" in familiar form."""
        if self.digest:
            return f"{self.repo}@{self.digest}"
        return f"{self.repo}:{self.tag or DEFAULT_TAG}"

    def __str__(self):
        return self.key()


def parse_reference(text, default_tag=True):
    """Parse a Docker image reference; raise InvalidParameter with Docker's messages.

    With `default_tag`, a reference with neither tag nor digest gets "latest".
    """
    if not text:
        raise errors.InvalidParameter("invalid reference format")
    m = REFERENCE_RE.match(text)
    if not m:
        if REFERENCE_RE.match(text.lower()):
            raise errors.InvalidParameter(
                f"invalid reference format: repository name ({text}) must be lowercase")
        raise errors.InvalidParameter(f"invalid reference format: {text!r}")
    name, tag, digest = m.groups()
    if len(name) > 255:
        raise errors.InvalidParameter("invalid reference format: repository name must not be more than 255 characters")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    if HEX64_RE.match(name):
        raise errors.InvalidParameter(
            f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def short_id(image_id):
    return image_id.split(":", 1)[-1][:12]


def _hex(image_id):
    return image_id.split(":", 1)[-1]


# -- times ---------------------------------------------------------------------------------------

def now_rfc3339():
    """The current time as Go's RFC3339Nano in UTC (what Docker writes in configs)."""
    ns = time.time_ns()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return base + (f".{frac}" if frac else "") + "Z"


def parse_time(text):
    """RFC3339 (any fraction length, "Z" or offset) -> unix seconds (int); 0 if unparseable."""
    if not text:
        return 0
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if not m:
        return 0
    zone = m.group(3) or "Z"
    stamp = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if zone == "Z" else zone))
    return int(stamp.timestamp())


# -- container config and Dockerfile-style changes ------------------------------------------------

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}

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

    def __init__(self, root, layer_store):
        self.root = os.path.abspath(root)
        self.layers = layer_store
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
                ref = parse_reference(name)
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
                parse_reference(name)            # raise the reference error
            raise errors.NotFound(f"No such image: {name}")

    def _by_reference(self, name, image_id):
        """Did `name` find `image_id` through the tag index (rather than as an ID or ID prefix)?"""
        if name.startswith("sha256:"):
            return False
        try:
            return self.refs.get(parse_reference(name).key()) == image_id
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
        before=/since=<image>. `name_filter` is the old `filter` parameter (a repo glob).
        Untagged images show RepoTags ["<none>:<none>"] and RepoDigests ["<none>@<none>"].
        """
        filters = filters or {}
        with self._lock:
            rows = []
            parents = {m.get("parent") for m in self.meta.values()}
            before = since = None
            if filters.get("before"):
                before = parse_time(self.configs[self.resolve(filters["before"][0])].get("created"))
            if filters.get("since"):
                since = parse_time(self.configs[self.resolve(filters["since"][0])].get("created"))
            for image_id, config in self.configs.items():
                tags, digs = self.tags_of(image_id), self.digests_of(image_id)
                created = parse_time(config.get("created"))
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
                size = self.size(image_id)
                rows.append({
                    "Id": image_id,
                    "ParentId": self.meta[image_id].get("parent") or "",
                    "RepoTags": tags or ["<none>:<none>"],
                    "RepoDigests": digs or (["<none>@<none>"] if dangling else []),
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
                rows.append({"Id": owner or "<missing>", "Created": parse_time(h.get("created")),
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
            return key

    def _parse_new_tag(self, repo, tag):
        if not repo:
            raise errors.InvalidParameter("repository name must have at least one component")
        if tag:
            if not TAG_RE.match(tag):
                raise errors.InvalidParameter(f"invalid tag format: {tag!r}")
            ref = parse_reference(f"{repo}:{tag}")
        else:
            ref = parse_reference(repo)
        if ref.digest:
            raise errors.InvalidParameter("refusing to create a tag with a digest reference")
        return ref

    def _set_ref(self, key, image_id):
        self.refs[key] = image_id
        self.meta[image_id]["last_tag_time"] = now_rfc3339()
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
        with self._lock:
            image_id = self.resolve(name)
            records = []
            by_reference = self._by_reference(name, image_id)
            refs = [r for r, i in self.refs.items() if i == image_id]
            if by_reference:
                key = parse_reference(name).key()
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

    def _new_config(self, diff_ids, run_config, history, **top):
        config = {
            "architecture": GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "created": top.pop("created", None) or now_rfc3339(),
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
        created = now_rfc3339()
        entry = {"created": created, "created_by": created_by}
        if author:
            entry["author"] = author
        if diff_id is None:
            entry["empty_layer"] = True
        else:
            diff_ids.append(diff_id)
        raw = self._new_config(diff_ids, run_config, list(base.get("history") or []) + [entry],
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
        created = now_rfc3339()
        comment = message or f"Imported from {source}"
        raw = self._new_config([layer["diff_id"]], config,
                               [{"created": created, "comment": comment}], created=created, comment=comment)
        return self.add_config(raw, ref_keys=ref_keys)

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
        created = now_rfc3339()
        history = list(parent_config.get("history") or [])
        history.append({"created": created, "created_by": " ".join((container_config or {}).get("Cmd") or []),
                        **({"author": author} if author else {}), **({"comment": comment} if comment else {})})
        raw = self._new_config(list(parent_config.get("rootfs", {}).get("diff_ids") or []) + [layer["diff_id"]],
                               config, history, created=created, author=author, comment=comment,
                               container=container_id, container_config=full_config(container_config),
                               architecture=parent_config.get("architecture"))
        return self.add_config(raw, parent=image_id, ref_keys=ref_keys)

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
        created = now_rfc3339()
        history = list(parent_config.get("history") or [])
        history.append({"created": created, "created_by": f"/bin/sh -c #(nop) ADD file in {path}"})
        raw = self._new_config(list(parent_config["rootfs"]["diff_ids"]) + [layer["diff_id"]],
                               parent_config.get("config"), history, created=created,
                               architecture=parent_config.get("architecture"))
        return self.add_config(raw, parent=image_id)

    # -- save ----------------------------------------------------------------------------------------
    def save(self, names, out):
        """Write the image tarball of `names` to `out` (manifest.json and legacy layouts).

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
                ref = parse_reference(name, default_tag=False)
                if ref.tag:
                    tags.append(ref.key())
                elif ref.digest:
                    continue
                else:
                    tags.extend(t for t in self.tags_of(image_id) if t.rsplit(":", 1)[0] == ref.repo)
                    for t, i in self.refs.items():
                        if "@" not in t and t.rsplit(":", 1)[0] == ref.repo and i != image_id:
                            wanted.setdefault(i, []).append(t)
            w = tarsafe.TarWriter(out)
            manifest, repositories, written = [], {}, set()
            for image_id, tags in wanted.items():
                c = self.configs[image_id]
                mtime = parse_time(c.get("created"))
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
                        tar = self.layers.tar_path(chain)
                        info = tarfile.TarInfo(f"{v1}/layer.tar")
                        info.size, info.mode, info.mtime = os.path.getsize(tar), 0o644, mtime
                        with open(tar, "rb") as f:
                            w.add(info, f)
                    layer_paths.append(f"{v1}/layer.tar")
                    parent_v1 = v1
                with open(self._p("images", _hex(image_id), "config.json"), "rb") as f:
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

    # -- load ----------------------------------------------------------------------------------------
    def load(self, stream):
        """POST /images/load: read an image tarball (either layout, any compression).

        Returns [{"id": image id, "tags": [...]}] in archive order. The archive is unpacked (safely)
        to a temporary directory first, since manifest.json may come after the layers.
        """
        work = self.layers.tmpdir()
        try:
            plain, _ = tarsafe.decompressed(stream)
            tarsafe.extract(plain, work, whiteouts=tarsafe.KEEP, chown=False)
            if os.path.lexists(os.path.join(work, "manifest.json")):
                return self._load_manifest(work)
            if os.path.lexists(os.path.join(work, "repositories")) or _legacy_dirs(work):
                return self._load_legacy(work)
            raise errors.InvalidParameter("invalid image archive: no manifest.json and no legacy image directories")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _archive_file(self, work, name):
        with tarsafe.Resolver(work) as res:
            try:
                path = res.host_path(name)
            except OSError:
                raise errors.InvalidParameter(f"invalid image archive: missing {name}") from None
        if not os.path.isfile(path):
            raise errors.InvalidParameter(f"invalid image archive: missing {name}")
        return path

    def _load_manifest(self, work):
        with open(self._archive_file(work, "manifest.json"), "rb") as f:
            try:
                manifest = json.loads(f.read())
            except ValueError as exc:
                raise errors.InvalidParameter(f"invalid manifest.json: {exc}") from None
        if not isinstance(manifest, list):
            raise errors.InvalidParameter("invalid manifest.json: not a list")
        loaded = []
        for entry in manifest:
            with open(self._archive_file(work, entry.get("Config", "")), "rb") as f:
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
                parent = self._load_layer(work, name, parent, expected)
            tags = [parse_reference(t).key() for t in entry.get("RepoTags") or []]
            image_id = self.add_config(raw, parent=entry.get("Parent") or None, ref_keys=tags)
            loaded.append({"id": image_id, "tags": tags})
        return loaded

    def _load_layer(self, work, name, parent, expected_diff_id=None):
        expected_chain = layers_mod.chain_id(parent, expected_diff_id) if expected_diff_id else None
        if expected_chain and self.layers.exists(expected_chain):
            return expected_chain
        with open(self._archive_file(work, name), "rb") as f:
            meta = self.layers.register(f, parent=parent)
        if expected_diff_id and meta["diff_id"] != expected_diff_id:
            self.prune_layers()
            raise errors.InvalidParameter(
                f"invalid diffID for layer {name}: expected {expected_diff_id!r}, got {meta['diff_id']!r}")
        return meta["chain_id"]

    def _load_legacy(self, work):
        jsons = {}
        for d in _legacy_dirs(work):
            with open(self._archive_file(work, f"{d}/json"), "rb") as f:
                try:
                    jsons[d] = json.loads(f.read())
                except ValueError as exc:
                    raise errors.InvalidParameter(f"invalid image json in {d}: {exc}") from None
        tops = {}                          # v1 id -> [refs]
        repos_path = os.path.join(work, "repositories")
        if os.path.lexists(repos_path):
            with open(self._archive_file(work, "repositories"), "rb") as f:
                for repo, tag_map in json.loads(f.read()).items():
                    for tg, v1 in tag_map.items():
                        tops.setdefault(v1, []).append(parse_reference(f"{repo}:{tg}").key())
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
                parent = self._load_layer(work, f"{v1}/layer.tar", parent)
                diff_ids.append(self.layers.meta(parent)["diff_id"])
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
            raw = self._new_config(diff_ids, t.get("config"), history, created=t.get("created"),
                                   architecture=t.get("architecture"), **extra)
            image_id = self.add_config(raw, ref_keys=refs)
            loaded.append({"id": image_id, "tags": refs})
        return loaded


# -- helpers -------------------------------------------------------------------------------------------

def _repo_of(key):
    """The repository part of an index key: "repo:tag" or "repo@sha256:..." -> "repo"."""
    return key.split("@", 1)[0] if "@" in key else key.rsplit(":", 1)[0]


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
