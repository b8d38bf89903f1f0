"""The same objects requested at /v1.24, /v1.25, /v1.41, /v1.44 and /v1.47 of a real daemon: each
version has the fields, routes and behaviours its documentation gives it (api/versions.py)."""

import json
import time

import pytest

from minidock import platforms
from minidock.client import APIError

pytestmark = pytest.mark.e2e

VERSIONS = ["1.24", "1.25", "1.41", "1.44", "1.47"]


@pytest.fixture(scope="module")
def untagged(rootless):
    """An image with no name, to see the <none> placeholders come and go."""
    d = rootless
    d.docker("run", "--name", "vshape", "busybox", "sh", "-c", "echo x > /x")
    image_id = d.docker("commit", "vshape").stdout.decode().strip()
    d.docker("rm", "vshape")
    return image_id


@pytest.mark.parametrize("version", VERSIONS)
def test_image_inspect_per_version(rootless, version):
    doc = rootless.client(version).get("/images/busybox/json")
    assert ("ContainerConfig" in doc and "Container" in doc) == (version <= "1.44")     # gone at 1.45
    assert ("VirtualSize" in doc) == (version <= "1.43")                                # gone at 1.44
    assert doc["Size"] > 0 and doc["RootFS"]["Type"] == "layers"


@pytest.mark.parametrize("version", VERSIONS)
def test_image_list_per_version(rootless, untagged, version):
    rows = {r["Id"]: r for r in rootless.client(version).get("/images/json")}
    row = rows[untagged]
    if version <= "1.42":
        assert (row["RepoTags"], row["RepoDigests"]) == (["<none>:<none>"], ["<none>@<none>"])
    else:
        assert (row["RepoTags"], row["RepoDigests"]) == ([], [])
    assert ("VirtualSize" in row) == (version <= "1.43")
    assert ("SharedSize" in row and "Containers" in row) == (version >= "1.25")


@pytest.mark.parametrize("version,present", [("1.27", True), ("1.28", False), ("1.47", False)])
def test_network_list_containers_until_1_27(rootless, version, present):
    rows = rootless.client(version).get("/networks")
    assert all(("Containers" in row) == present for row in rows) and rows


@pytest.mark.parametrize("version", VERSIONS)
def test_routes_of_1_25_do_not_exist_at_1_24(rootless, version):
    c = rootless.client(version)
    for method, path in (("GET", "/system/df"), ("POST", "/containers/prune"), ("POST", "/images/prune"),
                         ("POST", "/volumes/prune"), ("POST", "/networks/prune")):
        if version == "1.24":
            with pytest.raises(APIError) as info:
                c.call(method, path, params={"filters": '{"label": ["no-such-label-anywhere"]}'})
            assert info.value.status == 404
        else:
            status, _, body = c.call(method, path, params=None if method == "GET" else
                                     {"filters": '{"label": ["no-such-label-anywhere"]}'})
            assert status == 200 and isinstance(body, dict)


@pytest.mark.parametrize("version", VERSIONS)
def test_info_per_version(rootless, version):
    info = rootless.client(version).get("/info")
    if version == "1.24":
        assert "ExecutionDriver" in info and "rootless" in info["SecurityOptions"]
    else:
        assert "ExecutionDriver" not in info and "name=rootless" in info["SecurityOptions"]


def test_version_says_1_47_at_every_version(rootless):
    for version in VERSIONS:
        assert rootless.client(version).get("/version")["ApiVersion"] == "1.47"


@pytest.mark.parametrize("version,named_survives", [("1.41", False), ("1.44", True), ("1.47", True)])
def test_volume_prune_takes_named_volumes_only_before_1_42(rootless, version, named_survives):
    c = rootless.client(version)
    c.post("/volumes/create", body={"Name": f"named-{version}"})
    result = c.post("/volumes/prune")
    names = [v["Name"] for v in c.get("/volumes")["Volumes"]]
    assert (f"named-{version}" in names) == named_survives
    assert (f"named-{version}" in (result["VolumesDeleted"] or [])) != named_survives
    assert isinstance(result["SpaceReclaimed"], int)
    c.delete(f"/volumes/named-{version}", params={"force": 1})


@pytest.mark.parametrize("version,signal_used", [("1.41", False), ("1.42", True), ("1.47", True)])
def test_stop_signal_from_1_42(rootless, version, signal_used):
    d = rootless
    name = f"sig-{version}"
    d.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
             "trap 'exit 9' USR1; trap 'exit 4' TERM; while true; do sleep 0.1; done")
    c = d.client(version)
    for _ in range(100):
        if b"sh" in d.docker("top", name).stdout:
            break
    c.post(f"/containers/{name}/stop", params={"signal": "USR1", "t": 5})
    code = c.get(f"/containers/{name}/json")["State"]["ExitCode"]
    assert code == (9 if signal_used else 4)
    d.docker("rm", name)


@pytest.mark.parametrize("version", ["1.24", "1.25", "1.47"])
def test_exec_inspect_pid_from_1_25(rootless, version):
    d = rootless
    name = f"execpid-{version}"
    d.docker("run", "-d", "--name", name, "busybox", "sleep", "30")
    c = d.client(version)
    eid = c.post(f"/containers/{name}/exec", body={"Cmd": ["true"]})["Id"]
    assert ("Pid" in c.get(f"/exec/{eid}/json")) == (version >= "1.25")
    d.docker("rm", "-f", name)


def test_console_size_at_create_and_exec(rootless):
    """API 1.42: a TTY has its size before the command runs, for a container and for an exec."""
    d = rootless
    c = d.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "Tty": True, "Cmd": ["sh", "-c", "stty size; sleep 30"],
                                             "HostConfig": {"ConsoleSize": [31, 101]}})["Id"]
    c.post(f"/containers/{cid}/start")
    for _ in range(100):
        if b"31 101" in d.docker("logs", cid).stdout:
            break
        time.sleep(0.05)
    assert d.docker("logs", cid).stdout.startswith(b"31 101")
    eid = c.post(f"/containers/{cid}/exec", body={"Cmd": ["stty", "size"], "Tty": True, "AttachStdout": True,
                                                 "ConsoleSize": [17, 73]})["Id"]
    status, _, out = c.call("POST", f"/exec/{eid}/start", body={"Tty": True, "ConsoleSize": [17, 73]})
    assert b"17 73" in out
    assert "ConsoleSize" not in c.get(f"/exec/{eid}/json")
    d.docker("rm", "-f", cid)


@pytest.mark.parametrize("version,ipc", [("1.24", "shareable"), ("1.39", "shareable"), ("1.40", "private"),
                                         ("1.47", "private")])
def test_ipc_mode_default_private_from_1_40(rootless, version, ipc):
    c = rootless.client(version)
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["true"]})["Id"]
    assert c.get(f"/containers/{cid}/json")["HostConfig"]["IpcMode"] == ipc
    c.delete(f"/containers/{cid}")


def test_annotations_in_lists_and_healthcheck_fields_per_version(rootless):
    c = rootless.client("1.47")
    health = {"Test": ["CMD", "true"], "Interval": 10**9, "StartPeriod": 2 * 10**9, "StartInterval": 10**8}
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["true"], "Labels": {"annotated": "1"},
                                             "Healthcheck": health,
                                             "HostConfig": {"Annotations": {"io.example/a": "b"}}})["Id"]
    for version, shown in (("1.45", False), ("1.46", True), ("1.47", True)):
        row = [r for r in rootless.client(version).get("/containers/json", params={"all": 1}) if r["Id"] == cid][0]
        assert ("Annotations" in row["HostConfig"]) == shown
    for version, fields in (("1.28", {"Test", "Interval"}), ("1.29", {"Test", "Interval", "StartPeriod"}),
                            ("1.43", {"Test", "Interval", "StartPeriod"}),
                            ("1.44", {"Test", "Interval", "StartPeriod", "StartInterval"})):
        doc = rootless.client(version).get(f"/containers/{cid}/json")
        assert set(doc["Config"]["Healthcheck"]) == fields
    c.delete(f"/containers/{cid}")


@pytest.mark.parametrize("version,tty,media", [
    ("1.41", False, "application/vnd.docker.raw-stream"),
    ("1.42", False, "application/vnd.docker.multiplexed-stream"),
    ("1.47", True, "application/vnd.docker.raw-stream"),
])
def test_stream_content_type_from_1_42(rootless, version, tty, media):
    d = rootless
    name = f"media-{version}-{tty}"
    d.docker("run", *(["-t"] if tty else []), "--name", name, "busybox", "echo", "hi")
    response = d.client(version).request("GET", f"/containers/{name}/logs", params={"stdout": 1})
    assert response.getheader("Content-Type") == media
    response.read()
    d.docker("rm", name)


def test_logs_until_from_1_35(rootless):
    d = rootless
    d.docker("run", "--name", "untilv", "busybox", "sh", "-c", "echo one; sleep 1.2; echo two")
    first = d.docker("logs", "-t", "untilv").stdout.decode().splitlines()[0].split()[0]
    from minidock import times
    until = f"{times.rfc3339_ns(first) / times.NS + 0.5:.3f}"
    for version, want in (("1.34", b"one\ntwo\n"), ("1.35", b"one\n")):
        raw = d.client(version).call("GET", "/containers/untilv/logs",
                                     params={"stdout": 1, "until": until})[2]
        frames, body = [], raw
        while body:
            size = int.from_bytes(body[4:8], "big")
            frames.append(body[8:8 + size])
            body = body[8 + size:]
        assert b"".join(frames) == want
    d.docker("rm", "untilv")


def test_wait_condition_from_1_30(rootless):
    """Before 1.30 `condition` did not exist: a stopped container's wait answers at once, even
    when asked for the next exit; from 1.30 next-exit waits for one."""
    d = rootless
    d.docker("run", "--name", "waitv", "busybox", "sh", "-c", "exit 6", check=False)
    assert d.client("1.29").post("/containers/waitv/wait", params={"condition": "next-exit"}) == {"StatusCode": 6}
    response = d.client("1.30").request("POST", "/containers/waitv/wait", params={"condition": "next-exit"})
    assert response.status == 200                   # the headers came at once, the body waits
    d.docker("start", "waitv", check=False)
    assert json.loads(response.read()) == {"StatusCode": 6}
    d.docker("rm", "waitv")


def test_create_platform_from_1_41(rootless):
    other = {"os": "linux", "architecture": "s390x" if platforms.goarch() != "s390x" else "amd64"}
    body = {"Image": "busybox", "Cmd": ["true"]}
    c40 = rootless.client("1.40")
    cid = c40.post("/containers/create", params={"platform": platforms.format(other)}, body=body)["Id"]
    c40.delete(f"/containers/{cid}")
    with pytest.raises(APIError) as info:
        rootless.client("1.41").post("/containers/create", params={"platform": platforms.format(other)}, body=body)
    assert info.value.status == 404 and "does not match the specified platform" in str(info.value)


@pytest.mark.parametrize("version", ["1.25", "1.43", "1.44", "1.47"])
def test_system_df_images_per_version(rootless, version):
    df = rootless.client(version).get("/system/df")
    assert set(df) >= {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}
    assert df["Images"] and all(("VirtualSize" in row) == (version <= "1.43") for row in df["Images"])
    assert all(isinstance(row["Containers"], int) and row["SharedSize"] >= 0 for row in df["Images"])


def test_cgroupns_mode_is_host_and_private_is_refused(rootless):
    c = rootless.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["true"]})["Id"]
    assert c.get(f"/containers/{cid}/json")["HostConfig"]["CgroupnsMode"] == "host"
    c.delete(f"/containers/{cid}")
    with pytest.raises(APIError) as info:
        c.post("/containers/create", body={"Image": "busybox", "HostConfig": {"CgroupnsMode": "private"}})
    assert info.value.status == 501 and "cgroup namespace" in str(info.value)


def test_stats_online_cpus_from_1_27_and_one_shot_from_1_41(rootless):
    c = rootless.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["sleep", "1000"]})["Id"]
    c.post(f"/containers/{cid}/start")
    try:
        for version, shown in (("1.26", False), ("1.27", True), ("1.47", True)):
            doc = rootless.client(version).get(f"/containers/{cid}/stats", params={"stream": 0})
            assert ("online_cpus" in doc["cpu_stats"]) == shown and "system_cpu_usage" in doc["cpu_stats"]
        # one-shot with stream: refused where one-shot exists, meaningless (a stream) before.
        with pytest.raises(APIError) as info:
            rootless.client("1.41").get(f"/containers/{cid}/stats", params={"stream": 1, "one-shot": 1})
        assert info.value.status == 400
        status, _, _ = rootless.client("1.40").call("GET", f"/containers/{cid}/stats",
                                                    params={"stream": 0, "one-shot": 1})
        assert status == 200
    finally:
        c.delete(f"/containers/{cid}", params={"force": 1})


@pytest.fixture(scope="module")
def two_networks(rootless):
    c = rootless.client("1.47")
    ids = [c.post("/networks/create", body={"Name": name})["Id"] for name in ("vnet-a", "vnet-b")]
    yield ["vnet-a", "vnet-b"]
    for nid in ids:
        c.delete(f"/networks/{nid}")


def test_several_networks_and_endpoint_mac_at_create_from_1_44(rootless, two_networks):
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "vnet-a"},
            "NetworkingConfig": {"EndpointsConfig": {"vnet-a": {"MacAddress": "02:00:00:00:aa:01"},
                                                     "vnet-b": {"Aliases": ["bee"]}}}}
    with pytest.raises(APIError) as info:
        rootless.client("1.43").post("/containers/create", body=body)
    assert info.value.status == 400 and "cannot be connected to network endpoints: vnet-a, vnet-b" in str(info.value)
    c = rootless.client("1.44")
    cid = c.post("/containers/create", body=body)["Id"]
    try:
        nets = c.get(f"/containers/{cid}/json")["NetworkSettings"]["Networks"]
        assert set(nets) == {"vnet-a", "vnet-b"}
        assert nets["vnet-a"]["MacAddress"] == "02:00:00:00:aa:01"
        assert nets["vnet-b"]["DNSNames"][1:] == ["bee", cid[:12]]
    finally:
        c.delete(f"/containers/{cid}")
    # Before 1.44 an endpoint's MacAddress was output only: ignored, the address derives from the IP.
    one = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "vnet-a"},
           "NetworkingConfig": {"EndpointsConfig": {"vnet-a": {"MacAddress": "02:00:00:00:aa:02"}}}}
    c43 = rootless.client("1.43")
    cid = c43.post("/containers/create", body=one)["Id"]
    try:
        assert c43.get(f"/containers/{cid}/json")["NetworkSettings"]["Networks"]["vnet-a"]["MacAddress"] \
            != "02:00:00:00:aa:02"
    finally:
        c43.delete(f"/containers/{cid}")


def test_create_reports_every_endpoint_problem_at_once(rootless, two_networks):
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "vnet-a"},
            "NetworkingConfig": {"EndpointsConfig": {
                "vnet-a": {"IPAMConfig": {"IPv4Address": "10.254.0.9"}},
                "bridge": {"Aliases": ["nope"]},
                "vnet-b": {"MacAddress": "not-a-mac"}}}}
    c = rootless.client("1.47")
    before = len(c.get("/containers/json", params={"all": 1}))
    with pytest.raises(APIError) as info:
        c.post("/containers/create", body=body)
    message = str(info.value)
    assert info.value.status == 400
    assert "10.254.0.9" in message and "network-scoped alias" in message and "not-a-mac" in message
    assert len(c.get("/containers/json", params={"all": 1})) == before          # nothing half-made


def test_aliases_carry_the_short_id_before_1_45(rootless, two_networks):
    c = rootless.client("1.47")
    cid = c.post("/containers/create", body={
        "Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "vnet-a"},
        "NetworkingConfig": {"EndpointsConfig": {"vnet-a": {"Aliases": ["web"]}}}})["Id"]
    try:
        for version, aliases, dns in (("1.43", ["web", cid[:12]], False), ("1.44", ["web", cid[:12]], True),
                                      ("1.45", ["web"], True), ("1.47", ["web"], True)):
            client = rootless.client(version)
            ep = client.get(f"/containers/{cid}/json")["NetworkSettings"]["Networks"]["vnet-a"]
            row = [r for r in client.get("/containers/json", params={"all": 1}) if r["Id"] == cid][0]
            for shown in (ep, row["NetworkSettings"]["Networks"]["vnet-a"]):
                assert shown["Aliases"] == aliases and ("DNSNames" in shown) == dns, version
    finally:
        c.delete(f"/containers/{cid}")


def test_wait_removed_reports_a_failed_removal_from_1_34(rootless):
    """A removal that fails (here: the test, as root, makes the directory of the container's
    writable layer immutable, so the daemon cannot take anything out of it: EPERM) leaves the
    container dead, and a
    `removed` wait says why from 1.34 on; a second removal succeeds once the mount is gone."""
    import os
    import subprocess
    d = rootless
    c = d.client("1.47")
    cid = c.post("/containers/create", body={"Image": "busybox", "Cmd": ["true"]})["Id"]
    layer = os.path.join(d.data_root, "layers", "containers", cid)
    if not os.path.isdir(layer):
        layer = next(os.path.join(root, cid) for root, dirs, _ in os.walk(d.data_root) if cid in dirs
                     and os.path.basename(root) == "containers" and "layers" in root)
    subprocess.run(["chattr", "+i", layer], check=True)
    try:
        waits = {v: d.client(v).request("POST", f"/containers/{cid}/wait", params={"condition": "removed"})
                 for v in ("1.33", "1.34", "1.47")}
        with pytest.raises(APIError) as info:
            c.delete(f"/containers/{cid}")
        assert info.value.status == 500 and "unable to remove filesystem" in str(info.value)
        answers = {v: json.loads(r.read()) for v, r in waits.items()}
        assert answers["1.33"] == {"StatusCode": 0}
        for v in ("1.34", "1.47"):
            assert answers[v]["StatusCode"] == 0 and "unable to remove filesystem" in answers[v]["Error"]["Message"]
        assert c.get(f"/containers/{cid}/json")["State"]["Status"] == "dead"
    finally:
        subprocess.run(["chattr", "-i", layer], check=True)
    done = c.request("POST", f"/containers/{cid}/wait", params={"condition": "removed"})
    c.delete(f"/containers/{cid}")
    assert json.loads(done.read()) == {"StatusCode": 0}
