"""minidock: a Docker-compatible daemon in pure Python that runs containers without root.

The package is layered; imports only point down:

    daemon.py            flags, start-up checks, signals, wiring
    api/<resource>.py    route tables and thin handlers; API versions as data in api/versions.py
    engine.py            the backend root: builds every subsystem, in dependency order
    backend objects      containers.py (composing container/*), execs.py, volumes.py,
                         networks.py (with network_records.py, network_endpoints.py,
                         network_names.py, network_ports.py), images.py (with imagecreate.py,
                         imagedescribe.py, imagearchive.py), registryservice.py, events.py
    machinery            ns.py (with mounts.py, userns.py, pid1.py, seccomp.py), spawner.py
                         (with spawnerloop.py), layers.py (with layerdiff.py), cgroup.py (with
                         cgrouplimits.py), registry/, builder.py (with buildconfig.py,
                         buildcopy.py, dockerfile.py, buildvars.py, dockerignore.py),
                         tarsafe.py (with compression.py), network.py (the daemon's network
                         namespace; netlink.py), tcpip/ (the user-mode TCP/IP stack), dns.py,
                         ipam.py, portproxy.py, stats.py, health.py, jsonfile.py, pumps.py
                         (container output), proctable.py, workers.py
    ground               syscalls.py (ctypes), http.py (bytes in, bytes out) and httpserver.py
                         (its socket side), websocket.py, store.py (atomic JSON), schema.py
                         (typed JSON fields), times.py, reference.py, platforms.py,
                         progress.py, filters.py, errors.py
"""

__version__ = "0.1.0"

# The newest Docker Remote API version we speak, and the oldest we still answer.
API_VERSION = "1.47"
MIN_API_VERSION = "1.0"
