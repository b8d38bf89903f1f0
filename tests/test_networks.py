"""The networks backend without HTTP or kernel: records, validation, allocation, names.

The containers here are plain records (the backend reads .record/.config/.host_config);
the kernel side is covered by test_network.py and the end-to-end tests."""

import pytest

from minidock import errors, events, networks


class Box:
    def __init__(self, cid, name, mode="default", running=True, links=None, exposed=None, env=None,
                 aliases=None):
        self.id, self.name, self.running, self.pid = cid, name, running, 0
        self.record = {"NetworkSettings": {"Networks": {}},
                       "Config": {"Hostname": cid[:12], "ExposedPorts": exposed, "Env": env or []},
                       "HostConfig": {"NetworkMode": mode, "Links": links}}
        self.config, self.host_config = self.record["Config"], self.record["HostConfig"]


class Boxes:
    def __init__(self):
        self.items = []

    def all(self):
        return list(self.items)

    def get(self, ref):
        for b in self.items:
            if ref in (b.id, b.name):
                return b
        raise errors.NotFound(ref)

    def save(self, c):
        pass


@pytest.fixture
def nets(tmp_path):
    boxes = Boxes()
    return networks.Networks(str(tmp_path), events.Events(), boxes), boxes


def test_predefined_and_bridge(nets):
    n, _ = nets
    names = [x["Name"] for x in n.list()]
    assert names == ["host", "none", "bridge"]
    assert n.inspect("bridge")["IPAM"]["Config"] == [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
    assert n.find("default")["Name"] == "bridge"
    with pytest.raises(errors.Forbidden):
        n.remove("bridge")


def test_create_validates_and_allocates_subnets(nets):
    n, _ = nets
    a = n.create({"Name": "a", "Labels": {"x": "1"}})
    assert n.inspect("a")["IPAM"]["Config"][0]["Subnet"] in ("172.18.0.0/16", "172.19.0.0/16")
    with pytest.raises(errors.Conflict):
        n.create({"Name": "a"})
    with pytest.raises(errors.InvalidParameter):
        n.create({"Name": "b", "IPAM": {"Config": [{"Subnet": "10.1.2.3/16"}]}})
    n.create({"Name": "c", "IPAM": {"Config": [{"Subnet": "10.99.0.0/24", "Gateway": "10.99.0.254"}]}})
    with pytest.raises(errors.Forbidden):
        n.create({"Name": "d", "IPAM": {"Config": [{"Subnet": "10.99.0.128/25"}]}})
    with pytest.raises(errors.InvalidParameter):
        n.create({"Name": "e", "IPAM": {"Config": [{"Subnet": "10.98.0.0/24", "Gateway": "10.97.0.1"}]}})
    with pytest.raises(errors.InvalidParameter):
        n.create({"Name": "f", "EnableIPv6": True})
    with pytest.raises(errors.InvalidParameter):
        n.create({"Name": "g", "EnableIPv4": False})
    with pytest.raises(errors.InvalidParameter):
        n.create({"Name": "h", "IPAM": {"Config": [{"Subnet": "10.97.0.0/24",
                                                     "AuxiliaryAddresses": {"x": "10.96.0.1"}}]}})
    assert [x["Name"] for x in n.list({"label": ["x=1"]})] == ["a"]
    assert [x["Name"] for x in n.list({"type": ["custom"]})] == ["a", "c"]
    assert n.find(a["Id"][:6])["Name"] == "a"
    assert sorted(n.prune()) == ["a", "c"]


def test_join_lookup_links(nets):
    n, boxes = nets
    n.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.50.0.0/24",
                                                   "AuxiliaryAddresses": {"router": "10.50.0.4"}}]}})
    web = Box("a" * 64, "web", "app")
    db = Box("b" * 64, "db", "app")
    boxes.items += [web, db]
    n.join_at_create(web, {"EndpointsConfig": {"app": {"Aliases": ["frontend"]}}})
    n.join_at_create(db)
    assert web.record["NetworkSettings"]["Networks"]["app"]["IPAddress"] == "10.50.0.2"
    assert web.record["NetworkSettings"]["Networks"]["app"]["MacAddress"] == "02:42:0a:32:00:02"
    assert db.record["NetworkSettings"]["Networks"]["app"]["IPAddress"] == "10.50.0.3"
    nid = n.find("app")["Id"]
    assert n.lookup(nid, "10.50.0.3", "frontend") == ["10.50.0.2"]
    assert n.lookup(nid, "10.50.0.3", "WEB.") == ["10.50.0.2"]
    assert n.lookup(nid, "10.50.0.3", "a" * 12) == ["10.50.0.2"]
    assert n.lookup(nid, "10.50.0.77", "web") is None         # asker not a container there
    assert n.lookup(nid, "10.50.0.3", "nothere") is None
    with pytest.raises(errors.Forbidden):
        n.join(web, n.find("app"))                             # connecting twice
    with pytest.raises(errors.Forbidden):
        n.remove("app")                                        # running members
    ip = n.join(Box("c" * 64, "x", "app"), n.find("app"), {"IPAMConfig": {"IPv4Address": "10.50.0.9"}})
    assert ip["IPAddress"] == "10.50.0.9"
    third = n.join(Box("9" * 64, "z", "app"), n.find("app"))
    assert third["IPAddress"] == "10.50.0.5"                   # .4 is the reserved auxiliary
    with pytest.raises(errors.Conflict):
        n.join(Box("d" * 64, "y", "app"), n.find("app"), {"IPAMConfig": {"IPv4Address": "10.50.0.2"}})
    with pytest.raises(errors.InvalidParameter):
        n.join(Box("d" * 64, "y", "app"), n.find("app"), {"IPAMConfig": {"IPv4Address": "10.51.0.2"}})
    n.leave(web, n.find("app"))
    assert n.lookup(nid, "10.50.0.3", "web") is None


def test_link_env_and_hosts(nets):
    n, boxes = nets
    db = Box("e" * 64, "db", exposed={"5432/tcp": {}}, env=["PGUSER=me", "PATH=/bin"])
    web = Box("f" * 64, "web", links=["/db:/web/pg"])
    boxes.items += [db, web]
    n.join_at_create(db)
    n.join_at_create(web)
    env = n.link_env(web)
    assert "PG_PORT=tcp://172.17.0.2:5432" in env
    assert "PG_PORT_5432_TCP_ADDR=172.17.0.2" in env and "PG_PORT_5432_TCP_PROTO=tcp" in env
    assert "PG_NAME=/web/pg" in env and "PG_ENV_PGUSER=me" in env
    assert not any(e.startswith("PG_ENV_PATH") for e in env)
    assert n.etc_hosts(web, "web.example.org web") == ["172.17.0.3\tweb.example.org web",
                                                      "172.17.0.2\tpg eeeeeeeeeeee db"]
    ns_, search, opts = n.resolv_conf(web, ["127.0.0.53", "10.0.0.2"], [], [])
    assert ns_ == ["10.0.0.2"]


class _Keeper:
    pid = 4242                          # spawn_network only names the keeper's pid


def test_spawn_network_joins_an_old_container_and_refuses_a_removed_network(nets):
    n, boxes = nets
    old = Box("1" * 64, "old")          # created before networks: no endpoint stored
    boxes.items.append(old)
    n.netns = _Keeper()
    net = n.spawn_network(old)
    n.netns = None
    assert net["netns_pid"] == 4242
    [ep] = net["endpoints"]
    assert (ep["bridge"], ep["address"], ep["gateway"], ep["default_route"]) == \
        ("docker0", "172.17.0.2", "172.17.0.1", True)
    n.create({"Name": "gone"})
    lost = Box("2" * 64, "lost", "gone", running=False)
    boxes.items.append(lost)
    n.join_at_create(lost)
    n.remove("gone")
    n.netns = _Keeper()
    with pytest.raises(errors.NotFound):
        n.spawn_network(lost)


def test_links_on_a_user_network_are_names_for_their_owner_only(nets):
    n, boxes = nets
    n.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.51.0.0/24"}]}})
    nid = n.find("app")["Id"]
    db = Box("d" * 64, "db", "app")
    web = Box("e" * 64, "web", "app", links=["db:pg"])
    other = Box("f" * 64, "other", "app")
    boxes.items += [db, web, other]
    for b in (db, web, other):
        n.join_at_create(b)
    assert n.lookup(nid, "10.51.0.3", "pg") == ["10.51.0.2"]     # web asks
    assert n.lookup(nid, "10.51.0.4", "pg") is None              # other does not have the link


def test_an_address_is_free_again_once_its_container_is_removed(nets):
    n, boxes = nets
    first = Box("3" * 64, "first")
    boxes.items.append(first)
    n.join_at_create(first)
    assert first.record["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == "172.17.0.2"
    n.leave_all(first)                  # what remove does
    boxes.items.remove(first)
    second = Box("4" * 64, "second")
    boxes.items.append(second)
    n.join_at_create(second)
    assert second.record["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == "172.17.0.2"


def test_addresses_taken_are_counted_per_network(nets):
    # two user networks: an address taken on one is not counted on the other; a container on
    # both counts on each; a container without network settings counts nowhere
    n, boxes = nets
    for name, subnet in (("one", "10.61.0.0/24"), ("two", "10.62.0.0/24")):
        n.create({"Name": name, "IPAM": {"Config": [{"Subnet": subnet}]}})
    both = Box("5" * 64, "both", "one")
    bare = Box("6" * 64, "bare", "none")
    bare.record.pop("NetworkSettings")
    boxes.items += [both, bare]
    n.join_at_create(both, {"EndpointsConfig": {"two": {}}})
    nets_of = both.record["NetworkSettings"]["Networks"]
    assert (nets_of["one"]["IPAddress"], nets_of["two"]["IPAddress"]) == ("10.61.0.2", "10.62.0.2")
    only_two = Box("7" * 64, "only-two", "two")
    boxes.items.append(only_two)
    n.join_at_create(only_two)
    assert only_two.record["NetworkSettings"]["Networks"]["two"]["IPAddress"] == "10.62.0.3"
    # what the allocator sees: each network's own addresses, as kept and as counted again
    # from the records
    for _ in ("kept", "counted"):
        assert n._taken(n.find("two")) == {0x0A3E0002, 0x0A3E0003}
        assert n._taken(n.find("one")) == {0x0A3D0002}
        n.taken_addresses.clear()


def _counted(n, name):
    """The addresses taken on a network as a count from the records finds them now."""
    kept = n.taken_addresses.pop(n.find(name)["Id"], None)
    try:
        return n._taken(n.find(name))
    finally:
        if kept is not None:
            n.taken_addresses[n.find(name)["Id"]] = kept


def test_the_addresses_kept_are_those_the_records_hold_after_every_change(nets):
    """Joins, a failed join, a disconnect, a removal, a reconnect, a refused connect: after
    each, the set of taken addresses kept per network is what counting the records gives."""
    n, boxes = nets
    n.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.71.0.0/24",
                                                     "AuxiliaryAddresses": {"router": "10.71.0.9"}}]}})
    n.create({"Name": "side", "IPAM": {"Config": [{"Subnet": "10.72.0.0/24"}]}})

    def check():
        for name in ("bridge", "app", "side"):
            if n.find(name)["Id"] in n.taken_addresses:
                assert n.taken_addresses[n.find(name)["Id"]] == _counted(n, name), name

    made = []
    for i in range(6):
        b = Box(f"{i:x}" * 64, f"c{i}", "app")
        boxes.items.append(b)
        n.join_at_create(b, {"EndpointsConfig": {"side": {}}} if i % 2 else None)
        made.append(b)
        check()
    assert n.taken_addresses[n.find("app")["Id"]] >= {0x0A470009}       # the auxiliary address
    # a join that fails on its second network keeps no address on the first
    bad = Box("a" * 64, "bad", "app")
    boxes.items.append(bad)
    with pytest.raises(errors.MinidockError):
        n.join_at_create(bad, {"EndpointsConfig": {"side": {"IPAMConfig": {"IPv4Address": "10.99.0.5"}}}})
    check()
    assert bad.record["NetworkSettings"]["Networks"] == {}
    n.disconnect("side", made[1])
    check()
    n.leave_all(made[2])
    boxes.items.remove(made[2])
    check()
    n.connect("side", made[1])                  # back on side: an address again
    check()
    with pytest.raises(errors.Forbidden):
        n.connect("side", made[3])              # on side already: the refusal changes nothing
    check()


def test_a_burst_of_creates_counts_the_records_once(nets, monkeypatch):
    """The addresses taken are counted from every record once, at the first join; later joins
    use the kept set (a count per create cost ~3 ms at 1,000 containers)."""
    n, boxes = nets
    passes = []
    endpoints_on = n.endpoints_on
    monkeypatch.setattr(n, "endpoints_on", lambda rec: passes.append(rec["Name"]) or endpoints_on(rec))
    for i in range(50):
        b = Box(f"{i:064x}", f"b{i}")
        boxes.items.append(b)
        n.join_at_create(b)
    assert passes == ["bridge"]
    addresses = [b.record["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] for b in boxes.items]
    assert addresses == [f"172.17.0.{i + 2}" for i in range(50)]


def test_a_freed_address_is_the_next_one_given_and_a_removed_network_forgets_its_own(nets):
    n, boxes = nets
    n.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.73.0.0/24"}]}})
    first, second = Box("1" * 64, "first", "app", running=False), Box("2" * 64, "second", "app", running=False)
    boxes.items += [first, second]
    n.join_at_create(first)
    n.join_at_create(second)
    n.leave_all(first)
    boxes.items.remove(first)
    third = Box("3" * 64, "third", "app", running=False)
    boxes.items.append(third)
    n.join_at_create(third)
    assert third.record["NetworkSettings"]["Networks"]["app"]["IPAddress"] == "10.73.0.2"
    nid = n.find("app")["Id"]
    n.remove("app")
    assert nid not in n.taken_addresses


def test_removing_a_network_in_use_is_forbidden_as_in_moby(nets):
    """moby answers 403 (libnetwork's ActiveEndpointsError is a Forbidden error), not 409."""
    n, boxes = nets
    n.create({"Name": "busy"})
    web = Box("a" * 64, "web", mode="busy")
    boxes.items.append(web)
    n.join_at_create(web)
    with pytest.raises(errors.Forbidden) as info:
        n.remove("busy")
    assert "has active endpoints" in info.value.message
    web.running = False                      # a stopped member loses its endpoint with the network
    n.remove("busy")
    assert web.record["NetworkSettings"]["Networks"] == {}


def test_join_reports_every_problem_at_once_and_stores_nothing(nets):
    n, boxes = nets
    n.create({"Name": "u", "IPAM": {"Config": [{"Subnet": "10.77.0.0/24"}]}})
    c = Box("b" * 64, "c", mode="bridge")
    boxes.items.append(c)
    with pytest.raises(errors.InvalidParameter) as info:
        n.join(c, n.find("bridge"), {"IPAMConfig": {"IPv4Address": "172.17.0.9"}, "Aliases": ["x"],
                                     "MacAddress": "zz"})
    lines = info.value.message.splitlines()
    assert len(lines) == 3 and "user defined networks only" in lines[0] and "invalid MAC address zz" in lines[2]
    assert c.record["NetworkSettings"]["Networks"] == {}
    with pytest.raises(errors.InvalidParameter) as info:     # across networks at create
        n.join_at_create(c, {"EndpointsConfig": {"bridge": {"Aliases": ["x"]},
                                                 "u": {"IPAMConfig": {"IPv4Address": "10.99.0.2"}}}})
    assert "invalid config for network bridge" in info.value.message
    assert "invalid config for network u" in info.value.message
    assert c.record["NetworkSettings"]["Networks"] == {}
