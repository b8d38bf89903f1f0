"""minidock: a Docker-compatible daemon in pure Python that runs containers without root.

The package is layered; imports only point down:

    daemon.py            flags, start-up checks, signals, wiring
    api/<resource>.py    route tables and thin handlers, per-version shapes in api/versions.py
    backend objects      containers, images, volumes, exec instances, events
    machinery            ns.py, layers.py, cgroup.py, registry.py, builder.py
    ground               http.py (bytes in, bytes out), store.py (atomic JSON), errors.py
"""

__version__ = "0.1.0"

# The newest Docker Remote API version we speak, and the oldest we still answer.
API_VERSION = "1.47"
MIN_API_VERSION = "1.0"
