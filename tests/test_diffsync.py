"""diffsync: a layer's diff/ synced in batches (sync.json) and, after a reboot, extracted again
from layer.tar when no sync vouched for it. The reboot is played by rewriting a layer's stamp
and the record with another boot id; the damage a power cut leaves by truncating a file of
diff/ (ext4 writes a file's blocks, and so its contents, only at writeback)."""

import io
import json
import logging
import os

from minidock import diffsync, layers, store
from support import wait_for
from tests.rootfs_helpers import tar_bytes

BOOT = diffsync.boot_id()


def _layer(st, name, text):
    meta = st.register(io.BytesIO(tar_bytes([(name, "file", text)])))
    return meta, os.path.join(st.diff_dir(meta["chain_id"]), name)


def _restamp(st, meta, boot, placed):
    path = os.path.join(os.path.dirname(st.diff_dir(meta["chain_id"])), "meta.json")
    with open(path) as f:
        stored = json.load(f)
    stored.update(boot=boot, placed=placed)
    store.write_json(path, stored)


def test_a_placed_layer_is_stamped_and_a_quiet_moment_later_vouched_for(tmp_path):
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 0.05
    meta, _ = _layer(st, "a", "1")
    assert meta["boot"] == BOOT and isinstance(meta["placed"], int)
    record = tmp_path / "sync.json"
    wait_for(record.exists, what="sync.json after the batch's syncfs")
    with open(record) as f:
        synced = json.load(f)
    assert synced["boot"] == BOOT and synced["upto"] >= meta["placed"]


def test_after_a_reboot_an_unvouched_layer_is_extracted_again_and_others_are_left(tmp_path, caplog):
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600              # this store's own sync must not replace the record below
    lost, lost_file = _layer(st, "lost", "written before the power cut")
    kept, kept_file = _layer(st, "kept", "synced before it")
    old, old_file = _layer(st, "old", "from a boot before")
    now, now_file = _layer(st, "now", "this boot")
    # The previous boot synced up to 50: "kept" (placed at 40) is on disk, "lost" (at 60) may
    # not be; "old" comes from a boot before that one, whose daemon checked it.
    _restamp(st, lost, "previous-boot", 60)
    _restamp(st, kept, "previous-boot", 40)
    _restamp(st, old, "ancient-boot", 10**15)
    store.write_json(str(tmp_path / "sync.json"), {"boot": "previous-boot", "upto": 50})
    for path in (lost_file, kept_file, old_file, now_file):
        os.truncate(path, 0)
    lost_inode = os.stat(os.path.dirname(lost_file)).st_ino
    with caplog.at_level(logging.WARNING, logger="minidock.layers"):
        st = layers.LayerStore(str(tmp_path))       # the daemon's start
    with open(lost_file) as f:
        assert f.read() == "written before the power cut"
    assert os.stat(os.path.dirname(lost_file)).st_ino != lost_inode       # a new tree, swapped in
    for path in (kept_file, old_file, now_file):
        assert os.path.getsize(path) == 0, path                            # not extracted again
    assert [r for r in caplog.records if lost["chain_id"] in r.getMessage()]
    assert os.listdir(tmp_path / "tmp") == []
    # The check is followed by a sync that vouches for it, under this boot's name.
    st.durability.quiet = 0.05
    wait_for(lambda: store.read_json(str(tmp_path / "sync.json"))["boot"] == BOOT,
             what="sync.json naming this boot")


def test_without_any_record_a_layer_of_an_earlier_boot_is_extracted_again(tmp_path):
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600                      # no sync.json from this run
    meta, path = _layer(st, "f", "contents")
    _restamp(st, meta, "previous-boot", 1)
    os.truncate(path, 0)
    assert not (tmp_path / "sync.json").exists()
    layers.LayerStore(str(tmp_path))
    with open(path) as f:
        assert f.read() == "contents"


def test_a_layer_without_a_stamp_is_left_alone(tmp_path):
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600
    meta, path = _layer(st, "f", "contents")
    meta_path = os.path.join(os.path.dirname(st.diff_dir(meta["chain_id"])), "meta.json")
    stored = store.read_json(meta_path)
    del stored["boot"], stored["placed"]            # placed before layers were stamped
    store.write_json(meta_path, stored)
    store.write_json(str(tmp_path / "sync.json"), {"boot": "previous-boot", "upto": 0})
    os.truncate(path, 0)
    layers.LayerStore(str(tmp_path))
    assert os.path.getsize(path) == 0


def test_a_layer_tar_that_does_not_extract_is_logged_and_the_store_opens(tmp_path, caplog):
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600
    meta, path = _layer(st, "f", "contents")
    _restamp(st, meta, "previous-boot", 1)
    with open(st.tar_path(meta["chain_id"]), "r+b") as f:      # same size, not a tar any more
        f.write(b"\xff" * 1024)
    with caplog.at_level(logging.ERROR, logger="minidock.layers"):
        layers.LayerStore(str(tmp_path))
    assert [r for r in caplog.records if "could not extract it again" in r.getMessage()]
    assert os.listdir(tmp_path / "tmp") == []


def test_a_layer_of_this_boot_placed_after_the_last_sync_gets_one_at_start(tmp_path):
    # the daemon was killed within a second of a pull: nothing to extract, but a sync is due
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600
    meta, _ = _layer(st, "f", "contents")
    store.write_json(str(tmp_path / "sync.json"), {"boot": BOOT, "upto": meta["placed"] - 1})
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 0.05
    wait_for(lambda: store.read_json(str(tmp_path / "sync.json"))["upto"] >= meta["placed"],
             what="a sync at start-up")


def test_closing_runs_the_pending_sync_at_once(tmp_path):
    # a clean stop within a second of a pull: the record is written by the stop itself, whole
    st = layers.LayerStore(str(tmp_path))
    st.durability.quiet = 3600
    meta, _ = _layer(st, "f", "contents")
    assert not (tmp_path / "sync.json").exists()
    st.durability.close()
    assert store.read_json(str(tmp_path / "sync.json"))["upto"] >= meta["placed"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    st.durability.placed()                          # after the stop: nothing more is started
    assert st.durability._last is None
