"""A container's life: its states, the transitions between them, and the object that holds them.

    created --start--> running --exit--> exited --start--> running ...
                       running --pause--> paused --unpause--> running
                       running --exit + restart policy--> restarting --backoff--> running
    any non-running --remove--> removing --> dead (gone from the daemon)

`TRANSITIONS` is the truth (`python3 -c 'from minidock.container import lifecycle;
print(lifecycle.TRANSITIONS)'` prints it): every status change, including the daemon's own
bookkeeping at start-up (`reconcile`) and the end of a removal, goes through
`Container.set_status`, which refuses a move the table does not allow with a Conflict (409).
The status is mirrored into Docker's booleans (`State.Running`, `Paused`, `Restarting`,
`Dead`) in the same step, so they can never disagree with it.
"""

import os
import threading

from minidock import errors
from minidock.container import config
from minidock.container.stdio import ContainerIO
from minidock.times import ZERO_TIME, now_rfc3339

CREATED, RUNNING, PAUSED, RESTARTING, EXITED, REMOVING, DEAD = (
    "created", "running", "paused", "restarting", "exited", "removing", "dead")

TRANSITIONS = {
    CREATED: {RUNNING, REMOVING, DEAD},
    RUNNING: {PAUSED, EXITED, RESTARTING, REMOVING},
    PAUSED: {RUNNING, EXITED, REMOVING},
    RESTARTING: {RUNNING, EXITED, REMOVING},
    EXITED: {RUNNING, RESTARTING, REMOVING},
    REMOVING: {DEAD},
    DEAD: {REMOVING},           # a removal that failed half-way leaves it dead; `rm` tries again
}

ALIVE = (RUNNING, PAUSED)                       # a process exists
ACTIVE = (RUNNING, PAUSED, RESTARTING)          # `docker ps` lists it without -a


class Container:
    """One container: its persisted record plus the live process plumbing.

    `lock` (an RLock) guards the record and the status; `changed` is a condition on that lock,
    notified on every status change and exit, which `wait`, `stop` and attach sessions block on.
    """

    def __init__(self, record):
        self.record = record
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pid = 0
        self.io = ContainerIO()
        self.manual_stop = False
        self.restart_timer = None
        self.backoff = 0.0
        self.started_mono = 0.0
        self.exit_generation = 0          # bumps on every exit: `wait` waits for the next one
        self.exec_ids = []                # exec instances created in it, oldest first
        self.removal_error = None         # why the last removal failed (a `removed` wait says it)
        self.removals = 0                 # removals begun: a dead container's `removed` waits for the next

    @property
    def id(self):
        return self.record["Id"]

    @property
    def name(self):
        return self.record["Name"].lstrip("/")

    @property
    def state(self):
        return self.record["State"]

    @property
    def status(self):
        return self.state["Status"]

    @property
    def config(self):
        return self.record["Config"]

    @property
    def host_config(self):
        return self.record["HostConfig"]

    @property
    def running(self):
        return self.status in ALIVE

    @property
    def network_mode(self):
        """"host", "none", "container:<ref>" or a bridge network's name (config.network_mode)."""
        return config.network_mode(self.host_config)

    def set_status(self, status):
        """Move to `status` if TRANSITIONS allows it (Conflict otherwise); wakes waiters."""
        with self.lock:
            current = self.status
            if status != current and status not in TRANSITIONS[current]:
                raise errors.Conflict(f"container {self.id[:12]} cannot go from {current} to {status}")
            self.state.update(status_fields(status))
            self.changed.notify_all()


def status_fields(status):
    """The State fields that mirror `status`: Status and Docker's booleans."""
    return {"Status": status, "Running": status in ALIVE, "Paused": status == PAUSED,
            "Restarting": status == RESTARTING, "Dead": status == DEAD}


def begin_removal(c):
    """With c.lock held: status removing, one more removal begun (what `removed` waits count)."""
    c.set_status(REMOVING)
    c.removal_error, c.removals = None, c.removals + 1


WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


def new_record(cid, name, path, args, image_id, cfg, host_config, driver, directory):
    """The record of a container just created: every field inspect shows, in state "created";
    its generated files (log, /etc/hostname, hosts, resolv.conf) live in `directory`."""
    return {
        "Id": cid, "Created": now_rfc3339(), "Name": "/" + name, "Path": path, "Args": args,
        "State": {"Status": CREATED, "Running": False, "Paused": False, "Restarting": False,
                  "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                  "StartedAt": ZERO_TIME, "FinishedAt": ZERO_TIME},
        "Image": image_id, "RestartCount": 0, "Driver": driver,
        "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
        "Config": cfg, "HostConfig": host_config,
        "LogPath": os.path.join(directory, f"{cid}-json.log"),
        "HostnamePath": os.path.join(directory, "hostname"),
        "HostsPath": os.path.join(directory, "hosts"),
        "ResolvConfPath": os.path.join(directory, "resolv.conf"),
        "Mounts": [], "HasBeenManuallyStopped": False,
    }


def waiter(c, condition="not-running"):
    """Register a wait now and return `result(stop)`, which blocks until `condition` holds
    and returns the exit code. The condition is judged against the state at the moment of
    this call: `next-exit` means the first exit after it, even one that happens before
    `result` runs (the API sends its headers in between, and the CLI starts the container
    as soon as it sees them). `not-running` is met at once by a container that is not
    running; `removed` waits for the removal (an AutoRemove or a `docker rm`), which may fail:
    then `result` returns the removal's error message as well, else None."""
    if condition not in WAIT_CONDITIONS:
        raise errors.InvalidParameter(f"invalid condition: {condition}")
    with c.lock:
        generation, removals, dead = c.exit_generation, c.removals, c.status == DEAD
        wait_exit = condition == "next-exit" or (condition == "not-running" and c.status in ACTIVE)

    def result(stop=lambda: False):
        with c.changed:
            if wait_exit:
                while c.exit_generation == generation and not stop():
                    c.changed.wait(0.5)
            if condition == "removed":
                while (c.status != DEAD or (dead and c.removals == removals)) and not stop():
                    c.changed.wait(0.5)
                return c.state["ExitCode"], c.removal_error
            return c.state["ExitCode"], None
    return result
