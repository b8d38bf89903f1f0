"""The daemon's side of registries: the image store as a pull sink and a push source.

registry.py speaks the Registry HTTP API and knows nothing of our store; this module adapts the
store to its sink/source contract and keeps the daemon-wide registry settings (insecure
registries, mirrors, the token cache) in one `RegistryService`.

Pull order matters for layers: a layer on disk is identified by its *chain* (the layers under it
plus itself), so "do we already have this layer" is asked in order, bottom first, and only an
unbroken prefix of present layers counts as "Already exists"; each missing layer is then
registered on top of the one before it.
"""

import json
import os

from minidock import errors, registry
from minidock.layers import chain_id


class PullSink:
    def __init__(self, images, layers):
        self.images = images
        self.layers = layers
        self.chain = None           # chain ID of the layers stored so far, bottom up
        self.prefix_present = True
        self.tmp_dir = layers.tmpdir()

    def has_layer(self, diff_id):
        if self.prefix_present:
            candidate = chain_id(self.chain, diff_id)
            if self.layers.exists(candidate):
                self.chain = candidate
                return True
            self.prefix_present = False
        return False

    def add_layer(self, fileobj, diff_id):
        meta = self.layers.register(fileobj, parent=self.chain)
        if meta["diff_id"] != diff_id:
            raise errors.InvalidParameter(f"layer content {meta['diff_id']} does not match {diff_id}")
        self.chain = meta["chain_id"]

    def add_image(self, config_bytes, reference, manifest_digest):
        ref = registry.parse_reference(reference)
        keys = []
        if ref.tag:
            keys.append(self.images_key(f"{ref.name}:{ref.tag}"))
        keys.append(self.images_key(f"{ref.name}@{manifest_digest}"))
        before = {k: self.images.refs.get(k) for k in keys}
        image_id = self.images.add_config(config_bytes, ref_keys=keys)
        return before[keys[0]] != image_id

    def images_key(self, text):
        from minidock.images import parse_reference
        return parse_reference(text).key()

    def close(self):
        import shutil
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class PushSource:
    def __init__(self, images, layers, image_id):
        from minidock.layers import chain_ids
        self.images = images
        self.layers = layers
        self.image_id = image_id
        config = images.configs[image_id]
        with open(os.path.join(images.root, "images", image_id.split(":", 1)[1], "config.json"), "rb") as f:
            self.config_bytes = f.read()
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        self.layers_list = list(zip(diff_ids, chain_ids(diff_ids)))
        self.tmp_dir = layers.tmpdir()
        self.distribution = images.meta.get(image_id, {}).get("distribution", {})

    @property
    def layers(self):
        return [(diff_id, (lambda c=chain: open(self._layers.tar_path(c), "rb")))
                for diff_id, chain in self.layers_list]

    @layers.setter
    def layers(self, value):
        self._layers = value

    def record_distribution(self, diff_id, digest, size, repository):
        self.distribution.setdefault(diff_id, [])
        entry = {"digest": digest, "size": size, "repository": repository}
        if entry not in self.distribution[diff_id]:
            self.distribution[diff_id].append(entry)

    def close(self):
        import shutil
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        meta = self.images.meta.get(self.image_id)
        if meta is not None:
            meta["distribution"] = self.distribution
            self.images._write_meta(self.image_id)


class RegistryService:
    def __init__(self, engine):
        self.engine = engine
        self.config = registry.RegistryConfig(insecure=engine.config.insecure_registries,
                                              mirrors=engine.config.registry_mirrors)

    def login(self, body):
        auth = registry.AuthConfig.from_dict(body)
        server = body.get("serveraddress") or "https://index.docker.io/v1/"
        token = registry.login(server, auth.username, auth.password, config=self.config)
        result = {"Status": "Login Succeeded"}
        if token:
            result["IdentityToken"] = token
        return result

    def pull(self, reference, auth, progress, cancel):
        ref = registry.parse_reference(reference)
        sink = PullSink(self.engine.images, self.engine.layers)
        try:
            digest = registry.pull(ref, sink, auth=auth, config=self.config, progress=progress, cancel=cancel)
        finally:
            sink.close()
        self.engine.events.emit("image", "pull", str(ref), {"name": str(ref)})
        return digest

    def push(self, name, tag, auth, progress, cancel):
        images = self.engine.images
        full = f"{name}:{tag}" if tag else name
        try:
            image_id = images.resolve(full)
        except errors.NotFound:
            raise errors.NotFound(f"An image does not exist locally with the tag: {name}")
        ref = registry.parse_reference(name, tag or None)
        source = PushSource(images, self.engine.layers, image_id)
        try:
            digest, size = registry.push(ref, source, auth=auth, config=self.config, progress=progress,
                                         cancel=cancel)
        finally:
            source.close()
        key = registry.parse_reference(f"{ref.name}@{digest}")
        from minidock.images import parse_reference
        images._set_ref(parse_reference(str(key)).key(), image_id)
        self.engine.events.emit("image", "push", str(ref), {"name": str(ref)})
        return digest, size

    def search(self, term, auth, limit=25):
        return registry.search(term, auth=auth, config=self.config, limit=limit)

    def auth_from_header(self, header):
        return registry.decode_registry_auth(header) if header else None
