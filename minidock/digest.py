"""SHA-256 of small things, without loading OpenSSL.

`hashlib.sha256` is OpenSSL's: the fast one (SHA-NI instructions), which a layer of hundreds of
MiB needs. But importing `hashlib` maps libcrypto and runs its initialisation, ~2.5 MiB of an
idle daemon's memory (PSS; docs/performance.md, "Start-up"). A daemon that only *starts* hashes
a few kilobytes: each stored image's config.json (its ID is the config's digest, recomputed as
the store loads) and the fixed IDs of the predefined networks. CPython carries its own SHA-256
in C (the module hashlib falls back to when OpenSSL lacks an algorithm: `_sha256`, renamed
`_sha2` in 3.12), slower per byte but giving the same digest, and loading nothing. That is what
`sha256_hex` uses; the bulk hashing of layers and blobs stays with hashlib.

Observe it: `grep -c libcrypto /proc/$(pgrep -f 'minidock -H')/maps` is 0 on an idle daemon,
whether or not it holds images.
"""

try:
    from _sha256 import sha256 as _sha256               # CPython <= 3.11
except ImportError:
    try:
        from _sha2 import sha256 as _sha256             # CPython >= 3.12
    except ImportError:                                 # a build without them: OpenSSL's
        from hashlib import sha256 as _sha256


def sha256_hex(data):
    """The SHA-256 of the bytes `data` (a few KiB; use hashlib for bulk data), as 64 hex digits."""
    return _sha256(data).hexdigest()
