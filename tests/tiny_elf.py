"""Tiny static x86-64 ELF executables built from a few bytes of machine code, for tests that
need one system call a busybox image has no applet for (keyctl, say).

An ELF executable needs only its 64-byte file header and one PT_LOAD program header (56 bytes)
mapping the file at a fixed address; the code follows at offset 120 and the entry point is its
address. No libc, no dynamic loader: the code makes its system calls itself.
"""

import struct

BASE = 0x400000
CODE_OFFSET = 64 + 56


def elf(code):
    entry = BASE + CODE_OFFSET
    size = CODE_OFFSET + len(code)
    header = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)          # 64-bit, LE, v1, SysV
              + struct.pack("<HHIQQQIHHHHHH",
                            2,        # e_type ET_EXEC
                            0x3E,     # e_machine EM_X86_64
                            1,        # e_version
                            entry, 64, 0,   # e_entry, e_phoff, e_shoff
                            0, 64, 56, 1,   # e_flags, e_ehsize, e_phentsize, e_phnum
                            0, 0, 0))       # e_shentsize, e_shnum, e_shstrndx
    phdr = struct.pack("<IIQQQQQQ",
                       1, 5,                 # PT_LOAD, PF_R | PF_X
                       0, BASE, BASE,        # p_offset, p_vaddr, p_paddr
                       size, size, 0x1000)   # p_filesz, p_memsz, p_align
    return header + phdr + code


def syscall_exit_errno(nr, a0=0, a1=0, a2=0):
    """A program making syscall `nr`(a0, a1, a2) and exiting with its errno (0 on success)."""
    code = b"".join([
        b"\xb8" + struct.pack("<I", nr),         # mov eax, nr
        b"\xbf" + struct.pack("<I", a0 & 0xFFFFFFFF),   # mov edi, a0
        b"\xbe" + struct.pack("<I", a1 & 0xFFFFFFFF),   # mov esi, a1
        b"\xba" + struct.pack("<I", a2 & 0xFFFFFFFF),   # mov edx, a2
        b"\x0f\x05",                             # syscall
        b"\x89\xc7",                             # mov edi, eax
        b"\xf7\xdf",                             # neg edi          errno when it failed
        b"\x85\xc0",                             # test eax, eax
        b"\x78\x02",                             # js  +2           (negative: keep errno)
        b"\x31\xff",                             # xor edi, edi     success: 0
        b"\xb8\xe7\x00\x00\x00",                 # mov eax, 231     exit_group
        b"\x0f\x05",                             # syscall
    ])
    return elf(code)


KEYCTL = 250
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_USER_KEYRING = -4


def keyctl_program():
    """keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0): exit 0, or the errno."""
    return syscall_exit_errno(KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)
