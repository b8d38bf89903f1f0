"""The concepts of a container, one per module; minidock/containers.py composes them.

    config.py      Config/HostConfig: merging with the image, names, the network-mode rule
    lifecycle.py   states, the TRANSITIONS table, the Container object
    supervisor.py  the process: start sequence, exits, restart back-off, stop, kill, pause
    spec.py        the spawner's runtime spec; generated /etc/hostname, hosts, resolv.conf
    stdio.py       pipes and ptys, output pumps, subscribers, stdin
    attach.py      attach sessions (hijacked HTTP and WebSocket), the detach-key scanner
    logs.py        log drivers (json-file via minidock/jsonfile.py, none): write, read, follow
    probe.py       healthcheck probes: execs without a record
    exits.py       pid -> exit callback registry the spawner reports into
    restart.py     restart policies and the back-off
    describe.py    inspect documents, list rows, list filters, the status column
    archive.py     the filesystem routes' backend: diff, export, cp

Imports point down this list's dependencies only: config and stdio need nothing here;
lifecycle needs them; everything else builds on lifecycle.
"""
