"""The daemon's watch on its children (spawner.Spawner._watch), in this process: one pidfd per
child however many times it is asked for, and one exit report at most.

A pooled init that dies just as a start takes it is given up by that start (_run_pooled) and
reported dead by the spawner ({"reap": P}): two watches of one pid. A second pidfd could be
opened after the first one's reap, when the number may already name another process."""

import os
import socket
import threading
import time

from minidock import spawner
from support import wait_for


def _handle(on_exit):
    """A Spawner handle on a stand-in: our end of a socketpair whose other end nobody reads,
    and a pid that is not a process of ours."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lifeline = os.pipe2(os.O_CLOEXEC)
    handle = spawner.Spawner(2 ** 22 + 1, mine, lifeline, on_exit)
    return handle, theirs


def _child(exit_code, after=0.0):
    pid = os.fork()
    if pid == 0:
        time.sleep(after)
        os._exit(exit_code)
    return pid


def test_a_pid_watched_twice_has_one_pidfd_and_one_report():
    reports, done = [], threading.Event()

    def on_exit(pid, code):
        reports.append((pid, code))
        done.set()

    handle, theirs = _handle(on_exit)
    try:
        pid = _child(7, after=0.3)
        handle._watch_later(pid, report=False)     # the start that gave it up
        handle._watch_later(pid, report=False)     # the spawner's {"reap": P}
        handle._watch_later(pid, report=True)      # (a report asked for wins)
        wait_for(lambda: pid in handle._pidfds, 5, "the pidfd")
        fds = [fd for fd, (p, _) in handle._watched.items() if p == pid]
        assert len(fds) == 1
        assert sorted(os.listdir("/proc/self/fd")).count(str(fds[0])) == 1
        assert done.wait(5)
        time.sleep(0.1)
        assert reports == [(pid, 7)]
        assert pid not in handle._pidfds and not handle._watched
        assert not os.path.exists(f"/proc/{pid}")   # reaped, once
    finally:
        handle.close()
        theirs.close()


def test_a_given_up_pid_is_reaped_without_a_report():
    reports = []
    handle, theirs = _handle(lambda pid, code: reports.append((pid, code)))
    try:
        pid = _child(0)
        handle._watch_later(pid, report=False)
        handle._watch_later(pid, report=False)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the reap")
        time.sleep(0.1)
        assert reports == [] and not handle._watched and not handle._pidfds
    finally:
        handle.close()
        theirs.close()


def test_a_watch_asked_for_after_the_reap_opens_nothing(caplog):
    reports = []
    handle, theirs = _handle(lambda pid, code: reports.append((pid, code)))
    try:
        pid = _child(0)
        handle._watch_later(pid, report=False)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the reap")
        handle._watch_later(pid, report=False)     # late: the number is free (or another's)
        time.sleep(0.2)
        assert reports == [] and not handle._watched and not handle._polled
        # no pidfd to be had is not "poll it": there is nothing left to reap
        assert not [r for r in caplog.records if "no pidfd" in r.getMessage()]
    finally:
        handle.close()
        theirs.close()
