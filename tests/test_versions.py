"""API versions as data: migrations per kind, reply forms, request adapters, and version-ranged routes.

These drive `minidock/api/versions.py` and the router directly, without a daemon: the same model
rendered at several versions must have exactly the fields that version documented.
"""

import pytest

from minidock import errors, http, httpserver
from minidock.api import versions
from minidock.api.router import ApiRequest, Router

V = versions.parse

IMAGE = {"Id": "sha256:" + "a" * 64, "Parent": "sha256:" + "b" * 64, "Comment": "", "Created": "2023-11-14T22:13:20Z",
         "Container": "c" * 64, "ContainerConfig": {"Cmd": ["sh"]}, "DockerVersion": "", "Author": "",
         "Config": {}, "Architecture": "amd64", "Os": "linux", "Size": 10, "VirtualSize": 10,
         "RepoTags": ["busybox:latest"], "RepoDigests": [], "GraphDriver": {}, "RootFS": {}, "Metadata": {}}


def test_parse_and_check_versions():
    assert V("1.24") == (1, 24) and V("1") == (1, 0) and versions.format((1, 5)) == "1.5"
    with pytest.raises(errors.InvalidParameter, match="invalid API version"):
        V("one.two")
    with pytest.raises(errors.InvalidParameter, match="is too new. Maximum supported API version is"):
        versions.check("9.0")
    with pytest.raises(errors.InvalidParameter, match="is too old"):
        versions.check("0.9")


def test_steps_run_from_the_newest_version_down():
    newest = versions.render("image", IMAGE, versions.MAX)
    assert newest == {k: v for k, v in IMAGE.items() if k not in ("Container", "ContainerConfig", "VirtualSize")}
    assert versions.render("image", IMAGE, V("1.44")) == {k: v for k, v in IMAGE.items() if k != "VirtualSize"}
    assert versions.render("image", IMAGE, V("1.43")) == IMAGE
    at_1_22 = versions.render("image", IMAGE, V("1.22"))
    assert "RepoDigests" not in at_1_22 and at_1_22["ContainerConfig"] == {"Cmd": ["sh"]}
    at_1_11 = versions.render("image", IMAGE, V("1.11"))
    assert at_1_11 == {"id": "a" * 64, "parent": "b" * 64, "created": IMAGE["Created"], "container": "c" * 64,
                       "container_config": {"Cmd": ["sh"]}, "Size": 10}
    assert "Size" not in versions.render("image", IMAGE, V("1.3"))
    assert IMAGE["RepoDigests"] == [] and "Id" in IMAGE            # the model itself is untouched


def test_list_kinds_per_item_and_whole():
    rows = [{"Id": "sha256:" + "a" * 64, "ParentId": "", "RepoTags": ["a:1", "b:2"], "RepoDigests": [],
             "Created": 5, "Size": 1, "VirtualSize": 1, "Labels": {}, "SharedSize": -1, "Containers": -1}]
    assert "VirtualSize" not in versions.render("image_list", rows, V("1.44"))[0]
    assert versions.render("image_list", rows, V("1.43"))[0]["VirtualSize"] == 1
    assert set(versions.render("image_list", rows, V("1.24"))[0]) == {
        "Id", "ParentId", "RepoTags", "RepoDigests", "Created", "Size", "VirtualSize", "Labels"}
    assert set(versions.render("image_list", rows, V("1.12"))[0]) == {
        "Id", "ParentId", "RepoTags", "Created", "Size", "VirtualSize"}
    legacy = versions.render("image_list", rows, V("1.6"))
    assert [(r["Repository"], r["Tag"], r["Id"]) for r in legacy] == [("a", "1", "a" * 12), ("b", "2", "a" * 12)]
    assert "Size" in legacy[0] and "Size" not in versions.render("image_list", rows, V("1.3"))[0]


def test_container_shapes():
    doc = {"Id": "f" * 64, "Mounts": [{"Destination": "/d", "Source": "/s", "RW": False}], "HostConfig": {}}
    assert versions.render("container", doc, V("1.20")) == doc
    old = versions.render("container", doc, V("1.19"))
    assert old["Volumes"] == {"/d": "/s"} and old["VolumesRW"] == {"/d": False} and "Mounts" not in old
    assert "HostConfig" in old and "HostConfig" not in versions.render("container", doc, V("1.3"))
    row = {"Id": "f" * 64, "Names": ["/x"], "Image": "busybox", "Command": "sh", "Created": 1, "Status": "Up",
           "Ports": [], "Labels": {}, "State": "running"}
    assert set(versions.render("container_list", [row], V("1.16"))[0]) == {
        "Id", "Names", "Image", "Command", "Created", "Status", "Ports"}
    assert versions.render("container_list", [row], V("1.11"))[0] == {
        "Id": "f" * 12, "Image": "busybox:latest", "Command": "sh", "Created": 1, "Status": "Up", "Ports": ""}
    assert "Ports" not in versions.render("container_list", [row], V("1.3"))[0]


def test_events_lose_private_keys_and_gain_the_old_form():
    event = {"Type": "volume", "Action": "create", "Actor": {"ID": "v", "Attributes": {}}, "time": 1,
             "timeNano": 1, "scope": "local", "_private": 1}
    assert "_private" not in versions.render("event", event, versions.MAX)
    assert versions.render("event", event, V("1.21")) == {"status": "create", "id": "v", "time": 1}


def test_reply_forms():
    assert versions.reply("image_tag", V("1.24"), status=201, stream=False) == {"status": 201, "stream": False}
    assert versions.reply("image_tag", V("1.11"), status=201)["status"] == 200
    assert versions.reply("image_import", V("1.12"), stream=True)["stream"] is True
    assert versions.reply("image_import", V("1.11"), stream=True)["stream"] is False


def _request(target, version, body=b""):
    head = http.parse_head(f"POST {target} HTTP/1.1\r\n".encode())
    return ApiRequest(httpserver.Request(head, None, None), version, {}, None)


def test_request_steps_read_old_forms():
    assert _request("/images/x/tag?force=0", V("1.24")).adapt("image_tag", {"force": True}) == {"force": True}
    assert _request("/images/x/tag?force=0", V("1.23")).adapt("image_tag", {"force": True}) == {"force": False}
    assert _request("/images/x/tag?force=1", V("1.23")).adapt("image_tag", {"force": True}) == {"force": True}
    assert _request("/c/attach", V("1.3")).adapt("container_attach", {"refuse_stopped": False})["refuse_stopped"]
    assert not _request("/c/attach", V("1.4")).adapt("container_attach", {"refuse_stopped": False})["refuse_stopped"]


def test_routes_exist_only_in_their_versions():
    def old(req):
        return "old"

    def both(req):
        return "both"
    router = Router([versions.route("GET", "/thing", old, until="1.11"),
                     versions.route("POST", "/thing", both, since="1.5"),
                     versions.route("GET", "/new", both, since="1.25")], daemon=None)
    assert router.match("GET", "/thing", V("1.11"))[0] is old
    with pytest.raises(errors.NotFound):
        router.match("GET", "/thing", V("1.12"))          # GET /thing is gone there (POST exists)
    with pytest.raises(errors.NotFound):
        router.match("POST", "/thing", V("1.4"))          # POST /thing is not there yet
    with pytest.raises(errors.MethodNotAllowed):
        router.match("PUT", "/thing", V("1.12"))          # no PUT in any version
    assert router.match("POST", "/thing", V("1.5"))[0] is both
    with pytest.raises(errors.NotFound, match="page not found"):
        router.match("GET", "/new", V("1.24"))


UNTAGGED = [{"Id": "sha256:" + "e" * 64, "ParentId": "", "RepoTags": [], "RepoDigests": [], "Created": 5,
             "Size": 1, "VirtualSize": 1, "Labels": {}, "SharedSize": -1, "Containers": -1}]


@pytest.mark.parametrize("version,tags,digests", [
    ("1.47", [], []), ("1.43", [], []), ("1.42", ["<none>:<none>"], ["<none>@<none>"]),
    ("1.24", ["<none>:<none>"], ["<none>@<none>"]),
])
def test_untagged_images_lost_their_placeholders_at_1_43(version, tags, digests):
    row = versions.render("image_list", UNTAGGED, V(version))[0]
    assert (row["RepoTags"], row["RepoDigests"]) == (tags, digests)


INFO = {"ID": "x", "ExecutionDriver": "minidock-0.1.0", "Warnings": [],
        "SecurityOptions": ["name=rootless", "name=seccomp,profile=default"]}


def test_info_security_options_and_execution_driver():
    assert versions.render("info", INFO, V("1.47")) == {"ID": "x", "Warnings": [], "SecurityOptions": INFO[
        "SecurityOptions"]}
    assert versions.render("info", INFO, V("1.25"))["SecurityOptions"] == INFO["SecurityOptions"]
    old = versions.render("info", INFO, V("1.24"))
    assert old["SecurityOptions"] == ["rootless", "seccomp"] and old["ExecutionDriver"] == "minidock-0.1.0"
