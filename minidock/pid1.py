"""`docker run --init`: a PID 1 that reaps orphans and forwards signals, without shipping a binary.

The first process of a PID namespace has two duties the kernel gives no other (pid_namespaces(7)):

* **It adopts orphans.** A process whose parent exits is re-parented to PID 1, and stays a zombie
  (`Z` in `ps`, a pid-table slot) until PID 1 calls wait(2) for it. A shell or a server run as PID 1
  rarely does, so a container that spawns and abandons processes fills up with zombies.
* **It gets no default signal actions.** Signals sent to PID 1 from inside its namespace are
  dropped unless it installed a handler, and from outside only SIGKILL and SIGSTOP are forced. A
  program that relies on SIGTERM's default action to die ignores `docker stop` until SIGKILL.

Docker's answer is `--init`: it runs tini as PID 1, which forks the command, forwards signals to
it and reaps every child. minidock has no binary to ship, and needs none: the process that set the
container up (ns.py's container init, already PID 1 of the new namespace) forks the command and
stays, as this loop, instead of exec'ing it:

    block all signals -> fork
      child:  unblock, become the command (ns.py: stdio, session, execve)
      parent: close every inherited descriptor (so the command's stdout is the only writer and
              its end is the container's end), install a forwarding handler for every signal
              but SIGCHLD/SIGKILL/SIGSTOP, unblock, then wait(2) for any child: orphans are
              reaped; when the command itself exits, exit with its status (128+N for a
              signal N, as tini and the shell do).

What you can observe: `docker run --init busybox sh -c 'sleep 1 & exec sleep 5'` shows PID 1 as
python in `ps`, the `sleep 1` zombie gone after a second; `docker stop` of
`docker run --init busybox sleep 100` returns at once with status 143.

The cost is one fork per start and a resident interpreter (a few MB) for the container's life.
"""

import os
import signal

FORWARDED = [s for s in signal.valid_signals()
             if s not in (signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP) and 0 < s < signal.NSIG]


def fork_command(prctl_deathsig):
    """Fork the command. Returns in the child (which goes on to exec it) with its parent's pid;
    never returns in the parent, which becomes the reaper until the command exits.

    `prctl_deathsig()` arms the parent-death signal in the reaper (ns.DaemonTie.arm): the
    reaper, the container's init, must die with the daemon, as the command would have."""
    everything = signal.valid_signals()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, everything)   # no handler runs in between
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    _reap(child, prctl_deathsig)


def _reap(child, prctl_deathsig):
    prctl_deathsig()
    # Every descriptor goes: stdio pipes or the pty (the command's end must be the only one, or
    # `docker logs -f` and attach never see the end of output) and the spawner's status pipe
    # (whose end-of-file tells it the exec succeeded).
    os.closerange(0, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass
    for sig in FORWARDED:
        try:
            signal.signal(sig, forward)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:           # cannot happen while the command lives
            os._exit(0)
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))
