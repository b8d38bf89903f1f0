"""minidock.registry against real peers: Debian's docker-registry (distribution 2.8.2) started per module
on 127.0.0.1 with a random port, in open, htpasswd (bcrypt, via apache2-utils' `htpasswd -Bbn`) and
token modes. The Bearer flow is tested against the *real* registry in token mode: a stdlib token realm
(tests/registry_fixtures.py) signs RS256 JWTs with `openssl`, and the registry verifies them against the
realm's certificate -- not a double. Byte-level pieces (names, headers, challenges) are table tests.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile

import pytest

from minidock import errors, platforms, progress, reference
from minidock import registry as R

import registry_fixtures as F

needs_registry = pytest.mark.skipif(not F.have_registry(), reason="docker-registry is not installed")
needs_htpasswd = pytest.mark.skipif(not F.have_htpasswd(),
                                    reason="htpasswd (apache2-utils) is not installed: .ci/run must install it")
needs_openssl = pytest.mark.skipif(not F.have_openssl(), reason="openssl is not installed (token realm signs JWTs)")

ME = platforms.host()["architecture"]
FAST = dict(timeout=10.0)


# ------------------------------------------------------------------------------------------------
# A test store: a directory of layers by diff id, images in a dict; and an image to push.
# ------------------------------------------------------------------------------------------------

class DirSink:
    def __init__(self, root):
        self.root = root
        self.tmp_dir = os.path.join(root, "tmp")
        os.makedirs(os.path.join(root, "layers"), exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)
        self.images = {}

    def _path(self, diff_id):
        return os.path.join(self.root, "layers", diff_id.split(":")[1] + ".tar")

    def has_layer(self, diff_id):
        return os.path.exists(self._path(diff_id))

    def add_layer(self, f, diff_id):
        tmp = self._path(diff_id) + ".part"
        with open(tmp, "wb") as out:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                out.write(b)
        os.rename(tmp, self._path(diff_id))

    def add_image(self, config_bytes, reference, manifest_digest):
        new = (config_bytes, manifest_digest)
        old = self.images.get(reference)
        self.images[reference] = new
        return old != new

    def layer_count(self):
        return len([n for n in os.listdir(os.path.join(self.root, "layers")) if n.endswith(".tar")])


def make_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1700000000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Image:
    """A push source built in memory: layers are tar bytes, the config lists their diff ids."""

    def __init__(self, layers, arch=ME, label="x"):
        self.tars = layers
        self.diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
        self.config_bytes = json.dumps({
            "architecture": arch, "os": "linux", "config": {"Labels": {"t": label}},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}).encode()
        self.layers = [(d, (lambda t=t: io.BytesIO(t))) for d, t in zip(self.diff_ids, layers)]
        self.distribution = {}

    def record_distribution(self, diff_id, digest, size, repository):
        self.distribution.setdefault(diff_id, []).append({"digest": digest, "size": size, "repository": repository})


def image(tag, n_layers=2, size=3000, arch=ME):
    return Image([make_tar({f"{tag}/f{i}": os.urandom(size)}) for i in range(n_layers)], arch=arch, label=tag)


def statuses(lines):
    return [l.get("status") for l in lines]


# ------------------------------------------------------------------------------------------------
# Registries (module scope: one process each, reaped at the end)
# ------------------------------------------------------------------------------------------------

USERS = {"alice": "s3cret"}


@pytest.fixture(scope="module")
def open_reg(tmp_path_factory):
    if not F.have_registry():
        pytest.skip("docker-registry is not installed")
    reg = F.Registry(str(tmp_path_factory.mktemp("open"))).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic_reg(tmp_path_factory):
    if not F.have_registry():
        pytest.skip("docker-registry is not installed")
    if not F.have_htpasswd():
        pytest.skip("htpasswd (apache2-utils) is not installed: .ci/run must install apache2-utils")
    reg = F.Registry(str(tmp_path_factory.mktemp("basic")), auth="htpasswd", users=USERS).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_reg(tmp_path_factory):
    if not F.have_registry() or not F.have_openssl():
        pytest.skip("docker-registry or openssl is not installed")
    d = str(tmp_path_factory.mktemp("token"))
    realm = F.TokenRealm(os.path.join(d, "realm"), USERS)
    reg = F.Registry(os.path.join(d, "reg"), auth="token", realm=realm).start()
    yield reg, realm
    reg.stop()
    realm.stop()


@pytest.fixture
def sink(tmp_path):
    return DirSink(str(tmp_path / "sink"))


ALICE = R.AuthConfig(username="alice", password="s3cret")


def cfg():
    return R.RegistryConfig(**FAST)


# ------------------------------------------------------------------------------------------------
# Names, headers, decisions: tables over strings
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,tag,want", [
    ("busybox", None, ("docker.io", "library/busybox", "latest", None)),
    ("user/app:1.0", None, ("docker.io", "user/app", "1.0", None)),
    ("docker.io/library/busybox", None, ("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/busybox", None, ("docker.io", "library/busybox", "latest", None)),
    ("localhost/app", None, ("localhost", "app", "latest", None)),
    ("localhost:5000/a/b/c:v2", None, ("localhost:5000", "a/b/c", "v2", None)),
    ("reg.example.com/app", "edge", ("reg.example.com", "app", "edge", None)),
    ("app@sha256:" + "a" * 64, None, ("docker.io", "library/app", None, "sha256:" + "a" * 64)),
    ("127.0.0.1:5000/app", "sha256:" + "b" * 64, ("127.0.0.1:5000", "app", None, "sha256:" + "b" * 64)),
    ("[::1]:5000/app:t", None, ("[::1]:5000", "app", "t", None)),
])
def test_parse_reference(name, tag, want):
    r = reference.parse(name, tag)
    assert (r.domain, r.path, r.tag, r.digest) == want


def test_reference_names():
    assert str(reference.parse("busybox")) == "busybox:latest"
    assert reference.parse("busybox").name == "busybox"
    assert str(reference.parse("localhost:5000/app@sha256:" + "c" * 64)) == "localhost:5000/app@sha256:" + "c" * 64


@pytest.mark.parametrize("bad", ["", "Upper", "a//b", "app:bad tag", "app@sha256:short", "-lead", "a:" + "t" * 200])
def test_parse_reference_rejects(bad):
    with pytest.raises(errors.InvalidParameter, match="invalid reference format"):
        reference.parse(bad)


def test_auth_key_and_lookup():
    # The v1.4 change note: stored "https://localhost:8080" must match a lookup of "localhost:8080".
    for s in ["localhost:5000", "https://localhost:5000", "http://localhost:5000/v1/", "https://localhost:5000/v2/"]:
        assert R.auth_key(s) == "localhost:5000"
    for s in ["", "docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"]:
        assert R.auth_key(s) == "docker.io"
    a = R.AuthConfig(username="u")
    assert R.lookup_auth({"https://localhost:5000/v1/": a}, "localhost:5000") is a
    assert R.lookup_auth({"https://index.docker.io/v1/": a}, "docker.io") is a
    assert R.lookup_auth({"otherhost:5000": a}, "localhost:5000") is None


def test_decode_registry_auth_forms():
    doc = {"username": "alice", "password": "p?>~", "email": "", "serveraddress": "localhost:5000"}
    raw = json.dumps(doc).encode()
    for enc in (base64.urlsafe_b64encode(raw).rstrip(b"="), base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        a = R.decode_registry_auth(enc.decode())
        assert (a.username, a.password, a.serveraddress) == ("alice", "p?>~", "localhost:5000")
    t = R.decode_registry_auth(base64.urlsafe_b64encode(b'{"identitytoken":"tok"}').decode())
    assert t.identitytoken == "tok"
    assert R.decode_registry_auth(base64.b64encode(b"{}").decode()) is None
    assert R.decode_registry_auth("") is None
    legacy = R.decode_registry_auth(base64.b64encode(json.dumps(
        {"auth": base64.b64encode(b"bob:pw").decode()}).encode()).decode())
    assert (legacy.username, legacy.password) == ("bob", "pw")
    with pytest.raises(errors.InvalidParameter):
        R.decode_registry_auth("!!!notbase64")


def test_parse_www_authenticate():
    got = R.parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push",error="insufficient_scope"')
    assert got == [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                               "scope": "repository:library/busybox:pull,push", "error": "insufficient_scope"})]
    assert R.parse_www_authenticate('Basic realm="Registry Realm"') == [("basic", {"realm": "Registry Realm"})]
    two = R.parse_www_authenticate('Basic realm="a, b", Bearer realm="r",service=s')
    assert two == [("basic", {"realm": "a, b"}), ("bearer", {"realm": "r", "service": "s"})]


def test_insecure_decision_and_endpoints():
    c = R.RegistryConfig(insecure=["10.1.0.0/16", "myreg.test:5000"], mirrors=["https://mirror.test"])
    assert c.is_insecure("127.0.0.1:5000") and c.is_insecure("localhost:5000") and c.is_insecure("[::1]:5000")
    assert c.is_insecure("10.1.2.3:443") and c.is_insecure("myreg.test:5000")
    assert not c.is_insecure("192.0.2.99:5000") and not c.is_insecure("10.2.0.1")
    assert c.endpoints("127.0.0.1:5000") == [("https://127.0.0.1:5000", False), ("http://127.0.0.1:5000", False)]
    assert c.endpoints("192.0.2.99:5000") == [("https://192.0.2.99:5000", True)]
    assert c.endpoints("docker.io") == [("https://mirror.test", True), ("https://registry-1.docker.io", True)]
    assert c.endpoints("docker.io", for_push=True) == [("https://registry-1.docker.io", True)]


def test_platform_selection():
    assert platforms.host("x86_64")["architecture"] == "amd64"
    assert platforms.host("aarch64") == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert platforms.host("armv7l")["variant"] == "v7"
    idx = {"manifests": [
        {"digest": "a", "platform": {"os": "windows", "architecture": "amd64"}},
        {"digest": "b", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "c", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "d", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "e", "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert R.select_manifest(idx, platforms.host("armv7l"))["digest"] == "c"
    assert R.select_manifest(idx, platforms.host("aarch64"))["digest"] == "d"
    assert R.select_manifest(idx, platforms.host("x86_64"))["digest"] == "e"
    with pytest.raises(errors.NotFound, match="no matching manifest for linux/s390x"):
        R.select_manifest(idx, platforms.host("s390x"))


def test_progress_lines():
    line = progress.status_line("Downloading", "abc", 1_048_576, 3_401_000)
    assert line["progressDetail"] == {"current": 1048576, "total": 3401000}
    assert line["progress"].startswith("[===============>") and line["progress"].endswith("1.049MB/3.401MB")
    assert progress.status_line("Pull complete", "abc") == {"status": "Pull complete", "progressDetail": {}, "id": "abc"}
    e = progress.error_line(errors.Unavailable("boom"))
    assert e == {"error": "boom", "errorDetail": {"message": "boom"}}
    assert json.loads(progress.json_line(e)) == e


def test_schema1_to_config():
    m = {"schemaVersion": 1, "fsLayers": [{"blobSum": R.EMPTY_LAYER_BLOB}, {"blobSum": "sha256:" + "1" * 64}],
         "history": [{"v1Compatibility": json.dumps({"id": "top", "parent": "base", "architecture": "amd64", "os": "linux",
                                                      "config": {"Cmd": ["sh"]}, "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD"]},
                                                      "throwaway": True})},
                     {"v1Compatibility": json.dumps({"id": "base", "created": "2016-01-01T00:00:00Z",
                                                      "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file"]}})}]}
    c = json.loads(R.schema1_to_config(m, ["sha256:" + "2" * 64]))
    assert c["config"] == {"Cmd": ["sh"]} and "id" not in c and "parent" not in c
    assert c["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}
    assert [h.get("empty_layer", False) for h in c["history"]] == [False, True]


# ------------------------------------------------------------------------------------------------
# htpasswd registry: login, push, pull
# ------------------------------------------------------------------------------------------------

@needs_registry
@needs_htpasswd
def test_push_refused_without_credentials(basic_reg):
    with pytest.raises(errors.Unauthorized, match="authentication required"):
        R.push(f"{basic_reg.address}/app:v1", image("anon"), config=cfg())


@needs_registry
@needs_htpasswd
def test_login(basic_reg):
    assert R.login(basic_reg.address, "alice", "s3cret", config=cfg()) is None
    assert R.login(f"http://{basic_reg.address}/v1/", "alice", "s3cret", config=cfg()) is None
    with pytest.raises(errors.Unauthorized, match="unauthorized: authentication required"):
        R.login(basic_reg.address, "alice", "wrong", config=cfg())


@needs_registry
@needs_htpasswd
def test_push_pull_round_trip(basic_reg, sink):
    img = image("rt", n_layers=3, size=200_000)
    pushed = []
    digest, size = R.push(f"{basic_reg.address}/team/rt:v1", img, auth=ALICE, config=cfg(), progress=pushed.append)
    st = statuses(pushed)
    assert st[0] == f"The push refers to repository [{basic_reg.address}/team/rt]"
    assert st.count("Preparing") == 3 and st.count("Pushed") == 3 and "Pushing" in st
    assert st[-2] == f"v1: digest: {digest} size: {size}"
    assert pushed[-1]["aux"] == {"Tag": "v1", "Digest": digest, "Size": size}

    lines = []
    got = R.pull(f"{basic_reg.address}/team/rt:v1", sink, auth=ALICE, config=cfg(), progress=lines.append)
    assert got == digest
    st = statuses(lines)
    assert st[0] == "Pulling from team/rt" and lines[0]["id"] == "v1"
    for s in ("Pulling fs layer", "Downloading", "Verifying Checksum", "Download complete", "Extracting", "Pull complete"):
        assert s in st, s
    assert st.count("Pull complete") == 3
    assert st[-2:] == [f"Digest: {digest}", f"Status: Downloaded newer image for {basic_reg.address}/team/rt:v1"]
    dl = [l for l in lines if l["status"] == "Downloading"]
    assert all(set(l["progressDetail"]) == {"current", "total"} and l["progress"].startswith("[") for l in dl)
    config_bytes, mdigest = sink.images[f"{basic_reg.address}/team/rt:v1"]
    assert config_bytes == img.config_bytes and mdigest == digest
    for d, t in zip(img.diff_ids, img.tars):
        with open(sink._path(d), "rb") as f:
            assert f.read() == t
    assert os.listdir(sink.tmp_dir) == []           # staging files cleaned up

    # Pulling again: every layer already there, the tag already names the image.
    again = []
    R.pull(f"{basic_reg.address}/team/rt:v1", sink, auth=ALICE, config=cfg(), progress=again.append)
    st = statuses(again)
    assert st.count("Already exists") == 3 and "Downloading" not in st
    assert st[-1] == f"Status: Image is up to date for {basic_reg.address}/team/rt:v1"

    # By digest.
    by_digest = []
    R.pull(f"{basic_reg.address}/team/rt@{digest}", sink, auth=ALICE, config=cfg(), progress=by_digest.append)
    assert by_digest[0] == {"status": "Pulling from team/rt", "id": digest}
    assert f"{basic_reg.address}/team/rt@{digest}" in sink.images

    # Pushing the same image again: the registry has every blob (deterministic gzip).
    re_push = []
    assert R.push(f"{basic_reg.address}/team/rt:v2", img, auth=ALICE, config=cfg(), progress=re_push.append)[0] == digest
    assert statuses(re_push).count("Layer already exists") == 3

    # Pull without credentials: refused with the CLI's wording.
    with pytest.raises(errors.Unauthorized, match="pull access denied for .*may require 'docker login'"):
        R.pull(f"{basic_reg.address}/team/rt:v1", DirSink(sink.root + "2"), config=cfg())


@needs_registry
@needs_htpasswd
def test_shared_layer_already_exists_and_cross_repo_mount(basic_reg, sink):
    base = image("base", n_layers=1, size=50_000)
    R.push(f"{basic_reg.address}/base:1", base, auth=ALICE, config=cfg())
    # A child image sharing the base layer, with what the store learnt when base was pushed.
    child = Image(base.tars + [make_tar({"child": b"c" * 5000})], label="child")
    child.distribution = base.distribution
    lines = []
    R.push(f"{basic_reg.address}/other/child:1", child, auth=ALICE, config=cfg(), progress=lines.append)
    assert "Mounted from base" in statuses(lines)

    R.pull(f"{basic_reg.address}/base:1", sink, auth=ALICE, config=cfg())
    pulled = []
    R.pull(f"{basic_reg.address}/other/child:1", sink, auth=ALICE, config=cfg(), progress=pulled.append)
    per_layer = {l["id"]: l["status"] for l in pulled if l.get("status") in ("Already exists", "Pull complete")}
    assert sorted(per_layer.values()) == ["Already exists", "Pull complete"]


@needs_registry
@needs_htpasswd
def test_search_via_catalog(basic_reg):
    R.push(f"{basic_reg.address}/findme/needle:1", image("needle", 1, 100), auth=ALICE, config=cfg())
    got = R.search(f"{basic_reg.address}/needle", auth=ALICE, config=cfg())
    assert {"name": f"{basic_reg.address}/findme/needle", "description": "", "star_count": 0,
            "is_official": False, "is_automated": False} in got
    assert all("needle" in g["name"] for g in got)
    with pytest.raises(errors.Unauthorized):
        R.search(f"{basic_reg.address}/needle", config=cfg())


# ------------------------------------------------------------------------------------------------
# Open registry: odd content built by hand
# ------------------------------------------------------------------------------------------------

def _push_raw_image(reg, repo, img, tag=None):
    """Blobs + a schema 2 manifest by hand (gzip with a fixed mtime). Returns (digest, manifest bytes)."""
    layers = []
    for t in img.tars:
        gz = gzip.compress(t, mtime=0)
        layers.append({"mediaType": R.MT_LAYER_GZIP, "size": len(gz), "digest": reg.put_blob(repo, gz)})
    cd = reg.put_blob(repo, img.config_bytes)
    doc = {"schemaVersion": 2, "mediaType": R.MT_SCHEMA2,
           "config": {"mediaType": R.MT_CONFIG, "size": len(img.config_bytes), "digest": cd}, "layers": layers}
    if tag:
        reg.put_manifest(repo, tag, doc, R.MT_SCHEMA2)
    return reg.put_manifest(repo, "sha256:" + hashlib.sha256(json.dumps(doc).encode()).hexdigest(), doc, R.MT_SCHEMA2)


class StoreSink(DirSink):
    """DirSink whose layers go into a real LayerStore by the staged file (add_layer_file)."""

    def __init__(self, root):
        from minidock import layers
        self.store = layers.LayerStore(os.path.join(root, "store"))
        super().__init__(root)
        self.tmp_dir, self.chain, self.staged = self.store.tmpdir(), None, []

    def add_layer_file(self, path, diff_id):
        self.staged.append((os.stat(path).st_ino, path))
        self.chain = self.store.register_file(path, diff_id, parent=self.chain)["chain_id"]


@needs_registry
def test_pull_hands_the_verified_download_to_the_store(open_reg, tmp_path):
    img = image("staged", 2, 300_000)
    d, _ = _push_raw_image(open_reg, "staged", img)
    sink = StoreSink(str(tmp_path / "s"))
    lines = []
    R.pull(f"{open_reg.address}/staged@{d}", sink, config=cfg(), progress=lines.append)
    chains = sink.store.lowers(sink.chain)
    assert [sink.store.meta(c)["diff_id"] for c in chains] == img.diff_ids
    for (inode, _), chain, tar in zip(sink.staged, chains, img.tars):
        assert os.stat(sink.store.tar_path(chain)).st_ino == inode       # the download itself
        with open(sink.store.tar_path(chain), "rb") as f:
            assert f.read() == tar
    assert os.listdir(sink.tmp_dir) == []
    done = [l["progressDetail"] for l in lines if l.get("status") == "Extracting"
            and l["progressDetail"]["current"] == l["progressDetail"].get("total")]
    assert sorted(p["total"] for p in done) == sorted(len(t) for t in img.tars)


@needs_registry
def test_manifest_list_picks_this_machine(open_reg, sink):
    mine, other = image("mine", 1, 1000), image("other", 1, 1000, arch="s390x" if ME != "s390x" else "amd64")
    d_mine, b_mine = _push_raw_image(open_reg, "multi", mine)
    d_other, b_other = _push_raw_image(open_reg, "multi", other)
    lst = {"schemaVersion": 2, "mediaType": R.MT_LIST, "manifests": [
        {"mediaType": R.MT_SCHEMA2, "size": len(b_other), "digest": d_other,
         "platform": {"os": "linux", "architecture": json.loads(other.config_bytes)["architecture"]}},
        {"mediaType": R.MT_SCHEMA2, "size": len(b_mine), "digest": d_mine,
         "platform": {"os": "linux", "architecture": ME}}]}
    list_digest, _ = open_reg.put_manifest("multi", "latest", lst, R.MT_LIST)
    lines = []
    assert R.pull(f"{open_reg.address}/multi", sink, config=cfg(), progress=lines.append) == list_digest
    assert sink.images[f"{open_reg.address}/multi:latest"] == (mine.config_bytes, list_digest)
    assert sink.has_layer(mine.diff_ids[0]) and not sink.has_layer(other.diff_ids[0])
    assert lines[-2]["status"] == f"Digest: {list_digest}"


@needs_registry
def test_inspect_remote_reads_platforms_without_pulling(open_reg, sink):
    """GET /distribution/{name}/json: a list's platforms are its entries'; a single manifest's come
    from its config blob. Nothing is stored."""
    mine, other = image("imine", 1, 1000), image("iother", 1, 1000, arch="s390x" if ME != "s390x" else "amd64")
    d_mine, b_mine = _push_raw_image(open_reg, "insp", mine, tag="single")
    d_other, b_other = _push_raw_image(open_reg, "insp", other)
    lst = {"schemaVersion": 2, "mediaType": R.MT_LIST, "manifests": [
        {"mediaType": R.MT_SCHEMA2, "size": len(b_other), "digest": d_other,
         "platform": {"os": "linux", "architecture": json.loads(other.config_bytes)["architecture"]}},
        {"mediaType": R.MT_SCHEMA2, "size": len(b_mine), "digest": d_mine,
         "platform": {"os": "linux", "architecture": ME}}]}
    list_digest, list_bytes = open_reg.put_manifest("insp", "multi", lst, R.MT_LIST)
    single = R.inspect_remote(f"{open_reg.address}/insp:single", config=cfg())
    assert single == {"Descriptor": {"mediaType": R.MT_SCHEMA2, "digest": d_mine, "size": len(b_mine)},
                      "Platforms": [{"architecture": ME, "os": "linux"}]}
    multi = R.inspect_remote(f"{open_reg.address}/insp:multi", config=cfg())
    assert multi["Descriptor"]["digest"] == list_digest and multi["Descriptor"]["mediaType"] == R.MT_LIST
    assert [p["architecture"] for p in multi["Platforms"]] == [json.loads(other.config_bytes)["architecture"], ME]
    assert not sink.images


@needs_registry
def test_corrupt_blob_is_refused_and_nothing_added(open_reg, sink):
    img = image("corrupt", 2, 20_000)
    _push_raw_image(open_reg, "corrupt", img, tag="latest")
    # Tamper with the second layer's bytes on the registry's disk: same length, other content.
    layer_digest = "sha256:" + hashlib.sha256(gzip.compress(img.tars[1], mtime=0)).hexdigest()
    path = open_reg.blob_data_path(layer_digest)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    lines = []
    with pytest.raises(errors.Unavailable, match=f"verification failed for digest {layer_digest}"):
        R.pull(f"{open_reg.address}/corrupt", sink, config=cfg(), progress=lines.append)
    assert sink.images == {} and not sink.has_layer(img.diff_ids[1])
    assert os.listdir(sink.tmp_dir) == []


@needs_registry
def test_zstd_layer_is_a_clear_error(open_reg, sink):
    blob = b"\x28\xb5\x2f\xfd" + os.urandom(64)
    d = open_reg.put_blob("zstd", blob)
    cfgb = json.dumps({"architecture": ME, "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    cd = open_reg.put_blob("zstd", cfgb)
    doc = {"schemaVersion": 2, "mediaType": R.MT_OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(cfgb), "digest": cd},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": len(blob), "digest": d}]}
    open_reg.put_manifest("zstd", "latest", doc, R.MT_OCI_MANIFEST)
    with pytest.raises(errors.NotImplementedKind, match="zstd.*not supported"):
        R.pull(f"{open_reg.address}/zstd", sink, config=cfg())
    assert sink.images == {}


@needs_registry
def test_cancel_stops_the_pull(open_reg, sink):
    img = image("cancel", 3, 3 << 20)
    d, _ = _push_raw_image(open_reg, "cancel", img)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2           # the client "disconnects" after the first chunks
    with pytest.raises(progress.Cancelled):
        R.pull(f"{open_reg.address}/cancel@{d}", sink, config=cfg(), cancel=cancel)
    assert sink.images == {} and sink.layer_count() == 0 and os.listdir(sink.tmp_dir) == []


@needs_registry
def test_unknown_tag_is_not_found(open_reg, sink):
    with pytest.raises(errors.NotFound, match="manifest for .*nothere:nope not found: manifest unknown"):
        R.pull(f"{open_reg.address}/nothere:nope", sink, config=cfg())


def _non_loopback_ipv4():
    """An address of this machine outside 127.0.0.0/8, to serve an HTTP registry that is not
    insecure by default. None when the machine has only loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))               # no packet is sent; picks the outbound address
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


@needs_registry
def test_http_registry_not_insecure_is_refused(tmp_path, sink):
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve a not-insecure registry on")
    reg = F.Registry(str(tmp_path / "plain"), host=ip).start()
    try:
        with pytest.raises(errors.Unavailable, match=rf"--insecure-registry {ip}:{reg.port}") as e:
            R.pull(f"{reg.address}/app", sink, config=cfg())
        assert "server gave HTTP response to HTTPS client" in str(e.value)
        # Marked insecure (by CIDR), the same registry is reachable over plain HTTP.
        ok = R.RegistryConfig(insecure=[f"{ip}/32"], **FAST)
        s = R.Session(reg.address, config=ok).open()
        assert s.base == f"http://{reg.address}"
    finally:
        reg.stop()


# ------------------------------------------------------------------------------------------------
# Token auth: the real registry in token mode behind the stdlib realm
# ------------------------------------------------------------------------------------------------

@needs_registry
@needs_openssl
def test_bearer_flow_with_real_registry(token_reg, sink):
    """Real docker-registry in `auth: token` mode; tokens are RS256 JWTs from TokenRealm (not a double)."""
    reg, realm = token_reg
    c = cfg()
    ident = R.login(reg.address, "alice", "s3cret", config=c)
    assert ident and ident in realm.refresh
    with pytest.raises(errors.Unauthorized, match="incorrect username or password"):
        R.login(reg.address, "alice", "nope", config=c)

    img = image("tok", 2, 10_000)
    digest, _ = R.push(f"{reg.address}/team/tok:1", img, auth=ALICE, config=c)
    scopes = [q.get("scope") for m, q in realm.requests if m == "GET" and q.get("scope")]
    assert ["repository:team/tok:pull,push"] in scopes

    # Pull with only the identity token: the refresh_token grant by POST.
    before = realm.fetches
    R.pull(f"{reg.address}/team/tok:1", sink, auth=R.AuthConfig(identitytoken=ident), config=c)
    assert realm.requests[-1][0] == "POST" and realm.requests[-1][1]["grant_type"] == ["refresh_token"]
    assert sink.images[f"{reg.address}/team/tok:1"][1] == digest
    # The token is reused until it expires: a second pull asks the realm for nothing.
    fetched = realm.fetches
    assert fetched == before + 1
    R.pull(f"{reg.address}/team/tok:1", DirSink(sink.root + "b"), auth=R.AuthConfig(identitytoken=ident), config=c)
    assert realm.fetches == fetched

    # Anonymous: the realm grants no access, the registry refuses.
    with pytest.raises(errors.Unauthorized, match="pull access denied"):
        R.pull(f"{reg.address}/team/tok:1", DirSink(sink.root + "c"), config=c)

    # A registrytoken (a ready bearer token) is used as is.
    tok = realm.issue("alice", ["repository:team/tok:pull"], F.TokenRealm.SERVICE)
    R.pull(f"{reg.address}/team/tok:1", DirSink(sink.root + "d"), auth=R.AuthConfig(registrytoken=tok), config=c)


@needs_registry
def test_mirror_serves_docker_io_names(open_reg, sink):
    """A docker.io name (`mirrored` = docker.io/library/mirrored) pulled through --registry-mirror,
    here the local registry: the mirror is tried before registry-1.docker.io (unreachable offline)."""
    img = image("mirrored", 1, 2000)
    d, _ = _push_raw_image(open_reg, "library/mirrored", img, tag="latest")
    c = R.RegistryConfig(mirrors=[f"http://{open_reg.address}"], **FAST)
    lines = []
    assert R.pull("mirrored", sink, config=c, progress=lines.append) == d
    assert lines[0] == {"status": "Pulling from library/mirrored", "id": "latest"}
    assert lines[-1]["status"] == "Status: Downloaded newer image for mirrored:latest"
    assert sink.images["mirrored:latest"] == (img.config_bytes, d)


class _Schema1Double:
    """A registry double for schema 1 only (distribution 2.8 will not store unsigned schema 1
    manifests): GET /v2/ -> 200, one signed-style manifest, and its blobs."""

    def __init__(self, manifest_bytes, blobs):
        import http.server
        import threading
        double = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/v2/":
                    body, ctype = b"{}", "application/json"
                elif self.path.startswith("/v2/old/manifests/"):
                    body, ctype = manifest_bytes, R.MT_SCHEMA1_SIGNED
                elif self.path.startswith("/v2/old/blobs/") and self.path[14:] in blobs:
                    body, ctype = blobs[self.path[14:]], "application/octet-stream"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if ctype == R.MT_SCHEMA1_SIGNED:
                    self.send_header("Docker-Content-Digest", "sha256:" + "5" * 64)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_schema1_pull_from_double(sink):
    """Schema 1 read support, against a double (see _Schema1Double for why not the real registry)."""
    tar = make_tar({"old/file": b"v1 data" * 100})
    gz = gzip.compress(tar, mtime=0)
    blob = "sha256:" + hashlib.sha256(gz).hexdigest()
    empty = gzip.compress(make_tar({}), mtime=0)
    m = {"schemaVersion": 1, "name": "old", "tag": "latest", "architecture": ME,
         "fsLayers": [{"blobSum": R.EMPTY_LAYER_BLOB}, {"blobSum": blob}],
         "history": [{"v1Compatibility": json.dumps({"id": "b", "parent": "a", "architecture": ME, "os": "linux",
                                                      "config": {"Cmd": ["sh"]}, "throwaway": True})},
                     {"v1Compatibility": json.dumps({"id": "a", "created": "2015-01-01T00:00:00Z"})}],
         "signatures": [{"header": {}, "signature": "x", "protected": "y"}]}
    double = _Schema1Double(json.dumps(m, indent=3).encode(), {blob: gz, R.EMPTY_LAYER_BLOB: empty})
    try:
        lines = []
        assert R.pull(f"{double.address}/old", sink, config=cfg(), progress=lines.append) == "sha256:" + "5" * 64
    finally:
        double.stop()
    diff = "sha256:" + hashlib.sha256(tar).hexdigest()
    c = json.loads(sink.images[f"{double.address}/old:latest"][0])
    assert c["rootfs"]["diff_ids"] == [diff] and c["config"] == {"Cmd": ["sh"]}
    assert sink.has_layer(diff) and "Pull complete" in statuses(lines)
