"""Push: a stored image's layers and config up to a registry, then its manifest.

For each blob, `HEAD` it; if missing, `POST /v2/<name>/blobs/uploads/` opens an upload session
(202 + `Location`), and `PUT <location>?digest=sha256:...` with the bytes completes it (201).
`POST .../uploads/?mount=<digest>&from=<other repo>` asks the registry to link a blob it already
has in another repository instead (201 = "Mounted from"). Layers are stored uncompressed, so each
is gzipped to a spool file first (its digest is only known after). Finally `PUT` the schema 2
manifest under the tag; the registry answers its digest in `Docker-Content-Digest`.

Push reads from a *source* (registryservice.PushSource for the daemon's store):

    source.config_bytes                    the image config JSON exactly as stored
    source.layers                          [(diff_id, opener)], opener() -> uncompressed tar file
    source.distribution (optional)         {diff_id: [{"digest","size","repository"}]}: blobs
                                           this layer already is somewhere (for HEAD / mount)
    source.record_distribution(diff_id, digest, size, repository)   (optional) remember one
"""

import gzip
import hashlib
import io
import json
import os
import tempfile
import urllib.parse

from minidock import errors, progress as progress_mod, reference
from minidock.progress import Cancelled
from minidock.registry.auth import auth_key
from minidock.registry.endpoints import RegistryConfig
from minidock.registry.manifests import MT_CONFIG, MT_LAYER_GZIP, MT_SCHEMA2
from minidock.registry.session import CHUNK, Session, repo_scope


def _gzip_layer(opener, tmp_dir, cancel):
    """Compress a layer tar into a staging file, deterministically (mtime 0, no file name), so the
    same layer always gives the same blob digest. Returns (path, digest, size)."""
    fd, path = tempfile.mkstemp(prefix="push-", suffix=".tar.gz", dir=tmp_dir)
    h = hashlib.sha256()

    class _Hasher:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            h.update(b)
            self.n += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    try:
        with os.fdopen(fd, "wb") as raw:
            out = _Hasher(raw)
            with opener() as src, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
                while True:
                    if cancel and cancel():
                        raise Cancelled("push cancelled")
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    gz.write(chunk)
        return path, "sha256:" + h.hexdigest(), out.n
    except BaseException:
        os.unlink(path)
        raise


def _blob_exists(s, repository, digest):
    r = s.request("HEAD", f"/v2/{repository}/blobs/{digest}")
    with r:
        r.read()
    if r.status == 200:
        return True
    if r.status == 404:
        return False
    s.expect(r, (200, 404), f"HEAD blob {digest}")
    return False


def _upload_location(s, r):
    loc = r.headers.get("Location")
    if not loc:
        raise errors.Unavailable("registry opened an upload without a Location")
    return urllib.parse.urljoin(s.url("/v2/"), loc)


def _upload_blob(s, repository, digest, size, fileobj, on_bytes=None, location=None):
    """POST an upload session (unless one is given), then PUT the whole blob with ?digest=."""
    if location is None:
        r = s.request("POST", f"/v2/{repository}/blobs/uploads/", headers={"Content-Length": "0"}, body=b"")
        s.expect(r, (202,), f"start upload to {repository}")
        with r:
            r.read()
        location = _upload_location(s, r)
    sep = "&" if "?" in location else "?"
    body = _ProgressBody(fileobj, size, on_bytes) if on_bytes else fileobj
    r = s.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, body=body)
    s.expect(r, (201, 204), f"upload blob {digest}")
    with r:
        r.read()


class _ProgressBody:
    def __init__(self, f, total, on_bytes):
        self.f, self.total, self.on_bytes, self.n = f, total, on_bytes, 0

    def read(self, n=-1):
        data = self.f.read(n)
        if data:
            self.n += len(data)
            self.on_bytes(self.n, self.total)
        return data


def push(ref, source, *, auth=None, config=None, progress=None, cancel=None):
    """Push the image `source` to `ref`'s registry under its tag. Returns (manifest digest, size).

    Each layer: reuse a known blob (HEAD, or a cross-repository mount), else gzip and upload it.
    Then the config blob, then a schema 2 manifest PUT under the tag."""
    if isinstance(ref, str):
        ref = reference.parse(ref)
    if ref.digest and not ref.tag:
        raise errors.InvalidParameter("cannot push a digest reference; push by tag")
    config = config or RegistryConfig()
    say = progress_mod.Reporter(progress)
    dist = getattr(source, "distribution", None) or {}
    # Ask for pull on the repositories we might mount from, too: the token must cover them.
    from_repos = sorted({d["repository"] for ds in dist.values() for d in ds
                         if d.get("repository") and auth_key(reference.split_domain(d["repository"])[0]) == auth_key(ref.domain)
                         and reference.split_domain(d["repository"])[1] != ref.path})
    scopes = [repo_scope(ref.path, "pull,push")] + [repo_scope(reference.split_domain(r)[1], "pull") for r in from_repos]
    s = Session(ref.domain, config=config, auth=auth, scopes=scopes, for_push=True)
    say.raw({"status": f"The push refers to repository [{ref.domain}/{ref.path}]"
             if ref.domain != reference.DEFAULT_DOMAIN else
             f"The push refers to repository [docker.io/{ref.path}]"})
    s.open()
    # Fail early, before compressing anything, if the registry will not let us push.
    r = s.request("POST", f"/v2/{ref.path}/blobs/uploads/", headers={"Content-Length": "0"}, body=b"")
    s.expect(r, (202,), f"push to {ref.name}")
    with r:
        r.read()
    spare_location = _upload_location(s, r)        # reused for the config blob below

    layers = list(source.layers)
    for diff_id, _ in reversed(layers):
        say("Preparing", progress_mod.short_id(diff_id))
    descriptors = []
    tmp_dir = getattr(source, "tmp_dir", None)
    for diff_id, opener in layers:
        sid = progress_mod.short_id(diff_id)
        descriptors.append(_push_layer(s, ref, diff_id, opener, dist.get(diff_id) or [], say, sid, tmp_dir,
                                       cancel, source))

    cfg = source.config_bytes
    cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
    if not _blob_exists(s, ref.path, cfg_digest):
        _upload_blob(s, ref.path, cfg_digest, len(cfg), io.BytesIO(cfg), location=spare_location)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_SCHEMA2,
        "config": {"mediaType": MT_CONFIG, "size": len(cfg), "digest": cfg_digest},
        "layers": descriptors,
    }
    body = json.dumps(manifest, indent=3).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    tag = ref.tag or reference.DEFAULT_TAG
    r = s.request("PUT", f"/v2/{ref.path}/manifests/{tag}", headers={"Content-Type": MT_SCHEMA2}, body=body)
    s.expect(r, (201, 200), f"put manifest {ref}")
    with r:
        r.read()
    said = r.headers.get("Docker-Content-Digest")
    if said and said != digest:
        raise errors.Unavailable(f"registry stored the manifest as {said}, expected {digest}")
    say.raw({"status": f"{tag}: digest: {digest} size: {len(body)}"})
    say.raw({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": len(body)}})
    return digest, len(body)


def _push_layer(s, ref, diff_id, opener, known, say, sid, tmp_dir, cancel, source):
    record = getattr(source, "record_distribution", None)
    here = f"{ref.domain}/{ref.path}"
    # 1. A blob we already pushed (or pulled) somewhere: is it in the target repository already?
    for d in known:
        if d.get("repository") and auth_key(reference.split_domain(d["repository"])[0]) != auth_key(ref.domain):
            continue
        if _blob_exists(s, ref.path, d["digest"]):
            say("Layer already exists", sid)
            return {"mediaType": MT_LAYER_GZIP, "size": d["size"], "digest": d["digest"]}
    # 2. Same registry, another repository: ask for a cross-repository mount.
    for d in known:
        host, path = reference.split_domain(d.get("repository") or "")
        if not d.get("repository") or auth_key(host) != auth_key(ref.domain) or path == ref.path:
            continue
        r = s.request("POST", f"/v2/{ref.path}/blobs/uploads/?mount={urllib.parse.quote(d['digest'])}"
                      f"&from={urllib.parse.quote(path)}", headers={"Content-Length": "0"}, body=b"")
        with r:
            r.read()
        if r.status == 201:
            say(f"Mounted from {path}", sid)
            if record:
                record(diff_id, d["digest"], d["size"], here)
            return {"mediaType": MT_LAYER_GZIP, "size": d["size"], "digest": d["digest"]}
    # 3. Compress and upload.
    path, digest, size = _gzip_layer(opener, tmp_dir, cancel)
    try:
        if _blob_exists(s, ref.path, digest):
            say("Layer already exists", sid)
        else:
            last = [0]

            def on_bytes(n, total):
                if cancel and cancel():
                    raise Cancelled("push cancelled")
                if n - last[0] >= CHUNK or n == total:
                    last[0] = n
                    say("Pushing", sid, n, total)
            with open(path, "rb") as f:
                _upload_blob(s, ref.path, digest, size, f, on_bytes)
            say("Pushed", sid)
    finally:
        os.unlink(path)
    if record:
        record(diff_id, digest, size, here)
    return {"mediaType": MT_LAYER_GZIP, "size": size, "digest": digest}
