"""Test driver: the container, exec and volume backends driven without HTTP, against a real spawner.

Run by tests/test_backends.py as an unprivileged user (setpriv, like tests/spawner_driver.py),
from a 0755 directory holding a copy of the minidock package:

    python3 -S backend_driver.py BASE ROOTFS_TAR

It builds the engine exactly as the daemon does (`daemon.build_engine`: the daemon's user
namespace, the spawner, the cgroup tree, the engine with its state), imports ROOTFS_TAR as the
image `busybox`, runs every scenario below through the backend objects' own methods and prints
one JSON document {scenario: what it saw}. What the kernel shows (a pid in /proc, a file in a
volume's directory) is read here and reported; the tests judge it.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minidock import daemon, errors, http, imagecreate, websocket  # noqa: E402
from minidock.container import attach  # noqa: E402
from minidock.engine import Config  # noqa: E402

DEADLINE = 15          # seconds any one wait in a scenario may take


def _until(predicate, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _refused(call):
    """The error kind and message a backend call raises, or None when it succeeds."""
    try:
        call()
    except errors.MinidockError as exc:
        return [type(exc).__name__, exc.message]
    return None


def _read_until(sock, needle):
    out = b""
    while needle not in out:
        data = sock.recv(65536)
        if not data:
            break
        out += data
    return out


def _read_all(sock):
    out = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        out += data


def run_to_exit(engine):
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
                       name="exit3")
    created = cs.get("exit3").status
    cs.start(cid)
    code = cs.wait(cid)
    _, entries = cs.logs(cid, {"stdout", "stderr"})
    entries = list(entries)
    state = cs.inspect(cid)["State"]
    again = _refused(lambda: cs.create({"Image": "busybox", "Cmd": ["true"]}, name="exit3"))
    cs.remove(cid)
    return {"created": created, "code": code, "logs": [[s, d.decode()] for s, d in entries],
            "state": {k: state[k] for k in ("Status", "ExitCode", "Running", "Pid")}, "name_again": again}


def stop_and_remove(engine):
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"]})
    c = cs.get(cid)
    cs.start(cid)
    pid = c.pid
    seen = {"alive": os.path.exists(f"/proc/{pid}"), "counts_running": cs.counts(),
            "remove_running": _refused(lambda: cs.remove(cid)),
            "start_again": _refused(lambda: cs.start(cid))}
    cs.stop(cid, timeout=1)
    seen.update(status=c.status, code=c.state["ExitCode"], gone=not os.path.exists(f"/proc/{pid}"),
                stop_again=_refused(lambda: cs.stop(cid)), pause_exited=_refused(lambda: cs.pause(cid)))
    directory = os.path.join(cs.root, cid)
    rw = os.path.join(engine.layers.root, "containers", cid)
    seen["dirs_before"] = [os.path.isdir(directory), os.path.isdir(rw)]
    cs.remove(cid)
    seen.update(dirs_after=[os.path.isdir(directory), os.path.isdir(rw)], status_after=c.status,
                lookup=_refused(lambda: cs.get(cid)))
    return seen


@contextlib.contextmanager
def _exit_lands_before(cs, c, method):
    """Within the block, the supervisor's `method` ("kill", "stop") first kills the container's
    process and waits for its exit to be recorded, then does its work: the exit lands between a
    caller's look at the status and that call."""
    real = getattr(cs.supervisor, method)
    pid = c.pid

    def exit_first(*args, **kwargs):
        os.kill(pid, 9)
        _until(lambda: c.status == "exited")
        return real(*args, **kwargs)
    setattr(cs.supervisor, method, exit_first)
    try:
        yield
    finally:
        setattr(cs.supervisor, method, real)


def force_remove_as_it_exits(engine):
    """`rm -f` of a running container that exits on its own between the removal's look at its
    status and its SIGKILL (a restart policy's container that fails again, say): the kill finds
    nothing to kill, and the removal goes on."""
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"]})
    c = cs.get(cid)
    cs.start(cid)
    with _exit_lands_before(cs, c, "kill"):
        removal = _refused(lambda: cs.remove(cid, force=True))
    return {"removal": removal, "status": c.status, "lookup": _refused(lambda: cs.get(cid))}


def restart_as_it_exits(engine):
    """`docker restart` of a running container that exits on its own between the restart's look
    at its status and its stop: the stop finds it stopped, and the restart starts it again (as
    moby, whose stop of a stopped container is no error there)."""
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"]})
    c = cs.get(cid)
    cs.start(cid)
    first = c.pid
    with _exit_lands_before(cs, c, "stop"):
        restart = _refused(lambda: cs.restart(cid, timeout=1))
    seen = {"restart": restart, "status": c.status, "new_pid": c.pid not in (0, first)}
    cs.remove(cid, force=True)
    return seen


def pause_and_kill(engine):
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"]})
    cs.start(cid)
    c = cs.get(cid)
    cs.pause(cid)
    paused = [c.status, cs.inspect(cid)["State"]["Paused"]]
    twice = _refused(lambda: cs.pause(cid))
    cs.unpause(cid)
    unpaused = c.status
    cs.kill(cid, "KILL")
    code = cs.wait(cid)
    cs.remove(cid)
    return {"paused": paused, "twice": twice, "unpaused": unpaused, "code": code}


def restart_policy(engine):
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sh", "-c", "exit 1"],
                        "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}})
    c = cs.get(cid)
    cs.start(cid)
    done = _until(lambda: c.record["RestartCount"] == 2 and c.status == "exited")
    seen = {"done": done, "status": c.status, "restarts": c.record["RestartCount"],
            "code": c.state["ExitCode"], "backoff": c.backoff}
    cs.remove(cid)
    return seen


def execs(engine):
    cs, xs = engine.containers, engine.execs
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"], "Hostname": "box"})
    cs.start(cid)
    eid = xs.create(cid, {"Cmd": ["sh", "-c", "echo in-$(hostname); echo e >&2; exit 5"],
                          "AttachStdout": True, "AttachStderr": True})
    ours, theirs = socket.socketpair()
    xs.start(eid, conn=ours)                     # returns when the process has ended
    ours.close()
    out, _ = http.parse_frames(_read_all(theirs))
    theirs.close()
    stdout = b"".join(d for s, d in out if s == http.STDOUT).decode()
    stderr = b"".join(d for s, d in out if s == http.STDERR).decode()
    record = xs.inspect(eid)
    detached = xs.create(cid, {"Cmd": ["sh", "-c", "exit 4"]})
    xs.start(detached, detach=True)
    e = xs.get(detached)
    with e.lock:
        e.lock.wait_for(lambda: e.record["ExitCode"] is not None, DEADLINE)
    seen = {"stdout": stdout, "stderr": stderr, "code": record["ExitCode"], "running": record["Running"],
            "detached_code": e.record["ExitCode"], "exec_ids": cs.inspect(cid)["ExecIDs"],
            "ids": [eid, detached], "again": _refused(lambda: xs.start(eid, detach=True))}
    cs.remove(cid, force=True)
    seen["after_remove"] = _refused(lambda: xs.get(eid))
    return seen


def volumes(engine):
    cs, vs = engine.containers, engine.volumes
    vs.create("data")
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sh", "-c", "echo hello > /data/f; echo anon > /anon/g"],
                        "Volumes": {"/anon": {}}, "HostConfig": {"Binds": ["data:/data"]}})
    cs.start(cid)
    code = cs.wait(cid)
    mounts = {m["Destination"]: m for m in cs.inspect(cid)["Mounts"]}
    anon = mounts["/anon"]["Name"]

    def read(name, file):
        with open(os.path.join(vs.path(name), file)) as f:
            return f.read()

    seen = {"code": code, "data": read("data", "f"), "anon": read(anon, "g"), "users": vs.users("data") == [cid],
            "in_use": _refused(lambda: vs.remove("data")), "mount_types": sorted(m["Type"] for m in mounts.values())}
    cs.remove(cid, volumes=True)
    names = [v["Name"] for v in vs.list()]
    seen.update(anon_after=anon in names, data_after="data" in names, users_after=vs.users("data"))
    vs.remove("data")
    seen["data_dir_after"] = os.path.exists(vs.path("data"))
    return seen


def attach_detach(engine):
    """ctrl-p ctrl-p ctrl-q over both session kinds, on a socketpair standing for the client."""
    cs = engine.containers
    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sh"], "Tty": True, "OpenStdin": True})
    cs.start(cid)
    c = cs.get(cid)
    seen = {}
    for kind in ("http", "ws"):
        _, run = cs.attach(cid, attach.Options(stdin=True, stdout=True, stream=True), websocket=kind == "ws")
        ours, theirs = socket.socketpair()
        theirs.settimeout(DEADLINE)
        session = threading.Thread(target=run, args=(ours,), daemon=True)
        session.start()

        def send(data):
            if kind == "ws":
                data = websocket.encode_frame(websocket.BINARY, data, mask=os.urandom(4))
            theirs.sendall(data)

        send(f"echo {kind.upper()}$((40+2))\r".encode())
        echoed = _read_until(theirs, f"{kind.upper()}42".encode())
        send(b"\x10\x10\x11")                       # ctrl-p ctrl-p ctrl-q
        session.join(DEADLINE)
        seen[kind] = {"echoed": f"{kind.upper()}42".encode() in echoed, "ended": not session.is_alive(),
                      "status": c.status}
        ours.close()
        theirs.close()
    cs.remove(cid, force=True)
    return seen


def list_rows(engine):
    """`GET /containers/json` through the cached rows (summaries_json) after each change the
    backend makes, beside the straightforward rows: the bytes must agree, and the row shows it."""
    from minidock.api import versions
    cs = engine.containers
    seen = {"agree": [], "rows": []}

    def row(cid):
        for version in (versions.MAX, versions.parse("1.44"), versions.parse("1.24"), versions.parse("1.11")):
            for size in (False, True):
                fast = cs.summaries_json(versions.item_shaper("container_list", version), all_=True, size=size)
                straight = json.dumps(versions.render("container_list", cs.summaries(all_=True, size=size),
                                                      version)).encode()
                seen["agree"].append(fast == straight)
        rows = json.loads(cs.summaries_json(versions.item_shaper("container_list", versions.MAX), all_=True))
        r = [r for r in rows if r["Id"] == cid][0]
        seen["rows"].append({k: r[k] for k in ("Names", "State", "Labels")} | {
            "Status": r["Status"].split(" ")[0], "Networks": sorted(r["NetworkSettings"]["Networks"])})

    cid, _ = cs.create({"Image": "busybox", "Cmd": ["sleep", "1000"], "Labels": {"made": "at-create"}},
                       name="lister")
    row(cid)
    cs.rename(cid, "lister2")
    row(cid)
    cs.start(cid)
    row(cid)
    engine.networks.create({"Name": "listnet"})
    engine.networks.connect_container("listnet", cid)
    row(cid)
    cs.stop(cid, timeout=0)
    row(cid)
    cs.remove(cid)
    rows = json.loads(cs.summaries_json(versions.item_shaper("container_list", versions.MAX), all_=True))
    seen["gone"] = cid not in [r["Id"] for r in rows] and cid not in cs.rows.entries
    engine.networks.remove("listnet")
    return seen


def names(engine):
    """Lookups by name through the name index (Containers.by_name): create, a clash, rename,
    removal, and Docker's order of a full ID, an exact name, a unique ID prefix."""
    cs = engine.containers
    body = {"Image": "busybox", "Cmd": ["true"]}
    first, _ = cs.create(body, name="alpha")
    seen = {"by_name": [cs.get(ref).id == first for ref in ("alpha", "/alpha", first, first[:12])],
            "clash": _refused(lambda: cs.create(body, name="alpha"))}
    cs.rename(first, "beta")
    seen["renamed"] = [_refused(lambda: cs.get("alpha")), cs.get("beta").id == first]
    again, _ = cs.create(body, name="alpha")                 # the old name is free again
    # A container named like another's ID prefix: the exact name wins over the prefix.
    prefixed, _ = cs.create(body, name=first[:12])
    seen["name_over_prefix"] = cs.get(first[:12]).id == prefixed
    cs.remove(first)
    seen["removed"] = _refused(lambda: cs.get("beta"))
    reused, _ = cs.create(body, name="beta")
    seen["reused"] = cs.get("beta").id == reused != first
    for cid in (again, prefixed, reused):
        cs.remove(cid)
    seen["left"] = sorted(n for n in cs.by_name if n in ("alpha", "beta", first[:12]))
    return seen


def failed_create(engine):
    """A create whose record cannot be written (a full disk, here made so) fails and keeps
    nothing: not its name, nor its address on `bridge`, which the next create gets."""
    cs = engine.containers
    body = {"Image": "busybox", "Cmd": ["true"]}
    first, _ = cs.create(body, name="first")

    def address(cid):
        return cs.get(cid).record["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]

    save_new = cs.collection.save_new

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    cs.collection.save_new = full
    try:
        cs.create(body, name="second")
        failed = None
    except OSError as exc:
        failed = exc.strerror
    finally:
        cs.collection.save_new = save_new
    second, _ = cs.create(body, name="second")
    seen = {"failed": failed, "addresses": [address(first), address(second)]}
    for cid in (first, second):
        cs.remove(cid)
    return seen


SCENARIOS = [run_to_exit, stop_and_remove, force_remove_as_it_exits, restart_as_it_exits, pause_and_kill,
             restart_policy, execs, volumes, attach_detach, list_rows, names, failed_create]


def main():
    base, tar = sys.argv[1], sys.argv[2]
    engine = daemon.build_engine(Config(os.path.join(base, "data"), os.path.join(base, "exec")))
    with open(tar, "rb") as f:
        imagecreate.import_image(engine.images, f, "busybox")
    results = {}
    for scenario in SCENARIOS:
        try:
            results[scenario.__name__] = scenario(engine)
        except Exception as exc:              # reported, so one broken scenario names itself
            results[scenario.__name__] = {"exception": f"{type(exc).__name__}: {exc}"}
    engine.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
