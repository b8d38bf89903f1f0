"""The supervisor: a container's process from start to exit, and what the daemon does to it.

Starting is one sequence, with the container's lock held:

    1. mount the rootfs (layers.py; overlay or a vfs copy)
    2. write /etc/hostname, /etc/hosts, /etc/resolv.conf (spec.py)
    3. volume mounts, copying the image's files into a new empty volume once (volumes.py)
    4. the runtime spec, the network to join, the cgroup with its limits (cgroup.py)
    5. pipes and their pumps started *before* the process, so no output is lost (with a TTY
       a console socket: the init makes the pty in its own devpts and sends the master back)
    6. the spawner forks the init (spawner.py / ns.py); its pid is registered for its exit
    7. status running (lifecycle.TRANSITIONS), record saved

The record of step 7 is known before step 6 but for the pid, which only this run of the daemon
needs (a restart finds the process gone): so it is made durable (two fsyncs, 1-3 ms) on a
writer thread *while* the spawner starts the process, and the start answers once both are
done; the pid stays in memory (the file says 0). If the start fails, the failure's own save
comes after it and wins.

Steps 1-4 may refuse (a network container that is not running, a bad extra host) before
anything runs. An exit arrives from the spawner's reader (exits.py) and is handled by one of
a few exit workers made at start (workers.py: no thread is created on the exit path): wait
for the last output to reach the log, record the exit code (and whether the cgroup saw an OOM
kill) durably, and only then let waiters hear of it; then restart after the back-off
(restart.py), or release the cgroup and unmount the rootfs -- the unmount beside the save, on
another exit worker, with no reply waiting for it: it syncs the whole file system under the
upper directory (layers.py), 0.5 ms on an idle disk and many while other programs write; a
start that asks for the mount first (`docker restart` starts as soon as it hears of the exit)
keeps it (layers.unmount's `generation`) -- and remove the container if it was created with
AutoRemove. For AutoRemove the exit and the start of the removal are one status change and one
step on disk (exited, then removing, under one hold of the lock; the record's file is retired
by a rename, store.py): nothing can start it in between, and a crash finds it removing. Its
rootfs is mounted `volatile` (layers.py): nothing syncs a file system about to be deleted.

Healthchecks (health.py) run while the container runs: they start with it, stop when it is
paused or ends (State.Health turns unhealthy, as Docker reports it) and resume on unpause.
Probes are execs without a record (probe.py).

Stop is Docker's: the container's StopSignal (SIGTERM by default), then SIGKILL after the grace
period. `kill` with SIGKILL returns once the exit is recorded (moby's Kill waits likewise), so
an inspect right after `docker kill` sees the container exited. Pause freezes the container's
cgroup where cgroup.freeze exists; otherwise every process of the container gets SIGSTOP (which
the processes can observe, unlike a freeze).
"""

import logging
import os
import signal
import time

from minidock import errors, health, ns, workers
from minidock.container import config, lifecycle, logs, probe, restart, spec
from minidock.container.lifecycle import ALIVE, CREATED, EXITED, PAUSED, RESTARTING, RUNNING
from minidock.times import now_rfc3339, rfc3339_seconds

log = logging.getLogger("minidock.containers")

STOP_KILL_WAIT = 30                 # seconds to wait for an exit after SIGKILL
OUTPUT_DRAIN_WAIT = 5               # seconds an exit waits for the last output to be logged


class Supervisor:
    """Runs containers' processes. `save(c)` persists a record, `emit(c, action, extra)`
    announces an event, `get(ref)` finds another container (network sharing), and
    `remove(ref)` removes one (AutoRemove)."""

    def __init__(self, layers, volumes, cgroups, spawner, exits, save, emit, get, finish_removal, networks,
                 daemon_user=None, save_in_background=None, retire=None):
        """`finish_removal(c)` ends the removal of a container whose `removing` status is durable
        (AutoRemove); `retire(c)` makes that status durable (Containers.retire; without it, a
        save); `save_in_background(c, record)` starts a durable save of `record` and returns
        wait() (store.Collection.save_in_background)."""
        self.layers, self.volumes, self.cgroups = layers, volumes, cgroups
        self.networks = networks
        self.spawner, self.exits = spawner, exits
        self.save, self.emit, self.get, self.finish_removal = save, emit, get, finish_removal
        self.retire = retire or save
        self.save_in_background = save_in_background
        self.daemon_user = daemon_user      # {uid, gid} that keep-id maps; None without userns
        self.health = health.Checks(self._probe, save, lambda c, action: emit(c, action))
        self.user_ids = spec.UserIds(layers)
        # Exits are handled, and restarts scheduled, by threads made now: under a fork bomb a
        # new thread cannot be had, and an exit must never be lost (workers.py).
        self.exit_workers = workers.WorkerPool(4, "exit")
        self.timers = workers.Scheduler("restart-timer")

    def _probe(self, c, argv, write):
        return probe.start(self.spawner, self.exits, c, self.layers.mount(c.id), argv, write)

    # -- start -----------------------------------------------------------------------------------
    def start_by_hand(self, c):
        """A start asked for (start, restart), with c.lock held: it clears a manual stop, and a
        failure is announced as a "die", as Docker does (`docker run --rm` on API < 1.25 waits
        for it before removing the container itself)."""
        c.manual_stop = False
        c.record["HasBeenManuallyStopped"] = False
        try:
            self.start(c)
        except errors.MinidockError:
            self.emit(c, "die", {"exitCode": str(c.state["ExitCode"])})
            raise

    def start(self, c):
        """The start sequence (module docstring), with c.lock held."""
        # 0. published ports: a host port in use fails the start before anything exists
        try:
            c.record.setdefault("NetworkSettings", {})["Ports"] = self.networks.publish(c)
        except errors.MinidockError as exc:
            self._failed_start(c, 125, exc.message, unmount=False)
            raise
        try:
            rootfs = self.layers.mount(c.id, volatile=bool(c.host_config.get("AutoRemove")))  # 1
            spec.write_etc_files(c, self.networks)                                # 2
            mounts, changed = self.volumes.runtime_mounts(c.record.get("Mounts") or [], rootfs)  # 3
            if changed:
                self.save(c)             # the copy-up is done once: remember that it was
            run = spec.runtime_spec(c, rootfs, mounts, spec.network(c, self.get, self.networks),
                                    self.networks.link_env(c), self.daemon_user)                    # 4
        except BaseException:
            self.networks.stopped(c)
            raise
        group = self.cgroups.create(c.id, c.host_config)
        if group is not None:
            run["cgroup"] = group.path   # the init joins it before anything else runs
        run["pids_limit"] = self.cgroups.pids_rlimit(c.host_config)   # no pids.max: pidlimit.py
        run["staging"] = self.layers.pool_dir     # for the spawner's pool (spawner.py)
        stdio, to_close = c.io.open(c.config["Tty"], c.config["OpenStdin"],   # 5
                                    logs.writer(c), c.id[:12])
        # 7 ahead: the running record, durable while the spawner works (module docstring)
        started_at = now_rfc3339()
        running = dict(c.state, Pid=0, ExitCode=0, Error="", StartedAt=started_at, OOMKilled=False,
                       **lifecycle.status_fields(RUNNING))
        saved = self._save_ahead(c, dict(c.record, State=running))
        try:
            # the user's ids, looked up here rather than by the spawner: the answer is kept
            # per image (spec.UserIds); an unknown user fails the start as the spawner's
            # lookup did (exit code 125)
            run.update(self.user_ids.of(c, rootfs))
            pid = self.spawner.run(run, *stdio[:3])                               # 6
        except errors.MinidockError as exc:
            self.networks.stopped(c)
            self._wait_quietly(saved)            # before the failure's save, which must win
            self._failed_start(c, getattr(exc, "exit_code", 125), exc.message)
            raise
        except BaseException:
            self._wait_quietly(saved)
            raise
        finally:
            for fd in to_close:
                os.close(fd)             # the child has its own copies now
            c.io.console_arrived()       # with a TTY: the master the init sent before exec
        c.pid = pid
        early = self.exits.register(pid, lambda code: self._exit_thread(c, code))
        c.state.update(Pid=pid, ExitCode=0, Error="", StartedAt=started_at, OOMKilled=False)
        c.set_status(RUNNING)                                                     # 7
        c.started_mono = time.monotonic()
        if saved is None:
            self.save(c)
        else:
            # Durable before the start is answered. The file says Pid 0: the pid is for this
            # run of the daemon only (a restart finds the process gone and resets it).
            saved()
        self.health.started(c, time.time())
        if early is not None:       # it has already ended; handled once we release c.lock
            self._exit_thread(c, early)

    def _save_ahead(self, c, record):
        """Start the durable save of `record` (c's record once the process runs) -> wait(), or
        None when the saves are synchronous only (tests driving the supervisor alone)."""
        if self.save_in_background is None:
            return None
        return self.save_in_background(c, record)

    @staticmethod
    def _wait_quietly(saved):
        if saved is not None:
            try:
                saved()
            except OSError as exc:
                log.warning("saving the running state: %s", exc)

    def _failed_start(self, c, code, message, unmount=True):
        c.state.update(ExitCode=code, Error=message, FinishedAt=now_rfc3339(), Pid=0)
        if c.status not in (CREATED, EXITED):     # a never-started container stays "created"
            c.set_status(EXITED)
        self.save(c)
        c.io.close_stdin()
        if unmount:
            self.unmount(c)

    # -- exits -----------------------------------------------------------------------------------
    def _exit_thread(self, c, code):
        self.exit_workers.submit(self._handle_exit, c, code)

    def _handle_exit(self, c, code):
        self.health.stopped(c)             # first: probes into a dead container would only fail
        c.io.output_done.wait(OUTPUT_DRAIN_WAIT)   # the last output reaches the log before "die"
        with c.lock:
            c.state["OOMKilled"] = self._oom_killed(c)
            c.pid = 0
            c.state.update(Pid=0, ExitCode=code, FinishedAt=now_rfc3339())
            self.networks.stopped(c)      # listeners go; the veths died with the namespace
            c.io.close_stdin()
            again = restart.restarts(c.host_config.get("RestartPolicy"), code, c.record["RestartCount"],
                                     c.manual_stop or c.record.get("HasBeenManuallyStopped"))
            # AutoRemove: the exit and the removal's first step are one durable step (module docstring)
            remove = not again and bool(c.host_config.get("AutoRemove"))
            if not again:
                # Before the status says so: `docker restart` starts again as soon as it sees
                # the exit, and makes the cgroup this would then remove under it.
                self.release_cgroup(c)
            if remove:
                self.unmount(c)           # mounted volatile: nothing to sync, ~10 us
            elif not again:
                # Beside the save, on another exit worker, and nobody waits for it (module
                # docstring); not if a start (`docker restart`) asked for the mount meanwhile.
                self.exit_workers.submit(self.unmount, c, self.layers.mount_generation(c.id))
            c.set_status(RESTARTING if again else EXITED)
            c.exit_generation += 1
            # Durable before any waiter hears of the exit (they wake once c.lock is released).
            if remove:
                # The record's file is retired as it is (it says "running"), without an fsync:
                # after a crash the restarted daemon removes an AutoRemove container that ran
                # (containers.reconcile), and no one reads its exit code again.
                lifecycle.begin_removal(c)
                self.retire(c, False)
            else:
                self.save(c)
        self.emit(c, "die", {"exitCode": str(code)})
        if again:
            c.backoff = restart.next_backoff(c.backoff, time.monotonic() - c.started_mono)
            c.restart_timer = self.timers.call_later(c.backoff, self._restart_after_backoff, c)
            return
        if remove:
            try:
                self.finish_removal(c)
            except errors.MinidockError as exc:
                log.warning("auto-remove of %s failed: %s", c.name, exc.message)

    def _restart_after_backoff(self, c):
        with c.lock:
            if c.status != RESTARTING or c.manual_stop:
                return
            c.record["RestartCount"] += 1
            try:
                self.start(c)
            except errors.MinidockError as exc:
                log.warning("restart of %s failed: %s", c.name, exc.message)
                if c.status == RESTARTING:
                    c.set_status(EXITED)
                self.save(c)
                return
        self.emit(c, "start")

    def cancel_restart(self, c, manually=False):
        """With c.lock held: a container waiting to restart stays exited instead."""
        c.manual_stop = True
        if manually:
            c.record["HasBeenManuallyStopped"] = True
        if c.restart_timer:
            c.restart_timer.cancel()
        if c.status == RESTARTING:
            c.set_status(EXITED)
            self.save(c)

    # -- signals ---------------------------------------------------------------------------------
    def kill(self, c, number):
        with c.lock:
            if c.status == RESTARTING and number == signal.SIGKILL:
                self.cancel_restart(c)
                return
            if c.status not in ALIVE:
                raise errors.Conflict(f"Container {c.id} is not running")
            pid = c.pid
            generation = c.exit_generation
            if number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                # A deliberate kill is not a failure the restart policy should undo.
                c.manual_stop = number == signal.SIGKILL or c.manual_stop
        self._signal(c, pid, number)
        self.emit(c, "kill", {"signal": str(number)})
        if number == signal.SIGKILL:
            self.wait_exit(c, generation, STOP_KILL_WAIT)     # it cannot be caught: wait for it

    def _signal(self, c, pid, number):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass
        if c.status == PAUSED and number == signal.SIGKILL:
            self.thaw(c)

    def stop(self, c, timeout=None, sig=None):
        """Send the stop signal (`sig`, else the container's StopSignal, else SIGTERM), wait
        `timeout` seconds (else its StopTimeout, else 10), then SIGKILL."""
        with c.lock:
            if c.status == RESTARTING:
                self.cancel_restart(c, manually=True)
                self.emit(c, "stop")
                return
            if c.status not in ALIVE:
                raise errors.NotModified("container already stopped")
            c.manual_stop = True
            c.record["HasBeenManuallyStopped"] = True
            generation = c.exit_generation
            pid = c.pid
        if timeout is None:
            timeout = c.config.get("StopTimeout") or config.DEFAULT_STOP_TIMEOUT
        stop_signal = config.parse_signal(sig or c.config.get("StopSignal") or "SIGTERM")
        if c.status == PAUSED:
            self.thaw(c)
        self._signal(c, pid, stop_signal)
        if not self.wait_exit(c, generation, max(0, timeout)):
            self._signal(c, pid, signal.SIGKILL)
            self.wait_exit(c, generation, STOP_KILL_WAIT)
        self.emit(c, "stop")

    @staticmethod
    def wait_exit(c, generation, timeout):
        """Wait for the run `generation` to end; False on timeout."""
        with c.changed:
            return c.changed.wait_for(lambda: c.exit_generation != generation or c.status not in ALIVE,
                                      timeout)

    # -- pause -----------------------------------------------------------------------------------
    def pause(self, c):
        with c.lock:
            if c.status == PAUSED:
                raise errors.Conflict(f"Container {c.id} is already paused")
            if c.status != RUNNING:
                raise errors.Conflict(f"Container {c.id} is not running")
            self.health.stopped(c)          # no probes into a paused container
            self.freeze(c)
            c.set_status(PAUSED)
            self.save(c)
        self.emit(c, "pause")

    def unpause(self, c):
        with c.lock:
            if c.status != PAUSED:
                raise errors.Conflict(f"Container {c.id} is not paused")
            self.thaw(c)
            c.set_status(RUNNING)
            self.save(c)
            # probing resumes; the status stays what the pause left until the next probe
            self.health.started(c, rfc3339_seconds(c.state["StartedAt"]), reset=False)
        self.emit(c, "unpause")

    def freeze(self, c):
        self._set_frozen(c, True)

    def thaw(self, c):
        self._set_frozen(c, False)

    def _set_frozen(self, c, frozen):
        group = self.cgroups.get(c.id)
        if group is not None and self.cgroups.freeze:
            group.freeze() if frozen else group.thaw()
        else:
            ns.signal_all(c.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    # -- resources -------------------------------------------------------------------------------
    def _oom_killed(self, c):
        """Did the kernel's OOM killer kill a process of the container (memory.events)?"""
        group = self.cgroups.get(c.id)
        if group is None:
            return False
        try:
            with open(os.path.join(group.path, "memory.events")) as f:
                return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in f)
        except (OSError, ValueError, IndexError):
            return False

    def release_cgroup(self, c):
        group = self.cgroups.get(c.id)
        if group is not None:
            try:
                group.remove()
            except OSError as exc:
                log.warning("removing the cgroup of %s: %s", c.name, exc)

    def unmount(self, c, generation=None):
        """Unmount c's rootfs (with `generation`: layers.unmount's condition). A container
        removed meanwhile has no layer any more, nor a mount."""
        try:
            self.layers.unmount(c.id, generation)
        except errors.NotFound:
            if generation is None:
                log.warning("unmounting the rootfs of %s: no writable layer", c.name)
        except OSError as exc:
            log.warning("unmounting the rootfs of %s: %s", c.name, exc)
