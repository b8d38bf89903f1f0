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

Making images (import, commit, insert, build steps) is imagecreate.py's; describing them for the
API (list rows, inspect, history) imagedescribe.py's; the image tarball (`docker save` /
`docker load`) is imagearchive.py's.
"""

import json
import os
import re
import shutil
import threading

from minidock import digest, errors, filters as filter_words, layers as layers_mod, reference, store, times

ID_PREFIX_RE = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


def short_id(image_id):
    return image_id.split(":", 1)[-1][:12]


def _hex(image_id):
    return image_id.split(":", 1)[-1]


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
        self.lock = threading.RLock()     # held by every change (and by imagearchive.save)
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
            # CPython's own SHA-256: a restart over stored images loads no OpenSSL (digest.py)
            image_id = "sha256:" + digest.sha256_hex(raw)
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
        with self.lock:
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

    def by_reference(self, name, image_id):
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

    def platform(self, image_id):
        """{"os", "architecture"[, "variant"]} of an image, from its config."""
        c = self.configs[image_id]
        found = {"os": c.get("os") or "linux", "architecture": c.get("architecture") or ""}
        if c.get("variant"):
            found["variant"] = c["variant"]
        return found

    def chains(self, image_id):
        """The chain IDs of an image's layers, bottom first."""
        return layers_mod.chain_ids(self.configs[image_id].get("rootfs", {}).get("diff_ids") or [])

    def size(self, image_id):
        diff_ids = self.configs[image_id].get("rootfs", {}).get("diff_ids") or []
        total = 0
        for chain in layers_mod.chain_ids(diff_ids):
            try:
                total += self.layers.size(chain)
            except errors.NotFound:
                pass
        return total

    # -- tags ----------------------------------------------------------------------------------------
    def tag(self, name, repo, tag=None, force=True):
        """Point `repo:tag` at image `name`; returns the familiar "repo:tag".

        Docker >= 1.10 moves an existing tag silently; older API versions answered 409 unless
        `force` -- the handler passes force=False only for those versions.
        """
        image_id = self.resolve(name)
        ref = self.parse_new_tag(repo, tag)
        with self.lock:
            key = ref.key()
            if not force and self.refs.get(key) not in (None, image_id):
                raise errors.Conflict(
                    f"Conflict: Tag {ref.tag} is already set to image {_hex(self.refs[key])}, "
                    "if you want to replace it, please use -f option")
            self._set_ref(key, image_id)
        self.events.emit("image", "tag", image_id, {"name": key})
        return key

    def parse_new_tag(self, repo, tag):
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
        only_dangling = filter_words.truthy(filters, "dangling", True)
        until = filter_words.until_ns(filters)
        records = []
        with self.lock:
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
                if not filter_words.labels_match(labels, filters):
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
        with self.lock:
            image_id = self.resolve(name)
            records = []
            by_reference = self.by_reference(name, image_id)
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
        trash = self._p("images", ".tmp-rm-" + os.urandom(6).hex())
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
        image_id = "sha256:" + digest.sha256_hex(raw)
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        for chain in layers_mod.chain_ids(diff_ids):
            if not self.layers.exists(chain):
                raise errors.InvalidParameter(f"layer {chain} of image {image_id} is not stored")
        with self.lock:
            final = self._p("images", _hex(image_id))
            if image_id in self.configs:
                for key in ref_keys:
                    self._set_ref(key, image_id)
                return image_id
            meta = {"parent": parent}
            if ref_keys:
                meta["last_tag_time"] = times.now_rfc3339()
            # Written into a directory nobody looks at until the rename: plain files, each
            # fsync'd (the first fsync commits the journal with both; the second finds little
            # to do), then the directory, the rename and images/. Then the tag index once for
            # all names. 4 + 2 fsyncs, where a file-by-file atomic write of each took 9 for an
            # import and 13 for a pull (tag and digest), each a journal commit on a busy disk.
            tmp = self._p("images", ".tmp-" + os.urandom(6).hex())
            os.mkdir(tmp, 0o700)
            try:
                fds = []
                try:
                    fds.append(store.create_file(os.path.join(tmp, "config.json"), raw, 0o644))
                    fds.append(store.create_file(os.path.join(tmp, "meta.json"), store.encode_json(meta), 0o600))
                    for fd in fds:
                        os.fsync(fd)
                finally:
                    for fd in fds:
                        os.close(fd)
                store.fsync_dir(tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            store.fsync_dir(self._p("images"))
            self.configs[image_id] = config
            self.meta[image_id] = meta
            if ref_keys:
                for key in ref_keys:
                    self.refs[key] = image_id
                self._save_refs()
            return image_id

    def build_cache_lookup(self, parent, cache_key):
        """The image an earlier build step made from `parent` (None: scratch) with `cache_key`."""
        with self.lock:
            for image_id, meta in self.meta.items():
                if meta.get("parent") == parent and meta.get("build_cache") == cache_key:
                    return image_id
        return None

    def set_build_cache(self, image_id, cache_key):
        """Remember which build step made an image (meta.json keeps it across restarts)."""
        with self.lock:
            self.meta[image_id]["build_cache"] = cache_key
            self._write_meta(image_id)

    def set_parent(self, image_id, parent):
        """Link an image to the image it was built on (a `cachefrom` hit, buildcache.py)."""
        with self.lock:
            if self.meta[image_id].get("parent") != parent:
                self.meta[image_id]["parent"] = parent
                self._write_meta(image_id)

    def config_path(self, image_id):
        """The config bytes of an image exactly as hashed (its ID is their sha256)."""
        return self._p("images", _hex(image_id), "config.json")

# -- helpers -------------------------------------------------------------------------------------------

def _repo_of(key):
    """The repository part of an index key: "repo:tag" or "repo@sha256:..." -> "repo"."""
    return key.split("@", 1)[0] if "@" in key else key.rsplit(":", 1)[0]
