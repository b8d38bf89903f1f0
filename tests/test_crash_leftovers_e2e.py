"""What crashes and removals leave behind: nothing that blocks or leaks.

A volume create cut short, an object built under a temporary name, a removed container's
writable layer (with its init layer): checked on the data root's contents.
"""

import os
import time

from support import Daemon, NOBODY, primary_gid


def test_removed_container_leaves_no_directory(rootless):
    cid = rootless.docker("run", "-d", "busybox", "true").stdout.decode().strip()
    rootless.docker("wait", cid)
    layer_dir = os.path.join(rootless.data_root, "image", "layers", "containers", cid)
    assert os.path.isdir(os.path.join(layer_dir, "upper"))
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
        cid = d.docker("create", "-v", "/data", "busybox", "true").stdout.decode().strip()
        kept = d.docker("create", "-v", "/kept", "busybox", "true").stdout.decode().strip()
        d.docker("rm", kept)                 # without -v: its anonymous volume stays, as in Docker
        volumes = sorted(d.docker("volume", "ls", "-q").stdout.decode().split())
        assert len(volumes) == 2
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
        # The anonymous volume made for the half-created container went with it; the one of
        # the container removed without -v is still there.
        left = d.docker("volume", "ls", "-q").stdout.decode().split()
        assert len(left) == 1 and left[0] in volumes
    finally:
        d.cleanup()


def data_root_problems(data_root):
    """What a consistent data root must not hold: layers nothing stands on, container and
    volume directories without their record, temporary debris."""
    from minidock.images import ImageStore
    from minidock.layers import LayerStore
    problems = []
    layers = LayerStore(os.path.join(data_root, "image", "layers"))
    images = ImageStore(os.path.join(data_root, "image"), layers, events=None)
    keep = {images.top_chain(i) for i in images.configs} | layers.rw_chains()
    needed = set()
    for chain in keep:
        if chain and layers.exists(chain):
            needed.update(layers.lowers(chain))
    problems += [f"orphan layer {c}" for c in layers.all_layers() if c not in needed]
    containers = os.path.join(data_root, "containers")
    for name in os.listdir(containers):
        if not os.path.exists(os.path.join(containers, name, "config.json")):
            problems.append(f"container dir without config: {name}")
    volumes = os.path.join(data_root, "volumes")
    for name in os.listdir(volumes):
        if not os.path.exists(os.path.join(volumes, name, "opts.json")):
            problems.append(f"volume dir without opts.json: {name}")
    for root, dirs, files in os.walk(data_root):
        problems += [f"temp debris {os.path.join(root, n)}" for n in dirs + files if n.startswith(".tmp-")]
        if os.path.basename(root) == "tmp" and (dirs or files):
            problems.append(f"leftovers in {root}: {dirs + files}")
    return problems


def test_kill_9_during_operations_then_restart_leaves_a_consistent_data_root():
    """import, volume create, create (with an anonymous volume), run, commit and pull, each
    SIGKILLed at a random moment and followed by a restart."""
    import random
    import subprocess
    from rootfs import make_rootfs_tar
    from support import DOCKER
    import registry_fixtures
    d = Daemon()
    rng = random.Random(14)
    registry = None
    if registry_fixtures.have_registry():
        registry = registry_fixtures.Registry(os.path.join(d.base, "registry")).start()
    try:
        d.start()
        tar = make_rootfs_tar(os.path.join(d.base, "busybox.tar"))
        big = os.path.join(d.base, "big.tar")
        with open(big, "wb") as f:           # a larger import: a wider window to be killed in
            import tarfile
            with tarfile.open(fileobj=f, mode="w") as t:
                data = os.urandom(8 << 20)
                info = tarfile.TarInfo("blob")
                info.size = len(data)
                import io
                t.addfile(info, io.BytesIO(data))
        os.chmod(big, 0o644)
        d.docker("import", tar, "busybox")
        operations = [
            ["import", big, "big"],
            ["volume", "create", "v"],
            ["create", "busybox", "true"],
            ["create", "-v", "/anon", "busybox", "true"],
            ["run", "--name", "c", "busybox", "sh", "-c", "head -c 4000000 /dev/urandom > /f"],
            ["commit", "c", "committed"],
        ]
        if registry is not None:
            # A pull from a local registry: the image pushed once, removed before each pull.
            d.docker("import", big, "bigpush")
            d.docker("tag", "bigpush", f"{registry.address}/big:1")
            d.docker("push", f"{registry.address}/big:1", timeout=120)
            operations.append(["pull", f"{registry.address}/big:1"])
        for round_ in range(6):
            for argv in operations:
                if argv[0] == "pull":
                    d.docker("rmi", "-f", argv[1], check=False)
                proc = subprocess.Popen([DOCKER, *argv], env=d.cli_env(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.0, 0.8))
                d.kill()                    # SIGKILL, mid-operation or just after
                proc.wait(60)
                d.start()
            d.stop()
            problems = data_root_problems(d.data_root)
            assert problems == [], f"round {round_}: {problems}"
            d.start()
            d.docker("rm", "-f", "c", check=False)
    finally:
        d.cleanup()
        if registry is not None:
            registry.stop()


def test_temporary_files_of_interrupted_atomic_writes_are_removed_at_start():
    """A SIGKILL between writing `.tmp-<name>-<random>` and renaming it over <name> leaves the
    temp file; files a user put in an image's layers with such names are not touched."""
    from rootfs import make_rootfs_tar
    d = Daemon()
    try:
        d.start()
        d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
        d.docker("run", "--name", "keep", "busybox", "touch", "/.tmp-mine-1234")
        d.docker("commit", "keep", "kept")
        d.stop()
        image_root = os.path.join(d.data_root, "image")
        image_dir = os.path.join(image_root, "images", os.listdir(os.path.join(image_root, "images"))[0])
        debris = [os.path.join(d.data_root, ".tmp-engine-id-0a1b2c3d"),
                  os.path.join(image_root, ".tmp-repositories.json-7cd6fbfd"),
                  os.path.join(image_root, ".tmp-distribution.json-00ff00ff"),
                  os.path.join(image_dir, ".tmp-meta.json-12345678"),
                  os.path.join(image_root, "layers", ".tmp-sync.json-5e5e5e5e")]
        rw_root = os.path.join(image_root, "layers", "containers")
        debris += [os.path.join(rw_root, cid, ".tmp-rw.json-9abcdef0") for cid in os.listdir(rw_root)]
        assert len(debris) == 6             # the writable layer of `keep`
        for path in debris:
            with open(path, "w") as f:
                f.write('{"half": ')
            os.chown(path, NOBODY, primary_gid(NOBODY))
        d.start()
        assert [p for p in debris if os.path.exists(p)] == []
        assert d.docker("images", "-q").stdout.decode().split() and "kept" in d.docker("images").stdout.decode()
        listing = d.docker("run", "--rm", "kept", "ls", "-a", "/").stdout.decode().split()
        assert ".tmp-mine-1234" in listing
    finally:
        d.cleanup()


def test_after_a_power_cut_a_layer_no_sync_vouched_for_is_extracted_again():
    """The power cut is played: the imported layer is restamped as placed in another boot after
    that boot's last sync, and its /bin/busybox truncated, as ext4 leaves a file whose blocks
    were never written. The daemon's start extracts the layer again from layer.tar (inside its
    user namespace, as the import did), and busybox runs. Before that: the batch's sync.json."""
    import json
    from rootfs import make_rootfs_tar
    from minidock import diffsync, store
    from support import wait_for
    d = Daemon()
    try:
        d.start()
        d.docker("import", make_rootfs_tar(os.path.join(d.base, "busybox.tar")), "busybox")
        layers_root = os.path.join(d.data_root, "image", "layers")
        record = os.path.join(layers_root, "sync.json")
        wait_for(lambda: os.path.exists(record), timeout=10, what="sync.json after the import")
        assert store.read_json(record)["boot"] == diffsync.boot_id()
        d.stop()
        (name,) = [n for n in os.listdir(os.path.join(layers_root, "layers")) if len(n) == 64]
        layer = os.path.join(layers_root, "layers", name)
        meta_path = os.path.join(layer, "meta.json")
        with open(meta_path) as f:
            meta = json.load(f)
        meta.update(boot="an-earlier-boot", placed=2000)
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        with open(record, "w") as f:
            json.dump({"boot": "an-earlier-boot", "upto": 1000}, f)
        os.truncate(os.path.join(layer, "diff", "bin", "busybox"), 0)
        d.start()
        assert d.docker("run", "--rm", "busybox", "echo", "ok").stdout == b"ok\n"
        assert "extracting it again from layer.tar" in d.read_log()
        wait_for(lambda: store.read_json(record)["boot"] == diffsync.boot_id(), timeout=10,
                 what="sync.json naming this boot again")
    finally:
        d.cleanup()
