"""The container backend: every container operation the API offers, without HTTP.

A container is a record (its config, host config and state: one file of two JSON slots, each
save written in place into the older one, store.py and slotfile.py) plus, while it runs, a
process tree started by the spawner (ns.py does the isolation) and the threads that carry its
output. This class composes the concepts of minidock/container/:

    config.py     Config/HostConfig merging and rules, names, the network-mode rule
    lifecycle.py  the states, the TRANSITIONS table every status change goes through, Container
    spec.py       the spawner's runtime spec and the generated /etc files
    stdio.py      pipes and ptys, output pumps, subscribers, stdin
    logs.py       log drivers (json-file, none): writing, reading, following
    probe.py      healthcheck probes (health.py has the rules and the monitors)
    attach.py     attach sessions over hijacked HTTP and WebSocket, the detach-key scanner
    supervisor.py the process: start sequence, exits, restart back-off, stop, kill, pause
    exits.py      the pid -> exit callback registry the spawner reports into
    restart.py    restart policies and their back-off
    describe.py   inspect documents, list rows and filters, the status column
    archive.py    the filesystem routes (diff, export, cp)

Exit codes are Docker's: the process's own, 128+signal when killed, 125/126/127 when it could
not start (set-up failed, not executable, not found).
"""

import logging
import os
import shutil
import threading

from minidock import (cgrouplimits, errors, filters as filters_mod, httpserver, imagecreate, ns, pidlimit,
                      platforms, proctable, schema, stats, store, workers)
from minidock.container import attach, config, describe, logs, restart
from minidock.container import lifecycle
from minidock.container.lifecycle import (ACTIVE, ALIVE, DEAD, EXITED, PAUSED, REMOVING, RUNNING,
                                          Container, begin_removal)
from minidock.container.supervisor import Supervisor
from minidock.times import ZERO_TIME, now_rfc3339, rfc3339_ns

log = logging.getLogger("minidock.containers")


class Containers:
    """Containers, by id and name, and what can be done to them."""

    def __init__(self, data_root, events, images, layers, volumes, cgroups, spawner, exits, networks,
                 log_defaults=None, userns_default="", daemon_user=None):
        """`log_defaults` ({"Type", "Config"}) and `userns_default` are the daemon's flags;
        `daemon_user` ({"uid", "gid"} on the host) is who keep-id maps, None without a user
        namespace."""
        self.log_defaults, self.userns_default = log_defaults, userns_default
        self.daemon_user = daemon_user
        self.events, self.images, self.layers, self.volumes = events, images, layers, volumes
        self.networks = networks
        self.cgroups, self.spawner, self.exits = cgroups, spawner, exits
        self.root = os.path.join(data_root, "containers")
        # records in two-slot files (slotfile.py): each save after the create one pwrite and
        # one fdatasync, no metadata written
        self.collection = store.Collection(self.root, "container", per_dir=True, slots=True)
        self.by_id = {}
        # name -> id: a create checks its name, a lookup by name finds it, without a pass over
        # every container (changed under names_lock: create, rename, the end of a removal)
        self.by_name = {}
        self.rows = describe.RowCache(self._row)      # `docker ps` rows, encoded
        self.names_lock = threading.Lock()
        # A removed container's files are renamed away at once and deleted here, after the
        # reply (store.Collection.delete, layers.remove_rw); drained at shutdown.
        self.trash = workers.WorkerPool(1, "trash")
        store.start_writer_threads()         # the durable saves that overlap other work
        self.supervisor = Supervisor(layers, volumes, cgroups, spawner, exits, save=self.save, emit=self.emit,
                                     get=self.get, finish_removal=lambda c: self._finish_removal(c, volumes=True),
                                     retire=self.retire,
                                     networks=networks, daemon_user=daemon_user,
                                     save_in_background=self.save_in_background)
        for problem in self.collection.load():
            log.warning("skipping unreadable container state: %s", problem)
        for cid, record in self.collection.objects.items():
            if cid in self.collection.retired:
                # its removal began (retire(): the file keeps its last save's content):
                # reconcile() finishes it
                record["State"].update(lifecycle.status_fields(REMOVING))
            self.by_id[cid] = c = Container(record)
            self.by_name[c.name] = cid
            volumes.attach(cid, record.get("Mounts") or [])

    # -- lookup ----------------------------------------------------------------------------------
    def get(self, ref):
        """Docker's order: a full ID, then an exact name ("/name" too), then a unique ID prefix."""
        c = self.by_id.get(ref)
        if c is not None:
            return c
        cid = self.by_name.get(ref.lstrip("/")) if isinstance(ref, str) else None
        return self.by_id[cid or self.collection.resolve(ref)]

    def all(self):
        return list(self.by_id.values())

    def counts(self):
        return describe.counts(self.all())

    def save(self, c, durable=True):
        self.collection.save(c.id, c.record, durable)

    def save_in_background(self, c, record):
        """Start the durable save of `record`, what c's record will be (store.py); -> wait()."""
        return self.collection.save_in_background(c.id, record)

    def emit(self, c, action, extra=None):
        attributes = {"name": c.name, "image": c.config.get("Image", "")}
        attributes.update(c.config.get("Labels") or {})
        attributes.update(extra or {})
        self.events.emit("container", action, c.id, attributes, image=c.config.get("Image", ""))

    # -- daemon start and stop -------------------------------------------------------------------
    def reconcile(self):
        """Containers that were running when the last daemon died died with it: record that,
        then restart the ones whose restart policy says so."""
        to_restart = []
        for c in self.all():
            st = c.state
            policy = c.host_config.get("RestartPolicy")
            # A create cut short by a crash (its record durable, its layer not: create()), or
            # a lost layer: nothing can run it. It goes, with its anonymous volumes.
            incomplete = c.status not in (REMOVING, DEAD) and not self.layers.has_rw(c.id)
            if c.status in ACTIVE:
                with c.lock:
                    st.update(Pid=0, ExitCode=st.get("ExitCode") or 137, FinishedAt=now_rfc3339(),
                              Error="daemon stopped while the container ran")
                    c.set_status(EXITED)
                    self.save(c)
                if incomplete or c.host_config.get("AutoRemove"):
                    # AutoRemove, as Docker's restore: it ended with the daemon, so it goes (its
                    # rootfs was mounted volatile: after a machine crash it is not to be trusted).
                    self.remove(c.id, volumes=True)
                    continue
                if restart.restarts(policy, st["ExitCode"], c.record["RestartCount"],
                                    c.record.get("HasBeenManuallyStopped")):
                    to_restart.append(c)
            elif c.status == REMOVING:
                self._destroy(c)
            elif incomplete:
                log.warning("removing container %s: its writable layer is incomplete", c.name)
                self.remove(c.id, volumes=True)
            elif c.status == EXITED and st["StartedAt"] != ZERO_TIME:
                if restart.restarts_with_daemon(policy, c.record.get("HasBeenManuallyStopped")):
                    to_restart.append(c)
        for c in to_restart:
            try:
                self.start(c.id)
            except errors.MinidockError as exc:
                log.warning("could not restart %s: %s", c.name, exc.message)

    def shutdown(self, timeout=10):
        """Daemon shutdown: stop every running container (its StopSignal, then SIGKILL), in
        parallel, so their state on disk says how they ended rather than "died with the daemon"."""
        threads = [threading.Thread(target=self._stop_quietly, args=(c, timeout), daemon=True)
                   for c in self.all() if c.status in ACTIVE]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 5)
        drained = threading.Event()          # the files of removed containers: deleted before exit
        self.trash.submit(drained.set)
        drained.wait(timeout)

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
    def create(self, body, name=None, platform=None):
        """POST /containers/create. Returns (id, warnings). `platform` ("linux/amd64", API
        1.41) must be the image's: the daemon does not pull for create, so another one is a 404
        (the CLI then pulls that platform, which the registry decides)."""
        config.check_types(body)            # every field's type, before anything is made
        host_config = body.get("HostConfig") or {}
        if not isinstance(host_config, dict):
            raise errors.InvalidParameter("HostConfig must be a JSON object")
        image_ref = body.get("Image")
        if not image_ref or not isinstance(image_ref, str):
            raise errors.InvalidParameter("Config.Image is required")
        if name:
            name = config.check_name(name)
        image_id = self.images.resolve(image_ref)                  # NotFound makes the CLI pull
        if platform:
            wanted, have = platforms.parse(platform), self.images.platform(image_id)
            if not platforms.matches(wanted, have):
                raise errors.NotFound(
                    f"image with reference {image_ref} was found but does not match the specified platform: "
                    f"wanted {platforms.format(wanted)}, actual: {platforms.format(have)}")
        image_cfg = self.images.config(image_id).get("config") or {}
        cfg = config.merge_config(body, image_cfg, image_ref)
        host_config = self._normalise(host_config)
        if host_config["UsernsMode"] == "keep-id" and self.daemon_user and not cfg["User"]:
            # Podman's keep-id runs as the user by default, so what it writes is the user's.
            cfg["User"] = f"{self.daemon_user['uid']}:{self.daemon_user['gid']}"
        self.networks.check_mode(host_config)       # NotFound for a network that does not exist
        # Limits this machine cannot enforce are reset here, with Docker's warnings.
        adapted, warnings = self.cgroups.check(host_config)
        host_config.update(adapted)
        path, args = config.command(cfg)
        if not path:
            raise errors.InvalidParameter("No command specified")
        cid = store.new_id()
        directory = os.path.join(self.root, cid)
        with self.names_lock:
            name = name or config.generate_name(self.by_name.__contains__, cid)
            config.check_name_free(name, self.by_name.get(name))
            record = lifecycle.new_record(cid, name, path, args, image_id, cfg, host_config,
                                          self.layers.driver_name(), directory)
            os.makedirs(directory, mode=0o700)
            try:
                record["Mounts"] = self.volumes.prepare_mounts(
                    host_config, cfg, lambda ref: self.get(ref).record.get("Mounts") or [], created_for=cid)
                _, layer_saved = self.layers.begin_rw(cid, self.images.top_chain(image_id))
                c = Container(record)
                # Addresses are allocated from the containers the backend sees: allocate and
                # publish the new one under the networks lock, so two creates never share one.
                with self.networks.lock:
                    self.networks.join_at_create(c, body.get("NetworkingConfig"))
                    # The record's fsyncs and those of the layer's rw.json run at once (the
                    # journal commits them together; both files are new: store.write_new, one
                    # commit each); a crash may then keep the record alone, which reconcile()
                    # removes: that create was never answered.
                    self.collection.save_new(cid, record)
                    layer_saved()
                    self.by_id[cid] = c
                    self.by_name[name] = cid
            except BaseException:
                self.collection.objects.pop(cid, None)
                self.networks.release(((record.get("NetworkSettings") or {}).get("Networks") or {}).values())
                shutil.rmtree(directory, ignore_errors=True)
                self.layers.remove_rw(cid)
                raise
            self.volumes.attach(cid, record["Mounts"])
        self.emit(c, "create")
        return cid, warnings

    def _normalise(self, host_config):
        return config.normalise_host_config(host_config, self.log_defaults, self.userns_default)

    # -- start, stop, signals, pause, wait (the supervisor does the work) -------------------------
    def start(self, ref, host_config=None):
        """POST /containers/(id)/start. NotModified when it already runs."""
        if host_config is not None:          # old API versions pass the HostConfig to start
            schema.check_body(host_config, config.HOST_CONFIG_TYPES, "HostConfig")
        c = self.get(ref)
        with c.lock:
            if c.status in ALIVE:
                raise errors.NotModified("container already started")
            if c.status in (REMOVING, DEAD):
                raise errors.Conflict(f"container {c.id[:12]} is marked for removal and cannot be started")
            if host_config:          # old API versions pass the HostConfig to start
                c.record["HostConfig"] = self._normalise(dict(c.host_config, **host_config))
            try:
                self.supervisor.start_by_hand(c)
                failure = None
            except errors.MinidockError as exc:
                if not c.host_config.get("AutoRemove"):
                    raise
                failure = exc
        if failure is not None:
            # As Docker: an AutoRemove container whose start failed goes at once (`docker run
            # --rm` waits for its removal), and the start still answers the failure.
            self.remove(c.id, volumes=True)
            raise failure
        self.emit(c, "start")

    def kill(self, ref, sig=None):
        self.supervisor.kill(self.get(ref), config.parse_signal(sig))

    def stop(self, ref, timeout=None, sig=None):
        c = self.get(ref)
        self.supervisor.stop(c, timeout, config.parse_signal(sig) if sig else None)

    def restart(self, ref, timeout=None, sig=None):
        c = self.get(ref)
        sig = config.parse_signal(sig) if sig else None       # a bad name is a 400 before stopping
        if c.status in ACTIVE:
            try:
                self.supervisor.stop(c, timeout, sig)
            except errors.NotModified:
                pass              # it exited between the look and the stop: start it all the same
        with c.lock:
            self.supervisor.start_by_hand(c)
        self.emit(c, "start")
        self.emit(c, "restart")

    def pause(self, ref):
        self.supervisor.pause(self.get(ref))

    def unpause(self, ref):
        self.supervisor.unpause(self.get(ref))

    def commit(self, ref, pause=True, **options):
        """POST /commit: the container's changes as a new image (imagecreate.commit; `options`
        are its repo, tag, comment, author, changes, overrides). A running container is paused
        meanwhile unless `pause` is false, so the layer is not read while it changes."""
        c = self.get(ref)
        pause = pause and c.status == RUNNING
        if pause:
            self.pause(c.id)
        try:
            image_id = imagecreate.commit(self.images, c.id, c.record["Image"], c.config, **options)
        finally:
            if pause:
                self.unpause(c.id)
        self.emit(c, "commit", {"comment": options.get("comment", "")})
        return image_id

    def wait(self, ref, condition="not-running", stop=lambda: False):
        """Block until the container stops (or is removed); returns its exit code."""
        return self.waiter(ref, condition)(stop)[0]

    def waiter(self, ref, condition="not-running"):
        """Register a wait on container `ref` now (lifecycle.waiter); -> result(stop), which
        returns (exit code, why a removal failed or None)."""
        return lifecycle.waiter(self.get(ref), condition)

    # -- remove / rename / update / resize ------------------------------------------------------
    def remove(self, ref, force=False, volumes=False):
        c = self.get(ref)
        with c.lock:
            if c.status in ACTIVE:
                if not force:
                    state = "paused" if c.status == PAUSED else c.status
                    raise errors.Conflict(
                        f"You cannot remove a {state} container {c.id}. Stop the container before "
                        f"attempting removal or force remove")
                self.supervisor.cancel_restart(c)
        if c.status in ALIVE:
            try:
                self.kill(c.id, "KILL")
            except errors.Conflict:
                pass           # it exited between the look and the kill (as moby: not running is fine)
            with c.changed:
                c.changed.wait_for(lambda: c.status not in ALIVE, 10)
                if c.host_config.get("AutoRemove"):
                    # Its exit removes it, in the save that records the exit (supervisor.py):
                    # that removal is this one -- wait for its end rather than race it.
                    c.changed.wait_for(lambda: c.status == DEAD, 30)
                    if c.status == DEAD:
                        if c.removal_error:
                            raise errors.System(c.removal_error)
                        return
        with c.lock:
            if c.status == REMOVING:
                raise errors.Conflict(f"removal of container {c.id} is already in progress")
            begin_removal(c)
            self.retire(c)
        self._finish_removal(c, volumes)

    def retire(self, c, durable=True):
        """With c.lock held and its status removing: make the removal's start durable, by a
        rename of the record's file rather than a save (store.Collection.retire): a crash from
        here on finds it removing, and reconcile() finishes the removal. `durable=False` for
        an AutoRemove container's exit: reconcile() removes such a container after a crash
        whatever its record says (running, removing), so nothing needs to reach the disk."""
        self.collection.retire(c.id, durable)

    def _finish_removal(self, c, volumes):
        """The rest of a removal whose status `removing` is durable: anonymous volumes (with
        `volumes`), then _destroy. Also the end of an AutoRemove container's exit, whose
        exit and removal intent are one step (supervisor.py)."""
        if volumes:
            self.volumes.release_anonymous(c.id, c.record.get("Mounts") or [])
        try:
            self._destroy(c)
        except OSError as exc:
            # As moby: the container stays, dead, and `removed` waiters learn why.
            message = f"unable to remove filesystem for {c.id}: {exc}"
            with c.lock:
                c.removal_error = message
                c.set_status(DEAD)
                self.save(c)
            raise errors.System(message)
        # Published once the DELETE's reply is written: the docker CLI talking API < 1.25
        # removes a `run --rm` container itself and exits as soon as it sees "destroy"; seen
        # before its DELETE's reply, that request is cancelled and reported as an error.
        httpserver.after_reply(lambda: self.emit(c, "destroy"))

    def _destroy(self, c):
        """The end of a removal (status removing): its layer, cgroup, record, volume uses and
        network endpoints (addresses) go."""
        deletions = []                       # the renamed-away files, deleted by one trash job
        self.networks.leave_all(c)
        try:
            self.layers.remove_rw(c.id, later=deletions.append)
            self.supervisor.release_cgroup(c)
            self.volumes.detach(c.id)
            with c.lock:
                self.by_id.pop(c.id, None)
                with self.names_lock:
                    if self.by_name.get(c.name) == c.id:
                        del self.by_name[c.name]
                self.collection.delete(c.id, later=deletions.append)
                c.set_status(DEAD)
        finally:
            if deletions:
                self.trash.submit(lambda: [delete() for delete in deletions])

    def prune(self, filters=None):
        """POST /containers/prune: remove every container that is not running (created, exited,
        dead) and passes the `until` and `label`/`label!` filters. -> (IDs, bytes of writable
        layers freed); announces a `prune` event carrying `reclaimed`."""
        filters = filters or {}
        filters_mod.check_keys(filters, ("until", "label", "label!"))
        until = filters_mod.until_ns(filters)
        deleted, space = [], 0
        for c in list(self.all()):
            if c.status in ACTIVE or not filters_mod.labels_match(c.config.get("Labels"), filters):
                continue
            if until is not None and rfc3339_ns(c.record["Created"]) > until:
                continue
            size = self.layers.rw_size(c.id)
            try:
                self.remove(c.id)
            except errors.MinidockError as exc:      # started or removed meanwhile: leave it
                log.info("prune: skipping %s: %s", c.id[:12], exc.message)
                continue
            deleted.append(c.id)
            space += size
        self.events.emit("container", "prune", "", {"reclaimed": str(space)})
        return deleted, space

    def rename(self, ref, new_name):
        c = self.get(ref)
        new_name = config.check_name(new_name)
        with self.names_lock:
            if new_name == c.name:
                raise errors.Conflict("Renaming a container with the same name as its current name")
            config.check_name_free(new_name, self.by_name.get(new_name))
            old = c.name
            with c.lock:
                c.record["Name"] = "/" + new_name
                self.save(c)
            self.by_name.pop(old, None)
            self.by_name[new_name] = c.id
        self.emit(c, "rename", {"oldName": "/" + old})

    def update(self, ref, body):
        schema.check_body(body, config.UPDATE_TYPES, "UpdateConfig")
        c = self.get(ref)
        warnings = []
        with c.lock:
            merged = dict(c.host_config)
            if body.get("RestartPolicy") is not None:
                merged["RestartPolicy"] = body["RestartPolicy"]
            limits = {k: v for k, v in body.items() if k != "RestartPolicy" and v not in (None, 0, "")}
            if merged.get("AutoRemove") and (merged["RestartPolicy"] or {}).get("Name", "no") != "no":
                raise errors.InvalidParameter("Restart policy cannot be updated because AutoRemove is enabled for the container")
            merged = self._normalise(merged)
            if limits:
                new_limits, warnings = self.cgroups.check_update(merged, limits)
                merged.update(new_limits)
                group = self.cgroups.get(c.id)
                if group is not None and c.status in ALIVE:
                    group.apply(cgrouplimits.translate(merged, self.cgroups.enabled, group.path))
                if "PidsLimit" in limits and self.cgroups.pids_by_rlimit and c.status in ALIVE:
                    # No pids.max: rewrite RLIMIT_NPROC of the running processes (pidlimit.py),
                    # possible only for one started with a limit (a namespace of its own).
                    own = c.pid and pidlimit.in_own_userns(c.pid)
                    if not own or not pidlimit.limit_running(ns.container_pids(c.pid),
                                                             merged.get("PidsLimit") or 0):
                        warnings.append("The running container keeps its current process limit; "
                                        "the new PIDs limit applies from its next start.")
            c.record["HostConfig"] = merged
            self.save(c)
        self.emit(c, "update")
        return warnings

    def resize(self, ref, height, width):
        c = self.get(ref)
        if not c.io.resize(height, width) and c.status not in ALIVE:
            raise errors.Conflict(f"Container {c.id} is not running")
        # Docker accepts a resize of a non-TTY container and does nothing

    # -- output and input ------------------------------------------------------------------------
    def subscribe(self, c):
        return c.io.subscribe()

    def unsubscribe(self, c, q):
        c.io.unsubscribe(q)

    def logs(self, ref, streams, follow=False, since=0, until=None, tail=None, stop=lambda: False,
             timestamps=False, details=False):
        """`docker logs`: -> (whether it has a TTY, iterator of (stream, bytes shown)): entries
        with their --timestamps/--details prefixes, consecutive ones of a stream merged."""
        c = self.get(ref)
        if not streams:
            raise errors.InvalidParameter("Bad parameters: you must choose at least one stream")
        logs.check_readable(c)
        return c.config.get("Tty"), logs.entries(c, streams, follow, since, until, tail, stop,
                                                 timestamps, details)

    def attach(self, ref, opts, websocket=False, must_run=False):
        """Prepare an attach session: -> (whether it has a TTY, run(conn) to call once the
        connection is hijacked). Subscribes now, before the hijack reply goes out: `docker run`
        attaches, then starts, and the first output of a fast command must not slip between."""
        c = self.get(ref)
        if must_run and c.status not in ALIVE:
            raise errors.NotAcceptable("impossible to attach (container not running)")
        run = attach.prepare(c, opts, websocket, logs.read,
                             on_detach=lambda: self.events.emit("container", "detach", c.id, {"name": c.name}))
        self.emit(c, "attach")
        return c.config.get("Tty"), run

    # -- listing and inspection -----------------------------------------------------------------
    def list(self, all_=False, limit=-1, since=None, before=None, filters=None):
        return describe.listing(self.all(), self.get, all_, limit, since, before, filters or {},
                                lambda image_id, ref: describe.descends_from(self.images, image_id, ref))

    def summaries(self, all_=False, limit=-1, since=None, before=None, filters=None, size=False):
        """The rows of `GET /containers/json`."""
        return [self._row(c, self.size(c) if size else None)
                for c in self.list(all_, limit, since, before, filters)]

    def _row(self, c, sizes=None):
        return describe.summary(c, sizes, self.networks.summary_ports(c), self.networks.settings(c)["Networks"])

    def summaries_json(self, shaper, all_=False, limit=-1, since=None, before=None, filters=None, size=False):
        """The rows of summaries() shaped by `shaper` (versions.item_shaper) and encoded as one
        JSON list: exactly json.dumps([shape(row) for row in summaries(...)]).encode(), from
        rows cached while their records do not change (describe.RowCache)."""
        listed = self.list(all_, limit, since, before, filters)
        body = self.rows.encode(listed, shaper, self.size if size else None)
        if len(self.rows.entries) > len(self.by_id):
            self.rows.forget_all_but(self.by_id)
        return body

    def inspect(self, ref, size=False):
        c = self.get(ref)
        return describe.inspect(c, self.layers.driver_name(), self.size(c) if size else None,
                                self.networks.settings(c))

    def size(self, c):
        """(SizeRw, SizeRootFs) in bytes."""
        rw = self.layers.rw_size(c.id)
        return rw, rw + self.images.size(c.record["Image"])

    def stats(self, ref):
        """-> (a stats.Stream of the container's samples, whether it runs now)."""
        c = self.get(ref)
        return stats.Stream("/" + c.name, c.id, init_pid=lambda: c.pid if c.status in ALIVE else 0,
                            group=lambda: self.cgroups.get(c.id)), c.status in ALIVE

    def top(self, ref, ps_args="-ef"):
        c = self.get(ref)
        if c.status not in ALIVE:
            raise errors.Conflict(f"Container {c.id} is not running")
        return proctable.table(ns.container_pids(c.pid), ps_args or "-ef")
