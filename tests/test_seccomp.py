"""seccomp: the compiled BPF run over seccomp_data bytes, then the kernel running the filter.

The first tests execute the program with a small classic-BPF interpreter (only the opcodes
the compiler emits), table-driven: a system call and its arguments in, the action out. The
kernel tests install the filter in a forked child and look at what the calls return and at
/proc/self/status.
"""

import ctypes
import errno
import os
import struct

import pytest

from minidock import errors, seccomp

ALLOW = seccomp.SECCOMP_RET_ALLOW
EPERM = seccomp.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
NR = seccomp.SYSCALLS_X86_64
NAME = {nr: name for name, nr in NR.items()}
DEFAULT_CAPS = {"CAP_" + c for c in ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW",
                                    "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE",
                                    "SYS_CHROOT", "KILL", "AUDIT_WRITE")}


def seccomp_data(nr, args=(), arch=seccomp.AUDIT_ARCH_X86_64):
    args = list(args) + [0] * (6 - len(args))
    return struct.pack("<iIQ6Q", nr, arch, 0, *[a & 0xFFFFFFFFFFFFFFFF for a in args])


def run_bpf(program, data):
    """Execute classic BPF over `data`; returns the 32-bit return value."""
    return execute(program, data)[0]


def execute(program, data):
    """-> (the 32-bit return value, how many instructions ran)."""
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a, pc, steps = 0, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        if code == seccomp.BPF_LD_W_ABS:
            a = struct.unpack_from("<I", data, k)[0]
        elif code == seccomp.BPF_ALU_AND_K:
            a &= k
        elif code == seccomp.BPF_RET_K:
            return k, steps
        elif code == seccomp.BPF_JA:
            pc += k
        elif code in (seccomp.BPF_JEQ_K, seccomp.BPF_JGT_K, seccomp.BPF_JGE_K, seccomp.BPF_JSET_K):
            taken = {seccomp.BPF_JEQ_K: a == k, seccomp.BPF_JGT_K: a > k,
                     seccomp.BPF_JGE_K: a >= k, seccomp.BPF_JSET_K: bool(a & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17

BUILTIN_CASES = [
    # (name, syscall, args, extra caps, expected)
    ("getpid allowed", "getpid", (), set(), ALLOW),
    ("keyctl refused", "keyctl", (0, -4, 0), set(), EPERM),
    ("add_key refused", "add_key", (), set(), EPERM),
    ("request_key refused even with SYS_ADMIN", "request_key", (), {"CAP_SYS_ADMIN"}, EPERM),
    ("fork-like clone allowed", "clone", (SIGCHLD,), set(), ALLOW),
    ("thread clone allowed", "clone", (0x3D0F00,), set(), ALLOW),
    ("clone of a user namespace refused", "clone", (CLONE_NEWUSER | SIGCHLD,), set(), EPERM),
    ("clone of a mount namespace refused", "clone", (CLONE_NEWNS,), set(), EPERM),
    ("high bits of clone flags ignored", "clone", (1 << 40 | SIGCHLD,), set(), ALLOW),
    ("clone namespaces with SYS_ADMIN", "clone", (CLONE_NEWUSER,), {"CAP_SYS_ADMIN"}, ALLOW),
    ("clone3 answers ENOSYS", "clone3", (), set(), ENOSYS),
    ("unshare refused", "unshare", (CLONE_NEWUSER,), set(), EPERM),
    ("mount refused", "mount", (), set(), EPERM),
    ("mount with SYS_ADMIN", "mount", (), {"CAP_SYS_ADMIN"}, ALLOW),
    ("new mount API refused", "fsopen", (), set(), EPERM),
    ("setns refused", "setns", (), set(), EPERM),
    ("kexec refused", "kexec_load", (), set(), EPERM),
    ("bpf refused", "bpf", (), set(), EPERM),
    ("bpf with CAP_BPF", "bpf", (), {"CAP_BPF"}, ALLOW),
    ("perf_event_open refused", "perf_event_open", (), set(), EPERM),
    ("reboot refused", "reboot", (), set(), EPERM),
    ("settimeofday refused", "settimeofday", (), set(), EPERM),
    ("settimeofday with SYS_TIME", "settimeofday", (), {"CAP_SYS_TIME"}, ALLOW),
    ("personality query", "personality", (0xFFFFFFFF,), set(), ALLOW),
    ("personality linux", "personality", (0,), set(), ALLOW),
    ("personality no-randomize refused", "personality", (0x0040000,), set(), EPERM),
    ("io_uring refused", "io_uring_setup", (), set(), EPERM),
    ("ptrace allowed (kernel >= 4.8)", "ptrace", (), set(), ALLOW),
]


@pytest.fixture(scope="module")
def builtin_programs():
    cache = {}

    def get(extra):
        key = frozenset(extra)
        if key not in cache:
            cache[key] = seccomp.compile_profile(seccomp.BUILTIN, DEFAULT_CAPS | extra)
        return cache[key]
    return get


@pytest.mark.parametrize("name,call,args,caps,expected", BUILTIN_CASES,
                         ids=[c[0] for c in BUILTIN_CASES])
def test_builtin_profile(builtin_programs, name, call, args, caps, expected):
    assert run_bpf(builtin_programs(caps), seccomp_data(NR[call], args)) == expected


def test_other_calling_conventions_are_refused(builtin_programs):
    prog = builtin_programs(set())
    AUDIT_ARCH_I386 = 0x40000003
    # i386's 250 is not keyctl: without the arch check it would be judged by the x86-64 table.
    assert run_bpf(prog, seccomp_data(NR["getpid"], arch=AUDIT_ARCH_I386)) == ENOSYS
    assert run_bpf(prog, seccomp_data(seccomp.X32_SYSCALL_BIT | NR["keyctl"])) == ENOSYS


PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EACCES,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "syscalls": [
        {"names": ["read", "write", "no_such_call_here"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["lseek"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 1, "value": 1 << 33, "op": "SCMP_CMP_GT"}]},
        {"names": ["pread64"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 3, "value": 5, "op": "SCMP_CMP_LE"},
                  {"index": 0, "value": 3, "op": "SCMP_CMP_NE"}]},
        {"names": ["mmap"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 2, "value": 4, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}},
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
    ],
}

EACCES = seccomp.SECCOMP_RET_ERRNO | errno.EACCES
PROFILE_CASES = [
    ("listed", "read", (), ALLOW),
    ("default errno", "open", (), EACCES),
    ("GT over 64 bits: above", "lseek", (0, (1 << 33) + 1), ALLOW),
    ("GT over 64 bits: equal", "lseek", (0, 1 << 33), EACCES),
    ("GT over 64 bits: low half larger, high smaller", "lseek", (0, 0xFFFFFFFF), EACCES),
    ("LE and NE both hold", "pread64", (4, 0, 0, 5), ALLOW),
    ("LE fails", "pread64", (4, 0, 0, 6), EACCES),
    ("NE fails", "pread64", (3, 0, 0, 1), EACCES),
    ("NE on the high half", "pread64", (3 | 1 << 32, 0, 0, 1), ALLOW),
    ("masked eq holds", "mmap", (0, 0, 3), ALLOW),
    ("masked eq fails", "mmap", (0, 0, 7), EACCES),
    ("kill process", "kill", (), seccomp.SECCOMP_RET_KILL_PROCESS),
    ("includes caps not held", "mount", (), EACCES),
    ("excludes caps held", "getpid", (), EACCES),
    ("includes another arch", "getppid", (), EACCES),
]


@pytest.mark.parametrize("name,call,args,expected", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_docker_format_profile(name, call, args, expected):
    prog = seccomp.compile_profile(PROFILE, {"CAP_KILL"})
    assert run_bpf(prog, seccomp_data(NR[call], args)) == expected


@pytest.mark.parametrize("opts,expected", [
    ([], ("default", False)),
    (["seccomp=unconfined"], ("unconfined", False)),
    (["seccomp:unconfined", "no-new-privileges"], ("unconfined", True)),
    (['seccomp={"defaultAction": "SCMP_ACT_ALLOW"}'], ({"defaultAction": "SCMP_ACT_ALLOW"}, False)),
    (["label=disable", "no-new-privileges=true"], ("default", True)),
])
def test_security_opt_parsing(opts, expected):
    assert seccomp.parse_security_opt(opts) == expected


@pytest.mark.parametrize("opts", [["seccomp={not json"], ["seccomp=[1]"], [7],
                                  ["no-new-privileges=maybe"],
                                  ['seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}'],
                                  ['seccomp={"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
                                   ' "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}']])
def test_bad_profiles_are_invalid_parameters(opts):
    with pytest.raises(errors.MinidockError) as info:
        seccomp.filter_for(opts, set(), False)
    assert 400 <= info.value.status < 600 and info.value.status != 500


def test_privileged_and_unconfined_get_no_filter():
    assert seccomp.filter_for([], set(), True) is None
    assert seccomp.filter_for(["seccomp=unconfined"], set(), False) is None


# --- the kernel --------------------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)


def in_filtered_child(program, calls):
    """Fork; the child sets no_new_privs, installs `program`, makes `calls` and reports each
    errno (0 for success) and its Seccomp line over a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc.prctl(38, 1, 0, 0, 0)          # PR_SET_NO_NEW_PRIVS
            seccomp.install(program)
            out = []
            for nr, args in calls:
                ret = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
                out.append(str(ctypes.get_errno() if ret == -1 else 0))
            with open("/proc/self/status") as f:
                out.append(next(line.split()[1] for line in f if line.startswith("Seccomp:")))
            os.write(w, " ".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 1000).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    return data


@pytest.mark.skipif(seccomp.native_arch() != "x86_64", reason="the syscall table is x86-64's")
def test_the_kernel_runs_the_builtin_filter():
    prog = seccomp.compile_profile(seccomp.BUILTIN, DEFAULT_CAPS)
    got = in_filtered_child(prog, [
        (NR["keyctl"], (0, -4, 0)),            # KEYCTL_GET_KEYRING_ID of the user keyring
        (NR["unshare"], (CLONE_NEWUSER,)),
        (NR["getpid"], ()),
        (NR["clone3"], (0, 0)),
    ])
    assert got == [str(errno.EPERM), str(errno.EPERM), "0", str(errno.ENOSYS), "2"]


# --- the compiled search against the rules read directly ---------------------------------------

def judge(profile, caps, nr, args):
    """What the profile says of call `nr` with `args`, read from its rules: the first rule
    that applies to the container, names the call and whose conditions all hold, else the
    default action. Written apart from the compiler, as the rules' meaning."""
    default = seccomp._action(profile.get("defaultAction", "SCMP_ACT_ALLOW"), profile.get("defaultErrnoRet"))
    name = NAME.get(nr)
    for rule in profile.get("syscalls") or []:
        if not seccomp._applies(rule, caps, "x86_64"):
            continue
        if name not in (rule.get("names") or [rule.get("name")]):
            continue
        if all(_holds(c, args) for c in rule.get("args") or []):
            return seccomp._action(rule.get("action"), rule.get("errnoRet"))
    return default


def _holds(condition, args):
    arg = args[int(condition["index"])] & 0xFFFFFFFFFFFFFFFF
    value, two = int(condition.get("value", 0)), int(condition.get("valueTwo", 0))
    return {"SCMP_CMP_EQ": lambda: arg == value,
            "SCMP_CMP_NE": lambda: arg != value,
            "SCMP_CMP_MASKED_EQ": lambda: arg & value == two & value,
            "SCMP_CMP_GT": lambda: arg > value, "SCMP_CMP_GE": lambda: arg >= value,
            "SCMP_CMP_LT": lambda: arg < value, "SCMP_CMP_LE": lambda: arg <= value,
            }[condition["op"]]()


def argument_vectors(profile, nr):
    """Arguments that sit on each side of every condition of the rules naming `nr`: zeros,
    each condition's value and its neighbours alone, and all of a rule's values at once."""
    vectors = [(0,) * 6]
    for rule in profile.get("syscalls") or []:
        if NAME.get(nr) not in (rule.get("names") or [rule.get("name")]):
            continue
        together = [0] * 6
        for c in rule.get("args") or []:
            value = int(c.get("value", 0))
            for v in (value, value + 1, value - 1, value | 1 << 40, int(c.get("valueTwo", 0))):
                vec = [0] * 6
                vec[int(c["index"])] = v & 0xFFFFFFFFFFFFFFFF
                vectors.append(tuple(vec))
            together[int(c["index"])] = int(c.get("valueTwo", value)) if c["op"] == "SCMP_CMP_MASKED_EQ" else value
        vectors.append(tuple(together))
    return vectors


def assert_same_answers(profile, caps):
    prog = seccomp.compile_profile(profile, caps)
    for nr in range(max(NR.values()) + 20):
        for args in argument_vectors(profile, nr):
            assert run_bpf(prog, seccomp_data(nr, args)) == judge(profile, caps, nr, args), (nr, args)
    return prog


@pytest.mark.parametrize("extra", [set(), {"CAP_SYS_ADMIN"}, {"CAP_BPF", "CAP_SYS_TIME", "CAP_SYS_PTRACE"},
                                   {"CAP_" + c for c in ("SYS_MODULE", "SYS_BOOT", "SYS_NICE", "SYSLOG",
                                                         "SYS_RAWIO", "SYS_PACCT", "DAC_READ_SEARCH")}])
def test_every_call_number_gets_what_the_builtin_rules_say(extra):
    assert_same_answers(seccomp.BUILTIN, DEFAULT_CAPS | extra)


def test_every_call_number_gets_what_a_users_profile_says():
    assert_same_answers(PROFILE, {"CAP_KILL"})
    assert_same_answers(PROFILE, set())


def test_a_call_is_found_in_a_few_comparisons():
    # The search, not a row: the kernel runs the program for every call number when it is
    # installed (module docstring), and a container's refused calls run it each time.
    prog = seccomp.compile_profile(seccomp.BUILTIN, DEFAULT_CAPS)
    longest = max(execute(prog, seccomp_data(nr))[1] for nr in range(max(NR.values()) + 1))
    assert longest <= 20                # a row of the 77 refused numbers: up to ~80


def _big_profile():
    # 60 calls with two rules of six conditions each: buckets too long for 8-bit jumps, and
    # left halves longer than 255 instructions (reached through `ja`).
    conditions = [{"index": i, "value": 1000 + i, "op": "SCMP_CMP_GT"} for i in range(6)]
    names = sorted(NR, key=NR.get)[:60]
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES, "args": conditions},
        {"names": names[::2], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
         "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
    ]}


def test_long_rules_keep_every_jump_within_reach():
    prog = assert_same_answers(_big_profile(), set())
    codes = [struct.unpack_from("=H", prog, i)[0] for i in range(0, len(prog), 8)]
    assert seccomp.BPF_JA in codes


@pytest.mark.skipif(seccomp.native_arch() != "x86_64", reason="the syscall table is x86-64's")
def test_the_kernel_takes_a_search_with_long_jumps():
    prog = seccomp.compile_profile(_big_profile(), set())
    big = [1001, 1002, 1003, 1004, 1005, 1006]
    got = in_filtered_child(prog, [
        (NR["getppid"], ()),
        (NR["read"], (7, 0, 0)),                # names[0]: the second rule (fd 7 is not open)
        (NR["close"], tuple(big)),              # names[3]: the first rule, all six hold
        (NR["getpid"], ()),
    ])
    assert got == [str(errno.EPERM), str(errno.EPERM), str(errno.EACCES), "0", "2"]


def _allow_list_profile():
    # The shape of Docker's own default.json: an allow-list of most calls, the default
    # refusing, a few calls allowed only with harmless arguments.
    refused = {"keyctl", "add_key", "request_key", "mount", "umount2", "unshare", "setns", "reboot",
               "kexec_load", "bpf", "perf_event_open", "clone", "personality", "getppid"}
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM, "syscalls": [
        {"names": sorted(set(NR) - refused), "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": seccomp.CLONE_NEW_FLAGS, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}]},
    ]}


def test_an_allow_list_of_most_calls_compiles_to_what_its_rules_say():
    prog = assert_same_answers(_allow_list_profile(), set())
    assert len(prog) // 8 < 1000


@pytest.mark.skipif(seccomp.native_arch() != "x86_64", reason="the syscall table is x86-64's")
def test_the_kernel_runs_an_allow_list():
    prog = seccomp.compile_profile(_allow_list_profile(), set())
    got = in_filtered_child(prog, [
        (NR["getppid"], ()),                    # left out of the list: the default
        (NR["getpid"], ()),
        (NR["personality"], (0xFFFFFFFF,)),     # a query: allowed by its argument
        (NR["personality"], (0x0040000,)),      # ADDR_NO_RANDOMIZE: refused
        (NR["unshare"], (0,)),
    ])
    assert got[:5] == ["1", "0", "0", "1", "1"] and got[5] == "2"
