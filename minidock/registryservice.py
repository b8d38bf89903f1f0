"""The daemon's side of registries: the image store as a pull sink and a push source.

minidock/registry/ speaks the Registry HTTP API and knows nothing of our store; this module adapts the
store to its sink/source contract (see minidock/registry/pull.py and push.py) and keeps the daemon-wide registry
state in one `RegistryService`: the insecure registries and mirrors from the command line, the
Bearer token cache, and the *distribution index*.

Pull order matters for layers: a layer on disk is identified by its *chain* (the layers under it
plus itself), so "do we already have this layer" is asked in order, bottom first, and only an
unbroken prefix of present layers counts as "Already exists"; each missing layer is then
registered on top of the one before it. Nothing names the image until the last layer is stored,
so a failed pull leaves no image (layers it stored are unreferenced and go with the next prune).

The distribution index (`<image root>/distribution.json`, dockerd's "v2 metadata") remembers, for
each layer diff id, which compressed blobs it was pushed as and where:

    {"sha256:<diff id>": [{"digest": "sha256:<blob>", "size": 123, "repository": "host:port/team/app"}]}

It is daemon-wide, not per image, because a layer is shared: after pushing `busybox` to
`reg/team/bb`, pushing a child image to `reg/team/child` can ask the registry to *mount* the
busybox blob from `team/bb` ("Mounted from team/bb") instead of compressing and uploading it again.
What you can observe: `cat <data-root>/image/distribution.json` after a push; the registry's
access log shows `POST /v2/team/child/blobs/uploads/?mount=...&from=team/bb` answered 201.
"""

import json
import os
import shutil
import threading

from minidock import errors, reference, store
from minidock.layers import chain_id, chain_ids

# minidock.registry (and with it http.client, ssl, email, concurrent.futures, tempfile) is
# imported by the methods that talk to a registry, on first use: ~15 ms and ~2 MB that a daemon
# which never pulls should not pay at start-up.


class DistributionIndex:
    """diff id -> the blobs that layer is known as on registries (persisted, thread-safe)."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._data = store.read_json(path)
        except (FileNotFoundError, ValueError):
            self._data = {}

    def get(self, diff_id):
        with self._lock:
            return [dict(e) for e in self._data.get(diff_id, [])]

    def add(self, diff_id, digest, size, repository):
        entry = {"digest": digest, "size": size, "repository": repository}
        with self._lock:
            entries = self._data.setdefault(diff_id, [])
            if entry in entries:
                return
            entries.append(entry)
            store.write_json(self.path, self._data)


class PullSink:
    """The image store as registry.pull's sink: layers stacked bottom-up, then the config."""

    def __init__(self, images, layers):
        self.images = images
        self.layers = layers
        self.chain = None           # chain ID of the layers stored so far, bottom up
        self.prefix_present = True  # still inside the run of layers we already had
        self.tmp_dir = layers.tmpdir()
        self.pinned = []            # chains this pull stands on, safe from a concurrent rmi's prune

    def _pin(self, chain):
        self.layers.pinned[chain] += 1
        self.pinned.append(chain)

    def has_layer(self, diff_id):
        if self.prefix_present:
            candidate = chain_id(self.chain, diff_id)
            if self.layers.exists(candidate):
                self._pin(candidate)
                self.chain = candidate
                return True
            self.prefix_present = False
        return False

    def add_layer(self, fileobj, diff_id):
        self.prefix_present = False
        meta = self.layers.register(fileobj, parent=self.chain)
        if meta["diff_id"] != diff_id:
            raise errors.InvalidParameter(f"layer content {meta['diff_id']} does not match {diff_id}")
        self._pin(meta["chain_id"])
        self.chain = meta["chain_id"]

    def add_layer_file(self, path, diff_id):
        """The staged download at `path` in tmp_dir, verified by the puller to be `diff_id`:
        the store takes the file itself as the layer's tar (LayerStore.register_file)."""
        self.prefix_present = False
        meta = self.layers.register_file(path, diff_id, parent=self.chain)
        self._pin(meta["chain_id"])
        self.chain = meta["chain_id"]

    def add_image(self, config_bytes, name, manifest_digest):
        """Store the config and name it by tag (if any) and by `repo@digest` (RepoDigests).
        Returns False when the first of those names already meant this image ("up to date")."""
        ref = reference.parse(name)
        keys = []
        if ref.tag:
            keys.append(reference.Reference(ref.domain, ref.path, tag=ref.tag).key())
        keys.append(reference.Reference(ref.domain, ref.path, digest=manifest_digest).key())
        before = self.images.refs.get(keys[0])
        image_id = self.images.add_config(config_bytes, ref_keys=keys)
        return before != image_id

    def close(self):
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        for chain in self.pinned:
            self.layers.pinned[chain] -= 1
        self.layers.pinned = +self.layers.pinned      # drop zero counts


class PushSource:
    """One stored image as registry.push's source."""

    def __init__(self, images, layers, image_id, index):
        self._layers = layers
        self.index = index
        with open(os.path.join(images.root, "images", image_id.split(":", 1)[1], "config.json"), "rb") as f:
            self.config_bytes = f.read()        # exactly as stored: its sha256 is the image ID
        diff_ids = json.loads(self.config_bytes).get("rootfs", {}).get("diff_ids") or []
        self._pairs = list(zip(diff_ids, chain_ids(diff_ids)))
        self.distribution = {diff_id: index.get(diff_id) for diff_id in diff_ids}
        self.tmp_dir = layers.tmpdir()

    @property
    def layers(self):
        return [(diff_id, (lambda c=chain: open(self._layers.tar_path(c), "rb"))) for diff_id, chain in self._pairs]

    def record_distribution(self, diff_id, digest, size, repository):
        self.index.add(diff_id, digest, size, repository)

    def close(self):
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class RegistryService:
    """Daemon-wide registry state and the four operations the API offers."""

    def __init__(self, engine):
        self.engine = engine
        self._config = None
        self._config_lock = threading.Lock()
        self._index = None

    @property
    def config(self):
        """The insecure registries, mirrors and the Bearer token cache (made on first use)."""
        with self._config_lock:
            if self._config is None:
                from minidock import registry
                self._config = registry.RegistryConfig(insecure=self.engine.config.insecure_registries,
                                                       mirrors=self.engine.config.registry_mirrors)
            return self._config

    @property
    def index(self):
        # Created on first use: the image store is attached to the engine after this service.
        if self._index is None:
            self._index = DistributionIndex(os.path.join(self.engine.images.root, "distribution.json"))
        return self._index

    def login(self, body):
        """POST /auth: check the credentials against the registry the body names."""
        from minidock import registry
        auth = registry.AuthConfig.from_dict(body)
        server = auth.serveraddress or "https://index.docker.io/v1/"
        token = registry.login(server, auth.username, auth.password, config=self.config)
        result = {"Status": "Login Succeeded"}
        if token:
            result["IdentityToken"] = token
        return result

    def pull(self, name, auth, progress, cancel, platform=None):
        """Pull `name`; `platform` (platforms.parse form) picks from a manifest list, else ours."""
        from minidock import registry
        ref = reference.parse(name)
        sink = PullSink(self.engine.images, self.engine.layers)
        try:
            digest = registry.pull(ref, sink, auth=auth, config=self.config, progress=progress, cancel=cancel,
                                   platform_want=platform)
        finally:
            sink.close()
        self.engine.events.emit("image", "pull", str(ref), {"name": str(ref)})
        return digest

    def push(self, name, tag, auth, progress, cancel):
        from minidock import registry
        images = self.engine.images
        try:
            image_id = images.resolve(f"{name}:{tag}" if tag else name)
        except errors.NotFound:
            raise errors.NotFound(f"An image does not exist locally with the tag: {name}") from None
        ref = reference.parse(name, tag or None)
        source = PushSource(images, self.engine.layers, image_id, self.index)
        try:
            digest, size = registry.push(ref, source, auth=auth, config=self.config, progress=progress,
                                         cancel=cancel)
        finally:
            source.close()
        # The pushed manifest's digest names the image from now on: RepoDigests shows it.
        images._set_ref(reference.Reference(ref.domain, ref.path, digest=digest).key(), image_id)
        self.engine.events.emit("image", "push", str(ref), {"name": str(ref)})
        return digest, size

    def distribution(self, name, auth):
        """GET /distribution/{name}/json: the registry's descriptor and platforms for `name`."""
        from minidock import registry
        return registry.inspect_remote(reference.parse(name), auth=auth, config=self.config)

    def search(self, term, auth, limit=25):
        from minidock import registry
        return registry.search(term, auth=auth, config=self.config, limit=limit)

    def auth_from_header(self, header):
        """X-Registry-Auth (base64url JSON, padded or not; standard base64 too) -> AuthConfig | None."""
        from minidock import registry
        return registry.decode_registry_auth(header) if header else None
