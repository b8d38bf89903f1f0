"""Platforms: how the kernel names this machine's CPU, and how images and Docker name it.

`uname -m` (`os.uname().machine`) answers with the kernel's name for the architecture: `x86_64`,
`aarch64`, `armv7l`. Images, manifest lists and the Docker API use Go's names instead (`GOARCH`,
with a `variant` for ARM generations), the OCI image-spec's `platform` object:

    {"os": "linux", "architecture": "amd64"}                    an x86_64 machine
    {"os": "linux", "architecture": "arm64", "variant": "v8"}   an aarch64 machine

`docker version` shows `Arch` in Go's spelling, an image config's `architecture` is Go's, and a pull
of a multi-platform image picks the manifest whose platform is ours. A user writes a platform as
`os[/arch[/variant]]` (`docker run --platform linux/amd64`), where `x86_64`, `aarch64` and
friends are accepted for the Go names, as containerd's `platforms.Normalize` does.
"""

import os

from minidock import errors

# `uname -m` -> (GOARCH, variant).
MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    "mips64": ("mips64", None), "loongarch64": ("loong64", None),
}


def goarch(machine=None):
    """The Go name of `machine` (default: this machine's `uname -m`)."""
    machine = machine or os.uname().machine
    return MACHINES.get(machine, (machine, None))[0]


def host(machine=None):
    """{"os": "linux", "architecture": GOARCH[, "variant": ...]} for this machine."""
    machine = machine or os.uname().machine
    arch, variant = MACHINES.get(machine, (machine, None))
    found = {"os": "linux", "architecture": arch}
    if variant:
        found["variant"] = variant
    return found


def parse(text):
    """`os[/arch[/variant]]` -> a platform dict, arch and variant normalised to Go's names.
    An architecture alone defaults to the host's os (linux); no arch means the host's."""
    parts = [p.strip().lower() for p in (text or "").split("/")]
    if not text or len(parts) > 3 or not all(parts):
        raise errors.InvalidParameter(f"invalid platform {text!r}: expected os[/arch[/variant]]")
    if len(parts) == 1:
        return host() if parts[0] == "linux" else {"os": parts[0], "architecture": goarch()}
    arch, variant = MACHINES.get(parts[1], (parts[1], None))
    found = {"os": parts[0], "architecture": arch}
    variant = parts[2] if len(parts) == 3 else variant
    if variant:
        found["variant"] = variant
    return found


def matches(wanted, have):
    """Does the platform `have` serve a request for `wanted`? A variant is compared only when
    both name one (arm64 without a variant is v8)."""
    if wanted["os"] != have.get("os") or wanted["architecture"] != have.get("architecture"):
        return False
    return not (wanted.get("variant") and have.get("variant") and wanted["variant"] != have["variant"])


def format(p):
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
