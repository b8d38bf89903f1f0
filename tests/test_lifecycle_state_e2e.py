"""What a container's lifecycle leaves on disk at each answered step, and after a SIGKILL.

The daemon answers a create, a start or a removal only once the state it describes is written
(store.py: some of those writes run beside other work, but the reply waits for them). So a
SIGKILL right after the answer finds that state on disk, and the restarted daemon agrees with
what the client was told. AutoRemove (`run --rm`) containers: the rootfs is mounted volatile,
the exit and the removal are one save, and one that dies with the daemon is removed at its
restart.
"""

import json
import os
import time

import pytest

from support import Daemon, wait_for
from test_crash_leftovers_e2e import data_root_problems


@pytest.fixture(scope="module")
def d():
    from rootfs import make_rootfs_tar
    daemon = Daemon().start()
    try:
        daemon.docker("import", make_rootfs_tar(os.path.join(daemon.base, "busybox.tar")), "busybox")
        yield daemon
    finally:
        daemon.cleanup()


def record_path(d, cid):
    return os.path.join(d.data_root, "containers", cid, "config.json")


def record(d, cid):
    """The container's record as its file holds it (two slots, the newest valid one: slotfile.py)."""
    from minidock import store
    return store.read_record(record_path(d, cid))


def restart(d, sig_kill=True):
    d.kill() if sig_kill else d.stop()
    d.start()


def root_options(mountinfo):
    """The super options of the mount at / in a container's /proc/self/mountinfo."""
    line = next(l for l in mountinfo.splitlines() if l.split()[4] == "/")
    return [o.replace("fsync=", "") for o in line.split(" - ")[1].split()[2].split(",")]


def test_an_answered_start_is_on_disk_when_the_daemon_is_killed(d):
    cid = d.docker("create", "busybox", "sleep", "60").stdout.decode().strip()
    d.client().post(f"/containers/{cid}/start")
    d.kill()                                   # right after the answer
    st = record(d, cid)["State"]
    assert st["Status"] == "running" and st["StartedAt"] != "0001-01-01T00:00:00Z"
    d.start()
    st = json.loads(d.docker("inspect", cid).stdout)[0]["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 137
    assert st["StartedAt"] != "0001-01-01T00:00:00Z"      # it did start, as the client was told
    d.docker("rm", cid)


def test_a_record_whose_layer_was_not_made_durable_is_removed_at_start(d):
    """create() makes the record and the layer's rw.json durable at once: a crash before the
    answer may keep the record alone. The restarted daemon removes such a container (and the
    anonymous volume made for it): the create was never answered."""
    cid = d.docker("create", "-v", "/anon", "busybox", "true").stdout.decode().strip()
    assert len(d.docker("volume", "ls", "-q").stdout.split()) == 1
    d.stop()
    os.unlink(os.path.join(d.data_root, "image", "layers", "containers", cid, "rw.json"))
    d.start()
    assert d.docker("ps", "-aq").stdout == b""
    assert d.docker("volume", "ls", "-q").stdout == b""
    assert "writable layer is incomplete" in d.read_log()
    d.stop()
    assert data_root_problems(d.data_root) == []
    d.start()


def only_kept_is_left(d, kept):
    """Only the container `kept` is left, and no volume; once it is removed too, the data root
    holds nothing stray (and the daemon starts on it again)."""
    assert d.docker("ps", "-aq").stdout.decode().split() == [kept[:12]]
    assert d.docker("volume", "ls", "-q").stdout == b""
    d.docker("rm", kept)
    d.stop()
    assert data_root_problems(d.data_root) == []
    d.start()


def test_a_create_cut_short_while_writing_its_files_is_removed_at_start(d):
    """create() writes the record and the layer's rw.json in place (store.write_new: new files,
    one journal commit each); a crash part-way leaves one of them short. The restarted daemon
    takes a record that does not parse as never made (its directory goes) and a layer whose
    rw.json does not parse as incomplete (its container goes), with their anonymous volumes."""
    short_record = d.docker("create", "-v", "/anon", "busybox", "true").stdout.decode().strip()
    short_layer = d.docker("create", "-v", "/anon", "busybox", "true").stdout.decode().strip()
    kept = d.docker("create", "busybox", "true").stdout.decode().strip()
    d.stop()
    for path in (record_path(d, short_record),
                 os.path.join(d.data_root, "image", "layers", "containers", short_layer, "rw.json")):
        with open(path, "r+b") as f:
            f.truncate(7)
    d.start()
    only_kept_is_left(d, kept)


def test_run_rm_mounts_the_rootfs_volatile_and_leaves_nothing(d):
    # the kernel's own account of the container's root: overlay, with fsync volatile
    assert "volatile" in root_options(d.docker("run", "--rm", "busybox", "cat", "/proc/self/mountinfo").stdout.decode())
    cid = d.docker("run", "-d", "busybox", "cat", "/proc/self/mountinfo").stdout.decode().strip()
    d.docker("wait", cid)
    assert "volatile" not in root_options(d.docker("logs", cid).stdout.decode())
    d.docker("rm", cid)
    assert d.docker("ps", "-aq").stdout == b""
    containers = os.path.join(d.data_root, "containers")
    layers = os.path.join(d.data_root, "image", "layers")
    assert [n for n in os.listdir(containers) if not n.startswith(".tmp-")] == []
    assert os.listdir(os.path.join(layers, "containers")) == []
    # the renamed files are deleted after the reply, on the trash worker
    wait_for(lambda: os.listdir(os.path.join(layers, "tmp")) == [] and os.listdir(containers) == [],
             what="the removed containers' files to be deleted")


def test_force_removing_a_running_rm_container_is_one_removal(d):
    """Its exit removes it (AutoRemove); `docker rm -f` waits for that removal and answers
    success, rather than racing it into "removal already in progress"."""
    for _ in range(3):
        cid = d.docker("run", "-d", "--rm", "busybox", "sleep", "60").stdout.decode().strip()
        d.docker("rm", "-f", cid)
        assert d.docker("ps", "-aq").stdout == b""


def test_an_rm_container_that_died_with_the_daemon_is_removed_at_restart(d):
    d.docker("run", "-d", "--rm", "-v", "/anon", "busybox", "sleep", "60")
    kept = d.docker("run", "-d", "busybox", "sleep", "60").stdout.decode().strip()
    restart(d)
    only_kept_is_left(d, kept)


def test_a_removal_cut_short_by_a_crash_is_finished_at_restart(d):
    """A removal's first durable step renames the record's file in place (config.json ->
    config.json.removing, store.Collection.retire) instead of saving a "removing" record; the
    layer, the cgroup and the record's directory go after it. A crash right after that rename
    leaves exactly the disk made here by hand: the restarted daemon reads the container as
    removing and finishes the removal (its layer too)."""
    cid = d.docker("create", "busybox", "true").stdout.decode().strip()
    kept = d.docker("create", "busybox", "true").stdout.decode().strip()
    d.stop()
    directory = os.path.join(d.data_root, "containers", cid)
    os.rename(os.path.join(directory, "config.json"), os.path.join(directory, "config.json.removing"))
    d.start()
    assert d.docker("ps", "-aq").stdout.decode().split() == [kept[:12]]
    assert not os.path.exists(directory)
    assert not os.path.exists(os.path.join(d.data_root, "image", "layers", "containers", cid))
    d.docker("rm", kept)
    d.stop()
    assert data_root_problems(d.data_root) == []
    d.start()


def test_an_answered_removal_leaves_no_record_after_a_sigkill(d):
    cid = d.docker("create", "busybox", "true").stdout.decode().strip()
    d.client().delete(f"/containers/{cid}")
    d.kill()                                   # right after the answer
    assert not os.path.exists(os.path.join(d.data_root, "containers", cid))
    d.start()
    assert d.docker("ps", "-aq").stdout == b""
    d.stop()
    assert data_root_problems(d.data_root) == []
    d.start()


def daemon_mounts(d):
    """The mount points in the daemon's own mount namespace (where it mounts rootfs)."""
    with open(f"/proc/{d.proc.pid}/mountinfo") as f:
        return [line.split()[4] for line in f]


def test_the_rootfs_is_unmounted_after_the_exit_and_a_quick_restart_keeps_its_mount(d):
    """The exit is told to waiters first, the rootfs unmounted after (its unmount syncs the
    file system): it does go, and a start that comes first -- here in a loop, right after each
    wait -- finds its rootfs mounted, not unmounted under it."""
    cid = d.docker("run", "-d", "busybox", "true").stdout.decode().strip()
    merged = os.path.join(d.data_root, "image", "layers", "containers", cid, "merged")
    d.docker("wait", cid)
    wait_for(lambda: merged not in daemon_mounts(d), what="the rootfs to be unmounted after the exit")
    c = d.client()
    for _ in range(5):
        c.post(f"/containers/{cid}/start")
        assert c.post(f"/containers/{cid}/wait")["StatusCode"] == 0
    cid2 = d.docker("run", "-d", "busybox", "sh", "-c", "exit 3").stdout.decode().strip()
    for _ in range(5):
        assert c.post(f"/containers/{cid2}/wait")["StatusCode"] == 3
        c.post(f"/containers/{cid2}/start")
        assert d.docker("logs", cid2).stdout == b""
    # every run found its command: an unmount under a starting run would show as exit 127
    assert c.post(f"/containers/{cid2}/wait")["StatusCode"] == 3
    d.docker("rm", "-f", cid, cid2)
    wait_for(lambda: not any(cid in m or cid2 in m for m in daemon_mounts(d)), what="no mount left")


def test_user_ids_are_looked_up_again_once_the_container_has_its_own_etc(d, tmp_path):
    """A container's user ids are found in its own /etc/passwd; the answer is kept per image
    while the container's /etc is the image's (spec.UserIds). Two containers of one image, same
    `-u 1234`: the first finds no passwd entry (gid 0); the second gets a passwd of its own
    (docker cp, before its start), which must be read: gid 777."""
    first = d.docker("run", "-u", "1234", "busybox", "id", "-g").stdout.decode().strip()
    assert first == "0"
    cid = d.docker("create", "-u", "1234", "busybox", "id", "-g").stdout.decode().strip()
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1234:777::/:/bin/sh\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(passwd, 0o644)
    d.docker("cp", str(passwd), f"{cid}:/etc/passwd")
    d.docker("start", cid)
    assert d.docker("wait", cid).stdout.decode().strip() == "0"
    assert d.docker("logs", cid).stdout.decode().strip() == "777"
    d.docker("rm", cid)


def test_a_containers_saves_write_its_record_in_place(d):
    """After the create made the file, every save (start, exit, start again, rename) overwrites
    a slot of the same file: same inode, same size, as the kernel shows it (slotfile.py)."""
    cid = d.docker("create", "--name", "inplace", "busybox", "true").stdout.decode().strip()
    before = os.stat(record_path(d, cid))
    for _ in range(2):
        d.docker("start", cid)
        assert d.docker("wait", cid).stdout.decode().strip() == "0"
    d.docker("rename", "inplace", "inplace2")
    after = os.stat(record_path(d, cid))
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert before.st_size % 8192 == 0
    assert record(d, cid)["Name"] == "/inplace2" and record(d, cid)["State"]["Status"] == "exited"
    restart(d)
    assert json.loads(d.docker("inspect", cid).stdout)[0]["Name"] == "/inplace2"
    d.docker("rm", cid)


def test_an_execs_start_and_exit_write_its_record_in_place(d):
    """An exec instance's record too: made whole at its create, then its start and its exit
    each overwrite a slot of the same file (inode and size unchanged), and the newest slot
    holds the exit code the API reports."""
    from minidock import store
    cid = d.docker("run", "-d", "busybox", "sleep", "100").stdout.decode().strip()
    api = d.client()
    eid = api.post(f"/containers/{cid}/exec", body={"Cmd": ["sh", "-c", "exit 3"]})["Id"]
    path = os.path.join(d.data_root, "execs", eid + ".json")
    before = os.stat(path)
    assert store.read_record(path)["ExitCode"] is None
    api.post(f"/exec/{eid}/start", body={"Detach": True})
    wait_for(lambda: api.get(f"/exec/{eid}/json")["ExitCode"] is not None, 10, "the exec's exit")
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    on_disk = store.read_record(path)
    assert on_disk["ExitCode"] == 3 and on_disk["Running"] is False
    d.docker("rm", "-f", cid)


def test_a_record_written_by_an_older_version_as_plain_json_still_loads(d):
    """A daemon upgraded in place finds its containers' records as plain JSON files (store.py
    before two-slot files): it keeps the containers, and their next save makes the two slots."""
    cid = d.docker("create", "--name", "upgraded", "busybox", "sh", "-c", "exit 4").stdout.decode().strip()
    d.stop()
    old = record(d, cid)
    with open(record_path(d, cid), "r+b") as f:       # in place: the file stays the daemon user's
        f.truncate(0)
        f.write(json.dumps(old, sort_keys=True).encode() + b"\n")
    d.start()
    assert json.loads(d.docker("inspect", "upgraded").stdout)[0]["Id"] == cid
    d.docker("start", cid)
    assert d.docker("wait", cid).stdout.decode().strip() == "4"
    with open(record_path(d, cid), "rb") as f:
        assert f.read(1) != b"{" and os.fstat(f.fileno()).st_size % 8192 == 0
    assert record(d, cid)["State"]["ExitCode"] == 4
    d.docker("rm", cid)


def unreadable_records(log_path):
    with open(log_path, "rb") as f:
        return [line for line in f if b"skipping unreadable container state" in line]


def test_kill_9_while_records_are_saved_then_restart_reads_every_record(d):
    """Lifecycles (create, start, wait, rename, remove; and a restart policy's loop) driven from
    two client threads while the daemon is SIGKILLed at a random moment, six times. What each
    thread was last *answered* is on disk (a wait: the exit; a rename: the name; a removal: no
    record), every container's record is read at the restart (none skipped as torn), and the
    data root is consistent at the end."""
    import random
    import threading
    rng = random.Random(15)
    for round_ in range(6):
        stop = threading.Event()
        answered = {}                     # thread -> (cid, request, argument) last answered
        answers = []

        def churn(tag):
            c = d.client()

            def call(cid, request, argument, method, path, **kw):
                answered.pop(tag, None)  # in flight: nothing known until it is answered
                result = method(path, **kw)
                answered[tag] = (cid, request, argument)
                answers.append(request)
                return result
            try:
                for i in range(1000):
                    if stop.is_set():
                        return
                    cid = c.post("/containers/create", params={"name": f"k{round_}{tag}{i}"},
                                 body={"Image": "busybox", "Cmd": ["true"]})["Id"]
                    for name in (f"k{round_}{tag}{i}", f"r{round_}{tag}{i}"):
                        if name[0] == "r":
                            call(cid, "rename", name, c.post, f"/containers/{cid}/rename", params={"name": name})
                        c.post(f"/containers/{cid}/start")
                        call(cid, "wait", name, c.post, f"/containers/{cid}/wait")
                    if i % 2:
                        call(cid, "delete", None, c.delete, f"/containers/{cid}")
            except Exception:                 # the daemon was killed under the call
                return

        d.docker("run", "-d", "--restart", "always", "busybox", "sh", "-c", "exit 1")
        threads = [threading.Thread(target=churn, args=(t,)) for t in "ab"]
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) >= 2, timeout=60, what="the first answers")
        time.sleep(rng.uniform(0.0, 0.8))
        d.kill()
        stop.set()
        for t in threads:
            t.join(30)
        for cid, request, argument in answered.values():
            if request == "delete":
                assert not os.path.exists(record_path(d, cid))
            else:
                on_disk = record(d, cid)
                assert on_disk["Name"] == "/" + argument
                if request == "wait":
                    assert (on_disk["State"]["Status"], on_disk["State"]["ExitCode"]) == ("exited", 0)
        skipped = unreadable_records(d.log_path)
        d.start()
        listed = d.docker("ps", "-aq", "--no-trunc").stdout.decode().split()
        for cid in listed:
            assert record(d, cid)["Id"] == cid
        states = {s["State"]["Status"] for s in json.loads(d.docker("inspect", *listed).stdout)}
        assert states <= {"created", "exited", "running", "restarting"}, states
        # A create killed before its file was written leaves no file or a short one: a create
        # never answered, swept (store.write_new). A record with both slots torn would be a
        # save that broke the one before it.
        assert [r for r in unreadable_records(d.log_path)[len(skipped):]
                if b"not two slots" not in r and b"no config.json" not in r] == []
    d.docker("rm", "-f", *d.docker("ps", "-aq").stdout.decode().split())
    d.stop()
    assert data_root_problems(d.data_root) == []
    d.start()
