"""A process's stdio from the daemon's side: pipes or a pty, and the threads that carry output.

Without a TTY a container gets three descriptors: stdin is a pipe (or /dev/null when nobody
will write to it) and stdout and stderr are two pipes, kept apart so logs and attach can tell
them apart. With a TTY all three are one pty slave (openpty(3)); the daemon reads the master,
writes input into it, and sets its size with the TIOCSWINSZ ioctl (tty_ioctl(4)).

The spawner gets the child's ends over SCM_RIGHTS; we close our copies of them right after
(else the pipes never reach end-of-file). Then the daemon's one output loop (minidock/pumps.py:
epoll over every running container's pipes and ptys, one thread in all) reads them until
end-of-file (EIO on a pty master whose last slave closed), appends every chunk to the
container's log and hands it to each subscriber queue (attach sessions, `logs -f`, the
builder). When the last descriptor ends, every subscriber gets `None`: this run's output is
over. Exec instances use `Stdio` and `container_pty` too (minidock/execs.py).

A container's own TTY is made differently: a pty opened here would live in the daemon's devpts,
and inside the container `tty` could only call it /dev/console. Instead the init opens the
`ptmx` of its fresh devpts instance (mounts.open_console, runc's console socket): the three fds it
gets are one end of a unix socket, over which it sends the master back (SCM_RIGHTS) before it
execs. `ContainerIO.console_arrived` then picks the master up and starts the pump, and the
slave is /dev/pts/0 inside, as on Docker.
"""

import fcntl
import logging
import os
import queue
import socket
import struct
import termios
import threading

from minidock import mounts
from minidock.pumps import OutputLoop

logger = logging.getLogger("minidock.container")

# Every container's output, one thread (started with the first container, long after the spawner
# was forked from a single-threaded daemon).
OUTPUT = OutputLoop()

TIOCGPTN = 0x80045430       # _IOR('T', 0x30, unsigned int): the slave's number (asm-generic ioctls)
TIOCSPTLCK = 0x40045431     # _IOW('T', 0x31, int): lock/unlock the slave; termios has neither
EOF_CHAR = b"\x04"          # what a terminal reads as end-of-file (VEOF, ctrl-d)


class Stdio:
    """A process's stdin, stdout and stderr, and the daemon's ends of them.

        child              the three fds the spawner hands to the process
        close_after_spawn  our copies of the child's ends, closed once the process has them
        outputs            [(fd, "stdout" | "stderr")] to read the process's output from
        stdin_w            where to write the process's stdin, or None
        pty_master         the pty master (for resizes), or None
    """

    def __init__(self, tty, open_stdin, make_pty=os.openpty):
        self.stdin_w = self.pty_master = None
        if tty:
            master, slave = make_pty()
            self.pty_master = master
            self.stdin_w = os.dup(master) if open_stdin else None
            self.child, self.close_after_spawn = (slave, slave, slave), [slave]
            self.outputs = [(master, "stdout")]
            return
        if open_stdin:
            stdin, self.stdin_w = os.pipe()
        else:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.child = (stdin, out_w, err_w)
        self.close_after_spawn = [stdin, out_w, err_w]
        self.outputs = [(out_r, "stdout"), (err_r, "stderr")]


def container_pty(init_pid):
    """A pty from the container's own devpts instance (its /dev/pts, mounted `newinstance`).

    A pty made in the daemon's /dev/pts works as a terminal inside the container, but its name
    does not exist there, so ttyname(3) fails and `tty` prints "not a tty". The container's
    `ptmx` is reachable through /proc/PID/root, which resolves paths in the container's mount
    namespace: open it, unlock the slave (TIOCSPTLCK 0), read its number (TIOCGPTN) and open
    /dev/pts/N the same way. Returns (master, slave); falls back to the daemon's own devpts.
    """
    root = f"/proc/{init_pid}/root/dev/pts"
    try:
        master = os.open(os.path.join(root, "ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return os.openpty()
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(os.path.join(root, str(number)), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        os.close(master)
        return os.openpty()
    return master, slave


def set_winsize(fd, height, width):
    """TIOCSWINSZ: the terminal size the process sees (and gets SIGWINCH for)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(height), int(width), 0, 0))


class ContainerIO:
    """The daemon's ends of one container's stdio for its current run, and who listens."""

    def __init__(self):
        self.stdin_w = None               # fd we write the container's stdin into
        self.pty_master = None
        self.subscribers = []             # queues of (stream, bytes), then None at the end
        # Held while a chunk goes to the log and to the subscribers, and while one subscribes:
        # a follower (`logs -f`) then gets from its queue exactly what the log had not yet
        # when it subscribed (subscribe(mark=True)).
        self._lock = threading.Lock()
        self._log = None
        self.output_done = threading.Event()
        self.output_done.set()
        self.console = None               # (socket, open_stdin, log, label) until the pty arrives

    def open(self, tty, open_stdin, log, label):
        """New pipes (or, with `tty`, a console socket) for a run, pumps started into `log`
        (logs.writer); returns (the child's three fds, our copies to close once the spawner
        has them). With a TTY, call `console_arrived()` once the spawner has answered."""
        if tty:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.console = (mine, open_stdin, log, label)
            fd = theirs.detach()
            return (fd, fd, fd), [fd]
        io = Stdio(tty, open_stdin)
        self.pty_master, self.stdin_w = io.pty_master, io.stdin_w
        self._start_pumps(io.outputs, log, name=f"pump-{label}")
        return io.child, io.close_after_spawn

    def console_arrived(self, timeout=0.5):
        """Take the pty master the init sent (mounts.open_console) and pump it. The init sends it
        before it execs, so once the spawner has answered it is there or never comes (a start
        that failed earlier). The log is closed then, as a pump would at the end."""
        if self.console is None:
            return
        sock, open_stdin, log, label = self.console
        self.console = None
        try:
            master = mounts.receive_console(sock, timeout)
        finally:
            sock.close()
        if master is None:
            log.close()
            return
        self.pty_master = master
        self.stdin_w = os.dup(master) if open_stdin else None
        self._start_pumps([(master, "stdout")], log, name=f"pump-{label}")

    def _start_pumps(self, sources, log, name):
        self.output_done = done = threading.Event()
        self._log = log

        def on_data(stream, data):
            with self._lock:
                try:
                    log.write(stream, data)
                except OSError as exc:    # a full disk loses log lines, not the attach stream
                    logger.warning("%s: writing the log: %s", name, exc)
                for q in list(self.subscribers):
                    q.put((stream, data))

        def on_eof(fd):
            if fd == self.pty_master:
                self.pty_master = None    # before the close: a resize must not hit a reused fd

        def on_done():
            log.close()
            for q in list(self.subscribers):
                q.put(None)
            done.set()

        OUTPUT.add(sources, on_data, on_done, on_eof)

    # -- listeners -----------------------------------------------------------------------------
    def subscribe(self, mark=False):
        """A queue of the output from now on. With `mark`: (queue, where the log file stood
        then -- (st_dev, st_ino, size) of the file being written, or None), so that a reader
        of the stored log stops there and nothing comes twice."""
        q = queue.Queue()
        with self._lock:
            self.subscribers.append(q)
            if not mark:
                return q
            f = getattr(self._log, "file", None)
            try:
                st = os.fstat(f.fileno()) if f is not None else None
            except (OSError, ValueError):     # closed: the run's output has ended
                st = None
            return q, (st.st_dev, st.st_ino, st.st_size) if st is not None else None

    def unsubscribe(self, q):
        try:
            self.subscribers.remove(q)
        except ValueError:
            pass

    # -- input -----------------------------------------------------------------------------------
    def write_stdin(self, data):
        if self.stdin_w is None:
            return False
        try:
            os.write(self.stdin_w, data)
            return True
        except OSError:
            return False

    def end_stdin(self, tty):
        """The client's input ended: close the container's stdin. A TTY has no half-close, so
        it gets the terminal's end-of-file character instead."""
        if tty:
            self.write_stdin(EOF_CHAR)
            return
        self.close_stdin()

    def close_stdin(self):
        if self.stdin_w is not None:
            try:
                os.close(self.stdin_w)
            except OSError:
                pass
            self.stdin_w = None

    def resize(self, height, width):
        """False when there is no terminal to resize."""
        if self.pty_master is None:
            return False
        set_winsize(self.pty_master, height, width)
        return True
