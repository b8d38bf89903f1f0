"""A record file with two slots: each save one write in place and one cheap flush.

store.write_atomic makes a crash leave the old or the new file by writing a new file and
renaming it over the old one. That costs two synchronous metadata updates: the new file's
inode and block allocation, then the rename -- two journal commits on ext4 or xfs with a
journal; on ext4 without one (`/sys/fs/ext4/<device>/journal_task` says `<none>`, as on the
machine these figures come from) the inode, bitmap and directory blocks, each written and
waited for. A record that is saved again and again -- a container's, at its start, its exit,
each restart, stop, rename and health change -- can have the same guarantee for less, with
the file system's metadata left alone: the *double-buffered superblock* (ZFS's ring of
uberblocks, LMDB's two meta pages). The file holds two fixed-size slots. A save writes the
record into the slot that does *not* hold the newest save, in place; a crash in the middle of
that write tears at most that slot, and the other still holds the previous complete save. A
load reads both slots and takes the valid one with the higher sequence number.

The bytes
---------
The file is exactly two slots of S bytes each, S a multiple of 4096 (one page, the unit the
page cache writes back): slot 0 at offset 0, slot 1 at offset S. Each slot is one text line:

    offset  bytes  content
    0       20     seq: the save's sequence number, decimal, zero-padded (a 64-bit counter)
    20      1      b" "
    21      8      crc: zlib.crc32 of the bytes seq + b" " + length + b" " + json, lower-case hex
    29      1      b" "
    30      8      length: the JSON's length in bytes, decimal, zero-padded
    38      1      b" "
    39      length json: the record, json.dumps (no newline inside: it escapes control characters)
    ...            b" " up to the slot's last byte
    S-1     1      b"\\n"

so `cat config.json` shows two lines, each `seq crc length {json}` followed by spaces (here
a record cut down to its state: save 7, the exit, went into slot 0 over save 5; slot 1 keeps
save 6, the start):

    00000000000000000007 5312c34a 00000046 {"State": {"ExitCode": 0, "Status": "exited"}}
    00000000000000000006 a47dd6c6 00000047 {"State": {"ExitCode": 0, "Status": "running"}}

A slot that was never written is blank: S-1 spaces and the newline. A slot is *valid* when its
header parses, the JSON fits in the slot, the checksum matches and its last byte is the
newline; anything else is *torn* (a crash during its write, or damage). A file whose size is
not two slots of a 4096 multiple is torn as a whole (a creation cut short). The checksum
covers the sequence number and the length as well as the JSON, so a slot whose header came
from one save and whose body from another is torn too. 64 bits of sequence do not wrap: at a
million saves a second they last 580,000 years.

Why the flush is cheap
----------------------
A save is `pwrite(fd, slot, S, index * S)` then `fdatasync(fd)`. fdatasync(2) must write the
file's data and the metadata needed to read that data back (its size, its block map); it need
not write the rest (mtime, ctime). Overwriting bytes that are already allocated changes none of
the needed metadata: the size stays, the blocks stay; only the timestamps change, and those
fdatasync skips. So ext4 (`ext4_sync_file`) writes the slot's pages and issues one cache flush
to the disk, nothing else: with a journal, no commit (the inode's *datasync* transaction is
long committed); without one, no inode write. Counted over 400 saves of a 3 KB record (`perf
stat -a -e block:block_rq_issue`, and `/sys/fs/ext4/<device>/session_write_kbytes`):
write_atomic issues 8 block requests and writes 20 KiB per save (0.67 ms), a slot save 2
requests -- the slot, the flush -- and 8 KiB (0.18 ms). You can watch it from Python too: `os.stat` of the file shows the same size
and inode after every save. (On a copy-on-write file system -- btrfs -- an overwrite is not in
place and fdatasync writes the new block map: still correct, only not cheaper.)

That holds only if the slots are really allocated. The file is therefore created with every
byte of both slots written (the empty slot as spaces, not as a hole: a hole would be allocated
by the first save into it, a metadata update again), and made durable once, as a new file
(store.write_new: O_EXCL, one metadata update). A slot size is the record's size with
headroom (x1.5, rounded up to 4096); a save that does not fit rewrites the whole file, with
larger slots, by store.write_atomic (rare: records grow little once made).

What the writer must keep
-------------------------
- Never overwrite the slot with the newest *durable* save while the other slot's content is not
  durable: a save without a flush (`durable=False`) leaves its slot unflushed, and the next
  save flushes it (fdatasync) before it writes into the other slot.
- Never let an older save overwrite a newer one: saves of one record may run on two threads
  (a background save and a later synchronous one). Sequence numbers are taken when the record
  is encoded; writes hold the record's lock, and a write whose number is not above the last
  one written is dropped (the newer record stands). store.Collection does this bookkeeping;
  this module is the format and the two system calls.

Man pages: pwrite(2), fdatasync(2).
"""

import math
import os
import zlib

PAGE = 4096                     # slot sizes are multiples of this
HEADROOM = 1.5                  # a new file's slots hold a record this much larger
_HEADER = b"%020d %08x %08d "   # seq, crc, length
HEADER_SIZE = 39                # len(_HEADER % (0, 0, 0))
_MAX_SEQ = 10 ** 20 - 1         # 20 decimal digits (2**64 fits)


class TornSlot(ValueError):
    """A slot (or the whole file) whose bytes are not a complete save."""


def capacity(slot_size):
    """The longest JSON a slot of `slot_size` bytes holds (header and final newline take 40)."""
    return slot_size - HEADER_SIZE - 1


def slot_size_for(length):
    """The slot size for a new file whose record's JSON is `length` bytes: room for a JSON
    HEADROOM times as long, in whole pages."""
    wanted = math.ceil(length * HEADROOM) + HEADER_SIZE + 1
    return max(PAGE, -(-wanted // PAGE) * PAGE)


def _checksum(seq, body):
    return zlib.crc32(body, zlib.crc32(b"%020d %08d " % (seq, len(body))))


def encode_slot(seq, body, slot_size):
    """One slot's bytes: the save numbered `seq` of the JSON `body`, padded to `slot_size`."""
    if not 0 < seq <= _MAX_SEQ:
        raise ValueError(f"sequence number out of range: {seq}")
    if len(body) > capacity(slot_size):
        raise ValueError(f"{len(body)} bytes do not fit a slot of {slot_size}")
    if b"\n" in body:
        raise ValueError("a slot's JSON must be one line")
    header = _HEADER % (seq, _checksum(seq, body), len(body))
    return b"".join((header, body, b" " * (slot_size - len(header) - len(body) - 1), b"\n"))


def empty_slot(slot_size):
    return b" " * (slot_size - 1) + b"\n"


def encode_file(seq, body, slot_size=None):
    """A new file's bytes: slot 0 holds the save `seq` of `body`, slot 1 is empty. Both are
    written whole (no hole: module docstring)."""
    slot_size = slot_size or slot_size_for(len(body))
    return encode_slot(seq, body, slot_size) + empty_slot(slot_size)


def decode_slot(raw):
    """-> (seq, body) of a valid slot, None for an empty one; TornSlot for anything else."""
    if not raw.endswith(b"\n"):
        raise TornSlot("no newline at the slot's end")
    if raw[:1] == b" " and raw.count(b" ") == len(raw) - 1:
        return None
    header = raw[:HEADER_SIZE]
    fields = header.split(b" ")
    if (len(fields) != 4 or fields[3] != b"" or len(fields[0]) != 20 or len(fields[1]) != 8
            or len(fields[2]) != 8 or not fields[0].isdigit() or not fields[2].isdigit()):
        raise TornSlot("no header")
    try:
        crc = int(fields[1], 16)
    except ValueError:
        raise TornSlot("no header") from None
    seq, length = int(fields[0]), int(fields[2])
    if length > capacity(len(raw)):
        raise TornSlot(f"length {length} beyond the slot")
    body = raw[HEADER_SIZE:HEADER_SIZE + length]
    if _checksum(seq, body) != crc:
        raise TornSlot("checksum mismatch")
    return seq, body


def decode_file(data):
    """A two-slot file's bytes -> (seq, body, index, slot_size) of the newest valid save.
    TornSlot (a ValueError) naming each slot's problem when neither is valid."""
    slot_size = len(data) // 2
    if len(data) % 2 or slot_size == 0 or slot_size % PAGE:
        raise TornSlot(f"{len(data)} bytes are not two slots")
    best, problems = None, []
    for index in (0, 1):
        try:
            found = decode_slot(data[index * slot_size:(index + 1) * slot_size])
        except TornSlot as exc:
            problems.append(f"slot {index} torn ({exc})")
            continue
        if found is None:
            problems.append(f"slot {index} empty")
        elif best is None or found[0] > best[0]:
            best = (found[0], found[1], index, slot_size)
    if best is None:
        raise TornSlot("no valid slot: " + ", ".join(problems))
    return best


def write_slot(path, index, slot, flush_first=False, durable=True):
    """Overwrite slot `index` of the two-slot file at `path` with `slot` (its bytes, of the
    file's slot size): pwrite at index * len(slot), then fdatasync unless not `durable`.
    `flush_first`: fdatasync before the write, to make the other slot's unflushed save durable
    before this one may tear the slot it overwrites (module docstring)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if flush_first:
            os.fdatasync(fd)
        view, offset = memoryview(slot), index * len(slot)
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def flush(path):
    """fdatasync the file at `path`: what earlier writes without a flush left in the page cache."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
