"""End-to-end: images with the real docker CLI against a rootless daemon, plus per-version shapes.

One daemon for the module (the `rootless` fixture: uid 65534, a `busybox` image imported from
the host's static busybox). Each test names its own images so order does not matter.
"""

import gzip
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import pytest

from minidock.client import APIError

pytestmark = pytest.mark.e2e


def out(result):
    return result.stdout.decode()


def run(d, *args):
    """`docker run --rm` bounded by a kill timeout (run proxies SIGTERM to the container)."""
    return out(d.docker("run", "--rm", *args, timeout=60))


def busybox_tar(d):
    return os.path.join(d.base, "busybox.tar")


@pytest.fixture(scope="module")
def web(rootless):
    """A stdlib HTTP server on 127.0.0.1 serving files from a temp dir (fromSrc/insert URLs)."""
    root = os.path.join(rootless.base, "www")
    os.makedirs(root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- import, images, inspect, history ---------------------------------------------------------

def test_import_with_changes_and_message(rootless):
    d = rootless
    image_id = out(d.docker("import", "-c", 'CMD ["sh", "-c", "echo from-cmd"]', "-c", "ENV GREETING=hi",
                            "-m", "a message", busybox_tar(d), "imp:1")).strip()
    assert image_id.startswith("sha256:")
    cfg = json.loads(out(d.docker("inspect", "imp:1")))[0]
    assert cfg["Id"] == image_id
    assert cfg["Config"]["Cmd"] == ["sh", "-c", "echo from-cmd"]
    assert "GREETING=hi" in cfg["Config"]["Env"]
    assert cfg["RepoTags"] == ["imp:1"]
    assert cfg["RootFS"]["Type"] == "layers" and len(cfg["RootFS"]["Layers"]) == 1
    # the layer's diff ID is the sha256 of the uncompressed tar we imported
    with open(busybox_tar(d), "rb") as f:
        assert cfg["RootFS"]["Layers"][0] == "sha256:" + hashlib.sha256(f.read()).hexdigest()
    assert run(d, "imp:1").strip() == "from-cmd"
    assert run(d, "imp:1", "sh", "-c", "echo $GREETING").strip() == "hi"

    listing = out(d.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
    assert f"imp:1 {image_id[7:19]}" in listing.splitlines()
    history = out(d.docker("history", "--no-trunc", "--format", "{{.ID}}|{{.Comment}}", "imp:1"))
    assert history.splitlines() == [f"{image_id}|a message"]


def test_import_gzip_from_stdin(rootless):
    d = rootless
    with open(busybox_tar(d), "rb") as f:
        data = gzip.compress(f.read(), compresslevel=1)
    image_id = out(d.docker("import", "-", "impgz", input=data)).strip()
    assert json.loads(out(d.docker("inspect", "impgz:latest")))[0]["Id"] == image_id
    assert run(d, "impgz", "echo", "ok").strip() == "ok"


def test_import_from_url(rootless, web):
    d = rootless
    root, base = web
    with open(busybox_tar(d), "rb") as src, open(os.path.join(root, "rootfs.tar"), "wb") as dst:
        dst.write(src.read())
    image_id = out(d.docker("import", "-c", "CMD echo url", f"{base}/rootfs.tar", "fromurl:v1")).strip()
    cfg = json.loads(out(d.docker("inspect", "fromurl:v1")))[0]
    assert cfg["Id"] == image_id and cfg["Comment"] == f"Imported from {base}/rootfs.tar"
    assert run(d, "fromurl:v1").strip() == "url"
    missing = d.docker("import", f"{base}/nothing-here.tar", "fromurl:v2", check=False)
    assert missing.returncode != 0 and b"404" in missing.stderr


def test_import_corrupt_tar_makes_no_image(rootless):
    d = rootless
    before = out(d.docker("images", "-q", "-a")).split()
    with open(busybox_tar(d), "rb") as f:
        data = f.read()[:300000]                      # cut in the middle of busybox's data
    bad = d.docker("import", "-", "truncated", input=data, check=False)
    assert bad.returncode != 0
    assert out(d.docker("images", "-q", "-a")).split() == before
    assert d.docker("inspect", "truncated", check=False).returncode != 0


# -- tag and rmi ------------------------------------------------------------------------------

def test_tag_and_rmi_untag_then_delete(rootless):
    d = rootless
    image_id = out(d.docker("import", busybox_tar(d), "tagme:a")).strip()
    d.docker("tag", "tagme:a", "tagme:b")
    d.docker("tag", image_id[7:19], "localhost:5000/team/tagme")
    tags = json.loads(out(d.docker("inspect", "tagme:a")))[0]["RepoTags"]
    assert sorted(tags) == ["localhost:5000/team/tagme:latest", "tagme:a", "tagme:b"]
    bad = d.docker("tag", "tagme:a", "UPPER:case", check=False)
    assert bad.returncode != 0

    assert out(d.docker("rmi", "tagme:b")).strip() == "Untagged: tagme:b"
    assert out(d.docker("rmi", "localhost:5000/team/tagme")).strip() == \
        "Untagged: localhost:5000/team/tagme:latest"
    assert d.docker("inspect", image_id).returncode == 0
    last = out(d.docker("rmi", "tagme:a")).splitlines()
    assert last[0] == "Untagged: tagme:a" and f"Deleted: {image_id}" in last
    assert d.docker("inspect", image_id, check=False).returncode != 0


def test_rmi_conflicts_with_container(rootless):
    d = rootless
    image_id = out(d.docker("import", busybox_tar(d), "inuse")).strip()
    d.docker("create", "--name", "uses-inuse", "inuse", "true")
    try:
        d.docker("tag", "inuse", "inuse:other")
        # with a second tag, removing one name only untags, even while a container uses it
        assert out(d.docker("rmi", "inuse:other")).strip() == "Untagged: inuse:other"
        refused = d.docker("rmi", "inuse", check=False)
        assert refused.returncode != 0
        assert b"conflict: unable to remove repository reference" in refused.stderr
        assert b"is using its referenced image" in refused.stderr
        refused = d.docker("rmi", image_id, check=False)
        assert refused.returncode != 0 and b"being used by stopped container" in refused.stderr
        client = d.client()
        with pytest.raises(APIError) as info:
            client.delete(f"/images/{image_id}")
        assert info.value.status == 409
        assert d.docker("inspect", "inuse").returncode == 0
    finally:
        d.docker("rm", "-f", "uses-inuse")
    d.docker("rmi", "inuse")


# -- save / load --------------------------------------------------------------------------------

def test_save_load_round_trip(rootless):
    d = rootless
    image_id = out(d.docker("import", "-c", 'CMD ["echo", "round", "trip"]', busybox_tar(d), "saved:1")).strip()
    path = os.path.join(d.base, "saved.tar")
    d.docker("save", "-o", path, "saved:1")
    with tarfile.open(path) as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile("manifest.json"))
    assert "repositories" in names
    assert manifest[0]["RepoTags"] == ["saved:1"] and manifest[0]["Config"] in names
    d.docker("rmi", "saved:1")
    assert d.docker("inspect", "saved:1", check=False).returncode != 0
    assert out(d.docker("load", "-i", path)).strip() == "Loaded image: saved:1"
    assert json.loads(out(d.docker("inspect", "saved:1")))[0]["Id"] == image_id
    assert run(d, "saved:1").strip() == "round trip"
    # and through a pipe, the way people use it
    with open(path, "rb") as f:
        assert b"Loaded image: saved:1" in d.docker("load", input=f.read()).stdout


def test_load_archive_in_docker_engine_layout(rootless):
    """An archive laid out the way `docker save` of a real engine (>= 1.10) writes it: a config
    named by its digest, one directory per layer holding layer.tar, manifest.json naming them."""
    d = rootless
    with open(busybox_tar(d), "rb") as f:
        layer = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["echo", "from", "a", "real", "engine"], "Env": ["PATH=/bin"],
                   "Labels": {"made-by": "test"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "ADD rootfs.tar /"}],
    }, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    layer_dir = hashlib.sha256(b"v1 id " + layer[:64]).hexdigest()     # any hex name will do
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": ["engine/made:v1"],
                            "Layers": [f"{layer_dir}/layer.tar"]}]).encode()
    repositories = json.dumps({"engine/made": {"v1": layer_dir}}).encode()

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        def add(name, data=None):
            info = tarfile.TarInfo(name)
            info.mtime = 1704164645
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
        add(f"{config_hex}.json", config)
        add(layer_dir)
        add(f"{layer_dir}/VERSION", b"1.0")
        add(f"{layer_dir}/json", json.dumps({"id": layer_dir, "created": "2024-01-02T03:04:05Z"}).encode())
        add(f"{layer_dir}/layer.tar", layer)
        add("manifest.json", manifest)
        add("repositories", repositories)
    assert b"Loaded image: engine/made:v1" in d.docker("load", input=buf.getvalue()).stdout
    cfg = json.loads(out(d.docker("inspect", "engine/made:v1")))[0]
    assert cfg["Id"] == f"sha256:{config_hex}"
    assert cfg["Config"]["Labels"] == {"made-by": "test"}
    assert cfg["RootFS"]["Layers"] == [diff_id]
    assert run(d, "engine/made:v1").strip() == "from a real engine"
    history = out(d.docker("history", "--format", "{{.CreatedBy}}", "engine/made:v1"))
    assert "ADD rootfs.tar /" in history


def test_load_rejects_garbage_and_changes_nothing(rootless):
    d = rootless
    before = out(d.docker("images", "-q", "-a")).split()
    bad = d.docker("load", input=b"this is not a tar archive at all" * 40, check=False)
    assert bad.returncode != 0
    assert out(d.docker("images", "-q", "-a")).split() == before


# -- commit -------------------------------------------------------------------------------------

def test_commit_then_run_committed_image(rootless):
    d = rootless
    d.docker("run", "--name", "to-commit", "busybox", "sh", "-c",
             "echo committed-data > /data.txt && rm /etc/group", timeout=60)
    try:
        image_id = out(d.docker("commit", "-c", 'CMD ["cat", "/data.txt"]', "-m", "add data", "-a", "me",
                                "to-commit", "committed:1")).strip()
    finally:
        d.docker("rm", "to-commit")
    cfg = json.loads(out(d.docker("inspect", "committed:1")))[0]
    assert cfg["Id"] == image_id and cfg["Author"] == "me" and cfg["Comment"] == "add data"
    assert len(cfg["RootFS"]["Layers"]) == 2
    assert cfg["Parent"] == json.loads(out(d.docker("inspect", "busybox")))[0]["Id"]
    assert run(d, "committed:1").strip() == "committed-data"
    # the deletion travelled as a whiteout
    assert run(d, "committed:1", "sh", "-c", "test -e /etc/group && echo present || echo gone").strip() == "gone"
    history = out(d.docker("history", "--format", "{{.Comment}}", "committed:1")).splitlines()
    assert history[0] == "add data"


def test_commit_running_container_pauses_and_keeps_running(rootless):
    d = rootless
    cid = out(d.docker("run", "-d", "busybox", "sh", "-c", "echo live > /live.txt; sleep 60")).strip()
    try:
        for _ in range(50):
            if d.docker("exec", cid, "test", "-e", "/live.txt", check=False).returncode == 0:
                break
        d.docker("commit", cid, "committed:live")
        state = json.loads(out(d.docker("inspect", cid)))[0]["State"]
        assert state["Running"] and not state["Paused"]
    finally:
        d.docker("rm", "-f", cid)
    assert run(d, "committed:live", "cat", "/live.txt").strip() == "live"


# -- per-version shapes through the API --------------------------------------------------------

@pytest.fixture(scope="module")
def shaped(rootless):
    d = rootless
    image_id = out(d.docker("import", busybox_tar(d), "shapes:one")).strip()
    d.docker("tag", "shapes:one", "shapes:two")
    return d, image_id


def test_images_json_v1_2_and_v1_4_rows_per_tag(shaped):
    d, image_id = shaped
    rows = [r for r in d.client("1.2").get("/images/json") if r["Repository"] == "shapes"]
    assert sorted(r["Tag"] for r in rows) == ["one", "two"]
    for r in rows:
        assert set(r) == {"Repository", "Tag", "Id", "Created"}
        assert r["Id"] == image_id[7:19] and isinstance(r["Created"], int)
    rows = [r for r in d.client("1.4").get("/images/json") if r["Repository"] == "shapes"]
    assert len(rows) == 2
    for r in rows:
        assert set(r) == {"Repository", "Tag", "Id", "Created", "Size", "VirtualSize"}
        assert r["Size"] > 1000


def test_images_json_v1_12_and_v1_24(shaped):
    d, image_id = shaped
    row = [r for r in d.client("1.12").get("/images/json") if r["Id"] == image_id][0]
    assert set(row) == {"Id", "ParentId", "RepoTags", "Created", "Size", "VirtualSize"}
    assert sorted(row["RepoTags"]) == ["shapes:one", "shapes:two"]
    row = [r for r in d.client("1.24").get("/images/json", params={"digests": 1}) if r["Id"] == image_id][0]
    assert {"RepoDigests", "Labels"} <= set(row)
    assert row["RepoDigests"] == []
    filtered = d.client("1.24").get("/images/json", params={"filter": "shapes"})
    assert [r["Id"] for r in filtered] == [image_id]


def test_image_inspect_per_version(shaped):
    d, image_id = shaped
    doc = d.client("1.2").get("/images/shapes:one/json")
    assert set(doc) == {"id", "parent", "created", "container", "container_config"}
    assert doc["id"] == image_id[7:]
    doc = d.client("1.4").get("/images/shapes:one/json")
    assert set(doc) == {"id", "parent", "created", "container", "container_config", "Size"}
    doc = d.client("1.12").get("/images/shapes:one/json")
    assert {"Id", "Parent", "Created", "Container", "ContainerConfig", "Size"} <= set(doc)
    assert "id" not in doc and "RootFS" not in doc
    doc = d.client("1.24").get("/images/shapes:one/json")
    assert doc["Id"] == image_id and doc["RootFS"]["Type"] == "layers"
    assert sorted(doc["RepoTags"]) == ["shapes:one", "shapes:two"]


def test_tag_status_per_version(shaped):
    d, image_id = shaped
    status, _, _ = d.client("1.4").call("POST", "/images/shapes:one/tag", params={"repo": "shapes", "tag": "v4"})
    assert status == 200
    status, _, _ = d.client("1.12").call("POST", "/images/shapes:one/tag", params={"repo": "shapes", "tag": "v12"})
    assert status == 201
    # before v1.24 moving an existing tag to another image needed force
    other = out(d.docker("import", busybox_tar(d), "shapes:other")).strip()
    with pytest.raises(APIError) as info:
        d.client("1.12").call("POST", f"/images/{other}/tag", params={"repo": "shapes", "tag": "v12"})
    assert info.value.status == 409
    d.client("1.12").call("POST", f"/images/{other}/tag", params={"repo": "shapes", "tag": "v12", "force": 1})
    assert d.client().get("/images/shapes:v12/json")["Id"] == other


def test_images_viz_v1_2(shaped):
    d, image_id = shaped
    status, headers, body = d.client("1.2").call("GET", "/images/viz")
    text = body.decode()
    assert headers["Content-Type"].startswith("text/plain")
    assert text.startswith("digraph docker {\n") and text.rstrip().endswith("}")
    short = image_id[7:19]
    assert f'base -> "{short}" [style=invis]' in text
    assert f'"{short}" [label="{short}\\nshapes:one\\nshapes:two' in text
    with pytest.raises(APIError) as info:
        d.client("1.24").call("GET", "/images/viz")
    assert info.value.status == 404


def test_insert_v1_4_adds_a_layer(shaped, web):
    d, image_id = shaped
    root, base = web
    with open(os.path.join(root, "inserted.txt"), "wb") as f:
        f.write(b"inserted over http\n")
    lines = list(d.client("1.4").stream("POST", "/images/shapes:one/insert",
                                        params={"url": f"{base}/inserted.txt", "path": "/usr/inserted.txt"}))
    assert lines[0] == {"status": "Inserting..."}
    assert any(line.get("progressDetail", {}).get("current") == 19 for line in lines)
    new_id = lines[-1]["status"]
    assert "error" not in lines[-1] and len(new_id) == 64
    assert run(d, new_id, "cat", "/usr/inserted.txt") == "inserted over http\n"
    doc = d.client().get(f"/images/{new_id}/json")
    assert len(doc["RootFS"]["Layers"]) == 2 and doc["Parent"] == image_id
    with pytest.raises(APIError) as info:
        d.client("1.24").call("POST", "/images/shapes:one/insert", params={"url": f"{base}/x", "path": "/x"})
    assert info.value.status == 404
