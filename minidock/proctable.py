"""`docker top`: a process table read straight from /proc, the way ps(1) builds its own.

Docker runs the host's `ps` and keeps the rows of the container's pids. minidock reads the same
sources ps reads: /proc/PID/stat (state, ppid, tty, cpu times, start time, sizes),
/proc/PID/status (uids), /proc/PID/cmdline (argv; empty for kernel threads and zombies), and
/proc/uptime + clock ticks to turn times into wall-clock values (proc(5)). Two layouts are
supported, the two people type: `-ef` (Docker's default) and `aux`.
"""

import datetime
import os
import pwd

from minidock import errors

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode(errors="replace")
    # comm may contain spaces and parentheses: split around the *last* ')'.
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data[data.rindex(")") + 2:].split()
    return comm, fields          # fields[0] is state (field 3 in proc(5))


def _cmdline(pid, comm):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        argv = []
    return " ".join(argv) if argv else f"[{comm}]"


def _uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return 0


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _tty(tty_nr):
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if tty_nr == 0:
        return "?"
    if 136 <= major <= 143:
        return f"pts/{minor + (major - 136) * 256}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    return "?"


def _cputime(ticks, with_days=True):
    seconds = ticks // TICKS
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{days}-{text}" if days and with_days else text


def _boot_time():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return int(line.split()[1])
    return 0


def _uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _mem_total_kb():
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1])


def table(pids, ps_args="-ef"):
    """{"Titles": [...], "Processes": [[...], ...]} for `pids`, in the layout `ps_args` asks."""
    args = ps_args.strip()
    if args in ("-ef", "-e -f", "ef", "-f -e", "-A -f"):
        layout = "ef"
    elif args in ("aux", "-aux", "au x", "axu"):
        layout = "aux"
    else:
        raise errors.InvalidParameter(f"ps_args {ps_args!r} not supported: use -ef or aux")
    boot, uptime, mem_kb = _boot_time(), _uptime(), _mem_total_kb()
    rows = []
    for pid in sorted(pids):
        try:
            comm, f = _stat(pid)
            uid = _uid(pid)
        except (OSError, ValueError):
            continue                      # the process ended while we looked
        state, ppid, tty_nr = f[0], int(f[1]), int(f[4])
        utime, stime = int(f[11]), int(f[12])
        start_ticks, vsize, rss = int(f[19]), int(f[20]), int(f[21])
        age = max(uptime - start_ticks / TICKS, 0.001)
        cpu_pct = 100.0 * (utime + stime) / TICKS / age
        started = datetime.datetime.fromtimestamp(boot + start_ticks / TICKS)
        stime_text = started.strftime("%H:%M") if age < 86400 else started.strftime("%b%d")
        cmd = _cmdline(pid, comm)
        if layout == "ef":
            rows.append([_user(uid), str(pid), str(ppid), str(int(cpu_pct)), stime_text, _tty(tty_nr),
                         _cputime(utime + stime), cmd])
        else:
            rss_kb = rss * PAGE // 1024
            rows.append([_user(uid), str(pid), f"{cpu_pct:.1f}", f"{100.0 * rss_kb / mem_kb:.1f}",
                         str(vsize // 1024), str(rss_kb), _tty(tty_nr), state, stime_text,
                         _cputime(utime + stime, with_days=False)[3:] if utime + stime < 360000 * TICKS
                         else _cputime(utime + stime), cmd])
    titles = (["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"] if layout == "ef" else
              ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"])
    return {"Titles": titles, "Processes": rows}
