"""Test helper: a minimal busybox root filesystem in a directory.

    /bin/busybox (the static one from the host) and a symlink per applet in /bin,
    /etc/passwd (root, user 1000 "user", nobody), /etc/group, and the usual empty
    directories (/tmp with mode 1777, /proc, /dev, /sys, /root, /home/user).

`make_rootfs(path, owner=uid)` chowns the tree to `owner` so that a daemon running as that
uid in its own user namespace sees it as root-owned.
"""

import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"


def applets():
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and a != "busybox"]


def make_rootfs(path, owner=None, group=None):
    os.makedirs(path, exist_ok=True)
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys", "root", "home/user", "var", "usr/bin"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin/busybox"))
    for a in applets():
        link = os.path.join(path, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n"
                "user:x:1000:1000:user:/home/user:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(path, "etc/group"), "w") as f:
        f.write("root:x:0:\nuser:x:1000:\nstaff:x:50:user\nnogroup:x:65534:\n")
    if owner is not None:
        gid = owner if group is None else group
        for dirpath, dirnames, filenames in os.walk(path):
            os.lchown(dirpath, owner, gid)
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), owner, gid)
    return path


def make_rootfs_tar(path):
    """A busybox rootfs as a tar file (owned by root inside), for `docker import`."""
    import tarfile
    import tempfile
    with tempfile.TemporaryDirectory() as tree:
        make_rootfs(tree)

        def as_root(info):
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info
        with tarfile.open(path, "w") as tar:
            for entry in sorted(os.listdir(tree)):
                tar.add(os.path.join(tree, entry), arcname=entry, filter=as_root)
    return path


if __name__ == "__main__":
    # `python3 tests/rootfs.py busybox-rootfs.tar`: the README tour's image, from the host's busybox.
    import sys
    print(make_rootfs_tar(sys.argv[1] if len(sys.argv) > 1 else "busybox-rootfs.tar"))
