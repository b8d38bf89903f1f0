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

import os
import re
import shutil
import threading

from minidock import errors, store
from minidock.times import now_rfc3339

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class Volumes:
    def __init__(self, data_root, events):
        self.events = events
        self.root = os.path.join(data_root, "volumes")
        self.collection = store.Collection(self.root, "volume", filename="opts.json", per_dir=True)
        self.collection.load()
        self.lock = threading.RLock()
        self.refs = {}                    # volume name -> {container id: None}, in order of use

    # -- the volume API --------------------------------------------------------------------------
    def create(self, name=None, driver="local", driver_opts=None, labels=None, anonymous=False):
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
            data = os.path.join(self.root, name, "_data")
            os.makedirs(data, mode=0o755)
            record = {"Name": name, "Driver": "local", "Labels": labels or {}, "Options": driver_opts or {},
                      "CreatedAt": now_rfc3339(), "Anonymous": anonymous}
            self.collection.save(name, record)
        self.events.emit("volume", "create", name, {"driver": "local"})
        return self.describe(name)

    def describe(self, name):
        record = self.collection.objects.get(name)
        if record is None:
            raise errors.NotFound(f"get {name}: no such volume")
        return {"Name": name, "Driver": record["Driver"], "Mountpoint": self.path(name),
                "Labels": record.get("Labels") or None, "Scope": "local",
                "Options": record.get("Options") or None, "CreatedAt": record["CreatedAt"]}

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
            labels = v["Labels"] or {}
            if any(k.partition("=")[0] not in labels or ("=" in k and labels[k.partition("=")[0]] != k.partition("=")[2])
                   for k in filters.get("label", [])):
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

    def prune(self):
        deleted, space = [], 0
        for name in list(self.collection.objects):
            if not self.users(name):
                space += _du(os.path.join(self.root, name))
                self.remove(name)
                deleted.append(name)
        return deleted, space

    # -- container mounts ------------------------------------------------------------------------
    def prepare_mounts(self, hc, cfg, mounts_of):
        """Resolve Binds, Volumes (Config's, merged with the image's) and VolumesFrom into the
        Mounts list; `mounts_of(ref)` is the Mounts list of another container."""
        mounts = {}
        for spec in hc.get("Binds") or []:
            m = self._parse_bind(spec)
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
            v = self.create(anonymous=True)
            mounts[dest] = {"Type": "volume", "Name": v["Name"], "Source": v["Mountpoint"], "Destination": dest,
                            "Driver": "local", "Mode": "", "RW": True, "Propagation": "", "CopyUp": True}
        return sorted(mounts.values(), key=lambda m: m["Destination"])

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
