"""`GET /containers/json` rows: the cached, pre-encoded rows (describe.RowCache) against the
straightforward ones, and the list filters.

The fast path must give exactly the bytes of `json.dumps(versions.render("container_list",
rows, version))` for rows built now, at every API version, with and without sizes, and must
never show a row that went stale: every field of a record is changed in turn below, and the
next list through a warm cache must show the change. No daemon: real Container objects over
records shaped as the daemon stores them, and the networks' real per-container summaries.
"""

import copy
import json

import pytest

from minidock import errors
from minidock.api import versions
from minidock.container import describe
from minidock.container.lifecycle import Container, status_fields
from minidock.network_endpoints import ContainerEndpoints
from minidock.network_ports import PublishedPorts
from minidock.times import format_rfc3339, now_rfc3339

V = versions.parse
ALL_VERSIONS = [(1, minor) for minor in range(0, versions.MAX[1] + 1)]
NET_ID = "e" * 64


class Shown(ContainerEndpoints, PublishedPorts):
    """The networks backend's per-container summaries (pure over the record), without the rest."""


NET = Shown()


def build(c, sizes=None):
    """What Containers._row builds: the straightforward row."""
    return describe.summary(c, sizes, NET.summary_ports(c), NET.settings(c)["Networks"])


def record(n, status="exited", labels=None, mode="default", networks=None, exposed=None, ports=None,
           mounts=None, annotations=None, health=None, exit_code=0, image="sha256:" + "1" * 64):
    cid = f"{n:02d}" + "c" * 62
    state = {"Pid": 0, "ExitCode": exit_code, "Error": "", "OOMKilled": False,
             "StartedAt": "2024-05-01T12:00:00.5Z", "FinishedAt": "2024-05-01T12:10:00Z",
             **status_fields(status)}
    if status == "created":
        state.update(StartedAt="0001-01-01T00:00:00Z", FinishedAt="0001-01-01T00:00:00Z")
    if status == "running":
        state.update(StartedAt=now_rfc3339(), FinishedAt="0001-01-01T00:00:00Z")
    if health:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    hc = {"NetworkMode": mode, "RestartPolicy": {"Name": "no"}}
    if annotations:
        hc["Annotations"] = annotations
    return {
        "Id": cid, "Name": f"/box{n}", "Created": format_rfc3339(1714564800_000000000 + n * 1_000_000_123),
        "Path": "sh", "Args": ["-c", f"echo {n}"], "Image": image, "State": state,
        "Config": {"Image": "busybox", "Labels": labels or {}, "ExposedPorts": exposed, "Cmd": ["sh"],
                   "Env": ["A=1"], "Hostname": cid[:12]},
        "HostConfig": hc,
        "NetworkSettings": {"Networks": networks if networks is not None else {
            "bridge": {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "02:42:ac:11:00:02",
                       "NetworkID": "b" * 64, "EndpointID": "d" * 64, "Gateway": "172.17.0.1",
                       "IPAddress": f"172.17.0.{n + 2}", "IPPrefixLen": 16, "DNSNames": None,
                       "_ifname": "eth0"}},
                            "Ports": ports or {}},
        "Mounts": mounts or [], "RestartCount": 0, "LogPath": "/x.log", "HasBeenManuallyStopped": False,
    }


def user_endpoint(ip):
    return {"IPAMConfig": {"IPv4Address": ip}, "Links": None, "Aliases": ["web", "front"],
            "MacAddress": "02:42:0a:00:00:05", "NetworkID": NET_ID, "EndpointID": "f" * 64,
            "Gateway": "10.0.0.1", "IPAddress": ip, "IPPrefixLen": 24, "DNSNames": ["box", "web"],
            "_ifname": "eth1"}


def fleet():
    """Containers in every state and with every part a row shows."""
    return [Container(r) for r in (
        record(0, "created"),
        record(1, "running", labels={"app": "web", "tier": "front"}, exposed={"80/tcp": {}, "53/udp": {}},
               ports={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}], "53/udp": None},
               annotations={"org.example/a": "1"}, health="healthy",
               networks={"appnet": user_endpoint("10.0.0.5")}, mode="appnet",
               mounts=[{"Type": "volume", "Name": "data", "Source": "/v/data", "Destination": "/data",
                        "Driver": "local", "Mode": "", "RW": True, "Propagation": ""}]),
        record(2, "exited", exit_code=3, labels={"app": "db"}),
        record(3, "paused"),
        record(4, "running", mode="host", networks={}, health="starting"),
        record(5, "restarting", exit_code=1),
        record(6, "dead"),
        record(7, "exited", mode="none", networks={}, labels={"héllo": "wörld \u2603"}),
        record(8, "running", health="unhealthy", exposed={"8080/tcp": {}}),
    )]


def straight(containers, version, sizes_of=None):
    rows = [build(c, sizes_of(c) if sizes_of else None) for c in containers]
    return json.dumps(versions.render("container_list", rows, version)).encode()


def sizes_of(c):
    return (len(c.name) * 1000, len(c.name) * 1000 + 4096)


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=versions.format)
@pytest.mark.parametrize("with_sizes", [False, True], ids=["", "size"])
def test_cached_rows_are_the_straightforward_rows_at_every_version(version, with_sizes):
    containers = fleet()
    shaper = versions.item_shaper("container_list", version)
    assert shaper is not None                      # every container_list step is per row
    cache = describe.RowCache(build)
    sizes = sizes_of if with_sizes else None
    first = cache.encode(containers, shaper, sizes)
    assert first == straight(containers, version, sizes)
    assert cache.encode(containers, shaper, sizes) == first              # warm: the same bytes
    assert cache.encode([], shaper, sizes) == json.dumps([]).encode()
    assert cache.encode(containers[3:4], shaper, sizes) == straight(containers[3:4], version, sizes)


def test_item_shaper_is_render_row_by_row_and_shares_keys_between_alike_versions():
    rows = [build(c) for c in fleet()]
    keys = {}
    for version in ALL_VERSIONS:
        key, shape = versions.item_shaper("container_list", version)
        assert [shape(r) for r in rows] == versions.render("container_list", rows, version)
        keys.setdefault(key, []).append(version)
    assert keys[("container_list", ())] == [V("1.46"), V("1.47")]       # no step below the newest
    assert len(keys) == 7
    # a list kind with a step over the whole list cannot be shaped row by row
    assert versions.item_shaper("image_list", V("1.6")) is None
    assert versions.item_shaper("image_list", V("1.24")) is not None
    assert versions.item_shaper("system_df", V("1.24")) is None        # has a NEWEST shape


def leaves(obj, path=()):
    """Every (path, value) of a JSON-like tree, containers included (a dict or list itself)."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        if value.endswith("Z") and value[:4].isdigit():        # a time: another valid one
            return "2024-06-01T00:00:00Z"
        return value + "x" if value not in describe.STATUSES else ("running" if value != "running" else "exited")
    if isinstance(value, dict):
        return dict(value, added="1")
    if isinstance(value, list):
        return value + ["added"] if all(isinstance(v, str) for v in value) else value[:-1]
    return "set"


@pytest.mark.parametrize("version", [V("1.47"), V("1.44"), V("1.24"), V("1.16"), V("1.11"), V("1.3")],
                         ids=versions.format)
def test_every_field_changed_shows_in_the_next_list(version):
    """Change each field of each record in turn (in place, as the backend does): the next
    list through a warm cache equals the straightforward one. A row that reads a field
    row_inputs() does not name fails here."""
    containers = fleet()
    shaper = versions.item_shaper("container_list", version)
    cache = describe.RowCache(build)
    cache.encode(containers, shaper)
    checked = 0
    for c in containers:
        for path, value in list(leaves(c.record)):
            if not path or path == ("Id",):
                continue
            parent = c.record
            for k in path[:-1]:
                parent = parent[k]
            before = copy.deepcopy(value)
            try:
                parent[path[-1]] = changed(value)
                try:
                    expected = straight(containers, version)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue                       # not a record the daemon could hold
                assert cache.encode(containers, shaper) == expected, path
                checked += 1
            finally:
                parent[path[-1]] = before
            assert cache.encode(containers, shaper) == straight(containers, version), path
    assert checked > 300


def test_lifecycle_changes_show_in_the_next_list():
    """What the backend does to a record (rename, start, stop, connect, labels at create, a
    healthcheck's verdict, time passing) appears in the next list."""
    c = Container(record(1, "created", labels={"a": "1"}))
    shaper = versions.item_shaper("container_list", versions.MAX)
    cache = describe.RowCache(build)

    def row():
        body = cache.encode([c], shaper)
        assert body == straight([c], versions.MAX)
        return json.loads(body)[0]
    assert row()["Labels"] == {"a": "1"} and row()["Status"] == "Created"
    c.record["Name"] = "/renamed"
    assert row()["Names"] == ["/renamed"]
    c.state.update(status_fields("running"), StartedAt=format_rfc3339(1714564800_000000000), Pid=42)
    c.record["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    r = row()
    assert r["State"] == "running" and r["Status"].startswith("Up ") and r["Ports"] == [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8000, "Type": "tcp"}]
    c.state["StartedAt"] = now_rfc3339()           # not a row input: a hole, read at every list
    assert row()["Status"] == "Up Less than a second"
    c.state["Health"] = {"Status": "healthy"}
    assert row()["Status"] == "Up Less than a second (healthy)"
    c.record["NetworkSettings"]["Networks"]["appnet"] = user_endpoint("10.0.0.9")
    assert set(row()["NetworkSettings"]["Networks"]) == {"bridge", "appnet"}
    c.state.update(status_fields("exited"), FinishedAt=now_rfc3339(), ExitCode=137)
    r = row()
    assert r["State"] == "exited" and r["Status"].startswith("Exited (137) ") and r["Ports"] == []
    c.config["Labels"]["b"] = "2"                  # changed in place
    assert row()["Labels"] == {"a": "1", "b": "2"}


def test_rows_of_removed_containers_are_forgotten():
    containers = fleet()
    cache = describe.RowCache(build)
    cache.encode(containers, versions.item_shaper("container_list", versions.MAX))
    assert len(cache.entries) == len(containers)
    cache.forget_all_but({c.id for c in containers[:2]})
    assert set(cache.entries) == {c.id for c in containers[:2]}


# -- filters ---------------------------------------------------------------------------------------

def names(filters, all_=True, since=None, before=None, limit=-1):
    containers = fleet()
    by_name = {c.name: c for c in containers}
    images = {"sha256:" + "1" * 64: "busybox"}
    listed = describe.listing(containers, lambda ref: by_name[ref], all_, limit, since, before, filters,
                              lambda image_id, ref: images.get(image_id) == ref or image_id == ref)
    return [c.name for c in listed]


NEWEST_FIRST = [f"box{n}" for n in range(8, -1, -1)]


@pytest.mark.parametrize("filters, all_, expected", [
    ({}, True, NEWEST_FIRST),
    ({}, False, ["box8", "box5", "box4", "box3", "box1"]),        # running, restarting, paused
    ({"status": ["exited"]}, False, ["box7", "box2"]),
    ({"status": ["created", "dead"]}, False, ["box6", "box0"]),
    ({"exited": ["3"]}, True, ["box2"]),
    ({"label": ["app"]}, True, ["box2", "box1"]),
    ({"label": ["app=web", "tier=front"]}, True, ["box1"]),
    ({"label": ["héllo=wörld \u2603"]}, True, ["box7"]),
    ({"name": ["box[12]"]}, True, ["box2", "box1"]),
    ({"name": ["/box3"]}, True, ["box3"]),
    ({"id": ["03cc", "04"]}, True, ["box4", "box3"]),
    ({"ancestor": ["busybox"]}, True, NEWEST_FIRST),
    ({"ancestor": ["alpine"]}, True, []),
    ({"network": ["appnet"]}, True, ["box1"]),
    ({"network": [NET_ID]}, True, ["box1"]),
    ({"network": ["host"]}, True, ["box4"]),
    ({"network": ["none"]}, True, ["box7"]),
    ({"volume": ["data"]}, True, ["box1"]),
    ({"volume": ["/data"]}, True, ["box1"]),
    ({"health": ["healthy"]}, True, ["box1"]),
    ({"health": ["starting", "unhealthy"]}, True, ["box8", "box4"]),
    ({"health": ["none"]}, True, ["box7", "box6", "box5", "box3", "box2", "box0"]),
    ({"expose": ["80"]}, True, ["box1"]),
    ({"expose": ["53/udp", "8080/tcp"]}, True, ["box8", "box1"]),
    ({"expose": ["79-81"]}, True, ["box1"]),
    ({"publish": ["80"]}, True, ["box1"]),              # 80/tcp is bound while box1 runs
    ({"publish": ["80/udp"]}, True, []),
    ({"publish": ["53/udp"]}, True, []),                # exposed, not bound
    ({"publish": ["8080"]}, True, []),                  # box8 exposes it and publishes nothing
    ({"is-task": ["true"]}, True, []),
    ({"is-task": ["false"]}, True, NEWEST_FIRST),
    ({"since": ["box6"]}, False, ["box8", "box7"]),
    ({"before": ["box2"], "label": ["app"]}, False, ["box1"]),
])
def test_filters(filters, all_, expected):
    assert names(filters, all_) == expected


def test_since_before_limit_arguments():
    assert names({}, False, since="box5") == ["box8", "box7", "box6"]
    assert names({}, False, before="box2") == ["box1", "box0"]
    assert names({}, False, limit=2) == ["box8", "box7"]
    assert names({"status": ["exited"]}, True, limit=1) == ["box7"]


@pytest.mark.parametrize("filters, message", [
    ({"colour": ["red"]}, "Invalid filter 'colour'"),
    ({"status": ["sleeping"]}, "Unrecognised filter value for status: sleeping"),
    ({"health": ["fine"]}, "Unrecognised filter value for health: fine"),
    ({"publish": ["http"]}, "invalid port filter value 'http'"),
    ({"expose": ["90-80/tcp"]}, "invalid port filter value '90-80/tcp'"),
])
def test_bad_filters(filters, message):
    with pytest.raises(errors.InvalidParameter, match=message):
        names(filters)


def test_the_inputs_copy_is_deep_and_shares_only_immutable_values():
    class Odd:                                     # not plain data: copied the slow way
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            return isinstance(other, Odd) and other.v == self.v
    inputs = ("x" * 40, 7, None, True, 1.5, ["a", {"k": ["v"]}], {"n": {"m": (1, [2])}}, Odd([1]))
    copied = describe._copy(inputs)
    assert copied == inputs and copied[0] is inputs[0]
    inputs[5][1]["k"].append("w")
    inputs[6]["n"]["m"][1].append(3)
    inputs[7].v.append(2)
    assert copied[5] == ["a", {"k": ["v"]}] and copied[6] == {"n": {"m": (1, [2])}} and copied[7].v == [1]


def test_a_bad_port_filter_is_refused_with_no_container_to_test():
    with pytest.raises(errors.InvalidParameter, match="invalid port filter value '80-'"):
        describe.listing([], None, True, -1, None, None, {"publish": ["80-"]}, None)
