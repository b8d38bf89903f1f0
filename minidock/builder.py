"""The classic image builder: a Dockerfile and a build context become an image, one step at a time.

`docker build` without BuildKit (`DOCKER_BUILDKIT=0`) sends the *build context* -- a directory as
a tar stream, maybe compressed -- to `POST /build`, and the daemon answers with a stream of JSON
lines while it works. This module is that work; dockerfile.py parses, buildvars.py substitutes
variables, dockerignore.py decides which context files exist, and this module runs the steps.
The sequence:

1. **Context.** The tar is unpacked (tarsafe: nothing lands outside the directory) into a temp
   directory on the layer store's file system; `.dockerignore` patterns prune it, and the
   Dockerfile (the `dockerfile` parameter, default `Dockerfile`) is read from it.
2. **Stages.** Each `FROM` starts from an image (`scratch` is none at all), an earlier stage, or
   a name to pull. The base image's ONBUILD triggers run first.
3. **Steps.** Every instruction makes exactly one new image whose parent is the previous one,
   with one more `history` entry. The build state is nothing but that image: its config holds
   Env, Cmd, WorkingDir, ...; the only other state is the stage's ARG scope.
     - metadata instructions (ENV, CMD, LABEL, EXPOSE, USER, ...) change the config and add no
       layer: their history entry says `"empty_layer": true`;
     - RUN starts a real container from the current image (through the containers backend,
       so the same namespaces, user and cgroups as `docker run`) with Cmd = the command, waits,
       and commits the container's writable layer (its overlay upper dir) as a layer;
     - COPY/ADD and WORKDIR write into a writable layer made directly by the layer store on
       top of the current image (no process runs), then commit it the same way (where COPY
       and ADD sources come from and how they land is buildcopy.py's).
4. **Cache.** Before a step runs, the image store is asked for an image whose parent is the
   current image and whose recorded cache key matches: the instruction after substitution,
   the ARG values a RUN sees, and for COPY/ADD a checksum of the files copied. A hit prints
   ` ---> Using cache` and moves on. Keys live in the images' meta.json, so they survive a
   daemon restart, and deleting the images forgets them. Images named in `cachefrom` are a
   second cache read from their history, with moby's rules (buildcache.py).
5. **Result.** The last stage's image (or the `target` stage) is tagged with every `t`.

What you can observe: `docker history <image>` lists one row per instruction (metadata steps
with size 0 and `#(nop)` in CREATED BY); `docker ps -a` shows the build's RUN containers while
they run; `docker images -a` shows the intermediate images that the cache reuses.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import queue
import shutil
import urllib.parse
import urllib.request

from minidock import (buildcache, buildconfig, buildcopy, buildvars, compression, dockerfile, dockerignore, errors,
                      imagecreate, images as images_mod, ns, store, tarsafe)
from minidock.progress import Cancelled

log = logging.getLogger("minidock.builder")

DEFAULT_DOCKERFILE = "Dockerfile"
# Build parameters that become the RUN containers' HostConfig.
LIMITS = {"memory": "Memory", "memswap": "MemorySwap", "cpushares": "CpuShares",
          "cpuquota": "CpuQuota", "cpuperiod": "CpuPeriod", "cpusetcpus": "CpusetCpus",
          "cpusetmems": "CpusetMems", "shmsize": "ShmSize"}


class StepFailed(errors.InvalidParameter):
    """A RUN command exited non-zero. `code` is its exit status (errorDetail.code)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Options:
    """The build parameters of POST /build that the builder uses."""
    tags: list = dataclasses.field(default_factory=list)
    dockerfile: str = DEFAULT_DOCKERFILE
    nocache: bool = False
    rm: bool = True
    forcerm: bool = False
    pull: bool = False
    buildargs: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)
    target: str = ""
    cache_from: list = dataclasses.field(default_factory=list)
    host_config: dict = dataclasses.field(default_factory=dict)
    auth: object = None


# ---------------------------------------------------------------------------------------------
# The context
# ---------------------------------------------------------------------------------------------

def extract_context(stream, dest, dockerfile_name=DEFAULT_DOCKERFILE):
    """Unpack a build context tar (plain, gzip, bzip2 or xz) from `stream` into `dest`.

    A body that is not an archive at all is taken as the Dockerfile itself, with an otherwise
    empty context (what Docker does for `curl --data-binary @Dockerfile`).
    """
    plain, _ = compression.decompressed(stream)
    head = b""
    while len(head) < 512:
        more = plain.read(512 - len(head))
        if not more:
            break
        head += more
    body = io.BufferedReader(compression.Prefixed(head, plain))
    if head and not buildcopy.is_tar_header(head):
        with open(os.path.join(dest, dockerfile_name.lstrip("/")), "wb") as f:
            shutil.copyfileobj(body, f)
        return
    if head:
        tarsafe.extract(body, dest, whiteouts=tarsafe.KEEP, chown=False)


def fetch_remote(url, dest, dockerfile_name):
    """The `remote` parameter: a URL of a context tar or of a plain Dockerfile, fetched into
    `dest`. Git repositories are refused by name (cloning would need a `git` subprocess)."""
    parsed = urllib.parse.urlparse(url)
    if (url.startswith(("git://", "git@", "github.com/")) or parsed.path.endswith(".git")
            or "#" in url and parsed.scheme in ("http", "https") and ".git" in url):
        raise errors.NotImplementedKind(
            f"git build contexts are not supported by minidock: {url} (send the context as a tar, "
            "or a URL of a tar or Dockerfile)")
    if parsed.scheme not in ("http", "https"):
        raise errors.InvalidParameter(f"remote must be an http(s) URL, got {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            extract_context(response, dest, dockerfile_name)
    except OSError as exc:
        raise errors.InvalidParameter(f"could not fetch remote context {url}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------

class Builder:
    """One build. `say(obj)` receives each JSON message; `cancelled()` is polled."""

    def __init__(self, engine, context_dir, options, say, cancelled=lambda: False):
        self.engine = engine
        self.images = engine.images
        self.layers = engine.layers
        self.context = context_dir
        self.options = options
        self.say = say
        self.cancelled = cancelled
        self.ignore = None
        self.stage_images = {}            # stage index -> final image id (None: scratch)
        self.sources = buildcache.Sources(self.images, [])   # `cachefrom`, anew per stage
        self.step = 0
        self.total = 0

    def out(self, text):
        self.say({"stream": text})

    def check_cancel(self):
        if self.cancelled():
            raise Cancelled()

    # -- the whole build ---------------------------------------------------------------------
    def run(self):
        """Build; return the final image ID. Raises a MinidockError kind on failure."""
        df = self._read_dockerfile()
        for warning in df.warnings:
            self.out(warning + "\n")
        stages = df.stages
        if self.options.target:
            stage = df.stage(self.options.target)
            if stage is None:
                raise errors.InvalidParameter(
                    f"failed to reach build target {self.options.target} in Dockerfile")
            stages = stages[:stage.index + 1]
        if self.options.labels:
            # Docker appends the `labels` parameter as one more LABEL step of the final stage.
            text = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}"
                                       for k, v in sorted(self.options.labels.items()))
            stages[-1].instructions.append(dockerfile.parse_instruction(text, df.escape))
        self.total = len(df.meta_args) + sum(1 + len(s.instructions) for s in stages)
        args = buildvars.BuildArgs(self.options.buildargs, df.escape)
        for instr in df.meta_args:
            self._announce(instr)
            args.resolve_meta([instr])
        meta = {k: v for k, v in args.meta.items() if v is not None}
        image = None
        for stage in stages:
            image = self._run_stage(df, stage, args, meta)
            self.stage_images[stage.index] = image
        unused = args.unused()
        if unused:
            self.out(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        if image is None:
            raise errors.InvalidParameter("No image was generated. Is your Dockerfile empty?")
        self.say({"aux": {"ID": image}})
        self.out(f"Successfully built {images_mod.short_id(image)}\n")
        for name in self.options.tags:
            key = self.images.tag(image, name)
            self.out(f"Successfully tagged {key}\n")
        return image

    def _read_dockerfile(self):
        name = self.options.dockerfile or DEFAULT_DOCKERFILE
        rel = dockerignore.clean_source(name)
        ignore_path = os.path.join(self.context, ".dockerignore")
        if os.path.isfile(ignore_path):
            with open(ignore_path, "rb") as f:
                self.ignore = dockerignore.Ignore.from_text(f.read())
        try:
            with tarsafe.Resolver(self.context) as res:
                path = res.host_path(rel)
            with open(path, "rb") as f:
                text = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if name != DEFAULT_DOCKERFILE or not os.path.isfile(os.path.join(self.context, "dockerfile")):
                raise errors.InvalidParameter(
                    f"Cannot locate specified Dockerfile: {name}") from None
            with open(os.path.join(self.context, "dockerfile"), "rb") as f:   # Docker's fallback
                text = f.read()
        df = dockerfile.parse(text)
        if self.ignore is not None:
            # The CLI always sends the Dockerfile and .dockerignore; like Docker, drop them
            # now if the patterns exclude them, so COPY cannot see them.
            dockerignore.prune(self.context, self.ignore)
        return df

    def _announce(self, instr):
        self.step += 1
        self.out(f"Step {self.step}/{self.total} : {instr.original}\n")

    # -- a stage -------------------------------------------------------------------------------
    def _run_stage(self, df, stage, args, meta):
        from_ = buildvars.substitute(stage.from_, meta, df.escape)
        self._announce(stage.from_)
        image = self._base_image(df, stage, from_.args[0])
        self.out(f" ---> {images_mod.short_id(image) if image else ''}\n")
        state = StageState(image, self._config_of(image), args.stage_scope(), df.escape)
        self.sources = buildcache.Sources(self.images, self.options.cache_from)
        env = list(state.config.get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            # Docker gives every stage the default PATH when its base image sets none (an
            # imported or scratch image), so `ENV PATH=/x:$PATH` and RUN find the usual tools.
            state.config["Env"] = env + ["PATH=" + ns.DEFAULT_PATH]
        triggers = list(state.config.get("OnBuild") or [])
        if triggers:
            state.config["OnBuild"] = None
            self.out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                trigger = dockerfile.parse_instruction(text, df.escape)
                if trigger.cmd in ("ONBUILD", "FROM", "MAINTAINER"):
                    raise errors.InvalidParameter(f"{trigger.cmd} isn't allowed as an ONBUILD trigger")
                self._dispatch(df, state, trigger)
        for instr in stage.instructions:
            self.check_cancel()
            self._announce(instr)
            self._dispatch(df, state, instr)
            self.out(f" ---> {images_mod.short_id(state.image) if state.image else ''}\n")
        return state.image

    def _base_image(self, df, stage, name):
        if name.lower() == "scratch":
            return None
        earlier = df.stage(name)
        if earlier is not None and earlier.index < stage.index and earlier.name == name.lower():
            return self.stage_images[earlier.index]
        return self._image(name)

    def _image(self, name):
        """An image by name, pulled from its registry when it is not here. (`pull=1` does not
        refresh an image that is already local.)"""
        try:
            return self.images.resolve(name)
        except errors.NotFound:
            pass
        registry = getattr(self.engine, "registry", None)
        if registry is None:
            raise errors.NotFound(f"No such image: {name}")
        self.out(f"Pulling image {name}\n")
        registry.pull(name, self.options.auth, lambda obj: None, self.cancelled)
        return self.images.resolve(name)

    def _config_of(self, image):
        if image is None:
            return imagecreate.full_config()
        return json.loads(json.dumps(imagecreate.full_config(self.images.config(image).get("config"))))

    # -- one instruction -----------------------------------------------------------------------
    def _dispatch(self, df, state, instr):
        variables = state.scope.variables(state.config.get("Env") or [])
        instr = buildvars.substitute(instr, variables, df.escape)
        if instr.cmd == "ARG":
            state.scope.declare(instr)
        if instr.cmd in buildconfig.METADATA:
            self._metadata(state, instr)
        elif instr.cmd == "RUN":
            self._run(state, instr)
        elif instr.cmd in ("COPY", "ADD"):
            self._copy(df, state, instr)
        elif instr.cmd == "WORKDIR":
            self._workdir(state, instr)
        else:
            raise errors.InvalidParameter(f"unknown instruction: {instr.cmd}")

    def _cached(self, state, key, created_by, config):
        """The cached image for this step, announced, or None: a step made here with the same
        parent and `key`, or one the `cachefrom` images' history offers for `created_by`
        (the step's history text; `config` is what the step makes, buildcache.py)."""
        if self.options.nocache:
            return None
        hit = self.images.build_cache_lookup(state.image, key)
        if hit is not None and not self.sources.accepts_local(hit):
            hit = None
        if hit is None and self.sources:
            hit = self.sources.lookup(state.image, created_by, config)
        if hit is not None:
            self.out(" ---> Using cache\n")
            state.move_to(hit, self._config_of(hit))
        return hit

    def _commit_metadata(self, state, comment, key, config):
        container_config = dict(config, Cmd=state.shell() + ["#(nop) ", comment])
        image = imagecreate.add_build_step(self.images, 
            state.image, config, " ".join(container_config["Cmd"]), cache_key=key,
            author=state.author, container_config=container_config)
        state.move_to(image, self._config_of(image))

    def _metadata(self, state, instr):
        config = json.loads(json.dumps(state.config))
        config["Image"] = state.image or ""
        comment = buildconfig.apply(config, instr, state)
        cmd = instr.cmd
        key = _key(cmd, comment, state.scope.history_args(config.get("Env")) if cmd == "ARG" else None)
        if self._cached(state, key, " ".join(state.shell() + ["#(nop) ", comment]), config):
            return
        self._commit_metadata(state, comment, key, config)

    # -- RUN -----------------------------------------------------------------------------------
    def _run(self, state, instr):
        if state.image is None:
            raise errors.InvalidParameter("RUN needs a base image with a command to run "
                                          "(this stage is FROM scratch with no files)")
        argv = dockerfile.command_argv(instr, state.config.get("Shell"))
        env = state.config.get("Env") or []
        history_args = state.scope.history_args(env)
        shown = ([f"|{len(history_args)}"] + history_args if history_args else []) + argv
        created_by = " ".join(shown)
        key = _key("RUN", created_by)
        if self._cached(state, key, created_by, dict(state.config, Image=state.image)):
            return
        body = {"Image": state.image, "Cmd": argv, "Entrypoint": [""],
                "Env": state.scope.run_env(env), "User": state.config.get("User") or "",
                "WorkingDir": state.config.get("WorkingDir") or "",
                "AttachStdout": True, "AttachStderr": True,
                "HostConfig": dict(self.options.host_config)}
        containers = self.engine.containers
        cid, _ = containers.create(body)
        self.out(f" ---> Running in {cid[:12]}\n")
        ok = cancelled = False
        try:
            code = self._start_and_stream(cid)
            if code != 0:
                raise StepFailed(f"The command '{' '.join(argv)}' returned a non-zero code: {code}",
                                 code)
            config = json.loads(json.dumps(state.config))
            config["Image"] = state.image
            container_config = dict(config, Cmd=shown)
            diff_id = self._commit_rw(cid, state.image)
            image = imagecreate.add_build_step(self.images, state.image, config, created_by, diff_id, key,
                                               author=state.author, container=cid,
                                               container_config=container_config)
            state.move_to(image, self._config_of(image))
            ok = True
        except Cancelled:
            cancelled = True
            raise
        finally:
            if self.options.forcerm or cancelled or (ok and self.options.rm):
                self.out(f"Removing intermediate container {cid[:12]}\n")
                try:
                    containers.remove(cid, force=True, volumes=True)
                except errors.MinidockError as exc:
                    log.warning("removing build container %s: %s", cid[:12], exc.message)

    def _start_and_stream(self, cid):
        """Start the container, stream its output as `stream` lines, return its exit code."""
        containers = self.engine.containers
        c = containers.get(cid)
        q = containers.subscribe(c)
        try:
            containers.start(cid)
            while True:
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    if self.cancelled():
                        try:
                            containers.kill(cid, "KILL")
                        except errors.Conflict:
                            pass          # the step ended meanwhile: nothing to kill
                        raise Cancelled() from None
                    continue
                if item is None:
                    break
                self.out(item[1].decode("utf-8", errors="replace"))
        finally:
            containers.unsubscribe(c, q)
        return containers.wait(cid, stop=self.cancelled)

    def _commit_rw(self, rw_id, image):
        """Register the writable layer `rw_id` (a container's, or a scratch one) as a layer on
        top of `image`; returns its diff_id."""
        work = self.layers.tmpdir()
        try:
            with open(os.path.join(work, "diff.tar"), "w+b") as f:
                self.layers.diff_tar(rw_id, f)
                f.seek(0)
                parent = self.images.top_chain(image) if image else None
                return self.layers.register(f, parent=parent)["diff_id"]
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- writable layers without a process (COPY, ADD, WORKDIR) ---------------------------------
    def _scratch_rw(self, image):
        """A writable layer on `image` with no container around it: (id, mounted root path)."""
        rw_id = "build-" + store.new_id()[:52]
        self.layers.create_rw(rw_id, self.images.top_chain(image) if image else None)
        try:
            return rw_id, self.layers.mount(rw_id)
        except BaseException:
            self.layers.remove_rw(rw_id)
            raise

    def _workdir(self, state, instr):
        path = instr.args[0]
        if not path.startswith("/"):
            path = posixpath.join(state.config.get("WorkingDir") or "/", path)
        path = posixpath.normpath(path)
        config = json.loads(json.dumps(state.config))
        config["Image"] = state.image or ""
        config["WorkingDir"] = path
        comment = "WORKDIR " + path
        key = _key("WORKDIR", comment)
        if self._cached(state, key, " ".join(state.shell() + ["#(nop) ", comment]), config):
            return
        # Docker creates the directory now, so later COPY/RUN steps (and the final image) have it.
        rw_id, root = self._scratch_rw(state.image)
        try:
            with tarsafe.Resolver(root) as res:
                res.dir_fd(path, create=True)
            diff_id = self._commit_rw(rw_id, state.image) if self.layers.changes(rw_id) else None
        finally:
            self.layers.remove_rw(rw_id)
        container_config = dict(config, Cmd=state.shell() + ["#(nop) ", comment])
        image = imagecreate.add_build_step(self.images, state.image, config, " ".join(container_config["Cmd"]),
                                           diff_id, key, author=state.author,
                                           container_config=container_config)
        state.move_to(image, self._config_of(image))

    def _copy(self, df, state, instr):
        cmd = instr.cmd
        # --link only changes how BuildKit caches and is accepted as a no-op.
        if instr.flags.get("chmod"):
            raise errors.NotImplementedKind("the --chmod option requires BuildKit")
        sources, dest = instr.args[:-1], instr.args[-1]
        if not sources:
            raise errors.InvalidParameter(f"{cmd} requires at least two arguments")
        workdir = state.config.get("WorkingDir") or "/"
        dest_abs = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        dest_dir_hint = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
        cleanups = []
        try:
            root, ignore = self.context, self.ignore
            if instr.flags.get("from"):
                root = self._source_root(df, instr.flags["from"], cleanups)
                ignore = None
            def url_dir():
                work = self.layers.tmpdir()
                cleanups.append(lambda: shutil.rmtree(work, ignore_errors=True))
                return work
            items = buildcopy.gather(cmd, root, ignore, sources, url_dir)
            many = len(items) > 1
            if many and not dest_dir_hint:
                # The check is on what the sources *matched*, as Docker does.
                raise errors.InvalidParameter(
                    f"When using {cmd} with more than one source file, the destination must "
                    "be a directory and end with a /")
            comment = buildcopy.comment(cmd, items, dest_abs)
            key = _key(cmd, comment, [instr.flags.get("chown") or "", instr.flags.get("from") or ""])
            if self._cached(state, key, " ".join(state.shell() + ["#(nop) " + comment]),
                            dict(state.config, Image=state.image or "")):
                return
            rw_id, rootfs = self._scratch_rw(state.image)
            cleanups.append(lambda: self.layers.remove_rw(rw_id))
            uid, gid = buildcopy.owner(rootfs, instr.flags.get("chown"))
            buildcopy.write_items(cmd, rootfs, items, dest_abs, dest_dir_hint or many, uid, gid,
                                  self.layers.tmpdir())
            diff_id = self._commit_rw(rw_id, state.image)
            config = json.loads(json.dumps(state.config))
            config["Image"] = state.image or ""
            created_by = " ".join(state.shell() + ["#(nop) " + comment])
            image = imagecreate.add_build_step(self.images, state.image, config, created_by, diff_id, key,
                                               author=state.author,
                                               container_config=dict(config, Cmd=state.shell() +
                                                                     ["#(nop) " + comment]))
            state.move_to(image, self._config_of(image))
        finally:
            for cleanup in reversed(cleanups):
                try:
                    cleanup()
                except (OSError, errors.MinidockError) as exc:
                    log.warning("build cleanup: %s", exc)

    def _source_root(self, df, ref, cleanups):
        """The root directory `COPY --from=ref` reads: an earlier stage's image or any image,
        mounted as a throw-away writable layer (only read)."""
        stage = df.stage(ref)
        if stage is not None and stage.index in self.stage_images:
            image = self.stage_images[stage.index]
        elif stage is not None:
            raise errors.InvalidParameter(f"COPY --from={ref}: stage {ref} is not built before "
                                          "this step (a stage can only copy from earlier ones)")
        else:
            image = self._image(ref)
        rw_id, root = self._scratch_rw(image)
        cleanups.append(lambda: self.layers.remove_rw(rw_id))
        return root

class StageState:
    """What a stage carries from step to step: the current image and its config, the ARG
    scope, the author set by MAINTAINER, and whether this stage set CMD itself."""

    def __init__(self, image, config, scope, escape):
        self.image = image
        self.config = config
        self.scope = scope
        self.escape = escape
        self.author = ""
        self.cmd_set = False

    def move_to(self, image, config):
        self.image, self.config = image, config

    def shell(self):
        return list(self.config.get("Shell") or dockerfile.DEFAULT_SHELL)


def _key(cmd, text, extra=None):
    """A step's cache key: what it does, after substitution (the parent is matched apart)."""
    return "sha256:" + hashlib.sha256(json.dumps([cmd, text, extra]).encode()).hexdigest()
