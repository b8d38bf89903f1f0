"""Containers: configuration, lifecycle, output, and the rules Docker users expect.

A container is a record (its config, host config and state, one JSON file, written atomically)
plus, while it runs, a process tree started by the spawner (ns.py does the isolation) and the
threads that carry its output: stdout and stderr are read from pipes (or one pty with a TTY),
appended to a json-file log and fanned out to attached clients.

Lifecycle (the table `TRANSITIONS` below is the truth; `docs` can print it):

    created --start--> running --exit--> exited --start--> running ...
                       running --pause--> paused --unpause--> running
                       running --exit + restart policy--> restarting --backoff--> running
    any non-running --remove--> removing --> (gone)

Docker's rules followed here, each where it is applied: Entrypoint/Cmd merging with the image,
exit codes (the process's own, 128+signal when killed, 125/126/127 when it could not start),
`stop` = StopSignal, grace period, SIGKILL; restart policies with a doubling back-off that resets
after 10 s of running; names unique, `/`-prefixed, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
"""

import datetime
import fcntl
import json
import logging
import os
import queue
import random
import re
import shutil
import signal
import struct
import termios
import threading
import time

from minidock import errors, store

log = logging.getLogger("minidock.containers")

CREATED, RUNNING, PAUSED, RESTARTING, EXITED, REMOVING, DEAD = (
    "created", "running", "paused", "restarting", "exited", "removing", "dead")

TRANSITIONS = {
    CREATED: {RUNNING, REMOVING, DEAD},
    RUNNING: {PAUSED, EXITED, RESTARTING, REMOVING},
    PAUSED: {RUNNING, EXITED, REMOVING},
    RESTARTING: {RUNNING, EXITED, REMOVING},
    EXITED: {RUNNING, RESTARTING, REMOVING},
    REMOVING: {DEAD},
    DEAD: set(),
}

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ZERO_TIME = "0001-01-01T00:00:00Z"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_TIMEOUT = 10
DEFAULT_DETACH_KEYS = b"\x10\x11"      # ctrl-p ctrl-q
RESTART_BACKOFF_START = 0.1
RESTART_BACKOFF_RESET = 10.0

SIGNALS = {name[3:]: int(value) for name, value in signal.__dict__.items()
           if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(value, signal.Signals)}

ADJECTIVES = ["admiring", "brave", "clever", "dazzling", "eager", "focused", "gallant", "happy",
              "jolly", "keen", "lucid", "modest", "nifty", "optimistic", "quirky", "relaxed",
              "sharp", "tender", "upbeat", "vibrant", "wizardly", "youthful", "zealous"]
SURNAMES = ["babbage", "curie", "dijkstra", "euler", "feynman", "goldberg", "hopper", "hypatia",
            "kepler", "lamport", "lovelace", "mccarthy", "noether", "pike", "ritchie", "shannon",
            "thompson", "turing", "wozniak", "yonath"]


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_signal(value, default=signal.SIGKILL):
    """A signal by number or name ("9", "KILL", "SIGKILL")."""
    if value in (None, ""):
        return int(default)
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if number <= 0 or number > 64:
            raise errors.InvalidParameter(f"Invalid signal: {value}")
        return number
    name = text[3:] if text.startswith("SIG") else text
    if name not in SIGNALS:
        raise errors.InvalidParameter(f"Invalid signal: {value}")
    return SIGNALS[name]


def strslice(value):
    """Docker's StrSlice: a JSON string means a one-element list; null stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise errors.InvalidParameter(f"expected a string or a list of strings, got {value!r}")


def merge_env(image_env, user_env):
    """User variables override image ones by name; order: image's first, then new ones."""
    merged = {}
    for item in (image_env or []) + (user_env or []):
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


class Container:
    """One container: its persisted record plus the live process plumbing."""

    def __init__(self, record):
        self.record = record
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pid = 0
        self.stdin_w = None               # fd we write the container's stdin into
        self.pty_master = None
        self.subscribers = []             # queues of (stream, bytes) / None at end
        self.pumps = []
        self.output_done = threading.Event()
        self.output_done.set()
        self.manual_stop = False
        self.restart_timer = None
        self.backoff = 0.0
        self.started_mono = 0.0
        self.exit_generation = 0          # bumps on every exit: `wait` waits for the next one

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
        return self.status in (RUNNING, PAUSED)

    def set_status(self, status):
        current = self.status
        if status != current and status not in TRANSITIONS[current]:
            raise errors.Conflict(f"container {self.id[:12]} cannot go from {current} to {status}")
        st = self.state
        st["Status"] = status
        st["Running"] = status in (RUNNING, PAUSED)
        st["Paused"] = status == PAUSED
        st["Restarting"] = status == RESTARTING
        st["Dead"] = status == DEAD
        self.changed.notify_all()


class Containers:
    """The container backend: every container operation the API offers, without HTTP."""

    def __init__(self, engine, spawner=None):
        self.engine = engine
        self.spawner = spawner
        self.root = os.path.join(engine.config.data_root, "containers")
        self.collection = store.Collection(self.root, "container", per_dir=True)
        self.by_id = {}
        self.by_pid = {}                  # init pid -> Container
        self.early_exits = {}             # pid -> exit code, for exits reported before registration
        self.pid_lock = threading.Lock()
        self.names_lock = threading.Lock()
        self.execs = None                 # set by the Execs backend
        for problem in self.collection.load():
            log.warning("skipping unreadable container state: %s", problem)
        for cid, record in self.collection.objects.items():
            self.by_id[cid] = Container(record)

    # -- lookup ----------------------------------------------------------------------------------
    def get(self, ref):
        cid = self.collection.resolve(ref, name_of=lambda r: r["Name"].lstrip("/"))
        return self.by_id[cid]

    def all(self):
        return list(self.by_id.values())

    def counts(self):
        counts = {"running": 0, "paused": 0, "stopped": 0}
        for c in self.all():
            if c.status == PAUSED:
                counts["paused"] += 1
            elif c.status in (RUNNING, RESTARTING):
                counts["running"] += 1
            else:
                counts["stopped"] += 1
        return counts

    def save(self, c):
        self.collection.save(c.id, c.record)

    def emit(self, c, action, extra=None):
        attributes = {"name": c.name, "image": c.config.get("Image", "")}
        attributes.update(c.config.get("Labels") or {})
        attributes.update(extra or {})
        self.engine.events.emit("container", action, c.id, attributes, image=c.config.get("Image", ""))

    # -- start-up reconciliation -----------------------------------------------------------------
    def reconcile(self):
        """Containers that were running when the last daemon died died with it: record that,
        then restart the ones whose restart policy says so."""
        to_restart = []
        for c in self.all():
            st = c.state
            if st["Status"] in (RUNNING, PAUSED, RESTARTING):
                st.update(Status=EXITED, Running=False, Paused=False, Restarting=False, Pid=0,
                          ExitCode=137 if st.get("ExitCode", 0) == 0 else st["ExitCode"],
                          FinishedAt=now_rfc3339(), Error="daemon stopped while the container ran")
                self.save(c)
                if self._policy_restarts(c, st["ExitCode"], after_daemon_restart=True):
                    to_restart.append(c)
            elif st["Status"] == REMOVING:
                self._destroy(c)
            elif st["Status"] == EXITED and st["StartedAt"] != ZERO_TIME:
                # Docker's rule: `always` comes back with the daemon even after a manual stop;
                # `unless-stopped` only if it was not stopped by hand.
                name = (c.host_config.get("RestartPolicy") or {}).get("Name")
                if name == "always" or (name == "unless-stopped" and not c.record.get("HasBeenManuallyStopped")):
                    to_restart.append(c)
        for c in to_restart:
            try:
                self.start(c.id)
            except errors.MinidockError as exc:
                log.warning("could not restart %s: %s", c.name, exc.message)

    def shutdown(self, timeout=10):
        """Daemon shutdown: stop every running container (its StopSignal, then SIGKILL), in
        parallel, so their state on disk says how they ended rather than "died with the daemon"."""
        running = [c for c in self.all() if c.status in (RUNNING, PAUSED, RESTARTING)]
        threads = []
        for c in running:
            t = threading.Thread(target=self._stop_quietly, args=(c, timeout), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout + 5)

    def _stop_quietly(self, c, timeout):
        try:
            self.stop(c.id, min(timeout, c.config.get("StopTimeout") or timeout))
        except errors.MinidockError:
            pass
        # the restart policy must apply after the daemon restarts, as if it never stopped them
        c.record["HasBeenManuallyStopped"] = False
        c.manual_stop = False
        self.save(c)

    # -- create ----------------------------------------------------------------------------------
    def create(self, body, name=None):
        """POST /containers/create. Returns (id, warnings)."""
        if not isinstance(body, dict):
            raise errors.InvalidParameter("container config must be a JSON object")
        host_config = body.get("HostConfig") or {}
        if not isinstance(host_config, dict):
            raise errors.InvalidParameter("HostConfig must be a JSON object")
        image_ref = body.get("Image")
        if not image_ref or not isinstance(image_ref, str):
            raise errors.InvalidParameter("Config.Image is required")
        if name is not None and name != "":
            if not NAME_RE.match(name):
                raise errors.InvalidParameter(
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            name = name.lstrip("/")
        images, layers = self.engine.images, self.engine.layers
        image_id = images.resolve(image_ref)                  # NotFound makes the CLI pull
        image_cfg = images.config(image_id).get("config") or {}
        config = self._merge_config(body, image_cfg, image_ref)
        host_config = self._normalise_host_config(host_config)
        warnings = []
        if self.engine.cgroups is not None:
            # Limits this machine cannot enforce are reset here, with Docker's warnings.
            adapted, warnings = self.engine.cgroups.check(host_config)
            host_config.update(adapted)
        cid = store.new_id()
        with self.names_lock:
            name = name or self._generate_name()
            self._check_name_free(name)
            record = {
                "Id": cid, "Created": now_rfc3339(), "Name": "/" + name,
                "Path": "", "Args": [],
                "State": {"Status": CREATED, "Running": False, "Paused": False, "Restarting": False,
                          "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                          "StartedAt": ZERO_TIME, "FinishedAt": ZERO_TIME},
                "Image": image_id, "RestartCount": 0, "Driver": layers.driver_name(),
                "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
                "Config": config, "HostConfig": host_config,
                "LogPath": os.path.join(self.root, cid, f"{cid}-json.log"),
                "HostnamePath": os.path.join(self.root, cid, "hostname"),
                "HostsPath": os.path.join(self.root, cid, "hosts"),
                "ResolvConfPath": os.path.join(self.root, cid, "resolv.conf"),
                "Mounts": [], "HasBeenManuallyStopped": False,
            }
            path, args = self._command(config)
            if not path:
                raise errors.InvalidParameter("No command specified")
            record["Path"], record["Args"] = path, args
            os.makedirs(os.path.join(self.root, cid), mode=0o700)
            try:
                if self.engine.volumes is not None:
                    record["Mounts"] = self.engine.volumes.prepare_mounts(record, image_cfg, self)
                layers.create_rw(cid, images.top_chain(image_id))
                self.collection.save(cid, record)
            except BaseException:
                shutil.rmtree(os.path.join(self.root, cid), ignore_errors=True)
                layers.remove_rw(cid)
                raise
            c = Container(record)
            self.by_id[cid] = c
        self.emit(c, "create")
        return cid, warnings

    def _generate_name(self):
        for _ in range(100):
            name = f"{random.choice(ADJECTIVES)}_{random.choice(SURNAMES)}"
            if not self._name_owner(name):
                return name
        return f"{random.choice(ADJECTIVES)}_{random.choice(SURNAMES)}{random.randint(1, 9999)}"

    def _name_owner(self, name):
        for c in self.all():
            if c.name == name:
                return c
        return None

    def _check_name_free(self, name):
        owner = self._name_owner(name)
        if owner:
            raise errors.Conflict(
                f'Conflict. The container name "/{name}" is already in use by container '
                f'"{owner.id}". You have to remove (or rename) that container to be able to reuse that name.')

    def _merge_config(self, body, image_cfg, image_ref):
        """The container's Config: the user's, with the image's defaults where the user gave none."""
        keys = ["Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
                "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck",
                "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled",
                "MacAddress", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell"]
        config = {k: body.get(k) for k in keys}
        for key in ("Hostname", "Domainname", "User", "WorkingDir", "MacAddress", "StopSignal"):
            if config[key] is None:
                config[key] = ""
        for key in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
            config[key] = bool(config[key])
        config["Image"] = image_ref
        config["Cmd"] = strslice(body.get("Cmd"))
        config["Entrypoint"] = strslice(body.get("Entrypoint"))
        if config["Env"] is not None and not isinstance(config["Env"], list):
            raise errors.InvalidParameter("Env must be a list of KEY=value strings")
        # Docker's merge rule (daemon/commit.go merge): with no user entrypoint, an empty user
        # Cmd takes the image's Cmd; a null user entrypoint takes the image's entrypoint.
        if not config["Entrypoint"]:
            if not config["Cmd"]:
                config["Cmd"] = image_cfg.get("Cmd")
            if config["Entrypoint"] is None:
                config["Entrypoint"] = image_cfg.get("Entrypoint")
        if config["Entrypoint"] == [""]:          # `--entrypoint ""` resets the image's
            config["Entrypoint"] = None
        config["Env"] = merge_env(image_cfg.get("Env") or [], config["Env"] or [])
        if not any(e.startswith("PATH=") for e in config["Env"]):
            config["Env"].insert(0, "PATH=" + DEFAULT_PATH)
        if not config["WorkingDir"]:
            config["WorkingDir"] = image_cfg.get("WorkingDir") or ""
        if not config["User"]:
            config["User"] = image_cfg.get("User") or ""
        if not config["StopSignal"]:
            config["StopSignal"] = image_cfg.get("StopSignal") or ""
        for key in ("ExposedPorts", "Volumes"):
            merged = dict(image_cfg.get(key) or {})
            merged.update(config[key] or {})
            config[key] = merged or None
        labels = dict(image_cfg.get("Labels") or {})
        labels.update(config["Labels"] or {})
        config["Labels"] = labels
        if config["Healthcheck"] is None and image_cfg.get("Healthcheck"):
            config["Healthcheck"] = image_cfg["Healthcheck"]
        return config

    @staticmethod
    def _command(config):
        entrypoint = config.get("Entrypoint") or []
        cmd = config.get("Cmd") or []
        argv = list(entrypoint) + list(cmd)
        if not argv:
            return "", []
        return argv[0], argv[1:]

    def _normalise_host_config(self, hc):
        hc = dict(hc)
        defaults = {"Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {}},
                    "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no",
                    "MaximumRetryCount": 0}, "AutoRemove": False, "VolumeDriver": "", "VolumesFrom": None,
                    "CapAdd": None, "CapDrop": None, "Dns": [], "DnsOptions": [], "DnsSearch": [],
                    "ExtraHosts": None, "GroupAdd": None, "IpcMode": "", "Cgroup": "", "Links": None,
                    "OomScoreAdj": 0, "PidMode": "", "Privileged": False, "PublishAllPorts": False,
                    "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
                    "ShmSize": 67108864, "Runtime": "minidock", "ConsoleSize": [0, 0], "Isolation": "",
                    "CpuShares": 0, "Memory": 0, "CgroupParent": "", "BlkioWeight": 0, "CpuPeriod": 0,
                    "CpuQuota": 0, "CpusetCpus": "", "CpusetMems": "", "KernelMemory": 0,
                    "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": -1, "OomKillDisable": False,
                    "PidsLimit": 0, "Ulimits": None}
        for key, value in defaults.items():
            if hc.get(key) is None and value is not None:
                hc[key] = value
            hc.setdefault(key, value)
        if not hc.get("ShmSize"):
            hc["ShmSize"] = 67108864
        if hc["ShmSize"] < 0:
            raise errors.InvalidParameter("SHM size can not be less than 0")
        policy = hc.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        if name not in ("no", "always", "unless-stopped", "on-failure"):
            raise errors.InvalidParameter(f"invalid restart policy '{name}'")
        retries = int(policy.get("MaximumRetryCount") or 0)
        if retries and name != "on-failure":
            raise errors.InvalidParameter(f"maximum retry count cannot be used with restart policy '{name}'")
        if retries < 0:
            raise errors.InvalidParameter("maximum retry count cannot be negative")
        hc["RestartPolicy"] = {"Name": name, "MaximumRetryCount": retries}
        if hc.get("AutoRemove") and name != "no":
            raise errors.InvalidParameter("can't create 'AutoRemove' container with restart policy")
        mode = hc.get("NetworkMode") or "default"
        if not (mode in ("default", "bridge", "none", "host") or mode.startswith("container:")):
            raise errors.NotFound(f"network {mode} not found")
        return hc

    # -- start -----------------------------------------------------------------------------------
    def start(self, ref, host_config=None):
        """POST /containers/(id)/start. NotModified when it already runs."""
        c = self.get(ref)
        with c.lock:
            if c.status in (RUNNING, PAUSED):
                raise errors.NotModified("container already started")
            if c.status in (REMOVING, DEAD):
                raise errors.Conflict(f"container {c.id[:12]} is marked for removal and cannot be started")
            if host_config:          # old API versions pass the HostConfig to start
                merged = dict(c.host_config)
                merged.update(host_config)
                c.record["HostConfig"] = self._normalise_host_config(merged)
            c.manual_stop = False
            c.record["HasBeenManuallyStopped"] = False
            try:
                self._start_locked(c)
            except errors.MinidockError:
                # Docker announces a failed start as a "die": `docker run --rm` on API < 1.25
                # waits for it before removing the container itself.
                self.emit(c, "die", {"exitCode": str(c.state["ExitCode"])})
                raise
        self.emit(c, "start")

    def _start_locked(self, c):
        spec, stdio, cleanup = self._runtime_spec(c)
        try:
            pid = self.spawner.run(spec, *stdio[:3])
        except errors.MinidockError as exc:
            code = getattr(exc, "exit_code", 125)
            self._failed_start(c, code, exc.message)
            self._unmount(c)
            raise
        finally:
            for fd in cleanup:
                os.close(fd)
        c.pid = pid
        early = self.register_pid(pid, c)
        st = c.state
        st.update(Pid=pid, ExitCode=0, Error="", StartedAt=now_rfc3339(), OOMKilled=False)
        c.set_status(RUNNING)
        c.started_mono = time.monotonic()
        self.save(c)
        if early is not None:       # it has already ended; handled once we release c.lock
            self._exit_thread(c, early)

    def _failed_start(self, c, code, message):
        st = c.state
        st.update(ExitCode=code, Error=message, FinishedAt=now_rfc3339(), Pid=0)
        if c.status not in (CREATED, EXITED):     # a never-started container stays "created"
            c.set_status(EXITED)
        self.save(c)
        self._close_io(c)

    def _runtime_spec(self, c):
        """Assemble what the spawner needs: rootfs, argv, env, user, mounts, stdio fds."""
        cfg, hc = c.config, c.host_config
        rootfs = self.engine.layers.mount(c.id)
        self._write_etc_files(c)
        mounts = self.engine.volumes.runtime_mounts(c) if self.engine.volumes else []
        mode = hc.get("NetworkMode") or "default"
        if mode == "none":
            network = "none"
        elif mode.startswith("container:"):
            other = self.get(mode.split(":", 1)[1])
            if other.status != RUNNING:
                raise errors.Conflict(f"cannot join network of a non running container: {other.id}")
            other_mode = other.host_config.get("NetworkMode") or "default"
            if other_mode in ("default", "bridge", "host"):
                network = "host"      # its network *is* the host's, which we join by not leaving it
            else:
                network = {"join_pid": other.pid}
        else:
            network = "host"      # no bridge in rootless minidock: default/bridge/host share the host's
        spec = {
            "rootfs": rootfs,
            "argv": [c.record["Path"]] + c.record["Args"],
            "env": cfg["Env"] + ([] if any(e.startswith("HOSTNAME=") for e in cfg["Env"])
                                 else [f"HOSTNAME={self._hostname(c)}"]) + (["TERM=xterm"] if cfg["Tty"] else []),
            "cwd": cfg.get("WorkingDir") or "/",
            "user": cfg.get("User") or "",
            "group_add": hc.get("GroupAdd") or [],
            "tty": cfg["Tty"],
            "hostname": self._hostname(c),
            "network": network,
            "shm_size": hc.get("ShmSize") or 67108864,
            "readonly_rootfs": bool(hc.get("ReadonlyRootfs")),
            "mounts": mounts,
            "etc_files": {"/etc/hosts": c.record["HostsPath"], "/etc/hostname": c.record["HostnamePath"],
                          "/etc/resolv.conf": c.record["ResolvConfPath"]},
            "ulimits": [{"name": u["Name"], "soft": u["Soft"], "hard": u["Hard"]}
                        for u in (hc.get("Ulimits") or [])],
            "cap_add": hc.get("CapAdd") or [],
            "cap_drop": hc.get("CapDrop") or [],
            "privileged": bool(hc.get("Privileged")),
            "no_new_privileges": "no-new-privileges" in (hc.get("SecurityOpt") or [])
                                 or "no-new-privileges:true" in (hc.get("SecurityOpt") or []),
            "security_opt": hc.get("SecurityOpt") or [],   # seccomp profile (spawner.py)
        }
        if self.engine.cgroups is not None:
            # The container's init writes itself into cgroup.procs before anything else runs.
            group = self.engine.cgroups.create(c.id, hc)
            if group is not None:
                spec["cgroup"] = group.path
        stdio, cleanup = self._open_io(c)
        return spec, stdio, cleanup

    def _hostname(self, c):
        return c.config.get("Hostname") or c.id[:12]

    def _write_etc_files(self, c):
        cfg, hc = c.config, c.host_config
        hostname = self._hostname(c)
        fqdn = f"{hostname}.{cfg['Domainname']}" if cfg.get("Domainname") else hostname
        store.write_atomic(c.record["HostnamePath"], (hostname + "\n").encode(), mode=0o644)
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
                 "ff02::2\tip6-allrouters", f"127.0.1.1\t{fqdn}" + (f" {hostname}" if fqdn != hostname else "")]
        for entry in hc.get("ExtraHosts") or []:
            host, _, address = entry.partition(":")
            if not address:
                raise errors.InvalidParameter(f"invalid extra host {entry!r}: want host:ip")
            hosts.append(f"{address}\t{host}")
        store.write_atomic(c.record["HostsPath"], ("\n".join(hosts) + "\n").encode(), mode=0o644)
        store.write_atomic(c.record["ResolvConfPath"], resolv_conf(hc).encode(), mode=0o644)

    # -- output plumbing -------------------------------------------------------------------------
    def _open_io(self, c):
        """Pipes (or a pty) for the container's stdio; returns ((in, out, err), fds to close)."""
        io = Stdio(c.config["Tty"], c.config["OpenStdin"])
        c.pty_master, c.stdin_w = io.pty_master, io.stdin_w
        self._start_pumps(c, io.outputs)
        return io.child, io.close_after_spawn

    def _start_pumps(self, c, sources):
        c.output_done = threading.Event()
        logger = JsonLog(c.record["LogPath"])
        remaining = [len(sources)]
        lock = threading.Lock()

        def pump(fd, stream):
            try:
                while True:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:          # EIO on a pty whose last slave closed
                        data = b""
                    if not data:
                        break
                    logger.write(stream, data)
                    for q in list(c.subscribers):
                        q.put((stream, data))
            finally:
                if c.pty_master is not None and fd == c.pty_master:
                    c.pty_master = None          # before the close: a resize must not hit a reused fd
                os.close(fd)
                with lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                if last:
                    logger.close()
                    for q in list(c.subscribers):
                        q.put(None)
                    c.output_done.set()

        c.pumps = [threading.Thread(target=pump, args=(fd, s), daemon=True, name=f"pump-{c.id[:12]}-{s}")
                   for fd, s in sources]
        for t in c.pumps:
            t.start()

    def _close_io(self, c):
        if c.stdin_w is not None:
            try:
                os.close(c.stdin_w)
            except OSError:
                pass
            c.stdin_w = None

    # -- exits -----------------------------------------------------------------------------------
    # A fast process can end before the thread that started it has recorded its pid: the
    # spawner's reader may deliver the exit between the spawner's reply and our bookkeeping.
    # Such exits wait in `early_exits` until `register_pid` claims them.
    def register_pid(self, pid, owner):
        """Record who owns `pid` (a Container or an Exec); returns its exit code if it already
        ended, else None."""
        with self.pid_lock:
            early = self.early_exits.pop(pid, None)
            if early is None:
                (self.by_pid if isinstance(owner, Container) else self.execs.by_pid)[pid] = owner
            return early

    def on_exit(self, pid, code):
        """Called by the spawner's reader thread when a process we started ends."""
        with self.pid_lock:
            c = self.by_pid.pop(pid, None)
            known_exec = self.execs is not None and pid in self.execs.by_pid
            if c is None and not known_exec:
                self.early_exits[pid] = code
                return
        if c is None:
            self.execs.on_exit(pid, code)
            return
        self._exit_thread(c, code)

    def _exit_thread(self, c, code):
        threading.Thread(target=self._handle_exit, args=(c, code), daemon=True,
                         name=f"exit-{c.id[:12]}").start()

    def _handle_exit(self, c, code):
        c.output_done.wait(5)      # let the last output reach the log before "die" is announced
        with c.lock:
            c.state["OOMKilled"] = self._oom_killed(c)
            c.pid = 0
            c.state.update(Pid=0, ExitCode=code, FinishedAt=now_rfc3339())
            self._close_io(c)
            restart = self._policy_restarts(c, code)
            c.set_status(RESTARTING if restart else EXITED)
            c.exit_generation += 1
            self.save(c)
        self.emit(c, "die", {"exitCode": str(code)})
        if restart:
            ran = time.monotonic() - c.started_mono
            c.backoff = RESTART_BACKOFF_START if (ran >= RESTART_BACKOFF_RESET or not c.backoff) \
                else min(c.backoff * 2, 60.0)
            c.restart_timer = threading.Timer(c.backoff, self._restart_after_backoff, args=(c,))
            c.restart_timer.daemon = True
            c.restart_timer.start()
            return
        self._release_cgroup(c)
        self._unmount(c)
        if c.host_config.get("AutoRemove"):
            try:
                self.remove(c.id, force=True, volumes=True)
            except errors.MinidockError as exc:
                log.warning("auto-remove of %s failed: %s", c.name, exc.message)

    def _policy_restarts(self, c, code, after_daemon_restart=False):
        policy = c.host_config.get("RestartPolicy") or {}
        name = policy.get("Name", "no")
        if c.manual_stop or c.record.get("HasBeenManuallyStopped"):
            return False
        if name == "always":
            return True
        if name == "unless-stopped":
            return True
        if name == "on-failure" and code != 0:
            limit = policy.get("MaximumRetryCount", 0)
            return limit == 0 or c.record["RestartCount"] < limit
        return False

    def _restart_after_backoff(self, c):
        with c.lock:
            if c.status != RESTARTING or c.manual_stop:
                return
            c.record["RestartCount"] += 1
            try:
                self._start_locked(c)
            except errors.MinidockError as exc:
                log.warning("restart of %s failed: %s", c.name, exc.message)
                if c.status == RESTARTING:
                    c.set_status(EXITED)
                self.save(c)
                return
        self.emit(c, "start")

    # -- stop / kill / restart / wait ------------------------------------------------------------
    def kill(self, ref, sig=None):
        c = self.get(ref)
        number = parse_signal(sig)
        with c.lock:
            if c.status == RESTARTING and number == signal.SIGKILL:
                c.manual_stop = True
                if c.restart_timer:
                    c.restart_timer.cancel()
                c.set_status(EXITED)
                self.save(c)
                return
            if c.status not in (RUNNING, PAUSED):
                raise errors.Conflict(f"Container {c.id} is not running")
            pid = c.pid
            if number in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                # A deliberate kill is not a failure the restart policy should undo.
                c.manual_stop = number == signal.SIGKILL or c.manual_stop
        self._signal(c, pid, number)
        self.emit(c, "kill", {"signal": str(number)})

    def _signal(self, c, pid, number):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass
        if c.status == PAUSED and number == signal.SIGKILL:
            self._thaw(c)

    def stop(self, ref, timeout=None):
        c = self.get(ref)
        with c.lock:
            if c.status == RESTARTING:
                c.manual_stop = True
                c.record["HasBeenManuallyStopped"] = True
                if c.restart_timer:
                    c.restart_timer.cancel()
                c.set_status(EXITED)
                self.save(c)
                self.emit(c, "stop")
                return
            if c.status not in (RUNNING, PAUSED):
                raise errors.NotModified("container already stopped")
            c.manual_stop = True
            c.record["HasBeenManuallyStopped"] = True
            generation = c.exit_generation
            pid = c.pid
        if timeout is None:
            timeout = c.config.get("StopTimeout") or DEFAULT_STOP_TIMEOUT
        stop_signal = parse_signal(c.config.get("StopSignal") or "SIGTERM")
        if c.status == PAUSED:
            self._thaw(c)
        self._signal(c, pid, stop_signal)
        if not self._wait_exit(c, generation, max(0, timeout)):
            self._signal(c, pid, signal.SIGKILL)
            self._wait_exit(c, generation, 30)
        self.emit(c, "stop")

    def _wait_exit(self, c, generation, timeout):
        with c.changed:
            return c.changed.wait_for(lambda: c.exit_generation != generation or c.status not in
                                      (RUNNING, PAUSED), timeout)

    def restart(self, ref, timeout=None):
        c = self.get(ref)
        if c.status in (RUNNING, PAUSED, RESTARTING):
            self.stop(c.id, timeout)
        with c.lock:
            c.manual_stop = False
            c.record["HasBeenManuallyStopped"] = False
            try:
                self._start_locked(c)
            except errors.MinidockError:
                # Docker announces a failed start as a "die": `docker run --rm` on API < 1.25
                # waits for it before removing the container itself.
                self.emit(c, "die", {"exitCode": str(c.state["ExitCode"])})
                raise
        self.emit(c, "start")
        self.emit(c, "restart")

    def wait(self, ref, condition="not-running", stop=lambda: False):
        """Block until the container stops (or is removed); returns its exit code."""
        c = self.get(ref)
        with c.changed:
            if condition == "next-exit" or (condition == "not-running" and c.status in (RUNNING, PAUSED, RESTARTING)):
                generation = c.exit_generation
                while c.exit_generation == generation and not stop():
                    c.changed.wait(0.5)
            if condition == "removed":
                while c.id in self.by_id and not stop():
                    c.changed.wait(0.5)
            return c.state["ExitCode"]

    # -- pause -----------------------------------------------------------------------------------
    def pause(self, ref):
        c = self.get(ref)
        with c.lock:
            if c.status == PAUSED:
                raise errors.Conflict(f"Container {c.id} is already paused")
            if c.status != RUNNING:
                raise errors.Conflict(f"Container {c.id} is not running")
            self._freeze(c)
            c.set_status(PAUSED)
            self.save(c)
        self.emit(c, "pause")

    def unpause(self, ref):
        c = self.get(ref)
        with c.lock:
            if c.status != PAUSED:
                raise errors.Conflict(f"Container {c.id} is not paused")
            self._thaw(c)
            c.set_status(RUNNING)
            self.save(c)
        self.emit(c, "unpause")

    # Pause freezes the container's cgroup where cgroup.freeze exists; otherwise every process
    # of the container gets SIGSTOP (which the processes can observe, unlike a freeze).
    def _group(self, c):
        cg = self.engine.cgroups
        return cg.get(c.id) if cg is not None else None

    def _freeze(self, c):
        group = self._group(c)
        if group is not None and self.engine.cgroups.freeze:
            group.freeze()
        else:
            from minidock import ns
            ns.signal_all(c.pid, signal.SIGSTOP)

    def _thaw(self, c):
        group = self._group(c)
        if group is not None and self.engine.cgroups.freeze:
            group.thaw()
        else:
            from minidock import ns
            ns.signal_all(c.pid, signal.SIGCONT)

    def _release_cgroup(self, c):
        group = self._group(c)
        if group is not None:
            try:
                group.remove()
            except OSError as exc:
                log.warning("removing the cgroup of %s: %s", c.name, exc)

    def _oom_killed(self, c):
        group = self._group(c)
        if group is None:
            return False
        try:
            with open(os.path.join(group.path, "memory.events")) as f:
                return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in f)
        except (OSError, ValueError, IndexError):
            return False

    # -- remove / rename / update / resize ------------------------------------------------------
    def remove(self, ref, force=False, volumes=False):
        c = self.get(ref)
        with c.lock:
            if c.status in (RUNNING, PAUSED, RESTARTING):
                if not force:
                    state = "paused" if c.status == PAUSED else c.status
                    raise errors.Conflict(
                        f"You cannot remove a {state} container {c.id}. Stop the container before "
                        f"attempting removal or force remove")
                c.manual_stop = True
                if c.restart_timer:
                    c.restart_timer.cancel()
        if c.status in (RUNNING, PAUSED):
            self.kill(c.id, "KILL")
            with c.changed:
                c.changed.wait_for(lambda: c.status not in (RUNNING, PAUSED), 10)
        with c.lock:
            if c.status == REMOVING:
                raise errors.Conflict(f"removal of container {c.id} is already in progress")
            if c.status == RESTARTING:
                c.set_status(EXITED)
            c.set_status(REMOVING)
            self.save(c)
        if volumes and self.engine.volumes is not None:
            self.engine.volumes.release_anonymous(c)
        self._destroy(c)
        self.emit(c, "destroy")

    def _unmount(self, c):
        try:
            self.engine.layers.unmount(c.id)
        except (errors.NotFound, OSError) as exc:
            log.warning("unmounting the rootfs of %s: %s", c.name, exc)

    def _destroy(self, c):
        self.engine.layers.remove_rw(c.id)
        if self.execs is not None:
            self.execs.forget_container(c.id)
        self._release_cgroup(c)
        with c.lock:
            self.by_id.pop(c.id, None)
            self.collection.delete(c.id)
            c.state["Status"] = DEAD
            c.changed.notify_all()

    def rename(self, ref, new_name):
        c = self.get(ref)
        if not new_name or not NAME_RE.match(new_name):
            raise errors.InvalidParameter(
                f"Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        new_name = new_name.lstrip("/")
        with self.names_lock:
            if new_name == c.name:
                raise errors.Conflict("Renaming a container with the same name as its current name")
            self._check_name_free(new_name)
            old = c.name
            with c.lock:
                c.record["Name"] = "/" + new_name
                self.save(c)
        self.emit(c, "rename", {"oldName": "/" + old})

    def update(self, ref, body):
        c = self.get(ref)
        if not isinstance(body, dict):
            raise errors.InvalidParameter("update body must be a JSON object")
        warnings = []
        with c.lock:
            merged = dict(c.host_config)
            if "RestartPolicy" in body and body["RestartPolicy"] is not None:
                merged["RestartPolicy"] = body["RestartPolicy"]
            limits = {k: v for k, v in body.items() if k != "RestartPolicy" and v not in (None, 0, "")}
            if merged.get("AutoRemove") and (merged["RestartPolicy"] or {}).get("Name", "no") != "no":
                raise errors.InvalidParameter("Restart policy cannot be updated because AutoRemove is enabled for the container")
            merged = self._normalise_host_config(merged)
            if limits:
                cg = self.engine.cgroups
                if cg is None:
                    raise errors.NotImplementedKind("resource limits cannot be updated: no cgroup v2 support")
                new_limits, warnings = cg.check_update(merged, limits)
                merged.update(new_limits)
                group = self._group(c)
                if group is not None and c.status in (RUNNING, PAUSED):
                    from minidock import cgroup
                    group.apply(cgroup.translate(merged, cg.enabled, group.path))
            c.record["HostConfig"] = merged
            self.save(c)
        self.emit(c, "update")
        return warnings

    def resize(self, ref, height, width):
        c = self.get(ref)
        if c.pty_master is None:
            if c.status not in (RUNNING, PAUSED):
                raise errors.Conflict(f"Container {c.id} is not running")
            return        # Docker accepts a resize of a non-TTY container and does nothing
        set_winsize(c.pty_master, height, width)

    # -- attach and logs -------------------------------------------------------------------------
    def subscribe(self, c):
        q = queue.Queue()
        c.subscribers.append(q)
        return q

    def unsubscribe(self, c, q):
        try:
            c.subscribers.remove(q)
        except ValueError:
            pass

    def stdin_ready(self, c, generation):
        """Wait until the container has a stdin to write to (`docker run -i` attaches and sends
        input before it starts the container). False when a run ended or it was removed first."""
        with c.changed:
            while c.stdin_w is None:
                if c.exit_generation != generation or c.id not in self.by_id:
                    return False
                c.changed.wait(0.5)
        return True

    def write_stdin(self, c, data):
        if c.stdin_w is None:
            return False
        try:
            os.write(c.stdin_w, data)
            return True
        except OSError:
            return False

    def close_stdin(self, c):
        if c.config["Tty"]:
            # A TTY has no half-close; send the terminal's end-of-file character instead.
            self.write_stdin(c, b"\x04")
            return
        self._close_io(c)

    def read_logs(self, c, since=0, until=None, tail=None):
        """Log entries (stream, bytes, time string) from the json-file log."""
        return JsonLog.read(c.record["LogPath"], since=since, until=until, tail=tail)

    # -- listing and inspection -----------------------------------------------------------------
    def list(self, all_=False, limit=-1, since=None, before=None, filters=None, size=False):
        filters = filters or {}
        valid = {"status", "exited", "label", "ancestor", "before", "since", "volume", "name", "id",
                 "isolation", "network", "health"}
        for key in filters:
            if key not in valid:
                raise errors.InvalidParameter(f"Invalid filter '{key}'")
        for status in filters.get("status", []):
            if status not in ("created", "restarting", "running", "removing", "paused", "exited", "dead"):
                raise errors.InvalidParameter(f"Unrecognised filter value for status: {status}")
        items = sorted(self.all(), key=lambda c: c.record["Created"], reverse=True)
        since = since or (filters.get("since") or [None])[-1]
        before = before or (filters.get("before") or [None])[-1]
        if since:
            pivot = self.get(since).record["Created"]
            items = [c for c in items if c.record["Created"] > pivot]
        if before:
            pivot = self.get(before).record["Created"]
            items = [c for c in items if c.record["Created"] < pivot]
        if limit and limit > 0 or since or before:
            all_ = True
        result = []
        for c in items:
            if not all_ and not filters.get("status") and c.status not in (RUNNING, PAUSED, RESTARTING):
                continue
            if not self._matches(c, filters):
                continue
            result.append(c)
        if limit and limit > 0:
            result = result[:limit]
        return result

    def _matches(self, c, filters):
        if filters.get("status") and c.status not in filters["status"]:
            return False
        if filters.get("exited"):
            if c.status != EXITED or str(c.state["ExitCode"]) not in filters["exited"]:
                return False
        if filters.get("id") and not any(c.id.startswith(v) for v in filters["id"]):
            return False
        if filters.get("name") and not any(re.search(v.lstrip("/"), c.name) for v in filters["name"]):
            return False
        for label in filters.get("label", []):
            key, eq, value = label.partition("=")
            labels = c.config.get("Labels") or {}
            if key not in labels or (eq and labels[key] != value):
                return False
        if filters.get("ancestor"):
            if not any(self._descends_from(c.record["Image"], v) for v in filters["ancestor"]):
                return False
        if filters.get("volume"):
            mounts = c.record.get("Mounts") or []
            names = {m.get("Name") for m in mounts} | {m.get("Destination") for m in mounts} | \
                    {m.get("Source") for m in mounts}
            if not any(v in names for v in filters["volume"]):
                return False
        if filters.get("network"):
            mode = c.host_config.get("NetworkMode")
            if not any(v in (mode, "host" if mode in ("default", "bridge") else mode) for v in filters["network"]):
                return False
        return True

    def status_text(self, c):
        """The human `Status` column: "Up 3 minutes", "Exited (0) 2 seconds ago", ..."""
        st = c.state
        if c.status == RUNNING:
            return "Up " + human_duration(since(st["StartedAt"]))
        if c.status == PAUSED:
            return "Up " + human_duration(since(st["StartedAt"])) + " (Paused)"
        if c.status == RESTARTING:
            return f"Restarting ({st['ExitCode']}) " + human_duration(since(st["FinishedAt"])) + " ago"
        if c.status == CREATED:
            return "Created"
        if c.status == REMOVING:
            return "Removal In Progress"
        if c.status == DEAD:
            return "Dead"
        if st["FinishedAt"] == ZERO_TIME:
            return "Created"
        return f"Exited ({st['ExitCode']}) " + human_duration(since(st["FinishedAt"])) + " ago"

    def _descends_from(self, image_id, ref):
        """Is `ref` (a name or ID) the container's image or one of that image's parents?"""
        images = self.engine.images
        try:
            wanted = images.resolve(ref)
        except errors.MinidockError:
            return False
        current = image_id
        while current:
            if current == wanted:
                return True
            current = images.meta.get(current, {}).get("parent")
        return False

    def size(self, c):
        """(SizeRw, SizeRootFs) in bytes."""
        rw = self.engine.layers.rw_size(c.id)
        return rw, rw + self.engine.images.size(c.record["Image"])

    # -- top -------------------------------------------------------------------------------------
    def top(self, ref, ps_args="-ef"):
        c = self.get(ref)
        if c.status not in (RUNNING, PAUSED):
            raise errors.Conflict(f"Container {c.id} is not running")
        from minidock import ns, proctable
        pids = ns.container_pids(c.pid)
        return proctable.table(pids, ps_args or "-ef")


def resolv_conf(hc):
    """The container's resolv.conf: the host's, with the container's Dns* options applied."""
    nameservers, search, options = [], [], []
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                words = line.split()
                if not words or words[0].startswith(("#", ";")):
                    continue
                if words[0] == "nameserver" and len(words) > 1:
                    nameservers.append(words[1])
                elif words[0] in ("search", "domain"):
                    search = words[1:]
                elif words[0] == "options":
                    options += words[1:]
    except OSError:
        pass
    if hc.get("NetworkMode") == "none":
        nameservers = []
    if hc.get("Dns"):
        nameservers = list(hc["Dns"])
    if hc.get("DnsSearch"):
        search = list(hc["DnsSearch"])
    if hc.get("DnsOptions"):
        options = list(hc["DnsOptions"])
    lines = [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


class Stdio:
    """A process's stdin, stdout and stderr, and the daemon's ends of them.

    With a TTY all three are one pty slave and the daemon reads and writes the master; without,
    stdin is a pipe (or /dev/null when nobody will write to it) and stdout/stderr are two pipes,
    kept apart so logs and attach can tell them apart.

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


TIOCGPTN = 0x80045430       # _IOR('T', 0x30, unsigned int): the slave's number (asm-generic ioctls)
TIOCSPTLCK = 0x40045431     # _IOW('T', 0x31, int): lock/unlock the slave; termios has neither


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
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(height), int(width), 0, 0))


def since(stamp):
    try:
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())


def human_duration(seconds):
    """Go's units.HumanDuration, which `docker ps` shows."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days"
    if days < 60:
        return f"{int(days / 7)} weeks"
    if days < 365 * 2:
        return f"{int(days / 30)} months"
    return f"{int(days / 365)} years"


class JsonLog:
    """The json-file log driver: one JSON object per line, `{"log", "stream", "time"}`.

    A line of output becomes one entry (partial lines are flushed as they come, as Docker does
    for output without a newline). The file survives daemon restarts; `read` serves
    `docker logs` with tail/since/until.
    """

    def __init__(self, path):
        self.file = open(path, "ab", buffering=0)
        self.lock = threading.Lock()
        self.partial = {"stdout": b"", "stderr": b""}

    def write(self, stream, data):
        buffer = self.partial[stream] + data
        lines = buffer.split(b"\n")
        self.partial[stream] = lines.pop()
        out = [self._entry(stream, line + b"\n") for line in lines]
        if self.partial[stream] and len(self.partial[stream]) > 16384:
            out.append(self._entry(stream, self.partial[stream]))
            self.partial[stream] = b""
        if out:
            with self.lock:
                self.file.write(b"".join(out))

    def _entry(self, stream, data):
        return json.dumps({"log": data.decode("utf-8", errors="replace"), "stream": stream,
                           "time": now_rfc3339()}).encode() + b"\n"

    def close(self):
        with self.lock:
            for stream, rest in self.partial.items():
                if rest:
                    self.file.write(self._entry(stream, rest))
                    self.partial[stream] = b""
            self.file.close()

    @staticmethod
    def read(path, since=0, until=None, tail=None):
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue           # a line cut short by a crash
            stamp = parse_time(entry["time"])
            if since and stamp < since:
                continue
            if until and stamp > until:
                continue
            entries.append((entry["stream"], entry["log"].encode(), entry["time"]))
        if tail is not None and tail >= 0:
            entries = entries[len(entries) - tail:] if tail else []
        return entries


def parse_time(text):
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
