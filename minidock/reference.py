"""Image references: how `busybox`, `localhost:5000/team/app:1.0` and `app@sha256:...` are read.

A reference names a *domain* (the registry host, with an optional port), a *path* inside it (the
repository), and a *tag* and/or a *digest*. The grammar is distribution/reference's
(`reference/regexp.go`), written out:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    domain     := label ( "." label )* [ ":" port ]    or an IPv6 address in brackets
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 hex   (sha384, sha512: 96, 128 hex)

Docker's normalisation (`ParseNormalizedNamed`): the part before the first "/" is a domain only if
it contains "." or ":", is "localhost", or has capitals; otherwise the domain is `docker.io`, and a
one-component path there gets the `library/` prefix of the official images. `index.docker.io` is
an old spelling of `docker.io`. No tag and no digest means `latest`. So `busybox`,
`busybox:latest`, `library/busybox` and `docker.io/library/busybox:latest` are one name, shown in
its short *familiar* form `busybox:latest`; a 64-hex name is refused because it would read as an ID.

What you can observe: `docker tag busybox Localhost:5000/x` and `docker pull UPPER` fail with
these messages; `docker inspect -f '{{.RepoTags}}' docker.io/library/busybox` shows the familiar
form. The image store keys its tag index by `Reference.key()`; the registry client talks to
`domain` about `path`.
"""

import re

from minidock import errors

DEFAULT_DOMAIN = "docker.io"           # what the user means by no domain at all
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}"

REFERENCE_RE = re.compile(rf"^((?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::({_TAG}))?(?:@({_DIGEST}))?$")
PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
TAG_RE = re.compile(rf"^{_TAG}$")
HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
# The digest algorithms Docker verifies, and the hex length of each.
DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


class Reference:
    """A parsed image reference. `tag` and `digest` may each be None (not both, unless parsed
    with default_tag=False)."""

    __slots__ = ("domain", "path", "tag", "digest")

    def __init__(self, domain, path, tag=None, digest=None):
        self.domain, self.path, self.tag, self.digest = domain, path, tag, digest

    @property
    def name(self):
        """The familiar repository name: `busybox`, `user/app`, `localhost:5000/app`."""
        if self.domain == DEFAULT_DOMAIN:
            rest = self.path[len(OFFICIAL_PREFIX):]
            if self.path.startswith(OFFICIAL_PREFIX) and "/" not in rest:
                return rest
            return self.path
        return f"{self.domain}/{self.path}"

    @property
    def full_name(self):
        """`docker.io/library/busybox`: the name with its domain always written out."""
        return f"{self.domain}/{self.path}"

    @property
    def ref(self):
        """What a registry's manifests endpoint is asked for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def key(self):
        """The familiar `name:tag` or `name@digest`: the image store's tag index key."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def __str__(self):
        return self.key()

    def __repr__(self):
        return f"Reference({self.domain!r}, {self.path!r}, tag={self.tag!r}, digest={self.digest!r})"

    def __eq__(self, other):
        return isinstance(other, Reference) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


def split_domain(name):
    """`host[:port]/path` -> (domain, path) by Docker's rule for what counts as a domain; the
    `library/` prefix is not added here."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return (DEFAULT_DOMAIN if first == LEGACY_DEFAULT_DOMAIN else first), rest
    return DEFAULT_DOMAIN, name


def is_digest(text):
    algorithm, _, hex_part = (text or "").partition(":")
    return DIGEST_HEX.get(algorithm) == len(hex_part) and bool(re.fullmatch(r"[0-9a-f]+", hex_part))


def parse(text, tag=None, default_tag=True):
    """Parse a reference; raise InvalidParameter with Docker's wording for a malformed one.

    `tag` is the API's separate `?tag=` parameter, which may hold a tag or a digest. With
    `default_tag`, a reference with neither tag nor digest gets `latest`."""
    if not text:
        raise errors.InvalidParameter("invalid reference format: repository name must have at least one component")
    m = REFERENCE_RE.match(text)
    if not m:
        if REFERENCE_RE.match(text.lower()):
            raise errors.InvalidParameter(f"invalid reference format: repository name ({text}) must be lowercase")
        raise errors.InvalidParameter(f"invalid reference format: {text!r}")
    name, found_tag, digest = m.groups()
    if tag:
        if ":" in tag:
            digest = digest or tag
        elif TAG_RE.match(tag):
            found_tag = tag
        else:
            raise errors.InvalidParameter(f"invalid reference format: bad tag {tag!r}")
    if digest is not None and not is_digest(digest):
        raise errors.InvalidParameter(f"invalid reference format: bad digest {digest!r}")
    if len(name) > 255:
        raise errors.InvalidParameter("invalid reference format: repository name must not be more than 255 characters")
    if HEX64_RE.match(name):
        raise errors.InvalidParameter(
            f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings")
    domain, path = split_domain(name)
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    if found_tag is None and digest is None and default_tag:
        found_tag = DEFAULT_TAG
    return Reference(domain, path, found_tag, digest)
