"""Metadata instructions: how ENV, LABEL, CMD, ENTRYPOINT, EXPOSE, ... change an image's config.

Most Dockerfile instructions run nothing and add no layer: they change the image config (the
`config` object of the OCI image config, Docker's `ContainerConfig` shape) and the builder
commits that as a new image whose history entry says `"empty_layer": true` and, in CREATED BY,
`/bin/sh -c #(nop) ` followed by the instruction as Docker prints it -- which is also part of
the step's cache key, so the words below matter:

    ENV k=v ...          Env: an entry per key, replacing an earlier one of the same key
    LABEL k=v ...        Labels: merged
    CMD / ENTRYPOINT     Cmd / Entrypoint, exec form or ["/bin/sh", "-c", ...] (or SHELL's);
                         an ENTRYPOINT resets a CMD inherited from the base image
    EXPOSE 80 53/udp     ExposedPorts: {"80/tcp": {}, "53/udp": {}}
    VOLUME, USER, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD   their config fields
    MAINTAINER           the image's author (not a config field)
    ARG                  nothing in the config; its history says which ARG was declared

`apply()` is a function over a config dict, tested without a build; what you can observe:
`docker inspect -f '{{.Config.Env}}'` and `docker history` of a built image.
"""

import json

from minidock import dockerfile, errors

# Instructions that only change the image config.
METADATA = ("ARG", "CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "MAINTAINER",
            "ONBUILD", "SHELL", "STOPSIGNAL", "USER", "VOLUME")


def apply(config, instr, state):
    """Change `config` (a copy the caller owns) as `instr` says; returns the history comment.

    `state` is the stage's: CMD sets `state.cmd_set`, which ENTRYPOINT reads, and MAINTAINER
    sets `state.author`."""
    cmd = instr.cmd
    if cmd == "ARG":
        comment = "ARG " + " ".join(instr.args)
    elif cmd == "ENV":
        env = list(config.get("Env") or [])
        for k, v in instr.pairs:
            env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
        config["Env"] = env
        comment = "ENV " + " ".join(f"{k}={v}" for k, v in instr.pairs)
    elif cmd == "LABEL":
        labels = dict(config.get("Labels") or {})
        labels.update(instr.pairs)
        config["Labels"] = labels
        comment = "LABEL " + " ".join(f"{k}={v}" for k, v in instr.pairs)
    elif cmd in ("CMD", "ENTRYPOINT"):
        argv = dockerfile.command_argv(instr, config.get("Shell"))
        if cmd == "CMD":
            config["Cmd"] = argv or None
            state.cmd_set = True
        else:
            config["Entrypoint"] = argv or None
            if not state.cmd_set:
                # Docker: an ENTRYPOINT resets a CMD inherited from the base image.
                config["Cmd"] = None
        comment = f"{cmd} {json.dumps(argv)}"
    elif cmd == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for port in instr.args:
            ports[port if "/" in port else port + "/tcp"] = {}
        config["ExposedPorts"] = ports
        comment = "EXPOSE " + " ".join(sorted(ports))
    elif cmd == "VOLUME":
        volumes = dict(config.get("Volumes") or {})
        for path in instr.args:
            if not path.strip():
                raise errors.InvalidParameter("VOLUME specified can not be an empty string")
            volumes[path] = {}
        config["Volumes"] = volumes
        comment = f"VOLUME [{' '.join(instr.args)}]"
    elif cmd == "USER":
        config["User"] = instr.args[0]
        comment = "USER " + instr.args[0]
    elif cmd == "STOPSIGNAL":
        config["StopSignal"] = instr.args[0]
        comment = "STOPSIGNAL " + instr.args[0]
    elif cmd == "HEALTHCHECK":
        config["Healthcheck"] = dockerfile.healthcheck_config(instr)
        comment = "HEALTHCHECK " + json.dumps(config["Healthcheck"], sort_keys=True)
    elif cmd == "SHELL":
        config["Shell"] = list(instr.args)
        comment = f"SHELL {json.dumps(instr.args)}"
    elif cmd == "ONBUILD":
        config["OnBuild"] = list(config.get("OnBuild") or []) + [instr.args[0]]
        comment = "ONBUILD " + instr.args[0]
    elif cmd == "MAINTAINER":
        state.author = instr.args[0]
        comment = "MAINTAINER " + instr.args[0]
    return comment
