"""The container concepts of minidock/container/ tested directly, without a daemon or HTTP:
configuration merging, the lifecycle table, restart back-off, the detach-key scanner, the exit
registry, the json-file log and the generated resolv.conf (the networks backend: test_networks.py)."""

import json
import os
import threading

import pytest

from minidock import errors
from minidock.container import attach, config, exits, logs, restart, spec
from minidock.container.lifecycle import (CREATED, DEAD, EXITED, PAUSED, REMOVING, RESTARTING, RUNNING,
                                          TRANSITIONS, Container)

IMAGE = {"Cmd": ["sh"], "Entrypoint": None, "Env": ["PATH=/bin", "A=image", "B=image"],
         "WorkingDir": "/srv", "User": "daemon", "Labels": {"from": "image", "both": "image"},
         "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"}


# -- configuration merging ------------------------------------------------------------------------

@pytest.mark.parametrize("body, entrypoint, cmd", [
    ({}, None, ["sh"]),                                              # all from the image
    ({"Cmd": ["ls", "-l"]}, None, ["ls", "-l"]),                     # user Cmd replaces the image's
    ({"Cmd": "ls"}, None, ["ls"]),                                   # a string is a one-element list
    ({"Entrypoint": ["top"]}, ["top"], None),                        # user entrypoint drops image Cmd
    ({"Entrypoint": ["top"], "Cmd": ["-b"]}, ["top"], ["-b"]),
    ({"Entrypoint": [""], "Cmd": ["echo"]}, None, ["echo"]),          # --entrypoint "" resets
])
def test_entrypoint_and_cmd_merge(body, entrypoint, cmd):
    merged = config.merge_config(body, IMAGE, "busybox")
    assert (merged["Entrypoint"], merged["Cmd"]) == (entrypoint, cmd)


def test_image_entrypoint_kept_with_user_cmd():
    image = dict(IMAGE, Entrypoint=["/entry.sh"])
    merged = config.merge_config({"Cmd": ["run"]}, image, "x")
    assert config.command(merged) == ("/entry.sh", ["run"])


def test_env_labels_and_defaults_merge():
    merged = config.merge_config({"Env": ["B=user", "C=user"], "Labels": {"both": "user"}}, IMAGE, "busybox")
    assert merged["Env"] == ["PATH=/bin", "A=image", "B=user", "C=user"]
    assert merged["Labels"] == {"from": "image", "both": "user"}
    assert (merged["WorkingDir"], merged["User"], merged["StopSignal"]) == ("/srv", "daemon", "SIGQUIT")
    assert merged["ExposedPorts"] == {"80/tcp": {}} and merged["Image"] == "busybox"
    assert merged["Tty"] is False and merged["Hostname"] == ""
    # no PATH anywhere: Docker's default comes first
    bare = config.merge_config({}, {}, "scratch")
    assert bare["Env"] == ["PATH=" + config.DEFAULT_PATH]
    with pytest.raises(errors.InvalidParameter):
        config.merge_config({"Env": "A=1"}, IMAGE, "busybox")


def test_no_command_means_empty_path():
    assert config.command(config.merge_config({}, {}, "scratch")) == ("", [])


@pytest.mark.parametrize("hc, message", [
    ({"RestartPolicy": {"Name": "sometimes"}}, "invalid restart policy 'sometimes'"),
    ({"RestartPolicy": {"Name": "always", "MaximumRetryCount": 3}},
     "maximum retry count cannot be used with restart policy 'always'"),
    ({"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}}, "maximum retry count cannot be negative"),
    ({"AutoRemove": True, "RestartPolicy": {"Name": "always"}}, "can't create 'AutoRemove' container with restart policy"),
    ({"ShmSize": -1}, "SHM size can not be less than 0"),
])
def test_host_config_rules(hc, message):
    with pytest.raises(errors.InvalidParameter) as info:
        config.normalise_host_config(hc)
    assert info.value.message == message


def test_host_config_defaults_filled_in():
    hc = config.normalise_host_config({"Memory": 0, "Dns": None})
    assert hc["ShmSize"] == config.DEFAULT_SHM_SIZE and hc["Dns"] == [] and hc["NetworkMode"] == "default"
    assert hc["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert set(config.HOST_CONFIG_DEFAULTS) <= set(hc)


@pytest.mark.parametrize("mode, effective", [
    (None, "bridge"), ("default", "bridge"), ("bridge", "bridge"), ("host", "host"), ("none", "none"),
    ("container:web", "container:web"), ("mynet", "mynet"),
])
def test_network_mode_is_decided_in_one_place(mode, effective):
    assert config.network_mode({"NetworkMode": mode}) == effective


@pytest.mark.parametrize("name, ok", [("web", True), ("/web", True), ("a.b-c_d", True), ("x", False),
                                      ("-bad", False), ("sp ace", False), ("", False)])
def test_names(name, ok):
    if ok:
        assert config.check_name(name) == name.lstrip("/")
    else:
        with pytest.raises(errors.InvalidParameter):
            config.check_name(name)


def test_generated_names_avoid_taken_ones():
    cid = "4db5fc940870c48fdfd32620bac0309ecd463775de09a3ebc385a4372ffefdb8"
    taken = {f"{a}_{s}" for a in config.ADJECTIVES for s in config.SURNAMES[1:]}
    name = config.generate_name(lambda n: n in taken, cid)
    assert name not in taken and config.NAME_RE.match(name)
    # 2,000 unnamed containers, as `bench list` makes 1,000: every name is free when given
    # (the numbered ones used to be given unchecked: a 409 Conflict every few hundred)
    names = set()
    for i in range(2000):
        name = config.generate_name(names.__contains__, f"{i:064x}")
        assert name not in names and config.NAME_RE.match(name)
        names.add(name)
    # every plain and numbered name taken: the short id, then the whole one
    assert config.generate_name(lambda n: n != cid[:12], cid) == cid[:12]
    assert config.generate_name(lambda n: n != cid, cid) == cid
    with pytest.raises(errors.Conflict):
        config.generate_name(lambda n: True, cid)


@pytest.mark.parametrize("value, number", [("9", 9), ("KILL", 9), ("SIGTERM", 15), ("hup", 1), (None, 9)])
def test_signals(value, number):
    assert config.parse_signal(value) == number


@pytest.mark.parametrize("value", ["0", "65", "SIGNOPE"])
def test_bad_signals(value):
    with pytest.raises(errors.InvalidParameter):
        config.parse_signal(value)


# -- the lifecycle table --------------------------------------------------------------------------

def _container(status=CREATED):
    c = Container({"Id": "f" * 64, "Name": "/t", "Config": {}, "HostConfig": {},
                   "State": {"Status": status}})
    return c


def test_every_legal_transition_is_accepted_and_mirrored():
    for start, targets in TRANSITIONS.items():
        for target in targets:
            c = _container(start)
            c.set_status(target)
            st = c.state
            assert st["Status"] == target
            assert st["Running"] == (target in (RUNNING, PAUSED))
            assert (st["Paused"], st["Restarting"], st["Dead"]) == (target == PAUSED, target == RESTARTING,
                                                                    target == DEAD)


def test_every_illegal_transition_is_refused():
    statuses = list(TRANSITIONS)
    refused = 0
    for start in statuses:
        for target in statuses:
            if target == start or target in TRANSITIONS[start]:
                continue
            c = _container(start)
            with pytest.raises(errors.Conflict):
                c.set_status(target)
            assert c.status == start            # nothing changed
            refused += 1
    assert refused > 20
    # the ones the daemon must never do
    for start, target in ((CREATED, PAUSED), (EXITED, PAUSED), (DEAD, RUNNING), (REMOVING, RUNNING)):
        with pytest.raises(errors.Conflict):
            _container(start).set_status(target)


def test_set_status_wakes_waiters():
    c = _container(CREATED)
    seen = []

    def waiter():
        with c.changed:
            c.changed.wait_for(lambda: c.status == RUNNING, 5)
            seen.append(c.status)

    t = threading.Thread(target=waiter)
    t.start()
    c.set_status(RUNNING)
    t.join(5)
    assert seen == [RUNNING]


# -- restart policy and back-off ------------------------------------------------------------------

@pytest.mark.parametrize("policy, code, count, manual, expected", [
    ({"Name": "no"}, 1, 0, False, False),
    ({"Name": "always"}, 0, 0, False, True),
    ({"Name": "always"}, 0, 0, True, False),
    ({"Name": "unless-stopped"}, 3, 9, False, True),
    ({"Name": "on-failure", "MaximumRetryCount": 0}, 0, 0, False, False),
    ({"Name": "on-failure", "MaximumRetryCount": 0}, 2, 50, False, True),
    ({"Name": "on-failure", "MaximumRetryCount": 2}, 2, 1, False, True),
    ({"Name": "on-failure", "MaximumRetryCount": 2}, 2, 2, False, False),
    (None, 1, 0, False, False),
])
def test_restart_policies(policy, code, count, manual, expected):
    assert restart.restarts(policy, code, count, manual) is expected


@pytest.mark.parametrize("policy, manual, expected", [
    ({"Name": "always"}, True, True), ({"Name": "unless-stopped"}, False, True),
    ({"Name": "unless-stopped"}, True, False), ({"Name": "on-failure"}, False, False)])
def test_restarts_with_the_daemon(policy, manual, expected):
    assert restart.restarts_with_daemon(policy, manual) is expected


def test_backoff_doubles_on_quick_exits_caps_and_resets():
    delays, delay = [], 0.0
    for _ in range(12):
        delay = restart.next_backoff(delay, ran=0.5)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == restart.BACKOFF_MAX and delays[-1] == restart.BACKOFF_MAX
    assert restart.next_backoff(delays[-1], ran=restart.BACKOFF_RESET) == restart.BACKOFF_START


# -- detach keys ----------------------------------------------------------------------------------

CTRL_P, CTRL_Q = b"\x10", b"\x11"


@pytest.mark.parametrize("feeds, passed, detached", [
    ([b"ls\r"], b"ls\r", False),
    ([CTRL_P + CTRL_Q], b"", True),
    ([b"ab" + CTRL_P + CTRL_Q + b"cd"], b"ab", True),                 # bytes after the sequence dropped
    ([CTRL_P + CTRL_P + CTRL_Q], CTRL_P, True),                       # the second ctrl-p starts a new match
    ([CTRL_P, CTRL_Q], b"", True),                                    # split across reads
    ([CTRL_P, b"x"], CTRL_P + b"x", False),                           # a broken-off match is passed on
    ([CTRL_P + b"x" + CTRL_P, CTRL_P + CTRL_Q], CTRL_P + b"x" + CTRL_P, True),
])
def test_detach_scanner(feeds, passed, detached):
    scanner = attach.DetachScanner(attach.DEFAULT_DETACH_KEYS)
    out, done = b"", False
    for data in feeds:
        chunk, done = scanner.feed(data)
        out += chunk
        if done:
            break
    assert (out, done) == (passed, detached)


def test_empty_keys_never_detach():
    assert attach.DetachScanner(b"").feed(CTRL_P + CTRL_Q) == (CTRL_P + CTRL_Q, False)


@pytest.mark.parametrize("text, keys", [(None, b"\x10\x11"), ("", b"\x10\x11"), ("ctrl-x,y", b"\x18y"),
                                        ("ctrl-a,ctrl-@,ctrl-[", b"\x01\x00\x1b"), ("a, b", b"ab")])
def test_parse_detach_keys(text, keys):
    assert attach.parse_detach_keys(text) == keys


@pytest.mark.parametrize("text", ["ctrl-1", "ctrl-", "abc", "ctrl-ab"])
def test_bad_detach_keys(text):
    with pytest.raises(errors.InvalidParameter):
        attach.parse_detach_keys(text)


# -- the exit registry ----------------------------------------------------------------------------

def test_exit_after_registration_calls_back():
    registry, got = exits.ExitRegistry(), []
    assert registry.register(100, got.append) is None
    registry.deliver(100, 7)
    registry.deliver(100, 8)                  # a second report for the pid is only kept as early
    assert got == [7]


def test_exit_before_registration_is_handed_back():
    registry, got = exits.ExitRegistry(), []
    registry.deliver(200, 137)
    assert registry.register(200, got.append) == 137
    registry.deliver(201, 0)
    assert got == []                          # nothing was registered for it


# -- log drivers (the json-file format itself: tests/test_jsonfile.py) ---------------------------

def _logged(tmp_path, log_config):
    return Container({"Id": "f" * 64, "Name": "/t", "Config": {}, "State": {"Status": RUNNING},
                      "HostConfig": {"LogConfig": log_config}, "LogPath": str(tmp_path / "t-json.log")})


def test_json_file_driver_writes_rotates_and_reads_across_files(tmp_path):
    c = _logged(tmp_path, {"Type": "json-file", "Config": {"max-size": "200", "max-file": "2"}})
    log = logs.writer(c)
    for i in range(50):
        log.write("stdout", b"line %d\n" % i)
    log.write("stderr", b"last, unfinished")
    log.close()                                # flushes the partial line
    assert sorted(os.listdir(tmp_path)) == ["t-json.log", "t-json.log.1"]
    got = [d for _, d, _ in logs.read(c)]
    assert got[-2:] == [b"line 49\n", b"last, unfinished"]
    assert [d for _, d, _ in logs.read(c, tail=1)] == [b"last, unfinished"]
    logs.check_readable(c)                     # no error: json-file can be read


def test_none_driver_stores_nothing_and_logs_answer_501(tmp_path):
    c = _logged(tmp_path, {"Type": "none", "Config": {}})
    log = logs.writer(c)
    log.write("stdout", b"gone\n")
    log.close()
    assert os.listdir(tmp_path) == [] and logs.read(c) == []
    with pytest.raises(errors.NotImplementedKind, match="does not support reading"):
        logs.check_readable(c)


# -- resolv.conf ----------------------------------------------------------------------------------

def test_resolv_conf_from_host_and_options(tmp_path):
    host = tmp_path / "resolv.conf"
    host.write_text("# comment\nnameserver 10.0.0.1\nsearch a.example b.example\noptions ndots:2\n")
    assert spec.resolv_conf({}, str(host)) == \
        "nameserver 10.0.0.1\nsearch a.example b.example\noptions ndots:2\n"
    assert spec.resolv_conf({"NetworkMode": "none"}, str(host)) == "search a.example b.example\noptions ndots:2\n"
    assert spec.resolv_conf({"Dns": ["127.0.0.53"], "DnsSearch": ["x"], "DnsOptions": ["rotate"]},
                            str(host)) == "nameserver 127.0.0.53\nsearch x\noptions rotate\n"


# --- exec records across a daemon restart ---------------------------------------------------

def test_exec_records_of_removed_containers_are_dropped_at_start(tmp_path):
    """A restarted daemon loads exec instances: those whose container is gone are deleted while
    the records are walked (once a RuntimeError that stopped the daemon from starting)."""
    import types
    from minidock import execs, store
    saved = store.Collection(os.path.join(tmp_path, "execs"), "exec instance")
    for n, cid in enumerate(["gone1", "kept", "gone2"]):
        saved.objects[f"e{n}"] = {"ID": f"e{n}", "ContainerID": cid, "Running": n == 1}
        saved.save(f"e{n}")
    kept = types.SimpleNamespace(exec_ids=[])
    backend = execs.Execs(str(tmp_path), types.SimpleNamespace(by_id={"kept": kept}), None, None, None)
    assert sorted(backend.by_id) == ["e1"] and kept.exec_ids == ["e1"]
    assert backend.by_id["e1"].record["Running"] is False          # it died with the old daemon
    # (exec records are two-slot files, slotfile.py: a plain Collection could not read e1's)
    again = store.Collection(os.path.join(tmp_path, "execs"), "exec instance", slots=True)
    again.load()
    assert sorted(again.objects) == ["e1"]                          # the others left the disk
