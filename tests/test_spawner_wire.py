"""The spawner's wire on bytes (parts, limits, garbage), then its loop fed bad requests."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from minidock import spawner, spawnerloop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sent_datagrams(obj):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grams = []
    with a, b:
        b.settimeout(10)
        t = threading.Thread(target=spawnerloop.send_message, args=(a, obj))
        t.start()
        while not grams or grams[-1][:1] != b"L":
            grams.append(b.recv(1 << 20))
        t.join()
    return grams


def test_a_large_message_travels_in_parts_and_reassembles():
    obj = {"id": 1, "spec": {"env": ["X=" + "y" * 100_000 for _ in range(12)]}}
    grams = sent_datagrams(obj)
    assert len(grams) > 20 and all(len(g) <= spawnerloop.MAX_PART + 1 for g in grams)
    assert [g[:1] for g in grams] == [b"M"] * (len(grams) - 1) + [b"L"]
    reader = spawnerloop.MessageReader()
    results = [reader.feed(g) for g in grams]
    assert results[:-1] == [None] * (len(grams) - 1)
    assert results[-1] == (obj, [])


CORPUS = [
    ("small", [b'L{"id": 3}'], {"id": 3}),
    ("two parts", [b'M{"id"', b'L: 4}'], {"id": 4}),
    ("not json", [b"Lnot json"], "not JSON"),
    ("not an object", [b"L[1, 2]"], "not a JSON object"),
    ("unknown flag", [b'X{"id": 1}'], "unknown part flag"),
    ("empty datagram", [b""], "unknown part flag"),
]


@pytest.mark.parametrize("name,grams,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_reader_corpus(name, grams, expected):
    reader = spawnerloop.MessageReader()
    for g in grams[:-1]:
        assert reader.feed(g) is None
    msg, fds = reader.feed(grams[-1])
    if isinstance(expected, dict):
        assert msg == expected
    else:
        assert expected in msg["_invalid"]
    # and the reader is clean for the next message
    assert reader.feed(b'L{"id": 9}') == ({"id": 9}, [])


def test_an_oversized_message_is_refused_and_the_next_one_reads(monkeypatch):
    monkeypatch.setattr(spawnerloop, "MAX_MESSAGE", 100)
    reader = spawnerloop.MessageReader()
    assert reader.feed(b"M" + b"x" * 80) is None
    assert reader.feed(b"M" + b"x" * 80) is None
    msg, _ = reader.feed(b"L}")
    assert "over 100 bytes" in msg["_invalid"]
    assert reader.feed(b'L{"id": 2}') == ({"id": 2}, [])


BAD_REQUESTS = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from minidock import spawner, syscalls
sp = spawner.Spawner.start()
out = {}
# garbage with no id: logged by the spawner, answered to nobody
sp._sock.send(b"Lnot json")
sp._sock.send(b"X???")
# an unknown op with an id: that request fails alone
for key, msg in (("bogus", {"op": "bogus"}), ("badspec", {"op": "run", "spec": "not a dict"})):
    try:
        sp._request(msg, [])
        out[key] = "no error"
    except syscalls.StartError as e:
        out[key] = e.message
out["pid_after"] = sp.pid
out["health"] = sp.health()
r, w = os.pipe()
try:
    sp.run({"rootfs": "/nonexistent", "argv": ["true"], "uid": 0, "gid": 0}, r, w, w)
except syscalls.StartError as e:
    out["run"] = "answered: " + e.message[:40]
out["pid_end"] = sp.pid
print(json.dumps(out), flush=True)
sp.close()
"""


def test_the_spawner_loop_survives_bad_requests():
    proc = subprocess.run([sys.executable, "-c", BAD_REQUESTS, REPO], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "unknown request 'bogus'" in out["bogus"]
    assert out["badspec"] != "no error"
    assert out["run"].startswith("answered")
    assert out["health"] is None and out["pid_after"] == out["pid_end"]
    assert "crashed" not in proc.stderr
    assert "error handling an event" not in proc.stderr


def test_stray_zombies_of_a_dead_spawners_session_are_reaped_no_others():
    import time
    stray = os.fork()
    if stray == 0:
        os.setsid()                     # a session of its own, as a spawner's: id == its pid
        os._exit(3)
    watched = os.fork()
    if watched == 0:
        os.setsid()                     # as a container init, which the pidfd watch reaps
        os._exit(5)
    ours = os.fork()
    if ours == 0:
        os._exit(4)                     # as a `subprocess` child would be: our session
    kept = os.fork()
    if kept == 0:
        os.setsid()                     # in a dead spawner's session, but watched by pidfd (an
        os._exit(6)                     # --init container's PID 1 never calls setsid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # all have exited (zombies) once /proc says "Z"
        states = []
        for pid in (stray, watched, ours, kept):
            with open(f"/proc/{pid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if states == ["Z", "Z", "Z", "Z"]:
            break
        time.sleep(0.01)
    try:
        reaped = spawner.reap_stray_zombies({stray, kept}, watched={kept})
        assert reaped == [stray]
        assert not os.path.exists(f"/proc/{stray}")
    finally:
        assert os.waitpid(watched, 0)[1] >> 8 == 5  # still ours to wait for, with its code
        assert os.waitpid(ours, 0)[1] >> 8 == 4
        assert os.waitpid(kept, 0)[1] >> 8 == 6


def test_a_request_event_made_stale_by_its_batch_never_blocks_the_loop():
    """One select() batch holds a pooled init's EOF and the daemon's socket. The pooled init's
    event is handled first and reads every datagram there (the daemon's `took` comes before the
    init can close its end); the request event is stale then. Reading it must not wait for the
    daemon's next message: the request just read waits for its answer from this loop (seen in
    the suite as a start that hung, the spawner blocked in recvmsg with a status pipe at EOF)."""
    import selectors
    daemon_end, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    init_end, pooled_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = spawnerloop._Server(mine, -1, os.getpid())
    server.sel = selectors.DefaultSelector()
    server.sel.register(mine, selectors.EVENT_READ, "request")
    pooled = spawnerloop._Pooled(4242, pooled_end)
    server.pool.append(pooled)
    server.sel.register(pooled_end, selectors.EVENT_READ, pooled)
    try:
        spawnerloop.send_message(daemon_end, {"op": "took", "pid": 4242, "spec": {}})
        init_end.close()                  # the init read its run request and closed its end
        batch = [key.data for key, _ in server.sel.select(0)]
        assert sorted(map(str, batch)) == sorted(map(str, ["request", pooled]))
        server.on_pooled_gone(pooled)     # the loop's order when epoll lists the init first
        assert pooled.sock is None and 4242 in server.taken and not server.pool   # taken, not dead
        answers = []
        reader = threading.Thread(target=lambda: answers.append(server.on_request()), daemon=True)
        reader.start()
        reader.join(5)
        assert answers == [True], "the stale request event blocked the spawner's loop"
    finally:
        daemon_end.close()                # (unblocks a blocked read: EOF)
        mine.close()
