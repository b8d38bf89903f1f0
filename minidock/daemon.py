"""minidockd: start-up, flags, the data-root lock, signal handling, and wiring.

The start-up sequence is linear and its order matters:

1. Parse flags and fill defaults (socket under $XDG_RUNTIME_DIR, data under ~/.local/share for a
   normal user, /var/lib/minidock for root). TCP listeners: TLS settings from --tls/--tlsverify
   (plain TCP off loopback is refused without --tls=false). The soft RLIMIT_NOFILE is raised to
   the hard limit: every connection, log and pty is a descriptor.
2. Take an exclusive lock on the data root, so a second daemon on the same state is refused with
   a clear error instead of both corrupting it. The lock is a `flock` on a file: the kernel drops
   it when the process dies, even by SIGKILL, so a killed daemon never blocks the next start.
3. Enter the daemon's own user and mount namespace (userns.py) — *before* any thread exists, because
   unshare(CLONE_NEWUSER) is refused to multi-threaded processes.
4. Start the single-threaded spawner process that forks containers (also before threads: it is
   forked from this still single-threaded process), and start the keeper thread of the
   daemon's network namespace (network.py): the kernel makes it, with the GIL released, while
   steps 5 and 6 run here.
5. Build the engine (load state from disk, sweep what a crash left half-made).
6. Bind the API sockets (a stale socket file is replaced, a live one is refused). They listen
   but nobody answers yet: a client that connects now waits in the backlog.
7. Bring up the networks (the keeper of step 4 is waited for here), then reconcile containers
   that died with the last daemon and restart those whose policy says so.
8. Serve each socket in a thread ("ready" is logged now, when a request is answered), and wait
   for SIGTERM/SIGINT to shut down cleanly.

Where start-up time goes, step by step, and why the order is what it is for speed as well:
docs/performance.md, "Start-up".
"""

import argparse
import fcntl
import ipaddress
import logging
import os
import resource
import shutil
import signal
import sys
import threading

from minidock import API_VERSION, __version__, cgroup, errors, httpserver, network
from minidock.api import archive, build, containers, execs, images, networks, swarm, system, volumes
from minidock.api.router import Router
from minidock.container.exits import ExitRegistry
from minidock.engine import Config, Engine, NoSpawner
from minidock.spawner import Spawner
from minidock.userns import enter_daemon_userns

log = logging.getLogger("minidock")

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}


def runtime_dir():
    """Where per-user runtime files (the socket) go: $XDG_RUNTIME_DIR, else a private /tmp dir."""
    if os.getuid() == 0:
        return "/run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return xdg
    fallback = f"/tmp/minidock-{os.getuid()}"
    os.makedirs(fallback, mode=0o700, exist_ok=True)
    st = os.lstat(fallback)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(f"minidock: {fallback} is not a private directory owned by you; "
                         f"set XDG_RUNTIME_DIR or pass -H unix:///some/path.sock")
    return fallback


def default_host():
    return "unix://" + os.path.join(runtime_dir(), "minidock.sock")


def default_data_root():
    if os.getuid() == 0:
        return "/var/lib/minidock"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "minidock")


def default_exec_root():
    if os.getuid() == 0:
        return "/run/minidock"
    return os.path.join(runtime_dir(), "minidock")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="minidockd", description="A Docker-compatible daemon that runs "
                                "containers without root, in pure Python.")
    p.add_argument("-H", "--host", action="append", default=[],
                   help="listen address: unix:///path or tcp://127.0.0.1:PORT (repeatable)")
    p.add_argument("--data-root", default=None, help="where images, containers and volumes live")
    p.add_argument("--exec-root", default=None, help="where runtime state lives")
    p.add_argument("-l", "--log-level", default="info", choices=sorted(LOG_LEVELS))
    p.add_argument("-D", "--debug", action="store_true", help="debug logging")
    p.add_argument("--api-cors-header", default=None,
                   help="set CORS headers in the API (value of Access-Control-Allow-Origin)")
    p.add_argument("--insecure-registry", action="append", default=[],
                   help="registry host[:port] or CIDR to reach over plain HTTP (repeatable)")
    p.add_argument("--registry-mirror", action="append", default=[], help="mirror for docker.io")
    p.add_argument("--label", action="append", default=[], help="engine label key=value")
    p.add_argument("--bip", default=None,
                   help="the default bridge's gateway address and subnet, e.g. 10.5.0.1/24")
    p.add_argument("--default-address-pool", action="append", default=[],
                   help="base=CIDR,size=N: where user networks' subnets come from (repeatable)")
    p.add_argument("--log-driver", default="json-file",
                   help="default log driver of containers: json-file or none")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="default log driver option, e.g. max-size=10m, max-file=3 (repeatable)")
    p.add_argument("--userns", default="", choices=["", "keep-id"],
                   help="default user namespace mode of containers; keep-id: your uid keeps its "
                        "number in the container and owns what it writes to bind mounts")
    p.add_argument("--tls", nargs="?", const="true", default=None, type=_bool_flag,
                   help="use TLS on tcp:// listeners (implied by --tlsverify); --tls=false "
                        "explicitly allows plain TCP on a non-loopback address")
    p.add_argument("--tlsverify", nargs="?", const="true", default=False, type=_bool_flag,
                   help="use TLS and require client certificates signed by --tlscacert")
    p.add_argument("--tlscacert", default=None, help="CA certificates clients must be signed by "
                   "(default ~/.docker/ca.pem)")
    p.add_argument("--tlscert", default=None, help="the server certificate (default ~/.docker/cert.pem)")
    p.add_argument("--tlskey", default=None, help="the server key (default ~/.docker/key.pem)")
    p.add_argument("--allow-host-loopback", action="store_true",
                   help="let containers reach the host's 127.0.0.1 at 10.0.2.2 (slirp4netns's "
                        "address for the host; off by default, as in rootless Docker)")
    p.add_argument("--no-userns", action="store_true",
                   help="do not enter a user namespace (only for debugging the API layer)")
    p.add_argument("-v", "--version", action="version", version=f"minidock {__version__}")
    return p.parse_args(argv)


def _bool_flag(text):
    value = str(text).lower()
    if value in ("1", "true", "t", "yes"):
        return True
    if value in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_settings(args):
    """dockerd's TLS rules for tcp:// listeners, as (ssl.SSLContext or None, warnings).

    --tlsverify implies TLS and requires client certificates signed by --tlscacert (mutual
    TLS: only holders of such a certificate can talk to the daemon). --tls alone encrypts but
    lets anyone in. Listening on a non-loopback address without TLS is refused unless
    --tls=false says so explicitly: whoever reaches that port owns the user's account (a bind
    mount of $HOME is one `docker run` away). Plain TCP on loopback is allowed with a warning:
    every local user and every container with host networking can reach it.
    Raises errors.InvalidParameter for a refused combination."""
    tcp = [h for h in args.host if h.startswith("tcp://")]
    use_tls = bool(args.tlsverify) or bool(args.tls)
    warnings = []
    if not tcp:
        return None, warnings
    if not use_tls:
        for h in tcp:
            host = h[len("tcp://"):].rpartition(":")[0] or "127.0.0.1"
            if not _is_loopback(host):
                if args.tls is False:
                    warnings.append(f"API listening on {h} WITHOUT TLS as --tls=false asked: anyone "
                                    f"who can reach it controls this daemon and the user's account")
                    continue
                raise errors.InvalidParameter(
                    f"refusing to listen on {h} without TLS: anyone who can reach it would control "
                    f"this daemon. Use --tlsverify with --tlscacert/--tlscert/--tlskey, or pass "
                    f"--tls=false to accept the risk")
            warnings.append(f"API listening on {h} WITHOUT TLS: any local user and any container "
                            f"with host networking can control this daemon; use --tlsverify")
        return None, warnings
    import ssl          # here, not at the top: only TLS listeners need it (10 ms of start-up)
    cert_dir = os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    cacert = args.tlscacert or os.path.join(cert_dir, "ca.pem")
    cert = args.tlscert or os.path.join(cert_dir, "cert.pem")
    key = args.tlskey or os.path.join(cert_dir, "key.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2      # dockerd's minimum too
    try:
        ctx.load_cert_chain(cert, key)
        if args.tlsverify:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cacert)
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidParameter(f"cannot load TLS certificates: {exc}")
    if not args.tlsverify:
        warnings.append("TLS without --tlsverify: traffic is encrypted but any client may connect")
    return ctx, warnings


class DataRootLock:
    """An exclusive flock on <data-root>/minidockd.pid, holding our pid for humans to read."""

    def __init__(self, data_root):
        self.path = os.path.join(data_root, "minidockd.pid")
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise errors.Conflict(f"another minidock daemon (pid {holder}) is already using "
                                  f"data root {os.path.dirname(self.path)}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def raise_nofile_limit():
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.

    Every client connection, container log, pty and pipe is a descriptor, and the usual soft
    limit of 1024 is reached by a few hundred busy clients. Raising the soft limit up to the
    hard one needs no privilege (dockerd and containerd do the same at start-up).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:     # the kernel still caps it at fs.nr_open
        with open("/proc/sys/fs/nr_open") as f:
            target = int(f.read())
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


def release_free_memory():
    """Hand the C heap's free pages back to the kernel (malloc_trim(3)); call it once start-up
    is done. Loading state, compiling the routes and importing the API free much of what they
    allocated, but glibc returns memory to the kernel only from the top of the heap, so the
    free pages below a live allocation stay resident (and count in the daemon's PSS) until
    malloc_trim(0) releases every free page with MADV_DONTNEED. Measured at idle: see
    docs/performance.md, "Start-up"."""
    from minidock import syscalls           # already loaded by the spawner's module
    syscalls.libc.malloc_trim(0)


class InBackground:
    """`fn(*args)` running in a thread from now on; `result()` waits for it and returns its
    value, or raises what it raised (so a failure surfaces where the result is needed)."""

    def __init__(self, name, fn, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as exc:       # handed to the caller of result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def build_engine(config, userns=True):
    """Steps 3-5 and 7 of the start-up sequence; returns the engine (used by tests too). Call
    it as prepare_engine()."""
    engine, netns = prepare_engine(config, userns)
    start_networks(engine, netns)
    return engine


def prepare_engine(config, userns=True):
    """Steps 3-5: namespaces, the spawner, the engine with its state loaded. Returns (engine,
    the network namespace being made in the background or None) for start_networks().

    Must run on the main thread of a still single-threaded process: unshare(CLONE_NEWUSER)
    refuses threaded callers, and the spawner's death signal is tied to the thread that forks it.
    """
    # 3. the daemon's own user + mount namespace (no probe first: when the kernel refuses,
    # enter_daemon_userns runs check_userns_support itself, which names the knob to flip; a
    # probe on every start cost a fork, ~3.5 ms)
    daemon_userns = None
    if userns:
        daemon_userns = enter_daemon_userns()
        log.info("user namespace: %s", daemon_userns.as_dict())

    # 4. the spawner, forked while we are single-threaded. It reports every exit into the
    # registry, where the container and exec backends register their pids.
    exits = ExitRegistry()
    spawner = Spawner.start(on_exit=exits.deliver) if userns else NoSpawner()

    # ... and the keeper thread of the daemon's network namespace, started now and waited for in
    # step 7: it unshares its namespace (~7 ms of the kernel's, the GIL released) while this
    # thread builds the engine, the routes and the listening sockets. (Threads are allowed from
    # here on: the user namespace is entered and the spawner forked.)
    netns = InBackground("netns-start", network.DaemonNetns) if userns else None

    # 5. the cgroup tree (after the spawner: preparing it may move our own processes, which
    # evacuate() allows for), then the engine and its subsystems, state loaded from disk
    cgroups, warnings = _cgroups()
    if not userns:
        warnings.append(NoSpawner.REASON)
    engine = Engine(config, spawner=spawner, exits=exits, cgroups=cgroups,
                    userns=daemon_userns.as_dict() if daemon_userns else None, warnings=warnings)
    _sweep_orphan_rw_layers(engine)
    _sweep_half_created_containers(engine)
    _collect_unreferenced_layers(engine)
    _sweep_temp_files(engine)
    return engine, netns


def start_networks(engine, netns):
    """Step 7: the daemon's network namespace and every network's bridge, then the containers
    that died with the last daemon recorded and those whose restart policy says so restarted
    (on those bridges, so after them). Before the API answers anything: a request must never
    see a container the last daemon left "running", nor a network without its bridge."""
    if netns is None:                  # --no-userns: no spawner, no namespace, nothing runs
        return
    engine.networks.start(engine.spawner, netns=netns.result())
    engine.containers.reconcile()


def _sweep_orphan_rw_layers(engine):
    """Writable layers no container owns: a build step or a create cut short by a crash."""
    directory = os.path.join(engine.layers.root, "containers")
    for name in os.listdir(directory):
        if name not in engine.containers.by_id:
            log.info("removing orphaned writable layer %s", name)
            try:
                engine.layers.remove_rw(name)
            except OSError as exc:
                log.warning("could not remove orphaned writable layer %s: %s", name, exc)


def _sweep_half_created_containers(engine):
    """Container directories without a readable record: a create cut short by a crash (no
    config.json yet, or a short one; a record is readable while either of its two slots is,
    slotfile.py). No container record names them, so nothing of them can be reached through
    the API; they go, with the anonymous volumes made for them."""
    directory = os.path.join(engine.config.data_root, "containers")
    if not os.path.isdir(directory):
        return
    half = set()
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name in engine.containers.by_id or not os.path.isdir(path) or os.path.islink(path):
            continue
        log.info("removing half-created container directory %s", name)
        shutil.rmtree(path, ignore_errors=True)
        half.add(name)
    engine.volumes.remove_made_for(half)      # and the anonymous volumes made for them


def _collect_unreferenced_layers(engine):
    """Layers no image and no container stands on: what a crash between storing a layer and
    writing its image (an interrupted commit, import, load or pull) leaves. At start-up nothing
    is in flight (we hold the data-root lock and serve nothing yet), so every layer that no
    stored image config or container rw layer reaches is garbage."""
    try:
        removed = engine.images.prune_layers()
    except OSError as exc:
        log.warning("could not collect unreferenced layers: %s", exc)
        return
    for chain in removed:
        log.info("removed unreferenced layer %s", chain)


def _sweep_temp_files(engine):
    """Temporary files of atomic writes (store.write_atomic: `.tmp-<name>-<random>`, written,
    fsync'd, then renamed over <name>) that a crash left before the rename, in the directories
    whose files are written that way outside a store.Collection (a collection sweeps its own at
    load): the data root (engine-id), the image root (repositories.json, distribution.json),
    the layer store (sync.json, diffsync.py), each image's directory (meta.json) and each
    container's writable layer (rw.json). Nothing else is in flight at start-up."""
    image_root = engine.images.root
    directories = [engine.config.data_root, image_root, engine.layers.root]
    for parent in (os.path.join(image_root, "images"), os.path.join(engine.layers.root, "containers")):
        try:
            directories += [os.path.join(parent, name) for name in os.listdir(parent)]
        except OSError:
            pass
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(".tmp-") and os.path.isfile(path) and not os.path.islink(path):
                log.info("removing the temporary file of an interrupted write: %s", path)
                os.unlink(path)


def _cgroups():
    """The cgroup v2 tree we may use (limits discarded with warnings, SIGSTOP pause when not
    usable), and its /info warnings."""
    hierarchy = cgroup.Hierarchy.discover()
    hierarchy.prepare()                 # never raises; records what is usable and why not
    if not hierarchy.usable:
        log.warning("cgroup v2 not usable (%s): limits are discarded, pause uses SIGSTOP", hierarchy.reason)
    return hierarchy, hierarchy.info_warnings()


def routes():
    """The whole API: every resource's route table, in one list."""
    return (system.ROUTES + images.ROUTES + containers.ROUTES + archive.ROUTES + execs.ROUTES + volumes.ROUTES
            + networks.ROUTES + build.ROUTES + swarm.ROUTES)


def serve(engine, hosts, cors_origin=None, ready=None, stop=None, tls_context=None):
    """Bind every host, serve until `stop` is set; returns after a clean shutdown."""
    return run_servers(listen(engine, hosts, cors_origin, tls_context), ready=ready, stop=stop)


def listen(engine, hosts, cors_origin=None, tls_context=None):
    """Step 6: the application and a bound, listening server per host (not serving yet: a
    client that connects now waits in the listen backlog until run_servers())."""
    app = Router(routes(), engine, cors_origin=cors_origin)
    server_header = f"minidock/{__version__} (linux)"

    def base_headers():
        return [("Api-Version", API_VERSION), ("Server", server_header), ("Ostype", "linux"),
                ("Docker-Experimental", "false")]

    servers = []
    try:
        for host in hosts:
            servers.append(httpserver.make_server(host, app, base_headers, logger=logging.getLogger("minidock.http"),
                                            tls_context=tls_context if host.startswith("tcp://") else None))
            log.info("API listening on %s", host)
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return servers


def run_servers(servers, ready=None, stop=None):
    """Step 8: serve every server in a thread until `stop` is set; then shut them down and
    remove their unix socket files."""
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                                name=f"serve-{i}", daemon=True) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    if ready:
        ready()
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for server in servers:
            server.shutdown()
        close_servers(servers)
    return 0


def close_servers(servers):
    """Close listening servers (no longer serving, or never served) and remove their unix
    socket files."""
    for server in servers:
        server.server_close()
        if isinstance(server.server_address, str):
            try:
                os.unlink(server.server_address)
            except FileNotFoundError:
                pass


def main(argv=None):
    args = parse_args(argv)
    # Threads hand the GIL over after 1 ms instead of CPython's 5: the output loop, the exit
    # handlers and the request threads each wake for a moment's work, and waiting 5 ms behind a
    # busy thread at every hand-over made a container's exit reach `wait` up to tens of ms late
    # under load (measured: exit -> output done, 2 busy threads: median 10-18 ms at 5 ms,
    # 0.1 ms at 1 ms).
    sys.setswitchinterval(0.001)
    level = logging.DEBUG if args.debug else LOG_LEVELS[args.log_level]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)

    # 1. flags and defaults
    try:
        tls_context, tls_warnings = tls_settings(args)
    except errors.MinidockError as exc:
        print(f"minidock: {exc.message}", file=sys.stderr)
        return 1
    for warning in tls_warnings:
        log.warning("%s", warning)
    try:
        hosts = args.host or [default_host()]
        config = Config(args.data_root or default_data_root(), args.exec_root or default_exec_root(),
                        hosts=hosts, debug=args.debug, cors_origin=args.api_cors_header,
                        insecure_registries=args.insecure_registry, registry_mirrors=args.registry_mirror,
                        labels=args.label, bip=args.bip,
                        address_pools=args.default_address_pool, log_driver=args.log_driver,
                        log_opts=dict(opt.partition("=")[::2] for opt in args.log_opt),
                        userns_mode=args.userns,
                        allow_host_loopback=args.allow_host_loopback)
        os.makedirs(config.data_root, mode=0o700, exist_ok=True)
    except errors.InvalidParameter as exc:     # a bad --log-driver/--log-opt
        print(f"minidock: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"minidock: cannot prepare data root: {exc}", file=sys.stderr)
        return 1

    log.info("open-files limit: %d", raise_nofile_limit())

    # 2. one daemon per data root
    lock = DataRootLock(config.data_root)
    try:
        lock.acquire()
    except errors.Conflict as exc:
        print(f"minidock: {exc.message}", file=sys.stderr)
        return 1

    # 3-5. namespaces, spawner, engine (the network namespace on its way)
    try:
        engine, netns = prepare_engine(config, userns=not args.no_userns)
    except errors.MinidockError as exc:       # e.g. the kernel refuses user namespaces: says how to fix
        print(f"minidock: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"minidock: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers = []
    try:
        # 6. bind the API sockets, while the network namespace is still being made
        try:
            servers = listen(engine, config.hosts, cors_origin=config.cors_origin, tls_context=tls_context)
        except OSError as exc:
            print(f"minidock: cannot listen: {exc}", file=sys.stderr)
            return 1
        # 7. the networks, then the containers the last daemon left (restarts included)
        start_networks(engine, netns)
        release_free_memory()
        # 8. serve until told to stop
        served, servers = servers, []          # run_servers closes them from now on
        run_servers(served, stop=stop,
                    ready=lambda: log.info("minidock %s ready (data root %s)", __version__, config.data_root))
    except errors.MinidockError as exc:
        print(f"minidock: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"minidock: {exc}", file=sys.stderr)
        return 1
    finally:
        close_servers(servers)
        engine.shutdown()
        lock.release()
    return 0
