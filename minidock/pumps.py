"""One event loop that carries the output of every running container: epoll over pipes and ptys.

A container's stdout and stderr are the write ends of two pipes (or one pty slave) that the
daemon created before the spawner forked the container; the daemon holds the read ends. Someone
must read them continuously: a pipe holds 64 KiB (pipe(7)), and a process whose pipe is full
blocks in write(2) until it is drained. A thread per stream does that with a blocking read(2),
but costs a thread stack and a wake-up per chunk for every running container -- two threads
each, a thousand for 500 containers.

Here one thread serves all of them, the way dockerd's Go runtime multiplexes its copiers onto
epoll. The sequence, per descriptor:

    fcntl(fd, F_SETFL, O_NONBLOCK)      so a read never blocks the loop
    epoll_ctl(EPOLL_CTL_ADD, fd, EPOLLIN)                           (select.epoll)
    epoll_wait -> readable -> read(fd, 256 KiB) -> the chunk goes to the group's on_data
    ... read returns 0 (every write end closed: the process and its children exited)
        or fails with EIO (a pty master whose last slave closed) -> EPOLL_CTL_DEL, close(fd)

and per group (the two pipes of one container): when its last descriptor reaches end of file,
on_done() runs -- the moment the output is complete, so an exit can be announced after the last
line is in the log. `add()` registers the descriptors from the caller's thread (epoll_ctl may
run while another thread waits in epoll_wait); only the loop thread reads, unregisters and
closes them.

Callbacks run on the loop thread and must not block: appending to a log file (page cache) and
putting into unbounded queues for attached clients is fine; a slow client only lets its own
queue grow, it never stops the loop (Docker's rule: readers never slow the container).

Pipes that stay full are grown. A pipe holds 64 KiB as made. A container printing faster than
the loop drains it (`cat` of a big file) fills it, blocks in write(2), and waits for the loop's
next read and the wake-up after it: the two take turns, 64 KiB at a time, with a wake-up each
way per turn. So when a read comes back with exactly those 64 KiB -- the writer had filled the
pipe -- the loop grows that pipe to GROWN_SIZE:

    fcntl(fd, F_SETPIPE_SZ, 1 MiB)      (the read end will do: the size is the pipe's)

The container then writes on while the loop encodes, and each read takes up to READ_SIZE. Pipe
buffers are kernel memory, and an unprivileged user's pipes share one allowance
(/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default; past it every new pipe of that user gets
two pages, the containers' own pipes included, and no pipe may grow). So the pipes this loop
grows hold GROWN_BUDGET at most together, and a quarter of that allowance if it is smaller: a
pipe that fills while the budget is spent stays as it is, and is grown when a grown one closes.
A pipe the kernel refuses to grow (a pty, a pipe-max-size below GROWN_SIZE) is not asked again.

Observe it: `grep Threads /proc/$(pgrep -f 'minidock$')/status` stays flat as containers start,
and `ls -l /proc/PID/fd` of the daemon shows the read ends (pipe:[...], /dev/ptmx) it watches;
`strace -e fcntl -p <loop thread>` shows one F_SETPIPE_SZ when a container starts printing fast.
"""

import errno
import fcntl
import logging
import os
import select
import threading

log = logging.getLogger("minidock.pumps")

READ_SIZE = 256 * 1024       # one read takes what the pipe holds (64 KiB by default, more if grown)
PIPE_SIZE = 64 * 1024        # a pipe as made (pipe(7)): a read of exactly this much found it full
GROWN_SIZE = 1 << 20         # what such a pipe is grown to (/proc/sys/fs/pipe-max-size's default)
GROWN_BUDGET = 16 << 20      # the grown pipes' sizes together, at most


class Group:
    """The descriptors of one process's output and what to do with their bytes."""

    def __init__(self, sources, on_data, on_done=None, on_eof=None):
        self.sources = list(sources)     # [(fd, stream name)]
        self.on_data = on_data           # on_data(stream, bytes)
        self.on_done = on_done           # on_done(): every source reached end of file
        self.on_eof = on_eof             # on_eof(fd): just before that fd is closed
        self.open = len(self.sources)


class OutputLoop:
    """A daemon thread reading every registered output descriptor with one epoll instance."""

    def __init__(self, name="output-loop"):
        self.name = name
        self._epoll = select.epoll()           # close-on-exec, like every descriptor Python makes
        self._watched = {}                     # fd -> (stream, Group); only the loop removes
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._lock = threading.Lock()
        self._thread = None
        self._stopping = False
        self._grown = {}                       # fd -> its grown size; 0: the kernel refused
        self.grown_total = 0                   # the sizes of the pipes grown and still open
        self.grow_budget = _grow_budget()

    def add(self, sources, on_data, on_done=None, on_eof=None):
        """Watch `sources` [(fd, stream)] until each reaches end of file; the loop owns (and
        closes) the descriptors from now on. Returns the Group. (An empty group is done at
        once, on the caller's thread.)"""
        group = Group(sources, on_data, on_done, on_eof)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        if not group.sources:
            self._finish(group)
        for fd, stream in group.sources:
            os.set_blocking(fd, False)
            # Registered from the caller's thread: epoll_ctl is safe while the loop waits in
            # epoll_wait, and the first output is seen without a hand-over to the loop thread.
            # The entry goes in first, so an event can never find it missing.
            self._watched[fd] = (stream, group)
            self._epoll.register(fd, select.EPOLLIN)
        return group

    def stop(self):
        """End the loop thread (descriptors still watched are closed, their groups finished)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass
        if self._thread is not None:
            self._thread.join(5)

    # -- the loop thread ----------------------------------------------------------------------

    def _run(self):
        while not self._stopping:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    continue              # stop() woke us
                # Looked up now, not when the batch was made: a descriptor closed earlier in this
                # batch is gone (or its number already belongs to a new one, whose entry then
                # reads it -- harmless, the read does not block).
                entry = self._watched.get(fd)
                if entry is not None:
                    self._readable(fd, *entry)
        for fd, entry in list(self._watched.items()):
            self._close(fd, *entry)

    def _readable(self, fd, stream, group):
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return                        # spurious wake-up
        except OSError as e:
            if e.errno != errno.EIO:      # EIO: a pty master whose last slave closed, i.e. EOF
                log.warning("reading %s of a container: %s", stream, e)
            data = b""
        if not data:
            self._close(fd, stream, group)
            return
        if len(data) == PIPE_SIZE and fd not in self._grown:
            self._grow(fd)
        try:
            group.on_data(stream, data)
        except Exception:                 # a callback's bug must not stop every container's output
            log.exception("output callback failed")

    def _grow(self, fd):
        """The pipe `fd` was full: grow it to GROWN_SIZE while the budget allows (see the
        module docstring); over budget it is left for a later full read to try again."""
        if self.grown_total + GROWN_SIZE > self.grow_budget:
            return
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, GROWN_SIZE)
        except OSError:                   # a pty; the user's pipe allowance spent; pipe-max-size
            self._grown[fd] = 0
            return
        self._grown[fd] = GROWN_SIZE
        self.grown_total += GROWN_SIZE

    def _close(self, fd, stream, group):
        # Unregistered explicitly: a pty master has a dup (for stdin) that keeps the open file
        # alive, and epoll forgets a registration only with the last descriptor of the file.
        self._epoll.unregister(fd)
        del self._watched[fd]             # before the close: the number may be reused at once
        self.grown_total -= self._grown.pop(fd, 0)
        if group.on_eof is not None:
            try:
                group.on_eof(fd)
            except Exception:
                log.exception("eof callback failed")
        os.close(fd)
        group.open -= 1
        if group.open == 0:
            self._finish(group)

    def _finish(self, group):
        if group.on_done is not None:
            try:
                group.on_done()
            except Exception:
                log.exception("done callback failed")


def _grow_budget(allowance="/proc/sys/fs/pipe-user-pages-soft"):
    """GROWN_BUDGET, or a quarter of this user's pipe allowance if that is less (module
    docstring); 0 pages means no allowance is enforced."""
    try:
        with open(allowance) as f:
            pages = int(f.read())
    except (OSError, ValueError):
        return GROWN_BUDGET
    return min(GROWN_BUDGET, pages * 4096 // 4) if pages > 0 else GROWN_BUDGET
