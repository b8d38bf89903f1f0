"""Volumes: directories that outlive containers, and the mounts a container gets.

The `local` driver keeps a volume as a plain directory, `<data-root>/volumes/<name>/_data`
(Docker's layout), with its metadata in `<name>/opts.json`. A container's mounts come from three
places, resolved once at create time into the container's `Mounts` list:

    HostConfig.Binds     "src:dst[:ro|rw]"  src absolute -> a bind of a host path (created if
                                            missing, as Docker 1.x did); otherwise a named volume,
                                            created on first use
    Config.Volumes       {"/dst": {}}       an anonymous volume (random 64-hex name) unless a
                                            bind already targets /dst; the image's VOLUMEs too
    HostConfig.VolumesFrom ["ctr[:ro|rw]"]  the other container's mounts, same sources

A new volume mounted where the image has files starts as a copy of them ("copy-up"); this is
done at the container's first start, when its root filesystem is assembled. Volumes in use by a
container cannot be removed (409); `docker rm -v` removes a container's anonymous volumes.

Which containers use a volume is kept here as references, as Docker's volume service does: the
container backend `attach`es a container's mounts when it creates or loads it and `detach`es
them when it is destroyed, so this module never needs to know what a container is.
"""

import logging
import os
import re
import shutil
import threading

from minidock import errors, filters as filters_mod, schema, store
from minidock.schema import ANY, STR, STRMAP
from minidock.times import now_rfc3339

log = logging.getLogger("minidock.volumes")

# POST /volumes/create's body (Docker's VolumeCreateOptions), checked before anything is made.
CREATE_TYPES = {"Name": STR, "Driver": STR, "DriverOpts": STRMAP, "Labels": STRMAP,
                "ClusterVolumeSpec": ANY}

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


MOUNT_TYPES = ("bind", "volume", "tmpfs")
PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")
TMPFS_FLAGS = ("ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime")
TMPFS_DATA = ("size", "mode", "nr_inodes", "uid", "gid")


def tmpfs_options(options, bad):
    """TmpfsOptions -> (mount flag words, the tmpfs data string "size=...,mode=..."): SizeBytes
    and Mode (an octal file mode), and since API 1.46 Options, [[flag]] or [[key, value]]."""
    flags, data = [], []
    size = options.get("SizeBytes")
    if size:
        if not isinstance(size, int) or size < 0:
            raise bad(f"invalid tmpfs size: {size}")
        data.append(f"size={size}")
    mode = options.get("Mode")
    if mode:
        data.append(f"mode={int(mode) & 0o7777:o}")
    for option in options.get("Options") or []:
        if not isinstance(option, list) or not 1 <= len(option) <= 2:
            raise bad(f"invalid tmpfs option: {option}")
        if len(option) == 1 and option[0] in TMPFS_FLAGS:
            flags.append(option[0])
        elif len(option) == 2 and option[0] in TMPFS_DATA:
            data.append(f"{option[0]}={option[1]}")
        else:
            raise bad(f"unsupported tmpfs option: {option}")
    return flags, ",".join(data)


class Volumes:
    def __init__(self, data_root, events):
        self.events = events
        self.root = os.path.join(data_root, "volumes")
        self.collection = store.Collection(self.root, "volume", filename="opts.json", per_dir=True)
        self.collection.load()
        self._sweep_half_created()
        self.lock = threading.RLock()
        self.refs = {}                    # volume name -> {container id: None}, in order of use

    # -- the volume API --------------------------------------------------------------------------
    def create(self, name=None, driver="local", driver_opts=None, labels=None, anonymous=False,
               created_for=None):
        driver = driver or "local"
        if driver != "local":
            raise errors.NotFound(f"plugin \"{driver}\" not found")
        if driver_opts:
            raise errors.InvalidParameter("the local driver of minidock takes no options")
        if name and not VOLUME_NAME_RE.match(name):
            raise errors.InvalidParameter(
                f'create {name}: "{name}" includes invalid characters for a local volume name, '
                f'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                f'directory, use absolute path')
        with self.lock:
            name = name or store.new_id()
            if name in self.collection.objects:
                return self.describe(name)
            record = {"Name": name, "Driver": "local", "Labels": labels or {}, "Options": driver_opts or {},
                      "CreatedAt": now_rfc3339(), "Anonymous": anonymous}
            if created_for:
                # The container this anonymous volume was made for: if a crash ends its create
                # before its config is written, start-up finds and removes the volume with it.
                record["CreatedFor"] = created_for
            self._create_atomically(name, record)
        self.events.emit("volume", "create", name, {"driver": "local"})
        return self.describe(name)

    def _create_atomically(self, name, record):
        """The volume directory appears whole or not at all: it is built under a temporary name
        (`.tmp-<name>-<random>`, with `_data` and `opts.json`) and renamed into place, so a
        crash midway leaves only a temporary directory, removed at the next start, and never a
        name that can neither be created nor removed."""
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, f".tmp-{name}-{store.new_id()[:8]}")
        os.makedirs(os.path.join(tmp, "_data"), mode=0o755)
        try:
            store.write_json(os.path.join(tmp, "opts.json"), record)
            if os.path.lexists(final):
                # No record, so not a volume: what an interrupted create of an older version
                # left. It was never given to a container.
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store.fsync_dir(self.root)
        self.collection.objects[name] = record

    def _sweep_half_created(self):
        """Directories without opts.json (interrupted creates of older versions): removed when
        their _data is empty, reported otherwise."""
        for entry in sorted(os.listdir(self.root)):
            full = os.path.join(self.root, entry)
            if entry in self.collection.objects or not os.path.isdir(full):
                continue
            data = os.path.join(full, "_data")
            if not os.path.isdir(data) or not os.listdir(data):
                shutil.rmtree(full, ignore_errors=True)
            else:
                log.warning("volume directory %s has data but no opts.json; left alone", full)

    def describe(self, name):
        record = self.collection.objects.get(name)
        if record is None:
            raise errors.NotFound(f"get {name}: no such volume")
        return {"Name": name, "Driver": record["Driver"], "Mountpoint": self.path(name),
                "Labels": record.get("Labels") or None, "Scope": "local",
                "Options": record.get("Options") or None, "CreatedAt": record["CreatedAt"]}

    def usage(self, name):
        """`UsageData` of `docker system df -v`: bytes in the volume, containers using it."""
        return {"Size": _du(self.path(name)), "RefCount": len(self.users(name))}

    def path(self, name):
        return os.path.join(self.root, name, "_data")

    def users(self, name):
        """IDs of the containers that mount volume `name`."""
        with self.lock:
            return list(self.refs.get(name, ()))

    def attach(self, container_id, mounts):
        """Container `container_id` uses the volumes among `mounts` (its Mounts list)."""
        with self.lock:
            for m in mounts:
                if m.get("Name"):
                    self.refs.setdefault(m["Name"], {})[container_id] = None

    def detach(self, container_id):
        """Container `container_id` is gone: it uses no volume any more."""
        with self.lock:
            for users in self.refs.values():
                users.pop(container_id, None)

    def list(self, filters=None):
        filters = filters or {}
        for key in filters:
            if key not in ("dangling", "name", "driver", "label"):
                raise errors.InvalidParameter(f"Invalid filter '{key}'")
        result = []
        for name in sorted(self.collection.objects):
            v = self.describe(name)
            if filters.get("name") and not any(f in name for f in filters["name"]):
                continue
            if filters.get("driver") and v["Driver"] not in filters["driver"]:
                continue
            if filters.get("dangling"):
                want = filters["dangling"][-1] in ("1", "true", "True")
                if (not self.users(name)) != want:
                    continue
            if not filters_mod.labels_match(v["Labels"], {"label": filters.get("label")}):
                continue
            result.append(v)
        return result

    def remove(self, name, force=False):
        with self.lock:
            if name not in self.collection.objects:
                if force:
                    return
                raise errors.NotFound(f"get {name}: no such volume")
            users = self.users(name)
            if users:
                raise errors.Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            self.collection.delete(name)
        self.events.emit("volume", "destroy", name, {"driver": "local"})

    def remove_made_for(self, container_ids):
        """Anonymous volumes made for containers whose create never finished (start-up)."""
        for name, record in list(self.collection.objects.items()):
            if record.get("Anonymous") and record.get("CreatedFor") in container_ids:
                log.info("removing anonymous volume %s of half-created container %s", name,
                         record["CreatedFor"])
                self.remove(name, force=True)

    def prune(self, filters=None):
        """POST /volumes/prune: remove unused volumes (only anonymous ones unless `all=true`,
        API 1.42) that pass the `label`/`label!` filters. -> (names, bytes freed); announces a
        `prune` event carrying `reclaimed`."""
        filters = filters or {}
        filters_mod.check_keys(filters, ("all", "label", "label!"))
        every = filters_mod.truthy(filters, "all", False)
        deleted, space = [], 0
        for name in list(self.collection.objects):
            record = self.collection.objects[name]
            if self.users(name) or not (every or record.get("Anonymous")) \
                    or not filters_mod.labels_match(record.get("Labels"), filters):
                continue
            space += _du(os.path.join(self.root, name))
            self.remove(name)
            deleted.append(name)
        self.events.emit("volume", "prune", "", {"reclaimed": str(space)})
        return deleted, space

    # -- container mounts ------------------------------------------------------------------------
    def prepare_mounts(self, hc, cfg, mounts_of, created_for=None):
        """Resolve Binds, Volumes (Config's, merged with the image's) and VolumesFrom into the
        Mounts list; `mounts_of(ref)` is the Mounts list of another container, `created_for`
        the id of the container being created (recorded in its anonymous volumes)."""
        mounts = {}
        for spec in hc.get("Binds") or []:
            m = self._parse_bind(spec)
            mounts[m["Destination"]] = m
        for spec in hc.get("Mounts") or []:
            m = self._parse_mount(spec)
            if m["Destination"] in mounts:       # Binds and Mounts may not both claim a path
                raise errors.InvalidParameter(f"Duplicate mount point: {m['Destination']}")
            mounts[m["Destination"]] = m
        for spec in hc.get("VolumesFrom") or []:
            ref, _, mode = spec.partition(":")
            if mode not in ("", "ro", "rw"):
                raise errors.InvalidParameter(f"invalid mode for volumes-from: {mode}")
            for m in mounts_of(ref):
                if m["Destination"] in mounts:
                    continue
                copy = dict(m)
                if mode:
                    copy["RW"], copy["Mode"] = mode == "rw", mode
                mounts[copy["Destination"]] = copy
        for dest in (cfg.get("Volumes") or {}):
            dest = os.path.normpath("/" + dest.lstrip("/"))     # "//x" would stay "//x" (POSIX)
            if dest in mounts:
                continue
            v = self.create(anonymous=True, created_for=created_for)
            mounts[dest] = {"Type": "volume", "Name": v["Name"], "Source": v["Mountpoint"], "Destination": dest,
                            "Driver": "local", "Mode": "", "RW": True, "Propagation": "", "CopyUp": True}
        return sorted(mounts.values(), key=lambda m: m["Destination"])

    def _parse_mount(self, spec):
        """One `HostConfig.Mounts` entry (API 1.25, `docker run --mount`) -> a mount point.

        {"Type": "bind"|"volume"|"tmpfs", "Source", "Target", "ReadOnly", and the options of its
        type only: BindOptions {Propagation, CreateMountpoint}, VolumeOptions {NoCopy, Labels,
        Subpath}, TmpfsOptions {SizeBytes, Mode, Options}}. Everything is checked before anything
        is created; the messages are Docker's."""
        if not isinstance(spec, dict):
            raise errors.InvalidParameter("invalid mount config: a mount must be a JSON object")
        kind, source, target = spec.get("Type") or "", spec.get("Source") or "", spec.get("Target") or ""
        if kind not in MOUNT_TYPES:
            raise errors.InvalidParameter(f'invalid mount config for type "{kind}": mount type unknown')

        def bad(why):
            return errors.InvalidParameter(f'invalid mount config for type "{kind}": {why}')
        for option, own in (("BindOptions", "bind"), ("VolumeOptions", "volume"), ("TmpfsOptions", "tmpfs")):
            if spec.get(option) and kind != own:
                raise bad(f"{option} must not be specified")
        if not target:
            raise bad("field Target must not be empty")
        if not target.startswith("/"):
            raise bad(f"invalid mount path: '{target}' mount path must be absolute")
        target = os.path.normpath(target)
        rw = not spec.get("ReadOnly")
        point = {"Type": kind, "Destination": target, "Mode": "", "RW": rw}
        if kind == "bind":
            options = spec.get("BindOptions") or {}
            propagation = options.get("Propagation") or "rprivate"
            if propagation not in PROPAGATIONS:
                raise bad(f"invalid propagation mode: {propagation}")
            if not source.startswith("/"):
                raise bad(f"invalid mount path: '{source}' mount path must be absolute"
                          if source else "field Source must not be empty")
            source = os.path.normpath(source)
            if not os.path.exists(source):
                if not options.get("CreateMountpoint"):
                    raise bad(f"bind source path does not exist: {source}")
                os.makedirs(source, mode=0o755, exist_ok=True)
            return dict(point, Source=source, Propagation=propagation)
        if kind == "tmpfs":
            if source:
                raise bad("field Source must not be specified")
            options = spec.get("TmpfsOptions") or {}
            flags, data = tmpfs_options(options, bad)
            return dict(point, Source="", Propagation="", Tmpfs={"flags": flags, "data": data})
        options = spec.get("VolumeOptions") or {}
        subpath = options.get("Subpath") or ""
        if subpath and (subpath.startswith("/") or ".." in subpath.split("/")):
            raise bad(f"subpath must be a relative path within the volume: {subpath}")
        if source and not VOLUME_NAME_RE.match(source):
            raise bad(f"invalid volume name: {source}")
        if (options.get("DriverConfig") or {}).get("Name", "local") not in ("", "local"):
            raise bad("only the local volume driver is available")
        v = self.create(name=source or None, labels=options.get("Labels"), anonymous=not source)
        mountpoint = v["Mountpoint"]
        if subpath:
            mountpoint = os.path.join(mountpoint, os.path.normpath(subpath))
            if not os.path.exists(mountpoint):
                raise bad(f"cannot access path {mountpoint}: no such file or directory")
        return dict(point, Name=v["Name"], Source=mountpoint, Driver="local", Propagation="",
                    CopyUp=not options.get("NoCopy") and not subpath)

    def _parse_bind(self, spec):
        parts = spec.split(":")
        if len(parts) == 2:
            src, dst, mode = parts[0], parts[1], ""
        elif len(parts) == 3:
            src, dst, mode = parts
        else:
            raise errors.InvalidParameter(f"invalid volume specification: '{spec}'")
        modes = set(filter(None, mode.split(",")))
        if modes - {"ro", "rw", "z", "Z", "nocopy", "rprivate", "private", "rslave", "slave", "rshared", "shared"}:
            raise errors.InvalidParameter(f"invalid mode: {mode}")
        if not dst.startswith("/"):
            raise errors.InvalidParameter(f"invalid volume specification: '{spec}': "
                                          f"invalid mount config: destination must be an absolute path")
        rw = "ro" not in modes
        dst = os.path.normpath(dst)
        if dst == "/":
            raise errors.InvalidParameter(f"invalid volume specification: '{spec}': destination can't be '/'")
        if src.startswith("/"):
            src = os.path.normpath(src)
            if not os.path.exists(src):
                try:
                    os.makedirs(src, mode=0o755)
                except OSError as exc:
                    raise errors.InvalidParameter(f"error while creating mount source path '{src}': "
                                                  f"{exc.strerror}")
            return {"Type": "bind", "Source": src, "Destination": dst, "Mode": mode, "RW": rw,
                    "Propagation": "rprivate"}
        v = self.create(name=src)
        return {"Type": "volume", "Name": src, "Source": v["Mountpoint"], "Destination": dst,
                "Driver": "local", "Mode": mode, "RW": rw, "Propagation": "", "CopyUp": "nocopy" not in modes}

    def runtime_mounts(self, mounts, rootfs):
        """The spawner's mount list for a container's `mounts`, doing copy-up from `rootfs` for
        new, empty volumes. Returns (list, whether `mounts` changed and must be saved)."""
        result = []
        changed = False
        for m in mounts:
            if m.get("CopyUp") and m["Type"] == "volume":
                self._copy_up(os.path.join(rootfs, m["Destination"].lstrip("/")), m["Source"])
                m["CopyUp"] = False
                changed = True
            if m["Type"] == "tmpfs":
                result.append({"type": "tmpfs", "target": m["Destination"],
                               "flags": m["Tmpfs"]["flags"] + ([] if m["RW"] else ["ro"]),
                               "data": m["Tmpfs"]["data"]})
                continue
            result.append({"source": m["Source"], "target": m["Destination"], "readonly": not m["RW"]})
        return result, changed

    @staticmethod
    def _copy_up(image_path, volume_path):
        if not os.path.isdir(image_path) or os.path.islink(image_path) or os.listdir(volume_path):
            return
        shutil.copytree(image_path, volume_path, symlinks=True, dirs_exist_ok=True)
        st = os.stat(image_path)
        os.chmod(volume_path, st.st_mode & 0o7777)
        try:
            os.chown(volume_path, st.st_uid, st.st_gid)
        except OSError:
            pass

    def release_anonymous(self, container_id, mounts):
        """`docker rm -v`: remove the anonymous volumes among `mounts` nobody else uses."""
        for m in mounts:
            name = m.get("Name")
            record = self.collection.objects.get(name) if name else None
            if record and record.get("Anonymous") and not [u for u in self.users(name) if u != container_id]:
                self.collection.delete(name)
                self.events.emit("volume", "destroy", name, {"driver": "local"})


def _du(path):
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
