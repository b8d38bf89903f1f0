"""Pull: from a reference to a stored image, verifying every byte on the way.

GET the manifest with an `Accept` listing the formats we read. A *manifest list* (or OCI *index*)
names one manifest per platform; pick `linux` + our architecture (platforms.py) and GET that one
by digest. Then GET the config blob and each layer blob, hashing the bytes as they arrive: a blob
whose sha256 is not its digest is refused. The config's `rootfs.diff_ids` are the sha256 of each
layer *uncompressed*; layers are stored by diff id, so a layer the store already has is not
downloaded ("Already exists"). Old registries may still answer *schema 1* manifests, whose
`history` is turned into an image config here.

Pull writes into a *sink* (registryservice.PullSink for the daemon's store):

    sink.has_layer(diff_id) -> bool
    sink.add_layer(fileobj, diff_id)       fileobj: the uncompressed tar, already verified
    sink.add_layer_file(path, diff_id)     optional, preferred: the same as a staged file in
                                           tmp_dir, which the sink may keep (rename) or remove
    sink.add_image(config_bytes, reference, manifest_digest) -> bool | None
                                           False = the reference already named this image
    sink.tmp_dir (optional)                where downloads are staged (same filesystem is best)
"""

import concurrent.futures
import hashlib
import json
import os
import tempfile
import threading
import zlib

from minidock import errors, progress as progress_mod, reference
from minidock.progress import Cancelled
from minidock.registry.endpoints import RegistryConfig
from minidock.registry.manifests import (ACCEPT_MANIFESTS, EMPTY_LAYER_BLOB, MT_LIST, MT_OCI_INDEX, MT_SCHEMA1_SIGNED,
                                         MT_SCHEMA2, select_manifest)
from minidock.registry.session import CHUNK, Session, registry_error_message, repo_scope

CONCURRENT_DOWNLOADS = 3        # dockerd's default max-concurrent-downloads


class _Download:
    """A layer staged on disk: decompressed, with both digests verified."""

    def __init__(self, path, size):
        self.path, self.size = path, size


def _fetch_manifest(s, ref, wanted):
    """GET a manifest; verify it against a pinned digest. Returns (bytes, media type, document, digest)."""
    r = s.request("GET", f"/v2/{ref.path}/manifests/{wanted}", headers={"Accept": ACCEPT_MANIFESTS})
    if r.status == 404:
        with r:
            body = r.read()
        raise errors.NotFound(f"manifest for {ref.name}:{wanted} not found: "
                              f"{registry_error_message(body, 'manifest unknown')}"
                              if not wanted.startswith("sha256:") else
                              f"manifest for {ref.name}@{wanted} not found: "
                              f"{registry_error_message(body, 'manifest unknown')}")
    if r.status in (401, 403):
        with r:
            body = r.read()
        raise errors.Unauthorized(
            f"pull access denied for {ref.name}, repository does not exist or may require 'docker login': "
            f"{registry_error_message(body, 'denied: requested access to the resource is denied')}")
    s.expect(r, (200,), f"manifest for {ref}")
    with r:
        body = r.read()
    mt = (r.headers.get("Content-Type") or "").split(";")[0].strip()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    try:
        doc = json.loads(body)
    except ValueError:
        raise errors.Unavailable(f"manifest for {ref} is not JSON")
    if not mt or mt in ("application/json", "text/plain"):
        mt = doc.get("mediaType") or (MT_SCHEMA1_SIGNED if doc.get("schemaVersion") == 1 else MT_SCHEMA2)
    if doc.get("schemaVersion") == 1:
        # A signed schema 1 manifest's digest is over the payload without its signatures; trust the
        # registry's header for it and only pin-check the non-signed forms.
        digest = r.headers.get("Docker-Content-Digest") or digest
    elif wanted.startswith("sha256:") and digest != wanted:
        raise errors.Unavailable(f"manifest verification failed for digest {wanted}: got {digest}")
    return body, mt, doc, digest


def _stream_blob(s, repository, digest, out, on_bytes, cancel, size_hint=None):
    """GET a blob into `out`, decompressing by its magic bytes and hashing both forms.

    Returns (uncompressed sha256 digest, uncompressed size). Raises on a digest mismatch."""
    r = s.request("GET", f"/v2/{repository}/blobs/{digest}")
    s.expect(r, (200,), f"blob {digest}")
    total = int(r.headers.get("Content-Length") or size_hint or 0)
    h_comp, h_raw = hashlib.sha256(), hashlib.sha256()
    got, raw_size = 0, 0
    decomp = None
    mode = None
    broken = None
    with r:
        while True:
            if cancel and cancel():
                raise Cancelled("pull cancelled")
            chunk = r.read(CHUNK)
            if not chunk:
                break
            h_comp.update(chunk)
            got += len(chunk)
            if mode is None:
                if chunk[:2] == b"\x1f\x8b":
                    mode, decomp = "gzip", zlib.decompressobj(wbits=31)
                elif chunk[:4] == b"\x28\xb5\x2f\xfd":
                    raise errors.NotImplementedKind(
                        f"layer {digest} is zstd-compressed, which is not supported: Python 3.11's "
                        "standard library has no zstd decoder")
                else:
                    mode = "plain"
            if broken:
                data = b""      # keep hashing: a digest mismatch is the better error to report
            elif mode == "gzip":
                try:
                    data = decomp.decompress(chunk)
                    # Concatenated gzip members: start a fresh decoder on what follows the first.
                    while decomp.eof and decomp.unused_data:
                        rest = decomp.unused_data
                        decomp = zlib.decompressobj(wbits=31)
                        data += decomp.decompress(rest)
                except zlib.error as e:
                    broken, data = str(e), b""
            else:
                data = chunk
            h_raw.update(data)
            raw_size += len(data)
            out.write(data)
            on_bytes(got, total)
    actual = "sha256:" + h_comp.hexdigest()
    if actual != digest:
        raise errors.Unavailable(f"filesystem layer verification failed for digest {digest}: "
                                 f"the registry sent content with digest {actual}")
    if mode == "gzip" and not broken:
        if not decomp.eof:
            broken = "unexpected end of gzip stream"
        tail = decomp.flush()
        h_raw.update(tail)
        raw_size += len(tail)
        out.write(tail)
    if broken:
        raise errors.Unavailable(f"layer {digest} is not a valid gzip stream: {broken}")
    return "sha256:" + h_raw.hexdigest(), raw_size


def _get_blob_bytes(s, repository, digest, limit=64 << 20):
    r = s.request("GET", f"/v2/{repository}/blobs/{digest}")
    s.expect(r, (200,), f"blob {digest}")
    with r:
        body = r.read(limit + 1)
    if len(body) > limit:
        raise errors.Unavailable(f"blob {digest} is too large for an image config")
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise errors.Unavailable(f"config verification failed for digest {digest}: got {actual}")
    return body


def schema1_to_config(manifest, diff_ids):
    """Build an image config from a schema 1 manifest (oldest registries) and the layers' diff ids.

    Schema 1 lists layers newest first, each with a `v1Compatibility` JSON of the image it made;
    `diff_ids` are for the non-empty layers, oldest first."""
    history_v1 = [json.loads(h["v1Compatibility"]) for h in manifest.get("history", [])]
    if not history_v1:
        raise errors.Unavailable("schema 1 manifest has no history")
    top = dict(history_v1[0])
    for k in ("id", "parent", "Size", "parent_id", "layer_id", "throwaway"):
        top.pop(k, None)
    history = []
    for h, layer in zip(reversed(history_v1), reversed(manifest.get("fsLayers", []))):
        cmd = (h.get("container_config") or {}).get("Cmd") or []
        entry = {"created": h.get("created", ""), "created_by": " ".join(cmd)}
        if h.get("throwaway") or layer.get("blobSum") == EMPTY_LAYER_BLOB:
            entry["empty_layer"] = True
        history.append(entry)
    top["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    top["history"] = history
    return json.dumps(top, separators=(",", ":")).encode()


def pull(ref, sink, *, auth=None, config=None, progress=None, cancel=None, platform_want=None,
         concurrency=CONCURRENT_DOWNLOADS):
    """Pull `ref` (a Reference or a name string) into `sink`, reporting progress lines to `progress`.

    Layers are downloaded `concurrency` at a time into staging files (verified against their blob
    digest while streaming, and against the config's diff id after decompression), then handed to
    the sink in order. If anything fails, no image is added. Returns the manifest digest."""
    if isinstance(ref, str):
        ref = reference.parse(ref)
    config = config or RegistryConfig()
    say = progress_mod.Reporter(progress)
    s = Session(ref.domain, config=config, auth=auth, scopes=[repo_scope(ref.path, "pull")])
    s.open()
    say.raw({"status": f"Pulling from {ref.path}", "id": ref.digest or ref.tag})

    body, mt, doc, digest = _fetch_manifest(s, ref, ref.ref)
    if mt in (MT_LIST, MT_OCI_INDEX) or (doc.get("manifests") and not doc.get("layers")):
        chosen = select_manifest(doc, platform_want)
        body, mt, doc, sub_digest = _fetch_manifest(s, ref, chosen["digest"])
        if sub_digest != chosen["digest"]:
            raise errors.Unavailable(f"manifest verification failed for digest {chosen['digest']}")
        # RepoDigests records the digest the user can pull again: the list's, as dockerd does.

    tmp_dir = getattr(sink, "tmp_dir", None)
    staged = []
    try:
        if doc.get("schemaVersion") == 1:
            config_bytes = _pull_schema1(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency)
        else:
            config_bytes = _pull_schema2(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency)
    finally:
        for st in staged:
            try:
                os.unlink(st.path)
            except OSError:
                pass

    updated = sink.add_image(config_bytes, str(ref), digest)
    say.raw({"status": f"Digest: {digest}"})
    shown = ref.name + (f"@{ref.digest}" if ref.digest else f":{ref.tag}")
    if updated is False:
        say.raw({"status": f"Status: Image is up to date for {shown}"})
    else:
        say.raw({"status": f"Status: Downloaded newer image for {shown}"})
    return digest


def inspect_remote(ref, *, auth=None, config=None):
    """GET /distribution/{name}/json: what the registry has under `ref`, without pulling it.

    {"Descriptor": {mediaType, digest, size}, "Platforms": [{architecture, os[, variant]}]}: the
    platforms of a manifest list are its entries'; a single manifest's is read from its config."""
    if isinstance(ref, str):
        ref = reference.parse(ref)
    s = Session(ref.domain, config=config or RegistryConfig(), auth=auth, scopes=[repo_scope(ref.path, "pull")])
    s.open()
    body, mt, doc, digest = _fetch_manifest(s, ref, ref.ref)
    if doc.get("manifests") and not doc.get("layers"):
        found = [d.get("platform") or {} for d in doc["manifests"]]
    elif doc.get("schemaVersion") == 1:
        found = [{"architecture": doc.get("architecture", ""), "os": "linux"}]
    else:
        image = json.loads(_get_blob_bytes(s, ref.path, doc["config"]["digest"]))
        found = [{k: image[k] for k in ("architecture", "os", "variant") if image.get(k)}]
    return {"Descriptor": {"mediaType": mt, "digest": digest, "size": len(body)},
            "Platforms": [{k: p[k] for k in ("architecture", "os", "os.version", "os.features", "variant")
                           if p.get(k)} for p in found]}


def _pull_schema2(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency):
    cfg_desc = doc.get("config") or {}
    config_bytes = _get_blob_bytes(s, ref.path, cfg_desc["digest"])
    try:
        diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise errors.Unavailable(f"image config {cfg_desc['digest']} has no rootfs.diff_ids")
    layers = [d for d in doc.get("layers") or []]
    if len(layers) != len(diff_ids):
        raise errors.Unavailable(f"manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff ids")
    for d in layers:
        if "zstd" in (d.get("mediaType") or ""):
            raise errors.NotImplementedKind(
                f"layer {d['digest']} is zstd-compressed ({d['mediaType']}), which is not supported: "
                "Python 3.11's standard library has no zstd decoder")
    _download_and_add(s, ref, [(d["digest"], d.get("size"), diff_ids[i]) for i, d in enumerate(layers)],
                      sink, say, cancel, tmp_dir, staged, concurrency)
    return config_bytes


def _pull_schema1(s, ref, doc, sink, say, cancel, tmp_dir, staged, concurrency):
    # Oldest first; empty layers (throwaway) carry no filesystem change.
    history = [json.loads(h["v1Compatibility"]) for h in doc.get("history", [])]
    blobs = []
    for layer, h in zip(reversed(doc.get("fsLayers", [])), reversed(history)):
        if h.get("throwaway") or layer["blobSum"] == EMPTY_LAYER_BLOB:
            continue
        blobs.append((layer["blobSum"], None, None))      # diff id learnt on download
    diff_ids = _download_and_add(s, ref, blobs, sink, say, cancel, tmp_dir, staged, concurrency)
    return schema1_to_config(doc, diff_ids)


def _download_and_add(s, ref, blobs, sink, say, cancel, tmp_dir, staged, concurrency):
    """blobs: [(blob digest, size or None, diff id or None)] oldest first. Returns the diff ids."""
    stop = threading.Event()

    def cancelled():
        return stop.is_set() or bool(cancel and cancel())

    needed = []
    for blob, size, diff_id in blobs:
        if diff_id and sink.has_layer(diff_id):
            say("Already exists", progress_mod.short_id(blob))
            needed.append(None)
        else:
            say("Pulling fs layer", progress_mod.short_id(blob))
            needed.append((blob, size, diff_id))

    def download(item):
        blob, size, diff_id = item
        sid = progress_mod.short_id(blob)
        fd, path = tempfile.mkstemp(prefix="pull-", suffix=".tar", dir=tmp_dir)
        st = _Download(path, 0)
        staged.append(st)
        last = [0]

        def on_bytes(got, total):
            if got - last[0] >= CHUNK or got == total:
                last[0] = got
                say("Downloading", sid, got, total or size)

        with os.fdopen(fd, "wb") as out:
            got_diff, raw_size = _stream_blob(s, ref.path, blob, out, on_bytes, cancelled, size)
        say("Verifying Checksum", sid)
        if diff_id and got_diff != diff_id:
            raise errors.Unavailable(f"layer {blob} does not match its diff id {diff_id} (got {got_diff})")
        say("Download complete", sid)
        st.size = raw_size
        return st, got_diff

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pull")
    futures = [pool.submit(download, it) if it else None for it in needed]
    result = []
    try:
        for (blob, _size, diff_id), fut in zip(blobs, futures):
            if fut is None:
                result.append(diff_id)
                continue
            st, got_diff = fut.result()
            if cancel and cancel():
                raise Cancelled("pull cancelled")
            if diff_id is None and sink.has_layer(got_diff):          # schema 1: known only now
                say("Already exists", progress_mod.short_id(blob))
            else:
                sid = progress_mod.short_id(blob)
                if hasattr(sink, "add_layer_file"):
                    # The staged file is verified and plain: the sink keeps it as it is.
                    say("Extracting", sid, 0, st.size)
                    sink.add_layer_file(st.path, got_diff)
                    say("Extracting", sid, st.size, st.size)
                else:
                    with open(st.path, "rb") as f:
                        sink.add_layer(_CountingReader(f, st.size, lambda n, t, sid=sid: say("Extracting", sid, n, t),
                                                       cancel), got_diff)
                say("Pull complete", sid)
            result.append(got_diff)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result


class _CountingReader:
    """A read-only file wrapper reporting progress (the "Extracting" bar) and honouring cancel."""

    def __init__(self, f, total, report, cancel):
        self._f, self._total, self._report, self._cancel = f, total, report, cancel
        self._n, self._last = 0, -1

    def read(self, n=-1):
        if self._cancel and self._cancel():
            raise Cancelled("pull cancelled")
        data = self._f.read(n)
        self._n += len(data)
        if data and (self._n - self._last >= CHUNK or self._n == self._total) or (not data and self._last != self._n):
            self._last = self._n
            self._report(self._n, self._total)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def close(self):
        pass

    @property
    def name(self):
        return self._f.name
