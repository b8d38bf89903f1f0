"""Helpers for the image/layer tests: build small real tars (a busybox rootfs, hand-made entries)."""

import io
import os
import tarfile

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "true", "mkdir", "rm")


def tar_bytes(entries):
    """entries: (name, kind, payload) with kind in file/dir/symlink/hardlink/chr; -> tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, payload[0], payload[1]
            tf.addfile(info)
    return buf.getvalue()


def busybox_rootfs_tar():
    """A minimal runnable rootfs: /bin/busybox, applet symlinks, /etc/passwd, empty dirs."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tf.addfile(info)
        for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
            add_dir(d)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(busybox), 0o755, 1_600_000_000
        tf.addfile(info, io.BytesIO(busybox))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "busybox", 1_600_000_000
            tf.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode, info.mtime = len(passwd), 0o644, 1_600_000_000
        tf.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


def names_in(tar_data):
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tf:
        return [m.name for m in tf.getmembers()]


def tree(root):
    """Every path below root (relative), for 'nothing else appeared' assertions."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out
