"""digest.sha256_hex: CPython's own SHA-256 gives hashlib's (OpenSSL's) digests."""
import hashlib
import os

from minidock import digest


def test_the_builtin_sha256_gives_openssls_digests():
    samples = [b"", b"abc", b"minidock-network-bridge", os.urandom(1), os.urandom(63),
               os.urandom(64), os.urandom(65), os.urandom(4096 + 7)]
    for data in samples:
        assert digest.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    # FIPS 180-2's first example
    assert digest.sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_it_is_not_openssls():
    assert digest._sha256.__module__ in ("_sha256", "_sha2")
