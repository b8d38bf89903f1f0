"""ns.DaemonTie on the kernel: a process whose starter exits becomes the subreaper's child and
holds a death signal on it, armed only once the starter is gone; a daemon already gone is seen
through the lifeline.

Each case runs in a fresh Python process playing the daemon (it makes itself a subreaper, which
must not leak into pytest), forking a starter that forks the process and exits at once.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DAEMON = r"""
import ctypes, json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from minidock import ns, syscalls
lifeline_closed = sys.argv[2] == "closed"
syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
report_r, report_w = os.pipe()
if lifeline_closed:
    os.close(lifeline_w)                # as if the daemon had died before the prctl
starter = os.fork()
if starter == 0:
    tie = ns.DaemonTie(os.pidfd_open(os.getpid()), lifeline_r)
    child = os.fork()
    if child == 0:
        tie.arm()                       # waits for the starter's exit, then arms
        libc = ctypes.CDLL(None, use_errno=True)
        sig = ctypes.c_int(0)
        libc.prctl(2, ctypes.byref(sig), 0, 0, 0)       # PR_GET_PDEATHSIG
        os.write(report_w, json.dumps({"pdeathsig": sig.value, "ppid": os.getppid()}).encode())
        os.close(report_w)
        time.sleep(30)
        os._exit(0)
    os.write(report_w, b"%d\n" % child)
    os._exit(0)
os.close(report_w)
os.waitpid(starter, 0)
data = b""
while True:
    chunk = os.read(report_r, 4096)
    if not chunk:
        break
    data += chunk
child_line, _, report = data.partition(b"\n")
child = int(child_line)
out = {"me": os.getpid(), "child": child, "report": json.loads(report) if report else None}
if not lifeline_closed:
    os.kill(child, signal.SIGKILL)
_, status = os.waitpid(child, 0)        # ours to reap: the starter's exit handed it to us
out["code"] = os.waitstatus_to_exitcode(status)
print(json.dumps(out))
"""


def run(lifeline):
    proc = subprocess.run([sys.executable, "-c", DAEMON, REPO, lifeline], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_armed_on_the_subreaper_after_the_starter_is_gone():
    out = run("open")
    # The starter's exit did not kill it (the signal was not armed yet); now it is armed, and
    # its parent is the subreaper.
    assert out["report"] == {"pdeathsig": 9, "ppid": out["me"]}
    assert out["code"] == -9


def test_a_daemon_gone_before_the_prctl_is_seen_on_the_lifeline():
    out = run("closed")
    assert out["report"] is None        # it left in arm(), before reporting anything
    assert out["code"] == 137
