"""Manifests: the documents that name an image's blobs, and the media types that tell them apart.

A registry stores two kinds of things per repository, both addressed by the sha256 of their bytes:
blobs (layer tarballs, usually gzip, and image configs) and *manifests*, small JSON documents:

    schema 2 / OCI manifest   {"config": {digest, size}, "layers": [{mediaType, digest, size}, ...]}
    manifest list / OCI index {"manifests": [{digest, platform: {os, architecture, variant}}, ...]}
    schema 1 (legacy)         {"fsLayers": [{"blobSum"}], "history": [{"v1Compatibility": json}]}

The `Content-Type` of a manifest response (or the document's `mediaType`) says which it is; a
client lists what it reads in `Accept`. A list is resolved to the one manifest for our platform.
"""

from minidock import errors, platforms

MT_SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
MT_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MT_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_MANIFESTS = ", ".join([MT_SCHEMA2, MT_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX, MT_SCHEMA1_SIGNED, MT_SCHEMA1])

# The gzip of an empty tar: schema 1 uses it for history entries that made no layer.
EMPTY_LAYER_BLOB = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


def select_manifest(index, want=None):
    """From a manifest list / OCI index, the descriptor for `want` (default: this machine).

    An exact variant match wins; an entry without a variant is accepted for arm64 (v8 is implied)."""
    want = want or platforms.host()
    best = None
    for d in index.get("manifests") or []:
        p = d.get("platform") or {}
        if p.get("os") != want["os"] or p.get("architecture") != want["architecture"]:
            continue
        v = p.get("variant")
        if v == want.get("variant"):
            return d
        if best is None and (v is None or want.get("variant") is None):
            best = d
    if best is None:
        raise errors.NotFound(f"no matching manifest for {platforms.format(want)} in the manifest list entries")
    return best
