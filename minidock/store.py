"""State on disk: one JSON file per object, written atomically, loaded into memory at start.

Every object a user would miss after a crash (a container's config and state, a volume, an exec
instance, the tag index) is a JSON file under the data root. Writing one follows the classic
sequence that makes a crash at any moment leave either the old or the new file, never half of one:

    1. write the new content to a temporary file in the same directory,
    2. fsync it (the data reaches the disk before the name does),
    3. rename it over the old name (rename(2) is atomic within a file system),
    4. fsync the directory (the rename itself is durable).

Leftover temporary files (a crash between 1 and 3) start with `.tmp-` and are removed at load.

A record saved again and again (a container's: start, exit, restarts, health) can be kept in a
*two-slot file* instead (`Collection(..., slots=True)`, slotfile.py): the file is made once
with room for two copies, and each later save overwrites the older copy in place and flushes it
with fdatasync -- no rename, no metadata written: two block requests, the slot and a cache
flush, where the sequence above issues eight (0.18 ms where it takes 0.67 ms). A crash tears at most the copy being written; a load takes the newest valid
one. A save whose record outgrew the slots, or the first save after retire() (below), writes
the whole file by the sequence above. A record file written before slots existed (plain JSON)
still loads, and its first save rewrites it in two slots.

The two fsyncs are most of a save's time (0.5 ms on an idle disk, 1-3 ms while other programs
write: each one waits for a journal commit). They are never skipped for such a record, but a
save whose content is known before the work it describes ends can run *beside* that work:
`Collection.save_in_background()` encodes the record at once and writes it on a writer thread,
returning `wait()`; the caller answers its client only after `wait()`. A container's start
writes its "running" record while the spawner starts the process, so the reply waits for
the slower of the two instead of their sum.

Deleting an object renames its directory to a `.tmp-` name first (atomic: the object is gone)
and removes the files after, maybe on another thread (`delete(later=...)`); a crash in between
leaves a `.tmp-` directory, removed at load like the temporary files.

A removal that takes several steps (a container: its layer, cgroup, volumes, then its record)
must finish after a crash in the middle. Its intent is recorded by *retiring* the object first
(`retire()`): its file is renamed in place to `<file>.removing` and the directory fsync'd --
one rename and one journal commit, where saving a "removing" status would write, fsync and
rename a new file and then fsync the directory. Nothing is encoded or written: the record
keeps the content of its last save. `load()` reads a retired object's file as the object and
lists its id in `retired`, so the owner can finish the removal; a `save()` after `retire()`
(a removal that failed) writes the file again and drops the mark. A crash between those two
leaves both names: the plain file is the newer, and wins.

Objects are found like Docker finds them: by full ID, by name, or by a unique ID prefix; a prefix
that matches several IDs is an error rather than a guess.
"""

import itertools
import json
import os
import re
import shutil
import threading

from minidock import errors, slotfile

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RETIRED_SUFFIX = ".removing"          # a retired object's file (Collection.retire)


def write_atomic(path, data, mode=0o600, durable=True):
    """Replace `path` with `data` (bytes) so that a crash leaves the old or the new content.

    `durable=False` skips the two fsyncs (each ~0.3-1 ms, more while other processes write):
    only for files regenerated from durable state whenever they are used -- a container's
    /etc/hosts, written at every start from its record. Readers still never see half a file;
    after a crash such a file may be old or empty, and it is rewritten before anyone reads it.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            # os.write, not a file object: open() would add an fstat, an isatty ioctl and an
            # lseek to every write (a container lifecycle writes eight of these files)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(directory)


def write_all(fd, data):
    """write(2) all of the bytes-like `data` to descriptor `fd` (a short write goes on where it
    stopped), without a Python file object's extra fstat, isatty and lseek."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new(path, data, mode=0o600):
    """Make the file `path`, which must not exist yet, durable with `data`: written in place
    (O_EXCL), fsync'd, then its directory fsync'd.

    For a new file the temporary name buys nothing -- there is no old content to keep -- and
    it costs a journal commit: write_atomic's rename comes after the file's fsync, so the
    directory's fsync has a change left to commit. Here the file's fsync commits its directory
    entry with it (ext4, xfs: one journal transaction), and the directory's fsync, which POSIX
    still asks for, finds nothing left to do. A crash part-way leaves a short or empty file
    under the final name; its owner must treat an unreadable file as never made (a container
    whose record does not parse is swept at start, an rw layer whose rw.json does not parse
    is incomplete)."""
    fd = create_file(path, data, mode)
    try:
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")


def create_file(path, data, mode=0o600):
    """Make the file `path` (O_EXCL: it must not exist) holding `data`; -> its open descriptor,
    not yet fsync'd (the caller fsyncs it, maybe together with others). On failure nothing is
    left: the descriptor is closed and the file unlinked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


_writers = None
_writers_lock = threading.Lock()
WRITER_THREADS = 4          # parallel starts overlap their fsyncs (the journal commits them together)


def start_writer_threads():
    """Make the writer threads now (the daemon, at start): a thread may not be had later, under
    a fork bomb in a container (workers.py); without them every write is synchronous."""
    global _writers
    with _writers_lock:
        if _writers is None:
            from minidock import workers
            _writers = workers.WorkerPool(WRITER_THREADS, "state-writer")


def write_atomic_in_background(path, data, mode=0o600, new=False):
    """Start `write_atomic(path, data)` (durable; with `new`, write_new) on a writer thread;
    -> `wait()`, which blocks until the file is durable and raises what the write raised.
    Writes of one path must not overlap: wait for one before starting the next."""
    return in_background(write_new if new else write_atomic, path, data, mode)


def in_background(write, *args):
    """Run `write(*args)` on a writer thread; -> `wait()`, which blocks until it has returned
    and raises what it raised. Without a writer thread to be had it runs now."""
    done, failure = threading.Event(), []

    def run():
        try:
            write(*args)
        except BaseException as exc:        # handed to wait(), in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    def wait():
        done.wait()
        if failure:
            raise failure[0]
    try:
        start_writer_threads()              # (made at the daemon's start; here for other users)
        _writers.submit(run)
    except RuntimeError:                    # no thread to be had (a fork bomb): write it now
        run()
    return wait


def remove_tree(path):
    """Delete the directory tree at `path`, which nothing writes any more (an object renamed
    away to be deleted). os.scandir's d_type tells directories from the rest without a stat,
    and no symbolic link is ever followed (`is_dir(follow_symlinks=False)`): about a third of
    shutil.rmtree's system calls -- that one opens every directory by descriptor and checks it
    again, to be safe against a tree that changes under it. On any failure shutil.rmtree
    finishes the job (errors ignored)."""
    try:
        _remove_tree(path)
    except (OSError, RecursionError):
        shutil.rmtree(path, ignore_errors=True)


def _remove_tree(path):
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
    os.rmdir(path)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_line(obj):
    """An object as one line of JSON, without the newline (a record file's content, or a
    slot's body: slotfile.py)."""
    # No indent: json.dumps with an indent runs the pure-Python encoder, ~4x slower than the C
    # one -- 0.5 ms of CPU per save of a container record, eight saves per container lifecycle.
    return json.dumps(obj, sort_keys=True).encode()


def encode_json(obj):
    return encode_line(obj) + b"\n"


def write_json(path, obj, durable=True):
    write_atomic(path, encode_json(obj), durable=durable)


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def decode_record(data):
    """A record file's bytes -> (object, seq, newer slot, slot size): a two-slot file
    (slotfile.py), or plain JSON as written before records had slots (seq and slot size 0).
    ValueError when neither is readable."""
    if data[:1] == b"{":
        return json.loads(data), 0, 0, 0
    seq, body, index, slot_size = slotfile.decode_file(data)
    return json.loads(body), seq, index, slot_size


def read_record(path):
    """The object in the record file at `path`, either format (decode_record)."""
    with open(path, "rb") as f:
        return decode_record(f.read())[0]


class _Slots:
    """What a Collection with `slots` knows of one object's two-slot file (slotfile.py)."""

    def __init__(self, seq=0, slot_size=0, newer=0):
        self.lock = threading.Lock()       # held around pick-slot, pwrite and fdatasync
        # next() hands out the saves' numbers, at their encoding: one C call, atomic under the
        # GIL, so a caller never waits for another thread's write to get its number
        self.numbers = itertools.count(seq + 1)
        self.written = seq                 # the number of the newest save in the file (0: none)
        self.slot_size = slot_size         # 0: no two-slot file at the path (none yet, plain JSON, retired)
        self.newer = newer                 # the slot that holds save `written`
        self.unflushed = False             # save `written` was made without fdatasync


def new_id():
    """A 64-hex-digit random ID, like Docker's container and exec IDs."""
    while True:
        value = os.urandom(32).hex()
        if not value[:12].isdigit():       # Docker avoids all-digit short IDs: they read as numbers
            return value


class Collection:
    """A directory of JSON objects of one kind (`containers`, `volumes`, ...), mirrored in memory.

    `objects` maps id -> dict. `lock(id)` returns a per-object lock that callers hold while they
    read-modify-write one object; `save()` persists the current dict of an object atomically.
    With `slots` each file holds two slots (slotfile.py); saves of one object are then ordered
    by their numbers, taken when they are encoded: a save never overwrites a newer one, even
    when a background save (save_in_background) is written after a later synchronous one.
    """

    def __init__(self, directory, kind, filename="config.json", per_dir=False, slots=False):
        self.directory = directory
        self.kind = kind                     # "container", "volume", ... for error messages
        self.filename = filename
        self.per_dir = per_dir               # each object in <dir>/<id>/<filename> (else <dir>/<id>.json)
        self.objects = {}
        self.retired = set()                 # ids whose removal began (retire()); see load()
        self.slots = slots                   # files in two slots, saved in place (module docstring)
        self._slots = {}                     # id -> _Slots, with `slots`
        self._locks = {}
        self._guard = threading.Lock()
        os.makedirs(directory, exist_ok=True)

    def path(self, object_id):
        if self.per_dir:
            return os.path.join(self.directory, object_id, self.filename)
        return os.path.join(self.directory, object_id + ".json")

    def retired_path(self, object_id):
        return self.path(object_id) + RETIRED_SUFFIX

    def load(self):
        """Read every object from disk; skip (and report) unreadable ones instead of failing start."""
        problems = []
        for entry in sorted(os.listdir(self.directory)):
            full = os.path.join(self.directory, entry)
            if entry.startswith(".tmp-"):
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)   # an object built under a temp name
                else:
                    os.unlink(full)
                continue
            if self.per_dir:
                if not os.path.isdir(full):
                    continue
                for leftover in os.listdir(full):
                    if leftover.startswith(".tmp-"):
                        os.unlink(os.path.join(full, leftover))
                object_id, path = entry, os.path.join(full, self.filename)
            else:
                if entry.endswith(".json" + RETIRED_SUFFIX):
                    if os.path.exists(full[:-len(RETIRED_SUFFIX)]):
                        continue                   # the plain file is read below, and wins
                    entry = entry[:-len(RETIRED_SUFFIX)]
                elif not entry.endswith(".json"):
                    continue
                object_id, path = entry[:-5], os.path.join(self.directory, entry)
            marked = path + RETIRED_SUFFIX
            if not os.path.exists(path):
                if not os.path.exists(marked):
                    problems.append(f"{self.kind} {entry}: no {self.filename}")
                    continue
                path = marked                      # retired: its removal is to be finished
                self.retired.add(object_id)
            elif os.path.exists(marked):
                os.unlink(marked)                  # saved again after retire(): the save wins
            try:
                self.objects[object_id] = self._read(object_id, path, retired=path == marked)
            except (OSError, ValueError) as exc:
                problems.append(f"{self.kind} {object_id}: {exc}")
        return problems

    def _read(self, object_id, path, retired):
        with open(path, "rb") as f:
            data = f.read()
        if not self.slots:
            return json.loads(data)
        obj, seq, newer, slot_size = decode_record(data)
        # A plain JSON file (written before slots) or a retired one is not saved into in place:
        # the next save writes a whole two-slot file at the path (slot size 0).
        self._slots[object_id] = _Slots(seq, 0 if retired else slot_size, newer)
        return obj

    def lock(self, object_id):
        with self._guard:
            return self._locks.setdefault(object_id, threading.RLock())

    def save(self, object_id, obj=None, durable=True):
        """Persist an object atomically. `durable=False` only where the same content (up to
        what a restart resets anyway) was made durable before (write_atomic)."""
        if obj is None:
            obj = self.objects[object_id]
        path = self.path(object_id)
        if self.slots:
            write, args = self._write_slot, self._encode(object_id, obj)
        else:
            write, args = write_json, (obj,)
        try:
            write(path, *args, durable=durable)
        except FileNotFoundError:            # its directory is not made yet (the first save)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write(path, *args, durable=durable)
        self.objects[object_id] = obj
        if object_id in self.retired:        # saved again after retire(): drop the mark
            self.retired.discard(object_id)
            try:
                os.unlink(path + RETIRED_SUFFIX)
            except FileNotFoundError:
                pass

    def save_new(self, object_id, obj):
        """The first save of an object whose file does not exist yet (write_new: one journal
        commit where a save takes two); its directory is made if missing."""
        path = self.path(object_id)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if not self.slots:
            write_new(path, encode_json(obj))
        else:
            # Both slots written whole, allocated once by this commit (slotfile.py): the saves
            # that follow write in place.
            state, seq, body = self._encode(object_id, obj)
            with state.lock:
                data = slotfile.encode_file(seq, body)
                write_new(path, data)
                state.written, state.newer, state.slot_size = seq, 0, len(data) // 2
        self.objects[object_id] = obj

    def retire(self, object_id, durable=True):
        """Record durably that the object's removal has begun (module docstring): rename its
        file to `<file>.removing`, fsync the directory. The copy in memory is untouched.
        `durable=False` skips the fsync, for an owner that removes the object after a crash
        whether or not the rename survived it."""
        path = self.path(object_id)
        if not self.slots:
            os.rename(path, path + RETIRED_SUFFIX)
        else:
            state = self._slot_state(object_id)
            with state.lock:                 # not in the middle of a write into the file
                os.rename(path, path + RETIRED_SUFFIX)
                state.slot_size = 0          # a save after this writes a whole new file at `path`
        self.retired.add(object_id)
        if durable:
            fsync_dir(os.path.dirname(path))

    def save_in_background(self, object_id, obj):
        """Write `obj` as the object's durable state on a writer thread (module docstring):
        encoded now, so the caller may change its dicts meanwhile; -> wait(). The copy in
        memory is not touched: the caller updates it when what `obj` describes is true."""
        path = self.path(object_id)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if self.slots:
            return in_background(self._write_slot, path, *self._encode(object_id, obj))
        return write_atomic_in_background(path, encode_json(obj))

    # -- two-slot files (slotfile.py) --------------------------------------------------------------
    def _slot_state(self, object_id):
        with self._guard:
            return self._slots.setdefault(object_id, _Slots())

    def _encode(self, object_id, obj):
        """-> (state, seq, body): the save's number is taken with its encoding, so numbers
        order saves as their callers made them, whichever write runs first."""
        state = self._slot_state(object_id)
        return state, next(state.numbers), encode_line(obj)

    @staticmethod
    def _write_slot(path, state, seq, body, durable=True):
        """Write the save `seq` (JSON `body`) of one object into the older slot of its file, or
        the whole file anew when there is none yet or the record outgrew the slots."""
        with state.lock:
            if seq <= state.written:
                # A save encoded after this one was written first: it stands, this one is
                # dropped. This caller is promised "this or newer, durable": flush the newer.
                if durable and state.unflushed:
                    slotfile.flush(path)
                    state.unflushed = False
                return
            if state.slot_size and len(body) <= slotfile.capacity(state.slot_size):
                index = 1 - state.newer
                try:
                    # flush_first: the newer slot's save was not flushed; it must be durable
                    # before a crash may tear the only other copy (slotfile.py)
                    slotfile.write_slot(path, index, slotfile.encode_slot(seq, body, state.slot_size),
                                        flush_first=state.unflushed, durable=durable)
                except FileNotFoundError:
                    state.slot_size = 0      # the file is gone: a retry writes it whole
                    raise
                state.written, state.newer, state.unflushed = seq, index, not durable
                return
            # No two-slot file to write into (a first save, a plain JSON file of an older
            # version, a retired file), or the record outgrew its slots: a new file, larger
            # slots, put in place atomically (two metadata updates, as any write_atomic). Always
            # durable, even for a save that need not be: a later durable save into a slot
            # flushes the file's data, but not the rename that made the file.
            data = slotfile.encode_file(seq, body)
            write_atomic(path, data)
            state.written, state.newer, state.unflushed = seq, 0, False
            state.slot_size = len(data) // 2

    def delete(self, object_id, later=None):
        """Forget an object and remove its file (or directory: renamed to a `.tmp-` name at
        once, its files deleted by `later(fn)` if given, else now)."""
        self.objects.pop(object_id, None)
        self.retired.discard(object_id)
        with self._guard:
            self._slots.pop(object_id, None)
        if self.per_dir:
            directory = os.path.join(self.directory, object_id)
            trash = os.path.join(self.directory, f".tmp-rm-{object_id[:12]}-{os.urandom(4).hex()}")
            try:
                os.rename(directory, trash)
            except FileNotFoundError:
                pass
            else:
                (later or (lambda fn: fn()))(lambda: remove_tree(trash))
        else:
            for path in (self.path(object_id), self.retired_path(object_id)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        with self._guard:
            self._locks.pop(object_id, None)

    def resolve(self, ref, name_of=None):
        """Full ID, then exact name, then unique ID prefix -> id. NotFound / ambiguous errors."""
        if not ref:
            raise errors.NotFound(f"No such {self.kind}: {ref}")
        if ref in self.objects:
            return ref
        if name_of is not None:
            wanted = ref.lstrip("/")
            for object_id, obj in list(self.objects.items()):
                if name_of(obj) == wanted:
                    return object_id
        matches = [i for i in list(self.objects) if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        raise errors.NotFound(f"No such {self.kind}: {ref}")
