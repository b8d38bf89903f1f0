"""seccomp: a classic BPF program the kernel runs on every system call of the container.

What it is
----------
seccomp(2) with SECCOMP_SET_MODE_FILTER attaches a program of classic BPF (the packet filter
language, `struct sock_filter` of 8 bytes: u16 code, u8 jt, u8 jf, u32 k) to the calling
thread. For every system call the kernel runs it over a `struct seccomp_data`:

    offset 0   int   nr                    the system call number
    offset 4   u32   arch                  AUDIT_ARCH_* of the calling convention
    offset 8   u64   instruction_pointer
    offset 16  u64   args[6]               little-endian: low half at 16+8i, high at 20+8i

and obeys the 32-bit value it returns: SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno (the call
fails with that errno and never runs), SECCOMP_RET_KILL_PROCESS, ... The filter is inherited by
every child and kept across execve; it can never be removed, only more filters added.
Installing one needs either no_new_privs (prctl PR_SET_NO_NEW_PRIVS, so a setuid binary cannot
gain privileges the filter would not expect) or CAP_SYS_ADMIN in the current user namespace,
which the container's set-up process has until it drops its capabilities. Afterwards
/proc/<pid>/status shows `Seccomp: 2` (mode filter) and `Seccomp_filters: 1`.

The program must check `arch` first: the same number means different calls in different
calling conventions (on x86-64, nr 56 is clone but for an i386 binary it is something else).
This module knows the x86-64 numbers (the kernel's `asm/unistd_64.h`); calls of any other
convention (i386 via int 0x80, x32) are answered ENOSYS, so nothing gets past the filter by
switching conventions.

Docker's default, in effect
---------------------------
Docker's default profile allows ~370 named calls and refuses the rest with EPERM; some are
allowed only with a capability (mount with CAP_SYS_ADMIN, reboot with CAP_SYS_BOOT, ...) and
some only with harmless arguments (clone without CLONE_NEW* flags, personality with a few
values; clone3, whose flags it cannot see inside a struct, fails with ENOSYS so that libc
falls back to clone). `BUILTIN` states the same effect as a list of what is refused, in
Docker's profile format, so that one compiler serves it and the user's own profiles:
`--security-opt seccomp=unconfined` installs nothing, `--security-opt seccomp=<file>` (the
CLI sends the file's JSON) is compiled from its rules, and `--privileged` is unconfined, as
in Docker.

The compiler
------------
Rules are tried in order and the first that matches decides, else the default action. The
program checks the calling convention, finds the call's number by a binary search over the
numbers that have rules, and runs that number's rules in their order:

    ld  [4]                 arch
    jeq AUDIT_ARCH_X86_64, +1 / ret ERRNO(ENOSYS)
    ld  [0]                 nr
    jge 0x40000000 -> ret ERRNO(ENOSYS)     x32 calls carry this bit
    jge N -> the upper half                 one node per level of the search, down to
      ...                                   buckets of at most 8 numbers:
        jeq n1 -> its rules / jeq n2 -> its rules / ... / ret <default action>
        the rules of each number (numbers refused alike share one `ret`):
          ld [16+8i] / ld [20+8i] and compare, for each argument condition (a failing
          one jumps to the number's next rule; after its last, to `ret <default>`)
          ret <the rule's action>

Why a search rather than one `jeq` per number in a row, each number's rules in the profile's
order: when a filter is installed, the kernel runs it once for every system call number
(kernel/seccomp.c, seccomp_cache_prepare: a call whose answer never depends on its arguments
is marked, and later skips the filter), ~460 numbers, each through the row until its `jeq`
(or to the end, for every call the profile allows). That emulation made the install of the
built-in profile as a row of its 77 numbers cost 184-191 us here, against 98-114 us as the
search, of which ~80 us is what any program costs (a one-instruction filter: its memory
and its JIT). Every container start and every exec installs one, on the start's critical
path. The calls that still run the filter -- the refused ones and those judged by their
arguments -- find their rules within 16 instructions instead of up to ~80.

Conditional jumps have 8-bit offsets: a jump over a left half longer than 255 instructions
goes through a `ja` (32-bit offset), and a bucket whose rules are too long for its jumps is
split further. Rules whose `includes` (caps all held, arches, minKernel) or `excludes` (any
cap held, arches) rule them out for this container are left out when compiling, as Docker
does.
"""

import ctypes
import errno
import functools
import json
import os
import struct

from minidock import errors

# --- the ABI ---------------------------------------------------------------------------------

BPF_LD_W_ABS = 0x20        # BPF_LD | BPF_W | BPF_ABS: A = u32 at offset k of seccomp_data
BPF_JEQ_K = 0x15           # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45          # jump if A & k
BPF_ALU_AND_K = 0x54       # A &= k
BPF_RET_K = 0x06
BPF_JA = 0x05              # BPF_JMP | BPF_JA: pc += k (32 bits, unconditional)
BPF_MAXINSNS = 4096

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000

SECCOMP_SET_MODE_FILTER = 1
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
_SYS_SECCOMP = {"x86_64": 317}

OFF_NR, OFF_ARCH, OFF_ARGS = 0, 4, 16

# x86-64 system call numbers, from the kernel's arch/x86/entry/syscalls/syscall_64.tbl.
_TABLE = """
0 read 1 write 2 open 3 close 4 stat 5 fstat 6 lstat 7 poll 8 lseek 9 mmap 10 mprotect
11 munmap 12 brk 13 rt_sigaction 14 rt_sigprocmask 15 rt_sigreturn 16 ioctl 17 pread64
18 pwrite64 19 readv 20 writev 21 access 22 pipe 23 select 24 sched_yield 25 mremap 26 msync
27 mincore 28 madvise 29 shmget 30 shmat 31 shmctl 32 dup 33 dup2 34 pause 35 nanosleep
36 getitimer 37 alarm 38 setitimer 39 getpid 40 sendfile 41 socket 42 connect 43 accept
44 sendto 45 recvfrom 46 sendmsg 47 recvmsg 48 shutdown 49 bind 50 listen 51 getsockname
52 getpeername 53 socketpair 54 setsockopt 55 getsockopt 56 clone 57 fork 58 vfork 59 execve
60 exit 61 wait4 62 kill 63 uname 64 semget 65 semop 66 semctl 67 shmdt 68 msgget 69 msgsnd
70 msgrcv 71 msgctl 72 fcntl 73 flock 74 fsync 75 fdatasync 76 truncate 77 ftruncate
78 getdents 79 getcwd 80 chdir 81 fchdir 82 rename 83 mkdir 84 rmdir 85 creat 86 link 87 unlink
88 symlink 89 readlink 90 chmod 91 fchmod 92 chown 93 fchown 94 lchown 95 umask 96 gettimeofday
97 getrlimit 98 getrusage 99 sysinfo 100 times 101 ptrace 102 getuid 103 syslog 104 getgid
105 setuid 106 setgid 107 geteuid 108 getegid 109 setpgid 110 getppid 111 getpgrp 112 setsid
113 setreuid 114 setregid 115 getgroups 116 setgroups 117 setresuid 118 getresuid 119 setresgid
120 getresgid 121 getpgid 122 setfsuid 123 setfsgid 124 getsid 125 capget 126 capset
127 rt_sigpending 128 rt_sigtimedwait 129 rt_sigqueueinfo 130 rt_sigsuspend 131 sigaltstack
132 utime 133 mknod 134 uselib 135 personality 136 ustat 137 statfs 138 fstatfs 139 sysfs
140 getpriority 141 setpriority 142 sched_setparam 143 sched_getparam 144 sched_setscheduler
145 sched_getscheduler 146 sched_get_priority_max 147 sched_get_priority_min
148 sched_rr_get_interval 149 mlock 150 munlock 151 mlockall 152 munlockall 153 vhangup
154 modify_ldt 155 pivot_root 156 _sysctl 157 prctl 158 arch_prctl 159 adjtimex 160 setrlimit
161 chroot 162 sync 163 acct 164 settimeofday 165 mount 166 umount2 167 swapon 168 swapoff
169 reboot 170 sethostname 171 setdomainname 172 iopl 173 ioperm 174 create_module
175 init_module 176 delete_module 177 get_kernel_syms 178 query_module 179 quotactl
180 nfsservctl 181 getpmsg 182 putpmsg 183 afs_syscall 184 tuxcall 185 security 186 gettid
187 readahead 188 setxattr 189 lsetxattr 190 fsetxattr 191 getxattr 192 lgetxattr 193 fgetxattr
194 listxattr 195 llistxattr 196 flistxattr 197 removexattr 198 lremovexattr 199 fremovexattr
200 tkill 201 time 202 futex 203 sched_setaffinity 204 sched_getaffinity 205 set_thread_area
206 io_setup 207 io_destroy 208 io_getevents 209 io_submit 210 io_cancel 211 get_thread_area
212 lookup_dcookie 213 epoll_create 214 epoll_ctl_old 215 epoll_wait_old 216 remap_file_pages
217 getdents64 218 set_tid_address 219 restart_syscall 220 semtimedop 221 fadvise64
222 timer_create 223 timer_settime 224 timer_gettime 225 timer_getoverrun 226 timer_delete
227 clock_settime 228 clock_gettime 229 clock_getres 230 clock_nanosleep 231 exit_group
232 epoll_wait 233 epoll_ctl 234 tgkill 235 utimes 236 vserver 237 mbind 238 set_mempolicy
239 get_mempolicy 240 mq_open 241 mq_unlink 242 mq_timedsend 243 mq_timedreceive 244 mq_notify
245 mq_getsetattr 246 kexec_load 247 waitid 248 add_key 249 request_key 250 keyctl
251 ioprio_set 252 ioprio_get 253 inotify_init 254 inotify_add_watch 255 inotify_rm_watch
256 migrate_pages 257 openat 258 mkdirat 259 mknodat 260 fchownat 261 futimesat 262 newfstatat
263 unlinkat 264 renameat 265 linkat 266 symlinkat 267 readlinkat 268 fchmodat 269 faccessat
270 pselect6 271 ppoll 272 unshare 273 set_robust_list 274 get_robust_list 275 splice 276 tee
277 sync_file_range 278 vmsplice 279 move_pages 280 utimensat 281 epoll_pwait 282 signalfd
283 timerfd_create 284 eventfd 285 fallocate 286 timerfd_settime 287 timerfd_gettime
288 accept4 289 signalfd4 290 eventfd2 291 epoll_create1 292 dup3 293 pipe2 294 inotify_init1
295 preadv 296 pwritev 297 rt_tgsigqueueinfo 298 perf_event_open 299 recvmmsg 300 fanotify_init
301 fanotify_mark 302 prlimit64 303 name_to_handle_at 304 open_by_handle_at 305 clock_adjtime
306 syncfs 307 sendmmsg 308 setns 309 getcpu 310 process_vm_readv 311 process_vm_writev
312 kcmp 313 finit_module 314 sched_setattr 315 sched_getattr 316 renameat2 317 seccomp
318 getrandom 319 memfd_create 320 kexec_file_load 321 bpf 322 execveat 323 userfaultfd
324 membarrier 325 mlock2 326 copy_file_range 327 preadv2 328 pwritev2 329 pkey_mprotect
330 pkey_alloc 331 pkey_free 332 statx 333 io_pgetevents 334 rseq 424 pidfd_send_signal
425 io_uring_setup 426 io_uring_enter 427 io_uring_register 428 open_tree 429 move_mount
430 fsopen 431 fsconfig 432 fsmount 433 fspick 434 pidfd_open 435 clone3 436 close_range
437 openat2 438 pidfd_getfd 439 faccessat2 440 process_madvise 441 epoll_pwait2
442 mount_setattr 443 quotactl_fd 444 landlock_create_ruleset 445 landlock_add_rule
446 landlock_restrict_self 447 memfd_secret 448 process_mrelease 449 futex_waitv
450 set_mempolicy_home_node
451 cachestat 452 fchmodat2 453 map_shadow_stack 454 futex_wake 455 futex_wait
456 futex_requeue 457 statmount 458 listmount 459 lsm_get_self_attr 460 lsm_set_self_attr
461 lsm_list_modules 462 mseal
"""
_nums = _TABLE.split()
SYSCALLS_X86_64 = {_nums[i + 1]: int(_nums[i]) for i in range(0, len(_nums), 2)}
del _nums

CLONE_NEW_FLAGS = 0x7E020000   # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def _deny(names, caps=None, errno_=errno.EPERM):
    """A rule refusing `names`, unless the container holds one of `caps`."""
    rule = {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno_}
    if caps:
        rule["excludes"] = {"caps": caps}
    return rule


# Docker's default profile, stated as what it refuses (the effect for a container without the
# capabilities named). The first matching rule wins, so the argument-checked allows come
# before the refusals of the same call.
BUILTIN = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        # Always refused: the kernel keyring is not namespaced, old or obsolete interfaces.
        _deny(["add_key", "keyctl", "request_key", "create_module", "get_kernel_syms",
               "query_module", "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat",
               "io_uring_setup", "io_uring_enter", "io_uring_register"]),
        # clone without a new namespace is fine; with one (a nested user namespace, say) only
        # with CAP_SYS_ADMIN. clone3 hides its flags in memory the filter cannot read: ENOSYS
        # makes libc fall back to clone.
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}]},
        _deny(["clone"], ["CAP_SYS_ADMIN"]),
        _deny(["clone3"], ["CAP_SYS_ADMIN"], errno.ENOSYS),
        # personality: only the harmless personas (Linux, with UNAME26/32-bit, and the query).
        *({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}
          for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
        _deny(["personality"]),
        # Mounts, namespaces and other administration: CAP_SYS_ADMIN.
        _deny(["mount", "umount2", "pivot_root", "unshare", "setns", "fsopen", "fsconfig",
               "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr", "quotactl",
               "quotactl_fd", "lookup_dcookie", "swapon", "swapoff"], ["CAP_SYS_ADMIN"]),
        _deny(["bpf"], ["CAP_SYS_ADMIN", "CAP_BPF"]),
        _deny(["perf_event_open"], ["CAP_SYS_ADMIN", "CAP_PERFMON"]),
        _deny(["reboot", "kexec_load", "kexec_file_load"], ["CAP_SYS_BOOT"]),
        _deny(["init_module", "finit_module", "delete_module"], ["CAP_SYS_MODULE"]),
        _deny(["acct"], ["CAP_SYS_PACCT"]),
        _deny(["iopl", "ioperm"], ["CAP_SYS_RAWIO"]),
        _deny(["settimeofday", "clock_settime", "clock_adjtime"], ["CAP_SYS_TIME"]),
        _deny(["vhangup"], ["CAP_SYS_TTY_CONFIG"]),
        _deny(["mbind", "get_mempolicy", "set_mempolicy", "move_pages",
               "set_mempolicy_home_node"], ["CAP_SYS_NICE"]),
        _deny(["syslog"], ["CAP_SYSLOG"]),
        _deny(["kcmp", "userfaultfd"], ["CAP_SYS_PTRACE"]),
        _deny(["open_by_handle_at"], ["CAP_DAC_READ_SEARCH"]),
    ],
}

ACTIONS = {"SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW, "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
           "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
           "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS, "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
           "SCMP_ACT_LOG": SECCOMP_RET_LOG}
_ARCHES = {"x86_64": ("SCMP_ARCH_X86_64", "amd64")}


def native_arch():
    """Our machine's name for the profile format, or None when we have no syscall table."""
    machine = os.uname().machine
    return machine if machine in _ARCHES else None


def insn(code, k=0, jt=0, jf=0):
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _action(name, errno_ret):
    if name in ACTIONS:
        return ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        return SECCOMP_RET_ERRNO | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":            # no tracer ever attaches: the call fails ENOSYS
        return SECCOMP_RET_ERRNO | errno.ENOSYS
    raise errors.InvalidParameter(f"seccomp profile: unsupported action {name!r}")


def _kernel_at_least(text):
    def parts(v):
        return tuple(int(p) for p in v.split("-")[0].split(".")[:2] if p.isdigit())
    try:
        return parts(os.uname().release) >= parts(text)
    except ValueError:
        return True


def _applies(rule, caps, arch):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    names = _ARCHES[arch]
    if inc.get("caps") and not all(_cap(c) in caps for c in inc["caps"]):
        return False
    if exc.get("caps") and any(_cap(c) in caps for c in exc["caps"]):
        return False
    if inc.get("arches") and not any(a in names or a == arch for a in inc["arches"]):
        return False
    if exc.get("arches") and any(a in names or a == arch for a in exc["arches"]):
        return False
    if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]):
        return False
    return True


def _cap(name):
    name = str(name).upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _arg_checks(args, fail_at):
    """Instructions testing every argument condition; a failing test jumps to index `fail_at`
    (counted from the first instruction returned). Conditions of one rule are ANDed."""
    out = []

    def jump_fail(code, k, on_true_fail):
        # Conditional jump whose failing branch goes to fail_at; the next insn is the pass.
        here = len(out)
        off = fail_at - here - 1
        if not 0 <= off <= 255:
            raise errors.InvalidParameter("seccomp profile: a rule has too many conditions")
        out.append((code, k, off if on_true_fail else 0, 0 if on_true_fail else off))

    for a in args:
        index = int(a["index"])
        if not 0 <= index < 6:
            raise errors.InvalidParameter(f"seccomp profile: bad argument index {index}")
        value, two = int(a.get("value", 0)), int(a.get("valueTwo", 0))
        op = a.get("op")
        lo_off, hi_off = OFF_ARGS + 8 * index, OFF_ARGS + 8 * index + 4
        if op in ("SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ"):
            mask = value if op == "SCMP_CMP_MASKED_EQ" else 0xFFFFFFFFFFFFFFFF
            want = two if op == "SCMP_CMP_MASKED_EQ" else value
            for off, shift in ((hi_off, 32), (lo_off, 0)):
                out.append((BPF_LD_W_ABS, off, 0, 0))
                m = (mask >> shift) & 0xFFFFFFFF
                if m != 0xFFFFFFFF:
                    out.append((BPF_ALU_AND_K, m, 0, 0))
                jump_fail(BPF_JEQ_K, (want & mask) >> shift & 0xFFFFFFFF, False)
        elif op == "SCMP_CMP_NE":
            # Fails only when both halves are equal.
            out.append((BPF_LD_W_ABS, hi_off, 0, 0))
            out.append((BPF_JEQ_K, value >> 32 & 0xFFFFFFFF, 0, 2))   # hi differs: pass
            out.append((BPF_LD_W_ABS, lo_off, 0, 0))
            jump_fail(BPF_JEQ_K, value & 0xFFFFFFFF, True)
        elif op in ("SCMP_CMP_GT", "SCMP_CMP_GE", "SCMP_CMP_LT", "SCMP_CMP_LE"):
            hi, lo = value >> 32 & 0xFFFFFFFF, value & 0xFFFFFFFF
            greater = op in ("SCMP_CMP_GT", "SCMP_CMP_GE")
            strict = op in ("SCMP_CMP_GT", "SCMP_CMP_LT")
            # Five instructions: the high halves decide unless equal, then the low halves.
            #   0 ld hi   1 jgt H   2 jeq H   3 ld lo   4 compare lo   (5: passed)
            out.append((BPF_LD_W_ABS, hi_off, 0, 0))
            if greater:
                out.append((BPF_JGT_K, hi, 3, 0))           # hi > H: passed (to 5)
                jump_fail(BPF_JEQ_K, hi, False)              # hi < H: failed
            else:
                jump_fail(BPF_JGT_K, hi, True)               # hi > H: failed
                out.append((BPF_JEQ_K, hi, 0, 2))            # hi < H: passed (to 5)
            out.append((BPF_LD_W_ABS, lo_off, 0, 0))
            if greater:
                jump_fail(BPF_JGT_K if strict else BPF_JGE_K, lo, False)
            else:
                jump_fail(BPF_JGE_K if strict else BPF_JGT_K, lo, True)
        else:
            raise errors.InvalidParameter(f"seccomp profile: unsupported operator {op!r}")
    return out


def compile_profile(profile, caps, arch=None):
    """Compile a profile (Docker's JSON format, as a dict) for a container holding `caps`
    (a set of "CAP_*" names) into the bytes of a `struct sock_filter` array."""
    arch = arch or native_arch()
    if arch is None:
        raise errors.NotImplementedKind(f"seccomp profiles are not supported on {os.uname().machine}")
    if not isinstance(profile, dict):
        raise errors.InvalidParameter("seccomp profile: not a JSON object")
    table = SYSCALLS_X86_64
    default = _action(profile.get("defaultAction", "SCMP_ACT_ALLOW"), profile.get("defaultErrnoRet"))
    arches = profile.get("architectures") or [m["architecture"] for m in profile.get("archMap") or []]
    if arches and not any(a in _ARCHES[arch] for a in arches):
        raise errors.InvalidParameter(f"seccomp profile: no rules for this machine ({arch})")
    enosys = SECCOMP_RET_ERRNO | errno.ENOSYS
    prog = [(BPF_LD_W_ABS, OFF_ARCH, 0, 0),
            (BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            (BPF_RET_K, enosys, 0, 0),
            (BPF_LD_W_ABS, OFF_NR, 0, 0),
            (BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            (BPF_RET_K, enosys, 0, 0)]
    groups = {}                         # call number -> [(args, action)], in the rules' order
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict):
            raise errors.InvalidParameter("seccomp profile: a syscalls entry is not an object")
        if not _applies(rule, caps, arch):
            continue
        action = _action(rule.get("action"), rule.get("errnoRet"))
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        args = rule.get("args") or []
        for name in names:
            nr = table.get(name)
            if nr is None:
                continue                # unknown here (another arch's call): libseccomp skips too
            groups.setdefault(nr, []).append((args, action))
    if groups:
        prog += _tree(sorted(groups), groups, default)
    else:
        prog.append((BPF_RET_K, default, 0, 0))
    if len(prog) > BPF_MAXINSNS:
        raise errors.InvalidParameter(f"seccomp profile too large ({len(prog)} instructions)")
    return b"".join(insn(code, k, jt, jf) for code, k, jt, jf in prog)


# Numbers tried in a row at the bottom of the search: below ~8, one more level of jge costs
# as much as the row it saves, and a bucket's refusals share one `ret`.
BUCKET = 8


def _tree(numbers, groups, default):
    """The search over the sorted call `numbers` (A holds the number): one jge per node sends
    the upper half right, down to buckets of at most BUCKET numbers. A jump over a left half
    longer than a jump offset's 255 goes through a `ja` (whose offset has 32 bits)."""
    if len(numbers) <= BUCKET:
        code = _bucket(numbers, [_group(groups[nr], default) for nr in numbers], default)
        if code is not None:            # (always, for one number)
            return code
    mid = len(numbers) // 2
    left = _tree(numbers[:mid], groups, default)
    right = _tree(numbers[mid:], groups, default)
    if len(left) <= 255:
        return [(BPF_JGE_K, numbers[mid], len(left), 0)] + left + right
    return [(BPF_JGE_K, numbers[mid], 0, 1), (BPF_JA, len(left), 0, 0)] + left + right


def _bucket(numbers, codes, default):
    """Numbers tried in turn, one jeq each to its rules' code (`codes`, in the same order),
    then `ret default`, then each distinct code once (numbers refused alike share one `ret`).
    None when a jump would be longer than 255."""
    codes = [tuple(code) for code in codes]
    offsets, tail = {}, []
    for code in codes:
        if code not in offsets:
            offsets[code] = len(tail)
            tail += code
    out = []
    for i, (nr, code) in enumerate(zip(numbers, codes)):
        jump = len(numbers) - i + offsets[code]             # past the other jeqs and the ret
        if jump > 255:
            return None
        out.append((BPF_JEQ_K, nr, jump, 0))
    return out + [(BPF_RET_K, default, 0, 0)] + tail


def _group(rules, default):
    """One call number's rules in their order: each block's failing checks fall through to
    the next rule's, the last one's to `ret default`. A rule without conditions always
    decides, and what would follow it is never reached."""
    out = []
    for args, action in rules:
        out += _block(args, action)
        if not args:
            return out
    return out + [(BPF_RET_K, default, 0, 0)]


def _block(args, action):
    """Argument checks then `ret action`; failing checks jump just past the ret."""
    if not args:
        return [(BPF_RET_K, action, 0, 0)]
    # The checks' length does not depend on where they fail to, so measure with a stand-in.
    n = len(_arg_checks(args, fail_at=255))
    return _arg_checks(args, fail_at=n + 1) + [(BPF_RET_K, action, 0, 0)]


def parse_security_opt(options):
    """Docker's SecurityOpt list -> ("default" | "unconfined" | profile dict, no_new_privileges).

    Accepts `seccomp=unconfined`, `seccomp=<JSON>` (what the CLI sends for a file),
    `seccomp:...` (the old separator), `no-new-privileges[=true|false]`; leaves the rest
    (label, apparmor) to others."""
    seccomp, nnp = "default", False
    for opt in options or []:
        if not isinstance(opt, str):
            raise errors.InvalidParameter("SecurityOpt entries must be strings")
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if key == "no-new-privileges":
            if value in ("", "true"):
                nnp = True
            elif value == "false":
                nnp = False
            else:
                raise errors.InvalidParameter(f"invalid --security-opt 2: {opt!r}")
        elif key == "seccomp":
            if value == "unconfined":
                seccomp = "unconfined"
            elif value in ("builtin", "default"):
                seccomp = "default"
            else:
                try:
                    seccomp = json.loads(value)
                except ValueError as exc:
                    raise errors.InvalidParameter(f"decoding seccomp profile failed: {exc}")
                if not isinstance(seccomp, dict):
                    raise errors.InvalidParameter("decoding seccomp profile failed: not an object")
    return seccomp, nnp


def filter_for(security_opt, caps, privileged):
    """The compiled filter (bytes) a container gets, or None for unconfined."""
    choice, _ = parse_security_opt(security_opt)
    if privileged or choice == "unconfined":
        return None
    if native_arch() is None:
        if choice == "default":
            return None                 # no table for this machine: said in /info
        raise errors.NotImplementedKind(f"seccomp profiles are not supported on {os.uname().machine}")
    if choice == "default":
        return _builtin_filter(frozenset(caps))
    return compile_profile(choice, set(caps))


@functools.lru_cache(maxsize=16)
def _builtin_filter(caps):
    """The built-in profile compiled for one capability set: the same for every container
    with the same set (most have Docker's default), so compiled once per set, not per start."""
    return compile_profile(BUILTIN, set(caps))


# --- installing --------------------------------------------------------------------------------

class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_NR_SECCOMP = _SYS_SECCOMP.get(os.uname().machine)


class Prepared:
    """A program as the kernel takes it: struct sock_fprog {len, filter*} over a C buffer that
    lives as long as this object."""

    def __init__(self, program):
        self.buf = ctypes.create_string_buffer(program, len(program))
        self.fprog = _SockFprog(len(program) // 8, ctypes.cast(self.buf, ctypes.c_void_p))


@functools.lru_cache(maxsize=16)
def prepared(program_hex):
    """The Prepared form of a hex program, made once per program: in the spawner, so that a
    container's init only makes the system call (ns.prepare_in_spawner)."""
    return Prepared(bytes.fromhex(program_hex))


def install(program):
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog) for the calling thread (and its future
    children). Needs no_new_privs or CAP_SYS_ADMIN in the current user namespace."""
    install_prepared(Prepared(program))


def install_prepared(p):
    if _NR_SECCOMP is None:
        raise OSError(errno.ENOSYS, f"seccomp: no system call number for {os.uname().machine}")
    if _libc.syscall(_NR_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(p.fprog)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(e)}")
