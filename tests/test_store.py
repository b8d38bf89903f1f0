"""Atomic JSON state and Docker-style lookup by ID, name and prefix."""

import os

import pytest

from minidock import errors, store


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "obj.json"
    store.write_json(str(path), {"a": 1})
    store.write_json(str(path), {"a": 2})
    assert store.read_json(str(path)) == {"a": 2}
    assert os.listdir(tmp_path) == ["obj.json"]
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_failed_write_keeps_old_content(tmp_path):
    path = tmp_path / "obj.json"
    store.write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        store.write_json(str(path), {"a": object()})     # not serialisable: nothing written
    assert store.read_json(str(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["obj.json"]


@pytest.mark.parametrize("slots", [False, True])
def test_collection_reload_cleans_leftovers_and_reports_corrupt(tmp_path, slots):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    c.save("abc123", {"Name": "web"})
    # a crash between writing the temp file and renaming it leaves this behind:
    (tmp_path / "abc123" / ".tmp-config.json-dead").write_text("{half")
    os.mkdir(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text("{not json")
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    problems = again.load()
    assert again.objects == {"abc123": {"Name": "web"}}
    assert len(problems) == 1 and "broken" in problems[0]
    assert os.listdir(tmp_path / "abc123") == ["config.json"]


def test_resolve_by_id_name_prefix_and_ambiguity(tmp_path):
    c = store.Collection(str(tmp_path), "container")
    c.objects = {"abcdef01" * 8: {"Name": "/web"}, "abcd9999" * 8: {"Name": "/db"}, "ffff" * 16: {"Name": "/x"}}
    name_of = lambda o: o["Name"].lstrip("/")  # noqa: E731
    assert c.resolve("web", name_of) == "abcdef01" * 8
    assert c.resolve("/db", name_of) == "abcd9999" * 8
    assert c.resolve("ff", name_of) == "ffff" * 16
    assert c.resolve("abcdef", name_of) == "abcdef01" * 8
    with pytest.raises(errors.InvalidParameter, match="multiple IDs"):
        c.resolve("abcd", name_of)
    with pytest.raises(errors.NotFound, match="No such container: nope"):
        c.resolve("nope", name_of)


def test_write_atomic_without_fsync_still_replaces_whole(tmp_path):
    path = tmp_path / "hosts"
    store.write_atomic(str(path), b"old\n", mode=0o644)
    store.write_atomic(str(path), b"new\n", mode=0o644, durable=False)
    assert path.read_bytes() == b"new\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == ["hosts"]          # no temp file left behind


def test_background_write_is_complete_and_durable_when_wait_returns(tmp_path):
    path = str(tmp_path / "obj.json")
    store.write_json(path, {"state": "old"})
    wait = store.write_atomic_in_background(path, store.encode_json({"state": "new"}))
    wait()
    assert store.read_json(path) == {"state": "new"}
    assert os.listdir(tmp_path) == ["obj.json"]            # the temp file was renamed, not left


def test_background_write_reports_its_failure_to_the_waiter(tmp_path):
    wait = store.write_atomic_in_background(str(tmp_path / "missing-dir" / "obj.json"), b"{}\n")
    with pytest.raises(FileNotFoundError):
        wait()


@pytest.mark.parametrize("slots", [False, True])
def test_collection_save_in_background_leaves_memory_to_the_caller(tmp_path, slots):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    c.save("abc", {"Status": "created"})
    record = c.objects["abc"]
    wait = c.save_in_background("abc", dict(record, Status="running"))
    record["Status"] = "changed meanwhile"       # encoded at the call: this does not reach disk
    wait()
    assert store.read_record(str(tmp_path / "abc" / "config.json")) == {"Status": "running"}
    assert c.objects["abc"] is record


@pytest.mark.parametrize("slots", [False, True])
def test_collection_delete_renames_at_once_and_deletes_later(tmp_path, slots):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    c.save("abc", {"Name": "web"})
    (tmp_path / "abc" / "log").write_text("x" * 100)
    later = []
    c.delete("abc", later=later.append)
    assert "abc" not in c.objects and not os.path.exists(tmp_path / "abc")
    [trash] = os.listdir(tmp_path)
    assert trash.startswith(".tmp-")
    # a crash now leaves the renamed directory: the next load removes it
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    assert again.load() == [] and again.objects == {}
    assert os.listdir(tmp_path) == []
    later[0]()                                    # and the deferred delete copes with that
    c.save("def", {"Name": "db"})
    c.delete("def")                               # without `later`: gone now
    assert os.listdir(tmp_path) == []


def test_retire_renames_the_record_and_load_reports_it_retired(tmp_path):
    """A removal's first step: the file renamed in place (nothing written), which a load after a
    crash reads as the object, listed in `retired` so that its owner finishes the removal."""
    c = store.Collection(str(tmp_path), "container", per_dir=True)
    c.save("abc", {"Status": "exited"})
    c.save("def", {"Status": "running"})
    inode = os.stat(tmp_path / "abc" / "config.json").st_ino
    c.retire("abc")
    assert os.listdir(tmp_path / "abc") == ["config.json.removing"]
    assert os.stat(tmp_path / "abc" / "config.json.removing").st_ino == inode     # renamed, not rewritten
    assert c.objects["abc"] == {"Status": "exited"} and c.retired == {"abc"}
    again = store.Collection(str(tmp_path), "container", per_dir=True)
    assert again.load() == []
    assert again.objects == {"abc": {"Status": "exited"}, "def": {"Status": "running"}}
    assert again.retired == {"abc"}
    again.delete("abc")
    assert again.retired == set() and sorted(os.listdir(tmp_path)) == ["def"]


def test_a_save_after_retire_drops_the_mark_and_wins_over_a_leftover_one(tmp_path):
    """A removal that failed saves the record again (a dead container): that save is the truth.
    A crash between its rename and the mark's unlink leaves both files: the plain one wins."""
    c = store.Collection(str(tmp_path), "container", per_dir=True)
    c.save("abc", {"Status": "exited"})
    c.retire("abc")
    c.save("abc", {"Status": "dead"})
    assert os.listdir(tmp_path / "abc") == ["config.json"] and c.retired == set()
    os.link(tmp_path / "abc" / "config.json", tmp_path / "abc" / "config.json.removing")
    store.write_json(str(tmp_path / "abc" / "config.json"), {"Status": "dead", "Newer": True})
    again = store.Collection(str(tmp_path), "container", per_dir=True)
    assert again.load() == [] and again.retired == set()
    assert again.objects == {"abc": {"Status": "dead", "Newer": True}}
    assert os.listdir(tmp_path / "abc") == ["config.json"]


@pytest.mark.parametrize("slots", [False, True])
def test_retire_in_a_flat_collection(tmp_path, slots):
    c = store.Collection(str(tmp_path), "exec instance", slots=slots)
    c.save("e1", {"Running": False})
    c.save("e1", {"Running": True})
    c.retire("e1")
    assert os.listdir(tmp_path) == ["e1.json.removing"]
    again = store.Collection(str(tmp_path), "exec instance", slots=slots)
    assert again.load() == [] and again.objects == {"e1": {"Running": True}} and again.retired == {"e1"}
    again.delete("e1")
    assert os.listdir(tmp_path) == []


def test_remove_tree_deletes_everything_and_follows_no_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    tree = tmp_path / "trash"
    (tree / "upper" / "etc").mkdir(parents=True)
    (tree / "upper" / "etc" / "passwd").write_text("x")
    (tree / "work" / "work").mkdir(parents=True)
    os.chmod(tree / "work" / "work", 0)                  # overlay makes its work dir this way
    os.symlink(str(outside), tree / "upper" / "escape")   # a container's link to a host directory
    os.symlink("/nonexistent", tree / "dangling")
    os.mkfifo(tree / "fifo")
    store.remove_tree(str(tree))
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert (outside / "keep").read_text() == "mine"
    store.remove_tree(str(tmp_path / "not-there"))        # nothing to do, nothing raised


def test_write_new_makes_the_file_in_place_and_refuses_an_existing_one(tmp_path):
    path = tmp_path / "config.json"
    store.write_new(str(path), b'{"a": 1}\n')
    assert store.read_json(str(path)) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]
    with pytest.raises(FileExistsError):
        store.write_new(str(path), b"{}\n")
    assert store.read_json(str(path)) == {"a": 1}
    wait = store.write_atomic_in_background(str(tmp_path / "rw.json"), b"{}\n", new=True)
    wait()
    assert sorted(os.listdir(tmp_path)) == ["config.json", "rw.json"]
    c = store.Collection(str(tmp_path / "c"), "container", per_dir=True)
    c.save_new("abc", {"Status": "created"})
    assert os.listdir(tmp_path / "c" / "abc") == ["config.json"] and c.objects["abc"] == {"Status": "created"}


# -- two-slot record files (slotfile.py) ------------------------------------------------------------

def slots_of(path):
    """The two slots of a record file, as bytes."""
    data = open(path, "rb").read()
    half = len(data) // 2
    return data[:half], data[half:]


def test_a_new_slot_file_is_two_whole_slots_without_a_hole(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Status": "created"})
    path = tmp_path / "abc" / "config.json"
    first, second = slots_of(path)
    assert len(first) == 4096 and second == b" " * 4095 + b"\n"
    assert first.startswith(b"00000000000000000001 ") and first.rstrip().endswith(b'{"Status": "created"}')
    fd = os.open(path, os.O_RDONLY)
    try:
        # every byte is data: the first save into slot 1 allocates nothing (slotfile.py)
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 8192
    finally:
        os.close(fd)
    assert os.stat(path).st_blocks * 512 >= 8192


def test_a_save_writes_the_older_slot_in_place_and_keeps_the_other(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Status": "created"})
    path = tmp_path / "abc" / "config.json"
    before = os.stat(path)
    history = [slots_of(path)]
    for status in ("running", "exited", "running", "exited"):
        c.save("abc", {"Status": status})
        history.append(slots_of(path))
        after = os.stat(path)
        # what the kernel shows: the same file (inode), the same size -- written in place
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    for previous, current in zip(history, history[1:]):
        # one slot is the previous save, byte for byte; the other changed
        assert [p == n for p, n in zip(previous, current)].count(True) == 1
    assert store.read_record(str(path)) == {"Status": "exited"}
    assert [store.slotfile.decode_slot(s)[0] for s in history[-1]] == [5, 4]
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    assert again.load() == [] and again.objects == {"abc": {"Status": "exited"}}
    again.save("abc", {"Status": "dead"})                 # numbering goes on after a load
    assert [store.slotfile.decode_slot(s)[0] for s in slots_of(path)] == [5, 6]
    assert os.stat(path).st_ino == before.st_ino


def test_a_torn_newest_slot_loads_the_previous_save_and_is_written_next(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Status": "created"})
    c.save("abc", {"Status": "running"})                  # slot 1, save 2
    path = tmp_path / "abc" / "config.json"
    with open(path, "r+b") as f:                         # a crash in the middle of save 2
        f.seek(4096 + 50)
        f.write(b"#")
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    assert again.load() == [] and again.objects == {"abc": {"Status": "created"}}
    again.save("abc", {"Status": "exited"})               # into the torn slot, not over save 1
    first, second = slots_of(path)
    assert store.slotfile.decode_slot(first)[1] == b'{"Status": "created"}'
    assert store.slotfile.decode_slot(second)[1] == b'{"Status": "exited"}'


def test_a_record_with_both_slots_torn_is_reported_and_skipped(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Status": "created"})
    c.save_new("def", {"Status": "created"})
    c.save("abc", {"Status": "running"})
    path = tmp_path / "abc" / "config.json"
    with open(path, "r+b") as f:
        for offset in (45, 4096 + 45):          # inside each JSON
            f.seek(offset)
            f.write(b"#")
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    assert again.load() == ["container abc: no valid slot: slot 0 torn (checksum mismatch), "
                            "slot 1 torn (checksum mismatch)"]
    assert list(again.objects) == ["def"]


def test_a_plain_json_record_of_an_older_version_loads_and_its_save_makes_two_slots(tmp_path):
    """A daemon upgraded in place: its records are plain JSON files (write_json)."""
    os.mkdir(tmp_path / "abc")
    path = tmp_path / "abc" / "config.json"
    store.write_json(str(path), {"Status": "exited", "Name": "/old"})
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    assert c.load() == [] and c.objects == {"abc": {"Status": "exited", "Name": "/old"}}
    c.save("abc", dict(c.objects["abc"], Status="running"))
    assert len(slots_of(path)[0]) == 4096 and os.path.getsize(path) == 8192
    assert store.read_record(str(path)) == {"Status": "running", "Name": "/old"}
    inode = os.stat(path).st_ino
    c.save("abc", dict(c.objects["abc"], Status="exited"))     # in place from now on
    assert os.stat(path).st_ino == inode
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    assert again.load() == [] and again.objects["abc"]["Status"] == "exited"


def test_a_record_that_outgrows_its_slots_is_rewritten_with_larger_ones(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Log": ""})
    path = tmp_path / "abc" / "config.json"
    inode = os.stat(path).st_ino
    c.save("abc", {"Log": "x" * 6000})
    assert os.stat(path).st_ino != inode and os.path.getsize(path) == 2 * 12288
    assert store.read_record(str(path)) == {"Log": "x" * 6000}
    assert os.listdir(tmp_path / "abc") == ["config.json"]
    inode = os.stat(path).st_ino
    c.save("abc", {"Log": "short again"})                  # fits: in place
    assert os.stat(path).st_ino == inode and store.read_record(str(path)) == {"Log": "short again"}


def test_an_older_save_written_after_a_newer_one_is_dropped(tmp_path):
    """A background save encoded first, written last (its writer thread ran late): the newer
    save, from the later call, stays on disk."""
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"Status": "created"})
    path = str(tmp_path / "abc" / "config.json")
    earlier = c._encode("abc", {"Status": "running"})
    later = c._encode("abc", {"Status": "exited"})
    c._write_slot(path, *later)
    c._write_slot(path, *earlier)
    assert store.read_record(path) == {"Status": "exited"}
    assert [store.slotfile.decode_slot(s)[0] for s in slots_of(path)] == [1, 3]
    # and through the public calls, whichever order the writer thread takes
    wait = c.save_in_background("abc", {"Status": "running"})
    c.save("abc", {"Status": "exited", "ExitCode": 3})
    wait()
    assert store.read_record(path) == {"Status": "exited", "ExitCode": 3}


def test_save_without_flush_then_with(tmp_path):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=True)
    c.save_new("abc", {"n": 0})
    path = tmp_path / "abc" / "config.json"
    for n in range(1, 5):
        c.save("abc", {"n": n}, durable=False)
    c.save("abc", {"n": 5})
    assert store.read_record(str(path)) == {"n": 5}
    assert [store.slotfile.decode_slot(s)[0] for s in slots_of(path)] == [5, 6]


@pytest.mark.parametrize("slots", [False, True])
def test_retire_and_a_save_after_it_with_either_format(tmp_path, slots):
    c = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    c.save("abc", {"Status": "exited"})
    inode = os.stat(tmp_path / "abc" / "config.json").st_ino
    c.retire("abc")
    assert os.listdir(tmp_path / "abc") == ["config.json.removing"]
    assert os.stat(tmp_path / "abc" / "config.json.removing").st_ino == inode
    again = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    assert again.load() == [] and again.objects == {"abc": {"Status": "exited"}} and again.retired == {"abc"}
    again.save("abc", {"Status": "dead"})                 # a removal that failed
    assert os.listdir(tmp_path / "abc") == ["config.json"] and again.retired == set()
    assert store.read_record(str(tmp_path / "abc" / "config.json")) == {"Status": "dead"}
    again.save("abc", {"Status": "dead", "n": 2})
    third = store.Collection(str(tmp_path), "container", per_dir=True, slots=slots)
    assert third.load() == [] and third.objects == {"abc": {"Status": "dead", "n": 2}}
    assert third.retired == set()


def test_the_system_calls_of_slot_saves(tmp_path):
    """What the kernel is asked, traced with strace(1): a save into a slot is one pwrite at the
    older slot's offset and one fdatasync -- no fsync, no rename. A save without the flush
    has no fdatasync; the next one flushes *before* it writes over the other slot (slotfile.py)."""
    import re
    import shutil
    import subprocess
    import sys
    if shutil.which("strace") is None:
        pytest.skip("needs strace(1)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = (f"import os, sys; sys.path.insert(0, {repo!r})\n"
              "from minidock import store\n"
              f"c = store.Collection({str(tmp_path)!r}, 'container', per_dir=True, slots=True)\n"
              "c.save_new('abc', {'n': 0})\n"
              "os.write(1, b'MARK')\n"
              "c.save('abc', {'n': 1})\n"
              "c.save('abc', {'n': 2}, durable=False)\n"
              "c.save('abc', {'n': 3})\n"
              "os.write(1, b'DONE')\n")
    trace = tmp_path / "trace"
    run = subprocess.run(["strace", "-o", str(trace), "-e", "trace=pwrite64,fdatasync,fsync,rename,renameat,"
                          "renameat2,write", sys.executable, "-c", script], capture_output=True, timeout=60)
    if run.returncode != 0 and b"PTRACE" in run.stderr.upper():
        pytest.skip(f"strace cannot trace here: {run.stderr.decode(errors='replace')}")
    assert run.returncode == 0 and run.stdout == b"MARKDONE", run.stderr
    lines = trace.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("write(1, \"MARK\""))
    end = next(i for i, line in enumerate(lines) if line.startswith("write(1, \"DONE\""))
    calls = []
    for line in lines[begin + 1:end]:
        name = line.split("(", 1)[0]
        if name == "pwrite64":
            seq, size, offset = re.match(r'pwrite64\(\d+, "(\d{20}) .*, (\d+), (\d+)\) = \2$', line).groups()
            calls.append(("pwrite64", int(seq), int(offset)))
        else:
            calls.append((name,))
    assert calls == [
        ("pwrite64", 2, 4096), ("fdatasync",),        # save 2 into slot 1, flushed
        ("pwrite64", 3, 0),                           # save 3 into slot 0, not flushed
        ("fdatasync",), ("pwrite64", 4, 4096), ("fdatasync",),   # save 3 flushed before slot 1 is overwritten
    ]
