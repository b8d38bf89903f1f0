"""The two-slot record file (slotfile.py), on bytes: the layout, valid and torn slots, which
save a load takes, and a write torn at every point leaving the previous save readable."""

import zlib

import pytest

from minidock import slotfile

S = 4096


def slot(seq, body, size=S):
    return slotfile.encode_slot(seq, body, size)


def test_the_exact_bytes_of_a_slot():
    body = b'{"a": 1}'
    raw = slot(7, body)
    crc = zlib.crc32(b'00000000000000000007 00000008 {"a": 1}')
    assert raw[:47] == b'00000000000000000007 %08x 00000008 {"a": 1}' % crc
    assert raw[47:] == b" " * (S - 48) + b"\n"
    assert len(raw) == S and raw.count(b"\n") == 1
    assert slotfile.empty_slot(S) == b" " * (S - 1) + b"\n"
    # a new file: the save in slot 0, slot 1 blank, both written (two text lines)
    data = slotfile.encode_file(7, body)
    assert data == raw + slotfile.empty_slot(S) and data.splitlines()[0].rstrip(b" ")[39:] == body


@pytest.mark.parametrize("seq, body, size", [
    (1, b"{}", S),
    (2 ** 64 - 1, b'{"Name": "/web"}', S),                   # a 64-bit sequence fits its 20 digits
    (10 ** 20 - 1, b"[]", S),
    (42, b'{"s": "\\u00e9\\n\\t"}', S),                       # json.dumps escapes: one line
    (3, b"x" * slotfile.capacity(S), S),                      # exactly full
    (9, b'{"big": "' + b"y" * 6000 + b'"}', 2 * S),
])
def test_encode_then_decode_gives_the_save_back(seq, body, size):
    assert slotfile.decode_slot(slot(seq, body, size)) == (seq, body)


@pytest.mark.parametrize("seq, body, size, message", [
    (0, b"{}", S, "out of range"),
    (10 ** 20, b"{}", S, "out of range"),
    (1, b"x" * (slotfile.capacity(S) + 1), S, "do not fit"),
    (1, b'{"a":\n1}', S, "one line"),
])
def test_encode_refuses(seq, body, size, message):
    with pytest.raises(ValueError, match=message):
        slot(seq, body, size)


def _flip(raw, offset):
    return raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1:]


GOOD = slot(5, b'{"Status": "running"}')
OTHER = slot(6, b'{"Status": "exited!"}')     # same length as GOOD's JSON


@pytest.mark.parametrize("raw, problem", [
    (GOOD[:-1] + b" ", "no newline at the slot's end"),
    (b"garbage" + GOOD[7:], "no header"),
    (GOOD[:21] + b"zzzzzzzz" + GOOD[29:], "no header"),
    (GOOD[:30] + b"99999999" + GOOD[38:], "beyond the slot"),
    (_flip(GOOD, 45), "checksum mismatch"),                  # a bit of the JSON
    (_flip(GOOD, 10), "checksum mismatch"),                  # a digit of the sequence number
    (GOOD[:39] + OTHER[39:], "checksum mismatch"),           # header of one save, JSON of another
    (b"\0" * (S - 1) + b"\n", "no header"),                  # zeros (a block never written)
])
def test_a_torn_slot_is_refused_with_its_reason(raw, problem):
    with pytest.raises(slotfile.TornSlot, match=problem):
        slotfile.decode_slot(raw)


def test_a_blank_slot_is_empty_not_torn():
    assert slotfile.decode_slot(slotfile.empty_slot(S)) is None


TORN = _flip(OTHER, 50)
EMPTY = slotfile.empty_slot(S)


@pytest.mark.parametrize("slot0, slot1, winner", [
    (GOOD, OTHER, (6, 1)),                 # the higher sequence wins, wherever it is
    (OTHER, GOOD, (6, 0)),
    (GOOD, TORN, (5, 0)),                  # the newer save torn: the previous one stands
    (TORN, GOOD, (5, 1)),
    (GOOD, EMPTY, (5, 0)),                 # a file as created: one save, one blank slot
    (EMPTY, OTHER, (6, 1)),
])
def test_a_load_takes_the_valid_slot_with_the_higher_sequence(slot0, slot1, winner):
    seq, body, index, size = slotfile.decode_file(slot0 + slot1)
    assert (seq, index) == winner and size == S
    assert body == slotfile.decode_slot((slot0, slot1)[index])[1]


@pytest.mark.parametrize("data, problem", [
    (TORN + _flip(GOOD, 45), "no valid slot: slot 0 torn \\(checksum mismatch\\), slot 1 torn \\(checksum mismatch\\)"),
    (EMPTY + EMPTY, "no valid slot: slot 0 empty, slot 1 empty"),
    (TORN + EMPTY, "no valid slot: slot 0 torn .*, slot 1 empty"),
    (b"", "0 bytes are not two slots"),
    (GOOD[:7], "7 bytes are not two slots"),                 # a creation cut short
    (GOOD + EMPTY[:100], "are not two slots"),
    (GOOD, "4096 bytes are not two slots"),                  # half of a file of 4096-byte slots
])
def test_a_file_without_a_valid_slot_is_refused_naming_each_problem(data, problem):
    with pytest.raises(slotfile.TornSlot, match=problem):
        slotfile.decode_file(data)


def test_a_file_cut_short_at_a_page_is_not_read_with_smaller_slots():
    """Slots of 8192 bytes cut after 8192: read as two 4096-byte slots, neither ends its line."""
    data = slotfile.encode_file(3, b'{"a": "' + b"z" * 3000 + b'"}')
    assert len(data) == 4 * S
    with pytest.raises(slotfile.TornSlot, match="no newline"):
        slotfile.decode_file(data[:2 * S])


NEW_BODY = b'{"Status": "removing", "More": "' + b"m" * 200 + b'"}'


@pytest.mark.parametrize("cut", [0, 1, 20, 39, 40, 100, 39 + len(NEW_BODY) - 1, 39 + len(NEW_BODY), 1000, S - 1, S])
def test_a_save_torn_at_any_byte_leaves_the_previous_save(cut):
    """Save 7 overwrites slot 0 (which held save 5) and stops after `cut` bytes: the rest of
    the slot keeps save 5's bytes. Until its JSON is whole, save 6 (slot 1) is what a load
    finds; once it is, save 7 -- the padding after the JSON is not part of a save."""
    new = slot(7, NEW_BODY)
    torn = new[:cut] + GOOD[cut:]
    if cut < 39 + len(NEW_BODY):
        assert slotfile.decode_file(torn + OTHER)[:2] == (6, b'{"Status": "exited!"}')
    else:
        assert slotfile.decode_file(torn + OTHER)[:2] == (7, NEW_BODY)


@pytest.mark.parametrize("length, size", [
    (0, S), (2704, S), (2705, 2 * S), (5000, 2 * S), (6000, 3 * S), (20000, 8 * S),
])
def test_slot_size_is_the_record_with_headroom_in_pages(length, size):
    assert slotfile.slot_size_for(length) == size
    assert slotfile.capacity(size) >= length * slotfile.HEADROOM
