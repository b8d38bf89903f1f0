"""images: names, import/list/inspect/history/tag/delete, save->load, loading Docker's layouts, commit."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from minidock import errors, events, imagearchive, imagecreate, imagedescribe, images, layers, reference
from tests.rootfs_helpers import busybox_rootfs_tar, names_in, tar_bytes


@pytest.fixture
def store(tmp_path):
    return images.ImageStore(str(tmp_path / "img"), layers.LayerStore(str(tmp_path / "lay"), driver=layers.VFS),
                              events.Events())


@pytest.fixture
def busybox(store):
    return imagecreate.import_image(store, io.BytesIO(gzip.compress(busybox_rootfs_tar(), 1)), repo="busybox",
                              changes=['CMD ["/bin/sh"]', "ENV A=1 B=two", "EXPOSE 80", "LABEL x=y",
                                       "WORKDIR /root"])


@pytest.mark.parametrize("name,expected", [
    ("busybox", "busybox:latest"), ("busybox:1.36", "busybox:1.36"),
    ("docker.io/library/busybox:latest", "busybox:latest"), ("library/busybox", "busybox:latest"),
    ("user/app:v1", "user/app:v1"), ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
    ("localhost/x", "localhost/x:latest"), ("registry.example.com/x:y", "registry.example.com/x:y"),
    ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
])
def test_reference_normalisation(name, expected):
    assert reference.parse(name).key() == expected


@pytest.mark.parametrize("name,message", [
    ("Busybox", "must be lowercase"), ("bad name", "invalid reference format"), ("a:", "invalid reference"),
    ("a" * 64, "64-byte hexadecimal"), ("-x", "invalid reference format"),
])
def test_invalid_references(name, message):
    with pytest.raises(errors.InvalidParameter, match=message):
        reference.parse(name)


def test_import_inspect_list_history(store, busybox):
    assert busybox.startswith("sha256:")
    with open(os.path.join(store.root, "images", busybox[7:], "config.json"), "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == busybox
    for name in ("busybox", "busybox:latest", "docker.io/library/busybox:latest", busybox, busybox[7:19]):
        assert store.resolve(name) == busybox
    info = imagedescribe.inspect(store, "busybox")
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["/bin/sh"] and info["Config"]["Env"] == ["A=1", "B=two"]
    assert info["Config"]["ExposedPorts"] == {"80/tcp": {}} and info["Config"]["Labels"] == {"x": "y"}
    assert info["Config"]["WorkingDir"] == "/root" and info["Os"] == "linux"
    assert info["Size"] >= os.path.getsize("/bin/busybox") and len(info["RootFS"]["Layers"]) == 1
    rows = imagedescribe.list_rows(store)
    assert [r["Id"] for r in rows] == [busybox] and rows[0]["RepoTags"] == ["busybox:latest"]
    assert imagedescribe.list_rows(store, filters={"label": ["x=y"]}) and not imagedescribe.list_rows(store, filters={"label": ["x=z"]})
    assert not imagedescribe.list_rows(store, filters={"dangling": ["true"]})
    hist = imagedescribe.history(store, "busybox")
    assert len(hist) == 1 and hist[0]["Id"] == busybox and hist[0]["Comment"] == "Imported from -"
    with pytest.raises(errors.NotFound, match="No such image: nope"):
        imagedescribe.inspect(store, "nope")
    with pytest.raises(errors.InvalidParameter, match="not a valid change command"):
        imagecreate.import_image(store, io.BytesIO(tar_bytes([("a", "file", "1")])), changes=["RUN true"])


def test_tag_and_delete_semantics(store, busybox):
    assert store.tag("busybox", "localhost:5000/bb", "v1") == "localhost:5000/bb:v1"
    assert store.tag(busybox, "mine") == "mine:latest"
    with pytest.raises(errors.Conflict):
        other = imagecreate.import_image(store, io.BytesIO(tar_bytes([("a", "file", "1")])))
        store.tag(other, "mine", force=False)
    assert imagedescribe.inspect(store, "mine")["RepoTags"] == ["busybox:latest", "localhost:5000/bb:v1", "mine:latest"]
    # by ID with several references: must be forced
    with pytest.raises(errors.Conflict, match="referenced in multiple repositories"):
        store.delete(busybox[7:19])
    # untag only, the image stays
    assert store.delete("mine") == [{"Untagged": "mine:latest"}]
    assert store.delete("localhost:5000/bb:v1") == [{"Untagged": "localhost:5000/bb:v1"}]
    # a container uses it
    users = lambda image_id: [("c" * 64, True)] if image_id == busybox else []
    with pytest.raises(errors.Conflict, match="must force"):
        store.delete("busybox", users=users)
    stopped = lambda image_id: [("c" * 64, False)] if image_id == busybox else []
    with pytest.raises(errors.Conflict, match="stopped container"):
        store.delete(busybox, users=stopped)
    records = store.delete("busybox")
    assert records[0] == {"Untagged": "busybox:latest"} and records[1] == {"Deleted": busybox}
    assert {"Deleted": imagedescribe.inspect(store, other)["RootFS"]["Layers"][0]} not in records
    assert len(records) == 3           # the image's one layer went too
    with pytest.raises(errors.NotFound):
        store.resolve("busybox")


def test_shared_layer_stored_once_freed_when_unused(store, busybox):
    base = imagecreate.import_image(store, io.BytesIO(busybox_rootfs_tar()), repo="again")
    assert base != busybox                                     # different config (no changes)
    assert imagedescribe.inspect(store, base)["RootFS"] == imagedescribe.inspect(store, busybox)["RootFS"]
    assert len(store.layers.all_layers()) == 1
    assert [r for r in store.delete("again") if "Deleted" in r] == [{"Deleted": base}]
    assert len(store.layers.all_layers()) == 1
    records = store.delete("busybox")
    assert store.layers.all_layers() == [] and len([r for r in records if "Deleted" in r]) == 2


def test_state_survives_reload(store, busybox, tmp_path):
    again = images.ImageStore(store.root, layers.LayerStore(store.layers.root), events.Events())
    assert again.resolve("busybox") == busybox and imagedescribe.inspect(again, "busybox")["Config"]["Cmd"] == ["/bin/sh"]


def test_a_new_image_with_two_names_on_disk(store, busybox, tmp_path):
    # add_config writes a new image's files in one go and the tag index once for all its names
    # (a pull names the image by tag and by digest): what a restart reads must be all there.
    parent = store.configs[busybox]
    raw = imagecreate.config_bytes(parent["rootfs"]["diff_ids"], {"Cmd": ["true"]}, [], created="2020-01-01T00:00:00Z")
    keys = ["localhost:5000/two:v1", "localhost:5000/two@sha256:" + "b" * 64]
    image_id = store.add_config(raw, parent=busybox, ref_keys=keys)
    hexid = image_id.split(":")[1]
    with open(os.path.join(store.root, "images", hexid, "config.json"), "rb") as f:
        assert f.read() == raw
    meta = json.load(open(os.path.join(store.root, "images", hexid, "meta.json")))
    assert meta["parent"] == busybox and meta["last_tag_time"].startswith("20")
    assert oct(os.stat(os.path.join(store.root, "images", hexid, "config.json")).st_mode & 0o777) == "0o644"
    assert not [n for n in os.listdir(os.path.join(store.root, "images")) if n.startswith(".tmp")]
    again = images.ImageStore(store.root, layers.LayerStore(store.layers.root), events.Events())
    assert [again.refs[k] for k in keys] == [image_id, image_id]
    assert again.meta[image_id] == meta


def _members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()}


def test_save_writes_both_layouts_and_loads_back(store, busybox, tmp_path):
    out = io.BytesIO()
    imagearchive.save(store, ["busybox"], out)
    files = _members(out.getvalue())
    manifest = json.loads(files["manifest.json"])
    assert manifest[0]["Config"] == busybox[7:] + ".json" and manifest[0]["RepoTags"] == ["busybox:latest"]
    layer = files[manifest[0]["Layers"][0]]
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == imagedescribe.inspect(store, "busybox")["RootFS"]["Layers"][0]
    repos = json.loads(files["repositories"])
    top = repos["busybox"]["latest"]
    assert files[f"{top}/VERSION"] == b"1.0" and json.loads(files[f"{top}/json"])["id"] == top
    # load into a fresh store: same ID (config bytes kept exactly), same tag
    fresh = images.ImageStore(str(tmp_path / "img2"), layers.LayerStore(str(tmp_path / "lay2"), driver=layers.VFS),
                                 events.Events())
    loaded = imagearchive.load(fresh, io.BytesIO(out.getvalue()))
    assert loaded == [{"id": busybox, "tags": ["busybox:latest"]}]
    assert imagedescribe.inspect(fresh, "busybox")["Config"]["Cmd"] == ["/bin/sh"]
    # and the legacy half alone loads too (what an old engine would read)
    legacy = io.BytesIO()
    with tarfile.open(fileobj=legacy, mode="w") as tf:
        for name, data in files.items():
            if name == "manifest.json" or name.endswith(busybox[7:] + ".json"):
                continue
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    old = images.ImageStore(str(tmp_path / "img3"), layers.LayerStore(str(tmp_path / "lay3"), driver=layers.VFS),
                               events.Events())
    loaded = imagearchive.load(old, io.BytesIO(legacy.getvalue()))
    assert loaded[0]["tags"] == ["busybox:latest"]
    assert imagedescribe.inspect(old, "busybox")["Config"]["Cmd"] == ["/bin/sh"]
    assert imagedescribe.inspect(old, "busybox")["RootFS"] == imagedescribe.inspect(store, "busybox")["RootFS"]


def _archive(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_load_an_archive_as_saved_by_a_real_docker_engine(store):
    """The manifest.json layout of `docker save` (Docker 25+: OCI blobs/ paths), written by hand."""
    layer = busybox_rootfs_tar()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-05-01T10:00:00.123456789Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-05-01T10:00:00Z", "created_by": "BusyBox 1.36.1 (glibc), Debian 12"},
                    {"created": "2024-05-01T10:00:00Z", "created_by": "CMD [\"sh\"]", "empty_layer": True}],
    }).encode()
    cfg_hex = hashlib.sha256(config).hexdigest()
    layer_hex = diff_id[7:]
    manifest = json.dumps([{"Config": f"blobs/sha256/{cfg_hex}", "RepoTags": ["busybox:latest"],
                            "Layers": [f"blobs/sha256/{layer_hex}"]}]).encode()
    archive = _archive([("blobs/", None), ("blobs/sha256/", None), (f"blobs/sha256/{cfg_hex}", config),
                        (f"blobs/sha256/{layer_hex}", layer), ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
                        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("manifest.json", manifest),
                        ("repositories", json.dumps({"busybox": {"latest": layer_hex}}).encode())])
    loaded = imagearchive.load(store, io.BytesIO(archive))
    assert loaded == [{"id": "sha256:" + cfg_hex, "tags": ["busybox:latest"]}]
    info = imagedescribe.inspect(store, "busybox")
    assert info["Created"] == "2024-05-01T10:00:00.123456789Z" and info["Config"]["Cmd"] == ["sh"]
    hist = imagedescribe.history(store, "busybox")
    assert [h["CreatedBy"] for h in hist] == ['CMD ["sh"]', "BusyBox 1.36.1 (glibc), Debian 12"]
    assert hist[0]["Id"] == "sha256:" + cfg_hex and hist[0]["Size"] == 0 and hist[1]["Size"] > 0


def test_load_a_legacy_layout_archive(store):
    base, top = "1" * 64, "2" * 64
    archive = _archive([
        (f"{base}/", None), (f"{base}/VERSION", b"1.0"), (f"{base}/layer.tar", busybox_rootfs_tar()),
        (f"{base}/json", json.dumps({"id": base, "created": "2014-01-01T00:00:00Z",
                                     "container_config": {"Cmd": ["/bin/sh -c #(nop) ADD file in /"]}}).encode()),
        (f"{top}/", None), (f"{top}/VERSION", b"1.0"), (f"{top}/layer.tar", tar_bytes([("hello", "file", "hi")])),
        (f"{top}/json", json.dumps({"id": top, "parent": base, "created": "2014-01-02T00:00:00Z",
                                    "config": {"Cmd": ["/bin/sh"]}, "architecture": "amd64",
                                    "container_config": {"Cmd": ["/bin/sh -c echo hi > /hello"]}}).encode()),
        ("repositories", json.dumps({"old/app": {"v1": top}}).encode()),
    ])
    loaded = imagearchive.load(store, io.BytesIO(archive))
    assert loaded[0]["tags"] == ["old/app:v1"]
    info = imagedescribe.inspect(store, "old/app:v1")
    assert info["Config"]["Cmd"] == ["/bin/sh"] and len(info["RootFS"]["Layers"]) == 2
    assert [h["CreatedBy"] for h in imagedescribe.history(store, "old/app:v1")][0] == "/bin/sh -c echo hi > /hello"


def test_load_refuses_a_layer_that_does_not_match_its_diff_id(store):
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    archive = _archive([("c.json", config), ("l.tar", tar_bytes([("a", "file", "1")])),
                        ("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["x:y"],
                                                       "Layers": ["l.tar"]}]).encode())])
    with pytest.raises(errors.InvalidParameter, match="invalid diffID"):
        imagearchive.load(store, io.BytesIO(archive))
    assert imagedescribe.list_rows(store, all=True) == [] and store.layers.all_layers() == []


def test_commit_a_container_rw_layer(store, busybox):
    chain = store.top_chain(busybox)
    store.layers.create_rw("c1", chain)
    merged = store.layers.mount("c1")
    with open(os.path.join(merged, "etc", "greeting"), "w") as f:
        f.write("hello")
    os.unlink(os.path.join(merged, "etc", "passwd"))
    config = {"Cmd": ["/bin/sh", "-c", "echo hello > /etc/greeting"], "Image": "busybox"}
    new = imagecreate.commit(store, "c1", busybox, config, repo="committed", tag="v1", comment="msg", author="me",
                       changes=["ENV C=3"])
    info = imagedescribe.inspect(store, "committed:v1")
    assert info["Parent"] == busybox and info["Author"] == "me" and info["Comment"] == "msg"
    assert info["Container"] == "c1" and "C=3" in info["Config"]["Env"]
    assert len(info["RootFS"]["Layers"]) == 2
    hist = imagedescribe.history(store, "committed:v1")
    assert hist[0]["Id"] == new and hist[1]["Id"] == busybox
    assert hist[0]["CreatedBy"] == "/bin/sh -c echo hello > /etc/greeting"
    # the new image, run again, shows the change
    store.layers.create_rw("c2", store.top_chain(new))
    merged2 = store.layers.mount("c2")
    assert open(os.path.join(merged2, "etc", "greeting")).read() == "hello"
    assert not os.path.exists(os.path.join(merged2, "etc", "passwd"))
    # the parent cannot go while a child exists; the layers stay while containers use them
    with pytest.raises(errors.Conflict, match="dependent child"):
        store.delete(busybox, force=True)
    store.layers.remove_rw("c1")
    store.layers.remove_rw("c2")


def test_insert_file_as_new_layer(store, busybox):
    new = imagecreate.insert_file(store, "busybox", "/usr/share/hello.txt", io.BytesIO(b"hi there"), 8)
    store.layers.create_rw("c", store.top_chain(new))
    merged = store.layers.mount("c")
    assert open(os.path.join(merged, "usr", "share", "hello.txt")).read() == "hi there"
    store.layers.remove_rw("c")


def test_removing_last_tag_drops_same_repo_digests(tmp_path):
    """`docker rmi repo:tag` after a pull: the repo@digest reference goes with the last tag."""
    from minidock.images import ImageStore
    from minidock.layers import LayerStore
    import io
    import tarfile
    layers = LayerStore(str(tmp_path / "l"), driver="vfs")
    images = ImageStore(str(tmp_path / "i"), layers, events.Events())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    image_id = imagecreate.import_image(images, buf, "reg.example/app", "1")
    digest_key = "reg.example/app@sha256:" + "a" * 64
    images._set_ref(digest_key, image_id)
    images.tag(image_id, "other/repo", "keep")
    records = images.delete("reg.example/app:1")
    assert {"Untagged": digest_key} in records
    assert images.resolve("other/repo:keep") == image_id     # another repository's tag keeps it
    records = images.delete("other/repo:keep")
    assert {"Deleted": image_id} in records


def test_the_store_announces_its_changes(tmp_path):
    """Import, tag, load, untag and delete are events emitted by the image store itself."""
    log = events.Events()
    store = images.ImageStore(str(tmp_path / "img"), layers.LayerStore(str(tmp_path / "lay"), driver=layers.VFS), log)
    image_id = imagecreate.import_image(store, io.BytesIO(tar_bytes([("a", "file", "1")])), repo="evt")
    store.tag(image_id, "evt", "two")
    saved = io.BytesIO()
    imagearchive.save(store, ["evt:two"], saved)
    store.delete("evt:latest")
    store.delete("evt:two")
    imagearchive.load(store, io.BytesIO(saved.getvalue()))
    seen = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"].get("name")) for e in log.history(None, None, {})]
    assert seen[:4] == [("import", image_id, "evt:latest"), ("tag", image_id, "evt:two"),
                        ("untag", "evt:latest", "evt:latest"), ("untag", "evt:two", "evt:two")]
    assert ("delete", image_id, image_id) in seen
    assert seen[-1] == ("load", image_id, "evt:two")


def test_prune_dangling_then_unused_with_filters(tmp_path):
    log = events.Events()
    store = images.ImageStore(str(tmp_path / "img"), layers.LayerStore(str(tmp_path / "lay"), driver=layers.VFS), log)
    keep = imagecreate.import_image(store, io.BytesIO(tar_bytes([("k", "file", "keep")])), repo="keep", changes=["LABEL keep=yes"])
    used = imagecreate.import_image(store, io.BytesIO(tar_bytes([("u", "file", "used by a container")])), repo="used")
    loose = imagecreate.import_image(store, io.BytesIO(tar_bytes([("l", "file", "x" * 5000)])))       # no tag: dangling
    tagged = imagecreate.import_image(store, io.BytesIO(tar_bytes([("t", "file", "y" * 3000)])), repo="tagged")
    users = lambda image_id: [("c" * 64, False)] if image_id == used else []   # noqa: E731
    records, reclaimed = store.prune({}, users=users)
    assert records == [{"Deleted": loose}, {"Deleted": records[1]["Deleted"]}] and reclaimed >= 5000
    assert set(store.configs) == {keep, used, tagged}
    records, reclaimed = store.prune({"dangling": ["false"], "label!": ["keep=yes"]}, users=users)
    assert {"Untagged": "tagged:latest"} in records and set(store.configs) == {keep, used}
    records, _ = store.prune({"dangling": ["false"], "until": ["2000-01-01T00:00:00Z"]}, users=users)
    assert records == [] and set(store.configs) == {keep, used}             # nothing that old
    prunes = [e for e in log.history(None, None, {}) if e["Action"] == "prune"]
    assert len(prunes) == 3 and int(prunes[0]["Actor"]["Attributes"]["reclaimed"]) >= 5000
