"""The Docker Registry HTTP API v2: how images travel between a daemon and a registry.

A registry stores blobs (layer tarballs and image configs) and manifests (the small documents
naming them) per repository, both addressed by the sha256 of their bytes:

    blobs      GET/HEAD /v2/<name>/blobs/<digest>      layer tarballs (usually gzip) and image configs
    manifests  GET/PUT  /v2/<name>/manifests/<ref>     a small JSON document naming the config blob
                                                        and the layer blobs; <ref> is a tag or a digest

The package follows the distribution spec (`docs/spec/api.md`, `docs/spec/auth/token.md`), one
module per concept; image names are parsed by `minidock/reference.py` and progress lines written
by `minidock/progress.py`:

    endpoints.py   which URL: HTTPS or plain HTTP (insecure registries), docker.io's mirrors
    auth.py        X-Registry-Auth, credentials looked up by host, challenges, the token cache
    session.py     one registry and one set of scopes: ping, Basic/Bearer auth, requests, login
    manifests.py   media types, manifest lists and choosing our platform
    pull.py        manifest -> verified blobs -> a sink (the image store)
    push.py        a source (a stored image) -> blobs (or cross-repository mounts) -> manifest
    search.py      the v1 search API

The store side is not known here: pull writes into a *sink*, push reads from a *source*, and
`minidock/registryservice.py` adapts the daemon's image store to both.

What you can observe: run `docker-registry` and watch its log, or `curl -i
http://127.0.0.1:5000/v2/` to see the challenge; the progress JSON lines this package produces are
what `docker pull` renders as progress bars.
"""

from minidock.registry.auth import (AuthConfig, auth_key, decode_registry_auth, decode_registry_config,  # noqa: F401
                                    lookup_auth, parse_www_authenticate)
from minidock.registry.endpoints import RegistryConfig  # noqa: F401
from minidock.registry.manifests import (EMPTY_LAYER_BLOB, MT_CONFIG, MT_LAYER_GZIP, MT_LIST,  # noqa: F401
                                         MT_OCI_INDEX, MT_OCI_MANIFEST, MT_SCHEMA1, MT_SCHEMA1_SIGNED, MT_SCHEMA2,
                                         select_manifest)
from minidock.registry.pull import pull, schema1_to_config  # noqa: F401
from minidock.registry.push import push  # noqa: F401
from minidock.registry.search import search  # noqa: F401
from minidock.registry.session import Session, login  # noqa: F401
