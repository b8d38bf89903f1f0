"""The typed field tables: Docker's decoding rules on values, and a wrong-typed value for every
field of the create body (the same generator feeds the end-to-end corpus)."""

import pytest

from minidock import errors, execs, schema, volumes
from minidock.container import config


def wrong_values(t):
    """Values Go's decoder refuses for a field of type t."""
    if isinstance(t, (dict, schema.MapOf)):
        return ["x", 1, []]
    if isinstance(t, list):
        return ["x", {}]
    return {schema.BOOL: ["false", 0, 1],
            schema.STR: [1, True, ["x"], {}],
            schema.INT: ["1", 1.5, True, 1 << 64],
            schema.UINT: [-1, "1", 1.5], schema.UINT16: [-1, 70000, "1"], schema.UINT32: [-1, 1 << 33],
            schema.STRS: ["x", [1], {}],
            schema.STRSLICE: [1, [1], {}],
            schema.STRMAP: [[], {"a": 1}, "x"],
            schema.SET: [[], {"a": 1}, "x"],
            schema.ANY: []}[t]


def create_fields():
    """(path, type) for every field of the create body, nested ones included."""
    out = []

    def walk(table, path):
        for key, t in table.items():
            out.append((path + [key], t))
            if isinstance(t, dict):
                walk(t, path + [key])
    walk(config.CONFIG_TYPES, [])
    walk({"HostConfig": config.HOST_CONFIG_TYPES, "NetworkingConfig": config.NETWORKING_CONFIG_TYPES}, [])
    return out


def body_with(path, value):
    body = {"Image": "busybox"}
    node = body
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return body


WRONG = [(path, v) for path, t in create_fields() for v in wrong_values(t)]


@pytest.mark.parametrize("path,value", WRONG, ids=[f"{'.'.join(p)}={v!r}"[:80] for p, v in WRONG])
def test_every_wrong_type_is_refused(path, value):
    with pytest.raises(errors.InvalidParameter) as info:
        config.check_types(body_with(path, value))
    assert "json: cannot unmarshal" in info.value.message
    assert path[-1] in info.value.message


@pytest.mark.parametrize("body", [
    {"Image": "busybox", "Cmd": "echo hi", "Entrypoint": ["sh", "-c"], "Env": ["A=1"],
     "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}}, "Labels": {"a": "b"},
     "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000}, "StopTimeout": 5,
     "HostConfig": {"Privileged": False, "Binds": ["/a:/b"], "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                    "RestartPolicy": {"Name": "always"}, "Memory": 0, "Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}],
                    "CapAdd": "NET_ADMIN", "Mounts": [{"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": True}],
                    "LogConfig": {"Type": "json-file", "Config": {}}, "ConsoleSize": [24, 80]},
     "NetworkingConfig": {"EndpointsConfig": {"bridge": {"Aliases": ["x"], "IPAMConfig": None}}},
     "SomethingNew": [1, 2, 3]},
    {"Image": "busybox", "Cmd": None, "HostConfig": None, "Labels": None},
])
def test_valid_bodies_pass(body):
    config.check_types(body)


@pytest.mark.parametrize("body", [[], "x", 1])
def test_a_body_that_is_not_an_object(body):
    with pytest.raises(errors.InvalidParameter):
        config.check_types(body)


BODIES = {"ExecConfig": execs.EXEC_CREATE_TYPES, "ExecStartCheck": execs.EXEC_START_TYPES,
          "VolumeCreateOptions": volumes.CREATE_TYPES, "UpdateConfig": config.UPDATE_TYPES}
BODY_WRONG = [(kind, [key], v) for kind, table in BODIES.items()
              for key, t in table.items() for v in wrong_values(t)]


@pytest.mark.parametrize("kind,path,value", BODY_WRONG, ids=[f"{k}.{p[0]}={v!r}"[:80] for k, p, v in BODY_WRONG])
def test_other_bodies_refuse_wrong_types(kind, path, value):
    with pytest.raises(errors.InvalidParameter) as info:
        schema.check_body({path[0]: value}, BODIES[kind], kind)
    assert f"{kind}.{path[0]}" in info.value.message


def test_other_bodies_accept_their_usual_shape():
    schema.check_body({"Cmd": ["sh"], "AttachStdout": True, "Env": None, "Tty": False}, BODIES["ExecConfig"], "ExecConfig")
    schema.check_body({"Detach": False, "Tty": False}, BODIES["ExecStartCheck"], "ExecStartCheck")
    schema.check_body({"Name": "v", "Driver": "local", "Labels": {"a": "b"}}, BODIES["VolumeCreateOptions"], "V")
    schema.check_body({"Memory": 1 << 20, "RestartPolicy": {"Name": "always"}}, BODIES["UpdateConfig"], "U")
