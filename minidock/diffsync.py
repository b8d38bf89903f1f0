"""Extracted layers made durable in batches, and extracted again after a power cut.

A layer is stored twice (layers.py): layer.tar, its exact bytes, and diff/, the same tar
extracted for overlayfs to stack. layer.tar is fsync'ed before the layer is placed -- its
writeback starts while the bytes still arrive, so the import hardly waits for it. Syncing diff/
as well would make every import and pull wait for a second copy of the same bytes, the
extracted tree, to reach the disk (one fsync per file, or one syncfs of all of it). What a
crash of the *daemon* (SIGKILL) leaves is never at risk: the kernel keeps the written pages and
writes them out itself. What a crash of the *machine* leaves -- a power cut within the kernel's
writeback delay, ~30 s -- may be a diff/ whose files exist with their contents gone (ext4
allocates blocks only when it writes them out). So diff/ is made durable in batches, and
checked after a reboot:

- Each placed layer's meta.json carries the boot it was written in -- the kernel's random
  boot id (/proc/sys/kernel/random/boot_id), new at every boot -- and the moment it was placed
  (CLOCK_MONOTONIC, which counts from that boot): `stamp()`.
- Once placements have been quiet for a moment (`QUIET`), a thread calls syncfs(2) on the
  store's file system: it returns when everything written before the call is on disk. It then
  records in <store>/sync.json `{"boot": B, "upto": T}`, T the moment just before the call:
  every layer of boot B placed up to T is durable. Many layers -- a pull's, a build's -- share
  one syncfs.
- At start-up (`repair`), before anything mounts a layer, a layer from an earlier boot that
  sync.json does not vouch for is extracted again from its layer.tar into a fresh directory,
  which is swapped with diff/ in one renameat2(RENAME_EXCHANGE). The next syncfs (the check
  schedules one) then vouches for it, and sync.json names the new boot. Every daemon that writes
  sync.json ran that check first, so a record also vouches for all layers of boots before its
  own. A layer of the current boot is never touched: the kernel still holds whatever it has not
  written yet. Nor is one stamped without a boot (placed before layers were stamped, or where
  /proc has no boot id): nothing tells whether it was synced.

A clean stop of the daemon finishes the batch (`close()`: it waits for a sync in flight and runs
a pending one), so after a proper stop the next boot has nothing to check.

What you can observe: `cat <data-root>/image/layers/sync.json` a second or so after a pull; the
daemon's log names every layer it extracts again at start-up.
"""

import logging
import os
import shutil
import threading
import time

from minidock import errors, store, syscalls

log = logging.getLogger("minidock.layers")

QUIET = 1.0                     # seconds without a placement before the batch's syncfs
RECORD = "sync.json"


def boot_id():
    """This boot's id (the kernel draws a new one at every boot), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


class Durability:
    """The diff/ durability of one layer store (rooted at `root`, which holds layers/ and
    tmp/): stamps for placed layers, the batched syncfs, the start-up check."""

    def __init__(self, root, boot=None, quiet=QUIET):
        self.root = root
        self.boot = boot_id() if boot is None else boot
        self.quiet = quiet
        self._cond = threading.Condition()
        self._last = None               # monotonic time of the last placement not synced yet
        self._thread = None
        self._syncing = False           # the thread is in sync_now()
        self._closing = False

    def stamp(self):
        """What a layer's meta.json records of its placement (taken after diff/ is written)."""
        return {"boot": self.boot, "placed": time.monotonic_ns()}

    # -- the batch -------------------------------------------------------------------------------
    def placed(self):
        """A layer was placed: sync once placements have been quiet for `quiet` seconds."""
        with self._cond:
            if self._closing:
                return                  # the daemon is stopping: the next boot's check covers it
            self._last = time.monotonic()
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="layer-sync", daemon=True)
                try:
                    thread.start()
                except RuntimeError:        # no thread to be had (a fork bomb's limit): next time
                    log.warning("layer sync: cannot start a thread; the batch waits for the "
                                "next layer")
                    return
                self._thread = thread
            self._cond.notify()

    def _run(self):
        while True:
            with self._cond:
                while self._last is None or self._last + self.quiet > time.monotonic():
                    if self._closing:
                        return
                    due = None if self._last is None else self._last + self.quiet - time.monotonic()
                    self._cond.wait(due)
                self._last = None
                self._syncing = True
            try:
                self.sync_now()
            except OSError as exc:
                log.warning("layer sync: %s; trying again with the next layer", exc)
            finally:
                with self._cond:
                    self._syncing = False
                    self._cond.notify_all()

    def close(self, timeout=10.0):
        """At the daemon's stop: finish the batch now -- wait for a sync in flight (its record
        is not left half-written), run a pending one here -- so that a clean stop leaves
        nothing for the next boot to check."""
        with self._cond:
            self._closing = True
            pending, self._last = self._last is not None, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._syncing, timeout)
        if pending:
            try:
                self.sync_now()
            except OSError as exc:
                log.warning("layer sync at stop: %s", exc)

    def sync_now(self):
        """syncfs(2) the store's file system, then record how far that vouches."""
        upto = time.monotonic_ns()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)
        if self.boot is not None:
            store.write_json(os.path.join(self.root, RECORD), {"boot": self.boot, "upto": upto})

    # -- the start-up check ------------------------------------------------------------------------
    def record(self):
        try:
            found = store.read_json(os.path.join(self.root, RECORD))
        except (OSError, ValueError):
            return None
        ok = isinstance(found, dict) and isinstance(found.get("upto"), int)
        return found if ok else None

    def vouched(self, meta, record):
        """Whether a layer's diff/ is known to be on disk, or cannot have lost anything."""
        boot = meta.get("boot")
        if boot is None or boot == self.boot:
            return True
        if record is None:
            return False
        # a boot before the record's was checked by the daemon that wrote it
        return boot != record.get("boot") or meta.get("placed", 0) <= record["upto"]

    def repair(self, extract, read_meta):
        """Extract again every layer a power cut may have damaged; -> how many. `extract(tar,
        dest)` unpacks a layer tar into the empty directory `dest`; `read_meta(name)` is the
        meta.json of layers/<name> (the store's cached reader)."""
        if self.boot is None:
            return 0
        record = self.record()
        layers_dir = os.path.join(self.root, "layers")
        # A sync follows the check when there is anything to vouch for: what was checked (and
        # this boot's name), or this boot's layers placed after its last sync (the daemon
        # was killed within `quiet` of a pull).
        sync = record is None or record.get("boot") != self.boot
        seen = repaired = 0
        for name in sorted(os.listdir(layers_dir)):
            try:
                meta = read_meta(name)
            except (OSError, ValueError, errors.NotFound):
                continue                # not a layer (debris without meta.json: layers.py's)
            seen += 1
            if meta.get("boot") == self.boot and not sync:
                sync = meta.get("placed", 0) > record["upto"]
            if self.vouched(meta, record):
                continue
            if self._extract_again(os.path.join(layers_dir, name), meta, extract):
                repaired += 1
        if seen and sync:
            self.placed()
        return repaired

    def _extract_again(self, layer, meta, extract):
        tar = os.path.join(layer, "layer.tar")
        try:
            size = os.stat(tar).st_size
        except OSError as exc:
            log.error("layer %s: no layer.tar to extract again (%s)", meta.get("chain_id"), exc)
            return False
        if size != meta.get("tar_size", size):
            log.error("layer %s: layer.tar is %d bytes, not %s: left as it is",
                      meta.get("chain_id"), size, meta.get("tar_size"))
            return False
        log.warning("layer %s: placed in an earlier boot (%s) and not known to be on disk: "
                    "extracting it again from layer.tar", meta.get("chain_id"), meta.get("boot"))
        work = os.path.join(self.root, "tmp", "again-" + os.urandom(6).hex())
        try:
            os.mkdir(work, 0o700)
            fresh = os.path.join(work, "diff")
            os.mkdir(fresh, 0o755)
            extract(tar, fresh)
            diff = os.path.join(layer, "diff")
            if os.path.lexists(diff):
                syscalls.exchange(fresh, diff)      # the old tree is in work/ now
            else:
                os.rename(fresh, diff)
            return True
        except (OSError, errors.MinidockError) as exc:     # the daemon starts all the same
            log.error("layer %s: could not extract it again: %s", meta.get("chain_id"), exc)
            return False
        finally:
            shutil.rmtree(work, ignore_errors=True)
