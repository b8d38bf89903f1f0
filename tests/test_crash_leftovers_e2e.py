"""What crashes and removals leave behind: nothing that blocks or leaks.

A volume create cut short, an object built under a temporary name, a removed container's
writable layer (with its init layer): checked on the data root's contents.
"""

import os

from support import Daemon, NOBODY, primary_gid


def test_removed_container_leaves_no_directory(rootless):
    cid = rootless.docker("run", "-d", "busybox", "true").stdout.decode().strip()
    rootless.docker("wait", cid)
    layer_dir = os.path.join(rootless.data_root, "image", "layers", "containers", cid)
    assert os.path.isdir(os.path.join(layer_dir, "init"))
    rootless.docker("rm", cid)
    assert not os.path.exists(layer_dir)
    assert not any(name.startswith(cid) for name in os.listdir(os.path.join(rootless.data_root, "containers")))


def test_half_created_volumes_are_cleaned_at_start():
    d = Daemon()
    try:
        volumes = os.path.join(d.data_root, "volumes")
        # What an interrupted `volume create` of an older version left: a directory with an
        # empty _data and no opts.json; and what the atomic create can leave: a temp dir.
        for path in (os.path.join(volumes, "half", "_data"), os.path.join(volumes, ".tmp-x-1234", "_data")):
            os.makedirs(path)
        for root, dirs, _ in os.walk(d.data_root):
            for name in dirs + [""]:
                os.chown(os.path.join(root, name), NOBODY, primary_gid(NOBODY))
        d.start()
        assert sorted(os.listdir(volumes)) == []
        d.docker("volume", "create", "half")
        assert d.docker("volume", "ls", "-q").stdout == b"half\n"
        assert sorted(os.listdir(os.path.join(volumes, "half"))) == ["_data", "opts.json"]
        d.docker("volume", "rm", "half")
        assert os.listdir(volumes) == []
    finally:
        d.cleanup()


def test_unreferenced_layers_and_half_created_containers_are_collected_at_start():
    import shutil
    from rootfs import make_rootfs_tar
    d = Daemon()
    try:
        d.start()
        d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
        cid = d.docker("create", "busybox", "true").stdout.decode().strip()
        d.stop()
        layers = os.path.join(d.data_root, "image", "layers", "layers")
        images = os.path.join(d.data_root, "image", "images")
        assert len(os.listdir(layers)) == 1
        # A crash after the layer was stored but before the image was written: the layer has
        # no image. And a create cut short: a container directory without config.json.
        shutil.rmtree(os.path.join(images, os.listdir(images)[0]))
        os.remove(os.path.join(d.data_root, "containers", cid, "config.json"))
        d.start()
        assert os.listdir(layers) == []
        assert cid not in os.listdir(os.path.join(d.data_root, "containers"))
        assert d.docker("ps", "-aq").stdout == b""
        assert "removed unreferenced layer" in d.read_log()
    finally:
        d.cleanup()
