"""Exec instances: extra processes started inside a running container.

`docker exec` is two calls: create (records what to run) and start (runs it, usually over a
hijacked connection carrying stdin and output). The process joins the container's namespaces
through the spawner (`ns.enter_container`: setns into each namespace of the container's init,
then fork, because joining a pid namespace only applies to children). Its exit code is recorded
on the instance, where the CLI reads it (`GET /exec/(id)/json`).

Exec records are kept as JSON like containers, so an inspect after a daemon restart still
answers; one that was running when the daemon died is marked finished with code 137. Records
of a removed container are dropped when next looked at, and at start-up.
"""

import logging
import os
import threading

from minidock import errors, http, schema, store
from minidock.schema import BOOL, STR, STRS, STRSLICE, UINT
from minidock.container.config import merge_env
from minidock.container.lifecycle import PAUSED, RUNNING
from minidock.container.stdio import Stdio, container_pty, set_winsize

# The bodies' field types, checked before anything happens (schema.py; Docker's ExecConfig and
# ExecStartCheck).
EXEC_CREATE_TYPES = {"User": STR, "Privileged": BOOL, "Tty": BOOL, "ConsoleSize": [UINT],
                     "AttachStdin": BOOL, "AttachStdout": BOOL, "AttachStderr": BOOL, "Detach": BOOL,
                     "DetachKeys": STR, "Env": STRS, "WorkingDir": STR, "Cmd": STRSLICE}
EXEC_START_TYPES = {"Detach": BOOL, "Tty": BOOL, "ConsoleSize": [UINT]}


log = logging.getLogger("minidock.execs")


class Exec:
    def __init__(self, record):
        self.record = record
        self.lock = threading.Condition()
        self.pid = 0
        self.pty_master = None

    @property
    def id(self):
        return self.record["ID"]


class Execs:
    """Exec instances, by id; each also listed in its container's `exec_ids`."""

    def __init__(self, data_root, containers, layers, spawner, exits):
        self.containers, self.layers, self.spawner, self.exits = containers, layers, spawner, exits
        # records in two slots (slotfile.py): the start and the exit write in place
        self.collection = store.Collection(os.path.join(data_root, "execs"), "exec instance", slots=True)
        for problem in self.collection.load():
            log.warning("skipping unreadable exec state: %s", problem)
        self.by_id = {}
        for eid, record in list(self.collection.objects.items()):    # deletes as it goes
            if record.get("Running"):
                record.update(Running=False, ExitCode=137, Pid=0)
                self.collection.save(eid, record)
            if record["ContainerID"] in containers.by_id:
                self.by_id[eid] = Exec(record)
                containers.by_id[record["ContainerID"]].exec_ids.append(eid)
            else:
                self.collection.delete(eid)

    def get(self, ref):
        eid = self.collection.resolve(ref)
        e = self.by_id.get(eid)
        if e is not None and e.record["ContainerID"] not in self.containers.by_id:
            self._forget(e)              # its container was removed
            e = None
        if e is None:
            raise errors.NotFound(f"No such exec instance: {ref}")
        return e

    def _forget(self, e):
        self.by_id.pop(e.id, None)
        self.collection.delete(e.id)

    def _forget_orphans(self):
        for e in list(self.by_id.values()):
            if e.record["ContainerID"] not in self.containers.by_id:
                self._forget(e)

    def create(self, container_ref, body):
        schema.check_body(body, EXEC_CREATE_TYPES, "ExecConfig")
        c = self.containers.get(container_ref)
        if c.status == PAUSED:
            raise errors.Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if c.status != RUNNING:
            raise errors.Conflict(f"Container {c.id} is not running")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list):
            raise errors.InvalidParameter("No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list):
            raise errors.InvalidParameter("Env must be a list of KEY=value strings")
        self._forget_orphans()
        eid = store.new_id()
        record = {
            "ID": eid, "ContainerID": c.id, "Running": False, "ExitCode": None, "Pid": 0,
            "OpenStdin": bool(body.get("AttachStdin")), "OpenStdout": bool(body.get("AttachStdout")),
            "OpenStderr": bool(body.get("AttachStderr")), "CanRemove": False,
            "DetachKeys": body.get("DetachKeys") or "",
            "ProcessConfig": {"tty": bool(body.get("Tty")), "entrypoint": cmd[0], "arguments": cmd[1:],
                              "privileged": bool(body.get("Privileged")), "user": body.get("User") or ""},
            "Env": env, "WorkingDir": body.get("WorkingDir") or "",
            "ConsoleSize": _console_size(body.get("ConsoleSize")),     # API 1.42; not shown by inspect
        }
        self.collection.save(eid, record)
        self.by_id[eid] = Exec(record)
        c.exec_ids.append(eid)
        self.containers.emit(c, "exec_create: " + " ".join(cmd), {"execID": eid})
        return eid

    @staticmethod
    def _check_not_started(e):
        if e.record["Running"] or e.record["ExitCode"] is not None:
            raise errors.Conflict(f"Error: Exec command {e.id} has already run")

    def start_session(self, ref, tty=None):
        """Check the exec can start (404, 409 before any upgrade); -> (whether its stream is a
        TTY's, run(conn) that starts it over a hijacked connection)."""
        e = self.get(ref)
        self._check_not_started(e)
        tty = e.record["ProcessConfig"]["tty"] if tty is None else tty
        return bool(tty), lambda conn: self.start(e.id, tty=tty, conn=conn)

    def start(self, ref, detach=False, tty=None, conn=None):
        """Run the exec; with `conn` (a hijacked connection) pump stdio over it until it ends."""
        e = self.get(ref)
        with e.lock:
            self._check_not_started(e)
            c = self.containers.get(e.record["ContainerID"])
            if c.status == PAUSED:
                raise errors.Conflict(f"Container {c.id} is paused, unpause the container before exec")
            if c.status != RUNNING:
                raise errors.Conflict(f"Container {c.id} is not running")
            e.record["Running"] = True
        pc = e.record["ProcessConfig"]
        tty = pc["tty"] if tty is None else tty
        spec = {
            "argv": [pc["entrypoint"]] + pc["arguments"],
            "env": merge_env(c.config["Env"], e.record["Env"]) + (["TERM=xterm"] if tty else []),
            "cwd": e.record["WorkingDir"] or c.config.get("WorkingDir") or "/",
            "user": pc["user"] or c.config.get("User") or "",
            "group_add": c.host_config.get("GroupAdd") or [],
            "rootfs": self.layers.mount(c.id),
            "tty": tty,
            "privileged": pc["privileged"] or bool(c.host_config.get("Privileged")),
            "cap_add": c.host_config.get("CapAdd") or [],
            "cap_drop": c.host_config.get("CapDrop") or [],
            "security_opt": c.host_config.get("SecurityOpt") or [],   # the container's seccomp
            "pids_limit": self.containers.cgroups.pids_rlimit(c.host_config),   # its own count
        }
        io = Stdio(tty, e.record["OpenStdin"] and (conn is not None or tty),
                   make_pty=lambda: container_pty(c.pid))
        height, width = (e.record.get("ConsoleSize") or [0, 0])[:2]
        if tty and io.pty_master is not None and height and width:
            set_winsize(io.pty_master, height, width)   # API 1.42: sized before the command runs
        e.pty_master, stdin_w, stdio, to_close = io.pty_master, io.stdin_w, io.child, io.close_after_spawn
        readers = [(fd, http.STDOUT if name == "stdout" else http.STDERR) for fd, name in io.outputs]
        try:
            pid = self.spawner.exec(c.pid, spec, *stdio)
        except errors.MinidockError as exc:
            # moby records 126 for every exec that could not start (127 is `run`'s code for a
            # missing command); the CLI prints the message and exits with the recorded code.
            code = 126
            with e.lock:
                e.record.update(Running=False, ExitCode=code)
                self.collection.save(e.id, e.record)
                e.lock.notify_all()
            for fd in [fd for fd, _ in readers] + ([stdin_w] if stdin_w is not None else []):
                os.close(fd)                     # the child's ends are closed in `finally`
            if conn is None:
                raise
            message = (f"OCI runtime exec failed: exec failed: unable to start container process: "
                       f"{exc.message}: unknown\r\n").encode()
            conn.send(message if tty else http.frame(http.STDOUT, message))
            return
        finally:
            for fd in to_close:
                os.close(fd)
        with e.lock:
            e.pid = pid
            e.record["Pid"] = pid
            self.collection.save(e.id, e.record)
        early = self.exits.register(pid, lambda code: self._record_exit(e, code))
        self.containers.emit(c, "exec_start: " + " ".join(spec["argv"]), {"execID": e.id})
        if early is not None:
            self._record_exit(e, early)
        self._pump(e, readers, stdin_w, conn, tty)

    def _pump(self, e, readers, stdin_w, conn, tty):
        """Carry output to the client (or discard it when detached) until the process ends."""
        def read_out(fd, stream):
            try:
                while True:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if conn is not None:
                        try:
                            conn.send(data if tty else http.frame(stream, data))
                        except OSError:
                            pass
            finally:
                with e.lock:
                    if e.pty_master == fd:
                        e.pty_master = None      # never resize a closed (or reused) fd number
                    os.close(fd)

        def write_in():
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    os.write(stdin_w, data)
            except OSError:
                pass
            finally:
                if tty:
                    try:
                        os.write(stdin_w, b"\x04")
                    except OSError:
                        pass
                os.close(stdin_w)

        threads = [threading.Thread(target=read_out, args=r, daemon=True) for r in readers]
        for t in threads:
            t.start()
        if stdin_w is not None:
            if conn is not None:
                threading.Thread(target=write_in, daemon=True).start()
            else:
                os.close(stdin_w)
        if conn is None:
            return                                    # detached: the pumps drain in the background
        for t in threads:
            t.join()
        with e.lock:
            e.lock.wait_for(lambda: not e.record["Running"], 10)

    def _record_exit(self, e, code):
        with e.lock:
            e.record.update(Running=False, ExitCode=code, Pid=0)
            e.pid = 0
            self.collection.save(e.id, e.record)
            e.lock.notify_all()
        c = self.containers.by_id.get(e.record["ContainerID"])
        if c is not None:
            self.containers.emit(c, "exec_die", {"execID": e.id, "exitCode": str(code)})

    def inspect(self, ref):
        e = self.get(ref)
        record = {k: v for k, v in e.record.items() if k != "ConsoleSize"}
        c = self.containers.by_id.get(record["ContainerID"])
        record["Container"] = None
        if c is not None:
            record["Container"] = {"ID": c.id, "Name": "/" + c.name, "State": c.state}
        return record

    def resize(self, ref, height, width):
        e = self.get(ref)
        with e.lock:
            if e.pty_master is None:
                # The CLI resizes while its start request is still on the way; an error here makes
                # it retry (as with Docker) instead of losing the terminal size.
                raise errors.Conflict(f"Exec {e.id} is not running")
            set_winsize(e.pty_master, height, width)


def _console_size(value):
    """`ConsoleSize` [height, width] of an exec (API 1.42), checked; None when not given."""
    if value in (None, [], [0, 0]):
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)):
        raise errors.InvalidParameter(f"invalid ConsoleSize: {value!r}, want [height, width]")
    return value
